#pragma once
// The packet vocabulary of the kernel layer: the packet type of an accumulate type, its lane
// count, padding to whole packets, scalar conversions of half and bfloat16, and an aligned
// buffer. No intrinsics here (they live in the backend_*.hpp files).
//
// A "packet" is Eigen's SIMD register type for the accumulate type (16 floats with AVX-512, 8
// with AVX, 4 with SSE/NEON); a plain scalar is a packet of one lane, which is how column tails
// go through the same code. Packet types are never named as arguments of our own class or
// variable templates (GCC then warns that it ignores their vector attributes): lanes<P>() is a
// function.
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

#include "../precision.hpp"
#include "../tensor.hpp"
#include "isa.hpp"

namespace softfree {
namespace detail {
inline namespace SOFTFREE_ISA {

namespace ei = Eigen::internal;

/// The widest packet of accumulate type Acc this build has.
template <class Acc>
using Packet = typename ei::packet_traits<Acc>::type;

/// Lanes of a packet type (1 for a scalar).
template <class P>
constexpr Index lanes() {
  return ei::unpacket_traits<P>::size;
}

/// Lanes of Acc's widest packet.
template <class Acc>
constexpr Index kLanes = ei::unpacket_traits<Packet<Acc>>::size;

/// The scalar type of a packet.
template <class P>
using scalar_of = typename ei::unpacket_traits<P>::type;

/// n rounded up to a whole number of Acc packets: the row stride of padded tiles.
template <class Acc>
constexpr Index pad_to_packets(Index n) {
  return (n + kLanes<Acc> - 1) / kLanes<Acc> * kLanes<Acc>;
}

/// Calls f(P{}, i) for i in [0, n): i in steps of whole packets P = Packet<Acc>, then one lane at
/// a time with P = Acc (a scalar is a packet of one lane), so one generic body covers the tail.
template <class Acc, class F>
EIGEN_ALWAYS_INLINE void for_each_packet(Index n, F&& f) {
  constexpr Index L = kLanes<Acc>;
  Index i = 0;
  for (; i + L <= n; i += L) f(Packet<Acc>{}, i);
  for (; i < n; ++i) f(Acc{}, i);
}

/// Calls f(std::integral_constant<int, N>{}) with N = min(n, Max) (n >= 1): a run-time count of
/// packets to a compile-time block width.
template <int Max, class F>
EIGEN_ALWAYS_INLINE void with_packets(Index n, F&& f) {
  if constexpr (Max <= 1) {
    f(std::integral_constant<int, 1>{});
  } else {
    if (n >= Max) return f(std::integral_constant<int, Max>{});
    with_packets<Max - 1>(n, f);
  }
}

}  // namespace SOFTFREE_ISA

// ISA-independent (the same code in every translation unit): buffers that functors may share
// across translation units, and scalar conversions.

/// Kernels address their tiles with 64-byte alignment whatever the build's packet width, so a
/// buffer's layout never depends on the ISA.
constexpr std::size_t kAlignBytes = 64;

/// Allocator of AlignedBuffer: the C++17 aligned operator new, not Eigen's aligned_malloc, whose
/// implementation (and so its pairing with aligned_free) changes with -march.
template <class T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <class U>
  AlignedAllocator(const AlignedAllocator<U>&) {}  // NOLINT: rebinding is implicit by design
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{kAlignBytes}));
  }
  void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t{kAlignBytes}); }
  template <class U>
  bool operator==(const AlignedAllocator<U>&) const { return true; }
  template <class U>
  bool operator!=(const AlignedAllocator<U>&) const { return false; }
};

/// 64-byte aligned, grow-only scratch buffer.
template <class Acc>
using AlignedBuffer = std::vector<Acc, AlignedAllocator<Acc>>;

/// Grows b to at least n elements (never shrinks) and returns its data.
template <class Acc>
Acc* reserve(AlignedBuffer<Acc>& b, Index n) {
  if (static_cast<Index>(b.size()) < n) b.resize(static_cast<std::size_t>(n));
  return b.data();
}

// Scalar conversions between storage and float. Both directions round to nearest even, as
// Eigen's own conversions do; a NaN stays a (quiet) NaN. bfloat16 is the top half of a float.

inline float to_float(float x) { return x; }
inline double to_float(double x) { return x; }
inline float to_float(Eigen::half x) { return static_cast<float>(x); }
inline float to_float(Eigen::bfloat16 x) {
  static_assert(sizeof(Eigen::bfloat16) == 2, "bfloat16 is 16 bits");
  std::uint16_t b;
  std::memcpy(&b, &x, 2);
  const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;  // exact: a float's top half
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline void from_float(float x, float* dst) { *dst = x; }
inline void from_float(double x, double* dst) { *dst = x; }
inline void from_float(float x, Eigen::half* dst) { *dst = static_cast<Eigen::half>(x); }
inline void from_float(float x, Eigen::bfloat16* dst) {
  std::uint32_t u;
  std::memcpy(&u, &x, 4);
  const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  // Round to nearest even on the dropped 16 bits; NaN stays a (quiet) NaN.
  const std::uint32_t r = nan ? (u | 0x00400000u) : u + 0x7fffu + ((u >> 16) & 1u);
  const std::uint16_t b = static_cast<std::uint16_t>(r >> 16);
  std::memcpy(static_cast<void*>(dst), &b, 2);
}

}  // namespace detail
}  // namespace softfree
