#pragma once
// SoftmaxKVCache: causal SoftmaxAttention decoded token by token (or a chunk at a time) against a
// cache of one head's keys and values. Query r of a chunk of m sits at position size() - m + r
// and sees the keys at or before it, as row size() - m + r of the causal batch call over the same
// tokens. A chunk runs the batch path's own flash block (core/kernels/flash.hpp) on the cache, so
// its rows are the batch rows, bitwise (the same key tiles, online softmax and products). One query
// with exact products takes a row kernel instead (the flash block's packets run along queries, so
// one query would use 1 lane in 16): packets along the keys, the block's arithmetic per query, so
// again the batch rows bitwise.
#include <algorithm>
#include <limits>

#include "core/kernels/flash.hpp"
#include "softmax.hpp"

namespace softfree {

namespace detail {
inline namespace SOFTFREE_ISA {

/// One query against n keys and values, by the flash block's arithmetic for one query column, so
/// its row is the batch row bitwise: qs the scaled query (d values, scaled as the block scales its
/// queries), kt the keys transposed (d rows of ldk >= n rounded up to a packet), v the values (rows
/// of d, readable to a packet past the last). Scores are products over d in order with packets
/// along the keys; then per 128-key tile the running max, weights, sum and rescaled accumulator
/// with the block's operations (the per-query scalars held in whole packets, so each lane op is
/// the block's); y (d values, a packet past them written too) = acc / sum.
template <class Acc>
void softmax_row(const Acc* qs, const Acc* kt, Index ldk, const Acc* v, Index n, Index d, Acc* scores, Acc* y) {
  using P = Packet<Acc>;
  const Index wide = pad_to_packets<Acc>(n), dp = pad_to_packets<Acc>(d);  // whole packets only
  gemm<Tiling<8, 1>>(1, wide, d, StridedA<Acc>{qs, 0, 1}, RowsB<Acc>{kt, ldk}, StoreC<Acc>{scores, wide});
  const P log2e = ei::pset1<P>(kLog2e<Acc>);
  P m = ei::pset1<P>(std::numeric_limits<Acc>::lowest()), sum = ei::pset1<P>(Acc(0));  // as SoftmaxScore::begin
  std::fill(y, y + dp, Acc(0));
  for (Index j0 = 0; j0 < n; j0 += kFlashBlockK) {
    const Index nj = std::min(kFlashBlockK, n - j0);
    Acc* e = scores + j0;
    P mt = m;
    for (Index j = 0; j < nj; ++j) mt = vmax(mt, ei::pset1<P>(e[j]));
    const P alpha = exp2_nonpositive(ei::pmul(ei::psub(m, mt), log2e));
    for_each_packet<Acc>(pad_to_packets<Acc>(nj), [&](auto, Index j) {
      ei::pstoreu(e + j, exp2_nonpositive(ei::pmul(ei::psub(ei::ploadu<P>(e + j), mt), log2e)));
    });
    Acc tile = 0;
    for (Index j = 0; j < nj; ++j) tile += e[j];  // in key order, as each query lane of the block
    sum = vmadd(sum, alpha, ei::pset1<P>(tile));
    for (Index c = 0; c < dp; c += kLanes<Acc>) ei::pstoreu(y + c, ei::pmul(ei::ploadu<P>(y + c), alpha));
    gemm<Tiling<8, 1>>(1, dp, nj, StridedA<Acc>{e, 0, 1}, RowsB<Acc>{v + j0 * d, d}, AddC<Acc>{y, dp});
    m = mt;
  }
  alignas(kAlignBytes) Acc l[kLanes<Acc>];
  ei::pstore(l, sum);
  const Acc f = l[0] > 0 ? Acc(1) / l[0] : Acc(0);
  for (Index c = 0; c < d; ++c) y[c] = y[c] * f;
}

}  // namespace SOFTFREE_ISA
}  // namespace detail

inline namespace SOFTFREE_ISA {

/// The decoding state of causal SoftmaxAttention for one head of dimension D: keys and values in
/// the accumulate type, appended up to a reserved capacity. Calls on one cache are not safe from
/// several threads at once (each decoding stream holds its own cache).
template <class T = float>
class SoftmaxKVCache {
  using Acc = accum_t<T>;
  using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;
  using Accum = detail::FlashBlock<detail::AccumProducts<Acc>>;
  // The bf16 pair block where the build has the pairs (else a second, unused accumulate block).
  using Pairs = std::conditional_t<detail::kHavePairOps && std::is_same<Acc, float>::value,
                                   detail::FlashBlock<detail::PairProducts<float, detail::PairOps>>, Accum>;
  static constexpr Index kBlockQ = Accum::kBlockQ;
  static constexpr const char* kName = "SoftmaxKVCache";

 public:
  /// A cache for a head of dimension d, with attn's scale and math (its causal, causal_align,
  /// key_lengths and parallel do not apply: the cache is causal, bottom-right, and serial; a bias
  /// is rejected).
  SoftmaxKVCache(const SoftmaxAttention<T>& attn, Index d)
      : d_(check_dim(d)), scale_(checked_scale(attn, d)), math_(attn.math), choice_(detail::products_for(attn)),
        kind_(choice_.kind), score_(scale_, true, 0) {}
  explicit SoftmaxKVCache(Index d) : SoftmaxKVCache(SoftmaxAttention<T>{}, d) {}

  Index dim() const { return d_; }
  /// The product backend its attends run, and why (as SoftmaxAttention::backend()).
  BackendInfo backend() const { return detail::describe<T>(choice_, math_, kName); }
  /// Tokens in the cache.
  Index size() const { return len_; }
  /// Tokens it holds without allocating.
  Index capacity() const { return cap_; }

  /// Room for n tokens: no call allocates after this while size() stays within n.
  void reserve(Index n) {
    if (n < 0) detail::fail(kName, "reserve(", n, "): must be >= 0");
    if (n <= cap_) return;
    const Index ldk = detail::pad_to_packets<Acc>(n), dp = detail::pad_to_packets<Acc>(d_);
    detail::AlignedBuffer<Acc> kt(static_cast<size_t>(d_ * ldk), Acc(0));
    for (Index c = 0; c < d_; ++c)
      std::copy(kt_.data() + c * ldk_, kt_.data() + c * ldk_ + len_, kt.data() + c * ldk);
    kt_.swap(kt);
    ldk_ = ldk;
    k_.resize(static_cast<size_t>(n * d_));
    v_.resize(static_cast<size_t>(n * d_ + dp));  // the row kernel reads a packet past the last row
    scores_.resize(static_cast<size_t>(ldk));
    cap_ = n;
    warm();
  }
  /// Forgets every token (a new sequence); the capacity stays.
  void clear() {
    len_ = 0;
    rebind(0);  // a later bind of any length re-packs: no pairs left from the last sequence
  }

  /// Keeps the first n tokens (n <= size()): a rollback, e.g. of speculated tokens.
  void truncate(Index n) {
    if (n < 0 || n > len_) detail::fail(kName, "truncate(", n, ") at size ", len_, ": must be in [0, size()]");
    len_ = n;
    rebind(0);  // the tokens appended next replace others: nothing packed may be reused
  }

  /// Appends `tokens` keys and values (rows of D values) after the last; beyond capacity() it
  /// throws and changes nothing.
  void append(const T* k, const T* v, Index tokens = 1) {
    if (tokens < 1 || tokens > cap_ - len_)
      detail::fail(kName, "append of ", tokens, " token(s) at size ", len_, " with capacity ", cap_,
                   ": must be >= 1 and fit the capacity (reserve() first)");
    Acc* kr = k_.data() + len_ * d_;
    detail::convert(k, kr, tokens * d_);
    detail::convert(v, v_.data() + len_ * d_, tokens * d_);
    for (Index t = 0; t < tokens; ++t)
      for (Index c = 0; c < d_; ++c) kt_[static_cast<size_t>(c * ldk_ + len_ + t)] = kr[t * d_ + c];
    len_ += tokens;
  }
  /// One token, its sizes checked against D.
  void append(const Eigen::Ref<const Vector>& k, const Eigen::Ref<const Vector>& v) {
    check_size("k", k.size());
    check_size("v", v.size());
    append(k.data(), v.data(), 1);
  }

  /// y (rows of D) for the last `queries` positions, q their queries (rows of D).
  void attend(const T* q, T* y, Index queries = 1) {
    if (queries < 1 || queries > len_)
      detail::fail(kName, "attend of ", queries, " queries at size ", len_, ": must be in [1, size()]");
    if (queries == 1 && kind_ == detail::Products::accum) return attend_row(q, y);
    detail::with_products<T>(kind_, [&](auto pairs) {
      if constexpr (decltype(pairs)::value)
        run(pairs_, q, y, queries);
      else
        run(accum_, q, y, queries);
    });
  }
  /// One query (the last token's), its sizes checked against D.
  void attend(const Eigen::Ref<const Vector>& q, Eigen::Ref<Vector> y) {
    check_size("q", q.size());
    check_size("y", y.size());
    attend(q.data(), y.data(), 1);
  }

 private:
  static Index check_dim(Index d) {
    if (d <= 0) detail::fail(kName, "D = ", d, ": must be positive");
    return d;
  }
  static Acc checked_scale(const SoftmaxAttention<T>& attn, Index d) {
    if (attn.scale) detail::check_positive_finite(kName, "scale", *attn.scale);
    if (attn.has_bias()) detail::fail(kName, "attn has a bias: the cache applies none (decode with a bias is not supported)");
    detail::check_math<T>(kName, attn.math);
    return attn.scale_for(d);
  }
  void check_size(const char* name, Index n) const {
    if (n != d_) detail::fail(kName, name, " has ", n, " values but the cache has D = ", d_);
  }

  // The batch path's blocks of queries, each against the keys up to its last query.
  template <class Block>
  void run(Block& block, const T* q, T* y, Index queries) {
    block.bind(k_.data(), v_.data(), len_, d_);
    for (Index r0 = 0; r0 < queries; r0 += kBlockQ) {
      const Index rows = std::min(kBlockQ, queries - r0);
      detail::convert(q + r0 * d_, next_queries(), rows * d_);
      run_block(block, rows, len_ - queries + r0);
      detail::convert_out(ybuf_.data(), y + r0 * d_, rows * d_);
    }
  }
  // One query against every key (the row kernel), through the accumulate type.
  void attend_row(const T* q, T* y) {
    Acc* qs = qbuf_.data();
    detail::convert(q, qs, d_);
    for (Index c = 0; c < d_; ++c) qs[c] = qs[c] * scale_;
    detail::softmax_row(qs, kt_.data(), ldk_, v_.data(), len_, d_, scores_.data(), ybuf_.data());
    detail::convert_out(ybuf_.data(), y, d_);
  }

  // The block's loaders keep the last queries they converted, keyed on their address and size
  // (a batch call never repeats one), so consecutive blocks take alternate halves of qbuf_.
  Acc* next_queries() {
    flip_ = !flip_;
    return qbuf_.data() + (flip_ ? kBlockQ * d_ : 0);
  }
  // The rows queries last written by next_queries(), from position i0, into ybuf_.
  template <class Block>
  void run_block(Block& block, Index rows, Index i0) {
    score_.set_block(i0, rows, nullptr, 0);
    block.run(score_, qbuf_.data() + (flip_ ? kBlockQ * d_ : 0), rows, i0 + rows, tile_, ybuf_.data());
  }
  void rebind(Index n) {
    accum_.bind(k_.data(), v_.data(), n, d_);
    pairs_.bind(k_.data(), v_.data(), n, d_);
  }
  // Sizes every buffer for the capacity (the blocks' tiles, the packed pairs), so that appends
  // and attends within it never allocate: one query at the last position over the whole capacity
  // (zeros past size(): harmless), then every bind forgotten.
  void warm() {
    qbuf_.assign(static_cast<size_t>(2 * kBlockQ * d_), Acc(0));
    ybuf_.assign(static_cast<size_t>(kBlockQ * d_ + detail::pad_to_packets<Acc>(d_)), Acc(0));
    accum_.bind(k_.data(), v_.data(), cap_, d_);
    next_queries();
    run_block(accum_, 1, cap_ - 1);
    if (detail::kHavePairOps && std::is_same<Acc, float>::value) {
      pairs_.bind(k_.data(), v_.data(), cap_, d_);
      next_queries();
      run_block(pairs_, 1, cap_ - 1);
    }
    rebind(0);
  }

  Index d_, cap_ = 0, len_ = 0, ldk_ = 0;
  bool flip_ = false;
  Acc scale_;
  Math math_;
  detail::ProductChoice choice_;
  detail::Products kind_;
  // Keys twice: rows for the flash block, transposed (d rows of ldk_) for the row kernel.
  detail::AlignedBuffer<Acc> k_, kt_, v_, qbuf_, ybuf_, scores_;
  detail::SoftmaxScore<Acc> score_;
  Accum accum_;
  Pairs pairs_;
  detail::OutputTile<Acc> tile_;
};

}  // namespace SOFTFREE_ISA
}  // namespace softfree
