// The bf16 product path (core/precision.hpp's Math::bf16, and Math::automatic on bfloat16
// storage) of SoftmaxAttention and SoftGaussian, run on the AVX512-BF16 pair backend
// (core/kernels/pairs.hpp, backend_avx512_bf16.hpp), against the double references of
// tests/reference/ and against the float backend; the policy and its query (backend()); the
// pair-packing helpers against plain loops; and, at the end, AftFull's and SimA's pair kernels.
//
// The selection rule (core/kernels/select.hpp) does not pick the pairs on every CPU that has
// them (not on Xeons with AMX, where vdpbf16ps is slower than float FMA), so the backend tests
// force them with detail::ScopedBf16Products(true), and skip, saying why, where the build or the
// CPU has no AVX512-BF16 (the default preset: no -march). The policy tests run on every build.
//
// Tolerances. u = 2^-8 is bf16's unit roundoff: 8 significant bits, so round to nearest even errs
// by at most half the spacing 2^-7 of [1, 2), i.e. by up to 2^-8 of the value just above 1
// (3.9e-3; 2^-9 holds only just below a power of two). On the pair path the operands are bf16
// values, whose products are exact in float and summed in float, so scores carry float-level
// error only; the weights P are rounded to bf16 once after the exponent (relative u each; a few,
// such as a tile's odd last key, are rounded in place instead of packed); the running max and
// sum stay float (the sum adds the unrounded weights), and bfloat16 storage rounds the output
// once more (u). With v in [0, 1) every weight and value is >= 0, so each output
// element is a positive combination: weights off by at most u of themselves move it by at most u
// of itself, and so does the output rounding. That gives per-element, hence per-row (relative to
// the row's max |ref|) and per-tensor bounds; "float level" is the float path's own tolerance
// (1e-5, test_util.hpp) with a factor 10 of room, for scores, exp and sums.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iomanip>
#include <limits>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "reference/aft_ref.hpp"
#include "reference/sima_ref.hpp"
#include "reference/soft_ref.hpp"
#include "reference/softmax_ref.hpp"
#include "test_util.hpp"

namespace {

using namespace softfree_test;
using softfree::Math;
using softfree::SoftGaussian;
using softfree::SoftmaxAttention;
using bf16 = Eigen::bfloat16;
using half = Eigen::half;
namespace sd = softfree::detail;

// ------------------------------------------------------------------ tolerances (see the top)

constexpr double kU = 1.0 / 256;       // bf16's unit roundoff, 2^-8
constexpr double kHalfU = 1.0 / 2048;  // half's, 2^-11
constexpr double kFloatLevel = 1e-4;   // 10 x tolerance<float>()
/// bfloat16 storage on the pairs against the reference on the stored inputs: P (u), then the
/// output rounded (u of a value already within u).
constexpr double kBf16Storage = 2 * kU + kU * kU + kFloatLevel;  // 7.9e-3
/// float storage with Math::bf16 against the reference on the inputs rounded to bf16: P only.
constexpr double kFloatStorage = kU + kFloatLevel;  // 4.0e-3
/// half storage with Math::bf16 against the reference on the inputs rounded to bf16: P, then the
/// output rounded to half.
constexpr double kHalfStorage = kU + kHalfU * (1 + kU) + kFloatLevel;  // 4.5e-3
/// bfloat16 storage, pairs against the float backend (both outputs rounded to bfloat16): the
/// float backend's output is within u (+ float level) of the exact value, the pairs' within 2u;
/// measured against the former (itself >= (1 - u) of the exact value): 3u + 4u^2 + 2 float level.
constexpr double kAgree = 3 * kU + 4 * kU * kU + 2 * kFloatLevel;  // 1.2e-2
/// The issue's bound, for results against the reference on the caller's (unrounded) inputs: their
/// rounding to bf16 moves the scores by up to ~2u of sum_d |q_d k_d| s, a property of the data.
const double kIssueBound = tolerance<bf16>();  // 4e-2

// ------------------------------------------------------------------ helpers

// Why the pair backend cannot run here ("" when it can).
std::string pair_backend_missing() {
  if (!sd::kHavePairOps)
    return "this build has no AVX512-BF16 backend (compile with -march=native on a CPU with avx512_bf16)";
  if (!sd::cpu_features().avx512_bf16) return "this CPU lacks avx512_bf16 (the build has the AVX512-BF16 backend)";
  return "";
}

// Tests of the pair backend: skipped, visibly, where it cannot run; the pairs are forced for the
// whole test (members are built before SetUp). A test that ran the float path instead would pass
// without testing anything, so SetUp checks the forcing took.
class PairBackend : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string why = pair_backend_missing();
    if (!why.empty()) GTEST_SKIP() << why;
    const softfree::BackendInfo info = SoftmaxAttention<bf16>{}.backend();
    ASSERT_TRUE(info.native_bf16) << info.reason;
    ASSERT_EQ(info.name, "avx512_bf16");
  }
  const sd::ScopedBf16Products force_{true};
};

// The methods with bf16 kernels, as typed-test parameters: M::type<T> is the method on storage T.
template <template <class> class M>
struct Method {
  template <class T>
  using type = M<T>;
  static constexpr bool kSoftmax = std::is_same<M<float>, SoftmaxAttention<float>>::value;
};
using SoftmaxM = Method<SoftmaxAttention>;
using GaussianM = Method<SoftGaussian>;
using Bf16Methods = ::testing::Types<SoftmaxM, GaussianM>;
struct MethodName {
  template <class M>
  static std::string GetName(int) {
    return M::template type<float>::kName;
  }
};

// Options of a call (SoftGaussian has none of them).
struct Opts {
  bool causal = false;
  std::vector<Index> key_lengths;
  std::optional<double> scale;
};
const Opts kPlain{false, {}, std::nullopt};

template <class T>
SoftmaxAttention<T> configure(SoftmaxAttention<T> f, const Opts& o, Math m) {
  f.causal = o.causal;
  f.key_lengths = o.key_lengths;
  f.scale = o.scale;
  f.math = m;
  return f;
}
template <class T>
SoftGaussian<T> configure(SoftGaussian<T> f, const Opts&, Math m) {
  f.math = m;
  return f;
}
template <class M, class T>
typename M::template type<T> make(const Opts& o, Math m) {
  return configure(typename M::template type<T>{}, o, m);
}

// The double reference of f on reference tensors (f's options; its storage type plays no part).
template <class T>
softfree_ref::Tensor reference(const SoftmaxAttention<T>& f, const softfree_ref::Tensor& q,
                               const softfree_ref::Tensor& k, const softfree_ref::Tensor& v) {
  const double scale = f.scale ? *f.scale : 1.0 / std::sqrt(static_cast<double>(q.D));
  softfree_ref::SoftmaxOptions opt;
  opt.causal = f.causal;
  opt.bottom_right = f.causal_align == softfree::CausalAlign::bottom_right;
  opt.key_lengths.assign(f.key_lengths.begin(), f.key_lengths.end());
  std::optional<softfree_ref::Tensor> bias;
  if (const auto b = f.bias()) {
    bias.emplace(b->dimension(0), b->dimension(1), b->dimension(2), b->dimension(3));
    for (Index i = 0; i < b->size(); ++i) bias->data[static_cast<size_t>(i)] = static_cast<double>(b->data()[i]);
    opt.bias = &*bias;
  }
  return softfree_ref::softmax_attention(q, k, v, scale, opt);
}
template <class T>
softfree_ref::Tensor reference(const SoftGaussian<T>&, const softfree_ref::Tensor& q, const softfree_ref::Tensor& k,
                               const softfree_ref::Tensor& v) {
  return softfree_ref::soft_gaussian(q, k, v);
}
template <class F, class T>
softfree_ref::Tensor reference(const F& f, const Tensor4<T>& q, const Tensor4<T>& k, const Tensor4<T>& v) {
  return reference(f, to_ref(q), to_ref(k), to_ref(v));
}

// t in storage type To, each element through float (for float -> bfloat16: nearest even, as the
// kernels round operands; half -> float and bfloat16 -> float are exact).
template <class To, class From>
Tensor4<To> cast_tensor(const Tensor4<From>& t) {
  Tensor4<To> r(t.dimensions());
  for (Index i = 0; i < t.size(); ++i) r.data()[i] = static_cast<To>(static_cast<float>(t.data()[i]));
  return r;
}

// b is a rounded to T element by element (nearest even, as static_cast), bitwise.
template <class T>
::testing::AssertionResult rounds_to(const Tensor4<float>& a, const Tensor4<T>& b) {
  if (a.dimensions() != b.dimensions()) return ::testing::AssertionFailure() << "shapes differ";
  for (Index i = 0; i < a.size(); ++i) {
    const T r = static_cast<T>(a.data()[i]);
    if (std::memcmp(&r, b.data() + i, sizeof(T)) != 0)
      return ::testing::AssertionFailure()
             << "element " << i << ": the " << softfree::precision<T>::name << " result "
             << static_cast<double>(b.data()[i]) << " is not the float result " << a.data()[i] << " rounded ("
             << static_cast<double>(r) << "); relative difference "
             << std::abs(static_cast<double>(b.data()[i]) - a.data()[i]) / std::abs(a.data()[i]);
  }
  return ::testing::AssertionSuccess();
}

// max |got - ref| / max |ref| (per tensor), for the measured numbers the tests record.
template <class T>
double rel_error(const Tensor4<T>& got, const softfree_ref::Tensor& ref) {
  double scale = 0, err = 0;
  for (Index i = 0; i < got.size(); ++i) {
    scale = std::max(scale, std::abs(ref.data[static_cast<size_t>(i)]));
    err = std::max(err, std::abs(static_cast<double>(got.data()[i]) - ref.data[static_cast<size_t>(i)]));
  }
  return err / std::max(scale, 1e-300);
}

// Records a measured worst error with the test (in --gtest_output=xml), next to its bound.
void record(const std::string& key, double value) {
  std::ostringstream s;
  s << std::setprecision(3) << std::scientific << value;
  ::testing::Test::RecordProperty(key, s.str());
}

std::string shape_text(Index B, Index H, Index nq, Index nk, Index D, const Opts& o) {
  std::ostringstream s;
  s << "[B=" << B << " H=" << H << " Nq=" << nq << " Nkv=" << nk << " D=" << D << " causal=" << o.causal
    << " padded=" << !o.key_lengths.empty() << "]";
  return s.str();
}

// ------------------------------------------------------------------ accuracy against the references

template <class M>
class Bf16Accuracy : public PairBackend {};
TYPED_TEST_SUITE(Bf16Accuracy, Bf16Methods, MethodName);

struct Case {
  Index B, H, nq, nk, D;
  Opts opts;
};

// N = 97: one ragged query block and key tile; 130 with odd D = 59: two of each and a padded last
// depth pair; 20 queries against 150 keys: cross-attention; softmax also causal with key padding
// (an empty batch item: its rows must be zero).
template <class M>
std::vector<Case> accuracy_cases() {
  std::vector<Case> cases{{2, 2, 97, 97, 64, kPlain}, {1, 2, 130, 130, 59, kPlain}, {1, 2, 20, 150, 40, kPlain}};
  if (M::kSoftmax) cases.push_back({3, 2, 130, 130, 59, Opts{true, {130, 57, 0}, std::nullopt}});
  return cases;
}

// (a) bfloat16 storage, Math::automatic: the inputs are bf16 values already, so the reference on
// the stored inputs sees exactly the products' operands.
TYPED_TEST(Bf16Accuracy, BfloatStorageAutomatic) {
  using M = TypeParam;
  double worst_row = 0, worst_tensor = 0;
  unsigned seed = 10;
  for (const Case& c : accuracy_cases<M>()) {
    const auto q = random_tensor<bf16>(c.B, c.H, c.nq, c.D, seed++), k = random_tensor<bf16>(c.B, c.H, c.nk, c.D, seed++),
               v = random_tensor<bf16>(c.B, c.H, c.nk, c.D, seed++, 0.0, 1.0);
    const auto f = make<M, bf16>(c.opts, Math::automatic);
    ASSERT_TRUE(f.backend().native_bf16) << f.backend().reason;
    const auto got = f(q, k, v);
    const auto ref = reference(f, q, k, v);
    double w = 0;
    EXPECT_TRUE(close_to_ref(got, ref, kBf16Storage)) << shape_text(c.B, c.H, c.nq, c.nk, c.D, c.opts);
    EXPECT_TRUE(close_to_ref_rows(got, ref, kBf16Storage, 1e-30, &w)) << shape_text(c.B, c.H, c.nq, c.nk, c.D, c.opts);
    worst_row = std::max(worst_row, w);
    worst_tensor = std::max(worst_tensor, rel_error(got, ref));
  }
  record("worst_row", worst_row);
  record("worst_tensor", worst_tensor);
}

// (b), (c): storage S (float or half) with Math::bf16, every case: against the reference on the
// caller's inputs (the issue's bound) and on the inputs rounded to bf16 (the kernel's own error,
// within tol), then the storage's own equivalence, equivalent(c, q, k, v, qb, kb, vb, got, at).
template <class M, class S, class Equivalent>
void check_bf16_math(unsigned seed, double tol, const Equivalent& equivalent) {
  double worst_orig = 0, worst_row = 0, worst_tensor = 0;
  for (const Case& c : accuracy_cases<M>()) {
    const auto q = random_tensor<S>(c.B, c.H, c.nq, c.D, seed++), k = random_tensor<S>(c.B, c.H, c.nk, c.D, seed++),
               v = random_tensor<S>(c.B, c.H, c.nk, c.D, seed++, 0.0, 1.0);
    const std::string at = shape_text(c.B, c.H, c.nq, c.nk, c.D, c.opts);
    const auto f = make<M, S>(c.opts, Math::bf16);
    ASSERT_TRUE(f.backend().native_bf16) << f.backend().reason;
    const auto got = f(q, k, v);
    const auto ref = reference(f, q, k, v);
    EXPECT_TRUE(close_to_ref(got, ref, kIssueBound)) << at;
    worst_orig = std::max(worst_orig, rel_error(got, ref));

    const auto qb = cast_tensor<bf16>(q), kb = cast_tensor<bf16>(k), vb = cast_tensor<bf16>(v);
    const auto ref_rounded = reference(f, qb, kb, vb);
    double w = 0;
    EXPECT_TRUE(close_to_ref(got, ref_rounded, tol)) << at;
    EXPECT_TRUE(close_to_ref_rows(got, ref_rounded, tol, 1e-30, &w)) << at;
    worst_row = std::max(worst_row, w);
    worst_tensor = std::max(worst_tensor, rel_error(got, ref_rounded));
    equivalent(c, q, k, v, qb, kb, vb, got, at);
  }
  record("worst_tensor_vs_original_inputs", worst_orig);
  record("worst_row_vs_rounded_inputs", worst_row);
  record("worst_tensor_vs_rounded_inputs", worst_tensor);
}

// (b) float storage, Math::bf16: the same as bfloat16 storage of the rounded inputs up to the
// output rounding, exactly: both run the same operands through the same pair kernel, and
// bfloat16 storage only rounds the float result once (nearest even, as static_cast).
TYPED_TEST(Bf16Accuracy, FloatStorageBf16Math) {
  using M = TypeParam;
  check_bf16_math<M, float>(40, kFloatStorage, [](const Case& c, const auto&, const auto&, const auto&, const auto& qb,
                                                  const auto& kb, const auto& vb, const auto& got, const std::string& at) {
    const auto fb = make<M, bf16>(c.opts, Math::automatic);
    EXPECT_TRUE(rounds_to(got, fb(qb, kb, vb))) << "float storage + Math::bf16 against bfloat16 storage " << at;
  });
}

// (c) half storage, Math::bf16: as (b); half storage of half values equals float storage of the
// same values rounded to half (same operands, same kernel, one rounding of the output).
TYPED_TEST(Bf16Accuracy, HalfStorageBf16Math) {
  using M = TypeParam;
  check_bf16_math<M, half>(70, kHalfStorage, [](const Case& c, const auto& q, const auto& k, const auto& v,
                                                const auto& qb, const auto& kb, const auto& vb, const auto& got,
                                                const std::string& at) {
    const auto ff = make<M, float>(c.opts, Math::bf16);
    const auto as_float = ff(cast_tensor<float>(q), cast_tensor<float>(k), cast_tensor<float>(v));
    EXPECT_TRUE(rounds_to(as_float, got)) << "half storage against float storage of the same values " << at;
    EXPECT_TRUE(rounds_to(as_float, make<M, bf16>(c.opts, Math::automatic)(qb, kb, vb)))
        << "float storage + Math::bf16 against bfloat16 storage " << at;
  });
}

// The weights are rounded to nearest, not truncated: the per-row bounds above allow u per
// weight, while truncation errs by up to 2u but only ~u/2 on average, and passes them. Rounding
// to nearest errs symmetrically, so the mean signed relative error of the outputs (float storage:
// no output rounding; v in [0.5, 1): no small outputs) is near 0: each output's error is a
// weighted mean of its row's weight errors (|delta| <= u, mean 0), ~4e4 of them independent over
// the rows, so the mean's spread is ~(u / sqrt 3) / 200 = 1e-5; u / 16 = 2.4e-4 is 20 of those,
// and truncation's bias (~-2e-3) is far beyond it.
TYPED_TEST(Bf16Accuracy, WeightsRoundToNearest) {
  using M = TypeParam;
  const auto q = random_tensor<float>(2, 4, 97, 64, 90), k = random_tensor<float>(2, 4, 97, 64, 91),
             v = random_tensor<float>(2, 4, 97, 64, 92, 0.5, 1.0);
  const auto f = make<M, float>(kPlain, Math::bf16);
  ASSERT_TRUE(f.backend().native_bf16) << f.backend().reason;
  const auto got = f(q, k, v);
  const auto ref = reference(f, cast_tensor<bf16>(q), cast_tensor<bf16>(k), cast_tensor<bf16>(v));
  double sum = 0;
  for (Index i = 0; i < got.size(); ++i) {
    const double r = ref.data[static_cast<size_t>(i)];
    sum += (static_cast<double>(got.data()[i]) - r) / r;
  }
  const double mean = sum / static_cast<double>(got.size());
  EXPECT_LT(std::abs(mean), kU / 16) << "mean signed relative error " << mean;
  record("mean_signed_error", mean);
}

// ------------------------------------------------------------------ pairs against the float backend

template <class M>
class Bf16Agreement : public PairBackend {};
TYPED_TEST_SUITE(Bf16Agreement, Bf16Methods, MethodName);

// bfloat16 storage (so both backends see the same operands and differ only by the pairs' own
// rounding): the pairs against ScopedBf16Products(false), per row within kAgree. Returns the
// pairs' result.
template <class M>
Tensor4<bf16> expect_backends_agree(const Opts& o, Index B, Index H, Index nq, Index nk, Index D, unsigned seed,
                                    double& worst) {
  const auto q = random_tensor<bf16>(B, H, nq, D, seed), k = random_tensor<bf16>(B, H, nk, D, seed + 1),
             v = random_tensor<bf16>(B, H, nk, D, seed + 2, 0.0, 1.0);
  const auto f = make<M, bf16>(o, Math::automatic);
  auto pairs = f(q, k, v);
  const auto exact = [&] {
    const sd::ScopedBf16Products off(false);
    EXPECT_FALSE(f.backend().native_bf16) << f.backend().reason;
    return f(q, k, v);
  }();
  double w = 0;
  EXPECT_TRUE(close_to_ref_rows(pairs, to_ref(exact), kAgree, 1e-30, &w)) << shape_text(B, H, nq, nk, D, o);
  worst = std::max(worst, w);
  return pairs;
}

// N = 1 (one key, one pair half empty), 7, 97 (ragged blocks), 1025 (9 key tiles, 17 query
// blocks); D = 7 (odd: the last depth pair padded), 8, 40, 64, 128.
TYPED_TEST(Bf16Agreement, AwkwardSizes) {
  using M = TypeParam;
  double worst = 0;
  unsigned seed = 100;
  for (Index n : {1, 7, 97})
    for (Index d : {7, 8, 40, 64, 128}) expect_backends_agree<M>(kPlain, 2, 2, n, n, d, seed += 3, worst);
  expect_backends_agree<M>(kPlain, 1, 1, 1025, 1025, M::kSoftmax ? 128 : 64, seed += 3, worst);
  expect_backends_agree<M>(kPlain, 1, 1, 1025, 1025, 7, seed += 3, worst);
  // Control: the pairs really ran (P rounded to bf16 changes some outputs' last bits).
  const auto pairs = expect_backends_agree<M>(kPlain, 1, 2, 97, 97, 64, 190, worst);
  const auto q = random_tensor<bf16>(1, 2, 97, 64, 190), k = random_tensor<bf16>(1, 2, 97, 64, 191),
             v = random_tensor<bf16>(1, 2, 97, 64, 192, 0.0, 1.0);
  const sd::ScopedBf16Products off(false);
  EXPECT_FALSE(bitwise_equal(pairs, make<M, bf16>(kPlain, Math::automatic)(q, k, v)));
  record("worst_row", worst);
}

TYPED_TEST(Bf16Agreement, CrossAttention) {
  using M = TypeParam;
  double worst = 0;
  unsigned seed = 200;
  for (bool causal : {false, true}) {
    if (causal && !M::kSoftmax) continue;  // SoftGaussian has no causal mode
    const Opts o{causal, {}, std::nullopt};
    for (Index d : {7, 40}) {
      expect_backends_agree<M>(o, 2, 2, 7, 97, d, seed += 3, worst);   // fewer queries than keys
      expect_backends_agree<M>(o, 2, 2, 97, 7, d, seed += 3, worst);   // more queries than keys
      expect_backends_agree<M>(o, 1, 2, 1, 300, d, seed += 3, worst);  // one query, keys over 3 tiles
      expect_backends_agree<M>(o, 1, 2, 300, 129, d, seed += 3, worst);
    }
  }
  record("worst_row", worst);
}

class Bf16AgreementSoftmax : public PairBackend {};

// Causal: the diagonal tiles run their dense keys in pairs and the rest one key at a time (odd
// dense counts leave a key out of the pairs); 1025 crosses 9 key tiles.
TEST_F(Bf16AgreementSoftmax, Causal) {
  double worst = 0;
  unsigned seed = 300;
  const Opts o{true, {}, std::nullopt};
  for (Index n : {1, 7, 97, 300})
    for (Index d : {7, 8, 64}) expect_backends_agree<SoftmaxM>(o, 2, 2, n, n, d, seed += 3, worst);
  expect_backends_agree<SoftmaxM>(o, 1, 1, 1025, 1025, 128, seed += 3, worst);
  record("worst_row", worst);
}

// Key padding: a full item, an odd length (its last valid key has a padded pair partner), an
// empty one (rows of zeros); with and without causal; self and cross.
TEST_F(Bf16AgreementSoftmax, KeyPadding) {
  double worst = 0;
  unsigned seed = 400;
  for (bool causal : {false, true}) {
    for (Index n : {7, 97}) {
      const Opts o{causal, {n, (n / 2) | 1, 0}, std::nullopt};
      for (Index d : {7, 40}) expect_backends_agree<SoftmaxM>(o, 3, 2, n, n, d, seed += 3, worst);
    }
    expect_backends_agree<SoftmaxM>(Opts{causal, {300, 131, 0}, std::nullopt}, 3, 2, 200, 300, 59, seed += 3, worst);
    expect_backends_agree<SoftmaxM>(Opts{causal, {1025, 513, 1}, std::nullopt}, 3, 1, 1025, 1025, 8, seed += 3,
                                    worst);
  }
  record("worst_row", worst);
}

class Bf16BiasAlign : public PairBackend {};

// The additive bias and the bottom-right causal alignment on the pairs, bfloat16 storage (the
// reference sees the products' operands): a bias broadcast over heads with -inf entries and a
// fully masked row (zeros), bottom-right with Nq < Nk and Nq > Nk (leading rows see no key:
// zeros), with key padding (an odd length: a pair partner padded; an empty item). The bias
// enters in float after the scaled product and the weights are rounded as without it, so the
// bound is kBf16Storage, per row (v in [0, 1]: no row small by cancellation).
TEST_F(Bf16BiasAlign, MatchesReference) {
  double worst = 0;
  unsigned seed = 1500;
  const std::vector<std::pair<Index, Index>> shapes{{97, 97}, {7, 197}, {197, 130}, {130, 7}};
  for (const auto& [nq, nk] : shapes)
    for (bool bottom_right : {false, true})
      for (bool padded : {false, true}) {
        SoftmaxAttention<bf16> f;
        f.causal = true;
        if (bottom_right) f.causal_align = softfree::CausalAlign::bottom_right;
        if (padded) f.key_lengths = std::vector<Index>{nk, (nk / 2) | 1, 0};
        auto bias = random_tensor<float>(3, 1, nq, nk, seed += 3, -3, 3);
        for (Index i = 0; i < bias.size(); i += 5) bias.data()[i] = -std::numeric_limits<float>::infinity();
        for (Index j = 0; j < nk; ++j) bias(1, 0, nq / 2, j) = -std::numeric_limits<float>::infinity();
        f.set_bias(bias);
        ASSERT_TRUE(f.backend().native_bf16) << f.backend().reason;
        const auto q = random_tensor<bf16>(3, 2, nq, 40, seed += 3), k = random_tensor<bf16>(3, 2, nk, 40, seed += 3),
                   v = random_tensor<bf16>(3, 2, nk, 40, seed += 3, 0.0, 1.0);
        const auto got = f(q, k, v);
        const auto ref = reference(f, q, k, v);
        const std::string what = shape_text(3, 2, nq, nk, 40, Opts{true, f.key_lengths, std::nullopt}) +
                                 (bottom_right ? " bottom_right" : " top_left");
        double w = 0;
        EXPECT_TRUE(close_to_ref(got, ref, kBf16Storage)) << what;
        EXPECT_TRUE(close_to_ref_rows(got, ref, kBf16Storage, 1e-30, &w)) << what;
        worst = std::max(worst, w);
        for (Index c = 0; c < 40; ++c) ASSERT_EQ(static_cast<float>(got(1, 1, nq / 2, c)), 0.0f) << "masked row";
      }
  record("worst_row", worst);
}

// Bottom-right: a NaN and an inf in value row j (100 queries behind 150 keys: hidden from queries
// i < j - 50) never reach those rows, bitwise, on the pairs' odd-key and tile-edge cases.
TEST_F(Bf16BiasAlign, BottomRightHiddenNonFiniteValues) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const auto q = random_tensor<bf16>(1, 2, 100, 8, 1600), k = random_tensor<bf16>(1, 2, 150, 8, 1601),
             v = random_tensor<bf16>(1, 2, 150, 8, 1602);
  SoftmaxAttention<bf16> f;
  f.causal = true;
  f.causal_align = softfree::CausalAlign::bottom_right;
  const auto base = f(q, k, v);
  for (Index j : {51, 52, 114, 115, 116, 127, 128, 129, 149}) {
    auto v2 = v;
    v2(0, 1, j, 2) = bf16(nan);
    v2(0, 1, j, 3) = bf16(inf);
    const auto out = f(q, k, v2);
    EXPECT_TRUE(rows_bitwise_equal(base, out, j - 51)) << "value row " << j << " reached a row before " << j - 50;
    EXPECT_TRUE(std::isnan(static_cast<float>(out(0, 1, j - 50, 2)))) << "control: row " << j - 50 << " sees key " << j;
  }
}

// ------------------------------------------------------------------ exact weights

// Inputs whose weights are exactly 0 or 1, bf16 values (small integers), so the pairs compute
// every product and sum exactly in float and only the final normalisation rounds: any key
// dropped, doubled or paired with the wrong partner, or any depth or value column packed in the
// wrong place, moves a row by at least 1/1025 of a value unit, far above a few float ulps (where
// the random-input tests, at bf16 tolerances, could miss a single key of 1025).
class Bf16ExactWeights : public PairBackend {};

// SoftmaxAttention, scale 1000: q in {0, 1}, key j % 4 == 0 zero (seen by every query, key 0
// among them, so every causal row has one), every other key a single -1 at a random depth. Scores
// are 0 (weight 1) or <= -1000 (exp underflows to 0 in float and in double). v integers in
// [-8, 8]: each output is a mean of integers, exact up to the reciprocal of the count and one
// product, so 1e-6 (a few float ulps) per row.
struct ExactInputs {
  Tensor4<float> q, k, v;
};
ExactInputs softmax_exact_inputs(Index B, Index H, Index nq, Index nk, Index D, unsigned seed) {
  std::mt19937 gen(seed);
  std::bernoulli_distribution bit(0.5);
  std::uniform_int_distribution<Index> depth(0, D - 1);
  std::uniform_int_distribution<int> value(-8, 8);
  ExactInputs in{Tensor4<float>(B, H, nq, D), Tensor4<float>(B, H, nk, D), Tensor4<float>(B, H, nk, D)};
  for (Index i = 0; i < in.q.size(); ++i) in.q.data()[i] = bit(gen) ? 1.0f : 0.0f;
  in.k.setZero();
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h)
      for (Index j = 0; j < nk; ++j)
        if (j % 4 != 0) in.k(b, h, j, depth(gen)) = -1.0f;
  for (Index i = 0; i < in.v.size(); ++i) in.v.data()[i] = static_cast<float>(value(gen));
  return in;
}

TEST_F(Bf16ExactWeights, Softmax) {
  constexpr double kTol = 1e-6;
  struct ExactCase {
    Index B, H, nq, nk, D;
    bool causal;
    std::vector<Index> lengths;
  };
  const std::vector<ExactCase> cases{
      {1, 2, 7, 7, 7, false, {}},           {2, 2, 97, 97, 8, false, {}},
      {1, 2, 97, 97, 128, false, {}},       {1, 1, 1025, 1025, 7, false, {}},
      {1, 1, 1025, 1025, 64, false, {}},    {1, 2, 150, 150, 7, true, {}},
      {1, 1, 1025, 1025, 64, true, {}},     {3, 2, 150, 200, 7, false, {200, 131, 0}},
      {3, 2, 150, 200, 8, true, {57, 1, 0}}, {1, 2, 7, 300, 8, false, {}},
      {1, 2, 7, 300, 8, true, {}},          {1, 2, 300, 129, 7, true, {}}};
  double worst = 0;
  unsigned seed = 500;
  for (const ExactCase& c : cases) {
    const Opts o{c.causal, c.lengths, 1000.0};
    const auto in = softmax_exact_inputs(c.B, c.H, c.nq, c.nk, c.D, seed++);
    const auto f = make<SoftmaxM, float>(o, Math::bf16);
    ASSERT_TRUE(f.backend().native_bf16);
    double w = 0;
    EXPECT_TRUE(close_to_ref_rows(f(in.q, in.k, in.v), reference(f, in.q, in.k, in.v), kTol, 1e-30, &w))
        << shape_text(c.B, c.H, c.nq, c.nk, c.D, o);
    worst = std::max(worst, w);
  }
  record("worst_row", worst);
}

// SoftGaussian: q and k one-hot times 64 (or zero: q with probability 1/8, key j % 5 == 0), so a
// weight is 1 where q = k and at most exp(-64^2 / (2 sqrt(128))) = e^-181 elsewhere (0 in float).
// v integers in [0, 8]: each output is a sum of integers. Only the on-weights round: their
// exponent comes from the expansion |q|^2 + |k|^2 - 2 q.k in float with |q|^2 = 4096, which leaves
// up to 3 u_f 4096 s = 4e-4 (D = 7, s = log2(e) / sqrt(7)) in the base-2 exponent, so an
// on-weight lies in [0.9997, 1] (the pairs round it to 1; a tile's odd last key keeps it): 1e-3
// per row (outputs >= 0), while one key more or less moves a row by >= 1/600 of its max here.
ExactInputs gaussian_exact_inputs(Index B, Index H, Index nq, Index nk, Index D, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<Index> depth(0, D - 1);
  std::uniform_int_distribution<int> value(0, 8), eighth(0, 7);
  ExactInputs in{Tensor4<float>(B, H, nq, D), Tensor4<float>(B, H, nk, D), Tensor4<float>(B, H, nk, D)};
  in.q.setZero();
  in.k.setZero();
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h) {
      for (Index i = 0; i < nq; ++i)
        if (eighth(gen) != 0) in.q(b, h, i, depth(gen)) = 64.0f;
      for (Index j = 0; j < nk; ++j)
        if (j % 5 != 0) in.k(b, h, j, depth(gen)) = 64.0f;
    }
  for (Index i = 0; i < in.v.size(); ++i) in.v.data()[i] = static_cast<float>(value(gen));
  return in;
}

TEST_F(Bf16ExactWeights, Gaussian) {
  constexpr double kTol = 1e-3;
  struct ExactCase {
    Index B, H, nq, nk, D;
  };
  const std::vector<ExactCase> cases{{1, 2, 7, 7, 7},      {2, 2, 97, 97, 8},    {1, 2, 97, 97, 128},
                                     {1, 1, 1025, 1025, 7}, {1, 1, 1025, 1025, 64}, {1, 2, 7, 300, 8},
                                     {1, 2, 300, 129, 7},   {1, 2, 130, 130, 59}};
  double worst = 0;
  unsigned seed = 600;
  for (const ExactCase& c : cases) {
    const auto in = gaussian_exact_inputs(c.B, c.H, c.nq, c.nk, c.D, seed++);
    const auto f = make<GaussianM, float>(kPlain, Math::bf16);
    ASSERT_TRUE(f.backend().native_bf16);
    double w = 0;
    EXPECT_TRUE(close_to_ref_rows(f(in.q, in.k, in.v), reference(f, in.q, in.k, in.v), kTol, 1e-30, &w))
        << shape_text(c.B, c.H, c.nq, c.nk, c.D, kPlain);
    worst = std::max(worst, w);
  }
  record("worst_row", worst);
}

// ------------------------------------------------------------------ stability

class Bf16Stability : public PairBackend {};

// test_softmax.cpp's LargeLogits on the pairs: q = 64 a, k = +-c with integers a, c in [1, 8] (bf16
// values), D = 64, scale 1/8: scores are multiples of 8 up to ~3e4 in magnitude, exact in float,
// far beyond exp's range, so only the running max keeps them finite. v in [0, 1): the bounds of
// the accuracy tests (bfloat16 storage and float storage with Math::bf16).
TEST_F(Bf16Stability, SoftmaxLargeLogits) {
  double worst = 0;
  for (int sign : {1, -1}) {
    const auto q = integer_tensor<float>(1, 2, 97, 64, 1000, 1, 8, 64.0);
    const auto k = integer_tensor<float>(1, 2, 97, 64, 1001, 1, 8, sign);
    const auto v = random_tensor<float>(1, 2, 97, 64, 1002, 0.0, 1.0);
    ASSERT_GT(max_abs_score(q, k, 0.125), 1e4);
    const auto qb = cast_tensor<bf16>(q), kb = cast_tensor<bf16>(k), vb = cast_tensor<bf16>(v);
    for (bool causal : {false, true}) {
      const Opts o{causal, {}, std::nullopt};
      const auto fb = make<SoftmaxM, bf16>(o, Math::automatic);
      const auto ff = make<SoftmaxM, float>(o, Math::bf16);
      ASSERT_TRUE(fb.backend().native_bf16 && ff.backend().native_bf16);
      double w = 0;
      EXPECT_TRUE(close_to_ref_rows(fb(qb, kb, vb), reference(fb, qb, kb, vb), kBf16Storage, 1e-30, &w))
          << "bfloat16, sign " << sign << " causal " << causal;
      worst = std::max(worst, w);
      // q and k are bf16 values and v is rounded as the kernel rounds it: the reference on the
      // rounded v sees the operands.
      EXPECT_TRUE(close_to_ref_rows(ff(q, k, v), reference(ff, to_ref(q), to_ref(k), to_ref(vb)), kFloatStorage, 1e-30, &w))
          << "float + Math::bf16, sign " << sign << " causal " << causal;
      worst = std::max(worst, w);
    }
  }
  record("worst_row", worst);
}

// SoftGaussian (bfloat16 storage) with keys of magnitude up to 150: a third of the keys drawn from
// [-150, 150), whose norm terms (~4e4 in the base-2 exponent) make their weights underflow to 0
// as in the reference; the rest near the queries. Then every key large (cross-attention, 150
// keys): every weight underflows, the reference rows are 0 (or ~1e-300) and the output rows must
// be exactly 0 (close_to_ref_rows' floor).
TEST_F(Bf16Stability, GaussianLargeKeys) {
  double worst = 0;
  for (Index d : {8, 64, 128}) {
    const auto q = random_tensor<bf16>(1, 2, 97, d, 1100);
    auto k = random_tensor<bf16>(1, 2, 97, d, 1101);
    const auto large = random_tensor<bf16>(1, 2, 97, d, 1102, -150.0, 150.0);
    for (Index h = 0; h < 2; ++h)
      for (Index j = 0; j < 97; j += 3)
        for (Index c = 0; c < d; ++c) k(0, h, j, c) = large(0, h, j, c);
    const auto v = random_tensor<bf16>(1, 2, 97, d, 1103, 0.0, 1.0);
    const SoftGaussian<bf16> f{};
    double w = 0;
    EXPECT_TRUE(close_to_ref_rows(f(q, k, v), reference(f, q, k, v), kBf16Storage, 1e-30, &w)) << "D = " << d;
    worst = std::max(worst, w);

    const auto q2 = random_tensor<bf16>(1, 2, 20, d, 1104), k2 = random_tensor<bf16>(1, 2, 150, d, 1105, -150.0, 150.0),
               v2 = random_tensor<bf16>(1, 2, 150, d, 1106);
    const auto out = f(q2, k2, v2);
    EXPECT_TRUE(close_to_ref_rows(out, reference(f, q2, k2, v2), kBf16Storage)) << "all keys large, D = " << d;
  }
  record("worst_row", worst);
  // Tied, every token of magnitude up to 150 (D = 64): the diagonal weights are 1 and the rest
  // underflow. The exponent comes from the expansion |q|^2 + |k|^2 - 2 q.k in float, whose terms
  // (s |q|^2 ~ 9e4 in base 2) cancel: each of its ~4 roundings errs by up to u_f 9e4 = 5e-3, so
  // a diagonal weight may be off by ~2^0.02 - 1 = 1.4% (the float path, the same expansion, does
  // no better): the issue's bound, 4e-2, per row.
  const auto x = random_tensor<bf16>(1, 2, 97, 64, 1107, -150.0, 150.0), w = random_tensor<bf16>(1, 2, 97, 64, 1108, 0.0, 1.0);
  double tied = 0;
  EXPECT_TRUE(close_to_ref_rows(SoftGaussian<bf16>{}(x, x, w), reference(SoftGaussian<bf16>{}, x, x, w), kIssueBound,
                                1e-30, &tied));
  record("worst_row_tied", tied);
}

// Tokens c + U(-4, 4) far from the origin (D = 16, Q != K and tied; at c = 1000 bf16's spacing
// is 4, so tokens still differ): the products take the rounded tokens about a bf16 centre, exactly
// (Sterbenz), so bfloat16 storage and float storage with Math::bf16 keep their bounds against the
// reference on the operands; the expansion in float lost 0.2 of a row at c = 1000.
TEST_F(Bf16Stability, GaussianFarFromTheOrigin) {
  double worst = 0;
  for (double c : {0.0, 10.0, 100.0, 1000.0})
    for (bool tied : {false, true}) {
      const auto q = random_tensor<float>(1, 2, 130, 16, 1110, c - 4, c + 4);
      const auto k = tied ? q : random_tensor<float>(1, 2, 130, 16, 1111, c - 4, c + 4);
      const auto v = random_tensor<float>(1, 2, 130, 16, 1112, 0.0, 1.0);
      const auto qb = cast_tensor<bf16>(q), kb = cast_tensor<bf16>(k), vb = cast_tensor<bf16>(v);
      const auto fb = make<GaussianM, bf16>(kPlain, Math::automatic);
      const auto ff = make<GaussianM, float>(kPlain, Math::bf16);
      const auto got = fb(qb, tied ? qb : kb, vb);
      const auto ref = reference(fb, qb, kb, vb);
      const std::string at = "offset " + std::to_string(c) + (tied ? " tied" : " untied");
      double w = 0;
      EXPECT_TRUE(close_to_ref_rows(got, ref, kBf16Storage, 1e-30, &w)) << "bfloat16, " << at;
      worst = std::max(worst, w);
      const auto as_float = ff(q, tied ? q : k, v);
      EXPECT_TRUE(close_to_ref_rows(as_float, ref, kFloatStorage, 1e-30, &w)) << "float + Math::bf16, " << at;
      worst = std::max(worst, w);
      EXPECT_TRUE(rounds_to(as_float, got)) << "float + Math::bf16 against bfloat16 storage, " << at;
    }
  record("worst_row", worst);
}

// ------------------------------------------------------------------ masking on the pairs

class Bf16Masking : public PairBackend {};

// Causal: a NaN and an inf in value row j (and, second, a NaN in key row j too) must not reach
// rows < j, which stay bitwise what they were. The positions cover the pairs' special cases with
// 64-query blocks: j = 65 is hidden from query 64, whose block runs 65 dense keys from key 0, the
// last of them (64) outside the pairs and paired with key 65 in V's packing; 1, 2 (the first
// block sees one dense key); tile edges 127, 128, 129; and the last key. Rows >= j must see it
// (control: row j's NaN column is NaN, as in the reference).
TEST_F(Bf16Masking, CausalHiddenNonFiniteValues) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (Index d : {7, 8}) {
    const auto q = random_tensor<bf16>(1, 2, 150, d, 1200), k = random_tensor<bf16>(1, 2, 150, d, 1201),
               v = random_tensor<bf16>(1, 2, 150, d, 1202);
    SoftmaxAttention<bf16> f;
    f.causal = true;
    const auto base = f(q, k, v);
    for (bool in_key : {false, true})
      for (Index j : {1, 2, 5, 63, 64, 65, 66, 127, 128, 129, 149}) {
        auto k2 = k, v2 = v;
        v2(0, 1, j, 2) = bf16(nan);
        v2(0, 1, j, 3) = bf16(inf);
        if (in_key) k2(0, 1, j, 1) = bf16(nan);
        const auto out = f(q, k2, v2);
        EXPECT_TRUE(rows_bitwise_equal(base, out, j - 1))
            << "a non-finite " << (in_key ? "key and value" : "value") << " at row " << j << " reached an earlier row, D = " << d;
        EXPECT_TRUE(std::isnan(static_cast<float>(out(0, 1, j, 2)))) << "control: row " << j << " sees its own key";
      }
  }
}

// Key padding: NaN and inf in padded keys and values (among them the first padded row, the pair
// partner of an odd last valid key) change nothing, bitwise, with and without causal masking.
TEST_F(Bf16Masking, PaddedNonFiniteKeysDoNotMatter) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (Index d : {7, 8})
    for (bool causal : {false, true}) {
      SoftmaxAttention<bf16> f;
      f.causal = causal;
      f.key_lengths = std::vector<Index>{57, 130, 1, 0};
      const auto q = random_tensor<bf16>(4, 2, 150, d, 1300), k = random_tensor<bf16>(4, 2, 200, d, 1301),
                 v = random_tensor<bf16>(4, 2, 200, d, 1302);
      const auto base = f(q, k, v);
      auto k2 = k, v2 = v;
      for (Index b = 0; b < 4; ++b)
        for (Index h = 0; h < 2; ++h)
          for (Index j = f.key_lengths[static_cast<size_t>(b)]; j < 200; j += (j % 2 ? 3 : 1)) {
            k2(b, h, j, (j + h) % d) = bf16(nan);
            v2(b, h, j, j % d) = bf16(inf);
            v2(b, h, j, (j + 1) % d) = bf16(nan);
          }
      const auto out = f(q, k2, v2);
      EXPECT_TRUE(bitwise_equal(base, out)) << "D = " << d << " causal " << causal;
      for (Index i = 0; i < out.size(); ++i)
        ASSERT_TRUE(std::isfinite(static_cast<float>(out.data()[i]))) << "element " << i << " D = " << d;
    }
}

// Serial, 2 and 3 library threads: the same bits on the pairs.
TEST_F(Bf16Masking, DeterministicAcrossThreads) {
  const auto q = random_tensor<bf16>(2, 3, 97, 40, 1400), k = random_tensor<bf16>(2, 3, 150, 40, 1401),
             v = random_tensor<bf16>(2, 3, 150, 40, 1402);
  SoftmaxAttention<bf16> s;
  s.causal = true;
  s.key_lengths = std::vector<Index>{150, 77};
  SoftGaussian<bf16> g;
  const auto s1 = s(q, k, v), g1 = g(q, k, v);
  for (int threads : {2, 3}) {
    s.parallel = g.parallel = softfree::Parallel::with_threads(threads);
    EXPECT_TRUE(bitwise_equal(s1, s(q, k, v))) << threads << " threads";
    EXPECT_TRUE(bitwise_equal(g1, g(q, k, v))) << threads << " threads";
  }
}

// ------------------------------------------------------------------ policy and query (every build)

bool mentions(const std::string& text, const char* needle) { return text.find(needle) != std::string::npos; }

TEST(Bf16Policy, BackendOfBfloatStorage) {
  const SoftmaxAttention<bf16> f{};
  const bool can = pair_backend_missing().empty();
  {
    const sd::ScopedBf16Products force(true);
    const softfree::BackendInfo info = f.backend();
    if (can) {
      EXPECT_TRUE(info.native_bf16) << info.reason;
      EXPECT_EQ(info.name, "avx512_bf16");
    } else {
      // Forcing cannot conjure the backend: exact float products, and the reason says why.
      EXPECT_FALSE(info.native_bf16) << info.reason;
      EXPECT_TRUE(mentions(info.reason, sd::kHavePairOps ? "AVX512-BF16" : "no bf16 product backend")) << info.reason;
    }
    // Math::f32 is exact float products whatever is forced.
    SoftmaxAttention<bf16> exact;
    exact.math = Math::f32;
    EXPECT_FALSE(exact.backend().native_bf16) << exact.backend().reason;
  }
  {
    const sd::ScopedBf16Products forbid(false);
    const softfree::BackendInfo info = f.backend();
    EXPECT_FALSE(info.native_bf16) << info.reason;
    if (can) {
      EXPECT_TRUE(mentions(info.reason, "SOFTFREE_BF16_PRODUCTS=off")) << info.reason;
    }
  }
  // The default rule: pairs where the build and the CPU have them, except on CPUs with AMX (where
  // vdpbf16ps does half the float FMA's work); SOFTFREE_BF16_PRODUCTS=force / off overrides it.
  const softfree::BackendInfo info = f.backend();
  const int env = sd::bf16_products_from_env();
  EXPECT_EQ(info.native_bf16, can && (env == 1 || (env == -1 && !sd::cpu_features().amx_bf16))) << info.reason;
  if (can && env == -1 && sd::cpu_features().amx_bf16) {
    EXPECT_TRUE(mentions(info.reason, "AMX")) << info.reason;
  }
}

// float, half and double storage under Math::automatic never multiply in bf16, forced or not.
TEST(Bf16Policy, AutomaticIsExactForOtherStorage) {
  for (int forced : {-1, 0, 1}) {
    std::optional<sd::ScopedBf16Products> scope;
    if (forced >= 0) scope.emplace(forced == 1);
    for (const softfree::BackendInfo& info :
         {SoftmaxAttention<float>{}.backend(), SoftmaxAttention<half>{}.backend(), SoftmaxAttention<double>{}.backend(),
          SoftGaussian<float>{}.backend(), SoftGaussian<half>{}.backend()})
      EXPECT_FALSE(info.native_bf16) << info.name << ": " << info.reason << " (forced " << forced << ")";
  }
}

// backend_info<T>(m) answers as the functor's backend() does for a method with bf16 kernels.
TEST(Bf16Policy, BackendInfoAgreesWithTheFunctor) {
  for (int forced : {-1, 0, 1}) {
    std::optional<sd::ScopedBf16Products> scope;
    if (forced >= 0) scope.emplace(forced == 1);
    for (Math m : {Math::automatic, Math::f32, Math::bf16}) {
      const auto check = [&](const auto& f, const softfree::BackendInfo& free) {
        const softfree::BackendInfo info = f.backend();
        EXPECT_EQ(info.native_bf16, free.native_bf16) << info.reason << " / " << free.reason;
        EXPECT_EQ(info.name, free.name);
      };
      check(make<SoftmaxM, bf16>(kPlain, m), softfree::backend_info<bf16>(m));
      check(make<GaussianM, float>(kPlain, m), softfree::backend_info<float>(m));
      check(make<SoftmaxM, half>(kPlain, m), softfree::backend_info<half>(m));
    }
  }
}

// Under forced pairs, a method with bf16 kernels (detail::has_bf16_products) runs them where the
// build and CPU have them; one without reports exact float products, naming itself, whatever the
// policy, and its Math::bf16 calls give the bits of Math::f32.
template <class F>
void expect_products_as_declared(F f) {
  for (Math m : {Math::automatic, Math::bf16}) {
    f.math = m;
    const softfree::BackendInfo info = f.backend();
    if (sd::has_bf16_products<F>::value) {
      EXPECT_EQ(info.native_bf16, pair_backend_missing().empty()) << F::kName << ": " << info.reason;
    } else {
      EXPECT_FALSE(info.native_bf16) << F::kName << ": " << info.reason;
      EXPECT_TRUE(mentions(info.reason, F::kName)) << info.reason;
      EXPECT_TRUE(mentions(info.reason, "no bf16 kernel")) << info.reason;
    }
  }
}

TEST(Bf16Policy, MethodsReportTheirKernels) {
  const sd::ScopedBf16Products force(true);
  expect_products_as_declared(softfree::SimA<bf16>{});
  expect_products_as_declared(softfree::SoftNystrom<bf16>{});
  expect_products_as_declared(softfree::AftFull<bf16>{});
  expect_products_as_declared(softfree::AftSimple<bf16>{});
  expect_products_as_declared(softfree::AftLocal<bf16>{});
  expect_products_as_declared(softfree::AftConv<bf16>{});
  expect_products_as_declared(SoftmaxAttention<bf16>{});
  expect_products_as_declared(SoftGaussian<bf16>{});
  if (!sd::has_bf16_products<softfree::AftSimple<bf16>>::value) {
    const auto q = random_tensor<bf16>(1, 2, 20, 8, 1500), k = random_tensor<bf16>(1, 2, 20, 8, 1501),
               v = random_tensor<bf16>(1, 2, 20, 8, 1502);
    softfree::AftSimple<bf16> asked, exact;
    asked.math = Math::bf16;
    exact.math = Math::f32;
    EXPECT_TRUE(bitwise_equal(asked(q, k, v), exact(q, k, v)));
  }
}

// A Math value that is not one, and Math::bf16 on double storage, are rejected naming "math" (and
// "double") by every call form and by backend(), before anything is written.
template <class F>
void expect_rejected(F f, Math m, std::initializer_list<const char*> needles) {
  using T = typename F::scalar_type;
  f.math = m;
  const auto q = random_tensor<T>(1, 2, 9, 8, 1600), k = random_tensor<T>(1, 2, 9, 8, 1601),
             v = random_tensor<T>(1, 2, 9, 8, 1602);
  Tensor4<T> out(1, 2, 9, 8);
  out.setConstant(T(7));
  const softfree::View4<T> view(out.data(), out.dimensions());
  EXPECT_TRUE(throws_naming([&] { f(q, k, v); }, needles)) << F::kName;
  EXPECT_TRUE(throws_naming([&] { f(q, k, v, view); }, needles)) << F::kName;
  EXPECT_TRUE(throws_naming([&] { f.run(q, k, v, view); }, needles)) << F::kName;
  EXPECT_TRUE(throws_naming([&] { f.check_inputs(q, k, v); }, needles)) << F::kName;
  EXPECT_TRUE(throws_naming([&] { f.backend(); }, needles)) << F::kName;
  for (Index i = 0; i < out.size(); ++i) ASSERT_EQ(static_cast<double>(out.data()[i]), 7.0) << F::kName << " wrote out";
}

TEST(Bf16Policy, RejectsBadMathBeforeWriting) {
  const Math bogus = static_cast<Math>(7);
  for (int forced : {0, 1}) {
    const sd::ScopedBf16Products scope(forced == 1);
    expect_rejected(SoftmaxAttention<float>{}, bogus, {"math", "7"});
    expect_rejected(SoftmaxAttention<bf16>{}, bogus, {"math"});
    expect_rejected(SoftGaussian<half>{}, bogus, {"math"});
    expect_rejected(SoftmaxAttention<double>{}, bogus, {"math"});
    expect_rejected(softfree::SimA<bf16>{}, bogus, {"math"});
    expect_rejected(SoftmaxAttention<double>{}, Math::bf16, {"math", "double"});
    expect_rejected(SoftGaussian<double>{}, Math::bf16, {"math", "double"});
  }
}

// Where the pairs do not run (forbidden here; on a build or CPU without them, always), Math::bf16
// and bfloat16's automatic give the exact float result: the bits of Math::f32.
template <class M>
void expect_exact_fallback(const Opts& o) {
  const auto check = [&](auto tag, Math m) {
    using T = decltype(tag);
    const auto q = random_tensor<T>(2, 2, 97, 40, 1700), k = random_tensor<T>(2, 2, 97, 40, 1701),
               v = random_tensor<T>(2, 2, 97, 40, 1702);
    const auto f = make<M, T>(o, m);
    EXPECT_FALSE(f.backend().native_bf16) << f.backend().reason;
    EXPECT_TRUE(bitwise_equal(f(q, k, v), make<M, T>(o, Math::f32)(q, k, v)))
        << M::template type<T>::kName << " " << softfree::precision<T>::name << " math " << softfree::math_name(m);
  };
  check(float{}, Math::bf16);
  check(half{}, Math::bf16);
  check(bf16{}, Math::bf16);
  check(bf16{}, Math::automatic);
}

TEST(Bf16Policy, FallbackIsTheExactFloatResult) {
  const Opts causal_padded{true, {97, 40}, std::nullopt};
  {
    const sd::ScopedBf16Products forbid(false);
    expect_exact_fallback<SoftmaxM>(kPlain);
    expect_exact_fallback<SoftmaxM>(causal_padded);
    expect_exact_fallback<GaussianM>(kPlain);
  }
  if (!pair_backend_missing().empty()) {  // the default preset: no backend, whatever the rule says
    const std::string why = SoftmaxAttention<bf16>{}.backend().reason;
    EXPECT_TRUE(mentions(why, sd::kHavePairOps ? "AVX512-BF16" : "no bf16 product backend")) << why;
    expect_exact_fallback<SoftmaxM>(kPlain);
    expect_exact_fallback<SoftmaxM>(causal_padded);
    expect_exact_fallback<GaussianM>(kPlain);
    const sd::ScopedBf16Products force(true);  // forcing changes nothing without the backend
    expect_exact_fallback<SoftmaxM>(kPlain);
  }
}

// ------------------------------------------------------------------ pair packing helpers

std::uint32_t bits(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
float from_bits(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
// The word of two bf16 values held as floats, by plain bit operations: lo's top half low.
std::uint32_t word_of(float lo, float hi) { return (bits(lo) >> 16) | (bits(hi) & 0xffff0000u); }
// A float rounded to bf16 by Eigen, back as a float.
float eigen_bf16(float x) { return static_cast<float>(static_cast<bf16>(x)); }

// n floats that are not bf16 values (the packers round them), with exact ties among them.
std::vector<float> float_values(Index n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-4.0f, 4.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& e : x) e = dist(gen);
  for (size_t i = 0; i < x.size(); i += 5) x[i] = from_bits((bits(x[i]) & 0xffff0000u) | 0x8000u);  // ties
  return x;
}
// The expected word of two floats: each rounded by Eigen, low half first.
std::uint32_t rounded_word(float lo, float hi) { return word_of(eigen_bf16(lo), eigen_bf16(hi)); }

TEST(Bf16PairPacking, PairsOfAndPairWord) {
  EXPECT_EQ(sd::pairs_of(0), 0);
  EXPECT_EQ(sd::pairs_of(1), 1);
  EXPECT_EQ(sd::pairs_of(7), 4);
  EXPECT_EQ(sd::pairs_of(8), 4);
  EXPECT_EQ(sd::pair_word(1.0f, -2.0f), 0xc0003f80u);  // bf16 1 = 0x3f80, -2 = 0xc000; low half first
  EXPECT_EQ(sd::pair_word(eigen_bf16(0.3f), 0.0f), bits(eigen_bf16(0.3f)) >> 16);
}

// pack_rows: row r's depth pairs (from rows at stride ldx), rounded to bf16, at dst[r * ld + t], an
// odd depth ending in (x, 0); words past pairs_of(d) in a row are not touched. Where the build has
// a vector pack, every depth takes it in runs of 16 words, the last run masked.
TEST(Bf16PairPacking, PackRows) {
  constexpr std::uint32_t kSentinel = 0xdeadbeefu;
  for (Index rows : {1, 5})
    for (Index d : {1, 2, 6, 7, 32, 33, 64, 70}) {
      const Index ld = sd::pairs_of(d) + 2, ldx = d + 3;  // rows of x at a stride past their values
      const std::vector<float> x = float_values(rows * ldx, static_cast<unsigned>(10 * rows + d));
      std::vector<sd::PairWord> dst(static_cast<size_t>(rows * ld), kSentinel);
      sd::pack_rows(x.data(), rows, d, ldx, dst.data(), ld);
      for (Index r = 0; r < rows; ++r) {
        for (Index t = 0; t < sd::pairs_of(d); ++t) {
          const float lo = x[static_cast<size_t>(r * ldx + 2 * t)];
          const float hi = 2 * t + 1 < d ? x[static_cast<size_t>(r * ldx + 2 * t + 1)] : 0.0f;
          EXPECT_EQ(dst[static_cast<size_t>(r * ld + t)], rounded_word(lo, hi))
              << "rows " << rows << " d " << d << " r " << r << " t " << t;
        }
        for (Index t = sd::pairs_of(d); t < ld; ++t)
          EXPECT_EQ(dst[static_cast<size_t>(r * ld + t)], kSentinel) << "wrote past the row's pairs, d " << d;
      }
    }
}

// pack_columns: column c's pairs down the rows, rounded, at dst[c * ld + t], from a block with row
// stride ldx > cols; an odd row count ends in (x, 0); nothing past pairs_of(rows) is touched.
TEST(Bf16PairPacking, PackColumns) {
  constexpr std::uint32_t kSentinel = 0xdeadbeefu;
  for (Index rows : {1, 2, 6, 7})
    for (Index cols : {1, 5, 17}) {
      const Index ldx = cols + 3, ld = sd::pairs_of(rows) + 1;
      const std::vector<float> x = float_values(rows * ldx, static_cast<unsigned>(100 * rows + cols));
      std::vector<sd::PairWord> dst(static_cast<size_t>(cols * ld), kSentinel);
      sd::pack_columns(x.data(), rows, cols, ldx, dst.data(), ld);
      for (Index c = 0; c < cols; ++c) {
        for (Index t = 0; t < sd::pairs_of(rows); ++t) {
          const float lo = x[static_cast<size_t>(2 * t * ldx + c)];
          const float hi = 2 * t + 1 < rows ? x[static_cast<size_t>((2 * t + 1) * ldx + c)] : 0.0f;
          EXPECT_EQ(dst[static_cast<size_t>(c * ld + t)], rounded_word(lo, hi))
              << "rows " << rows << " cols " << cols << " c " << c << " t " << t;
        }
        EXPECT_EQ(dst[static_cast<size_t>(c * ld + ld - 1)], kSentinel) << "wrote past the column's pairs";
      }
    }
}

// round_to_bf16 against explicit answers (ties to even, overflow to inf, NaN kept a NaN, even
// NaNs whose payload lies in the dropped half, which naive rounding turns into inf or -0) and
// against Eigen's conversion on every class of float (random bit patterns: subnormals, NaNs, infs).
TEST(Bf16PairPacking, RoundToBf16) {
  struct Known {
    std::uint32_t in, out;
  };
  const Known known[] = {
      {0x3f808000u, 0x3f800000u},  // 1 + 2^-8: tie, to even (1)
      {0x3f818000u, 0x3f820000u},  // 1 + 3 2^-8: tie, to even (1 + 2^-6)
      {0x3f808001u, 0x3f810000u},  // just above the tie: up
      {0xbf808000u, 0xbf800000u},  // -(1 + 2^-8): to -1
      {0x7f7fffffu, 0x7f800000u},  // FLT_MAX: overflows to inf
      {0x7f7f7fffu, 0x7f7f0000u},  // just below the tie at bf16's largest finite: stays finite
      {0x7f800000u, 0x7f800000u},  // inf
      {0xff800000u, 0xff800000u},  // -inf
      {0x80000000u, 0x80000000u},  // -0
      {0x00008000u, 0x00000000u},  // subnormal tie: to even (0)
      {0x00018000u, 0x00020000u},  // subnormal tie: to even
  };
  for (const Known& e : known) {
    float x = from_bits(e.in);
    sd::round_to_bf16(&x, 1);
    EXPECT_EQ(bits(x), e.out) << std::hex << "input 0x" << e.in;
  }
  for (std::uint32_t nan : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu, 0xffffffffu, 0x7fa00000u}) {
    float x = from_bits(nan);
    sd::round_to_bf16(&x, 1);
    EXPECT_TRUE(std::isnan(x)) << std::hex << "NaN 0x" << nan << " became 0x" << bits(x);
    EXPECT_EQ(bits(x) & 0xffffu, 0u) << "not a bf16 value";
    EXPECT_EQ(std::signbit(x), std::signbit(from_bits(nan)));
  }
  std::mt19937 gen(1800);
  std::vector<float> x(20000);
  for (float& e : x) e = from_bits(static_cast<std::uint32_t>(gen()));
  std::vector<float> r = x;
  sd::round_to_bf16(r.data(), static_cast<Index>(r.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i])) {  // payloads may differ between conversion paths; a NaN stays one
      EXPECT_TRUE(std::isnan(r[i])) << std::hex << "0x" << bits(x[i]);
    } else {
      ASSERT_EQ(bits(r[i]), bits(eigen_bf16(x[i]))) << std::hex << "0x" << bits(x[i]);
    }
  }
}

class Bf16PairKernels : public PairBackend {};

// The backend's vector pack (two rows of a float tile into pairs, vcvtne2ps2bf16): the pair words
// of the two rows rounded as round_to_bf16 does, lane by lane, for normal values, ties, zeros,
// infs and overflow; NaN stays NaN; subnormal inputs become zero of their sign (documented in
// backend_avx512_bf16.hpp: below the rounding of any bf16 product).
template <class Ops = sd::PairOps>
void check_vector_pack() {
  if constexpr (!std::is_same<Ops, sd::NoPairOps>::value) {
    std::mt19937 gen(1900);
    std::uniform_real_distribution<float> dist(-10.0f, 10.0f);
    for (int round = 0; round < 50; ++round) {
      float lo[16], hi[16];
      for (int i = 0; i < 16; ++i) lo[i] = dist(gen), hi[i] = dist(gen) * 1e-3f;
      if (round == 0) {
        const std::uint32_t special[16] = {0x3f808000u, 0x3f818000u, 0xbf808000u, 0x7f7fffffu, 0x7f800000u, 0xff800000u,
                                           0x80000000u, 0x00000000u, 0x3f808001u, 0x7f7f7fffu, 0x00800000u, 0x80800000u,
                                           0x3c000000u, 0x4b7fffffu, 0x33800000u, 0xc2f6e979u};
        for (int i = 0; i < 16; ++i) lo[i] = from_bits(special[i]), hi[i] = from_bits(special[15 - i] ^ 0x80000000u);
      }
      sd::PairWord dst[16];
      Ops::pack(lo, hi, dst);
      for (int i = 0; i < 16; ++i) {
        float a = lo[i], b = hi[i];
        sd::round_to_bf16(&a, 1);
        sd::round_to_bf16(&b, 1);
        ASSERT_EQ(dst[i], word_of(a, b)) << std::hex << "lane " << i << ": 0x" << bits(lo[i]) << ", 0x" << bits(hi[i]);
      }
    }
    float lo[16], hi[16];
    for (int i = 0; i < 16; ++i) {
      lo[i] = from_bits(i % 2 ? 0x7fc00000u : 0x7f800001u);      // NaNs, one with a low payload only
      hi[i] = from_bits((i % 2 ? 0x80000000u : 0u) | 0x00400000u);  // subnormals of both signs
    }
    sd::PairWord dst[16];
    Ops::pack(lo, hi, dst);
    for (int i = 0; i < 16; ++i) {
      EXPECT_TRUE(std::isnan(from_bits(dst[i] << 16))) << "lane " << i;
      EXPECT_EQ(dst[i] >> 16, i % 2 ? 0x8000u : 0u) << "lane " << i << ": a subnormal becomes a zero of its sign";
    }
  }
}
TEST_F(Bf16PairKernels, VectorPackRoundsAsRoundToBf16) { check_vector_pack(); }

// pack_row_pairs<Ops>: pairs down x's rows at dst[t * ld + c], through the vector pack for whole
// 16-column groups and a scalar tail, rounded as Eigen rounds; columns [cols, ld) zero; an odd last
// row pairs with zeros; rows of dst past pairs_of(rows) untouched. The bfloat16 overload gives
// the same words from the rounded values' bits.
template <class Ops = sd::PairOps>
void check_pack_row_pairs() {
  if constexpr (!std::is_same<Ops, sd::NoPairOps>::value) {
    constexpr std::uint32_t kSentinel = 0xdeadbeefu;
    for (Index rows : {1, 2, 7})
      for (Index cols : {1, 15, 16, 17, 40}) {
        const Index ldx = cols + 3, ld = sd::pad_to_16(cols), pairs = sd::pairs_of(rows);
        const std::vector<float> x = float_values(rows * ldx, static_cast<unsigned>(1000 + 100 * rows + cols));
        std::vector<sd::PairWord> dst(static_cast<size_t>((pairs + 1) * ld), kSentinel);
        sd::pack_row_pairs<Ops>(x.data(), rows, cols, ldx, dst.data(), ld);
        for (Index t = 0; t < pairs; ++t) {
          for (Index c = 0; c < cols; ++c) {
            const float lo = x[static_cast<size_t>(2 * t * ldx + c)];
            const float hi = 2 * t + 1 < rows ? x[static_cast<size_t>((2 * t + 1) * ldx + c)] : 0.0f;
            EXPECT_EQ(dst[static_cast<size_t>(t * ld + c)], rounded_word(lo, hi))
                << "rows " << rows << " cols " << cols << " t " << t << " c " << c;
          }
          for (Index c = cols; c < ld; ++c)
            EXPECT_EQ(dst[static_cast<size_t>(t * ld + c)], 0u) << "padding column " << c << " not zero, cols " << cols;
        }
        for (Index c = 0; c < ld; ++c)
          EXPECT_EQ(dst[static_cast<size_t>(pairs * ld + c)], kSentinel) << "wrote past the pairs, rows " << rows;
        // bfloat16 storage of the rounded values: the same words, paired from the stored bits.
        std::vector<bf16> xb(x.size());
        for (size_t i = 0; i < x.size(); ++i) xb[i] = static_cast<bf16>(x[i]);
        std::vector<sd::PairWord> from_bits(dst.size(), kSentinel);
        sd::pack_row_pairs<Ops>(xb.data(), rows, cols, ldx, from_bits.data(), ld);
        EXPECT_TRUE(from_bits == dst) << "bfloat16 input, rows " << rows << " cols " << cols;
      }
  }
}
TEST_F(Bf16PairKernels, PackRowPairs) { check_pack_row_pairs(); }

// gemm_pairs on small integers (exact in bf16, products and sums exact in float) against a double
// reference, exactly: rows with leftovers of the register block (Tiling<4, 4>: 4 rows of 4
// packets), columns in whole packets with leftovers (16 .. 144), odd depths (a padded last pair);
// A packed by pack_rows (K's layout) and by pack_columns (V^T's), B as [pairs][cols] words (Q^T's
// and the weights'); epilogues StoreC, AddC (adds to what is there) and ScaledC (s = 0.5, exact).
template <class Ops = sd::PairOps>
void check_gemm_pairs() {
  if constexpr (!std::is_same<Ops, sd::NoPairOps>::value) {
    using Tile = sd::Tiling<4, 4>;
    std::mt19937 gen(2000);
    std::uniform_int_distribution<int> small(-8, 8);
    for (Index rows : {1, 3, 4, 5, 13, 17})
      for (Index cols : {16, 48, 64, 80, 144})
        for (Index depth : {1, 2, 7, 64, 129}) {
          const Index pairs = sd::pairs_of(depth), ldc = cols + 5;
          std::vector<float> a(static_cast<size_t>(rows * depth)), b(static_cast<size_t>(depth * cols));
          for (float& e : a) e = static_cast<float>(small(gen));
          for (float& e : b) e = static_cast<float>(small(gen));
          std::vector<double> ref(static_cast<size_t>(rows * cols), 0.0);
          for (Index r = 0; r < rows; ++r)
            for (Index c = 0; c < cols; ++c)
              for (Index t = 0; t < depth; ++t)
                ref[static_cast<size_t>(r * cols + c)] +=
                    double(a[static_cast<size_t>(r * depth + t)]) * double(b[static_cast<size_t>(t * cols + c)]);
          // A by rows (pack_rows) and, from its transpose, by columns (pack_columns).
          std::vector<sd::PairWord> ap(static_cast<size_t>(rows * pairs)), ac(static_cast<size_t>(rows * pairs));
          sd::pack_rows(a.data(), rows, depth, depth, ap.data(), pairs);
          std::vector<float> at(static_cast<size_t>(depth * rows));
          for (Index r = 0; r < rows; ++r)
            for (Index t = 0; t < depth; ++t) at[static_cast<size_t>(t * rows + r)] = a[static_cast<size_t>(r * depth + t)];
          sd::pack_columns(at.data(), depth, rows, rows, ac.data(), pairs);
          ASSERT_TRUE(ap == ac) << "pack_rows and pack_columns of the transpose disagree";
          std::vector<sd::PairWord> bp(static_cast<size_t>(pairs * cols));
          for (Index t = 0; t < pairs; ++t)
            for (Index c = 0; c < cols; ++c)
              bp[static_cast<size_t>(t * cols + c)] = word_of(
                  b[static_cast<size_t>(2 * t * cols + c)], 2 * t + 1 < depth ? b[static_cast<size_t>((2 * t + 1) * cols + c)] : 0.0f);
          const sd::PairA pa{ap.data(), pairs, 1};
          const sd::PairRowsB<Ops> pb{bp.data(), cols};
          const auto expect_c = [&](const std::vector<float>& c, double mul, double add, const char* what) {
            for (Index r = 0; r < rows; ++r) {
              for (Index col = 0; col < cols; ++col)
                ASSERT_EQ(double(c[static_cast<size_t>(r * ldc + col)]), mul * ref[static_cast<size_t>(r * cols + col)] + add)
                    << what << ": rows " << rows << " cols " << cols << " depth " << depth << " at (" << r << ", " << col << ")";
              for (Index col = cols; col < ldc; ++col)
                ASSERT_EQ(c[static_cast<size_t>(r * ldc + col)], -3.0f) << what << " wrote past cols";
            }
          };
          std::vector<float> c(static_cast<size_t>(rows * ldc), -3.0f);
          sd::gemm_pairs<Tile>(rows, cols, pairs, pa, pb, sd::StoreC<float>{c.data(), ldc});
          expect_c(c, 1.0, 0.0, "StoreC");
          std::fill(c.begin(), c.end(), -3.0f);
          sd::gemm_pairs<Tile>(rows, cols, pairs, pa, pb, sd::AddC<float>{c.data(), ldc});
          expect_c(c, 1.0, -3.0, "AddC");
          std::fill(c.begin(), c.end(), -3.0f);
          sd::gemm_pairs<Tile>(rows, cols, pairs, pa, pb,
                               sd::ScaledC<sd::StoreC<float>>{sd::StoreC<float>{c.data(), ldc}, 0.5f, 2.0f});
          expect_c(c, 0.5, 0.0, "ScaledC");
        }
  }
}
TEST_F(Bf16PairKernels, GemmPairsExactOnIntegers) { check_gemm_pairs(); }

// ------------------------------------------------------------------ AftFull and SimA on pairs
//
// AftFull: num and den sum exp(w - max w) e^(K - max K) [V, 1] with both factors rounded to bf16
// (u each, so a term within 2u + u^2 of itself) and float sums; with v in [0, 1) every term is
// >= 0, so num and den are each within 2u + u^2 (+ float level) of themselves, their ratio within
// 4u + 6u^2, and bfloat16 storage rounds the output once more: 5u + 8u^2 per element.
constexpr double kAftPairTol = 5 * 3.90625e-3 + 8 * 3.90625e-3 * 3.90625e-3 + 1e-4;
// SimA with positive inputs: M = K^T V of rounded K, V (2u + u^2 per term), rescaled M rounded
// again (u), Q rounded (u), Q M summed in float, the output rounded (u): 5u + 12u^2 per element.
constexpr double kSimAPairTol = 5 * 3.90625e-3 + 12 * 3.90625e-3 * 3.90625e-3 + 1e-4;

class Bf16AftFull : public PairBackend {};

// N = 1, 7 (one row group), 97 and 301 (ragged groups, an odd last key chunk past 128 and 256),
// shared and per-head biases, causal and not, D = 8 (X of 16 columns), 40 (X padded), 64.
TEST_F(Bf16AftFull, MatchesReferencePerRow) {
  for (Index n : {1, 7, 97, 301})
    for (Index d : {8, 40, 64})
      for (Index slots : {1, 3})
        for (bool causal : {false, true}) {
          const auto q = random_tensor<bf16>(2, 3, n, d, 11, -2, 2), k = random_tensor<bf16>(2, 3, n, d, 12, -2, 2),
                     v = random_tensor<bf16>(2, 3, n, d, 13, 0, 1);
          const auto w = random_weights<bf16>(slots, n, n, 14, -2, 2);
          softfree::AftFull<bf16> f(w);
          f.causal = causal;
          ASSERT_TRUE(f.backend().native_bf16);
          const auto ref = softfree_ref::aft_full(to_ref(q), to_ref(k), to_ref(v), ref_weights<float>(w), causal);
          EXPECT_TRUE(close_to_ref_rows(f(q, k, v), ref, kAftPairTol))
              << "N=" << n << " D=" << d << " slots=" << slots << " causal=" << causal;
        }
}

// v_j = e_j (N = D): output channel j is key j's weight alone, so a key dropped, doubled or paired
// with the wrong one moves its element by all of itself, far past the bound.
TEST_F(Bf16AftFull, OneHotValuesSeeEveryKey) {
  for (Index n : {61, 64})
    for (bool causal : {false, true}) {
      const auto q = random_tensor<bf16>(1, 2, n, n, 21, -1, 1), k = random_tensor<bf16>(1, 2, n, n, 22, -1, 1);
      Tensor4<bf16> v(1, 2, n, n);
      for (Index h = 0; h < 2; ++h)
        for (Index j = 0; j < n; ++j)
          for (Index c = 0; c < n; ++c) v(0, h, j, c) = bf16(j == c ? 1.0f : 0.0f);
      const auto w = random_weights<bf16>(1, n, n, 23, -2, 2);
      softfree::AftFull<bf16> f(w);
      f.causal = causal;
      const auto ref = softfree_ref::aft_full(to_ref(q), to_ref(k), to_ref(v), ref_weights<float>(w), causal);
      EXPECT_TRUE(close_to_ref_rows(f(q, k, v), ref, kAftPairTol, 1e-30)) << "N=" << n << " causal=" << causal;
    }
}

// test_aft.cpp's HugeKeysStayFiniteAndCorrect on the pairs: keys of magnitude up to 150 (e^150 is
// far beyond float) with biases in [-2, 2), so only the column shift by max K keeps X finite, and
// most keys' e^{K - max K} underflow in bf16 as in float. Every term stays >= 0 (v in [0, 1)), so
// the per-element bound above still holds; the rows must also be finite.
TEST_F(Bf16AftFull, HugeKeysStayFiniteAndCorrect) {
  for (Index n : {40, 197})
    for (Index d : {8, 64})
      for (bool causal : {false, true}) {
        const auto q = random_tensor<float>(1, 2, n, d, 41, -2, 2), k = random_tensor<float>(1, 2, n, d, 42, -150, 150),
                   v = random_tensor<float>(1, 2, n, d, 43, 0, 1);
        const auto w = random_weights<float>(2, n, n, 44, -2, 2);
        const auto qb = cast_tensor<bf16>(q), kb = cast_tensor<bf16>(k), vb = cast_tensor<bf16>(v);
        softfree::AftFull<bf16> fb(w);
        softfree::AftFull<float> ff(w);
        fb.causal = ff.causal = causal;
        ff.math = Math::bf16;
        ASSERT_TRUE(fb.backend().native_bf16 && ff.backend().native_bf16);
        const std::string where = "N=" + std::to_string(n) + " D=" + std::to_string(d) + " causal=" + std::to_string(causal);
        const auto got_b = fb(qb, kb, vb);
        const auto got_f = ff(q, k, v);
        for (Index i = 0; i < got_b.size(); ++i)
          ASSERT_TRUE(std::isfinite(static_cast<float>(got_b.data()[i])) && std::isfinite(got_f.data()[i]))
              << "element " << i << ", " << where;
        EXPECT_TRUE(close_to_ref_rows(
            got_b, softfree_ref::aft_full(to_ref(qb), to_ref(kb), to_ref(vb), ref_weights<float>(w), causal), kAftPairTol))
            << "bfloat16, " << where;
        EXPECT_TRUE(close_to_ref_rows(got_f, softfree_ref::aft_full(to_ref(q), to_ref(k), to_ref(v), ref_weights<float>(w),
                                                                      causal),
                                      kAftPairTol))
            << "float + Math::bf16, " << where;
      }
}

// Float storage with Math::bf16: X is formed from the exact inputs and rounded (no output
// rounding), so the same bound holds against the reference on the caller's inputs.
TEST_F(Bf16AftFull, FloatStorageWithBf16Math) {
  const auto q = random_tensor<float>(1, 3, 197, 64, 31, -2, 2), k = random_tensor<float>(1, 3, 197, 64, 32, -2, 2),
             v = random_tensor<float>(1, 3, 197, 64, 33, 0, 1);
  const auto w = random_weights<float>(1, 197, 197, 34, -2, 2);
  softfree::AftFull<float> f(w);
  f.math = Math::bf16;
  ASSERT_TRUE(f.backend().native_bf16);
  const auto ref = softfree_ref::aft_full(to_ref(q), to_ref(k), to_ref(v), ref_weights<float>(w), false);
  EXPECT_TRUE(close_to_ref_rows(f(q, k, v), ref, kAftPairTol));
  f.math = Math::f32;
  EXPECT_FALSE(f.backend().native_bf16);
  EXPECT_TRUE(close_to_ref(f(q, k, v), ref));  // exact float products: the float tolerance
}

class Bf16SimA : public PairBackend {};

// The N D^2 order on pairs: N = 64 .. 1025 (a ragged last 256-token tile, an odd token count),
// D = 8, 40 (M's columns padded to 16 and 48), 64, 128.
TEST_F(Bf16SimA, MatchesReferencePerRow) {
  for (Index n : {64, 97, 1025})
    for (Index d : {8, 40, 64, 128}) {
      const auto q = random_tensor<bf16>(1, 2, n, d, 41, 0, 1), k = random_tensor<bf16>(1, 2, n, d, 42, 0, 1),
                 v = random_tensor<bf16>(1, 2, n, d, 43, 0, 1);
      softfree::SimA<bf16> f;
      f.order = softfree::SimAOrder::KVFirst;
      ASSERT_TRUE(f.backend().native_bf16);
      EXPECT_TRUE(close_to_ref_rows(f(q, k, v), softfree_ref::sima(to_ref(q), to_ref(k), to_ref(v)), kSimAPairTol))
          << "N=" << n << " D=" << d;
    }
}

// The short-sequence order has no pair kernel: under the bf16 policy it is the float result, bitwise.
TEST_F(Bf16SimA, ShortSequenceOrderStaysFloat) {
  const auto q = random_tensor<float>(1, 2, 20, 64, 51), k = random_tensor<float>(1, 2, 20, 64, 52),
             v = random_tensor<float>(1, 2, 20, 64, 53);
  softfree::SimA<float> f;
  f.order = softfree::SimAOrder::QKFirst;
  f.math = Math::bf16;
  const auto with_pairs_asked = f(q, k, v);
  f.math = Math::f32;
  EXPECT_TRUE(bitwise_equal(with_pairs_asked, f(q, k, v)));
}

}  // namespace

namespace {

// ------------------------------------------------------------------ SoftNystrom on the pairs

class Bf16SoftNystrom : public PairBackend {};

// Per row against the double reference, bfloat16 storage. First-order error terms, each relative
// to a row's scale: the output's rounding (u), the weights of P and of R^T V rounded to bf16 (u
// each, on sums of non-negative weights) and Y = pinv(A) R V rounded to bf16 (u per element);
// Y's entries have mixed signs, so P Y cancels, and the pseudo-inverse passes R V's error on
// amplified by A's conditioning (cond ~ 10 for inputs in [-2, 2), see test_soft.cpp). Measured
// worst over the shapes below: 1.3e-2 (3.3u, N = 1025, D = 8, m = 49); 6u leaves about 2x.
constexpr double kNystromPairRow = 6 * kU;  // 2.3e-2
/// The pairs against the float backend (both outputs rounded to bfloat16): the above plus u.
constexpr double kNystromAgree = kNystromPairRow + kU;  // 2.7e-2

// SoftNystrom's double reference with segments(m) landmarks pooled by the reference.
template <class T>
softfree_ref::Tensor nystrom_reference(const softfree::SoftNystrom<T>& f, const Tensor4<T>& q, const Tensor4<T>& k,
                                       const Tensor4<T>& v, Index m) {
  const auto qr = to_ref(q), kr = to_ref(k);
  return softfree_ref::soft_nystrom(qr, kr, to_ref(v), softfree_ref::landmarks_segments(qr, m),
                                    softfree_ref::landmarks_segments(kr, m), f.newton.steps, f.newton.lambda,
                                    softfree_ref::PinvInit::Current, f.soft_norm);
}

softfree::SoftNystrom<bf16> nystrom_with(Index m) {
  softfree::SoftNystrom<bf16> f;
  f.landmarks = softfree::Landmarks::segments(m);
  return f;
}

// Tied and untied; N = 97 (one ragged 64-token tile) and 1025 (17 tiles, an odd last one, and
// an odd token count in R V's pairs); D = 8, 40 (R V and Y's rows padded to 48), 64, 128;
// m = 5, 49 (48 landmarks in the pair product, one past it), 64: per row and per tensor.
TEST_F(Bf16SoftNystrom, MatchesReferencePerRow) {
  double worst_row = 0, worst_tensor = 0;
  unsigned seed = 1300;
  for (Index n : {97, 1025})
    for (Index d : {8, 40, 64, 128})
      for (Index m : {5, 49, 64})
        for (bool tied : {true, false}) {
          const auto q = random_tensor<bf16>(1, 2, n, d, seed++, -2.0, 2.0);
          const auto v = random_tensor<bf16>(1, 2, n, d, seed++, 0.0, 1.0);
          const auto k = tied ? q : keys_near(q, seed++);
          const auto f = nystrom_with(m);
          ASSERT_TRUE(f.backend().native_bf16) << f.backend().reason;
          const auto got = f(q, k, v);
          const auto ref = nystrom_reference(f, q, k, v, m);
          const std::string at = "N=" + std::to_string(n) + " D=" + std::to_string(d) + " m=" + std::to_string(m) +
                                 (tied ? " tied" : " untied");
          double w = 0;
          EXPECT_TRUE(close_to_ref(got, ref, kIssueBound)) << at;
          EXPECT_TRUE(close_to_ref_rows(got, ref, kNystromPairRow, 1e-30, &w)) << at;
          worst_row = std::max(worst_row, w);
          worst_tensor = std::max(worst_tensor, rel_error(got, ref));
        }
  record("worst_row", worst_row);
  record("worst_tensor", worst_tensor);
}

// N = 1 (one landmark, one token: a half-empty pair everywhere), 7 and 97 with m = min(N, 49), and
// D = 7 (an odd depth: the last pair padded), 8, 40, 128: the pairs against the float backend.
TEST_F(Bf16SoftNystrom, AgreesWithFloatBackend) {
  double worst = 0;
  unsigned seed = 1400;
  for (Index n : {1, 7, 97})
    for (Index d : {7, 8, 40, 128})
      for (bool tied : {true, false}) {
        const auto q = random_tensor<bf16>(2, 2, n, d, seed++, -2.0, 2.0);
        const auto v = random_tensor<bf16>(2, 2, n, d, seed++, 0.0, 1.0);
        const auto k = tied ? q : keys_near(q, seed++);
        const auto f = nystrom_with(std::min<Index>(n, 49));
        const auto pairs = f(q, k, v);
        const sd::ScopedBf16Products off(false);
        ASSERT_FALSE(f.backend().native_bf16);
        double w = 0;
        EXPECT_TRUE(close_to_ref_rows(pairs, to_ref(f(q, k, v)), kNystromAgree, 1e-30, &w))
            << "N=" << n << " D=" << d << (tied ? " tied" : " untied");
        worst = std::max(worst, w);
      }
  record("worst_row", worst);
}

// Float storage with Math::bf16: within the issue's bound of the reference on the caller's
// inputs; on inputs that are bf16 values already, the bfloat16 storage result rounded, bitwise
// (the same operands through the same kernels; bfloat16 storage rounds the float output once).
TEST_F(Bf16SoftNystrom, FloatStorageBf16Math) {
  const auto q = random_tensor<float>(1, 3, 197, 64, 1500, -2.0, 2.0);
  const auto v = random_tensor<float>(1, 3, 197, 64, 1501, 0.0, 1.0);
  const auto k = keys_near(q, 1502);
  softfree::SoftNystrom<float> f;
  f.math = Math::bf16;
  ASSERT_TRUE(f.backend().native_bf16) << f.backend().reason;
  for (const bool tied : {true, false}) {
    const auto& kk = tied ? q : k;
    const auto got = f(q, kk, v);
    EXPECT_TRUE(close_to_ref(got, nystrom_reference(f, q, kk, v, 49), kIssueBound)) << (tied ? "tied" : "untied");
    const auto qb = cast_tensor<bf16>(q), kb = cast_tensor<bf16>(kk), vb = cast_tensor<bf16>(v);
    const auto qf = cast_tensor<float>(qb), kf = cast_tensor<float>(kb);
    const auto as_float = f(qf, tied ? qf : kf, cast_tensor<float>(vb));  // one tensor for q and k: tied
    const auto fb = nystrom_with(49);
    EXPECT_TRUE(rounds_to(as_float, tied ? fb(qb, qb, vb) : fb(qb, kb, vb))) << (tied ? "tied" : "untied");
  }
}

// Tokens of magnitude up to 150 (tied, D = 64): every third token drawn from [-150, 150), the rest
// in [-2, 2). Their norm terms (~4e4 in the base-2 exponent) make their weights against the
// landmarks underflow to 0, as in the reference; no NaN or inf reaches any row, and the rows stay
// within the issue's bound (the expansion's cancellation, as GaussianLargeKeys, bounds them).
TEST_F(Bf16SoftNystrom, LargeTokens) {
  auto x = random_tensor<bf16>(1, 2, 97, 64, 1600, -2.0, 2.0);
  const auto large = random_tensor<bf16>(1, 2, 97, 64, 1601, -150.0, 150.0);
  const auto v = random_tensor<bf16>(1, 2, 97, 64, 1602, 0.0, 1.0);
  for (Index h = 0; h < 2; ++h)
    for (Index j = 0; j < 97; j += 3)
      for (Index c = 0; c < 64; ++c) x(0, h, j, c) = large(0, h, j, c);
  const auto f = nystrom_with(49);
  const auto got = f(x, x, v);
  for (Index i = 0; i < got.size(); ++i)
    ASSERT_TRUE(std::isfinite(static_cast<float>(got.data()[i]))) << "element " << i;
  double w = 0;
  EXPECT_TRUE(close_to_ref_rows(got, nystrom_reference(f, x, x, v, 49), kIssueBound, 1e-30, &w));
  record("worst_row", w);
}

}  // namespace
