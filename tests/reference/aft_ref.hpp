// Reference AFT (SPEC.md "AFT"), plain loops in double.
// Biases / kernels come as std::vector<Matrix> of size 1 (shared by every head)
// or size H (one per head). A bias is N x N: row t = query, column t' = key.
#pragma once

#include <cmath>
#include <cstddef>
#include <stdexcept>
#include <vector>

#include "ref_tensor.hpp"

namespace softfree_ref {

inline double sigmoid(double x) {
  // Two branches so that exp never overflows.
  if (x >= 0.0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

namespace detail {
inline void check_aft(const Tensor& q, const Tensor& k, const Tensor& v) {
  check_qkv(q, k, v);
  if (q.N != k.N || q.D != v.D) throw std::invalid_argument("aft: q, k, v must all be [B, H, N, D]");
}
// The matrix for head h from a per-head list (size H) or a shared one (size 1).
inline const Matrix& per_head(const std::vector<Matrix>& ms, long h, long H) {
  if (ms.size() == 1) return ms[0];
  if (static_cast<long>(ms.size()) != H) throw std::invalid_argument("aft: need 1 or H matrices");
  return ms[static_cast<std::size_t>(h)];
}
}  // namespace detail

// AftFull: Y_t = sigma(Q_t) * sum_t' e^{K_t' + w[t,t']} V_t' / sum_t' e^{K_t' + w[t,t']},
// per channel; t' <= t only when causal. For each (t, channel) the max of
// K_t' + w[t,t'] over the summed t' is subtracted before exp, so every
// exponent is <= 0 and the denominator holds a term equal to 1.
inline Tensor aft_full(const Tensor& q, const Tensor& k, const Tensor& v, const std::vector<Matrix>& w,
                       bool causal) {
  detail::check_aft(q, k, v);
  const long N = q.N;
  Tensor out(q.B, q.H, N, q.D);
  for (long b = 0; b < q.B; ++b)
    for (long h = 0; h < q.H; ++h) {
      const Matrix& wh = detail::per_head(w, h, q.H);
      if (wh.rows != N || wh.cols != N) throw std::invalid_argument("aft_full: bias must be N x N");
      for (long t = 0; t < N; ++t) {
        const long last = causal ? t : N - 1;  // last key summed
        for (long c = 0; c < q.D; ++c) {
          double mx = k(b, h, 0, c) + wh(t, 0);
          for (long tp = 1; tp <= last; ++tp) mx = std::fmax(mx, k(b, h, tp, c) + wh(t, tp));
          double num = 0.0, den = 0.0;
          for (long tp = 0; tp <= last; ++tp) {
            const double e = std::exp(k(b, h, tp, c) + wh(t, tp) - mx);
            num += e * v(b, h, tp, c);
            den += e;
          }
          out(b, h, t, c) = sigmoid(q(b, h, t, c)) * num / den;
        }
      }
    }
  return out;
}

// AftLocal(s): the effective bias keeps w[t,t'] where |t - t'| < s and is 0 (not
// -inf) elsewhere; the result is aft_full with that bias (built explicitly here,
// so the window rule is visible on its own).
inline Tensor aft_local(const Tensor& q, const Tensor& k, const Tensor& v, const std::vector<Matrix>& w,
                        long s, bool causal) {
  std::vector<Matrix> local;
  for (const Matrix& wh : w) {
    Matrix m(wh.rows, wh.cols);
    for (long t = 0; t < wh.rows; ++t)
      for (long tp = 0; tp < wh.cols; ++tp) {
        const long dist = t > tp ? t - tp : tp - t;
        m(t, tp) = dist < s ? wh(t, tp) : 0.0;
      }
    local.push_back(m);
  }
  return aft_full(q, k, v, local, causal);
}

// AftSimple: w = 0, i.e. Y_t = sigma(Q_t) * sum_t' softmax_t'(K) V_t' per channel
// (t' <= t when causal). Its own loop, independent of aft_full.
inline Tensor aft_simple(const Tensor& q, const Tensor& k, const Tensor& v, bool causal) {
  detail::check_aft(q, k, v);
  Tensor out(q.B, q.H, q.N, q.D);
  for (long b = 0; b < q.B; ++b)
    for (long h = 0; h < q.H; ++h)
      for (long c = 0; c < q.D; ++c) {
        // sum_{t' <= last} softmax_t'(K) V_t', shifted by the max key of that range.
        const auto weighted_mean = [&](long last) {
          double mx = k(b, h, 0, c);
          for (long tp = 1; tp <= last; ++tp) mx = std::fmax(mx, k(b, h, tp, c));
          double num = 0.0, den = 0.0;
          for (long tp = 0; tp <= last; ++tp) {
            const double e = std::exp(k(b, h, tp, c) - mx);
            num += e * v(b, h, tp, c);
            den += e;
          }
          return num / den;
        };
        const double all = causal ? 0.0 : weighted_mean(q.N - 1);  // the same for every t
        for (long t = 0; t < q.N; ++t) out(b, h, t, c) = sigmoid(q(b, h, t, c)) * (causal ? weighted_mean(t) : all);
      }
  return out;
}

// AftConv, the SPEC formula taken literally:
//   Y = sigma(Q) * [conv(e^K V, e^w - 1) + sum_all e^K V] / [conv(e^K, e^w - 1) + sum_all e^K]
// conv = zero-padded 'same' 2-D cross-correlation on the row-major rows x cols grid:
//   out(y, x) = sum_{i,j} in(y + i - kh/2, x + j - kw/2) * (exp(kernel(i, j)) - 1).
// e^K is shifted per (b, h, channel) by max_t K_t; the factor cancels between
// numerator and denominator. One odd-sized kernel per head (or one shared).
inline Tensor aft_conv(const Tensor& q, const Tensor& k, const Tensor& v, const std::vector<Matrix>& kernels,
                       long rows, long cols) {
  detail::check_aft(q, k, v);
  if (rows * cols != q.N) throw std::invalid_argument("aft_conv: rows*cols != N");
  const long N = q.N;
  Tensor out(q.B, q.H, N, q.D);
  std::vector<double> eK(static_cast<std::size_t>(N)), eKV(static_cast<std::size_t>(N));
  for (long b = 0; b < q.B; ++b)
    for (long h = 0; h < q.H; ++h) {
      const Matrix& ker = detail::per_head(kernels, h, q.H);
      if (ker.rows % 2 == 0 || ker.cols % 2 == 0) throw std::invalid_argument("aft_conv: kernel sizes must be odd");
      const long ch = ker.rows / 2, cw = ker.cols / 2;
      for (long c = 0; c < q.D; ++c) {
        double mx = k(b, h, 0, c);
        for (long t = 1; t < N; ++t) mx = std::fmax(mx, k(b, h, t, c));
        double sum_eK = 0.0, sum_eKV = 0.0;
        for (long t = 0; t < N; ++t) {
          eK[static_cast<std::size_t>(t)] = std::exp(k(b, h, t, c) - mx);
          eKV[static_cast<std::size_t>(t)] = eK[static_cast<std::size_t>(t)] * v(b, h, t, c);
          sum_eK += eK[static_cast<std::size_t>(t)];
          sum_eKV += eKV[static_cast<std::size_t>(t)];
        }
        for (long y = 0; y < rows; ++y)
          for (long x = 0; x < cols; ++x) {
            double conv_num = 0.0, conv_den = 0.0;
            for (long i = 0; i < ker.rows; ++i)
              for (long j = 0; j < ker.cols; ++j) {
                const long yy = y + i - ch, xx = x + j - cw;
                if (yy < 0 || yy >= rows || xx < 0 || xx >= cols) continue;  // zero padding
                const double g = std::exp(ker(i, j)) - 1.0;
                conv_num += eKV[static_cast<std::size_t>(yy * cols + xx)] * g;
                conv_den += eK[static_cast<std::size_t>(yy * cols + xx)] * g;
              }
            const long t = y * cols + x;
            out(b, h, t, c) = sigmoid(q(b, h, t, c)) * (conv_num + sum_eKV) / (conv_den + sum_eK);
          }
      }
    }
  return out;
}

// The N x N AftFull bias equivalent to an AftConv kernel:
// w[t,t'] = kernel((y'-y) + kh/2, (x'-x) + kw/2) inside the window, 0 outside,
// with t = y*cols + x and t' = y'*cols + x'.
inline Matrix aft_conv_dense_bias(const Matrix& kernel, long rows, long cols) {
  if (kernel.rows % 2 == 0 || kernel.cols % 2 == 0)
    throw std::invalid_argument("aft_conv_dense_bias: kernel sizes must be odd");
  const long N = rows * cols, ch = kernel.rows / 2, cw = kernel.cols / 2;
  Matrix w(N, N);
  for (long y = 0; y < rows; ++y)
    for (long x = 0; x < cols; ++x)
      for (long yp = 0; yp < rows; ++yp)
        for (long xp = 0; xp < cols; ++xp) {
          const long i = (yp - y) + ch, j = (xp - x) + cw;
          if (i < 0 || i >= kernel.rows || j < 0 || j >= kernel.cols) continue;
          w(y * cols + x, yp * cols + xp) = kernel(i, j);
        }
  return w;
}

// Re-parameterisation w = gamma * (w_raw - mean) / std + beta over all entries of
// one head's matrix, population std (divide by the entry count). SPEC gives no
// rule for std == 0: we take the normalised term as 0, so the result is the
// constant matrix beta (w_raw - mean is exactly 0 there anyway).
inline Matrix aft_reparam(const Matrix& w_raw, double gamma, double beta) {
  const double n = static_cast<double>(w_raw.data.size());
  double mean = 0.0;
  for (double x : w_raw.data) mean += x;
  mean /= n;
  double var = 0.0;
  for (double x : w_raw.data) var += (x - mean) * (x - mean);
  const double sd = std::sqrt(var / n);
  Matrix w(w_raw.rows, w_raw.cols);
  for (std::size_t e = 0; e < w.data.size(); ++e)
    w.data[e] = (sd > 0.0 ? gamma * (w_raw.data[e] - mean) / sd : 0.0) + beta;
  return w;
}

}  // namespace softfree_ref
