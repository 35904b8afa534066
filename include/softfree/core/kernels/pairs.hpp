#pragma once
// Operands of the bf16 products: values rounded to bf16 and packed two per 32-bit word along the
// product's depth, the layout vdpbf16ps (backend_avx512_bf16.hpp) and the AMX tiles both read.
//
//   PairA        A(r, t) = the word of depth pair t of row r (any strides, in words)
//   PairRowsB    B packed as [depth pairs][columns] words
//   gemm_pairs   the register-blocked product (gemm.hpp) over them, columns in whole packets
//
// Packing: pack_rows (rows of values -> their own pairs: K, whose depth runs along its rows),
// pack_columns (pairs down columns, transposed: V^T, Q^T), and the Ops' vector pack of two rows
// of a float tile (a weight tile, every tile). An odd depth ends in a pair whose second half is
// zero. Bf16Loader gives inputs as floats already rounded to bf16, so the float code that shares
// them with a product (SOFT's norms, causal diagonal keys) sees exactly the operands' values.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "convert.hpp"
#include "gemm.hpp"

namespace softfree {
namespace detail {

// ISA-independent (as packet.hpp's scalar conversions): tables shared across translation units
// (AftFull's cached exp(w)) are packed with these.

using PairWord = std::uint32_t;

/// Depth pairs of a depth of n values.
constexpr Index pairs_of(Index n) { return (n + 1) / 2; }

/// The word of two floats that are bf16 values (as Bf16Loader leaves them): their top halves.
inline PairWord pair_word(float lo, float hi) {
  std::uint32_t a, b;
  std::memcpy(&a, &lo, 4);
  std::memcpy(&b, &hi, 4);
  return (a >> 16) | (b & 0xffff0000u);
}

/// The word of two floats rounded to bf16 (nearest even; NaN stays NaN).
inline PairWord pair_word_rounded(float lo, float hi) {
  Eigen::bfloat16 a, b;
  from_float(lo, &a);
  from_float(hi, &b);
  return pair_word(to_float(a), to_float(b));
}

inline namespace SOFTFREE_ISA {

/// A(r, t) = a[r * ar + t * at], in words.
struct PairA {
  const PairWord* a;
  Index ar, at;
  EIGEN_ALWAYS_INLINE PairWord operator()(Index r, Index t) const { return a[r * ar + t * at]; }
  EIGEN_ALWAYS_INLINE PairA rows_from(Index r0) const { return {a + r0 * ar, ar, at}; }
};

/// B as [pairs][ldb] words; the multiply-add comes from Ops.
template <class PairOps>
struct PairRowsB {
  using Ops = PairOps;
  const PairWord* b;
  Index ldb;
  EIGEN_ALWAYS_INLINE const PairWord* row(Index t) const { return b + t * ldb; }
  EIGEN_ALWAYS_INLINE PairRowsB cols_from(Index c0) const { return {b + c0, ldb}; }
};

/// Epilogue wrapper: the product of unscaled operands times s. Scaling in float after the product
/// keeps the operands the caller's values (for bf16 storage, exact) instead of rounding s q.
template <class C>
struct ScaledC {
  using Scalar = typename C::Scalar;
  C c;
  Scalar s, inv;
  template <class P>
  EIGEN_ALWAYS_INLINE P init(Index r, Index col) const {
    return ei::pmul(c.template init<P>(r, col), ei::pset1<P>(inv));
  }
  template <class P>
  EIGEN_ALWAYS_INLINE void store(Index r, Index col, const P& acc) const {
    c.store(r, col, ei::pmul(acc, ei::pset1<P>(s)));
  }
  EIGEN_ALWAYS_INLINE ScaledC at(Index r0, Index c0) const { return {c.at(r0, c0), s, inv}; }
};

/// C (rows x cols, cols a multiple of the packet width) = A B over `pairs` depth pairs.
template <class Tiling, class A, class B, class C>
EIGEN_ALWAYS_INLINE void gemm_pairs(Index rows, Index cols, Index pairs, const A a, const B b, const C c) {
  using P = Packet<float>;
  constexpr int NP = Tiling::kPackets;
  constexpr Index L = lanes<P>();
  eigen_assert(cols % L == 0);
  if (rows <= 0) return;
  Index c0 = 0;
  for (; c0 + NP * L <= cols; c0 += NP * L) gemm_rows<Tiling::rows(NP), NP, P>(0, rows, c0, pairs, a, b, c);
  gemm_packets<Tiling, NP - 1, P>(rows, c0, cols, pairs, a, b, c);
}

/// dst[r * rs + t * ts] = (x[r][2t], x[r][2t + 1]) rounded to bf16: rows of d values (row stride
/// ldx), each as its own pairs (an A operand whose depth runs along its rows: K, Q, SOFT's P with
/// ts = 1; a B operand of pairs down its rows, Q^T, with rs = 1). With ts = 1, 16 words at a time
/// through Ops where it has a vector pack (the last run masked; like the Ops pack, it rounds a
/// subnormal value to zero).
template <class Ops = PairOps>
void pack_rows(const float* x, Index rows, Index d, Index ldx, PairWord* dst, Index rs, Index ts = 1) {
  if constexpr (!std::is_same<Ops, NoPairOps>::value) {
    if (ts == 1) {
      for (Index r = 0; r < rows; ++r)
        for (Index c = 0; c < d; c += 32)
          Ops::pack_adjacent(x + r * ldx + c, static_cast<int>(std::min<Index>(32, d - c)), dst + r * rs + c / 2);
      return;
    }
  }
  for (Index r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    for (Index t = 0; t < d / 2; ++t) dst[r * rs + t * ts] = pair_word_rounded(xr[2 * t], xr[2 * t + 1]);
    if (d % 2) dst[r * rs + d / 2 * ts] = pair_word_rounded(xr[d - 1], 0.0f);
  }
}

/// dst[c * ld + t] = (x[2t][c], x[2t + 1][c]) rounded to bf16 for c < cols, t < pairs_of(rows):
/// pairs down the columns of a rows x cols block (row stride ldx), one output row per column (an
/// A operand whose depth runs down its columns: V^T, K^T).
inline void pack_columns(const float* x, Index rows, Index cols, Index ldx, PairWord* dst, Index ld) {
  for (Index t = 0; t < rows / 2; ++t) {
    const float *lo = x + 2 * t * ldx, *hi = lo + ldx;
    for (Index c = 0; c < cols; ++c) dst[c * ld + t] = pair_word_rounded(lo[c], hi[c]);
  }
  if (rows % 2)
    for (Index c = 0; c < cols; ++c) dst[c * ld + rows / 2] = pair_word_rounded(x[(rows - 1) * ldx + c], 0.0f);
}

/// dst[t * ld + c] = (x[2t][c], x[2t + 1][c]) rounded to bf16 for t < pairs_of(rows), c < cols,
/// through the Ops' vector pack (a scalar tail past the last 16 columns); columns [cols, ld) are
/// zero (ld a multiple of 16, so a product can run whole packets), and an odd last row pairs with
/// zeros. The B operand of a product whose depth runs down x's rows (weight tiles, AFT's X, V).
template <class Ops>
void pack_row_pairs(const float* x, Index rows, Index cols, Index ldx, PairWord* dst, Index ld) {
  eigen_assert(ld % 16 == 0 && ld >= cols);
  const float zeros[16] = {};
  const Index whole = cols / 16 * 16;
  for (Index t = 0; t < pairs_of(rows); ++t) {
    const float* lo = x + 2 * t * ldx;
    const float* hi = 2 * t + 1 < rows ? lo + ldx : nullptr;
    PairWord* o = dst + t * ld;
    for (Index c = 0; c < whole; c += 16) Ops::pack(lo + c, hi ? hi + c : zeros, o + c);
    for (Index c = whole; c < ld; ++c) o[c] = c < cols ? pair_word_rounded(lo[c], hi ? hi[c] : 0.0f) : PairWord(0);
  }
}

/// pack_row_pairs of bfloat16 storage: the values are bf16 already, so their bits are paired
/// as they are (no conversion to float and back).
template <class Ops>
void pack_row_pairs(const Eigen::bfloat16* x, Index rows, Index cols, Index ldx, PairWord* dst, Index ld) {
  eigen_assert(ld % 16 == 0 && ld >= cols);
  const std::uint16_t zeros[16] = {};
  const auto bits = [](const Eigen::bfloat16* p) { return PairWord(Eigen::numext::bit_cast<std::uint16_t>(*p)); };
  const Index whole = cols / 16 * 16;
  for (Index t = 0; t < pairs_of(rows); ++t) {
    const Eigen::bfloat16* lo = x + 2 * t * ldx;
    const Eigen::bfloat16* hi = 2 * t + 1 < rows ? lo + ldx : nullptr;
    PairWord* o = dst + t * ld;
    for (Index c = 0; c < whole; c += 16)
      Ops::interleave(reinterpret_cast<const std::uint16_t*>(lo + c),
                      hi ? reinterpret_cast<const std::uint16_t*>(hi + c) : zeros, o + c);
    for (Index c = whole; c < ld; ++c) o[c] = c < cols ? bits(lo + c) | (hi ? bits(hi + c) << 16 : 0) : PairWord(0);
  }
}

/// Columns rounded up to whole 16-lane packets: the row stride of pair operands and their products.
constexpr Index pad_to_16(Index n) { return (n + 15) / 16 * 16; }

/// Rounds n floats to bf16 values (nearest even, as from_float), in place.
inline void round_to_bf16(float* x, Index n) {
  constexpr Index L = kLanes<float>;
  Eigen::bfloat16 tmp[L];
  const Index whole = n / L * L;  // (not `i + L <= n`: GCC 12 then warns of overflow in the tail)
  for (Index i = 0; i < whole; i += L) {
    store_packet(tmp, ei::ploadu<Packet<float>>(x + i));
    ei::pstoreu(x + i, load_packet(tmp));
  }
  for (Index i = whole; i < n; ++i) {
    Eigen::bfloat16 b;
    from_float(x[i], &b);
    x[i] = to_float(b);
  }
}

/// A contiguous rows x cols block of storage as floats rounded to bf16 (for bfloat16 storage, the
/// values themselves), converted once into a buffer owned by the loader; asking again for the
/// block it converted last returns that copy (as TileLoader).
template <class T>
class Bf16Loader {
 public:
  ConstMatrixMap<float> operator()(const T* src, Index rows, Index cols) {
    if (src != last_src_ || rows * cols != last_size_) {
      float* buf = reserve(buf_, rows * cols);
      convert(src, buf, rows * cols);
      if constexpr (!std::is_same<T, Eigen::bfloat16>::value) round_to_bf16(buf, rows * cols);
      last_src_ = src;
      last_size_ = rows * cols;
    }
    return ConstMatrixMap<float>(buf_.data(), rows, cols);
  }

 private:
  AlignedBuffer<float> buf_;
  const T* last_src_ = nullptr;
  Index last_size_ = 0;
};

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
