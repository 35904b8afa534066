#pragma once
// What the running CPU has, read once from CPUID: the run-time half of backend selection. (The
// compile-time half is backend.hpp: an instruction the build was not compiled for is never used,
// whatever the CPU has.) ISA-independent: every translation unit reads the same answer.

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define SOFTFREE_HAVE_CPUID 1
#else
#define SOFTFREE_HAVE_CPUID 0
#endif

namespace softfree {
namespace detail {

struct CpuFeatures {
  bool avx512_bf16 = false;  ///< vdpbf16ps, vcvtne2ps2bf16
  bool amx_bf16 = false;     ///< AMX tiles with bf16 products (the CPU's, not yet the OS's consent)
};

inline CpuFeatures read_cpu_features() {
  CpuFeatures f;
#if SOFTFREE_HAVE_CPUID
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    f.amx_bf16 = (d >> 22) & 1u;  // CPUID.(7,0):EDX[22]
    const unsigned max_sub = a;
    if (max_sub >= 1 && __get_cpuid_count(7, 1, &a, &b, &c, &d)) f.avx512_bf16 = (a >> 5) & 1u;  // (7,1):EAX[5]
  }
#endif
  return f;
}

inline const CpuFeatures& cpu_features() {
  static const CpuFeatures f = read_cpu_features();
  return f;
}

}  // namespace detail
}  // namespace softfree
