#pragma once
// SimA (Koohpayegani and Pirsiavash): softmax-free attention with l1-normalised queries and keys.
//
//   Qn[n, c] = Q[n, c] / max(sum_m |Q[m, c]|, eps)   (over tokens, per channel; likewise Kn)
//   O = Qn Kn^T V                                     (no scale, no softmax)
//
// The fast order never forms Qn or Kn: with a_c, b_c the reciprocal column norms of Q and K,
// O = Q (diag(a b) (K^T V)), so the scalings fold into the D x D matrix K^T V. That is two column
// reductions, one D x D x N product, a D x D rescale and one N x D x D product: O(N D^2), both
// products through the kernel layer's gemm, or, with bf16 products (Math), on bf16 pairs
// (core/kernels/pairs.hpp) accumulated in float: K^T V with K and V rounded, Q M with Q and the
// rescaled M rounded. The column norms and K^T V are summed per chunk of kTokenChunk tokens and
// the chunks then in order, so every head spreads over the threads with the same bits for any
// thread count (Kernel<SimA>::kv_first). Inputs for which that overflows take Qn (Kn^T V) with Qn
// and Kn formed first (SimAHead), a whole head on one thread. The short-sequence order stays in
// float, one item per kv head.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/attention.hpp"
#include "core/kernels/convert.hpp"
#include "core/kernels/gemm.hpp"
#include "core/kernels/pairs.hpp"
#include "core/parallel.hpp"
#include "core/schedule.hpp"

namespace softfree {

/// Which product SimA evaluates first.
enum class SimAOrder {
  Auto,     ///< the original rule: (Qn Kn^T) V when the sequence is shorter than D, else Qn (Kn^T V)
  QKFirst,  ///< (Qn Kn^T) V: O(N^2 D), forms an Nq x Nkv matrix per thread
  KVFirst,  ///< Qn (Kn^T V): O(N D^2)
};

template <class T = float>
class SimA : public Attention<SimA<T>, T> {
 public:
  static constexpr const char* kName = "SimA";
  static constexpr Capabilities kCapabilities{false, true,
                                              "SimA normalises over all tokens, and the paper defines no causal form"};

  /// Lower clamp of the l1 norms (PyTorch F.normalize's eps). A channel whose norm is exactly 0
  /// stays 0 even with eps = 0.
  double eps = 1e-12;
  SimAOrder order = SimAOrder::Auto;
  bool causal = false;  ///< not supported: true is rejected
  Parallel parallel;

  void check_options(const Shape4&, const Shape4&) const { detail::check_nonnegative_finite(kName, "eps", eps); }

  /// The order a call with nq queries, nkv keys and head dim d takes. Auto follows the original
  /// code's rule (N < D picks (Qn Kn^T) V; a tie takes Qn (Kn^T V)); for cross-attention it
  /// needs both lengths below D.
  SimAOrder resolved_order(Index nq, Index nkv, Index d) const {
    if (order != SimAOrder::Auto) return order;
    return (nq < d && nkv < d) ? SimAOrder::QKFirst : SimAOrder::KVFirst;
  }
};

namespace detail {
inline namespace SOFTFREE_ISA {

/// One thread's SimA workspace and the two orders; Pairs: kv_first's products on bf16 pairs.
///
/// kv_first runs in token-split phases (Kernel<SimA> below): per token chunk of a kv head, the
/// chunk's K^T V and K column norms (key_chunk); per chunk of a query head, Q's column norms
/// (query_chunk); then per chunk of query rows, M = diag(a b) (K^T V) from the partials reduced
/// in chunk order (prepare_m) and the rows' O = Q M (product_rows). Where that M overflowed (K^T V
/// for |x| ~ 1e19 in float, a float norm for |x| ~ 1e36 over a few hundred tokens) or a scale
/// leaves float's normal range (1 / a subnormal norm with eps = 0), the head is redone whole by
/// one thread (scaled_head) with Qn and Kn formed (each |entry| <= 1, scales in double) before any
/// product, so every input whose result is representable gives it.
template <class T, bool Pairs = false>
class SimAHead {
  using Acc = accum_t<T>;
  // Rows per tile: a 256 x D tile of K and of V stays in L2 while K^T V accumulates over it (one
  // pass over the whole head per column block would stream it from memory 16 times); half and
  // bfloat16 tiles are converted into a reused float buffer, float tiles are mapped.
  static constexpr Index kTile = 256;
  // K^T V and Q M use the flash tiling: 4 x 4 packets over D = 64 columns.
  using Tile = Tiling<4, 4>;

 public:
  // M (row stride ldm: D, or D rounded up to whole packets for pairs).
  SimAHead(Index d, double eps)
      : d_(d), ldm_(ldm_of(d)), eps_(eps), qnorm_(static_cast<size_t>(d)), knorm_(qnorm_.size()), qscale_(d),
        kscale_(d), kv_(static_cast<size_t>(d * ldm_)) {}

  /// Values in one token chunk's key partial: its K^T V (D rows of stride ldm), then its K column
  /// l1 norms (D).
  static Index key_partial_size(Index d) { return d * ldm_of(d) + d; }

  /// kv_first, phase 1: the K^T V and K column norms of `rows` tokens, added into part (zeroed,
  /// key_partial_size values).
  void key_chunk(const T* kp, const T* vp, Index rows, Acc* part) {
    const Index d = d_;
    for (Index r0 = 0; r0 < rows; r0 += kTile) {
      const Index n = std::min(kTile, rows - r0);
      const Acc* kt = load_k_(kp + r0 * d, n, d).data();
      add_kv(kt, load_v_(vp + r0 * d, n, d).data(), n, part);
      add_abs_colsum(kt, n, part + d * ldm_);
    }
  }

  /// kv_first, phase 1: Q's column l1 norms over `rows` tokens, added into part (zeroed, D values).
  void query_chunk(const T* qp, Index rows, Acc* part) {
    const Index d = d_;
    for (Index r0 = 0; r0 < rows; r0 += kTile) {
      const Index n = std::min(kTile, rows - r0);
      add_abs_colsum(load_q_(qp + r0 * d, n, d).data(), n, part);
    }
  }

  /// kv_first, phase 2: M = diag(a b) (K^T V) for query head `head` (any id unique in the call),
  /// from its kv head's key partials keys[k0, k0 + kc) and its query partials queries[q0, q0 + qc),
  /// each reduced in chunk order; kept for the next call with the same head. false where
  /// anything overflowed or a scale is not a normal Acc: the head is then for scaled_head.
  bool prepare_m(Index head, const Partials<Acc>& keys, Index k0, Index kc, const Partials<Acc>& queries, Index q0,
                 Index qc) {
    if (head == m_head_) return m_direct_;
    const Index d = d_, ldm = ldm_;
    m_head_ = head;
    reduce(keys, k0, kc, 0, d * ldm, kv_.data());
    reduce(keys, k0, kc, d * ldm, d, knorm_.data());
    reduce(queries, q0, qc, 0, d, qnorm_.data());
    m_direct_ = direct_m();
    if (m_direct_) pack_m();
    return m_direct_;
  }

  /// kv_first, phase 2: O rows [r0, r0 + rows) = Q M, M from the last prepare_m (which was true).
  void product_rows(const T* qp, Index r0, Index rows, T* op) { rows_times_m(qp, r0, rows, op, false); }

  /// kv_first's fallback: the whole head as Qn (Kn^T V), Qn and Kn formed with scales in double.
  void scaled_head(const T* qp, Index nq, const T* kp, const T* vp, Index nk, T* op) {
    m_head_ = -1;  // kv_ now holds Kn^T V
    scaled_m(qp, nq, kp, vp, nk);
    pack_m();
    rows_times_m(qp, 0, nq, op, true);
  }

  // O = (Qn Kn^T) V: for short sequences, where the Nq x Nkv matrix is the small one.
  void qk_first(const T* qp, Index nq, const T* kp, const T* vp, Index nk, T* op) {
    const Index d = d_;
    const Acc* kt = load_k_(kp, nk, d).data();
    const Acc* qt = load_q_(qp, nq, d).data();
    kscale_.reset(), qscale_.reset();
    kscale_.add_abs(kt, nk), qscale_.add_abs(qt, nq);
    kscale_.to_scales(eps_), qscale_.to_scales(eps_);
    const Acc* kn = kscale_.apply(kt, nk);
    const Acc* qn = qscale_.apply(qt, nq);
    Acc* scores = reserve(scores_, nq * nk);
    gemm_dot(nq, nk, d, qn, d, kn, d, StoreC<Acc>{scores, nk});
    Acc* o = out_.begin(op, nq, d);
    gemm<GeneralTiling>(nq, d, nk, StridedA<Acc>{scores, nk, 1}, RowsB<Acc>{load_v_(vp, nk, d).data(), d},
                        StoreC<Acc>{o, d});
    out_.commit();
  }

 private:
  /// Per channel the l1 norm in double, then the scale 1 / max(norm, eps) (0 for an all-zero
  /// channel), and tiles scaled by it in double (this path serves inputs beyond float's range).
  struct Scales {
    explicit Scales(Index d) : d(d), s(static_cast<size_t>(d)) {}
    void reset() { std::fill(s.begin(), s.end(), 0.0); }
    /// Adds the column sums of |x| (rows x d).
    void add_abs(const Acc* x, Index rows) {
      for (Index r = 0; r < rows; ++r)
        for (Index c = 0; c < d; ++c) s[static_cast<size_t>(c)] += std::abs(static_cast<double>(x[r * d + c]));
    }
    /// A NaN norm (a NaN in the channel) gives a NaN scale: the channel is NaN, not dropped.
    void to_scales(double eps) {
      for (double& w : s) w = w == 0 ? 0.0 : 1.0 / std::max(w, eps);
    }
    /// x (rows x d) times the scales, into this workspace's buffer.
    const Acc* apply(const Acc* x, Index rows) {
      Acc* y = reserve(scaled, rows * d);
      for (Index r = 0; r < rows; ++r)
        for (Index c = 0; c < d; ++c)
          y[r * d + c] = static_cast<Acc>(static_cast<double>(x[r * d + c]) * s[static_cast<size_t>(c)]);
      return y;
    }
    Index d;
    std::vector<double> s;
    AlignedBuffer<Acc> scaled;
  };

  /// x (>= 0 or NaN) is 0 or a normal Acc.
  static bool normal_or_zero(double x) {
    return x == 0 || (is_finite(x) && x >= static_cast<double>(std::numeric_limits<Acc>::min()) &&
                      x <= static_cast<double>(std::numeric_limits<Acc>::max()));
  }

  static Index ldm_of(Index d) { return Pairs ? pad_to_16(d) : d; }

  /// dst[0, n) = the sum over slots [first, first + count) of p[slot][offset, offset + n), added
  /// in slot (chunk) order.
  static void reduce(const Partials<Acc>& p, Index first, Index count, Index offset, Index n, Acc* dst) {
    using Vec = Eigen::Array<Acc, Eigen::Dynamic, 1>;
    Eigen::Map<Vec> sum(dst, n);
    sum = Eigen::Map<const Vec>(p[first] + offset, n);
    for (Index c = 1; c < count; ++c) sum += Eigen::Map<const Vec>(p[first + c] + offset, n);
  }

  /// kv = diag(a b) (K^T V) from K^T V in kv and the norms; false where anything overflowed or a
  /// scale is not a normal Acc (then kv is to be rebuilt by scaled_m). An overflowed (infinite)
  /// norm counts too: its scale 1 / inf = 0 would drop the channel, which Qn's form keeps.
  bool direct_m() {
    const Index d = d_, ldm = ldm_;
    Acc* kv = kv_.data();
    for (Index c = 0; c < d; ++c) {  // row c scaled by a_c b_c
      const Acc qn = qnorm_[static_cast<size_t>(c)], kn = knorm_[static_cast<size_t>(c)];
      if (!is_finite(static_cast<double>(qn)) || !is_finite(static_cast<double>(kn))) return false;
      const Acc a = scale_of(qn), b = scale_of(kn);
      const double ab = static_cast<double>(a) * static_cast<double>(b);  // exact
      if (!normal_or_zero(static_cast<double>(a)) || !normal_or_zero(static_cast<double>(b)) || !normal_or_zero(ab))
        return false;
      for (Index j = 0; j < d; ++j)
        if (!is_finite(static_cast<double>(kv[c * ldm + j]))) return false;
      MatrixMap<Acc>(kv + c * ldm, 1, d) *= a * b;
    }
    return true;
  }

  /// Pairs: M (kv) as pair words along D, for Q M.
  void pack_m() {
    if constexpr (Pairs) pack_row_pairs<PairOps>(kv_.data(), d_, d_, ldm_, reserve(mp_, pairs_of(d_) * ldm_), ldm_);
  }

  /// O rows [r0, r0 + nrows) = Q M, or Qn M with qscale_ (scaled), tile by tile.
  void rows_times_m(const T* qp, Index r0, Index nrows, T* op, bool scaled) {
    const Index d = d_, ldm = ldm_;
    for (Index t0 = r0; t0 < r0 + nrows; t0 += kTile) {
      const Index rows = std::min(kTile, r0 + nrows - t0);
      const Acc* qt = load_q_(qp + t0 * d, rows, d).data();
      if (scaled) qt = qscale_.apply(qt, rows);
      Acc* o = out_.begin(op + t0 * d, rows, d, ldm);
      if constexpr (Pairs) {  // o = Q M on pairs along D
        PairWord* qw = reserve(pw_, rows * pairs_of(d));
        pack_rows(qt, rows, d, d, qw, pairs_of(d));
        gemm_pairs<Tile>(rows, ldm, pairs_of(d), PairA{qw, pairs_of(d), 1}, PairRowsB<PairOps>{mp_.data(), ldm},
                         StoreC<Acc>{o, ldm});
      } else {
        gemm<Tile>(rows, d, d, StridedA<Acc>{qt, d, 1}, RowsB<Acc>{kv_.data(), d}, StoreC<Acc>{o, d});  // o = Q M
      }
      out_.commit();
    }
  }

  /// kv = Kn^T V, Kn formed one tile at a time; qscale_ ready for Qn.
  void scaled_m(const T* qp, Index nq, const T* kp, const T* vp, Index nk) {
    const Index d = d_;
    std::fill(kv_.begin(), kv_.end(), Acc(0));
    kscale_.reset(), qscale_.reset();
    for (Index r0 = 0; r0 < nk; r0 += kTile) {
      const Index rows = std::min(kTile, nk - r0);
      kscale_.add_abs(load_k_(kp + r0 * d, rows, d).data(), rows);
    }
    for (Index r0 = 0; r0 < nq; r0 += kTile) {
      const Index rows = std::min(kTile, nq - r0);
      qscale_.add_abs(load_q_(qp + r0 * d, rows, d).data(), rows);
    }
    kscale_.to_scales(eps_), qscale_.to_scales(eps_);
    for (Index r0 = 0; r0 < nk; r0 += kTile) {
      const Index rows = std::min(kTile, nk - r0);
      const Acc* kn = kscale_.apply(load_k_(kp + r0 * d, rows, d).data(), rows);
      add_kv(kn, load_v_(vp + r0 * d, rows, d).data(), rows, kv_.data());
    }
  }

  /// 1 / max(norm, eps) in Acc (norm finite or NaN); an all-zero channel gets 0. NaN for a NaN
  /// norm (std::max keeps its first argument when unordered), never 0; inf for a subnormal norm
  /// with eps = 0.
  Acc scale_of(Acc norm) const { return norm == 0 ? Acc(0) : Acc(1) / std::max(norm, static_cast<Acc>(eps_)); }

  /// Adds sum_rows |x| to norm, summing each chunk of 256 rows apart first so the rounding error
  /// grows with the chunk, not with N.
  void add_abs_colsum(const Acc* x, Index rows, Acc* norm) {
    using Row = Eigen::Array<Acc, 1, Eigen::Dynamic>;
    Eigen::Map<Row> total(norm, d_), partial(reserve(partial_, d_), d_);
    for (Index r0 = 0; r0 < rows; r0 += 256) {
      partial.setZero();
      for (Index r = r0; r < std::min(rows, r0 + 256); ++r) partial += Eigen::Map<const Row>(x + r * d_, d_).abs();
      total += partial;
    }
  }

  /// kv += kn^T vt over `rows` tokens (row stride ldm).
  void add_kv(const Acc* kn, const Acc* vt, Index rows, Acc* kv) {
    const Index d = d_, ldm = ldm_;
    if constexpr (Pairs) {  // pairs along the tokens: Kn and V both as [pairs][ldm], Kn read as Kn^T
      const Index tp = pairs_of(rows);
      PairWord *kw = reserve(pw_, tp * ldm), *vw = reserve(vw_, tp * ldm);
      pack_row_pairs<PairOps>(kn, rows, d, d, kw, ldm);
      pack_row_pairs<PairOps>(vt, rows, d, d, vw, ldm);
      gemm_pairs<Tile>(d, ldm, tp, PairA{kw, 1, ldm}, PairRowsB<PairOps>{vw, ldm}, AddC<Acc>{kv, ldm});
    } else {
      for (Index j = 0; j < rows; j += 64)  // 64 rows at a time, so the V rows it re-reads stay in L1
        gemm<Tile>(d, d, std::min<Index>(64, rows - j), StridedA<Acc>{kn + j * d, 1, d}, RowsB<Acc>{vt + j * d, d},
                   AddC<Acc>{kv, d});
    }
  }

  Index d_, ldm_;
  double eps_;
  AlignedBuffer<Acc> qnorm_, knorm_;  // direct_m's float norms, reduced from the partials
  Scales qscale_, kscale_;            // scaled_m's and qk_first's scales
  AlignedBuffer<Acc> partial_, kv_, scores_;  // kv_: K^T V, then M
  Index m_head_ = -1;                         // the head whose M prepare_m left in kv_
  bool m_direct_ = false;                     // what prepare_m returned for it
  AlignedBuffer<PairWord> pw_, vw_, mp_;  // Pairs: Kn^T or Qn, V, M as pair words
  TileLoader<T> load_q_, load_k_, load_v_;
  OutputTile<T> out_;
};

template <class T>
struct Kernel<SimA<T>> {
  static constexpr bool kBf16Products = true;

  static NoReport forward(const SimA<T>& f, const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v,
                          const View4<T>& out) {
    const Shape4 sq = shape_of(q), sk = shape_of(k);
    const SimAOrder how = f.resolved_order(sq.N, sk.N, sq.D);
    // The short-sequence order has no pair kernel.
    const Products kind = how == SimAOrder::KVFirst ? products_for(f).kind : Products::accum;
    return with_products<T>(kind, [&](auto pairs) { return run<SimAHead<T, decltype(pairs)::value>>(f, how, q, k, v, out); });
  }

  template <class Head>
  static NoReport run(const SimA<T>& f, SimAOrder how, const ConstView4<T>& q, const ConstView4<T>& k,
                      const ConstView4<T>& v, const View4<T>& out) {
    if (how == SimAOrder::KVFirst) return kv_first<Head>(f, q, k, v, out);
    const Shape4 sq = shape_of(q), sk = shape_of(k);
    // The short-sequence order, tiny: one item = the query heads of one kv head, whole.
    for_each_item(f.parallel, WorkGrid{sq.B, sq.H, sq.N, 0, sq.H / sk.H}, [&] {
      return [&, ws = Head(sq.D, f.eps)](const WorkGrid::Item& it) mutable {
        for (Index i = 0; i < it.heads; ++i) {
          const HeadSlices<T> x = head_slices(q, k, v, out, it.b, it.h + i);
          ws.qk_first(x.q, sq.N, x.k, x.v, sk.N, x.out);
        }
      };
    });
    return {};
  }

  /// Qn (Kn^T V) split over tokens (chunks of kTokenChunk, so the same bits for any thread count):
  ///  1. per (b, kv head, key chunk) the chunk's K^T V and K column norms, and per (b, query head,
  ///     query chunk) the chunk's Q column norms, as partials;
  ///  2. per (b, query head, chunk of query rows) M from the partials reduced in chunk order (D^2
  ///     per chunk, once per head and thread), then those rows of O = Q M;
  ///  3. only for heads whose M overflowed (rare): the whole head in double-scaled form, one thread
  ///     per head.
  template <class Head>
  static NoReport kv_first(const SimA<T>& f, const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v,
                           const View4<T>& out) {
    using Acc = accum_t<T>;
    const Shape4 sq = shape_of(q), sk = shape_of(k);
    const Index d = sq.D;
    const WorkGrid keys{sq.B, sk.H, sk.N, kTokenChunk}, queries{sq.B, sq.H, sq.N, kTokenChunk};
    Partials<Acc> key_parts(keys.size(), Head::key_partial_size(d)), query_parts(queries.size(), d);
    for_each_index(f.parallel, keys.size() + queries.size(), [&] {
      return [&, ws = Head(d, f.eps)](Index i) mutable {
        if (i < keys.size()) {
          const WorkGrid::Item it = keys[i];
          ws.key_chunk(head(k, it.b, it.h).data() + it.r0 * d, head(v, it.b, it.h).data() + it.r0 * d, it.rows,
                       key_parts[i]);
        } else {
          const WorkGrid::Item it = queries[i - keys.size()];
          ws.query_chunk(head(q, it.b, it.h).data() + it.r0 * d, it.rows, query_parts[i - keys.size()]);
        }
      };
    });
    // Per item of `queries`: whether its head needs the scaled form (every item of a head decides
    // alike, from the same reduced partials).
    std::vector<unsigned char> scaled(static_cast<size_t>(queries.size()), 0);
    for_each_item(f.parallel, queries, [&] {
      return [&, ws = Head(d, f.eps)](const WorkGrid::Item& it) mutable {
        const Index kv_h = kv_head_of(it.h, sq.H, sk.H);
        const Index k0 = keys.index(WorkGrid::Item{it.b, kv_h, 1, 0, 0, 0}), q0 = it.bh * queries.blocks();
        if (!ws.prepare_m(it.bh, key_parts, k0, keys.blocks(), query_parts, q0, queries.blocks())) {
          scaled[static_cast<size_t>(queries.index(it))] = 1;
          return;
        }
        ws.product_rows(head(q, it.b, it.h).data(), it.r0, it.rows, head(out, it.b, it.h).data());
      };
    });
    std::vector<Index> redo;  // (b * H + h) of each head to redo, in head order
    for (Index bh = 0; bh < sq.B * sq.H; ++bh)
      if (scaled[static_cast<size_t>(bh * queries.blocks())]) redo.push_back(bh);
    for_each_index(f.parallel, static_cast<Index>(redo.size()), [&] {
      return [&, ws = Head(d, f.eps)](Index i) mutable {
        const Index bh = redo[static_cast<size_t>(i)];
        const HeadSlices<T> x = head_slices(q, k, v, out, bh / sq.H, bh % sq.H);
        ws.scaled_head(x.q, sq.N, x.k, x.v, sk.N, x.out);
      };
    });
    return {};
  }
};

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
