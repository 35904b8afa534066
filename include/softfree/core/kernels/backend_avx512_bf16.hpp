#pragma once
// The AVX512-BF16 product backend: the multiply-add of the register-blocked product (gemm.hpp)
// on bf16 pairs, vdpbf16ps, which adds a[2i] b[2i] + a[2i+1] b[2i+1] into float lane i. Operands
// run along the depth in pairs (pairs.hpp has the layout and the packing): B as 16 pair words
// per packet, A as one pair word broadcast. Products of two bf16 values are exact in float and
// the accumulators are float, so the only rounding beyond the float path's is the operands'.
//
// Selected where it is faster than float FMA (select.hpp): on AMD Zen 4/5 vdpbf16ps does twice
// the float FMA's work per cycle; on Intel Xeon with AMX it does half, and is not chosen there.
#include <immintrin.h>

#include <cstdint>

#include "packet.hpp"

namespace softfree {
namespace detail {
inline namespace SOFTFREE_ISA {

struct Avx512Bf16Ops {
  static constexpr const char* kName = "avx512_bf16";
  /// Two bf16 values adjacent along the depth: the low half is the first.
  using Word = std::uint32_t;

  template <class P>
  static EIGEN_ALWAYS_INLINE __m512i load(const Word* row, int p) {
    return _mm512_loadu_si512(static_cast<const void*>(row + p * 16));
  }
  template <class P>
  static EIGEN_ALWAYS_INLINE __m512i bcast(Word w) {
    return _mm512_set1_epi32(static_cast<int>(w));
  }
  template <class P>
  static EIGEN_ALWAYS_INLINE P madd(const __m512i& a, const __m512i& b, const P& acc) {
    static_assert(std::is_same<scalar_of<P>, float>::value && lanes<P>() == 16, "bf16 pairs accumulate into 16 floats");
    return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh>(a), reinterpret_cast<__m512bh>(b));
  }

  /// dst[i] = (bf16(lo[i]), bf16(hi[i])) for i < 16, rounded to nearest even (vcvtne2ps2bf16: a
  /// subnormal input becomes 0, which in a product of bf16 operands is below their rounding).
  static EIGEN_ALWAYS_INLINE void pack(const float* lo, const float* hi, Word* dst) {
    const __m512i both = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(_mm512_loadu_ps(hi), _mm512_loadu_ps(lo)));
    // both = lo[0..15] then hi[0..15] as 16-bit lanes; interleave them into pairs.
    const __m512i order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                           21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    _mm512_storeu_si512(static_cast<void*>(dst), _mm512_permutexvar_epi16(order, both));
  }
};

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
