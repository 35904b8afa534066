// fuzz_one<Eigen::bfloat16>: one storage type per translation unit, so the harness builds in parallel.
#include "fuzz_one.hpp"

namespace softfree_fuzz {
template void fuzz_one<Eigen::bfloat16>(Reader&);
}  // namespace softfree_fuzz
