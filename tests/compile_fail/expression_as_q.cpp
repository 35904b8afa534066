// Must not compile (ctest compile_fail_expression_as_q): a tensor expression passed as q. The
// test passes when the compiler gives softfree's own message, not an error deep in a trait.
#include <softfree/softfree.hpp>

int main() {
  const softfree::Tensor4<float> q(1, 1, 4, 8);
  const softfree::SoftmaxAttention<float> attn;
  const softfree::Tensor4<float> out = attn(q * 2.0f, q, q);
  return static_cast<int>(out.size());
}
