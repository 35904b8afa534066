// AFT: full, local (s = 32), simple and conv (7 x 7). Learned parameters are random in [-1, 1]
// (one shared N x N bias for aft-full; a shared band for aft-local; one kernel per head for
// aft-conv). FLOPs per head (exponentials, sigmoids and the O(N D) prefix sums are not counted):
//   aft-full:      4 N^2 D         (exp(w), N x N, times [e^K V, e^K], N x 2D)
//   aft-local-s32: 4 N (2s - 1) D  (each row's window of 2s - 1 keys against its 2D columns)
//   aft-simple:    6 N D           (e^K V, the num and den sums; sigma(Q) * num / den: add,
//                                   reciprocal, multiply)
//   aft-conv-7x7:  4 N kh kw D     (each token's kh x kw window against its 2D columns)
#include <cmath>
#include <random>

#include <softfree/aft.hpp>

#include "harness.hpp"

namespace {
using namespace softfree_bench;

constexpr Index kWindow = 32, kKernel = 7;

template <class T>
softfree::AftWeights<T> random_weights(Index slots, Index rows, Index cols) {
  std::mt19937 gen(7);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  softfree::AftWeights<T> w(slots, rows, cols);
  for (Index i = 0; i < w.size(); ++i) w.data()[i] = static_cast<softfree::accum_t<T>>(dist(gen));
  return w;
}

double per_head(const Shape& s) { return static_cast<double>(s.B * s.H * s.N * s.D); }

// The N x N bias and its cached exp are 64 MB each at N = 4096 and 1 GB at N = 16384 (where one
// call is 0.4 TFLOP): the quadratic method stops at 4096.
SOFTFREE_BENCH_METHOD(Method{"aft-full", [](const Shape& s) { return 4.0 * per_head(s) * static_cast<double>(s.N); },
                             benchmark::oNSquared, /*time_alloc=*/false, [](const Shape& s) { return s.N <= 4096; },
                             /*tied_qk=*/false, /*bf16_products=*/true},
                      [](auto tag, const Shape& s) {
                        using T = typename decltype(tag)::type;
                        return softfree::AftFull<T>(random_weights<T>(1, s.N, s.N));
                      });

SOFTFREE_BENCH_METHOD(Method{"aft-local-s32",
                             [](const Shape& s) { return 4.0 * per_head(s) * static_cast<double>(2 * kWindow - 1); },
                             benchmark::oN, /*time_alloc=*/false, nullptr},
                      [](auto tag, const Shape& s) {
                        using T = typename decltype(tag)::type;
                        softfree::AftLocal<T> f;
                        f.set_band_bias(random_weights<T>(1, s.N, 2 * kWindow - 1));
                        return f;
                      });

SOFTFREE_BENCH_METHOD(Method{"aft-simple", [](const Shape& s) { return 6.0 * per_head(s); }, benchmark::oN,
                             /*time_alloc=*/false, nullptr},
                      [](auto tag, const Shape&) { return softfree::AftSimple<typename decltype(tag)::type>{}; });

// The grid is square (rows = cols = sqrt(N)): only N = 1024, 4096, 16384 of the suite.
SOFTFREE_BENCH_METHOD(Method{"aft-conv-7x7",
                             [](const Shape& s) { return 4.0 * per_head(s) * static_cast<double>(kKernel * kKernel); },
                             benchmark::oN, /*time_alloc=*/false,
                             [](const Shape& s) {
                               const auto r = static_cast<Index>(std::llround(std::sqrt(static_cast<double>(s.N))));
                               return r * r == s.N;
                             }},
                      [](auto tag, const Shape& s) {
                        using T = typename decltype(tag)::type;
                        return softfree::AftConv<T>(random_weights<T>(s.H, kKernel, kKernel));
                      });
}  // namespace
