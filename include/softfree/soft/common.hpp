#pragma once
// What SOFT's two forms share: the Gaussian kernel k(x, y) = exp(-||x - y||^2 / (2 sqrt(D))) as
// the epilogue of one product. The exponent is expanded and carried in base 2,
//   -||x - y||^2 / (2 sqrt D) log2(e) = s x.y - s|x|^2/2 - s|y|^2/2,   s = log2(e) / sqrt(D),
// so a tile of kernel values is one register-blocked product s x.y whose accumulators start at
// the two norm terms (GaussianExponentC), then one pass over the tile (gaussian_weights), or the
// weights straight from the epilogue (GaussianWeightC). Every exponent is <= 0 in exact
// arithmetic; it is clamped at 0 from above, so rounding in the expansion can never make a
// weight exceed 1. SoftGaussian's score tiles (exponent, then the pass) and SoftNystrom's P, R
// and A (LandmarkKernel: weights from the epilogue) all come from these.
#include <cmath>

#include "../core/kernels/gemm.hpp"
#include "../core/kernels/math.hpp"

namespace softfree {
namespace detail {
inline namespace SOFTFREE_ISA {

/// s = log2(e) / sqrt(D): the scale of x.y in the base-2 exponent.
template <class Acc>
Acc gaussian_scale(Index d) {
  return static_cast<Acc>(1.4426950408889634 / std::sqrt(static_cast<double>(d)));
}

/// out[r] = s |x_r|^2 / 2 for rows of d values at stride ldx: the norm terms of the exponent.
template <class Acc>
void gaussian_norms(const Acc* x, Index rows, Index d, Index ldx, Acc s, Acc* out) {
  for (Index r = 0; r < rows; ++r) out[r] = dot(x + r * ldx, x + r * ldx, d) * (s / 2);
}

/// The kernel weight 2^t of an exponent t (<= 0 up to rounding): at most 1, exactly 0 where the
/// exponential underflows.
template <class P>
EIGEN_ALWAYS_INLINE P gaussian_weight(const P& t) {
  return exp2_nonpositive(vmin(t, ei::pset1<P>(scalar_of<P>(0))));
}

/// gemm epilogue: C(r, c) = A B (r, c) - row_norm[r] - col_norm[c], the base-2 exponent, with A B
/// the scaled dot products (one operand carries s); gaussian_weights then turns a stored tile into
/// weights. (In the flash block's 4 x 4 tiling, exp2 in the epilogue measured slower than the
/// pass: its constants stay live across the block loop.)
template <class Acc>
struct GaussianExponentC {
  using Scalar = Acc;
  Acc* c;
  Index ldc;
  const Acc* row_norm;
  const Acc* col_norm;
  template <class P>
  EIGEN_ALWAYS_INLINE P init(Index r, Index col) const {
    return ei::pnegate(ei::padd(ei::ploadu<P>(col_norm + col), ei::pset1<P>(row_norm[r])));
  }
  template <class P>
  EIGEN_ALWAYS_INLINE void store(Index r, Index col, const P& acc) const {
    ei::pstoreu(c + r * ldc + col, acc);
  }
  EIGEN_ALWAYS_INLINE GaussianExponentC at(Index r0, Index c0) const {
    return {c + r0 * ldc + c0, ldc, row_norm + r0, col_norm + c0};
  }
};

/// GaussianExponentC that stores the weights themselves, each tile written once: LandmarkKernel's
/// products (measured 2% faster there than exponent-then-pass).
template <class Acc>
struct GaussianWeightC : GaussianExponentC<Acc> {
  template <class P>
  EIGEN_ALWAYS_INLINE void store(Index r, Index col, const P& acc) const {
    ei::pstoreu(this->c + r * this->ldc + col, gaussian_weight(acc));
  }
  EIGEN_ALWAYS_INLINE GaussianWeightC at(Index r0, Index c0) const { return {GaussianExponentC<Acc>::at(r0, c0)}; }
};

/// Exponents to weights in place: rows x cols at c (leading dimension ldc).
template <class Acc>
void gaussian_weights(Acc* c, Index rows, Index cols, Index ldc) {
  for (Index r = 0; r < rows; ++r)
    for_each_packet<Acc>(cols, [&](auto p, Index j) {
      using P = decltype(p);
      ei::pstoreu(c + r * ldc + j, gaussian_weight(ei::ploadu<P>(c + r * ldc + j)));
    });
}

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
