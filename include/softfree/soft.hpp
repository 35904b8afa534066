#pragma once
// SOFT (Lu et al., NeurIPS 2021): softmax-free attention with a Gaussian kernel (soft/). Umbrella
// of SoftGaussian (the exact O(N^2) form), SoftNystrom (the linear form over m landmarks) and
// its Landmarks; newton_pinv, the pseudo-inverse it uses, is general linear algebra
// (linalg/newton_pinv.hpp).
#include "linalg/newton_pinv.hpp"
#include "soft/gaussian.hpp"
#include "soft/landmarks.hpp"
#include "soft/nystrom.hpp"
