#pragma once
// AFT (Zhai et al., 2021), the attention-free transformer (aft/). Umbrella of AftFull, AftLocal,
// AftSimple (with its decoding State) and AftConv, and the helpers aft_factorized_bias and
// aft_reparameterize.
#include "aft/common.hpp"
#include "aft/conv.hpp"
#include "aft/full.hpp"
#include "aft/local.hpp"
#include "aft/simple.hpp"
