#pragma once
// The work scheduler: a call's work as items fixed by the shape alone (never by the thread
// count), each computed by one thread start to finish, so results are bitwise identical for any
// number of threads. An item is a block of rows of one (b, h) head, or of a group of heads that
// share something worth reading once (AftFull's bias).
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
};

/// The slices of q, k, v and out for head h of batch b: row-major N x D blocks.
template <class T>
struct HeadSlices {
  const T *q, *k, *v;
  T* out;
};
template <class T>
HeadSlices<T> head_slices(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v, const View4<T>& out,
                          Index b, Index h) {
  return {head(q, b, h).data(), head(k, b, h).data(), head(v, b, h).data(), head(out, b, h).data()};
}

/// Runs every item of grid; make_worker() is called once per participating thread and returns
/// a callable `worker(const WorkGrid::Item&)` that owns that thread's workspace.
template <class MakeWorker>
void for_each_item(const Parallel& p, const WorkGrid& grid, MakeWorker&& make_worker) {
  parallel_for(p, grid.size(), [&] {
    return [&grid, worker = make_worker()](Index i) mutable { worker(grid[i]); };
  });
}

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
