// SoftmaxKVCache: decoding causal softmax token by token or by chunks gives the rows of the
// causal batch call, bitwise (the cache runs the batch path's flash block over the same key tiles),
// and the double reference's rows within the storage type's tolerance; bad input throws and
// leaves the cache as it was.
#include <cstring>
#include <vector>

#include "reference/softmax_ref.hpp"
#include "test_util.hpp"

namespace {

using namespace softfree_test;
using softfree::SoftmaxAttention;
using softfree::SoftmaxKVCache;

template <class T>
class SoftmaxCache : public ::testing::Test {};
TYPED_TEST_SUITE(SoftmaxCache, StorageTypes, TypeName);

// Feeds one head (b = 0, h) of q, k, v to a cache in chunks of the given sizes; returns the rows
// it gave, as a [1, 1, N, D] tensor.
template <class T>
Tensor4<T> decode(SoftmaxKVCache<T>& cache, const Tensor4<T>& q, const Tensor4<T>& k, const Tensor4<T>& v, Index h,
                  const std::vector<Index>& chunks) {
  const Index n = q.dimension(2), d = q.dimension(3);
  Tensor4<T> y(1, 1, n, d);
  Index t = 0;
  for (std::size_t i = 0; t < n; ++i) {
    const Index m = std::min(n - t, chunks[std::min(i, chunks.size() - 1)]);
    const Index at = (h * n + t) * d;
    cache.append(k.data() + at, v.data() + at, m);
    cache.attend(q.data() + at, y.data() + t * d, m);
    t += m;
  }
  return y;
}

template <class T>
Tensor4<T> head_of(const Tensor4<T>& x, Index h) {
  const Index n = x.dimension(2), d = x.dimension(3);
  Tensor4<T> y(1, 1, n, d);
  std::copy(x.data() + h * n * d, x.data() + (h + 1) * n * d, y.data());
  return y;
}

}  // namespace

// N = 150 crosses a 64-query block and the 128-key tile; chunks of 1 (decoding), 7 and 64 then
// 1 (a prefill, then decoding), and one chunk of everything. Every head of the batch call.
TYPED_TEST(SoftmaxCache, RowsAreTheCausalBatchRows) {
  using T = TypeParam;
  for (const Index d : {7, 8, 64}) {
    const Index n = 150, heads = 2;
    const auto q = random_tensor<T>(1, heads, n, d, 21, -2, 2), k = random_tensor<T>(1, heads, n, d, 22, -2, 2),
               v = random_tensor<T>(1, heads, n, d, 23);
    SoftmaxAttention<T> attn;
    attn.causal = true;
    const Tensor4<T> batch = attn(q, k, v);
    const auto ref = softfree_ref::softmax_attention(to_ref(q), to_ref(k), to_ref(v), 1.0 / std::sqrt(double(d)),
                                                     true, {});
    for (const std::vector<Index>& chunks : std::vector<std::vector<Index>>{{1}, {7}, {64, 1}, {n}}) {
      SoftmaxKVCache<T> cache(attn, d);
      for (Index h = 0; h < heads; ++h) {
        SCOPED_TRACE(testing::Message() << "D=" << d << " head " << h << " first chunk " << chunks[0]);
        cache.clear();
        cache.reserve(n);
        const Tensor4<T> y = decode(cache, q, k, v, h, chunks);
        EXPECT_EQ(cache.size(), n);
        EXPECT_TRUE(bitwise_equal(y, head_of(batch, h)));
        softfree_ref::Tensor ref_h(1, 1, n, d);
        for (Index i = 0; i < n * d; ++i) ref_h.data[static_cast<size_t>(i)] = ref.data[static_cast<size_t>(h * n * d + i)];
        EXPECT_TRUE(close_to_ref_rows(y, ref_h, tolerance<T>()));
      }
    }
  }
}

// The scale and the math policy come from the functor; clear() starts a new sequence (the same
// length as the last, so a cache that kept packed pairs keyed on lengths would reuse them).
TYPED_TEST(SoftmaxCache, ScaleAndClear) {
  using T = TypeParam;
  const Index n = 40, d = 16;
  SoftmaxAttention<T> attn;
  attn.causal = true;
  attn.scale = 0.3;
  SoftmaxKVCache<T> cache(attn, d);
  cache.reserve(n);
  for (unsigned seed : {31u, 41u}) {
    const auto q = random_tensor<T>(1, 1, n, d, seed), k = random_tensor<T>(1, 1, n, d, seed + 1),
               v = random_tensor<T>(1, 1, n, d, seed + 2);
    cache.clear();
    EXPECT_TRUE(bitwise_equal(decode(cache, q, k, v, 0, {n}), attn(q, k, v))) << seed;
  }
}

// truncate() rolls back: decoding past it again with other tokens (the same count, so a cache
// keyed on lengths would reuse what it packed) gives the batch rows of the new sequence.
TYPED_TEST(SoftmaxCache, TruncateRollsBack) {
  using T = TypeParam;
  const Index n = 70, d = 16, keep = 50;
  SoftmaxAttention<T> attn;
  attn.causal = true;
  const auto q = random_tensor<T>(1, 1, n, d, 51), k = random_tensor<T>(1, 1, n, d, 52), v = random_tensor<T>(1, 1, n, d, 53);
  auto k2 = k, v2 = v;
  for (Index i = keep * d; i < n * d; ++i) k2.data()[i] = k.data()[i - 7], v2.data()[i] = v.data()[i - 11];
  SoftmaxKVCache<T> cache(attn, d);
  cache.reserve(n);
  decode(cache, q, k, v, 0, {1});
  cache.truncate(keep);
  EXPECT_EQ(cache.size(), keep);
  Tensor4<T> y(1, 1, n, d);
  const Tensor4<T> batch = attn(q, k2, v2);
  cache.append(k2.data() + keep * d, v2.data() + keep * d, n - keep);
  cache.attend(q.data() + keep * d, y.data() + keep * d, n - keep);
  EXPECT_EQ(std::memcmp(y.data() + keep * d, batch.data() + keep * d, sizeof(T) * (n - keep) * d), 0);
  EXPECT_TRUE(throws_naming([&] { cache.truncate(n + 1); }, {"truncate(71) at size 70"}));
}

TEST(SoftmaxCacheErrors, BadInputChangesNothing) {
  const Index d = 4;
  SoftmaxKVCache<float> cache(d);
  const std::vector<float> k(3 * d, 0.5f), v(3 * d, 1.0f), q(3 * d, 0.25f);
  std::vector<float> y(3 * d, -7.0f);
  EXPECT_TRUE(throws_naming([&] { cache.append(k.data(), v.data()); }, {"SoftmaxKVCache", "capacity 0", "reserve()"}));
  cache.reserve(2);
  cache.append(k.data(), v.data(), 2);
  EXPECT_TRUE(throws_naming([&] { cache.append(k.data(), v.data()); }, {"at size 2 with capacity 2"}));
  EXPECT_TRUE(throws_naming([&] { cache.append(k.data(), v.data(), 0); }, {"append of 0 token(s)"}));
  EXPECT_EQ(cache.size(), 2);
  EXPECT_TRUE(throws_naming([&] { cache.attend(q.data(), y.data(), 3); }, {"attend of 3 queries at size 2"}));
  EXPECT_EQ(y[0], -7.0f);
  // Vectors of the wrong D.
  const Eigen::VectorXf k5 = Eigen::VectorXf::Ones(5), q4 = Eigen::VectorXf::Ones(4);
  Eigen::VectorXf y3(3);
  cache.reserve(3);
  EXPECT_TRUE(throws_naming([&] { cache.append(k5, q4); }, {"k has 5 values but the cache has D = 4"}));
  EXPECT_TRUE(throws_naming([&] { cache.attend(q4, y3); }, {"y has 3 values"}));
  EXPECT_EQ(cache.size(), 2);
  // Still the same cache: two equal keys, so the last query's output is the values' mean, 1.
  Eigen::VectorXf y4(4);
  cache.attend(q4, y4);
  EXPECT_EQ(y4, Eigen::VectorXf::Ones(4));
  EXPECT_TRUE(throws_naming([&] { cache.reserve(-1); }, {"reserve(-1)"}));
  EXPECT_TRUE(throws_naming([] { SoftmaxKVCache<float> c(0); }, {"D = 0"}));
  SoftmaxAttention<float> bad;
  bad.scale = -1.0;
  EXPECT_TRUE(throws_naming([&] { SoftmaxKVCache<float> c(bad, 4); }, {"SoftmaxKVCache", "scale"}));
  bad.scale.reset();
  softfree::Tensor4<float> bias(1, 1, 4, 4);
  bias.setZero();
  bad.set_bias(bias);
  EXPECT_TRUE(throws_naming([&] { SoftmaxKVCache<float> c(bad, 4); }, {"SoftmaxKVCache", "bias"}));
  bad.clear_bias();
  bad.math = static_cast<softfree::Math>(7);
  EXPECT_TRUE(throws_naming([&] { SoftmaxKVCache<float> c(bad, 4); }, {"math = 7"}));
}
