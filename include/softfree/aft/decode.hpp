#pragma once
// Causal decoding of the biased AFT variants, AftFull::State and AftLocal::State: token t's output
// weighs the last `window` tokens t' by e^{w[t, t'] + K_t'} and every older one by e^{K_t'} (per
// channel; AftFull's window is its whole bias, so no token is older), each sum shifted by its
// channel's max. The older tokens are AftSimple's running sums (AftRunning), the window a ring of
// its keys and values: O(window D) per step, allocated once.
#include <algorithm>
#include <limits>
#include <memory>

#include "simple.hpp"

namespace softfree {
namespace detail {
inline namespace SOFTFREE_ISA {

/// The arithmetic of one decoding head, in the accumulate type.
template <class Acc>
class AftWindowRun {
 public:
  AftWindowRun(Index d, Index window)
      : d_(d), s_(window), ld_(pad_to_packets<Acc>(d)), old_(d), k_(static_cast<size_t>(window * ld_)),
        v_(k_.size()), m_(static_cast<size_t>(ld_)), num_(m_.size()), den_(m_.size()) {}
  Index steps() const { return t_; }
  void reset() {
    t_ = 0;
    old_.reset();
  }

  /// Token t = steps(): k, v, q (D values), w(t') its bias to key t' (t - window < t' <= t).
  template <class Bias>
  void step(const Acc* k, const Acc* v, const Acc* q, const Bias& w, Acc* y) {
    const Index t = t_, lo = std::max<Index>(0, t - s_ + 1);
    if (t >= s_) old_.push(row(k_, t - s_), row(v_, t - s_));  // token t - s leaves the window
    std::copy(k, k + d_, row(k_, t));
    std::copy(v, v + d_, row(v_, t));
    const bool old = old_.steps() > 0;
    for_each_packet<Acc>(d_, [&](auto p, Index c) {
      using P = decltype(p);
      const P log2e = ei::pset1<P>(kLog2e<Acc>);
      // Exponents relative to the window's max key mk, a = (K - mk) + w: formed where they are
      // small, so keys of magnitude 150 keep float accuracy (as the batch's e^{K - max K} e^w).
      P mk = ei::ploadu<P>(row(k_, lo) + c);
      for (Index tp = lo + 1; tp <= t; ++tp) mk = vmax(mk, ei::ploadu<P>(row(k_, tp) + c));
      const auto a = [&](Index tp) { return ei::padd(ei::psub(ei::ploadu<P>(row(k_, tp) + c), mk), ei::pset1<P>(w(tp))); };
      P shift = old ? ei::psub(ei::ploadu<P>(old_.max() + c), mk) : ei::pset1<P>(-std::numeric_limits<Acc>::infinity());
      for (Index tp = lo; tp <= t; ++tp) shift = vmax(shift, a(tp));
      P num = ei::pset1<P>(Acc(0)), den = num;
      if (old) {  // the older keys' sums are under their own max M: rescaled by e^{(M - mk) - shift}
        const P f = exp2_nonpositive(ei::pmul(ei::psub(ei::psub(ei::ploadu<P>(old_.max() + c), mk), shift), log2e));
        num = ei::pmul(ei::ploadu<P>(old_.num() + c), f);
        den = ei::pmul(ei::ploadu<P>(old_.den() + c), f);
      }
      for (Index tp = lo; tp <= t; ++tp) {
        const P e = exp2_nonpositive(ei::pmul(ei::psub(a(tp), shift), log2e));
        num = vmadd(e, ei::ploadu<P>(row(v_, tp) + c), num);
        den = ei::padd(den, e);
      }
      ei::pstoreu(y + c, scaled_sigmoid(ei::ploadu<P>(q + c), ei::pdiv(num, den)));
    });
    ++t_;
  }

 private:
  Acc* row(AlignedBuffer<Acc>& b, Index t) { return b.data() + (t % s_) * ld_; }

  Index d_, s_, ld_, t_ = 0;
  AftRunning<Acc> old_;
  AlignedBuffer<Acc> k_, v_, m_, num_, den_;
};

/// The public decoding state of a biased AFT variant F (AftFull, AftLocal): one head of F's bias
/// (Params::w(slot, t, t')), its window and length; without a bias, w = 0 and no length limit.
template <class T, class Params>
class AftWindowState {
  using Acc = accum_t<T>;

 public:
  using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;

  /// name: the variant's, for messages; window: Params' (ignored without a bias).
  AftWindowState(const char* name, std::shared_ptr<const Params> bias, Index window, Index d, Index head)
      : name_(name), bias_(std::move(bias)), d_(check_dim(name, d)), slot_(bias_ ? slot_of(name, head) : 0),
        limit_(bias_ ? bias_->table().rows : std::numeric_limits<Index>::max()),
        run_(d_, bias_ ? window : 1), buf_(static_cast<size_t>(4 * d_)) {}

  Index dim() const { return d_; }
  /// Tokens consumed so far.
  Index steps() const { return run_.steps(); }
  /// The most tokens it can take: the bias's N (unbounded without a bias).
  Index limit() const { return limit_; }
  /// Forget every token (start a new sequence).
  void reset() { run_.reset(); }

  /// Consumes token t (q, k, v: D values each) and writes y_t; past limit() it throws and changes
  /// nothing.
  void step(const T* q, const T* k, const T* v, T* y) {
    const Index t = run_.steps();
    if (t >= limit_)
      fail(name_, "step ", t, " is past the bias's N = ", limit_, " (the state holds N tokens at most)");
    Acc *kb = buf_.data(), *vb = kb + d_, *qb = vb + d_, *yb = qb + d_;
    convert(k, kb, d_);
    convert(v, vb, d_);
    convert(q, qb, d_);
    run_.step(kb, vb, qb, [&](Index tp) { return bias_ ? bias_->w(slot_, t, tp) : Acc(0); }, yb);
    convert_out(yb, y, d_);
  }
  /// As above, with every vector's size checked against D.
  void step(const Eigen::Ref<const Vector>& q, const Eigen::Ref<const Vector>& k, const Eigen::Ref<const Vector>& v,
            Eigen::Ref<Vector> y) {
    const char* names[] = {"q", "k", "v", "y"};
    const Index sizes[] = {q.size(), k.size(), v.size(), y.size()};
    for (int i = 0; i < 4; ++i)
      if (sizes[i] != d_) fail(name_, names[i], " has ", sizes[i], " values but the state has D = ", d_);
    step(q.data(), k.data(), v.data(), y.data());
  }

 private:
  static Index check_dim(const char* name, Index d) {
    if (d <= 0) fail(name, "D = ", d, ": must be positive");
    return d;
  }
  Index slot_of(const char* name, Index head) const {
    const Index slots = bias_->table().slots;
    if (head < 0 || (slots > 1 && head >= slots))
      fail(name, "head ", head, " but the bias has ", slots, " head slot(s)");
    return bias_->table().slot_for(head);
  }

  const char* name_;
  std::shared_ptr<const Params> bias_;
  Index d_, slot_, limit_;
  AftWindowRun<Acc> run_;
  AlignedBuffer<Acc> buf_;  // k, v, q and y in the accumulate type
};

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
