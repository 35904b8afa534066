#pragma once
// Precision traits: what a storage type accumulates in, and tile conversion to that type.
//
// half and bfloat16 are storage formats: products and sums run in float. Tiles are converted
// once into a reused workspace, never per element inside a product.
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

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

// Bulk conversions between storage and accumulate types. Eigen's own cast of half is scalar on
// x86 (about 1.7 ns an element here, more than SimA's arithmetic per element), so half uses the
// F16C / AVX-512 conversion instructions when the caller compiles for them, and bfloat16 (the top
// half of a float) uses integer shifts the compiler vectorises. Both round to nearest even, as
// Eigen's scalar conversions do.
inline void convert(const Eigen::half* src, float* dst, Index n) {
  Index i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
#endif
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

inline void convert(const float* src, Eigen::half* dst, Index n) {
  Index i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
  for (; i < n; ++i) dst[i] = static_cast<Eigen::half>(src[i]);
}

inline void convert(const Eigen::bfloat16* src, float* dst, Index n) {
  static_assert(sizeof(Eigen::bfloat16) == 2, "bfloat16 is 16 bits");
  for (Index i = 0; i < n; ++i) {
    std::uint16_t b;
    std::memcpy(&b, src + i, 2);
    const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;  // exact: bfloat16 is a float's top half
    std::memcpy(dst + i, &u, 4);
  }
}

inline void convert(const float* src, Eigen::bfloat16* dst, Index n) {
  for (Index i = 0; i < n; ++i) {
    std::uint32_t u;
    std::memcpy(&u, src + i, 4);
    const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
    // Round to nearest even on the dropped 16 bits; NaN stays a (quiet) NaN.
    const std::uint32_t r = nan ? (u | 0x00400000u) : u + 0x7fffu + ((u >> 16) & 1u);
    const std::uint16_t b = static_cast<std::uint16_t>(r >> 16);
    std::memcpy(static_cast<void*>(dst + i), &b, 2);
  }
}

/// Maps a contiguous rows x cols block of storage as an accumulate-type matrix: directly when
/// the types agree, otherwise converted into a buffer owned by the loader (grown once, reused).
/// Asking again for the block it converted last returns that copy without converting again
/// (inputs are const for the length of a call, and a loader lives no longer than one call).
template <class T>
class TileLoader {
  using Acc = accum_t<T>;

 public:
  ConstMatrixMap<Acc> operator()(const T* src, Index rows, Index cols) {
    if constexpr (std::is_same<T, Acc>::value) {
      return ConstMatrixMap<Acc>(src, rows, cols);
    } else {
      if (src != last_src_ || rows * cols != last_size_) {
        if (static_cast<Index>(buf_.size()) < rows * cols) buf_.resize(static_cast<size_t>(rows * cols));
        convert(src, buf_.data(), rows * cols);
        last_src_ = src;
        last_size_ = rows * cols;
      }
      return ConstMatrixMap<Acc>(buf_.data(), rows, cols);
    }
  }

 private:
  std::vector<Acc> buf_;  // unused when T == Acc
  const T* last_src_ = nullptr;
  Index last_size_ = 0;
};

/// Writes an accumulate-type block to storage, rounding once.
template <class T, class Derived>
void store_rows(const Eigen::MatrixBase<Derived>& src, T* dst) {
  if constexpr (std::is_same<T, typename Derived::Scalar>::value) {
    MatrixMap<T>(dst, src.rows(), src.cols()) = src;
  } else {
    static_assert(static_cast<int>(Derived::Flags) & Eigen::RowMajorBit, "store_rows takes row-major blocks");
    // Rows may be strided (a block of a wider matrix): convert row by row.
    const Derived& m = src.derived();
    for (Index r = 0; r < m.rows(); ++r) convert(m.data() + r * m.outerStride(), dst + r * m.cols(), m.cols());
  }
}

}  // namespace detail
}  // namespace softfree
