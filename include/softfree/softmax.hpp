#pragma once
// SoftmaxAttention: the baseline every speed-up is measured against.
//
// O = softmax(s Q K^T [+ mask]) V, computed flash-style: a block of 4 packets of queries (64 with
// AVX-512 float), scaled and transposed once, meets tiles of 128 keys. Each score tile is one
// register-blocked product (core/microkernels.hpp) laid out keys x queries, so the online softmax
// (running max and sum per query, in the accumulate type) runs down packet columns with no
// horizontal reductions, and a second product accumulates V^T P into the block's D x 64
// accumulator. No N x N matrix exists: memory is O(N D) plus one tile per thread.
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "core/attention.hpp"
#include "core/microkernels.hpp"
#include "core/parallel.hpp"
#include "core/precision.hpp"

namespace softfree {

template <class T = float>
class SoftmaxAttention : public Attention<SoftmaxAttention<T>, T> {
 public:
  static constexpr const char* kName = "SoftmaxAttention";

  /// Score scale s; unset means 1 / sqrt(D). Must be positive and finite when set.
  std::optional<double> scale;
  /// Mask key j > query i (for cross-attention too: key j is visible to query i iff j <= i).
  bool causal = false;
  /// Optional key padding: key_lengths[b] keys of batch item b are valid (the rest masked).
  /// Empty means every key is valid. A query row with no valid key yields zeros.
  std::vector<Index> key_lengths;
  Parallel parallel;

  Shape4 check_inputs(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v) const {
    const Shape4 s = detail::check_qkv(kName, q, k, v, /*allow_cross=*/true);
    if (scale) {
      detail::check_positive_finite(kName, "scale", *scale);
      if (*scale > static_cast<double>(std::numeric_limits<Acc>::max()))
        detail::fail(kName, "scale = ", *scale, ": exceeds the ", precision<Acc>::name, " range the scores are computed in");
    }
    detail::check_key_lengths(kName, key_lengths, s.B, shape_of(k).N);
    return s;
  }

  void compute(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v,
               const View4<T>& out) const {
    const Shape4 sq = shape_of(q), sk = shape_of(k);
    const Index nq = sq.N, nk = sk.N;
    const Acc s = static_cast<Acc>(scale ? *scale : 1.0 / std::sqrt(static_cast<double>(sq.D)));
    const Index q_blocks = (nq + kBlockQ - 1) / kBlockQ;

    // One item = one block of query rows of one (b, h): independent of the thread count.
    detail::parallel_for(parallel, sq.B * sq.H * q_blocks, [&] {
      return [&, ws = Workspace(sq.D)](Index item) mutable {
        const Index bh = item / q_blocks, b = bh / sq.H, h = bh % sq.H;
        const Index i0 = (item % q_blocks) * kBlockQ, rows = std::min(kBlockQ, nq - i0);
        Index key_end = key_lengths.empty() ? nk : key_lengths[static_cast<size_t>(b)];
        if (causal) key_end = std::min(key_end, i0 + rows);
        run_block(head(q, b, h).data() + i0 * sq.D, rows, head(k, b, h).data(), head(v, b, h).data(), nk, key_end,
                  i0, s, ws, head(out, b, h).data() + i0 * sq.D);
      };
    });
  }

 private:
  using Acc = accum_t<T>;
  // Query block: four packets of queries (64 with AVX-512 float), kept transposed in L1 with
  // its D x 64 accumulator. Key tile: 128 keys, so a score tile (32 KiB) stays in L1 too.
  static constexpr Index kBlockQ = 4 * detail::kLanes<Acc>;
  static constexpr Index kBlockK = 128;

  struct Workspace {
    explicit Workspace(Index d)
        : d(d), qt(static_cast<size_t>(d * kBlockQ)), ot(qt.size()), st(static_cast<size_t>(kBlockK * kBlockQ)),
          row_max(kBlockQ), row_sum(kBlockQ), o(kBlockQ, d) {}
    Index d;
    detail::AlignedBuffer<Acc> qt, ot, st, row_max, row_sum;
    RowMatrix<Acc> o;
    detail::TileLoader<T> load_q, load_k, load_v;
  };

  // Queries i0 .. i0+rows of one head against keys [0, key_end): transposed scaled queries QT,
  // then for each key tile ST = K QT, online softmax down each query column, OT += V^T ST.
  void run_block(const T* qp, Index rows, const T* kp, const T* vp, Index nk, Index key_end, Index i0, Acc s,
                 Workspace& ws, T* op) const {
    using P = detail::Packet<Acc>;
    namespace ei = Eigen::internal;
    constexpr Index L = detail::kLanes<Acc>, bq = kBlockQ;
    constexpr int NQ = static_cast<int>(kBlockQ / L);
    const Index d = ws.d;
    const auto qb = ws.load_q(qp, rows, d);
    // Half and bfloat16 keys and values are converted once per head per thread and reused by
    // every query block of that head (the loader keeps the last head it converted).
    const auto k_head = ws.load_k(kp, nk, d);
    const auto v_head = ws.load_v(vp, nk, d);
    Acc* qt = ws.qt.data();
    for (Index c = 0; c < d; ++c) {
      for (Index r = 0; r < rows; ++r) qt[c * bq + r] = qb(r, c) * s;  // scale folded into Q once
      for (Index r = rows; r < bq; ++r) qt[c * bq + r] = Acc(0);       // padding queries: harmless zeros
    }
    std::fill(ws.ot.begin(), ws.ot.end(), Acc(0));
    std::fill(ws.row_max.begin(), ws.row_max.end(), -std::numeric_limits<Acc>::infinity());
    std::fill(ws.row_sum.begin(), ws.row_sum.end(), Acc(0));

    for (Index j0 = 0; j0 < key_end; j0 += kBlockK) {
      const Index nj = std::min(kBlockK, key_end - j0);
      const Acc* kt = k_head.data() + j0 * d;
      const Acc* vt = v_head.data() + j0 * d;
      Acc* st = ws.st.data();
      detail::kq_product(kt, d, nj, qt, bq, d, st);
      // Causal: key j0 + j is hidden from queries i0 + i < j0 + j, the first `hidden(j)` columns.
      const auto hidden = [&](Index j) { return causal ? std::clamp<Index>(j0 + j - i0, 0, bq) : Index(0); };
      const Index first_masked = causal ? std::clamp<Index>(i0 + 1 - j0, 0, nj) : nj;
      for (Index j = first_masked; j < nj; ++j)
        std::fill(st + j * bq, st + j * bq + hidden(j), -std::numeric_limits<Acc>::infinity());
      // Online softmax down each query column. Key 0 is visible to every query, so after the
      // first tile every running max is finite. Rows outer, packets inner: NQ independent chains.
      P m[NQ], sum[NQ], alpha[NQ];
      for (int p = 0; p < NQ; ++p) m[p] = ei::pload<P>(ws.row_max.data() + p * L);
      for (Index j = 0; j < nj; ++j)
        for (int p = 0; p < NQ; ++p) m[p] = ei::pmax(m[p], ei::pload<P>(st + j * bq + p * L));
      for (int p = 0; p < NQ; ++p) {
        alpha[p] = detail::exp_nonpositive(ei::psub(ei::pload<P>(ws.row_max.data() + p * L), m[p]));  // ~0 on the first tile
        sum[p] = ei::pset1<P>(Acc(0));
      }
      for (Index j = 0; j < nj; ++j)
        for (int p = 0; p < NQ; ++p) {
          const P e = detail::exp_nonpositive(ei::psub(ei::pload<P>(st + j * bq + p * L), m[p]));
          ei::pstore(st + j * bq + p * L, e);
          sum[p] = ei::padd(sum[p], e);
        }
      for (int p = 0; p < NQ; ++p) {
        ei::pstore(ws.row_sum.data() + p * L, ei::pmadd(ei::pload<P>(ws.row_sum.data() + p * L), alpha[p], sum[p]));
        ei::pstore(ws.row_max.data() + p * L, m[p]);
      }
      for (Index c = 0; c < d; ++c)
        for (int p = 0; p < NQ; ++p) {
          Acc* o = ws.ot.data() + c * bq + p * L;
          ei::pstore(o, ei::pmul(ei::pload<P>(o), alpha[p]));
        }
      // Keys every query of the block sees go through the packet kernel. Keys on the causal
      // diagonal skip their hidden queries instead of weighting them by 0, so a NaN or inf in a
      // hidden value (say, an unused slot of a KV cache) never reaches an earlier row.
      detail::vp_product(vt, d, first_masked, d, st, bq, ws.ot.data());
      for (Index j = first_masked; j < nj; ++j) {
        const Index from = hidden(j);
        const Acc* p = st + j * bq;
        for (Index c = 0; c < d; ++c) {
          const Acc x = vt[j * d + c];
          Acc* o = ws.ot.data() + c * bq;
          for (Index i = from; i < bq; ++i) o[i] += x * p[i];
        }
      }
    }
    for (Index r = 0; r < rows; ++r) {
      const Acc l = ws.row_sum[static_cast<size_t>(r)];
      const Acc inv = l > 0 ? Acc(1) / l : Acc(0);  // a row with no visible key yields zeros
      for (Index c = 0; c < d; ++c) ws.o(r, c) = ws.ot[static_cast<size_t>(c * bq + r)] * inv;
    }
    detail::store_rows(ws.o.topRows(rows), op);
  }
};

}  // namespace softfree
