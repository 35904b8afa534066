// SOFT: SoftGaussian (exact, O(N^2)) and SoftNystrom (m = 49 and 64 Segments landmarks, 20 Newton
// steps, O(N)).
//
// FLOPs per head (multiply-add = 2; exp, norms and the landmark pooling not counted):
// - soft-gaussian: 4 N^2 D (the distance product Q K^T and the weighted sum P V, 2 N^2 D each).
// - soft-nystrom-m<m>: 8 N m D + 2 m^2 D + 80 m^3, counting
//     2 N m D  P = k(Q, Kt) distances     2 m N D  R = k(Qt, K) distances
//     2 m N D  R V                        2 N m D  P Y, Y = pinv(A) (R V)
//     2 m^2 D  pinv(A) (R V)              80 m^3   Newton, 20 steps of two m x m x m products
//   (left out: A = k(Qt, Kt), 2 m^2 D; the residual product, 2 m^3).
#include <softfree/soft.hpp>

#include "harness.hpp"

namespace {
using namespace softfree_bench;

double nystrom_flops(const Shape& s, double m) {
  const double n = static_cast<double>(s.N), d = static_cast<double>(s.D);
  return static_cast<double>(s.B * s.H) * (8 * n * m * d + 2 * m * m * d + 80 * m * m * m);
}

SOFTFREE_BENCH_METHOD(Method{"soft-gaussian", [](const Shape& s) { return 4.0 * s.B * s.H * s.N * s.N * s.D; },
                             benchmark::oNSquared, /*time_alloc=*/false, nullptr},
                      [](auto tag, const Shape&) { return softfree::SoftGaussian<typename decltype(tag)::type>{}; });

SOFTFREE_BENCH_METHOD(Method{"soft-nystrom-m49", [](const Shape& s) { return nystrom_flops(s, 49); }, benchmark::oN,
                             /*time_alloc=*/false, nullptr},
                      [](auto tag, const Shape&) {
                        softfree::SoftNystrom<typename decltype(tag)::type> f;
                        f.landmarks = softfree::Landmarks::segments(49);
                        return f;
                      });

SOFTFREE_BENCH_METHOD(Method{"soft-nystrom-m64", [](const Shape& s) { return nystrom_flops(s, 64); }, benchmark::oN,
                             /*time_alloc=*/false, nullptr},
                      [](auto tag, const Shape&) {
                        softfree::SoftNystrom<typename decltype(tag)::type> f;
                        f.landmarks = softfree::Landmarks::segments(64);
                        return f;
                      });
}  // namespace
