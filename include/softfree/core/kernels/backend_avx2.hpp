#pragma once
// The AVX2 backend (8-lane float packets): half through the F16C conversion instructions,
// bfloat16 through integer shifts, in registers. Eigen converts half one scalar at a time on
// x86 (about 1.7 ns an element, more than SimA's arithmetic per element).
#include <immintrin.h>

#include "backend_generic.hpp"

namespace softfree {
namespace detail {
inline namespace SOFTFREE_ISA {

struct Avx2Backend : GenericBackend {
  static constexpr const char* kName = "avx2";

  template <class T>
  static EIGEN_ALWAYS_INLINE Packet<accum_t<T>> load(const T* src) {
#if defined(__AVX2__) && defined(__F16C__)
    if constexpr (!std::is_same<T, accum_t<T>>::value && kLanes<float> == 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
      if constexpr (std::is_same<T, Eigen::half>::value)
        return _mm256_cvtph_ps(h);
      else
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
#endif
    return GenericBackend::load(src);
  }

  template <class T, bool Stream = false>
  static EIGEN_ALWAYS_INLINE void store(T* dst, const Packet<accum_t<T>>& x) {
#if defined(__F16C__)
    if constexpr (std::is_same<T, Eigen::half>::value && kLanes<float> == 8) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst),
                       _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      return;
    }
#endif
    GenericBackend::store<T, Stream>(dst, x);
  }
};

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
