#pragma once
// The flash query block, shared by every attention whose weights come tile by tile from a score
// product (SoftmaxAttention, SoftGaussian): a block of up to kBlockQ queries is kept transposed
// and scaled (QT, D x bq: packets run along queries), and meets the keys in tiles of kBlockK.
// Per tile, the score product ST = K QT (keys x queries) goes through the register-blocked gemm
// with the method's epilogue, the method's Score turns ST into weights (and may rescale the
// accumulator), and OT += V^T ST accumulates the block's D x bq output. Per-query reductions over
// keys (a running max and sum) are plain packet operations down ST's columns, with no horizontal
// reduction. No N x N matrix exists: memory is O(N D) plus one tile per thread.
//
// A Score provides:
//   Acc query_scale() const;                      // folded into QT once
//   void begin(const ConstMatrixMap<Acc>& q);      // the block's queries (rows x D), before any tile
//   C tile_output(Acc* st, Index bq, const Acc* kt, Index nj);  // gemm epilogue writing ST
//   Index weigh(Acc* st, Index bq, Index nj, Index j0, Acc* ot, Index d);
//       // ST -> weights in place; returns how many leading keys of the tile every query sees
//   Index hidden(Index key) const;                // for the rest: queries [0, hidden) skip it
//   Acc row_factor(Index r) const;                // scale of output row r at the end
#include <algorithm>

#include "../schedule.hpp"
#include "convert.hpp"
#include "gemm.hpp"

namespace softfree {
namespace detail {
inline namespace SOFTFREE_ISA {

template <class Acc>
class FlashBlock {
 public:
  // Four packets of queries (64 with AVX-512 float), kept transposed in L1 with the D x 64
  // accumulator; 128-key tiles, so a score tile (32 KiB) stays in L1 too.
  static constexpr Index kBlockQ = 4 * kLanes<Acc>;
  static constexpr Index kBlockK = 128;
  // 4 x 4 packets = 16 accumulators: enough independent FMA chains to cover the latency on two
  // FMA ports, and registers left for the operands even with 16 (AVX2).
  using Tile = Tiling<4, 4>;

  explicit FlashBlock(Index d)
      : d_(d), qt_(static_cast<size_t>(d * kBlockQ)), ot_(qt_.size()), st_(static_cast<size_t>(kBlockK * kBlockQ)) {}

  /// Queries q (rows <= kBlockQ, D columns) against keys and values [0, key_end) of k and v
  /// (contiguous rows of D), written to out (rows of D, storage type) through tile.
  template <class Score, class T>
  void run(Score& score, const ConstMatrixMap<Acc>& q, const Acc* k, const Acc* v, Index key_end,
           OutputTile<T>& tile, T* out) {
    constexpr Index bq = kBlockQ;
    const Index d = d_, rows = q.rows();
    const Acc s = score.query_scale();
    Acc *qt = qt_.data(), *ot = ot_.data(), *st = st_.data();
    for (Index c = 0; c < d; ++c) {
      for (Index r = 0; r < rows; ++r) qt[c * bq + r] = q(r, c) * s;
      std::fill(qt + c * bq + rows, qt + (c + 1) * bq, Acc(0));  // padding queries: harmless zeros
    }
    score.begin(q);
    std::fill(ot_.begin(), ot_.end(), Acc(0));
    for (Index j0 = 0; j0 < key_end; j0 += kBlockK) {
      const Index nj = std::min(kBlockK, key_end - j0);
      const Acc *kt = k + j0 * d, *vt = v + j0 * d;
      gemm<Tile>(nj, bq, d, StridedA<Acc>{kt, d, 1}, RowsB<Acc>{qt, bq}, score.tile_output(st, bq, kt, nj));
      const Index dense = score.weigh(st, bq, nj, j0, ot, d);
      gemm<Tile>(d, bq, dense, StridedA<Acc>{vt, 1, d}, RowsB<Acc>{st, bq}, AddC<Acc>{ot, bq});
      // Keys past `dense` skip their hidden queries instead of weighting them by 0, so a NaN or
      // inf in a hidden value (say, an unused slot of a KV cache) never reaches an earlier row.
      for (Index j = dense; j < nj; ++j) {
        const Index from = score.hidden(j0 + j);
        const Acc* p = st + j * bq;
        for (Index c = 0; c < d; ++c) {
          const Acc x = vt[j * d + c];
          Acc* o = ot + c * bq;
          for (Index i = from; i < bq; ++i) o[i] += x * p[i];
        }
      }
    }
    Acc* o = tile.begin(out, rows, d);
    for (Index r = 0; r < rows; ++r) {
      const Acc f = score.row_factor(r);
      for (Index c = 0; c < d; ++c) o[r * d + c] = ot[c * bq + r] * f;
    }
    tile.commit();
  }

 private:
  Index d_;
  AlignedBuffer<Acc> qt_, ot_, st_;
};

/// A whole flash attention call: one item per block of kBlockQ query rows of one head. Each thread
/// builds its Score with make_score(); prepare(score, item) readies it for an item and returns how
/// many keys (from key 0) that block may see.
template <class T, class MakeScore, class Prepare>
void flash_attention(const Parallel& par, const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v,
                     const View4<T>& out, const MakeScore& make_score, const Prepare& prepare) {
  using Block = FlashBlock<accum_t<T>>;
  const Shape4 sq = shape_of(q);
  const Index nk = shape_of(k).N, d = sq.D;
  for_each_item(par, WorkGrid{sq.B, sq.H, sq.N, Block::kBlockQ}, [&] {
    return [&, block = Block(d), score = make_score(), load_q = TileLoader<T>(), load_k = TileLoader<T>(),
            load_v = TileLoader<T>(), tile = OutputTile<T>()](const WorkGrid::Item& it) mutable {
      // Half and bfloat16 keys and values are converted once per head per thread and reused by
      // every query block of that head (the loader keeps the last head it converted).
      const auto kh = load_k(head(k, it.b, it.h).data(), nk, d);
      const auto vh = load_v(head(v, it.b, it.h).data(), nk, d);
      const Index key_end = prepare(score, it);
      block.run(score, load_q(head(q, it.b, it.h).data() + it.r0 * d, it.rows, d), kh.data(), vh.data(), key_end,
                tile, head(out, it.b, it.h).data() + it.r0 * d);
    };
  });
}

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
