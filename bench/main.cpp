// The suite's main: measures the core's FMA peak (and bf16 pair peak) once, records the product
// backends in the context, then registers every method's families
// (float, half, bfloat16; 1 and 2 threads) and runs Google Benchmark.
#include <chrono>
#include <string>
#include <type_traits>
#include <map>
#include <memory>

#include "harness.hpp"

namespace softfree_bench {

std::vector<Registration>& registrations() {
  static std::vector<Registration> all;
  return all;
}

const softfree::Parallel& parallel_for_threads(int threads) {
  // One Eigen::ThreadPoolDevice per thread count, created once: the 2-thread cases run on the
  // caller plus one pool thread, as a user's device would.
  static std::map<int, std::unique_ptr<Eigen::ThreadPool>> pools;
  static std::map<int, std::unique_ptr<Eigen::ThreadPoolDevice>> devices;
  static std::map<int, softfree::Parallel> parallels;
  auto it = parallels.find(threads);
  if (it != parallels.end()) return it->second;
  if (threads <= 1) return parallels[threads] = softfree::Parallel{};
  pools[threads] = std::make_unique<Eigen::ThreadPool>(threads);
  devices[threads] = std::make_unique<Eigen::ThreadPoolDevice>(pools[threads].get(), threads);
  return parallels[threads] = softfree::Parallel::on(*devices[threads]);
}

namespace {

constexpr int kAcc = 16;  // independent accumulators: enough to cover the latency of either op

// Seconds for iters steps of acc[i] = step(acc[i]) on kAcc packets. The accumulators are local and
// only their sum leaves: with DoNotOptimize(acc) GCC stored all of them every iteration, and the
// loop ran at the store rate (on Zen 4 the pair peak read 75 instead of 225 GFLOP/s).
template <class Step>
double time_accumulators(long iters, Step step) {
  using P = softfree::detail::Packet<float>;
  namespace ei = Eigen::internal;
  P acc[kAcc];
  for (int i = 0; i < kAcc; ++i) acc[i] = ei::pset1<P>(0.001f * static_cast<float>(i));
  const auto t0 = std::chrono::steady_clock::now();
  for (long it = 0; it < iters; ++it)
    for (int i = 0; i < kAcc; ++i) acc[i] = step(acc[i]);
  P sum = acc[0];
  for (int i = 1; i < kAcc; ++i) sum = ei::padd(sum, acc[i]);
  benchmark::DoNotOptimize(ei::predux(sum));
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// GFLOP/s of the best of three runs of step, counting flops_per_step per accumulator step.
template <class Step>
double best_rate(double flops_per_step, Step step) {
  const long iters = 20'000'000;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep)
    best = std::max(best, flops_per_step * kAcc * static_cast<double>(iters) / time_accumulators(iters, step) * 1e-9);
  return best;
}

// Peak of one core: independent packet FMAs with no memory traffic, 2 FLOPs per lane.
double measure_peak() {
  using P = softfree::detail::Packet<float>;
  namespace ei = Eigen::internal;
  const P a = ei::pset1<P>(0.999999f), b = ei::pset1<P>(1e-7f);
  return best_rate(2.0 * softfree::detail::kLanes<float>, [=](const P& acc) { return ei::pmadd(acc, a, b); });
}

// Peak of one core's bf16 pair products (vdpbf16ps: 4 FLOPs per float lane), where the build has
// them: the ceiling of the +bf16 and +bf16dot rows.
template <class Ops = softfree::detail::PairOps>
double measure_pair_peak() {
  if constexpr (!std::is_same<Ops, softfree::detail::NoPairOps>::value) {
    if (!softfree::detail::cpu_features().avx512_bf16) return 0;
    using P = softfree::detail::Packet<float>;
    const auto a = Ops::template bcast<P>(0x3f803f80u), b = Ops::template bcast<P>(0x33d633d6u);  // (1.0, 1.0), (1e-7, 1e-7)
    return best_rate(4.0 * 16, [=](const P& acc) { return Ops::madd(a, b, acc); });
  }
  return 0;
}

/// The product backends the build and CPU give, for the report's context.
void add_backend_context() {
  namespace sf = softfree;
  const auto bf = sf::backend_info<Eigen::bfloat16>(), fb = sf::backend_info<float>(sf::Math::bf16);
  benchmark::AddCustomContext("kernel_isa", sf::kernel_isa());
  benchmark::AddCustomContext("products_bfloat16", bf.name + " (" + bf.reason + ")");
  benchmark::AddCustomContext("products_float_math_bf16", fb.name + " (" + fb.reason + ")");
  const auto& cpu = sf::detail::cpu_features();
  benchmark::AddCustomContext("cpu_avx512_bf16", cpu.avx512_bf16 ? "yes" : "no");
  benchmark::AddCustomContext("cpu_amx_bf16", cpu.amx_bf16 ? "yes" : "no");
  const double pair_peak = measure_pair_peak();
  if (pair_peak > 0) benchmark::AddCustomContext("bf16_dot_peak_gflops_per_core", std::to_string(pair_peak));
}

}  // namespace

double peak_gflops_per_core() {
  static const double peak = measure_peak();
  return peak;
}

}  // namespace softfree_bench

int main(int argc, char** argv) {
  using namespace softfree_bench;
  benchmark::AddCustomContext("fma_peak_gflops_per_core", std::to_string(peak_gflops_per_core()));
  benchmark::AddCustomContext("shape", "B=1 H=6 D=64");
  add_backend_context();
  for (const Registration& r : registrations())
    for (int threads : {1, 2}) r.register_all(threads);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
