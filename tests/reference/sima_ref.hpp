// Reference SimA attention (SPEC.md "SimA"), plain loops in double.
#pragma once

#include <cmath>

#include "ref_tensor.hpp"

namespace softfree_ref {

// l1 normalisation over tokens, per channel (PyTorch F.normalize(p=1, dim=-2)):
// Xn[n,c] = X[n,c] / max(sum_m |X[m,c]|, eps). An all-zero channel stays zero.
inline Tensor sima_l1_normalize(const Tensor& x, double eps = 1e-12) {
  Tensor xn(x.B, x.H, x.N, x.D);
  for (long b = 0; b < x.B; ++b)
    for (long h = 0; h < x.H; ++h)
      for (long c = 0; c < x.D; ++c) {
        double norm = 0.0;
        for (long n = 0; n < x.N; ++n) norm += std::fabs(x(b, h, n, c));
        const double denom = std::fmax(norm, eps);
        for (long n = 0; n < x.N; ++n) xn(b, h, n, c) = x(b, h, n, c) / denom;
      }
  return xn;
}

// O = (Qn Kn^T) V: no scale, no softmax. Qn and Kn are formed explicitly and the
// N x N matrix S = Qn Kn^T is built, then multiplied by V. q.N may differ from k.N.
inline Tensor sima(const Tensor& q, const Tensor& k, const Tensor& v, double eps = 1e-12) {
  check_qkv(q, k, v);
  const Tensor qn = sima_l1_normalize(q, eps);
  const Tensor kn = sima_l1_normalize(k, eps);
  Tensor out(q.B, q.H, q.N, v.D);
  for (long b = 0; b < q.B; ++b)
    for (long h = 0; h < q.H; ++h) {
      Matrix S(q.N, k.N);
      for (long i = 0; i < q.N; ++i)
        for (long j = 0; j < k.N; ++j) {
          double s = 0.0;
          for (long c = 0; c < q.D; ++c) s += qn(b, h, i, c) * kn(b, h, j, c);
          S(i, j) = s;
        }
      for (long i = 0; i < q.N; ++i)
        for (long d = 0; d < v.D; ++d) {
          double s = 0.0;
          for (long j = 0; j < k.N; ++j) s += S(i, j) * v(b, h, j, d);
          out(b, h, i, d) = s;
        }
    }
  return out;
}

}  // namespace softfree_ref
