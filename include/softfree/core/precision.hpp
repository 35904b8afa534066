#pragma once
// Precision traits: what a storage type accumulates in, and tile conversion to that type.
//
// half and bfloat16 are storage formats: products and sums run in float. Tiles are converted
// once into a reused workspace, never per element inside a product.
#include <vector>

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

namespace detail {

/// Maps a contiguous rows x cols block of storage as an accumulate-type matrix: directly when
/// the types agree, otherwise converted into a buffer owned by the loader (grown once, reused).
template <class T>
class TileLoader {
  using Acc = accum_t<T>;

 public:
  ConstMatrixMap<Acc> operator()(const T* src, Index rows, Index cols) {
    if constexpr (std::is_same<T, Acc>::value) {
      return ConstMatrixMap<Acc>(src, rows, cols);
    } else {
      if (static_cast<Index>(buf_.size()) < rows * cols) buf_.resize(static_cast<size_t>(rows * cols));
      MatrixMap<Acc> dst(buf_.data(), rows, cols);
      dst = ConstMatrixMap<T>(src, rows, cols).template cast<Acc>();
      return ConstMatrixMap<Acc>(buf_.data(), rows, cols);
    }
  }

 private:
  std::vector<Acc> buf_;  // unused when T == Acc
};

/// Writes an accumulate-type block to storage, rounding once.
template <class T, class Derived>
void store_rows(const Eigen::MatrixBase<Derived>& src, T* dst) {
  MatrixMap<T>(dst, src.rows(), src.cols()) = src.template cast<T>();
}

}  // namespace detail
}  // namespace softfree
