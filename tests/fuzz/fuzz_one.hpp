#pragma once
// fuzz_one<T>: one input for storage type T (fuzz_<type>.cpp instantiate it, fuzz_main.cpp picks
// the type): a method by name (make_attention), a direct functor with options, newton_pinv,
// AftSimple::State, or an unknown name.
#include <string>

#include "fuzz_methods.hpp"

namespace softfree_fuzz {

/// newton_pinv on an m x m (or non-square) matrix: finite for finite input (README) where the
/// pseudo-inverse is representable: entries multiples of 1/16 with |a| <= 8 (m <= 8), whose
/// nonzero singular values are not tiny. A tiny or ill-conditioned A may honestly overflow float.
template <class T>
void fuzz_newton(Reader& in) {
  using Acc = std::conditional_t<std::is_same<T, double>::value, double, float>;
  const Index m = in.at(kNq) % 9, cols = in.at(kMismatch) % 8 == 4 ? m + 1 : m;
  softfree::RowMatrix<Acc> a(m, cols);
  Stats st;
  bool on_grid = true;  // every entry k / 16, |k| <= 128
  in.seek(kValues);
  for (Index i = 0; i < a.size(); ++i) {
    a.data()[i] = static_cast<Acc>(element_value(in.at(kModeQ), in.next()));
    const double x = static_cast<double>(a.data()[i]);
    st.add(x);
    on_grid = on_grid && std::abs(x) <= 8 && x * 16 == std::floor(x * 16);
  }
  const softfree::RowMatrix<Acc> a0 = a;
  softfree::NewtonOptions o;
  static const int steps[] = {0, 1, 2, 5, 20, -1, 3, 40};
  o.steps = steps[in.at(kOptions + 5) % 8];
  if (in.at(kOptions + 6) & 0x80) o.lambda = option_value(in.at(kOptions + 6));
  static const int inits[] = {0, 1, 2, -1};
  o.init = static_cast<softfree::NewtonInit>(inits[in.at(kOptions + 7) % 4]);
  if (in.at(kOptions + 8) & 0x80) o.tolerance = option_value(in.at(kOptions + 8));
  const bool bad = m == 0 || cols != m || o.steps < 0 || !(std::isfinite(o.lambda) && o.lambda >= 0) ||
                   !(std::isfinite(o.tolerance) && o.tolerance >= 0);
  try {
    const auto r = softfree::newton_pinv(a, o);
    if (bad) finding("bad input was accepted", "newton_pinv", type_name<Acc>());
    if (a.size() && std::memcmp(a.data(), a0.data(), static_cast<size_t>(a.size()) * sizeof(Acc)) != 0)
      finding("the call changed its input", "newton_pinv", type_name<Acc>());
    if (st.finite && on_grid && (!r.inverse.allFinite() || !std::isfinite(r.residual)))
      finding("non-finite pseudo-inverse for finite input", "newton_pinv", type_name<Acc>());
  } catch (const softfree::invalid_argument&) {
  } catch (...) {
    finding("an exception other than softfree::invalid_argument", "newton_pinv", type_name<Acc>());
  }
}

/// AftSimple::State over head (0, 0): rejected D <= 0, otherwise bitwise the causal batch rows.
template <class T>
void fuzz_state(Case<T>& c) {
  c.method = "AftSimple::State";
  try {
    softfree::AftSimpleState<T> state(c.D());
    if (c.D() <= 0) c.fail("D <= 0 was accepted");
    if (c.must_reject || c.Nq() != c.Nk()) return;  // the batch below needs a valid shape
    softfree::AftSimple<T> batch;
    batch.causal = true;
    const Tensor4<T> ref = batch(c.q, c.key(), c.v);
    const Index n = c.Nq(), d = c.D();
    std::vector<T> y(static_cast<size_t>(d));
    for (Index t = 0; t < n; ++t) {
      state.step(c.q.data() + t * d, c.key().data() + t * d, c.v.data() + t * d, y.data());
      if (std::memcmp(y.data(), ref.data() + t * d, static_cast<size_t>(d) * sizeof(T)) != 0)
        c.fail("State::step differs from the causal batch row");
    }
  } catch (const softfree::invalid_argument&) {
    if (c.D() > 0 && !c.must_reject && c.Nq() == c.Nk()) c.fail("a valid State or batch call was rejected");
  } catch (...) {
    c.fail("an exception other than softfree::invalid_argument");
  }
}

/// A name of the registry (defaults) or a garbage name (must throw).
template <class T>
void fuzz_by_name(Case<T>& c, const std::string& name) {
  softfree::AnyAttention<T> a = softfree::make_attention<T>(name);  // a registry name: must not throw
  c.method = a.method_name();
  c.via_any = false;
  const double mq = c.sq.max_abs, mk = c.sk.max_abs, mv = c.sv.max_abs, nk = static_cast<double>(c.Nk());
  if (name == "softmax")
    c.expect_finite = logit_bound(c, 1.0 / std::sqrt(static_cast<double>(std::max<Index>(c.D(), 1)))) <= 1e4 &&
                      nk * mv <= max_accum<T>() / 4;
  else if (name == "sima")
    c.expect_finite = mq <= 1e38 && mk <= 1e38 && mv <= 1e38 && static_cast<double>(c.D()) * mv <= max_storage<T>() / 4;
  else if (name == "soft-gaussian")
    c.expect_finite = mq <= 1e4 && mk <= 1e4 && nk * mv <= max_storage<T>() / 4;
  else if (name == "soft-nystrom") {
    // By name it takes Landmarks::segments_up_to(49) (README): min(49, N) segments, any N >= 1;
    // the rest of its options are the defaults.
    softfree::SoftNystrom<T> f;
    f.landmarks = softfree::Landmarks::segments_up_to(49);
    c.expect_finite = nystrom_finite_rule(c, f);
  } else {
    c.expect_finite = aft_finite_rule(c);  // aft-conv without a kernel is AftSimple: any N
  }
  exercise(c, a);
}

template <class T>
void fuzz_one(Reader& in) {
  static const char* const names[] = {"softmax",  "sima",       "soft-gaussian", "soft-nystrom",
                                      "aft-full", "aft-local",  "aft-simple",    "aft-conv"};
  const int method = in.at(kMethod) % 11;
  if (method == 8) return fuzz_newton<T>(in);
  if (method == 10) {  // an unknown name must be rejected (a known one built)
    std::string name;
    for (int i = 0; i < 12 && in.at(kOptions + static_cast<size_t>(i)); ++i)
      name += static_cast<char>(in.at(kOptions + static_cast<size_t>(i)));
    bool known = false;
    for (const char* n : names) known = known || name == n;
    try {
      (void)softfree::make_attention<T>(name);
      if (!known) finding("an unknown name was accepted", "make_attention", type_name<T>());
    } catch (const softfree::invalid_argument&) {
      if (known) finding("a known name was rejected", "make_attention", type_name<T>());
    }
    return;
  }
  Case<T> c(in);
  const bool by_name = in.at(kForm) & 1;
  static const bool cross[] = {true, true, true, true, false, false, false, false};
  decode_common(c, method == 9 ? true : cross[method]);
  if (method == 9) return fuzz_state(c);
  c.method = names[method];
  if (by_name) {  // make_attention's functors keep their defaults (math and causal too)
    return fuzz_by_name(c, names[method]);
  }
  using namespace softfree;
  switch (method) {
    case 0: return fuzz_direct<T, SoftmaxAttention<T>>(c, fuzz_softmax<T>);
    case 1: return fuzz_direct<T, SimA<T>>(c, fuzz_sima<T>);
    case 2: return fuzz_direct<T, SoftGaussian<T>>(c, fuzz_gaussian<T>);
    case 3: return fuzz_direct<T, SoftNystrom<T>>(c, fuzz_nystrom<T>);
    case 4: return fuzz_direct<T, AftFull<T>>(c, fuzz_aft_full<T>);
    case 5: return fuzz_direct<T, AftLocal<T>>(c, fuzz_aft_local<T>);
    case 6: return fuzz_direct<T, AftSimple<T>>(c, fuzz_aft_simple<T>);
    default: return fuzz_direct<T, AftConv<T>>(c, fuzz_aft_conv<T>);
  }
}

}  // namespace softfree_fuzz
