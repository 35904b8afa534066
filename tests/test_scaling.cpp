// The work items of every method's parallel phases, as docs/scaling.md states them: B = 1,
// H in {1, 6, 16}, N in {1024, 16384}, D small (the counts do not depend on D, except SimA's
// order, which is the N D^2 one whenever N >= D), float, non-causal, AftFull and AftConv with learned
// weights (unset, they are AftSimple), AftLocal with its default window of 32. Read from detail::ScheduleTrace, which records each phase's item count as the call
// starts it. The quadratic methods (SoftmaxAttention, SoftGaussian, AftFull) are run at
// N = 1024 and 2048 only (N = 16384 would take seconds here, and AftFull's bias 1 GiB): the
// doc's N = 16384 rows are the same formula.
#include <softfree/softfree.hpp>

#include <functional>
#include <string>
#include <vector>

#include "test_util.hpp"

using namespace softfree_test;

namespace {

/// One row of docs/scaling.md's table: a method at (H, N) and its phases' item counts on an
/// AVX-512 build (the flash kernels' query blocks are 4 packets of floats: 64 rows there).
struct ScalingRow {
  const char* method;
  Index H, N;
  std::vector<Index> phases;
};

/// The doc's table. Flash-kernel rows (softmax, soft-gaussian) scale with 64 / (4 float lanes).
const std::vector<ScalingRow>& scaling_table() {
  static const std::vector<ScalingRow> rows = {
      {"softmax", 1, 1024, {16}},         {"softmax", 6, 1024, {96}},         {"softmax", 16, 1024, {256}},
      {"softmax", 1, 2048, {32}},         {"soft-gaussian", 1, 1024, {16}},   {"soft-gaussian", 16, 2048, {512}},
      {"sima", 1, 1024, {2, 1}},          {"sima", 1, 16384, {32, 16}},       {"sima", 6, 1024, {12, 6}},
      {"sima", 6, 16384, {192, 96}},      {"sima", 16, 1024, {32, 16}},       {"sima", 16, 16384, {512, 256}},
      {"soft-nystrom", 1, 1024, {1, 8}},  {"soft-nystrom", 1, 16384, {1, 128}}, {"soft-nystrom", 6, 1024, {6, 48}},
      {"soft-nystrom", 6, 16384, {6, 768}}, {"soft-nystrom", 16, 1024, {16, 128}},
      {"soft-nystrom", 16, 16384, {16, 2048}},
      {"aft-full", 1, 1024, {6}},         {"aft-full", 16, 1024, {6}},        {"aft-full", 1, 2048, {11}},
      {"aft-simple", 1, 1024, {1}},       {"aft-simple", 1, 16384, {16, 1, 16}}, {"aft-simple", 6, 1024, {6}},
      {"aft-simple", 6, 16384, {96, 6, 96}}, {"aft-simple", 16, 1024, {16}}, {"aft-simple", 16, 16384, {256, 16, 256}},
      {"aft-local", 1, 1024, {1}},        {"aft-local", 1, 16384, {1}},       {"aft-local", 6, 16384, {6}},
      {"aft-local", 16, 16384, {16}},     {"aft-conv", 1, 1024, {1}},         {"aft-conv", 1, 16384, {1}},
      {"aft-conv", 6, 16384, {6}},        {"aft-conv", 16, 16384, {16}},
  };
  return rows;
}

/// The call the row describes, run with one thread (the counts are the same for any).
std::vector<Index> traced_phases(const ScalingRow& r) {
  constexpr Index D = 4;
  const auto q = random_tensor<float>(1, r.H, r.N, D, 1), k = random_tensor<float>(1, r.H, r.N, D, 2),
             v = random_tensor<float>(1, r.H, r.N, D, 3);
  const std::string m = r.method;
  std::function<Tensor4<float>()> call;
  if (m == "aft-full") {
    auto f = std::make_shared<softfree::AftFull<float>>();
    f->set_bias(random_weights<float>(1, r.N, r.N, 4));
    call = [f, &q, &k, &v] { return (*f)(q, k, v); };
  } else if (m == "aft-conv") {  // a 7 x 7 kernel over the square token grid
    const Index side = r.N == 1024 ? 32 : 128;
    auto f = std::make_shared<softfree::AftConv<float>>(random_weights<float>(1, 7, 7, 6), side, side);
    call = [f, &q, &k, &v] { return (*f)(q, k, v); };
  } else {
    auto f = std::make_shared<softfree::AnyAttention<float>>(softfree::make_attention<float>(m));
    call = [f, &q, &k, &v] { return (*f)(q, k, v); };
  }
  softfree::detail::ScheduleTrace trace;
  (void)call();
  return trace.phases();
}

}  // namespace

TEST(Scaling, ItemCountsAreThoseOfDocsScalingMd) {
  const Index flash_scale = 16 / softfree::detail::kLanes<float>;  // 64-row query blocks on AVX-512
  for (const ScalingRow& r : scaling_table()) {
    std::vector<Index> want = r.phases;
    const std::string m = r.method;
    if (m == "softmax" || m == "soft-gaussian") want[0] *= flash_scale;
    EXPECT_EQ(traced_phases(r), want) << m << " H = " << r.H << " N = " << r.N;
  }
}

// SoftNystrom's and AftLocal's schedules depend on the thread count (never their values): on 16
// threads their heads fill the rounds only at H = 16, and below that they run split into phases
// at N = 16384.
TEST(Scaling, PhasesOnSixteenThreads) {
  struct Row {
    const char* method;
    Index H, N;
    std::vector<Index> phases;
  };
  for (const Row& r : {Row{"soft-nystrom", 1, 1024, {1, 8}}, Row{"soft-nystrom", 1, 16384, {1, 16, 1, 128}},
                       Row{"soft-nystrom", 6, 1024, {6, 48}}, Row{"soft-nystrom", 6, 16384, {6, 96, 6, 768}},
                       Row{"soft-nystrom", 16, 1024, {16, 128}}, Row{"soft-nystrom", 16, 16384, {16, 2048}},
                       Row{"aft-local", 1, 1024, {1}}, Row{"aft-local", 1, 16384, {16, 16, 1, 16}},
                       Row{"aft-local", 6, 16384, {96, 96, 6, 96}}, Row{"aft-local", 16, 16384, {16}}}) {
    constexpr Index D = 4;
    const auto q = random_tensor<float>(1, r.H, r.N, D, 1), k = random_tensor<float>(1, r.H, r.N, D, 2),
               v = random_tensor<float>(1, r.H, r.N, D, 3);
    softfree::detail::ScheduleTrace trace;
    if (std::string(r.method) == "aft-local") {
      softfree::AftLocal<float> g;
      g.parallel = softfree::Parallel::with_threads(16);
      (void)g(q, k, v);
    } else {
      softfree::SoftNystrom<float> g;
      g.parallel = softfree::Parallel::with_threads(16);
      (void)g(q, k, v);
    }
    EXPECT_EQ(trace.phases(), r.phases) << r.method << " H = " << r.H << " N = " << r.N;
  }
}
