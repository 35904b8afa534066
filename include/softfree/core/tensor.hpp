#pragma once
// Tensors, views and per-(batch, head) matrix slices.
//
// A tensor is Eigen::Tensor<T, 4, Eigen::RowMajor> with dimensions [B, H, N, D]: the memory
// layout of a contiguous PyTorch [B, H, N, D] tensor, so user buffers are wrapped with
// Eigen::TensorMap and never copied. The (b, h) slice is then a contiguous row-major N x D
// matrix, which the kernels read in place (no copy) through the kernel layer's gemm.
#ifndef EIGEN_USE_THREADS
#define EIGEN_USE_THREADS  // softfree accepts an Eigen::ThreadPoolDevice (the CMake target defines it too)
#endif
#include <Eigen/Core>
#include <unsupported/Eigen/CXX11/Tensor>
// Included after Eigen's Tensor module was, without EIGEN_USE_THREADS: bring in the thread-pool
// device ourselves rather than make the include order an error (the device is all we use).
#if !defined(EIGEN_CXX11_TENSOR_TENSOR_DEVICE_THREAD_POOL_H)
#include <unsupported/Eigen/CXX11/ThreadPool>
#include <unsupported/Eigen/CXX11/src/Tensor/TensorDeviceThreadPool.h>
#endif

#include <array>
#include <cstdint>
#include <ostream>
#include <type_traits>

#include "error.hpp"

namespace softfree {

using Index = Eigen::Index;

/// Owning [B, H, N, D] row-major tensor.
template <class T>
using Tensor4 = Eigen::Tensor<T, 4, Eigen::RowMajor>;
/// Writable non-owning view of a [B, H, N, D] buffer (the output of the write-into call form).
template <class T>
using View4 = Eigen::TensorMap<Tensor4<T>>;
/// Read-only non-owning view of a [B, H, N, D] buffer.
template <class T>
using ConstView4 = Eigen::TensorMap<const Tensor4<T>>;

/// Row-major dynamic matrix, the shape of one (b, h) slice.
template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using MatrixMap = Eigen::Map<RowMatrix<T>>;
template <class T>
using ConstMatrixMap = Eigen::Map<const RowMatrix<T>>;

/// Shape of a [B, H, N, D] tensor.
struct Shape4 {
  Index B = 0, H = 0, N = 0, D = 0;
  Index size() const { return B * H * N * D; }
  bool operator==(const Shape4& o) const { return B == o.B && H == o.H && N == o.N && D == o.D; }
  bool operator!=(const Shape4& o) const { return !(*this == o); }
};

inline std::ostream& operator<<(std::ostream& os, const Shape4& s) {
  return os << '[' << s.B << ", " << s.H << ", " << s.N << ", " << s.D << ']';
}

template <class TensorLike>
Shape4 shape_of(const TensorLike& t) {
  const auto& d = t.dimensions();
  return Shape4{d[0], d[1], d[2], d[3]};
}

/// The (b, h) slice of a view as an N x D row-major matrix map (no copy).
template <class T>
ConstMatrixMap<T> head(const ConstView4<T>& t, Index b, Index h) {
  const Shape4 s = shape_of(t);
  return ConstMatrixMap<T>(t.data() + (b * s.H + h) * s.N * s.D, s.N, s.D);
}
template <class T>
MatrixMap<T> head(const View4<T>& t, Index b, Index h) {
  const Shape4 s = shape_of(t);
  return MatrixMap<T>(t.data() + (b * s.H + h) * s.N * s.D, s.N, s.D);
}

/// Grouped-query heads: the key/value head that query head h of H reads in k or v with
/// `kv_heads` heads (which divides H): h / (H / kv_heads). H / kv_heads query heads share each.
inline Index kv_head_of(Index h, Index H, Index kv_heads) { return h / (H / kv_heads); }

/// The slice of k or v that query head h (of H) reads: head(kv, b, kv_head_of(h, H, its heads)).
template <class T>
ConstMatrixMap<T> kv_head(const ConstView4<T>& kv, Index b, Index h, Index H) {
  return head(kv, b, kv_head_of(h, H, shape_of(kv).H));
}

namespace detail {

/// An Eigen::Tensor or TensorMap (as opposed to an unevaluated tensor expression).
template <class X>
struct is_tensor_or_map : std::false_type {};
template <class S, int R, int O, class I>
struct is_tensor_or_map<Eigen::Tensor<S, R, O, I>> : std::true_type {};
template <class P, int O, template <class> class M>
struct is_tensor_or_map<Eigen::TensorMap<P, O, M>> : std::true_type {};

template <class X, bool = is_tensor_or_map<X>::value>
struct is_rowmajor_rank4 : std::false_type {};
template <class X>
struct is_rowmajor_rank4<X, true> {
  static constexpr bool value = static_cast<int>(X::Layout) == static_cast<int>(Eigen::RowMajor) &&
                                X::NumDimensions == 4;
};

}  // namespace detail

/// Read-only view of a Tensor4<T> or of a (const) TensorMap of one. Expressions, column-major or
/// other-rank tensors are rejected at compile time, each with its own message.
template <class T, class X>
ConstView4<T> as_const_view(const X& x) {
  constexpr bool tensor = detail::is_tensor_or_map<X>::value;
  static_assert(tensor,
                "softfree: q, k and v must be tensors (Eigen::Tensor<T, 4, Eigen::RowMajor> or a TensorMap of "
                "one), not tensor expressions: evaluate an expression into a tensor first, for example "
                "`Tensor4<float> q2 = q * 2.0f;`");
  if constexpr (tensor) {
    static_assert(detail::is_rowmajor_rank4<X>::value,
                  "softfree: tensors must be Eigen::Tensor<T, 4, Eigen::RowMajor> [B, H, N, D] "
                  "(or a TensorMap of one); column-major tensors are not accepted");
    static_assert(std::is_same<std::remove_const_t<typename X::Scalar>, T>::value,
                  "softfree: tensor scalar type does not match the attention's storage type");
    return ConstView4<T>(x.data(), x.dimensions());
  } else {
    return ConstView4<T>(nullptr, 0, 0, 0, 0);  // not reached: the static_assert above failed
  }
}

}  // namespace softfree
