// Self-test of the plain-loop double references in tests/reference/.
// Every check is against a fact derived by hand (or an identity that holds by
// construction of the maths), never against the same reference code path.
// No softfree library header is included here.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

#include "reference/aft_ref.hpp"
#include "reference/ref_tensor.hpp"
#include "reference/sima_ref.hpp"
#include "reference/soft_ref.hpp"
#include "reference/softmax_ref.hpp"

using namespace softfree_ref;

namespace {

// Deterministic values in [lo, hi) (64-bit LCG), so failures reproduce.
void fill(Tensor& t, std::uint64_t seed, double lo = -1.0, double hi = 1.0) {
  std::uint64_t s = seed * 6364136223846793005ULL + 1442695040888963407ULL;
  for (double& x : t.data) {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    x = lo + (hi - lo) * static_cast<double>(s >> 11) / 9007199254740992.0;
  }
}
void fill(Matrix& m, std::uint64_t seed, double lo = -1.0, double hi = 1.0) {
  Tensor t(1, 1, m.rows, m.cols);
  fill(t, seed, lo, hi);
  m.data = t.data;
}

bool all_finite(const Tensor& t) {
  for (double x : t.data)
    if (!std::isfinite(x)) return false;
  return true;
}

// Relative closeness: max |a - b| <= tol * max(1, max |b|).
::testing::AssertionResult close(const Tensor& a, const Tensor& b, double tol) {
  const double diff = max_abs_diff(a, b), scale = std::fmax(1.0, max_abs(b));
  if (diff <= tol * scale) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max diff " << diff << " > " << tol << " * " << scale;
}
::testing::AssertionResult close(const Matrix& a, const Matrix& b, double tol) {
  const double diff = max_abs_diff(a, b), scale = std::fmax(1.0, max_abs(b));
  if (diff <= tol * scale) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max diff " << diff << " > " << tol << " * " << scale;
}

Tensor seq1(std::vector<double> vals) {  // [1, 1, N, 1] from a list
  Tensor t(1, 1, static_cast<long>(vals.size()), 1);
  t.data = vals;
  return t;
}

Matrix mat(long r, long c, std::vector<double> vals) {
  Matrix m(r, c);
  m.data = vals;
  return m;
}

const double kTol = 1e-13;

}  // namespace

// ---------------------------------------------------------------- containers

TEST(RefTensor, RowMajorLayout) {
  Tensor t(2, 3, 4, 5);
  t(1, 2, 3, 4) = 7.0;
  EXPECT_EQ(t.data.back(), 7.0);  // last index is the last element
  t(0, 1, 0, 0) = 3.0;
  EXPECT_EQ(t.data[4 * 5], 3.0);  // one head = N*D elements
  const Matrix s = slice(t, 1, 2);
  EXPECT_EQ(s.rows, 4);
  EXPECT_EQ(s(3, 4), 7.0);
}

TEST(RefTensor, InverseLuHandCase) {
  // [[4,7],[2,6]]^-1 = 1/10 [[6,-7],[-2,4]]
  const Matrix inv = inverse_lu(mat(2, 2, {4, 7, 2, 6}));
  EXPECT_TRUE(close(inv, mat(2, 2, {0.6, -0.7, -0.2, 0.4}), kTol));
}

TEST(RefTensor, InverseLuTimesMatrixIsIdentity) {
  // Zero leading pivot forces a row swap.
  const Matrix a = mat(3, 3, {0, 1, 2, 1, 0, 3, 4, -3, 8});
  const Matrix inv = inverse_lu(a);
  EXPECT_TRUE(close(matmul(a, inv), identity(3), 1e-14));
  EXPECT_TRUE(close(matmul(inv, a), identity(3), 1e-14));
  Matrix r(6, 6);
  fill(r, 11);
  const Matrix ri = inverse_lu(r);
  EXPECT_TRUE(close(matmul(r, ri), identity(6), 1e-12));
}

TEST(RefTensor, InverseLuSingularThrows) {
  EXPECT_THROW(inverse_lu(mat(2, 2, {1, 2, 2, 4})), std::runtime_error);
  EXPECT_THROW(inverse_lu(Matrix(3, 3)), std::runtime_error);
}

// ------------------------------------------------------------------ softmax

TEST(RefSoftmax, OneKeyReturnsItsValue) {
  Tensor q(2, 2, 3, 4), k(2, 2, 1, 4), v(2, 2, 1, 5);
  fill(q, 1), fill(k, 2), fill(v, 3);
  const Tensor o = softmax_attention(q, k, v, 0.5, false, {});
  for (long b = 0; b < 2; ++b)
    for (long h = 0; h < 2; ++h)
      for (long i = 0; i < 3; ++i)
        for (long d = 0; d < 5; ++d) EXPECT_NEAR(o(b, h, i, d), v(b, h, 0, d), kTol);
}

TEST(RefSoftmax, IdenticalKeysGiveMeanOfValues) {
  Tensor q(1, 2, 3, 4), k(1, 2, 5, 4), v(1, 2, 5, 3);
  fill(q, 4), fill(v, 5);
  for (long h = 0; h < 2; ++h)
    for (long j = 0; j < 5; ++j)
      for (long d = 0; d < 4; ++d) k(0, h, j, d) = 0.3 * d - 0.2 * h;
  const Tensor o = softmax_attention(q, k, v, 1.0 / 2.0, false, {});
  for (long h = 0; h < 2; ++h)
    for (long d = 0; d < 3; ++d) {
      double mean = 0.0;
      for (long j = 0; j < 5; ++j) mean += v(0, h, j, d) / 5.0;
      for (long i = 0; i < 3; ++i) EXPECT_NEAR(o(0, h, i, d), mean, kTol);
    }
}

TEST(RefSoftmax, TwoKeysHandComputed) {
  // Scores q*k = {0, ln 3}: weights 1/4, 3/4. With scale 2: e^0 : e^{2 ln 3} = 1 : 9.
  const Tensor q = seq1({1.0}), k = seq1({0.0, std::log(3.0)}), v = seq1({2.0, 10.0});
  EXPECT_NEAR(softmax_attention(q, k, v, 1.0, false, {})(0, 0, 0, 0), 0.25 * 2 + 0.75 * 10, kTol);
  EXPECT_NEAR(softmax_attention(q, k, v, 2.0, false, {})(0, 0, 0, 0), 0.1 * 2 + 0.9 * 10, kTol);
}

TEST(RefSoftmax, CausalRows) {
  const Tensor q = seq1({1.0, 1.0}), k = seq1({0.0, std::log(3.0)}), v = seq1({2.0, 10.0});
  const Tensor o = softmax_attention(q, k, v, 1.0, true, {});
  EXPECT_NEAR(o(0, 0, 0, 0), 2.0, kTol);  // row 0 sees key 0 only
  EXPECT_NEAR(o(0, 0, 1, 0), 0.25 * 2 + 0.75 * 10, kTol);
}

TEST(RefSoftmax, CausalCrossAttentionUsesIndexRule) {
  // Nq = 3, Nk = 2: query 0 sees key 0; queries 1 and 2 see both keys.
  const Tensor q = seq1({1.0, 1.0, 1.0}), k = seq1({0.0, std::log(3.0)}), v = seq1({2.0, 10.0});
  const Tensor o = softmax_attention(q, k, v, 1.0, true, {});
  EXPECT_NEAR(o(0, 0, 0, 0), 2.0, kTol);
  EXPECT_NEAR(o(0, 0, 1, 0), 8.0, kTol);
  EXPECT_NEAR(o(0, 0, 2, 0), 8.0, kTol);
}

TEST(RefSoftmax, CausalBottomRight) {
  // Nq = 1, Nk = 2: the one query is the last position, so it sees both keys (top-left: key 0).
  const Tensor k = seq1({0.0, std::log(3.0)}), v = seq1({2.0, 10.0});
  SoftmaxOptions opt;
  opt.causal = true;
  opt.bottom_right = true;
  EXPECT_NEAR(softmax_attention(seq1({1.0}), k, v, 1.0, opt)(0, 0, 0, 0), 8.0, kTol);
  // Nq = 3, Nk = 2: query 0 sees nothing (zeros), query 1 key 0, query 2 both.
  const Tensor o = softmax_attention(seq1({1.0, 1.0, 1.0}), k, v, 1.0, opt);
  EXPECT_EQ(o(0, 0, 0, 0), 0.0);
  EXPECT_NEAR(o(0, 0, 1, 0), 2.0, kTol);
  EXPECT_NEAR(o(0, 0, 2, 0), 8.0, kTol);
}

TEST(RefSoftmax, BiasHandComputed) {
  // Scores {0, 0} plus bias {0, ln 3} (B = H = 1 broadcast over B = 2): weights 1/4, 3/4. A -inf
  // bias drops its key; a row of -inf gives zeros.
  Tensor q(2, 1, 3, 1), k(2, 1, 2, 1), v(2, 1, 2, 1), bias(1, 1, 3, 2);
  for (long b = 0; b < 2; ++b) v(b, 0, 0, 0) = 2.0, v(b, 0, 1, 0) = 10.0;
  const double inf = std::numeric_limits<double>::infinity();
  bias(0, 0, 0, 1) = std::log(3.0);
  bias(0, 0, 1, 0) = -inf;
  bias(0, 0, 2, 0) = bias(0, 0, 2, 1) = -inf;
  SoftmaxOptions opt;
  opt.bias = &bias;
  const Tensor o = softmax_attention(q, k, v, 1.0, opt);
  for (long b = 0; b < 2; ++b) {
    EXPECT_NEAR(o(b, 0, 0, 0), 0.25 * 2 + 0.75 * 10, kTol);
    EXPECT_NEAR(o(b, 0, 1, 0), 10.0, kTol);
    EXPECT_EQ(o(b, 0, 2, 0), 0.0);
  }
  const Tensor wrong(1, 1, 2, 3);
  opt.bias = &wrong;
  EXPECT_THROW(softmax_attention(q, k, v, 1.0, opt), std::invalid_argument);
}

TEST(RefSoftmax, KeyPaddingAndFullyMaskedRows) {
  Tensor q(3, 1, 2, 1), k(3, 1, 2, 1), v(3, 1, 2, 1);
  for (long b = 0; b < 3; ++b) {
    q(b, 0, 0, 0) = q(b, 0, 1, 0) = 1.0;
    k(b, 0, 0, 0) = 0.0, k(b, 0, 1, 0) = std::log(3.0);
    v(b, 0, 0, 0) = 2.0, v(b, 0, 1, 0) = 10.0;
  }
  const Tensor o = softmax_attention(q, k, v, 1.0, false, {2, 1, 0});
  EXPECT_NEAR(o(0, 0, 0, 0), 8.0, kTol);  // no padding
  EXPECT_NEAR(o(1, 0, 0, 0), 2.0, kTol);  // only key 0 valid
  EXPECT_NEAR(o(1, 0, 1, 0), 2.0, kTol);
  EXPECT_EQ(o(2, 0, 0, 0), 0.0);  // every key masked: zero, not NaN
  EXPECT_EQ(o(2, 0, 1, 0), 0.0);
  // causal + padding 1: row 0 -> key 0, row 1 -> key 0 (key 1 padded)
  const Tensor oc = softmax_attention(q, k, v, 1.0, true, {2, 1, 0});
  EXPECT_NEAR(oc(0, 0, 1, 0), 8.0, kTol);
  EXPECT_NEAR(oc(1, 0, 1, 0), 2.0, kTol);
  EXPECT_EQ(oc(2, 0, 1, 0), 0.0);
}

TEST(RefSoftmax, LargeScoresStayFinite) {
  // Score 1e4 would overflow exp without the max subtraction.
  const Tensor o = softmax_attention(seq1({1.0}), seq1({1e4, 0.0}), seq1({3.0, -7.0}), 1.0, false, {});
  EXPECT_EQ(o(0, 0, 0, 0), 3.0);
}

// --------------------------------------------------------------------- SimA

TEST(RefSima, SingleTokenPositiveEntriesGiveDTimesV) {
  // N = 1, positive entries: Qn = Kn = all ones, Qn Kn^T = D, so O = D * V.
  Tensor q(2, 3, 1, 4), k(2, 3, 1, 4), v(2, 3, 1, 5);
  fill(q, 7, 0.1, 2.0), fill(k, 8, 0.1, 2.0), fill(v, 9);
  const Tensor o = sima(q, k, v);
  for (std::size_t e = 0; e < o.data.size(); ++e) EXPECT_NEAR(o.data[e], 4.0 * v.data[e], kTol);
}

TEST(RefSima, TwoTokenHandCase) {
  // Q = [1, 3] -> Qn = [1/4, 3/4]; K = [2, -2] -> Kn = [1/2, -1/2]; V = [10, 20].
  // S = Qn Kn^T = [[1/8, -1/8], [3/8, -3/8]]; O = S V = [-5/4, -15/4].
  const Tensor o = sima(seq1({1, 3}), seq1({2, -2}), seq1({10, 20}));
  EXPECT_NEAR(o(0, 0, 0, 0), -1.25, kTol);
  EXPECT_NEAR(o(0, 0, 1, 0), -3.75, kTol);
}

TEST(RefSima, CrossAttentionHandCase) {
  // Nq = 1: Qn = [1]; K = [1, 3] -> Kn = [1/4, 3/4]; V = [4, 8] -> O = 1 + 6 = 7.
  EXPECT_NEAR(sima(seq1({5}), seq1({1, 3}), seq1({4, 8}))(0, 0, 0, 0), 7.0, kTol);
}

TEST(RefSima, ZeroChannelStaysZeroAndEpsClamps) {
  // D = 2, N = 1: Q = [1, 2] -> Qn = [1, 1]; K = [3, 0] -> Kn = [1, 0]; S = 1, O = V.
  Tensor q(1, 1, 1, 2), k(1, 1, 1, 2), v(1, 1, 1, 2);
  q.data = {1, 2}, k.data = {3, 0}, v.data = {5, -6};
  const Tensor o = sima(q, k, v);
  EXPECT_NEAR(o.data[0], 5.0, kTol);
  EXPECT_NEAR(o.data[1], -6.0, kTol);
  // All-zero Q: zero output, no NaN.
  const Tensor z = sima(Tensor(1, 1, 1, 2), k, v);
  EXPECT_EQ(z.data[0], 0.0);
  EXPECT_EQ(z.data[1], 0.0);
  // |Q|_1 = 1e-14 < eps = 1e-12: Qn = 1e-14 / 1e-12 = 0.01; Kn = 1; O = 0.01 * 3.
  EXPECT_NEAR(sima(seq1({1e-14}), seq1({1}), seq1({3}))(0, 0, 0, 0), 0.03, 1e-15);
}

// --------------------------------------------------------------------- SOFT

TEST(RefSoft, GaussianKernelValues) {
  const double x[4] = {0.5, -1, 2, 3};
  EXPECT_EQ(gaussian_kernel(x, x, 4), 1.0);
  const double a[4] = {0, 0, 0, 0}, b[4] = {1, 1, 0, 0};  // ||a-b||^2 = 2, 2 sqrt(4) = 4
  EXPECT_NEAR(gaussian_kernel(a, b, 4), std::exp(-0.5), kTol);
  const double c[1] = {0}, d[1] = {2};  // 4 / (2 * 1)
  EXPECT_NEAR(gaussian_kernel(c, d, 1), std::exp(-2.0), kTol);
}

TEST(RefSoft, SoftGaussianHandCase) {
  // Q = K = [0, 2] (D = 1): k(0, 2) = e^-2.
  const Tensor o = soft_gaussian(seq1({0, 2}), seq1({0, 2}), seq1({1, 10}));
  EXPECT_NEAR(o(0, 0, 0, 0), 1 + 10 * std::exp(-2.0), kTol);
  EXPECT_NEAR(o(0, 0, 1, 0), std::exp(-2.0) + 10, kTol);
}

TEST(RefSoft, LandmarksSegments) {
  Tensor x(2, 2, 5, 3);
  fill(x, 21);
  EXPECT_EQ(max_abs_diff(landmarks_segments(x, 5), x), 0.0);  // m = N: the tokens themselves
  // N = 5, m = 2: PyTorch bounds [0, 3) and [2, 5); token t holds t + 100 d.
  Tensor s(1, 1, 5, 2);
  for (long t = 0; t < 5; ++t) s(0, 0, t, 0) = t, s(0, 0, t, 1) = t + 100;
  const Tensor l = landmarks_segments(s, 2);
  EXPECT_NEAR(l(0, 0, 0, 0), 1.0, kTol);  // mean(0, 1, 2)
  EXPECT_NEAR(l(0, 0, 1, 0), 3.0, kTol);  // mean(2, 3, 4)
  EXPECT_NEAR(l(0, 0, 1, 1), 103.0, kTol);
  EXPECT_NEAR(landmarks_segments(s, 1)(0, 0, 0, 0), 2.0, kTol);
  // N = 7, m = 3: [0, 3), [2, 5), [4, 7).
  const Tensor l7 = landmarks_segments(seq1({0, 1, 2, 3, 4, 5, 6}), 3);
  EXPECT_NEAR(l7.data[0], 1.0, kTol);
  EXPECT_NEAR(l7.data[1], 3.0, kTol);
  EXPECT_NEAR(l7.data[2], 5.0, kTol);
}

TEST(RefSoft, LandmarksGrid) {
  // 5 x 7 grid, r = 2: pooled 2 x 3 (last row and column dropped). Token t holds
  // t + 100 d; the 2x2 block at (py, px) has tokens base + {0, 1, 7, 8} with
  // base = 14 py + 2 px, so its mean is 14 py + 2 px + 4.
  Tensor x(1, 2, 35, 2);
  for (long h = 0; h < 2; ++h)
    for (long t = 0; t < 35; ++t) x(0, h, t, 0) = t, x(0, h, t, 1) = t + 100;
  const Tensor l = landmarks_grid(x, 5, 7, 2);
  ASSERT_EQ(l.N, 6);
  for (long h = 0; h < 2; ++h)
    for (long py = 0; py < 2; ++py)
      for (long px = 0; px < 3; ++px) {
        EXPECT_NEAR(l(0, h, py * 3 + px, 0), 14.0 * py + 2.0 * px + 4.0, kTol);
        EXPECT_NEAR(l(0, h, py * 3 + px, 1), 14.0 * py + 2.0 * px + 104.0, kTol);
      }
  EXPECT_EQ(max_abs_diff(landmarks_grid(x, 5, 7, 1), x), 0.0);  // r = 1: tokens themselves
  const Tensor one = landmarks_grid(seq1({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}), 4, 4, 4);
  EXPECT_NEAR(one.data[0], 7.5, kTol);
}

TEST(RefSoft, PinvCurrentInitUsesRowSumsOfA) {
  // A = 2 I (3x3), lambda = 1: SPEC alpha = 0.9 * 2 / 2^2 = 0.45, P = 3 I, V0 = 1.35 I.
  // (Row sums of P would give alpha = 0.2, V0 = 0.6 I.)
  Matrix A = identity(3);
  for (double& x : A.data) x *= 2.0;
  const PinvResult r0 = newton_pinv(A, 0, 1.0, PinvInit::Current);
  EXPECT_EQ(r0.steps, 0);
  for (long i = 0; i < 3; ++i)
    for (long j = 0; j < 3; ++j) EXPECT_NEAR(r0.inverse(i, j), i == j ? 1.35 : 0.0, kTol);
  EXPECT_NEAR(r0.residual, 3.05 * std::sqrt(3.0), 1e-12);  // ||(1 - 3 * 1.35) I||_F
  // One step with lambda = 0: V0 = 0.9 I, V1 = 2 * 0.9 - 0.9 * 2 * 0.9 = 0.18; I - P V1 = 0.64 I.
  const PinvResult r1 = newton_pinv(A, 1, 0.0, PinvInit::Current);
  EXPECT_EQ(r1.steps, 1);
  EXPECT_NEAR(r1.inverse(1, 1), 0.18, kTol);
  EXPECT_NEAR(r1.residual, 0.64 * std::sqrt(3.0), 1e-12);
}

TEST(RefSoft, PinvPaperEraHalving) {
  // A = [[1, -1], [1, 1]]: alpha starts at 2 / 2^2 = 0.5 and A^2 = [[0, -2], [2, 0]],
  // so I - alpha A^2 = [[1, 2 alpha], [-2 alpha, 1]] with column sum 1 + 2 alpha.
  // It is <= 1.01 first at alpha = 0.5 / 2^7 = 1/256 (7 halvings): V0 = A / 256.
  const Matrix A = mat(2, 2, {1, -1, 1, 1});
  const PinvResult r = newton_pinv(A, 0, 0.5 /*ignored by PaperEra*/, PinvInit::PaperEra);
  EXPECT_TRUE(close(r.inverse, mat(2, 2, {1.0 / 256, -1.0 / 256, 1.0 / 256, 1.0 / 256}), kTol));
  // Cap of 10 halvings: 20 x 20 with a column of ones (A^2 = A, row sums 1).
  // Column 0 of I - alpha A has sum (1 - alpha) + 19 alpha = 1 + 18 alpha, which
  // needs alpha <= 0.01/18 (12 halvings from 2); the cap stops at 2 / 2^10.
  Matrix C(20, 20);
  for (long i = 0; i < 20; ++i) C(i, 0) = 1.0;
  const PinvResult rc = newton_pinv(C, 0, 0.0, PinvInit::PaperEra);
  EXPECT_NEAR(rc.inverse(5, 0), 2.0 / 1024.0, 1e-16);
  EXPECT_EQ(rc.inverse(5, 1), 0.0);
}

namespace {
// Gaussian kernel matrix of m points in D = 4.
Matrix kernel_of_points(long m, double spread, std::uint64_t seed) {
  Tensor x(1, 1, m, 4);
  fill(x, seed, -spread, spread);
  return gaussian_kernel_matrix(x, x, 0, 0);
}
}  // namespace

TEST(RefSoft, PinvConvergesOnWellConditionedMatrix) {
  // Points spread over [-2, 2]^4: off-diagonal kernel values are small, A is SPD
  // and well conditioned, so 40 steps reach the exact inverse to rounding.
  const Matrix A = kernel_of_points(6, 2.0, 31);
  const double lambda = 0.01;
  Matrix Al = A;
  for (long i = 0; i < 6; ++i) Al(i, i) += lambda;
  const PinvResult cur = newton_pinv(A, 40, lambda, PinvInit::Current);
  EXPECT_EQ(cur.steps, 40);
  EXPECT_TRUE(close(cur.inverse, inverse_lu(Al), 1e-12));
  EXPECT_LT(cur.residual, 1e-12);
  const PinvResult pap = newton_pinv(A, 40, lambda, PinvInit::PaperEra);  // P = A, lambda ignored
  EXPECT_TRUE(close(pap.inverse, inverse_lu(A), 1e-12));
  EXPECT_LT(pap.residual, 1e-12);
}

TEST(RefSoft, PinvSixStepsNotConvergedOnIllConditionedMatrix) {
  // Six points clustered in [-0.05, 0.05]^4: A is close to the all-ones matrix, so
  // A + 0.01 I has lambda_min ~ 0.01 and row sums ~ 6. The error I - P V_k has
  // eigenvalues (1 - alpha mu^2)^(2^k) (V0 = alpha P commutes with P); for the
  // smallest mu, alpha mu^2 ~ 1.8 / 36 * 1e-4 = 5e-6, so after 6 steps the factor
  // is (1 - 5e-6)^64 ~ 0.9997 and ||I - P V||_F >= 0.99 (far from converged),
  // while after 40 steps it is exp(-5e-6 * 2^40) = 0.
  const Matrix A = kernel_of_points(6, 0.05, 41);
  Matrix Al = A;
  for (long i = 0; i < 6; ++i) Al(i, i) += 0.01;
  const PinvResult six = newton_pinv(A, 6, 0.01, PinvInit::Current);
  EXPECT_GT(six.residual, 0.9);
  EXPECT_GT(max_abs_diff(six.inverse, inverse_lu(Al)), 1.0);
  const PinvResult forty = newton_pinv(A, 40, 0.01, PinvInit::Current);
  EXPECT_LT(forty.residual, 1e-10);
  EXPECT_TRUE(close(forty.inverse, inverse_lu(Al), 1e-10));
}

TEST(RefSoft, PinvEarlyStop) {
  const Matrix A = kernel_of_points(6, 2.0, 31);
  const double tol = 1e-8;
  const PinvResult r = newton_pinv(A, 100, 0.01, PinvInit::Current, tol);
  EXPECT_LT(r.steps, 100);
  EXPECT_LT(r.residual, tol);
  // One step fewer has not reached the tolerance (it stops at the first such step).
  EXPECT_GE(newton_pinv(A, r.steps - 1, 0.01, PinvInit::Current).residual, tol);
}

TEST(RefSoft, NystromWithEveryTokenALandmarkEqualsGaussian) {
  // m = N, Segments(N) = the tokens themselves, so P = A = R = k(Q, K) and
  // P A^-1 R V = A V = SoftGaussian. Five tokens in [-1.5, 1.5]^4 keep A invertible.
  Tensor q(2, 2, 5, 4), k(2, 2, 5, 4), v(2, 2, 5, 3);
  fill(q, 51, -1.5, 1.5), fill(k, 52, -1.5, 1.5), fill(v, 53);
  // tied (K = Q) and untied
  const Tensor ql = landmarks_segments(q, 5);
  const Tensor tied = soft_gaussian(q, q, v);
  EXPECT_TRUE(close(soft_nystrom_exact(q, q, v, ql, ql, 0.0, false), tied, 1e-10));
  EXPECT_TRUE(close(soft_nystrom(q, q, v, ql, ql, 60, 0.0, PinvInit::Current, false), tied, 1e-9));
  const Tensor kl = landmarks_segments(k, 5);
  EXPECT_TRUE(close(soft_nystrom_exact(q, k, v, ql, kl, 0.0, false), soft_gaussian(q, k, v), 1e-10));
}

TEST(RefSoft, NystromSingleLandmarkHandFormula) {
  // m = 1, landmark x = mean token: A = k(x, x) = 1, so pinv = 1 / (1 + lambda) and
  // O_i = k(Q_i, x) / (1 + lambda) * sum_j k(x, K_j) V_j.
  Tensor q(1, 1, 4, 3), v(1, 1, 4, 2);
  fill(q, 61), fill(v, 62);
  const Tensor x = landmarks_segments(q, 1);
  const double lambda = 0.01;
  Tensor expect(1, 1, 4, 2);
  for (long i = 0; i < 4; ++i)
    for (long d = 0; d < 2; ++d) {
      double rv = 0.0;
      for (long j = 0; j < 4; ++j) rv += gaussian_kernel(x.row(0, 0, 0), q.row(0, 0, j), 3) * v(0, 0, j, d);
      expect(0, 0, i, d) = gaussian_kernel(q.row(0, 0, i), x.row(0, 0, 0), 3) / (1 + lambda) * rv;
    }
  EXPECT_TRUE(close(soft_nystrom_exact(q, q, v, x, x, lambda, false), expect, kTol));
  EXPECT_TRUE(close(soft_nystrom(q, q, v, x, x, 40, lambda, PinvInit::Current, false), expect, kTol));
}

TEST(RefSoft, SoftNormTwoTokenHandCase) {
  // Two tokens, landmarks = tokens, A = [[1, a], [a, 1]], both row sums 1 + a, so
  // D^-1/2 A^-1 D^-1/2 = A^-1 / (1 + a) and O = A A^-1 A V / (1 + a) = SoftGaussian / (1 + a).
  Tensor q(1, 1, 2, 2), v(1, 1, 2, 3);
  q.data = {0.0, 0.0, 1.0, 0.5};
  fill(v, 71);
  const double a = gaussian_kernel(q.row(0, 0, 0), q.row(0, 0, 1), 2);
  Tensor expect = soft_gaussian(q, q, v);
  for (double& e : expect.data) e /= 1 + a;
  EXPECT_TRUE(close(soft_nystrom_exact(q, q, v, q, q, 0.0, true), expect, 1e-12));
}

// ---------------------------------------------------------------------- AFT

namespace {
std::vector<Matrix> zero_bias(long N) { return {Matrix(N, N)}; }
}  // namespace

TEST(RefAft, SigmoidValues) {
  EXPECT_EQ(sigmoid(0.0), 0.5);
  EXPECT_NEAR(sigmoid(std::log(3.0)), 0.75, kTol);
  EXPECT_EQ(sigmoid(-1000.0), 0.0);
  EXPECT_EQ(sigmoid(1000.0), 1.0);
}

TEST(RefAft, SimpleHandCase) {
  // Q = 0 (sigma = 1/2), K = [0, ln 3] (weights 1/4, 3/4), V = [1, 5].
  const Tensor q = seq1({0, 0}), k = seq1({0, std::log(3.0)}), v = seq1({1, 5});
  const Tensor o = aft_simple(q, k, v, false);
  EXPECT_NEAR(o.data[0], 0.5 * (0.25 + 3.75), kTol);
  EXPECT_NEAR(o.data[1], 2.0, kTol);
  const Tensor c = aft_simple(q, k, v, true);
  EXPECT_NEAR(c.data[0], 0.5, kTol);  // row 0 sees only V_0
  EXPECT_NEAR(c.data[1], 2.0, kTol);
}

TEST(RefAft, FullHandCaseWithPerHeadBias) {
  // K = 0, w = [[0, ln 3], [ln 3, 0]]: row 0 weights 1:3 -> (1 + 15)/4 = 4,
  // row 1 weights 3:1 -> (3 + 5)/4 = 2; times sigma(0) = 1/2. Head 1 has w = 0:
  // (1 + 5)/2 * 1/2 = 1.5.
  Tensor q(1, 2, 2, 1), k(1, 2, 2, 1), v(1, 2, 2, 1);
  v.data = {1, 5, 1, 5};
  const double L = std::log(3.0);
  const Tensor o = aft_full(q, k, v, {mat(2, 2, {0, L, L, 0}), Matrix(2, 2)}, false);
  EXPECT_NEAR(o(0, 0, 0, 0), 2.0, kTol);
  EXPECT_NEAR(o(0, 0, 1, 0), 1.0, kTol);
  EXPECT_NEAR(o(0, 1, 0, 0), 1.5, kTol);
  EXPECT_NEAR(o(0, 1, 1, 0), 1.5, kTol);
}

TEST(RefAft, SimpleEqualsFullWithZeroBias) {
  Tensor q(2, 3, 6, 4), k(2, 3, 6, 4), v(2, 3, 6, 4);
  fill(q, 81), fill(k, 82, -3, 3), fill(v, 83);
  for (bool causal : {false, true})
    EXPECT_TRUE(close(aft_simple(q, k, v, causal), aft_full(q, k, v, zero_bias(6), causal), kTol));
}

TEST(RefAft, CausalRowZeroIsSigmaQTimesV) {
  Tensor q(1, 2, 5, 3), k(1, 2, 5, 3), v(1, 2, 5, 3);
  fill(q, 91), fill(k, 92, -5, 5), fill(v, 93);
  Matrix w(5, 5);
  fill(w, 94, -2, 2);
  const Tensor outs[3] = {aft_full(q, k, v, {w}, true), aft_local(q, k, v, {w}, 2, true),
                          aft_simple(q, k, v, true)};
  for (const Tensor& o : outs)
    for (long h = 0; h < 2; ++h)
      for (long c = 0; c < 3; ++c) EXPECT_NEAR(o(0, h, 0, c), sigmoid(q(0, h, 0, c)) * v(0, h, 0, c), kTol);
}

TEST(RefAft, LocalWindowHandCaseAndLimits) {
  // N = 3, s = 2, w = ln 3 everywhere, K = 0, Q = 0: row 0 keeps w on t' = 0, 1 and
  // gets 0 on t' = 2, so weights 3 : 3 : 1 and Y_0 = (3*1 + 3*2 + 10) / 7 / 2.
  const double L = std::log(3.0);
  const Matrix w = mat(3, 3, {L, L, L, L, L, L, L, L, L});
  const Tensor o = aft_local(seq1({0, 0, 0}), seq1({0, 0, 0}), seq1({1, 2, 10}), {w}, 2, false);
  EXPECT_NEAR(o.data[0], 19.0 / 14.0, kTol);
  EXPECT_NEAR(o.data[1], 13.0 / 6.0, kTol);  // all three inside: mean
  EXPECT_NEAR(o.data[2], (1 + 6 + 30) / 7.0 / 2.0, kTol);

  Tensor q(1, 2, 6, 3), k(1, 2, 6, 3), v(1, 2, 6, 3);
  fill(q, 101), fill(k, 102, -3, 3), fill(v, 103);
  Matrix w0(6, 6), w1(6, 6);
  fill(w0, 104, -2, 2), fill(w1, 105, -2, 2);
  const std::vector<Matrix> ws{w0, w1};
  for (bool causal : {false, true}) {
    // s >= N: nothing is zeroed.
    EXPECT_TRUE(close(aft_local(q, k, v, ws, 6, causal), aft_full(q, k, v, ws, causal), kTol));
    EXPECT_TRUE(close(aft_local(q, k, v, ws, 100, causal), aft_full(q, k, v, ws, causal), kTol));
    // s = 1 keeps only the diagonal; with a zero diagonal that is AftSimple.
    Matrix wz = w0;
    for (long t = 0; t < 6; ++t) wz(t, t) = 0.0;
    EXPECT_TRUE(close(aft_local(q, k, v, {wz}, 1, causal), aft_simple(q, k, v, causal), kTol));
  }
}

TEST(RefAft, ConvDenseBiasLayout) {
  // 1 x 3 grid, kernel [a, b, c]: w[t, t'] = kernel[(t' - t) + 1] (cross-correlation).
  const Matrix w = aft_conv_dense_bias(mat(1, 3, {1, 2, 3}), 1, 3);
  EXPECT_TRUE(close(w, mat(3, 3, {2, 3, 0, 1, 2, 3, 0, 1, 2}), 0.0));
  // 3 x 1 grid, 3 x 1 kernel: the same pattern down the rows.
  const Matrix wc = aft_conv_dense_bias(mat(3, 1, {1, 2, 3}), 3, 1);
  EXPECT_TRUE(close(wc, mat(3, 3, {2, 3, 0, 1, 2, 3, 0, 1, 2}), 0.0));
  // 2 x 2 grid, 3 x 3 kernel k(i, j) = 10 i + j + 1: token 0 = (0,0) to token 3 = (1,1)
  // is offset (+1, +1) -> k(2, 2) = 23; token 3 to token 0 -> k(0, 0) = 1; token 1 = (0,1)
  // to token 2 = (1,0) is (+1, -1) -> k(2, 0) = 21; the diagonal is k(1, 1) = 12.
  const Matrix w2 = aft_conv_dense_bias(mat(3, 3, {1, 2, 3, 11, 12, 13, 21, 22, 23}), 2, 2);
  EXPECT_EQ(w2(0, 3), 23.0);
  EXPECT_EQ(w2(3, 0), 1.0);
  EXPECT_EQ(w2(1, 2), 21.0);
  EXPECT_EQ(w2(2, 1), 3.0);
  EXPECT_EQ(w2(0, 0), 12.0);
  // 3 x 5 grid, 1 x 3 kernel: token (0,0) and token (1,0) are outside the window -> 0.
  EXPECT_EQ(aft_conv_dense_bias(mat(1, 3, {1, 2, 3}), 3, 5)(0, 5), 0.0);
}

TEST(RefAft, ConvEqualsFullWithDenseBias) {
  // 3 x 5 grid (non-square), several kernel shapes, one kernel per head.
  const long rows = 3, cols = 5, N = 15;
  Tensor q(2, 2, N, 3), k(2, 2, N, 3), v(2, 2, N, 3);
  fill(q, 111), fill(k, 112, -4, 4), fill(v, 113);
  const long shapes[][2] = {{3, 1}, {1, 3}, {3, 3}, {1, 5}, {5, 3}, {1, 1}, {7, 7}};
  std::uint64_t seed = 120;
  for (const auto& s : shapes) {
    Matrix k0(s[0], s[1]), k1(s[1], s[0]);
    fill(k0, seed++, -2, 2), fill(k1, seed++, -2, 2);
    const Tensor conv = aft_conv(q, k, v, {k0, k1}, rows, cols);
    const Tensor full =
        aft_full(q, k, v, {aft_conv_dense_bias(k0, rows, cols), aft_conv_dense_bias(k1, rows, cols)}, false);
    EXPECT_TRUE(close(conv, full, 1e-12)) << "kernel " << s[0] << "x" << s[1];
  }
  // A zero kernel gives e^0 - 1 = 0: AftSimple.
  EXPECT_TRUE(close(aft_conv(q, k, v, {Matrix(3, 3)}, rows, cols), aft_simple(q, k, v, false), kTol));
}

TEST(RefAft, HugeKeysStayFinite) {
  // K = [60000, 0, -60000, 59999], w = 0: weights proportional to [1, 0, 0, e^-1].
  const Tensor q = seq1({0.3, -0.2, 1.0, 0.0}), k = seq1({60000, 0, -60000, 59999}), v = seq1({2, 7, -3, 5});
  const double e1 = std::exp(-1.0), mix = (2 + e1 * 5) / (1 + e1);
  const Tensor outs[4] = {aft_simple(q, k, v, false), aft_full(q, k, v, zero_bias(4), false),
                          aft_local(q, k, v, zero_bias(4), 2, false), aft_conv(q, k, v, {Matrix(1, 3)}, 2, 2)};
  for (const Tensor& o : outs) {
    ASSERT_TRUE(all_finite(o));
    for (long t = 0; t < 4; ++t) EXPECT_NEAR(o.data[t], sigmoid(q.data[t]) * mix, kTol);
  }
  // Causal: rows 0..2 see V_0 only (up to e^-60000 = 0), row 3 the mix.
  const Tensor c = aft_simple(q, k, v, true);
  ASSERT_TRUE(all_finite(c));
  for (long t = 0; t < 3; ++t) EXPECT_NEAR(c.data[t], sigmoid(q.data[t]) * 2, kTol);
  EXPECT_NEAR(c.data[3], mix * 0.5, kTol);
  // K_0 = -60000 then 60000: a single global max would give 0/0 on row 0.
  const Tensor r = aft_full(seq1({0, 0}), seq1({-60000, 60000}), seq1({4, 9}), zero_bias(2), true);
  ASSERT_TRUE(all_finite(r));
  EXPECT_NEAR(r.data[0], 2.0, kTol);
  EXPECT_NEAR(r.data[1], 4.5, kTol);
}

TEST(RefAft, Reparam) {
  // [[1, 3]]: mean 2, population std 1 -> gamma * (+-1) + beta.
  EXPECT_TRUE(close(aft_reparam(mat(1, 2, {1, 3}), 2.0, 5.0), mat(1, 2, {3, 7}), kTol));
  // [[1, 2], [3, 4]]: mean 2.5, population variance 1.25.
  const double sd = std::sqrt(1.25);
  EXPECT_TRUE(close(aft_reparam(mat(2, 2, {1, 2, 3, 4}), 1.0, 0.0),
                    mat(2, 2, {-1.5 / sd, -0.5 / sd, 0.5 / sd, 1.5 / sd}), kTol));
  // Constant input (std = 0): the constant beta.
  EXPECT_TRUE(close(aft_reparam(mat(2, 2, {4, 4, 4, 4}), 3.0, -1.0), mat(2, 2, {-1, -1, -1, -1}), 0.0));
  // gamma = beta = 0 gives w = 0, i.e. AftSimple.
  Tensor q(1, 1, 4, 2), k(1, 1, 4, 2), v(1, 1, 4, 2);
  fill(q, 131), fill(k, 132), fill(v, 133);
  Matrix raw(4, 4);
  fill(raw, 134);
  EXPECT_TRUE(close(aft_full(q, k, v, {aft_reparam(raw, 0.0, 0.0)}, false), aft_simple(q, k, v, false), kTol));
}
