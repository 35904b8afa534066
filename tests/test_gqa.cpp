// Grouped-query and multi-query heads (SPEC.md "Grouped-query heads"): k and v with H_kv heads,
// H_kv dividing q's H, query head h reading kv head h / (H / H_kv). Every method against its
// plain-loop double reference run with k and v repeated to H heads, the same call on the repeated
// tensors as an equivalence, learned AFT weights per kv head, thread-count determinism, and the
// rejection of H_kv not dividing H.
#include <softfree/softfree.hpp>

#include <functional>
#include <string>
#include <vector>

#include "reference/aft_ref.hpp"
#include "reference/sima_ref.hpp"
#include "reference/soft_ref.hpp"
#include "reference/softmax_ref.hpp"
#include "test_util.hpp"

namespace {

using namespace softfree_test;
using softfree::AftWeights;
using softfree_ref::Matrix;

// B = 2, H = 6 query heads: H_kv = 1 (multi-query), 2 and 3 (grouped), 6 (plain multi-head).
constexpr Index kGqaB = 2, kGqaH = 6;
const Index kKvHeads[] = {1, 2, 3, 6};

/// Per-kv-head reference weights repeated to one per query head (a shared one stays shared).
std::vector<Matrix> repeat_weights(const std::vector<Matrix>& w, Index H) {
  if (w.size() == 1) return w;
  const size_t per = static_cast<size_t>(H) / w.size();
  std::vector<Matrix> r;
  for (size_t h = 0; h < static_cast<size_t>(H); ++h) r.push_back(w[h / per]);
  return r;
}

template <class T>
struct GroupedInputs {
  Tensor4<T> q, k, v, k_rep, v_rep;
  GroupedInputs(Index kv_heads, Index N, Index D, unsigned seed, double lo = -1, double hi = 1)
      : q(random_tensor<T>(kGqaB, kGqaH, N, D, seed, lo, hi)),
        k(random_tensor<T>(kGqaB, kv_heads, N, D, seed + 1, lo, hi)),
        v(random_tensor<T>(kGqaB, kv_heads, N, D, seed + 2)),
        k_rep(repeat_heads(k, kGqaH)),
        v_rep(repeat_heads(v, kGqaH)) {}
};

using RefFn = std::function<softfree_ref::Tensor(const softfree_ref::Tensor&, const softfree_ref::Tensor&,
                                                 const softfree_ref::Tensor&)>;

/// f on grouped k, v against the reference on repeated ones (per tensor and per row), and
/// bitwise equal to f_rep (f, with per-kv-head weights repeated per query head) on the repeated
/// tensors: a kv head's work done once for its group gives the values it gives done once per
/// query head (same data, same order).
template <class T, class F>
void check_grouped(const F& f, const F& f_rep, const GroupedInputs<T>& x, const RefFn& ref, const std::string& what) {
  SCOPED_TRACE(what + ", H_kv = " + std::to_string(x.k.dimension(1)));
  const Tensor4<T> got = f(x.q, x.k, x.v);
  EXPECT_TRUE(close_to_ref(got, ref(to_ref(x.q), to_ref(x.k_rep), to_ref(x.v_rep))));
  EXPECT_TRUE(bitwise_equal(got, f_rep(x.q, x.k_rep, x.v_rep))) << "grouped k, v differ from the repeated ones";
}
template <class T, class F>
void check_grouped(const F& f, const GroupedInputs<T>& x, const RefFn& ref, const std::string& what) {
  check_grouped<T>(f, f, x, ref, what);
}

/// Per-kv-head AFT weights repeated to one per query head (a shared one stays shared).
template <class T>
AftWeights<T> repeat_slots(const AftWeights<T>& w, Index H) {
  if (w.dimension(0) == 1) return w;
  const Index per = H / w.dimension(0);
  AftWeights<T> r(H, w.dimension(1), w.dimension(2));
  for (Index h = 0; h < H; ++h)
    for (Index i = 0; i < w.dimension(1); ++i)
      for (Index j = 0; j < w.dimension(2); ++j) r(h, i, j) = w(h / per, i, j);
  return r;
}

template <class T>
class Gqa : public ::testing::Test {};
TYPED_TEST_SUITE(Gqa, StorageTypes, TypeName);

TYPED_TEST(Gqa, Softmax) {
  using T = TypeParam;
  for (Index kv : kKvHeads)
    for (bool causal : {false, true}) {
      const GroupedInputs<T> x(kv, 37, 16, 100 + static_cast<unsigned>(kv));
      softfree::SoftmaxAttention<T> f;
      f.causal = causal;
      check_grouped<T>(f, x, [&](const auto& q, const auto& k, const auto& v) {
        return softfree_ref::softmax_attention(q, k, v, 1.0 / 4.0, causal, {});
      }, causal ? "causal" : "full");
    }
}

TYPED_TEST(Gqa, SoftGaussian) {
  using T = TypeParam;
  for (Index kv : kKvHeads) {
    const GroupedInputs<T> x(kv, 29, 8, 200 + static_cast<unsigned>(kv));
    check_grouped<T>(softfree::SoftGaussian<T>(), x, [](const auto& q, const auto& k, const auto& v) {
      return softfree_ref::soft_gaussian(q, k, v);
    }, "soft-gaussian");
  }
}

TYPED_TEST(Gqa, SimA) {
  using T = TypeParam;
  // N = 45 > D = 16 takes the K^T V order (formed once per kv head); N = 9 < D the Q K^T order.
  for (Index n : {45, 9})
    for (Index kv : kKvHeads) {
      const GroupedInputs<T> x(kv, n, 16, 300 + static_cast<unsigned>(kv));
      check_grouped<T>(softfree::SimA<T>(), x, [](const auto& q, const auto& k, const auto& v) {
        return softfree_ref::sima(q, k, v);
      }, "N = " + std::to_string(n));
    }
}

TYPED_TEST(Gqa, SoftNystrom) {
  using T = TypeParam;
  for (Index kv : kKvHeads) {
    // Queries of a group and their keys near one another keep A well conditioned and SPEC's
    // Newton start convergent, for the reference too (test_soft.cpp): each query head is its kv
    // head's keys plus a small offset of its own.
    GroupedInputs<T> x(kv, 40, 8, 400 + static_cast<unsigned>(kv), -2, 2);
    for (Index b = 0; b < kGqaB; ++b)
      for (Index h = 0; h < kGqaH; ++h)
        for (Index n = 0; n < 40; ++n)
          for (Index c = 0; c < 8; ++c)
            x.q(b, h, n, c) = T(static_cast<double>(x.k(b, h / (kGqaH / kv), n, c)) + 0.05 * std::sin(double(n + c + h)));
    softfree::SoftNystrom<T> f;
    f.landmarks = softfree::Landmarks::segments(10);
    check_grouped<T>(f, x, [&](const auto& q, const auto& k, const auto& v) {
      return softfree_ref::soft_nystrom(q, k, v, softfree_ref::landmarks_segments(q, 10),
                                        softfree_ref::landmarks_segments(k, 10), f.newton.steps, f.newton.lambda,
                                        softfree_ref::PinvInit::Current, f.soft_norm);
    }, "segments(10)");
  }
}

// More keys than one chunk (core/schedule.hpp's kTokenChunk): R V per chunk of a kv head's keys,
// for all its query heads at once, fused or split. The keys are clusters along the sequence
// (test_util.hpp's clustered), so that the pooled landmarks stay apart.
TYPED_TEST(Gqa, SoftNystromSplitAcrossTokenChunks) {
  using T = TypeParam;
  const Index n = softfree::detail::kTokenChunk + 100, m = 10;
  for (Index kv : kKvHeads) {
    GroupedInputs<T> x(kv, n, 8, 450 + static_cast<unsigned>(kv), -2, 2);
    const auto centres = random_tensor<double>(kGqaB, kv, m, 8, 460 + static_cast<unsigned>(kv), -2, 2);
    x.k = clustered<T>(centres, n, segment_of(n, m), 470 + static_cast<unsigned>(kv));
    x.k_rep = repeat_heads(x.k, kGqaH);
    // Each query near its own key (the pairs' landmarks near each other): A well conditioned.
    const auto wobble = random_tensor<double>(kGqaB, kGqaH, n, 8, 480 + static_cast<unsigned>(kv), -0.05, 0.05);
    for (Index i = 0; i < x.q.size(); ++i)
      x.q.data()[i] = T(static_cast<double>(x.k_rep.data()[i]) + wobble.data()[i]);
    // Fused (one item per kv head) on 1 thread; split into phases on 5 (kGqaB H_kv items fill
    // few of their rounds), grouped k and v as the repeated ones.
    for (int threads : {1, 5}) {
      softfree::SoftNystrom<T> f;
      f.landmarks = softfree::Landmarks::segments(m);
      f.parallel = softfree::Parallel::with_threads(threads);
      check_grouped<T>(f, x, [&](const auto& q, const auto& k, const auto& v) {
        return softfree_ref::soft_nystrom(q, k, v, softfree_ref::landmarks_segments(q, m),
                                          softfree_ref::landmarks_segments(k, m), f.newton.steps, f.newton.lambda,
                                          softfree_ref::PinvInit::Current, f.soft_norm);
      }, "segments(10), N = " + std::to_string(n) + ", " + std::to_string(threads) + " threads");
    }
  }
}

TYPED_TEST(Gqa, AftSimple) {
  using T = TypeParam;
  for (Index kv : kKvHeads)
    for (bool causal : {false, true}) {
      // D = 16 takes the whole-packet paths, D = 5 the padded ones.
      for (Index d : {16, 5}) {
        const GroupedInputs<T> x(kv, 70, d, 500 + static_cast<unsigned>(kv), -3, 3);
        softfree::AftSimple<T> f;
        f.causal = causal;
        check_grouped<T>(f, x, [&](const auto& q, const auto& k, const auto& v) {
          return softfree_ref::aft_simple(q, k, v, causal);
        }, std::string(causal ? "causal" : "full") + ", D = " + std::to_string(d));
      }
    }
}

TYPED_TEST(Gqa, AftFullWithBiasPerKvHead) {
  using T = TypeParam;
  const Index n = 45;
  for (Index kv : kKvHeads)
    for (Index slots : {Index(1), kv})
      for (bool causal : {false, true}) {
        const GroupedInputs<T> x(kv, n, 16, 600 + static_cast<unsigned>(kv), -3, 3);
        const AftWeights<T> w = random_weights<T>(slots, n, n, 7);
        softfree::AftFull<T> f, f_rep;
        f.causal = f_rep.causal = causal;
        f.set_bias(w);
        f_rep.set_bias(repeat_slots<T>(w, kGqaH));
        check_grouped<T>(f, f_rep, x, [&](const auto& q, const auto& k, const auto& v) {
          return softfree_ref::aft_full(q, k, v, repeat_weights(ref_weights<T>(w), kGqaH), causal);
        }, std::string(causal ? "causal" : "full") + ", slots " + std::to_string(slots));
      }
}

TYPED_TEST(Gqa, AftLocalWithBiasPerKvHead) {
  using T = TypeParam;
  const Index n = 45, s = 6;
  for (Index kv : kKvHeads)
    for (bool causal : {false, true}) {
      const GroupedInputs<T> x(kv, n, 16, 700 + static_cast<unsigned>(kv), -3, 3);
      const AftWeights<T> w = random_weights<T>(kv, n, n, 8);
      softfree::AftLocal<T> f, f_rep;
      f.window = f_rep.window = s;
      f.causal = f_rep.causal = causal;
      f.set_bias(w);
      f_rep.set_bias(repeat_slots<T>(w, kGqaH));
      check_grouped<T>(f, f_rep, x, [&](const auto& q, const auto& k, const auto& v) {
        return softfree_ref::aft_local(q, k, v, repeat_weights(ref_weights<T>(w), kGqaH), s, causal);
      }, causal ? "causal" : "full");
    }
}

TYPED_TEST(Gqa, AftConvWithKernelPerKvHead) {
  using T = TypeParam;
  for (Index kv : kKvHeads) {
    const GroupedInputs<T> x(kv, 35, 16, 800 + static_cast<unsigned>(kv), -3, 3);
    const AftWeights<T> w = random_weights<T>(kv, 3, 5, 9);
    softfree::AftConv<T> f, f_rep;
    f.rows = f_rep.rows = 5, f.cols = f_rep.cols = 7;
    f.set_bias(w);
    f_rep.set_bias(repeat_slots<T>(w, kGqaH));
    check_grouped<T>(f, f_rep, x, [&](const auto& q, const auto& k, const auto& v) {
      return softfree_ref::aft_conv(q, k, v, repeat_weights(ref_weights<T>(w), kGqaH), 5, 7);
    }, "5 x 7 grid");
  }
}

// Work items are fixed by the shape (one per kv head where its work is shared), so the result
// does not depend on the thread count.
TEST(GqaThreads, EveryMethodIsBitwiseIdenticalForAnyThreadCount) {
  const GroupedInputs<float> x(2, 49, 16, 900, -2, 2);
  const auto with_threads = [](std::string spec, int t) {
    return spec + (spec.find(':') == std::string::npos ? ":" : ",") + "threads=" + std::to_string(t);
  };
  for (const char* name : {"softmax", "soft-gaussian", "sima", "soft-nystrom", "aft-simple", "aft-simple:causal=true",
                           "aft-local:window=5", "aft-local:window=5,causal=true", "aft-conv"}) {
    SCOPED_TRACE(name);
    const Tensor4<float> one = softfree::make_attention<float>(with_threads(name, 1))(x.q, x.k, x.v);
    for (int t : {2, 3, 7})
      EXPECT_TRUE(bitwise_equal(one, softfree::make_attention<float>(with_threads(name, t))(x.q, x.k, x.v)))
          << with_threads(name, t);
  }
}

// H_kv must divide H, and k and v must agree on it; AFT weights need 1 or H_kv slots.
TEST(GqaShapes, RejectedWithTheShapes) {
  const Tensor4<float> q = random_tensor<float>(1, 6, 16, 8, 1), k4 = random_tensor<float>(1, 4, 16, 8, 2),
                       k2 = random_tensor<float>(1, 2, 16, 8, 3), k3 = random_tensor<float>(1, 3, 16, 8, 4);
  for (const char* name : {"softmax", "soft-gaussian", "sima", "soft-nystrom", "aft-full", "aft-local", "aft-simple",
                           "aft-conv"}) {
    SCOPED_TRACE(name);
    const auto f = softfree::make_attention<float>(name);
    EXPECT_TRUE(throws_naming([&] { (void)f(q, k4, k4); }, {"H_kv = 4", "divide", "H = 6", "[1, 4, 16, 8]"}));
    EXPECT_TRUE(throws_naming([&] { (void)f(q, k2, k3); }, {"same heads", "[1, 3, 16, 8]", "[1, 2, 16, 8]"}));
  }
  softfree::AftFull<float> full;
  full.set_bias(random_weights<float>(6, 16, 16, 5));  // one per query head: not the kv heads' count
  EXPECT_TRUE(throws_naming([&] { (void)full(q, k2, k2); }, {"6 head slots", "H_kv = 2"}));
}

}  // namespace
