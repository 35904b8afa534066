#pragma once
// softfree: attention kernels that replace softmax attention (SimA, SOFT, AFT) beside a tiled
// softmax baseline, as interchangeable functors over [B, H, N, D] Eigen tensors.
#include "version.hpp"
#include "core/any_attention.hpp"
#include "core/attention.hpp"
#include "core/checks.hpp"
#include "core/error.hpp"
#include "core/parallel.hpp"
#include "core/precision.hpp"
#include "core/tensor.hpp"
#include "softmax.hpp"
#include "softmax_cache.hpp"
#include "sima.hpp"
#include "soft.hpp"
#include "aft.hpp"
#include "make_attention.hpp"
