// SOFT: SoftGaussian (exact, O(N^2)) and SoftNystrom (m = 49 and 64 Segments landmarks, 20 Newton
// steps, O(N)).
//
// SOFT ties K to Q (SPEC.md "SOFT"), so the suite times the tied call f(q, q, v), as the paper
// and its code run it; soft-nystrom-m49-untied times separate q and k for comparison.
//
// FLOPs per head (multiply-add = 2; exp, norms and the landmark pooling not counted):
// - soft-gaussian: 4 N^2 D (the distance product Q K^T and the weighted sum P V, 2 N^2 D each).
// - soft-nystrom-m<m>, tied: 6 N m D + 2 m^2 D + 60 m^3, counting
//     2 N m D  P = k(Q, Qt) distances (R = P^T)
//     2 m N D  R V = P^T V                2 N m D  P Y, Y = pinv(A) (R V)
//     2 m^2 D  pinv(A) (R V)              60 m^3   Newton, 20 steps of P V (2 m^3) and the
//                                                  symmetric V (P V), about half of 2 m^3
//   (left out: A = k(Qt, Qt), 2 m^2 D; the residual product, 2 m^3).
// - soft-nystrom-m49-untied: 8 N m D + 2 m^2 D + 80 m^3: R = k(Qt, K) has its own distances, and
//   A is not symmetric, so both Newton products are whole.
#include <softfree/soft.hpp>

#include "harness.hpp"

namespace {
using namespace softfree_bench;

double nystrom_flops(const Shape& s, double m, bool tied) {
  const double n = static_cast<double>(s.N), d = static_cast<double>(s.D);
  return static_cast<double>(s.B * s.H) * ((tied ? 6 : 8) * n * m * d + 2 * m * m * d + (tied ? 60 : 80) * m * m * m);
}

template <int M>
auto nystrom = [](auto tag, const Shape&) {
  softfree::SoftNystrom<typename decltype(tag)::type> f;
  f.landmarks = softfree::Landmarks::segments(M);
  return f;
};

SOFTFREE_BENCH_METHOD(Method{"soft-gaussian", [](const Shape& s) { return 4.0 * s.B * s.H * s.N * s.N * s.D; },
                             benchmark::oNSquared, /*time_alloc=*/false, nullptr, /*tied_qk=*/true, /*bf16_products=*/true},
                      [](auto tag, const Shape&) { return softfree::SoftGaussian<typename decltype(tag)::type>{}; });

SOFTFREE_BENCH_METHOD(Method{"soft-nystrom-m49", [](const Shape& s) { return nystrom_flops(s, 49, true); },
                             benchmark::oN, /*time_alloc=*/false, nullptr, /*tied_qk=*/true, /*bf16_products=*/true},
                      nystrom<49>);

SOFTFREE_BENCH_METHOD(Method{"soft-nystrom-m64", [](const Shape& s) { return nystrom_flops(s, 64, true); },
                             benchmark::oN, /*time_alloc=*/false, nullptr, /*tied_qk=*/true, /*bf16_products=*/true},
                      nystrom<64>);

SOFTFREE_BENCH_METHOD(Method{"soft-nystrom-m49-untied", [](const Shape& s) { return nystrom_flops(s, 49, false); },
                             benchmark::oN, /*time_alloc=*/false, nullptr, /*tied_qk=*/false, /*bf16_products=*/true},
                      nystrom<49>);
}  // namespace
