// Every softfree method on odr::Inputs, for odr_native.cpp and odr_baseline.cpp. Included by both
// translation units, which are compiled for different instruction sets: run_every_method() has
// internal linkage (anonymous namespace), so each translation unit keeps its own copy, while the
// softfree code it instantiates is shared through the linker (inline functions and templates) --
// exactly the situation the test is about.
#pragma once

#include <softfree/softfree.hpp>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "odr_common.hpp"

namespace {

using softfree::Tensor4;

Tensor4<float> to_tensor(const std::vector<float>& x) {
  Tensor4<float> t(odr::kB, odr::kH, odr::kN, odr::kD);
  std::copy(x.begin(), x.end(), t.data());
  return t;
}

softfree::RowMatrix<float> to_matrix(const std::vector<float>& x, long rows, long cols) {
  return Eigen::Map<const softfree::RowMatrix<float>>(x.data(), rows, cols);
}

/// Runs f in both call forms (allocating, write-into-out) and records the outputs. Says what it
/// runs first (unbuffered), so a crash inside a method shows which one.
template <class F>
void record(odr::Outputs& outs, const char* tu, const char* method, const char* variant, const F& f,
            const Tensor4<float>& q, const Tensor4<float>& k, const Tensor4<float>& v) {
  std::fprintf(stderr, "  %s: running %s (%s...)\n", tu, method, variant);
  const Tensor4<float> allocated = f(q, k, v);
  outs.push_back({method, std::string(variant) + "allocating", {allocated.data(), allocated.data() + allocated.size()}});
  Tensor4<float> out(q.dimensions());
  f(q, k, v, softfree::View4<float>(out.data(), out.dimensions()));
  outs.push_back({method, std::string(variant) + "into out", {out.data(), out.data() + out.size()}});
}

odr::Outputs run_every_method(const odr::Inputs& in, const char* tu) {
  const Tensor4<float> q = to_tensor(in.q), k = to_tensor(in.k), v = to_tensor(in.v);
  odr::Outputs outs;

  record(outs, tu, "SoftmaxAttention", "", softfree::SoftmaxAttention<float>{}, q, k, v);
  record(outs, tu, "SimA", "", softfree::SimA<float>{}, q, k, v);
  record(outs, tu, "SoftGaussian", "", softfree::SoftGaussian<float>{}, q, k, v);

  // SoftNystrom on q == k, the paper's tied case: the same tensor (the tied path) and an equal
  // copy (the general path); the two share one reference.
  softfree::SoftNystrom<float> nystrom;
  nystrom.landmarks = softfree::Landmarks::segments(odr::kLandmarks);
  nystrom.newton.steps = odr::kNewtonSteps;
  nystrom.newton.lambda = odr::kNewtonLambda;
  const Tensor4<float> q_copy = q;
  record(outs, tu, "SoftNystrom", "tied q, q, ", nystrom, q, q, v);
  record(outs, tu, "SoftNystrom", "q, copy of q, ", nystrom, q, q_copy, v);

  record(outs, tu, "AftFull", "no bias, ", softfree::AftFull<float>{}, q, k, v);
  softfree::AftLocal<float> local(odr::kLocalWindow);
  local.set_bias(to_matrix(in.local_bias, odr::kN, odr::kN));
  record(outs, tu, "AftLocal", "", local, q, k, v);
  record(outs, tu, "AftSimple", "", softfree::AftSimple<float>{}, q, k, v);
  softfree::AftConv<float> conv;
  conv.set_bias(to_matrix(in.conv_kernel, odr::kConvSize, odr::kConvSize));
  record(outs, tu, "AftConv", "", conv, q, k, v);
  return outs;
}

}  // namespace
