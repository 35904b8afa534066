// Decoding: the time per token of a decoding state at context L (the state holds L - 1 tokens;
// a step takes one more), for the suite's H = 6 heads of D = 64, one thread,
// beside the causal batch call's time per token (softmax-causal, aft-*-causal rows: time / N,
// tokens_per_s).
// Names: decode-<state>/<dtype>/context:<L> (report.py leaves them out of its tables: their time
// is per token, not per call). FLOPs per step: 4 L D per head (scores and weighted values).
#include <string>
#include <type_traits>
#include <vector>

#include <softfree/aft.hpp>

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

// The causal AFT batch calls beside their states (bias as the bench_aft.cpp rows: aft-full's
// N x N stops at 4096). FLOPs: the non-causal rows' counts halved for the triangle (aft-full),
// as they are (aft-local-s32, aft-simple: their sums cost the same causal).
template <class T>
softfree::AftWeights<T> bias_of(Index slots, Index rows, Index cols) {
  softfree::AftWeights<T> w(slots, rows, cols);
  w.setRandom();
  return w;
}
double per_head(const Shape& s) { return static_cast<double>(s.B * s.H * s.N * s.D); }

SOFTFREE_BENCH_METHOD(Method{"aft-full-causal", [](const Shape& s) { return 2.0 * per_head(s) * static_cast<double>(s.N); },
                             benchmark::oNSquared, /*time_alloc=*/false, [](const Shape& s) { return s.N <= 4096; },
                             /*tied_qk=*/false, /*bf16_products=*/false},
                      [](auto tag, const Shape& s) {
                        softfree::AftFull<typename decltype(tag)::type> f(bias_of<typename decltype(tag)::type>(1, s.N, s.N));
                        f.causal = true;
                        return f;
                      });
SOFTFREE_BENCH_METHOD(Method{"aft-local-s32-causal", [](const Shape& s) { return 4.0 * per_head(s) * 63.0; },
                             benchmark::oN, /*time_alloc=*/false, nullptr},
                      [](auto tag, const Shape& s) {
                        softfree::AftLocal<typename decltype(tag)::type> f;
                        f.set_band_bias(bias_of<typename decltype(tag)::type>(1, s.N, 63));
                        f.causal = true;
                        return f;
                      });
SOFTFREE_BENCH_METHOD(Method{"aft-simple-causal", [](const Shape& s) { return 6.0 * per_head(s); }, benchmark::oN,
                             /*time_alloc=*/false, nullptr},
                      [](auto tag, const Shape&) {
                        softfree::AftSimple<typename decltype(tag)::type> f;
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

// AftLocal (s = 32, a random band) and AftSimple states: a step's cost does not depend on its
// position (O(s D), O(D)), so the states step on from the context L and are reset when the bias's
// N is reached. FLOPs per step: 4 s D and 6 D per head (as their batch rows count them).
template <class T, bool Local>
void decode_aft(benchmark::State& state) {
  const Shape s;
  const Index L = state.range(0), d = s.D, window = 32;
  using State = std::conditional_t<Local, typename softfree::AftLocal<T>::State, typename softfree::AftSimple<T>::State>;
  softfree::AftLocal<T> local(window);
  if (Local) {
    softfree::AftWeights<T> band(1, 2 * L, 2 * window - 1);
    band.setRandom();
    local.set_band_bias(band);
  }
  softfree::Tensor4<T> x(1, s.H, 1, d);
  x.setRandom();
  std::vector<State> states;
  for (Index h = 0; h < s.H; ++h) {
    if constexpr (Local) states.emplace_back(local, d, h); else states.emplace_back(d);
  }
  std::vector<T> y(static_cast<size_t>(d));
  const auto advance = [&](State& st) {
    const T* t = x.data();
    st.step(t, t, t, y.data());
  };
  for (State& st : states)
    for (Index t = 0; t + 1 < L; ++t) advance(st);
  for (auto _ : state) {
    for (State& st : states) {
      if (st.steps() == 2 * L) {  // rewound by replaying L - 1 steps (untimed)
        state.PauseTiming();
        st.reset();
        for (Index t = 0; t + 1 < L; ++t) advance(st);
        state.ResumeTiming();
      }
      advance(st);
    }
    benchmark::DoNotOptimize(y.data());
  }
  Shape per_token = s;
  per_token.N = 1;
  set_counters(state, per_token, (Local ? 4.0 * window : 6.0) * s.H * d, 1);
}

// AftFull's state: a step at context L weighs every one of the L tokens (O(L D)), and the bias
// (one slot, L x L) ends there, so each step starts from a copy of the states at L - 1 tokens
// (restored untimed). FLOPs per step: 4 L D per head.
template <class T>
void decode_aft_full(benchmark::State& state) {
  const Shape s;
  const Index L = state.range(0), d = s.D;
  softfree::AftWeights<T> w(1, L, L);
  w.setRandom();
  softfree::AftFull<T> full;
  full.set_bias(w);
  w = softfree::AftWeights<T>();  // the functor holds its own copy
  softfree::Tensor4<T> x(1, s.H, L, d);
  x.setRandom();
  using State = typename softfree::AftFull<T>::State;
  std::vector<State> states, at_context;
  std::vector<T> y(static_cast<size_t>(d));
  for (Index h = 0; h < s.H; ++h) {
    states.emplace_back(full, d, h);
    for (Index t = 0; t + 1 < L; ++t) {
      const T* r = x.data() + (h * L + t) * d;
      states.back().step(r, r, r, y.data());
    }
  }
  at_context = states;
  for (auto _ : state) {
    for (Index h = 0; h < s.H; ++h) {
      const T* last = x.data() + (h * L + L - 1) * d;
      states[static_cast<size_t>(h)].step(last, last, last, y.data());
    }
    benchmark::DoNotOptimize(y.data());
    state.PauseTiming();
    for (Index h = 0; h < s.H; ++h) states[static_cast<size_t>(h)] = at_context[static_cast<size_t>(h)];
    state.ResumeTiming();
  }
  Shape per_token = s;
  per_token.N = 1;
  set_counters(state, per_token, 4.0 * s.H * L * d, 1);
}

template <class T>
void register_decode() {
  const std::string dtype = softfree::precision<T>::name;
  const auto contexts = [](benchmark::internal::Benchmark* b) {
    b->ArgName("context")->Arg(1024)->Arg(16384)->Unit(benchmark::kMicrosecond)->UseRealTime();
  };
  contexts(benchmark::RegisterBenchmark(("decode-softmax/" + dtype).c_str(), &decode_softmax<T>));
  contexts(benchmark::RegisterBenchmark(("decode-aft-local-s32/" + dtype).c_str(), &decode_aft<T, true>));
  contexts(benchmark::RegisterBenchmark(("decode-aft-simple/" + dtype).c_str(), &decode_aft<T, false>));
  contexts(benchmark::RegisterBenchmark(("decode-aft-full/" + dtype).c_str(), &decode_aft_full<T>));
}

const bool registered = [] {
  register_decode<float>();
  register_decode<Eigen::bfloat16>();
  return true;
}();

}  // namespace
