// The register-blocked packet kernels of core/microkernels.hpp against plain loops.
// kq_product and vp_product get small-integer inputs, so every product and partial sum is exact
// in float and double whatever the summation order: the results must then match exactly.
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include <softfree/core/microkernels.hpp>

#include "test_util.hpp"

namespace {

using softfree::Index;
using softfree::detail::AlignedBuffer;
using softfree::detail::kLanes;

template <class Acc>
class Microkernels : public ::testing::Test {};
using AccumulateTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(Microkernels, AccumulateTypes, softfree_test::TypeName);

// Integers in [-4, 4]: sums of up to 64 products stay below 2^11, exact in any float type.
template <class Acc>
AlignedBuffer<Acc> small_integers(Index n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> dist(-4, 4);
  AlignedBuffer<Acc> v(static_cast<size_t>(n));
  for (Acc& x : v) x = static_cast<Acc>(dist(gen));
  return v;
}

// bq from 1 to 3 packets, and past the kernels' 4-packet blocking (one full block + a tail).
template <class Acc>
std::vector<Index> query_widths() {
  const Index L = kLanes<Acc>;
  return {L, 2 * L, 3 * L, 4 * L, 5 * L};
}

TYPED_TEST(Microkernels, KqProductMatchesLoops) {
  using Acc = TypeParam;
  for (Index nk : {1, 3, 5, 17})
    for (Index depth : {1, 7, 64})
      for (Index bq : query_widths<Acc>()) {
        SCOPED_TRACE(::testing::Message() << "nk " << nk << ", depth " << depth << ", bq " << bq);
        const Index ldk = depth + 3;  // a leading dimension wider than the row
        const auto k = small_integers<Acc>(nk * ldk, 1);
        const auto qt = small_integers<Acc>(depth * bq, 2);
        AlignedBuffer<Acc> st(static_cast<size_t>(nk * bq + 1), Acc(-99));
        softfree::detail::kq_product(k.data(), ldk, nk, qt.data(), bq, depth, st.data());
        for (Index j = 0; j < nk; ++j)
          for (Index i = 0; i < bq; ++i) {
            Acc want = 0;
            for (Index d = 0; d < depth; ++d) want += k[static_cast<size_t>(j * ldk + d)] * qt[static_cast<size_t>(d * bq + i)];
            ASSERT_EQ(st[static_cast<size_t>(j * bq + i)], want) << "st(" << j << ", " << i << ")";
          }
        EXPECT_EQ(st.back(), Acc(-99)) << "wrote past nk x bq";
      }
}

TYPED_TEST(Microkernels, VpProductAccumulates) {
  using Acc = TypeParam;
  for (Index nj : {1, 3, 5, 17})
    for (Index dv : {1, 7, 64})
      for (Index bq : query_widths<Acc>()) {
        SCOPED_TRACE(::testing::Message() << "nj " << nj << ", dv " << dv << ", bq " << bq);
        const Index ldv = dv + 5;
        const auto v = small_integers<Acc>(nj * ldv, 3);
        const auto pt = small_integers<Acc>(nj * bq, 4);
        const auto ot0 = small_integers<Acc>(dv * bq + 1, 5);  // += onto existing values
        AlignedBuffer<Acc> ot = ot0;
        softfree::detail::vp_product(v.data(), ldv, nj, dv, pt.data(), bq, ot.data());
        for (Index d = 0; d < dv; ++d)
          for (Index i = 0; i < bq; ++i) {
            Acc want = ot0[static_cast<size_t>(d * bq + i)];
            for (Index j = 0; j < nj; ++j) want += v[static_cast<size_t>(j * ldv + d)] * pt[static_cast<size_t>(j * bq + i)];
            ASSERT_EQ(ot[static_cast<size_t>(d * bq + i)], want) << "ot(" << d << ", " << i << ")";
          }
        EXPECT_EQ(ot.back(), ot0.back()) << "wrote past dv x bq";
      }
}

// A packet function evaluated lane by lane over xs.
template <class F>
std::vector<float> per_lane(const std::vector<float>& xs, F f) {
  namespace ei = Eigen::internal;
  using P = softfree::detail::Packet<float>;
  constexpr Index L = kLanes<float>;
  std::vector<float> in = xs, out(xs.size() + L);
  in.resize(xs.size() + L, 0.f);
  for (size_t i = 0; i < xs.size(); i += L) ei::pstoreu(out.data() + i, f(ei::ploadu<P>(in.data() + i)));
  out.resize(xs.size());
  return out;
}

std::vector<float> packet_exp(const std::vector<float>& xs) {
  return per_lane(xs, [](const auto& x) { return softfree::detail::exp_nonpositive(x); });
}

std::vector<float> packet_exp2(const std::vector<float>& ts) {
  return per_lane(ts, [](const auto& t) { return softfree::detail::exp2_nonpositive(t); });
}

// The worst relative error of ys against want(x) over xs, and where it occurs.
template <class Want>
::testing::AssertionResult relative_error_at_most(const std::vector<float>& xs, const std::vector<float>& ys,
                                                  Want want, double bound) {
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const double w = want(static_cast<double>(xs[i]));
    const double rel = std::abs(static_cast<double>(ys[i]) - w) / w;
    if (!(rel <= worst)) worst = rel, at = i;
  }
  if (worst <= bound) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "relative error " << worst << " > " << bound << " at x = " << xs[at]
                                       << ": got " << ys[at] << ", want " << want(static_cast<double>(xs[at]));
}

TEST(ExpNonpositive, RelativeErrorOverFloatRange) {
  std::vector<float> xs;
  for (int i = 0; i <= 200000; ++i) xs.push_back(-87.f * static_cast<float>(i) / 200000.f);  // sweep [-87, 0]
  for (float x = -1e-3f; x < 0; x *= 0.5f) xs.push_back(x);  // tiny arguments down to subnormals
  EXPECT_TRUE(relative_error_at_most(xs, packet_exp(xs), [](double x) { return std::exp(x); }, 3e-7));
}

TEST(ExpNonpositive, EndPoints) {
  const std::vector<float> ys = packet_exp({0.f, -0.f, -88.f, -100.f, -1e4f, -std::numeric_limits<float>::max(),
                                            -std::numeric_limits<float>::infinity()});
  EXPECT_EQ(ys[0], 1.f);
  EXPECT_EQ(ys[1], 1.f);
  for (size_t i = 2; i < ys.size(); ++i) {
    EXPECT_GE(ys[i], 0.f) << "lane " << i;
    EXPECT_LE(ys[i], 2e-38f) << "lane " << i;  // documented: about 1e-38 below -87.3
  }
}

// exp2_nonpositive's error is the polynomial's alone (its argument is exact here): Cephes' exp2f
// is about 1 ulp, and 1 ulp of a float is at most 2^-23 = 1.2e-7 relative; 2.4e-7 allows 2 ulp.
// The sweep covers float's normal range, where 2^t is normal, and the slightly positive t that
// a shift folded into an FMA can leave.
TEST(Exp2Nonpositive, RelativeErrorOverNormalRange) {
  std::vector<float> ts;
  for (int i = 0; i <= 200000; ++i) ts.push_back(-126.f * static_cast<float>(i) / 200000.f);  // sweep [-126, 0]
  for (float t = -1e-3f; t < 0; t *= 0.5f) ts.push_back(t);  // tiny arguments down to subnormals
  for (float t = 1e-3f; t > 0; t *= 0.5f) ts.push_back(t);
  EXPECT_TRUE(relative_error_at_most(ts, packet_exp2(ts), [](double t) { return std::exp2(t); }, 2.4e-7));
}

TEST(Exp2Nonpositive, EndPoints) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> ys =
      packet_exp2({0.f, -0.f, -1.f, -126.f, -126.5f, -149.f, -1e4f, -std::numeric_limits<float>::max(), -inf,
                   std::numeric_limits<float>::quiet_NaN()});
  EXPECT_EQ(ys[0], 1.f);
  EXPECT_EQ(ys[1], 1.f);
  EXPECT_EQ(ys[2], 0.5f);
  EXPECT_EQ(ys[3], std::numeric_limits<float>::min());  // 2^-126: the fraction is 0, exact
  for (size_t i = 4; i < 9; ++i) EXPECT_EQ(ys[i], 0.f) << "lane " << i;  // documented: 0 below -126
  EXPECT_TRUE(std::isnan(ys[9])) << "a NaN argument must stay visible, got " << ys[9];
}

}  // namespace
