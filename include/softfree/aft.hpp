#pragma once
// AFT (Zhai et al., 2021), the attention-free transformer: AftFull, AftLocal, AftSimple, AftConv.
//
// Every channel c of every head is independent:
//   Y[t, c] = sigma(Q[t, c]) * sum_t' e^{K[t', c] + w[t, t']} V[t', c] / sum_t' e^{K[t', c] + w[t, t']}
// (t' <= t when causal). All variants share one layout: per (b, h), X = [e^{K - m} * V, e^{K - m}]
// (N x 2D side by side, rows padded to the packet width) with m a per-channel max of K, so numerator
// and denominator come out of the same products and the shift m cancels in their ratio.
//
// Stability: every exponent is shifted by a maximum, so each factor is <= 1 and nothing overflows.
// Causal sums are shifted per block of rows by the running max of K (a single global max would make
// early rows 0/0). A denominator can still be tiny when a row's large terms all carry very negative
// biases (weights exp(w - max w) far below 1) or, causally, when a block's max comes from later rows:
// those (row, channel) elements are recomputed exactly with their own shift (aft_exact_ratio), so
// results are correct for any finite input and the fast path pays nothing on ordinary data.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

#include "core/attention.hpp"
#include "core/microkernels.hpp"
#include "core/parallel.hpp"
#include "core/precision.hpp"

namespace softfree {

/// Learned AFT parameters as [heads, rows, cols], row-major, in the accumulate type of T:
/// heads = 1 (shared by every head) or H (one per head). AftFull / AftLocal biases are N x N
/// (row = query t, column = key t'); AftConv kernels are kh x kw.
template <class T>
using AftWeights = Eigen::Tensor<accum_t<T>, 3, Eigen::RowMajor>;

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
/// the population std over that head's kh x kw entries (std = 0 leaves beta). gamma = beta = 0 gives
/// a zero kernel, i.e. AftSimple.
template <class Acc>
Eigen::Tensor<Acc, 3, Eigen::RowMajor> aft_reparameterize(const Eigen::Tensor<Acc, 3, Eigen::RowMajor>& raw,
                                                          double gamma, double beta) {
  const auto& d = raw.dimensions();
  Eigen::Tensor<Acc, 3, Eigen::RowMajor> w(d[0], d[1], d[2]);
  const Index per = d[1] * d[2];
  for (Index h = 0; h < d[0]; ++h) {
    Eigen::Map<const Eigen::Array<Acc, Eigen::Dynamic, 1>> x(raw.data() + h * per, per);
    const double mean = static_cast<double>(x.template cast<double>().mean());
    const double sd = std::sqrt((x.template cast<double>() - mean).square().mean());
    for (Index e = 0; e < per; ++e)
      w.data()[h * per + e] =
          static_cast<Acc>((sd > 0 ? gamma * (static_cast<double>(x[e]) - mean) / sd : 0.0) + beta);
  }
  return w;
}

namespace detail {

/// Row stride of X = [e^K V, e^K]: 2D rounded up to the packet width (padding is zero).
template <class Acc>
Index aft_ld(Index d) {
  constexpr Index L = kLanes<Acc>;
  return (2 * d + L - 1) / L * L;
}

/// Denominators below this may have lost terms to underflow (each term is a product of factors
/// <= 1); such elements are recomputed exactly. Ordinary inputs stay far above it.
template <class Acc>
constexpr Acc aft_tiny() {
  return std::numeric_limits<Acc>::min() / std::numeric_limits<Acc>::epsilon();
}

/// Validates learned weights: positive dimensions, every entry finite.
template <class Acc>
void aft_check_weights(const char* where, const char* name, const Eigen::Tensor<Acc, 3, Eigen::RowMajor>& w) {
  const auto& d = w.dimensions();
  if (d[0] <= 0 || d[1] <= 0 || d[2] <= 0)
    fail(where, name, " has shape [", d[0], ", ", d[1], ", ", d[2], "]: every dimension must be positive");
  for (Index i = 0; i < w.size(); ++i)
    if (!std::isfinite(static_cast<double>(w.data()[i])))
      fail(where, name, " (shape [", d[0], ", ", d[1], ", ", d[2], "]) has a non-finite entry ", w.data()[i],
           " at flat index ", i);
}

/// The rows x cols matrix of one head slot of [heads, rows, cols] weights.
template <class Acc>
ConstMatrixMap<Acc> aft_slot(const Eigen::Tensor<Acc, 3, Eigen::RowMajor>& w, Index slot) {
  const auto& d = w.dimensions();
  return ConstMatrixMap<Acc>(w.data() + slot * d[1] * d[2], d[1], d[2]);
}

/// Weights for H heads must have 1 or H slots.
inline void aft_check_heads(const char* where, const char* name, Index slots, Index H) {
  if (slots != 1 && slots != H)
    fail(where, name, " has ", slots, " head slots but the input has H = ", H, ": give 1 (shared) or H");
}

/// m[c] = max over rows of k[:, c].
template <class Acc>
void aft_col_max(const ConstMatrixMap<Acc>& k, Index rows, Acc* m) {
  using Row = Eigen::Array<Acc, 1, Eigen::Dynamic>;
  const Index d = k.cols();
  Eigen::Map<Row> mr(m, d);
  mr = Eigen::Map<const Row>(k.data(), d);
  for (Index t = 1; t < rows; ++t) mr = mr.max(Eigen::Map<const Row>(k.data() + t * d, d));
}

template <class Acc, int NP>
EIGEN_ALWAYS_INLINE void aft_wsum_block(const Acc* const* rows, const Acc* wts, Index n, Index off, Acc* acc) {
  namespace ei = Eigen::internal;
  using P = Packet<Acc>;
  constexpr Index L = kLanes<Acc>;
  P a[NP];
  for (int p = 0; p < NP; ++p) a[p] = ei::pset1<P>(Acc(0));
  for (Index j = 0; j < n; ++j) {
    const P wb = ei::pset1<P>(wts[j]);
    const Acc* r = rows[j] + off;
    for (int p = 0; p < NP; ++p) a[p] = ei::pmadd(wb, ei::ploadu<P>(r + p * L), a[p]);
  }
  for (int p = 0; p < NP; ++p) ei::pstoreu(acc + off + p * L, a[p]);
}

/// acc[0:width) = sum_j wts[j] * rows[j][0:width), width a multiple of the packet width. The
/// accumulators stay in registers across all n rows (the windows of AftLocal and AftConv).
template <class Acc>
void aft_weighted_sum(const Acc* const* rows, const Acc* wts, Index n, Index width, Acc* acc) {
  constexpr Index L = kLanes<Acc>;
  Index off = 0;
  for (; off + 8 * L <= width; off += 8 * L) aft_wsum_block<Acc, 8>(rows, wts, n, off, acc);
  for (; off + 4 * L <= width; off += 4 * L) aft_wsum_block<Acc, 4>(rows, wts, n, off, acc);
  for (; off < width; off += L) aft_wsum_block<Acc, 1>(rows, wts, n, off, acc);
}

/// num / den for one (row, channel) summed over keys [0, last] with that row's own shift
/// max_t'(K[t', c] + bias(t')): the exact path for elements whose fast-path denominator was tiny.
template <class Acc, class Bias>
Acc aft_exact_ratio(const ConstMatrixMap<Acc>& k, const ConstMatrixMap<Acc>& v, Index c, Index last,
                    const Bias& bias) {
  Acc mx = -std::numeric_limits<Acc>::infinity();
  for (Index tp = 0; tp <= last; ++tp) mx = std::max(mx, k(tp, c) + bias(tp));
  Acc num = 0, den = 0;
  for (Index tp = 0; tp <= last; ++tp) {
    const Acc e = std::exp(k(tp, c) + bias(tp) - mx);
    num += e * v(tp, c);
    den += e;
  }
  return num / den;
}

/// 1 / a per lane. With AVX-512 (float) an approximate reciprocal and one Newton step (about
/// 1 ulp): a full-width division has a throughput of one per ~10 cycles and would bound AftSimple.
template <class P>
EIGEN_ALWAYS_INLINE P aft_reciprocal(const P& a) {
#if defined(__AVX512F__)
  if constexpr (kIsPacket16f<P>) {
    const __m512 y = _mm512_rcp14_ps(a);
    return _mm512_mul_ps(y, _mm512_fnmadd_ps(a, y, _mm512_set1_ps(2.0f)));
  }
#endif
  using Scalar = typename Eigen::internal::unpacket_traits<P>::type;
  return Eigen::internal::pdiv(Eigen::internal::pset1<P>(Scalar(1)), a);
}

/// The shift of aft_exp for a per-channel max m: -m log2 e.
template <class P>
EIGEN_ALWAYS_INLINE P aft_shift(const P& m) {
  namespace ei = Eigen::internal;
  return ei::pnegate(ei::pmul(m, ei::pset1<P>(kLog2e<typename ei::unpacket_traits<P>::type>)));
}

/// e^{k - m} per lane as 2^(k log2 e - m log2 e), the exponent one FMA (exp2_nonpositive), with
/// shift = aft_shift(m). The rounding of m log2 e is the same for every key sharing the shift m,
/// so it cancels in num / den.
template <class P>
EIGEN_ALWAYS_INLINE P aft_exp(const P& k, const P& shift) {
  namespace ei = Eigen::internal;
  return exp2_nonpositive(ei::pmadd(k, ei::pset1<P>(kLog2e<typename ei::unpacket_traits<P>::type>), shift));
}

/// X[t] = [e^{K[t] - m} * V[t], e^{K[t] - m}, 0...] for t in [lo, hi), row t at x + (t - lo) * ldx
/// (m: a per-channel upper bound of those keys, packet-aligned).
template <class Acc>
void aft_exp_rows(const ConstMatrixMap<Acc>& k, const ConstMatrixMap<Acc>& v, const Acc* m, Index lo, Index hi,
                  Index ldx, Acc* x) {
  namespace ei = Eigen::internal;
  using P = Packet<Acc>;
  constexpr Index L = kLanes<Acc>;
  const Index d = k.cols();
  for (Index t = lo; t < hi; ++t) {
    Acc* xt = x + (t - lo) * ldx;
    const Acc* kt = k.data() + t * d;
    const Acc* vt = v.data() + t * d;
    Index c = 0;
    for (; c + L <= d; c += L) {
      const P e = aft_exp(ei::ploadu<P>(kt + c), aft_shift(ei::pload<P>(m + c)));
      ei::pstoreu(xt + d + c, e);
      ei::pstoreu(xt + c, ei::pmul(e, ei::ploadu<P>(vt + c)));
    }
    for (; c < d; ++c) {
      xt[d + c] = std::exp(kt[c] - m[c]);
      xt[c] = xt[d + c] * vt[c];
    }
    std::fill(xt + 2 * d, xt + ldx, Acc(0));
  }
}

/// As aft_exp_rows with the two halves apart, for rows [0, rows) of K and V (rows of D values,
/// D a multiple of the packet width): ev[t] = e^{K[t] - m} * V[t] and e[t] = e^{K[t] - m}.
template <class Acc>
void aft_exp_rows_split(const Acc* k, const Acc* v, Index d, const Acc* m, Index rows, Acc* ev, Acc* e) {
  namespace ei = Eigen::internal;
  using P = Packet<Acc>;
  constexpr Index L = kLanes<Acc>;
  for (Index t = 0; t < rows; ++t)
    for (Index c = 0; c < d; c += L) {
      // K and V come from L3 or memory (each item rereads them): ask ahead.
      prefetch_ahead(k + t * d + c);
      prefetch_ahead(v + t * d + c);
      const P x = aft_exp(ei::ploadu<P>(k + t * d + c), aft_shift(ei::pload<P>(m + c)));
      ei::pstoreu(e + t * d + c, x);
      ei::pstoreu(ev + t * d + c, ei::pmul(x, ei::ploadu<P>(v + t * d + c)));
    }
}

/// C (MR x width) += A (packed [kc][MR]) * B (kc x width), width a multiple of the packet width.
template <class Acc, int MR, int NP>
void aft_gemm_panel(const Acc* a, const Acc* b, Index ldb, Index kc, Index width, Acc* c, Index ldc) {
  constexpr Index L = kLanes<Acc>;
  Index o = 0;
  // A(r, t) = a[t * MR + r]: bcast_block's strides (1, MR), constants once inlined.
  for (; o + NP * L <= width; o += NP * L) bcast_block<Acc, MR, NP, true>(a, 1, MR, kc, b + o, ldb, c + o, ldc);
  for (; o < width; o += L) bcast_block<Acc, MR, 1, true>(a, 1, MR, kc, b + o, ldb, c + o, ldc);
}

/// d rounded up to the packet width: the row stride of padded Acc tiles.
template <class Acc>
Index aft_pad(Index d) {
  constexpr Index L = kLanes<Acc>;
  return (d + L - 1) / L * L;
}

/// A rows x d block of storage as Acc rows of stride ld (>= d): the source itself when no
/// conversion or padding is needed, else a copy in buf (padding zero).
template <class T, class Acc>
const Acc* aft_rows(const T* src, Index rows, Index d, Index ld, Acc* buf) {
  if constexpr (std::is_same<T, Acc>::value) {
    if (ld == d) return src;
  } else if (ld == d) {
    convert(src, buf, rows * d);
    return buf;
  }
  for (Index r = 0; r < rows; ++r) {
    if constexpr (std::is_same<T, Acc>::value)
      std::copy(src + r * d, src + r * d + d, buf + r * ld);
    else
      convert(src + r * d, buf + r * ld, d);
    std::fill(buf + r * ld + d, buf + r * ld + ld, Acc(0));
  }
  return buf;
}

/// Copies a rows x d tile of Acc results of stride ld to dst (nothing to do when it is dst itself).
template <class T, class Acc>
void aft_store_rows(const Acc* y, Index rows, Index d, Index ld, T* dst) {
  if constexpr (std::is_same<T, Acc>::value) {
    if (y == dst) return;
    for (Index r = 0; r < rows; ++r) std::copy(y + r * ld, y + r * ld + d, dst + r * d);
  } else {
    if (ld == d) return convert(y, dst, rows * d);
    for (Index r = 0; r < rows; ++r) convert(y + r * ld, dst + r * d, d);
  }
}

/// scale * sigma(q) per lane, with the exponent kept <= 0 so nothing overflows:
/// sigma(q) = 1 / (1 + e^-q) for q >= 0 and e^q / (1 + e^q) below.
template <class P>
EIGEN_ALWAYS_INLINE P aft_scaled_sigmoid(const P& q, const P& scale) {
  namespace ei = Eigen::internal;
  using Scalar = typename ei::unpacket_traits<P>::type;
  const P e = exp2_nonpositive(ei::pmul(ei::por(q, ei::pset1<P>(Scalar(-0.0))), ei::pset1<P>(kLog2e<Scalar>)));
  // e = e^-|q|
  const P r = ei::pmul(scale, aft_reciprocal(ei::padd(ei::pset1<P>(Scalar(1)), e)));
#if defined(__AVX512F__)
  if constexpr (kIsPacket16f<P>)  // one masked multiply (Eigen's pselect takes a vector mask)
    return _mm512_mask_mul_ps(r, _mm512_cmp_ps_mask(q, _mm512_setzero_ps(), _CMP_LT_OQ), r, e);
#endif
  return ei::pselect(ei::pcmp_lt(q, ei::pset1<P>(Scalar(0))), ei::pmul(r, e), r);
}

/// One tile of AftSimple's sums for NP packets of channels (rows of stride ld, storage type X:
/// the input itself, or a converted, padded copy): m = max(m, max_r k[r]); num, den rescaled to
/// the new m, then num += sum_r e^{k[r] - m} v[r], den += sum_r e^{k[r] - m}.
/// first: m, num, den hold nothing yet.
template <class X, int NP, class Acc = accum_t<X>>
EIGEN_ALWAYS_INLINE void aft_sums_block(const X* kt, const X* vt, Index rows, Index ld, bool first, Acc* m,
                                        Acc* num, Acc* den) {
  namespace ei = Eigen::internal;
  using P = Packet<Acc>;
  constexpr Index L = kLanes<Acc>;
  const P log2e = ei::pset1<P>(kLog2e<Acc>);
  P mx[NP], nu[NP], de[NP];
  for (int p = 0; p < NP; ++p) mx[p] = load_packet(kt + p * L);
  for (Index r = 1; r < rows; ++r)
    for (int p = 0; p < NP; ++p) {
      if ((p * L * Index(sizeof(X))) % 64 == 0) {  // K and V come from L3 or memory: ask ahead, once a line
        prefetch_ahead(kt + r * ld + p * L);
        prefetch_ahead(vt + r * ld + p * L);
      }
      mx[p] = ei::pmax(mx[p], load_packet(kt + r * ld + p * L));
    }
  for (int p = 0; p < NP; ++p) {
    nu[p] = de[p] = ei::pset1<P>(Acc(0));
    if (!first) {
      const P m_old = ei::pload<P>(m + p * L);
      mx[p] = ei::pmax(mx[p], m_old);
      const P alpha = exp2_nonpositive(ei::pmul(ei::psub(m_old, mx[p]), log2e));
      nu[p] = ei::pmul(ei::pload<P>(num + p * L), alpha);
      de[p] = ei::pmul(ei::pload<P>(den + p * L), alpha);
    }
  }
  P shift[NP];
  for (int p = 0; p < NP; ++p) shift[p] = aft_shift(mx[p]);
  for (Index r = 0; r < rows; ++r)
    for (int p = 0; p < NP; ++p) {
      const P e = aft_exp(load_packet(kt + r * ld + p * L), shift[p]);
      nu[p] = ei::pmadd(e, load_packet(vt + r * ld + p * L), nu[p]);
      de[p] = ei::padd(de[p], e);
    }
  for (int p = 0; p < NP; ++p) {
    ei::pstore(m + p * L, mx[p]);
    ei::pstore(num + p * L, nu[p]);
    ei::pstore(den + p * L, de[p]);
  }
}

/// y = sigma(q) * num / den for `rows` rows, with [num | den] rows at acc + r * lda; an element
/// whose den is below aft_tiny is replaced by exact(r, c) (its exact num / den).
template <class Acc, class Exact>
void aft_finish(const ConstMatrixMap<Acc>& q, const Acc* acc, Index lda, Index rows, Acc* y,
                const Exact& exact) {
  namespace ei = Eigen::internal;
  using P = Packet<Acc>;
  constexpr Index L = kLanes<Acc>;
  const Index d = q.cols();
  const P tiny = ei::pset1<P>(aft_tiny<Acc>());
  alignas(64) Acc lanes[L];
  for (Index r = 0; r < rows; ++r) {
    const Acc* a = acc + r * lda;
    const Acc* qr = q.data() + r * d;
    Acc* yr = y + r * d;
    Index c = 0;
    for (; c + L <= d; c += L) {
      const P den = ei::ploadu<P>(a + d + c);
      P ratio = ei::pdiv(ei::ploadu<P>(a + c), den);
      if (ei::predux_any(ei::pcmp_lt_or_nan(den, tiny))) {
        ei::pstore(lanes, ratio);
        for (Index l = 0; l < L; ++l)
          if (!(a[d + c + l] >= aft_tiny<Acc>())) lanes[l] = exact(r, c + l);
        ratio = ei::pload<P>(lanes);
      }
      ei::pstoreu(yr + c, aft_scaled_sigmoid(ei::ploadu<P>(qr + c), ratio));
    }
    for (; c < d; ++c) {
      const Acc ratio = a[d + c] >= aft_tiny<Acc>() ? a[c] / a[d + c] : exact(r, c);
      const Acc e = std::exp(-std::abs(qr[c]));  // sigma without overflow, as aft_scaled_sigmoid
      yr[c] = ratio * (qr[c] < 0 ? e : Acc(1)) / (Acc(1) + e);
    }
  }
}

/// Running per-channel sums for causal AftSimple and its recurrent state: the max m of the keys
/// seen so far, and num, den shifted by it (rescaled when the max grows), so den >= 1 always.
/// Rows come in and out through plain pointers and every expression writes into the members, so
/// the batch and the token-by-token paths evaluate identically (bitwise equal results).
template <class Acc>
class AftRunning {
  using Row = Eigen::Array<Acc, 1, Eigen::Dynamic>;
  using CMap = Eigen::Map<const Row>;

 public:
  explicit AftRunning(Index d) : d_(d), m_(d), num_(d), den_(d), alpha_(d), e_(d) {}
  void reset() { n_ = 0; }
  Index steps() const { return n_; }

  /// Adds key / value row t (D values each).
  void push(const Acc* kp, const Acc* vp) {
    const CMap k(kp, d_), v(vp, d_);
    if (n_ == 0) {
      m_ = k;
      num_ = v;
      den_.setOnes();
    } else {
      alpha_ = m_.max(k);  // the new max, for the moment
      e_ = (k - alpha_).exp();
      alpha_ = (m_ - alpha_).exp();
      m_ = m_.max(k);
      num_ = num_ * alpha_ + e_ * v;
      den_ = den_ * alpha_ + e_;
    }
    ++n_;
  }

  /// y = sigma(q) * num / den (D values).
  void emit(const Acc* qp, Acc* y) {
    e_ = num_ / den_ * (Acc(1) + (-CMap(qp, d_)).exp()).inverse();
    std::copy(e_.data(), e_.data() + d_, y);
  }

 private:
  Index d_;
  Row m_, num_, den_, alpha_, e_;
  Index n_ = 0;
};

}  // namespace detail

/// AFT-simple: Y_t = sigma(Q_t) * sum_t' softmax_t'(K) V_t' per channel (w = 0), O(N D).
/// causal: sums over t' <= t, as running sums with a running max (also State, for decoding).
template <class T = float>
class AftSimple : public Attention<AftSimple<T>, T> {
  using Acc = accum_t<T>;

 public:
  static constexpr const char* kName = "AftSimple";

  bool causal = false;
  Parallel parallel;

  /// Token-by-token causal decoding: step(q_t, k_t, v_t, y_t) gives row t of the causal batch
  /// result, in O(D) and without allocating.
  class State {
   public:
    using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;

    explicit State(Index d) : d_(check_dim(d)), run_(d), buf_(static_cast<size_t>(3 * d)) {}
    Index dim() const { return d_; }
    /// Tokens consumed so far.
    Index steps() const { return run_.steps(); }
    /// Forget every token (start a new sequence).
    void reset() { run_.reset(); }

    /// Consumes token t (q, k, v: D values each) and writes y_t (D values).
    void step(const T* q, const T* k, const T* v, T* y) {
      using In = Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>>;
      Eigen::Map<Row>(buf_.data(), d_) = In(k, d_).template cast<Acc>();
      Eigen::Map<Row>(buf_.data() + d_, d_) = In(v, d_).template cast<Acc>();
      Eigen::Map<Row>(buf_.data() + 2 * d_, d_) = In(q, d_).template cast<Acc>();
      run_.push(buf_.data(), buf_.data() + d_);
      run_.emit(buf_.data() + 2 * d_, buf_.data());
      Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>>(y, d_) = Eigen::Map<const Row>(buf_.data(), d_).template cast<T>();
    }
    /// As above, with every vector's size checked against D.
    void step(const Eigen::Ref<const Vector>& q, const Eigen::Ref<const Vector>& k, const Eigen::Ref<const Vector>& v,
              Eigen::Ref<Vector> y) {
      const char* names[] = {"q", "k", "v", "y"};
      const Index sizes[] = {q.size(), k.size(), v.size(), y.size()};
      for (int i = 0; i < 4; ++i)
        if (sizes[i] != d_)
          detail::fail("AftSimple::State", names[i], " has ", sizes[i], " values but the state has D = ", d_);
      step(q.data(), k.data(), v.data(), y.data());
    }

   private:
    static Index check_dim(Index d) {
      if (d <= 0) detail::fail("AftSimple::State", "D = ", d, ": must be positive");
      return d;
    }
    Index d_;
    detail::AftRunning<Acc> run_;
    std::vector<Acc> buf_;  // k, v, q converted to Acc; then y
  };

  Shape4 check_inputs(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v) const {
    return detail::check_qkv(kName, q, k, v, /*allow_cross=*/false);
  }

  void compute(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v, const View4<T>& out) const {
    const Shape4 s = shape_of(q);
    // One item = one (b, h).
    detail::parallel_for(parallel, s.B * s.H, [&] {
      return [&, ws = Workspace(s.D)](Index item) mutable {
        const Index b = item / s.H, h = item % s.H;
        run_head(head(q, b, h).data(), head(k, b, h).data(), head(v, b, h).data(), s.N, ws, head(out, b, h).data());
      };
    });
  }

 private:
  using Row = Eigen::Array<Acc, 1, Eigen::Dynamic>;
  // Rows per tile: the tile's max is taken first, so the accumulators are rescaled once per tile
  // (not per row) and each K tile is read from memory once.
  static constexpr Index kTile = 64;
  static constexpr Index kStreamBytes = Index(2) << 20;

  struct Workspace {
    Workspace(Index d)
        : d(d), ld(detail::aft_pad<Acc>(d)), y(kTile, d), run(d), tile(static_cast<size_t>(3 * kTile * ld)),
          m(static_cast<size_t>(ld)), num(m.size()), den(m.size()) {}
    Index d, ld;
    RowMatrix<Acc> y;  // one tile of output rows (causal)
    detail::AftRunning<Acc> run;
    detail::TileLoader<T> load_q, load_k, load_v;
    // Non-causal: k, v (or q, y) tiles padded to ld when needed; per-channel max and sums.
    detail::AlignedBuffer<Acc> tile, m, num, den;
  };

  void run_head(const T* qp, const T* kp, const T* vp, Index n, Workspace& ws, T* op) const {
    const Index d = ws.d;
    if (causal) {
      const auto kk = ws.load_k(kp, n, d);
      const auto vv = ws.load_v(vp, n, d);
      const auto qq = ws.load_q(qp, n, d);
      ws.run.reset();
      for (Index t = 0; t < n; ++t) {
        ws.run.push(kk.data() + t * d, vv.data() + t * d);
        ws.run.emit(qq.data() + t * d, ws.y.data() + (t % kTile) * d);
        if ((t + 1) % kTile == 0 || t + 1 == n) {
          const Index t0 = t / kTile * kTile;
          detail::store_rows(ws.y.topRows(t + 1 - t0), op + t0 * d);
        }
      }
    } else {
      run_sums(kp, vp, n, ws);
      run_output(qp, n, ws, op);
    }
  }

  // m = max_t K[t] per channel, num = sum_t e^{K[t] - m} V[t], den = sum_t e^{K[t] - m}: one pass
  // over K and V, a tile at a time (the tile's max first, so the sums are rescaled once per tile).
  // When D is whole packets the kernel reads the inputs directly (half and bfloat16 converted in
  // registers); otherwise each tile is copied, converted and padded to whole packets first.
  void run_sums(const T* kp, const T* vp, Index n, Workspace& ws) const {
    const Index d = ws.d, ld = ws.ld;
    for (Index t0 = 0; t0 < n; t0 += kTile) {
      const Index rows = std::min(kTile, n - t0);
      if (ld == d) {
        sums_tile(kp + t0 * d, vp + t0 * d, rows, t0 == 0, ws);
      } else {
        const Acc* kt = detail::aft_rows(kp + t0 * d, rows, d, ld, ws.tile.data());
        const Acc* vt = detail::aft_rows(vp + t0 * d, rows, d, ld, ws.tile.data() + kTile * ld);
        sums_tile(kt, vt, rows, t0 == 0, ws);
      }
    }
  }

  // Up to 4 packets of channels at a time, rows in order (sequential memory, one exp per packet
  // in flight per channel group); rows of ws.ld values of type X.
  template <class X>
  static void sums_tile(const X* kt, const X* vt, Index rows, bool first, Workspace& ws) {
    constexpr Index L = detail::kLanes<Acc>;
    const Index ld = ws.ld;
    Acc *const wm = ws.m.data(), *const wnum = ws.num.data(), *const wden = ws.den.data();
    for (Index c = 0; c < ld; c += 4 * L) {
      switch (std::min<Index>(4, (ld - c) / L)) {
        case 4: detail::aft_sums_block<X, 4>(kt + c, vt + c, rows, ld, first, wm + c, wnum + c, wden + c); break;
        case 3: detail::aft_sums_block<X, 3>(kt + c, vt + c, rows, ld, first, wm + c, wnum + c, wden + c); break;
        case 2: detail::aft_sums_block<X, 2>(kt + c, vt + c, rows, ld, first, wm + c, wnum + c, wden + c); break;
        default: detail::aft_sums_block<X, 1>(kt + c, vt + c, rows, ld, first, wm + c, wnum + c, wden + c);
      }
    }
  }

  // Y[t] = sigma(Q[t]) * num / den (den >= 1: the max key contributes e^0). Direct reads and
  // writes when D is whole packets, as in run_sums.
  void run_output(const T* qp, Index n, Workspace& ws, T* op) const {
    namespace ei = Eigen::internal;
    using P = detail::Packet<Acc>;
    constexpr Index L = detail::kLanes<Acc>;
    const Index d = ws.d, ld = ws.ld;
    Acc* const ratio = ws.num.data();
    for (Index c = 0; c < ld; c += L)
      ei::pstore(ratio + c, ei::pdiv(ei::pload<P>(ratio + c), ei::pload<P>(ws.den.data() + c)));
    if (ld == d) {
      // A head's output larger than a core's L2 is written with streaming stores (no read for
      // ownership: about a third less memory traffic at N = 16384).
      const bool stream =
          n * d * static_cast<Index>(sizeof(T)) >= kStreamBytes && reinterpret_cast<std::uintptr_t>(op) % 64 == 0;
      if (stream)
        output_rows<true>(qp, n * d, ratio, d, op);
      else
        output_rows<false>(qp, n * d, ratio, d, op);
      return;
    }
    for (Index t0 = 0; t0 < n; t0 += kTile) {
      const Index rows = std::min(kTile, n - t0);
      const Acc* qt = detail::aft_rows(qp + t0 * d, rows, d, ld, ws.tile.data());
      Acc* y = ws.tile.data() + kTile * ld;
      output_rows<false>(qt, rows * ld, ratio, ld, y);
      detail::aft_store_rows(y, rows, d, ld, op + t0 * d);
    }
  }

  // y[i] = sigma(q[i]) * ratio[i mod ld] for i in [0, size), size a multiple of ld (whole packets).
  template <bool Stream, class X, class Y>
  static void output_rows(const X* q, Index size, const Acc* ratio, Index ld, Y* y) {
    constexpr Index L = detail::kLanes<Acc>;
    for (Index r = 0; r < size; r += ld)
      for (Index c = 0; c < ld; c += L) {
        if ((c * Index(sizeof(X))) % 64 == 0) detail::prefetch_ahead(q + r + c);  // once a cache line
        const auto scale = Eigen::internal::pload<detail::Packet<Acc>>(ratio + c);
        detail::store_packet<Y, Stream>(y + r + c, detail::aft_scaled_sigmoid(detail::load_packet(q + r + c), scale));
      }
#if defined(__AVX512F__)
    if constexpr (Stream) _mm_sfence();  // order the streamed rows before the caller reads them
#endif
  }
};

/// Recurrent decoding state of causal AftSimple (AftSimple<T>::State).
template <class T = float>
using AftSimpleState = typename AftSimple<T>::State;

/// AFT-full: per-channel attention with learned position biases w (N x N shared by every head,
/// or one per head), O(N^2 D). exp(w) is cached once per bias (shared by copies of the functor):
/// each call is then one product of the cached exp(w) against X = [e^K V, e^K] per (b, h).
/// Without a bias, w = 0 for any N (the result equals AftSimple). causal: sums over t' <= t.
template <class T = float>
class AftFull : public Attention<AftFull<T>, T> {
  using Acc = accum_t<T>;

 public:
  static constexpr const char* kName = "AftFull";

  bool causal = false;
  Parallel parallel;

  AftFull() = default;
  /// w: N x N (shared by every head).
  template <class Derived>
  explicit AftFull(const Eigen::MatrixBase<Derived>& w) {
    set_bias(w);
  }
  /// w: [1 or H, N, N].
  explicit AftFull(const AftWeights<T>& w) { set_bias(w); }

  /// Sets w (N x N, shared by every head); throws softfree::invalid_argument unless square, non-empty
  /// and finite.
  template <class Derived>
  AftFull& set_bias(const Eigen::MatrixBase<Derived>& w) {
    const RowMatrix<Acc> m = w.template cast<Acc>();
    return set_bias(AftWeights<T>(Eigen::TensorMap<const AftWeights<T>>(m.data(), 1, m.rows(), m.cols())));
  }
  /// Sets w as [1 or H, N, N].
  AftFull& set_bias(const AftWeights<T>& w) {
    detail::aft_check_weights(kName, "w", w);
    const auto& d = w.dimensions();
    if (d[1] != d[2]) detail::fail(kName, "w has shape [", d[0], ", ", d[1], ", ", d[2], "]: must be [1 or H, N, N]");
    bias_ = std::make_shared<const Cache>(w);
    return *this;
  }
  /// Back to w = 0.
  void clear_bias() { bias_.reset(); }
  bool has_bias() const { return bias_ != nullptr; }
  /// The bias as set ([1 or H, N, N]); null when unset.
  const AftWeights<T>* bias() const { return bias_ ? &bias_->w : nullptr; }

  Shape4 check_inputs(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v) const {
    const Shape4 s = detail::check_qkv(kName, q, k, v, /*allow_cross=*/false);
    if (bias_) {
      const auto& d = bias_->w.dimensions();
      if (d[1] != s.N)
        detail::fail(kName, "w has shape [", d[0], ", ", d[1], ", ", d[2], "] but q has shape ", s,
                     ": the bias must be N x N with N = ", s.N);
      detail::aft_check_heads(kName, "w", d[0], s.H);
    }
    return s;
  }

  void compute(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v, const View4<T>& out) const {
    if (!bias_) {
      AftSimple<T> simple;
      simple.causal = causal;
      simple.parallel = parallel;
      simple.compute(q, k, v, out);
      return;
    }
    const Shape4 s = shape_of(q);
    const Acc* packed = bias_->packed(causal);
    const Index blocks = (s.N + kRows - 1) / kRows;
    // One item = kRows query rows of every head that shares a bias slot (all H heads for a
    // shared bias, else one head) of one batch: each key chunk of packed exp(w) is then read
    // from memory once for all those heads. About N / 192 items per batch, so threads balance.
    const Index group = bias_->w.dimension(0) == 1 ? s.H : 1, hgroups = s.H / group;
    detail::parallel_for(parallel, s.B * hgroups * blocks, [&] {
      return [&, ws = Workspace(s.D, group)](Index item) mutable {
        const Index bg = item / blocks, b = bg / hgroups, h0 = (bg % hgroups) * group;
        const Index i0 = (item % blocks) * kRows;
        run_rows(q, k, v, b, h0, group, i0, std::min(kRows, s.N - i0), packed, ws, out);
      };
    });
  }

 private:
  // The product exp(w) (N x N) * X (N x 2D) as a register-blocked GEMM: kMR query rows by kNP
  // packets of X's columns per block (6 x 4 = 24 accumulators of AVX-512's 32 registers; 6 x 2
  // with 16 registers). The depth (keys) is cut in chunks of kKC; per chunk and head the chunk's
  // X rows (kKC x 2D, 64 KiB for D = 64) are built once, and each row group's packed exp(w)
  // (kMR x kKC) stays in L1 across X's column blocks, which stay in L2. The item's exp(w) chunk
  // (kRows x kKC) stays in L2 across its heads, and so do their [num | den] accumulators.
  static constexpr int kMR = 6;
  static constexpr int kNP = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS >= 32 ? 4 : 2;
  static constexpr Index kKC = 128;
  // Query rows per work item: X is rebuilt per item (kend x D exponentials against 2 kRows kend D
  // multiply-adds per head).
  static constexpr Index kRows = 32 * kMR;

  // exp(w) per head slot, packed in chunks of kKC keys, each chunk as row groups of kMR queries
  // key-major: group g of chunk c holds its keys j, each as kMR consecutive values (queries
  // g*kMR + r; rows past N are zero), the order aft_gemm_panel reads A in; an item's groups of
  // one chunk are contiguous. Row t is shifted by max_t' w[t, t'] over its summed keys
  // (all, or t' <= t when causal; the causal table is zero above the diagonal), so entries are
  // <= 1 and the shift cancels in the ratio. Each variant is built on first use, once, and
  // shared by every copy of the functor.
  struct Cache {
    explicit Cache(const AftWeights<T>& w_) : w(w_) {}
    const Acc* packed(bool causal_) const {
      const int c = causal_ ? 1 : 0;
      std::call_once(once[c], [&] { build(causal_, table[c]); });
      return table[c].data();
    }
    void build(bool causal_, detail::AlignedBuffer<Acc>& tab) const {
      const Index slots = w.dimension(0), n = w.dimension(1), ng = (n + kMR - 1) / kMR;
      tab.assign(static_cast<size_t>(slots * ng * n * kMR), Acc(0));
      for (Index hs = 0; hs < slots; ++hs) {
        const auto wh = detail::aft_slot(w, hs);
        for (Index t = 0; t < n; ++t) {
          const Index last = causal_ ? t : n - 1;
          const Acc mx = wh.row(t).head(last + 1).maxCoeff();
          for (Index j = 0; j <= last; ++j) {
            const Index j0 = j / kKC * kKC, chunk = std::min(kKC, n - j0);
            tab[static_cast<size_t>(hs * ng * n * kMR + j0 * ng * kMR + ((t / kMR) * chunk + j - j0) * kMR + t % kMR)] =
                std::exp(wh(t, j) - mx);
          }
        }
      }
    }
    AftWeights<T> w;
    mutable std::once_flag once[2];
    mutable detail::AlignedBuffer<Acc> table[2];
  };

  struct Workspace {
    Workspace(Index d, Index heads)
        : d(d), ldx(detail::aft_ld<Acc>(d)), dp(detail::aft_pad<Acc>(d)), x(static_cast<size_t>(kKC * ldx)),
          kv(static_cast<size_t>(2 * kKC * d)), acc(static_cast<size_t>(heads * kRows * ldx)),
          m(static_cast<size_t>(heads * dp)), m_src(static_cast<size_t>(heads), nullptr),
          m_rows(static_cast<size_t>(heads), 0), y(kRows, d) {}
    Index d, ldx, dp;
    detail::AlignedBuffer<Acc> x, kv, acc, m;  // X chunk; K, V chunk; [num | den] per head; key max per head
    std::vector<const T*> m_src;               // m of head i is the max of keys [0, m_rows[i]) of m_src[i]
    std::vector<Index> m_rows;
    RowMatrix<Acc> y;
    detail::TileLoader<T> load_q, load_k, load_v;
  };

  // m = max over keys [0, kend) of head i's K, kept from this thread's previous item of the same
  // head (extended when kend grew; a max is exact, so the result does not depend on the order).
  void key_max(const T* kp, Index kend, Index i, Workspace& ws) const {
    namespace ei = Eigen::internal;
    using P = detail::Packet<Acc>;
    constexpr Index L = detail::kLanes<Acc>;
    const Index d = ws.d;
    Acc* m = ws.m.data() + i * ws.dp;
    const auto si = static_cast<size_t>(i);
    Index from = ws.m_rows[si];
    if (kp != ws.m_src[si] || kend < from) {
      std::fill(m, m + ws.dp, -std::numeric_limits<Acc>::infinity());
      from = 0;
    }
    for (Index t0 = from; t0 < kend; t0 += kKC) {
      const Index rows = std::min(kKC, kend - t0);
      const Acc* kt = detail::aft_rows(kp + t0 * d, rows, d, d, ws.kv.data());
      Index c = 0;
      for (; c + L <= d; c += L) {
        P mx = ei::pload<P>(m + c);
        for (Index r = 0; r < rows; ++r) mx = ei::pmax(mx, ei::ploadu<P>(kt + r * d + c));
        ei::pstore(m + c, mx);
      }
      for (; c < d; ++c)
        for (Index r = 0; r < rows; ++r) m[c] = std::max(m[c], kt[r * d + c]);
    }
    ws.m_src[si] = kp;
    ws.m_rows[si] = kend;
  }

  // Query rows [i0, i0 + rows) of heads h0 .. h0 + heads - 1 of batch b (one bias slot).
  void run_rows(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v, Index b, Index h0,
                Index heads, Index i0, Index rows, const Acc* packed, Workspace& ws, const View4<T>& out) const {
    const Index n = q.dimension(2), d = ws.d, ldx = ws.ldx, ng = (n + kMR - 1) / kMR;
    constexpr Index L = detail::kLanes<Acc>;
    const Index slot = bias_->w.dimension(0) == 1 ? 0 : h0;
    // Keys these rows see; shifted by their max, so the block's last row has a term equal to 1.
    const Index kend = causal ? i0 + rows : n;
    for (Index i = 0; i < heads; ++i) key_max(head(k, b, h0 + i).data(), kend, i, ws);
    std::fill(ws.acc.begin(), ws.acc.end(), Acc(0));
    const Index g0 = i0 / kMR, g1 = (i0 + rows + kMR - 1) / kMR;  // kRows is a multiple of kMR
    constexpr Index kCols = kNP * L;
    for (Index j0 = 0; j0 < kend; j0 += kKC) {
      const Index kc = std::min(kKC, kend - j0), chunk = std::min(kKC, n - j0);
      const Acc* a = packed + slot * ng * n * kMR + j0 * ng * kMR;  // this key chunk's groups
      for (Index i = 0; i < heads; ++i) {
        const Acc* kt = detail::aft_rows(head(k, b, h0 + i).data() + j0 * d, kc, d, d, ws.kv.data());
        const Acc* vt = detail::aft_rows(head(v, b, h0 + i).data() + j0 * d, kc, d, d, ws.kv.data() + kKC * d);
        // The chunk of X as column panels {data, stride, width, column of [num | den]}: when D
        // is a multiple of the packet width, e^K V and e^K apart (kc x D each, contiguous), else
        // rows of ldx.
        struct Panel {
          const Acc* b;
          Index ldb, width, col;
        } panels[2];
        int np = 1;
        const Acc* m = ws.m.data() + i * ws.dp;
        if (d % L == 0) {
          detail::aft_exp_rows_split(kt, vt, d, m, kc, ws.x.data(), ws.x.data() + kKC * d);
          panels[0] = Panel{ws.x.data(), d, d, 0};
          panels[1] = Panel{ws.x.data() + kKC * d, d, d, d};
          np = 2;
        } else {
          detail::aft_exp_rows(ConstMatrixMap<Acc>(kt, kc, d), ConstMatrixMap<Acc>(vt, kc, d), m, 0, kc, ldx,
                               ws.x.data());
          panels[0] = Panel{ws.x.data(), ldx, ldx, 0};
        }
        Acc* acc = ws.acc.data() + i * kRows * ldx;
        // Row group outer: its exp(w) chunk is read once for every column block.
        for (Index g = g0; g < g1; ++g) {
          // Causal: keys past the group's last row are zero in the table; skip them.
          const Index kg = causal ? std::min(kc, (g + 1) * kMR - j0) : kc;
          if (kg <= 0) continue;
          for (int pi = 0; pi < np; ++pi)
            for (Index o = 0; o < panels[pi].width; o += kCols)
              detail::aft_gemm_panel<Acc, kMR, kNP>(a + g * chunk * kMR, panels[pi].b + o, panels[pi].ldb, kg,
                                                     std::min(kCols, panels[pi].width - o),
                                                     acc + (g - g0) * kMR * ldx + panels[pi].col + o, ldx);
        }
      }
    }
    const auto wh = detail::aft_slot(bias_->w, slot);
    for (Index i = 0; i < heads; ++i) {
      const T* kp = head(k, b, h0 + i).data();
      const T* vp = head(v, b, h0 + i).data();
      const auto qq = ws.load_q(head(q, b, h0 + i).data() + i0 * d, rows, d);
      detail::aft_finish(qq, ws.acc.data() + i * kRows * ldx, ldx, rows, ws.y.data(), [&](Index r, Index c) {
        const Index t = i0 + r;  // rare: the whole head's keys, converted on demand
        return detail::aft_exact_ratio(ws.load_k(kp, n, d), ws.load_v(vp, n, d), c, causal ? t : n - 1,
                                       [&](Index tp) { return wh(t, tp); });
      });
      detail::store_rows(ws.y.topRows(rows), head(out, b, h0 + i).data() + i0 * d);
    }
  }

  std::shared_ptr<const Cache> bias_;
};

/// AFT-local(s): AFT-full whose bias is kept inside the window |t - t'| < s and is 0 (not -inf)
/// outside, so keys outside the window still count with weight e^K. Computed as the sums outside
/// the window (prefix and suffix sums, no subtraction) plus the window's weighted sum: O(N s D).
/// The bias is stored as the band only. Without a bias, w = 0 inside the window too (the result
/// equals AftSimple). causal: sums over t' <= t.
template <class T = float>
class AftLocal : public Attention<AftLocal<T>, T> {
  using Acc = accum_t<T>;

 public:
  static constexpr const char* kName = "AftLocal";

  /// s: the window half-width (keys with |t - t'| < s carry the bias); s >= 1. A bias is set for
  /// one s: after changing window, set the bias again.
  Index window = 32;
  bool causal = false;
  Parallel parallel;

  AftLocal() = default;
  explicit AftLocal(Index s) : window(s) {}
  /// w: N x N (shared) or [1 or H, N, N]; only the band |t - t'| < s is kept.
  template <class W>
  AftLocal(Index s, const W& w) : window(s) {
    set_bias(w);
  }

  /// Sets the bias from w (N x N, shared by every head), keeping its band |t - t'| < window.
  template <class Derived>
  AftLocal& set_bias(const Eigen::MatrixBase<Derived>& w) {
    const RowMatrix<Acc> m = w.template cast<Acc>();
    return set_bias(AftWeights<T>(Eigen::TensorMap<const AftWeights<T>>(m.data(), 1, m.rows(), m.cols())));
  }
  /// Sets the bias from w as [1 or H, N, N], keeping its band |t - t'| < window.
  AftLocal& set_bias(const AftWeights<T>& w) {
    check_window();
    detail::aft_check_weights(kName, "w", w);
    const auto& d = w.dimensions();
    if (d[1] != d[2]) detail::fail(kName, "w has shape [", d[0], ", ", d[1], ", ", d[2], "]: must be [1 or H, N, N]");
    const Index n = d[1], nb = 2 * window - 1;
    AftWeights<T> band(d[0], n, nb);
    band.setZero();
    for (Index hs = 0; hs < d[0]; ++hs)
      for (Index t = 0; t < n; ++t)
        for (Index j = 0; j < nb; ++j) {
          const Index tp = t - (window - 1) + j;
          if (tp >= 0 && tp < n) band(hs, t, j) = w(hs, t, tp);
        }
    band_ = std::make_shared<const Band>(window, std::move(band));
    return *this;
  }
  /// Sets the bias directly as its band [1 or H, N, 2s - 1]: band[h, t, j] = w[t, t - (s - 1) + j]
  /// (entries with t' outside [0, N) are ignored). Sets window = s. Memory O(N s), not O(N^2).
  AftLocal& set_band_bias(const AftWeights<T>& band) {
    detail::aft_check_weights(kName, "band", band);
    const auto& d = band.dimensions();
    if (d[2] % 2 == 0)
      detail::fail(kName, "band has shape [", d[0], ", ", d[1], ", ", d[2],
                   "]: the last dimension must be 2s - 1 (odd) for a window s");
    window = (d[2] + 1) / 2;
    band_ = std::make_shared<const Band>(window, band);
    return *this;
  }
  void clear_bias() { band_.reset(); }
  bool has_bias() const { return band_ != nullptr; }

  Shape4 check_inputs(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v) const {
    const Shape4 s = detail::check_qkv(kName, q, k, v, /*allow_cross=*/false);
    check_window();
    if (band_) {
      const auto& d = band_->w.dimensions();
      if (band_->s != window)
        detail::fail(kName, "window = ", window, " but the bias was set for window = ", band_->s,
                     ": set the bias again after changing window");
      if (d[1] != s.N)
        detail::fail(kName, "w (band [", d[0], ", ", d[1], ", ", d[2], "]) is for N = ", d[1], " but q has shape ", s,
                     ": the bias must be N x N with N = ", s.N);
      detail::aft_check_heads(kName, "w", d[0], s.H);
    }
    return s;
  }

  void compute(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v, const View4<T>& out) const {
    const Shape4 s = shape_of(q);
    detail::parallel_for(parallel, s.B * s.H, [&] {
      return [&, ws = Workspace(s.N, s.D, window)](Index item) mutable {
        const Index b = item / s.H, h = item % s.H;
        run_head(head(q, b, h).data(), head(k, b, h).data(), head(v, b, h).data(), s.N, h, ws,
                 head(out, b, h).data());
      };
    });
  }

 private:
  // The band, and per variant (non-causal, causal) the weights every row uses, built once on
  // first use and shared by copies: ew[slot, t, j] = e^{w - r_t} inside row t's window (zero
  // elsewhere) and eo[slot, t] = e^{-r_t} for the keys outside it, with r_t = max(0, max of w over
  // the window), so every weight is <= 1.
  struct Band {
    Band(Index s_, AftWeights<T> w_) : s(s_), w(std::move(w_)) {}
    void weights(bool causal_, Index n, const Acc** ew_out, const Acc** eo_out) const {
      const int c = causal_ ? 1 : 0;
      std::call_once(once[c], [&] {
        const Index slots = w.dimension(0), nb = 2 * s - 1;
        ew[c].assign(static_cast<size_t>(slots * n * nb), Acc(0));
        eo[c].assign(static_cast<size_t>(slots * n), Acc(0));
        for (Index hs = 0; hs < slots; ++hs)
          for (Index t = 0; t < n; ++t) {
            const Index lo = std::max<Index>(0, t - s + 1) - t + s - 1;
            const Index hi = (causal_ ? t : std::min(n - 1, t + s - 1)) - t + s - 1;
            Acc r = 0;
            for (Index j = lo; j <= hi; ++j) r = std::max(r, w(hs, t, j));
            eo[c][static_cast<size_t>(hs * n + t)] = std::exp(-r);
            for (Index j = lo; j <= hi; ++j) ew[c][static_cast<size_t>((hs * n + t) * nb + j)] = std::exp(w(hs, t, j) - r);
          }
      });
      *ew_out = ew[c].data();
      *eo_out = eo[c].data();
    }
    Index s;
    AftWeights<T> w;  // [1 or H, N, 2s - 1]
    mutable std::once_flag once[2];
    mutable detail::AlignedBuffer<Acc> ew[2], eo[2];
  };
  // Causal rows are processed in blocks shifted by the max of K over the keys the block sees.
  static constexpr Index kBlock = 64;

  struct Workspace {
    Workspace(Index n, Index d, Index s)
        : d(d), ldx(detail::aft_ld<Acc>(d)), x(static_cast<size_t>(n * ldx)), outside(x.size()),
          run(static_cast<size_t>(ldx)), acc(run.size()), m(static_cast<size_t>(d)), m_new(m.size()),
          rows(static_cast<size_t>(2 * s)), wts(rows.size()), y(n, d) {}
    Index d, ldx;
    detail::AlignedBuffer<Acc> x, outside, run, acc, m, m_new;
    std::vector<const Acc*> rows;
    std::vector<Acc> wts;
    RowMatrix<Acc> y;
    detail::TileLoader<T> load_q, load_k, load_v;
  };

  void check_window() const {
    if (window < 1) detail::fail(kName, "window = ", window, ": must be >= 1");
  }

  void run_head(const T* qp, const T* kp, const T* vp, Index n, Index h, Workspace& ws, T* op) const {
    const Index d = ws.d, ldx = ws.ldx, s = window;
    using Vec = Eigen::Map<Eigen::Array<Acc, 1, Eigen::Dynamic>>;
    const auto kk = ws.load_k(kp, n, d);
    const auto vv = ws.load_v(vp, n, d);
    const auto qq = ws.load_q(qp, n, d);
    Acc* x = ws.x.data();
    const auto row = [&](Acc* base, Index t) { return Vec(base + t * ldx, ldx); };
    Vec run(ws.run.data(), ldx);
    const Index slot = band_ ? (band_->w.dimension(0) == 1 ? 0 : h) : 0;

    // Row t: acc = e^{-r} * outside + sum over the window of e^{w - r} X[t'] (Band's weights;
    // all 1 without a bias).
    const Acc *ew = nullptr, *eo = nullptr;
    if (band_) band_->weights(causal, n, &ew, &eo);
    const Index nb = 2 * s - 1;
    if (!band_) std::fill(ws.wts.begin(), ws.wts.end(), Acc(1));
    const auto do_row = [&](Index t, const Acc* outside) {
      const Index lo = std::max<Index>(0, t - s + 1), hi = causal ? t : std::min(n - 1, t + s - 1);
      const Index cnt = hi - lo + 1;
      ws.rows[0] = outside;
      for (Index i = 0; i < cnt; ++i) ws.rows[static_cast<size_t>(i + 1)] = x + (lo + i) * ldx;
      if (band_) {
        ws.wts[0] = eo[slot * n + t];
        const Acc* e = ew + (slot * n + t) * nb + (lo - t + s - 1);
        std::copy(e, e + cnt, ws.wts.begin() + 1);
      }
      detail::aft_weighted_sum(ws.rows.data(), ws.wts.data(), cnt + 1, ldx, ws.acc.data());
      const auto qt = ConstMatrixMap<Acc>(qq.data() + t * d, 1, d);
      detail::aft_finish(qt, ws.acc.data(), ldx, 1, ws.y.data() + t * d, [&](Index, Index c) {
        return detail::aft_exact_ratio(kk, vv, c, causal ? t : n - 1, [&](Index tp) {
          const Index dist = tp > t ? tp - t : t - tp;
          return band_ && dist < s ? band_->w(slot, t, tp - t + s - 1) : Acc(0);
        });
      });
    };

    if (!causal) {
      detail::aft_col_max(kk, n, ws.m.data());
      detail::aft_exp_rows(kk, vv, ws.m.data(), 0, n, ldx, x);
      // outside[t] = sum_{t' <= t - s} X[t'] + sum_{t' >= t + s} X[t'].
      run.setZero();
      for (Index t = 0; t < n; ++t) {
        if (t - s >= 0) run += row(x, t - s);
        row(ws.outside.data(), t) = run;
      }
      run.setZero();
      for (Index t = n - 1; t >= 0; --t) {
        if (t + s < n) run += row(x, t + s);
        row(ws.outside.data(), t) += run;
      }
      for (Index t = 0; t < n; ++t) do_row(t, ws.outside.data() + t * ldx);
    } else {
      // run = sum_{t' <= t - s} X[t'] under the current block's shift m.
      Vec m(ws.m.data(), d), m_new(ws.m_new.data(), d);
      run.setZero();
      for (Index b0 = 0; b0 < n; b0 += kBlock) {
        const Index b1 = std::min(n, b0 + kBlock);
        detail::aft_col_max(ConstMatrixMap<Acc>(kk.data() + b0 * d, b1 - b0, d), b1 - b0, ws.m_new.data());
        if (b0 > 0) {
          m_new = m_new.max(m);
          const auto f = (m - m_new).exp().eval();  // per channel, applied to num and den alike
          run.head(d) *= f;
          run.segment(d, d) *= f;
        }
        m = m_new;
        {
          const Index lo = std::max<Index>(0, b0 - s);
          detail::aft_exp_rows(kk, vv, ws.m.data(), lo, b1, ldx, x + lo * ldx);
        }
        for (Index t = b0; t < b1; ++t) {
          if (t - s >= 0) run += row(x, t - s);
          do_row(t, ws.run.data());
        }
      }
    }
    detail::store_rows(ws.y, op);
  }

  std::shared_ptr<const Band> band_;
};

/// AFT-conv: tokens form a row-major rows x cols grid (t = y * cols + x); one odd kh x kw kernel w
/// per head (or one shared), shared by the head's channels:
///   Y = sigma(Q) * [conv(e^K V, e^w - 1) + sum e^K V] / [conv(e^K, e^w - 1) + sum e^K]
/// with conv a zero-padded "same" cross-correlation: AftFull with w[t, t'] = kernel[y'-y+kh/2,
/// x'-x+kw/2] inside the window and 0 outside. Computed as the sums outside the window (per-row
/// prefix/suffix sums, no subtraction) plus the window's weighted sum: O(N kh kw D).
/// rows = cols = 0 (default) means a square grid (N must be a perfect square). Without a kernel,
/// w = 0 (the result equals AftSimple, for any N). Non-causal only, as in the paper.
template <class T = float>
class AftConv : public Attention<AftConv<T>, T> {
  using Acc = accum_t<T>;

 public:
  static constexpr const char* kName = "AftConv";

  Index rows = 0, cols = 0;
  Parallel parallel;

  AftConv() = default;
  /// A kernel shared by every head, on a rows x cols grid (0 x 0: square).
  template <class Derived>
  explicit AftConv(const Eigen::MatrixBase<Derived>& kernel, Index rows_ = 0, Index cols_ = 0) : rows(rows_), cols(cols_) {
    set_kernel(kernel);
  }
  /// Kernels [1 or H, kh, kw] on a rows x cols grid (0 x 0: square).
  explicit AftConv(const AftWeights<T>& kernels, Index rows_ = 0, Index cols_ = 0) : rows(rows_), cols(cols_) {
    set_kernels(kernels);
  }

  /// One kh x kw kernel shared by every head (odd sizes, finite entries).
  template <class Derived>
  AftConv& set_kernel(const Eigen::MatrixBase<Derived>& kernel) {
    const RowMatrix<Acc> m = kernel.template cast<Acc>();
    return set_kernels(AftWeights<T>(Eigen::TensorMap<const AftWeights<T>>(m.data(), 1, m.rows(), m.cols())));
  }
  /// Kernels as [1 or H, kh, kw] (odd sizes, finite entries).
  AftConv& set_kernels(const AftWeights<T>& kernels) {
    detail::aft_check_weights(kName, "kernel", kernels);
    const auto& d = kernels.dimensions();
    if (d[1] % 2 == 0 || d[2] % 2 == 0)
      detail::fail(kName, "kernel has shape [", d[0], ", ", d[1], ", ", d[2], "]: kh and kw must be odd");
    kernels_ = std::make_shared<const AftWeights<T>>(kernels);
    return *this;
  }
  void clear_kernel() { kernels_.reset(); }
  bool has_kernel() const { return kernels_ != nullptr; }

  Shape4 check_inputs(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v) const {
    const Shape4 s = detail::check_qkv(kName, q, k, v, /*allow_cross=*/false);
    if (rows != 0 || cols != 0 || kernels_) {
      const Grid g = grid(s.N);
      if (kernels_) {
        const auto& d = kernels_->dimensions();
        detail::aft_check_heads(kName, "kernel", d[0], s.H);
        if (d[1] > 2 * g.rows - 1 || d[2] > 2 * g.cols - 1)
          detail::fail(kName, "kernel has shape [", d[0], ", ", d[1], ", ", d[2], "], oversized for the ", g.rows,
                       " x ", g.cols, " grid: kh must be <= 2 rows - 1 and kw <= 2 cols - 1");
      }
    }
    return s;
  }

  void compute(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v, const View4<T>& out) const {
    if (!kernels_) {
      AftSimple<T> simple;
      simple.parallel = parallel;
      simple.compute(q, k, v, out);
      return;
    }
    const Shape4 s = shape_of(q);
    const Grid g = grid(s.N);
    detail::parallel_for(parallel, s.B * s.H, [&] {
      return [&, ws = Workspace(g, s.D, kernels_->dimension(1), kernels_->dimension(2))](Index item) mutable {
        const Index b = item / s.H, h = item % s.H;
        run_head(head(q, b, h).data(), head(k, b, h).data(), head(v, b, h).data(), g, h, ws, head(out, b, h).data());
      };
    });
  }

 private:
  struct Grid {
    Index rows, cols;
  };

  Grid grid(Index n) const {
    if (rows == 0 && cols == 0) {
      Index r = static_cast<Index>(std::llround(std::sqrt(static_cast<double>(n))));
      while (r * r > n) --r;
      while ((r + 1) * (r + 1) <= n) ++r;
      if (r * r != n)
        detail::fail(kName, "rows = 0, cols = 0 (square grid) but N = ", n,
                     " is not a perfect square: set rows and cols with rows * cols = N");
      return Grid{r, r};
    }
    if (rows <= 0 || cols <= 0 || rows * cols != n)
      detail::fail(kName, "grid rows = ", rows, ", cols = ", cols, ": rows * cols must equal N = ", n);
    return Grid{rows, cols};
  }

  struct Workspace {
    Workspace(const Grid& g, Index d, Index kh, Index kw)
        : d(d), ldx(detail::aft_ld<Acc>(d)), x(static_cast<size_t>(g.rows * g.cols * ldx)),
          pre(static_cast<size_t>(g.rows * (g.cols + 1) * ldx)), suf(pre.size()),
          before(static_cast<size_t>((g.rows + 1) * ldx)), after(before.size()), acc(static_cast<size_t>(ldx)),
          m(static_cast<size_t>(d)), ek(static_cast<size_t>(kh * kw)),
          rows(static_cast<size_t>(kh * kw + 2 * kh + 2)), wts(rows.size()), y(g.rows * g.cols, d) {}
    Index d, ldx;
    detail::AlignedBuffer<Acc> x, pre, suf, before, after, acc, m, ek;
    std::vector<const Acc*> rows;
    std::vector<Acc> wts;
    RowMatrix<Acc> y;
    detail::TileLoader<T> load_q, load_k, load_v;
  };

  void run_head(const T* qp, const T* kp, const T* vp, const Grid& g, Index h, Workspace& ws, T* op) const {
    using Vec = Eigen::Map<Eigen::Array<Acc, 1, Eigen::Dynamic>>;
    const Index d = ws.d, ldx = ws.ldx, R = g.rows, C = g.cols, n = R * C;
    const auto ker = detail::aft_slot(*kernels_, kernels_->dimension(0) == 1 ? 0 : h);
    const Index kh = ker.rows(), kw = ker.cols(), ch = kh / 2, cw = kw / 2;
    // Weights e^{w - r} inside the window and e^{-r} outside, r = max(0, max w): all <= 1.
    const Acc r = std::max(Acc(0), ker.maxCoeff());
    const Acc out_w = std::exp(-r);
    for (Index i = 0; i < kh * kw; ++i) ws.ek[static_cast<size_t>(i)] = std::exp(ker.data()[i] - r);

    const auto kk = ws.load_k(kp, n, d);
    const auto vv = ws.load_v(vp, n, d);
    const auto qq = ws.load_q(qp, n, d);
    Acc* x = ws.x.data();
    detail::aft_col_max(kk, n, ws.m.data());
    detail::aft_exp_rows(kk, vv, ws.m.data(), 0, n, ldx, x);
    // pre[y][j] = sum of X over grid row y, columns < j; suf[y][j]: columns >= j;
    // before[y] = sum over grid rows < y; after[y]: rows >= y. All sums of terms, no differences.
    const auto at = [&](detail::AlignedBuffer<Acc>& buf, Index i) { return Vec(buf.data() + i * ldx, ldx); };
    for (Index y = 0; y < R; ++y) {
      at(ws.pre, y * (C + 1)).setZero();
      for (Index j = 0; j < C; ++j) at(ws.pre, y * (C + 1) + j + 1) = at(ws.pre, y * (C + 1) + j) + Vec(x + (y * C + j) * ldx, ldx);
      at(ws.suf, y * (C + 1) + C).setZero();
      for (Index j = C - 1; j >= 0; --j) at(ws.suf, y * (C + 1) + j) = at(ws.suf, y * (C + 1) + j + 1) + Vec(x + (y * C + j) * ldx, ldx);
    }
    at(ws.before, 0).setZero();
    for (Index y = 0; y < R; ++y) at(ws.before, y + 1) = at(ws.before, y) + at(ws.pre, y * (C + 1) + C);
    at(ws.after, R).setZero();
    for (Index y = R - 1; y >= 0; --y) at(ws.after, y) = at(ws.after, y + 1) + at(ws.suf, y * (C + 1));

    for (Index y = 0; y < R; ++y)
      for (Index xc = 0; xc < C; ++xc) {
        const Index y0 = std::max<Index>(0, y - ch), y1 = std::min(R - 1, y + ch);
        const Index x0 = std::max<Index>(0, xc - cw), x1 = std::min(C - 1, xc + cw);
        size_t cnt = 0;
        const auto add = [&](const Acc* p, Acc wt) {
          ws.rows[cnt] = p;
          ws.wts[cnt++] = wt;
        };
        add(ws.before.data() + y0 * ldx, out_w);
        add(ws.after.data() + (y1 + 1) * ldx, out_w);
        for (Index yy = y0; yy <= y1; ++yy) {
          add(ws.pre.data() + (yy * (C + 1) + x0) * ldx, out_w);
          add(ws.suf.data() + (yy * (C + 1) + x1 + 1) * ldx, out_w);
          for (Index xx = x0; xx <= x1; ++xx)
            add(x + (yy * C + xx) * ldx, ws.ek[static_cast<size_t>((yy - y + ch) * kw + (xx - xc + cw))]);
        }
        detail::aft_weighted_sum(ws.rows.data(), ws.wts.data(), static_cast<Index>(cnt), ldx, ws.acc.data());
        const Index t = y * C + xc;
        detail::aft_finish(ConstMatrixMap<Acc>(qq.data() + t * d, 1, d), ws.acc.data(), ldx, 1, ws.y.data() + t * d,
                           [&](Index, Index c) {
                             return detail::aft_exact_ratio(kk, vv, c, n - 1, [&](Index tp) {
                               const Index i = tp / C - y + ch, j = tp % C - xc + cw;
                               return i >= 0 && i < kh && j >= 0 && j < kw ? ker(i, j) : Acc(0);
                             });
                           });
      }
    detail::store_rows(ws.y, op);
  }

  std::shared_ptr<const AftWeights<T>> kernels_;
};

}  // namespace softfree
