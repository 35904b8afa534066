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
      : n_(n), d_(d), s_(s), ldx_(aft_ld<Acc>(d)), run_(static_cast<size_t>(ldx_)), rest_(run_.size()),
        after_(run_.size()), acc_(static_cast<size_t>(kRows * ldx_)),
        m_(static_cast<size_t>(pad_to_packets<Acc>(d))), m_new_(m_.size()),
        a_(static_cast<size_t>(kRows * (kRows + 2 * s))) {}

  /// Kv head h's group, whole: the windowed sums once, finished for each of its query heads.
  void run(bool causal, const AftLocalBand<Acc>* band, Index h, const GroupSlices<T>& x) {
    bind(causal, band, h, x);
    load_head();
    xs_ = reserve(x_, n_ * ldx_);  // whole heads only: a split head's rows live in the call's buffers
    reserve(outside_, n_ * ldx_);
    if (causal_)
      causal_rows();
    else
      all_rows();
  }

  // A non-causal head split in chunks of kTokenChunk rows, [c0, c1) (Kernel::split's phases), over
  // buffers of the call: the head's rows of X (xs), of F (each chunk's running sums from its
  // start) and of S (from its end), each chunk's max of K (mxs, ld_mx apart), and per chunk the
  // sums of the chunks before and after it (sums, 2 rows of X each). The same sums, added in the
  // same order, as all_rows: the same bits.

  /// Phase 1: mx = the chunk's max of K.
  void chunk_max(const GroupSlices<T>& x, Index c0, Index c1, Acc* mx) {
    aft_col_max(load_k_(x.k + c0 * d_, c1 - c0, d_).data(), c1 - c0, d_, mx);
  }
  /// Phase 2: the chunk's rows of X, under the head's max (folded from every chunk's), F and S.
  void chunk_runs(const GroupSlices<T>& x, const Acc* mxs, Index ld_mx, Index c0, Index c1, Acc* xs, Acc* f, Acc* s) {
    std::copy(mxs, mxs + d_, m_.data());
    for (Index c = 1; c < token_chunks(n_); ++c) fold_max(mxs + c * ld_mx);
    aft_exp_rows(load_k_(x.k + c0 * d_, c1 - c0, d_).data(), load_v_(x.v + c0 * d_, c1 - c0, d_).data(), d_,
                 m_.data(), 0, c1 - c0, ldx_, xs + c0 * ldx_);
    Row run(run_.data(), ldx_);
    run.setZero();
    for (Index t = c0; t < c1; ++t) row(f, t) = run += row(xs, t);
    run.setZero();
    for (Index t = c1 - 1; t >= c0; --t) row(s, t) = run += row(xs, t);
  }
  /// Phase 3, per head: sums[c] = [the chunks before c | the chunks after c], added from the
  /// nearest chunk outwards as all_rows' passes add them (chunk 0's before, the last's after: unused).
  static void chunk_sums(Index n, Index ldx, const Acc* f, const Acc* s, Acc* sums) {
    const Index chunks = token_chunks(n), C = kTokenChunk;
    const auto at = [&](const Acc* b, Index i) { return ConstRow(b + i * ldx, ldx); };
    for (Index c = 1; c < chunks; ++c) {
      Row before(sums + 2 * c * ldx, ldx);
      if (c == 1) before = at(f, C - 1); else before = at(sums, 2 * (c - 1)) + at(f, c * C - 1);
    }
    for (Index c = chunks - 2; c >= 0; --c) {
      Row after(sums + (2 * c + 1) * ldx, ldx);
      if (c == chunks - 2) after = at(s, (c + 1) * C); else after = at(sums, 2 * (c + 1) + 1) + at(s, (c + 1) * C);
    }
  }
  /// Phase 4: the chunk's rows, each from its keys outside the window (the sums) and its window.
  void chunk_rows(const AftLocalBand<Acc>* band, Index h, const GroupSlices<T>& x, Index c0, Index c1,
                  const Acc* xs, const Acc* f, const Acc* s, const Acc* sums) {
    bind(false, band, h, x);
    xs_ = xs;
    const Index n = n_, sw = s_, last = token_chunks(n) - 1;
    Row before(run_.data(), ldx_), after(after_.data(), ldx_);
    const auto sum = [&](Index which, Index i) { return ConstRow(sums + (2 * (i / kTokenChunk) + which) * ldx_, ldx_); };
    for (Index t0 = c0; t0 < c1; t0 += kRows) {
      const Index t1 = std::min(c1, t0 + kRows);
      for (Index t = t0; t < t1; ++t) {
        const Index j = t - sw, k = t + sw;
        if (j < 0) before.setZero(); else if (j < kTokenChunk) before = row(f, j); else before = sum(0, j) + row(f, j);
        if (k >= n) after.setZero(); else if (k / kTokenChunk == last) after = row(s, k); else after = sum(1, k) + row(s, k);
        start_row(t - t0, t, before + after);
      }
      band_rows(t0, t1);
    }
  }

 private:
  using Row = Eigen::Map<Eigen::Array<Acc, 1, Eigen::Dynamic>>;
  using ConstRow = Eigen::Map<const Eigen::Array<Acc, 1, Eigen::Dynamic>>;
  Row row(AlignedBuffer<Acc>& b, Index t) { return Row(b.data() + t * ldx_, ldx_); }
  Row row(Acc* b, Index t) const { return Row(b + t * ldx_, ldx_); }
  ConstRow row(const Acc* b, Index t) const { return ConstRow(b + t * ldx_, ldx_); }

  void bind(bool causal, const AftLocalBand<Acc>* band, Index h, const GroupSlices<T>& x) {
    io_.bind(x.q, x.out, x.heads, x.stride, d_);
    src_k_ = x.k;
    src_v_ = x.v;
    kk_ = vv_ = nullptr;
    band_ = band;
    causal_ = causal;
    if (band_) {
      slot_ = band_->table().slot_for(h);
      band_->weights(causal_, &ew_, &eo_);
    }
  }
  // The head's K and V in the accumulate type: up front for a whole head, on demand (the exact
  // path's) for a chunk.
  void load_head() {
    if (kk_) return;
    kk_ = load_k_(src_k_, n_, d_).data();
    vv_ = load_v_(src_v_, n_, d_).data();
  }
  // m_ = max(m_, mx) lane-wise: chunk maxes folded in chunk order.
  void fold_max(const Acc* mx) {
    for_each_packet<Acc>(d_, [&](auto p, Index c) {
      using P = decltype(p);
      ei::pstoreu(m_.data() + c, vmax(ei::ploadu<P>(m_.data() + c), ei::ploadu<P>(mx + c)));
    });
  }

  // Row t's keys outside its window: outside[t], those at or after t + s (a backward pass), and
  // those at or before t - s (a forward pass). Each pass sums per chunk of kTokenChunk keys from
  // its nearer end, and adds the chunks passed before (beyond: `rest`), as the split's phases do.
  void all_rows() {
    const Index n = n_, s = s_, C = kTokenChunk;
    aft_col_max(kk_, std::min(n, C), d_, m_.data());  // the max per chunk, folded in order
    for (Index c0 = C; c0 < n; c0 += C) {
      aft_col_max(kk_ + c0 * d_, std::min(C, n - c0), d_, m_new_.data());
      fold_max(m_new_.data());
    }
    aft_exp_rows(kk_, vv_, d_, m_.data(), 0, n, ldx_, x_.data());
    Row run(run_.data(), ldx_), rest(rest_.data(), ldx_);
    run.setZero();
    bool has_rest = false;
    for (Index t = n - 1; t >= 0; --t) {
      const Index k = t + s;
      if (k < n && k % C == C - 1 && k + 1 < n) next_chunk(run, rest, has_rest);  // k ends its chunk
      if (k < n) run += row(x_, k);
      if (has_rest) row(outside_, t) = rest + run; else row(outside_, t) = run;
    }
    run.setZero();
    has_rest = false;
    for (Index c0 = 0; c0 < n; c0 += C)
      for (Index t0 = c0; t0 < std::min(n, c0 + C); t0 += kRows) {
        const Index t1 = std::min({n, c0 + C, t0 + kRows});
        for (Index t = t0; t < t1; ++t) {
          const Index j = t - s;
          if (j > 0 && j % C == 0) next_chunk(run, rest, has_rest);  // j starts its chunk
          if (j >= 0) run += row(x_, j);
          if (has_rest) start_row(t - t0, t, (rest + run) + row(outside_, t)); else start_row(t - t0, t, run + row(outside_, t));
        }
        band_rows(t0, t1);
      }
  }
  // A chunk's running sum is done: rest += it (rest = it for the first), run restarts at 0.
  static void next_chunk(Row& run, Row& rest, bool& has_rest) {
    if (has_rest) rest += run; else rest = run;
    has_rest = true;
    run.setZero();
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
    gemm<GeneralTiling>(rows, ldx_, depth, StridedA<Acc>{a_.data(), depth, 1}, RowsB<Acc>{xs_ + lo * ldx_, ldx_},
                        AddC<Acc>{acc_.data(), ldx_});
    io_.rows(t0, rows);
    for (Index i = 0; i < io_.heads(); ++i)
      aft_finish(io_.q(i), d, acc_.data(), ldx_, rows, io_.y(i), [&](Index r, Index c) {
        const Index t = t0 + r;
        load_head();
        return aft_exact_ratio(kk_, vv_, d, c, causal_ ? t : n - 1, [&](Index tp) {
          const Index dist = tp > t ? tp - t : t - tp;
          return band_ && dist < s ? band_->w(slot_, t, tp) : Acc(0);
        });
      });
    io_.commit();
  }

  Index n_, d_, s_, ldx_;
  AlignedBuffer<Acc> x_, outside_, run_, rest_, after_, acc_, m_, m_new_, a_;
  TileLoader<T> load_k_, load_v_;
  GroupIO<T> io_;
  // The head in progress: its k and v, K and V in the accumulate type (load_head), its rows of X.
  const T *src_k_ = nullptr, *src_v_ = nullptr;
  const Acc *kk_ = nullptr, *vv_ = nullptr, *xs_ = nullptr, *ew_ = nullptr, *eo_ = nullptr;
  const AftLocalBand<Acc>* band_ = nullptr;
  Index slot_ = 0;
  bool causal_ = false;
};

template <class T>
struct Kernel<AftLocal<T>> {
  using Acc = accum_t<T>;

  static NoReport forward(const AftLocal<T>& f, const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v,
                          const View4<T>& out) {
    const Shape4 s = shape_of(q);
    const AftLocalBand<Acc>* band = f.bias_.get();
    // The band's own s (a bias clamps it to N), else min(window, N): the same result for any s >= N.
    const Index window = band ? band->window() : std::min(f.window, s.N);
    // One item = one (b, kv head) with its query heads (one (b, h) without grouped-query heads),
    // or, non-causal, where those leave threads idle, one token chunk of it (the same bits).
    const WorkGrid heads{s.B, shape_of(k).H, s.N};
    if (!f.causal && s.N > kTokenChunk && !fills_rounds(heads.size(), f.parallel.workers()))
      return split(f, band, window, q, k, v, out);
    for_each_item(f.parallel, heads, [&] {
      return [&, ws = AftLocalHead<T>(s.N, s.D, window)](const WorkGrid::Item& it) mutable {
        ws.run(f.causal, band, it.h, group_slices(q, k, v, out, it.b, it.h));
      };
    });
    return {};
  }

  /// Non-causal heads in token chunks: 1, each chunk's max of K; 2, its rows of X and running
  /// sums; 3, per head, the sums before and after each chunk (a few rows); 4, its output rows.
  /// X and the running sums are buffers of the call (3 B H_kv N rows of X).
  static NoReport split(const AftLocal<T>& f, const AftLocalBand<Acc>* band, Index window, const ConstView4<T>& q,
                        const ConstView4<T>& k, const ConstView4<T>& v, const View4<T>& out) {
    const Shape4 s = shape_of(q);
    const WorkGrid grid{s.B, shape_of(k).H, s.N, kTokenChunk};
    const Index chunks = grid.blocks(), ld_mx = pad_to_packets<Acc>(s.D), ldx = aft_ld<Acc>(s.D), size = s.N * ldx;
    Partials<Acc> mx(grid.size(), ld_mx), sums(grid.size(), 2 * ldx);
    UninitArray<Acc> xs(grid.size() / chunks * size), fs(grid.size() / chunks * size), ss(grid.size() / chunks * size);
    // Item it's head (its slots: chunks of them from head(it) * chunks) and its slices.
    const auto head = [&](const WorkGrid::Item& it) { return grid.index(it) / chunks; };
    const auto slices = [&](const WorkGrid::Item& it) { return group_slices(q, k, v, out, it.b, it.h); };
    const auto phase = [&](auto&& step) {
      for_each_item(f.parallel, grid, [&] {
        return [&, ws = AftLocalHead<T>(s.N, s.D, window)](const WorkGrid::Item& it) mutable { step(ws, it); };
      });
    };
    phase([&](AftLocalHead<T>& ws, const WorkGrid::Item& it) {
      ws.chunk_max(slices(it), it.r0, it.r0 + it.rows, mx[grid.index(it)]);
    });
    phase([&](AftLocalHead<T>& ws, const WorkGrid::Item& it) {
      const Index at = head(it) * size;
      ws.chunk_runs(slices(it), mx[head(it) * chunks], ld_mx, it.r0, it.r0 + it.rows, xs.data() + at, fs.data() + at,
                    ss.data() + at);
    });
    for_each_index(f.parallel, grid.size() / chunks, [&] {
      return [&](Index h) {
        AftLocalHead<T>::chunk_sums(s.N, ldx, fs.data() + h * size, ss.data() + h * size, sums[h * chunks]);
      };
    });
    phase([&](AftLocalHead<T>& ws, const WorkGrid::Item& it) {
      const Index at = head(it) * size;
      ws.chunk_rows(band, it.h, slices(it), it.r0, it.r0 + it.rows, xs.data() + at, fs.data() + at, ss.data() + at,
                    sums[head(it) * chunks]);
    });
    return {};
  }
};

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
