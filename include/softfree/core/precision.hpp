#pragma once
// Precision traits: what each storage type accumulates in, and its name; and the Math policy,
// how a functor's products are computed.
//
// By default half is a storage format (products and sums run in float), and bfloat16 storage
// multiplies natively in bf16 where the machine has a fast bf16 product (core/kernels/select.hpp;
// accumulation stays float). The conversions themselves are part of the kernel layer
// (core/kernels/convert.hpp, core/kernels/pairs.hpp).
#include <string>

#include "tensor.hpp"

namespace softfree {

template <class T>
struct precision;  // only the four storage types below are supported

template <>
struct precision<float> {
  using accum = float;
  static constexpr const char* name = "float";
};
template <>
struct precision<double> {
  using accum = double;
  static constexpr const char* name = "double";
};
template <>
struct precision<Eigen::half> {
  using accum = float;
  static constexpr const char* name = "half";
};
template <>
struct precision<Eigen::bfloat16> {
  using accum = float;
  static constexpr const char* name = "bfloat16";
};

/// Type every product and sum runs in for storage type T.
template <class T>
using accum_t = typename precision<T>::accum;

/// How a functor's products (Q K^T, P V and the like) are computed: its `math` field, as oneDNN's
/// fpmath mode or PyTorch's float32_matmul_precision. Sums, maxima, exponentials and every
/// accumulator stay in the accumulate type whatever the policy.
enum class Math : int {
  /// bf16 products for bfloat16 storage; exact float (double) products for float, half, double.
  automatic = 0,
  /// Exact products in the accumulate type, for every storage type.
  f32 = 1,
  /// Operands rounded to bf16 (bfloat16 storage: already are), products accumulated in float.
  /// Not for double storage. Where the build has no fast bf16 product, the call computes the
  /// exact float result instead (backend() says so).
  bf16 = 2,
};

inline const char* math_name(Math m) {
  switch (m) {
    case Math::automatic:
      return "automatic";
    case Math::f32:
      return "f32";
    case Math::bf16:
      return "bf16";
  }
  return nullptr;
}

/// Which product backend a functor's calls run, and why (Attention::backend(), backend_info<T>()).
struct BackendInfo {
  std::string name;    ///< e.g. "avx512_bf16" (bf16 pair products), "avx512 float"
  bool native_bf16;    ///< products of bf16 operands
  std::string reason;  ///< why this one
};

}  // namespace softfree
