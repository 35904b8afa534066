#pragma once
// AftSimple: AFT with w = 0, Y_t = sigma(Q_t) * sum_t' softmax_t'(K) V_t' per channel, O(N D)
// (SPEC.md "AFT"). Non-causal: one streaming pass over K and V for the per-channel max and sums,
// a tile of rows at a time, then one over Q for the output; causal: running sums with a running
// max (AftRunning), also behind State for token-by-token decoding.
#include <algorithm>
#include <cstdint>

#include "../core/attention.hpp"
#include "../core/parallel.hpp"
#include "../core/schedule.hpp"
#include "common.hpp"

namespace softfree {
namespace detail {
inline namespace SOFTFREE_ISA {

/// Running per-channel sums for causal AftSimple and its recurrent state: the max m of the keys
/// seen so far, and num, den shifted by it (rescaled when the max grows), so den >= 1 always.
/// The batch path and State run this same code, so their results are bitwise equal.
template <class Acc>
class AftRunning {
 public:
  explicit AftRunning(Index d)
      : d_(d), m_(static_cast<size_t>(pad_to_packets<Acc>(d))), num_(m_.size()), den_(m_.size()) {}
  void reset() { n_ = 0; }
  Index steps() const { return n_; }

  /// Adds key / value row t (D values each).
  void push(const Acc* k, const Acc* v) {
    for_each_packet<Acc>(d_, [&](auto p, Index c) {
      using P = decltype(p);
      const P kk = ei::ploadu<P>(k + c), vv = ei::ploadu<P>(v + c);
      if (n_ == 0) {  // e^{k - m} with m = k: 1; NaN for k NaN or +inf, 0 for -inf (as later keys)
        const P minus_inf = ei::pset1<P>(-std::numeric_limits<Acc>::infinity());
        const P one = ei::pandnot(ei::padd(ei::psub(kk, kk), ei::pset1<P>(Acc(1))), ei::pcmp_eq(kk, minus_inf));
        ei::pstoreu(m_.data() + c, kk);
        ei::pstoreu(num_.data() + c, ei::pmul(one, vv));
        ei::pstoreu(den_.data() + c, one);
        return;
      }
      const P m_old = ei::ploadu<P>(m_.data() + c), m_new = vmax(m_old, kk), log2e = ei::pset1<P>(kLog2e<Acc>);
      const P alpha = exp2_nonpositive(ei::pmul(ei::psub(m_old, m_new), log2e));
      const P e = exp2_nonpositive(ei::pmul(ei::psub(kk, m_new), log2e));
      ei::pstoreu(m_.data() + c, m_new);
      ei::pstoreu(num_.data() + c, ei::pmadd(e, vv, ei::pmul(ei::ploadu<P>(num_.data() + c), alpha)));
      ei::pstoreu(den_.data() + c, ei::pmadd(ei::ploadu<P>(den_.data() + c), alpha, e));
    });
    ++n_;
  }

  /// The running max of K per channel and the sums under it (e^{K - max} V, e^{K - max}).
  const Acc* max() const { return m_.data(); }
  const Acc* num() const { return num_.data(); }
  const Acc* den() const { return den_.data(); }

  /// y = sigma(q) * num / den (D values).
  void emit(const Acc* q, Acc* y) const {
    for_each_packet<Acc>(d_, [&](auto p, Index c) {
      using P = decltype(p);
      const P ratio = ei::pdiv(ei::ploadu<P>(num_.data() + c), ei::ploadu<P>(den_.data() + c));
      ei::pstoreu(y + c, scaled_sigmoid(ei::ploadu<P>(q + c), ratio));
    });
  }

 private:
  Index d_, n_ = 0;
  AlignedBuffer<Acc> m_, num_, den_;
};

}  // namespace SOFTFREE_ISA
}  // namespace detail

/// AFT-simple: Y_t = sigma(Q_t) * sum_t' softmax_t'(K) V_t' per channel (w = 0), O(N D).
/// causal: sums over t' <= t, as running sums with a running max (also State, for decoding).
template <class T = float>
class AftSimple : public Attention<AftSimple<T>, T> {
  using Acc = accum_t<T>;

 public:
  static constexpr const char* kName = "AftSimple";
  static constexpr Capabilities kCapabilities{true, false, ""};

  bool causal = false;
  Parallel parallel;

  void check_options(const Shape4&, const Shape4&) const {}

  /// Token-by-token causal decoding: step(q_t, k_t, v_t, y_t) gives row t of the causal batch
  /// result, in O(D) and without allocating.
  class State {
   public:
    using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;

    explicit State(Index d) : d_(check_dim(d)), run_(d), buf_(static_cast<size_t>(4 * d)) {}
    Index dim() const { return d_; }
    /// Tokens consumed so far.
    Index steps() const { return run_.steps(); }
    /// Forget every token (start a new sequence).
    void reset() { run_.reset(); }

    /// Consumes token t (q, k, v: D values each) and writes y_t (D values).
    template <class Isa = detail::IsaTag>
    void step(const T* q, const T* k, const T* v, T* y) {
      Acc *kb = buf_.data(), *vb = kb + d_, *qb = vb + d_, *yb = qb + d_;
      detail::convert(k, kb, d_);
      detail::convert(v, vb, d_);
      detail::convert(q, qb, d_);
      run_.push(kb, vb);
      run_.emit(qb, yb);
      detail::convert_out(yb, y, d_);
    }
    /// As above, with every vector's size checked against D.
    template <class Isa = detail::IsaTag>
    void step(const Eigen::Ref<const Vector>& q, const Eigen::Ref<const Vector>& k, const Eigen::Ref<const Vector>& v,
              Eigen::Ref<Vector> y) {
      const char* names[] = {"q", "k", "v", "y"};
      const Index sizes[] = {q.size(), k.size(), v.size(), y.size()};
      for (int i = 0; i < 4; ++i)
        if (sizes[i] != d_)
          detail::fail("AftSimple::State", names[i], " has ", sizes[i], " values but the state has D = ", d_);
      step<Isa>(q.data(), k.data(), v.data(), y.data());
    }

   private:
    static Index check_dim(Index d) {
      if (d <= 0) detail::fail("AftSimple::State", "D = ", d, ": must be positive");
      return d;
    }
    Index d_;
    detail::AftRunning<Acc> run_;
    detail::AlignedBuffer<Acc> buf_;  // k, v, q and y in the accumulate type
  };
};

/// Recurrent decoding state of causal AftSimple (AftSimple<T>::State).
template <class T = float>
using AftSimpleState = typename AftSimple<T>::State;

namespace detail {
inline namespace SOFTFREE_ISA {

/// One thread's AftSimple workspace and passes, per (b, h) head.
template <class T>
class AftSimpleHead {
  using Acc = accum_t<T>;
  // Rows per tile: the tile's max is taken first, so the sums are rescaled once per tile (not per
  // row) and each K tile is read from memory once.
  static constexpr Index kTile = 64;
  // A head's output larger than a core's L2 is written with streaming stores (no read for
  // ownership: about a third less memory traffic at N = 16384).
  static constexpr Index kStreamBytes = Index(2) << 20;

 public:
  explicit AftSimpleHead(Index d)
      : d_(d), ld_(pad_to_packets<Acc>(d)), run_(d), tile_(static_cast<size_t>(2 * kTile * ld_)),
        m_(static_cast<size_t>(ld_)), num_(m_.size()), den_(m_.size()) {}

  // The running sums take each key once, and every query head of the group reads them.
  void causal(const GroupSlices<T>& x, Index n) {
    const Index d = d_;
    const Acc *kk = load_k_(x.k, n, d).data(), *vv = load_v_(x.v, n, d).data();
    io_.bind(x.q, x.out, x.heads, x.stride, d);
    run_.reset();
    for (Index t0 = 0; t0 < n; t0 += kTile) {
      const Index rows = std::min(kTile, n - t0);
      io_.rows(t0, rows);
      for (Index t = t0; t < t0 + rows; ++t) {
        run_.push(kk + t * d, vv + t * d);
        for (Index i = 0; i < x.heads; ++i) run_.emit(io_.q(i) + (t - t0) * d, io_.y(i) + (t - t0) * d);
      }
      io_.commit();
    }
  }

  void full(const GroupSlices<T>& x, Index n) {
    sums(x.k, x.v, n);
    ratio();
    for (Index i = 0; i < x.heads; ++i) output(x.q + i * x.stride, n, x.out + i * x.stride);
  }

 private:
  // m = max_t K[t] per channel, num = sum_t e^{K[t] - m} V[t], den = sum_t e^{K[t] - m}: one pass
  // over K and V, a tile at a time. When D is whole packets the kernel reads the inputs directly
  // (half and bfloat16 converted in registers); otherwise each tile is converted and padded.
  void sums(const T* kp, const T* vp, Index n) {
    const Index d = d_, ld = ld_;
    for (Index t0 = 0; t0 < n; t0 += kTile) {
      const Index rows = std::min(kTile, n - t0);
      if (ld == d) {
        sums_tile(kp + t0 * d, vp + t0 * d, rows, t0 == 0);
      } else {
        const Acc* kt = padded_rows(kp + t0 * d, rows, d, ld, tile_.data());
        const Acc* vt = padded_rows(vp + t0 * d, rows, d, ld, tile_.data() + kTile * ld);
        sums_tile(kt, vt, rows, t0 == 0);
      }
    }
  }

  // Up to 4 packets of channels at a time, rows in order (sequential memory, one exp per packet
  // in flight per channel group); rows of ld values of type X.
  template <class X>
  void sums_tile(const X* kt, const X* vt, Index rows, bool first) {
    constexpr Index L = kLanes<Acc>;
    for (Index c = 0; c < ld_; c += 4 * L) {
      Acc *m = m_.data() + c, *num = num_.data() + c, *den = den_.data() + c;
      switch (std::min<Index>(4, (ld_ - c) / L)) {
        case 4: sums_block<4>(kt + c, vt + c, rows, first, m, num, den); break;
        case 3: sums_block<3>(kt + c, vt + c, rows, first, m, num, den); break;
        case 2: sums_block<2>(kt + c, vt + c, rows, first, m, num, den); break;
        default: sums_block<1>(kt + c, vt + c, rows, first, m, num, den);
      }
    }
  }

  // One tile for NP packets of channels: m = max(m, max_r k[r]); num, den rescaled to the new m,
  // then num += sum_r e^{k[r] - m} v[r], den += sum_r e^{k[r] - m}. first: nothing held yet.
  template <int NP, class X>
  EIGEN_ALWAYS_INLINE void sums_block(const X* kt, const X* vt, Index rows, bool first, Acc* m, Acc* num, Acc* den) {
    using P = Packet<Acc>;
    constexpr Index L = kLanes<Acc>;
    const Index ld = ld_;
    P mx[NP], nu[NP], de[NP];
    for (int p = 0; p < NP; ++p) mx[p] = load_packet(kt + p * L);
    for (Index r = 1; r < rows; ++r)
      for (int p = 0; p < NP; ++p) {
        if ((p * L * Index(sizeof(X))) % 64 == 0) {  // K and V come from L3 or memory: ask ahead, once a line
          prefetch_ahead(kt + r * ld + p * L);
          prefetch_ahead(vt + r * ld + p * L);
        }
        mx[p] = vmax(mx[p], load_packet(kt + r * ld + p * L));
      }
    for (int p = 0; p < NP; ++p) {
      nu[p] = de[p] = ei::pset1<P>(Acc(0));
      if (!first) {
        const P m_old = ei::pload<P>(m + p * L);
        mx[p] = vmax(mx[p], m_old);
        const P alpha = exp2_nonpositive(ei::pmul(ei::psub(m_old, mx[p]), ei::pset1<P>(kLog2e<Acc>)));
        nu[p] = ei::pmul(ei::pload<P>(num + p * L), alpha);
        de[p] = ei::pmul(ei::pload<P>(den + p * L), alpha);
      }
    }
    for (Index r = 0; r < rows; ++r)
      for (int p = 0; p < NP; ++p) {
        const P e = aft_exp(load_packet(kt + r * ld + p * L), mx[p]);
        nu[p] = ei::pmadd(e, load_packet(vt + r * ld + p * L), nu[p]);
        de[p] = ei::padd(de[p], e);
      }
    for (int p = 0; p < NP; ++p) {
      ei::pstore(m + p * L, mx[p]);
      ei::pstore(num + p * L, nu[p]);
      ei::pstore(den + p * L, de[p]);
    }
  }

  // num = num / den in place (den >= 1: the max key contributes e^0).
  void ratio() {
    using P = Packet<Acc>;
    for (Index c = 0; c < ld_; c += kLanes<Acc>)
      ei::pstore(num_.data() + c, ei::pdiv(ei::pload<P>(num_.data() + c), ei::pload<P>(den_.data() + c)));
  }

  // Y[t] = sigma(Q[t]) * ratio (num after ratio()). Direct reads and writes when D is whole
  // packets, as in sums.
  void output(const T* qp, Index n, T* op) {
    const Index d = d_, ld = ld_;
    const Acc* const ratio = num_.data();
    if (ld == d) {
      const bool stream =
          n * d * static_cast<Index>(sizeof(T)) >= kStreamBytes && reinterpret_cast<std::uintptr_t>(op) % 64 == 0;
      if (stream)
        output_rows<true>(qp, n * d, ratio, op);
      else
        output_rows<false>(qp, n * d, ratio, op);
      return;
    }
    for (Index t0 = 0; t0 < n; t0 += kTile) {
      const Index rows = std::min(kTile, n - t0);
      const Acc* qt = padded_rows(qp + t0 * d, rows, d, ld, tile_.data());
      output_rows<false>(qt, rows * ld, ratio, out_.begin(op + t0 * d, rows, d, ld));
      out_.commit();
    }
  }

  // y[i] = sigma(q[i]) * ratio[i mod ld] for i in [0, size), size a multiple of ld (whole packets).
  template <bool Stream, class X, class Y>
  void output_rows(const X* q, Index size, const Acc* ratio, Y* y) const {
    constexpr Index L = kLanes<Acc>;
    for (Index r = 0; r < size; r += ld_)
      for (Index c = 0; c < ld_; c += L) {
        if ((c * Index(sizeof(X))) % 64 == 0) prefetch_ahead(q + r + c);  // once a cache line
        const auto scale = ei::pload<Packet<Acc>>(ratio + c);
        store_packet<Y, Stream>(y + r + c, scaled_sigmoid(load_packet(q + r + c), scale));
      }
    if constexpr (Stream) stream_fence();  // order the streamed rows before the caller reads them
  }

  Index d_, ld_;
  AftRunning<Acc> run_;
  AlignedBuffer<Acc> tile_, m_, num_, den_;  // k, v (or q) tiles padded to ld; per-channel max and sums
  TileLoader<T> load_k_, load_v_;
  GroupIO<T> io_;     // causal: every query head of the group
  OutputTile<T> out_;  // full, D not whole packets
};

template <class T>
struct Kernel<AftSimple<T>> {
  static NoReport forward(const AftSimple<T>& f, const ConstView4<T>& q, const ConstView4<T>& k,
                          const ConstView4<T>& v, const View4<T>& out) {
    const Shape4 s = shape_of(q);
    // One item = one (b, kv head) with its query heads (one (b, h) without grouped-query heads).
    for_each_item(f.parallel, WorkGrid{s.B, shape_of(k).H, s.N}, [&] {
      return [&, ws = AftSimpleHead<T>(s.D)](const WorkGrid::Item& it) mutable {
        const GroupSlices<T> x = group_slices(q, k, v, out, it.b, it.h);
        if (f.causal)
          ws.causal(x, s.N);
        else
          ws.full(x, s.N);
      };
    });
    return {};
  }
};

/// AftSimple's result, for the variants whose unset bias means w = 0.
template <class T>
NoReport aft_simple_forward(bool causal, const Parallel& parallel, const ConstView4<T>& q, const ConstView4<T>& k,
                            const ConstView4<T>& v, const View4<T>& out) {
  AftSimple<T> simple;
  simple.causal = causal;
  simple.parallel = parallel;
  return Kernel<AftSimple<T>>::forward(simple, q, k, v, out);
}

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
