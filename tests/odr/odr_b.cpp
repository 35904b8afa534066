// ODR check, translation unit B: the same header and instantiation as odr_a.cpp.
#include <softfree/softfree.hpp>

#include <cmath>

int odr_b() {
  softfree::Tensor4<float> q(1, 1, 2, 4);
  for (Eigen::Index i = 0; i < q.size(); ++i) {
    q.data()[i] = 0.5f - 0.125f * static_cast<float>(i);
  }
  const softfree::Tensor4<float> out = softfree::SoftmaxAttention<float>{}(q, q, q);
  if (out.size() != q.size()) return 1;
  for (Eigen::Index i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out.data()[i])) return 1;
  }
  return 0;
}
