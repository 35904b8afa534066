// ODR check, translation unit A: includes the umbrella header and instantiates the
// softmax baseline. Linking with odr_b.cpp fails if a header defines a non-inline
// function or variable.
#include <softfree/softfree.hpp>

#include <cmath>

int odr_a() {
  softfree::Tensor4<float> q(1, 1, 2, 4);
  for (Eigen::Index i = 0; i < q.size(); ++i) {
    q.data()[i] = 0.25f * static_cast<float>(i) - 0.5f;
  }
  const softfree::Tensor4<float> out = softfree::SoftmaxAttention<float>{}(q, q, q);
  if (out.size() != q.size()) return 1;
  for (Eigen::Index i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out.data()[i])) return 1;
  }
  return 0;
}
