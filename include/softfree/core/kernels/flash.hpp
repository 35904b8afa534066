#pragma once
// The flash query block, shared by every attention whose weights come tile by tile from a score
// product (SoftmaxAttention, SoftGaussian): a block of up to kBlockQ queries is kept transposed
// (QT, D x bq: packets run along queries), and meets the keys in tiles of kBlockK. Per tile, the
// score product ST = s K QT (keys x queries) goes through the register-blocked gemm with the
// method's epilogue, the method's Score turns ST into weights (and may rescale the accumulator),
// and OT += V^T ST accumulates the block's D x bq output. Per-query reductions over keys (a
// running max and sum) are plain packet operations down ST's columns, with no horizontal
// reduction. No N x N matrix exists: memory is O(N D) plus one tile per thread. A block of fewer
// queries (the last of a head: 197 = 3 x 64 + 5) runs its products and weights on its own width
// rounded up to a packet, not on the full kBlockQ columns.
//
// The two products come from a Products policy: AccumProducts (the accumulate type; s folded
// into QT) or PairProducts (bf16 pairs accumulated in float, s applied to the sums), chosen per
// call (select.hpp). Scores see float tiles either way.
//
// A Score provides:
//   Acc query_scale() const;                      // s
//   void begin(const ConstMatrixMap<Acc>& q);      // the block's queries (rows x D), before any tile
//   C tile_output(Acc* st, Index bq, const Acc* kt, Index nj);  // gemm epilogue writing ST
//   Index weigh(Acc* st, Index bq, Index width, Index nj, Index j0, Acc* ot, Index d);
//       // ST -> weights in place (its first `width` columns, a whole number of packets: a
//       // short block's query columns); returns how many leading keys every query sees
//   Index hidden(Index key) const;                // for the rest: queries [0, hidden) skip it
//   Acc row_factor(Index r) const;                // scale of output row r at the end
//   static constexpr bool kTranslationInvariant;  // optional (false): see Centring
// The queries and keys a Score sees are the products' operands (for bf16 products, rounded;
// for a translation-invariant Score, centred).
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "../schedule.hpp"
#include "convert.hpp"
#include "gemm.hpp"
#include "pairs.hpp"
#include "select.hpp"

namespace softfree {
namespace detail {
inline namespace SOFTFREE_ISA {

/// Whether a Score's weights depend on its queries and keys only through their differences
/// (Score::kTranslationInvariant): its products may then take both about a centre.
template <class Score, class = void>
struct translation_invariant : std::false_type {};
template <class Score>
struct translation_invariant<Score, std::void_t<decltype(Score::kTranslationInvariant)>>
    : std::integral_constant<bool, Score::kTranslationInvariant> {};

/// The queries and keys of a translation-invariant Score, taken about a centre per head: a
/// product of centred operands does not cancel where ||x - y|| is small next to |x| (x.y carries
/// an error of u |x| |y|). The centre is the keys' mean, per column where that pays (pays()),
/// else 0; for bf16 operands (Bf16) rounded to bf16, so x - c is exact and the operands stay the
/// rounded inputs, moved. Disabled (Enabled false): the operands as loaded, at no cost.
template <class Acc, bool Enabled, bool Bf16>
class Centring {
 public:
  /// The head's nk keys k (d values each; src their storage, to know a head seen last) centred.
  const Acc* keys(const void* src, const Acc* k, Index nk, Index d) {
    if (src != src_ || nk != nk_ || d != d_) {
      src_ = src, nk_ = nk, d_ = d;
      centred_ = key_centre(k, nk);
      if (centred_) subtract(k, nk, reserve(keys_, nk * d));
    }
    return centred_ ? keys_.data() : k;
  }
  /// A block of queries, centred as the keys.
  ConstMatrixMap<Acc> queries(const ConstMatrixMap<Acc>& q) {
    if (!centred_) return q;
    subtract(q.data(), q.rows(), reserve(queries_, q.rows() * d_));
    return ConstMatrixMap<Acc>(queries_.data(), q.rows(), d_);
  }

 private:
  /// The centre of the keys into centre_; false when it is 0 (nothing to subtract).
  bool key_centre(const Acc* k, Index nk) {
    Acc *c = reserve(centre_, d_), *spread = reserve(spread_, d_);
    std::fill(c, c + d_, Acc(0));
    std::fill(spread, spread + d_, Acc(0));
    for (Index j = 0; j < nk; ++j)
      for (Index i = 0; i < d_; ++i) c[i] += k[j * d_ + i];
    for (Index i = 0; i < d_; ++i) c[i] /= static_cast<Acc>(std::max<Index>(nk, 1));
    for (Index j = 0; j < nk; ++j)
      for (Index i = 0; i < d_; ++i) {
        const Acc e = k[j * d_ + i] - c[i];
        spread[i] = Bf16 ? std::max(spread[i], std::abs(e)) : spread[i] + e * e;
      }
    bool any = false;
    for (Index i = 0; i < d_; ++i) {
      c[i] = pays(c[i], spread[i], nk) ? rounded(c[i]) : Acc(0);
      any = any || c[i] != 0;
    }
    return any;
  }
  /// Whether centring a column at its mean m pays. Float: where m^2 exceeds the keys' variance
  /// (below, their mean |x|^2 is at most twice the mean |x - m|^2: little to gain, and a few far
  /// keys would move m away from the rest). bf16: where every key is within |m| / 3 of m, so
  /// within [c/2, 2c] of the rounded c (Sterbenz: x - c exact). A non-finite m never pays.
  static bool pays(Acc m, Acc spread, Index nk) {
    if (!std::isfinite(m)) return false;
    return Bf16 ? 3 * spread < std::abs(m) : spread < m * m * static_cast<Acc>(nk);
  }
  static Acc rounded(Acc m) {
    if constexpr (!Bf16) return m;
    Eigen::bfloat16 b;
    from_float(m, &b);
    return to_float(b);
  }
  /// dst = x - c, rows of d_ values (bf16: rounded, for queries beyond the keys' range).
  void subtract(const Acc* x, Index rows, Acc* dst) const {
    const Acc* c = centre_.data();
    for (Index r = 0; r < rows; ++r)
      for (Index i = 0; i < d_; ++i) dst[r * d_ + i] = x[r * d_ + i] - c[i];
    if constexpr (Bf16) round_to_bf16(dst, rows * d_);
  }

  AlignedBuffer<Acc> centre_, spread_, keys_, queries_;
  const void* src_ = nullptr;
  Index nk_ = -1, d_ = 0;
  bool centred_ = false;
};

template <class Acc, bool Bf16>
class Centring<Acc, false, Bf16> {
 public:
  const Acc* keys(const void*, const Acc* k, Index, Index) { return k; }
  ConstMatrixMap<Acc> queries(const ConstMatrixMap<Acc>& q) { return q; }
};

// Four packets of queries (64 with AVX-512 float), kept transposed in L1 with the D x 64
// accumulator; 128-key tiles, so a score tile (32 KiB) stays in L1 too.
template <class Acc>
constexpr Index kFlashBlockQ = 4 * kLanes<Acc>;
constexpr Index kFlashBlockK = 128;

/// The flash block's two products on accumulate-type operands: QT scaled in the accumulate type,
/// K and V as loaded (converted once per head and thread), Q and K centred when Centred.
template <class T, bool Centred = false>
class AccumProducts {
 public:
  using Storage = T;
  using Acc = accum_t<T>;
  static constexpr Index kBlockQ = kFlashBlockQ<Acc>;
  // 4 x 4 packets = 16 accumulators: enough independent FMA chains to cover the latency on two
  // FMA ports, and registers left for the operands even with 16 (AVX2). A short block's one or
  // two packets of queries take 8 rows of keys (8 and 16 accumulators), not 4.
  using Tile = Tiling<4, 4, 8>;

  void bind(const T* k, const T* v, Index nk, Index d) {
    k_ = centring_.keys(k, load_k_(k, nk, d).data(), nk, d);
    v_ = load_v_(v, nk, d).data();
    d_ = d;
  }
  const Acc* keys() const { return k_; }
  const Acc* values() const { return v_; }

  /// The block's queries (rows x d) as loaded; QT = s q^T for the score product.
  ConstMatrixMap<Acc> queries(const T* src, Index rows, Acc s) {
    const auto q = centring_.queries(load_q_(src, rows, d_));
    Acc* qt = reserve(qt_, d_ * kBlockQ);
    for (Index c = 0; c < d_; ++c) {
      for (Index r = 0; r < rows; ++r) qt[c * kBlockQ + r] = q(r, c) * s;
      std::fill(qt + c * kBlockQ + rows, qt + (c + 1) * kBlockQ, Acc(0));  // padding queries: harmless zeros
    }
    return q;
  }
  /// ST (nj keys from j0, x kBlockQ) through the epilogue c. Inlined into the block (as the
  /// pair version), so the epilogue's row stride is the constant kBlockQ.
  template <class C>
  EIGEN_ALWAYS_INLINE void scores(Index j0, Index nj, Index width, const C& c) const {
    gemm<Tile>(nj, width, d_, StridedA<Acc>{k_ + j0 * d_, d_, 1}, RowsB<Acc>{qt_.data(), kBlockQ}, c);
  }
  /// OT += V^T W for the first `dense` keys of the tile (of nj), the first `width` query columns;
  /// returns how many keys it took (all).
  Index weighted_values(Acc* w, Index j0, Index dense, Index, Index width, Acc* ot) {
    gemm<Tile>(d_, width, dense, StridedA<Acc>{v_ + j0 * d_, 1, d_}, RowsB<Acc>{w, kBlockQ}, AddC<Acc>{ot, kBlockQ});
    return dense;
  }

 private:
  TileLoader<T> load_q_, load_k_, load_v_;
  Centring<Acc, Centred, false> centring_;
  AlignedBuffer<Acc> qt_;
  const Acc *k_ = nullptr, *v_ = nullptr;
  Index d_ = 0;
};

/// The flash block's two products on bf16 pairs (pairs.hpp), accumulated in float: K packed once
/// per head along D, V^T once per head along the keys, Q^T per block, each weight tile rounded to
/// bf16 after its exponent. The score scale is applied to the float sums (ScaledC). Q and K
/// centred when Centred (after their rounding, exactly where the Centring allows).
template <class T, class Ops, bool Centred = false>
class PairProducts {
 public:
  using Storage = T;
  using Acc = float;
  static constexpr Index kBlockQ = kFlashBlockQ<float>;
  using Tile = Tiling<4, 4, 8>;

  void bind(const T* k, const T* v, Index nk, Index d) {
    const bool same = k == k_src_ && v == v_src_ && nk == nk_ && d == d_;
    k_ = centring_.keys(k, load_k_(k, nk, d).data(), nk, d);
    v_ = load_v_(v, nk, d).data();
    if (same) return;
    k_src_ = k, v_src_ = v, nk_ = nk, d_ = d, dp_ = pairs_of(d), vp_ld_ = pairs_of(nk);
    pack_rows(k_, nk, d, d, reserve(kp_, nk * dp_), dp_);
    pack_columns(v_, nk, d, d, reserve(vp_, d * vp_ld_), vp_ld_);
  }
  const float* keys() const { return k_; }
  const float* values() const { return v_; }

  ConstMatrixMap<float> queries(const T* src, Index rows, float s) {
    const auto q = centring_.queries(load_q_(src, rows, d_));
    PairWord* qp = reserve(qp_, dp_ * kBlockQ);
    std::fill(qp, qp + dp_ * kBlockQ, PairWord(0));  // padding queries: zeros
    pack_rows(q.data(), rows, d_, d_, qp, 1, kBlockQ);     // Q^T: query r's pair t at qp[t * kBlockQ + r]
    s_ = s;
    return q;
  }
  /// Inlined into the block: called with a C of run-time row stride, GCC 12 kept the 16 store
  /// addresses live across the depth loop, spilled general registers into vector ones and then
  /// moved the broadcasts through the stack (the score product ran at about half speed).
  template <class C>
  EIGEN_ALWAYS_INLINE void scores(Index j0, Index nj, Index width, const C& c) const {
    gemm_pairs<Tile>(nj, width, dp_, PairA{kp_.data() + j0 * dp_, dp_, 1}, PairRowsB<Ops>{qp_.data(), kBlockQ},
                     ScaledC<C>{c, s_, 1.0f / s_});
  }
  /// OT += V^T W over whole pairs of the first `dense` keys; returns how many keys that is (an odd
  /// last one is left to the caller: its pair partner may be a hidden key whose value must not be
  /// touched, not even by a zero weight). The weights of the keys left (of nj) are rounded to bf16
  /// in place, so every weight is, whatever the key count's parity.
  Index weighted_values(float* w, Index j0, Index dense, Index nj, Index width, float* ot) {
    const Index pairs = dense / 2;
    round_to_bf16(w + 2 * pairs * kBlockQ, (nj - 2 * pairs) * kBlockQ);
    PairWord* wp = reserve(wp_, pairs * kBlockQ);
    pack_row_pairs<Ops>(w, 2 * pairs, width, kBlockQ, wp, kBlockQ);
    gemm_pairs<Tile>(d_, width, pairs, PairA{vp_.data() + j0 / 2, vp_ld_, 1}, PairRowsB<Ops>{wp, kBlockQ},
                     AddC<float>{ot, kBlockQ});
    return 2 * pairs;
  }

 private:
  Bf16Loader<T> load_q_, load_k_, load_v_;
  Centring<float, Centred, true> centring_;
  AlignedBuffer<PairWord> kp_, vp_, qp_, wp_;
  const float *k_ = nullptr, *v_ = nullptr;
  const T *k_src_ = nullptr, *v_src_ = nullptr;
  Index nk_ = 0, d_ = 0, dp_ = 0, vp_ld_ = 0;
  float s_ = 1;
};

/// One query block against its keys, through the products of Prod (AccumProducts or
/// PairProducts) and the method's Score.
template <class Prod>
class FlashBlock {
  using T = typename Prod::Storage;
  using Acc = typename Prod::Acc;

 public:
  static constexpr Index kBlockQ = Prod::kBlockQ, kBlockK = kFlashBlockK;

  /// Binds the head's keys and values (nk rows of d), converted or packed once per head.
  void bind(const T* k, const T* v, Index nk, Index d) {
    products_.bind(k, v, nk, d);
    d_ = d;
  }

  /// Queries q (rows <= kBlockQ of D) against the bound keys and values [0, key_end), written
  /// to out (rows of D) through tile.
  template <class Score>
  void run(Score& score, const T* q, Index rows, Index key_end, OutputTile<T>& tile, T* out) {
    constexpr Index bq = kBlockQ;
    const Index d = d_, width = std::min(bq, pad_to_packets<Acc>(rows));
    Acc *ot = reserve(ot_, d * bq), *st = reserve(st_, kBlockK * bq);
    score.begin(products_.queries(q, rows, score.query_scale()));
    std::fill(ot, ot + d * bq, Acc(0));
    for (Index j0 = 0; j0 < key_end; j0 += kBlockK) {
      const Index nj = std::min(kBlockK, key_end - j0);
      products_.scores(j0, nj, width, score.tile_output(st, bq, products_.keys() + j0 * d, nj));
      const Index dense = score.weigh(st, bq, width, nj, j0, ot, d);
      const Index done = products_.weighted_values(st, j0, dense, nj, width, ot);
      // Keys past `dense` skip their hidden queries instead of weighting them by 0, so a NaN or
      // inf in a hidden value (say, an unused slot of a KV cache) never reaches an earlier row.
      for (Index j = done; j < nj; ++j)
        add_key(st + j * bq, products_.values() + (j0 + j) * d, j < dense ? 0 : score.hidden(j0 + j), width, ot);
    }
    Acc* o = tile.begin(out, rows, d);
    for (Index r = 0; r < rows; ++r) {
      const Acc f = score.row_factor(r);
      for (Index c = 0; c < d; ++c) o[r * d + c] = ot[c * bq + r] * f;
    }
    tile.commit();
  }

 private:
  /// OT[c][i] += v[c] w[i] for queries from <= i < width.
  void add_key(const Acc* w, const Acc* v, Index from, Index width, Acc* ot) const {
    for (Index c = 0; c < d_; ++c)
      for (Index i = from; i < width; ++i) ot[c * kBlockQ + i] = vmadd(v[c], w[i], ot[c * kBlockQ + i]);
  }

  Prod products_;
  Index d_ = 0;
  AlignedBuffer<Acc> ot_, st_;
};

/// A whole flash attention call through products Prod: one item per block of kBlockQ query rows
/// of one head. Each thread builds its Score with make_score(); prepare(score, item) readies it
/// for an item and returns how many keys (from key 0) that block may see.
template <class Prod, class T, class MakeScore, class Prepare>
void flash_run(const Parallel& par, const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v,
               const View4<T>& out, const MakeScore& make_score, const Prepare& prepare) {
  using Block = FlashBlock<Prod>;
  const Shape4 sq = shape_of(q);
  const Index nk = shape_of(k).N, d = sq.D;
  for_each_item(par, WorkGrid{sq.B, sq.H, sq.N, Block::kBlockQ}, [&] {
    return [&, block = Block(), score = make_score(), tile = OutputTile<T>()](const WorkGrid::Item& it) mutable {
      // Keys and values are converted (packed) once per kv head per thread and reused by every
      // query block that reads them (every block of a head, and of the heads of a grouped-query
      // group, which come one after another): the block keeps the last kv head it bound.
      block.bind(kv_head(k, it.b, it.h, sq.H).data(), kv_head(v, it.b, it.h, sq.H).data(), nk, d);
      const Index key_end = prepare(score, it);
      block.run(score, head(q, it.b, it.h).data() + it.r0 * d, it.rows, key_end, tile,
                head(out, it.b, it.h).data() + it.r0 * d);
    };
  });
}

/// flash_run with the products `kind` selects (select.hpp).
template <class T, class MakeScore, class Prepare>
void flash_attention(const Parallel& par, Products kind, const ConstView4<T>& q, const ConstView4<T>& k,
                     const ConstView4<T>& v, const View4<T>& out, const MakeScore& make_score, const Prepare& prepare) {
  constexpr bool centred = translation_invariant<std::decay_t<decltype(make_score())>>::value;
  with_products<T>(kind, [&](auto pairs) {
    using Prod =
        std::conditional_t<decltype(pairs)::value, PairProducts<T, PairOps, centred>, AccumProducts<T, centred>>;
    flash_run<Prod>(par, q, k, v, out, make_score, prepare);
  });
}

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
