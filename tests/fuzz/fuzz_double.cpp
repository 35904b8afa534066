// fuzz_one<double>: one storage type per translation unit, so the harness builds in parallel.
#include "fuzz_one.hpp"

namespace softfree_fuzz {
template void fuzz_one<double>(Reader&);
}  // namespace softfree_fuzz
