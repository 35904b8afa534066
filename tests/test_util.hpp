#pragma once
// Shared test helpers: random inputs in each storage type, conversion to the double references
// (tests/reference/), and the per-precision comparison every test uses.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <softfree/softfree.hpp>

#include "reference/ref_tensor.hpp"

namespace softfree_test {

using softfree::Index;
using softfree::Tensor4;

/// Every storage type the library supports, for typed tests.
using StorageTypes = ::testing::Types<double, float, Eigen::half, Eigen::bfloat16>;

/// Typed-test names: "double", "float", "half", "bfloat16".
struct TypeName {
  template <class T>
  static std::string GetName(int) {
    return softfree::precision<T>::name;
  }
};

/// Tolerance relative to max |reference| (SPEC.md, "Precision"). The references see exactly the
/// stored (already rounded) inputs, so only the kernel's own rounding counts:
/// - double: ~1e-16 per operation, growing at worst linearly over sums of <= ~1e4 terms -> 1e-12;
/// - float: unit roundoff 6e-8, sums of ~1e3 terms accumulated blockwise (error ~ sqrt(n) u to
///   n u) and exp's few-ulp error -> 1e-5;
/// - half: the output is rounded once to half (unit roundoff 4.9e-4) after float accumulation
///   -> 1e-2 leaves room for values near max |ref| and intermediate results stored in half;
/// - bfloat16: unit roundoff 3.9e-3, the same argument -> 4e-2.
template <class T>
double tolerance();
template <>
inline double tolerance<double>() { return 1e-12; }
template <>
inline double tolerance<float>() { return 1e-5; }
template <>
inline double tolerance<Eigen::half>() { return 1e-2; }
template <>
inline double tolerance<Eigen::bfloat16>() { return 4e-2; }

/// Uniform random tensor in [lo, hi), rounded to T (deterministic for a seed).
template <class T>
Tensor4<T> random_tensor(Index B, Index H, Index N, Index D, unsigned seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  Tensor4<T> t(B, H, N, D);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<T>(dist(gen));
  return t;
}

/// q plus noise uniform in [-0.1, 0.1), element by element: SoftNystrom's untied keys (its Newton
/// start converges for keys near the queries; test_soft.cpp).
template <class T>
Tensor4<T> keys_near(const Tensor4<T>& q, unsigned seed) {
  const auto& s = q.dimensions();
  const auto noise = random_tensor<double>(s[0], s[1], s[2], s[3], seed, -0.1, 0.1);
  Tensor4<T> k(q.dimensions());
  for (Index i = 0; i < k.size(); ++i) k.data()[i] = static_cast<T>(static_cast<double>(q.data()[i]) + noise.data()[i]);
  return k;
}

/// The exact stored values of t, in double, for the references.
template <class T>
softfree_ref::Tensor to_ref(const Tensor4<T>& t) {
  const auto& d = t.dimensions();
  softfree_ref::Tensor r(d[0], d[1], d[2], d[3]);
  for (Index i = 0; i < t.size(); ++i) r.data[static_cast<size_t>(i)] = static_cast<double>(t.data()[i]);
  return r;
}

/// A reference tensor rounded to storage type T.
template <class T>
Tensor4<T> from_ref(const softfree_ref::Tensor& r) {
  Tensor4<T> t(r.B, r.H, r.N, r.D);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<T>(r.data[static_cast<size_t>(i)]);
  return t;
}

/// Per tensor only: max |got - ref| <= tol * max |ref|, every output finite, and shapes equal;
/// on failure the message names the worst element. close_to_ref adds the per-row check.
template <class T>
::testing::AssertionResult close_to_ref_tensor(const Tensor4<T>& got, const softfree_ref::Tensor& ref,
                                               double tol = tolerance<T>()) {
  const auto& d = got.dimensions();
  if (d[0] != ref.B || d[1] != ref.H || d[2] != ref.N || d[3] != ref.D)
    return ::testing::AssertionFailure() << "shape [" << d[0] << ", " << d[1] << ", " << d[2] << ", " << d[3]
                                         << "] differs from the reference's [" << ref.B << ", " << ref.H << ", "
                                         << ref.N << ", " << ref.D << "]";
  double scale = 0, worst = 0;
  Index worst_at = 0;
  for (Index i = 0; i < got.size(); ++i) {
    const double g = static_cast<double>(got.data()[i]);
    if (!std::isfinite(g)) return ::testing::AssertionFailure() << "output element " << i << " is " << g;
    scale = std::max(scale, std::abs(ref.data[static_cast<size_t>(i)]));
    const double e = std::abs(g - ref.data[static_cast<size_t>(i)]);
    if (e > worst) worst = e, worst_at = i;
  }
  const double bound = tol * std::max(scale, 1e-300);
  if (worst <= bound) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max |got - ref| = " << worst << " at element " << worst_at << " (got "
                                       << static_cast<double>(got.data()[worst_at]) << ", ref "
                                       << ref.data[static_cast<size_t>(worst_at)] << "), above " << tol
                                       << " x max|ref| = " << bound;
}

/// Per row: for every (b, h, row), max_c |got - ref| <= tol * max(max_c |ref|, floor), every
/// output finite, and shapes equal; on failure the message names b, h, row and the worst element.
/// Stricter than close_to_ref wherever rows differ in scale (a row of small outputs is held to
/// its own size, not to the tensor's largest). floor keeps a reference row of zeros (a query that
/// sees no key) from dividing by zero: such a row must then be zero in effect (|got| <= tol *
/// floor). The default 1e-30 lies far below every nonzero row the tests build (>= 1e-3) and far
/// above what a float kernel may leave in a row whose weights all underflow (weights below float's
/// smallest normal, 1.2e-38, are flushed: at most N 1.2e-38 max|v|). worst, when given, receives
/// the largest max_c |got - ref| / max(max_c |ref|, floor) over the rows (for reports).
template <class T>
::testing::AssertionResult close_to_ref_rows(const Tensor4<T>& got, const softfree_ref::Tensor& ref, double tol,
                                             double floor = 1e-30, double* worst = nullptr) {
  const auto& d = got.dimensions();
  if (d[0] != ref.B || d[1] != ref.H || d[2] != ref.N || d[3] != ref.D)
    return ::testing::AssertionFailure() << "shape [" << d[0] << ", " << d[1] << ", " << d[2] << ", " << d[3]
                                         << "] differs from the reference's [" << ref.B << ", " << ref.H << ", "
                                         << ref.N << ", " << ref.D << "]";
  double worst_ratio = 0;
  ::testing::AssertionResult result = ::testing::AssertionSuccess();
  bool failed = false;
  for (Index b = 0; b < ref.B; ++b)
    for (Index h = 0; h < ref.H; ++h)
      for (Index n = 0; n < ref.N; ++n) {
        double scale = 0, err = 0;
        Index worst_c = 0;
        for (Index c = 0; c < ref.D; ++c) {
          const double g = static_cast<double>(got(b, h, n, c)), r = ref(b, h, n, c);
          if (!std::isfinite(g))
            return ::testing::AssertionFailure() << "output [" << b << ", " << h << ", " << n << ", " << c << "] is "
                                                 << g << " (reference " << r << ")";
          scale = std::max(scale, std::abs(r));
          if (std::abs(g - r) > err) err = std::abs(g - r), worst_c = c;
        }
        const double denom = std::max(scale, floor);
        worst_ratio = std::max(worst_ratio, err / denom);
        if (!failed && err > tol * denom) {
          failed = true;  // report the first failing row, keep measuring the worst ratio
          result = ::testing::AssertionFailure()
                   << "row [b " << b << ", h " << h << ", row " << n << "]: max |got - ref| = " << err << " at column "
                   << worst_c << " (got " << static_cast<double>(got(b, h, n, worst_c)) << ", ref "
                   << ref(b, h, n, worst_c) << "), above " << tol << " x max(row max|ref| = " << scale << ", floor "
                   << floor << ") = " << tol * denom;
        }
      }
  if (worst) *worst = worst_ratio;
  if (failed) result << " (worst row ratio " << worst_ratio << ")";
  return result;
}

/// The row floor of close_to_ref, as a fraction of the tensor's max |ref|: a row is held to tol
/// times its own max |ref|, or times 1e-3 of the tensor's where its own is smaller. A floor,
/// because a row whose terms cancel (weights of both signs, as SimA's and SoftNystrom's, or values
/// of both signs averaged) keeps the absolute error of its terms, ~ u times their size, however
/// small its sum: with none, a near-zero row fails any relative bound. 1e-3, because the row check
/// is then at most 1000 times stricter than the per-tensor one, and a wrong head or row shows
/// unless it is 1000 times smaller than the tensor's largest; and it lies far above where half
/// and bfloat16 outputs lose relative precision (below their smallest normals, 6.1e-5 and
/// 1.2e-38) for the tensors the tests build (max |ref| of 1e-2 and more). The same value as
/// test_packet_depths.cpp's, which measured rows there. Measured over the suite
/// (SOFTFREE_TEST_ROW_REPORT=1): every comparison's worst row within 0.78 tol. A row that cancels
/// to exactly 0 keeps a few u of its terms, which in float (u / tol = 6e-3) can exceed tol times
/// this floor: the one such case (test_sima.cpp, N = 1) passes its own floor, saying why.
constexpr double kRowFloorOfTensor = 1e-3;

/// With SOFTFREE_TEST_ROW_REPORT set, close_to_ref prints each call's worst row error ratio to
/// stderr, as a fraction of tol, with the floor used and without one (1e-30): how close the
/// row bounds are, and which rows the floor excuses.
template <class T>
void report_rows(const Tensor4<T>& got, const softfree_ref::Tensor& ref, double tol, double floor) {
  double with_floor = 0, without = 0;
  (void)close_to_ref_rows(got, ref, tol, floor, &with_floor);
  (void)close_to_ref_rows(got, ref, tol, 1e-30, &without);
  const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
  std::fprintf(stderr, "row-report %s.%s %s tol %g: worst row / tol %g (floored), %g (unfloored)\n",
               test ? test->test_suite_name() : "?", test ? test->name() : "?", softfree::precision<T>::name, tol,
               with_floor / tol, without / tol);
}

/// Per tensor and per row: max |got - ref| <= tol * max |ref| over the tensor, and for every row
/// (b, h, n) max_c |got - ref| <= tol * max(max_c |ref|, kRowFloorOfTensor * max |ref|)
/// (close_to_ref_rows), every output finite, and shapes equal; on failure the message names the
/// worst element or the first failing row. The row check keeps a wrong small-valued head or row
/// from hiding under the tensor-wide bound.
template <class T>
::testing::AssertionResult close_to_ref(const Tensor4<T>& got, const softfree_ref::Tensor& ref,
                                        double tol = tolerance<T>()) {
  auto tensor = close_to_ref_tensor(got, ref, tol);
  if (!tensor) return tensor;
  double scale = 0;
  for (const double r : ref.data) scale = std::max(scale, std::abs(r));
  auto rows = close_to_ref_rows(got, ref, tol, kRowFloorOfTensor * scale);
  if (std::getenv("SOFTFREE_TEST_ROW_REPORT")) report_rows(got, ref, tol, kRowFloorOfTensor * scale);
  if (!rows) return rows << " [per-row check of close_to_ref]";
  return rows;
}

/// Uniform random AFT weights [slots, rows, cols] in [lo, hi), in the accumulate type (biases,
/// conv kernels; deterministic for a seed).
template <class T>
softfree::AftWeights<T> random_weights(Index slots, Index rows, Index cols, unsigned seed, double lo = -1.0,
                                       double hi = 1.0) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  softfree::AftWeights<T> w(slots, rows, cols);
  for (Index i = 0; i < w.size(); ++i) w.data()[i] = static_cast<softfree::accum_t<T>>(dist(gen));
  return w;
}

/// AFT weights as the references take them: one Matrix per slot, exact values.
template <class T>
std::vector<softfree_ref::Matrix> ref_weights(const softfree::AftWeights<T>& w) {
  std::vector<softfree_ref::Matrix> out;
  for (Index s = 0; s < w.dimension(0); ++s) {
    softfree_ref::Matrix m(w.dimension(1), w.dimension(2));
    for (Index r = 0; r < m.rows; ++r)
      for (Index c = 0; c < m.cols; ++c) m(r, c) = static_cast<double>(w(s, r, c));
    out.push_back(m);
  }
  return out;
}

/// max |scale q_i . k_j| over every head, in double: how large a test's logits are.
template <class T>
double max_abs_score(const Tensor4<T>& q, const Tensor4<T>& k, double scale) {
  double m = 0;
  for (Index b = 0; b < q.dimension(0); ++b)
    for (Index h = 0; h < q.dimension(1); ++h)
      for (Index i = 0; i < q.dimension(2); ++i)
        for (Index j = 0; j < k.dimension(2); ++j) {
          double s = 0;
          for (Index d = 0; d < q.dimension(3); ++d)
            s += static_cast<double>(q(b, h, i, d)) * static_cast<double>(k(b, h, j, d));
          m = std::max(m, std::abs(s * scale));
        }
  return m;
}

/// Bitwise equality of two tensors (determinism tests).
template <class T>
bool bitwise_equal(const Tensor4<T>& a, const Tensor4<T>& b) {
  return a.dimensions() == b.dimensions() &&
         std::memcmp(a.data(), b.data(), static_cast<size_t>(a.size()) * sizeof(T)) == 0;
}

/// Rows 0 .. last of every slice of a and b are bitwise equal.
template <class T>
bool rows_bitwise_equal(const Tensor4<T>& a, const Tensor4<T>& b, Index last) {
  for (Index bb = 0; bb < a.dimension(0); ++bb)
    for (Index h = 0; h < a.dimension(1); ++h)
      for (Index i = 0; i <= last; ++i)
        for (Index d = 0; d < a.dimension(3); ++d)
          if (std::memcmp(&a(bb, h, i, d), &b(bb, h, i, d), sizeof(T)) != 0) return false;
  return true;
}

/// Runs f and checks it throws softfree::invalid_argument whose message contains every needle.
template <class F>
::testing::AssertionResult throws_naming(F&& f, std::initializer_list<const char*> needles) {
  try {
    f();
  } catch (const softfree::invalid_argument& e) {
    const std::string what = e.what();
    for (const char* n : needles)
      if (what.find(n) == std::string::npos)
        return ::testing::AssertionFailure() << "message \"" << what << "\" does not mention \"" << n << "\"";
    return ::testing::AssertionSuccess();
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw another exception: " << e.what();
  }
  return ::testing::AssertionFailure() << "did not throw";
}

/// Runs f on another thread and fails the whole test binary if it has not finished within limit
/// (a deadlocked call can be neither joined nor cancelled): a deadlock fails instead of hanging.
template <class F>
void finishes_in_time(const char* what, F&& f, std::chrono::seconds limit = std::chrono::seconds(60)) {
  std::promise<void> done;
  std::future<void> ready = done.get_future();
  std::thread runner([&] {
    f();
    done.set_value();
  });
  if (ready.wait_for(limit) != std::future_status::ready) {
    std::fprintf(stderr, "%s: still running after %lld s (deadlock)\n", what, static_cast<long long>(limit.count()));
    std::_Exit(1);
  }
  runner.join();
}

/// Integer-valued tensor: unit * (an integer in [lo, hi]), uniform (scores exact in every
/// accumulate type for small integers).
template <class T>
Tensor4<T> integer_tensor(Index B, Index H, Index N, Index D, unsigned seed, int lo, int hi, double unit) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> dist(lo, hi);
  Tensor4<T> t(B, H, N, D);
  for (Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<T>(unit * dist(gen));
  return t;
}

/// x ([B, H_kv, N, D]) with each kv head repeated for its H / H_kv query heads: what a model
/// without grouped-query support would pass, and what the references take. Plain loops,
/// independent of the library.
template <class X>
X repeat_heads(const X& x, Index H) {
  const auto& d = x.dimensions();
  const Index per = H / d[1];
  X r(d[0], H, d[2], d[3]);
  for (Index b = 0; b < d[0]; ++b)
    for (Index h = 0; h < H; ++h)
      for (Index n = 0; n < d[2]; ++n)
        for (Index c = 0; c < d[3]; ++c) r(b, h, n, c) = x(b, h / per, n, c);
  return r;
}

/// Tokens in clusters along the sequence: token t of n is the centre cluster(t) of `centres`
/// ([B, H, m, D], in double) plus noise uniform in [-0.2, 0.2). SoftNystrom's landmarks are then
/// about the centres however long the sequence (random tokens would pool to landmarks all near
/// their mean, A near rank one), so A stays well conditioned at any N.
template <class T, class Cluster>
Tensor4<T> clustered(const Tensor4<double>& centres, Index n, Cluster cluster, unsigned seed) {
  const Index B = centres.dimension(0), H = centres.dimension(1), d = centres.dimension(3);
  const auto noise = random_tensor<double>(B, H, n, d, seed, -0.2, 0.2);
  Tensor4<T> x(B, H, n, d);
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h)
      for (Index t = 0; t < n; ++t)
        for (Index c = 0; c < d; ++c) x(b, h, t, c) = static_cast<T>(centres(b, h, cluster(t), c) + noise(b, h, t, c));
  return x;
}
/// Token t of n in segment t m / n, as segments(m) pools them (up to the shared boundary tokens).
inline auto segment_of(Index n, Index m) {
  return [n, m](Index t) { return t * m / n; };
}
}  // namespace softfree_test
