// ODR across instruction sets: this translation unit is compiled with -march=native.
#include "odr_methods.hpp"

odr::Outputs odr::run_native(const odr::Inputs& in) { return run_every_method(in, "odr_native.cpp"); }
