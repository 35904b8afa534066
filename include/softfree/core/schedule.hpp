#pragma once
// The work scheduler: a call's work as items fixed by the shape alone (never by the thread
// count), each computed by one thread start to finish, so results are bitwise identical for any
// number of threads. An item is a block of rows of one (b, h) head, or of a group of heads that
// share something worth reading once (AftFull's bias).
#include <algorithm>
#include <new>
#include <utility>
#include <vector>

#include "kernels/packet.hpp"
#include "parallel.hpp"

namespace softfree {
namespace detail {
inline namespace SOFTFREE_ISA {

/// Items over [B, H, n rows]: heads in groups of `group` (which divides H), rows in blocks of
/// `block` (the whole head by default).
struct WorkGrid {
  Index B = 1, H = 1, n = 1, block = 0, group = 1;

  struct Item {
    Index b, h, heads, r0, rows;  ///< batch, first head, heads in the group, first row, rows
    Index bh;                     ///< b * H + h: the head's index among all B * H
  };

  Index row_block() const { return block > 0 ? block : n; }
  Index blocks() const { return (n + row_block() - 1) / row_block(); }
  Index size() const { return B * (H / group) * blocks(); }

  Item operator[](Index i) const {
    const Index nb = blocks(), bg = i / nb, groups = H / group;
    const Index r0 = (i % nb) * row_block();
    const Index b = bg / groups, h = (bg % groups) * group;
    return Item{b, h, group, r0, std::min(row_block(), n - r0), b * H + h};
  }
  /// The i with (*this)[i] == it: where an item's partial result goes (Partials).
  Index index(const Item& it) const {
    return (it.b * (H / group) + it.h / group) * blocks() + it.r0 / row_block();
  }
};

/// Token-split work: the tokens of one head cut in chunks of kTokenChunk (WorkGrid{B, H, N,
/// kTokenChunk}), a size fixed here, never by the thread count, so partial results reduced in
/// chunk order, and prefix sums run as chunk totals then a scan, are bitwise identical for any
/// number of threads. 1024 rows: a few hundred microseconds of O(N D^2) work at D = 64, enough to
/// pay for a phase's start, and 16 items per head at N = 16384.
constexpr Index kTokenChunk = 1024;

/// Chunks of kTokenChunk in n tokens.
inline Index token_chunks(Index n) { return (n + kTokenChunk - 1) / kTokenChunk; }

/// Whether `items` whole-head items fill at least 7/8 of the rounds of `threads` threads: where
/// they do, a method that can also split its heads in token chunks runs them whole (no phases to
/// wait for, no shared buffers). A schedule's choice only: both give the same bits.
inline bool fills_rounds(Index items, int threads) {
  const Index t = std::max(1, threads), rounds = (items + t - 1) / t;
  return 8 * items >= 7 * rounds * t;
}

/// An aligned array left uninitialised (a std::vector would zero it on the calling thread, one
/// serial pass over all of it): shared buffers of token-split phases,
/// every value written by one phase before a later one reads it.
template <class W>
class UninitArray {
 public:
  explicit UninitArray(Index n)
      : p_(static_cast<W*>(::operator new(static_cast<size_t>(n) * sizeof(W), std::align_val_t{kAlignBytes}))) {}
  ~UninitArray() { ::operator delete(p_, std::align_val_t{kAlignBytes}); }
  UninitArray(const UninitArray&) = delete;
  UninitArray& operator=(const UninitArray&) = delete;
  W* data() const { return p_; }

 private:
  W* p_;
};

/// Partial results of a phase, one slot of `size` values per item of its grid (slot
/// grid.index(item)), read back in slot order.
template <class Acc>
class Partials {
 public:
  Partials(Index slots, Index size) : size_(size), buf_(static_cast<size_t>(slots * size), Acc(0)) {}
  Acc* operator[](Index slot) { return buf_.data() + slot * size_; }
  const Acc* operator[](Index slot) const { return buf_.data() + slot * size_; }
  Index size() const { return size_; }

 private:
  Index size_;
  AlignedBuffer<Acc> buf_;
};

/// The slices of q, k, v and out for query head h of batch b (k and v: the kv head it reads):
/// row-major N x D blocks.
template <class T>
struct HeadSlices {
  const T *q, *k, *v;
  T* out;
};
template <class T>
HeadSlices<T> head_slices(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v, const View4<T>& out,
                          Index b, Index h) {
  const Index H = shape_of(q).H;
  return {head(q, b, h).data(), kv_head(k, b, h, H).data(), kv_head(v, b, h, H).data(), head(out, b, h).data()};
}

/// What the query heads of one kv head (a grouped-query group) read and write: that kv head's k
/// and v, and the q and out rows of its H / H_kv query heads, query head i of the group at
/// q + i * stride and out + i * stride. Work on k and v alone is done once for all of them.
template <class T>
struct GroupSlices {
  const T *q, *k, *v;
  T* out;
  Index heads, stride;
};
template <class T>
GroupSlices<T> group_slices(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v,
                            const View4<T>& out, Index b, Index kv_h) {
  const Shape4 sq = shape_of(q);
  const Index heads = sq.H / shape_of(k).H;
  return {head(q, b, kv_h * heads).data(), head(k, b, kv_h).data(), head(v, b, kv_h).data(),
          head(out, b, kv_h * heads).data(), heads, sq.N * sq.D};
}

}  // namespace SOFTFREE_ISA

/// While one is alive, the calls a thread makes record the item count of each parallel phase
/// they run (for_each_item), in order: what docs/scaling.md states, checked by the tests.
class ScheduleTrace {
 public:
  ScheduleTrace() : outer_(current()) { current() = this; }
  ~ScheduleTrace() { current() = outer_; }
  ScheduleTrace(const ScheduleTrace&) = delete;
  ScheduleTrace& operator=(const ScheduleTrace&) = delete;
  const std::vector<Index>& phases() const { return phases_; }

  static void record(Index items) {
    if (ScheduleTrace* t = current()) t->phases_.push_back(items);
  }

 private:
  static ScheduleTrace*& current() {
    thread_local ScheduleTrace* t = nullptr;
    return t;
  }
  ScheduleTrace* outer_;
  std::vector<Index> phases_;
};

inline namespace SOFTFREE_ISA {

/// Runs every item of grid (one parallel phase); make_worker() is called once per participating
/// thread and returns a callable `worker(const WorkGrid::Item&)` that owns that thread's workspace.
template <class MakeWorker>
void for_each_item(const Parallel& p, const WorkGrid& grid, MakeWorker&& make_worker) {
  ScheduleTrace::record(grid.size());
  parallel_for(p, grid.size(), [&] {
    return [&grid, worker = make_worker()](Index i) mutable { worker(grid[i]); };
  });
}

/// Runs items 0..n-1 that are no WorkGrid's items (token chunks of two grids at once, heads to
/// redo, a scan per head) as one parallel phase, recorded as for_each_item's are.
template <class MakeWorker>
void for_each_index(const Parallel& p, Index n, MakeWorker&& make_worker) {
  if (n <= 0) return;
  ScheduleTrace::record(n);
  parallel_for(p, n, std::forward<MakeWorker>(make_worker));
}

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
