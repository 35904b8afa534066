#pragma once
// Parallel execution over a fixed set of work items: Parallel (how a functor runs) and
// parallel_for. The items themselves come from the work scheduler (schedule.hpp).
//
// Every kernel splits its work into items whose boundaries depend only on the problem shape
// (for example one (batch, head) pair, one block of query rows of it, or one chunk of its
// tokens), never on the thread count; each item is computed by one thread start to finish, and
// where a later phase combines items' partial results (schedule.hpp's Partials), it does so in
// item order. So the result is bitwise identical for any number of threads. Threads claim items from a shared
// counter, which keeps both cores busy on a shared machine without changing any result.
#include <algorithm>
#include <atomic>
#include <condition_variable>
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

/// What the caller and its helpers share. A helper joins only while the caller has not closed
/// the call, so the caller can return once it is closed and every joined helper has left: a
/// helper that starts later (its pool was busy) finds it closed and touches nothing else.
class ParallelCall {
 public:
  explicit ParallelCall(Index n) : n_(n) {}
  bool join() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (closed_) return false;
    ++active_;
    return true;
  }
  void leave() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (--active_ == 0) left_.notify_all();
  }
  /// Closes the call and waits for the helpers that joined it.
  void close() {
    std::unique_lock<std::mutex> lock(mutex_);
    closed_ = true;
    left_.wait(lock, [this] { return active_ == 0; });
  }
  /// Claims and runs items until none is left; the first exception stops the others.
  template <class MakeWorker>
  void run(MakeWorker& make_worker) {
    if (next_.load() >= n_) return;  // nothing left: no workspace to build
    try {
      auto worker = make_worker();
      for (Index i = next_.fetch_add(1); i < n_; i = next_.fetch_add(1)) worker(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
      next_.store(n_);
    }
  }
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  const Index n_;
  std::atomic<Index> next_{0};
  std::mutex mutex_;
  std::condition_variable left_;
  int active_ = 0;
  bool closed_ = false;
  std::exception_ptr error_;
};

/// Runs items [0, n). make_worker() is called once per participating thread and returns a
/// callable `worker(Index item)` that owns that thread's workspace (so nothing is allocated per
/// item). The first exception thrown by any worker is rethrown on the caller.
///
/// The caller never waits for a helper to start: it claims items itself until none is left,
/// then waits only for helpers already running. So no combination of pools (a task of pool A
/// calling into pool B while B's calls into A) can deadlock, and a call from inside the pool it
/// uses completes on the caller alone.
template <class MakeWorker>
void parallel_for(const Parallel& p, Index n, MakeWorker&& make_worker) {
  if (n <= 0) return;
  Eigen::ThreadPool* pool = !p.device && p.threads > 1 ? &shared_pool(p.threads - 1) : nullptr;
  // From inside the pool itself, no helper could start before this task ends: skip scheduling.
  const bool nested = p.device ? p.device->currentThreadId() != -1 : pool && pool->CurrentThreadId() != -1;
  const int t = nested ? 1 : static_cast<int>(std::min<Index>(p.workers(), n));
  if (t <= 1) {
    auto worker = make_worker();
    for (Index i = 0; i < n; ++i) worker(i);
    return;
  }
  // Shared ownership: a helper may start after this function returned (it then does nothing).
  const auto call = std::make_shared<ParallelCall>(n);
  auto* make = &make_worker;
  auto helper = [call, make] {
    if (!call->join()) return;
    call->run(*make);
    call->leave();
  };
  for (int i = 1; i < t; ++i) {
    if (p.device)
      p.device->enqueueNoNotification(helper);
    else if (pool)
      pool->Schedule(helper);
  }
  call->run(make_worker);
  call->close();
  call->rethrow();
}

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
