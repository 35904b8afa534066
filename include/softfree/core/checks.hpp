#pragma once
// Input checks shared by every attention. Each throws softfree::invalid_argument naming the
// argument and the shapes involved; all run before any output element is written.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "tensor.hpp"

namespace softfree {
namespace detail {

/// A shape with positive dimensions whose element count, and byte count, fit in Index (so
/// Shape4::size() and every offset into the tensor are exact).
inline void check_addressable(const char* where, const char* name, const Shape4& s, size_t elem_bytes) {
  Index left = std::numeric_limits<Index>::max() / static_cast<Index>(elem_bytes);
  for (Index d : {s.B, s.H, s.N, s.D}) {
    if (d > left)
      fail(where, name, " has shape ", s, ": its size (", elem_bytes, "-byte elements) overflows the index type");
    left /= d;
  }
}

/// Checks q, k, v of an attention `where` and returns the output shape [B, H, Nq, D].
/// Every dimension must be positive (an empty tensor is an error, not an empty result: an
/// attention over zero keys or zero channels has no meaning). B and D agree across q, k, v; k and
/// v have the same heads H_kv, which divide q's H (grouped-query heads; H_kv = H is plain
/// multi-head), and the same N; q's N may differ (cross-attention) only when allow_cross.
template <class Q, class K, class V>
Shape4 check_qkv(const char* where, const Q& q, const K& k, const V& v, bool allow_cross) {
  const Shape4 sq = shape_of(q), sk = shape_of(k), sv = shape_of(v);
  const char* names[] = {"q", "k", "v"};
  const Shape4 shapes[] = {sq, sk, sv};
  for (int i = 0; i < 3; ++i) {
    const Shape4& s = shapes[i];
    if (s.B <= 0 || s.H <= 0 || s.N <= 0 || s.D <= 0)
      fail(where, names[i], " has shape ", s, " [B, H, N, D]: every dimension must be positive");
    check_addressable(where, names[i], s, sizeof(typename Q::Scalar));
  }
  for (int i = 1; i < 3; ++i) {
    const Shape4& s = shapes[i];
    if (s.B != sq.B)
      fail(where, names[i], " has shape ", s, " but q has shape ", sq, ": batch (B) must match");
    if (s.D != sq.D)
      fail(where, names[i], " has shape ", s, " but q has shape ", sq, ": head dim (D) must match");
  }
  if (sk.H != sv.H)
    fail(where, "v has shape ", sv, " but k has shape ", sk, ": k and v must have the same heads (H)");
  if (sq.H % sk.H != 0)  // grouped-query heads: each k/v head serves H / H_kv query heads
    fail(where, "k and v have shape ", sk, " but q has shape ", sq, ": their heads (H_kv = ", sk.H,
         ") must divide q's (H = ", sq.H, "), as for grouped-query heads");
  if (sk.N != sv.N)
    fail(where, "v has shape ", sv, " but k has shape ", sk, ": k and v must have the same tokens (N)");
  if (!allow_cross && sq.N != sk.N)
    fail(where, "k has shape ", sk, " but q has shape ", sq,
         ": this attention needs as many keys as queries (N)");
  return Shape4{sq.B, sq.H, sq.N, sq.D};
}

inline bool overlaps(const void* a, Index a_bytes, const void* b, Index b_bytes) {
  const auto pa = reinterpret_cast<std::uintptr_t>(a), pb = reinterpret_cast<std::uintptr_t>(b);
  return pa < pb + static_cast<std::uintptr_t>(b_bytes) && pb < pa + static_cast<std::uintptr_t>(a_bytes);
}

/// Checks the caller's output buffer: the expected shape, and no overlap with any input (the
/// kernels read inputs after writing outputs, so aliasing would corrupt the result).
template <class T, class... In>
void check_out(const char* where, const View4<T>& out, const Shape4& expected, const In&... inputs) {
  const Shape4 so = shape_of(out);
  if (so != expected) fail(where, "out has shape ", so, " but the result has shape ", expected);
  const Index out_bytes = so.size() * static_cast<Index>(sizeof(T));
  const bool alias = (... || overlaps(out.data(), out_bytes, inputs.data(),
                                      shape_of(inputs).size() * static_cast<Index>(sizeof(T))));
  if (alias) fail(where, "out (shape ", so, ") overlaps an input tensor: pass a separate buffer");
}

/// x is neither infinite nor NaN, decided on its bits: under -ffast-math a consumer's compiler
/// may assume no NaN or Inf exists and fold std::isfinite(x) to true.
inline bool is_finite(double x) {
  std::uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return (bits >> 52 & 0x7ff) != 0x7ff;
}

/// A strictly positive, finite scalar option.
inline void check_positive_finite(const char* where, const char* name, double x) {
  if (!(is_finite(x) && x > 0)) fail(where, name, " = ", x, ": must be positive and finite");
}

/// A non-negative, finite scalar option.
inline void check_nonnegative_finite(const char* where, const char* name, double x) {
  if (!(is_finite(x) && x >= 0)) fail(where, name, " = ", x, ": must be non-negative and finite");
}

/// Per-batch valid key counts: empty (no padding) or exactly B values in [0, Nk].
inline void check_key_lengths(const char* where, const std::vector<Index>& lengths, Index B, Index Nk) {
  if (lengths.empty()) return;
  if (static_cast<Index>(lengths.size()) != B)
    fail(where, "key_lengths has ", lengths.size(), " entries but the batch has B = ", B);
  for (size_t b = 0; b < lengths.size(); ++b)
    if (lengths[b] < 0 || lengths[b] > Nk)
      fail(where, "key_lengths[", b, "] = ", lengths[b], " is outside [0, ", Nk, "] (k has ", Nk, " tokens)");
}

}  // namespace detail
}  // namespace softfree
