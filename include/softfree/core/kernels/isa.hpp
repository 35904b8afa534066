#pragma once
// What this translation unit is compiled for, as one name: the ISA-tagged namespace of the
// kernel layer.
//
// Kernels take their block sizes, packet types and instructions from the -march of the
// translation unit that includes them. A program whose translation units use different -march
// (one file built with -march=native, another without) would otherwise get two different
// definitions of the same inline function, and the linker would keep one of them for both: a
// workspace built by one and freed by the other, or AVX-512 code run by the baseline file. So
// everything whose code depends on the ISA lives in `softfree::detail::SOFTFREE_ISA` (an inline
// namespace: callers still write `softfree::detail::...`), whose name differs per ISA, and the
// public entry points carry the ISA as a defaulted template argument (detail::IsaTag), so each
// translation unit calls its own kernels. Public types (functors, options, errors) stay outside:
// they mean the same in every translation unit.
#include <Eigen/Core>

#if defined(EIGEN_DONT_VECTORIZE) || !defined(EIGEN_VECTORIZE)
#define SOFTFREE_ISA_VECTOR generic
#elif defined(EIGEN_VECTORIZE_AVX512)
#define SOFTFREE_ISA_VECTOR avx512
#elif defined(EIGEN_VECTORIZE_AVX2)
#define SOFTFREE_ISA_VECTOR avx2
#elif defined(EIGEN_VECTORIZE_AVX)
#define SOFTFREE_ISA_VECTOR avx
#elif defined(EIGEN_VECTORIZE_SSE)
#define SOFTFREE_ISA_VECTOR sse
#elif defined(EIGEN_VECTORIZE_NEON)
#define SOFTFREE_ISA_VECTOR neon
#else
#define SOFTFREE_ISA_VECTOR vector
#endif

#if defined(EIGEN_VECTORIZE_FMA)
#define SOFTFREE_ISA_FMA _fma
#else
#define SOFTFREE_ISA_FMA
#endif

#if defined(__F16C__)
#define SOFTFREE_ISA_F16C _f16c
#else
#define SOFTFREE_ISA_F16C
#endif

// AVX512-BF16 as the kernels use it: its conversions (with DQ's fpclass) and its dot products
// (with BW's word permutes).
#if defined(__AVX512BF16__) && defined(__AVX512DQ__) && defined(__AVX512BW__) && defined(EIGEN_VECTORIZE_AVX512) && \
    !defined(EIGEN_DONT_VECTORIZE)
#define SOFTFREE_HAVE_AVX512_BF16 1
#define SOFTFREE_ISA_BF16 _bf16
#else
#define SOFTFREE_HAVE_AVX512_BF16 0
#define SOFTFREE_ISA_BF16
#endif

#define SOFTFREE_ISA_CAT4(a, b, c, d) a##b##c##d
#define SOFTFREE_ISA_NAME4(a, b, c, d) SOFTFREE_ISA_CAT4(a, b, c, d)
#define SOFTFREE_ISA_CAT2(a, b) a##b
#define SOFTFREE_ISA_NAME2(a, b) SOFTFREE_ISA_CAT2(a, b)
#define SOFTFREE_ISA_STR2(x) #x
#define SOFTFREE_ISA_STR(x) SOFTFREE_ISA_STR2(x)

/// This translation unit's instruction sets, e.g. avx512_fma_f16c_bf16.
#define SOFTFREE_ISA_TAG SOFTFREE_ISA_NAME4(SOFTFREE_ISA_VECTOR, SOFTFREE_ISA_FMA, SOFTFREE_ISA_F16C, SOFTFREE_ISA_BF16)
/// The kernel layer's namespace for this translation unit, e.g. isa_avx512_fma_f16c_bf16.
#define SOFTFREE_ISA SOFTFREE_ISA_NAME2(isa_, SOFTFREE_ISA_TAG)

namespace softfree {
namespace detail {
inline namespace SOFTFREE_ISA {

/// A type unique to this translation unit's ISA: the default template argument of every public
/// entry point (see above).
struct IsaTag {};

}  // namespace SOFTFREE_ISA
}  // namespace detail

inline namespace SOFTFREE_ISA {

/// The instruction set the kernels of the calling translation unit were compiled for, e.g.
/// "avx512_fma_f16c_bf16" (the name of the kernel namespace without its "isa_" prefix).
inline const char* kernel_isa() { return SOFTFREE_ISA_STR(SOFTFREE_ISA_TAG); }

}  // namespace SOFTFREE_ISA
}  // namespace softfree
