#pragma once
// The benchmark harness: every method registers itself once, in its own bench_<method>.cpp,
// with SOFTFREE_BENCH_METHOD; main.cpp turns each registration into one Google Benchmark family
// per storage type and thread count, over the suite's shapes. Peer rows (other libraries at the
// same shapes, bench/peers/, built when CMake finds the library) register their own families.
//
// Names: <method>/<dtype>/threads:<t>/N:<n> (bench/report.py parses them). Times are of the
// write-into-`out` call form with every buffer allocated once; a method that asks for it also
// gets a `<method>+alloc` family (float, one thread) timing the allocating form. A method with
// bf16 kernels also gets `<method>+bf16` (float storage, math = Math::bf16) and, on a machine
// whose build has the AVX512-BF16 products but whose CPU the selection rule keeps off them,
// `<method>+bf16dot` (bfloat16 storage, the pairs forced): the figure behind that rule. Each
// row's label is the product backend it ran (Attention::backend()). Each row's `peak_bytes` is
// the most the library held through operator new during its first, untimed call (bench/alloc_hook.cpp).
#include <benchmark/benchmark.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <softfree/softfree.hpp>

namespace softfree_bench {

using softfree::Index;

/// The suite's shape: B = 1, H = 6, D = 64, N over kTokens.
struct Shape {
  Index B = 1, H = 6, N = 0, D = 64;
};
inline const std::vector<Index> kTokens = {197, 1024, 4096, 16384};

/// Shapes beside the suite's, in float and bfloat16 (rows <method>/<dtype>/threads:<t>/B:<b>/H:<h>/N:<n>):
/// one head at the longest N, where a second thread can help only by splitting the tokens, and a
/// DeiT-S batch (B = 8 images of 196 patches + the class token, H = 6), the shape the papers
/// measured on.
inline const std::vector<Shape> kExtraShapes = {{1, 1, 16384, 64}, {8, 6, 197, 64}};

/// FLOPs of one call on a shape (the formula is stated beside each registration).
using FlopCount = double (*)(const Shape&);

/// Builds the functor for storage type T on shape s; the harness sets its `parallel` field.
/// Written as a generic lambda: [](auto tag, const Shape& s) { using T = typename decltype(tag)::type; ... }
template <class T>
struct Type {
  using type = T;
};

/// What a method tells the suite about itself.
struct Method {
  std::string name;
  FlopCount flops;
  benchmark::BigO complexity;
  bool time_alloc = false;  ///< also time the allocating form (float, 1 thread)
  bool (*applies)(const Shape&) = nullptr;  ///< null: every shape
  bool tied_qk = false;  ///< call f(q, q, v): the method's own tied form (SOFT's K = Q)
  bool bf16_products = false;  ///< has bf16 kernels: also the +bf16 (and +bf16dot) families
};

/// A family's variant of the functor: as made, the bf16 policy, or the bf16 pairs forced.
enum class Variant { plain, alloc, bf16_math, bf16_forced };

/// Whether +bf16dot rows mean anything here: the build has the pairs, the CPU runs them, and
/// the rule does not already pick them for bfloat16 storage.
inline bool forced_pairs_differ() {
  return softfree::detail::kHavePairOps && softfree::detail::cpu_features().avx512_bf16 &&
         !softfree::backend_info<Eigen::bfloat16>().native_bf16;
}

/// A method and its registrars, one per thread count, filled by add_method from the maker.
struct Registration {
  Method method;
  std::function<void(int threads)> register_all;
};

std::vector<Registration>& registrations();
const softfree::Parallel& parallel_for_threads(int threads);
double peak_gflops_per_core();

/// While alive, counts the bytes allocated through operator new (on any thread) and still held;
/// peak_bytes() is their maximum so far. One at a time.
class AllocationProbe {
 public:
  AllocationProbe();
  ~AllocationProbe();
  AllocationProbe(const AllocationProbe&) = delete;
  AllocationProbe& operator=(const AllocationProbe&) = delete;
  double peak_bytes() const;
};

/// The suite's counters (GFLOPS, peak_pct, tokens_per_s) and complexity N, for a row timed on s.
inline void set_counters(benchmark::State& state, const Shape& s, double flops, int threads) {
  using benchmark::Counter;
  state.counters["GFLOPS"] = Counter(flops * 1e-9, Counter::kIsIterationInvariantRate);
  state.counters["peak_pct"] =
      Counter(100.0 * flops * 1e-9 / (peak_gflops_per_core() * threads), Counter::kIsIterationInvariantRate);
  state.counters["tokens_per_s"] = Counter(static_cast<double>(s.B * s.N), Counter::kIsIterationInvariantRate);
  state.SetComplexityN(s.N);
}

/// Times f on random inputs of shape s; counters: GFLOPS, peak_pct, tokens_per_s, and peak_bytes:
/// the workspaces (and any cache the functor builds on its first call) of the first, untimed call
/// of the write-into-`out` form; `out` and the inputs, allocated before, are not counted.
template <class T, class F>
void run_case(benchmark::State& state, const F& f, const Shape& s, double flops, int threads, bool alloc,
              bool tied_qk) {
  state.SetLabel(f.backend().name);
  softfree::Tensor4<T> q(s.B, s.H, s.N, s.D), k_own(s.B, s.H, s.N, s.D), v(s.B, s.H, s.N, s.D),
      out(s.B, s.H, s.N, s.D);
  q.setRandom();  // uniform in [0, 1): every method's inputs stay in its well-behaved range
  k_own.setRandom();
  v.setRandom();
  const softfree::Tensor4<T>& k = tied_qk ? q : k_own;
  double peak_bytes = 0;
  {
    AllocationProbe probe;
    f(q, k, v, out);  // also the warm-up: first touch of out and of the library's pools
    peak_bytes = probe.peak_bytes();
  }
  for (auto _ : state) {
    if (alloc) {
      auto o = f(q, k, v);
      benchmark::DoNotOptimize(o.data());
    } else {
      f(q, k, v, out);
      benchmark::DoNotOptimize(out.data());
    }
    benchmark::ClobberMemory();
  }
  set_counters(state, s, flops, threads);
  state.counters["peak_bytes"] = benchmark::Counter(peak_bytes, benchmark::Counter::kDefaults,
                                                    benchmark::Counter::OneK::kIs1024);
}

inline const char* variant_suffix(Variant v) {
  switch (v) {
    case Variant::alloc:
      return "+alloc/";
    case Variant::bf16_math:
      return "+bf16/";
    case Variant::bf16_forced:
      return "+bf16dot/";
    default:
      return "/";
  }
}

/// One family of m: storage T, `threads` threads, the variant; over the suite's N (B = 1, H = 6)
/// or, with extra_shapes, over kExtraShapes (arguments B, H, N).
template <class T, class Maker>
void register_family(const Method& m, const Maker& make, int threads, Variant variant, bool extra_shapes = false) {
  const std::string name = m.name + variant_suffix(variant) + softfree::precision<T>::name + "/threads:" +
                           std::to_string(threads);
  auto* b = benchmark::RegisterBenchmark(name.c_str(), [m, make, threads, variant, extra_shapes](benchmark::State& state) {
    Shape s;
    if (extra_shapes)
      s.B = state.range(0), s.H = state.range(1), s.N = state.range(2);
    else
      s.N = state.range(0);
    auto f = make(Type<T>{}, s);
    f.parallel = parallel_for_threads(threads);
    if (variant == Variant::bf16_math) f.math = softfree::Math::bf16;
    std::optional<softfree::detail::ScopedBf16Products> force;
    if (variant == Variant::bf16_forced) force.emplace(true);
    run_case<T>(state, f, s, m.flops(s), threads, variant == Variant::alloc, m.tied_qk);
  });
  b->Unit(benchmark::kMillisecond)->UseRealTime();
  if (extra_shapes) {
    b->ArgNames({"B", "H", "N"});
    for (const Shape& s : kExtraShapes)
      if (!m.applies || m.applies(s)) b->Args({s.B, s.H, s.N});
    return;
  }
  b->ArgName("N")->Complexity(m.complexity);
  for (Index n : kTokens) {
    Shape s;
    s.N = n;
    if (!m.applies || m.applies(s)) b->Arg(n);
  }
}

/// Registers a method: name, FLOPs per call, expected complexity, and a generic maker.
template <class Maker>
bool add_method(const Method& m, Maker make) {
  registrations().push_back(Registration{m, [m, make](int t) {
                                           register_family<float>(m, make, t, Variant::plain);
                                           if (m.time_alloc && t == 1) register_family<float>(m, make, t, Variant::alloc);
                                           register_family<Eigen::half>(m, make, t, Variant::plain);
                                           register_family<Eigen::bfloat16>(m, make, t, Variant::plain);
                                           register_family<float>(m, make, t, Variant::plain, /*extra_shapes=*/true);
                                           register_family<Eigen::bfloat16>(m, make, t, Variant::plain, true);
                                           if (!m.bf16_products) return;
                                           register_family<float>(m, make, t, Variant::bf16_math);
                                           if (forced_pairs_differ())
                                             register_family<Eigen::bfloat16>(m, make, t, Variant::bf16_forced);
                                         }});
  return true;
}

}  // namespace softfree_bench

#define SOFTFREE_BENCH_CONCAT2(a, b) a##b
#define SOFTFREE_BENCH_CONCAT(a, b) SOFTFREE_BENCH_CONCAT2(a, b)
/// SOFTFREE_BENCH_METHOD(Method{...}, maker): registers at static-initialisation time.
#define SOFTFREE_BENCH_METHOD(...) \
  static const bool SOFTFREE_BENCH_CONCAT(softfree_bench_registered_, __LINE__) = softfree_bench::add_method(__VA_ARGS__)
