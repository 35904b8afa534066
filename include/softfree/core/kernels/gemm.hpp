#pragma once
// The register-blocked product every kernel runs: C = A B over packets of C's columns, with
// A's entries broadcast from memory (x86 folds the broadcast into the FMA), written on Eigen's
// packet layer so it vectorises for any ISA and for float or double accumulation.
//
//   gemm<Tiling>(rows, cols, depth, a, b, c)
//
// - Addressing policies say where operands live: StridedA (any strides: row-major A, or the
//   transpose of a row-major matrix), PackedA<MR> (A packed as [depth][MR], compile-time
//   strides), RowsB (B row-major) and TableB (each row of B anywhere: AFT's windows).
// - The epilogue policy C says how a block of accumulators starts and ends: StoreC (C = A B),
//   AddC (C += A B), or a method's own (SOFT starts from the Gaussian's norm terms and stores
//   exp2 of the sums): init<P>(r, col) and store(r, col, acc) per packet, and at(r0, c0), the
//   same policy moved to a block's corner.
// - The multiply-add is the B policy's Ops: FmaOps (one FMA per depth step, float or double), or
//   a product backend's pair ops (two bf16 values per depth step: pairs.hpp).
// - Tiling<NP, RJ, MaxRJ> sets the register block: RJ rows by NP packets of columns, the
//   accumulators in registers across the whole depth; a remainder of whole packets takes one
//   narrower block with up to MaxRJ rows, then half packets and scalars finish the columns (so
//   no caller pads C or the depth); leftover rows take blocks of RJ / 2, RJ / 4, ... 1.
//
// Loop order: column blocks outer, row blocks inner, so a block of B (depth x NP packets) is
// reused by every row block from L1. The driver is inlined into each call site: many calls are a
// single 6 x 4 block (AftFull's row groups) or one row (AFT's windows), where a call per block
// would cost a few percent. gemm_dot is the one other shape, for products whose two
// operands both run along the depth.
#include <algorithm>
#include <type_traits>

#include "math.hpp"

namespace softfree {
namespace detail {
inline namespace SOFTFREE_ISA {

/// Register block: RJ rows by NP packets; a narrower block of np packets takes
/// min(MaxRJ, RJ NP / np) rows (about as many accumulators).
template <int NP, int RJ, int MaxRJ = RJ>
struct Tiling {
  static constexpr int kPackets = NP;
  static constexpr int rows(int np) { return np == NP ? RJ : std::min(MaxRJ, RJ * NP / np); }
};

/// The default register block of general products: 6 x 4 packets (24 accumulators keep both
/// FMA ports busy), 8 x 3, 12 x 2 and 12 x 1 for narrower remainders.
using GeneralTiling = Tiling<4, 6, 12>;

// Policies are small values passed by value, so their fields live in registers (a store through
// C cannot alias them), and each block works on copies moved to its corner (rows_from, cols_from,
// at), so addresses inside a block are a base plus compile-time offsets.

/// The multiply-add of float and double products: A broadcast, B loaded a packet at a time, one
/// FMA per depth step. The B policy names its Ops, so a product on other operands (bf16 pairs,
/// pairs.hpp) runs through the same blocks with another multiply-add.
struct FmaOps {
  template <class P, class Acc>
  static EIGEN_ALWAYS_INLINE P load(const Acc* row, int p) {
    return ei::ploadu<P>(row + p * lanes<P>());
  }
  template <class P, class Acc>
  static EIGEN_ALWAYS_INLINE P bcast(Acc a) {
    return ei::pset1<P>(a);
  }
  template <class P>
  static EIGEN_ALWAYS_INLINE P madd(const P& a, const P& b, const P& acc) {
    return vmadd(a, b, acc);
  }
};

/// A(r, t) = a[r * ar + t * at].
template <class Acc>
struct StridedA {
  const Acc* a;
  Index ar, at;
  EIGEN_ALWAYS_INLINE Acc operator()(Index r, Index t) const { return a[r * ar + t * at]; }
  EIGEN_ALWAYS_INLINE StridedA rows_from(Index r0) const { return {a + r0 * ar, ar, at}; }
};

/// A packed as [depth][MR]: A(r, t) = a[t * MR + r].
template <class Acc, int MR>
struct PackedA {
  const Acc* a;
  EIGEN_ALWAYS_INLINE Acc operator()(Index r, Index t) const { return a[t * MR + r]; }
  EIGEN_ALWAYS_INLINE PackedA rows_from(Index r0) const { return {a + r0}; }
};

/// B row-major: row t at b + t * ldb.
template <class Acc>
struct RowsB {
  using Ops = FmaOps;
  const Acc* b;
  Index ldb;
  EIGEN_ALWAYS_INLINE const Acc* row(Index t) const { return b + t * ldb; }
  EIGEN_ALWAYS_INLINE RowsB cols_from(Index c0) const { return {b + c0, ldb}; }
};

/// B with row t at rows[t] + off.
template <class Acc>
struct TableB {
  using Ops = FmaOps;
  const Acc* const* rows;
  Index off;
  EIGEN_ALWAYS_INLINE const Acc* row(Index t) const { return rows[t] + off; }
  EIGEN_ALWAYS_INLINE TableB cols_from(Index c0) const { return {rows, off + c0}; }
};

/// C = A B, row-major with leading dimension ldc.
template <class Acc>
struct StoreC {
  using Scalar = Acc;
  Acc* c;
  Index ldc;
  template <class P>
  EIGEN_ALWAYS_INLINE P init(Index, Index) const {
    return ei::pset1<P>(Acc(0));
  }
  template <class P>
  EIGEN_ALWAYS_INLINE void store(Index r, Index col, const P& acc) const {
    ei::pstoreu(c + r * ldc + col, acc);
  }
  EIGEN_ALWAYS_INLINE StoreC at(Index r0, Index c0) const { return {c + r0 * ldc + c0, ldc}; }
};

/// C += A B.
template <class Acc>
struct AddC {
  using Scalar = Acc;
  Acc* c;
  Index ldc;
  template <class P>
  EIGEN_ALWAYS_INLINE P init(Index r, Index col) const {
    return ei::ploadu<P>(c + r * ldc + col);
  }
  template <class P>
  EIGEN_ALWAYS_INLINE void store(Index r, Index col, const P& acc) const {
    ei::pstoreu(c + r * ldc + col, acc);
  }
  EIGEN_ALWAYS_INLINE AddC at(Index r0, Index c0) const { return {c + r0 * ldc + c0, ldc}; }
};

/// The register block: RJ rows by NP packets of P, with a, b and c moved to its corner.
template <int RJ, int NP, class P, class A, class B, class C>
EIGEN_ALWAYS_INLINE void gemm_block(Index depth, const A a, const B b, const C c) {
  constexpr Index L = lanes<P>();
  P acc[RJ][NP];
  for (int r = 0; r < RJ; ++r)
    for (int p = 0; p < NP; ++p) acc[r][p] = c.template init<P>(r, p * L);
  using Ops = typename B::Ops;
  using X = decltype(Ops::template load<P>(b.row(0), 0));
  for (Index t = 0; t < depth; ++t) {
    const auto* bt = b.row(t);
    X x[NP];
    for (int p = 0; p < NP; ++p) x[p] = Ops::template load<P>(bt, p);
    for (int r = 0; r < RJ; ++r) {
      const auto ab = Ops::template bcast<P>(a(r, t));
      for (int p = 0; p < NP; ++p) acc[r][p] = Ops::madd(ab, x[p], acc[r][p]);
    }
  }
  for (int r = 0; r < RJ; ++r)
    for (int p = 0; p < NP; ++p) c.store(r, p * L, acc[r][p]);
}

/// Rows [r0, r1) in blocks of RJ, the rest in blocks of RJ / 2, ... 1.
template <int RJ, int NP, class P, class A, class B, class C>
EIGEN_ALWAYS_INLINE void gemm_rows(Index r0, Index r1, Index c0, Index depth, const A a, const B b, const C c) {
  const B bc = b.cols_from(c0);
  Index r = r0;
  for (; r + RJ <= r1; r += RJ) gemm_block<RJ, NP, P>(depth, a.rows_from(r), bc, c.at(r, c0));
  if constexpr (RJ > 1)
    if (r < r1) gemm_rows<RJ / 2, NP, P>(r, r1, c0, depth, a, b, c);
}

/// One block of the whole packets left at column c0 (fewer than the tiling's NP); returns the
/// first column after it.
template <class Tiling, int N, class P, class A, class B, class C>
EIGEN_ALWAYS_INLINE Index gemm_packets(Index rows, Index c0, Index cols, Index depth, const A a, const B b, const C c) {
  if constexpr (N == 0) {
    return c0;
  } else {
    if ((cols - c0) / lanes<P>() < N)
      return gemm_packets<Tiling, N - 1, P>(rows, c0, cols, depth, a, b, c);
    gemm_rows<Tiling::rows(N), N, P>(0, rows, c0, depth, a, b, c);
    return c0 + N * lanes<P>();
  }
}

/// The columns from c0 past the last whole packet of P: half packets, then scalars.
template <class Tiling, class P, class A, class B, class C>
EIGEN_ALWAYS_INLINE void gemm_tail(Index rows, Index c0, Index cols, Index depth, const A a, const B b, const C c) {
  using Acc = typename C::Scalar;
  using Half = typename ei::unpacket_traits<P>::half;
  if constexpr (lanes<P>() == 1) {
    for (; c0 < cols; ++c0) gemm_rows<Tiling::rows(1), 1, Acc>(0, rows, c0, depth, a, b, c);
  } else if constexpr (lanes<Half>() < lanes<P>()) {
    for (; c0 + lanes<Half>() <= cols; c0 += lanes<Half>())
      gemm_rows<Tiling::rows(1), 1, Half>(0, rows, c0, depth, a, b, c);
    gemm_tail<Tiling, Half>(rows, c0, cols, depth, a, b, c);
  } else {
    gemm_tail<Tiling, Acc>(rows, c0, cols, depth, a, b, c);
  }
}

/// C (rows x cols) = A (rows x depth) B (depth x cols), through the policies above.
template <class Tiling, class A, class B, class C>
EIGEN_ALWAYS_INLINE void gemm(Index rows, Index cols, Index depth, const A a, const B b, const C c) {
  using Acc = typename C::Scalar;
  using P = Packet<Acc>;
  constexpr int NP = Tiling::kPackets;
  constexpr Index L = lanes<P>();
  if (rows <= 0) return;
  Index c0 = 0;
  for (; c0 + NP * L <= cols; c0 += NP * L) gemm_rows<Tiling::rows(NP), NP, P>(0, rows, c0, depth, a, b, c);
  c0 = gemm_packets<Tiling, NP - 1, P>(rows, c0, cols, depth, a, b, c);
  gemm_tail<Tiling, P>(rows, c0, cols, depth, a, b, c);
}

/// C(r, j) = sum_t a[r * lda + t] * b[j * ldb + t] (both operands row-major along the depth),
/// with packets along the depth and one horizontal sum per element; the epilogue sees scalars.
/// For the few products of that shape (SOFT's landmarks past the packet width, SimA's
/// short-sequence order).
template <class Acc, class C>
void gemm_dot(Index rows, Index cols, Index depth, const Acc* a, Index lda, const Acc* b, Index ldb, const C c) {
  using P = Packet<Acc>;
  constexpr Index L = kLanes<Acc>;
  constexpr int RJ = 4;
  for (Index j = 0; j < cols; ++j) {
    const Acc* bj = b + j * ldb;
    for (Index r0 = 0; r0 < rows; r0 += RJ) {
      const int nr = static_cast<int>(std::min<Index>(RJ, rows - r0));
      P acc[RJ];
      Acc tail[RJ];
      for (int r = 0; r < RJ; ++r) acc[r] = ei::pset1<P>(Acc(0)), tail[r] = Acc(0);
      Index t = 0;
      for (; t + L <= depth; t += L) {
        const P x = ei::ploadu<P>(bj + t);
        for (int r = 0; r < nr; ++r) acc[r] = vmadd(ei::ploadu<P>(a + (r0 + r) * lda + t), x, acc[r]);
      }
      for (; t < depth; ++t)
        for (int r = 0; r < nr; ++r) tail[r] = vmadd(a[(r0 + r) * lda + t], bj[t], tail[r]);
      for (int r = 0; r < nr; ++r)
        c.store(r0 + r, j, c.template init<Acc>(r0 + r, j) + vsum(acc[r]) + tail[r]);
    }
  }
}

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
