// SimA in its linear order Qn (Kn^T V). FLOPs: 4 N D^2 per head (K^T V and Q M, 2 N D^2 each;
// the column norms and the D x D rescale are O(N D) and not counted).
#include <softfree/sima.hpp>

#include "harness.hpp"

namespace {
using namespace softfree_bench;

SOFTFREE_BENCH_METHOD(Method{"sima", [](const Shape& s) { return 4.0 * s.B * s.H * s.N * s.D * s.D; }, benchmark::oN,
                             /*time_alloc=*/true, nullptr, /*tied_qk=*/false, /*bf16_products=*/true},
                      [](auto tag, const Shape&) { return softfree::SimA<typename decltype(tag)::type>{}; });
}  // namespace
