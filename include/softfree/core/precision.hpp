#pragma once
// Precision traits: what each storage type accumulates in, and its name.
//
// half and bfloat16 are storage formats: products and sums run in float (double for double).
// The conversions themselves are part of the kernel layer (core/kernels/convert.hpp).
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

}  // namespace softfree
