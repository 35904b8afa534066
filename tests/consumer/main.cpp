// Downstream smoke test: the umbrella header compiles warning-free under
// -Wall -Wextra -Wpedantic -Werror and the public API names resolve.
//
// EIGEN_USE_THREADS must come from the softfree target (CMake) or softfree.pc's Cflags (pkg-config),
// not from the consumer: Eigen's Tensor module, included here first, then already has the thread
// pool device softfree needs.
#ifndef EIGEN_USE_THREADS
#error "EIGEN_USE_THREADS is not defined: softfree's usage requirements did not reach the consumer"
#endif
#include <unsupported/Eigen/CXX11/Tensor>

#include <softfree/softfree.hpp>

#include <cmath>
#include <cstdio>

namespace {

template <class A, class B>
bool same_dims(const A& a, const B& b) {
  for (int i = 0; i < 4; ++i) {
    if (a.dimension(i) != b.dimension(i)) return false;
  }
  return true;
}

template <class A>
bool all_finite(const A& a) {
  for (Eigen::Index i = 0; i < a.size(); ++i) {
    if (!std::isfinite(static_cast<double>(a.data()[i]))) return false;
  }
  return true;
}

}  // namespace

int main() {
  softfree::Tensor4<float> q(1, 2, 5, 8), k(1, 2, 5, 8), v(1, 2, 5, 8);
  q.setRandom();
  k.setRandom();
  v.setRandom();

  softfree::SoftmaxAttention<float> attn;
  auto out = attn(q, k, v);

  auto any = softfree::make_attention<float>("softmax");
  auto out2 = any(q, k, v);

  if (!same_dims(out, v) || !same_dims(out2, v)) {
    std::fprintf(stderr, "consumer: wrong output dimensions\n");
    return 1;
  }
  if (!all_finite(out) || !all_finite(out2)) {
    std::fprintf(stderr, "consumer: non-finite output\n");
    return 1;
  }
  double max_diff = 0.0;
  for (Eigen::Index i = 0; i < out.size(); ++i) {
    max_diff = std::fmax(max_diff, std::fabs(static_cast<double>(out.data()[i]) -
                                             static_cast<double>(out2.data()[i])));
  }
  if (max_diff > 1e-5) {
    std::fprintf(stderr, "consumer: SoftmaxAttention and make_attention(\"softmax\") differ by %g\n",
                 max_diff);
    return 1;
  }
  std::printf("consumer OK (max |diff| = %g)\n", max_diff);
  return 0;
}
