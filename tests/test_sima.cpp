// SimA against the plain-loop double reference (tests/reference/sima_ref.hpp), in every
// storage type and both product orders.
#include <softfree/sima.hpp>

#include "reference/sima_ref.hpp"
#include "test_util.hpp"

namespace {

using namespace softfree_test;
using softfree::SimA;
using softfree::SimAOrder;

template <class T>
class SimATyped : public ::testing::Test {};
TYPED_TEST_SUITE(SimATyped, StorageTypes, TypeName);

struct Size {
  Index n, d;
};

TYPED_TEST(SimATyped, MatchesReferenceOnAwkwardSizesInBothOrders) {
  using T = TypeParam;
  unsigned seed = 1;
  for (Size s : {Size{1, 8}, Size{7, 59}, Size{7, 64}, Size{97, 8}, Size{97, 59}, Size{97, 64}, Size{1025, 8},
                 Size{1025, 64}}) {
    const Index b = s.n > 100 ? 1 : 2, h = s.n > 100 ? 2 : 3;  // the O(N^2) reference dominates the run time
    const auto q = random_tensor<T>(b, h, s.n, s.d, seed++), k = random_tensor<T>(b, h, s.n, s.d, seed++),
               v = random_tensor<T>(b, h, s.n, s.d, seed++);
    const auto ref = softfree_ref::sima(to_ref(q), to_ref(k), to_ref(v));
    for (SimAOrder order : {SimAOrder::Auto, SimAOrder::QKFirst, SimAOrder::KVFirst}) {
      if (order == SimAOrder::QKFirst && s.n > 100) continue;  // N x N per thread: fine, but slow under ASan
      SimA<T> attn;
      attn.order = order;
      const auto got = attn(q, k, v);
      const auto at = ::testing::Message() << "N=" << s.n << " D=" << s.d << " order=" << int(order);
      if (s.n > 1) {
        EXPECT_TRUE(close_to_ref(got, ref)) << at;
        continue;
      }
      // N = 1: Qn and Kn are the signs of q and k, so a row is sum_c +-v_c, and an even split of
      // the signs (D = 8) cancels to exactly 0 in the reference, while the kernel's q_c / |q_c| is
      // 1 only to rounding: such a row keeps a few u times its terms (~ the tensor's max), in float
      // 5.2 x tol x close_to_ref's floor (2.98e-7 against 5.75e-8). Its rows are held down to 3e-2
      // of the tensor's max instead (5 u / tol for float), 5.8 times the error measured.
      EXPECT_TRUE(close_to_ref_tensor(got, ref)) << at;
      EXPECT_TRUE(close_to_ref_rows(got, ref, tolerance<T>(), 3e-2 * softfree_ref::max_abs(ref))) << at;
    }
  }
}

TYPED_TEST(SimATyped, CrossAttention) {
  using T = TypeParam;
  for (Index nkv : {5, 130}) {
    const auto q = random_tensor<T>(2, 2, 40, 16, 11), k = random_tensor<T>(2, 2, nkv, 16, 12),
               v = random_tensor<T>(2, 2, nkv, 16, 13);
    const auto ref = softfree_ref::sima(to_ref(q), to_ref(k), to_ref(v));
    for (SimAOrder order : {SimAOrder::QKFirst, SimAOrder::KVFirst}) {
      SimA<T> attn;
      attn.order = order;
      EXPECT_TRUE(close_to_ref(attn(q, k, v), ref)) << "Nkv=" << nkv;
    }
  }
}

// An all-zero channel has norm 0: it stays zero (no 0/0), with the default eps and with eps = 0.
TYPED_TEST(SimATyped, ZeroChannelStaysZero) {
  using T = TypeParam;
  auto q = random_tensor<T>(1, 2, 33, 16, 21), k = random_tensor<T>(1, 2, 33, 16, 22);
  const auto v = random_tensor<T>(1, 2, 33, 16, 23);
  for (Index n = 0; n < 33; ++n) {
    q(0, 1, n, 3) = T(0);
    k(0, 0, n, 5) = T(0);
    k(0, 1, n, 3) = T(0);
  }
  // The reference with eps = 1e-12 gives exactly 0 / 1e-12 = 0 in those channels; every other
  // channel's norm is far above 1e-12, so eps = 0 must give the same result.
  const auto ref = softfree_ref::sima(to_ref(q), to_ref(k), to_ref(v));
  for (double eps : {1e-12, 0.0}) {
    SimA<T> attn;
    attn.eps = eps;
    EXPECT_TRUE(close_to_ref(attn(q, k, v), ref)) << "eps=" << eps;
  }
}

// A channel whose l1 norm is below eps is divided by eps, not by its norm (F.normalize's clamp).
TEST(SimA, TinyChannelIsClampedByEps) {
  auto q = random_tensor<double>(1, 1, 20, 8, 31), k = random_tensor<double>(1, 1, 20, 8, 32);
  const auto v = random_tensor<double>(1, 1, 20, 8, 33);
  for (Index n = 0; n < 20; ++n) k(0, 0, n, 2) = 1e-15 * static_cast<double>(n % 3);  // norm 1.9e-14
  SimA<double> attn;
  attn.eps = 1e-12;
  EXPECT_TRUE(close_to_ref(attn(q, k, v), softfree_ref::sima(to_ref(q), to_ref(k), to_ref(v), 1e-12)));
}

TEST(SimA, BothOrdersAgreeInFloat) {
  const auto q = random_tensor<float>(2, 2, 63, 64, 41), k = random_tensor<float>(2, 2, 63, 64, 42),
             v = random_tensor<float>(2, 2, 63, 64, 43);
  SimA<float> qk, kv;
  qk.order = SimAOrder::QKFirst;
  kv.order = SimAOrder::KVFirst;
  EXPECT_TRUE(close_to_ref(qk(q, k, v), to_ref(kv(q, k, v))));
}

TEST(SimA, AutoFollowsTheOriginalRule) {
  SimA<float> attn;
  EXPECT_EQ(attn.resolved_order(63, 63, 64), SimAOrder::QKFirst);  // N < D
  EXPECT_EQ(attn.resolved_order(64, 64, 64), SimAOrder::KVFirst);  // a tie takes Qn (Kn^T V)
  EXPECT_EQ(attn.resolved_order(197, 197, 64), SimAOrder::KVFirst);
  attn.order = SimAOrder::QKFirst;
  EXPECT_EQ(attn.resolved_order(4096, 4096, 64), SimAOrder::QKFirst);
}

TEST(SimA, BitwiseIdenticalForAnyThreadCount) {
  const auto q = random_tensor<float>(2, 3, 300, 64, 51), k = random_tensor<float>(2, 3, 300, 64, 52),
             v = random_tensor<float>(2, 3, 300, 64, 53);
  const auto serial = SimA<float>{}(q, k, v);
  Eigen::ThreadPool pool(2);
  Eigen::ThreadPoolDevice device(&pool, 2);
  for (softfree::Parallel p : {softfree::Parallel::with_threads(2), softfree::Parallel::with_threads(3),
                               softfree::Parallel::on(device)}) {
    SimA<float> attn;
    attn.parallel = p;
    EXPECT_TRUE(bitwise_equal(serial, attn(q, k, v)));
  }
}


/// f(q, k, v) against the reference (k, v repeated to q's heads), bitwise equal to the call on the
/// repeated k, v, and for 1, 2, 3, 7 and 16 threads and a user pool.
template <class T>
void check_token_split(const Tensor4<T>& q, const Tensor4<T>& k, const Tensor4<T>& v, double eps = 1e-12) {
  const Index H = q.dimension(1);
  const Tensor4<T> k_rep = repeat_heads(k, H), v_rep = repeat_heads(v, H);
  SimA<T> f;
  f.order = SimAOrder::KVFirst;
  f.eps = eps;
  const Tensor4<T> serial = f(q, k, v);
  const auto ref = softfree_ref::sima(to_ref(q), to_ref(k_rep), to_ref(v_rep), eps);
  EXPECT_TRUE(close_to_ref(serial, ref));
  EXPECT_TRUE(close_to_ref_rows(serial, ref, 2 * tolerance<T>()));
  if (k.dimension(1) != H) {
    EXPECT_TRUE(bitwise_equal(serial, f(q, k_rep, v_rep))) << "grouped k, v differ from the repeated ones";
  }
  for (int threads : {2, 3, 7, 16}) {
    f.parallel = softfree::Parallel::with_threads(threads);
    EXPECT_TRUE(bitwise_equal(serial, f(q, k, v))) << threads << " threads";
  }
  Eigen::ThreadPool pool(2);
  Eigen::ThreadPoolDevice device(&pool, 2);
  f.parallel = softfree::Parallel::on(device);
  EXPECT_TRUE(bitwise_equal(serial, f(q, k, v))) << "a user pool";
}

// Qn (Kn^T V) split over tokens: per chunk of softfree::detail::kTokenChunk keys their K^T V and
// norms, per chunk of queries their norms, reduced in chunk order, then O by chunks of rows.
// N of several chunks and no multiple of one (B = 1, H = 1 and B = 2, H = 3), q and k of
// different lengths (3 and 2 chunks) with grouped-query heads (H_kv = 1 and 2 of H = 4), and
// half's converted tiles. D = 8 keeps the O(N^2 D) reference short.
TEST(SimA, TokenSplitOverSeveralChunks) {
  static_assert(softfree::detail::kTokenChunk == 1024, "the sizes below straddle chunk boundaries of 1024");
  for (Index B : {1, 2}) {
    const Index H = B == 1 ? 1 : 3, n = B == 1 ? 3100 : 2100;
    SCOPED_TRACE(::testing::Message() << "B = " << B << ", H = " << H << ", N = " << n);
    const auto q = random_tensor<float>(B, H, n, 8, 170), k = random_tensor<float>(B, H, n, 8, 171),
               v = random_tensor<float>(B, H, n, 8, 172);
    check_token_split(q, k, v);
  }
  for (Index kv_heads : {1, 2}) {
    SCOPED_TRACE(::testing::Message() << "H_kv = " << kv_heads);
    const auto q = random_tensor<float>(1, 4, 2100, 8, 173), k = random_tensor<float>(1, kv_heads, 1100, 8, 174),
               v = random_tensor<float>(1, kv_heads, 1100, 8, 175);
    check_token_split(q, k, v);
    check_token_split(from_ref<Eigen::half>(to_ref(q)), from_ref<Eigen::half>(to_ref(k)),
                      from_ref<Eigen::half>(to_ref(v)));
  }
}

// The overflow fallback over several chunks, for some heads only: query head 1's q near 1e36
// (its float column norms overflow, while K^T V does not: a norm of inf once gave the scale
// 1 / inf = 0 and an output of zeros) and kv head 1's k near 1e37 (query heads 2 and 3), while
// query head 0 takes the direct M. The redone heads are whole-head and one thread each; the
// result is the same for any thread count and matches the reference everywhere.
TEST(SimA, OverflowFallbackPerHeadOverSeveralChunks) {
  auto q = random_tensor<float>(1, 4, 2100, 8, 181), k = random_tensor<float>(1, 2, 1100, 8, 182);
  const auto v = random_tensor<float>(1, 2, 1100, 8, 183), k_unit = k;
  // Whole heads scaled through chip(), not element loops of constant bounds: clang -O3
  // -march=native spent minutes on those.
  q.chip(0, 0).chip(1, 0) = q.chip(0, 0).chip(1, 0) * 1e36f;
  k.chip(0, 0).chip(1, 0) = k.chip(0, 0).chip(1, 0) * 1e37f;
  check_token_split(q, k, v);
  // eps = 0 with a subnormal column norm in query head 3 alone (a scale that is no float).
  auto qs = random_tensor<float>(1, 4, 2100, 8, 184);
  qs.chip(0, 0).chip(3, 0).chip(2, 1).setZero();
  for (Index n = 0; n < 4; ++n) qs(0, 3, n, 2) = 2.5e-41f;
  check_token_split(qs, k_unit, v, 0.0);
}

// SimA's point in half precision: inputs near half's largest value (65504) give finite, correct
// outputs, because l1 normalisation bounds every |Qn|, |Kn| by 1 and |Kn^T V| by max |V|.
// A softmax without its max shift would compute exp(q.k / sqrt(D)) with q.k ~ 1e9 here, which
// overflows float and half alike (exp overflows float above 88.7); SoftmaxAttention's running max
// avoids that, so the contrast is stated here rather than shown by breaking the baseline.
TEST(SimA, HalfStaysFiniteNearHalfMax) {
  using T = Eigen::half;
  const auto q = random_tensor<T>(1, 2, 256, 32, 61, -6e4, 6e4), k = random_tensor<T>(1, 2, 256, 32, 62, -6e4, 6e4),
             v = random_tensor<T>(1, 2, 256, 32, 63, -6e4, 6e4);
  const auto ref = softfree_ref::sima(to_ref(q), to_ref(k), to_ref(v));
  ASSERT_LT(softfree_ref::max_abs(ref), 65504.0);  // the exact result is representable in half
  EXPECT_TRUE(close_to_ref(SimA<T>{}(q, k, v), ref));
  EXPECT_TRUE(close_to_ref(SimA<Eigen::bfloat16>{}(from_ref<Eigen::bfloat16>(to_ref(q)),
                                                   from_ref<Eigen::bfloat16>(to_ref(k)),
                                                   from_ref<Eigen::bfloat16>(to_ref(v))),
                           ref, 2 * tolerance<Eigen::bfloat16>()))  // inputs re-rounded to bfloat16
      << "bfloat16";
}

TEST(SimA, RejectsCausalAndBadEps) {
  const auto q = random_tensor<float>(1, 1, 4, 8, 71);
  SimA<float> attn;
  attn.causal = true;
  EXPECT_TRUE(throws_naming([&] { attn(q, q, q); }, {"SimA", "causal"}));
  for (double eps : {-1e-12, std::nan(""), std::numeric_limits<double>::infinity()}) {
    SimA<float> bad;
    bad.eps = eps;
    EXPECT_TRUE(throws_naming([&] { bad(q, q, q); }, {"SimA", "eps"})) << eps;
  }
}

TEST(SimA, RejectsMismatchedShapesWithoutWriting) {
  const auto q = random_tensor<float>(1, 2, 4, 8, 81), k = random_tensor<float>(1, 2, 5, 8, 82);
  softfree::Tensor4<float> out(1, 2, 4, 8);
  out.setConstant(7.f);
  EXPECT_TRUE(throws_naming([&] { SimA<float>{}(q, k, q, out); }, {"SimA", "v", "[1, 2, 4, 8]", "[1, 2, 5, 8]"}));
  for (Index i = 0; i < out.size(); ++i) ASSERT_EQ(out.data()[i], 7.f);
  EXPECT_TRUE(close_to_ref(softfree::make_attention<float>("sima")(q, q, q), to_ref(SimA<float>{}(q, q, q)), 0.0));
}

// Inputs near 1e19 and 1e36, where K^T V overflows float (a column norm overflowing alone is
// OverflowFallbackPerHeadOverSeveralChunks's case): the result, about |v|, is representable, and
// every intermediate (Qn, Kn with |x| <= 1; Kn^T V <= max|v|) is too. Float within its usual
// 1e-5, bfloat16 storage (float's range) within 4e-2: the same bounds as at unit scale, since
// every step is scale-free. Per row too (rows differ in size).
template <class T>
void check_large_inputs(double magnitude, unsigned seed) {
  const auto q = random_tensor<T>(1, 2, 33, 16, seed, -magnitude, magnitude),
             k = random_tensor<T>(1, 2, 33, 16, seed + 1, -magnitude, magnitude),
             v = random_tensor<T>(1, 2, 33, 16, seed + 2, -magnitude, magnitude);
  const auto ref = softfree_ref::sima(to_ref(q), to_ref(k), to_ref(v));
  for (SimAOrder order : {SimAOrder::QKFirst, SimAOrder::KVFirst}) {
    SimA<T> attn;
    attn.order = order;
    const auto out = attn(q, k, v);
    EXPECT_TRUE(close_to_ref(out, ref)) << "magnitude " << magnitude << ", order " << int(order);
    EXPECT_TRUE(close_to_ref_rows(out, ref, 2 * tolerance<T>())) << "magnitude " << magnitude;
  }
}

TEST(SimA, LargeInputsGiveTheirFiniteResult) {
  for (double m : {1e19, 1e36}) {
    check_large_inputs<float>(m, 141);
    check_large_inputs<Eigen::bfloat16>(m, 151);
  }
}

// eps = 0 and a channel whose l1 norm is subnormal in float (4 x 2.5e-41 = 1e-40): 1 / norm
// (1e40) is not a float, but Qn = q / norm is 0.25 there; the result matches the reference.
TEST(SimA, SubnormalNormWithZeroEps) {
  auto q = random_tensor<float>(1, 1, 4, 8, 161), k = random_tensor<float>(1, 1, 4, 8, 162);
  const auto v = random_tensor<float>(1, 1, 4, 8, 163);
  for (Index n = 0; n < 4; ++n) q(0, 0, n, 2) = k(0, 0, n, 5) = 2.5e-41f;
  const auto ref = softfree_ref::sima(to_ref(q), to_ref(k), to_ref(v), 0.0);
  for (SimAOrder order : {SimAOrder::QKFirst, SimAOrder::KVFirst}) {
    SimA<float> attn;
    attn.eps = 0;
    attn.order = order;
    const auto out = attn(q, k, v);
    EXPECT_TRUE(close_to_ref(out, ref)) << "order " << int(order);
    EXPECT_TRUE(close_to_ref_rows(out, ref, 2e-5)) << "order " << int(order);
  }
}

}  // namespace
