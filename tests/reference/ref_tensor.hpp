// Plain double-precision containers and small linear-algebra helpers for the
// reference implementations. Independent of the softfree library on purpose:
// nothing here includes a softfree header.
#pragma once

#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <utility>
#include <vector>

namespace softfree_ref {

// Row-major [B, H, N, D] tensor of doubles, zero-initialised.
struct Tensor {
  long B, H, N, D;
  std::vector<double> data;

  Tensor(long B_, long H_, long N_, long D_)
      : B(B_), H(H_), N(N_), D(D_), data(static_cast<std::size_t>(B_ * H_ * N_ * D_), 0.0) {}

  double& operator()(long b, long h, long n, long d) {
    return data[static_cast<std::size_t>(((b * H + h) * N + n) * D + d)];
  }
  double operator()(long b, long h, long n, long d) const {
    return data[static_cast<std::size_t>(((b * H + h) * N + n) * D + d)];
  }
  // Pointer to the D contiguous entries of token n in slice (b, h).
  const double* row(long b, long h, long n) const {
    return data.data() + static_cast<std::size_t>(((b * H + h) * N + n) * D);
  }
};

// Row-major rows x cols matrix of doubles, zero-initialised.
struct Matrix {
  long rows, cols;
  std::vector<double> data;

  Matrix() : rows(0), cols(0) {}
  Matrix(long r, long c) : rows(r), cols(c), data(static_cast<std::size_t>(r * c), 0.0) {}

  double& operator()(long r, long c) { return data[static_cast<std::size_t>(r * cols + c)]; }
  double operator()(long r, long c) const { return data[static_cast<std::size_t>(r * cols + c)]; }
};

inline Matrix identity(long n) {
  Matrix I(n, n);
  for (long i = 0; i < n; ++i) I(i, i) = 1.0;
  return I;
}

inline Matrix matmul(const Matrix& a, const Matrix& b) {
  if (a.cols != b.rows) throw std::invalid_argument("matmul: inner dimensions differ");
  Matrix c(a.rows, b.cols);
  for (long i = 0; i < a.rows; ++i)
    for (long j = 0; j < b.cols; ++j) {
      double s = 0.0;
      for (long k = 0; k < a.cols; ++k) s += a(i, k) * b(k, j);
      c(i, j) = s;
    }
  return c;
}

inline Matrix transpose(const Matrix& a) {
  Matrix t(a.cols, a.rows);
  for (long i = 0; i < a.rows; ++i)
    for (long j = 0; j < a.cols; ++j) t(j, i) = a(i, j);
  return t;
}

// Inverse by Gauss-Jordan elimination with partial pivoting (the LU
// factorisation and the two triangular solves done in one sweep).
// Throws std::runtime_error when a pivot is exactly zero (singular matrix).
inline Matrix inverse_lu(const Matrix& a) {
  if (a.rows != a.cols) throw std::invalid_argument("inverse_lu: matrix not square");
  const long n = a.rows;
  Matrix m = a;
  Matrix inv = identity(n);
  for (long col = 0; col < n; ++col) {
    long piv = col;  // partial pivoting: largest |entry| in this column
    for (long r = col + 1; r < n; ++r)
      if (std::fabs(m(r, col)) > std::fabs(m(piv, col))) piv = r;
    if (m(piv, col) == 0.0) throw std::runtime_error("inverse_lu: singular matrix");
    if (piv != col)
      for (long c = 0; c < n; ++c) {
        std::swap(m(piv, c), m(col, c));
        std::swap(inv(piv, c), inv(col, c));
      }
    const double p = m(col, col);
    for (long c = 0; c < n; ++c) {
      m(col, c) /= p;
      inv(col, c) /= p;
    }
    for (long r = 0; r < n; ++r) {
      if (r == col) continue;
      const double f = m(r, col);
      for (long c = 0; c < n; ++c) {
        m(r, c) -= f * m(col, c);
        inv(r, c) -= f * inv(col, c);
      }
    }
  }
  return inv;
}

inline double max_abs(const Tensor& t) {
  double m = 0.0;
  for (double x : t.data) m = std::fmax(m, std::fabs(x));
  return m;
}

inline double max_abs(const Matrix& a) {
  double m = 0.0;
  for (double x : a.data) m = std::fmax(m, std::fabs(x));
  return m;
}

// Largest |a - b| over all entries; shapes must match.
inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  if (a.B != b.B || a.H != b.H || a.N != b.N || a.D != b.D)
    throw std::invalid_argument("max_abs_diff: shapes differ");
  double m = 0.0;
  for (std::size_t i = 0; i < a.data.size(); ++i) m = std::fmax(m, std::fabs(a.data[i] - b.data[i]));
  return m;
}

inline double max_abs_diff(const Matrix& a, const Matrix& b) {
  if (a.rows != b.rows || a.cols != b.cols) throw std::invalid_argument("max_abs_diff: shapes differ");
  double m = 0.0;
  for (std::size_t i = 0; i < a.data.size(); ++i) m = std::fmax(m, std::fabs(a.data[i] - b.data[i]));
  return m;
}

// The (b, h) slice of a tensor as an N x D matrix.
inline Matrix slice(const Tensor& t, long b, long h) {
  Matrix m(t.N, t.D);
  for (long n = 0; n < t.N; ++n)
    for (long d = 0; d < t.D; ++d) m(n, d) = t(b, h, n, d);
  return m;
}

// Checks shared by the attention references: batch and head counts agree,
// k and v have the same token count, q and k the same head dim.
inline void check_qkv(const Tensor& q, const Tensor& k, const Tensor& v) {
  if (q.B != k.B || q.B != v.B || q.H != k.H || q.H != v.H)
    throw std::invalid_argument("reference: batch/head counts differ");
  if (k.N != v.N) throw std::invalid_argument("reference: k and v token counts differ");
  if (q.D != k.D) throw std::invalid_argument("reference: q and k head dims differ");
}

}  // namespace softfree_ref
