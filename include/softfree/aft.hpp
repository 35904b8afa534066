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

/// X[t] = [e^{K[t] - m} * V[t], e^{K[t] - m}, 0...] for t in [lo, hi) (row t at x + t * ldx).
template <class Acc>
void aft_exp_rows(const ConstMatrixMap<Acc>& k, const ConstMatrixMap<Acc>& v, const Acc* m, Index lo, Index hi,
                  Index ldx, Acc* x) {
  using Row = Eigen::Array<Acc, 1, Eigen::Dynamic>;
  const Index d = k.cols();
  const Eigen::Map<const Row> mr(m, d);
  for (Index t = lo; t < hi; ++t) {
    Acc* xt = x + t * ldx;
    Eigen::Map<Row> e(xt + d, d);
    e = (k.row(t).array() - mr).exp();
    Eigen::Map<Row>(xt, d) = e * v.row(t).array();
    std::fill(xt + 2 * d, xt + ldx, Acc(0));
  }
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

/// Where to write a rows x d tile of Acc results of stride ld: straight into dst when no
/// conversion or padding is needed, else into buf (then aft_store_rows copies it out).
template <class T, class Acc>
Acc* aft_out_rows(T* dst, Index d, Index ld, Acc* buf) {
  if constexpr (std::is_same<T, Acc>::value) {
    if (ld == d) return dst;
  }
  return buf;
}

/// Copies a tile given by aft_out_rows to dst (nothing to do when it is dst itself).
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
  const P e = exp_nonpositive(ei::pnegate(ei::pabs(q)));
  const P num = ei::pselect(ei::pcmp_lt(q, ei::pset1<P>(Scalar(0))), ei::pmul(scale, e), scale);
  return ei::pdiv(num, ei::padd(ei::pset1<P>(Scalar(1)), e));
}

/// y = sigma(q) * num / den for `rows` rows, with [num | den] rows at acc + r * lda; an element
/// whose den is below aft_tiny is replaced by exact(r, c) (its exact num / den).
template <class Acc, class Exact>
void aft_finish(const ConstMatrixMap<Acc>& q, const Acc* acc, Index lda, Index rows, Acc* y,
                const Exact& exact) {
  using Row = Eigen::Array<Acc, 1, Eigen::Dynamic>;
  const Index d = q.cols();
  for (Index r = 0; r < rows; ++r) {
    const Acc* a = acc + r * lda;
    Eigen::Map<Row> yr(y + r * d, d);
    yr = Eigen::Map<const Row>(a, d) / Eigen::Map<const Row>(a + d, d);
    for (Index c = 0; c < d; ++c)
      if (!(a[d + c] >= aft_tiny<Acc>())) yr[c] = exact(r, c);
    yr *= (Acc(1) + (-q.row(r).array()).exp()).inverse();  // sigma(q) = 1 / (1 + e^-q): no overflow
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
  void run_sums(const T* kp, const T* vp, Index n, Workspace& ws) const {
    namespace ei = Eigen::internal;
    using P = detail::Packet<Acc>;
    constexpr Index L = detail::kLanes<Acc>;
    const Index d = ws.d, ld = ws.ld;
    for (Index t0 = 0; t0 < n; t0 += kTile) {
      const Index rows = std::min(kTile, n - t0);
      const Acc* kt = detail::aft_rows(kp + t0 * d, rows, d, ld, ws.tile.data());
      const Acc* vt = detail::aft_rows(vp + t0 * d, rows, d, ld, ws.tile.data() + kTile * ld);
      for (Index c = 0; c < ld; c += L) {
        P mx = ei::ploadu<P>(kt + c);
        for (Index r = 1; r < rows; ++r) mx = ei::pmax(mx, ei::ploadu<P>(kt + r * ld + c));
        P num = ei::pset1<P>(Acc(0)), den = num;
        if (t0 > 0) {
          const P m_old = ei::pload<P>(ws.m.data() + c);
          mx = ei::pmax(mx, m_old);
          const P alpha = detail::exp_nonpositive(ei::psub(m_old, mx));
          num = ei::pmul(ei::pload<P>(ws.num.data() + c), alpha);
          den = ei::pmul(ei::pload<P>(ws.den.data() + c), alpha);
        }
        // Two accumulator pairs: the adds of consecutive rows do not wait on each other.
        P num2 = ei::pset1<P>(Acc(0)), den2 = num2;
        Index r = 0;
        for (; r + 2 <= rows; r += 2) {
          const P e0 = detail::exp_nonpositive(ei::psub(ei::ploadu<P>(kt + r * ld + c), mx));
          const P e1 = detail::exp_nonpositive(ei::psub(ei::ploadu<P>(kt + (r + 1) * ld + c), mx));
          num = ei::pmadd(e0, ei::ploadu<P>(vt + r * ld + c), num);
          num2 = ei::pmadd(e1, ei::ploadu<P>(vt + (r + 1) * ld + c), num2);
          den = ei::padd(den, e0);
          den2 = ei::padd(den2, e1);
        }
        if (r < rows) {
          const P e0 = detail::exp_nonpositive(ei::psub(ei::ploadu<P>(kt + r * ld + c), mx));
          num = ei::pmadd(e0, ei::ploadu<P>(vt + r * ld + c), num);
          den = ei::padd(den, e0);
        }
        ei::pstore(ws.m.data() + c, mx);
        ei::pstore(ws.num.data() + c, ei::padd(num, num2));
        ei::pstore(ws.den.data() + c, ei::padd(den, den2));
      }
    }
  }

  // Y[t] = sigma(Q[t]) * num / den (den >= 1: the max key contributes e^0).
  void run_output(const T* qp, Index n, Workspace& ws, T* op) const {
    namespace ei = Eigen::internal;
    using P = detail::Packet<Acc>;
    constexpr Index L = detail::kLanes<Acc>;
    const Index d = ws.d, ld = ws.ld;
    for (Index c = 0; c < ld; c += L)
      ei::pstore(ws.num.data() + c, ei::pdiv(ei::pload<P>(ws.num.data() + c), ei::pload<P>(ws.den.data() + c)));
    for (Index t0 = 0; t0 < n; t0 += kTile) {
      const Index rows = std::min(kTile, n - t0);
      const Acc* qt = detail::aft_rows(qp + t0 * d, rows, d, ld, ws.tile.data());
      Acc* y = detail::aft_out_rows(op + t0 * d, d, ld, ws.tile.data() + kTile * ld);
      for (Index r = 0; r < rows; ++r)
        for (Index c = 0; c < ld; c += L)
          ei::pstoreu(y + r * ld + c,
                      detail::aft_scaled_sigmoid(ei::ploadu<P>(qt + r * ld + c), ei::pload<P>(ws.num.data() + c)));
      detail::aft_store_rows(y, rows, d, ld, op + t0 * d);
    }
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
    const Acc* panels = bias_->panels(causal);
    const Index chunks = (s.N + kChunk - 1) / kChunk;
    // One item = kChunk query rows of one (b, h).
    detail::parallel_for(parallel, s.B * s.H * chunks, [&] {
      return [&, ws = Workspace(s.N, s.D)](Index item) mutable {
        const Index bh = item / chunks, b = bh / s.H, h = bh % s.H;
        const Index i0 = (item % chunks) * kChunk;
        run_chunk(head(q, b, h).data(), head(k, b, h).data(), head(v, b, h).data(), s.N, h, i0,
                  std::min(kChunk, s.N - i0), panels, ws, head(out, b, h).data());
      };
    });
  }

 private:
  static constexpr Index kBlockQ = 4 * detail::kLanes<Acc>;  // queries per panel (vp_product's block)
#ifndef SF_AFT_BK
#define SF_AFT_BK 64
#endif
  static constexpr Index kBlockK = SF_AFT_BK;  // keys per product: the panel tile stays in L1
  // Query rows per work item: X is rebuilt per item (N D exponentials), so an item should carry
  // enough rows to amortise it, and there should still be several items per head for threads.
  static constexpr Index kChunk = 4 * kBlockQ;

  // exp(w) per head slot, stored transposed in panels of kBlockQ queries: panel p holds rows
  // j = 0..N-1 (keys) x kBlockQ columns (queries p*kBlockQ + i), the layout vp_product reads.
  // Row t is shifted by max_t' w[t, t'] over its summed keys (all, or t' <= t when causal; the
  // causal table is zero above the diagonal), so entries are <= 1 and the shift cancels in the
  // ratio. Each variant is built on first use, once, and shared by every copy of the functor.
  struct Cache {
    explicit Cache(const AftWeights<T>& w_) : w(w_) {}
    const Acc* panels(bool causal_) const {
      const int c = causal_ ? 1 : 0;
      std::call_once(once[c], [&] { build(causal_, table[c]); });
      return table[c].data();
    }
    void build(bool causal_, detail::AlignedBuffer<Acc>& tab) const {
      const Index slots = w.dimension(0), n = w.dimension(1), np = (n + kBlockQ - 1) / kBlockQ;
      tab.assign(static_cast<size_t>(slots * np * n * kBlockQ), Acc(0));
      for (Index hs = 0; hs < slots; ++hs) {
        const auto wh = detail::aft_slot(w, hs);
        for (Index t = 0; t < n; ++t) {
          const Index last = causal_ ? t : n - 1;
          const Acc mx = wh.row(t).head(last + 1).maxCoeff();
          Acc* col = tab.data() + ((hs * np + t / kBlockQ) * n) * kBlockQ + t % kBlockQ;
          for (Index j = 0; j <= last; ++j) col[j * kBlockQ] = std::exp(wh(t, j) - mx);
        }
      }
    }
    AftWeights<T> w;
    mutable std::once_flag once[2];
    mutable detail::AlignedBuffer<Acc> table[2];
  };

  struct Workspace {
    Workspace(Index n, Index d)
        : d(d), ldx(detail::aft_ld<Acc>(d)), x(static_cast<size_t>(n * ldx)),
          ot(static_cast<size_t>(ldx * kBlockQ)), acc(static_cast<size_t>(kBlockQ * ldx)), m(static_cast<size_t>(d)),
          y(kBlockQ, d) {}
    Index d, ldx;
    detail::AlignedBuffer<Acc> x, ot, acc, m;
    RowMatrix<Acc> y;
    detail::TileLoader<T> load_q, load_k, load_v;
  };

  // Query rows [c0, c0 + rows) of one head.
  void run_chunk(const T* qp, const T* kp, const T* vp, Index n, Index h, Index c0, Index rows, const Acc* panels,
                 Workspace& ws, T* op) const {
    const Index d = ws.d, ldx = ws.ldx, np = (n + kBlockQ - 1) / kBlockQ;
    const Index slot = bias_->w.dimension(0) == 1 ? 0 : h;
    // Keys these rows see; shifted by their max, so the chunk's last row has a term equal to 1.
    const Index kend = causal ? c0 + rows : n;
    const auto kk = ws.load_k(kp, kend, d);
    const auto vv = ws.load_v(vp, kend, d);
    detail::aft_col_max(kk, kend, ws.m.data());
    detail::aft_exp_rows(kk, vv, ws.m.data(), 0, kend, ldx, ws.x.data());
    const auto wh = detail::aft_slot(bias_->w, slot);
    for (Index i0 = c0; i0 < c0 + rows; i0 += kBlockQ) {
      const Index prow = std::min(kBlockQ, n - i0);
      const Index nk = causal ? std::min(n, i0 + kBlockQ) : n;
      const Acc* pan = panels + ((slot * np + i0 / kBlockQ) * n) * kBlockQ;
      std::fill(ws.ot.begin(), ws.ot.end(), Acc(0));
      for (Index j0 = 0; j0 < nk; j0 += kBlockK)
        detail::vp_product(ws.x.data() + j0 * ldx, ldx, std::min(kBlockK, nk - j0), 2 * d, pan + j0 * kBlockQ,
                           kBlockQ, ws.ot.data());
      for (Index r = 0; r < prow; ++r)
        for (Index c = 0; c < 2 * d; ++c) ws.acc[static_cast<size_t>(r * ldx + c)] = ws.ot[static_cast<size_t>(c * kBlockQ + r)];
      const auto qq = ws.load_q(qp + i0 * d, prow, d);
      detail::aft_finish(qq, ws.acc.data(), ldx, prow, ws.y.data(), [&](Index r, Index c) {
        const Index t = i0 + r;
        return detail::aft_exact_ratio(kk, vv, c, causal ? t : n - 1, [&](Index tp) { return wh(t, tp); });
      });
      detail::store_rows(ws.y.topRows(prow), op + i0 * d);
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
    band_ = std::make_shared<const Band>(Band{window, std::move(band)});
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
    band_ = std::make_shared<const Band>(Band{window, band});
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
  struct Band {
    Index s;
    AftWeights<T> w;  // [1 or H, N, 2s - 1]
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

    // Row t: acc = e^{-r} * outside + sum over the window of e^{w - r} X[t'], with
    // r = max(0, max of w over the window), so every weight is <= 1.
    const auto do_row = [&](Index t, const Acc* outside) {
      const Index lo = std::max<Index>(0, t - s + 1), hi = causal ? t : std::min(n - 1, t + s - 1);
      Acc r = 0;
      if (band_)
        for (Index tp = lo; tp <= hi; ++tp) r = std::max(r, band_->w(slot, t, tp - t + s - 1));
      Index cnt = 0;
      ws.rows[0] = outside;
      ws.wts[0] = std::exp(-r);
      for (Index tp = lo; tp <= hi; ++tp) {
        ++cnt;
        ws.rows[static_cast<size_t>(cnt)] = x + tp * ldx;
        ws.wts[static_cast<size_t>(cnt)] = band_ ? std::exp(band_->w(slot, t, tp - t + s - 1) - r) : Acc(1);
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
        detail::aft_exp_rows(kk, vv, ws.m.data(), std::max<Index>(0, b0 - s), b1, ldx, x);
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
