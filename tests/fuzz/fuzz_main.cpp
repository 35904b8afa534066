// libFuzzer entry point of the softfree harness (tests/fuzz/fuzz_attention.hpp has the oracle):
// byte 0 picks the storage type, fuzz_<type>.cpp run the case (float for the types a
// SOFTFREE_FUZZ_FEWER_TYPES build leaves out).
#include <cstdlib>

#include <Eigen/Core>

#include "fuzz_input.hpp"

namespace softfree_fuzz {
template <class T>
void fuzz_one(Reader& in);
}  // namespace softfree_fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // The bf16 pair kernels wherever the build and CPU have them (the selection rule keeps Intel
  // Xeons off them): so they are fuzzed too. An explicit setting in the environment wins.
  setenv("SOFTFREE_BF16_PRODUCTS", "force", 0);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  softfree_fuzz::Reader in(data, size);
  switch (in.at(softfree_fuzz::kType) % 4) {
    case 1: softfree_fuzz::fuzz_one<Eigen::half>(in); break;
#if !SOFTFREE_FUZZ_FEWER_TYPES
    case 2: softfree_fuzz::fuzz_one<Eigen::bfloat16>(in); break;
    case 3: softfree_fuzz::fuzz_one<double>(in); break;
#endif
    default: softfree_fuzz::fuzz_one<float>(in); break;
  }
  return 0;
}
