#pragma once
// Newton-Raphson (Newton-Schulz) pseudo-inverse of a square matrix, V <- 2V - V P V: general
// linear algebra, used by SOFT's Nystrom form (SPEC.md "SOFT") and public as newton_pinv.
// Each step costs two m^3 products through the kernel layer's register-blocked gemm; the next
// step's P V gives the residual I - P V for free. A symmetric P (SOFT's tied case) makes every
// iterate symmetric, which halves one of the products. For float, the last step runs in double:
// the float iterate's rounding (u ||V||, with ||V|| up to 1 / lambda) is what SOFT's output
// inherits, cancelling in P V (R V); one double step corrects it in the converged directions
// (issue 14: 10x to 40x smaller output error, for the cost of one step's products in double).
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "../core/checks.hpp"
#include "../core/error.hpp"
#include "../core/kernels/gemm.hpp"
#include "../core/kernels/math.hpp"
#include "../core/tensor.hpp"

namespace softfree {

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
  RowMatrix<Acc> inverse;     ///< the final iterate V ~ P^+
  int steps = 0;              ///< steps run (fewer than options.steps after an early stop)
  double residual = 0;        ///< ||I - P V||_F of the returned V (>= sqrt(m - rank P) for any V)
  /// How far V is from P's pseudo-inverse: the larger of the Penrose conditions' relative errors
  /// ||P V P - P||_F / ||P||_F and ||V P V - V||_F / ||V||_F (0 for P = V = 0).
  double pinv_residual = 0;
  /// The configured start diverged (residual grew, or went non-finite: A far from symmetric, as
  /// in cross-attention); the steps were run again from V0 = P^T / (||P||_1 ||P||_inf), which
  /// converges for any P.
  bool restarted = false;
  /// residual or pinv_residual < tolerance (kConvergedResidual when tolerance = 0): V is P's
  /// inverse, or for a singular P its pseudo-inverse, to that accuracy.
  bool converged = false;
};

namespace detail {

inline void check_newton_options(const char* where, const char* prefix, const NewtonOptions& o) {
  if (o.steps < 0) fail(where, prefix, "steps = ", o.steps, ": must be >= 0");
  if (!(is_finite(o.lambda) && o.lambda >= 0))
    fail(where, prefix, "lambda = ", o.lambda, ": must be non-negative and finite");
  if (!(is_finite(o.tolerance) && o.tolerance >= 0))
    fail(where, prefix, "tolerance = ", o.tolerance, ": must be non-negative and finite (0 = no early stop)");
}

/// lambda is added to A's diagonal in the accumulate type Acc: past Acc's range it would be
/// infinite there and the whole iterate NaN, so it is rejected like a non-finite one.
template <class Acc>
void check_newton_lambda_range(const char* where, const char* prefix, const NewtonOptions& o) {
  if (o.lambda > static_cast<double>(std::numeric_limits<Acc>::max()))
    fail(where, prefix, "lambda = ", o.lambda, ": exceeds the range of ", std::is_same<Acc, float>::value ? "float" : "double",
         ", the type the pseudo-inverse is computed in");
}

struct NewtonStats {
  int steps = 0;
  double residual = 0, pinv_residual = 0;
  bool restarted = false;
};

inline bool newton_converged(const NewtonOptions& o, const NewtonStats& st) {
  const double bound = o.tolerance > 0 ? o.tolerance : NewtonOptions::kConvergedResidual;
  return st.residual < bound || st.pinv_residual < bound;
}

inline namespace SOFTFREE_ISA {

// Norms of the m x m matrices (rows of stride ld), in packets along the rows: m^2 work beside
// the m^3 products, but Eigen's own reductions of double matrices warn under GCC 12.1-12.2 with
// AVX-512 (core/kernels/backend_avx512.hpp).

/// max_i sum_j |a_ij|.
template <class Acc>
double max_abs_row_sum(const Acc* a, Index m, Index ld) {
  double worst = 0;
  for (Index i = 0; i < m; ++i) {
    const double sum = static_cast<double>(abs_sum(a + i * ld, m));
    if (!(sum <= worst)) worst = sum;  // keeps a NaN
  }
  return worst;
}

/// max_j sum_i |(I - t)_ij| (the paper-era start's column norm; a few times per call).
template <class Acc>
double max_abs_col_sum_of_identity_minus(const Acc* t, Index m, Index ld) {
  double worst = 0;
  for (Index j = 0; j < m; ++j) {
    double sum = 0;
    for (Index i = 0; i < m; ++i) sum += std::abs((i == j ? 1.0 : 0.0) - static_cast<double>(t[i * ld + j]));
    if (!(sum <= worst)) worst = sum;
  }
  return worst;
}

/// ||t - I||_F: the off-diagonal parts of each row apart from its diagonal term (a row's whole
/// square sum minus t_ii^2 would cancel to nothing near convergence).
template <class Acc>
double distance_to_identity(const Acc* t, Index m, Index ld) {
  double sum = 0;
  for (Index i = 0; i < m; ++i) {
    const Acc* row = t + i * ld;
    const double e = static_cast<double>(row[i]) - 1.0;
    sum += static_cast<double>(dot(row, row, i)) + static_cast<double>(dot(row + i + 1, row + i + 1, m - i - 1)) + e * e;
  }
  return std::sqrt(sum);
}

/// Buffers of the iteration, sized once per m and reused across heads: m x m matrices with rows
/// padded to whole packets. The padding columns stay zero, so products run over whole packets
/// (the padding of P V and V T is zero again).
template <class Acc>
class NewtonWorkspace {
 public:
  using Map = Eigen::Map<RowMatrix<Acc>, 0, Eigen::OuterStride<>>;
  enum class Form {
    General,
    /// x and y exactly symmetric (P V): the last m mod L columns of x y are the rows
    /// y[mp:m, :] x, transposed; that spares padding those columns to a whole packet.
    SymmetricFactors,
    /// x y known to be symmetric (V T = V P V for symmetric V and P, whatever the rounding in T):
    /// the blocks below the diagonal are mirrored instead of computed, and the result is exactly
    /// symmetric (SymmetricFactors relies on V being so). (P V is not mirrored: V would drift
    /// from commuting with P and the iteration lose its self-correction; the residual then grows
    /// with m, up to divergence in float.)
    SymmetricResult,
  };

  void resize(Index n) {
    if (n == m) return;
    m = n;
    ld = pad_to_packets<Acc>(n);
    for (AlignedBuffer<Acc>* b : {&p_, &v_, &t_, &u_}) {
      Acc* x = reserve(*b, m * ld);
      std::fill(x, x + m * ld, Acc(0));
    }
    if (std::is_same<Acc, double>::value) return;
    ldd = pad_to_packets<double>(n);
    for (AlignedBuffer<double>* b : {&pd_, &vd_, &td_, &ud_}) {
      double* x = reserve(*b, m * ldd);
      std::fill(x, x + m * ldd, 0.0);
    }
  }
  Map p() { return map(p_); }
  Map v() { return map(v_); }
  Map t() { return map(t_); }
  /// V with rows of ld() values (its zero padding included), for products against it.
  const Acc* v_data() const { return v_.data(); }
  Index stride() const { return ld; }
  /// The final V in double (for float, the last step's unrounded result; for double, v()), rows
  /// of stride_double() values with zero padding: products against it keep its accuracy.
  double* v_double() {
    if constexpr (std::is_same<Acc, double>::value)
      return v_.data();
    else
      return vd_.data();
  }
  Index stride_double() const { return std::is_same<Acc, double>::value ? ld : ldd; }

  /// Runs the iteration on the square matrix a; the result is left in v().
  template <class Derived>
  NewtonStats run(const Eigen::MatrixBase<Derived>& a, const NewtonOptions& o);
  /// For float: whether the last step runs in double (see above). A caller whose products round
  /// to bf16 anyway (SoftNystrom's pair products) turns it off: its error is far above the float
  /// iterate's, and the double step would cost the same there.
  bool refine = true;

 private:
  Map map(AlignedBuffer<Acc>& b) { return Map(b.data(), m, m, Eigen::OuterStride<>(ld)); }
  auto full(AlignedBuffer<Acc>& b) { return Eigen::Map<Eigen::Array<Acc, Eigen::Dynamic, 1>>(b.data(), m * ld); }
  void start(const NewtonOptions& o, double row_sum);
  void set_v(const Map& x, double c, double s);
  void start_transposed();
  void iterate(const NewtonOptions& o, NewtonStats& st);
  void step_in_double();
  void to_double(const AlignedBuffer<Acc>& x, AlignedBuffer<double>& dst);
  double pinv_residual();
  void mul(const AlignedBuffer<Acc>& x, const AlignedBuffer<Acc>& y, AlignedBuffer<Acc>& dst, Form form);
  void mul_symmetric_result(const Acc* x, const Acc* y, Acc* c);

  Index m = 0, ld = 0, ldd = 0;  // ldd: rows of the double matrices (float workspaces)
  bool symmetric_ = false;  // P is exactly symmetric: then so is every V
  AlignedBuffer<Acc> p_, v_, t_, u_, tail_;
  AlignedBuffer<double> pd_, vd_, td_, ud_;  // float workspaces: the last step's P, V, P V, V P V
};

/// dst = x y for three of the workspace's matrices.
template <class Acc>
void NewtonWorkspace<Acc>::mul(const AlignedBuffer<Acc>& x, const AlignedBuffer<Acc>& y, AlignedBuffer<Acc>& dst,
                               Form form) {
  constexpr Index L = kLanes<Acc>;
  const Index mp = m / L * L;  // columns in whole packets
  Acc* c = dst.data();
  if (form == Form::General) {
    gemm<GeneralTiling>(m, ld, m, StridedA<Acc>{x.data(), ld, 1}, RowsB<Acc>{y.data(), ld}, StoreC<Acc>{c, ld});
  } else if (form == Form::SymmetricFactors) {
    gemm<GeneralTiling>(m, mp, m, StridedA<Acc>{x.data(), ld, 1}, RowsB<Acc>{y.data(), ld}, StoreC<Acc>{c, ld});
    if (mp < m) {
      Acc* tail = reserve(tail_, L * ld);
      gemm<GeneralTiling>(m - mp, ld, m, StridedA<Acc>{y.data() + mp * ld, ld, 1}, RowsB<Acc>{x.data(), ld},
                          StoreC<Acc>{tail, ld});
      for (Index r = 0; r < m; ++r)
        for (Index j = mp; j < m; ++j) c[r * ld + j] = tail[(j - mp) * ld + r];
    }
  } else {
    mul_symmetric_result(x.data(), y.data(), c);
  }
}

// Row blocks of L below mp: columns from the block's diagonal packet up to mp (the upper
// triangle in whole packets); the last m - mp rows at full width; the rest is mirrored.
template <class Acc>
void NewtonWorkspace<Acc>::mul_symmetric_result(const Acc* x, const Acc* y, Acc* c) {
  constexpr Index L = kLanes<Acc>;
  const Index mp = m / L * L;
  for (Index r0 = 0; r0 < mp; r0 += L)
    gemm<GeneralTiling>(L, mp - r0, m, StridedA<Acc>{x + r0 * ld, ld, 1}, RowsB<Acc>{y + r0, ld},
                        StoreC<Acc>{c + r0 * ld + r0, ld});
  if (mp < m)
    gemm<GeneralTiling>(m - mp, ld, m, StridedA<Acc>{x + mp * ld, ld, 1}, RowsB<Acc>{y, ld},
                        StoreC<Acc>{c + mp * ld, ld});
  using Block = Eigen::Map<Eigen::Matrix<Acc, L, L, Eigen::RowMajor>, 0, Eigen::OuterStride<>>;
  for (Index r0 = L; r0 < mp; r0 += L)
    for (Index c0 = 0; c0 < r0; c0 += L)
      Block(c + r0 * ld + c0, L, L, Eigen::OuterStride<>(ld)) =
          Block(c + c0 * ld + r0, L, L, Eigen::OuterStride<>(ld)).transpose();
  for (Index r = 0; r < m; ++r)  // the last columns, and the lower half of the last rows' block
    for (Index j = std::max(mp, r + 1); j < m; ++j) c[r * ld + j] = c[j * ld + r];
}

// V0 = x c / s^2 (x: P or P^T), in double: in Acc the factor c / s^2 alone overflows for a
// tiny P (float entries ~1e-37) whose V0 is representable.
template <class Acc>
void NewtonWorkspace<Acc>::set_v(const Map& x, double c, double s) {
  auto v = this->v();
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < m; ++j) v(i, j) = static_cast<Acc>(static_cast<double>(x(i, j)) / s * c / s);
}

// V0 from P (already in p()) and the largest row sum of A.
template <class Acc>
void NewtonWorkspace<Acc>::start(const NewtonOptions& o, double row_sum) {
  auto p = this->p(), v = this->v();
  if (o.init == NewtonInit::Current) {
    p.diagonal().array() += static_cast<Acc>(o.lambda);
    // A whose kernel values all underflowed is 0: then start from P's own row sum (lambda), so
    // the iteration still converges to (lambda I)^-1 rather than dividing by zero.
    const double rs = row_sum > 0 ? row_sum : o.lambda;
    if (rs > 0)
      set_v(p, 0.9 * 2.0, rs);
    else
      v.setZero();  // A = 0 and lambda = 0: pinv(0) = 0
  } else if (row_sum > 0) {
    double c = 2.0;  // alpha = c / row_sum^2
    set_v(p, c, row_sum);
    for (int halvings = 0; halvings < 10; ++halvings) {
      mul(p_, v_, t_, Form::General);
      if (!(max_abs_col_sum_of_identity_minus(t_.data(), m, ld) > 1.01)) break;  // ||I - A V0||_1
      c *= 0.5;
      set_v(p, c, row_sum);
    }
  } else {
    v.setZero();  // pinv(0) = 0
  }
}

// V0 = P^T / (||P||_1 ||P||_inf): I - P V0 has its eigenvalues in [0, 1), so the iteration
// converges for any P (to P^+ for a singular one), if slowly for an ill-conditioned P.
template <class Acc>
void NewtonWorkspace<Acc>::start_transposed() {
  // A diverged run leaves non-finite values, in the padding too (inf * 0): zero it again.
  for (AlignedBuffer<Acc>* b : {&v_, &t_, &u_}) std::fill(b->begin(), b->end(), Acc(0));
  auto p = this->p(), v = this->v();
  double col = 0;
  for (Index j = 0; j < m; ++j) {
    double sum = 0;
    for (Index i = 0; i < m; ++i) sum += std::abs(static_cast<double>(p(i, j)));
    col = std::max(col, sum);
  }
  const double row = max_abs_row_sum(p_.data(), m, ld);
  if (col > 0 && row > 0) {  // divided in double, one norm at a time (as set_v): a tiny P's V0 is large
    for (Index i = 0; i < m; ++i)
      for (Index j = 0; j < m; ++j) v(i, j) = static_cast<Acc>(static_cast<double>(p(j, i)) / col / row);
  } else {
    v.setZero();
  }
}

// The steps from v(); t() = P V on entry and on exit. For float the last step is
// step_in_double(); an early stop leaves the float V, copied to v_double().
template <class Acc>
void NewtonWorkspace<Acc>::iterate(const NewtonOptions& o, NewtonStats& st) {
  constexpr bool kFloat = !std::is_same<Acc, double>::value;
  const Form pv = symmetric_ ? Form::SymmetricFactors : Form::General;
  bool refined = false;
  for (int s = 1; s <= o.steps; ++s) {
    st.steps = s;
    if (kFloat && refine && s == o.steps) {
      step_in_double();
      refined = true;
    } else {
      mul(v_, t_, u_, symmetric_ ? Form::SymmetricResult : Form::General);
      full(v_) = Acc(2) * full(v_) - full(u_);  // padding: 2 * 0 - 0
    }
    mul(p_, v_, t_, refined ? Form::General : pv);  // a double step's V is not exactly symmetric
    if (o.tolerance > 0 && distance_to_identity(t_.data(), m, ld) < o.tolerance) break;
  }
  if (kFloat && !refined) to_double(v_, vd_);
  st.residual = distance_to_identity(t_.data(), m, ld);
}

template <class Acc>
void NewtonWorkspace<Acc>::to_double(const AlignedBuffer<Acc>& x, AlignedBuffer<double>& dst) {
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < m; ++j)
      dst[static_cast<size_t>(i * ldd + j)] = static_cast<double>(x[static_cast<size_t>(i * ld + j)]);
}

// V <- 2V - V (P V) in double from the float P and V: two m^3 products in double (P V is
// recomputed in double: the float one's rounding would pass on). The result is vd_, rounded to
// v_. Full products, no mirrored triangle: with the symmetric forms to the end, the float
// result measured 10x less accurate than with full products (issue 14).
template <class Acc>
void NewtonWorkspace<Acc>::step_in_double() {
  to_double(p_, pd_);
  to_double(v_, vd_);
  gemm<GeneralTiling>(m, ldd, m, StridedA<double>{pd_.data(), ldd, 1}, RowsB<double>{vd_.data(), ldd},
                      StoreC<double>{td_.data(), ldd});
  gemm<GeneralTiling>(m, ldd, m, StridedA<double>{vd_.data(), ldd, 1}, RowsB<double>{td_.data(), ldd},
                      StoreC<double>{ud_.data(), ldd});
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < m; ++j) {
      const size_t e = static_cast<size_t>(i * ldd + j);
      vd_[e] = 2 * vd_[e] - ud_[e];
      v_[static_cast<size_t>(i * ld + j)] = static_cast<Acc>(vd_[e]);
    }
}

// max(||T P - P|| / ||P||, ||V T - V|| / ||V||) with T = P V: two products, once per run.
template <class Acc>
double NewtonWorkspace<Acc>::pinv_residual() {
  const auto rel = [this](const AlignedBuffer<Acc>& x, const AlignedBuffer<Acc>& ref) {
    double diff = 0, norm = 0;
    for (Index i = 0; i < m * ld; ++i) {
      const double r = static_cast<double>(ref[static_cast<size_t>(i)]);
      const double e = static_cast<double>(x[static_cast<size_t>(i)]) - r;
      diff += e * e, norm += r * r;
    }
    return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
  };
  mul(t_, p_, u_, Form::General);
  const double e1 = rel(u_, p_);
  mul(v_, t_, u_, Form::General);
  const double e2 = rel(u_, v_);
  return e1 >= e2 || e1 != e1 ? e1 : e2;  // keeps a NaN
}

template <class Acc>
template <class Derived>
NewtonStats NewtonWorkspace<Acc>::run(const Eigen::MatrixBase<Derived>& a, const NewtonOptions& o) {
  resize(a.rows());
  p() = a;
  symmetric_ = (a.array() == a.transpose().array()).all();
  start(o, max_abs_row_sum(p_.data(), m, ld));
  const Form pv = symmetric_ ? Form::SymmetricFactors : Form::General;
  mul(p_, v_, t_, pv);
  const double r0 = distance_to_identity(t_.data(), m, ld);
  NewtonStats st;
  iterate(o, st);
  // Diverged, or non-finite (also a start whose P V0 overflowed, as with steps = 0): the start that
  // always converges.
  if (!(st.residual <= r0) || !std::isfinite(st.residual)) {
    st.restarted = true;
    start_transposed();
    mul(p_, v_, t_, pv);
    iterate(o, st);
  }
  st.pinv_residual = pinv_residual();
  return st;
}

}  // namespace SOFTFREE_ISA
}  // namespace detail

inline namespace SOFTFREE_ISA {

/// Newton-Raphson (Newton-Schulz) pseudo-inverse of a square float or double matrix (SPEC.md
/// "SOFT"): with the default options, 20 steps of V <- 2V - V P V from the official code's start,
/// approximating (A + 0.01 I)^-1. The result carries the steps run, the residual ||I - P V||_F
/// and the pseudo-inverse residual (Penrose conditions), so non-convergence is visible
/// (converged = false), never silent; a start that diverges is restarted (restarted = true).
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
  detail::check_newton_lambda_range<Acc>("newton_pinv", "options.", options);
  detail::NewtonWorkspace<Acc> ws;
  const detail::NewtonStats st = ws.run(a.eval(), options);
  NewtonResult<Acc> r;
  r.inverse = ws.v();
  r.steps = st.steps;
  r.residual = st.residual;
  r.pinv_residual = st.pinv_residual;
  r.restarted = st.restarted;
  r.converged = detail::newton_converged(options, st);
  return r;
}

}  // namespace SOFTFREE_ISA
}  // namespace softfree
