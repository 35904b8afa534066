#pragma once
// The selection rule: which backend this translation unit's kernels use, decided by what it is
// compiled for (-march). One line per backend; kernels call Backend::..., never an intrinsic.
#include "isa.hpp"

#if defined(EIGEN_VECTORIZE_AVX512) && !defined(EIGEN_DONT_VECTORIZE)
#include "backend_avx512.hpp"
#elif (defined(__AVX2__) || defined(__F16C__)) && defined(EIGEN_VECTORIZE_AVX) && !defined(EIGEN_DONT_VECTORIZE)
#include "backend_avx2.hpp"
#else
#include "backend_generic.hpp"
#endif

namespace softfree {
namespace detail {
inline namespace SOFTFREE_ISA {

#if defined(EIGEN_VECTORIZE_AVX512) && !defined(EIGEN_DONT_VECTORIZE)
using Backend = Avx512Backend;
#elif (defined(__AVX2__) || defined(__F16C__)) && defined(EIGEN_VECTORIZE_AVX) && !defined(EIGEN_DONT_VECTORIZE)
using Backend = Avx2Backend;
#else
using Backend = GenericBackend;
#endif

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
