// ODR across instruction sets (ctest odr_mixed_march).
//
// One program, two translation units that both include <softfree/softfree.hpp> and call every
// method on the same inputs: odr_native.cpp compiled with -march=native, odr_baseline.cpp with the
// build's default flags. Inline functions and templates the two instantiate differently (packet
// sizes, workspace layouts) are merged by the linker into one copy, so unless the headers keep
// ISA-dependent code apart (e.g. in an ISA-tagged inline namespace) one translation unit runs the
// other's code: wrong results or a crash. This file includes no softfree header: it generates the
// inputs, computes the independent double-precision references (tests/reference/, plain loops)
// and checks each translation unit's outputs against them.
#include <cmath>
#include <cstdio>
#include <exception>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "odr_common.hpp"
#include "reference/aft_ref.hpp"
#include "reference/sima_ref.hpp"
#include "reference/soft_ref.hpp"
#include "reference/softmax_ref.hpp"

namespace {

// Float tolerance relative to max |reference| (as tests/test_util.hpp): the references see the
// exact stored float inputs, so only the kernels' rounding counts. Float's unit roundoff is 6e-8;
// the sums here have at most N = 64 terms per output (D = 32 per score), accumulated blockwise
// (error ~ sqrt(n) u, at worst n u = 4e-6), plus exp's few-ulp error; SoftNystrom's 8 x 8
// pseudo-inverse (landmark matrix well conditioned for these inputs) amplifies that only
// modestly. 1e-5 covers all of it, and is far below what running another translation unit's
// code on mismatched layouts produces (garbage or NaN).
constexpr double kTolerance = 1e-5;

std::vector<float> uniform(std::mt19937& gen, long n) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& e : x) e = dist(gen);
  return x;
}

softfree_ref::Tensor ref_tensor(const std::vector<float>& x) {
  softfree_ref::Tensor t(odr::kB, odr::kH, odr::kN, odr::kD);
  for (size_t i = 0; i < x.size(); ++i) t.data[i] = static_cast<double>(x[i]);
  return t;
}

softfree_ref::Matrix ref_matrix(const std::vector<float>& x, long rows, long cols) {
  softfree_ref::Matrix m(rows, cols);
  for (size_t i = 0; i < x.size(); ++i) m.data[i] = static_cast<double>(x[i]);
  return m;
}

/// The double reference of every method odr_methods.hpp runs, with the same options.
std::map<std::string, softfree_ref::Tensor> references(const odr::Inputs& in) {
  using namespace softfree_ref;
  const Tensor q = ref_tensor(in.q), k = ref_tensor(in.k), v = ref_tensor(in.v);
  const Tensor landmarks = landmarks_segments(q, odr::kLandmarks);
  std::map<std::string, Tensor> refs;
  refs.emplace("SoftmaxAttention", softmax_attention(q, k, v, 1.0 / std::sqrt(double(odr::kD)), false, {}));
  refs.emplace("SimA", sima(q, k, v));
  refs.emplace("SoftGaussian", soft_gaussian(q, k, v));
  refs.emplace("SoftNystrom", soft_nystrom(q, q, v, landmarks, landmarks, odr::kNewtonSteps, odr::kNewtonLambda,
                                           PinvInit::Current, /*soft_norm=*/false));
  refs.emplace("AftFull", aft_full(q, k, v, {Matrix(odr::kN, odr::kN)}, false));  // no bias: w = 0
  refs.emplace("AftLocal", aft_local(q, k, v, {ref_matrix(in.local_bias, odr::kN, odr::kN)}, odr::kLocalWindow, false));
  refs.emplace("AftSimple", aft_simple(q, k, v, false));
  refs.emplace("AftConv", aft_conv(q, k, v, {ref_matrix(in.conv_kernel, odr::kConvSize, odr::kConvSize)}, odr::kGrid,
                                   odr::kGrid));
  return refs;
}

/// Checks one translation unit's outputs; prints a line per output and returns the failures.
int check(const char* tu, const odr::Outputs& outs, const std::map<std::string, softfree_ref::Tensor>& refs) {
  int failures = 0;
  std::map<std::string, int> seen;
  for (const odr::Output& o : outs) {
    const auto it = refs.find(o.method);
    if (it == refs.end()) {
      std::fprintf(stderr, "FAIL %s: %s has no reference\n", tu, o.method.c_str());
      ++failures;
      continue;
    }
    ++seen[o.method];
    const softfree_ref::Tensor& ref = it->second;
    if (o.values.size() != ref.data.size()) {
      std::fprintf(stderr, "FAIL %s: %s (%s): %zu outputs, expected %zu\n", tu, o.method.c_str(), o.form.c_str(),
                   o.values.size(), ref.data.size());
      ++failures;
      continue;
    }
    const double scale = softfree_ref::max_abs(ref);
    double worst = 0;
    size_t worst_at = 0;
    bool finite = true;
    for (size_t i = 0; i < ref.data.size(); ++i) {
      const double got = static_cast<double>(o.values[i]);
      if (!std::isfinite(got)) finite = false;
      const double e = std::fabs(got - ref.data[i]);
      if (!(e <= worst)) worst = e, worst_at = i;  // NaN counts as the worst
    }
    const double rel = worst / std::fmax(scale, 1e-300);
    if (!finite || !(rel <= kTolerance)) {
      std::fprintf(stderr,
                   "FAIL %s: %s (%s): max |got - ref| = %.3g at element %zu (got %.9g, ref %.9g) = %.3g x max|ref| "
                   "(%.3g), above the tolerance %.0e%s\n",
                   tu, o.method.c_str(), o.form.c_str(), worst, worst_at, static_cast<double>(o.values[worst_at]),
                   ref.data[worst_at], rel, scale, kTolerance, finite ? "" : "; non-finite outputs");
      ++failures;
    } else {
      std::printf("ok   %s: %s (%s): max |got - ref| = %.3g x max|ref|\n", tu, o.method.c_str(), o.form.c_str(), rel);
    }
  }
  for (const auto& r : refs)
    if (seen.find(r.first) == seen.end()) {
      std::fprintf(stderr, "FAIL %s: %s returned no output\n", tu, r.first.c_str());
      ++failures;
    }
  return failures;
}

}  // namespace

int main() {
  std::setvbuf(stdout, nullptr, _IONBF, 0);  // every line out before a possible crash
  std::mt19937 gen(20240607u);
  odr::Inputs in;
  const long size = odr::kB * odr::kH * odr::kN * odr::kD;
  in.q = uniform(gen, size);
  in.k = uniform(gen, size);
  in.v = uniform(gen, size);
  in.local_bias = uniform(gen, odr::kN * odr::kN);
  in.conv_kernel = uniform(gen, odr::kConvSize * odr::kConvSize);

  const auto refs = references(in);
  int failures = 0;
  try {
    // The native translation unit runs before and after the baseline one, so either order of
    // first use (of any shared static state) is covered.
    failures += check("odr_native.cpp (-march=native)", odr::run_native(in), refs);
    failures += check("odr_baseline.cpp (default flags)", odr::run_baseline(in), refs);
    failures += check("odr_native.cpp (-march=native), again", odr::run_native(in), refs);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FAIL: exception: %s\n", e.what());
    return 1;
  }
  if (failures != 0) {
    std::fprintf(stderr, "odr_mixed_march: %d check(s) failed\n", failures);
    return 1;
  }
  std::puts("odr_mixed_march OK: both translation units match the double references");
  return 0;
}
