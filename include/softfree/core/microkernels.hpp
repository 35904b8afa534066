#pragma once
// Register-blocked products on "transposed query" tiles, written with Eigen's packet layer so
// they vectorise for whatever the caller compiles for (SSE/AVX/AVX-512/NEON) and for float or
// double accumulation.
//
// Attention-like kernels keep a block of queries transposed, as QT (D x bq, bq a multiple of
// the packet width): score tiles are then ST = K QT (keys x queries) with packets running along
// queries, so per-query reductions over keys (max, sum) are plain packet operations with no
// horizontal reduction, and the value product is OT += V^T ST with the same packets. Both are
// outer-product loops whose scalar operand is broadcast from memory, which x86 folds into the
// FMA. Eigen's general GEMM reaches about 150 GFLOP/s on these tile shapes (depth 64); these
// loops keep the accumulators in registers and run closer to the FMA peak. bcast_product is the
// same kind of loop for general strides of A (SOFT's landmark products, AftFull's packed exp(w)).
// The exponentials the attention kernels apply to their tiles live here too.
#include <type_traits>
#include <vector>

#include "precision.hpp"

namespace softfree {
namespace detail {

/// exp(x) for x <= 0 (scores minus their running max; -inf allowed), a leaner form of Eigen's
/// pexp for float: no upper clamp, and 2^m applied directly. With AVX-512 one vscalefps does it
/// and x below -104 (where float's exp underflows) gives exactly 0; elsewhere 2^m is built in the
/// exponent bits, so x is clamped at -87.3 and the result there is about 1e-38 rather than 0.
/// Relative error is that of Cephes' polynomial, about 2 ulp. Other types use Eigen's pexp.
template <class P>
EIGEN_ALWAYS_INLINE P exp_nonpositive(const P& x) {
  namespace ei = Eigen::internal;
  using Scalar = typename ei::unpacket_traits<P>::type;
  if constexpr (std::is_same<Scalar, float>::value) {
#if defined(__AVX512F__)
    constexpr float kLowest = kIsPacket16f<P> ? -104.0f : -87.3f;
#else
    constexpr float kLowest = -87.3f;
#endif
    const P xc = ei::pmax(x, ei::pset1<P>(kLowest));
    const P m = ei::print(ei::pmul(xc, ei::pset1<P>(1.44269504088896341f)));
    P r = ei::pmadd(m, ei::pset1<P>(-0.693359375f), xc);  // Cody-Waite split of ln 2
    r = ei::pmadd(m, ei::pset1<P>(2.12194440e-4f), r);
    P y = ei::pmadd(ei::pset1<P>(1.9875691500E-4f), r, ei::pset1<P>(1.3981999507E-3f));
    y = ei::pmadd(y, r, ei::pset1<P>(8.3334519073E-3f));
    y = ei::pmadd(y, r, ei::pset1<P>(4.1665795894E-2f));
    y = ei::pmadd(y, r, ei::pset1<P>(1.6666665459E-1f));
    y = ei::pmadd(y, r, ei::pset1<P>(5.0000001201E-1f));
    y = ei::pmadd(y, r, ei::pset1<P>(1.0f));
    y = ei::pmadd(y, r, ei::pset1<P>(1.0f));
#if defined(__AVX512F__)
    if constexpr (kIsPacket16f<P>) return _mm512_scalef_ps(y, m);
#endif
    using PI = typename ei::unpacket_traits<P>::integer_packet;
    const PI e = ei::padd(ei::pcast<P, PI>(m), ei::pset1<PI>(127));
    return ei::pmul(y, ei::preinterpret<P>(ei::plogical_shift_left<23>(e)));
  } else {
    return ei::pexp(x);
  }
}

/// log2(e): kernels that fold it into a scale or a shift they apply anyway call exp2_nonpositive.
template <class Acc>
constexpr Acc kLog2e = Acc(1.4426950408889634);

/// 2^f for f in [-1/2, 1/2]: Cephes' exp2f polynomial, about 1 ulp.
template <class P>
EIGEN_ALWAYS_INLINE P exp2_fraction(const P& f) {
  namespace ei = Eigen::internal;
  P y = ei::pmadd(ei::pset1<P>(1.535336188319500e-4f), f, ei::pset1<P>(1.339887440266574e-3f));
  y = ei::pmadd(y, f, ei::pset1<P>(9.618437357674640e-3f));
  y = ei::pmadd(y, f, ei::pset1<P>(5.550332471162809e-2f));
  y = ei::pmadd(y, f, ei::pset1<P>(2.402264791363012e-1f));
  y = ei::pmadd(y, f, ei::pset1<P>(6.931472028550421e-1f));
  return ei::pmadd(y, f, ei::pset1<P>(1.0f));
}

/// 2^t for t <= 0 (and a little above: rounding in a folded shift may leave t just over 0),
/// exactly 0 below -126 (where float leaves its normal range; -inf included), NaN kept. The
/// exponent of exp_nonpositive, e^x = 2^(x log2 e), for callers that fold the factor log2 e into
/// a scale or a shift they apply anyway: three operations fewer (no clamp from above, no
/// two-step reduction), about 1 ulp (the polynomial's) on top of the rounding of t. Other types
/// use Eigen's pexp.
template <class P>
EIGEN_ALWAYS_INLINE P exp2_nonpositive(P t) {
  namespace ei = Eigen::internal;
  using Scalar = typename ei::unpacket_traits<P>::type;
  if constexpr (std::is_same<Scalar, float>::value) {
#if defined(__AVX512F__)
    if constexpr (kIsPacket16f<P>) {  // a mask register and one vscalefps
      const __mmask16 keep = _mm512_cmp_ps_mask(t, _mm512_set1_ps(-126.0f), _CMP_NLT_UQ);
      const P k = ei::print(t);  // lanes below -126 may give a NaN fraction: masked off
      return _mm512_maskz_scalef_ps(keep, exp2_fraction(ei::psub(t, k)), k);
    }
#endif
    using PI = typename ei::unpacket_traits<P>::integer_packet;
    const P low = ei::pcmp_lt(t, ei::pset1<P>(-126.0f));
    t = ei::pmax(t, ei::pset1<P>(-127.0f));  // keeps 2^k's exponent field in range below
    const P k = ei::print(t);
    const PI e = ei::padd(ei::pcast<P, PI>(k), ei::pset1<PI>(127));
    return ei::pandnot(ei::pmul(exp2_fraction(ei::psub(t, k)), ei::preinterpret<P>(ei::plogical_shift_left<23>(e))),
                       low);
  } else {
    return ei::pexp(ei::pmul(t, ei::pset1<P>(Scalar(0.69314718055994530942))));
  }
}

/// st[j, :] = sum_d k[j, d] * qt[d, :] for RJ key rows and NP packets of queries.
template <class Acc, int RJ, int NP>
EIGEN_ALWAYS_INLINE void kq_block(const Acc* k, Index ldk, const Acc* qt, Index bq, Index depth, Acc* st,
                                  Index ldst) {
  using P = Packet<Acc>;
  constexpr Index L = kLanes<Acc>;
  P acc[RJ][NP];
  for (int r = 0; r < RJ; ++r)
    for (int p = 0; p < NP; ++p) acc[r][p] = Eigen::internal::pset1<P>(Acc(0));
  for (Index d = 0; d < depth; ++d) {
    P q[NP];
    for (int p = 0; p < NP; ++p) q[p] = Eigen::internal::ploadu<P>(qt + d * bq + p * L);
    for (int r = 0; r < RJ; ++r) {
      const P kb = Eigen::internal::pset1<P>(k[r * ldk + d]);
      for (int p = 0; p < NP; ++p) acc[r][p] = Eigen::internal::pmadd(kb, q[p], acc[r][p]);
    }
  }
  for (int r = 0; r < RJ; ++r)
    for (int p = 0; p < NP; ++p) Eigen::internal::pstoreu(st + r * ldst + p * L, acc[r][p]);
}

/// ST (nk x bq, leading dimension bq) = K (nk x depth, leading dimension ldk) * QT (depth x bq).
/// bq must be a multiple of the packet width; no alignment is required (unaligned packet loads
/// cost nothing extra on aligned data, and SimA passes the caller's buffers).
template <class Acc>
void kq_product(const Acc* k, Index ldk, Index nk, const Acc* qt, Index bq, Index depth, Acc* st) {
  constexpr Index L = kLanes<Acc>;
  // 4 x 4 packets = 16 accumulators: enough independent FMA chains to cover the latency on two
  // FMA ports, and few enough registers left for the operands even with 16 (AVX2) registers.
  constexpr int RJ = 4, NP = 4;
  Index i = 0;
  for (; i + NP * L <= bq; i += NP * L) {
    Index j = 0;
    for (; j + RJ <= nk; j += RJ) kq_block<Acc, RJ, NP>(k + j * ldk, ldk, qt + i, bq, depth, st + j * bq + i, bq);
    for (; j < nk; ++j) kq_block<Acc, 1, NP>(k + j * ldk, ldk, qt + i, bq, depth, st + j * bq + i, bq);
  }
  for (; i < bq; i += L) {
    Index j = 0;
    for (; j + RJ <= nk; j += RJ) kq_block<Acc, RJ, 1>(k + j * ldk, ldk, qt + i, bq, depth, st + j * bq + i, bq);
    for (; j < nk; ++j) kq_block<Acc, 1, 1>(k + j * ldk, ldk, qt + i, bq, depth, st + j * bq + i, bq);
  }
}

/// ot[d, :] += sum_j v[j, d] * pt[j, :] for RD value columns and NP packets of queries.
template <class Acc, int RD, int NP>
EIGEN_ALWAYS_INLINE void vp_block(const Acc* v, Index ldv, Index nj, const Acc* pt, Index bq, Acc* ot) {
  using P = Packet<Acc>;
  constexpr Index L = kLanes<Acc>;
  P acc[RD][NP];
  for (int r = 0; r < RD; ++r)
    for (int p = 0; p < NP; ++p) acc[r][p] = Eigen::internal::ploadu<P>(ot + r * bq + p * L);
  for (Index j = 0; j < nj; ++j) {
    P x[NP];
    for (int p = 0; p < NP; ++p) x[p] = Eigen::internal::ploadu<P>(pt + j * bq + p * L);
    for (int r = 0; r < RD; ++r) {
      const P vb = Eigen::internal::pset1<P>(v[j * ldv + r]);
      for (int p = 0; p < NP; ++p) acc[r][p] = Eigen::internal::pmadd(vb, x[p], acc[r][p]);
    }
  }
  for (int r = 0; r < RD; ++r)
    for (int p = 0; p < NP; ++p) Eigen::internal::pstoreu(ot + r * bq + p * L, acc[r][p]);
}

/// OT (dv x bq) += V^T * PT, with V (nj x dv, leading dimension ldv) and PT (nj x bq).
template <class Acc>
void vp_product(const Acc* v, Index ldv, Index nj, Index dv, const Acc* pt, Index bq, Acc* ot) {
  constexpr Index L = kLanes<Acc>;
  constexpr int RD = 4, NP = 4;  // as kq_product
  Index i = 0;
  for (; i + NP * L <= bq; i += NP * L) {
    Index d = 0;
    for (; d + RD <= dv; d += RD) vp_block<Acc, RD, NP>(v + d, ldv, nj, pt + i, bq, ot + d * bq + i);
    for (; d < dv; ++d) vp_block<Acc, 1, NP>(v + d, ldv, nj, pt + i, bq, ot + d * bq + i);
  }
  for (; i < bq; i += L) {
    Index d = 0;
    for (; d + RD <= dv; d += RD) vp_block<Acc, RD, 1>(v + d, ldv, nj, pt + i, bq, ot + d * bq + i);
    for (; d < dv; ++d) vp_block<Acc, 1, 1>(v + d, ldv, nj, pt + i, bq, ot + d * bq + i);
  }
}

/// C (rows x cols, leading dimension ldc) = A B (or += with Add), with A(r, t) = a[r * ar + t * at]
/// (row-major when at = 1, the transpose of a row-major matrix when ar = 1) and B row-major
/// (depth x cols, leading dimension ldb). Packets run along C's columns and A's entries are
/// broadcast from memory, so neither C's rows nor the depth are padded to packets (SOFT's
/// products all have the landmark count m = 49 in one of those two roles); columns past the last
/// whole packet go through Eigen. No alignment is required.
template <class Acc, int RJ, int NP, bool Add>
EIGEN_ALWAYS_INLINE void bcast_block(const Acc* a, Index ar, Index at, Index depth, const Acc* b, Index ldb, Acc* c,
                                     Index ldc) {
  namespace ei = Eigen::internal;
  using P = Packet<Acc>;
  constexpr Index L = kLanes<Acc>;
  P acc[RJ][NP];
  for (int r = 0; r < RJ; ++r)
    for (int p = 0; p < NP; ++p) acc[r][p] = Add ? ei::ploadu<P>(c + r * ldc + p * L) : ei::pset1<P>(Acc(0));
  for (Index t = 0; t < depth; ++t) {
    P x[NP];
    for (int p = 0; p < NP; ++p) x[p] = ei::ploadu<P>(b + t * ldb + p * L);
    for (int r = 0; r < RJ; ++r) {
      const P ab = ei::pset1<P>(a[r * ar + t * at]);
      for (int p = 0; p < NP; ++p) acc[r][p] = ei::pmadd(ab, x[p], acc[r][p]);
    }
  }
  for (int r = 0; r < RJ; ++r)
    for (int p = 0; p < NP; ++p) ei::pstoreu(c + r * ldc + p * L, acc[r][p]);
}

// Rows in blocks of RJ, the rest in blocks of RJ / 2, ... 1.
template <class Acc, int RJ, int NP, bool Add>
void bcast_rows(const Acc* a, Index ar, Index at, Index rows, Index depth, const Acc* b, Index ldb, Acc* c,
                Index ldc) {
  Index r = 0;
  for (; r + RJ <= rows; r += RJ)
    bcast_block<Acc, RJ, NP, Add>(a + r * ar, ar, at, depth, b, ldb, c + r * ldc, ldc);
  if constexpr (RJ > 1) bcast_rows<Acc, RJ / 2, NP, Add>(a + r * ar, ar, at, rows - r, depth, b, ldb, c + r * ldc, ldc);
}

template <bool Add, class Acc>
void bcast_product(const Acc* a, Index ar, Index at, Index rows, Index depth, const Acc* b, Index ldb, Index cols,
                   Acc* c, Index ldc) {
  constexpr Index L = kLanes<Acc>;
  // Register blocks of about 24 accumulators (RJ x NP packets) keep both FMA ports busy.
  Index j = 0;
  for (; j + 4 * L <= cols; j += 4 * L) bcast_rows<Acc, 6, 4, Add>(a, ar, at, rows, depth, b + j, ldb, c + j, ldc);
  switch ((cols - j) / L) {
    case 3: bcast_rows<Acc, 8, 3, Add>(a, ar, at, rows, depth, b + j, ldb, c + j, ldc); j += 3 * L; break;
    case 2: bcast_rows<Acc, 12, 2, Add>(a, ar, at, rows, depth, b + j, ldb, c + j, ldc); j += 2 * L; break;
    case 1: bcast_rows<Acc, 8, 1, Add>(a, ar, at, rows, depth, b + j, ldb, c + j, ldc); j += L; break;
    default: break;
  }
  if (j == cols) return;
  using Stride = Eigen::OuterStride<>;
  const Eigen::Map<const RowMatrix<Acc>, 0, Stride> bm(b + j, depth, cols - j, Stride(ldb));
  Eigen::Map<RowMatrix<Acc>, 0, Stride> cm(c + j, rows, cols - j, Stride(ldc));
  auto run = [&](const auto& am) {
    if constexpr (Add)
      cm.noalias() += am * bm;
    else
      cm.noalias() = am * bm;
  };
  if (at == 1)
    run(Eigen::Map<const RowMatrix<Acc>, 0, Stride>(a, rows, depth, Stride(ar)));
  else
    run(Eigen::Map<const Eigen::Matrix<Acc, Eigen::Dynamic, Eigen::Dynamic>, 0, Stride>(a, rows, depth, Stride(at)));
}

}  // namespace detail
}  // namespace softfree
