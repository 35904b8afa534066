// ODR across instruction sets: this translation unit is compiled with the build's default flags.
#include "odr_methods.hpp"

odr::Outputs odr::run_baseline(const odr::Inputs& in) { return run_every_method(in, "odr_baseline.cpp"); }
