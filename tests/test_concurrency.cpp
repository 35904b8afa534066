// Concurrency: one functor, its copies and AnyAttention copies called from several threads at once,
// for every make_attention name, in float and bfloat16 (and bfloat16 on the bf16 pair products
// where this build and CPU have them), run six ways: no pool, one library pool shared by every
// caller, a caller's Eigen::ThreadPoolDevice, from tasks of the library pool or of the device's
// pool the functor itself uses (nested), and two one-thread pools whose tasks call into each other.
// Every result is compared bitwise with the same call run serially afterwards (the library
// promises bitwise identical results for any thread count), SoftNystrom's reports field by field:
// a test passes only if every concurrent call computed exactly what a serial one does.
//
// ctest runs each test in its own process, so its concurrent calls are that process's first use
// of everything built lazily: the method's caches (AftFull's exp(w) table and its bf16 pairs,
// AftLocal's window weights, shared by copies), the library pools, the CPUID and product-override
// statics and the make_attention registry. The tsan preset builds this file alone
// (softfree_concurrency_tests) under ThreadSanitizer; it is part of softfree_tests as well.
#include <any>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "test_util.hpp"

namespace {

using namespace softfree_test;
using softfree::AnyAttention;
using softfree::Parallel;
using softfree::View4;

// Small enough for ThreadSanitizer (every call a few ms), large enough to be several work items
// per call (B * H = 6 heads) and to fit every default: SoftNystrom's segments(49) needs N >= 49,
// AftConv's square grid is 8 x 8.
constexpr Index kB = 2, kH = 3, kN = 64, kD = 16;
constexpr int kThreads = 4;  // std::thread callers (the machine has 2 cores: they interleave)

// The methods, in make_attention's order (CoversEveryRegisteredName checks both).
template <class T>
using Methods = std::tuple<softfree::SoftmaxAttention<T>, softfree::SimA<T>, softfree::SoftGaussian<T>,
                           softfree::SoftNystrom<T>, softfree::AftFull<T>, softfree::AftLocal<T>, softfree::AftSimple<T>,
                           softfree::AftConv<T>>;
constexpr std::array<const char*, 8> kNames = {"softmax",  "sima",      "soft-gaussian", "soft-nystrom",
                                               "aft-full", "aft-local", "aft-simple",    "aft-conv"};

// body(F{}) for the method at index i.
template <class T, class Body, size_t... I>
void with_method(size_t i, Body&& body, std::index_sequence<I...>) {
  ((i == I ? body(std::tuple_element_t<I, Methods<T>>{}) : void()), ...);
}
template <class T, class Body>
void with_method(size_t i, Body&& body) {
  with_method<T>(i, body, std::make_index_sequence<std::tuple_size<Methods<T>>::value>{});
}

// Learned biases for the AFT variants, so their caches are built (by the first concurrent call).
template <class F>
void learn(F&) {}
template <class T>
void learn(softfree::AftFull<T>& f) {
  f.set_bias(random_weights<T>(kH, kN, kN, 11));
}
template <class T>
void learn(softfree::AftLocal<T>& f) {
  f.set_bias(random_weights<T>(kH, kN, kN, 12));
}
template <class T>
void learn(softfree::AftConv<T>& f) {
  f.set_bias(random_weights<T>(kH, 3, 5, 13));
}

// Reports compared exactly: NoReport, SoftNystrom's NewtonDiagnostics, and either in a std::any.
bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }
bool same_report(const softfree::NoReport&, const softfree::NoReport&) { return true; }
bool same_report(const softfree::NewtonDiagnostics& a, const softfree::NewtonDiagnostics& b) {
  return a.heads == b.heads && a.steps == b.steps && same_bits(a.residual, b.residual) &&
         same_bits(a.pinv_residual, b.pinv_residual) && a.restarted == b.restarted && a.converged == b.converged;
}
template <class R>
bool same_report(const std::any& got, const R& want) {
  const R* r = std::any_cast<R>(&got);
  return r && same_report(*r, want);
}

template <class T>
struct ConcurrencyInputs {
  Tensor4<T> q = random_tensor<T>(kB, kH, kN, kD, 1);
  Tensor4<T> k = keys_near(q, 2);  // SoftNystrom's untied call converges for keys near the queries
  Tensor4<T> v = random_tensor<T>(kB, kH, kN, kD, 3);
};

// The ways one caller calls; each caller does all of them, starting at a different one, so
// different ways run at the same time.
enum Way { kRun, kCopy, kAny, kMade, kTied, kWays };
constexpr std::array<const char*, kWays> kWayNames = {
    "the functor's run()", "a copy of the functor (allocating call)", "a copy of an AnyAttention holding it (run())",
    "make_attention(name) (default options)", "the functor with k = q (tied)"};

template <class F>
struct CallerResult {
  std::array<Tensor4<typename F::scalar_type>, kWays> out;
  typename F::report_type report{};  // of kRun
  std::any any_report;               // of kAny
  std::string error;                 // an exception's message
};

template <class F>
void call_every_way(const F& f, const AnyAttention<typename F::scalar_type>& any, const char* name,
                    const ConcurrencyInputs<typename F::scalar_type>& in, int first, CallerResult<F>& r) {
  using T = typename F::scalar_type;
  try {
    for (int j = 0; j < kWays; ++j) {
      const int way = (first + j) % kWays;
      Tensor4<T>& out = r.out[static_cast<size_t>(way)];
      switch (way) {
        case kRun:
          out = Tensor4<T>(kB, kH, kN, kD);
          r.report = f.run(in.q, in.k, in.v, View4<T>(out.data(), out.dimensions()));
          break;
        case kCopy: {
          const F copy = f;  // shares f's bias and its caches
          out = copy(in.q, in.k, in.v);
          break;
        }
        case kAny: {
          const AnyAttention<T> copy = any;  // shares the held functor
          out = Tensor4<T>(kB, kH, kN, kD);
          r.any_report = copy.run(in.q, in.k, in.v, View4<T>(out.data(), out.dimensions()));
          break;
        }
        case kMade:
          out = softfree::make_attention<T>(name)(in.q, in.k, in.v);
          break;
        case kTied:
          out = f(in.q, in.q, in.v);
          break;
      }
    }
  } catch (const std::exception& e) {
    r.error = e.what();
  }
}

enum class Mode { NoPool, LibraryPool, UserDevice, NestedLibraryPool, NestedUserDevice, TwoPools };
constexpr int kLibraryThreads = 3;  // with_threads(3): the caller and a library pool of 2

const char* mode_name(Mode m) {
  switch (m) {
    case Mode::NoPool: return "NoPool";
    case Mode::LibraryPool: return "LibraryPool";
    case Mode::UserDevice: return "UserDevice";
    case Mode::NestedLibraryPool: return "NestedLibraryPool";
    case Mode::NestedUserDevice: return "NestedUserDevice";
    case Mode::TwoPools: return "TwoPools";
  }
  return "?";
}

// One caller: where it runs (its own std::thread, or a task of `pool`) and what it calls.
template <class F>
struct Caller {
  Eigen::ThreadPool* pool;  // null: a std::thread
  const F* f;
  const AnyAttention<typename F::scalar_type>* any;
};

// Starts every caller, lets those that can run at once (`at_once`: tasks queued behind a busy
// pool thread cannot) start their first call together, and waits for all; a deadlock fails the
// test binary instead of hanging it.
template <class F>
std::vector<CallerResult<F>> run_callers(const std::vector<Caller<F>>& callers, int at_once, const char* name,
                                         const ConcurrencyInputs<typename F::scalar_type>& in) {
  std::vector<CallerResult<F>> results(callers.size());
  std::atomic<int> arrived{0};
  Eigen::Barrier done(static_cast<unsigned>(callers.size()));
  auto body = [&](size_t i) {
    ++arrived;
    while (arrived.load() < at_once) std::this_thread::yield();
    call_every_way(*callers[i].f, *callers[i].any, name, in, static_cast<int>(i % kWays), results[i]);
    done.Notify();
  };
  finishes_in_time(
      "concurrent calls",
      [&] {
        std::vector<std::thread> threads;
        for (size_t i = 0; i < callers.size(); ++i) {
          if (callers[i].pool)
            callers[i].pool->Schedule([&body, i] { body(i); });
          else
            threads.emplace_back(body, i);
        }
        done.Wait();
        for (std::thread& t : threads) t.join();
      },
      std::chrono::seconds(300));  // generous: ThreadSanitizer on a loaded 2-core machine
  return results;
}

// The concurrent calls of method F in `mode`, each checked against the serial call.
template <class F>
void check_concurrent(Mode mode, const char* name) {
  using T = typename F::scalar_type;
  const ConcurrencyInputs<T> in;
  F base;
  learn(base);  // the bias is built here; its caches are built by the first call
  const auto with = [&](const Parallel& p) {
    F f = base;  // a copy: shares the bias
    f.parallel = p;
    return f;
  };
  Eigen::ThreadPool pool_a(mode == Mode::TwoPools ? 1 : 2), pool_b(1);
  const Eigen::ThreadPoolDevice on_a(&pool_a, mode == Mode::TwoPools ? 2 : 3), on_b(&pool_b, 2);
  const bool device = mode == Mode::UserDevice || mode == Mode::NestedUserDevice || mode == Mode::TwoPools;
  const F f = with(device ? Parallel::on(on_a) : mode == Mode::NoPool ? Parallel{} : Parallel::with_threads(kLibraryThreads));
  const F f_b = with(Parallel::on(on_b));
  const AnyAttention<T> any(f, name), any_b(f_b, name);

  std::vector<Caller<F>> callers;
  int at_once = kThreads;
  switch (mode) {
    case Mode::NoPool:
    case Mode::LibraryPool:
    case Mode::UserDevice:
      callers.assign(kThreads, Caller<F>{nullptr, &f, &any});
      break;
    case Mode::NestedLibraryPool:
    case Mode::NestedUserDevice: {
      // Three tasks on the (2-thread) pool f uses, each calling f, and one caller outside it whose
      // helpers queue behind them. softfree::detail::shared_pool is the pool with_threads uses.
      Eigen::ThreadPool* pool =
          mode == Mode::NestedUserDevice ? &pool_a : &softfree::detail::shared_pool(kLibraryThreads - 1);
      callers.assign(3, Caller<F>{pool, &f, &any});
      callers.push_back(Caller<F>{nullptr, &f, &any});
      at_once = 2 + 1;
      break;
    }
    case Mode::TwoPools:
      // Each pool's only thread runs a task calling a functor on the other pool (as
      // ParallelFor.TwoPoolsCallingIntoEachOtherDoNotDeadlock does with one method).
      callers = {Caller<F>{&pool_a, &f_b, &any_b}, Caller<F>{&pool_b, &f, &any}};
      at_once = 2;
      break;
  }
  const std::vector<CallerResult<F>> results = run_callers(callers, at_once, name, in);

  // The same calls, serially, on a fresh functor (its caches built here, by this thread alone).
  F serial = base;
  learn(serial);
  serial.parallel = Parallel{};
  Tensor4<T> want(kB, kH, kN, kD);
  const typename F::report_type want_report = serial.run(in.q, in.k, in.v, View4<T>(want.data(), want.dimensions()));
  const Tensor4<T> want_tied = serial(in.q, in.q, in.v);
  const Tensor4<T> want_made = softfree::make_attention<T>(name)(in.q, in.k, in.v);
  // Meaningful references: finite (a NaN everywhere would compare equal to itself bitwise).
  for (const Tensor4<T>* t : std::initializer_list<const Tensor4<T>*>{&want, &want_tied, &want_made})
    for (Index i = 0; i < t->size(); ++i)
      ASSERT_TRUE(std::isfinite(static_cast<double>(t->data()[i]))) << "serial result not finite at " << i;

  for (size_t i = 0; i < results.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "caller " << i << (callers[i].pool ? " (a pool task)" : " (a std::thread)"));
    const CallerResult<F>& r = results[i];
    ASSERT_TRUE(r.error.empty()) << "threw: " << r.error;
    for (int way = 0; way < kWays; ++way) {
      const Tensor4<T>& expected = way == kTied ? want_tied : way == kMade ? want_made : want;
      EXPECT_TRUE(bitwise_equal(r.out[static_cast<size_t>(way)], expected))
          << kWayNames[static_cast<size_t>(way)] << " differs from the serial call";
    }
    EXPECT_TRUE(same_report(r.report, want_report)) << "run()'s report differs from the serial call's";
    EXPECT_TRUE(same_report(r.any_report, want_report)) << "AnyAttention::run()'s report differs from the serial call's";
  }
}

using Param = std::tuple<size_t, Mode>;  // method index, mode

std::string param_name(const ::testing::TestParamInfo<Param>& info) {
  std::string s = kNames[std::get<0>(info.param)];
  for (char& c : s)
    if (c == '-') c = '_';
  return s + "_" + mode_name(std::get<1>(info.param));
}

const auto kModes = ::testing::Values(Mode::NoPool, Mode::LibraryPool, Mode::UserDevice, Mode::NestedLibraryPool,
                                      Mode::NestedUserDevice, Mode::TwoPools);

template <class T>
void check_concurrent(const Param& p) {
  with_method<T>(std::get<0>(p), [&](auto tag) { check_concurrent<decltype(tag)>(std::get<1>(p), kNames[std::get<0>(p)]); });
}

class ConcurrentFloat : public ::testing::TestWithParam<Param> {};
TEST_P(ConcurrentFloat, BitwiseEqualToSerial) { check_concurrent<float>(GetParam()); }
INSTANTIATE_TEST_SUITE_P(Concurrency, ConcurrentFloat, ::testing::Combine(::testing::Range<size_t>(0, kNames.size()), kModes),
                         param_name);

class ConcurrentBf16 : public ::testing::TestWithParam<Param> {};
TEST_P(ConcurrentBf16, BitwiseEqualToSerial) { check_concurrent<Eigen::bfloat16>(GetParam()); }
INSTANTIATE_TEST_SUITE_P(Concurrency, ConcurrentBf16, ::testing::Combine(::testing::Range<size_t>(0, kNames.size()), kModes),
                         param_name);

// bfloat16 on the bf16 pair products (forced, as SOFTFREE_BF16_PRODUCTS=force does: the rule keeps
// them off CPUs with AMX), for the methods that have bf16 kernels: their own caches (AftFull's
// pairs table) and kernels.
template <size_t... I>
std::vector<size_t> methods_with_bf16_kernels(std::index_sequence<I...>) {
  std::vector<size_t> v;
  ((softfree::detail::has_bf16_products<std::tuple_element_t<I, Methods<Eigen::bfloat16>>>::value ? v.push_back(I)
                                                                                                  : void()),
   ...);
  return v;
}

class ConcurrentBf16Pairs : public ::testing::TestWithParam<Param> {};
TEST_P(ConcurrentBf16Pairs, BitwiseEqualToSerial) {
  softfree::detail::ScopedBf16Products force(true);
  const softfree::BackendInfo info = softfree::backend_info<Eigen::bfloat16>();
  if (!info.native_bf16) GTEST_SKIP() << "no bf16 pair products in this build or on this CPU: " << info.reason;
  check_concurrent<Eigen::bfloat16>(GetParam());
}
INSTANTIATE_TEST_SUITE_P(Concurrency, ConcurrentBf16Pairs,
                         ::testing::Combine(::testing::ValuesIn(methods_with_bf16_kernels(
                                                std::make_index_sequence<std::tuple_size<Methods<float>>::value>{})),
                                            kModes),
                         param_name);

// SoftNystrom with more keys than one chunk (core/schedule.hpp's kTokenChunk) and fewer heads
// than its threads runs in phases over buffers of the call (landmarks, R V partials per chunk, P
// kept per head): concurrent calls of one functor on the library pool (3 threads, 2 heads: the
// phases), tied and untied, each bitwise equal to the serial call (fused) with the same report.
TEST(Concurrency, SoftNystromSplitAcrossTokenChunks) {
  const Index n = softfree::detail::kTokenChunk + 200, m = 8;
  // Tokens about m centres along the sequence: landmarks apart, A well conditioned.
  const auto q = clustered<float>(random_tensor<double>(1, 2, m, kD, 21, -2, 2), n, segment_of(n, m), 22);
  const Tensor4<float> k = keys_near(q, 23), v = random_tensor<float>(1, 2, n, kD, 24);
  softfree::SoftNystrom<float> serial;
  serial.landmarks = softfree::Landmarks::segments(m);
  softfree::SoftNystrom<float> f = serial;
  f.parallel = Parallel::with_threads(kLibraryThreads);
  std::array<Tensor4<float>, 2> want;
  std::array<softfree::NewtonDiagnostics, 2> want_report;
  for (size_t tied = 0; tied < 2; ++tied) {
    want[tied] = Tensor4<float>(1, 2, n, kD);
    want_report[tied] = serial.run(q, tied ? q : k, v, View4<float>(want[tied].data(), want[tied].dimensions()));
    for (Index i = 0; i < want[tied].size(); ++i)
      ASSERT_TRUE(std::isfinite(want[tied].data()[i])) << "serial result not finite at " << i;
  }
  struct Result {
    std::array<Tensor4<float>, 2> out;
    std::array<softfree::NewtonDiagnostics, 2> report;
  };
  std::vector<Result> results(kThreads);
  finishes_in_time(
      "concurrent split SoftNystrom calls",
      [&] {
        std::vector<std::thread> threads;
        for (int i = 0; i < kThreads; ++i)
          threads.emplace_back([&, i] {
            for (int j = 0; j < 2; ++j) {
              const size_t tied = static_cast<size_t>((i + j) % 2);  // callers start on different ways
              Result& r = results[static_cast<size_t>(i)];
              r.out[tied] = Tensor4<float>(1, 2, n, kD);
              r.report[tied] = f.run(q, tied ? q : k, v, View4<float>(r.out[tied].data(), r.out[tied].dimensions()));
            }
          });
        for (std::thread& t : threads) t.join();
      },
      std::chrono::seconds(300));
  for (int i = 0; i < kThreads; ++i)
    for (size_t tied = 0; tied < 2; ++tied) {
      SCOPED_TRACE(::testing::Message() << "caller " << i << (tied ? ", tied" : ", untied"));
      EXPECT_TRUE(bitwise_equal(results[static_cast<size_t>(i)].out[tied], want[tied]));
      EXPECT_TRUE(same_report(results[static_cast<size_t>(i)].report[tied], want_report[tied]));
    }
}

// The table above is make_attention's: the same names in the same order, each building that type.
template <class T>
void check_names() {
  const std::vector<std::string> names = softfree::attention_names();
  ASSERT_EQ(names.size(), kNames.size());
  for (size_t i = 0; i < kNames.size(); ++i) {
    EXPECT_EQ(names[i], kNames[i]);
    with_method<T>(i, [&](auto tag) {
      EXPECT_NE(softfree::make_attention<T>(kNames[i]).template target<decltype(tag)>(), nullptr) << kNames[i];
    });
  }
}
TEST(Concurrency, CoversEveryRegisteredName) {
  check_names<float>();
  check_names<Eigen::bfloat16>();
}

}  // namespace
