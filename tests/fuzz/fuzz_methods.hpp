#pragma once
// Each method's options decoded from the option bytes (fuzz_input.hpp: kOptions), the oracle's
// finite-output rule per method (fuzz_attention.hpp states it), and fuzz_one<T>.
#include "../reference/soft_ref.hpp"
#include "fuzz_attention.hpp"

namespace softfree_fuzz {

template <class T>
double logit_bound(const Case<T>& c, double scale) {
  return scale * static_cast<double>(c.D()) * c.sq.max_abs * c.sk.max_abs;
}
template <class T>
bool aft_finite_rule(const Case<T>& c) {
  const double nk = static_cast<double>(c.Nk());
  // Keys up to 1e30 with their biases: e^{k - max} is formed as a difference first (aft_exp), so
  // any such key gives finite weights (keys of 1e10 once overflowed: the fuzzer's find).
  return c.sq.max_abs <= 1e38 && c.sv.max_abs <= 1e38 && c.sk.max_abs + c.aux.max_abs <= 1e30 &&
         nk * c.sv.max_abs <= max_accum<T>() / 4;
}

template <class T>
void fuzz_softmax(Case<T>& c, softfree::SoftmaxAttention<T>& f) {
  const uint8_t s = opt(c, 0);
  if (s & 0x80) f.scale = option_value(s);
  if (f.scale && !(std::isfinite(*f.scale) && *f.scale > 0 && *f.scale <= max_accum<T>())) c.must_reject = true;
  const Index nk = c.Nk();
  switch (opt(c, 1) % 4) {
    case 1:  // one valid length per batch item
      for (Index b = 0; b < c.B(); ++b) f.key_lengths.push_back(opt(c, 2 + static_cast<int>(b)) % (nk + 1));
      break;
    case 2:  // wrong count
      f.key_lengths.assign(static_cast<size_t>(c.B() + 1), nk);
      c.must_reject = true;
      break;
    case 3:  // out of [0, Nk]
      f.key_lengths.assign(static_cast<size_t>(std::max<Index>(c.B(), 0)), 0);
      if (!f.key_lengths.empty()) f.key_lengths.back() = index_value(opt(c, 2), nk);
      if (!f.key_lengths.empty() && (f.key_lengths.back() < 0 || f.key_lengths.back() > nk)) c.must_reject = true;
      break;
    default:
      break;
  }
  const double scale = f.scale ? *f.scale : 1.0 / std::sqrt(static_cast<double>(std::max<Index>(c.D(), 1)));
  c.expect_finite = logit_bound(c, scale) <= 1e4 && static_cast<double>(nk) * c.sv.max_abs <= max_accum<T>() / 4;
}

template <class T>
void fuzz_sima(Case<T>& c, softfree::SimA<T>& f) {
  if (opt(c, 0) & 0x80) f.eps = option_value(opt(c, 0));
  if (!(std::isfinite(f.eps) && f.eps >= 0)) c.must_reject = true;
  static const int orders[] = {0, 1, 2, 3, -1, 0, 1, 2};
  f.order = static_cast<softfree::SimAOrder>(orders[opt(c, 1) % 8]);
  c.expect_finite = c.sq.max_abs <= 1e38 && c.sk.max_abs <= 1e38 && c.sv.max_abs <= 1e38 &&
                    static_cast<double>(c.D()) * c.sv.max_abs <= max_storage<T>() / 4;
}

template <class T>
void fuzz_gaussian(Case<T>& c, softfree::SoftGaussian<T>&) {
  c.expect_finite = c.sq.max_abs <= 1e4 && c.sk.max_abs <= 1e4 &&
                    static_cast<double>(c.Nk()) * c.sv.max_abs <= max_storage<T>() / 4;
}

/// A case's tensor in double, for the reference helpers.
template <class T>
softfree_ref::Tensor ref_of(const Tensor4<T>& t) {
  softfree_ref::Tensor r(t.dimension(0), t.dimension(1), t.dimension(2), t.dimension(3));
  for (Index i = 0; i < t.size(); ++i) r.data[static_cast<size_t>(i)] = as_double(t.data()[i]);
  return r;
}

/// SoftNystrom's documented intermediates in double (README: O = P pinv(A) (R V), evaluated right
/// to left; SOFT-Norm scales pinv(A)'s rows and columns by D^-1/2, D = diag(A 1)): the largest |x|
/// over the scaled pseudo-inverse (softfree::newton_pinv<double> with the call's options), Y =
/// pinv (R V) and O, over every head; +inf where the landmarks are not valid (the call is rejected).
/// Landmarks far from each other give A entries far below 1 (e^-64 at |x| = 8, D = 4), so the
/// pseudo-inverse, its SOFT-Norm scaling and Y can pass float's range while O does not: the
/// fuzzer's find, float storage with Y ~ 2e45 (kept in float, the accumulate type) and O ~ 1e20.
template <class T>
double nystrom_intermediates(const Case<T>& c, const softfree::SoftNystrom<T>& f) {
  using softfree::Landmarks;
  constexpr double inf = std::numeric_limits<double>::infinity();
  const Index nq = c.Nq(), nk = c.Nk();
  const softfree_ref::Tensor q = ref_of(c.q), k = ref_of(c.key()), v = ref_of(c.v);
  const Landmarks& l = f.landmarks;
  std::vector<softfree_ref::Tensor> marks;  // Qt, Kt
  switch (l.kind) {
    case Landmarks::Kind::Segments: {
      const Index m = l.up_to ? std::min(l.m, std::min(nq, nk)) : l.m;
      if (m < 1 || m > nq || m > nk) return inf;
      marks = {softfree_ref::landmarks_segments(q, m), softfree_ref::landmarks_segments(k, m)};
      break;
    }
    case Landmarks::Kind::Grid:
      if (l.rows < 1 || l.cols < 1 || l.rows > nq || l.cols > nq || l.rows * l.cols != nq || nq != nk || l.r < 1 ||
          l.r > std::min(l.rows, l.cols))
        return inf;
      marks = {softfree_ref::landmarks_grid(q, l.rows, l.cols, l.r), softfree_ref::landmarks_grid(k, l.rows, l.cols, l.r)};
      break;
    case Landmarks::Kind::Given:
      for (const auto* g : {l.q_given.get(), l.k_given.get()}) {
        const Shape4& s = g->shape;
        if (s.B != c.B() || s.H != c.H() || s.N < 1 || s.N != l.q_given->shape.N || s.D != c.D()) return inf;
        softfree_ref::Tensor t(s.B, s.H, s.N, s.D);
        t.data = g->data;
        marks.push_back(std::move(t));
      }
      break;
  }
  double worst = 0;
  const auto track = [&](const softfree_ref::Matrix& x) {
    for (const double e : x.data) worst = std::max(worst, std::isfinite(e) ? std::abs(e) : inf);
  };
  for (Index b = 0; b < c.B(); ++b)
    for (Index h = 0; h < c.H(); ++h) {
      const softfree_ref::Matrix p = softfree_ref::gaussian_kernel_matrix(q, marks[1], b, h),
                                 a = softfree_ref::gaussian_kernel_matrix(marks[0], marks[1], b, h),
                                 r = softfree_ref::gaussian_kernel_matrix(marks[0], k, b, h);
      const Index m = a.rows;
      softfree::RowMatrix<double> am(m, m);
      std::copy(a.data.begin(), a.data.end(), am.data());
      softfree_ref::Matrix pinv(m, m);
      try {
        const auto res = softfree::newton_pinv(am, f.newton);
        std::copy(res.inverse.data(), res.inverse.data() + m * m, pinv.data.begin());
      } catch (const softfree::invalid_argument&) {
        return inf;
      }
      // SOFT-Norm divides by sqrt of A's row sums: one below the accumulate type's range (far-apart
      // landmarks, e^-64 and less) is 0 there, and its 1 / sqrt is inf (the fuzzer's find
      // crash-73c190ff: float, row sums ~1e-40). Such inputs are outside the type's range.
      for (Index i = 0; f.soft_norm && i < m; ++i) {
        double sum = 0;
        for (Index j = 0; j < m; ++j) sum += a(i, j);
        if (sum < min_accum<T>() * 1e4) return inf;
      }
      if (f.soft_norm) pinv = softfree_ref::soft_norm_apply(pinv, a);
      const softfree_ref::Matrix y = softfree_ref::matmul(pinv, softfree_ref::matmul(r, softfree_ref::slice(v, b, h)));
      track(pinv), track(y), track(softfree_ref::matmul(p, y));
    }
  return worst;
}

/// SoftNystrom's finite rule: float or double storage, every input (landmarks too) <= 8, and the
/// intermediates in double (nystrom_intermediates) within max_A / 1e4 (room for the accumulate
/// type's rounding of the same steps). Half and bfloat16 outputs may overflow honestly.
template <class T>
bool nystrom_finite_rule(const Case<T>& c, const softfree::SoftNystrom<T>& f) {
  if (!(std::is_same<T, float>::value || std::is_same<T, double>::value) || c.must_reject || !c.inputs_finite() ||
      c.sq.max_abs > 8 || c.sk.max_abs > 8 || c.sv.max_abs > 8 || c.aux.max_abs > 8)
    return false;
  return nystrom_intermediates(c, f) <= max_accum<T>() / 1e4;
}

template <class T>
void fuzz_nystrom(Case<T>& c, softfree::SoftNystrom<T>& f) {
  const Index n = std::min(c.Nq(), c.Nk());
  switch (opt(c, 0) % 4) {
    case 1:
      f.landmarks = softfree::Landmarks::segments(index_value(opt(c, 1), n));
      break;
    case 2: {  // grid: a valid factorisation of N, or arbitrary values
      Index rows = index_value(opt(c, 2), n), cols = index_value(opt(c, 3), n);
      if (opt(c, 2) & 0x80) {
        rows = 1 + opt(c, 3) % std::max<Index>(n, 1);
        while (rows > 1 && n % rows) --rows;
        cols = rows > 0 && n > 0 ? n / rows : 0;
      }
      f.landmarks = softfree::Landmarks::grid(rows, cols, index_value(opt(c, 4), std::min(rows, cols)));
      break;
    }
    case 3: {  // given: [B, H, m, D], mismatched on request
      const Index m = 1 + opt(c, 1) % 5;
      const uint8_t bad = opt(c, 10) % 8;
      Tensor4<T> ql = fill(Tensor4<T>(c.B() + (bad == 1), c.H(), m, c.D() + (bad == 2)), c.in, c.in.at(kModeAux), c.aux);
      if (bad == 3) {
        f.landmarks = softfree::Landmarks::given(ql, ql);
      } else {
        Tensor4<T> kl = fill(Tensor4<T>(c.B(), c.H(), m + (bad == 4), c.D()), c.in, c.in.at(kModeAux), c.aux);
        f.landmarks = softfree::Landmarks::given(ql, kl);
      }
      if (bad == 1 || bad == 2 || bad == 4) c.must_reject = true;
      break;
    }
    default:
      f.landmarks = softfree::Landmarks::segments(1 + opt(c, 1) % std::max<Index>(n, 1));
      break;
  }
  static const int steps[] = {0, 1, 2, 5, 20, -1, std::numeric_limits<int>::min(), 40};
  if (opt(c, 5) & 0x80) f.newton.steps = steps[opt(c, 5) % 8];
  if (opt(c, 6) & 0x80) f.newton.lambda = option_value(opt(c, 6));
  static const int inits[] = {0, 1, 2, -1};
  f.newton.init = static_cast<softfree::NewtonInit>(inits[opt(c, 7) % 4]);
  if (opt(c, 8) & 0x80) f.newton.tolerance = option_value(opt(c, 8));
  f.soft_norm = opt(c, 9) & 1;
  const softfree::NewtonOptions& o = f.newton;
  if (o.steps < 0 || !(std::isfinite(o.lambda) && o.lambda >= 0) || !(std::isfinite(o.tolerance) && o.tolerance >= 0))
    c.must_reject = true;
  c.expect_finite = nystrom_finite_rule(c, f);
}

/// AftWeights [slots, rows, cols] from the aux values.
template <class T>
softfree::AftWeights<T> weights(Case<T>& c, Index slots, Index rows, Index cols) {
  using W = softfree::AftWeights<T>;
  W w(std::max<Index>(slots, 0), std::max<Index>(rows, 0), std::max<Index>(cols, 0));
  for (Index i = 0; i < w.size(); ++i) {
    w.data()[i] = static_cast<typename W::Scalar>(element_value(c.in.at(kModeAux), c.in.next()));
    c.aux.add(static_cast<double>(w.data()[i]));
  }
  return w;
}

/// set_bias in one of its forms: the N x N matrix (shared), [1 or H, N, N], or a wrong shape.
template <class T, class F>
void set_square_bias(Case<T>& c, F& f, uint8_t how) {
  const Index n = c.Nq(), h = c.H();
  switch (how % 6) {
    case 1: {
      const softfree::AftWeights<T> w = weights(c, 1, n, n);
      softfree::RowMatrix<softfree::accum_t<T>> m(n, n);
      std::copy(w.data(), w.data() + w.size(), m.data());
      f.set_bias(m);
      break;
    }
    case 2: f.set_bias(weights(c, h, n, n)); break;
    case 3: f.set_bias(weights(c, 1, n + 1, n + 1)); c.must_reject = true; break;
    case 4: f.set_bias(weights(c, h + 1, n, n)); if (h + 1 != 1) c.must_reject = true; break;
    case 5: f.set_bias(weights(c, 1, n, n + 1)); break;  // rejected by set_bias itself
    default: break;
  }
}

template <class T>
void fuzz_aft_full(Case<T>& c, softfree::AftFull<T>& f) {
  const bool rejected_before = c.must_reject;
  set_square_bias(c, f, opt(c, 0));
  if (opt(c, 1) & 1) f.clear_bias(), c.must_reject = rejected_before;  // a bad bias no longer counts
  c.expect_finite = aft_finite_rule(c);
}

template <class T>
void fuzz_aft_local(Case<T>& c, softfree::AftLocal<T>& f) {
  f.window = index_value(opt(c, 0), c.Nq());
  if (opt(c, 1) % 3 == 2) {  // the band directly: [1 or H, N, 2s - 1], an even width rejected
    const Index width = 1 + opt(c, 2) % 8;
    f.set_band_bias(weights(c, opt(c, 3) & 1 ? c.H() : 1, c.Nq(), width));
  } else if (opt(c, 1) % 3 == 1) {
    set_square_bias(c, f, opt(c, 2));
  }
  if (opt(c, 4) & 1) f.window = index_value(opt(c, 5), c.Nq());  // changed after the bias was set
  if (f.window < 1) c.must_reject = true;
  c.expect_finite = aft_finite_rule(c);
}

template <class T>
void fuzz_aft_conv(Case<T>& c, softfree::AftConv<T>& f) {
  const Index n = c.Nq();
  if (opt(c, 0) & 0x80) {  // a valid factorisation of N
    Index rows = 1 + opt(c, 1) % std::max<Index>(n, 1);
    while (rows > 1 && n % rows) --rows;
    f.rows = rows, f.cols = n > 0 ? n / rows : 0;
  } else if (opt(c, 0) & 0x40) {
    f.rows = index_value(opt(c, 1), n), f.cols = index_value(opt(c, 2), n);
  }
  static const Index sizes[] = {1, 3, 5, 7, 2, 0, 9, 1};
  const Index kh = sizes[opt(c, 4) % 8], kw = sizes[opt(c, 5) % 8];
  const bool rejected_before = c.must_reject;
  switch (opt(c, 3) % 4) {
    case 1: {
      const softfree::AftWeights<T> w = weights(c, 1, kh, kw);
      softfree::RowMatrix<softfree::accum_t<T>> m(kh, kw);
      std::copy(w.data(), w.data() + w.size(), m.data());
      f.set_bias(m);
      break;
    }
    case 2: f.set_bias(weights(c, c.H(), kh, kw)); break;
    case 3: f.set_bias(weights(c, c.H() + 1, kh, kw)); if (c.H() + 1 != 1) c.must_reject = true; break;
    default: break;
  }
  if (opt(c, 6) & 1) f.clear_bias(), c.must_reject = rejected_before;  // a bad kernel no longer counts
  c.expect_finite = aft_finite_rule(c);
}

template <class T>
void fuzz_aft_simple(Case<T>& c, softfree::AftSimple<T>&) {
  c.expect_finite = aft_finite_rule(c);
}

/// A direct functor with its options, through the oracle.
template <class T, class F, class Configure>
void fuzz_direct(Case<T>& c, Configure configure) {
  F f;
  try {
    apply_common(c, f);
    configure(c, f);
  } catch (const softfree::invalid_argument&) {
    return;  // an option setter (set_bias, set_band_bias) rejected its argument
  } catch (...) {
    c.fail("an option setter threw something other than softfree::invalid_argument");
  }
  exercise(c, f);
}

}  // namespace softfree_fuzz
