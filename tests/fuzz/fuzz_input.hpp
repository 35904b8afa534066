#pragma once
// The fuzz harness's view of one input: a byte reader with a fixed layout (so the seed corpus,
// tests/fuzz/make_corpus.py, can spell each case out), the value and option tables the bytes
// index, and the oracle's failure report. See fuzz_attention.hpp for the layout and the oracle.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>

namespace softfree_fuzz {

/// Reports why the input is a finding and stops the process (libFuzzer saves the input).
[[noreturn]] inline void finding(const char* what, const char* method, const char* type) {
  std::fprintf(stderr, "softfree fuzz FINDING: %s [method %s, storage %s]\n", what, method, type);
  std::fflush(stderr);
  __builtin_trap();
}

/// Bytes at fixed offsets; reads past the end give bytes of a deterministic stream seeded by the
/// input, so short inputs still fill whole tensors and every input is reproducible.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < size; ++i) h = (h ^ data[i]) * 1099511628211ull;
    state_ = h | 1;
  }
  uint8_t at(size_t i) {
    if (i < size_) return data_[i];
    state_ ^= state_ << 13, state_ ^= state_ >> 7, state_ ^= state_ << 17;  // xorshift64
    return static_cast<uint8_t>(state_ >> 32);
  }
  /// The next element byte (after the fixed header).
  uint8_t next() { return at(pos_++); }
  void seek(size_t p) { pos_ = p; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  uint64_t state_;
};

// Header layout (byte offsets).
enum : size_t {
  kType = 0,       // storage type: % 4 -> float, half, bfloat16, double
  kMethod = 1,     // % 11: the 8 registry names, 8 newton_pinv, 9 AftSimple::State, 10 unknown name
  kForm = 2,       // bit 0 make_attention (defaults); bit 1 wrap in AnyAttention; bits 2-3 call form;
                   // bit 4 tied q == k; bit 5 out overlaps an input; bit 6 out mis-shaped
  kB = 3, kH = 4, kNq = 5, kNk = 6, kD = 7,
  kMismatch = 8,   // % 8: 0-3 none, 4 k.B + 1, 5 v.H + 1, 6 k.D + 1, 7 v.N + 1
  kParallel = 9,   // % 8: threads 1, 2, 3, 0, -1, device (2 threads); other -> 1
  kMath = 10,      // % 8: automatic, f32, bf16, 3, -1, 255, automatic, f32
  kCausal = 11,    // bit 0
  kOptions = 12,   // 16 method option bytes
  kModeQ = 28, kModeK = 29, kModeV = 30, kModeAux = 31,
  kValues = 32,    // element bytes from here on
};

/// A double option: unset (nullopt-like NaN marker is not used: `set` says), out-of-range and
/// non-finite values included.
inline double option_value(uint8_t b) {
  static const double table[] = {0.0,   -1.0,  std::numeric_limits<double>::quiet_NaN(),
                                 std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(),
                                 1e-300, std::numeric_limits<double>::denorm_min(), 0.125, 0.5, 1.0, 2.0, 1e4, 1e38,
                                 3.5e38, 1e300, 1e-12};
  return table[b % 16];
}

/// An index option near the interesting boundaries of a dimension n.
inline int64_t index_value(uint8_t b, int64_t n) {
  n = std::max<int64_t>(-1000000, std::min<int64_t>(n, 1000000));  // n +- 1 below stays defined
  switch (b % 16) {
    case 0: return -1;
    case 1: return 0;
    case 2: return 1;
    case 3: return 2;
    case 4: return 3;
    case 5: return n - 1;
    case 6: return n;
    case 7: return n + 1;
    case 8: return std::numeric_limits<int64_t>::max();
    case 9: return std::numeric_limits<int64_t>::min();
    case 10: return n / 2;
    case 11: return std::numeric_limits<int64_t>::max() / 2 + 1;
    default: return b >> 4;  // 0..15
  }
}

/// Element values. A tensor's mode byte: bits 0-1 kind (0 moderate, 1 moderate times a scale,
/// 2 moderate with specials, 3 one constant), bits 2-5 the scale or constant.
inline double special_value(uint8_t b) {
  static const double table[] = {0.0, -0.0, std::numeric_limits<double>::quiet_NaN(),
                                 std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(),
                                 1.4e-45 /* float denorm_min */, -1e-40 /* float subnormal */,
                                 6e-8 /* half subnormal */, 6e4, -6e4, 65504.0, -65504.0, 1e30, -1e30,
                                 3.3e38, 1e-30};
  return table[b % 16];
}
inline double scale_value(uint8_t b) {
  static const double table[] = {1.0, 1e-3, 1e-20, 1e3, 1e10, 1e19, 1e36, 7.5e3,
                                 1e-38, 1e-42, 0.0, 1e100, 1e-300, 4.0, 100.0, 1e30};
  return table[b % 16];
}
inline double element_value(uint8_t mode, uint8_t b) {
  const double moderate = (static_cast<int>(b) - 128) / 16.0;  // [-8, 8)
  switch (mode & 3) {
    case 0: return moderate;
    case 1: return moderate * scale_value(static_cast<uint8_t>(mode >> 2));
    case 2: return b >= 240 ? special_value(static_cast<uint8_t>(b - 240)) : moderate;
    default: return special_value(static_cast<uint8_t>(mode >> 2)) * (b & 1 ? 1.0 : 0.5);
  }
}

}  // namespace softfree_fuzz
