// softfree quickstart: run attention over buffers you already own, without copying.
//
// Tensors are [B, H, N, D] (batch, heads, tokens, head dim), row-major: the memory
// layout of a contiguous PyTorch tensor or a C-order NumPy array. Wrap a buffer
// with Eigen::TensorMap and pass it straight in.
#include <softfree/softfree.hpp>

#include <cmath>
#include <cstddef>
#include <cstdio>
#include <vector>

int main() {
  constexpr Eigen::Index B = 1, H = 2, N = 7, D = 16;
  constexpr std::size_t count = static_cast<std::size_t>(B * H * N * D);

  // User-owned storage, e.g. filled by another library.
  std::vector<float> q_buf(count), k_buf(count), v_buf(count), out_buf(count);
  for (std::size_t i = 0; i < count; ++i) {
    const float x = static_cast<float>(i);
    q_buf[i] = std::sin(0.10f * x);
    k_buf[i] = std::cos(0.07f * x);
    v_buf[i] = std::sin(0.05f * x + 1.0f);
  }

  // Views over the buffers: no copies.
  Eigen::TensorMap<softfree::Tensor4<float>> q(q_buf.data(), B, H, N, D);
  Eigen::TensorMap<softfree::Tensor4<float>> k(k_buf.data(), B, H, N, D);
  Eigen::TensorMap<softfree::Tensor4<float>> v(v_buf.data(), B, H, N, D);
  softfree::View4<float> out_view(out_buf.data(), B, H, N, D);

  // 1. A concrete functor, write-into form: the result lands in out_buf.
  const softfree::SoftmaxAttention<float> attn;
  attn(q, k, v, out_view);

  std::printf("softmax attention, out[0, 0, 0, 0:8]:");
  for (std::size_t i = 0; i < 8; ++i) std::printf(" %.5f", static_cast<double>(out_buf[i]));
  std::printf("\n");

  // 2. Chosen at run time by name (e.g. from a config file); allocating form.
  const auto any = softfree::make_attention<float>("softmax");
  const softfree::Tensor4<float> out2 = any(q, k, v);

  double max_diff = 0.0;
  for (std::size_t i = 0; i < count; ++i) {
    max_diff = std::fmax(max_diff, std::fabs(static_cast<double>(out_buf[i]) -
                                             static_cast<double>(out2.data()[i])));
  }
  std::printf("make_attention(\"softmax\") agrees: max |diff| = %.3g\n", max_diff);
  return max_diff <= 1e-5 ? 0 : 1;
}
