#pragma once
// SimA (Koohpayegani and Pirsiavash): softmax-free attention with l1-normalised queries and keys.
//
//   Qn[n, c] = Q[n, c] / max(sum_m |Q[m, c]|, eps)   (over tokens, per channel; likewise Kn)
//   O = Qn Kn^T V                                     (no scale, no softmax)
//
// The fast order never forms Qn or Kn: with a_c, b_c the reciprocal column norms of Q and K,
// O = Q (diag(a b) (K^T V)), so the scalings fold into the D x D matrix K^T V. That is two column
// reductions, one D x D x N product, a D x D rescale and one N x D x D product: O(N D^2).
#include <algorithm>
#include <type_traits>

#include "core/attention.hpp"
#include "core/microkernels.hpp"
#include "core/parallel.hpp"
#include "core/precision.hpp"

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

  /// Lower clamp of the l1 norms (PyTorch F.normalize's eps). A channel whose norm is exactly 0
  /// stays 0 even with eps = 0.
  double eps = 1e-12;
  SimAOrder order = SimAOrder::Auto;
  /// SimA normalises over all tokens, so it has no causal form (the paper defines none): setting
  /// this is rejected by every call rather than silently ignored.
  bool causal = false;
  Parallel parallel;

  Shape4 check_inputs(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v) const {
    if (causal)
      detail::fail(kName, "causal = true is not supported: SimA normalises over all tokens, and the paper "
                          "defines no causal form");
    detail::check_nonnegative_finite(kName, "eps", eps);
    return detail::check_qkv(kName, q, k, v, /*allow_cross=*/true);
  }

  /// The order a call with nq queries, nkv keys and head dim d takes. Auto follows the original
  /// code's rule (N < D picks (Qn Kn^T) V; a tie takes Qn (Kn^T V)); for cross-attention it
  /// needs both lengths below D.
  SimAOrder resolved_order(Index nq, Index nkv, Index d) const {
    if (order != SimAOrder::Auto) return order;
    return (nq < d && nkv < d) ? SimAOrder::QKFirst : SimAOrder::KVFirst;
  }

  void compute(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v,
               const View4<T>& out) const {
    const Shape4 sq = shape_of(q), sk = shape_of(k);
    const SimAOrder how = resolved_order(sq.N, sk.N, sq.D);
    // One item = one (b, h): the column norms need every token of the head.
    detail::parallel_for(parallel, sq.B * sq.H, [&] {
      return [&, ws = Workspace(sq.D)](Index bh) mutable {
        const Index b = bh / sq.H, h = bh % sq.H;
        const T* qp = head(q, b, h).data();
        const T* kp = head(k, b, h).data();
        const T* vp = head(v, b, h).data();
        T* op = head(out, b, h).data();
        if (how == SimAOrder::KVFirst)
          kv_first(qp, sq.N, kp, vp, sk.N, ws, op);
        else
          qk_first(qp, sq.N, kp, vp, sk.N, ws, op);
      };
    });
  }

 private:
  using Acc = accum_t<T>;
  using Vec = Eigen::Matrix<Acc, 1, Eigen::Dynamic>;
  // Rows per tile: a 256 x D tile of K and of V stays in L2 while K^T V accumulates over it
  // (one pass over the whole head per column block would stream it from memory 16 times);
  // half and bfloat16 tiles are converted into a reused float buffer, float tiles are mapped.
  static constexpr Index kTile = 256;

  struct Workspace {
    explicit Workspace(Index d) : qnorm(d), knorm(d), partial(d), kv(d, d) {}
    Vec qnorm, knorm, partial;
    RowMatrix<Acc> kv, scores, o;
    detail::TileLoader<T> load_q, load_k, load_v;
  };

  // The register-blocked kernels of core/microkernels.hpp beat Eigen's GEMM on these thin
  // shapes; they need D to be a whole number of packets (64 and 128 are).
  static bool packet_kernels(Index d) { return d % detail::kLanes<Acc> == 0; }

  /// Adds sum_rows |x| to norm, summing each chunk of 256 rows apart first so the rounding error
  /// grows with the chunk, not with N.
  template <class Tile>
  static void add_abs_colsum(const Tile& x, Vec& partial, Vec& norm) {
    for (Index r0 = 0; r0 < x.rows(); r0 += 256) {
      partial.setZero();
      for (Index r = r0; r < std::min(x.rows(), r0 + 256); ++r) partial += x.row(r).cwiseAbs();
      norm += partial;
    }
  }

  /// Turns column l1 norms into the scales 1 / max(norm, eps); an all-zero channel gets 0.
  void to_scales(Vec& norm) const {
    const Acc e = static_cast<Acc>(eps);
    for (Index c = 0; c < norm.size(); ++c) norm[c] = norm[c] > 0 ? Acc(1) / std::max(norm[c], e) : Acc(0);
  }

  // O = Q (diag(a b) (K^T V)).
  void kv_first(const T* qp, Index nq, const T* kp, const T* vp, Index nk, Workspace& ws, T* op) const {
    const Index d = ws.kv.rows();
    ws.kv.setZero();
    ws.knorm.setZero();
    for (Index r0 = 0; r0 < nk; r0 += kTile) {
      const Index rows = std::min(kTile, nk - r0);
      const auto kt = ws.load_k(kp + r0 * d, rows, d);
      const auto vt = ws.load_v(vp + r0 * d, rows, d);
      if (packet_kernels(d))  // kv += K^T V, 64 rows at a time so the V rows it re-reads stay in L1
        for (Index j = 0; j < rows; j += 64)
          detail::vp_product(kt.data() + j * d, d, std::min<Index>(64, rows - j), d, vt.data() + j * d, d,
                             ws.kv.data());
      else
        ws.kv.noalias() += kt.transpose() * vt;
      add_abs_colsum(kt, ws.partial, ws.knorm);
    }
    ws.qnorm.setZero();
    for (Index r0 = 0; r0 < nq; r0 += kTile) {
      const Index rows = std::min(kTile, nq - r0);
      add_abs_colsum(ws.load_q(qp + r0 * d, rows, d), ws.partial, ws.qnorm);
    }
    to_scales(ws.qnorm);
    to_scales(ws.knorm);
    ws.kv.array().colwise() *= (ws.qnorm.array() * ws.knorm.array()).transpose();  // row c scaled by a_c b_c
    for (Index r0 = 0; r0 < nq; r0 += kTile) {
      const Index rows = std::min(kTile, nq - r0);
      const auto qt = ws.load_q(qp + r0 * d, rows, d);
      // Accumulate in the caller's buffer when T is the accumulate type, else in the workspace
      // (rounded once on store; no reallocation after the first full tile).
      Acc* o = nullptr;
      if constexpr (std::is_same<T, Acc>::value) {
        o = op + r0 * d;
      } else {
        ws.o.resize(rows, d);
        o = ws.o.data();
      }
      if (packet_kernels(d))
        detail::kq_product(qt.data(), d, rows, ws.kv.data(), d, d, o);  // o = Q M
      else
        MatrixMap<Acc>(o, rows, d).noalias() = qt * ws.kv;
      if constexpr (!std::is_same<T, Acc>::value) detail::store_rows(ws.o, op + r0 * d);
    }
  }

  // O = ((Q diag(a b)) K^T) V: for short sequences, where the Nq x Nkv matrix is the small one.
  void qk_first(const T* qp, Index nq, const T* kp, const T* vp, Index nk, Workspace& ws, T* op) const {
    const Index d = ws.kv.rows();
    const auto kt = ws.load_k(kp, nk, d);
    const auto qt = ws.load_q(qp, nq, d);
    ws.knorm.setZero();
    ws.qnorm.setZero();
    add_abs_colsum(kt, ws.partial, ws.knorm);
    add_abs_colsum(qt, ws.partial, ws.qnorm);
    to_scales(ws.qnorm);
    to_scales(ws.knorm);
    ws.o.resize(nq, d);
    ws.o = qt.array().rowwise() * (ws.qnorm.array() * ws.knorm.array());
    ws.scores.resize(nq, nk);
    ws.scores.noalias() = ws.o * kt.transpose();
    ws.o.noalias() = ws.scores * ws.load_v(vp, nk, d);
    detail::store_rows(ws.o, op);
  }
};

}  // namespace softfree
