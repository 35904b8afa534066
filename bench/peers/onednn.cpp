// Peer rows: oneDNN's softmax attention at the suite's shapes, built only when CMake finds oneDNN
// (bench/CMakeLists.txt). Per group of heads: matmul S = (Q K^T) / sqrt(D) (the scale as an
// output scale), softmax over the last axis, matmul O = P V, in float and bfloat16 storage (bf16
// kernels as oneDNN picks them: the row's label names them). Engine, stream, primitives, memories
// and the scratch are created once; only execution is timed. Each row is checked once against
// softfree::SoftmaxAttention<float> first. FLOPs: 4 N^2 D per head, as the softmax rows count them.
//
// Threads: oneDNN runs on its own OpenMP pool, set per row with omp_set_num_threads (below).
// libgomp's workers spin between parallel regions by default: on a machine loaded by other jobs
// that stretched 2-thread rows 10-100x. OMP_WAIT_POLICY=passive (scripts/bench.sh's default)
// avoids it; it is read when libgomp loads, before any code here runs.
#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include <dnnl.hpp>

#include "harness.hpp"

namespace {
using namespace softfree_bench;
using dnnl::memory;
using Args = std::unordered_map<int, memory>;

constexpr const char* kName = "onednn-softmax";

double flops(const Shape& s) { return 4.0 * s.B * s.H * s.N * s.N * s.D; }

/// oneDNN's data type for softfree storage T (Eigen::bfloat16 has the bf16 bit layout).
template <class T>
constexpr memory::data_type dnnl_type = std::is_same_v<T, float> ? memory::data_type::f32 : memory::data_type::bf16;

/// Sets the thread count oneDNN runs on; false when it cannot be set. Debian's libdnnl is built
/// with OpenMP (DNNL_CPU_RUNTIME OMP, libgomp): omp_set_num_threads is looked up in the runtime
/// libdnnl loaded rather than linked, since -fopenmp on softfree_bench would switch on Eigen's
/// OpenMP paths in every bench file, and clang's could bring a second runtime oneDNN never reads.
bool set_onednn_threads(int threads) {
  const unsigned runtime = dnnl::version()->cpu_runtime;
  if (runtime == DNNL_RUNTIME_SEQ) return threads == 1;
  if (runtime != DNNL_RUNTIME_OMP) return false;  // TBB / threadpool: not controlled here
  void* set = dlsym(RTLD_DEFAULT, "omp_set_num_threads");
  void* get = dlsym(RTLD_DEFAULT, "omp_get_max_threads");
  if (!set || !get) return false;
  reinterpret_cast<void (*)(int)>(set)(threads);
  return reinterpret_cast<int (*)()>(get)() == threads;
}

/// Scratch bytes per head: f32 scores, plus bf16 P unless T is float (softmax in place).
template <class T>
double scratch_per_head(const Shape& s) {
  return static_cast<double>(s.N) * s.N * (4 + (std::is_same_v<T, float> ? 0 : sizeof(T)));
}

/// Heads per batched call: the largest divisor of B H whose scratch fits kScratchBudget (at least
/// one). All six heads at once up to N = 4096 (fewer, larger calls: fewer OpenMP regions and
/// barriers); one head at a time, one N x N scratch reused, at N = 16384 (all heads: 9 GiB).
constexpr double kScratchBudget = 1024.0 * 1024 * 1024;
template <class T>
Index heads_per_call(const Shape& s) {
  Index best = 1;
  for (Index c = 1; c <= s.B * s.H; ++c)
    if ((s.B * s.H) % c == 0 && c * scratch_per_head<T>(s) <= kScratchBudget) best = c;
  return best;
}

/// Softmax attention on oneDNN over the caller's [B, H, N, D] buffers, heads_per_call heads per
/// execution (3-D matmuls and softmax), the scratch shared by every group. Scores are f32 in both
/// storages (as softfree accumulates them); in bfloat16 the softmax writes P as bf16 for the
/// bf16 P V matmul, in float it runs in place.
template <class T>
class OneDnnSoftmax {
 public:
  OneDnnSoftmax(const Shape& s, const T* q, const T* k, const T* v, T* out) {
    using tag = memory::format_tag;
    const memory::dim c = heads_per_call<T>(s), n = s.N, d = s.D;
    const memory::data_type dt = dnnl_type<T>, f32 = memory::data_type::f32;
    const memory::desc rows({c, n, d}, dt, tag::abc), kt({c, d, n}, dt, tag::acb),  // K^T: K read transposed
        scores_md({c, n, n}, f32, tag::abc), probs_md({c, n, n}, dt, tag::abc);
    dnnl::primitive_attr scaled;
    scaled.set_output_scales(0, {static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)))});
    const dnnl::matmul::primitive_desc qk_pd({rows, kt, scores_md}, scaled, engine_);
    const dnnl::softmax_v2_forward::primitive_desc sm_pd(
        {dnnl::prop_kind::forward_inference, dnnl::algorithm::softmax_accurate, scores_md, probs_md, 2}, engine_);
    const dnnl::matmul::primitive_desc pv_pd({probs_md, rows, rows}, engine_);
    qk_ = dnnl::matmul(qk_pd);
    softmax_ = dnnl::softmax_v2_forward(sm_pd);
    pv_ = dnnl::matmul(pv_pd);
    impl_ = std::string(qk_pd.impl_info_str()) + " | " + sm_pd.impl_info_str() + " | " + pv_pd.impl_info_str() +
            " | heads per call: " + std::to_string(c);
    const memory scores(scores_md, engine_);
    const memory probs = std::is_same_v<T, float> ? scores : memory(probs_md, engine_);
    auto at = [&](const T* p, Index h) { return const_cast<T*>(p) + h * s.N * s.D; };
    for (Index h = 0; h < s.B * s.H; h += c)
      steps_.push_back({Args{{DNNL_ARG_SRC, memory(rows, engine_, at(q, h))},
                             {DNNL_ARG_WEIGHTS, memory(kt, engine_, at(k, h))},
                             {DNNL_ARG_DST, scores}},
                        Args{{DNNL_ARG_SRC, scores}, {DNNL_ARG_DST, probs}},
                        Args{{DNNL_ARG_SRC, probs},
                             {DNNL_ARG_WEIGHTS, memory(rows, engine_, at(v, h))},
                             {DNNL_ARG_DST, memory(rows, engine_, out + h * s.N * s.D)}}});
  }

  void operator()() {
    for (const auto& step : steps_) {
      qk_.execute(stream_, step[0]);
      softmax_.execute(stream_, step[1]);
      pv_.execute(stream_, step[2]);
    }
    stream_.wait();
  }

  /// The implementations oneDNN picked (QK^T | softmax | PV), e.g. brg:avx512_core_amx.
  const std::string& impl() const { return impl_; }

 private:
  dnnl::engine engine_{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream_{engine_};
  dnnl::matmul qk_, pv_;
  dnnl::softmax_v2_forward softmax_;
  std::vector<std::array<Args, 3>> steps_;  // per group of heads: the three executions' arguments
  std::string impl_;
};

/// x in float, element by element (Eigen's packet cast from bfloat16 trips GCC 12's
/// -Wmaybe-uninitialized, GCC bug 105593, under -march=native).
template <class T>
softfree::Tensor4<float> widen(const softfree::Tensor4<T>& x) {
  softfree::Tensor4<float> y(x.dimensions());
  for (Index i = 0; i < x.size(); ++i) y.data()[i] = static_cast<float>(x.data()[i]);
  return y;
}

/// Checked once per storage: oneDNN against softfree::SoftmaxAttention<float> on a small shape
/// (float inputs rounded to T). Empty when they agree within tol; otherwise what went wrong.
template <class T>
const std::string& check_error() {
  static const std::string error = []() -> std::string {
    Shape s;
    s.H = 2;
    s.N = 77;
    softfree::Tensor4<T> q(s.B, s.H, s.N, s.D), k(q.dimensions()), v(q.dimensions()), out(q.dimensions());
    q.setRandom();
    k.setRandom();
    v.setRandom();
    softfree::Tensor4<float> ref(q.dimensions());
    softfree::SoftmaxAttention<float>{}(widen(q), widen(k), widen(v), ref);
    try {
      OneDnnSoftmax<T>(s, q.data(), k.data(), v.data(), out.data())();
    } catch (const dnnl::error& e) {
      return std::string("oneDNN failed on the check shape: ") + e.what();
    }
    // float: the same arithmetic up to summation order; bfloat16: P and out rounded to 8 bits.
    const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-2;
    double diff = 0;
    for (Index i = 0; i < out.size(); ++i)
      diff = std::max(diff, std::abs(static_cast<double>(out.data()[i]) - ref.data()[i]));
    if (diff < tol) return "";
    return "oneDNN's output differs from softfree::SoftmaxAttention<float> by " + std::to_string(diff) +
           " (max abs, tolerance " + std::to_string(tol) + ")";
  }();
  return error;
}

template <class T>
void run_onednn(benchmark::State& state, int threads) {
  Shape s;
  s.N = state.range(0);
  if (!set_onednn_threads(threads)) {
    state.SkipWithError("cannot set oneDNN's thread count (its CPU runtime is not OpenMP)");
    return;
  }
  if (const std::string& error = check_error<T>(); !error.empty()) {
    state.SkipWithError(error.c_str());
    return;
  }
  softfree::Tensor4<T> q(s.B, s.H, s.N, s.D), k(q.dimensions()), v(q.dimensions()), out(q.dimensions());
  q.setRandom();  // the distribution of the softfree rows (run_case)
  k.setRandom();
  v.setRandom();
  try {
    OneDnnSoftmax<T> f(s, q.data(), k.data(), v.data(), out.data());
    f();  // warm-up: first touch of the scratch and of oneDNN's own
    for (auto _ : state) {
      f();
      benchmark::DoNotOptimize(out.data());
      benchmark::ClobberMemory();
    }
    state.SetLabel(f.impl());
  } catch (const dnnl::error& e) {
    state.SkipWithError(e.what());
    return;
  }
  set_counters(state, s, flops(s), threads);
}

template <class T>
void register_onednn(int threads) {
  const std::string name = std::string(kName) + "/" + softfree::precision<T>::name + "/threads:" + std::to_string(threads);
  auto* b = benchmark::RegisterBenchmark(name.c_str(), [threads](benchmark::State& st) { run_onednn<T>(st, threads); });
  b->ArgName("N")->Unit(benchmark::kMillisecond)->UseRealTime()->Complexity(benchmark::oNSquared);
  for (Index n : kTokens) b->Arg(n);
}

/// main() calls this once per thread count.
void register_all(int threads) {
  if (threads == 1) {
    const dnnl::version_t* ver = dnnl::version();
    benchmark::AddCustomContext("onednn_version", std::to_string(ver->major) + "." + std::to_string(ver->minor) +
                                                      "." + std::to_string(ver->patch));
  }
  register_onednn<float>(threads);
  register_onednn<Eigen::bfloat16>(threads);
}

const bool registered = [] {
  registrations().push_back(Registration{Method{kName, flops, benchmark::oNSquared}, register_all});
  return true;
}();

}  // namespace
