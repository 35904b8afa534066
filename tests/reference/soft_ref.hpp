// Reference SOFT attention (SPEC.md "SOFT"), plain loops in double.
#pragma once

#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <vector>

#include "ref_tensor.hpp"

namespace softfree_ref {

// k(x, y) = exp(-||x - y||^2 / (2 sqrt(D))).
inline double gaussian_kernel(const double* x, const double* y, long D) {
  double dist2 = 0.0;
  for (long d = 0; d < D; ++d) dist2 += (x[d] - y[d]) * (x[d] - y[d]);
  return std::exp(-dist2 / (2.0 * std::sqrt(static_cast<double>(D))));
}

// Kernel matrix K(i, j) = k(X[b,h,i,:], Y[b,h,j,:]) for one (b, h) slice.
inline Matrix gaussian_kernel_matrix(const Tensor& x, const Tensor& y, long b, long h) {
  if (x.D != y.D) throw std::invalid_argument("gaussian_kernel_matrix: head dims differ");
  Matrix K(x.N, y.N);
  for (long i = 0; i < x.N; ++i)
    for (long j = 0; j < y.N; ++j) K(i, j) = gaussian_kernel(x.row(b, h, i), y.row(b, h, j), x.D);
  return K;
}

// SoftGaussian: O[i] = sum_j k(Q_i, K_j) V_j, no normalisation.
inline Tensor soft_gaussian(const Tensor& q, const Tensor& k, const Tensor& v) {
  check_qkv(q, k, v);
  Tensor out(q.B, q.H, q.N, v.D);
  for (long b = 0; b < q.B; ++b)
    for (long h = 0; h < q.H; ++h)
      for (long i = 0; i < q.N; ++i)
        for (long j = 0; j < k.N; ++j) {
          const double w = gaussian_kernel(q.row(b, h, i), k.row(b, h, j), q.D);
          for (long d = 0; d < v.D; ++d) out(b, h, i, d) += w * v(b, h, j, d);
        }
  return out;
}

// Segments(m): landmark i is the mean of tokens [floor(i*N/m), ceil((i+1)*N/m)),
// the PyTorch adaptive_avg_pool1d bounds (neighbouring segments may overlap).
inline Tensor landmarks_segments(const Tensor& x, long m) {
  if (m < 1 || m > x.N) throw std::invalid_argument("landmarks_segments: need 1 <= m <= N");
  Tensor out(x.B, x.H, m, x.D);
  for (long i = 0; i < m; ++i) {
    const long start = (i * x.N) / m;                  // floor (non-negative ints)
    const long end = ((i + 1) * x.N + m - 1) / m;      // ceil
    for (long b = 0; b < x.B; ++b)
      for (long h = 0; h < x.H; ++h)
        for (long d = 0; d < x.D; ++d) {
          double s = 0.0;
          for (long t = start; t < end; ++t) s += x(b, h, t, d);
          out(b, h, i, d) = s / static_cast<double>(end - start);
        }
  }
  return out;
}

// Grid(rows, cols, r): tokens are a row-major rows x cols image (t = y*cols + x);
// average pooling with kernel = stride = r, floor mode (partial trailing
// rows/columns dropped). Landmark order is row-major over the pooled grid.
inline Tensor landmarks_grid(const Tensor& x, long rows, long cols, long r) {
  if (rows * cols != x.N) throw std::invalid_argument("landmarks_grid: rows*cols != N");
  if (r < 1 || r > rows || r > cols) throw std::invalid_argument("landmarks_grid: bad pool size");
  const long prows = rows / r, pcols = cols / r;
  Tensor out(x.B, x.H, prows * pcols, x.D);
  for (long py = 0; py < prows; ++py)
    for (long px = 0; px < pcols; ++px)
      for (long b = 0; b < x.B; ++b)
        for (long h = 0; h < x.H; ++h)
          for (long d = 0; d < x.D; ++d) {
            double s = 0.0;
            for (long dy = 0; dy < r; ++dy)
              for (long dx = 0; dx < r; ++dx) s += x(b, h, (py * r + dy) * cols + (px * r + dx), d);
            out(b, h, py * pcols + px, d) = s / static_cast<double>(r * r);
          }
  return out;
}

enum class PinvInit { Current, PaperEra };

struct PinvResult {
  Matrix inverse;  // the final iterate V
  int steps;       // Newton steps actually taken
  double residual; // Frobenius norm of (I - P V), P = the matrix being inverted
};

inline double max_abs_row_sum(const Matrix& a) {
  double best = 0.0;
  for (long i = 0; i < a.rows; ++i) {
    double s = 0.0;
    for (long j = 0; j < a.cols; ++j) s += std::fabs(a(i, j));
    best = std::fmax(best, s);
  }
  return best;
}

inline double max_abs_col_sum(const Matrix& a) {
  double best = 0.0;
  for (long j = 0; j < a.cols; ++j) {
    double s = 0.0;
    for (long i = 0; i < a.rows; ++i) s += std::fabs(a(i, j));
    best = std::fmax(best, s);
  }
  return best;
}

inline Matrix scaled(const Matrix& a, double s) {
  Matrix r = a;
  for (double& x : r.data) x *= s;
  return r;
}

// I - P V
inline Matrix identity_minus_product(const Matrix& P, const Matrix& V) {
  Matrix E = matmul(P, V);
  for (double& x : E.data) x = -x;
  for (long i = 0; i < E.rows; ++i) E(i, i) += 1.0;
  return E;
}

inline double frobenius(const Matrix& a) {
  double s = 0.0;
  for (double x : a.data) s += x * x;
  return std::sqrt(s);
}

// Newton-Raphson (Newton-Schulz) pseudo-inverse, SPEC.md "Pseudo-inverse":
// - Current (official fudan-zvg/SOFT kernel/inverse.py `newton_inv`):
//     P = A + lambda I,  alpha = 0.9 * 2 / (max_i sum_j |A_ij|)^2,  V0 = alpha * P.
//   SPEC: "alpha = 0.9 * 2 / (max_i sum_j |A_ij|)^2 per matrix". The row sums are
//   those of A, NOT of P = A + lambda I: the official code computes
//   `alpha = 0.9 * 2 / torch.max(torch.sum(mat, dim=-1), -1)[0] ** 2` on `mat`
//   before `P = P + 0.01 * I`.
// - PaperEra (official SoftmaxFreeNormAttentionKernel.newton_inv):
//     P = A (lambda is ignored), alpha = 2 / (max_i sum_j |A_ij|)^2, V0 = alpha * A,
//     alpha halved (V0 recomputed) while max_j sum_i |(I - A V0)_ij| > 1.01,
//     at most 10 halvings.
// Then `iters` steps of V <- 2V - V P V. With tol > 0 the residual ||I - P V||_F
// is checked after every step and the loop stops once it is < tol.
inline PinvResult newton_pinv(const Matrix& A, int iters, double lambda, PinvInit init, double tol = 0) {
  if (A.rows != A.cols) throw std::invalid_argument("newton_pinv: matrix not square");
  const long m = A.rows;
  const double row_sum = max_abs_row_sum(A);
  if (!(row_sum > 0.0)) throw std::invalid_argument("newton_pinv: zero matrix");

  Matrix P = A;
  Matrix V;
  if (init == PinvInit::Current) {
    for (long i = 0; i < m; ++i) P(i, i) += lambda;
    const double alpha = 0.9 * 2.0 / (row_sum * row_sum);
    V = scaled(P, alpha);
  } else {
    double alpha = 2.0 / (row_sum * row_sum);
    V = scaled(A, alpha);
    int halvings = 0;
    while (max_abs_col_sum(identity_minus_product(A, V)) > 1.01 && halvings < 10) {
      alpha *= 0.5;
      V = scaled(A, alpha);
      ++halvings;
    }
  }

  PinvResult res{V, 0, 0.0};
  for (int s = 1; s <= iters; ++s) {
    const Matrix VPV = matmul(matmul(res.inverse, P), res.inverse);
    for (std::size_t e = 0; e < VPV.data.size(); ++e)
      res.inverse.data[e] = 2.0 * res.inverse.data[e] - VPV.data[e];
    res.steps = s;
    if (tol > 0.0 && frobenius(identity_minus_product(P, res.inverse)) < tol) break;
  }
  res.residual = frobenius(identity_minus_product(P, res.inverse));
  return res;
}

// SOFT-Norm: pinv <- D^-1/2 pinv D^-1/2 with D = diag(A 1) (row sums of A).
inline Matrix soft_norm_apply(const Matrix& pinv, const Matrix& A) {
  Matrix out = pinv;
  std::vector<double> dinv(static_cast<std::size_t>(A.rows));
  for (long i = 0; i < A.rows; ++i) {
    double s = 0.0;
    for (long j = 0; j < A.cols; ++j) s += A(i, j);
    dinv[static_cast<std::size_t>(i)] = 1.0 / std::sqrt(s);
  }
  for (long i = 0; i < out.rows; ++i)
    for (long j = 0; j < out.cols; ++j)
      out(i, j) *= dinv[static_cast<std::size_t>(i)] * dinv[static_cast<std::size_t>(j)];
  return out;
}

namespace detail {
// O = P pinv (R V) with P = k(Q, Kt), A = k(Qt, Kt), R = k(Qt, K); `invert` maps A
// to the matrix used as pinv(A) (before the optional SOFT-Norm).
template <class Invert>
Tensor soft_nystrom_impl(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& ql,
                         const Tensor& kl, bool soft_norm, Invert invert) {
  check_qkv(q, k, v);
  if (ql.N != kl.N || ql.B != q.B || kl.B != q.B || ql.H != q.H || kl.H != q.H || ql.D != q.D ||
      kl.D != q.D)
    throw std::invalid_argument("soft_nystrom: landmark tensors must be [B, H, m, D]");
  Tensor out(q.B, q.H, q.N, v.D);
  for (long b = 0; b < q.B; ++b)
    for (long h = 0; h < q.H; ++h) {
      const Matrix P = gaussian_kernel_matrix(q, kl, b, h);   // N  x m
      const Matrix A = gaussian_kernel_matrix(ql, kl, b, h);  // m  x m
      const Matrix R = gaussian_kernel_matrix(ql, k, b, h);   // m  x Nk
      Matrix pinv = invert(A);
      if (soft_norm) pinv = soft_norm_apply(pinv, A);
      const Matrix O = matmul(P, matmul(pinv, matmul(R, slice(v, b, h))));
      for (long i = 0; i < q.N; ++i)
        for (long d = 0; d < v.D; ++d) out(b, h, i, d) = O(i, d);
    }
  return out;
}
}  // namespace detail

// SoftNystrom with the Newton-Raphson pseudo-inverse.
inline Tensor soft_nystrom(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& q_landmarks,
                           const Tensor& k_landmarks, int iters, double lambda, PinvInit init,
                           bool soft_norm) {
  return detail::soft_nystrom_impl(q, k, v, q_landmarks, k_landmarks, soft_norm, [&](const Matrix& A) {
    return newton_pinv(A, iters, lambda, init).inverse;
  });
}

// SoftNystrom with the exact inverse (A + lambda I)^-1 by LU, for convergence tests.
inline Tensor soft_nystrom_exact(const Tensor& q, const Tensor& k, const Tensor& v,
                                 const Tensor& q_landmarks, const Tensor& k_landmarks, double lambda,
                                 bool soft_norm) {
  return detail::soft_nystrom_impl(q, k, v, q_landmarks, k_landmarks, soft_norm, [&](const Matrix& A) {
    Matrix P = A;
    for (long i = 0; i < P.rows; ++i) P(i, i) += lambda;
    return inverse_lu(P);
  });
}

}  // namespace softfree_ref
