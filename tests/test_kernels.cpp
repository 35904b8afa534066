// The kernel layer (core/kernels/) against plain loops: the register-blocked gemm with every
// addressing and epilogue policy and every tail (whole blocks, a narrower block of packets, half
// packets, scalars; leftover rows), gemm_dot, and the exponential family.
// The products get small-integer inputs, so every product and partial sum is exact in float and
// double whatever the summation order: the results must then match exactly.
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include <softfree/core/kernels/gemm.hpp>
#include <softfree/core/kernels/math.hpp>

#include "test_util.hpp"

namespace {

using softfree::Index;
using softfree::detail::AlignedBuffer;
using softfree::detail::kLanes;
namespace sd = softfree::detail;

template <class Acc>
class Kernels : public ::testing::Test {};
using AccumulateTypes = ::testing::Types<float, double>;
TYPED_TEST_SUITE(Kernels, AccumulateTypes, softfree_test::TypeName);

// Integers in [-4, 4]: sums of up to 64 products stay below 2^11, exact in any float type.
template <class Acc>
AlignedBuffer<Acc> small_integers(Index n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> dist(-4, 4);
  AlignedBuffer<Acc> v(static_cast<size_t>(n));
  for (Acc& x : v) x = static_cast<Acc>(dist(gen));
  return v;
}

// Columns from one lane to past two 4-packet blocks, through every remainder: a narrower block of
// whole packets, half packets and single lanes.
template <class Acc>
std::vector<Index> widths() {
  const Index L = kLanes<Acc>;
  return {1, 3, L, L + 1, 2 * L + 3, 3 * L, 4 * L, 5 * L + 1, 9 * L - 1};
}

// C (rows x cols, ldc) against plain loops over a(r, t) b(t, c), for one policy combination.
template <class Acc, class Tiling, class A, class B, class AOf, class BOf>
void check_gemm(Index rows, Index cols, Index depth, const A& a, const B& b, const AOf& a_of, const BOf& b_of,
                bool add) {
  const Index ldc = cols + 2;
  const auto c0 = small_integers<Acc>(rows * ldc + 1, 9);
  AlignedBuffer<Acc> c = c0;
  if (add)
    sd::gemm<Tiling>(rows, cols, depth, a, b, sd::AddC<Acc>{c.data(), ldc});
  else
    sd::gemm<Tiling>(rows, cols, depth, a, b, sd::StoreC<Acc>{c.data(), ldc});
  for (Index r = 0; r < rows; ++r)
    for (Index j = 0; j < ldc; ++j) {
      Acc want = add || j >= cols ? c0[static_cast<size_t>(r * ldc + j)] : Acc(0);
      for (Index t = 0; j < cols && t < depth; ++t) want += a_of(r, t) * b_of(t, j);
      ASSERT_EQ(c[static_cast<size_t>(r * ldc + j)], want) << "c(" << r << ", " << j << ")";
    }
  EXPECT_EQ(c.back(), c0.back()) << "wrote past C";
}

TYPED_TEST(Kernels, GemmRowMajorAndTransposedA) {
  using Acc = TypeParam;
  for (Index rows : {1, 3, 6, 13})
    for (Index depth : {1, 7, 64})
      for (Index cols : widths<Acc>()) {
        SCOPED_TRACE(::testing::Message() << "rows " << rows << ", depth " << depth << ", cols " << cols);
        const Index lda = depth + 3, ldb = cols + 5;  // leading dimensions wider than the rows
        const auto a = small_integers<Acc>(rows * lda, 1), at = small_integers<Acc>(depth * (rows + 1), 2);
        const auto b = small_integers<Acc>(depth * ldb, 3);
        const auto b_of = [&](Index t, Index j) { return b[static_cast<size_t>(t * ldb + j)]; };
        check_gemm<Acc, sd::GeneralTiling>(rows, cols, depth, sd::StridedA<Acc>{a.data(), lda, 1}, sd::RowsB<Acc>{b.data(), ldb},
                                           [&](Index r, Index t) { return a[static_cast<size_t>(r * lda + t)]; }, b_of, false);
        // A as the transpose of a row-major depth x (rows + 1) matrix, accumulating, square tiling.
        check_gemm<Acc, sd::Tiling<4, 4>>(rows, cols, depth, sd::StridedA<Acc>{at.data(), 1, rows + 1},
                                          sd::RowsB<Acc>{b.data(), ldb},
                                          [&](Index r, Index t) { return at[static_cast<size_t>(t * (rows + 1) + r)]; },
                                          b_of, true);
      }
}

TYPED_TEST(Kernels, GemmPackedAAndTableB) {
  using Acc = TypeParam;
  constexpr int MR = 6;
  for (Index depth : {1, 5, 128})
    for (Index cols : widths<Acc>()) {
      SCOPED_TRACE(::testing::Message() << "depth " << depth << ", cols " << cols);
      const auto a = small_integers<Acc>(depth * MR, 4), b = small_integers<Acc>(depth * (cols + 7), 5);
      std::vector<const Acc*> rows(static_cast<size_t>(depth));
      for (Index t = 0; t < depth; ++t) rows[static_cast<size_t>(t)] = b.data() + ((t * 5) % depth) * (cols + 7);
      check_gemm<Acc, sd::Tiling<4, MR>>(MR, cols, depth, sd::PackedA<Acc, MR>{a.data()},
                                         sd::RowsB<Acc>{b.data(), cols + 7},
                                         [&](Index r, Index t) { return a[static_cast<size_t>(t * MR + r)]; },
                                         [&](Index t, Index j) { return b[static_cast<size_t>(t * (cols + 7) + j)]; }, true);
      // One row against rows anywhere (AFT's windows), 8-packet blocks.
      check_gemm<Acc, sd::Tiling<8, 1>>(1, cols, depth, sd::StridedA<Acc>{a.data(), 0, 1}, sd::TableB<Acc>{rows.data(), 0},
                                        [&](Index, Index t) { return a[static_cast<size_t>(t)]; },
                                        [&](Index t, Index j) { return rows[static_cast<size_t>(t)][j]; }, false);
    }
}

TYPED_TEST(Kernels, GemmDotMatchesLoops) {
  using Acc = TypeParam;
  for (Index rows : {1, 4, 7})
    for (Index cols : {1, 2, 5})
      for (Index depth : {Index(1), Index(3), kLanes<Acc>, 2 * kLanes<Acc> + 5}) {
        SCOPED_TRACE(::testing::Message() << "rows " << rows << ", cols " << cols << ", depth " << depth);
        const auto a = small_integers<Acc>(rows * (depth + 1), 6), b = small_integers<Acc>(cols * (depth + 2), 7);
        AlignedBuffer<Acc> c(static_cast<size_t>(rows * cols + 1), Acc(-99));
        sd::gemm_dot(rows, cols, depth, a.data(), depth + 1, b.data(), depth + 2, sd::StoreC<Acc>{c.data(), cols});
        for (Index r = 0; r < rows; ++r)
          for (Index j = 0; j < cols; ++j) {
            Acc want = 0;
            for (Index t = 0; t < depth; ++t)
              want += a[static_cast<size_t>(r * (depth + 1) + t)] * b[static_cast<size_t>(j * (depth + 2) + t)];
            ASSERT_EQ(c[static_cast<size_t>(r * cols + j)], want) << "c(" << r << ", " << j << ")";
          }
        EXPECT_EQ(c.back(), Acc(-99));
      }
}

TEST(Kernels, IsaIsNamed) {
  const std::string isa = softfree::kernel_isa();
  EXPECT_FALSE(isa.empty());
  EXPECT_EQ(isa.find("isa_"), std::string::npos);
  std::printf("kernels compiled for %s (backend %s)\n", isa.c_str(), sd::Backend::kName);
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

// The scalar lanes (column tails) follow the packet path's contract.
TEST(Exp2Nonpositive, ScalarLanes) {
  EXPECT_EQ(sd::exp2_nonpositive(0.f), 1.f);
  EXPECT_EQ(sd::exp2_nonpositive(-1.f), 0.5f);
  EXPECT_EQ(sd::exp2_nonpositive(-127.f), 0.f);
  EXPECT_EQ(sd::exp2_nonpositive(-std::numeric_limits<float>::infinity()), 0.f);
  EXPECT_EQ(sd::exp2_nonpositive(-2000.0), 0.0);
  EXPECT_NEAR(sd::exp2_nonpositive(-10.5), std::exp2(-10.5), 1e-15 * std::exp2(-10.5));
}

// scale * sigma(q) without overflow: the reference is the double logistic function. Results
// below float's normal range (q below about -87, where e^q < 1.2e-38) may flush to zero, hence
// the absolute floor of 4 FLT_MIN beside the relative bound: about 3 ulp (exp2, one reciprocal
// step, two roundings), plus the rounding of the exponent -|q| log2 e, which perturbs e^-|q| by
// up to |q| log2(e) u relative (u = 2^-24): 1e-5 at |q| = 87.
TEST(ScaledSigmoid, AccurateOverTheRange) {
  std::vector<float> qs;
  for (int i = -4000; i <= 4000; ++i) qs.push_back(static_cast<float>(i) * 0.025f);
  for (float q : {-1e30f, -200.f, 200.f, 1e30f}) qs.push_back(q);
  const auto ys = per_lane(qs, [](const auto& q) {
    using P = std::decay_t<decltype(q)>;
    return sd::scaled_sigmoid(q, Eigen::internal::pset1<P>(3.f));
  });
  for (size_t i = 0; i < qs.size(); ++i) {
    const double want = 3.0 / (1.0 + std::exp(-static_cast<double>(qs[i])));
    const double rel = 4e-7 + std::abs(static_cast<double>(qs[i])) * 1.4426950408889634 * 0x1p-24;
    ASSERT_NEAR(ys[i], want, rel * want + 4 * std::numeric_limits<float>::min()) << "q = " << qs[i];
  }
}

}  // namespace
