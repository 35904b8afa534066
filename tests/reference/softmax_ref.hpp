// Reference softmax attention (SPEC.md "Softmax attention"), plain loops in double.
#pragma once

#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

#include "ref_tensor.hpp"

namespace softfree_ref {

// Options beyond the scale: causal masking with its alignment, key padding and an additive bias.
struct SoftmaxOptions {
  bool causal = false;
  bool bottom_right = false;    // causal diagonal at j <= i + Nk - Nq instead of j <= i
  std::vector<long> key_lengths;  // empty = no padding
  const Tensor* bias = nullptr;   // [1 or B, 1 or H, Nq, Nk], added to scale * q.k; -inf masks
};

// O = softmax(scale * Q K^T + bias [+ mask]) V, row-wise, per (b, h).
// - causal: key j is masked for query i when j > i (top-left), or when
//   j > i + Nk - Nq with bottom_right;
// - bias: added to the scaled score; a -inf entry masks the key like the
//   other masks (its value is never read);
// - key_lengths: empty = no padding, else one valid-key count L_b per batch
//   item; keys j >= L_b are masked;
// - a query row with every key masked yields zeros.
// The row max is subtracted before exp so large scores do not overflow.
inline Tensor softmax_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                                const SoftmaxOptions& opt) {
  check_qkv(q, k, v);
  const std::vector<long>& key_lengths = opt.key_lengths;
  const Tensor* bias = opt.bias;
  if (bias && ((bias->B != 1 && bias->B != q.B) || (bias->H != 1 && bias->H != q.H) || bias->N != q.N ||
               bias->D != k.N))
    throw std::invalid_argument("softmax_attention: bias must be [1 or B, 1 or H, Nq, Nk]");
  const long diag = opt.bottom_right ? k.N - q.N : 0;
  if (!key_lengths.empty() && static_cast<long>(key_lengths.size()) != q.B)
    throw std::invalid_argument("softmax_attention: key_lengths needs one entry per batch item");
  Tensor out(q.B, q.H, q.N, v.D);
  std::vector<double> score(static_cast<std::size_t>(k.N));
  std::vector<bool> valid(static_cast<std::size_t>(k.N));
  for (long b = 0; b < q.B; ++b)
    for (long h = 0; h < q.H; ++h)
      for (long i = 0; i < q.N; ++i) {
        double row_max = -std::numeric_limits<double>::infinity();
        bool any = false;
        for (long j = 0; j < k.N; ++j) {
          bool ok = true;
          if (opt.causal && j > i + diag) ok = false;
          if (!key_lengths.empty() && j >= key_lengths[static_cast<std::size_t>(b)]) ok = false;
          valid[static_cast<std::size_t>(j)] = ok;
          if (!ok) continue;
          double s = 0.0;
          for (long d = 0; d < q.D; ++d) s += q(b, h, i, d) * k(b, h, j, d);
          s *= scale;
          if (bias) {
            const double w = (*bias)(bias->B == 1 ? 0 : b, bias->H == 1 ? 0 : h, i, j);
            if (std::isinf(w) && w < 0) ok = false;
            s += w;
          }
          valid[static_cast<std::size_t>(j)] = ok;
          if (!ok) continue;
          score[static_cast<std::size_t>(j)] = s;
          if (s > row_max) row_max = s;
          any = true;
        }
        if (!any) continue;  // fully masked row: output stays zero
        double denom = 0.0;
        for (long j = 0; j < k.N; ++j)
          if (valid[static_cast<std::size_t>(j)]) denom += std::exp(score[static_cast<std::size_t>(j)] - row_max);
        for (long j = 0; j < k.N; ++j) {
          if (!valid[static_cast<std::size_t>(j)]) continue;
          const double p = std::exp(score[static_cast<std::size_t>(j)] - row_max) / denom;
          for (long d = 0; d < v.D; ++d) out(b, h, i, d) += p * v(b, h, j, d);
        }
      }
  return out;
}

// The former signature: causal top-left and key padding only.
inline Tensor softmax_attention(const Tensor& q, const Tensor& k, const Tensor& v, double scale,
                                bool causal, const std::vector<long>& key_lengths) {
  SoftmaxOptions opt;
  opt.causal = causal;
  opt.key_lengths = key_lengths;
  return softmax_attention(q, k, v, scale, opt);
}

}  // namespace softfree_ref
