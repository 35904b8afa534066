#pragma once
// The libFuzzer harness's body: fuzz_one<T>(input) decodes one case (fuzz_input.hpp has the byte
// layout), calls softfree and stops the process (__builtin_trap, so libFuzzer keeps the input) on
// anything but a result or a softfree::invalid_argument.
//
// The oracle, for every call:
//  1. No crash, no sanitizer report (the build has -fsanitize=fuzzer,address,undefined), no
//     exception other than softfree::invalid_argument.
//  2. Input the README says is bad (a zero or mismatched B/H/N/D, AFT with Nq != Nk, an `out` of
//     the wrong shape or overlapping q, causal on a method without it, a Math value outside the
//     enum or bf16 for double, and each method's out-of-range options) is rejected.
//  3. q, k and v are bitwise unchanged by the call.
//  4. With threads (Parallel::with_threads(n > 1) or a device), the result is bitwise the serial
//     one (README: "bitwise identical for any thread count"); AftSimple::State's steps are bitwise
//     the causal batch rows (README).
//  5. Finite output for finite input with valid options, but only where the true result and the
//     documented intermediates are representable in the storage and accumulate types, so an
//     overflow that no implementation could avoid is never reported. The rule per method
//     (m_x = max |x| over a tensor, N_k keys, D channels, max_T the storage type's largest value,
//     max_A the accumulate type's):
//       softmax       logits s D m_q m_k <= 1e4 and N_k m_v <= max_A / 4 (the output is a convex
//                     combination of V rows; an unnormalised sum of N_k of them is accumulated)
//       sima          m_q, m_k, m_v <= 1e38 (bf16 rounding stays finite) and D m_v <= max_T / 4
//                     (|Qn|, |Kn| <= 1 per channel bound |O| by D m_v; README: any input whose
//                     result is representable gives it)
//       soft-gaussian m_q, m_k <= 1e4 (squared distances stay in float) and N_k m_v <= max_T / 4
//                     (every kernel weight is <= 1)
//       soft-nystrom  float or double storage, every input (landmarks too) <= 8, and the
//                     intermediates computed in double (the pseudo-inverse by newton_pinv<double>
//                     with the call's options, after SOFT-Norm's scaling, Y = pinv (R V) and O)
//                     <= max_A / 1e4, and with SOFT-Norm A's row sums >= 1e4 min_A (the smallest
//                     normal): far-apart landmarks make A's entries tiny (e^-64 at |x| = 8,
//                     D = 4), and its pseudo-inverse, the scaling and Y large past float even where
//                     O is not (fuzz_methods.hpp, nystrom_intermediates); half and bfloat16 outputs
//                     may overflow honestly (README: a finite input never gives a non-finite
//                     pseudo-inverse)
//       aft-*         m_q, m_v <= 1e38, m_k + m_w <= 1e7 (should be 1e30: see the known bug in
//                     fuzz_methods.hpp, aft_finite_rule) and
//                     N_k m_v <= max_A / 4: the output is sigma(q) times a convex combination of
//                     V rows (README: correct for any finite input)
//       newton_pinv   every entry <= 8
#include <algorithm>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include <softfree/softfree.hpp>

#include "fuzz_input.hpp"

namespace softfree_fuzz {

using softfree::Index;
using softfree::Shape4;
using softfree::Tensor4;
using softfree::View4;

template <class T>
const char* type_name() {
  return softfree::precision<T>::name;
}

template <class T>
double as_double(T x) {
  if constexpr (std::is_same<T, double>::value)
    return x;
  else
    return static_cast<double>(static_cast<float>(x));
}
template <class T>
T from_double(double x) {
  if constexpr (std::is_same<T, double>::value)
    return x;
  else
    return T(static_cast<float>(x));
}
template <class T>
double max_storage() {
  return as_double(std::numeric_limits<T>::max());
}
template <class T>
double max_accum() {
  return static_cast<double>(std::numeric_limits<softfree::accum_t<T>>::max());
}

template <class T>
double min_accum() {  // the smallest normal value
  return static_cast<double>(std::numeric_limits<softfree::accum_t<T>>::min());
}

/// Largest |x| of a tensor and whether every entry is finite.
struct Stats {
  bool finite = true;
  double max_abs = 0;
  void add(double x) {
    if (!std::isfinite(x)) finite = false;
    else max_abs = std::max(max_abs, std::abs(x));
  }
};

template <class T, int R>
Eigen::Tensor<T, R, Eigen::RowMajor> fill(Eigen::Tensor<T, R, Eigen::RowMajor> t, Reader& in, uint8_t mode, Stats& st) {
  for (Index i = 0; i < t.size(); ++i) {
    t.data()[i] = from_double<T>(element_value(mode, in.next()));
    st.add(as_double(t.data()[i]));
  }
  return t;
}

template <class T>
std::vector<unsigned char> bytes_of(const Tensor4<T>& t) {
  std::vector<unsigned char> b(static_cast<size_t>(t.size()) * sizeof(T));
  if (!b.empty()) std::memcpy(b.data(), t.data(), b.size());
  return b;
}
template <class T>
bool same_bytes(const Tensor4<T>& a, const Tensor4<T>& b) {
  return a.dimensions() == b.dimensions() &&
         (a.size() == 0 || std::memcmp(a.data(), b.data(), static_cast<size_t>(a.size()) * sizeof(T)) == 0);
}

/// One decoded case: the tensors, the call form and what the oracle expects.
template <class T>
struct Case {
  Reader& in;
  const char* method = "?";
  int form = 0;  // 0 allocating, 1 out view, 2 run(), 3 check_inputs then allocating
  bool via_any = false, tied = false, out_overlaps = false, out_misshaped = false;
  Tensor4<T> q, k, v;
  Stats sq, sk, sv, aux;  // aux: biases, given landmarks
  std::vector<unsigned char> q0, k0, v0;
  bool must_reject = false;     // oracle 2
  bool expect_finite = false;   // oracle 5 (set by each method's rule)
  softfree::Parallel parallel;  // oracle 4 when it has more than one worker
  softfree::Math math = softfree::Math::automatic;
  bool bad_math = false;  // outside the enum, or bf16 for double: rejected
  bool causal = false;

  explicit Case(Reader& r) : in(r) {}
  const Tensor4<T>& key() const { return tied ? q : k; }
  Index B() const { return q.dimension(0); }
  Index H() const { return q.dimension(1); }
  Index Nq() const { return q.dimension(2); }
  Index Nk() const { return key().dimension(2); }
  Index D() const { return q.dimension(3); }
  bool inputs_finite() const { return sq.finite && sk.finite && sv.finite && aux.finite; }
  [[noreturn]] void fail(const char* what) const { finding(what, method, type_name<T>()); }
};

inline const Eigen::ThreadPoolDevice& fuzz_device() {
  static Eigen::ThreadPool pool(2);
  static const Eigen::ThreadPoolDevice device(&pool, 2);
  return device;
}

/// Decodes shapes (mismatches included), values, the call form and the common options.
template <class T>
void decode_common(Case<T>& c, bool cross_ok) {
  Reader& in = c.in;
  const uint8_t form = in.at(kForm);
  c.via_any = form & 2;
  c.form = (form >> 2) & 3;
  c.tied = form & 16;
  c.out_overlaps = (form & 32) && (c.form == 1 || c.form == 2);
  c.out_misshaped = (form & 64) && (c.form == 1 || c.form == 2);
  // Small shapes (at most 2 x 3 x 19 x 12 elements a tensor): each execution stays fast.
  Index B = in.at(kB) % 3, H = in.at(kH) % 4, nq = in.at(kNq) % 20, nk = in.at(kNk) % 20, D = in.at(kD) % 13;
  if (in.at(kB) >= 3) B = std::max<Index>(B, 1);  // 0 only from the byte values 0..2
  if (in.at(kH) >= 4) H = std::max<Index>(H, 1);
  if (c.tied) nk = nq;
  Index kB = B, kH = H, kD = D, vH = H, vN = nk;
  switch (in.at(kMismatch) % 8) {
    case 4: kB += 1; break;
    case 5: vH += 1; break;
    case 6: kD += 1; break;
    case 7: vN += 1; break;
    default: break;
  }
  if (c.tied) kB = B, kD = D;  // k is q
  const bool mismatch = kB != B || kD != D || vH != H || vN != nk;
  const bool empty = B <= 0 || H <= 0 || nq <= 0 || nk <= 0 || D <= 0;
  c.must_reject = mismatch || empty || (!cross_ok && nq != nk) || c.out_overlaps || c.out_misshaped;
  in.seek(kValues);
  c.q = fill(Tensor4<T>(B, H, nq, D), in, in.at(kModeQ), c.sq);
  if (c.tied) c.sk = c.sq;
  else c.k = fill(Tensor4<T>(kB, kH, nk, kD), in, in.at(kModeK), c.sk);
  c.v = fill(Tensor4<T>(B, vH, vN, D), in, in.at(kModeV), c.sv);
  c.q0 = bytes_of(c.q), c.k0 = bytes_of(c.k), c.v0 = bytes_of(c.v);

  switch (in.at(kParallel) % 8) {
    case 1: c.parallel = softfree::Parallel::with_threads(2); break;
    case 2: c.parallel = softfree::Parallel::with_threads(3); break;
    case 3: c.parallel = softfree::Parallel::with_threads(0); break;
    case 4: c.parallel = softfree::Parallel::with_threads(-1); break;
    case 5: c.parallel = softfree::Parallel::on(fuzz_device()); break;
    default: break;
  }
  static const int maths[] = {0, 1, 2, 3, -1, 255, 0, 1};
  const int m = maths[in.at(kMath) % 8];
  c.math = static_cast<softfree::Math>(m);
  c.bad_math = m < 0 || m > 2 || (m == 2 && std::is_same<T, double>::value);
  c.causal = in.at(kCausal) & 1;
}

/// The options byte i of the method.
template <class T>
uint8_t opt(Case<T>& c, int i) {
  return c.in.at(kOptions + static_cast<size_t>(i));
}

/// Calls a in the case's form; returns the result (copied out of a caller buffer for the view
/// forms). Exceptions pass through.
template <class T, class A>
Tensor4<T> call(const A& a, Case<T>& c) {
  const Tensor4<T>& k = c.key();
  switch (c.form) {
    case 1:
    case 2: {
      Tensor4<T> out(c.B(), c.H(), c.Nq() + (c.out_misshaped ? 1 : 0), c.D());
      View4<T> view = c.out_overlaps ? View4<T>(const_cast<T*>(c.q.data()), c.q.dimensions())
                                     : View4<T>(out.data(), out.dimensions());
      if (c.form == 1) a(c.q, k, c.v, view);
      else (void)a.run(c.q, k, c.v, view);
      Tensor4<T> result(view.dimensions());
      std::copy(view.data(), view.data() + view.size(), result.data());
      return result;
    }
    case 3: {
      const Shape4 s = a.check_inputs(c.q, k, c.v);
      Tensor4<T> out = a(c.q, k, c.v);
      if (softfree::shape_of(out) != s) c.fail("check_inputs gave another shape than the call's result");
      return out;
    }
    default:
      return a(c.q, k, c.v);
  }
}

/// Oracle 4: the serial call gives the threaded result bitwise.
template <class T, class F>
void check_serial(Case<T>& c, const F& f, const Tensor4<T>& out) {
  F serial = f;
  serial.parallel = softfree::Parallel{};
  Tensor4<T> again;
  try {
    again = serial(c.q, c.key(), c.v);
  } catch (...) {
    c.fail("the serial call rejected what the parallel one accepted");
  }
  if (!same_bytes(out, again)) c.fail("the parallel result differs from the serial one");
}

/// Runs the oracle on one functor f (options set): the call, then checks 2-5.
template <class T, class F>
void exercise(Case<T>& c, const F& f) {
  Tensor4<T> out;
  try {
    if (c.via_any) out = call(softfree::AnyAttention<T>(f), c);
    else out = call(f, c);
  } catch (const softfree::invalid_argument&) {
    if (c.q0 != bytes_of(c.q) || c.k0 != bytes_of(c.k) || c.v0 != bytes_of(c.v)) c.fail("a rejected call changed its inputs");
    return;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "exception: %s\n", e.what());
    c.fail("an exception other than softfree::invalid_argument");
  } catch (...) {
    c.fail("a non-std exception");
  }
  if (c.must_reject) c.fail("bad input was accepted");
  if (c.q0 != bytes_of(c.q) || c.k0 != bytes_of(c.k) || c.v0 != bytes_of(c.v)) c.fail("the call changed its inputs");
  if (c.expect_finite && c.inputs_finite())
    for (Index i = 0; i < out.size(); ++i)
      if (!std::isfinite(as_double(out.data()[i]))) {
        std::fprintf(stderr, "out[%ld] = %g\n", static_cast<long>(i), as_double(out.data()[i]));
        c.fail("non-finite output for finite input (see the oracle's rule)");
      }
  if constexpr (!std::is_same<F, softfree::AnyAttention<T>>::value) {
    if (f.parallel.workers() > 1 || f.parallel.device) check_serial(c, f, out);
  }
}

/// What the common options give every direct functor.
template <class T, class F>
void apply_common(Case<T>& c, F& f) {
  f.parallel = c.parallel;
  f.math = c.math;
  f.causal = c.causal;
  if (c.bad_math || (c.causal && !F::kCapabilities.causal)) c.must_reject = true;
}

}  // namespace softfree_fuzz
