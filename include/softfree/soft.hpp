#pragma once
// SOFT (Lu et al., NeurIPS 2021): softmax-free attention with a Gaussian kernel
//   k(x, y) = exp(-||x - y||^2 / (2 sqrt(D))),
// no row normalisation. SoftGaussian is the exact O(N^2) form; SoftNystrom the linear form
// O = P pinv(A) (R V) over m landmarks, with the pseudo-inverse by Newton-Raphson (newton_pinv).
//
// SoftGaussian is a flash-style kernel (detail::GaussianBlock): the exponent is expanded as
//   -||q - k||^2 / (2 sqrt D) = s q.k - s|q|^2/2 - s|k|^2/2,   s = 1/sqrt(D),
// so a score tile is one product K QT (core/microkernels.hpp) plus two norms, and the weights go
// straight into OT += V^T PT. Every exponent is <= 0, so no running max is needed; it is clamped
// at 0 from above so rounding in the expansion can never produce a weight above 1.
// SoftNystrom weighs tiles of tokens against the m landmarks (LandmarkKernel: one product with
// the exponential applied in registers). Untied, the key tiles give R^T's rows for R V and, after
// the pseudo-inverse, the query tiles give P's rows for O = P Y (Y = pinv(A) (R V), m x D). Tied
// (k is q, the paper's case), R = P^T: P is weighed once and kept, and A is symmetric, which
// newton_pinv exploits; three N x m x D products instead of four.
#include <algorithm>
#include <cmath>
#include <memory>
#include <type_traits>
#include <vector>

#include "core/attention.hpp"
#include "core/microkernels.hpp"
#include "core/parallel.hpp"
#include "core/precision.hpp"

namespace softfree {

// ------------------------------------------------------------------ Newton-Raphson pseudo-inverse

/// How newton_pinv starts (SPEC.md "SOFT").
enum class NewtonInit {
  /// Current official code: P = A + lambda I, V0 = alpha P, alpha = 0.9 * 2 / (max_i sum_j |A_ij|)^2
  /// (row sums of A, before lambda is added). Converges to (A + lambda I)^-1.
  Current,
  /// Paper-era code: P = A (lambda ignored), V0 = alpha A, alpha = 2 / (max row sum)^2, halved
  /// (at most 10 times) while max_j sum_i |(I - A V0)_ij| > 1.01.
  PaperEra,
};

/// Options of the Newton-Raphson (Newton-Schulz) iteration V <- 2V - V P V.
struct NewtonOptions {
  int steps = 20;         ///< iterations (>= 0); 6 do not converge on typical kernel matrices
  double lambda = 0.01;   ///< regulariser added to the diagonal (Current init); >= 0, finite
  NewtonInit init = NewtonInit::Current;
  /// Early stop once ||I - P V||_F < tolerance (checked after every step); 0 = run every step.
  double tolerance = 0;
  /// With tolerance = 0, a result counts as converged when ||I - P V||_F < this.
  static constexpr double kConvergedResidual = 1e-2;
};

/// Result of newton_pinv: the iterate and how far it got.
template <class Acc>
struct NewtonResult {
  RowMatrix<Acc> inverse;  ///< the final iterate V ~ P^-1
  int steps = 0;           ///< steps run (fewer than options.steps after an early stop)
  double residual = 0;     ///< ||I - P V||_F of the returned V
  bool converged = false;  ///< residual < tolerance (or < kConvergedResidual when tolerance = 0)
};

/// What SoftNystrom's pseudo-inverses did on its last call, over every (b, h) head.
struct NewtonDiagnostics {
  Index heads = 0;         ///< matrices inverted (B * H)
  int steps = 0;           ///< most steps any head ran
  double residual = 0;     ///< worst ||I - P V||_F over the heads
  bool converged = false;  ///< every head converged (NewtonResult::converged)
};

namespace detail {

inline void check_newton_options(const char* where, const char* prefix, const NewtonOptions& o) {
  if (o.steps < 0) fail(where, prefix, "steps = ", o.steps, ": must be >= 0");
  if (!(std::isfinite(o.lambda) && o.lambda >= 0))
    fail(where, prefix, "lambda = ", o.lambda, ": must be non-negative and finite");
  if (!(std::isfinite(o.tolerance) && o.tolerance >= 0))
    fail(where, prefix, "tolerance = ", o.tolerance, ": must be non-negative and finite (0 = no early stop)");
}

inline bool newton_converged(const NewtonOptions& o, double residual) {
  return residual < (o.tolerance > 0 ? o.tolerance : NewtonOptions::kConvergedResidual);
}

/// dst[c] += sum of rows [0, rows) of x (rows x d, contiguous), with packets along the row: the
/// landmark pooling (an Eigen colwise sum of a row-major block would walk each column alone).
template <class Acc>
void add_row_sums(const Acc* x, Index rows, Index d, Acc* dst) {
  namespace ei = Eigen::internal;
  using P = Packet<Acc>;
  constexpr Index L = kLanes<Acc>;
  Index c = 0;
  for (; c + 4 * L <= d; c += 4 * L) {
    P a0 = ei::ploadu<P>(dst + c), a1 = ei::ploadu<P>(dst + c + L), a2 = ei::ploadu<P>(dst + c + 2 * L),
      a3 = ei::ploadu<P>(dst + c + 3 * L);
    for (Index r = 0; r < rows; ++r) {
      const Acc* xr = x + r * d + c;
      a0 = ei::padd(a0, ei::ploadu<P>(xr));
      a1 = ei::padd(a1, ei::ploadu<P>(xr + L));
      a2 = ei::padd(a2, ei::ploadu<P>(xr + 2 * L));
      a3 = ei::padd(a3, ei::ploadu<P>(xr + 3 * L));
    }
    ei::pstoreu(dst + c, a0);
    ei::pstoreu(dst + c + L, a1);
    ei::pstoreu(dst + c + 2 * L, a2);
    ei::pstoreu(dst + c + 3 * L, a3);
  }
  for (; c + L <= d; c += L) {
    P a = ei::ploadu<P>(dst + c);
    for (Index r = 0; r < rows; ++r) a = ei::padd(a, ei::ploadu<P>(x + r * d + c));
    ei::pstoreu(dst + c, a);
  }
  for (; c < d; ++c)
    for (Index r = 0; r < rows; ++r) dst[c] += x[r * d + c];
}

/// Buffers of the iteration, sized once per m and reused across heads: m x m matrices with rows
/// padded to whole packets (aligned rows for bcast_product). The padding columns stay zero, so
/// products run over whole packets (the padding of P V and V T is zero again) instead of
/// sending the last m mod 16 columns through a slow narrow product.
template <class Acc>
struct NewtonWorkspace {
  using Map = Eigen::Map<RowMatrix<Acc>, 0, Eigen::OuterStride<>>;
  Index m = 0, ld = 0;
  AlignedBuffer<Acc> p_, v_, t_, u_;

  void resize(Index n) {
    if (n == m) return;
    m = n;
    ld = (n + kLanes<Acc> - 1) / kLanes<Acc> * kLanes<Acc>;
    for (AlignedBuffer<Acc>* b : {&p_, &v_, &t_, &u_}) {
      if (static_cast<Index>(b->size()) < m * ld) b->resize(static_cast<size_t>(m * ld));
      std::fill(b->begin(), b->begin() + m * ld, Acc(0));
    }
  }
  Map map(AlignedBuffer<Acc>& b) { return Map(b.data(), m, m, Eigen::OuterStride<>(ld)); }
  Map p() { return map(p_); }
  Map v() { return map(v_); }
  Map t() { return map(t_); }
  Map u() { return map(u_); }
  /// A matrix with its zero padding columns, as one contiguous array.
  Eigen::Map<Eigen::Array<Acc, Eigen::Dynamic, 1>, Eigen::Aligned16> full(AlignedBuffer<Acc>& b) {
    return {b.data(), m * ld};
  }
  /// P is symmetric (exactly): then so is every V, and both products have a cheaper form (mul).
  bool symmetric = false;

  enum class Form {
    General,
    /// x and y exactly symmetric (P V): the last m mod L columns of x y are the rows
    /// y[mp:m, :] x, transposed; that spares padding those columns to a whole packet.
    SymmetricFactors,
    /// x y known to be symmetric (V T = V P V for symmetric V and P, whatever the rounding in T):
    /// the blocks below the diagonal are mirrored instead of computed, and the result is exactly
    /// symmetric (SymmetricFactors relies on V being so). (P V is not mirrored: V
    /// would drift from commuting with P and the iteration lose its self-correction; the
    /// residual then grows with m, up to divergence in float.)
    SymmetricResult,
  };

  /// dst = x y for three of the workspace's matrices.
  void mul(AlignedBuffer<Acc>& x, AlignedBuffer<Acc>& y, AlignedBuffer<Acc>& dst, Form form = Form::General) {
    constexpr Index L = kLanes<Acc>;
    const Index mp = m / L * L;  // columns in whole packets
    Acc* c = dst.data();
    if (form == Form::General) {
      bcast_product<false>(x.data(), ld, Index(1), m, m, y.data(), ld, ld, c, ld);
    } else if (form == Form::SymmetricFactors) {
      if (mp > 0) bcast_product<false>(x.data(), ld, Index(1), m, m, y.data(), ld, mp, c, ld);
      if (mp < m) {
        if (tail_.size() < static_cast<size_t>(L * ld)) tail_.resize(static_cast<size_t>(L * ld));
        bcast_product<false>(y.data() + mp * ld, ld, Index(1), m - mp, m, x.data(), ld, ld, tail_.data(), ld);
        for (Index r = 0; r < m; ++r)
          for (Index j = mp; j < m; ++j) c[r * ld + j] = tail_[static_cast<size_t>((j - mp) * ld + r)];
      }
    } else {
      // Row blocks of L below mp: columns from the block's diagonal packet up to mp (the upper
      // triangle in whole packets); the last m - mp rows at full width; the rest is mirrored.
      for (Index r0 = 0; r0 < mp; r0 += L)
        bcast_product<false>(x.data() + r0 * ld, ld, Index(1), L, m, y.data() + r0, ld, mp - r0, c + r0 * ld + r0,
                             ld);
      if (mp < m) bcast_product<false>(x.data() + mp * ld, ld, Index(1), m - mp, m, y.data(), ld, ld, c + mp * ld, ld);
      using Block = Eigen::Map<Eigen::Matrix<Acc, L, L, Eigen::RowMajor>, 0, Eigen::OuterStride<>>;
      for (Index r0 = L; r0 < mp; r0 += L)
        for (Index c0 = 0; c0 < r0; c0 += L)
          Block(c + r0 * ld + c0, L, L, Eigen::OuterStride<>(ld)) =
              Block(c + c0 * ld + r0, L, L, Eigen::OuterStride<>(ld)).transpose();
      for (Index r = 0; r < m; ++r)  // the last columns, and the lower half of the last rows' block
        for (Index j = std::max(mp, r + 1); j < m; ++j) c[r * ld + j] = c[j * ld + r];
    }
  }

 private:
  AlignedBuffer<Acc> tail_;
};

struct NewtonStats {
  int steps = 0;
  double residual = 0;
};

/// Runs the iteration on the square matrix a; the result is left in ws.v.
/// Each step costs two m^3 products: T = P V, then V <- 2V - V T. The next step's T gives the
/// residual I - T for free, so the final residual costs one extra product in all.
template <class Acc, class Derived>
NewtonStats newton_run(const Eigen::MatrixBase<Derived>& a, const NewtonOptions& o, NewtonWorkspace<Acc>& ws) {
  const Index m = a.rows();
  ws.resize(m);
  auto p = ws.p(), v = ws.v(), t = ws.t();
  const auto eye = RowMatrix<Acc>::Identity(m, m);
  const double row_sum = static_cast<double>(a.cwiseAbs().rowwise().sum().maxCoeff());
  p = a;
  ws.symmetric = (a.array() == a.transpose().array()).all();
  if (o.init == NewtonInit::Current) {
    p.diagonal().array() += static_cast<Acc>(o.lambda);
    // A whose kernel values all underflowed is 0: then start from P's own row sum (lambda), so
    // the iteration still converges to (lambda I)^-1 rather than dividing by zero.
    const double rs = row_sum > 0 ? row_sum : static_cast<double>(o.lambda);
    if (rs > 0)
      v = static_cast<Acc>(0.9 * 2.0 / (rs * rs)) * p;
    else
      v.setZero();  // A = 0 and lambda = 0: pinv(0) = 0
  } else if (row_sum > 0) {
    double alpha = 2.0 / (row_sum * row_sum);
    v = static_cast<Acc>(alpha) * p;
    for (int halvings = 0; halvings < 10; ++halvings) {
      ws.mul(ws.p_, ws.v_, ws.t_);
      const Acc col_sum = (eye - t).cwiseAbs().colwise().sum().maxCoeff();
      if (!(col_sum > Acc(1.01))) break;
      alpha *= 0.5;
      v = static_cast<Acc>(alpha) * p;
    }
  } else {
    v.setZero();  // pinv(0) = 0
  }
  NewtonStats st;
  using Form = typename NewtonWorkspace<Acc>::Form;
  const Form pv = ws.symmetric ? Form::SymmetricFactors : Form::General;
  ws.mul(ws.p_, ws.v_, ws.t_, pv);
  for (int s = 1; s <= o.steps; ++s) {
    ws.mul(ws.v_, ws.t_, ws.u_, ws.symmetric ? Form::SymmetricResult : Form::General);
    ws.full(ws.v_) = Acc(2) * ws.full(ws.v_) - ws.full(ws.u_);  // padding: 2 * 0 - 0
    ws.mul(ws.p_, ws.v_, ws.t_, pv);
    st.steps = s;
    if (o.tolerance > 0 && static_cast<double>((t - eye).norm()) < o.tolerance) break;
  }
  st.residual = static_cast<double>((t - eye).norm());
  return st;
}

}  // namespace detail

/// Newton-Raphson (Newton-Schulz) pseudo-inverse of a square float or double matrix (SPEC.md
/// "SOFT"): with the default options, 20 steps of V <- 2V - V P V from the official code's start,
/// approximating (A + 0.01 I)^-1. The result carries the steps run and the residual
/// ||I - P V||_F, so non-convergence is visible (converged = false), never silent.
/// Throws softfree::invalid_argument for a non-square or empty matrix or a bad option.
template <class Derived>
NewtonResult<typename Derived::Scalar> newton_pinv(const Eigen::MatrixBase<Derived>& a,
                                                   const NewtonOptions& options = {}) {
  using Acc = typename Derived::Scalar;
  static_assert(std::is_same<Acc, float>::value || std::is_same<Acc, double>::value,
                "softfree::newton_pinv: the matrix must be float or double");
  if (a.rows() != a.cols() || a.rows() == 0)
    detail::fail("newton_pinv", "a is ", a.rows(), " x ", a.cols(), ": must be square and non-empty");
  detail::check_newton_options("newton_pinv", "options.", options);
  detail::NewtonWorkspace<Acc> ws;
  const detail::NewtonStats st = detail::newton_run(a.eval(), options, ws);
  NewtonResult<Acc> r;
  r.inverse = ws.v();
  r.steps = st.steps;
  r.residual = st.residual;
  r.converged = detail::newton_converged(options, st.residual);
  return r;
}

// ------------------------------------------------------------------ the Gaussian-kernel tile loop

namespace detail {

/// The kernel weight exp(e) of exponents e that are <= 0 up to rounding: clamped at 0 from above
/// (a weight never exceeds 1), and flushed to 0 where exp underflows (exp_nonpositive would
/// return the smallest normal there).
template <class P>
EIGEN_ALWAYS_INLINE P gaussian_weight(P e) {
  namespace ei = Eigen::internal;
  using Acc = typename ei::unpacket_traits<P>::type;
  const P lowest = ei::pset1<P>(std::is_same<Acc, float>::value ? Acc(-87.3) : Acc(-708));
  e = ei::pmin(e, ei::pset1<P>(Acc(0)));
  return ei::pand(exp_nonpositive(e), ei::pcmp_le(lowest, e));
}

/// One block of up to `width` queries against any number of keys, either summed into
/// OT += sum_j k(q, k_j) v_j^T (add) or handed out as a weight tile W[j, i] = k(q_i, k_j) (weigh).
/// Keys and values may be storage (converted tile by tile) or accumulate type (used in place).
template <class Acc>
class GaussianBlock {
 public:
  // Default width: four packets of queries (64 with AVX-512 float). 128-key tiles: QT, OT and the
  // weight tile stay in L1, as in SoftmaxAttention.
  static constexpr Index kBlockQ = 4 * kLanes<Acc>;
  static constexpr Index kBlockK = 128;

  /// Head dim d; width is rounded up to a multiple of the packet width.
  explicit GaussianBlock(Index d, Index width = kBlockQ)
      : d_(d), bq_((width + kLanes<Acc> - 1) / kLanes<Acc> * kLanes<Acc>),
        s_(static_cast<Acc>(1.0 / std::sqrt(static_cast<double>(d)))), qt_(static_cast<size_t>(d * bq_)),
        ot_(qt_.size()), st_(static_cast<size_t>(kBlockK * bq_)), qn_(static_cast<size_t>(bq_)), kn_(kBlockK),
        o_(bq_, d) {}

  /// Leading dimension of the weight tile (width rounded up).
  Index width() const { return bq_; }

  /// Starts a block: q (rows <= width, d columns) is transposed with s folded in, its half
  /// squared norms s|q|^2/2 kept, the accumulator cleared. Padding columns are zero queries.
  void start(const ConstMatrixMap<Acc>& q) {
    rows_ = q.rows();
    Acc* qt = qt_.data();
    for (Index c = 0; c < d_; ++c) {
      for (Index r = 0; r < rows_; ++r) qt[c * bq_ + r] = q(r, c) * s_;
      std::fill(qt + c * bq_ + rows_, qt + (c + 1) * bq_, Acc(0));
    }
    std::fill(qn_.begin(), qn_.end(), Acc(0));
    for (Index r = 0; r < rows_; ++r) qn_[static_cast<size_t>(r)] = q.row(r).squaredNorm() * (s_ / 2);
    std::fill(ot_.begin(), ot_.end(), Acc(0));
  }

  /// Adds keys k[0, nk) with values v[0, nk) (both nk x d, contiguous rows) into the block.
  template <class TK>
  void add(const TK* k, const TK* v, Index nk, TileLoader<TK>& load_k, TileLoader<TK>& load_v) {
    static_assert(std::is_same<accum_t<TK>, Acc>::value, "keys must accumulate in the block's type");
    for (Index j0 = 0; j0 < nk; j0 += kBlockK) {
      const Index nj = std::min(kBlockK, nk - j0);
      const auto kt = load_k(k + j0 * d_, nj, d_);
      const auto vt = load_v(v + j0 * d_, nj, d_);
      vp_product(vt.data(), d_, nj, d_, weigh(kt), bq_, ot_.data());
    }
  }

  /// The weight tile of keys kt (at most kBlockK rows): W[j, i] = k(q_i, k_j), row j at
  /// W + j * width(); columns past the block's rows hold weights of zero queries.
  const Acc* weigh(const ConstMatrixMap<Acc>& kt) {
    using P = Packet<Acc>;
    namespace ei = Eigen::internal;
    constexpr Index L = kLanes<Acc>;
    // Below this exp underflows: exp_nonpositive would return the smallest normal, so flush to 0.
    const Index nj = kt.rows();
    for (Index j = 0; j < nj; ++j) kn_[static_cast<size_t>(j)] = kt.row(j).squaredNorm() * (s_ / 2);
    Acc* st = st_.data();
    kq_product(kt.data(), d_, nj, qt_.data(), bq_, d_, st);
    for (Index j = 0; j < nj; ++j) {
      const P kn = ei::pset1<P>(kn_[static_cast<size_t>(j)]);
      for (Index i = 0; i < bq_; i += L) {
        Acc* x = st + j * bq_ + i;
        ei::pstore(x, gaussian_weight(ei::psub(ei::psub(ei::pload<P>(x), kn), ei::pload<P>(qn_.data() + i))));
      }
    }
    return st;
  }

  /// The block's summed result (add), rows x d.
  auto result() {
    for (Index r = 0; r < rows_; ++r)
      for (Index c = 0; c < d_; ++c) o_(r, c) = ot_[static_cast<size_t>(c * bq_ + r)];
    return o_.topRows(rows_);
  }

 private:
  Index d_, bq_, rows_ = 0;
  Acc s_;
  AlignedBuffer<Acc> qt_, ot_, st_, qn_, kn_;
  RowMatrix<Acc> o_;
};

/// Kernel weights 2^t in base 2 (t <= 0 up to rounding, clamped at 0 from above so a weight never
/// exceeds 1; 0 below -126): LandmarkKernel folds log2 e into its operands.
template <class P>
EIGEN_ALWAYS_INLINE P exp2_weight(const P& t) {
  return exp2_nonpositive(Eigen::internal::pmin(t, Eigen::internal::pset1<P>(0.0f)));
}

/// Gaussian-kernel weights of tiles of tokens x (rows x d, rows <= kTile) against m fixed
/// landmarks l: W[j, i] = k(x_j, l_i), row j at W + j * ld(). A landmark set (s l, its
/// transpose, half norms) is prepared once into a caller-owned buffer of set_size(m, d) and then
/// serves any number of tiles. Packets run along the landmarks in the product with the tile;
/// when m is a few lanes past whole packets (49 = 3 x 16 + 1) those last landmarks take one
/// matrix-vector product each rather than padding the whole product to 64 lanes.
template <class Acc>
class LandmarkKernel {
  static constexpr Index L = kLanes<Acc>;
  static Index round_up(Index n) { return (n + L - 1) / L * L; }
  // Landmarks covered by the packet product: whole packets, or m padded when that wastes less.
  static Index main_lanes(Index m) { return m % L <= L / 4 ? m / L * L : round_up(m); }

 public:
  static constexpr Index kTile = 64;
  // float exponents are carried in base 2 (log2 e folded into s) for exp2_weight.
  static constexpr bool kBase2 = std::is_same<Acc, float>::value;

  static Index set_size(Index m, Index d) { return m * d + d * main_lanes(m) + round_up(m); }

  LandmarkKernel(Index m, Index d)
      : m_(m), d_(d), ld_(round_up(m)), ml_(main_lanes(m)),
        s_(static_cast<Acc>((kBase2 ? kLog2e<double> : 1.0) / std::sqrt(static_cast<double>(d)))), xn_(static_cast<size_t>(round_up(kTile)), Acc(0)),
        dots_(xn_.size(), Acc(0)), w_(static_cast<size_t>(kTile * ld_)) {}

  /// Leading dimension of the weight tiles.
  Index ld() const { return ld_; }
  static Index ld_for(Index m) { return round_up(m); }

  /// Prepares the landmarks l (m x d) into set (set_size(m, d) values).
  template <class Derived>
  void prepare(const Eigen::MatrixBase<Derived>& l, Acc* set) const {
    MatrixMap<Acc> ls(set, m_, d_);
    ls = l * s_;
    Acc* lt = set + m_ * d_;
    for (Index c = 0; c < d_; ++c)
      for (Index i = 0; i < ml_; ++i) lt[c * ml_ + i] = i < m_ ? ls(i, c) : Acc(0);  // padding: zero landmarks
    Acc* ln = lt + d_ * ml_;
    for (Index i = 0; i < ld_; ++i) ln[i] = i < m_ ? l.row(i).squaredNorm() * (s_ / 2) : Acc(0);
  }

  /// The weight tile of x against a prepared set, written to dst (x.rows() rows of ld(), aligned)
  /// or, without dst, to an internal tile valid until the next call.
  const Acc* weigh(const Acc* set, const ConstMatrixMap<Acc>& x, Acc* dst = nullptr) {
    namespace ei = Eigen::internal;
    using P = Packet<Acc>;
    const Index rows = x.rows();
    const Acc *ls = set, *lt = set + m_ * d_, *ln = lt + d_ * ml_;
    Acc *w = dst ? dst : w_.data(), *xn = xn_.data(), *dots = dots_.data();
    for (Index j = 0; j < rows; ++j) xn[j] = x.row(j).squaredNorm() * (s_ / 2);
    // Packets of landmarks in groups of 4 (6 rows), then 3, 2 or 1, as in bcast_product.
    Index i = 0;
    for (; i + 4 * L <= ml_; i += 4 * L) weigh_rows<6, 4>(x.data(), rows, lt + i, ln + i, xn, w + i);
    switch ((ml_ - i) / L) {
      case 3: weigh_rows<8, 3>(x.data(), rows, lt + i, ln + i, xn, w + i); break;
      case 2: weigh_rows<12, 2>(x.data(), rows, lt + i, ln + i, xn, w + i); break;
      case 1: weigh_rows<8, 1>(x.data(), rows, lt + i, ln + i, xn, w + i); break;
      default: break;
    }
    for (Index i = ml_; i < m_; ++i) {  // the landmarks past the packet product, packets along tokens
      Eigen::Map<Eigen::Matrix<Acc, Eigen::Dynamic, 1>>(dots, rows).noalias() =
          x * ConstMatrixMap<Acc>(ls, m_, d_).row(i).transpose();
      const P li = ei::pset1<P>(ln[i]);
      for (Index j = 0; j < rows; j += L)
        ei::pstore(dots + j, weight(ei::psub(ei::psub(ei::pload<P>(dots + j), ei::pload<P>(xn + j)), li)));
      for (Index j = 0; j < rows; ++j) w[j * ld_ + i] = dots[j];
    }
    return w;
  }

 private:
  template <class P>
  static EIGEN_ALWAYS_INLINE P weight(const P& e) {
    if constexpr (kBase2)
      return exp2_weight(e);
    else
      return gaussian_weight(e);
  }

  // W[j, i] for RJ tokens and NP packets of landmarks: the accumulators start at the exponent's
  // norm terms -(|x_j|^2 + |l_i|^2) s / 2, gather s x_j . l_i, and are weighted in registers.
  template <int RJ, int NP>
  EIGEN_ALWAYS_INLINE void weigh_block(const Acc* x, const Acc* lt, const Acc* ln, const Acc* xn, Acc* w) const {
    namespace ei = Eigen::internal;
    using P = Packet<Acc>;
    P acc[RJ][NP];
    for (int p = 0; p < NP; ++p) {
      const P lp = ei::ploadu<P>(ln + p * L);
      for (int r = 0; r < RJ; ++r) acc[r][p] = ei::pnegate(ei::padd(lp, ei::pset1<P>(xn[r])));
    }
    for (Index t = 0; t < d_; ++t) {
      P l[NP];
      for (int p = 0; p < NP; ++p) l[p] = ei::ploadu<P>(lt + t * ml_ + p * L);
      for (int r = 0; r < RJ; ++r) {
        const P xb = ei::pset1<P>(x[r * d_ + t]);
        for (int p = 0; p < NP; ++p) acc[r][p] = ei::pmadd(xb, l[p], acc[r][p]);
      }
    }
    for (int r = 0; r < RJ; ++r)
      for (int p = 0; p < NP; ++p) ei::pstore(w + r * ld_ + p * L, weight(acc[r][p]));
  }

  // Token rows in blocks of RJ, the rest in blocks of RJ / 2, ... 1.
  template <int RJ, int NP>
  void weigh_rows(const Acc* x, Index rows, const Acc* lt, const Acc* ln, const Acc* xn, Acc* w) const {
    Index r = 0;
    for (; r + RJ <= rows; r += RJ) weigh_block<RJ, NP>(x + r * d_, lt, ln, xn + r, w + r * ld_);
    if constexpr (RJ > 1) weigh_rows<RJ / 2, NP>(x + r * d_, rows - r, lt, ln, xn + r, w + r * ld_);
  }

  Index m_, d_, ld_, ml_;
  Acc s_;
  AlignedBuffer<Acc> xn_, dots_, w_;
};

}  // namespace detail

// ------------------------------------------------------------------ SoftGaussian

/// Exact SOFT attention, O(N^2 D): O[i] = sum_j exp(-||Q_i - K_j||^2 / (2 sqrt(D))) V_j, with no
/// normalisation. Computed in tiles (never an N x N buffer). Q may have another token count than
/// K and V (cross-attention); the paper's tied case is k == q.
template <class T = float>
class SoftGaussian : public Attention<SoftGaussian<T>, T> {
 public:
  static constexpr const char* kName = "SoftGaussian";

  /// Not supported (SOFT defines no causal form here); true is rejected.
  bool causal = false;
  Parallel parallel;

  Shape4 check_inputs(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v) const {
    const Shape4 s = detail::check_qkv(kName, q, k, v, /*allow_cross=*/true);
    if (causal) detail::fail(kName, "causal = true: SOFT attention has no causal mode");
    return s;
  }

  void compute(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v,
               const View4<T>& out) const {
    const Shape4 sq = shape_of(q);
    const Index nk = shape_of(k).N, bq = Block::kBlockQ, q_blocks = (sq.N + bq - 1) / bq;
    // One item = one block of query rows of one (b, h): independent of the thread count.
    detail::parallel_for(parallel, sq.B * sq.H * q_blocks, [&] {
      return [&, ws = Workspace(sq.D)](Index item) mutable {
        const Index bh = item / q_blocks, b = bh / sq.H, h = bh % sq.H;
        const Index i0 = (item % q_blocks) * bq, rows = std::min(bq, sq.N - i0);
        ws.block.start(ws.load_q(head(q, b, h).data() + i0 * sq.D, rows, sq.D));
        ws.block.add(head(k, b, h).data(), head(v, b, h).data(), nk, ws.load_k, ws.load_v);
        detail::store_rows(ws.block.result(), head(out, b, h).data() + i0 * sq.D);
      };
    });
  }

 private:
  using Acc = accum_t<T>;
  using Block = detail::GaussianBlock<Acc>;
  struct Workspace {
    explicit Workspace(Index d) : block(d) {}
    Block block;
    detail::TileLoader<T> load_q, load_k, load_v;
  };
};

// ------------------------------------------------------------------ landmarks

/// How SoftNystrom picks its m landmarks (SPEC.md "SOFT"). Build one with a factory.
struct Landmarks {
  enum class Kind { Segments, Grid, Given };
  Kind kind = Kind::Segments;
  Index m = 49;                     ///< Segments: the landmark count
  Index rows = 0, cols = 0, r = 0;  ///< Grid: the token image and the pooling size
  /// Given: copies of the caller's [B, H, m, D] landmark tensors, in double (exact for every
  /// storage type); shared between copies of the functor, so copying it stays cheap.
  std::shared_ptr<const Tensor4<double>> q_given, k_given;

  /// 1-D adaptive average pooling into m segments [floor(i N / m), ceil((i + 1) N / m))
  /// (PyTorch adaptive_avg_pool1d); needs 1 <= m <= N. The default, with m = 49.
  static Landmarks segments(Index m) {
    Landmarks l;
    l.m = m;
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
  /// The caller's landmarks for q and for k, each [B, H, m, D] (Tensor4 or TensorMap of any
  /// storage type). They are copied here: the caller's tensors need not outlive this call.
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
  static std::shared_ptr<const Tensor4<double>> copy(const X& x) {
    static_assert(detail::is_rowmajor_rank4<X>::value,
                  "softfree::Landmarks::given: landmarks must be [B, H, m, D] row-major rank-4 tensors");
    auto t = std::make_shared<Tensor4<double>>(x.dimensions());
    for (Index i = 0; i < t->size(); ++i) t->data()[i] = static_cast<double>(x.data()[i]);
    return t;
  }
};

// ------------------------------------------------------------------ SoftNystrom

/// SOFT with the Nystrom low-rank form, linear in N (SPEC.md "SOFT"):
///   P = k(Q, Kt) (N x m), A = k(Qt, Kt) (m x m), R = k(Qt, K) (m x N), O = P pinv(A) (R V),
/// with landmarks Qt from Q and Kt from K, evaluated right to left (never an N x N matrix).
/// pinv is newton_pinv(A, newton), in float (double for double storage). Q and K may differ,
/// also in token count (landmark counts agree); with k == q it is the paper's P A^+ P^T V.
///
/// Tied calls: passing the same tensor as q and k (same data pointer and shape; for given
/// landmarks, one tensor passed for both) takes a faster path: P is kept (N x m per thread) and
/// reused for R = P^T, and the symmetric A halves a Newton product. An equal copy of q is not
/// recognised and takes the general path, which gives the same result up to rounding.
///
/// Diagnostics: set `diagnostics` to a NewtonDiagnostics the caller owns and every call fills it
/// (worst residual over the heads, steps run, converged). The functor stays const; a caller who
/// runs one functor from several threads at once gives each thread its own copy and object.
template <class T = float>
class SoftNystrom : public Attention<SoftNystrom<T>, T> {
 public:
  static constexpr const char* kName = "SoftNystrom";

  Landmarks landmarks = Landmarks::segments(49);
  NewtonOptions newton;
  /// SOFT-Norm: pinv(A) <- D^-1/2 pinv(A) D^-1/2 with D = diag(A 1).
  bool soft_norm = false;
  /// Not supported (causal masking is ill-defined under landmark pooling); true is rejected.
  bool causal = false;
  /// Filled by every call when set (not owned); see the class comment.
  NewtonDiagnostics* diagnostics = nullptr;
  Parallel parallel;

  Shape4 check_inputs(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v) const {
    const Shape4 s = detail::check_qkv(kName, q, k, v, /*allow_cross=*/true);
    if (causal) detail::fail(kName, "causal = true: SOFT's landmark pooling has no causal form");
    detail::check_newton_options(kName, "newton.", newton);
    const Shape4 sk = shape_of(k);
    const Landmarks& l = landmarks;
    switch (l.kind) {
      case Landmarks::Kind::Segments:
        if (l.m < 1 || l.m > std::min(s.N, sk.N))
          detail::fail(kName, "landmarks = segments(m = ", l.m, "): m must be in [1, N], but q has shape ", s,
                       " and k has shape ", sk);
        break;
      case Landmarks::Kind::Grid:
        if (l.r < 1 || l.r > l.rows || l.r > l.cols)
          detail::fail(kName, "landmarks = grid(rows = ", l.rows, ", cols = ", l.cols, ", r = ", l.r,
                       "): r must be in [1, min(rows, cols)]");
        for (const Shape4& x : {s, sk})
          if (l.rows * l.cols != x.N)
            detail::fail(kName, "landmarks = grid(rows = ", l.rows, ", cols = ", l.cols, ", r = ", l.r,
                         "): rows * cols = ", l.rows * l.cols, " but q has shape ", s, " and k has shape ", sk,
                         " (N tokens)");
        break;
      case Landmarks::Kind::Given: {
        if (!l.q_given || !l.k_given) detail::fail(kName, "landmarks = given(...): a landmark tensor is missing");
        const Shape4 gq = shape_of(*l.q_given), gk = shape_of(*l.k_given);
        if (gq.B != s.B || gq.H != s.H || gq.D != s.D || gq.N < 1)
          detail::fail(kName, "landmarks = given: q_landmarks has shape ", gq, " but q has shape ", s,
                       ": must be [B, H, m, D] with m >= 1");
        if (gk != gq)
          detail::fail(kName, "landmarks = given: k_landmarks has shape ", gk, " but q_landmarks has shape ", gq,
                       ": must be equal");
        break;
      }
    }
    return s;
  }

  void compute(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v,
               const View4<T>& out) const {
    const Shape4 sq = shape_of(q);
    const Index heads = sq.B * sq.H;
    std::vector<detail::NewtonStats> stats(static_cast<size_t>(heads));
    // Tied (k is q, and the landmarks agree): R = P^T, so P is computed once and kept.
    const bool tied = q.data() == k.data() && sq == shape_of(k) &&
                      (landmarks.kind != Landmarks::Kind::Given || landmarks.q_given == landmarks.k_given);
    if (tied)
      compute_tied(q, v, out, stats);
    else
      compute_untied(q, k, v, out, stats);

    if (diagnostics) {
      NewtonDiagnostics dg;
      dg.heads = heads;
      dg.converged = true;
      for (const detail::NewtonStats& st : stats) {
        dg.steps = std::max(dg.steps, st.steps);
        if (!(st.residual <= dg.residual)) dg.residual = st.residual;  // keeps a NaN (diverged) visible
        dg.converged = dg.converged && detail::newton_converged(newton, st.residual);
      }
      *diagnostics = dg;
    }
  }

  /// The number of landmarks m for inputs with n query tokens (options assumed checked).
  Index landmark_count(Index n) const {
    switch (landmarks.kind) {
      case Landmarks::Kind::Segments:
        return landmarks.m;
      case Landmarks::Kind::Grid:
        return (landmarks.rows / landmarks.r) * (landmarks.cols / landmarks.r);
      case Landmarks::Kind::Given:
        return landmarks.q_given->dimension(2);
    }
    return n;
  }

 private:
  using Acc = accum_t<T>;

  using Kernel = detail::LandmarkKernel<Acc>;
  using Vector = Eigen::Matrix<Acc, Eigen::Dynamic, 1>;

  static constexpr Index kRowsPerItem = 2 * Kernel::kTile;

  struct HeadWorkspace {
    HeadWorkspace(Index m, Index d)
        : kernel(m, d), q_set(static_cast<size_t>(Kernel::set_size(m, d))), ql(m, d), kl(m, d), rv(m, d), a(m, m),
          qn(m), kn(m) {}
    Kernel kernel;
    detail::AlignedBuffer<Acc> q_set;
    RowMatrix<Acc> ql, kl, rv, a;
    Vector qn, kn;
    detail::NewtonWorkspace<Acc> newton;
    detail::TileLoader<T> load, load_k, load_v;
  };
  struct RowWorkspace {
    RowWorkspace(Index m, Index d)
        : kernel(m, d), o(std::is_same<T, Acc>::value ? 0 : static_cast<size_t>(Kernel::kTile * d)) {}
    Kernel kernel;
    detail::AlignedBuffer<Acc> o;  // half/bfloat16: one output tile before rounding
    detail::TileLoader<T> load_q;
  };

  // The m x d landmarks of x's (b, h) slice, in the accumulate type.
  template <class Out>
  void pool(const ConstView4<T>& x, Index b, Index h, bool for_q, detail::TileLoader<T>& load, Out&& dst) const {
    const Shape4 s = shape_of(x);
    const Index n = s.N, d = s.D;
    const T* src = head(x, b, h).data();
    const Landmarks& l = landmarks;
    if (l.kind == Landmarks::Kind::Given) {
      const Tensor4<double>& g = for_q ? *l.q_given : *l.k_given;
      const Index m = g.dimension(2);
      dst = ConstMatrixMap<double>(g.data() + (b * s.H + h) * m * d, m, d).template cast<Acc>();
    } else if (l.kind == Landmarks::Kind::Segments) {
      for (Index i = 0; i < l.m; ++i) {
        const Index start = i * n / l.m, end = ((i + 1) * n + l.m - 1) / l.m;
        dst.row(i).setZero();
        detail::add_row_sums(load(src + start * d, end - start, d).data(), end - start, d, &dst(i, 0));
        dst.row(i) /= static_cast<Acc>(end - start);
      }
    } else {
      const Index pcols = l.cols / l.r, width = pcols * l.r;
      dst.setZero();
      for (Index y = 0; y < (l.rows / l.r) * l.r; ++y) {  // image rows of whole pooling windows
        const auto strip = load(src + y * l.cols * d, width, d);
        for (Index px = 0; px < pcols; ++px)
          detail::add_row_sums(strip.data() + px * l.r * d, l.r, d, &dst((y / l.r) * pcols + px, 0));
      }
      dst /= static_cast<Acc>(l.r * l.r);
    }
  }

  // A = k(Qt, Kt), its pseudo-inverse, SOFT-Norm, then y = pinv(A) (R V) (m x d); ws.ql and ws.rv
  // hold Qt and R V.
  detail::NewtonStats solve(HeadWorkspace& ws, const RowMatrix<Acc>& kl, Acc* y) const {
    const Index m = kl.rows(), d = kl.cols();
    const Acc s = static_cast<Acc>(1.0 / std::sqrt(static_cast<double>(d)));
    ws.a.noalias() = s * ws.ql * kl.transpose();
    ws.qn = ws.ql.rowwise().squaredNorm() * (s / 2);
    ws.kn = kl.rowwise().squaredNorm() * (s / 2);
    ws.a = (ws.a.array().colwise() - ws.qn.array()).rowwise() - ws.kn.transpose().array();
    ws.a = ws.a.array().min(Acc(0)).exp().matrix();  // apart from the broadcasts: packet exp
    if (&kl == &ws.ql)  // tied: A is symmetric in exact arithmetic, make it so (newton_run gains)
      for (Index i = 0; i < m; ++i)
        for (Index j = 0; j < i; ++j) ws.a(i, j) = ws.a(j, i);
    const detail::NewtonStats st = detail::newton_run(ws.a, newton, ws.newton);
    if (soft_norm) {  // D^-1/2 pinv D^-1/2, D = diag(A 1): scale rows and columns
      ws.qn = ws.a.rowwise().sum().cwiseSqrt().cwiseInverse();
      ws.newton.v() = ws.qn.asDiagonal() * ws.newton.v() * ws.qn.asDiagonal();
    }
    detail::bcast_product<false>(ws.newton.v_.data(), ws.newton.ld, Index(1), m, m, ws.rv.data(), d, d, y, d);
    return st;
  }

  // out (rows x d, row-major, storage type) = p (rows x m, leading dimension ld) y; half and
  // bfloat16 go through tmp (a tile of accumulate type) and are rounded once.
  static void product_out(const Acc* p, Index ld, Index rows, Index m, const Acc* y, Index d, T* out, Acc* tmp) {
    Acc* o = nullptr;
    if constexpr (std::is_same<T, Acc>::value) o = out; else o = tmp;
    detail::bcast_product<false>(p, ld, Index(1), rows, m, y, d, d, o, d);
    if constexpr (!std::is_same<T, Acc>::value) detail::store_rows(MatrixMap<Acc>(o, rows, d), out);
  }

  // The tied case, one item per (b, h): each tile of tokens gives rows of P (kept, N x m), R V
  // accumulates P^T V tile by tile, and after the pseudo-inverse O = P Y tile by tile: three
  // N x m x D products, against four untied. P is N x ld floats per thread (1 MiB at N = 4096).
  void compute_tied(const ConstView4<T>& q, const ConstView4<T>& v, const View4<T>& out,
                    std::vector<detail::NewtonStats>& stats) const {
    const Shape4 sq = shape_of(q);
    const Index n = sq.N, d = sq.D, m = landmark_count(n), tile = Kernel::kTile;
    detail::parallel_for(parallel, sq.B * sq.H, [&] {
      return [&, ws = HeadWorkspace(m, d), y = detail::AlignedBuffer<Acc>(static_cast<size_t>(m * d)),
              p = detail::AlignedBuffer<Acc>(static_cast<size_t>(n * Kernel::ld_for(m))),
              o = detail::AlignedBuffer<Acc>(std::is_same<T, Acc>::value ? 0 : static_cast<size_t>(tile * d))](
                 Index bh) mutable {
        const Index b = bh / sq.H, h = bh % sq.H, ld = ws.kernel.ld();
        pool(q, b, h, /*for_q=*/true, ws.load, ws.ql);
        ws.kernel.prepare(ws.ql, ws.q_set.data());
        ws.rv.setZero();
        const T *qh = head(q, b, h).data(), *vh = head(v, b, h).data();
        // Last tile first: the pooling pass just read Q front to back, so its end is still in cache.
        for (Index j0 = (n - 1) / tile * tile; j0 >= 0; j0 -= tile) {
          const Index nj = std::min(tile, n - j0);
          const Acc* w = ws.kernel.weigh(ws.q_set.data(), ws.load_k(qh + j0 * d, nj, d), p.data() + j0 * ld);
          detail::bcast_product<true>(w, Index(1), ld, m, nj, ws.load_v(vh + j0 * d, nj, d).data(), d, d,
                                      ws.rv.data(), d);
        }
        stats[static_cast<size_t>(bh)] = solve(ws, ws.ql, y.data());
        T* oh = head(out, b, h).data();
        for (Index i0 = 0; i0 < n; i0 += tile)
          product_out(p.data() + i0 * ld, ld, std::min(tile, n - i0), m, y.data(), d, oh + i0 * d, o.data());
      };
    });
  }

  // The general case (Q and K differ): pass 1 per (b, h) leaves Kt and Y, pass 2 splits rows.
  void compute_untied(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v, const View4<T>& out,
                      std::vector<detail::NewtonStats>& stats) const {
    const Shape4 sq = shape_of(q);
    const Index nk = shape_of(k).N, d = sq.D, heads = sq.B * sq.H, m = landmark_count(sq.N);
    const Index set_size = Kernel::set_size(m, d), tile = Kernel::kTile;
    // Per head, pass 1 leaves the prepared landmarks Kt and Y = pinv(A) (R V) (m x d) for pass 2.
    detail::AlignedBuffer<Acc> k_sets(static_cast<size_t>(heads * set_size)), y_all(static_cast<size_t>(heads * m * d));

    // Pass 1, one item per (b, h): landmarks, R V one key tile at a time (the weight tile, keys x
    // landmarks, is R^T's rows; R V accumulates with packets along D), A = k(Qt, Kt), its
    // pseudo-inverse, Y.
    detail::parallel_for(parallel, heads, [&] {
      return [&, ws = HeadWorkspace(m, d)](Index bh) mutable {
        const Index b = bh / sq.H, h = bh % sq.H;
        pool(q, b, h, /*for_q=*/true, ws.load, ws.ql);
        // Segment landmarks of K are summed from the key tiles R V loads anyway: K is read once.
        const bool k_segments = landmarks.kind == Landmarks::Kind::Segments;
        if (k_segments)
          ws.kl.setZero();
        else
          pool(k, b, h, /*for_q=*/false, ws.load, ws.kl);
        ws.kernel.prepare(ws.ql, ws.q_set.data());
        ws.rv.setZero();
        const T *kh = head(k, b, h).data(), *vh = head(v, b, h).data();
        Index seg = 0;  // first segment not yet complete
        for (Index j0 = 0; j0 < nk; j0 += tile) {
          const Index nj = std::min(tile, nk - j0);
          const auto kt = ws.load_k(kh + j0 * d, nj, d);
          if (k_segments) {
            for (Index i = seg; i < m && i * nk / m < j0 + nj; ++i) {
              const Index lo = std::max(i * nk / m, j0), hi = std::min(((i + 1) * nk + m - 1) / m, j0 + nj);
              detail::add_row_sums(kt.data() + (lo - j0) * d, hi - lo, d, &ws.kl(i, 0));
              if (hi < j0 + nj) seg = i + 1;
            }
          }
          const Acc* w = ws.kernel.weigh(ws.q_set.data(), kt);
          detail::bcast_product<true>(w, Index(1), ws.kernel.ld(), m, nj, ws.load_v(vh + j0 * d, nj, d).data(), d, d,
                                      ws.rv.data(), d);
        }
        if (k_segments)
          for (Index i = 0; i < m; ++i)
            ws.kl.row(i) /= static_cast<Acc>(((i + 1) * nk + m - 1) / m - i * nk / m);
        ws.kernel.prepare(ws.kl, k_sets.data() + bh * set_size);
        stats[static_cast<size_t>(bh)] = solve(ws, ws.kl, y_all.data() + bh * m * d);
      };
    });

    // Pass 2, one item per kRowsPerItem query rows of one (b, h): per tile of query rows the
    // weight tile is P's rows (tile x m) and O = P Y is one product with packets along D, written
    // straight to the output (float/double) or rounded once from a tile (half/bfloat16).
    const Index row_blocks = (sq.N + kRowsPerItem - 1) / kRowsPerItem;
    detail::parallel_for(parallel, heads * row_blocks, [&] {
      return [&, ws = RowWorkspace(m, d)](Index item) mutable {
        const Index bh = item / row_blocks, b = bh / sq.H, h = bh % sq.H;
        const Index end = std::min(sq.N, (item % row_blocks + 1) * kRowsPerItem);
        const T* qh = head(q, b, h).data();
        T* oh = head(out, b, h).data();
        for (Index i0 = (item % row_blocks) * kRowsPerItem; i0 < end; i0 += tile) {
          const Index rows = std::min(tile, end - i0);
          const Acc* p = ws.kernel.weigh(k_sets.data() + bh * set_size, ws.load_q(qh + i0 * d, rows, d));
          product_out(p, ws.kernel.ld(), rows, m, y_all.data() + bh * m * d, d, oh + i0 * d, ws.o.data());
        }
      };
    });
  }
};

}  // namespace softfree
