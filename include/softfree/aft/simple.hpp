#pragma once
// AftSimple: AFT with w = 0, Y_t = sigma(Q_t) * sum_t' softmax_t'(K) V_t' per channel, O(N D)
// (SPEC.md "AFT"). Non-causal: one streaming pass over K and V for the per-channel max and sums,
// a tile of rows at a time, then one over Q for the output; causal: running sums with a running
// max (AftRunning), also behind State for token-by-token decoding.
//
// Heads longer than kTokenChunk tokens are split in chunks of it (the shape fixes them, never
// the thread count): phase 1 takes each chunk's max and sums (AftSums), a scan merges them per
// kv head in chunk order, and phase 2 writes each chunk's rows, for every query head of the
// group: non-causal from the merged totals, causal by running the recurrence from the sums of
// the chunks before it. So one (b, kv head) spreads over every thread, and the result is still
// bitwise identical for any thread count. Causal heads are split only when there are few of them
// (Kernel::kCausalSplitBelow): the split costs more work there.
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
/// The batch path and State run this same code: from the start of a sequence (reset) their
/// results are bitwise equal; the batch's later token chunks start from the merged sums of the
/// chunks before them (resume), summed in another order than a state's one token at a time.
template <class Acc>
class AftRunning {
 public:
  explicit AftRunning(Index d)
      : d_(d), m_(static_cast<size_t>(pad_to_packets<Acc>(d))), num_(m_.size()), den_(m_.size()) {}
  void reset() { n_ = 0; }
  Index steps() const { return n_; }

  /// Continues from the sums of the first `steps` (> 0) tokens: an AftSums block of D rounded
  /// up to whole packets (pad_to_packets) channels.
  void resume(const Acc* sums, Index steps) {
    const Index ld = static_cast<Index>(m_.size());
    std::copy(AftSums<Acc>::m(sums, ld), AftSums<Acc>::m(sums, ld) + ld, m_.data());
    std::copy(AftSums<Acc>::num(sums, ld), AftSums<Acc>::num(sums, ld) + ld, num_.data());
    std::copy(AftSums<Acc>::den(sums, ld), AftSums<Acc>::den(sums, ld) + ld, den_.data());
    n_ = steps;
  }

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
      const P shift = ei::psub(m_old, m_new);  // 0 where the max holds; < 0 where it grew; NaN if not finite
      const P e = exp2_nonpositive(ei::pmul(ei::psub(kk, m_new), log2e));
      // The rescale e^shift only where some lane needs it: a channel's max grows a few times in a
      // sequence, and where it holds e^0 = 1 (exp2_nonpositive(0) is exactly 1): the same bits,
      // an exponential per value fewer.
      P alpha = ei::pset1<P>(Acc(1));
      if (vany(ei::pcmp_lt_or_nan(shift, ei::pset1<P>(Acc(0))))) alpha = exp2_nonpositive(ei::pmul(shift, log2e));
      ei::pstoreu(m_.data() + c, m_new);
      ei::pstoreu(num_.data() + c, vmadd(e, vv, ei::pmul(ei::ploadu<P>(num_.data() + c), alpha)));
      ei::pstoreu(den_.data() + c, vmadd(ei::ploadu<P>(den_.data() + c), alpha, e));
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

/// One thread's AftSimple workspace and passes, per (b, kv head) with its query heads: a whole
/// head (full, causal) or one token chunk of it (chunk_sums, full_rows, causal_rows).
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

  // The whole head: the running sums from the first token, or the sums then every row.
  void causal(const GroupSlices<T>& x, Index n) { causal_rows(x, 0, n, nullptr); }
  void full(const GroupSlices<T>& x, Index n) {
    sums(x.k, x.v, n);
    ratio(num_.data(), den_.data());
    outputs(x, n, 0, n);
  }

  // Phase 1: the max and sums of key rows [r0, r0 + rows) into out (an AftSums block of ld).
  void chunk_sums(const GroupSlices<T>& x, Index r0, Index rows, Acc* out) {
    sums(x.k + r0 * d_, x.v + r0 * d_, rows);
    std::copy(m_.data(), m_.data() + ld_, AftSums<Acc>::m(out, ld_));
    std::copy(num_.data(), num_.data() + ld_, AftSums<Acc>::num(out, ld_));
    std::copy(den_.data(), den_.data() + ld_, AftSums<Acc>::den(out, ld_));
  }

  // Phase 2, non-causal: rows [r0, r0 + rows) of every query head of the group from the sums
  // over all n keys (an AftSums block).
  void full_rows(const GroupSlices<T>& x, Index n, Index r0, Index rows, const Acc* total) {
    ratio(AftSums<Acc>::num(total, ld_), AftSums<Acc>::den(total, ld_));
    outputs(x, n, r0, rows);
  }

  // Causal rows [r0, r0 + rows) of every query head of the group: the running sums from `before`,
  // the sums of keys [0, r0) (null when r0 = 0: from the first token, as State). The running sums
  // take each key once, and every query head of the group reads them.
  void causal_rows(const GroupSlices<T>& x, Index r0, Index rows, const Acc* before) {
    const Index d = d_;
    const Acc *kk = load_k_(x.k + r0 * d, rows, d).data(), *vv = load_v_(x.v + r0 * d, rows, d).data();
    io_.bind(x.q, x.out, x.heads, x.stride, d);
    if (before)
      run_.resume(before, r0);
    else
      run_.reset();
    for (Index t0 = 0; t0 < rows; t0 += kTile) {
      const Index tile = std::min(kTile, rows - t0);
      io_.rows(r0 + t0, tile);
      for (Index t = t0; t < t0 + tile; ++t) {
        run_.push(kk + t * d, vv + t * d);
        for (Index i = 0; i < x.heads; ++i) run_.emit(io_.q(i) + (t - t0) * d, io_.y(i) + (t - t0) * d);
      }
      io_.commit();
    }
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
        nu[p] = vmadd(e, load_packet(vt + r * ld + p * L), nu[p]);
        de[p] = ei::padd(de[p], e);
      }
    for (int p = 0; p < NP; ++p) {
      ei::pstore(m + p * L, mx[p]);
      ei::pstore(num + p * L, nu[p]);
      ei::pstore(den + p * L, de[p]);
    }
  }

  // The ratio num / den into num_ (num may be num_; den >= 1: the max key contributes e^0).
  void ratio(const Acc* num, const Acc* den) {
    using P = Packet<Acc>;
    for (Index c = 0; c < ld_; c += kLanes<Acc>)
      ei::pstore(num_.data() + c, ei::pdiv(ei::ploadu<P>(num + c), ei::ploadu<P>(den + c)));
  }

  // Rows [r0, r0 + rows) of every query head of the group (heads of n rows) from the ratio.
  void outputs(const GroupSlices<T>& x, Index n, Index r0, Index rows) {
    // Streaming stores when the head's whole output outgrows L2, also when a chunk of it is written.
    const bool big = n * d_ * static_cast<Index>(sizeof(T)) >= kStreamBytes;
    for (Index i = 0; i < x.heads; ++i) output(x.q + i * x.stride + r0 * d_, rows, x.out + i * x.stride + r0 * d_, big);
  }

  // Y[t] = sigma(Q[t]) * ratio (num_ after ratio()) for n rows. Direct reads and writes when D is
  // whole packets, as in sums, and streaming stores for a big output (big) where aligned.
  void output(const T* qp, Index n, T* op, bool big) {
    const Index d = d_, ld = ld_;
    const Acc* const ratio = num_.data();
    if (ld == d) {
      if (big && reinterpret_cast<std::uintptr_t>(op) % 64 == 0)
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
  using Acc = accum_t<T>;

  // Causal heads are split only when there are fewer (b, kv head) pairs than this: a split
  // causal head costs about 1.3x the work (phase 1's pass over K and V comes on top of the running
  // sums), which pays only while heads alone leave threads idle. A shape, never a thread count.
  static constexpr Index kCausalSplitBelow = 4;

  static NoReport forward(const AftSimple<T>& f, const ConstView4<T>& q, const ConstView4<T>& k,
                          const ConstView4<T>& v, const View4<T>& out) {
    const Shape4 s = shape_of(q);
    const Index kv_heads = shape_of(k).H;
    const bool split = s.N > kTokenChunk && (!f.causal || s.B * kv_heads < kCausalSplitBelow);
    // One item = one token chunk of one (b, kv head), or the whole head, with its query heads
    // (one (b, h) without grouped-query heads).
    const WorkGrid grid{s.B, kv_heads, s.N, split ? kTokenChunk : 0};
    if (split) return split_heads(f, grid, q, k, v, out);
    for_each_item(f.parallel, grid, [&] {  // each item is a whole head, in one pass
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

  /// Heads split in token chunks (grid): chunk sums, an in-order scan per head, then the rows.
  static NoReport split_heads(const AftSimple<T>& f, const WorkGrid& grid, const ConstView4<T>& q,
                              const ConstView4<T>& k, const ConstView4<T>& v, const View4<T>& out) {
    const Shape4 s = shape_of(q);
    const Index chunks = grid.blocks();
    const auto slices = [&](const WorkGrid::Item& it) { return group_slices(q, k, v, out, it.b, it.h); };
    // Phase 1: each chunk's max and sums, slot grid.index(it). Causal rows read the chunks before
    // theirs only: the last chunk's are not needed.
    const Index ld = pad_to_packets<Acc>(s.D);
    Partials<Acc> sums(grid.size(), AftSums<Acc>::size(ld));
    for_each_item(f.parallel, grid, [&] {
      return [&, ws = AftSimpleHead<T>(s.D)](const WorkGrid::Item& it) mutable {
        if (f.causal && it.r0 + it.rows == s.N) return;
        ws.chunk_sums(slices(it), it.r0, it.rows, sums[grid.index(it)]);
      };
    });
    // The inclusive scan per (b, kv head), in chunk order: slot j becomes the sums of chunks
    // [0, j]; the head's slots are consecutive.
    const Index scanned = f.causal ? chunks - 1 : chunks;
    for_each_index(f.parallel, grid.size() / chunks, [&] {
      return [&](Index head) {
        for (Index j = head * chunks + 1; j < head * chunks + scanned; ++j)
          aft_merge_sums(ld, sums[j - 1], sums[j], sums[j]);
      };
    });
    // Phase 2: every chunk's rows, from the totals (the head's last slot) or, causal, from the
    // sums before the chunk (chunk 0 from the first token, as State).
    for_each_item(f.parallel, grid, [&] {
      return [&, ws = AftSimpleHead<T>(s.D)](const WorkGrid::Item& it) mutable {
        const Index slot = grid.index(it), j = it.r0 / grid.row_block();
        if (f.causal)
          ws.causal_rows(slices(it), it.r0, it.rows, j == 0 ? nullptr : sums[slot - 1]);
        else
          ws.full_rows(slices(it), s.N, it.r0, it.rows, sums[slot - j + chunks - 1]);
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
