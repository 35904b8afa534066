// Every registered method at whole-packet head dims D in {8, 16, 64, 128} against the double
// references of tests/reference/, for every storage type, per tensor and per row. These D are
// multiples of every packet width (4 floats on SSE, 8 on AVX, 16 on AVX-512; half as many
// doubles), so the kernels take their whole-packet paths (AftFull's split [e^K V | e^K] panels,
// in-place rows without padding, no masked tail). The other reference tests mostly use D that
// are not (3 to 59); AftFull's use 5, 7 and 12 only (D = 8, 40, 64 just on the bf16 pair
// kernels), so its float path's whole-packet panels had no test, though D = 64 is the
// benchmarked shape.
//
// Tolerances. Per tensor: tolerance<T>() (test_util.hpp), relative to max |ref|. Per row, relative
// to that row's max |ref| (close_to_ref_rows): the same bounds hold for double and float, because
// the kernels' errors are relative to the terms they sum (weights summing to 1 times |v| <= 1, or
// the like) and the rows are not small: >= 7% of their tensor's max |ref| (v in [-1, 1) averages
// to ~N^-1/2), SoftNystrom's down to ~0.7% (N = 33, D = 8), so a row's error ratio stays within
// ~100 times the unit roundoff's share; measured, at most 0.3 tolerance<T>(). Stricter where the
// reason is known:
// - half: the kernels compute in float and round the output once, by at most u = 2^-11 (4.9e-4)
//   of each element, hence of its row's max, plus float-level error (<= 3e-6 of a row, measured):
//   2u = 9.8e-4 -> 1e-3 (measured <= 4.8e-4, the rounding itself);
// - bfloat16 on the float path: the same argument, u = 2^-8 (3.9e-3) -> 8e-3 (measured <= 3.9e-3);
//   on the AVX512-BF16 pair products (Math::automatic picks them for bfloat16 storage where the
//   build and CPU have them: softmax, SOFT, SimA, AftFull), whose per-row bounds in test_bf16.cpp
//   reach 6u (SoftNystrom), tolerance<bfloat16>() = 4e-2 (10u).
// The floor: a row of (near) zeros is held to 1e-3 of its tensor's max |ref| instead. No row here
// comes near it (the smallest is ~0.7%); 1e-3 x max |ref| (>= 1e-4) lies far above half's
// subnormals (spacing 6e-8), where relative precision ends; and it is still 1000 times stricter
// than the per-tensor check.
#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "reference/aft_ref.hpp"
#include "reference/sima_ref.hpp"
#include "reference/soft_ref.hpp"
#include "reference/softmax_ref.hpp"
#include "test_util.hpp"

namespace {

using namespace softfree_test;

/// One call's inputs, stored in T and as the references see them (the stored values, exactly).
template <class T>
struct Call {
  Tensor4<T> q, k, v;
  softfree_ref::Tensor rq, rk, rv;
  Call(Index B, Index H, Index N, Index D, unsigned seed)
      : q(random_tensor<T>(B, H, N, D, seed)), k(random_tensor<T>(B, H, N, D, seed + 1)),
        v(random_tensor<T>(B, H, N, D, seed + 2)), rq(to_ref(q)), rk(to_ref(k)), rv(to_ref(v)) {}
};

/// A method's output, the reference's on the same call, and whether it ran on bf16 pairs.
template <class T>
struct Outcome {
  Tensor4<T> got;
  softfree_ref::Tensor ref;
  bool pairs;
};

template <class T, class F>
Outcome<T> run_on(const F& f, const Tensor4<T>& q, const Tensor4<T>& k, const Tensor4<T>& v,
                  softfree_ref::Tensor ref) {
  return {f(q, k, v), std::move(ref), f.backend().native_bf16};
}

/// The per-row tolerance (see the top).
template <class T>
double row_tolerance(bool) {
  return tolerance<T>();
}
template <>
double row_tolerance<Eigen::half>(bool) {
  return 1e-3;
}
template <>
double row_tolerance<Eigen::bfloat16>(bool pairs) {
  return pairs ? tolerance<Eigen::bfloat16>() : 8e-3;
}
constexpr double kRowFloor = 1e-3;  // times the tensor's max |ref| (see the top)

template <class T>
using Runner = Outcome<T> (*)(const Call<T>&, bool causal);

template <class T>
Outcome<T> softmax(const Call<T>& c, bool causal) {
  softfree::SoftmaxAttention<T> f;
  f.causal = causal;
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.rq.D));
  return run_on(f, c.q, c.k, c.v, softfree_ref::softmax_attention(c.rq, c.rk, c.rv, scale, causal, {}));
}

// Auto order: (Qn Kn^T) V for N < D, else Qn (Kn^T V); N = 33 with D = 8, 16 takes the latter.
template <class T>
Outcome<T> sima(const Call<T>& c, bool) {
  return run_on(softfree::SimA<T>{}, c.q, c.k, c.v, softfree_ref::sima(c.rq, c.rk, c.rv));
}

template <class T>
Outcome<T> soft_gaussian(const Call<T>& c, bool) {
  return run_on(softfree::SoftGaussian<T>{}, c.q, c.k, c.v, softfree_ref::soft_gaussian(c.rq, c.rk, c.rv));
}

// m = 5 segments (<= N for N = 7), untied keys near the queries, where Newton's start converges
// (test_soft.cpp). Queries in [-a, a) with a = 2 (16 / D)^(1/4): the kernel's exponent
// ||x - y||^2 / (2 sqrt D) grows as sqrt(D) a^2, so every D keeps test_soft.cpp's conditioning
// of A (inputs in [-2, 2) at D = 16: cond ~ 10), whose amplification of float rounding is a
// property of the data (in [-1, 1) at D = 8 the landmarks nearly coincide: 9e-6 per row).
template <class T>
Outcome<T> soft_nystrom(const Call<T>& c, bool) {
  constexpr Index m = 5;
  const double a = 2 * std::pow(16.0 / static_cast<double>(c.rq.D), 0.25);
  const Tensor4<T> q = random_tensor<T>(c.rq.B, c.rq.H, c.rq.N, c.rq.D, 6, -a, a), k = keys_near(q, 7);
  const softfree_ref::Tensor rq = to_ref(q), rk = to_ref(k);
  softfree::SoftNystrom<T> f;
  f.landmarks = softfree::Landmarks::segments(m);
  return run_on(f, q, k, c.v,
                softfree_ref::soft_nystrom(rq, rk, c.rv, softfree_ref::landmarks_segments(rq, m),
                                           softfree_ref::landmarks_segments(rk, m), f.newton.steps, f.newton.lambda,
                                           softfree_ref::PinvInit::Current, f.soft_norm));
}

// A bias per head (AftFull) and a shared one (AftLocal, window 3): set, so AftFull runs its own
// kernel rather than AftSimple's (its path without a bias).
template <class T>
Outcome<T> aft_full(const Call<T>& c, bool causal) {
  const auto w = random_weights<T>(c.rq.H, c.rq.N, c.rq.N, 8, -2, 2);
  softfree::AftFull<T> f(w);
  f.causal = causal;
  return run_on(f, c.q, c.k, c.v, softfree_ref::aft_full(c.rq, c.rk, c.rv, ref_weights<T>(w), causal));
}

template <class T>
Outcome<T> aft_local(const Call<T>& c, bool causal) {
  const auto w = random_weights<T>(1, c.rq.N, c.rq.N, 9, -2, 2);
  softfree::AftLocal<T> f(3, w);
  f.causal = causal;
  return run_on(f, c.q, c.k, c.v, softfree_ref::aft_local(c.rq, c.rk, c.rv, ref_weights<T>(w), 3, causal));
}

template <class T>
Outcome<T> aft_simple(const Call<T>& c, bool causal) {
  softfree::AftSimple<T> f;
  f.causal = causal;
  return run_on(f, c.q, c.k, c.v, softfree_ref::aft_simple(c.rq, c.rk, c.rv, causal));
}

// The grid: rows the largest divisor of N up to sqrt(N) (7: 1 x 7, 33: 3 x 11); a kernel per
// head of (2 rows - 1, capped at 3) x 3, the largest odd size the grid accepts up to 3 x 3.
template <class T>
Outcome<T> aft_conv(const Call<T>& c, bool) {
  const Index n = c.rq.N;
  Index rows = 1;
  for (Index r = 1; r * r <= n; ++r)
    if (n % r == 0) rows = r;
  const auto ker = random_weights<T>(c.rq.H, std::min<Index>(2 * rows - 1, 3), 3, 10, -2, 2);
  softfree::AftConv<T> f(ker, rows, n / rows);
  return run_on(f, c.q, c.k, c.v, softfree_ref::aft_conv(c.rq, c.rk, c.rv, ref_weights<T>(ker), rows, n / rows));
}

/// Each registered name's runner; the test checks the names are exactly softfree's.
template <class T>
const std::map<std::string, Runner<T>>& runners() {
  static const std::map<std::string, Runner<T>> r = {
      {"softmax", &softmax<T>},
      {"sima", &sima<T>},
      {"soft-gaussian", &soft_gaussian<T>},
      {"soft-nystrom", &soft_nystrom<T>},
      {"aft-full", &aft_full<T>},
      {"aft-local", &aft_local<T>},
      {"aft-simple", &aft_simple<T>},
      {"aft-conv", &aft_conv<T>},
  };
  return r;
}

template <class T>
class PacketDepths : public ::testing::Test {};
TYPED_TEST_SUITE(PacketDepths, StorageTypes, TypeName);

// Every name softfree registers, N = 7 and 33 (multiples of no row group or tile, so every kernel
// has a ragged last one), D in {8, 16, 64, 128}, causal too where the method has it; B = H = 2.
TYPED_TEST(PacketDepths, EveryMethodMatchesReference) {
  using T = TypeParam;
  const std::vector<std::string> names = softfree::attention_names();
  ASSERT_EQ(names.size(), runners<T>().size());
  unsigned seed = 100;
  for (const std::string& name : names) {
    ASSERT_EQ(runners<T>().count(name), 1u) << name << " has no runner here";
    const bool causal_too = softfree::make_attention<T>(name).capabilities().causal;
    double worst = 0;  // the largest row error over its row tolerance, recorded with the test
    for (Index n : {7, 33})
      for (Index d : {8, 16, 64, 128})
        for (bool causal : {false, true}) {
          if (causal && !causal_too) continue;
          const Outcome<T> o = runners<T>().at(name)(Call<T>(2, 2, n, d, seed += 3), causal);
          const std::string at = name + " N=" + std::to_string(n) + " D=" + std::to_string(d) +
                                 (causal ? " causal" : "") + (o.pairs ? " (bf16 pairs)" : "");
          EXPECT_TRUE(close_to_ref(o.got, o.ref)) << at;
          const double tol = row_tolerance<T>(o.pairs);
          double w = 0;
          EXPECT_TRUE(close_to_ref_rows(o.got, o.ref, tol, kRowFloor * softfree_ref::max_abs(o.ref), &w)) << at;
          worst = std::max(worst, w / tol);
        }
    this->RecordProperty("worst_row_over_tolerance_" + name, std::to_string(worst));
  }
}

}  // namespace
