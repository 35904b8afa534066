#pragma once
// Storage <-> accumulate conversions, packet by packet (load_packet, store_packet) and in bulk
// (convert), the tile loader that maps or converts an input block once, and the output tile that
// writes results straight into the caller's buffer when the types agree and rounds them once
// otherwise.
//
// half and bfloat16 are storage formats: products and sums run in float. Inputs are converted
// once per tile (or in registers as a streaming kernel loads them), never per element inside a
// product; results are rounded once on store.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "backend.hpp"

namespace softfree {
namespace detail {
inline namespace SOFTFREE_ISA {

/// kLanes<accum_t<T>> storage values at src as one accumulate-type packet, converted in registers.
template <class T>
EIGEN_ALWAYS_INLINE Packet<accum_t<T>> load_packet(const T* src) {
  return Backend::load(src);
}

/// Stores x at dst in storage type T, rounding once. Stream: a non-temporal store where the ISA
/// has one (for outputs larger than the caches); dst must then be aligned to the bytes stored.
template <class T, bool Stream = false>
EIGEN_ALWAYS_INLINE void store_packet(T* dst, const Packet<accum_t<T>>& x) {
  Backend::store<T, Stream>(dst, x);
}

/// Orders streamed stores before the caller reads the output.
inline void stream_fence() { Backend::stream_fence(); }

/// Streaming kernels prefetch their inputs this far ahead: they convert tiles of several inputs in
/// turn (K, V, Q), and the hardware prefetcher alone follows such interleaved streams poorly
/// (AftSimple in half at N = 16384 read memory at half the speed without it).
constexpr Index kPrefetchBytes = 16384;

template <class T>
EIGEN_ALWAYS_INLINE void prefetch_ahead(const T* p) {
  ei::prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes);
}

/// n values from storage to the accumulate type.
template <class T, class Acc>
void convert(const T* src, Acc* dst, Index n) {
  if constexpr (std::is_same<T, Acc>::value) {
    std::copy(src, src + n, dst);
  } else {
    constexpr Index L = kLanes<Acc>;
    Index i = 0;
    for (; i + L <= n; i += L) {
      prefetch_ahead(src + i);
      ei::pstoreu(dst + i, load_packet(src + i));
    }
    for (; i < n; ++i) dst[i] = to_float(src[i]);
  }
}

/// n accumulate-type values to storage, rounded to nearest even.
template <class Acc, class T>
void convert_out(const Acc* src, T* dst, Index n) {
  if constexpr (std::is_same<T, Acc>::value) {
    std::copy(src, src + n, dst);
  } else {
    constexpr Index L = kLanes<Acc>;
    Index i = 0;
    for (; i + L <= n; i += L) store_packet(dst + i, ei::ploadu<Packet<Acc>>(src + i));
    for (; i < n; ++i) from_float(src[i], dst + i);
  }
}

/// A rows x d block of storage as accumulate-type rows of stride ld (>= d): the source itself
/// when no conversion or padding is needed, else a copy in buf (padding columns zero).
template <class T, class Acc>
const Acc* padded_rows(const T* src, Index rows, Index d, Index ld, Acc* buf) {
  if (ld == d) {
    if constexpr (std::is_same<T, Acc>::value) return src;
    convert(src, buf, rows * d);
    return buf;
  }
  for (Index r = 0; r < rows; ++r) {
    convert(src + r * d, buf + r * ld, d);
    std::fill(buf + r * ld + d, buf + r * ld + ld, Acc(0));
  }
  return buf;
}

/// Maps a contiguous rows x cols block of storage as an accumulate-type matrix: directly when the
/// types agree, otherwise converted into a buffer owned by the loader (grown once, reused).
/// Asking again for the block it converted last returns that copy without converting again
/// (inputs are const for the length of a call, and a loader lives no longer than one call).
template <class T>
class TileLoader {
  using Acc = accum_t<T>;

 public:
  ConstMatrixMap<Acc> operator()(const T* src, Index rows, Index cols) {
    if constexpr (std::is_same<T, Acc>::value) {
      return ConstMatrixMap<Acc>(src, rows, cols);
    } else {
      if (src != last_src_ || rows * cols != last_size_) {
        convert(src, reserve(buf_, rows * cols), rows * cols);
        last_src_ = src;
        last_size_ = rows * cols;
      }
      return ConstMatrixMap<Acc>(buf_.data(), rows, cols);
    }
  }

 private:
  AlignedBuffer<Acc> buf_;  // unused when T == Acc
  const T* last_src_ = nullptr;
  Index last_size_ = 0;
};

/// Where a kernel writes a block of results bound for rows of the caller's output: the output
/// itself when T is the accumulate type and the row strides agree, else a reused tile of the
/// accumulate type, rounded (or copied) once by commit().
template <class T>
class OutputTile {
  using Acc = accum_t<T>;

 public:
  /// Space for rows x cols results with row stride ld (>= cols), bound for dst (rows of cols).
  Acc* begin(T* dst, Index rows, Index cols, Index ld) {
    dst_ = dst;
    rows_ = rows;
    cols_ = cols;
    ld_ = ld;
    if constexpr (std::is_same<T, Acc>::value) {
      if (ld == cols) return dst;
    }
    return reserve(buf_, rows * ld);
  }
  Acc* begin(T* dst, Index rows, Index cols) { return begin(dst, rows, cols, cols); }

  /// Moves the results into dst (nothing to do when they were written there).
  void commit() const {
    const Acc* y = buf_.data();
    if constexpr (std::is_same<T, Acc>::value) {
      if (ld_ == cols_) return;
    }
    if (ld_ == cols_) return convert_out(y, dst_, rows_ * cols_);
    for (Index r = 0; r < rows_; ++r) convert_out(y + r * ld_, dst_ + r * cols_, cols_);
  }

 private:
  AlignedBuffer<Acc> buf_;
  T* dst_ = nullptr;
  Index rows_ = 0, cols_ = 0, ld_ = 0;
};

/// The queries and output rows of every query head of a grouped-query group, for kernels that
/// finish rows of all the group's heads from one shared result: head i's queries at q + i * stride
/// and its output at out + i * stride (rows of d). Rows are opened a block at a time, so a thread
/// holds one block per head (converted, for half and bfloat16), never whole heads.
template <class T>
class GroupIO {
  using Acc = accum_t<T>;

 public:
  void bind(const T* q, T* out, Index heads, Index stride, Index d) {
    const auto n = static_cast<size_t>(heads);
    if (load_.size() < n) load_.resize(n), tile_.resize(n), q_.resize(n), y_.resize(n);
    q_src_ = q, out_ = out, heads_ = heads, stride_ = stride, d_ = d;
  }
  /// Opens rows [r0, r0 + rows) of every head: q(i) and y(i) then point at their row r0.
  void rows(Index r0, Index rows) {
    for (Index i = 0; i < heads_; ++i) {
      const auto u = static_cast<size_t>(i);
      q_[u] = load_[u](q_src_ + i * stride_ + r0 * d_, rows, d_).data();
      y_[u] = tile_[u].begin(out_ + i * stride_ + r0 * d_, rows, d_);
    }
  }
  const Acc* q(Index i) const { return q_[static_cast<size_t>(i)]; }
  Acc* y(Index i) const { return y_[static_cast<size_t>(i)]; }
  /// Stores the open rows of every head.
  void commit() const {
    for (Index i = 0; i < heads_; ++i) tile_[static_cast<size_t>(i)].commit();
  }
  Index heads() const { return heads_; }

 private:
  std::vector<TileLoader<T>> load_;
  std::vector<OutputTile<T>> tile_;
  std::vector<const Acc*> q_;
  std::vector<Acc*> y_;
  const T* q_src_ = nullptr;
  T* out_ = nullptr;
  Index heads_ = 0, stride_ = 0, d_ = 0;
};

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
