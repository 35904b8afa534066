#pragma once
// SoftNystrom: SOFT with the Nystrom low-rank form, linear in N (SPEC.md "SOFT"):
//   P = k(Q, Kt) (N x m), A = k(Qt, Kt) (m x m), R = k(Qt, K) (m x N), O = P pinv(A) (R V),
// with landmarks Qt from Q and Kt from K, evaluated right to left (never an N x N matrix), and
// pinv by newton_pinv (linalg/newton_pinv.hpp). Untied, the key tiles give R^T's rows for R V and,
// after the pseudo-inverse, the query tiles give P's rows for O = P Y (Y = pinv(A) (R V), m x D).
// Tied (k is q, the paper's case), R = P^T: P is weighed once and kept, and A is symmetric, which
// newton_pinv exploits; three N x m x D products instead of four.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../core/attention.hpp"
#include "../core/parallel.hpp"
#include "../core/schedule.hpp"
#include "../linalg/newton_pinv.hpp"
#include "landmarks.hpp"

namespace softfree {

/// What a SoftNystrom call's pseudo-inverses did, over every (b, h) head: its report (run()).
struct NewtonDiagnostics {
  Index heads = 0;           ///< matrices inverted (B * H)
  int steps = 0;             ///< most steps any head ran (a restart's included)
  double residual = 0;       ///< worst ||I - P V||_F over the heads
  double pinv_residual = 0;  ///< worst NewtonResult::pinv_residual (Penrose conditions)
  Index restarted = 0;       ///< heads whose start diverged and was restarted (NewtonResult::restarted)
  bool converged = false;    ///< every head converged (NewtonResult::converged)
};

/// Q and K may differ, also in token count (landmark counts agree); with k == q it is the paper's
/// P A^+ P^T V. Tied calls: passing the same tensor as q and k (same data pointer and shape; for
/// given landmarks, one tensor passed for both) takes a faster path: P is kept (N x m per thread)
/// and reused for R = P^T, and the symmetric A halves a Newton product. An equal copy of q is not
/// recognised and takes the general path, which gives the same result up to rounding.
/// Diagnostics come back per call: `NewtonDiagnostics d = soft.run(q, k, v, out);`.
template <class T = float>
class SoftNystrom : public Attention<SoftNystrom<T>, T> {
 public:
  static constexpr const char* kName = "SoftNystrom";
  static constexpr Capabilities kCapabilities{false, true, "SOFT's landmark pooling has no causal form"};
  using report_type = NewtonDiagnostics;

  Landmarks landmarks = Landmarks::segments(49);
  NewtonOptions newton;
  /// SOFT-Norm: pinv(A) <- D^-1/2 pinv(A) D^-1/2 with D = diag(A 1).
  bool soft_norm = false;
  bool causal = false;  ///< not supported: true is rejected
  Parallel parallel;

  void check_options(const Shape4& s, const Shape4& sk) const {
    detail::check_newton_options(kName, "newton.", newton);
    detail::check_newton_lambda_range<accum_t<T>>(kName, "newton.", newton);
    const Landmarks& l = landmarks;
    switch (l.kind) {
      case Landmarks::Kind::Segments:
        if (l.m < 1 || (!l.up_to && l.m > std::min(s.N, sk.N)))
          detail::fail(kName, "landmarks = segments(m = ", l.m, "): m must be in [1, N], but q has shape ", s,
                       " and k has shape ", sk);
        break;
      case Landmarks::Kind::Grid:
        if (l.r < 1 || l.r > l.rows || l.r > l.cols)
          detail::fail(kName, "landmarks = grid(rows = ", l.rows, ", cols = ", l.cols, ", r = ", l.r,
                       "): r must be in [1, min(rows, cols)]");
        for (const Shape4& x : {s, sk})
          if (l.rows > x.N / l.cols || l.rows * l.cols != x.N)  // (cols >= r >= 1) the product cannot overflow
            detail::fail(kName, "landmarks = grid(rows = ", l.rows, ", cols = ", l.cols, ", r = ", l.r,
                         "): rows * cols = ", static_cast<double>(l.rows) * static_cast<double>(l.cols),
                         " but q has shape ", s, " and k has shape ", sk, " (N tokens)");
        break;
      case Landmarks::Kind::Given: {
        if (!l.q_given || !l.k_given) detail::fail(kName, "landmarks = given(...): a landmark tensor is missing");
        const Shape4 gq = l.q_given->shape, gk = l.k_given->shape;
        if (gq.B != s.B || gq.H != s.H || gq.D != s.D || gq.N < 1)
          detail::fail(kName, "landmarks = given: q_landmarks has shape ", gq, " but q has shape ", s,
                       ": must be [B, H, m, D] with m >= 1");
        if (gk != Shape4{gq.B, sk.H, gq.N, gq.D})
          detail::fail(kName, "landmarks = given: k_landmarks has shape ", gk, " but q_landmarks has shape ", gq,
                       " and k has shape ", sk, ": must be [B, H_kv, m, D] (H_kv: k's heads)");
        break;
      }
    }
  }

  /// The number of landmarks m (options assumed checked).
  Index landmark_count() const {
    switch (landmarks.kind) {
      case Landmarks::Kind::Segments:
        return landmarks.m;
      case Landmarks::Kind::Grid:
        return (landmarks.rows / landmarks.r) * (landmarks.cols / landmarks.r);
      case Landmarks::Kind::Given:
        return landmarks.q_given->shape.N;
    }
    return 0;
  }
};

namespace detail {
inline namespace SOFTFREE_ISA {

/// One thread's per-head SoftNystrom workspace: landmarks, R V, A, its pseudo-inverse and Y.
/// Pairs: the three N x m x D products on bf16 pairs (the landmark weights, R V and O = P Y), the
/// pseudo-inverse in float as always; R V and the output tiles have rows of whole packets.
template <class T, bool Pairs = false>
class NystromHead {
 public:
  using Acc = accum_t<T>;
  using Weights = LandmarkKernel<Acc, Pairs>;
  // Tiles of tokens weighed against the landmarks: for pairs, as bf16 values (their norms are
  // the product operands').
  using KeyLoader = std::conditional_t<Pairs, Bf16Loader<T>, TileLoader<T>>;
  static constexpr Index kTile = Weights::kTile;
  /// Row stride of R V, Y and the output tiles: D, or for pairs D in whole packets.
  static Index ld_out(Index d) { return Pairs ? pad_to_16(d) : d; }

  NystromHead(Index m, Index d)
      : m_(m), d_(d), ldo_(ld_out(d)), kernel(m, d),
        q_values(static_cast<size_t>(Weights::set_size(m, d))), q_words(static_cast<size_t>(Weights::word_size(m, d))),
        ql(static_cast<size_t>(m * d)), kl(ql.size()), rv(static_cast<size_t>(m * ldo_)),
        a_(static_cast<size_t>(m * Weights::ld_for(m))), dq_(static_cast<size_t>(m)) {}

  LandmarkSet<Acc> q_set() { return {q_values.data(), q_words.data()}; }

  /// R V += R^T's rows (weights of nj tokens against the landmarks, rows of kernel.ld()) times
  /// those tokens' values v (storage type).
  void add_rv(const Acc* w, Index nj, const T* v) {
    const Index ld = kernel.ld();
    if constexpr (Pairs) {  // pairs along the tokens: W and V both as [pairs][columns], W read as W^T
      const Index tp = pairs_of(nj);
      PairWord *ww = reserve(ww_, tp * ld), *vw = reserve(vw_, tp * ldo_);
      pack_row_pairs<PairOps>(w, nj, m_, ld, ww, ld);
      if constexpr (std::is_same<T, Eigen::bfloat16>::value)  // bf16 values already: paired as stored
        pack_row_pairs<PairOps>(v, nj, d_, d_, vw, ldo_);
      else
        pack_row_pairs<PairOps>(load_v(v, nj, d_).data(), nj, d_, d_, vw, ldo_);
      gemm_pairs<GeneralTiling>(m_, ldo_, tp, PairA{ww, 1, ld}, PairRowsB<PairOps>{vw, ldo_},
                                AddC<Acc>{rv.data(), ldo_});
    } else {
      const Acc* vt = load_v(v, nj, d_).data();
      gemm<GeneralTiling>(m_, d_, nj, StridedA<Acc>{w, 1, ld}, RowsB<Acc>{vt, d_}, AddC<Acc>{rv.data(), d_});
    }
  }

  /// A = k(Qt, Kt) from Kt's prepared set, its pseudo-inverse, SOFT-Norm, then y = pinv(A) (R V)
  /// (m rows of ld_out(d)); ql and rv hold Qt and R V. tied: Kt is Qt, so A is symmetric (made
  /// exactly so).
  NewtonStats solve(const SoftNystrom<T>& f, const LandmarkSet<Acc>& k_set, bool tied, Acc* y) {
    const Index m = m_, ld = kernel.ld();
    for (Index i0 = 0; i0 < m; i0 += kTile)  // the weights take tiles of at most kTile rows
      kernel.weigh(k_set, ql.data() + i0 * d_, std::min(kTile, m - i0), a_.data() + i0 * ld);
    Eigen::Map<RowMatrix<Acc>, 0, Eigen::OuterStride<>> a(a_.data(), m, m, Eigen::OuterStride<>(ld));
    if (tied)
      for (Index i = 0; i < m; ++i)
        for (Index j = 0; j < i; ++j) a(i, j) = a(j, i);
    newton.refine = !Pairs;
    const NewtonStats st = newton.run(a, f.newton);
    double* v = newton.v_double();  // V and Y in double: Y = V (R V) cancels (V's entries ~ 1 / lambda)
    const Index ldv = newton.stride_double();
    if (f.soft_norm) {  // D^-1/2 pinv D^-1/2, D = diag(A 1): scale rows and columns
      for (Index i = 0; i < m; ++i) {
        Acc row_sum = 0;
        for (Index j = 0; j < m; ++j) row_sum += a(i, j);
        dq_[static_cast<size_t>(i)] = Acc(1) / std::sqrt(row_sum);
      }
      for (Index i = 0; i < m; ++i)
        for (Index j = 0; j < m; ++j)
          v[i * ldv + j] *= static_cast<double>(dq_[static_cast<size_t>(i)] * dq_[static_cast<size_t>(j)]);
    }
    if constexpr (std::is_same<Acc, double>::value) {
      gemm<GeneralTiling>(m, ldo_, m, StridedA<Acc>{v, ldv, 1}, RowsB<Acc>{rv.data(), ldo_}, StoreC<Acc>{y, ldo_});
    } else {  // R V to double, Y in double, rounded once (m^2 D work in double)
      double *rvd = reserve(rvd_, m * ldo_), *yd = reserve(yd_, m * ldo_);
      for (Index i = 0; i < m * ldo_; ++i) rvd[i] = static_cast<double>(rv[static_cast<size_t>(i)]);
      gemm<GeneralTiling>(m, ldo_, m, StridedA<double>{v, ldv, 1}, RowsB<double>{rvd, ldo_}, StoreC<double>{yd, ldo_});
      for (Index i = 0; i < m * ldo_; ++i) y[i] = static_cast<Acc>(yd[i]);
    }
    return st;
  }

  /// The Y out() multiplies by: m rows of ld_out(d) from a solve() (for pairs, packed here; else
  /// read from y, which must outlive the calls).
  void set_y(const Acc* y) {
    if constexpr (Pairs)
      pack_row_pairs<PairOps>(y, m_, ldo_, ldo_, reserve(yw_, pairs_of(m_) * ldo_), ldo_);
    else
      y_ = y;
  }

  /// out (rows x d, storage type) = p (rows x m, leading dimension ld) Y, through tile.
  void out(const Acc* p, Index ld, Index rows, T* out, OutputTile<T>& tile) {
    if constexpr (Pairs) {
      PairWord* pw = reserve(pw_, rows * pairs_of(m_));
      pack_rows(p, rows, m_, ld, pw, pairs_of(m_));
      out_pairs(pw, rows, out, tile);
    } else {
      Acc* o = tile.begin(out, rows, d_, ldo_);
      gemm<GeneralTiling>(rows, d_, m_, StridedA<Acc>{p, ld, 1}, RowsB<Acc>{y_, d_}, StoreC<Acc>{o, d_});
      tile.commit();
    }
  }

  // The tied case keeps P for its last product: for pairs as the pair words that product reads
  // (N x pairs_of(m) words, 0.4 MiB at N = 4096, m = 49), packed while the tile is in L1; else as
  // float rows of kernel.ld().

  /// Room for P of n tokens.
  void keep_p(Index n) {
    if constexpr (Pairs)
      reserve(pk_words_, n * pairs_of(m_));
    else
      reserve(pk_, n * kernel.ld());
  }
  /// The weights of tokens [j0, j0 + nj) (x: their values), kept as P's rows; returns the tile.
  const Acc* weigh_kept(const Acc* x, Index j0, Index nj) {
    if constexpr (Pairs) {
      const Acc* w = kernel.weigh(q_set(), x, nj);
      pack_rows(w, nj, m_, kernel.ld(), pk_words_.data() + j0 * pairs_of(m_), pairs_of(m_));
      return w;
    } else {
      return kernel.weigh(q_set(), x, nj, pk_.data() + j0 * kernel.ld());
    }
  }
  /// out = the kept P's rows [i0, i0 + rows) times Y, through tile.
  void out_kept(Index i0, Index rows, T* out, OutputTile<T>& tile) {
    if constexpr (Pairs)
      out_pairs(pk_words_.data() + i0 * pairs_of(m_), rows, out, tile);
    else
      this->out(pk_.data() + i0 * kernel.ld(), kernel.ld(), rows, out, tile);
  }

  Index m_, d_, ldo_;
  Weights kernel;
  AlignedBuffer<Acc> q_values;
  AlignedBuffer<PairWord> q_words;
  AlignedBuffer<Acc> ql, kl, rv;
  TileLoader<T> load, load_v;
  KeyLoader load_k;

 private:
  AlignedBuffer<Acc> a_, dq_;
  AlignedBuffer<double> rvd_, yd_;  // float: R V and Y in double
  const Acc* y_ = nullptr;  // float products: Y (set_y)
  AlignedBuffer<Acc> pk_;                                // kept P (float products)
  AlignedBuffer<PairWord> ww_, vw_, yw_, pw_, pk_words_;  // Pairs: W, V, Y, P's tile, kept P
  NewtonWorkspace<Acc> newton;

  /// out = P's rows as pair words (rows x pairs_of(m)) times Y.
  void out_pairs(const PairWord* pw, Index rows, T* out, OutputTile<T>& tile) {
    Acc* o = tile.begin(out, rows, d_, ldo_);
    const Index mp = pairs_of(m_);
    gemm_pairs<GeneralTiling>(rows, ldo_, mp, PairA{pw, mp, 1}, PairRowsB<PairOps>{yw_.data(), ldo_},
                              StoreC<Acc>{o, ldo_});
    tile.commit();
  }
};

// The tied case, one item per (b, h): each tile of tokens gives rows of P (kept, N x m), R V
// accumulates P^T V tile by tile, and after the pseudo-inverse O = P Y tile by tile: three
// N x m x D products, against four untied. P is kept per thread (float: 1 MiB at N = 4096).
template <class Head, class T>
void nystrom_tied(const SoftNystrom<T>& f, const ConstView4<T>& q, const ConstView4<T>& v, const View4<T>& out,
                  std::vector<NewtonStats>& stats) {
  using Acc = accum_t<T>;
  const Shape4 sq = shape_of(q);
  const Index n = sq.N, d = sq.D, m = f.landmark_count(), tile = Head::kTile;
  for_each_item(f.parallel, WorkGrid{sq.B, sq.H, n}, [&] {
    return [&, ws = Head(m, d), y = AlignedBuffer<Acc>(static_cast<size_t>(m * Head::ld_out(d))),
            o = OutputTile<T>()](const WorkGrid::Item& it) mutable {
      ws.keep_p(n);
      const T *qh = head(q, it.b, it.h).data(), *vh = head(v, it.b, it.h).data();
      pool_landmarks(f.landmarks, qh, n, d, it.bh, /*for_q=*/true, ws.load, ws.ql.data());
      ws.kernel.prepare(ws.ql.data(), ws.q_set());
      std::fill(ws.rv.begin(), ws.rv.end(), Acc(0));
      // Last tile first: the pooling pass just read Q front to back, so its end is still in cache.
      for (Index j0 = (n - 1) / tile * tile; j0 >= 0; j0 -= tile) {
        const Index nj = std::min(tile, n - j0);
        ws.add_rv(ws.weigh_kept(ws.load_k(qh + j0 * d, nj, d).data(), j0, nj), nj, vh + j0 * d);
      }
      stats[static_cast<size_t>(it.bh)] = ws.solve(f, ws.q_set(), /*tied=*/true, y.data());
      ws.set_y(y.data());
      T* oh = head(out, it.b, it.h).data();
      for (Index i0 = 0; i0 < n; i0 += tile) ws.out_kept(i0, std::min(tile, n - i0), oh + i0 * d, o);
    };
  });
}

// The untied case's buffers shared by its two passes: per kv head Kt's prepared set, per query
// head Y.
template <class Head>
struct NystromShared {
  using Acc = typename Head::Acc;
  Index set_size, word_size, y_size;
  AlignedBuffer<Acc> values, ys;
  AlignedBuffer<PairWord> words;
  NystromShared(Index kv_heads, Index heads, Index m, Index d)
      : set_size(Head::Weights::set_size(m, d)), word_size(Head::Weights::word_size(m, d)),
        y_size(m * Head::ld_out(d)), values(static_cast<size_t>(kv_heads * set_size)),
        ys(static_cast<size_t>(heads * y_size)), words(static_cast<size_t>(kv_heads * word_size)) {}
  /// Kt's set of kv head b * H_kv + h.
  LandmarkSet<Acc> set(Index bkv) { return {values.data() + bkv * set_size, words.data() + bkv * word_size}; }
  /// Y of query head b * H + h.
  Acc* y(Index bh) { return ys.data() + bh * y_size; }
};

// Untied pass 1, one item per (b, kv head) and its query heads: Kt once, then per query head its
// landmarks, R V one key tile at a time (the weight tile, keys x landmarks, is R^T's rows),
// A = k(Qt, Kt), its pseudo-inverse, Y; leaves Kt's prepared set and each Y for pass 2.
template <class Head, class T>
void nystrom_keys(const SoftNystrom<T>& f, const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v,
                  NystromShared<Head>& shared, std::vector<NewtonStats>& stats) {
  using Acc = accum_t<T>;
  const Shape4 sq = shape_of(q);
  const Index nk = shape_of(k).N, d = sq.D, m = f.landmark_count(), tile = Head::kTile;
  const Index per_kv = sq.H / shape_of(k).H;
  // Segment landmarks of K are summed from the key tiles R V loads anyway: K is read once.
  const bool k_segments = f.landmarks.kind == Landmarks::Kind::Segments;
  for_each_item(f.parallel, WorkGrid{sq.B, shape_of(k).H, sq.N}, [&] {
    return [&, ws = Head(m, d)](const WorkGrid::Item& it) mutable {
      const T *kh = head(k, it.b, it.h).data(), *vh = head(v, it.b, it.h).data();
      const LandmarkSet<Acc> k_set = shared.set(it.bh);
      for (Index i = 0; i < per_kv; ++i) {
        const Index h = it.h * per_kv + i, bh = it.b * sq.H + h;
        const bool first = i == 0, sum_k = first && k_segments;  // Kt: from the first query head's pass
        pool_landmarks(f.landmarks, head(q, it.b, h).data(), sq.N, d, bh, /*for_q=*/true, ws.load, ws.ql.data());
        if (sum_k)
          std::fill(ws.kl.begin(), ws.kl.end(), Acc(0));
        else if (first)
          pool_landmarks(f.landmarks, kh, nk, d, it.bh, /*for_q=*/false, ws.load, ws.kl.data());
        ws.kernel.prepare(ws.ql.data(), ws.q_set());
        std::fill(ws.rv.begin(), ws.rv.end(), Acc(0));
        Index seg = 0;  // first segment not yet complete
        for (Index j0 = 0; j0 < nk; j0 += tile) {
          const Index nj = std::min(tile, nk - j0);
          const Acc* kt = ws.load_k(kh + j0 * d, nj, d).data();
          for (Index s = seg; sum_k && s < m && s * nk / m < j0 + nj; ++s) {
            const Index lo = std::max(s * nk / m, j0), hi = std::min(((s + 1) * nk + m - 1) / m, j0 + nj);
            add_row_sums(kt + (lo - j0) * d, hi - lo, d, ws.kl.data() + s * d);
            if (hi < j0 + nj) seg = s + 1;
          }
          ws.add_rv(ws.kernel.weigh(ws.q_set(), kt, nj), nj, vh + j0 * d);
        }
        for (Index s = 0; sum_k && s < m; ++s) {
          const Acc count = static_cast<Acc>(((s + 1) * nk + m - 1) / m - s * nk / m);
          for (Index c = 0; c < d; ++c) ws.kl[static_cast<size_t>(s * d + c)] /= count;
        }
        if (first) ws.kernel.prepare(ws.kl.data(), k_set);
        stats[static_cast<size_t>(bh)] = ws.solve(f, k_set, /*tied=*/false, shared.y(bh));
      }
    };
  });
}

// Untied pass 2, one item per kRowsPerItem query rows of one (b, h): per tile of query rows the
// weight tile is P's rows (tile x m) and O = P Y is one product with packets along D.
template <class Head, class T>
void nystrom_queries(const SoftNystrom<T>& f, const ConstView4<T>& q, const ConstView4<T>& k,
                     NystromShared<Head>& shared, const View4<T>& out) {
  const Shape4 sq = shape_of(q);
  const Index d = sq.D, m = f.landmark_count(), tile = Head::kTile, kv_heads = shape_of(k).H;
  for_each_item(f.parallel, WorkGrid{sq.B, sq.H, sq.N, 2 * tile}, [&] {
    return [&, ws = Head(m, d), o = OutputTile<T>(), bound = Index(-1)](const WorkGrid::Item& it) mutable {
      if (it.bh != bound) ws.set_y(shared.y(it.bh)), bound = it.bh;
      const LandmarkSet<accum_t<T>> k_set = shared.set(it.b * kv_heads + kv_head_of(it.h, sq.H, kv_heads));
      const T* qh = head(q, it.b, it.h).data();
      T* oh = head(out, it.b, it.h).data();
      for (Index i0 = it.r0; i0 < it.r0 + it.rows; i0 += tile) {
        const Index rows = std::min(tile, it.r0 + it.rows - i0);
        const auto* p = ws.kernel.weigh(k_set, ws.load_k(qh + i0 * d, rows, d).data(), rows);
        ws.out(p, ws.kernel.ld(), rows, oh + i0 * d, o);
      }
    };
  });
}

template <class T>
struct Kernel<SoftNystrom<T>> {
  static constexpr bool kBf16Products = true;

  static NewtonDiagnostics forward(const SoftNystrom<T>& f, const ConstView4<T>& q, const ConstView4<T>& k,
                                   const ConstView4<T>& v, const View4<T>& out) {
    const Shape4 sq = shape_of(q);
    const Index fit = std::min(sq.N, shape_of(k).N);
    if (f.landmarks.kind == Landmarks::Kind::Segments && f.landmarks.up_to && f.landmarks.m > fit) {
      SoftNystrom<T> g = f;  // options only: the call as segments(N)
      g.landmarks = Landmarks::segments(fit);
      return forward(g, q, k, v, out);
    }
    std::vector<NewtonStats> stats(static_cast<size_t>(sq.B * sq.H));
    // Tied (k is q, and the landmarks agree): R = P^T, so P is computed once and kept.
    const Landmarks& l = f.landmarks;
    const bool tied = q.data() == k.data() && sq == shape_of(k) &&
                      (l.kind != Landmarks::Kind::Given || l.q_given == l.k_given);
    with_products<T>(products_for(f).kind, [&](auto pairs) {
      using Head = NystromHead<T, decltype(pairs)::value>;
      if (tied) {
        nystrom_tied<Head>(f, q, v, out, stats);
      } else {
        NystromShared<Head> shared(sq.B * shape_of(k).H, sq.B * sq.H, f.landmark_count(), sq.D);
        nystrom_keys<Head>(f, q, k, v, shared, stats);
        nystrom_queries<Head>(f, q, k, shared, out);
      }
    });
    return diagnostics(f, stats);
  }

  static NewtonDiagnostics diagnostics(const SoftNystrom<T>& f, const std::vector<NewtonStats>& stats) {
    NewtonDiagnostics dg;
    dg.heads = static_cast<Index>(stats.size());
    dg.converged = true;
    for (const NewtonStats& st : stats) {
      dg.steps = std::max(dg.steps, st.steps);
      if (!(st.residual <= dg.residual)) dg.residual = st.residual;  // keeps a NaN visible
      if (!(st.pinv_residual <= dg.pinv_residual)) dg.pinv_residual = st.pinv_residual;
      dg.restarted += st.restarted ? 1 : 0;
      dg.converged = dg.converged && newton_converged(f.newton, st);
    }
    return dg;
  }
};

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
