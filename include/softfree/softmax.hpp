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
#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "core/attention.hpp"
#include "core/kernels/flash.hpp"
#include "core/kernels/math.hpp"
#include "core/parallel.hpp"

namespace softfree {

template <class T = float>
class SoftmaxAttention : public Attention<SoftmaxAttention<T>, T> {
  using Acc = accum_t<T>;

 public:
  static constexpr const char* kName = "SoftmaxAttention";
  static constexpr Capabilities kCapabilities{true, true, ""};

  /// Score scale s; unset means 1 / sqrt(D). Must be positive and finite when set.
  std::optional<double> scale;
  /// Mask key j > query i (for cross-attention too: key j is visible to query i iff j <= i).
  bool causal = false;
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
  }

  /// The score scale a call with head dim d uses.
  Acc scale_for(Index d) const {
    return static_cast<Acc>(scale ? *scale : 1.0 / std::sqrt(static_cast<double>(d)));
  }
};

namespace detail {
inline namespace SOFTFREE_ISA {

/// The flash Score of SoftmaxAttention: causal masking and the online softmax.
template <class Acc>
class SoftmaxScore {
  using P = Packet<Acc>;
  static constexpr Index kBlockQ = kFlashBlockQ<Acc>, L = kLanes<Acc>;
  static constexpr int NQ = static_cast<int>(kBlockQ / L);

 public:
  SoftmaxScore(Acc scale, bool causal)
      : s_(scale), causal_(causal), max_(static_cast<size_t>(kBlockQ)), sum_(max_.size()) {}

  /// Readies the block of queries from row i0.
  void set_block(Index i0) { i0_ = i0; }

  Acc query_scale() const { return s_; }
  void begin(const ConstMatrixMap<Acc>&) {
    std::fill(max_.begin(), max_.end(), -std::numeric_limits<Acc>::infinity());
    std::fill(sum_.begin(), sum_.end(), Acc(0));
  }
  StoreC<Acc> tile_output(Acc* st, Index bq, const Acc*, Index) { return {st, bq}; }

  /// Masks the causal diagonal, then the online softmax down each query column of the first
  /// `width` (the block's packets of queries). Key 0 is visible to every query, so after the first
  /// tile every running max is finite. Returns the keys every query of the block sees.
  Index weigh(Acc* st, Index bq, Index width, Index nj, Index j0, Acc* ot, Index d) {
    const Index dense = causal_ ? std::clamp<Index>(i0_ + 1 - j0, 0, nj) : nj;
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

  /// Causal: key j is hidden from queries i0 + i < j, the first hidden(j) columns.
  Index hidden(Index key) const { return causal_ ? std::clamp<Index>(key - i0_, 0, kBlockQ) : Index(0); }

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
      alpha[p] = exp2_nonpositive(ei::pmul(ei::psub(ei::pload<P>(max_.data() + p * L), m[p]), log2e));  // 0 at first
      sum[p] = ei::pset1<P>(Acc(0));
    }
    for (Index j = 0; j < nj; ++j)
      for (int p = 0; p < NP; ++p) {
        const P e = exp2_nonpositive(ei::pmul(ei::psub(ei::pload<P>(st + j * bq + p * L), m[p]), log2e));
        ei::pstore(st + j * bq + p * L, e);
        sum[p] = ei::padd(sum[p], e);
      }
    for (int p = 0; p < NP; ++p) {
      ei::pstore(sum_.data() + p * L, ei::pmadd(ei::pload<P>(sum_.data() + p * L), alpha[p], sum[p]));
      ei::pstore(max_.data() + p * L, m[p]);
    }
    for (Index c = 0; c < d; ++c)
      for (int p = 0; p < NP; ++p) ei::pstore(ot + c * bq + p * L, ei::pmul(ei::pload<P>(ot + c * bq + p * L), alpha[p]));
  }

  Acc s_;
  bool causal_;
  Index i0_ = 0;
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
    flash_attention(
        f.parallel, products_for(f).kind, q, k, v, out, [&] { return Score(s, f.causal); },
        [&](Score& score, const WorkGrid::Item& it) {
          score.set_block(it.r0);
          const Index key_end = f.key_lengths.empty() ? nk : f.key_lengths[static_cast<size_t>(it.b)];
          return f.causal ? std::min(key_end, it.r0 + it.rows) : key_end;
        });
    return {};
  }
};

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
