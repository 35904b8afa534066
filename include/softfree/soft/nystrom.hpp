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
#include <vector>

#include "../core/attention.hpp"
#include "../core/parallel.hpp"
#include "../core/schedule.hpp"
#include "../linalg/newton_pinv.hpp"
#include "landmarks.hpp"

namespace softfree {

/// What a SoftNystrom call's pseudo-inverses did, over every (b, h) head: its report (run()).
struct NewtonDiagnostics {
  Index heads = 0;         ///< matrices inverted (B * H)
  int steps = 0;           ///< most steps any head ran
  double residual = 0;     ///< worst ||I - P V||_F over the heads
  bool converged = false;  ///< every head converged (NewtonResult::converged)
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
    const Landmarks& l = landmarks;
    switch (l.kind) {
      case Landmarks::Kind::Segments:
        if (l.m < 1 || l.m > std::min(s.N, sk.N))
          detail::fail(kName, "landmarks = segments(m = ", l.m, "): m must be in [1, N], but q has shape ", s,
                       " and k has shape ", sk);
        break;
      case Landmarks::Kind::Grid:
        if (l.r < 1 || l.r > l.rows || l.r > l.cols)
          detail::fail(kName, "landmarks = grid(rows = ", l.rows, ", cols = ", l.cols, ", r = ", l.r,
                       "): r must be in [1, min(rows, cols)]");
        for (const Shape4& x : {s, sk})
          if (l.rows * l.cols != x.N)
            detail::fail(kName, "landmarks = grid(rows = ", l.rows, ", cols = ", l.cols, ", r = ", l.r,
                         "): rows * cols = ", l.rows * l.cols, " but q has shape ", s, " and k has shape ", sk,
                         " (N tokens)");
        break;
      case Landmarks::Kind::Given: {
        if (!l.q_given || !l.k_given) detail::fail(kName, "landmarks = given(...): a landmark tensor is missing");
        const Shape4 gq = l.q_given->shape, gk = l.k_given->shape;
        if (gq.B != s.B || gq.H != s.H || gq.D != s.D || gq.N < 1)
          detail::fail(kName, "landmarks = given: q_landmarks has shape ", gq, " but q has shape ", s,
                       ": must be [B, H, m, D] with m >= 1");
        if (gk != gq)
          detail::fail(kName, "landmarks = given: k_landmarks has shape ", gk, " but q_landmarks has shape ", gq,
                       ": must be equal");
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
template <class T>
class NystromHead {
  using Acc = accum_t<T>;
  using Weights = LandmarkKernel<Acc>;

 public:
  static constexpr Index kTile = Weights::kTile;

  NystromHead(Index m, Index d)
      : m_(m), d_(d), kernel(m, d), q_set(static_cast<size_t>(Weights::set_size(m, d))),
        ql(static_cast<size_t>(m * d)), kl(ql.size()), rv(ql.size()), a_(static_cast<size_t>(m * Weights::ld_for(m))),
        dq_(static_cast<size_t>(m)) {}

  /// R V += R^T's rows (weights of nj tokens against the landmarks, rows of kernel.ld()) times
  /// those tokens' values.
  void add_rv(const Acc* w, Index nj, const Acc* vt) {
    gemm<GeneralTiling>(m_, d_, nj, StridedA<Acc>{w, 1, kernel.ld()}, RowsB<Acc>{vt, d_}, AddC<Acc>{rv.data(), d_});
  }

  /// A = k(Qt, Kt) from Kt's prepared set, its pseudo-inverse, SOFT-Norm, then y = pinv(A) (R V)
  /// (m x d); ql and rv hold Qt and R V. tied: Kt is Qt, so A is symmetric (made exactly so).
  NewtonStats solve(const SoftNystrom<T>& f, const Acc* k_set, bool tied, Acc* y) {
    const Index m = m_, ld = kernel.ld();
    for (Index i0 = 0; i0 < m; i0 += kTile)  // the weights take tiles of at most kTile rows
      kernel.weigh(k_set, ql.data() + i0 * d_, std::min(kTile, m - i0), a_.data() + i0 * ld);
    Eigen::Map<RowMatrix<Acc>, 0, Eigen::OuterStride<>> a(a_.data(), m, m, Eigen::OuterStride<>(ld));
    if (tied)
      for (Index i = 0; i < m; ++i)
        for (Index j = 0; j < i; ++j) a(i, j) = a(j, i);
    const NewtonStats st = newton.run(a, f.newton);
    auto v = newton.v();
    if (f.soft_norm) {  // D^-1/2 pinv D^-1/2, D = diag(A 1): scale rows and columns
      for (Index i = 0; i < m; ++i) {
        Acc row_sum = 0;
        for (Index j = 0; j < m; ++j) row_sum += a(i, j);
        dq_[static_cast<size_t>(i)] = Acc(1) / std::sqrt(row_sum);
      }
      for (Index i = 0; i < m; ++i)
        for (Index j = 0; j < m; ++j) v(i, j) *= dq_[static_cast<size_t>(i)] * dq_[static_cast<size_t>(j)];
    }
    gemm<GeneralTiling>(m, d_, m, StridedA<Acc>{newton.v_data(), newton.stride(), 1}, RowsB<Acc>{rv.data(), d_},
                        StoreC<Acc>{y, d_});
    return st;
  }

  Index m_, d_;
  Weights kernel;
  AlignedBuffer<Acc> q_set, ql, kl, rv;
  TileLoader<T> load, load_k, load_v;

 private:
  AlignedBuffer<Acc> a_, dq_;
  NewtonWorkspace<Acc> newton;
};

/// out (rows x d, storage type) = p (rows x m, leading dimension ld) y (m x d), through tile.
template <class T, class Acc = accum_t<T>>
void nystrom_out(const Acc* p, Index ld, Index rows, Index m, const Acc* y, Index d, T* out, OutputTile<T>& tile) {
  gemm<GeneralTiling>(rows, d, m, StridedA<Acc>{p, ld, 1}, RowsB<Acc>{y, d}, StoreC<Acc>{tile.begin(out, rows, d), d});
  tile.commit();
}

// The tied case, one item per (b, h): each tile of tokens gives rows of P (kept, N x m), R V
// accumulates P^T V tile by tile, and after the pseudo-inverse O = P Y tile by tile: three
// N x m x D products, against four untied. P is N x ld floats per thread (1 MiB at N = 4096).
template <class T>
void nystrom_tied(const SoftNystrom<T>& f, const ConstView4<T>& q, const ConstView4<T>& v, const View4<T>& out,
                  std::vector<NewtonStats>& stats) {
  using Acc = accum_t<T>;
  const Shape4 sq = shape_of(q);
  const Index n = sq.N, d = sq.D, m = f.landmark_count(), tile = NystromHead<T>::kTile;
  for_each_item(f.parallel, WorkGrid{sq.B, sq.H, n}, [&] {
    return [&, ws = NystromHead<T>(m, d), y = AlignedBuffer<Acc>(static_cast<size_t>(m * d)),
            p = AlignedBuffer<Acc>(static_cast<size_t>(n * LandmarkKernel<Acc>::ld_for(m))),
            o = OutputTile<T>()](const WorkGrid::Item& it) mutable {
      const Index ld = ws.kernel.ld();
      const T *qh = head(q, it.b, it.h).data(), *vh = head(v, it.b, it.h).data();
      pool_landmarks(f.landmarks, qh, n, d, it.bh, /*for_q=*/true, ws.load, ws.ql.data());
      ws.kernel.prepare(ws.ql.data(), ws.q_set.data());
      std::fill(ws.rv.begin(), ws.rv.end(), Acc(0));
      // Last tile first: the pooling pass just read Q front to back, so its end is still in cache.
      for (Index j0 = (n - 1) / tile * tile; j0 >= 0; j0 -= tile) {
        const Index nj = std::min(tile, n - j0);
        const Acc* w = ws.kernel.weigh(ws.q_set.data(), ws.load_k(qh + j0 * d, nj, d).data(), nj, p.data() + j0 * ld);
        ws.add_rv(w, nj, ws.load_v(vh + j0 * d, nj, d).data());
      }
      stats[static_cast<size_t>(it.bh)] = ws.solve(f, ws.q_set.data(), /*tied=*/true, y.data());
      T* oh = head(out, it.b, it.h).data();
      for (Index i0 = 0; i0 < n; i0 += tile)
        nystrom_out(p.data() + i0 * ld, ld, std::min(tile, n - i0), m, y.data(), d, oh + i0 * d, o);
    };
  });
}

// Untied pass 1, one item per (b, h): landmarks, R V one key tile at a time (the weight tile,
// keys x landmarks, is R^T's rows), A = k(Qt, Kt), its pseudo-inverse, Y; leaves Kt's prepared set
// and Y for pass 2.
template <class T>
void nystrom_keys(const SoftNystrom<T>& f, const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v,
                  accum_t<T>* k_sets, accum_t<T>* y_all, std::vector<NewtonStats>& stats) {
  using Acc = accum_t<T>;
  const Shape4 sq = shape_of(q);
  const Index nk = shape_of(k).N, d = sq.D, m = f.landmark_count(), tile = NystromHead<T>::kTile;
  const Index set_size = LandmarkKernel<Acc>::set_size(m, d);
  // Segment landmarks of K are summed from the key tiles R V loads anyway: K is read once.
  const bool k_segments = f.landmarks.kind == Landmarks::Kind::Segments;
  for_each_item(f.parallel, WorkGrid{sq.B, sq.H, sq.N}, [&] {
    return [&, ws = NystromHead<T>(m, d)](const WorkGrid::Item& it) mutable {
      const T *kh = head(k, it.b, it.h).data(), *vh = head(v, it.b, it.h).data();
      pool_landmarks(f.landmarks, head(q, it.b, it.h).data(), sq.N, d, it.bh, /*for_q=*/true, ws.load, ws.ql.data());
      if (k_segments)
        std::fill(ws.kl.begin(), ws.kl.end(), Acc(0));
      else
        pool_landmarks(f.landmarks, kh, nk, d, it.bh, /*for_q=*/false, ws.load, ws.kl.data());
      ws.kernel.prepare(ws.ql.data(), ws.q_set.data());
      std::fill(ws.rv.begin(), ws.rv.end(), Acc(0));
      Index seg = 0;  // first segment not yet complete
      for (Index j0 = 0; j0 < nk; j0 += tile) {
        const Index nj = std::min(tile, nk - j0);
        const Acc* kt = ws.load_k(kh + j0 * d, nj, d).data();
        for (Index i = seg; k_segments && i < m && i * nk / m < j0 + nj; ++i) {
          const Index lo = std::max(i * nk / m, j0), hi = std::min(((i + 1) * nk + m - 1) / m, j0 + nj);
          add_row_sums(kt + (lo - j0) * d, hi - lo, d, ws.kl.data() + i * d);
          if (hi < j0 + nj) seg = i + 1;
        }
        ws.add_rv(ws.kernel.weigh(ws.q_set.data(), kt, nj), nj, ws.load_v(vh + j0 * d, nj, d).data());
      }
      for (Index i = 0; k_segments && i < m; ++i) {
        const Acc count = static_cast<Acc>(((i + 1) * nk + m - 1) / m - i * nk / m);
        for (Index c = 0; c < d; ++c) ws.kl[static_cast<size_t>(i * d + c)] /= count;
      }
      Acc* k_set = k_sets + it.bh * set_size;
      ws.kernel.prepare(ws.kl.data(), k_set);
      stats[static_cast<size_t>(it.bh)] = ws.solve(f, k_set, /*tied=*/false, y_all + it.bh * m * d);
    };
  });
}

// Untied pass 2, one item per kRowsPerItem query rows of one (b, h): per tile of query rows the
// weight tile is P's rows (tile x m) and O = P Y is one product with packets along D.
template <class T>
void nystrom_queries(const SoftNystrom<T>& f, const ConstView4<T>& q, const accum_t<T>* k_sets,
                     const accum_t<T>* y_all, const View4<T>& out) {
  using Acc = accum_t<T>;
  const Shape4 sq = shape_of(q);
  const Index d = sq.D, m = f.landmark_count(), tile = NystromHead<T>::kTile;
  const Index set_size = LandmarkKernel<Acc>::set_size(m, d);
  for_each_item(f.parallel, WorkGrid{sq.B, sq.H, sq.N, 2 * tile}, [&] {
    return [&, weights = LandmarkKernel<Acc>(m, d), load_q = TileLoader<T>(),
            o = OutputTile<T>()](const WorkGrid::Item& it) mutable {
      const T* qh = head(q, it.b, it.h).data();
      T* oh = head(out, it.b, it.h).data();
      for (Index i0 = it.r0; i0 < it.r0 + it.rows; i0 += tile) {
        const Index rows = std::min(tile, it.r0 + it.rows - i0);
        const Acc* p = weights.weigh(k_sets + it.bh * set_size, load_q(qh + i0 * d, rows, d).data(), rows);
        nystrom_out(p, weights.ld(), rows, m, y_all + it.bh * m * d, d, oh + i0 * d, o);
      }
    };
  });
}

template <class T>
struct Kernel<SoftNystrom<T>> {
  static NewtonDiagnostics forward(const SoftNystrom<T>& f, const ConstView4<T>& q, const ConstView4<T>& k,
                                   const ConstView4<T>& v, const View4<T>& out) {
    using Acc = accum_t<T>;
    const Shape4 sq = shape_of(q);
    const Index heads = sq.B * sq.H, m = f.landmark_count();
    std::vector<NewtonStats> stats(static_cast<size_t>(heads));
    // Tied (k is q, and the landmarks agree): R = P^T, so P is computed once and kept.
    const Landmarks& l = f.landmarks;
    const bool tied = q.data() == k.data() && sq == shape_of(k) &&
                      (l.kind != Landmarks::Kind::Given || l.q_given == l.k_given);
    if (tied) {
      nystrom_tied(f, q, v, out, stats);
    } else {
      AlignedBuffer<Acc> k_sets(static_cast<size_t>(heads * LandmarkKernel<Acc>::set_size(m, sq.D))),
          y_all(static_cast<size_t>(heads * m * sq.D));
      nystrom_keys(f, q, k, v, k_sets.data(), y_all.data(), stats);
      nystrom_queries(f, q, k_sets.data(), y_all.data(), out);
    }
    NewtonDiagnostics dg;
    dg.heads = heads;
    dg.converged = true;
    for (const NewtonStats& st : stats) {
      dg.steps = std::max(dg.steps, st.steps);
      if (!(st.residual <= dg.residual)) dg.residual = st.residual;  // keeps a NaN (diverged) visible
      dg.converged = dg.converged && newton_converged(f.newton, st.residual);
    }
    return dg;
  }
};

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
