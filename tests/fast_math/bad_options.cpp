// The option checks of a consumer built with -ffast-math (ctest fast_math_*): there the compiler
// may assume no NaN or Inf exists, so a check written with std::isfinite or x != x would fold
// away and accept them. The bad values come through a volatile so that they are run-time values
// here as they are in a consumer.
#include <cstdint>
#include <cstring>
#include <limits>

#include "test_util.hpp"

namespace {

using namespace softfree_test;

volatile double nan_value = std::numeric_limits<double>::quiet_NaN();
volatile double inf_value = std::numeric_limits<double>::infinity();

TEST(FastMath, NonFiniteOptionsAreRejected) {
  const auto q = random_tensor<float>(1, 2, 8, 4, 1);
  for (double bad : {double(nan_value), double(inf_value), -double(inf_value)}) {
    SCOPED_TRACE(bad);
    softfree::SoftmaxAttention<float> softmax;
    softmax.scale = bad;
    EXPECT_TRUE(throws_naming([&] { softmax(q, q, q); }, {"SoftmaxAttention", "scale"}));
    softfree::SimA<float> sima;
    sima.eps = bad;
    EXPECT_TRUE(throws_naming([&] { sima(q, q, q); }, {"SimA", "eps"}));
    softfree::SoftNystrom<float> nystrom;
    nystrom.landmarks = softfree::Landmarks::segments(4);
    nystrom.newton.lambda = bad;
    EXPECT_TRUE(throws_naming([&] { nystrom(q, q, q); }, {"SoftNystrom", "lambda"}));
    nystrom.newton.lambda = 0;
    nystrom.newton.tolerance = bad;
    EXPECT_TRUE(throws_naming([&] { nystrom(q, q, q); }, {"SoftNystrom", "tolerance"}));
  }
}

TEST(FastMath, NonFiniteBiasIsRejected) {
  for (double bad : {double(nan_value), double(inf_value)}) {
    softfree::AftWeights<float> w(1, 8, 8);
    w.setZero();
    w(0, 2, 5) = static_cast<float>(bad);
    EXPECT_TRUE(throws_naming([&] { softfree::AftFull<float>{}.set_bias(w); }, {"w", "non-finite"})) << bad;
    EXPECT_TRUE(throws_naming([&] { (void)softfree::AftLocal<float>(2, w); }, {"AftLocal", "non-finite"})) << bad;
  }
}

// SoftmaxAttention's bias: NaN and +inf rejected by set_bias, -inf accepted; a row masked by -inf
// entries gives zeros (the kernel's running max is never -inf, so no -inf - -inf under
// -ffast-math either), the other rows stay finite.
TEST(FastMath, SoftmaxBiasEntries) {
  const float nan = static_cast<float>(nan_value), inf = static_cast<float>(inf_value);
  for (float bad : {nan, inf}) {
    softfree::Tensor4<float> b(1, 1, 8, 8);
    b.setZero();
    b(0, 0, 2, 5) = bad;
    softfree::SoftmaxAttention<float> softmax;
    EXPECT_TRUE(throws_naming([&] { softmax.set_bias(b); }, {"SoftmaxAttention", "bias"})) << bad;
  }
  softfree::Tensor4<float> b(1, 1, 8, 8);
  b.setZero();
  for (Index j = 0; j < 8; ++j) b(0, 0, 3, j) = -inf;
  softfree::SoftmaxAttention<float> softmax;
  softmax.set_bias(b);
  const auto q = random_tensor<float>(1, 2, 8, 4, 2);
  const auto out = softmax(q, q, q);
  for (Index h = 0; h < 2; ++h)
    for (Index i = 0; i < 8; ++i)
      for (Index c = 0; c < 4; ++c) {
        const float x = out(0, h, i, c);
        std::uint32_t bits;
        std::memcpy(&bits, &x, sizeof bits);
        EXPECT_NE(bits >> 23 & 0xff, 0xffu) << "non-finite output at row " << i;  // by the bits: no isfinite here
        if (i == 3) {
          EXPECT_EQ(bits << 1, 0u) << "masked row 3 is not zero";
        }
      }
}

}  // namespace

// Option values written in a name: "nan" and "inf" parse as doubles, and the range checks must
// still see them under -ffast-math.
TEST(FastMath, NonFiniteValuesInNamesAreRejected) {
  for (const char* name : {"softmax:scale=nan", "softmax:scale=inf", "sima:eps=nan", "soft-nystrom:lambda=inf",
                           "soft-nystrom:tolerance=nan"})
    EXPECT_TRUE(throws_naming([&] { softfree::make_attention<float>(name); }, {"make_attention", "a finite number"}))
        << name;
}
