// ODR across instruction sets (ctest odr_mixed_march): what odr_main.cpp shares with the two
// translation units odr_native.cpp (-march=native) and odr_baseline.cpp (the build's default
// flags). Standard library only: no softfree type crosses a translation-unit boundary, and
// odr_main.cpp never includes softfree (it holds only the double references).
#pragma once

#include <string>
#include <vector>

namespace odr {

// B = 1, H = 2, N = 64 (= 8 x 8, a square grid for AftConv), D = 32.
constexpr long kB = 1, kH = 2, kN = 64, kD = 32, kGrid = 8;
constexpr long kLandmarks = 8;      // SoftNystrom: Landmarks::segments(8)
constexpr int kNewtonSteps = 20;    // SoftNystrom: newton.steps, set explicitly on both sides
constexpr double kNewtonLambda = 0.01;
constexpr long kLocalWindow = 8;    // AftLocal: window s
constexpr long kConvSize = 3;       // AftConv: one 3 x 3 kernel shared by both heads

/// The inputs, generated once by odr_main.cpp and given to both translation units.
struct Inputs {
  std::vector<float> q, k, v;      // [B, H, N, D], row-major, values in [-1, 1)
  std::vector<float> local_bias;   // N x N, AftLocal's bias
  std::vector<float> conv_kernel;  // kConvSize x kConvSize, AftConv's kernel
};

/// One output of one method in one call form, [B, H, N, D] row-major.
struct Output {
  std::string method;  // "SoftmaxAttention", "SimA", ... (odr_main.cpp maps it to its reference)
  std::string form;    // how it was called
  std::vector<float> values;
};
using Outputs = std::vector<Output>;

Outputs run_native(const Inputs& in);    // odr_native.cpp, compiled with -march=native
Outputs run_baseline(const Inputs& in);  // odr_baseline.cpp, compiled with the default flags

}  // namespace odr
