#pragma once
// Precision traits: what a storage type accumulates in, the packet types of the kernels, and
// conversion to and from the accumulate type.
//
// half and bfloat16 are storage formats: products and sums run in float. Tiles are converted
// once into a reused workspace, or packets in registers as they are loaded, never per element
// inside a product.
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__F16C__) || defined(__AVX2__) || defined(__AVX512F__)
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

template <class Acc>
using Packet = typename Eigen::internal::packet_traits<Acc>::type;
template <class Acc>
constexpr Index kLanes = Eigen::internal::unpacket_traits<Packet<Acc>>::size;

/// Aligned, grow-only scratch buffer.
template <class Acc>
using AlignedBuffer = std::vector<Acc, Eigen::aligned_allocator<Acc>>;

/// True for a 16-lane float packet (AVX-512). Tested through unpacket_traits: naming __m512 in
/// std::is_same makes GCC warn about its vector attributes.
template <class P>
constexpr bool kIsPacket16f = std::is_same<typename Eigen::internal::unpacket_traits<P>::type, float>::value &&
                              Eigen::internal::unpacket_traits<P>::size == 16;

// Conversions between storage and accumulate types, one packet at a time (load_packet,
// store_packet) or in bulk (convert). Eigen's own cast of half is scalar on x86 (about 1.7 ns an
// element here, more than SimA's arithmetic per element), so half uses the F16C / AVX-512
// conversion instructions when the caller compiles for them, and bfloat16 (the top half of a
// float) integer shifts. Both round to nearest even, as Eigen's scalar conversions do; a NaN
// stays a (quiet) NaN.

inline float to_float(Eigen::half x) { return static_cast<float>(x); }
inline float to_float(Eigen::bfloat16 x) {
  static_assert(sizeof(Eigen::bfloat16) == 2, "bfloat16 is 16 bits");
  std::uint16_t b;
  std::memcpy(&b, &x, 2);
  const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;  // exact: a float's top half
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline void from_float(float x, Eigen::half* dst) { *dst = static_cast<Eigen::half>(x); }
inline void from_float(float x, Eigen::bfloat16* dst) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  // Round to nearest even on the dropped 16 bits; NaN stays a (quiet) NaN.
  const std::uint32_t r = nan ? (u | 0x00400000u) : u + 0x7fffu + ((u >> 16) & 1u);
  const std::uint16_t b = static_cast<std::uint16_t>(r >> 16);
  std::memcpy(static_cast<void*>(dst), &b, 2);
}

/// The kLanes<accum_t<T>> storage values at src (no alignment needed) as one accumulate-type
/// packet, converted in registers: kernels that stream over their inputs once read half and
/// bfloat16 directly instead of through a converted copy.
template <class T>
EIGEN_ALWAYS_INLINE Packet<accum_t<T>> load_packet(const T* src) {
  namespace ei = Eigen::internal;
  using P = Packet<accum_t<T>>;
  if constexpr (std::is_same<T, accum_t<T>>::value) {
    return ei::ploadu<P>(src);
  } else {
#if defined(__AVX512F__)
    if constexpr (kIsPacket16f<P>) {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
      if constexpr (std::is_same<T, Eigen::half>::value)
        return _mm512_cvtph_ps(h);
      else
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
#elif defined(__AVX2__) && defined(__F16C__)
    if constexpr (kLanes<float> == 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
      if constexpr (std::is_same<T, Eigen::half>::value)
        return _mm256_cvtph_ps(h);
      else
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
#endif
    alignas(64) float x[kLanes<float>];
    for (Index i = 0; i < kLanes<float>; ++i) x[i] = to_float(src[i]);
    return ei::pload<P>(x);
  }
}

/// Stores the packet x at dst in storage type T, rounding once. Stream: a non-temporal store
/// (AVX-512 only, elsewhere an ordinary one), for outputs larger than the caches; dst must then
/// be aligned to the bytes stored (64 for float, 32 for half and bfloat16).
template <class T, bool Stream = false>
EIGEN_ALWAYS_INLINE void store_packet(T* dst, const Packet<accum_t<T>>& x) {
  namespace ei = Eigen::internal;
#if defined(__AVX512F__)
  if constexpr (kIsPacket16f<Packet<accum_t<T>>>) {
    if constexpr (std::is_same<T, float>::value) {
      if constexpr (Stream)
        _mm512_stream_ps(dst, x);
      else
        _mm512_storeu_ps(dst, x);
      return;
    } else {
      __m256i h;
      if constexpr (std::is_same<T, Eigen::half>::value) {
        h = _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      } else {
#if defined(__AVX512BF16__) && defined(__AVX512DQ__)
        // vcvtneps2bf16 rounds as from_float (nearest even, NaN quieted) but flushes subnormal
        // inputs to zero: packets with a subnormal lane (rare) take the integer path below.
        if (EIGEN_PREDICT_TRUE(_mm512_fpclass_ps_mask(x, 0x20) == 0)) {
          h = reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(x));
        } else
#endif
        {  // as from_float: add 0x7fff + the kept lsb, keep the top half; NaN: set the quiet bit
          const __m512i u = _mm512_castps_si512(x);
          const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
          __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
          r = _mm512_mask_or_epi32(r, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), u, _mm512_set1_epi32(0x00400000));
          h = _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
        }
      }
      if constexpr (Stream)
        _mm256_stream_si256(reinterpret_cast<__m256i*>(dst), h);
      else
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), h);
      return;
    }
  }
#elif defined(__F16C__)
  if constexpr (std::is_same<T, Eigen::half>::value && kLanes<float> == 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    return;
  }
#endif
  if constexpr (std::is_same<T, accum_t<T>>::value) {
    ei::pstoreu(dst, x);
  } else {
    alignas(64) float y[kLanes<float>];
    ei::pstore(y, x);
    for (Index i = 0; i < kLanes<float>; ++i) from_float(y[i], dst + i);
  }
}

/// Widening conversions prefetch their source this far ahead: kernels convert tiles of several
/// inputs in turn (K, V, Q), and the hardware prefetcher alone follows such interleaved streams
/// poorly (AftSimple in half at N = 16384 read memory at half the speed without it).
constexpr Index kPrefetchBytes = 16384;

template <class T>
EIGEN_ALWAYS_INLINE void prefetch_ahead(const T* p) {
  Eigen::internal::prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes);
}

/// n values from storage to float (half, bfloat16).
template <class T>
void convert(const T* src, float* dst, Index n) {
  constexpr Index L = kLanes<float>;
  Index i = 0;
  for (; i + L <= n; i += L) {
    prefetch_ahead(src + i);
    Eigen::internal::pstoreu(dst + i, load_packet(src + i));
  }
  for (; i < n; ++i) dst[i] = to_float(src[i]);
}

/// n values from float to storage (half, bfloat16), rounded to nearest even.
template <class T>
void convert(const float* src, T* dst, Index n) {
  constexpr Index L = kLanes<float>;
  Index i = 0;
  for (; i + L <= n; i += L) store_packet(dst + i, Eigen::internal::ploadu<Packet<float>>(src + i));
  for (; i < n; ++i) from_float(src[i], dst + i);
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
