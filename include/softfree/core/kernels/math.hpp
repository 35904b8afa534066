#pragma once
// The elementwise functions of the kernels, one family for every method: the base-2
// exponential of non-positive arguments (callers fold log2 e into a scale or shift they apply
// anyway, one multiply-add), the reciprocal, and the scaled logistic sigmoid. Each runs on any
// packet width and on scalars; the backend supplies the ISA-specific steps.
#include <cmath>
#include <type_traits>

#include "backend.hpp"

namespace softfree {
namespace detail {
inline namespace SOFTFREE_ISA {

/// log2(e), the factor callers fold into their exponents.
template <class Acc>
constexpr Acc kLog2e = Acc(1.4426950408889634);

/// 2^t for t <= 0 (and a little above: rounding in a folded shift may leave t just over 0);
/// exactly 0 below float's normal range (-126; -1022 for double), NaN kept. About 1 ulp on top of
/// the rounding of t. Every exponential of the kernels is this one.
template <class P>
EIGEN_ALWAYS_INLINE P exp2_nonpositive(const P& t) {
  return Backend::exp2_nonpositive(t);
}

/// Lane-wise maximum and minimum (Eigen's pmax and pmin, but warning-free on every compiler). NaN
/// as std::max: a NaN in a gives NaN, one only in b gives a, on every backend (the kernels rely on
/// it: a NaN score or distance must stay NaN, never become the other operand).
template <class P>
EIGEN_ALWAYS_INLINE P vmax(const P& a, const P& b) {
  return Backend::max(a, b);
}
template <class P>
EIGEN_ALWAYS_INLINE P vmin(const P& a, const P& b) {
  return Backend::min(a, b);
}

/// Whether Eigen's packet pmadd rounds once (a fused multiply-add): FMA on x86, NEON with FMA.
#if defined(EIGEN_VECTORIZE_FMA) || (defined(EIGEN_VECTORIZE_NEON) && defined(__ARM_FEATURE_FMA))
constexpr bool kFusedMadd = true;
#else
constexpr bool kFusedMadd = false;
#endif

/// a b + c lane-wise: pmadd on packets, and on a scalar the same rounding as a packet lane (one
/// rounding where pmadd fuses). A scalar step (a tail column, a key the packets skip) must give a
/// lane's bits; written a * b + c, the compiler would choose (g++ fuses at -O2, not at -O1).
template <class P>
EIGEN_ALWAYS_INLINE P vmadd(const P& a, const P& b, const P& c) {
  if constexpr (std::is_floating_point<P>::value && kFusedMadd)
    return std::fma(a, b, c);
  else
    return ei::pmadd(a, b, c);
}

/// The sum of a packet's lanes.
template <class P>
EIGEN_ALWAYS_INLINE scalar_of<P> vsum(const P& a) {
  return Backend::sum(a);
}

/// True if any lane of a comparison result is set.
template <class P>
EIGEN_ALWAYS_INLINE bool vany(const P& mask) {
  return Backend::any(mask);
}

/// sum_i x[i] y[i] over n values, in packets: four independent accumulators (a row of 64 floats
/// is one multiply-add deep per accumulator, not four), then the tail.
template <class Acc>
Acc dot(const Acc* x, const Acc* y, Index n) {
  using P = Packet<Acc>;
  constexpr Index L = kLanes<Acc>;
  P acc[4] = {ei::pset1<P>(Acc(0)), ei::pset1<P>(Acc(0)), ei::pset1<P>(Acc(0)), ei::pset1<P>(Acc(0))};
  Index i = 0;
  for (; i + 4 * L <= n; i += 4 * L)
    for (int k = 0; k < 4; ++k) acc[k] = vmadd(ei::ploadu<P>(x + i + k * L), ei::ploadu<P>(y + i + k * L), acc[k]);
  Acc tail = 0;
  for_each_packet<Acc>(n - i, [&](auto p, Index j) {
    if constexpr (lanes<decltype(p)>() == 1)
      tail = vmadd(x[i + j], y[i + j], tail);
    else
      acc[0] = vmadd(ei::ploadu<P>(x + i + j), ei::ploadu<P>(y + i + j), acc[0]);
  });
  return vsum(ei::padd(ei::padd(acc[0], acc[1]), ei::padd(acc[2], acc[3]))) + tail;
}

/// sum_i |x[i]| over n values, in packets.
template <class Acc>
Acc abs_sum(const Acc* x, Index n) {
  using P = Packet<Acc>;
  P acc = ei::pset1<P>(Acc(0));
  Acc tail = 0;
  for_each_packet<Acc>(n, [&](auto p, Index i) {
    if constexpr (lanes<decltype(p)>() == 1)
      tail += std::abs(x[i]);
    else
      acc = ei::padd(acc, ei::pabs(ei::ploadu<P>(x + i)));
  });
  return vsum(acc) + tail;
}

/// 1 / a per lane (about 1 ulp).
template <class P>
EIGEN_ALWAYS_INLINE P reciprocal(const P& a) {
  return Backend::reciprocal(a);
}

/// scale * sigma(q) per lane, with the exponent kept <= 0 so nothing overflows:
/// sigma(q) = 1 / (1 + e^-q) for q >= 0 and e^q / (1 + e^q) below.
template <class P>
EIGEN_ALWAYS_INLINE P scaled_sigmoid(const P& q, const P& scale) {
  using S = scalar_of<P>;
  // e = e^-|q| = 2^(-|q| log2 e)
  const P e = exp2_nonpositive(ei::pmul(ei::por(q, ei::pset1<P>(S(-0.0))), ei::pset1<P>(kLog2e<S>)));
  const P r = ei::pmul(scale, reciprocal(ei::padd(ei::pset1<P>(S(1)), e)));
  return Backend::mul_where_negative(q, r, e);
}

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
