#pragma once
// Parallel execution over a fixed set of work items: Parallel (how a functor runs) and
// parallel_for. The items themselves come from the work scheduler (schedule.hpp).
//
// Every kernel splits its work into items whose boundaries depend only on the problem shape
// (for example one (batch, head) pair, or one block of query rows of it), never on the thread
// count; each item is computed by one thread start to finish with no cross-item reduction. So
// the result is bitwise identical for any number of threads. Threads claim items from a shared
// counter, which keeps both cores busy on a shared machine without changing any result.
#include <algorithm>
#include <atomic>
#include <exception>
#include <map>
#include <memory>
#include <mutex>

#include "kernels/isa.hpp"
#include "tensor.hpp"

namespace softfree {

/// How a functor runs: serially by default (no thread is created), or on the caller's
/// Eigen::ThreadPoolDevice, or on a library-owned pool of `threads` threads.
struct Parallel {
  const Eigen::ThreadPoolDevice* device = nullptr;  ///< used when set (not owned)
  int threads = 1;                                  ///< used when device is null

  static Parallel on(const Eigen::ThreadPoolDevice& d) { return Parallel{&d, 1}; }
  static Parallel with_threads(int n) { return Parallel{nullptr, n}; }

  /// Number of threads that take part, the caller's included.
  int workers() const { return device ? std::max(1, device->numThreads()) : std::max(1, threads); }
};

namespace detail {
inline namespace SOFTFREE_ISA {

/// Pools owned by the library, created on first request of a given size and kept until exit so
/// repeated calls do not pay thread start-up.
inline Eigen::ThreadPool& shared_pool(int n) {
  static std::mutex mutex;
  static std::map<int, std::unique_ptr<Eigen::ThreadPool>> pools;
  std::lock_guard<std::mutex> lock(mutex);
  auto& pool = pools[n];
  if (!pool) pool = std::make_unique<Eigen::ThreadPool>(n);
  return *pool;
}

/// Runs items [0, n). make_worker() is called once per participating thread and returns a
/// callable `worker(Index item)` that owns that thread's workspace (so nothing is allocated per
/// item). The first exception thrown by any worker is rethrown on the caller.
template <class MakeWorker>
void parallel_for(const Parallel& p, Index n, MakeWorker&& make_worker) {
  if (n <= 0) return;
  // Called from inside the pool it would hand work to (a kernel run by a task of the same
  // device), waiting on that pool could deadlock: run serially there instead.
  Eigen::ThreadPool* pool = !p.device && p.threads > 1 ? &shared_pool(p.threads - 1) : nullptr;
  const bool nested = p.device ? p.device->currentThreadId() != -1 : pool && pool->CurrentThreadId() != -1;
  const int t = nested ? 1 : static_cast<int>(std::min<Index>(p.workers(), n));
  if (t <= 1) {
    auto worker = make_worker();
    for (Index i = 0; i < n; ++i) worker(i);
    return;
  }
  std::atomic<Index> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto run = [&] {
    try {
      auto worker = make_worker();
      for (Index i = next.fetch_add(1); i < n; i = next.fetch_add(1)) worker(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next.store(n);  // stop handing out items
    }
  };
  Eigen::Barrier barrier(static_cast<unsigned>(t - 1));
  auto helper = [&] {
    run();
    barrier.Notify();
  };
  if (p.device) {
    for (int i = 1; i < t; ++i) p.device->enqueueNoNotification(helper);
  } else {
    for (int i = 1; i < t; ++i) pool->Schedule(helper);
  }
  run();
  barrier.Wait();
  if (error) std::rethrow_exception(error);
}

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
