// SoftmaxAttention, the baseline. FLOPs: 4 N^2 D per head (Q K^T and P V, 2 N^2 D each;
// the softmax's exp and sums are not counted).
#include "harness.hpp"

namespace {
using namespace softfree_bench;

SOFTFREE_BENCH_METHOD(Method{"softmax", [](const Shape& s) { return 4.0 * s.B * s.H * s.N * s.N * s.D; },
                             benchmark::oNSquared, /*time_alloc=*/true, nullptr, /*tied_qk=*/false,
                             /*bf16_products=*/true},
                      [](auto tag, const Shape&) { return softfree::SoftmaxAttention<typename decltype(tag)::type>{}; });
}  // namespace
