// SOFT: SoftGaussian, SoftNystrom (every landmark mode) and newton_pinv against the plain-loop
// double references of tests/reference/soft_ref.hpp, for every storage type.
#include <softfree/soft.hpp>

#include <algorithm>
#include <tuple>

#include "reference/soft_ref.hpp"
#include "test_util.hpp"

namespace {

using namespace softfree_test;
using softfree::Landmarks;
using softfree::NewtonInit;
using softfree::NewtonDiagnostics;
using softfree::NewtonOptions;
using softfree::SoftGaussian;
using softfree::SoftNystrom;

// Row-major Eigen matrix <-> reference Matrix.
softfree_ref::Matrix ref_matrix(const softfree::RowMatrix<double>& a) {
  softfree_ref::Matrix r(a.rows(), a.cols());
  for (Index i = 0; i < a.rows(); ++i)
    for (Index j = 0; j < a.cols(); ++j) r(i, j) = a(i, j);
  return r;
}

// Kernel matrix k(x, y) of two [1, 1, n, D] reference tensors, in double: a typical A.
softfree::RowMatrix<double> kernel_matrix(const softfree_ref::Tensor& x, const softfree_ref::Tensor& y) {
  const softfree_ref::Matrix k = softfree_ref::gaussian_kernel_matrix(x, y, 0, 0);
  softfree::RowMatrix<double> a(k.rows, k.cols);
  for (Index i = 0; i < k.rows; ++i)
    for (Index j = 0; j < k.cols; ++j) a(i, j) = k(i, j);
  return a;
}

double max_abs_diff(const softfree::RowMatrix<double>& a, const softfree_ref::Matrix& b) {
  return softfree_ref::max_abs_diff(ref_matrix(a), b);
}

template <class T>
class SoftTyped : public ::testing::Test {};
TYPED_TEST_SUITE(SoftTyped, StorageTypes, TypeName);

// ------------------------------------------------------------------ SoftGaussian

TYPED_TEST(SoftTyped, GaussianMatchesReference) {
  using T = TypeParam;
  // N = 130 spans two query blocks and two key tiles; D = 59 is not a packet multiple.
  for (auto [n, d] : {std::pair<Index, Index>{7, 16}, {130, 59}}) {
    const auto q = random_tensor<T>(2, 2, n, d, 1), k = random_tensor<T>(2, 2, n, d, 2),
               v = random_tensor<T>(2, 2, n, d, 3);
    EXPECT_TRUE(close_to_ref(SoftGaussian<T>{}(q, k, v), softfree_ref::soft_gaussian(to_ref(q), to_ref(k), to_ref(v))))
        << "N = " << n << ", D = " << d;
  }
}

TYPED_TEST(SoftTyped, GaussianCrossAndTied) {
  using T = TypeParam;
  const auto q = random_tensor<T>(1, 3, 20, 8, 4), k = random_tensor<T>(1, 3, 150, 8, 5),
             v = random_tensor<T>(1, 3, 150, 8, 6);
  EXPECT_TRUE(close_to_ref(SoftGaussian<T>{}(q, k, v), softfree_ref::soft_gaussian(to_ref(q), to_ref(k), to_ref(v))));
  const auto x = random_tensor<T>(1, 2, 33, 8, 7), w = random_tensor<T>(1, 2, 33, 8, 8);
  EXPECT_TRUE(close_to_ref(SoftGaussian<T>{}(x, x, w), softfree_ref::soft_gaussian(to_ref(x), to_ref(x), to_ref(w))));
}

TYPED_TEST(SoftTyped, GaussianFarApartKeysGiveExactZeros) {
  using T = TypeParam;
  // ||q - k||^2 / (2 sqrt D) >= 64 * 16 / 16 = 64 for the close pair and far more for the others:
  // every weight underflows in float, so the output must be 0, not the packet exp's tiny floor.
  const auto q = random_tensor<T>(1, 1, 9, 64, 9, 6.0, 8.0), k = random_tensor<T>(1, 1, 9, 64, 10, -16.0, -2.0),
             v = random_tensor<T>(1, 1, 9, 64, 11);
  const auto ref = softfree_ref::soft_gaussian(to_ref(q), to_ref(k), to_ref(v));
  const auto out = SoftGaussian<T>{}(q, k, v);
  for (Index i = 0; i < out.size(); ++i) {
    ASSERT_LT(std::abs(ref.data[static_cast<size_t>(i)]), 1e-300);
    ASSERT_EQ(static_cast<double>(out.data()[i]), 0.0) << "element " << i;
  }
}

// The float error of plain loops computing ||x - y||^2 directly (no expansion to cancel), exp and
// the weighted sum in float: what float can do on given inputs.
Tensor4<float> direct_gaussian_float(const Tensor4<float>& q, const Tensor4<float>& k, const Tensor4<float>& v) {
  const Index H = q.dimension(1), nq = q.dimension(2), nk = k.dimension(2), d = q.dimension(3);
  const float c = 1.0f / (2.0f * std::sqrt(static_cast<float>(d)));
  Tensor4<float> out(1, H, nq, d);
  out.setZero();
  for (Index h = 0; h < H; ++h)
    for (Index i = 0; i < nq; ++i)
      for (Index j = 0; j < nk; ++j) {
        float d2 = 0;
        for (Index e = 0; e < d; ++e) d2 += (q(0, h, i, e) - k(0, h, j, e)) * (q(0, h, i, e) - k(0, h, j, e));
        const float w = std::exp(-d2 * c);
        for (Index e = 0; e < d; ++e) out(0, h, i, e) += w * v(0, h, j, e);
      }
  return out;
}

// Worst row ratio (close_to_ref_rows) and max |got - ref| / max |ref| over the tensor. A plain
// struct, not std::pair: on aarch64 g++ notes (-Wpsabi) that passing a C++17 std::pair<double,
// double> changed ABI in GCC 10.1.
struct RowAndTensorErrors {
  double row, tensor;
};
RowAndTensorErrors row_and_tensor_errors(const Tensor4<float>& got, const softfree_ref::Tensor& ref) {
  double row = 0, scale = 0, err = 0;
  EXPECT_TRUE(close_to_ref_rows(got, ref, 1.0, 1e-30, &row));
  for (Index i = 0; i < got.size(); ++i) {
    scale = std::max(scale, std::abs(ref.data[static_cast<size_t>(i)]));
    err = std::max(err, std::abs(got.data()[i] - ref.data[static_cast<size_t>(i)]));
  }
  return {row, err / scale};
}

// Tokens c + U(-0.5, 0.5) far from the origin (D = 16; Q != K and tied): the expansion
// |x|^2 + |y|^2 - 2 x.y in float lost u |x|^2 s to cancellation (relative error 2.5e-5 at
// c = 10, 2.5e-3 at 100, 0.17 at 1000); about the keys' mean, SoftGaussian is within 2x of the
// direct differences, per row and per tensor, at every offset.
TEST(SoftGaussian, FarFromTheOriginAsDirectDifferences) {
  for (double c : {0.0, 10.0, 100.0, 1000.0})
    for (bool tied : {false, true}) {
      const auto q = random_tensor<float>(1, 2, 300, 16, 15, c - 0.5, c + 0.5);
      const auto k = tied ? q : random_tensor<float>(1, 2, 300, 16, 16, c - 0.5, c + 0.5);
      const auto v = random_tensor<float>(1, 2, 300, 16, 17, 0.0, 1.0);
      const auto ref = softfree_ref::soft_gaussian(to_ref(q), to_ref(k), to_ref(v));
      const auto got = row_and_tensor_errors(SoftGaussian<float>{}(q, tied ? q : k, v), ref);
      const auto direct = row_and_tensor_errors(direct_gaussian_float(q, k, v), ref);
      const std::string at = "offset " + std::to_string(c) + (tied ? " tied" : " untied");
      EXPECT_LE(got.row, 2 * direct.row) << at << ": per row";
      EXPECT_LE(got.tensor, 2 * direct.tensor) << at << ": per tensor";
    }
}

TEST(SoftGaussian, ThreadCountDoesNotChangeBits) {
  const auto q = random_tensor<float>(2, 3, 200, 32, 12), k = random_tensor<float>(2, 3, 200, 32, 13),
             v = random_tensor<float>(2, 3, 200, 32, 14);
  SoftGaussian<float> f;
  const auto one = f(q, k, v);
  f.parallel = softfree::Parallel::with_threads(2);
  EXPECT_TRUE(bitwise_equal(one, f(q, k, v)));
}

// ------------------------------------------------------------------ newton_pinv

// Well-conditioned SPD matrix: M M^T / n + I, eigenvalues in [1, 1 + n].
softfree::RowMatrix<double> spd(Index n, unsigned seed) {
  const auto t = random_tensor<double>(1, 1, n, n, seed);
  const softfree::ConstMatrixMap<double> m(t.data(), n, n);
  return m * m.transpose() / static_cast<double>(n) + softfree::RowMatrix<double>::Identity(n, n);
}

TEST(NewtonPinv, ConvergesToTheRegularisedInverse) {
  // Symmetric input takes the symmetric-product path: whole-packet blocks, mirrored blocks below
  // them, and a tail of columns past the last whole packet (35: a tail of 3 for 4-, 8- and
  // 16-lane packets, whose own block must come out exactly symmetric too).
  for (Index n : {1, 5, 16, 35, 40, 49}) {
    const auto a = spd(n, 20 + static_cast<unsigned>(n));
    softfree_ref::Matrix p = ref_matrix(a);
    for (Index i = 0; i < n; ++i) p(i, i) += 0.01;
    const softfree_ref::Matrix exact = softfree_ref::inverse_lu(p);
    NewtonOptions o;
    o.steps = 40;
    const auto r = softfree::newton_pinv(a, o);
    EXPECT_LT(max_abs_diff(r.inverse, exact), 1e-12 * softfree_ref::max_abs(exact)) << "n = " << n;
    EXPECT_LT(r.residual, 1e-12);
    EXPECT_TRUE(r.converged);
    EXPECT_EQ(r.steps, 40);
    // float: unit roundoff 6e-8 times cond(P) <= 1 + n (< 20), with margin.
    const auto rf = softfree::newton_pinv(softfree::RowMatrix<float>(a.cast<float>()), o);
    EXPECT_LT(max_abs_diff(rf.inverse.cast<double>(), exact), 1e-5 * softfree_ref::max_abs(exact)) << "n = " << n;
  }
}

TEST(NewtonPinv, MatchesReferenceIteratesAndReportsNonConvergence) {
  // A typical SOFT A: the kernel matrix of 12 landmarks.
  const auto x = to_ref(random_tensor<double>(1, 1, 12, 16, 30));
  const auto a = kernel_matrix(x, x);
  for (NewtonInit init : {NewtonInit::Current, NewtonInit::PaperEra}) {
    for (int steps : {0, 6, 20}) {
      NewtonOptions o;
      o.steps = steps;
      o.init = init;
      const auto r = softfree::newton_pinv(a, o);
      const auto ref = softfree_ref::newton_pinv(ref_matrix(a), steps, o.lambda,
                                                 init == NewtonInit::Current ? softfree_ref::PinvInit::Current
                                                                             : softfree_ref::PinvInit::PaperEra);
      EXPECT_LT(max_abs_diff(r.inverse, ref.inverse), 1e-12 * softfree_ref::max_abs(ref.inverse))
          << "steps = " << steps;
      EXPECT_EQ(r.steps, ref.steps);
      EXPECT_NEAR(r.residual, ref.residual, 1e-10 * (1 + ref.residual));
      EXPECT_EQ(r.converged, ref.residual < NewtonOptions::kConvergedResidual);
    }
  }
  // Six steps are not enough on this matrix: the result says so.
  NewtonOptions six;
  six.steps = 6;
  const auto r6 = softfree::newton_pinv(a, six);
  EXPECT_FALSE(r6.converged);
  EXPECT_GT(r6.residual, 0.1);
}

TEST(NewtonPinv, NonSymmetricMatchesReferenceIterates) {
  // Untied landmarks give a non-symmetric A: the general (full product) path, 40 x 40.
  const auto x = to_ref(random_tensor<double>(1, 1, 40, 16, 31, -2.0, 2.0));
  auto y = x;
  const auto noise = random_tensor<double>(1, 1, 40, 16, 32, -0.1, 0.1);
  for (size_t i = 0; i < y.data.size(); ++i) y.data[i] += noise.data()[i];
  const auto a = kernel_matrix(x, y);
  ASSERT_FALSE(a.isApprox(a.transpose()));
  const auto r = softfree::newton_pinv(a);
  const auto ref = softfree_ref::newton_pinv(ref_matrix(a), 20, 0.01, softfree_ref::PinvInit::Current);
  EXPECT_LT(max_abs_diff(r.inverse, ref.inverse), 1e-12 * softfree_ref::max_abs(ref.inverse));
  EXPECT_NEAR(r.residual, ref.residual, 1e-10 * (1 + ref.residual));
}

TEST(NewtonPinv, EarlyStopOnTolerance) {
  const auto a = spd(10, 40);
  NewtonOptions o;
  o.steps = 100;
  o.tolerance = 1e-9;
  const auto r = softfree::newton_pinv(a, o);
  const auto ref = softfree_ref::newton_pinv(ref_matrix(a), 100, o.lambda, softfree_ref::PinvInit::Current, 1e-9);
  EXPECT_EQ(r.steps, ref.steps);
  EXPECT_LT(r.steps, 100);
  EXPECT_LT(r.residual, 1e-9);
  EXPECT_TRUE(r.converged);
}

TEST(NewtonPinv, ZeroMatrix) {
  // All kernel values underflowed: (0 + lambda I)^-1 = I / lambda; with lambda = 0, pinv(0) = 0.
  const softfree::RowMatrix<float> z = softfree::RowMatrix<float>::Zero(3, 3);
  const auto r = softfree::newton_pinv(z);
  EXPECT_TRUE(r.inverse.isApprox(softfree::RowMatrix<float>::Identity(3, 3) * 100.0f, 1e-5f));
  NewtonOptions o;
  o.lambda = 0;
  const auto r0 = softfree::newton_pinv(z, o);
  EXPECT_TRUE(r0.inverse.isZero());
  // V = 0 is exactly pinv(0): the Penrose residuals are 0, while ||I - P V|| stays sqrt(3).
  EXPECT_EQ(r0.pinv_residual, 0.0);
  EXPECT_NEAR(r0.residual, std::sqrt(3.0), 1e-6);
  EXPECT_TRUE(r0.converged);
}

TEST(NewtonPinv, TinyMatrixKeepsItsLargeInverse) {
  // Found by the fuzz harness: float entries ~1e-38 have an inverse ~1e37 (representable), but the
  // start's factor 1.8 / row_sum^2 (~1e74) overflowed float and the result was NaN. V0 is scaled
  // in double now. pinv(a) = 1e38 pinv(1e38 a), and 1e38 a is well conditioned.
  softfree::RowMatrix<float> a(3, 3);
  a << 5e-38f, 1e-38f, 2e-38f, 1e-38f, 6e-38f, 1e-38f, 2e-38f, 1e-38f, 7e-38f;
  NewtonOptions o;
  o.lambda = 0;
  const auto r = softfree::newton_pinv(a, o);
  ASSERT_TRUE(r.inverse.allFinite());
  const softfree::RowMatrix<double> scaled = a.cast<double>() * 1e38;
  const auto ref = softfree_ref::newton_pinv(ref_matrix(scaled), o.steps, 0.0, softfree_ref::PinvInit::Current);
  const softfree::RowMatrix<double> got = r.inverse.cast<double>() / 1e38;
  // float iterates of a well-conditioned 3 x 3 matrix: a few float roundings, 1e-5 relative.
  EXPECT_LT(max_abs_diff(got, ref.inverse), 1e-5 * softfree_ref::max_abs(ref.inverse));
  EXPECT_TRUE(r.converged);
}

TEST(NewtonPinv, OverflowingStartIsRestartedEvenWithoutSteps) {
  // Found by the fuzz harness: lambda = 1e38 in float makes P V0 overflow; with steps = 0 the
  // residual stayed inf (inf <= inf: no restart). Now restarted, to (A + lambda I)^-1 = I / (1 + lambda).
  const softfree::RowMatrix<float> a = softfree::RowMatrix<float>::Identity(3, 3);
  NewtonOptions o;
  o.lambda = 1e38;
  o.steps = 0;
  const auto r = softfree::newton_pinv(a, o);
  EXPECT_TRUE(r.restarted);
  EXPECT_TRUE(std::isfinite(r.residual));
  EXPECT_TRUE(r.inverse.isApprox(a / (1 + 1e38f), 1e-5f)) << r.inverse;
}

TEST(NewtonPinv, RejectsBadInput) {
  const softfree::RowMatrix<double> a = softfree::RowMatrix<double>::Identity(3, 3);
  EXPECT_TRUE(throws_naming([&] { softfree::newton_pinv(softfree::RowMatrix<double>(2, 3)); }, {"2 x 3", "square"}));
  NewtonOptions o;
  o.steps = -1;
  EXPECT_TRUE(throws_naming([&] { softfree::newton_pinv(a, o); }, {"steps = -1"}));
  o = {};
  o.lambda = std::nan("");
  EXPECT_TRUE(throws_naming([&] { softfree::newton_pinv(a, o); }, {"lambda = nan"}));
  o = {};
  o.tolerance = -1;
  EXPECT_TRUE(throws_naming([&] { softfree::newton_pinv(a, o); }, {"tolerance = -1"}));
  // Found writing the fuzz oracle (tests/fuzz): lambda is added to the diagonal in float for a float matrix, so a finite
  // lambda past float's range made the whole inverse NaN. Rejected there; in double it is an
  // ordinary (huge) regulariser, whose inverse is I / (1 + lambda).
  o = {};
  o.lambda = 1e39;
  EXPECT_TRUE(throws_naming([&] { softfree::newton_pinv(softfree::RowMatrix<float>::Identity(3, 3), o); },
                            {"lambda = 1e+39", "float"}));
  const auto r = softfree::newton_pinv(a, o);
  EXPECT_TRUE(r.inverse.isApprox(a / (1 + o.lambda), 1e-12)) << r.inverse;
}

// ------------------------------------------------------------------ SoftNystrom

// Inputs in [-2, 2) keep the landmarks apart, so A is well conditioned (cond ~ 10) and the
// storage-type tolerances hold after the pseudo-inverse amplifies the kernel's rounding.
template <class T>
Tensor4<T> spread(Index b, Index h, Index n, Index d, unsigned seed) {
  return random_tensor<T>(b, h, n, d, seed, -2.0, 2.0);
}

// Untied tests take keys near the queries (keys_near, test_util.hpp): SPEC's start V0 = alpha P
// converges only when the eigenvalues of P^2 lie in the right half-plane, which holds for the
// tied (symmetric) case SOFT was built for and for nearby keys, but not for unrelated q and k
// (the reference diverges to inf there too).

template <class T>
::testing::AssertionResult nystrom_matches(const SoftNystrom<T>& f, const Tensor4<T>& q, const Tensor4<T>& k,
                                           const Tensor4<T>& v, const softfree_ref::Tensor& ql,
                                           const softfree_ref::Tensor& kl) {
  const auto init = f.newton.init == NewtonInit::Current ? softfree_ref::PinvInit::Current
                                                          : softfree_ref::PinvInit::PaperEra;
  const auto ref = softfree_ref::soft_nystrom(to_ref(q), to_ref(k), to_ref(v), ql, kl, f.newton.steps,
                                              f.newton.lambda, init, f.soft_norm);
  return close_to_ref(f(q, k, v), ref);
}

// The same with Segments(m) or Grid(rows, cols, r) landmarks, pooled by the reference.
template <class T>
::testing::AssertionResult segments_match(SoftNystrom<T> f, const Tensor4<T>& q, const Tensor4<T>& k,
                                          const Tensor4<T>& v, Index m) {
  f.landmarks = Landmarks::segments(m);
  return nystrom_matches(f, q, k, v, softfree_ref::landmarks_segments(to_ref(q), m),
                         softfree_ref::landmarks_segments(to_ref(k), m));
}
template <class T>
::testing::AssertionResult grid_match(SoftNystrom<T> f, const Tensor4<T>& q, const Tensor4<T>& k, const Tensor4<T>& v,
                                      Index rows, Index cols, Index r) {
  f.landmarks = Landmarks::grid(rows, cols, r);
  return nystrom_matches(f, q, k, v, softfree_ref::landmarks_grid(to_ref(q), rows, cols, r),
                         softfree_ref::landmarks_grid(to_ref(k), rows, cols, r));
}

TYPED_TEST(SoftTyped, NystromSegments) {
  using T = TypeParam;
  // N = 23, m = 5: uneven, overlapping adaptive-pool segments; q != k.
  const auto q = spread<T>(2, 2, 23, 16, 50), k = keys_near(q, 51), v = random_tensor<T>(2, 2, 23, 16, 52);
  SoftNystrom<T> f;
  EXPECT_TRUE(segments_match(f, q, k, v, 5));
  // Tied q == k (the paper's P A^+ P^T V), with SOFT-Norm and the paper-era init.
  f.soft_norm = true;
  f.newton.init = NewtonInit::PaperEra;
  EXPECT_TRUE(segments_match(f, q, q, v, 5));
}

TYPED_TEST(SoftTyped, NystromSegmentsCrossAttention) {
  using T = TypeParam;
  // 40 keys that stretch the 11 queries over the sequence (key t near query 11 t / 40), so the
  // two landmark sets are close, as keys_near() does for equal lengths.
  const auto q = spread<T>(1, 2, 11, 8, 53), v = random_tensor<T>(1, 2, 40, 8, 55);
  Tensor4<T> stretched(1, 2, 40, 8);
  for (Index h = 0; h < 2; ++h)
    for (Index t = 0; t < 40; ++t)
      for (Index c = 0; c < 8; ++c) stretched(0, h, t, c) = q(0, h, t * 11 / 40, c);
  const auto k = keys_near(stretched, 54);
  EXPECT_TRUE(segments_match(SoftNystrom<T>{}, q, k, v, 4));
}

TYPED_TEST(SoftTyped, NystromGrid) {
  using T = TypeParam;
  // A 5 x 7 image pooled by r = 2: the last image row and column are dropped, m = 2 * 3.
  const auto q = spread<T>(1, 2, 35, 16, 56), k = keys_near(q, 57), v = random_tensor<T>(1, 2, 35, 16, 58);
  SoftNystrom<T> f;
  f.landmarks = Landmarks::grid(5, 7, 2);
  EXPECT_EQ(f.landmark_count(), 6);
  EXPECT_TRUE(grid_match(f, q, k, v, 5, 7, 2));
  EXPECT_TRUE(grid_match(f, q, k, v, 5, 7, 1));  // r = 1: every token is a landmark
}

TYPED_TEST(SoftTyped, NystromGivenLandmarks) {
  using T = TypeParam;
  const auto q = spread<T>(2, 1, 30, 16, 59), k = keys_near(q, 60), v = random_tensor<T>(2, 1, 30, 16, 61);
  auto ql = spread<T>(2, 1, 7, 16, 62);
  const auto kl = keys_near(ql, 63);
  const auto ql_ref = to_ref(ql), kl_ref = to_ref(kl);
  SoftNystrom<T> f;
  f.landmarks = Landmarks::given(ql, kl);
  ql.setZero();  // given() copied the landmarks
  EXPECT_TRUE(nystrom_matches(f, q, k, v, ql_ref, kl_ref));
}

TYPED_TEST(SoftTyped, NystromTiedInEveryLandmarkMode) {
  using T = TypeParam;
  // k is q: the tied path (P kept, R = P^T, symmetric pseudo-inverse). N = 150 spans several
  // token tiles; m = 49 (segments) has a tail past whole packets; grid 10 x 15, r = 2 gives m = 35.
  const auto q = spread<T>(1, 2, 150, 16, 76), v = random_tensor<T>(1, 2, 150, 16, 77);
  const auto ql = softfree_ref::landmarks_segments(to_ref(q), 49);
  SoftNystrom<T> f;
  f.landmarks = Landmarks::segments(49);
  EXPECT_TRUE(nystrom_matches(f, q, q, v, ql, ql));
  f.soft_norm = true;
  EXPECT_TRUE(nystrom_matches(f, q, q, v, ql, ql));
  f.soft_norm = false;
  const auto qg = softfree_ref::landmarks_grid(to_ref(q), 10, 15, 2);
  f.landmarks = Landmarks::grid(10, 15, 2);
  EXPECT_TRUE(nystrom_matches(f, q, q, v, qg, qg));
  // One given tensor for both sides is tied too.
  const auto given = spread<T>(1, 2, 9, 16, 78);
  f.landmarks = Landmarks::given(given, given);
  EXPECT_TRUE(nystrom_matches(f, q, q, v, to_ref(given), to_ref(given)));
}

TEST(SoftNystrom, TiedAgreesWithAnEqualCopyOfQ) {
  // A copy of q is not recognised as tied (another pointer), so this compares the two paths.
  const auto q = spread<float>(2, 3, 200, 32, 79), v = random_tensor<float>(2, 3, 200, 32, 80);
  const Tensor4<float> copy = q;
  SoftNystrom<float> f;
  const auto tied = f(q, q, v), untied = f(q, copy, v);
  // float: both follow the double reference within its tolerance, so within twice it of each other.
  EXPECT_TRUE(close_to_ref(tied, to_ref(untied), 2 * tolerance<float>()));
  f.parallel = softfree::Parallel::with_threads(2);
  EXPECT_TRUE(bitwise_equal(tied, f(q, q, v)));
}

TEST(SoftNystrom, ManyLandmarksAndBlocks) {
  // m = 70: more than four packets of landmarks; N = 300: several key tiles and row items.
  const auto q = spread<float>(1, 2, 300, 24, 64), k = keys_near(q, 65), v = random_tensor<float>(1, 2, 300, 24, 66);
  EXPECT_TRUE(segments_match(SoftNystrom<float>{}, q, k, v, 70));
}

TYPED_TEST(SoftTyped, NystromWithEveryTokenALandmarkEqualsGaussian) {
  using T = TypeParam;
  // m = N segments: Qt = Q, Kt = K, so P = A = R and O = A A^-1 A V = A V (lambda = 0).
  const auto q = spread<T>(1, 2, 12, 8, 67), v = random_tensor<T>(1, 2, 12, 8, 68);
  SoftNystrom<T> f;
  f.landmarks = Landmarks::segments(12);
  f.newton.lambda = 0;
  f.newton.steps = 60;
  Tensor4<T> out(1, 2, 12, 8);
  const softfree::NewtonDiagnostics diag = f.run(q, q, v, out);
  EXPECT_TRUE(close_to_ref(out, softfree_ref::soft_gaussian(to_ref(q), to_ref(q), to_ref(v))));
  EXPECT_TRUE(diag.converged);
  EXPECT_EQ(diag.heads, 2);
}

// The worst residual of the reference's Newton pseudo-inverse (the current start, lambda 0.01)
// over the 2 x 2 heads of landmarks ql and kl.
double worst_residual(const softfree_ref::Tensor& ql, const softfree_ref::Tensor& kl, int steps) {
  double worst = 0;
  for (Index b = 0; b < 2; ++b)
    for (Index h = 0; h < 2; ++h) {
      const auto a = softfree_ref::gaussian_kernel_matrix(ql, kl, b, h);
      worst = std::max(worst, softfree_ref::newton_pinv(a, steps, 0.01, softfree_ref::PinvInit::Current).residual);
    }
  return worst;
}

TEST(SoftNystrom, DiagnosticsReportTheWorstHead) {
  const auto q = random_tensor<double>(2, 2, 40, 16, 70), k = keys_near(q, 71);
  const auto v = random_tensor<double>(2, 2, 40, 16, 72);
  const auto ql = softfree_ref::landmarks_segments(to_ref(q), 8), kl = softfree_ref::landmarks_segments(to_ref(k), 8);
  for (int steps : {6, 20}) {
    const double worst = worst_residual(ql, kl, steps);
    SoftNystrom<double> f;
    f.landmarks = Landmarks::segments(8);
    f.newton.steps = steps;
    Tensor4<double> out(2, 2, 40, 16);
    const softfree::NewtonDiagnostics diag = f.run(q, k, v, out);
    EXPECT_EQ(diag.heads, 4);
    EXPECT_EQ(diag.steps, steps);
    EXPECT_NEAR(diag.residual, worst, 1e-9 * (1 + worst));
    EXPECT_EQ(diag.converged, worst < NewtonOptions::kConvergedResidual);
    if (steps == 6) {
      EXPECT_FALSE(diag.converged);  // 6 steps do not converge: visible, not silent
    }
  }
}

TEST(SoftNystrom, ThreadCountDoesNotChangeBits) {
  const auto q = random_tensor<float>(2, 3, 150, 32, 73), k = random_tensor<float>(2, 3, 150, 32, 74),
             v = random_tensor<float>(2, 3, 150, 32, 75);
  SoftNystrom<float> f;
  f.landmarks = Landmarks::segments(20);
  const auto one = f(q, k, v);
  f.parallel = softfree::Parallel::with_threads(2);
  EXPECT_TRUE(bitwise_equal(one, f(q, k, v)));
}

// ------------------------------------------------------------------ split across token chunks
// More keys than one chunk (core/schedule.hpp's kTokenChunk): R V is summed per chunk of keys and
// the partials added in chunk order, whichever schedule runs them: fused (whole heads per item)
// where the heads keep every thread busy, else split into phases (landmarks per head, R V per
// chunk, the pseudo-inverse per head, the output per block of rows; tied, P kept per head).

constexpr Index kChunk = softfree::detail::kTokenChunk;

// Whether SoftNystrom runs `items` whole-head items (B H tied, B H_kv untied) over n keys fused.
bool runs_fused(Index items, Index n, int threads) {
  return softfree::detail::nystrom_fused(items, softfree::detail::token_chunks(n), threads);
}

// Tokens of a rows x cols image in their r x r pooling window (the cut-off last rows and columns
// in the nearest one), as grid(rows, cols, r) pools them.
auto window_of(Index rows, Index cols, Index r) {
  return [=](Index t) {
    return std::min(t / cols / r, rows / r - 1) * (cols / r) + std::min(t % cols / r, cols / r - 1);
  };
}

TYPED_TEST(SoftTyped, NystromSplitAcrossTokenChunks) {
  using T = TypeParam;
  const Index n = 2 * kChunk + 300, m = 20;  // three chunks, the last one partial
  const auto centres = random_tensor<double>(1, 2, m, 8, 90, -2.0, 2.0);
  const auto q = clustered<T>(centres, n, segment_of(n, m), 91), k = keys_near(q, 92);
  const auto v = random_tensor<T>(1, 2, n, 8, 93);
  const Index short_n = kChunk - 100;  // one chunk
  const auto q_short = clustered<T>(centres, short_n, segment_of(short_n, m), 94);
  const auto k_short = clustered<T>(centres, short_n, segment_of(short_n, m), 95);
  const auto v_short = random_tensor<T>(1, 2, short_n, 8, 96);
  const auto ql = from_ref<T>(to_ref(centres)), kl = keys_near(ql, 97);
  // Grid landmarks: a 48 x 50 image pooled by r = 6 (the last 2 columns cut off), m = 64.
  const auto grid_centres = random_tensor<double>(1, 2, 64, 8, 98, -2.0, 2.0);
  const auto qg = clustered<T>(grid_centres, 48 * 50, window_of(48, 50, 6), 99), kg = keys_near(qg, 100);
  const auto vg = random_tensor<T>(1, 2, 48 * 50, 8, 101);
  // 2 heads: fused on 1 thread, split on 3.
  for (int threads : {1, 3}) {
    SCOPED_TRACE(::testing::Message() << threads << " threads");
    EXPECT_EQ(runs_fused(2, n, threads), threads == 1);
    SoftNystrom<T> f;
    f.parallel = softfree::Parallel::with_threads(threads);
    EXPECT_TRUE(segments_match(f, q, k, v, m)) << "untied";
    EXPECT_TRUE(segments_match(f, q, q, v, m)) << "tied";
    SoftNystrom<T> g = f;
    g.soft_norm = true;
    g.newton.init = NewtonInit::PaperEra;
    EXPECT_TRUE(segments_match(g, q, q, v, m)) << "tied, SOFT-Norm, paper-era start";
    // Cross-attention: one chunk of queries against split keys, and split queries against one
    // chunk of keys (fused pass 1 on any thread count, then many query rows).
    EXPECT_TRUE(segments_match(f, q_short, k, v, m)) << short_n << " queries, " << n << " keys";
    EXPECT_TRUE(segments_match(f, q, k_short, v_short, m)) << n << " queries, " << short_n << " keys";
    // Given landmarks (the centres), untied and tied.
    g = f;
    g.landmarks = Landmarks::given(ql, kl);
    EXPECT_TRUE(nystrom_matches(g, q, k, v, to_ref(ql), to_ref(kl))) << "given";
    g.landmarks = Landmarks::given(ql, ql);
    EXPECT_TRUE(nystrom_matches(g, q, q, v, to_ref(ql), to_ref(ql))) << "given, tied";
    EXPECT_TRUE(grid_match(f, qg, kg, vg, 48, 50, 6)) << "grid";
    EXPECT_TRUE(grid_match(f, qg, qg, vg, 48, 50, 6)) << "grid, tied";
  }
}

TEST(SoftNystrom, SplitTiedAgreesWithAnEqualCopyOfQ) {
  const Index n = 2 * kChunk + 1, m = 49;  // a last chunk of one token
  const auto q = clustered<float>(random_tensor<double>(2, 3, m, 32, 102, -2.0, 2.0), n, segment_of(n, m), 103);
  const auto v = random_tensor<float>(2, 3, n, 32, 104);
  const Tensor4<float> copy = q;
  SoftNystrom<float> f;
  const auto tied = f(q, q, v), untied = f(q, copy, v);
  EXPECT_TRUE(close_to_ref(tied, to_ref(untied), 2 * tolerance<float>()));
  ASSERT_FALSE(runs_fused(6, n, 4));
  f.parallel = softfree::Parallel::with_threads(4);
  EXPECT_TRUE(bitwise_equal(tied, f(q, q, v)));
  EXPECT_TRUE(bitwise_equal(untied, f(q, copy, v)));
}

// The result and the report do not depend on the thread count, whichever schedule runs: tied,
// untied and grouped-query.
TEST(SoftNystrom, SplitThreadCountDoesNotChangeBits) {
  const Index n = 3 * kChunk + 77, m = 16;
  // Query heads 2 h and 2 h + 1 share their clusters, so kv head h's keys (near query head 2 h's
  // tokens) suit both: every head's A is well conditioned, grouped too.
  const auto pairs = random_tensor<double>(2, 2, m, 16, 105, -2.0, 2.0);
  Tensor4<double> centres(2, 4, m, 16);
  for (Index h = 0; h < 4; ++h) centres.chip(h, 1) = pairs.chip(h / 2, 1);
  const auto q = clustered<float>(centres, n, segment_of(n, m), 106), k = keys_near(q, 107);
  const auto v = random_tensor<float>(2, 4, n, 16, 108);
  Tensor4<float> k_grouped(2, 2, n, 16), v_grouped(2, 2, n, 16);  // kv head h: query heads 2 h, 2 h + 1
  for (Index b = 0; b < 2; ++b)
    for (Index h = 0; h < 2; ++h)
      for (Index t = 0; t < n; ++t)
        for (Index c = 0; c < 16; ++c) k_grouped(b, h, t, c) = k(b, 2 * h, t, c), v_grouped(b, h, t, c) = v(b, 2 * h, t, c);
  // 8 whole-head items (tied, untied) are fused on 1, 2 and 3 threads, split on 5; grouped, 4
  // items are fused on 1 and 2, split on 3 and 5.
  EXPECT_TRUE(runs_fused(8, n, 3) && !runs_fused(8, n, 5) && runs_fused(4, n, 2) && !runs_fused(4, n, 3));
  SoftNystrom<float> f;
  f.landmarks = Landmarks::segments(m);
  const auto same = [](const NewtonDiagnostics& a, const NewtonDiagnostics& b) {
    return a.heads == b.heads && a.steps == b.steps && a.residual == b.residual &&
           a.pinv_residual == b.pinv_residual && a.restarted == b.restarted && a.converged == b.converged;
  };
  const auto call = [&](const Tensor4<float>& kk, const Tensor4<float>& vv, int threads, NewtonDiagnostics& dg) {
    f.parallel = softfree::Parallel::with_threads(threads);
    Tensor4<float> out(2, 4, n, 16);
    dg = f.run(q, kk, vv, softfree::View4<float>(out.data(), out.dimensions()));
    return out;
  };
  using Case = std::tuple<const char*, const Tensor4<float>*, const Tensor4<float>*>;
  for (const auto& [what, kk, vv] : {Case{"untied", &k, &v}, Case{"tied", &q, &v}, Case{"grouped", &k_grouped, &v_grouped}}) {
    SCOPED_TRACE(what);
    NewtonDiagnostics one, other;
    const auto serial = call(*kk, *vv, 1, one);
    EXPECT_EQ(one.heads, 8);
    EXPECT_TRUE(one.converged);
    for (int threads : {2, 3, 5}) {
      EXPECT_TRUE(bitwise_equal(serial, call(*kk, *vv, threads, other))) << threads << " threads";
      EXPECT_TRUE(same(one, other)) << threads << " threads";
    }
  }
}

// Each head's pseudo-inverse is reported, fused or split: the worst residual over the heads.
TEST(SoftNystrom, SplitDiagnosticsReportTheWorstHead) {
  const Index n = kChunk + 500, m = 8;
  const auto q = clustered<double>(random_tensor<double>(2, 2, m, 16, 109, -2.0, 2.0), n, segment_of(n, m), 110);
  const auto k = keys_near(q, 111), v = random_tensor<double>(2, 2, n, 16, 112);
  for (bool tied : {false, true}) {
    const auto& keys = tied ? q : k;
    const auto ql = softfree_ref::landmarks_segments(to_ref(q), m), kl = softfree_ref::landmarks_segments(to_ref(keys), m);
    for (int steps : {6, 20}) {
      const double worst = worst_residual(ql, kl, steps);
      for (int threads : {1, 3}) {  // 4 heads: fused, split
        SCOPED_TRACE(::testing::Message() << (tied ? "tied" : "untied") << ", " << steps << " steps, " << threads
                                          << " threads");
        EXPECT_EQ(runs_fused(4, n, threads), threads == 1);
        SoftNystrom<double> f;
        f.landmarks = Landmarks::segments(m);
        f.newton.steps = steps;
        f.parallel = softfree::Parallel::with_threads(threads);
        Tensor4<double> out(2, 2, n, 16);
        const NewtonDiagnostics diag = f.run(q, keys, v, softfree::View4<double>(out.data(), out.dimensions()));
        EXPECT_EQ(diag.heads, 4);
        EXPECT_EQ(diag.steps, steps);
        EXPECT_NEAR(diag.residual, worst, 1e-9 * (1 + worst));
        EXPECT_EQ(diag.converged, worst < NewtonOptions::kConvergedResidual);
      }
    }
  }
}

// ------------------------------------------------------------------ bad input

TEST(Soft, RejectsBadInput) {
  const auto q = random_tensor<float>(1, 2, 12, 8, 80);
  SoftGaussian<float> g;
  g.causal = true;
  EXPECT_TRUE(throws_naming([&] { g(q, q, q); }, {"SoftGaussian", "causal"}));

  const auto bad = [&](SoftNystrom<float> f, std::initializer_list<const char*> needles) {
    return throws_naming([&] { f(q, q, q); }, needles);
  };
  SoftNystrom<float> f;
  f.landmarks = Landmarks::segments(12);
  EXPECT_NO_THROW(f(q, q, q));
  f.causal = true;
  EXPECT_TRUE(bad(f, {"SoftNystrom", "causal"}));
  f = {};
  f.landmarks = Landmarks::segments(0);
  EXPECT_TRUE(bad(f, {"segments(m = 0)", "[1, 2, 12, 8]"}));
  f.landmarks = Landmarks::segments(13);
  EXPECT_TRUE(bad(f, {"segments(m = 13)", "[1, 2, 12, 8]"}));
  f.landmarks = Landmarks::grid(3, 5, 1);
  EXPECT_TRUE(bad(f, {"grid(rows = 3, cols = 5", "rows * cols = 15", "[1, 2, 12, 8]"}));
  f.landmarks = Landmarks::grid(3, 4, 0);
  EXPECT_TRUE(bad(f, {"r = 0"}));
  f.landmarks = Landmarks::grid(3, 4, 4);
  EXPECT_TRUE(bad(f, {"r = 4", "min(rows, cols)"}));
  // Found by the fuzz harness's option table: rows * cols overflowed Index (undefined behaviour;
  // the asan preset's UBSan stops on it) before the grid was rejected.
  f.landmarks = Landmarks::grid(std::numeric_limits<Index>::max(), 2, 1);
  EXPECT_TRUE(bad(f, {"grid(rows = 9223372036854775807, cols = 2", "[1, 2, 12, 8]"}));
  f.landmarks = Landmarks::given(random_tensor<float>(1, 2, 4, 7, 81), random_tensor<float>(1, 2, 4, 7, 82));
  EXPECT_TRUE(bad(f, {"q_landmarks has shape [1, 2, 4, 7]"}));
  f.landmarks = Landmarks::given(random_tensor<float>(1, 2, 4, 8, 81), random_tensor<float>(1, 2, 5, 8, 82));
  EXPECT_TRUE(bad(f, {"k_landmarks has shape [1, 2, 5, 8]"}));
  f = {};
  f.landmarks = Landmarks::segments(4);
  f.newton.lambda = std::numeric_limits<double>::infinity();
  EXPECT_TRUE(bad(f, {"newton.lambda = inf"}));
  f.newton.lambda = 1e39;  // finite, but A + lambda I is formed in float: it would be NaN
  EXPECT_TRUE(bad(f, {"newton.lambda = 1e+39", "float"}));
  f.newton = {};
  f.newton.steps = -3;
  EXPECT_TRUE(bad(f, {"newton.steps = -3"}));

  // Grid with cross-attention: the grid must fit k too.
  f = {};
  f.landmarks = Landmarks::grid(3, 4, 2);
  const auto k = random_tensor<float>(1, 2, 20, 8, 83);
  EXPECT_TRUE(throws_naming([&] { f(q, k, k); }, {"rows * cols = 12", "[1, 2, 20, 8]"}));
}

TEST(Soft, CheckedBeforeWriting) {
  const auto q = random_tensor<float>(1, 1, 8, 4, 84);
  Tensor4<float> out(1, 1, 8, 4);
  out.setConstant(7.0f);
  SoftNystrom<float> f;  // default segments(49) > N = 8
  EXPECT_TRUE(throws_naming([&] { f(q, q, q, softfree::View4<float>(out.data(), out.dimensions())); },
                            {"segments(m = 49)"}));
  for (Index i = 0; i < out.size(); ++i) ASSERT_EQ(out.data()[i], 7.0f);
}

// A singular A with lambda = 0: ||I - A V|| >= sqrt(m - rank) for every V, so the identity
// residual cannot show convergence; the Penrose conditions can. pinv(ones(5)) = ones(5) / 25.
TEST(NewtonPinv, SingularMatrixConvergesToItsPseudoInverse) {
  const Eigen::MatrixXd ones = Eigen::MatrixXd::Ones(5, 5);
  NewtonOptions o;
  o.lambda = 0;
  const auto r = softfree::newton_pinv(ones, o);
  EXPECT_NEAR((r.inverse - ones / 25).cwiseAbs().maxCoeff(), 0, 1e-12);
  EXPECT_NEAR(r.residual, 2.0, 1e-10);  // sqrt(5 - 1)
  EXPECT_LT(r.pinv_residual, 1e-12);
  EXPECT_FALSE(r.restarted);
  EXPECT_TRUE(r.converged);
}

// Cross-attention keys drawn apart from the queries make A = k(Qt, Kt) far from symmetric: the
// official start diverges (to 1e200 in double, NaN in float). The call restarts it from
// V0 = P^T / (||P||_1 ||P||_inf), says so, and its output is finite; where the restarted iteration
// converged, the output is the exact-inverse result (LU in double) to float's accuracy.
template <class T>
void check_untied_divergence(Index nq, Index nk, Index m, Index d, unsigned seed) {
  const auto q = random_tensor<T>(1, 2, nq, d, seed), k = random_tensor<T>(1, 2, nk, d, seed + 1),
             v = random_tensor<T>(1, 2, nk, d, seed + 2);
  SoftNystrom<T> f;
  f.landmarks = Landmarks::segments(m);
  Tensor4<T> out(1, 2, nq, d);
  const NewtonDiagnostics diag = f.run(q, k, v, softfree::View4<T>(out.data(), out.dimensions()));
  EXPECT_GE(diag.restarted, 1) << "the official start was expected to diverge here";
  for (Index i = 0; i < out.size(); ++i)
    ASSERT_TRUE(std::isfinite(static_cast<double>(out.data()[i]))) << "element " << i;
  EXPECT_TRUE(std::isfinite(diag.residual) && std::isfinite(diag.pinv_residual))
      << "residual " << diag.residual << ", pinv_residual " << diag.pinv_residual << ", restarted " << diag.restarted
      << " of " << diag.heads << ", N " << nq << " x " << nk;
  if (diag.converged) {
    const auto exact = softfree_ref::soft_nystrom_exact(to_ref(q), to_ref(k), to_ref(v),
                                                        softfree_ref::landmarks_segments(to_ref(q), m),
                                                        softfree_ref::landmarks_segments(to_ref(k), m), 0.01, false);
    EXPECT_TRUE(close_to_ref(out, exact, 1e-3)) << "converged after the restart";  // ~ residual x cond
  }
}

TEST(SoftNystrom, DivergingStartIsRestartedNeverNonFinite) {
  check_untied_divergence<float>(40, 100, 20, 16, 301);
  check_untied_divergence<double>(40, 100, 20, 16, 301);
  check_untied_divergence<float>(197, 197, 49, 64, 311);
  check_untied_divergence<double>(197, 197, 49, 64, 311);
}

}  // namespace
