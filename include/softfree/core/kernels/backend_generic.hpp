#pragma once
// The generic backend: every primitive the kernel layer needs from an ISA, written on Eigen's
// packet layer alone, so it vectorises for whatever the build targets (SSE, AVX, NEON, ...) and
// also runs on scalars (a packet of one lane: the column tails of the products).
//
// A backend is a struct of static functions with exactly these names; an ISA backend derives from
// a less capable one and hides the functions it does better (backend_avx2.hpp,
// backend_avx512.hpp), and backend.hpp selects one. Adding an ISA is one file and one line there.
#include <cmath>
#include <type_traits>

#include "packet.hpp"

namespace softfree {
namespace detail {
inline namespace SOFTFREE_ISA {

/// Cephes' exp2f polynomial: 2^f for f in [-1/2, 1/2], about 1 ulp. Shared by the backends.
template <class P>
EIGEN_ALWAYS_INLINE P exp2_fraction(const P& f) {
  P y = ei::pmadd(ei::pset1<P>(1.535336188319500e-4f), f, ei::pset1<P>(1.339887440266574e-3f));
  y = ei::pmadd(y, f, ei::pset1<P>(9.618437357674640e-3f));
  y = ei::pmadd(y, f, ei::pset1<P>(5.550332471162809e-2f));
  y = ei::pmadd(y, f, ei::pset1<P>(2.402264791363012e-1f));
  y = ei::pmadd(y, f, ei::pset1<P>(6.931472028550421e-1f));
  return ei::pmadd(y, f, ei::pset1<P>(1.0f));
}

struct GenericBackend {
  static constexpr const char* kName = "generic";

  /// kLanes<accum_t<T>> storage values at src (no alignment needed) as one accumulate packet.
  template <class T>
  static EIGEN_ALWAYS_INLINE Packet<accum_t<T>> load(const T* src) {
    using P = Packet<accum_t<T>>;
    if constexpr (std::is_same<T, accum_t<T>>::value) {
      return ei::ploadu<P>(src);
    } else {
      alignas(kAlignBytes) float x[kLanes<float>];
      for (Index i = 0; i < kLanes<float>; ++i) x[i] = to_float(src[i]);
      return ei::pload<P>(x);
    }
  }

  /// Stores x at dst in storage type T, rounding once. Stream: a non-temporal store where the ISA
  /// has one (dst then aligned to the bytes stored); here an ordinary store.
  template <class T, bool Stream = false>
  static EIGEN_ALWAYS_INLINE void store(T* dst, const Packet<accum_t<T>>& x) {
    if constexpr (std::is_same<T, accum_t<T>>::value) {
      ei::pstoreu(dst, x);
    } else {
      alignas(kAlignBytes) float y[kLanes<float>];
      ei::pstore(y, x);
      for (Index i = 0; i < kLanes<float>; ++i) from_float(y[i], dst + i);
    }
  }

  /// Orders streamed stores before later reads (nothing to do without streaming stores).
  static void stream_fence() {}

  /// 2^t for t <= 0 (and a little above: a folded shift may leave t just over 0). Float: exactly 0
  /// below -126 (-inf included), NaN kept, about 1 ulp (the polynomial's). Double: std::exp2.
  template <class P>
  static EIGEN_ALWAYS_INLINE P exp2_nonpositive(P t) {
    using S = scalar_of<P>;
    if constexpr (std::is_same<S, double>::value) {  // lane by lane: double is for references, not speed
      if constexpr (lanes<P>() == 1) {
        return t < -1022.0 ? 0.0 : std::exp2(t);  // exactly 0 below -1022, as float below -126
      } else {
        alignas(kAlignBytes) double x[lanes<P>()];
        ei::pstoreu(x, t);
        for (double& e : x) e = e < -1022.0 ? 0.0 : std::exp2(e);
        return ei::ploadu<P>(x);
      }
    } else if constexpr (lanes<P>() == 1) {
      return t < -126.0f ? 0.0f : std::exp2(t);
    } else {
      using PI = typename ei::unpacket_traits<P>::integer_packet;
      const P low = ei::pcmp_lt(t, ei::pset1<P>(-126.0f));
      t = ei::pmax(t, ei::pset1<P>(-127.0f));  // keeps 2^k's exponent field in range below
      const P k = ei::print(t);
      const PI e = ei::padd(ei::pcast<P, PI>(k), ei::pset1<PI>(127));
      return ei::pandnot(ei::pmul(exp2_fraction(ei::psub(t, k)), ei::preinterpret<P>(ei::plogical_shift_left<23>(e))),
                         low);
    }
  }

  /// Lane-wise maximum and minimum.
  template <class P>
  static EIGEN_ALWAYS_INLINE P max(const P& a, const P& b) {
    return ei::pmax(a, b);
  }
  template <class P>
  static EIGEN_ALWAYS_INLINE P min(const P& a, const P& b) {
    return ei::pmin(a, b);
  }

  /// The sum of a packet's lanes.
  template <class P>
  static EIGEN_ALWAYS_INLINE scalar_of<P> sum(const P& a) {
    return ei::predux(a);
  }

  /// True if any lane of a comparison result (all ones or all zeros per lane) is set.
  template <class P>
  static EIGEN_ALWAYS_INLINE bool any(const P& mask) {
    return ei::predux_any(mask);
  }

  /// 1 / a per lane.
  template <class P>
  static EIGEN_ALWAYS_INLINE P reciprocal(const P& a) {
    return ei::pdiv(ei::pset1<P>(scalar_of<P>(1)), a);
  }

  /// r * e where q < 0, else r.
  template <class P>
  static EIGEN_ALWAYS_INLINE P mul_where_negative(const P& q, const P& r, const P& e) {
    if constexpr (lanes<P>() == 1)
      return q < 0 ? r * e : r;
    else
      return ei::pselect(ei::pcmp_lt(q, ei::pset1<P>(scalar_of<P>(0))), ei::pmul(r, e), r);
  }
};

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
