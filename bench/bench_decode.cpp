// Decoding: the time per token of a decoding state at context L (the state holds L - 1 tokens;
// a step appends one and attends its query), for the suite's H = 6 heads of D = 64, one thread,
// beside the causal batch call's time per token (softmax-causal rows: time / N, tokens_per_s).
// Names: decode-<state>/<dtype>/context:<L> (report.py leaves them out of its tables: their time
// is per token, not per call). FLOPs per step: 4 L D per head (scores and weighted values).
#include <vector>

#include "harness.hpp"

namespace {
using namespace softfree_bench;

SOFTFREE_BENCH_METHOD(Method{"softmax-causal", [](const Shape& s) { return 2.0 * s.B * s.H * s.N * s.N * s.D; },
                             benchmark::oNSquared, /*time_alloc=*/false, nullptr, /*tied_qk=*/false,
                             /*bf16_products=*/false},
                      [](auto tag, const Shape&) {
                        softfree::SoftmaxAttention<typename decltype(tag)::type> f;
                        f.causal = true;
                        return f;
                      });

// One step at context L: each head's cache rolled back to L - 1 tokens, then one token.
template <class T>
void decode_softmax(benchmark::State& state) {
  const Shape s;
  const Index L = state.range(0), d = s.D;
  softfree::Tensor4<T> x(1, s.H, L, d);
  x.setRandom();
  std::vector<softfree::SoftmaxKVCache<T>> caches;
  std::vector<T> y(static_cast<size_t>(d));
  for (Index h = 0; h < s.H; ++h) {
    caches.emplace_back(softfree::SoftmaxAttention<T>{}, d);
    caches.back().reserve(L);
    caches.back().append(x.data() + h * L * d, x.data() + h * L * d, L);  // keys = values = x
  }
  state.SetLabel(softfree::SoftmaxAttention<T>{}.backend().name);
  for (auto _ : state) {
    for (Index h = 0; h < s.H; ++h) {
      const T* last = x.data() + (h * L + L - 1) * d;
      caches[static_cast<size_t>(h)].truncate(L - 1);
      caches[static_cast<size_t>(h)].append(last, last);
      caches[static_cast<size_t>(h)].attend(last, y.data());
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  Shape per_token = s;
  per_token.N = 1;
  set_counters(state, per_token, 4.0 * s.H * L * d, 1);
}

template <class T>
void register_decode() {
  const std::string name = std::string("decode-softmax/") + softfree::precision<T>::name;
  auto* b = benchmark::RegisterBenchmark(name.c_str(), &decode_softmax<T>);
  b->ArgName("context")->Arg(1024)->Arg(16384)->Unit(benchmark::kMicrosecond)->UseRealTime();
}

const bool registered = [] {
  register_decode<float>();
  register_decode<Eigen::bfloat16>();
  return true;
}();

}  // namespace
