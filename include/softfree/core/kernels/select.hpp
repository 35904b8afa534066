#pragma once
// Which products a call runs: its functor's Math policy, what the build was compiled for
// (backend.hpp's PairOps), what the running CPU has (cpu.hpp), and whether the method has bf16
// kernels at all. bf16 pairs are chosen only where they beat float FMA:
// - vdpbf16ps (AVX512-BF16): twice the float FMA's work per cycle on AMD Zen 4/5, half of it on
//   Intel Xeons with AMX (measured on Emerald Rapids: 78 against 160 GFLOP/s per core), so not on
//   a CPU that has AMX (whose tiles are the fast bf16 product there).
// A policy that cannot be honoured natively computes the exact float result, never an error.
#include <atomic>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "../precision.hpp"
#include "backend.hpp"
#include "cpu.hpp"

namespace softfree {
namespace detail {

/// The override's start value from the environment: SOFTFREE_BF16_PRODUCTS=force (the pairs
/// wherever the build and CPU have them, e.g. to test them on a CPU the rule keeps off them) or
/// =off (never); unset or anything else: the rule.
inline int bf16_products_from_env() {
  const char* e = std::getenv("SOFTFREE_BF16_PRODUCTS");
  if (!e) return -1;
  const std::string s = e;
  return s == "force" ? 1 : s == "off" ? 0 : -1;
}

/// Force the bf16 pair products where the build and CPU have them (1), forbid them (0), or let
/// the rule decide (-1), for every call (ISA-independent). Starts from the environment; tests and
/// benchmarks set it through ScopedBf16Products.
inline std::atomic<int>& bf16_products_override() {
  static std::atomic<int> v{bf16_products_from_env()};
  return v;
}

/// Sets the hook for a scope (tests: run the bf16 backend on a CPU where it is not chosen).
class ScopedBf16Products {
 public:
  explicit ScopedBf16Products(bool use) : old_(bf16_products_override().exchange(use ? 1 : 0)) {}
  ~ScopedBf16Products() { bf16_products_override().store(old_); }
  ScopedBf16Products(const ScopedBf16Products&) = delete;
  ScopedBf16Products& operator=(const ScopedBf16Products&) = delete;

 private:
  int old_;
};

inline namespace SOFTFREE_ISA {

enum class Products { accum, bf16_pairs };

/// Why a call runs the products it runs: decided per call without building any text (the text
/// is for backend(), reason()).
enum class Why { exact, no_kernel, no_build, no_cpu, forbidden, forced, amx, chosen };

struct ProductChoice {
  Products kind;
  Why why;
};

/// Whether bf16 products are asked for: by the policy, or by default for bfloat16 storage.
template <class T>
bool wants_bf16(Math m) {
  return m == Math::bf16 || (m == Math::automatic && std::is_same<T, Eigen::bfloat16>::value);
}

/// The products a call of a method (with or without bf16 kernels) on storage T runs.
template <class T>
ProductChoice choose_products(Math m, bool method_has_bf16) {
  if (!wants_bf16<T>(m)) return {Products::accum, Why::exact};
  if (!method_has_bf16) return {Products::accum, Why::no_kernel};
  if (!kHavePairOps) return {Products::accum, Why::no_build};
  if (!cpu_features().avx512_bf16) return {Products::accum, Why::no_cpu};
  const int forced = bf16_products_override().load();
  if (forced == 0) return {Products::accum, Why::forbidden};
  if (forced == 1) return {Products::bf16_pairs, Why::forced};
  if (cpu_features().amx_bf16) return {Products::accum, Why::amx};
  return {Products::bf16_pairs, Why::chosen};
}

/// The choice in words, for a call of `method` under policy m.
inline std::string reason(const ProductChoice& c, Math m, const char* method) {
  const std::string policy = "(math = " + std::string(math_name(m)) + ")";
  const std::string asked = "bf16 products asked for " + policy;
  const char* exact = ": exact float products";
  switch (c.why) {
    case Why::exact:
      return "exact products " + policy;
    case Why::no_kernel:
      return asked + ", but " + method + " has no bf16 kernel" + exact;
    case Why::no_build:
      return asked + ", but this build has no bf16 product backend (AVX512-BF16 needs a -march with it, e.g. "
                     "-march=native on AMD Zen 4/5)" + exact;
    case Why::no_cpu:
      return asked + ", but this CPU lacks AVX512-BF16 (the build has it)" + exact;
    case Why::forbidden:
      return asked + ", forbidden (SOFTFREE_BF16_PRODUCTS=off)" + exact;
    case Why::forced:
      return asked + ", forced (SOFTFREE_BF16_PRODUCTS=force): AVX512-BF16 pair products";
    case Why::amx:
      return asked + ", but this CPU has AMX, where vdpbf16ps does half the work of float FMA" + exact;
    case Why::chosen:
      return asked + ": AVX512-BF16 pair products";
  }
  return asked;
}

/// run(std::true_type{}) where `kind` is the bf16 pairs (and the build has them for storage T),
/// else run(std::false_type{}): the one place a kernel turns the choice into its instantiation.
template <class T, class Run>
decltype(auto) with_products(Products kind, Run&& run) {
  if constexpr (kHavePairOps && std::is_same<accum_t<T>, float>::value) {
    if (kind == Products::bf16_pairs) return run(std::true_type{});
  }
  return run(std::false_type{});
}

/// The public description of a choice.
template <class T>
BackendInfo describe(const ProductChoice& c, Math m, const char* method) {
  if (c.kind == Products::bf16_pairs) return {PairOps::kName, true, reason(c, m, method)};
  return {std::string(Backend::kName) + " " + precision<accum_t<T>>::name, false, reason(c, m, method)};
}

}  // namespace SOFTFREE_ISA
}  // namespace detail

inline namespace SOFTFREE_ISA {

/// The product backend a method with bf16 kernels runs for storage T under policy m, as this
/// translation unit is built, on this CPU. Attention::backend() answers for one functor.
template <class T, class Isa = detail::IsaTag>
BackendInfo backend_info(Math m = Math::automatic) {
  return detail::describe<T>(detail::choose_products<T>(m, true), m, "the method");
}

}  // namespace SOFTFREE_ISA
}  // namespace softfree
