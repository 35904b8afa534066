// SoftNystrom's float accuracy (issue 14, item 1): on a sweep of random inputs, the library's
// float result is within 2x of what float can do, measured by a plain float implementation of
// the same pipeline (direct differences for the Gaussian, plain triple loops, the same Newton
// start and steps), both against the plain-loop double reference (tests/reference/soft_ref.hpp).
#include <softfree/soft.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <vector>

#include "reference/soft_ref.hpp"
#include "test_util.hpp"

namespace {

using namespace softfree_test;
using softfree::Landmarks;
using softfree::SoftNystrom;

// ------------------------------------------------------------------ the plain float pipeline
// An independent float implementation of SPEC.md's SoftNystrom with grid landmarks, one head at
// a time: no library code, no expansion of ||x - y||^2, no blocking. Row-major n x c matrices.

using Mat = std::vector<float>;

// Grid(rows, cols, r) average pooling of n x d tokens, in float.
Mat plain_grid_landmarks(const float* x, Index rows, Index cols, Index r, Index d) {
  const Index prows = rows / r, pcols = cols / r;
  Mat l(static_cast<size_t>(prows * pcols * d), 0.0f);
  for (Index py = 0; py < prows; ++py)
    for (Index px = 0; px < pcols; ++px)
      for (Index c = 0; c < d; ++c) {
        float s = 0;
        for (Index dy = 0; dy < r; ++dy)
          for (Index dx = 0; dx < r; ++dx) s += x[((py * r + dy) * cols + px * r + dx) * d + c];
        l[static_cast<size_t>((py * pcols + px) * d + c)] = s / static_cast<float>(r * r);
      }
  return l;
}

// k(x_i, y_j) = exp(-||x_i - y_j||^2 / (2 sqrt(d))), the squared distance from differences.
Mat plain_kernel(const float* x, Index nx, const float* y, Index ny, Index d) {
  const float c = 1.0f / (2.0f * std::sqrt(static_cast<float>(d)));
  Mat k(static_cast<size_t>(nx * ny));
  for (Index i = 0; i < nx; ++i)
    for (Index j = 0; j < ny; ++j) {
      float d2 = 0;
      for (Index e = 0; e < d; ++e) d2 += (x[i * d + e] - y[j * d + e]) * (x[i * d + e] - y[j * d + e]);
      k[static_cast<size_t>(i * ny + j)] = std::exp(-d2 * c);
    }
  return k;
}

// a (n x p) b (p x q).
Mat plain_mul(const Mat& a, const Mat& b, Index n, Index p, Index q) {
  Mat c(static_cast<size_t>(n * q), 0.0f);
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < q; ++j) {
      float s = 0;
      for (Index t = 0; t < p; ++t) s += a[static_cast<size_t>(i * p + t)] * b[static_cast<size_t>(t * q + j)];
      c[static_cast<size_t>(i * q + j)] = s;
    }
  return c;
}

// SPEC's default Newton: P = A + lambda I, V0 = 0.9 * 2 / max_i(sum_j |A_ij|)^2 P, then
// `steps` of V <- 2V - V (P V).
Mat plain_newton(const Mat& a, Index m, int steps, float lambda) {
  float row_sum = 0;
  for (Index i = 0; i < m; ++i) {
    float s = 0;
    for (Index j = 0; j < m; ++j) s += std::abs(a[static_cast<size_t>(i * m + j)]);
    row_sum = std::max(row_sum, s);
  }
  Mat p = a;
  for (Index i = 0; i < m; ++i) p[static_cast<size_t>(i * m + i)] += lambda;
  Mat v = p;
  for (float& x : v) x *= 0.9f * 2.0f / (row_sum * row_sum);
  for (int s = 0; s < steps; ++s) {
    const Mat vpv = plain_mul(v, plain_mul(p, v, m, m, m), m, m, m);
    for (size_t i = 0; i < v.size(); ++i) v[i] = 2 * v[i] - vpv[i];
  }
  return v;
}

// O = P pinv(A) (R V) per head, right to left, with grid landmarks (rows x cols, pool r).
Tensor4<float> plain_nystrom(const Tensor4<float>& q, const Tensor4<float>& k, const Tensor4<float>& v, Index rows,
                             Index cols, Index r) {
  const Index B = q.dimension(0), H = q.dimension(1), n = q.dimension(2), d = q.dimension(3);
  const Index m = (rows / r) * (cols / r);
  Tensor4<float> out(B, H, n, d);
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h) {
      const float *qh = &q(b, h, 0, 0), *kh = &k(b, h, 0, 0), *vh = &v(b, h, 0, 0);
      const Mat ql = plain_grid_landmarks(qh, rows, cols, r, d), kl = plain_grid_landmarks(kh, rows, cols, r, d);
      const Mat p = plain_kernel(qh, n, kl.data(), m, d), a = plain_kernel(ql.data(), m, kl.data(), m, d),
                rt = plain_kernel(ql.data(), m, kh, n, d);
      const Mat vm(vh, vh + n * d);
      const Mat y = plain_mul(plain_newton(a, m, 20, 0.01f), plain_mul(rt, vm, m, n, d), m, m, d);
      const Mat o = plain_mul(p, y, n, m, d);
      std::copy(o.begin(), o.end(), &out(b, h, 0, 0));
    }
  return out;
}

// ------------------------------------------------------------------ the sweep

// Errors of one result against the reference: max |got - ref| / max |ref| over the tensor, and
// the worst row's max |got - ref| / its max |ref| (close_to_ref_rows).
struct Errors {
  double tensor = 0, row = 0;
};
Errors errors_of(const Tensor4<float>& got, const softfree_ref::Tensor& ref) {
  Errors e;
  EXPECT_TRUE(close_to_ref_rows(got, ref, 1.0, 1e-30, &e.row));
  double scale = 0, err = 0;
  for (Index i = 0; i < got.size(); ++i) {
    scale = std::max(scale, std::abs(ref.data[static_cast<size_t>(i)]));
    err = std::max(err, std::abs(static_cast<double>(got.data()[i]) - ref.data[static_cast<size_t>(i)]));
  }
  e.tensor = err / scale;
  return e;
}

struct Worst {
  double ratio = 0, row_ratio = 0, error = 0, plain = 0;
  int over = 0, inputs = 0;
  void add(const Errors& got, const Errors& plain_errors) {
    ratio = std::max(ratio, got.tensor / plain_errors.tensor);
    row_ratio = std::max(row_ratio, got.row / plain_errors.row);
    error = std::max(error, got.tensor);
    plain = std::max(plain, plain_errors.tensor);
    over += got.tensor > 2 * plain_errors.tensor || got.row > 2 * plain_errors.row;
    ++inputs;
  }
};

// Issue 14 item 1's inputs: B = 1, H = 2, grid(7, 7, 2) over N = 49, D = 8 (m = 9) and
// grid(14, 14, 2) over N = 196, D = 32 (m = 49); q and v uniform in [0, 1) or [-1, 1). Each input
// runs tied (k the same tensor as q: P kept, symmetric Newton) and general (k an equal copy).
// The bar: softfree float within 2x the plain float pipeline's error on every input, per tensor
// and on the worst row. What dominates is not the kernels' rounding (it moves the output by
// < 1e-6) but the float Newton iterate's (u ||V||, ||V|| ~ 1 / lambda, cancelling in
// P V (R V)); newton_pinv's last step in double and Y in double remove it. Measured here: before,
// worst 1.0e-3 tied (41x the plain pipeline, 203 inputs over 2x) and 1.4e-4 general (11x, 9
// inputs); after, 2.1e-6 tied and 2.4e-6 general, at most 0.16x plain per tensor and 0.2x per row
// (plain: worst 4.1e-5).
TEST(SoftNystromAccuracy, FloatWithinTwiceThePlainFloatPipeline) {
  struct Shape {
    Index n, d, side;
  };
  constexpr int kSeeds = 52;  // 2 shapes x 2 ranges x 52 = 208 inputs of each kind
  Worst tied, general;
  for (const Shape s : {Shape{49, 8, 7}, Shape{196, 32, 14}})
    for (const double lo : {0.0, -1.0})
      for (int seed = 0; seed < kSeeds; ++seed) {
        const unsigned base = 1000 + 10 * static_cast<unsigned>(seed) + (lo < 0 ? 5 : 0) + (s.n > 49 ? 100000 : 0);
        const auto q = random_tensor<float>(1, 2, s.n, s.d, base, lo, 1.0);
        const auto v = random_tensor<float>(1, 2, s.n, s.d, base + 1, lo, 1.0);
        const Tensor4<float> copy = q;
        const auto qr = to_ref(q);
        const auto ql = softfree_ref::landmarks_grid(qr, s.side, s.side, 2);
        const auto ref = softfree_ref::soft_nystrom(qr, qr, to_ref(v), ql, ql, 20, 0.01,
                                                    softfree_ref::PinvInit::Current, false);
        SoftNystrom<float> f;
        f.landmarks = Landmarks::grid(s.side, s.side, 2);
        const Errors plain = errors_of(plain_nystrom(q, q, v, s.side, s.side, 2), ref);
        const Errors t = errors_of(f(q, q, v), ref), g = errors_of(f(q, copy, v), ref);
        const std::string at = "N " + std::to_string(s.n) + ", values in [" + std::to_string(lo) + ", 1), seed " +
                               std::to_string(seed) + ", plain float error " + std::to_string(plain.tensor) +
                               " (row " + std::to_string(plain.row) + ")";
        EXPECT_LE(t.tensor, 2 * plain.tensor) << "tied, " << at;
        EXPECT_LE(t.row, 2 * plain.row) << "tied, " << at;
        EXPECT_LE(g.tensor, 2 * plain.tensor) << "general, " << at;
        EXPECT_LE(g.row, 2 * plain.row) << "general, " << at;
        tied.add(t, plain);
        general.add(g, plain);
      }
  for (const auto& [name, w] : {std::pair<const char*, const Worst&>{"tied", tied}, {"general", general}})
    std::cout << name << ": " << w.inputs << " inputs, worst error " << w.error << " (plain " << w.plain
              << "), max ratio to plain " << w.ratio << " per tensor, " << w.row_ratio << " worst rows; "
              << w.over << " inputs over 2x\n";
}

}  // namespace
