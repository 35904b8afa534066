#pragma once
// SoftmaxAttention: the baseline every speed-up is measured against.
//
// O = softmax(s Q K^T [+ mask]) V, as a flash attention (core/kernels/flash.hpp): a block of four
// packets of queries (64 with AVX-512 float), scaled and transposed once, meets tiles of 128
// keys; each score tile is one register-blocked product laid out keys x queries, and the online
// softmax (running max and sum per query, in the accumulate type) runs down packet columns with
// no horizontal reductions. The exponential is exp2_nonpositive of (score - max) log2 e: log2 e
// is applied after the max is subtracted, so its rounding scales with how far a score lies below
// the max, not with the score itself (logits of 1e4 keep float accuracy). No N x N matrix exists:
// memory is O(N D) plus one tile per thread.
//
// An optional additive bias [1 or B, 1 or H, Nq, Nk] (set_bias) is added to the scaled scores of
// each tile in natural-log units, before the masks and the online softmax; the running max starts
// at the lowest finite value, not -inf, so a row whose every key is masked (-inf bias, causal,
// padding) keeps exp(-inf - max) = 0 and a sum of 0, and gives zeros, never NaN.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <vector>

#include "core/attention.hpp"
#include "core/checks.hpp"
#include "core/kernels/flash.hpp"
#include "core/kernels/math.hpp"
#include "core/parallel.hpp"

namespace softfree {

/// Where the causal diagonal sits when Nq != Nk. top_left: key j is visible to query i iff j <= i.
/// bottom_right (the KV-cache convention: the queries are the last Nq of Nk positions): iff
/// j <= i + Nk - Nq, so with Nq > Nk the first Nq - Nk queries see no key and give zeros.
enum class CausalAlign { top_left, bottom_right };

template <class T = float>
class SoftmaxAttention : public Attention<SoftmaxAttention<T>, T> {
  using Acc = accum_t<T>;

 public:
  static constexpr const char* kName = "SoftmaxAttention";
  static constexpr Capabilities kCapabilities{true, true, ""};

  /// Score scale s; unset means 1 / sqrt(D). Must be positive and finite when set.
  std::optional<double> scale;
  /// Mask key j > query i (for Nq != Nk the diagonal is placed by causal_align).
  bool causal = false;
  /// The causal diagonal for Nq != Nk: top_left (j <= i, the default) or bottom_right
  /// (j <= i + Nk - Nq). The same for Nq == Nk.
  CausalAlign causal_align = CausalAlign::top_left;
  /// Optional key padding: key_lengths[b] keys of batch item b are valid (the rest masked).
  /// Empty means every key is valid. A query row with no valid key yields zeros.
  std::vector<Index> key_lengths;
  Parallel parallel;

  void check_options(const Shape4& sq, const Shape4& sk) const {
    if (scale) {
      detail::check_positive_finite(kName, "scale", *scale);
      if (*scale > static_cast<double>(std::numeric_limits<Acc>::max()))
        detail::fail(kName, "scale = ", *scale, ": exceeds the ", precision<Acc>::name,
                     " range the scores are computed in");
    }
    detail::check_key_lengths(kName, key_lengths, sq.B, sk.N);
    if (bias_) check_bias_shape(sq, sk);
  }

  /// An additive bias on the scaled scores, softmax(s Q K^T + bias) (relative-position biases,
  /// ALiBi, additive masks): dims [1 or B, 1 or H, Nq, Nk], broadcast over a dim of 1, in the
  /// accumulate type (float; double for double storage). It is copied (shared by copies of this
  /// functor), so the caller's tensor may go away; its shape is checked against q and k at each
  /// call. Entries must be finite or -inf (key masked for that query; a row with no unmasked key
  /// gives zeros): NaN or +inf throws softfree::invalid_argument here. A -inf entry weights its
  /// key by exactly 0, so a NaN or inf *value* of such a key still reaches the row (0 * inf);
  /// hide garbage keys with key_lengths or causal, which skip them.
  SoftmaxAttention& set_bias(const ConstView4<Acc>& bias) {
    const Acc* x = bias.data();
    for (Index i = 0; i < bias.size(); ++i)
      if (!detail::is_finite(static_cast<double>(x[i])) && !is_neg_inf(x[i]))
        detail::fail(kName, "bias[", i, "] = ", static_cast<double>(x[i]), ": entries must be finite or -inf (bias ",
                     shape_of(bias), ")");
    bias_ = std::make_shared<const Bias>(Bias{shape_of(bias), std::vector<Acc>(x, x + bias.size())});
    return *this;
  }
  SoftmaxAttention& set_bias(const Tensor4<Acc>& bias) { return set_bias(ConstView4<Acc>(bias.data(), bias.dimensions())); }
  void clear_bias() { bias_.reset(); }
  bool has_bias() const { return bias_ != nullptr; }
  /// The bias as held; empty when unset.
  std::optional<ConstView4<Acc>> bias() const {
    if (!bias_) return std::nullopt;
    const Shape4 s = bias_->shape;
    return ConstView4<Acc>(bias_->w.data(), s.B, s.H, s.N, s.D);
  }

  /// Row r0 of the bias of item (b, h) (rows of Nk); nullptr without a bias.
  const Acc* bias_rows(Index b, Index h, Index r0) const {
    if (!bias_) return nullptr;
    const Shape4 s = bias_->shape;
    return bias_->w.data() + ((s.B > 1 ? b : 0) * s.H + (s.H > 1 ? h : 0)) * s.N * s.D + r0 * s.D;
  }

  /// The score scale a call with head dim d uses.
  Acc scale_for(Index d) const {
    return static_cast<Acc>(scale ? *scale : 1.0 / std::sqrt(static_cast<double>(d)));
  }

 private:
  /// -inf by its bits: a comparison with an infinity may be folded away under -ffast-math.
  static bool is_neg_inf(Acc x) {
    const double d = static_cast<double>(x);
    std::uint64_t bits;
    std::memcpy(&bits, &d, sizeof bits);
    return bits == 0xfff0000000000000ull;
  }

  void check_bias_shape(const Shape4& sq, const Shape4& sk) const {
    const Shape4 s = bias_->shape;
    if ((s.B != 1 && s.B != sq.B) || (s.H != 1 && s.H != sq.H) || s.N != sq.N || s.D != sk.N)
      detail::fail(kName, "bias has shape ", s, " but q ", sq, " and k ", sk, " need [1 or ", sq.B, ", 1 or ", sq.H,
                   ", ", sq.N, ", ", sk.N, "] ([B or 1, H or 1, Nq, Nk])");
  }

  // The bias in a std::vector, never an Eigen object, whose allocator differs with -march (as the
  // AFT tables: core/kernels/isa.hpp).
  struct Bias {
    Shape4 shape;
    std::vector<Acc> w;
  };
  std::shared_ptr<const Bias> bias_;
};

namespace detail {
inline namespace SOFTFREE_ISA {

/// The flash Score of SoftmaxAttention: the bias, causal masking and the online softmax.
template <class Acc>
class SoftmaxScore {
  using P = Packet<Acc>;
  static constexpr Index kBlockQ = kFlashBlockQ<Acc>, L = kLanes<Acc>;
  static constexpr int NQ = static_cast<int>(kBlockQ / L);

 public:
  /// Causal with the diagonal moved by `offset`: key j visible to query i iff j <= i + offset.
  SoftmaxScore(Acc scale, bool causal, Index offset)
      : s_(scale), causal_(causal), offset_(offset), max_(static_cast<size_t>(kBlockQ)), sum_(max_.size()) {}

  /// Readies the block of `rows` queries from row i0; bias (or nullptr) is its row i0, rows of ld.
  void set_block(Index i0, Index rows, const Acc* bias, Index ld) {
    i0_ = i0, rows_ = rows, bias_ = bias, ld_ = ld;
  }

  Acc query_scale() const { return s_; }
  /// The running max starts at the lowest finite value, not -inf: a column whose keys are all
  /// masked so far then gets exp2(-inf - lowest) = 0 and alpha = 1, where -inf - (-inf) is NaN.
  void begin(const ConstMatrixMap<Acc>&) {
    std::fill(max_.begin(), max_.end(), std::numeric_limits<Acc>::lowest());
    std::fill(sum_.begin(), sum_.end(), Acc(0));
  }
  StoreC<Acc> tile_output(Acc* st, Index bq, const Acc*, Index) { return {st, bq}; }

  /// Adds the bias, masks the causal diagonal, then the online softmax down each query column of
  /// the first `width` (the block's packets of queries). Returns the keys every query of the
  /// block sees.
  Index weigh(Acc* st, Index bq, Index width, Index nj, Index j0, Acc* ot, Index d) {
    if (bias_) add_bias(st, bq, nj, j0);
    const Index dense = causal_ ? std::clamp<Index>(i0_ + offset_ + 1 - j0, 0, nj) : nj;
    for (Index j = dense; j < nj; ++j) std::fill(st + j * bq, st + j * bq + hidden(j0 + j), -kInf);
    static_assert(NQ == 4, "a flash block is four packets of queries");
    switch (width / L) {
      case 1: online<1>(st, bq, nj, ot, d); break;
      case 2: online<2>(st, bq, nj, ot, d); break;
      case 3: online<3>(st, bq, nj, ot, d); break;
      default: online<NQ>(st, bq, nj, ot, d); break;
    }
    return dense;
  }

  /// Causal: key j is hidden from queries i0 + i < j - offset, the first hidden(j) columns.
  Index hidden(Index key) const {
    return causal_ ? std::clamp<Index>(key - offset_ - i0_, 0, kBlockQ) : Index(0);
  }

  Acc row_factor(Index r) const {
    const Acc l = sum_[static_cast<size_t>(r)];
    return l > 0 ? Acc(1) / l : Acc(0);  // a row with no visible key yields zeros
  }

 private:
  static constexpr Acc kInf = std::numeric_limits<Acc>::infinity();

  /// The online softmax on NP packets of query columns: the running max m, the weights
  /// e^(score - m) in place, the running sum, and the accumulator rescaled by e^(m_old - m).
  /// Rows outer, packets inner: NP independent chains.
  template <int NP>
  void online(Acc* st, Index bq, Index nj, Acc* ot, Index d) {
    const P log2e = ei::pset1<P>(kLog2e<Acc>);
    P m[NP], sum[NP], alpha[NP];
    for (int p = 0; p < NP; ++p) m[p] = ei::pload<P>(max_.data() + p * L);
    for (Index j = 0; j < nj; ++j)
      for (int p = 0; p < NP; ++p) m[p] = vmax(m[p], ei::pload<P>(st + j * bq + p * L));
    for (int p = 0; p < NP; ++p) {
      alpha[p] = exp2_nonpositive(ei::pmul(ei::psub(ei::pload<P>(max_.data() + p * L), m[p]), log2e));  // 0 at first (1 while all masked)
      sum[p] = ei::pset1<P>(Acc(0));
    }
    for (Index j = 0; j < nj; ++j)
      for (int p = 0; p < NP; ++p) {
        const P e = exp2_nonpositive(ei::pmul(ei::psub(ei::pload<P>(st + j * bq + p * L), m[p]), log2e));
        ei::pstore(st + j * bq + p * L, e);
        sum[p] = ei::padd(sum[p], e);
      }
    for (int p = 0; p < NP; ++p) {
      ei::pstore(sum_.data() + p * L, vmadd(ei::pload<P>(sum_.data() + p * L), alpha[p], sum[p]));
      ei::pstore(max_.data() + p * L, m[p]);
    }
    for (Index c = 0; c < d; ++c)
      for (int p = 0; p < NP; ++p) ei::pstore(ot + c * bq + p * L, ei::pmul(ei::pload<P>(ot + c * bq + p * L), alpha[p]));
  }

  /// ST(j, i) += bias(i, j0 + j) for the block's real queries, a bias row at a time (read along
  /// its keys; the tile is in L1). A register transpose of L x L blocks (Eigen's ptranspose) ran
  /// faster but inlines AVX-512 intrinsics that GCC 12 warns about in any -march=native consumer
  /// (bug 105593), and the add is a small part of a tile next to its two products.
  void add_bias(Acc* st, Index bq, Index nj, Index j0) const {
    for (Index i = 0; i < rows_; ++i) {
      const Acc* b = bias_ + i * ld_ + j0;
      for (Index j = 0; j < nj; ++j) st[j * bq + i] += b[j];
    }
  }

  Acc s_;
  bool causal_;
  Index offset_, i0_ = 0, rows_ = 0, ld_ = 0;
  const Acc* bias_ = nullptr;
  AlignedBuffer<Acc> max_, sum_;
};

template <class T>
struct Kernel<SoftmaxAttention<T>> {
  static constexpr bool kBf16Products = true;
  static NoReport forward(const SoftmaxAttention<T>& f, const ConstView4<T>& q, const ConstView4<T>& k,
                          const ConstView4<T>& v, const View4<T>& out) {
    using Score = SoftmaxScore<accum_t<T>>;
    const Index nk = shape_of(k).N;
    const auto s = f.scale_for(shape_of(q).D);
    const Index offset = f.causal_align == CausalAlign::bottom_right ? nk - shape_of(q).N : 0;
    flash_attention(
        f.parallel, products_for(f).kind, q, k, v, out, [&] { return Score(s, f.causal, offset); },
        [&](Score& score, const WorkGrid::Item& it) {
          score.set_block(it.r0, it.rows, f.bias_rows(it.b, it.h, it.r0), nk);
          const Index key_end = f.key_lengths.empty() ? nk : f.key_lengths[static_cast<size_t>(it.b)];
          return f.causal ? std::clamp<Index>(it.r0 + it.rows + offset, 0, key_end) : key_end;
        });
    return {};
  }
};

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
