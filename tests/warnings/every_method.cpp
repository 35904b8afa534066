// Warning-free consumer check (ctest warnings_march_native): a translation unit that includes
// only the umbrella header and instantiates and calls every method in Eigen::half,
// Eigen::bfloat16 and float, in both call forms, plus every name make_attention knows. It is
// compiled with exactly -O2 -march=native -Wall -Wextra -Wpedantic -Werror (tests/CMakeLists.txt),
// so any warning the headers cause in a consumer's optimised, vectorised build fails the test.
// At run time it checks every output is finite and returns non-zero otherwise.
// It defines EIGEN_USE_THREADS itself first, as Eigen's documentation tells users to: that must
// agree with the definition the softfree target gives (no redefinition warning).
#define EIGEN_USE_THREADS
#include <softfree/softfree.hpp>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace {

using softfree::Index;
using softfree::Tensor4;

// N = 64 = 8 x 8: square for AftConv's default grid and >= the 49 landmarks SoftNystrom (and so
// make_attention("soft-nystrom")) takes by default.
constexpr Index kB = 1, kH = 2, kN = 64, kD = 16;

int g_failures = 0;

/// Deterministic values in [-1, 1] (plus `near` times a second pattern), rounded to T.
template <class T>
Tensor4<T> input(double phase, double near = 0.0) {
  Tensor4<T> t(kB, kH, kN, kD);
  for (Index i = 0; i < t.size(); ++i) {
    const double x = static_cast<double>(i);
    t.data()[i] = static_cast<T>(std::sin(0.731 * x + phase) + near * std::cos(1.37 * x));
  }
  return t;
}

/// An n x n (or kh x kw) matrix of deterministic values in [-0.5, 0.5).
softfree::RowMatrix<float> weights(Index rows, Index cols, double phase) {
  softfree::RowMatrix<float> w(rows, cols);
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c)
      w(r, c) = static_cast<float>(0.5 * std::cos(0.173 * static_cast<double>(r * cols + c) + phase));
  return w;
}

template <class T>
void expect_finite(const Tensor4<T>& out, const std::string& what) {
  const auto& d = out.dimensions();
  if (d[0] != kB || d[1] != kH || d[2] != kN || d[3] != kD) {
    std::fprintf(stderr, "FAIL %s<%s>: wrong output shape\n", what.c_str(), softfree::precision<T>::name);
    ++g_failures;
    return;
  }
  for (Index i = 0; i < out.size(); ++i) {
    const float x = static_cast<float>(out.data()[i]);
    if (!std::isfinite(x)) {
      std::fprintf(stderr, "FAIL %s<%s>: output element %ld is %g\n", what.c_str(), softfree::precision<T>::name,
                   static_cast<long>(i), static_cast<double>(x));
      ++g_failures;
      return;
    }
  }
}

/// Both call forms of f: the allocating one and the write-into-out one.
template <class T, class F>
void call_both_forms(const F& f, const std::string& what, const Tensor4<T>& q, const Tensor4<T>& k,
                     const Tensor4<T>& v) {
  expect_finite(f(q, k, v), what + " (allocating)");
  Tensor4<T> out(kB, kH, kN, kD);
  f(q, k, v, softfree::View4<T>(out.data(), out.dimensions()));
  expect_finite(out, what + " (into out)");
}

/// The decoding states, one head, every token.
template <class T>
void decode(const Tensor4<T>& q, const Tensor4<T>& k, const Tensor4<T>& v) {
  Tensor4<T> out(kB, kH, kN, kD);
  softfree::SoftmaxKVCache<T> cache(kD);
  cache.reserve(kN);
  cache.append(k.data(), v.data(), kN / 2);
  cache.attend(q.data(), out.data(), kN / 2);  // a chunk
  softfree::AftFull<T> full;
  full.set_bias(weights(kN, kN, 0.4));
  typename softfree::AftFull<T>::State full_state(full, kD);
  typename softfree::AftLocal<T>::State local_state(softfree::AftLocal<T>(4, weights(kN, kN, 0.5)), kD);
  for (Index t = kN / 2; t < kN; ++t) {
    const Index at = t * kD;
    cache.append(k.data() + at, v.data() + at);
    cache.attend(q.data() + at, out.data() + at);  // one query
  }
  for (Index t = 0; t < kN; ++t) {
    const Index at = t * kD;
    full_state.step(q.data() + at, k.data() + at, v.data() + at, out.data() + at);
    local_state.step(q.data() + at, k.data() + at, v.data() + at, out.data() + kN * kD + at);
  }
  expect_finite(out, "the decoding states");
}

template <class T>
void every_method() {
  // k near q: SoftNystrom's Newton-Schulz start (SPEC, as the official code) converges for the
  // tied case and keys near the queries, not for unrelated q and k (it diverges to NaN there).
  const Tensor4<T> q = input<T>(1.0), k = input<T>(1.0, 0.05), v = input<T>(2.0);

  call_both_forms(softfree::SoftmaxAttention<T>{}, "SoftmaxAttention", q, k, v);
  softfree::SoftmaxAttention<T> masked;  // an additive bias, bottom-right causal
  softfree::Tensor4<softfree::accum_t<T>> bias(1, kH, kN, kN);
  bias.setConstant(softfree::accum_t<T>(0.25));
  masked.set_bias(bias);
  masked.causal = true;
  masked.causal_align = softfree::CausalAlign::bottom_right;
  call_both_forms(masked, "SoftmaxAttention (bias, bottom-right causal)", q, k, v);
  call_both_forms(softfree::SimA<T>{}, "SimA", q, k, v);
  call_both_forms(softfree::SoftGaussian<T>{}, "SoftGaussian", q, k, v);

  softfree::SoftNystrom<T> nystrom;
  nystrom.landmarks = softfree::Landmarks::segments(8);
  call_both_forms(nystrom, "SoftNystrom (q == k)", q, q, v);  // the tied path
  call_both_forms(nystrom, "SoftNystrom", q, k, v);

  softfree::AftFull<T> full;
  full.set_bias(weights(kN, kN, 0.1));
  call_both_forms(full, "AftFull", q, k, v);

  softfree::AftLocal<T> local(8);
  local.set_bias(weights(kN, kN, 0.2));
  call_both_forms(local, "AftLocal", q, k, v);

  call_both_forms(softfree::AftSimple<T>{}, "AftSimple", q, k, v);

  softfree::AftConv<T> conv;
  conv.set_bias(weights(3, 3, 0.3));
  call_both_forms(conv, "AftConv", q, k, v);

  decode<T>(q, k, v);

  for (const std::string& name : softfree::attention_names())
    call_both_forms(softfree::make_attention<T>(name), "make_attention(\"" + name + "\")", q, k, v);
}

}  // namespace

int main() {
  try {
    every_method<Eigen::half>();
    every_method<Eigen::bfloat16>();
    every_method<float>();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FAIL: exception: %s\n", e.what());
    return 1;
  }
  if (g_failures != 0) {
    std::fprintf(stderr, "every_method: %d check(s) failed\n", g_failures);
    return 1;
  }
  std::puts("every_method: every method ran in half, bfloat16 and float; all outputs finite");
  return 0;
}
