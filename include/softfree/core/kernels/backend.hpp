#pragma once
// The selection rule: which backend this translation unit's kernels use, decided by what it is
// compiled for (-march). One line per backend; kernels call Backend::..., never an intrinsic.
// PairOps is the bf16 product backend (the multiply-add of bf16 pair products, pairs.hpp), or
// NoPairOps where the build has none; whether a call uses it is decided at run time too
// (select.hpp).
#include <type_traits>

#include "isa.hpp"

#if defined(EIGEN_VECTORIZE_AVX512) && !defined(EIGEN_DONT_VECTORIZE)
#include "backend_avx512.hpp"
#elif (defined(__AVX2__) || defined(__F16C__)) && defined(EIGEN_VECTORIZE_AVX) && !defined(EIGEN_DONT_VECTORIZE)
#include "backend_avx2.hpp"
#else
#include "backend_generic.hpp"
#endif
#if SOFTFREE_HAVE_AVX512_BF16
#include "backend_avx512_bf16.hpp"
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

struct NoPairOps {
  static constexpr const char* kName = "none";
};
#if SOFTFREE_HAVE_AVX512_BF16
using PairOps = Avx512Bf16Ops;
#else
using PairOps = NoPairOps;
#endif
/// Whether this build has a bf16 product backend.
constexpr bool kHavePairOps = !std::is_same<PairOps, NoPairOps>::value;

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
