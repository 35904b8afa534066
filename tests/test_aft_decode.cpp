// AftSimple::State, AftFull::State and AftLocal::State: decoding token by token gives the rows of
// the causal batch call and of the double reference (bounds below); keys of magnitude 150 stay
// accurate; bad input throws and leaves the state as it was.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "reference/aft_ref.hpp"
#include "test_util.hpp"

namespace {

using namespace softfree_test;
using softfree::AftFull;
using softfree::AftLocal;
using softfree::AftSimple;
using softfree::AftWeights;

template <class T>
class AftDecode : public ::testing::Test {};
TYPED_TEST_SUITE(AftDecode, StorageTypes, TypeName);

// State against batch: both round float results once, which may straddle a rounding boundary of
// half or bfloat16 (one unit, 2^-11 or 2^-8 of the row's max |value|). In float they differ by
// their own rounding: measured against the double reference (per row, relative to the row's max
// |value|, D = 16, N = 100) the batch is within 9.8e-7 (keys in [-2, 2)) and 3.8e-6 (keys of
// magnitude 150: e^w and e^{K - max K} rounded apart), the state within 8.5e-7 and 2.3e-7; so the
// state is held to 2e-6 against the reference, and to 1e-5 (the suite's float bound) against the
// batch. The batch cannot be matched bitwise: its causal blocks shift by a max over 64 rows, keys
// after t included, which a state at token t has not seen.
template <class T>
double agreement() {
  if (std::is_same<T, Eigen::half>::value) return 1.0 / 1024;
  if (std::is_same<T, Eigen::bfloat16>::value) return 1.0 / 128;
  return std::is_same<T, double>::value ? 1e-12 : 1e-5;
}
template <class T>
double state_accuracy() {
  return std::is_same<T, float>::value ? 2e-6 : tolerance<T>();
}

// Every head of q, k, v through one state per head; the rows as a [1, H, N, D] tensor.
template <class T, class F>
Tensor4<T> decode_all(const F& f, const Tensor4<T>& q, const Tensor4<T>& k, const Tensor4<T>& v) {
  const Index H = q.dimension(1), n = q.dimension(2), d = q.dimension(3);
  Tensor4<T> y(1, H, n, d);
  for (Index h = 0; h < H; ++h) {
    typename F::State state(f, d, h);
    for (Index t = 0; t < n; ++t) {
      const Index at = (h * n + t) * d;
      state.step(q.data() + at, k.data() + at, v.data() + at, y.data() + at);
    }
    EXPECT_EQ(state.steps(), n);
  }
  return y;
}

template <class T, class F>
void expect_decodes_as_batch(F f, const Tensor4<T>& q, const Tensor4<T>& k, const Tensor4<T>& v,
                             const softfree_ref::Tensor& ref, const std::string& where) {
  f.causal = true;
  f.math = softfree::Math::f32;  // the state's products are exact
  const Tensor4<T> y = decode_all(f, q, k, v);
  EXPECT_TRUE(close_to_ref_rows(y, to_ref(f(q, k, v)), agreement<T>())) << where << ": against the batch";
  EXPECT_TRUE(close_to_ref_rows(y, ref, state_accuracy<T>())) << where << ": against the reference";
}

}  // namespace

// AftSimple: the batch's causal rows of its first token chunk (kTokenChunk tokens), and every row
// when the heads are not split (4 or more (b, kv head) pairs), run the state's recurrence from
// the first token, so they are bitwise the state's. A later chunk of a split head starts
// from the merged sums of the chunks before it, summed a chunk at a time (in 64-row tiles, then
// merged) where the state adds one token at a time: two float orders of the same sums, each
// rounded by about u sqrt(t) of the size of its terms, sigma(q) sum e^K |V| / sum e^K over the
// keys row t sees (u = 2^-24 in float). So no fixed relative bound holds at every N: in float
// u sqrt(t) passes 1e-6 near t = 280 (per row, relative to the row's max |value|, the two
// differed by up to 1.7e-5 at N = 4000 where values of both signs cancel, and by 7.5e-6 of the
// size at N = 16384). Rows past the first chunk are held to 3 u sqrt(t + 1) of the size, against
// each other and against the sums in double; half and bfloat16 add one unit of their own
// rounding (the float results may straddle a rounding boundary). Measured here (N = 2600): up to
// 1.1 u sqrt(t + 1) in float and double (D = 64, values in [0, 1)), both as close to the double
// sums as to each other.
template <class T>
struct SimpleCausalDouble {
  std::vector<double> y, size;  // [H, N, D]: sigma(q) num / den, and sigma(q) sum e^K |V| / den
};

/// The causal sums in double, token by token, shifted by the running max (exact enough: the
/// bounds below are a million times coarser than their rounding).
template <class T>
SimpleCausalDouble<T> simple_causal_double(const Tensor4<T>& q, const Tensor4<T>& k, const Tensor4<T>& v) {
  const Index H = q.dimension(1), n = q.dimension(2), d = q.dimension(3);
  SimpleCausalDouble<T> r{std::vector<double>(static_cast<size_t>(H * n * d)), std::vector<double>(static_cast<size_t>(H * n * d))};
  for (Index h = 0; h < H; ++h)
    for (Index c = 0; c < d; ++c) {
      double m = -std::numeric_limits<double>::infinity(), num = 0, den = 0, abs_num = 0;
      for (Index t = 0; t < n; ++t) {
        const double kt = static_cast<double>(k(0, h, t, c)), vt = static_cast<double>(v(0, h, t, c));
        if (kt > m) {
          const double a = std::exp(m - kt);
          num *= a, den *= a, abs_num *= a, m = kt;
        }
        const double e = std::exp(kt - m);
        num += e * vt, den += e, abs_num += e * std::abs(vt);
        const double sq = softfree_ref::sigmoid(static_cast<double>(q(0, h, t, c)));
        const auto at = static_cast<size_t>((h * n + t) * d + c);
        r.y[at] = sq * num / den;
        r.size[at] = sq * abs_num / den;
      }
    }
  return r;
}

/// One unit of T's rounding at x (0 for the accumulate types: their results are not rounded
/// again): 2^-10 |x| in half (and its smallest subnormal, 2^-24), 2^-7 |x| in bfloat16.
/// (std::numeric_limits<Eigen::half>::epsilon() is 2^-13 in Eigen 3.4: not used.)
template <class T>
double storage_unit(double x) {
  if (std::is_same<T, Eigen::half>::value) return std::ldexp(std::abs(x), -10) + std::ldexp(1.0, -24);
  if (std::is_same<T, Eigen::bfloat16>::value) return std::ldexp(std::abs(x), -7);
  return 0;
}

TYPED_TEST(AftDecode, SimpleRowsAreTheCausalRows) {
  using T = TypeParam;
  using Acc = softfree::accum_t<T>;
  constexpr Index kChunk = softfree::detail::kTokenChunk;
  const Index n = 2 * kChunk + 552, H = 2;  // three chunks, the last one partial
  const double u = std::numeric_limits<Acc>::epsilon() / 2;
  for (const Index d : {5, 64})
    for (const int keys : {0, 1, 2})  // in [-2, 2); in [-30, 30); rising by 60 a chunk (each chunk raises the max)
      for (const double v_lo : {-1.0, 0.0}) {
        const std::string where = "D=" + std::to_string(d) + " keys " + std::to_string(keys) + " v from " + std::to_string(v_lo);
        const auto q = random_tensor<T>(1, H, n, d, 91, -4, 4), v = random_tensor<T>(1, H, n, d, 93, v_lo, 1);
        auto k = random_tensor<T>(1, H, n, d, 92, keys == 1 ? -30 : -2, keys == 1 ? 30 : 2);
        if (keys == 2)
          for (Index h = 0; h < H; ++h)
            for (Index t = 0; t < n; ++t)
              for (Index c = 0; c < d; ++c)
                k(0, h, t, c) = static_cast<T>(static_cast<double>(k(0, h, t, c)) + 60.0 * static_cast<double>(t) / kChunk);
        AftSimple<T> f;
        f.causal = true;
        const Tensor4<T> batch = f(q, k, v);
        Tensor4<T> state(1, H, n, d);
        for (Index h = 0; h < H; ++h) {
          typename AftSimple<T>::State s(d);
          for (Index t = 0; t < n; ++t) s.step(&q(0, h, t, 0), &k(0, h, t, 0), &v(0, h, t, 0), &state(0, h, t, 0));
          EXPECT_EQ(s.steps(), n);
        }
        EXPECT_TRUE(rows_bitwise_equal(state, batch, kChunk - 1)) << where << ": the first chunk";
        const SimpleCausalDouble<T> exact = simple_causal_double(q, k, v);
        int misses = 0;
        for (Index h = 0; h < H; ++h)
          for (Index t = kChunk; t < n; ++t)
            for (Index c = 0; c < d; ++c) {
              const auto at = static_cast<size_t>((h * n + t) * d + c);
              const double bound = 3 * u * std::sqrt(static_cast<double>(t + 1)) * exact.size[at];
              const double s = static_cast<double>(state(0, h, t, c)), b = static_cast<double>(batch(0, h, t, c));
              const bool ok = std::abs(s - b) <= bound + storage_unit<T>(s) && std::abs(s - exact.y[at]) <= bound + storage_unit<T>(s) &&
                              std::abs(b - exact.y[at]) <= bound + storage_unit<T>(b);
              if (!ok && misses++ < 3)
                ADD_FAILURE() << where << ": [" << h << ", " << t << ", " << c << "] state " << s << ", batch " << b
                              << ", double " << exact.y[at] << ", bound " << bound;
            }
        EXPECT_EQ(misses, 0) << where;
      }
}

// N = 100 (past the batch's 64-row causal blocks), D in {5, 16, 64}, a bias shared by the heads
// and one per head; keys in [-2, 2) and of magnitude up to 150.
TYPED_TEST(AftDecode, FullRowsAreTheCausalRows) {
  using T = TypeParam;
  const Index n = 100, H = 2;
  for (const Index d : {5, 16, 64})
    for (const Index slots : {1, 2})
      for (const double kmax : {2.0, 150.0}) {
        const auto q = random_tensor<T>(1, H, n, d, 61), k = random_tensor<T>(1, H, n, d, 62, -kmax, kmax),
                   v = random_tensor<T>(1, H, n, d, 63);
        const AftWeights<T> w = random_weights<T>(slots, n, n, 64, -2, 2);
        const auto ref = softfree_ref::aft_full(to_ref(q), to_ref(k), to_ref(v), ref_weights<T>(w), true);
        expect_decodes_as_batch(AftFull<T>(w), q, k, v, ref,
                                "D=" + std::to_string(d) + " slots=" + std::to_string(slots) + " |K|<" +
                                    std::to_string(kmax));
      }
}

// Windows of 1 (the diagonal alone), 5 and 32, and one past N (the whole bias); no bias (w = 0).
TYPED_TEST(AftDecode, LocalRowsAreTheCausalRows) {
  using T = TypeParam;
  const Index n = 90, H = 2, d = 16;
  const auto q = random_tensor<T>(1, H, n, d, 71), k = random_tensor<T>(1, H, n, d, 72, -3, 3),
             v = random_tensor<T>(1, H, n, d, 73);
  const AftWeights<T> w = random_weights<T>(H, n, n, 74, -2, 2);
  for (const Index s : {1, 5, 32, 200}) {
    const auto ref = softfree_ref::aft_local(to_ref(q), to_ref(k), to_ref(v), ref_weights<T>(w), std::min(s, n), true);
    expect_decodes_as_batch(AftLocal<T>(s, w), q, k, v, ref, "s=" + std::to_string(s));
  }
  const auto ref = softfree_ref::aft_simple(to_ref(q), to_ref(k), to_ref(v), true);
  expect_decodes_as_batch(AftLocal<T>(7), q, k, v, ref, "no bias");
  expect_decodes_as_batch(AftFull<T>(), q, k, v, ref, "AftFull, no bias");
}

TEST(AftDecodeErrors, BadInputChangesNothing) {
  const Index n = 3, d = 4;
  const AftWeights<float> w = random_weights<float>(2, n, n, 81);
  AftFull<float> f(w);
  AftFull<float>::State s(f, d, 1);
  EXPECT_EQ(s.limit(), n);
  Eigen::VectorXf q = Eigen::VectorXf::Ones(d), y(d), bad(5);
  for (Index t = 0; t < n; ++t) s.step(q, q, q, y);
  EXPECT_TRUE(throws_naming([&] { s.step(q, q, q, y); }, {"AftFull::State", "step 3 is past the bias's N = 3"}));
  EXPECT_EQ(s.steps(), n);
  s.reset();
  EXPECT_TRUE(throws_naming([&] { s.step(q, bad, q, y); }, {"AftFull::State", "k has 5 values", "D = 4"}));
  EXPECT_EQ(s.steps(), 0);
  EXPECT_TRUE(throws_naming([&] { AftFull<float>::State b(f, d, 2); }, {"head 2", "2 head slot(s)"}));
  EXPECT_TRUE(throws_naming([&] { AftLocal<float>::State b(AftLocal<float>(2), 0); }, {"AftLocal::State", "D = 0"}));
  // Without a bias there is no limit.
  AftLocal<float>::State free(AftLocal<float>(2), d);
  for (Index t = 0; t < 10; ++t) free.step(q, q, q, y);
  EXPECT_EQ(y, Eigen::VectorXf::Constant(d, 1.0f / (1.0f + std::exp(-1.0f))));  // equal keys: the values' mean, 1
}
