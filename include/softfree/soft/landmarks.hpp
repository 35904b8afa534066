#pragma once
// SoftNystrom's landmarks (SPEC.md "SOFT"): how they are chosen (Landmarks, a public option),
// pooled from a head's tokens, and weighed against tiles of tokens (LandmarkKernel: one product
// with the Gaussian weight in its epilogue, soft/common.hpp).
#include <algorithm>
#include <memory>
#include <vector>

#include "../core/kernels/convert.hpp"
#include "../core/kernels/pairs.hpp"
#include "common.hpp"

namespace softfree {

/// How SoftNystrom picks its m landmarks (SPEC.md "SOFT"). Build one with a factory.
struct Landmarks {
  enum class Kind { Segments, Grid, Given };
  /// The caller's landmarks as given: [B, H, m, D] values in double (exact for every storage type).
  struct Values {
    Shape4 shape;
    std::vector<double> data;
  };

  Kind kind = Kind::Segments;
  Index m = 49;                     ///< Segments: the landmark count
  bool up_to = false;               ///< Segments: at most m, min(m, N) for a call of N tokens
  Index rows = 0, cols = 0, r = 0;  ///< Grid: the token image and the pooling size
  /// Given: copies of the caller's landmark tensors, shared between copies of the functor, so
  /// copying it stays cheap. k_given == q_given when one tensor was given for both.
  std::shared_ptr<const Values> q_given, k_given;

  /// 1-D adaptive average pooling into m segments [floor(i N / m), ceil((i + 1) N / m))
  /// (PyTorch adaptive_avg_pool1d); needs 1 <= m <= N. The default, with m = 49.
  static Landmarks segments(Index m) {
    Landmarks l;
    l.m = m;
    return l;
  }
  /// segments(min(m, N)) for a call of N tokens (N the smaller of q's and k's): fits any N, with
  /// every token its own landmark below m (make_attention's "soft-nystrom", m = 49).
  static Landmarks segments_up_to(Index m) {
    Landmarks l = segments(m);
    l.up_to = true;
    return l;
  }
  /// Tokens are a row-major rows x cols image (t = y cols + x), average-pooled with kernel =
  /// stride = r, floor mode: m = floor(rows / r) * floor(cols / r), row-major over the pooled grid.
  static Landmarks grid(Index rows, Index cols, Index r) {
    Landmarks l;
    l.kind = Kind::Grid;
    l.rows = rows;
    l.cols = cols;
    l.r = r;
    return l;
  }
  /// The caller's landmarks for q, [B, H, m, D], and for k, [B, H_kv, m, D] (H_kv: k's heads,
  /// H without grouped-query heads), as Tensor4 or TensorMap of any storage type. They are copied here: the caller's tensors need not outlive this call.
  template <class QL, class KL>
  static Landmarks given(const QL& q_landmarks, const KL& k_landmarks) {
    Landmarks l;
    l.kind = Kind::Given;
    l.q_given = copy(q_landmarks);
    // One tensor for both (the tied case): one copy, so SoftNystrom sees Qt == Kt.
    const bool same = static_cast<const void*>(&q_landmarks) == static_cast<const void*>(&k_landmarks);
    l.k_given = same ? l.q_given : copy(k_landmarks);
    return l;
  }

 private:
  template <class X>
  static std::shared_ptr<const Values> copy(const X& x) {
    static_assert(detail::is_rowmajor_rank4<X>::value,
                  "softfree::Landmarks::given: landmarks must be [B, H, m, D] row-major rank-4 tensors");
    auto v = std::make_shared<Values>();
    v->shape = shape_of(x);
    v->data.resize(static_cast<size_t>(x.size()));
    for (Index i = 0; i < x.size(); ++i) v->data[static_cast<size_t>(i)] = static_cast<double>(x.data()[i]);
    return v;
  }
};

namespace detail {
inline namespace SOFTFREE_ISA {

/// dst[c] += sum of rows [0, rows) of x (rows x d, contiguous), with packets along the row: the
/// landmark pooling (a column sum of a row-major block, four packets of columns at a time).
template <class Acc>
void add_row_sums(const Acc* x, Index rows, Index d, Acc* dst) {
  using P = Packet<Acc>;
  constexpr Index L = kLanes<Acc>;
  Index c = 0;
  for (; c + 4 * L <= d; c += 4 * L) {
    P a[4];
    for (int p = 0; p < 4; ++p) a[p] = ei::ploadu<P>(dst + c + p * L);
    for (Index r = 0; r < rows; ++r)
      for (int p = 0; p < 4; ++p) a[p] = ei::padd(a[p], ei::ploadu<P>(x + r * d + c + p * L));
    for (int p = 0; p < 4; ++p) ei::pstoreu(dst + c + p * L, a[p]);
  }
  for_each_packet<Acc>(d - c, [&](auto pk, Index i) {
    using Q = decltype(pk);
    Q a = ei::ploadu<Q>(dst + c + i);
    for (Index r = 0; r < rows; ++r) a = ei::padd(a, ei::ploadu<Q>(x + r * d + c + i));
    ei::pstoreu(dst + c + i, a);
  });
}

/// The m x d landmarks of one head's n tokens (src, storage type) into dst (m x d, accumulate
/// type). head: b * H + h, for given landmarks; for_q picks q's or k's.
template <class T, class Acc = accum_t<T>>
void pool_landmarks(const Landmarks& l, const T* src, Index n, Index d, Index head, bool for_q, TileLoader<T>& load,
                    Acc* dst) {
  if (l.kind == Landmarks::Kind::Given) {
    const Landmarks::Values& g = for_q ? *l.q_given : *l.k_given;
    const Index m = g.shape.N;
    const double* from = g.data.data() + head * m * d;
    for (Index i = 0; i < m * d; ++i) dst[i] = static_cast<Acc>(from[i]);
  } else if (l.kind == Landmarks::Kind::Segments) {
    for (Index i = 0; i < l.m; ++i) {
      const Index start = i * n / l.m, end = ((i + 1) * n + l.m - 1) / l.m;
      std::fill(dst + i * d, dst + (i + 1) * d, Acc(0));
      add_row_sums(load(src + start * d, end - start, d).data(), end - start, d, dst + i * d);
      for (Index c = 0; c < d; ++c) dst[i * d + c] /= static_cast<Acc>(end - start);
    }
  } else {
    const Index pcols = l.cols / l.r, width = pcols * l.r, m = (l.rows / l.r) * pcols;
    std::fill(dst, dst + m * d, Acc(0));
    for (Index y = 0; y < (l.rows / l.r) * l.r; ++y) {  // image rows of whole pooling windows
      const auto strip = load(src + y * l.cols * d, width, d);
      for (Index px = 0; px < pcols; ++px)
        add_row_sums(strip.data() + px * l.r * d, l.r, d, dst + ((y / l.r) * pcols + px) * d);
    }
    for (Index i = 0; i < m * d; ++i) dst[i] /= static_cast<Acc>(l.r * l.r);
  }
}

/// A prepared landmark set (LandmarkKernel::prepare), in caller-owned buffers of
/// LandmarkKernel::set_size and ::word_size: values (s l, l^T for the float product, half norms)
/// and, for the bf16 product, l^T as pair words.
template <class Acc>
struct LandmarkSet {
  Acc* values;
  PairWord* words;
};

/// Gaussian-kernel weights of tiles of tokens x (rows x d, rows <= kTile) against m fixed
/// landmarks l: W[j, i] = k(x_j, l_i), row j at W + j * ld(). A landmark set is prepared once and
/// then serves any number of tiles. Packets run along the landmarks in the product with the tile;
/// when m is a few lanes past whole packets (49 = 3 x 16 + 1) those last landmarks take a
/// dot product per token each (gemm_dot, then the weights with packets along the tokens) rather
/// than padding the whole product to 64 lanes. Pairs: the product on bf16 pairs (pairs.hpp), with
/// the landmarks rounded to bf16 and x already bf16 values (Bf16Loader), so the norms are those of
/// the operands and every exponent stays <= 0 up to float rounding.
template <class Acc, bool Pairs = false>
class LandmarkKernel {
  static constexpr Index L = kLanes<Acc>;
  // Landmarks covered by the packet product: whole packets, or m padded when that wastes less.
  static Index main_lanes(Index m) { return m % L <= L / 4 ? m / L * L : pad_to_packets<Acc>(m); }

 public:
  static constexpr Index kTile = 64;

  static Index set_size(Index m, Index d) { return m * d + (Pairs ? 0 : d * main_lanes(m)) + pad_to_packets<Acc>(m); }
  static Index word_size(Index m, Index d) { return Pairs ? pairs_of(d) * main_lanes(m) : 0; }
  static Index ld_for(Index m) { return pad_to_packets<Acc>(m); }

  LandmarkKernel(Index m, Index d)
      : m_(m), d_(d), ld_(ld_for(m)), ml_(main_lanes(m)), s_(gaussian_scale<Acc>(d)),
        xn_(static_cast<size_t>(pad_to_packets<Acc>(kTile)), Acc(0)), dots_(xn_.size()),
        w_(static_cast<size_t>(kTile * ld_)) {}

  /// Leading dimension of the weight tiles.
  Index ld() const { return ld_; }

  /// Prepares the landmarks l (m x d, row-major; for Pairs rounded to bf16 in place) into set.
  void prepare(Acc* l, const LandmarkSet<Acc>& set) const {
    if constexpr (Pairs) round_to_bf16(l, m_ * d_);
    Acc* ls = set.values;
    for (Index i = 0; i < m_ * d_; ++i) ls[i] = l[i] * s_;
    Acc* ln = ls + m_ * d_;
    if constexpr (Pairs) {  // l^T as [pairs of d][ml] words; padding landmarks are zeros
      std::fill(set.words, set.words + word_size(m_, d_), PairWord(0));
      pack_rows(l, std::min(m_, ml_), d_, d_, set.words, 1, ml_);
    } else {  // (s l)^T as [d][ml] values, then the norms
      Acc* lt = ln;
      for (Index c = 0; c < d_; ++c)
        for (Index i = 0; i < ml_; ++i) lt[c * ml_ + i] = i < m_ ? ls[i * d_ + c] : Acc(0);
      ln = lt + d_ * ml_;
    }
    std::fill(ln, ln + ld_, Acc(0));
    gaussian_norms(l, m_, d_, d_, s_, ln);
  }

  /// The weight tile of x (rows x d, contiguous) against a prepared set, written to dst (rows of
  /// ld()) or, without dst, to an internal tile valid until the next call.
  const Acc* weigh(const LandmarkSet<Acc>& set, const Acc* x, Index rows, Acc* dst = nullptr) {
    const Acc *ls = set.values, *ln = ls + m_ * d_ + (Pairs ? 0 : d_ * ml_);
    Acc *w = dst ? dst : w_.data(), *xn = xn_.data();
    gaussian_norms(x, rows, d_, d_, s_, xn);
    const GaussianWeightC<Acc> c{{w, ld_, xn, ln}};
    if constexpr (Pairs) {
      const Index dp = pairs_of(d_);
      PairWord* xw = reserve(xw_, rows * dp);
      pack_rows(x, rows, d_, d_, xw, dp);
      gemm_pairs<GeneralTiling>(rows, ml_, dp, PairA{xw, dp, 1}, PairRowsB<PairOps>{set.words, ml_},
                                ScaledC<GaussianWeightC<Acc>>{c, s_, Acc(1) / s_});
    } else {
      gemm<GeneralTiling>(rows, ml_, d_, StridedA<Acc>{x, d_, 1}, RowsB<Acc>{ls + m_ * d_, ml_}, c);
    }
    for (Index i = ml_; i < m_; ++i) {  // the landmarks past the packet product: packets along tokens
      Acc* dots = dots_.data();
      gemm_dot(rows, 1, d_, x, d_, ls + i * d_, d_, StoreC<Acc>{dots, 1});
      for_each_packet<Acc>(rows, [&](auto p, Index j) {
        using P = decltype(p);
        const P t = ei::psub(ei::psub(ei::ploadu<P>(dots + j), ei::ploadu<P>(xn + j)), ei::pset1<P>(ln[i]));
        ei::pstoreu(dots + j, gaussian_weight(t));
      });
      for (Index j = 0; j < rows; ++j) w[j * ld_ + i] = dots[j];
    }
    return w;
  }

 private:
  Index m_, d_, ld_, ml_;
  Acc s_;
  AlignedBuffer<Acc> xn_, dots_, w_;
  AlignedBuffer<PairWord> xw_;  // Pairs: the tile's rows as pair words
};

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
