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

/// One thread's SoftNystrom workspace: the weight kernel, token loaders, R V, A, its
/// pseudo-inverse. Landmarks, their prepared sets, Y and (split tied calls) the kept P live in
/// NystromShared, which every phase of a call reads.
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
  /// What a kept row of P holds: for pairs the pair words the output product reads (packed while
  /// the weight tile is in L1), else the weights as floats (rows of Weights::ld_for(m)).
  using KeptWord = std::conditional_t<Pairs, PairWord, Acc>;
  static constexpr Index kTile = Weights::kTile;
  /// Row stride of R V, Y and the output tiles: D, or for pairs D in whole packets.
  static Index ld_out(Index d) { return Pairs ? pad_to_16(d) : d; }
  /// Values of R V (or Y): m rows of ld_out(d).
  static Index rv_size(Index m, Index d) { return m * ld_out(d); }
  /// Words of one kept row of P.
  static Index kept_stride(Index m) { return Pairs ? pairs_of(m) : Weights::ld_for(m); }

  NystromHead(Index m, Index d)
      : m_(m), d_(d), ldo_(ld_out(d)), kernel(m, d), rv(static_cast<size_t>(rv_size(m, d))),
        a_(static_cast<size_t>(m * Weights::ld_for(m))), dq_(static_cast<size_t>(m)) {}

  /// The values of the next add_rv calls: nj tokens of v (storage type).
  void set_values(const T* v, Index nj) {
    if constexpr (Pairs) {  // pairs along the tokens: V as [pairs][columns]
      PairWord* vw = reserve(vw_, pairs_of(nj) * ldo_);
      if constexpr (std::is_same<T, Eigen::bfloat16>::value)  // bf16 values already: paired as stored
        pack_row_pairs<PairOps>(v, nj, d_, d_, vw, ldo_);
      else
        pack_row_pairs<PairOps>(load_v(v, nj, d_).data(), nj, d_, d_, vw, ldo_);
    } else {
      vt_ = load_v(v, nj, d_).data();
    }
  }

  /// rv (R V, m rows of ld_out(d)) += R^T's rows w (weights of the nj tokens of set_values
  /// against the landmarks, rows of kernel.ld()) times those tokens' values.
  void add_rv(const Acc* w, Index nj, Acc* rv_out) {
    const Index ld = kernel.ld();
    if constexpr (Pairs) {  // W as [pairs][columns] too, read as W^T
      const Index tp = pairs_of(nj);
      PairWord* ww = reserve(ww_, tp * ld);
      pack_row_pairs<PairOps>(w, nj, m_, ld, ww, ld);
      gemm_pairs<GeneralTiling>(m_, ldo_, tp, PairA{ww, 1, ld}, PairRowsB<PairOps>{vw_.data(), ldo_},
                                AddC<Acc>{rv_out, ldo_});
    } else {
      gemm<GeneralTiling>(m_, d_, nj, StridedA<Acc>{w, 1, ld}, RowsB<Acc>{vt_, d_}, AddC<Acc>{rv_out, d_});
    }
  }

  /// A = k(Qt, Kt) from Qt (ql, m x d, as prepared) and Kt's prepared set, its pseudo-inverse,
  /// SOFT-Norm, then y = pinv(A) (R V) (m rows of ld_out(d)) with R V from rv_in. tied: Kt is Qt,
  /// so A is symmetric (made exactly so).
  NewtonStats solve(const SoftNystrom<T>& f, const Acc* ql, const Acc* rv_in, const LandmarkSet<Acc>& k_set,
                    bool tied, Acc* y) {
    const Index m = m_, ld = kernel.ld();
    for (Index i0 = 0; i0 < m; i0 += kTile)  // the weights take tiles of at most kTile rows
      kernel.weigh(k_set, ql + i0 * d_, std::min(kTile, m - i0), a_.data() + i0 * ld);
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
      gemm<GeneralTiling>(m, ldo_, m, StridedA<Acc>{v, ldv, 1}, RowsB<Acc>{rv_in, ldo_}, StoreC<Acc>{y, ldo_});
    } else {  // R V to double, Y in double, rounded once (m^2 D work in double)
      double *rvd = reserve(rvd_, m * ldo_), *yd = reserve(yd_, m * ldo_);
      for (Index i = 0; i < m * ldo_; ++i) rvd[i] = static_cast<double>(rv_in[i]);
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

  /// The weights of nj tokens x (their values) against a prepared set, kept as rows of P at kept
  /// (nj rows of kept_stride(m) words); returns the weight tile.
  const Acc* weigh_kept(const LandmarkSet<Acc>& set, const Acc* x, Index nj, KeptWord* kept) {
    if constexpr (Pairs) {
      const Acc* w = kernel.weigh(set, x, nj);
      pack_rows(w, nj, m_, kernel.ld(), kept, pairs_of(m_));
      return w;
    } else {
      return kernel.weigh(set, x, nj, kept);
    }
  }
  /// out = rows kept rows of P (from weigh_kept) times Y, through tile.
  void out_kept(const KeptWord* kept, Index rows, T* out, OutputTile<T>& tile) {
    if constexpr (Pairs)
      out_pairs(kept, rows, out, tile);
    else
      this->out(kept, kernel.ld(), rows, out, tile);
  }

  Index m_, d_, ldo_;
  Weights kernel;
  AlignedBuffer<Acc> rv;  // R V of the head being solved (a reduction's result, or the fused paths')
  AlignedBuffer<KeptWord> kept;  // fused tied path: P of the head, N rows
  TileLoader<T> load, load_v;
  KeyLoader load_k;

 private:
  AlignedBuffer<Acc> a_, dq_;
  AlignedBuffer<double> rvd_, yd_;  // float: R V and Y in double
  const Acc* vt_ = nullptr;          // float products: the values of add_rv (set_values)
  const Acc* y_ = nullptr;           // float products: Y (set_y)
  AlignedBuffer<PairWord> ww_, vw_, yw_, pw_;  // Pairs: W, V, Y, P's tile
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

// What the phases of a call share, per query head: Qt (as prepared: for pairs rounded to bf16),
// its prepared set and Y; per kv head (untied): Kt and its prepared set. Tied, Kt is Qt.
template <class Head>
struct NystromShared {
  using Acc = typename Head::Acc;
  Index lm_size, set_size, word_size, y_size;
  AlignedBuffer<Acc> q_landmarks, k_landmarks, q_values, k_values, ys;
  AlignedBuffer<PairWord> q_words, k_words;
  /// heads: B * H; kv_heads: B * H_kv, 0 when tied.
  NystromShared(Index heads, Index kv_heads, Index m, Index d)
      : lm_size(m * d), set_size(Head::Weights::set_size(m, d)), word_size(Head::Weights::word_size(m, d)),
        y_size(Head::rv_size(m, d)), q_landmarks(static_cast<size_t>(heads * lm_size)),
        k_landmarks(static_cast<size_t>(kv_heads * lm_size)), q_values(static_cast<size_t>(heads * set_size)),
        k_values(static_cast<size_t>(kv_heads * set_size)), ys(static_cast<size_t>(heads * y_size)),
        q_words(static_cast<size_t>(heads * word_size)), k_words(static_cast<size_t>(kv_heads * word_size)) {}
  /// Qt of query head b * H + h, and its set.
  Acc* ql(Index bh) { return q_landmarks.data() + bh * lm_size; }
  LandmarkSet<Acc> q_set(Index bh) { return {q_values.data() + bh * set_size, q_words.data() + bh * word_size}; }
  /// Kt of kv head b * H_kv + h, and its set.
  Acc* kl(Index bkv) { return k_landmarks.data() + bkv * lm_size; }
  LandmarkSet<Acc> k_set(Index bkv) { return {k_values.data() + bkv * set_size, k_words.data() + bkv * word_size}; }
  /// Y of query head b * H + h.
  Acc* y(Index bh) { return ys.data() + bh * y_size; }
};

// How a call runs. R V sums over the keys; the rest of a head's work before the output is small
// (landmarks O(N D), the pseudo-inverse O(m^3)), and its output rows are independent. The sums
// always run per chunk of kTokenChunk keys (core/schedule.hpp), each chunk's into its own partial,
// then added in chunk order: the chunks are fixed by the shape, so every schedule below computes
// the same values, and the result is bitwise the same for any thread count.
// - Fused: one item per head (untied: per kv head, for its query heads) runs everything but the
//   untied output rows: no phase to wait for, P kept per thread. Chosen when the heads alone keep
//   every thread busy (nystrom_fused), and always with one chunk.
// - Split, the phases: landmarks per head; R V per chunk of keys, into partials; per head their
//   sum, A, its pseudo-inverse and Y; the output per block of rows. Tied, P is then kept per head,
//   written by the chunks, read by the output blocks (recomputing it there instead costs a fourth
//   product with its exponentials, 3x the output from the kept P, measured at N = 16384).

/// Whether a call takes the fused schedule: one chunk of keys, or whole-head items (`items` of
/// them) that keep the threads busy (fill_rounds). Decides the schedule only, never a value.
inline bool nystrom_fused(Index items, Index chunks, int threads) {
  return chunks <= 1 || fills_rounds(items, threads);
}

/// Pools and prepares Qt of query head (b, h) and, with with_k (the untied case, the first query
/// head of its group), Kt of kv head (b, kvh).
template <class Head, class T>
void nystrom_landmarks(const SoftNystrom<T>& f, const ConstView4<T>& q, const ConstView4<T>& k, bool with_k,
                       NystromShared<Head>& sh, Head& ws, Index b, Index h, Index kvh) {
  const Shape4 sq = shape_of(q), sk = shape_of(k);
  const Index bh = b * sq.H + h, bkv = b * sk.H + kvh;
  pool_landmarks(f.landmarks, head(q, b, h).data(), sq.N, sq.D, bh, /*for_q=*/true, ws.load, sh.ql(bh));
  ws.kernel.prepare(sh.ql(bh), sh.q_set(bh));
  if (with_k) {
    pool_landmarks(f.landmarks, head(k, b, kvh).data(), sk.N, sk.D, bkv, /*for_q=*/false, ws.load, sh.kl(bkv));
    ws.kernel.prepare(sh.kl(bkv), sh.k_set(bkv));
  }
}

/// Untied, chunk c of kv head (b, kvh): R V over its keys for the group's query heads (the first
/// bh0), query head i's into rv + i * rv_size (zeros before). Each key tile is loaded once for all.
template <class Head, class T>
void nystrom_rv_keys(NystromShared<Head>& sh, Head& ws, const T* kh, const T* vh, Index nk, Index d, Index c,
                     Index bh0, Index heads, typename Head::Acc* rv) {
  const Index tile = Head::kTile, size = sh.y_size, j1 = std::min(nk, (c + 1) * kTokenChunk);
  for (Index t0 = c * kTokenChunk; t0 < j1; t0 += tile) {
    const Index nj = std::min(tile, j1 - t0);
    const auto* kt = ws.load_k(kh + t0 * d, nj, d).data();
    ws.set_values(vh + t0 * d, nj);
    for (Index i = 0; i < heads; ++i) ws.add_rv(ws.kernel.weigh(sh.q_set(bh0 + i), kt, nj), nj, rv + i * size);
  }
}

/// Tied, chunk c of head bh: R V over its tokens into rv (zeros before), P's rows of them kept at
/// kept (P's row 0: its chunk's rows at kept + c kTokenChunk kept_stride). Last tile first: fused,
/// the pooling just read the head front to back, so its end is still in cache.
template <class Head, class T>
void nystrom_rv_tied(NystromShared<Head>& sh, Head& ws, const T* qh, const T* vh, Index n, Index d, Index c, Index bh,
                     typename Head::KeptWord* kept, typename Head::Acc* rv) {
  const Index tile = Head::kTile, stride = Head::kept_stride(ws.m_), j0 = c * kTokenChunk;
  const Index j1 = std::min(n, j0 + kTokenChunk);
  for (Index t = j0 + (j1 - j0 - 1) / tile * tile; t >= j0; t -= tile) {
    const Index nj = std::min(tile, j1 - t);
    const auto* w = ws.weigh_kept(sh.q_set(bh), ws.load_k(qh + t * d, nj, d).data(), nj, kept + t * stride);
    ws.set_values(vh + t * d, nj);
    ws.add_rv(w, nj, rv);
  }
}

/// dst = the sum, in chunk order, of `chunks` partials of size values, the first at p, the next
/// `step` values on: one head's R V from its chunks.
template <class Acc>
void reduce_chunks(const Acc* p, Index step, Index chunks, Index size, Acc* dst) {
  std::copy(p, p + size, dst);
  for (Index c = 1; c < chunks; ++c)
    for (Index i = 0; i < size; ++i) dst[i] += p[c * step + i];
}

// Untied pass 2, one item per 2 kTile query rows of one (b, h): per tile of query rows the weight
// tile is P's rows (tile x m) and O = P Y is one product with packets along D.
template <class Head, class T>
void nystrom_queries(const SoftNystrom<T>& f, const ConstView4<T>& q, const ConstView4<T>& k,
                     NystromShared<Head>& sh, const View4<T>& out) {
  const Shape4 sq = shape_of(q);
  const Index d = sq.D, m = f.landmark_count(), tile = Head::kTile, kv_heads = shape_of(k).H;
  for_each_item(f.parallel, WorkGrid{sq.B, sq.H, sq.N, 2 * tile}, [&] {
    return [&, ws = Head(m, d), o = OutputTile<T>(), bound = Index(-1)](const WorkGrid::Item& it) mutable {
      if (it.bh != bound) ws.set_y(sh.y(it.bh)), bound = it.bh;
      const LandmarkSet<accum_t<T>> k_set = sh.k_set(it.b * kv_heads + kv_head_of(it.h, sq.H, kv_heads));
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

// The tied case fused: one item per head, P kept per thread (N rows).
template <class Head, class T>
void nystrom_tied_fused(const SoftNystrom<T>& f, const ConstView4<T>& q, const ConstView4<T>& v, const View4<T>& out,
                        NystromShared<Head>& sh, std::vector<NewtonStats>& stats) {
  using Acc = accum_t<T>;
  using KeptWord = typename Head::KeptWord;
  const Shape4 sq = shape_of(q);
  const Index n = sq.N, d = sq.D, m = f.landmark_count(), tile = Head::kTile, stride = Head::kept_stride(m);
  const Index chunks = token_chunks(n), size = Head::rv_size(m, d);
  for_each_item(f.parallel, WorkGrid{sq.B, sq.H, 1}, [&] {
    return [&, ws = Head(m, d), o = OutputTile<T>(), parts = AlignedBuffer<Acc>()](const WorkGrid::Item& it) mutable {
      const T *qh = head(q, it.b, it.h).data(), *vh = head(v, it.b, it.h).data();
      nystrom_landmarks<Head>(f, q, q, false, sh, ws, it.b, it.h, 0);
      KeptWord* kept = reserve(ws.kept, n * stride);
      Acc* p = reserve(parts, chunks * size);
      std::fill(p, p + chunks * size, Acc(0));
      for (Index c = chunks - 1; c >= 0; --c) nystrom_rv_tied(sh, ws, qh, vh, n, d, c, it.bh, kept, p + c * size);
      reduce_chunks(p, size, chunks, size, ws.rv.data());
      stats[static_cast<size_t>(it.bh)] = ws.solve(f, sh.ql(it.bh), ws.rv.data(), sh.q_set(it.bh), true, sh.y(it.bh));
      ws.set_y(sh.y(it.bh));
      T* oh = head(out, it.b, it.h).data();
      for (Index i0 = 0; i0 < n; i0 += tile) ws.out_kept(kept + i0 * stride, std::min(tile, n - i0), oh + i0 * d, o);
    };
  });
}

// The tied case (k is q, so R = P^T): three N x m x D products, P weighed once and kept for the
// output (fused: per thread, N rows; split: per head, B H N rows).
template <class Head, class T>
void nystrom_tied(const SoftNystrom<T>& f, const ConstView4<T>& q, const ConstView4<T>& v, const View4<T>& out,
                  std::vector<NewtonStats>& stats) {
  using Acc = accum_t<T>;
  using KeptWord = typename Head::KeptWord;
  const Shape4 sq = shape_of(q);
  const Index n = sq.N, d = sq.D, m = f.landmark_count(), tile = Head::kTile, stride = Head::kept_stride(m);
  const Index chunks = token_chunks(n), size = Head::rv_size(m, d);
  NystromShared<Head> sh(sq.B * sq.H, 0, m, d);
  const WorkGrid heads{sq.B, sq.H, 1};
  if (nystrom_fused(heads.size(), chunks, f.parallel.workers())) return nystrom_tied_fused<Head>(f, q, v, out, sh, stats);
  for_each_item(f.parallel, heads, [&] {
    return [&, ws = Head(m, d)](const WorkGrid::Item& it) mutable {
      nystrom_landmarks<Head>(f, q, q, false, sh, ws, it.b, it.h, 0);
    };
  });
  const WorkGrid grid{sq.B, sq.H, n, kTokenChunk};
  Partials<Acc> parts(grid.size(), size);
  UninitArray<KeptWord> kept(sq.B * sq.H * n * stride);
  for_each_item(f.parallel, grid, [&] {
    return [&, ws = Head(m, d)](const WorkGrid::Item& it) mutable {
      nystrom_rv_tied(sh, ws, head(q, it.b, it.h).data(), head(v, it.b, it.h).data(), n, d, it.r0 / kTokenChunk,
                      it.bh, kept.data() + it.bh * n * stride, parts[grid.index(it)]);
    };
  });
  for_each_item(f.parallel, heads, [&] {
    return [&, ws = Head(m, d)](const WorkGrid::Item& it) mutable {
      reduce_chunks(parts[grid.index({it.b, it.h, 1, 0, 0, 0})], size, chunks, size, ws.rv.data());
      stats[static_cast<size_t>(it.bh)] = ws.solve(f, sh.ql(it.bh), ws.rv.data(), sh.q_set(it.bh), true, sh.y(it.bh));
    };
  });
  for_each_item(f.parallel, WorkGrid{sq.B, sq.H, n, 2 * tile}, [&] {
    return [&, ws = Head(m, d), o = OutputTile<T>(), bound = Index(-1)](const WorkGrid::Item& it) mutable {
      if (it.bh != bound) ws.set_y(sh.y(it.bh)), bound = it.bh;
      const KeptWord* kh = kept.data() + it.bh * n * stride;
      T* oh = head(out, it.b, it.h).data();
      for (Index i0 = it.r0; i0 < it.r0 + it.rows; i0 += tile)
        ws.out_kept(kh + i0 * stride, std::min(tile, it.r0 + it.rows - i0), oh + i0 * d, o);
    };
  });
}

// Untied pass 1 fused: one item per kv head (Kt, then its query heads' landmarks, R V per chunk
// of its keys for all of them, and their solves).
template <class Head, class T>
void nystrom_untied_fused(const SoftNystrom<T>& f, const ConstView4<T>& q, const ConstView4<T>& k,
                          const ConstView4<T>& v, NystromShared<Head>& sh, std::vector<NewtonStats>& stats) {
  using Acc = accum_t<T>;
  const Shape4 sq = shape_of(q), sk = shape_of(k);
  const Index d = sq.D, m = f.landmark_count(), per_kv = sq.H / sk.H, size = Head::rv_size(m, d);
  const Index chunks = token_chunks(sk.N), group = per_kv * size;  // a chunk's partials: its kv group's
  for_each_item(f.parallel, WorkGrid{sq.B, sk.H, 1}, [&] {
    return [&, ws = Head(m, d), parts = AlignedBuffer<Acc>()](const WorkGrid::Item& it) mutable {
      const Index bh0 = it.b * sq.H + it.h * per_kv;
      for (Index i = 0; i < per_kv; ++i) nystrom_landmarks<Head>(f, q, k, i == 0, sh, ws, it.b, it.h * per_kv + i, it.h);
      Acc* p = reserve(parts, chunks * group);
      std::fill(p, p + chunks * group, Acc(0));
      for (Index c = 0; c < chunks; ++c)
        nystrom_rv_keys(sh, ws, head(k, it.b, it.h).data(), head(v, it.b, it.h).data(), sk.N, d, c, bh0, per_kv,
                        p + c * group);
      for (Index i = 0; i < per_kv; ++i) {
        reduce_chunks(p + i * size, group, chunks, size, ws.rv.data());
        stats[static_cast<size_t>(bh0 + i)] =
            ws.solve(f, sh.ql(bh0 + i), ws.rv.data(), sh.k_set(it.bh), false, sh.y(bh0 + i));
      }
    };
  });
}

// Untied pass 1 split: landmarks per query head (the first of a kv group also pooling Kt); R V per
// chunk of a kv head's keys for its query heads, into partials; the solves per query head.
template <class Head, class T>
void nystrom_untied_split(const SoftNystrom<T>& f, const ConstView4<T>& q, const ConstView4<T>& k,
                          const ConstView4<T>& v, NystromShared<Head>& sh, std::vector<NewtonStats>& stats) {
  using Acc = accum_t<T>;
  const Shape4 sq = shape_of(q), sk = shape_of(k);
  const Index d = sq.D, m = f.landmark_count(), per_kv = sq.H / sk.H, size = Head::rv_size(m, d);
  const Index chunks = token_chunks(sk.N), group = per_kv * size;
  const WorkGrid heads{sq.B, sq.H, 1}, grid{sq.B, sk.H, sk.N, kTokenChunk};
  for_each_item(f.parallel, heads, [&] {
    return [&, ws = Head(m, d)](const WorkGrid::Item& it) mutable {
      nystrom_landmarks<Head>(f, q, k, it.h % per_kv == 0, sh, ws, it.b, it.h, it.h / per_kv);
    };
  });
  Partials<Acc> parts(grid.size(), group);
  for_each_item(f.parallel, grid, [&] {
    return [&, ws = Head(m, d)](const WorkGrid::Item& it) mutable {
      nystrom_rv_keys(sh, ws, head(k, it.b, it.h).data(), head(v, it.b, it.h).data(), sk.N, d, it.r0 / kTokenChunk,
                      it.b * sq.H + it.h * per_kv, per_kv, parts[grid.index(it)]);
    };
  });
  for_each_item(f.parallel, heads, [&] {
    return [&, ws = Head(m, d)](const WorkGrid::Item& it) mutable {
      const Index kvh = it.h / per_kv;
      reduce_chunks(parts[grid.index({it.b, kvh, 1, 0, 0, 0})] + (it.h % per_kv) * size, group, chunks, size,
                    ws.rv.data());
      stats[static_cast<size_t>(it.bh)] =
          ws.solve(f, sh.ql(it.bh), ws.rv.data(), sh.k_set(it.b * sk.H + kvh), false, sh.y(it.bh));
    };
  });
}

// The untied case: four N x m x D products (R = k(Qt, K) has its own weights). Pass 1 up to the
// Y of every query head, fused or split; pass 2 splits the query rows: per tile of them, the
// weight tile is P's rows and O = P Y.
template <class Head, class T>
void nystrom_untied(const SoftNystrom<T>& f, const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v,
                    const View4<T>& out, std::vector<NewtonStats>& stats) {
  const Shape4 sq = shape_of(q), sk = shape_of(k);
  NystromShared<Head> sh(sq.B * sq.H, sq.B * sk.H, f.landmark_count(), sq.D);
  if (nystrom_fused(sq.B * sk.H, token_chunks(sk.N), f.parallel.workers()))
    nystrom_untied_fused<Head>(f, q, k, v, sh, stats);
  else
    nystrom_untied_split<Head>(f, q, k, v, sh, stats);
  nystrom_queries<Head>(f, q, k, sh, out);
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
      if (tied)
        nystrom_tied<Head>(f, q, v, out, stats);
      else
        nystrom_untied<Head>(f, q, k, v, out, stats);
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
