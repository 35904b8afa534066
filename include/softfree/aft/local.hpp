#pragma once
// AftLocal(s): AftFull whose bias is kept inside the window |t - t'| < s and is 0 (not -inf)
// outside, so keys outside the window still count with weight e^K (SPEC.md "AFT"). Computed as
// the sums outside the window (prefix and suffix sums, no subtraction) plus the window's weighted
// sum through the kernel layer's gemm: O(N s D). The bias is stored as its band only.
#include <algorithm>
#include <memory>
#include <mutex>

#include "../core/attention.hpp"
#include "../core/parallel.hpp"
#include "../core/schedule.hpp"
#include "common.hpp"
#include "decode.hpp"
#include "simple.hpp"

namespace softfree {
namespace detail {

/// AftLocal's band [1 or H, N, 2s - 1] (band[h, t, j] = w[t, t - (s - 1) + j]) and, per variant
/// (non-causal, causal), the weights every row uses, built once on first use and shared by copies:
/// ew[slot, t, j] = e^{w - r_t} inside row t's window (zero elsewhere) and eo[slot, t] = e^{-r_t}
/// for the keys outside it, with r_t = max(0, max of w over the window), so every weight is <= 1.
template <class Acc>
class AftLocalBand {
 public:
  AftLocalBand(Index s, AftTable<Acc> band) : s_(s), band_(std::move(band)) {}
  Index window() const { return s_; }
  const AftTable<Acc>& table() const { return band_; }
  /// w[t, t'] of slot hs for |t - t'| < s.
  Acc w(Index hs, Index t, Index tp) const { return band_(hs, t, tp - t + s_ - 1); }

  void weights(bool causal, const Acc** ew, const Acc** eo) const {
    const int c = causal ? 1 : 0;
    std::call_once(once_[c], [&] { build(causal, ew_[c], eo_[c]); });
    *ew = ew_[c].data();
    *eo = eo_[c].data();
  }

 private:
  void build(bool causal, AlignedBuffer<Acc>& ew, AlignedBuffer<Acc>& eo) const {
    const Index slots = band_.slots, n = band_.rows, nb = 2 * s_ - 1;
    ew.assign(static_cast<size_t>(slots * n * nb), Acc(0));
    eo.assign(static_cast<size_t>(slots * n), Acc(0));
    for (Index hs = 0; hs < slots; ++hs)
      for (Index t = 0; t < n; ++t) {
        const Index lo = std::max<Index>(0, t - s_ + 1) - t + s_ - 1;
        const Index hi = (causal ? t : std::min(n - 1, t + s_ - 1)) - t + s_ - 1;
        Acc r = 0;
        for (Index j = lo; j <= hi; ++j) r = std::max(r, band_(hs, t, j));
        eo[static_cast<size_t>(hs * n + t)] = std::exp(-r);
        for (Index j = lo; j <= hi; ++j) ew[static_cast<size_t>((hs * n + t) * nb + j)] = std::exp(band_(hs, t, j) - r);
      }
  }

  Index s_;
  AftTable<Acc> band_;
  mutable std::once_flag once_[2];
  mutable AlignedBuffer<Acc> ew_[2], eo_[2];
};

}  // namespace detail

/// AFT-local(s). Without a bias, w = 0 inside the window too (the result equals AftSimple).
/// causal: sums over t' <= t.
template <class T = float>
class AftLocal : public Attention<AftLocal<T>, T>, public detail::AftBias<AftLocal<T>, T, detail::AftLocalBand<accum_t<T>>> {
  using Acc = accum_t<T>;
  using Params = detail::AftLocalBand<Acc>;

 public:
  static constexpr const char* kName = "AftLocal";
  static constexpr Capabilities kCapabilities{true, false, ""};

  /// s: the window half-width (keys with |t - t'| < s carry the bias); s >= 1. Every s >= N means
  /// the same as N (the whole bias). A bias is set for one s: after changing window, set it again.
  Index window = 32;
  bool causal = false;
  Parallel parallel;

  AftLocal() = default;
  explicit AftLocal(Index s) : window(s) {}
  /// w: N x N (shared) or [1 or H, N, N]; only the band |t - t'| < s is kept.
  template <class W>
  AftLocal(Index s, const W& w) : window(s) {
    this->set_bias(w);
  }

  /// Causal decoding of one head, token by token: step(q_t, k_t, v_t, y_t) gives row t of the
  /// causal call (its window weighted by row t of the bias, older keys by 1), in O(s D), never
  /// allocating; at most N tokens with a bias (unbounded without). The state shares the bias
  /// (and its window) as set when it is made.
  class State : public detail::AftWindowState<T, detail::AftLocalBand<Acc>> {
   public:
    State(const AftLocal& f, Index d, Index head = 0)
        : detail::AftWindowState<T, detail::AftLocalBand<Acc>>("AftLocal::State", f.bias_,
                                                               f.bias_ ? f.bias_->window() : 1, d, head) {}
  };

  /// Sets the bias directly as its band [1 or H, N, 2s - 1]: band[h, t, j] = w[t, t - (s - 1) + j]
  /// (entries with t' outside [0, N) are ignored). Sets window = s. Memory O(N s), not O(N^2).
  /// bias() then returns this band (as it does after set_bias, which keeps only the band).
  AftLocal& set_band_bias(const AftWeights<T>& band) {
    detail::AftTable<Acc> b(band);
    detail::aft_check_weights(kName, "band", b);
    if (b.cols % 2 == 0)
      detail::fail(kName, "band has shape [", b.slots, ", ", b.rows, ", ", b.cols,
                   "]: the last dimension must be 2s - 1 (odd) for a window s");
    window = (b.cols + 1) / 2;
    this->bias_ = std::make_shared<const Params>(window, std::move(b));
    return *this;
  }

  void check_options(const Shape4& s, const Shape4& sk) const {
    check_window();
    if (!this->bias_) return;
    const auto& b = this->bias_->table();
    if (std::min(window, b.rows) != std::min(this->bias_->window(), b.rows))
      detail::fail(kName, "window = ", window, " but the bias was set for window = ", this->bias_->window(),
                   ": set the bias again after changing window");
    if (b.rows != s.N)
      detail::fail(kName, "w (band [", b.slots, ", ", b.rows, ", ", b.cols, "]) is for N = ", b.rows,
                   " but q has shape ", s, ": the bias must be N x N with N = ", s.N);
    detail::aft_check_heads(kName, "w", b.slots, s, sk);
  }

 private:
  friend class detail::AftBias<AftLocal, T, Params>;
  void check_window() const {
    if (window < 1) detail::fail(kName, "window = ", window, ": must be >= 1");
  }
  // From the full N x N bias: keep its band.
  std::shared_ptr<const Params> make_bias(detail::AftTable<Acc> w) const {
    check_window();
    detail::aft_check_weights(kName, "w", w);
    if (w.rows != w.cols)
      detail::fail(kName, "w has shape [", w.slots, ", ", w.rows, ", ", w.cols, "]: must be [1 or H, N, N]");
    // Clamped before 2s - 1 is formed: no larger band than N x N, and no overflow.
    const Index n = w.rows, s = std::min(window, n), nb = 2 * s - 1;
    detail::AftTable<Acc> band(w.slots, n, nb);
    for (Index hs = 0; hs < w.slots; ++hs)
      for (Index t = 0; t < n; ++t)
        for (Index j = 0; j < nb; ++j) {
          const Index tp = t - (s - 1) + j;
          if (tp >= 0 && tp < n) band(hs, t, j) = w(hs, t, tp);
        }
    return std::make_shared<const Params>(s, std::move(band));
  }
};

namespace detail {
inline namespace SOFTFREE_ISA {

/// One thread's AftLocal workspace, per (b, kv head). Row t: acc = e^{-r} * outside + sum over the
/// window of e^{w - r} X[t'] (the band's weights; all 1 without a bias). The windows of kRows
/// consecutive rows are one product: their weights as a kRows x (keys they see) band against
/// those keys' rows of X, so each X row loaded feeds kRows rows (one row at a time fed one).
template <class T>
class AftLocalHead {
  using Acc = accum_t<T>;
  // Causal rows are processed in blocks shifted by the max of K over the keys the block sees.
  static constexpr Index kBlock = 64;
  // Rows per band product: the general register block's height (the band's zero corners cost
  // (kRows - 1) / (2s - 1) of the work; a taller block would waste more than it reuses).
  static constexpr Index kRows = 6;

 public:
  AftLocalHead(Index n, Index d, Index s)
      : n_(n), d_(d), s_(s), ldx_(aft_ld<Acc>(d)), x_(static_cast<size_t>(n * ldx_)), outside_(x_.size()),
        run_(static_cast<size_t>(ldx_)), acc_(static_cast<size_t>(kRows * ldx_)),
        m_(static_cast<size_t>(pad_to_packets<Acc>(d))), m_new_(m_.size()),
        a_(static_cast<size_t>(kRows * (kRows + 2 * s))) {}

  /// Kv head h's group: the windowed sums once, finished for each of its query heads.
  void run(bool causal, const AftLocalBand<Acc>* band, Index h, const GroupSlices<T>& x) {
    const Index n = n_, d = d_;
    kk_ = load_k_(x.k, n, d).data();
    vv_ = load_v_(x.v, n, d).data();
    io_.bind(x.q, x.out, x.heads, x.stride, d);
    band_ = band;
    causal_ = causal;
    if (band_) {
      slot_ = band_->table().slot_for(h);
      band_->weights(causal_, &ew_, &eo_);
    }
    if (causal_)
      causal_rows();
    else
      all_rows();
  }

 private:
  using Row = Eigen::Map<Eigen::Array<Acc, 1, Eigen::Dynamic>>;
  Row row(AlignedBuffer<Acc>& b, Index t) { return Row(b.data() + t * ldx_, ldx_); }

  // outside[t] = sum_{t' >= t + s} X[t'] (a backward pass), then forward: run = sum_{t' <= t - s}
  // X[t'], and row t starts from both.
  void all_rows() {
    const Index n = n_, s = s_;
    aft_col_max(kk_, n, d_, m_.data());
    aft_exp_rows(kk_, vv_, d_, m_.data(), 0, n, ldx_, x_.data());
    Row run(run_.data(), ldx_);
    run.setZero();
    for (Index t = n - 1; t >= 0; --t) {
      if (t + s < n) run += row(x_, t + s);
      row(outside_, t) = run;
    }
    run.setZero();
    for (Index t0 = 0; t0 < n; t0 += kRows) {
      const Index t1 = std::min(n, t0 + kRows);
      for (Index t = t0; t < t1; ++t) {
        if (t - s >= 0) run += row(x_, t - s);
        start_row(t - t0, t, run + row(outside_, t));
      }
      band_rows(t0, t1);
    }
  }

  // run = sum_{t' <= t - s} X[t'] under the current block's shift m, rescaled when m grows.
  void causal_rows() {
    const Index n = n_, d = d_, s = s_;
    Row run(run_.data(), ldx_);
    run.setZero();
    for (Index b0 = 0; b0 < n; b0 += kBlock) {
      const Index b1 = std::min(n, b0 + kBlock);
      aft_col_max(kk_ + b0 * d, b1 - b0, d, m_new_.data());
      for_each_packet<Acc>(d, [&](auto p, Index c) {
        using P = decltype(p);
        P mn = ei::ploadu<P>(m_new_.data() + c);
        if (b0 > 0) {  // rescale num and den alike to the new shift
          const P m = ei::ploadu<P>(m_.data() + c);
          mn = vmax(mn, m);
          const P f = exp2_nonpositive(ei::pmul(ei::psub(m, mn), ei::pset1<P>(kLog2e<Acc>)));
          ei::pstoreu(run_.data() + c, ei::pmul(ei::ploadu<P>(run_.data() + c), f));
          ei::pstoreu(run_.data() + d + c, ei::pmul(ei::ploadu<P>(run_.data() + d + c), f));
        }
        ei::pstoreu(m_.data() + c, mn);
      });
      const Index lo = std::max<Index>(0, b0 - s);
      aft_exp_rows(kk_, vv_, d, m_.data(), lo, b1, ldx_, x_.data() + lo * ldx_);
      for (Index t0 = b0; t0 < b1; t0 += kRows) {
        const Index t1 = std::min(b1, t0 + kRows);
        for (Index t = t0; t < t1; ++t) {
          if (t - s >= 0) run += row(x_, t - s);
          start_row(t - t0, t, run);
        }
        band_rows(t0, t1);
      }
    }
  }

  // acc row r = e^{-r_t} * outside: row t's keys outside its window.
  template <class Outside>
  void start_row(Index r, Index t, const Outside& outside) {
    const Acc wo = band_ ? eo_[slot_ * n_ + t] : Acc(1);
    Row(acc_.data() + r * ldx_, ldx_) = wo * outside;
  }

  // Rows [t0, t1) (at most kRows, started by start_row): each adds its window, all in one product
  // of their band weights against the rows of X they see; then y.
  void band_rows(Index t0, Index t1) {
    const Index n = n_, s = s_, d = d_, rows = t1 - t0;
    const Index lo = std::max<Index>(0, t0 - s + 1), hi = causal_ ? t1 - 1 : std::min(n - 1, t1 - 1 + s - 1);
    const Index depth = hi - lo + 1;
    std::fill(a_.data(), a_.data() + rows * depth, Acc(0));
    for (Index r = 0; r < rows; ++r) {
      const Index t = t0 + r, wlo = std::max<Index>(0, t - s + 1), whi = causal_ ? t : std::min(n - 1, t + s - 1);
      Acc* ar = a_.data() + r * depth - lo;
      if (band_) {
        const Acc* e = ew_ + (slot_ * n + t) * (2 * s - 1) - t + s - 1;
        std::copy(e + wlo, e + whi + 1, ar + wlo);
      } else {
        std::fill(ar + wlo, ar + whi + 1, Acc(1));
      }
    }
    gemm<GeneralTiling>(rows, ldx_, depth, StridedA<Acc>{a_.data(), depth, 1}, RowsB<Acc>{x_.data() + lo * ldx_, ldx_},
                        AddC<Acc>{acc_.data(), ldx_});
    io_.rows(t0, rows);
    for (Index i = 0; i < io_.heads(); ++i)
      aft_finish(io_.q(i), d, acc_.data(), ldx_, rows, io_.y(i), [&](Index r, Index c) {
        const Index t = t0 + r;
        return aft_exact_ratio(kk_, vv_, d, c, causal_ ? t : n - 1, [&](Index tp) {
          const Index dist = tp > t ? tp - t : t - tp;
          return band_ && dist < s ? band_->w(slot_, t, tp) : Acc(0);
        });
      });
    io_.commit();
  }

  Index n_, d_, s_, ldx_;
  AlignedBuffer<Acc> x_, outside_, run_, acc_, m_, m_new_, a_;
  TileLoader<T> load_k_, load_v_;
  GroupIO<T> io_;
  // The head in progress.
  const Acc *kk_ = nullptr, *vv_ = nullptr, *ew_ = nullptr, *eo_ = nullptr;
  const AftLocalBand<Acc>* band_ = nullptr;
  Index slot_ = 0;
  bool causal_ = false;
};

template <class T>
struct Kernel<AftLocal<T>> {
  static NoReport forward(const AftLocal<T>& f, const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v,
                          const View4<T>& out) {
    const Shape4 s = shape_of(q);
    const AftLocalBand<accum_t<T>>* band = f.bias_.get();
    // The band's own s (a bias clamps it to N), else min(window, N): the same result for any s >= N.
    const Index window = band ? band->window() : std::min(f.window, s.N);
    // One item = one (b, kv head) with its query heads (one (b, h) without grouped-query heads).
    for_each_item(f.parallel, WorkGrid{s.B, shape_of(k).H, s.N}, [&] {
      return [&, ws = AftLocalHead<T>(s.N, s.D, window)](const WorkGrid::Item& it) mutable {
        ws.run(f.causal, band, it.h, group_slices(q, k, v, out, it.b, it.h));
      };
    });
    return {};
  }
};

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
