#pragma once
// What every AFT variant (Zhai et al., 2021) shares. Each channel c of each head is independent:
//   Y[t, c] = sigma(Q[t, c]) * sum_t' e^{K[t', c] + w[t, t']} V[t', c] / sum_t' e^{K[t', c] + w[t, t']}
// (t' <= t when causal). One layout serves all: per (b, h), X = [e^{K - m} * V, e^{K - m}] (N x 2D
// side by side, rows padded to whole packets) with m a per-channel max of K, so numerator and
// denominator come out of the same products and the shift m cancels in their ratio.
//
// Stability: every exponent is shifted by a maximum, so each factor is <= 1 and nothing
// overflows. A denominator can still be tiny when a row's large terms all carry very negative
// biases, or causally when a block's max comes from later rows: those (row, channel) elements are
// recomputed exactly with their own shift (aft_exact_ratio), so results are correct for any
// finite input and the fast path pays nothing on ordinary data.
//
// Learned parameters (AftFull's and AftLocal's bias, AftConv's kernel: all are the bias w) are set
// and read the same way on every variant (AftBias), and an unset bias means w = 0 everywhere:
// the result then equals AftSimple's.
#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "../core/checks.hpp"
#include "../core/error.hpp"
#include "../core/kernels/convert.hpp"
#include "../core/kernels/gemm.hpp"
#include "../core/kernels/math.hpp"

namespace softfree {

/// Learned AFT parameters as [heads, rows, cols], row-major, in the accumulate type of T:
/// heads = 1 (shared by every head) or H_kv, k's heads (one per head; with grouped-query heads,
/// one per kv head, shared by its query heads). AftFull / AftLocal biases are N x N
/// (row = query t, column = key t'); AftConv's are kh x kw kernels.
template <class T>
using AftWeights = Eigen::Tensor<accum_t<T>, 3, Eigen::RowMajor>;
/// Read-only view of the weights a functor holds (bias()).
template <class T>
using AftWeightsView = Eigen::TensorMap<const AftWeights<T>>;

inline namespace SOFTFREE_ISA {

/// The paper's factorised AftFull bias w = U V^T (U, V: N x d'). Throws softfree::invalid_argument
/// unless U and V have the same, non-empty shape.
template <class DerivedU, class DerivedV>
RowMatrix<typename DerivedU::Scalar> aft_factorized_bias(const Eigen::MatrixBase<DerivedU>& u,
                                                         const Eigen::MatrixBase<DerivedV>& v) {
  if (u.rows() <= 0 || u.cols() <= 0 || u.rows() != v.rows() || u.cols() != v.cols())
    detail::fail("aft_factorized_bias", "u is ", u.rows(), " x ", u.cols(), " and v is ", v.rows(), " x ", v.cols(),
                 ": both must be N x d' with the same, positive N and d'");
  return u * v.transpose();
}

/// The paper's AftConv re-parameterisation, per head: w = gamma * (w_raw - mean) / std + beta with
/// the population std over that head's kh x kw entries (std = 0 leaves beta). gamma = beta = 0
/// gives a zero kernel, i.e. AftSimple.
template <class Acc>
Eigen::Tensor<Acc, 3, Eigen::RowMajor> aft_reparameterize(const Eigen::Tensor<Acc, 3, Eigen::RowMajor>& raw,
                                                          double gamma, double beta) {
  const auto& d = raw.dimensions();
  Eigen::Tensor<Acc, 3, Eigen::RowMajor> w(d[0], d[1], d[2]);
  const Index per = d[1] * d[2];
  for (Index h = 0; h < d[0]; ++h) {
    double mean = 0, var = 0;
    for (Index e = 0; e < per; ++e) mean += static_cast<double>(raw.data()[h * per + e]) / static_cast<double>(per);
    for (Index e = 0; e < per; ++e) {
      const double x = static_cast<double>(raw.data()[h * per + e]) - mean;
      var += x * x / static_cast<double>(per);
    }
    const double sd = std::sqrt(var);
    for (Index e = 0; e < per; ++e)
      w.data()[h * per + e] =
          static_cast<Acc>((sd > 0 ? gamma * (static_cast<double>(raw.data()[h * per + e]) - mean) / sd : 0.0) + beta);
  }
  return w;
}

}  // namespace SOFTFREE_ISA

namespace detail {

/// Learned weights [slots, rows, cols] as a functor holds them (shared by its copies), in a
/// std::vector: never in an Eigen object, whose allocator differs with -march (core/kernels/isa.hpp).
template <class Acc>
struct AftTable {
  Index slots = 0, rows = 0, cols = 0;
  std::vector<Acc> w;

  AftTable(Index s, Index r, Index c) : slots(s), rows(r), cols(c), w(static_cast<size_t>(s * r * c), Acc(0)) {}
  explicit AftTable(const Eigen::Tensor<Acc, 3, Eigen::RowMajor>& t)
      : slots(t.dimension(0)), rows(t.dimension(1)), cols(t.dimension(2)), w(t.data(), t.data() + t.size()) {}
  template <class Derived>
  static AftTable from_matrix(const Eigen::MatrixBase<Derived>& m) {
    AftTable t(1, m.rows(), m.cols());
    for (Index r = 0; r < m.rows(); ++r)
      for (Index c = 0; c < m.cols(); ++c) t(0, r, c) = static_cast<Acc>(m(r, c));
    return t;
  }

  Acc& operator()(Index s, Index r, Index c) { return w[static_cast<size_t>((s * rows + r) * cols + c)]; }
  Acc operator()(Index s, Index r, Index c) const { return w[static_cast<size_t>((s * rows + r) * cols + c)]; }
  /// The slot head h reads: 0 when shared.
  Index slot_for(Index h) const { return slots == 1 ? 0 : h; }
  ConstMatrixMap<Acc> slot(Index s) const { return ConstMatrixMap<Acc>(w.data() + s * rows * cols, rows, cols); }
  Eigen::TensorMap<const Eigen::Tensor<Acc, 3, Eigen::RowMajor>> view() const { return {w.data(), slots, rows, cols}; }
};

/// Validates learned weights: positive dimensions, every entry finite.
template <class Acc>
void aft_check_weights(const char* where, const char* name, const AftTable<Acc>& t) {
  if (t.slots <= 0 || t.rows <= 0 || t.cols <= 0)
    fail(where, name, " has shape [", t.slots, ", ", t.rows, ", ", t.cols, "]: every dimension must be positive");
  for (size_t i = 0; i < t.w.size(); ++i)
    if (!is_finite(static_cast<double>(t.w[i])))
      fail(where, name, " (shape [", t.slots, ", ", t.rows, ", ", t.cols, "]) has a non-finite entry ", t.w[i],
           " at flat index ", i);
}

/// Weights must have 1 slot (shared) or one per head of k and v: the weighted average belongs to
/// a kv head, and with grouped-query heads its query heads share it (each gated by its own q).
inline void aft_check_heads(const char* where, const char* name, Index slots, const Shape4& q, const Shape4& k) {
  if (slots == 1 || slots == k.H) return;
  if (k.H == q.H) fail(where, name, " has ", slots, " head slots but the input has H = ", q.H, ": give 1 (shared) or H");
  fail(where, name, " has ", slots, " head slots but k and v have H_kv = ", k.H, " heads (q: H = ", q.H,
       "): give 1 (shared) or H_kv, one per kv head, shared by its query heads");
}

/// The learned-bias API of every AFT variant. Derived provides
/// `std::shared_ptr<const Params> make_bias(AftTable<Acc>) const` (validates, builds what its
/// kernel reads) and Params provides `const AftTable<Acc>& table() const`.
template <class Derived, class T, class Params>
class AftBias {
  using Acc = accum_t<T>;

 public:
  /// One bias shared by every head (N x N; kh x kw for AftConv). Throws softfree::invalid_argument
  /// for a bad shape or a non-finite entry.
  template <class M>
  Derived& set_bias(const Eigen::MatrixBase<M>& w) {
    return set(AftTable<Acc>::from_matrix(w));
  }
  /// The bias as [1 or H, rows, cols].
  Derived& set_bias(const AftWeights<T>& w) { return set(AftTable<Acc>(w)); }
  /// Back to w = 0.
  void clear_bias() { bias_.reset(); }
  bool has_bias() const { return bias_ != nullptr; }
  /// The bias as held (copies of a functor share it); empty when unset.
  std::optional<AftWeightsView<T>> bias() const {
    if (!bias_) return std::nullopt;
    return bias_->table().view();
  }

 protected:
  template <class F>
  friend struct Kernel;  // the kernels read bias_
  Derived& set(AftTable<Acc> t) {
    Derived& self = static_cast<Derived&>(*this);
    bias_ = self.make_bias(std::move(t));
    return self;
  }
  std::shared_ptr<const Params> bias_;
};

inline namespace SOFTFREE_ISA {

/// Row stride of X = [e^K V, e^K]: 2D rounded up to whole packets (padding is zero).
template <class Acc>
Index aft_ld(Index d) {
  return pad_to_packets<Acc>(2 * d);
}

/// Denominators below this may have lost terms to underflow (each term is a product of factors
/// <= 1); such elements are recomputed exactly. Ordinary inputs stay far above it.
template <class Acc>
constexpr Acc aft_tiny() {
  return std::numeric_limits<Acc>::min() / std::numeric_limits<Acc>::epsilon();
}

/// m[c] = max over rows [0, rows) of k (rows of d values), packet-aligned m.
template <class Acc>
void aft_col_max(const Acc* k, Index rows, Index d, Acc* m) {
  for_each_packet<Acc>(d, [&](auto p, Index c) {
    using P = decltype(p);
    P mx = ei::ploadu<P>(k + c);
    for (Index t = 1; t < rows; ++t) mx = vmax(mx, ei::ploadu<P>(k + t * d + c));
    ei::pstoreu(m + c, mx);
  });
}

/// e^{k - m} per lane for keys k <= m (m: their channel's max), as 2^((k - m) log2 e): the
/// difference first, so the exponent is <= 0 for every key however large (the one-FMA form
/// k log2 e - m log2 e rounds m log2 e, and with keys of 1e10 in float that gave the largest key
/// an exponent of +512, 2^512 = inf, and NaN results), and exactly 0 for the largest.
template <class P>
EIGEN_ALWAYS_INLINE P aft_exp(const P& k, const P& m) {
  return exp2_nonpositive(ei::pmul(ei::psub(k, m), ei::pset1<P>(kLog2e<scalar_of<P>>)));
}

/// Per-channel sums of a run of keys, as one block of 3 ld values: [m | num | den] with m the
/// run's max of K, num = sum e^{K - m} V and den = sum e^{K - m} (ld: D rounded up to whole
/// packets). Token-split work keeps one per chunk of tokens (Partials) and merges them in order.
template <class Acc>
struct AftSums {
  static Index size(Index ld) { return 3 * ld; }
  static Acc* m(Acc* s, Index) { return s; }
  static Acc* num(Acc* s, Index ld) { return s + ld; }
  static Acc* den(Acc* s, Index ld) { return s + 2 * ld; }
  static const Acc* m(const Acc* s, Index) { return s; }
  static const Acc* num(const Acc* s, Index ld) { return s + ld; }
  static const Acc* den(const Acc* s, Index ld) { return s + 2 * ld; }
};

/// out = the sums of run a followed by run b (AftSums blocks of ld channels, ld whole packets;
/// out may be a or b): both rescaled to the larger max, e^{m_a - M} and e^{m_b - M} as the
/// running sums rescale (AftRunning), so the larger run's factor is exactly 1 and den >= 1 for
/// finite keys. Merging chunk totals in chunk order gives the same result for any thread count.
template <class Acc>
void aft_merge_sums(Index ld, const Acc* a, const Acc* b, Acc* out) {
  using P = Packet<Acc>;
  using S = AftSums<Acc>;
  const P log2e = ei::pset1<P>(kLog2e<Acc>);
  for (Index c = 0; c < ld; c += kLanes<Acc>) {
    const P ma = ei::ploadu<P>(S::m(a, ld) + c), mb = ei::ploadu<P>(S::m(b, ld) + c), mx = vmax(ma, mb);
    const P fa = exp2_nonpositive(ei::pmul(ei::psub(ma, mx), log2e));
    const P fb = exp2_nonpositive(ei::pmul(ei::psub(mb, mx), log2e));
    const P num = vmadd(ei::ploadu<P>(S::num(b, ld) + c), fb, ei::pmul(ei::ploadu<P>(S::num(a, ld) + c), fa));
    const P den = vmadd(ei::ploadu<P>(S::den(b, ld) + c), fb, ei::pmul(ei::ploadu<P>(S::den(a, ld) + c), fa));
    ei::pstoreu(S::m(out, ld) + c, mx);
    ei::pstoreu(S::num(out, ld) + c, num);
    ei::pstoreu(S::den(out, ld) + c, den);
  }
}

/// X[t] = [e^{K[t] - m} * V[t], e^{K[t] - m}, 0...] for t in [lo, hi) of k and v (rows of d),
/// row t at x + (t - lo) * ldx (m: a per-channel upper bound of those keys).
template <class Acc>
void aft_exp_rows(const Acc* k, const Acc* v, Index d, const Acc* m, Index lo, Index hi, Index ldx, Acc* x) {
  for (Index t = lo; t < hi; ++t) {
    Acc* xt = x + (t - lo) * ldx;
    for_each_packet<Acc>(d, [&](auto p, Index c) {
      using P = decltype(p);
      const P e = aft_exp(ei::ploadu<P>(k + t * d + c), ei::ploadu<P>(m + c));
      ei::pstoreu(xt + d + c, e);
      ei::pstoreu(xt + c, ei::pmul(e, ei::ploadu<P>(v + t * d + c)));
    });
    std::fill(xt + 2 * d, xt + ldx, Acc(0));
  }
}

/// As aft_exp_rows with the two halves apart, for rows [0, rows) and D whole packets:
/// ev[t] = e^{K[t] - m} * V[t] and e[t] = e^{K[t] - m}.
template <class Acc>
void aft_exp_rows_split(const Acc* k, const Acc* v, Index d, const Acc* m, Index rows, Acc* ev, Acc* e) {
  using P = Packet<Acc>;
  for (Index t = 0; t < rows; ++t)
    for (Index c = 0; c < d; c += kLanes<Acc>) {
      // K and V come from L3 or memory (each item rereads them): ask ahead.
      prefetch_ahead(k + t * d + c);
      prefetch_ahead(v + t * d + c);
      const P x = aft_exp(ei::ploadu<P>(k + t * d + c), ei::pload<P>(m + c));
      ei::pstoreu(e + t * d + c, x);
      ei::pstoreu(ev + t * d + c, ei::pmul(x, ei::ploadu<P>(v + t * d + c)));
    }
}

/// num / den for one (row, channel) summed over keys [0, last] of k and v (rows of d) with that
/// row's own shift max_t'(K[t', c] + bias(t')): the exact path for elements whose fast-path
/// denominator was tiny.
template <class Acc, class Bias>
Acc aft_exact_ratio(const Acc* k, const Acc* v, Index d, Index c, Index last, const Bias& bias) {
  Acc mx = -std::numeric_limits<Acc>::infinity();
  for (Index tp = 0; tp <= last; ++tp) mx = std::max(mx, k[tp * d + c] + bias(tp));
  Acc num = 0, den = 0;
  for (Index tp = 0; tp <= last; ++tp) {
    const Acc e = std::exp(k[tp * d + c] + bias(tp) - mx);
    num += e * v[tp * d + c];
    den += e;
  }
  return num / den;
}

/// y = sigma(q) * num / den for `rows` rows of d (q and y rows of d), with [num | den] rows at
/// acc + r * lda; an element whose den is below aft_tiny (or NaN) or whose ratio is not finite is
/// replaced by exact(r, c). The second keeps a non-finite input to the rows that see it: a causal
/// row block's sums also take keys past some of its rows, weighted by 0, and 0 times a NaN or inf
/// value is NaN; the exact ratio sums only the keys the row sees.
template <class Acc, class Exact>
void aft_finish(const Acc* q, Index d, const Acc* acc, Index lda, Index rows, Acc* y, const Exact& exact) {
  constexpr Index L = kLanes<Acc>;
  constexpr Acc kMax = std::numeric_limits<Acc>::max();
  alignas(kAlignBytes) Acc lanes_buf[L];
  for (Index r = 0; r < rows; ++r) {
    const Acc* a = acc + r * lda;
    for_each_packet<Acc>(d, [&](auto p, Index c) {
      using P = decltype(p);
      const P den = ei::ploadu<P>(a + d + c);
      P ratio = ei::pdiv(ei::ploadu<P>(a + c), den);
      if (vany(ei::por(ei::pcmp_lt_or_nan(den, ei::pset1<P>(aft_tiny<Acc>())),
                       ei::pcmp_lt_or_nan(ei::pset1<P>(kMax), ei::pabs(ratio))))) {
        ei::pstoreu(lanes_buf, ratio);
        for (Index l = 0; l < lanes<P>(); ++l)
          if (!(a[d + c + l] >= aft_tiny<Acc>()) || !(std::abs(lanes_buf[l]) <= kMax)) lanes_buf[l] = exact(r, c + l);
        ratio = ei::ploadu<P>(lanes_buf);
      }
      ei::pstoreu(y + r * d + c, scaled_sigmoid(ei::ploadu<P>(q + r * d + c), ratio));
    });
  }
}

/// acc[0:width) = sum_j wts[j] * rows[j][0:width): one row of the gemm against rows anywhere
/// (AftLocal's and AftConv's windows), eight packets of accumulators kept across all n rows.
template <class Acc>
void aft_weighted_sum(const Acc* const* rows, const Acc* wts, Index n, Index width, Acc* acc) {
  gemm<Tiling<8, 1>>(1, width, n, StridedA<Acc>{wts, 0, 1}, TableB<Acc>{rows, 0}, StoreC<Acc>{acc, width});
}

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
