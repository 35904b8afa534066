#pragma once
// SoftGaussian: exact SOFT attention, O(N^2 D) (SPEC.md "SOFT"):
//   O[i] = sum_j exp(-||Q_i - K_j||^2 / (2 sqrt(D))) V_j,   no row normalisation.
// A flash attention (core/kernels/flash.hpp) whose score epilogue is the Gaussian exponent
// (soft/common.hpp): each score tile is one product whose accumulators start at the norm terms,
// one pass turns the tile into weights, and OT += V^T W takes them. Every exponent is <= 0, so
// no running max is needed. The kernel is translation invariant, so the products take Q and K
// about the keys' mean (flash.hpp's Centring): far from the origin, |Q_i|^2 + |K_j|^2 - 2 Q_i.K_j
// would cancel (relative error 0.23 at offset 1000 in float). Q may have another token count than
// K and V; the paper's tied case is k == q.
#include "../core/attention.hpp"
#include "../core/kernels/flash.hpp"
#include "../core/parallel.hpp"
#include "common.hpp"

namespace softfree {

template <class T = float>
class SoftGaussian : public Attention<SoftGaussian<T>, T> {
 public:
  static constexpr const char* kName = "SoftGaussian";
  static constexpr Capabilities kCapabilities{false, true, "SOFT attention has no causal mode"};

  bool causal = false;  ///< not supported: true is rejected
  Parallel parallel;

  void check_options(const Shape4&, const Shape4&) const {}
};

namespace detail {
inline namespace SOFTFREE_ISA {

/// The flash Score of SoftGaussian: the exponents from the product's epilogue, then the weights.
template <class Acc>
class GaussianScore {
  static constexpr Index kBlockQ = kFlashBlockQ<Acc>, kBlockK = kFlashBlockK;

 public:
  static constexpr bool kTranslationInvariant = true;  // k(x, y) = k(x - c, y - c)

  explicit GaussianScore(Index d)
      : d_(d), s_(gaussian_scale<Acc>(d)), qn_(static_cast<size_t>(kBlockQ)), kn_(static_cast<size_t>(kBlockK)) {}

  Acc query_scale() const { return s_; }
  void begin(const ConstMatrixMap<Acc>& q) {
    std::fill(qn_.begin(), qn_.end(), Acc(0));  // padding queries
    gaussian_norms(q.data(), q.rows(), d_, d_, s_, qn_.data());
  }
  GaussianExponentC<Acc> tile_output(Acc* st, Index bq, const Acc* kt, Index nj) {
    gaussian_norms(kt, nj, d_, d_, s_, kn_.data());
    return {st, bq, kn_.data(), qn_.data()};
  }
  Index weigh(Acc* st, Index bq, Index width, Index nj, Index, Acc*, Index) {
    gaussian_weights(st, nj, width, bq);
    return nj;
  }
  Index hidden(Index) const { return 0; }
  Acc row_factor(Index) const { return Acc(1); }

 private:
  Index d_;
  Acc s_;
  AlignedBuffer<Acc> qn_, kn_;
};

template <class T>
struct Kernel<SoftGaussian<T>> {
  static constexpr bool kBf16Products = true;
  static NoReport forward(const SoftGaussian<T>& f, const ConstView4<T>& q, const ConstView4<T>& k,
                          const ConstView4<T>& v, const View4<T>& out) {
    const Index d = shape_of(q).D, nk = shape_of(k).N;
    flash_attention(
        f.parallel, products_for(f).kind, q, k, v, out, [d] { return GaussianScore<accum_t<T>>(d); },
        [nk](GaussianScore<accum_t<T>>&, const WorkGrid::Item&) { return nk; });
    return {};
  }
};

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
