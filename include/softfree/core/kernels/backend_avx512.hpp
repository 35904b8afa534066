#pragma once
// The AVX-512 backend (16-lane float packets): conversions in registers (vcvtph2ps, vcvtps2ph,
// vcvtneps2bf16 where AVX512-BF16 is compiled in), non-temporal stores, the exponential's scaling
// in one vscalefps under a mask, an approximate reciprocal refined by one Newton step, and masked
// multiplies. Other packet types (double, the 8- and 4-lane halves of the column tails) fall
// through to the generic code.
//
// Intrinsics are the zero-masked forms with a full mask (the same instruction): GCC 12.1-12.2's
// unmasked forms of many (max, min, round, conversions, shifts, rcp14, extracts) start from
// _mm512_undefined_*() and warn (-Wmaybe-uninitialized, GCC bug 105593) in every program that
// inlines them, Eigen's pmax, pmin, print and predux among them; kernels call vmax, vmin and
// vsum (core/kernels/math.hpp) instead.
#include <immintrin.h>

#include "backend_generic.hpp"

namespace softfree {
namespace detail {
inline namespace SOFTFREE_ISA {

struct Avx512Backend : GenericBackend {
  static constexpr const char* kName = "avx512";

  /// True for the 16-float packet this backend accelerates (and the 8-double one).
  template <class P>
  static constexpr bool is16f() {
    return std::is_same<scalar_of<P>, float>::value && lanes<P>() == 16;
  }
  template <class P>
  static constexpr bool is8d() {
    return std::is_same<scalar_of<P>, double>::value && lanes<P>() == 8;
  }

  template <class T>
  static EIGEN_ALWAYS_INLINE Packet<accum_t<T>> load(const T* src) {
    if constexpr (std::is_same<T, Eigen::half>::value || std::is_same<T, Eigen::bfloat16>::value) {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
      if constexpr (std::is_same<T, Eigen::half>::value)
        return _mm512_maskz_cvtph_ps(kAll, h);
      else
        return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(kAll, _mm512_maskz_cvtepu16_epi32(kAll, h), 16));
    } else {
      return GenericBackend::load(src);
    }
  }

  template <class T, bool Stream = false>
  static EIGEN_ALWAYS_INLINE void store(T* dst, const Packet<accum_t<T>>& x) {
    if constexpr (std::is_same<T, float>::value) {
      if constexpr (Stream)
        _mm512_stream_ps(dst, x);
      else
        _mm512_storeu_ps(dst, x);
    } else if constexpr (std::is_same<T, Eigen::half>::value || std::is_same<T, Eigen::bfloat16>::value) {
      const __m256i h = narrow(dst, x);
      if constexpr (Stream)
        _mm256_stream_si256(reinterpret_cast<__m256i*>(dst), h);
      else
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), h);
    } else {
      GenericBackend::store<T, Stream>(dst, x);
    }
  }

  static void stream_fence() { _mm_sfence(); }

  /// vmaxps / vminps return their second operand when either is NaN: called (b, a), a NaN in a
  /// gives NaN and one only in b gives a, std::max's rule and Eigen's pmax / pmin on every other
  /// backend (SoftGaussian's min(t, 0) turned a NaN distance into a weight of 1 otherwise).
  template <class P>
  static EIGEN_ALWAYS_INLINE P max(const P& a, const P& b) {
    if constexpr (is16f<P>())
      return _mm512_maskz_max_ps(kAll, b, a);
    else if constexpr (is8d<P>())
      return _mm512_maskz_max_pd(kAll8, b, a);
    else
      return GenericBackend::max(a, b);
  }
  template <class P>
  static EIGEN_ALWAYS_INLINE P min(const P& a, const P& b) {
    if constexpr (is16f<P>())
      return _mm512_maskz_min_ps(kAll, b, a);
    else if constexpr (is8d<P>())
      return _mm512_maskz_min_pd(kAll8, b, a);
    else
      return GenericBackend::min(a, b);
  }

  /// The sum of a packet's lanes.
  template <class P>
  static EIGEN_ALWAYS_INLINE scalar_of<P> sum(const P& a) {
    if constexpr (is8d<P>())
      return ei::predux(_mm256_add_pd(_mm512_maskz_extractf64x4_pd(kAll8, a, 0), _mm512_maskz_extractf64x4_pd(kAll8, a, 1)));
    else
      return GenericBackend::sum(a);
  }

  template <class P>
  static EIGEN_ALWAYS_INLINE P exp2_nonpositive(P t) {
    if constexpr (is16f<P>()) {  // a mask register and one vscalefps
      const __mmask16 keep = _mm512_cmp_ps_mask(t, _mm512_set1_ps(-126.0f), _CMP_NLT_UQ);
      // Lanes below -126 may give a NaN fraction: masked off.
      const P k = _mm512_maskz_roundscale_ps(kAll, t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      return _mm512_maskz_scalef_ps(keep, exp2_fraction(ei::psub(t, k)), k);
    } else {
      return GenericBackend::exp2_nonpositive(t);
    }
  }

  template <class P>
  static EIGEN_ALWAYS_INLINE bool any(const P& mask) {
    if constexpr (is16f<P>()) {
      const __m512i m = _mm512_castps_si512(mask);
      return _mm512_test_epi32_mask(m, m) != 0;
    } else if constexpr (is8d<P>()) {
      const __m512i m = _mm512_castpd_si512(mask);
      return _mm512_test_epi64_mask(m, m) != 0;
    } else {
      return GenericBackend::any(mask);
    }
  }

  /// About 1 ulp: a full-width division has a throughput of one per ~10 cycles (AftSimple's bound).
  template <class P>
  static EIGEN_ALWAYS_INLINE P reciprocal(const P& a) {
    if constexpr (is16f<P>()) {
      const __m512 y = _mm512_maskz_rcp14_ps(kAll, a);
      return _mm512_mul_ps(y, _mm512_fnmadd_ps(a, y, _mm512_set1_ps(2.0f)));
    } else {
      return GenericBackend::reciprocal(a);
    }
  }

  /// One masked multiply (Eigen's pselect takes a vector mask).
  template <class P>
  static EIGEN_ALWAYS_INLINE P mul_where_negative(const P& q, const P& r, const P& e) {
    if constexpr (is16f<P>())
      return _mm512_mask_mul_ps(r, _mm512_cmp_ps_mask(q, _mm512_setzero_ps(), _CMP_LT_OQ), r, e);
    else
      return GenericBackend::mul_where_negative(q, r, e);
  }

 private:
  static constexpr __mmask16 kAll = 0xffff;
  static constexpr __mmask8 kAll8 = 0xff;

  // 16 floats rounded to half or bfloat16 (nearest even, NaN kept quiet), as from_float does.
  template <class T>
  static EIGEN_ALWAYS_INLINE __m256i narrow(const T*, const __m512& x) {
    if constexpr (std::is_same<T, Eigen::half>::value) {
      return _mm512_maskz_cvtps_ph(kAll, x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    } else {
#if defined(__AVX512BF16__) && defined(__AVX512DQ__)
      // vcvtneps2bf16 rounds as from_float but flushes subnormal inputs to zero: packets with a
      // subnormal lane (rare) take the integer path below.
      if (EIGEN_PREDICT_TRUE(_mm512_fpclass_ps_mask(x, 0x20) == 0)) return reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(x));
#endif
      // As from_float: add 0x7fff + the kept lsb, keep the top half; NaN: set the quiet bit.
      const __m512i u = _mm512_castps_si512(x);
      const __m512i lsb = _mm512_and_si512(_mm512_maskz_srli_epi32(kAll, u, 16), _mm512_set1_epi32(1));
      __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
      r = _mm512_mask_or_epi32(r, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), u, _mm512_set1_epi32(0x00400000));
      return _mm512_maskz_cvtepi32_epi16(kAll, _mm512_maskz_srli_epi32(kAll, r, 16));
    }
  }
};

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
