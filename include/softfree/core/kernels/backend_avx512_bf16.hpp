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

  // Operands are typed __m512bh from the start: with __m512i operands cast at the multiply-add,
  // GCC 12 moved each broadcast through the stack and reloaded B packets inside the flash block's
  // score product (scores ran at about half the rate of the same gemm elsewhere).
  template <class P>
  static EIGEN_ALWAYS_INLINE __m512bh load(const Word* row, int p) {
    return (__m512bh)_mm512_loadu_si512(static_cast<const void*>(row + p * 16));
  }
  template <class P>
  static EIGEN_ALWAYS_INLINE __m512bh bcast(Word w) {
    return (__m512bh)_mm512_set1_epi32(static_cast<int>(w));
  }
  template <class P>
  static EIGEN_ALWAYS_INLINE P madd(const __m512bh& a, const __m512bh& b, const P& acc) {
    static_assert(std::is_same<scalar_of<P>, float>::value && lanes<P>() == 16, "bf16 pairs accumulate into 16 floats");
    return _mm512_dpbf16_ps(acc, a, b);
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
  /// dst[i] = (lo[i], hi[i]) for i < 16: two rows of 16 bf16 values (their bits) as pair words,
  /// with no conversion (bfloat16 storage straight into a B operand).
  static EIGEN_ALWAYS_INLINE void interleave(const std::uint16_t* lo, const std::uint16_t* hi, Word* dst) {
    // (The maskz forms with every lane set: the plain ones start from an undefined register, which
    // GCC 12 reports as maybe-uninitialized at -O3.)
    const __mmask16 all = 0xffff;
    const __m512i l = _mm512_maskz_cvtepu16_epi32(all, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lo)));
    const __m512i h = _mm512_maskz_cvtepu16_epi32(all, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(hi)));
    _mm512_storeu_si512(static_cast<void*>(dst), _mm512_or_si512(l, _mm512_maskz_slli_epi32(all, h, 16)));
  }
  /// dst[i] = (bf16(x[2i]), bf16(x[2i + 1])) for i < pairs_of(n): n <= 32 values along the depth,
  /// already in pair order, rounded as pack; an odd n ends in (x, 0). Masked loads and store, so
  /// nothing past x[n - 1] is read and nothing past the last word written.
  static EIGEN_ALWAYS_INLINE void pack_adjacent(const float* x, int n, Word* dst) {
    const __mmask16 lo = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
    const __mmask16 hi = n >= 32 ? __mmask16(0xffff) : n > 16 ? __mmask16((1u << (n - 16)) - 1) : __mmask16(0);
    const __m512bh both = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, x + 16), _mm512_maskz_loadu_ps(lo, x));
    const int words = (n + 1) / 2;
    const __mmask16 out = words >= 16 ? __mmask16(0xffff) : __mmask16((1u << words) - 1);
    _mm512_mask_storeu_epi32(static_cast<void*>(dst), out, (__m512i)both);
  }
};

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
