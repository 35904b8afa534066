// The public call forms (Tensor4, TensorMap over a user buffer, const TensorMap, mixed),
// make_attention / AnyAttention, inputs never modified, and every bad-input class: the right
// softfree::invalid_argument, naming the argument and shapes, with the caller's out untouched.
#include <cstring>
#include <iterator>
#include <limits>
#include <map>
#include <sstream>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace {

using namespace softfree_test;
using softfree::AnyAttention;
using softfree::ConstView4;
using softfree::SoftmaxAttention;
using softfree::View4;

template <class T>
class ApiTyped : public ::testing::Test {};
TYPED_TEST_SUITE(ApiTyped, StorageTypes, TypeName);

}  // namespace

// A second functor type for AnyAttention, written as a method author would (core/attention.hpp):
// out = v (a distinct target type, and a functor whose result is known without any reference).
namespace softfree_test_api {
template <class T>
struct CopyValues : softfree::Attention<CopyValues<T>, T> {
  static constexpr const char* kName = "CopyValues";
  static constexpr softfree::Capabilities kCapabilities{};
  bool causal = false;
  void check_options(const softfree::Shape4&, const softfree::Shape4&) const {}
};
}  // namespace softfree_test_api

namespace softfree {
namespace detail {
inline namespace SOFTFREE_ISA {
template <class T>
struct Kernel<softfree_test_api::CopyValues<T>> {
  static NoReport forward(const softfree_test_api::CopyValues<T>&, const ConstView4<T>&, const ConstView4<T>&,
                          const ConstView4<T>& v, const View4<T>& out) {
    std::memcpy(out.data(), v.data(), static_cast<size_t>(v.size()) * sizeof(T));
    return {};
  }
};
}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree

namespace {

using softfree_test_api::CopyValues;
using namespace softfree_test;
using softfree::AnyAttention;
using softfree::ConstView4;
using softfree::SoftmaxAttention;
using softfree::View4;

// q [2, 3, 7, 16], k and v [2, 3, 9, 16] (cross-attention, so a k/v mix-up changes shapes).
template <class T>
struct Inputs {
  Tensor4<T> q = random_tensor<T>(2, 3, 7, 16, 1), k = random_tensor<T>(2, 3, 9, 16, 2),
             v = random_tensor<T>(2, 3, 9, 16, 3);
};

TYPED_TEST(ApiTyped, CallFormsAgreeBitwise) {
  using T = TypeParam;
  const Inputs<T> in;
  SoftmaxAttention<T> attn;
  attn.causal = true;
  const Tensor4<T> expected = attn(in.q, in.k, in.v);

  // TensorMaps over user buffers (as wrapping a framework's tensor would).
  std::vector<T> qbuf(in.q.data(), in.q.data() + in.q.size()), kbuf(in.k.data(), in.k.data() + in.k.size()),
      vbuf(in.v.data(), in.v.data() + in.v.size());
  const View4<T> qm(qbuf.data(), 2, 3, 7, 16), km(kbuf.data(), 2, 3, 9, 16), vm(vbuf.data(), 2, 3, 9, 16);
  const ConstView4<T> qc(qbuf.data(), 2, 3, 7, 16), kc(kbuf.data(), 2, 3, 9, 16), vc(vbuf.data(), 2, 3, 9, 16);

  EXPECT_TRUE(bitwise_equal(expected, attn(qm, km, vm)));
  EXPECT_TRUE(bitwise_equal(expected, attn(qc, kc, vc)));
  EXPECT_TRUE(bitwise_equal(expected, attn(in.q, km, vc)));  // mixed
  EXPECT_TRUE(bitwise_equal(expected, attn(qc, in.k, vm)));

  Tensor4<T> out(2, 3, 7, 16);  // write into a Tensor4
  out.setConstant(T(5));
  attn(qm, kc, in.v, out);
  EXPECT_TRUE(bitwise_equal(expected, out));

  std::vector<T> obuf(static_cast<size_t>(expected.size()), T(5));  // write into a user buffer
  attn(in.q, in.k, in.v, View4<T>(obuf.data(), 2, 3, 7, 16));
  EXPECT_EQ(0, std::memcmp(obuf.data(), expected.data(), obuf.size() * sizeof(T)));
}

TYPED_TEST(ApiTyped, InputsNeverModified) {
  using T = TypeParam;
  const Inputs<T> in;
  Tensor4<T> q = in.q, k = in.k, v = in.v;  // non-const: the library could write through them
  SoftmaxAttention<T> attn;
  attn.key_lengths = {9, 4};
  Tensor4<T> out = attn(q, k, v);
  attn(q, k, v, out);
  attn(View4<T>(q.data(), q.dimensions()), View4<T>(k.data(), k.dimensions()), View4<T>(v.data(), v.dimensions()),
       out);
  EXPECT_TRUE(bitwise_equal(q, in.q));
  EXPECT_TRUE(bitwise_equal(k, in.k));
  EXPECT_TRUE(bitwise_equal(v, in.v));
}

// A caller who refills the same buffers between calls (the common inference loop) gets results
// for the new contents: nothing converted or computed is kept from one call to the next.
TYPED_TEST(ApiTyped, ReusedBuffersSeeNewContents) {
  using T = TypeParam;
  const Inputs<T> first, second{random_tensor<T>(2, 3, 7, 16, 4), random_tensor<T>(2, 3, 9, 16, 5),
                                random_tensor<T>(2, 3, 9, 16, 6)};
  Tensor4<T> q = first.q, k = first.k, v = first.v, out(2, 3, 7, 16);
  SoftmaxAttention<T> attn;
  attn.parallel = softfree::Parallel::with_threads(2);
  const AnyAttention<T> any = attn;
  for (const Inputs<T>* in : {&first, &second, &first}) {
    q = in->q, k = in->k, v = in->v;  // same addresses, new contents
    const Tensor4<T> expected = SoftmaxAttention<T>{}(Tensor4<T>(in->q), Tensor4<T>(in->k), Tensor4<T>(in->v));
    attn(q, k, v, out);
    EXPECT_TRUE(bitwise_equal(expected, out));
    any(q, k, v, out);
    EXPECT_TRUE(bitwise_equal(expected, out));
  }
}

TYPED_TEST(ApiTyped, MakeAttentionSoftmax) {
  using T = TypeParam;
  const Inputs<T> in;
  const AnyAttention<T> any = softfree::make_attention<T>("softmax");
  EXPECT_EQ(any.name(), "softmax");
  const auto* held = any.template target<SoftmaxAttention<T>>();
  ASSERT_NE(held, nullptr);
  EXPECT_FALSE(held->causal);  // default options
  EXPECT_FALSE(held->scale.has_value());
  EXPECT_TRUE(held->key_lengths.empty());
  EXPECT_EQ(any.template target<CopyValues<T>>(), nullptr);

  const Tensor4<T> expected = SoftmaxAttention<T>{}(in.q, in.k, in.v);
  EXPECT_TRUE(bitwise_equal(expected, any(in.q, in.k, in.v)));
  Tensor4<T> out(2, 3, 7, 16);
  any(in.q, in.k, in.v, out);
  EXPECT_TRUE(bitwise_equal(expected, out));

  const AnyAttention<T> copy = any;  // copies share the held functor
  EXPECT_EQ(copy.template target<SoftmaxAttention<T>>(), held);
}

TEST(Api, AnyAttentionHoldsAnyFunctor) {
  const Inputs<float> in;
  SoftmaxAttention<float> causal;
  causal.causal = true;
  const AnyAttention<float> a = causal;  // implicit, named after the class
  EXPECT_EQ(a.name(), "SoftmaxAttention");
  ASSERT_NE(a.target<SoftmaxAttention<float>>(), nullptr);
  EXPECT_TRUE(a.target<SoftmaxAttention<float>>()->causal);
  EXPECT_TRUE(bitwise_equal(causal(in.q, in.k, in.v), a(in.q, in.k, in.v)));

  const AnyAttention<float> b(CopyValues<float>{}, "copy");
  EXPECT_EQ(b.name(), "copy");
  EXPECT_NE(b.target<CopyValues<float>>(), nullptr);
  EXPECT_EQ(b.target<SoftmaxAttention<float>>(), nullptr);
  EXPECT_TRUE(bitwise_equal(b(in.v, in.v, in.v), in.v));
  // The held functor's own checks run through AnyAttention (CopyValues refuses cross-attention).
  EXPECT_TRUE(throws_naming([&] { b(in.q, in.k, in.v); }, {"CopyValues", "as many keys as queries"}));
}

// What make_attention builds for name: a functor of exactly type F (AnyAttention::target<F>
// matches the held type only, so four AFT names cannot pass as one type), reporting F's class
// name, whose call on x fits its default options (no throw) and gives, bitwise, what a
// default-constructed F gives: the registry adds no options of its own (soft-nystrom's
// min(49, N) landmarks are segments(49) at the N = 64 used here).
template <class F>
::testing::AssertionResult builds(const AnyAttention<float>& any, Tensor4<float>& x) {
  if (!any.target<F>())
    return ::testing::AssertionFailure() << "holds no " << F::kName << " (but a " << any.method_name() << ")";
  if (std::string(any.method_name()) != F::kName)
    return ::testing::AssertionFailure() << "method_name() is " << any.method_name() << ", not " << F::kName;
  Tensor4<float> out;
  try {
    out = any(x, x, x);
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw on inputs its defaults accept: " << e.what();
  }
  if (!bitwise_equal(out, F{}(x, x, x)))
    return ::testing::AssertionFailure() << "differs from a default " << F::kName << " on the same inputs";
  return ::testing::AssertionSuccess();
}

using Builds = ::testing::AssertionResult (*)(const AnyAttention<float>&, Tensor4<float>&);

/// The type each registered name must build, written out here (not taken from the registry).
const std::map<std::string, Builds>& expected_types() {
  static const std::map<std::string, Builds> m = {
      {"softmax", &builds<SoftmaxAttention<float>>},
      {"sima", &builds<softfree::SimA<float>>},
      {"soft-gaussian", &builds<softfree::SoftGaussian<float>>},
      {"soft-nystrom", &builds<softfree::SoftNystrom<float>>},
      {"aft-full", &builds<softfree::AftFull<float>>},
      {"aft-local", &builds<softfree::AftLocal<float>>},
      {"aft-simple", &builds<softfree::AftSimple<float>>},
      {"aft-conv", &builds<softfree::AftConv<float>>},
  };
  return m;
}

// Whatever make_attention knows: each name builds the functor type written above for it (every
// name has one, and no name is missing from the registry), reporting that name, whose call fits
// and never writes to its inputs, and the unknown-name error lists every known name. x is
// [2, 3, 64, 16], one tensor for q, k and v: 64 tokens fit every default (SoftNystrom's
// segments(49) needs N >= 49; AftConv without a kernel takes any N), and a tied SoftNystrom call
// converges.
TEST(Api, EveryRegisteredName) {
  const Tensor4<float> x = random_tensor<float>(2, 3, 64, 16, 4);
  const std::vector<std::string> names = softfree::attention_names();
  ASSERT_EQ(names.size(), expected_types().size());  // softmax, sima, two SOFT and four AFT variants
  std::string message;
  try {
    softfree::make_attention<float>("no-such-attention");
  } catch (const softfree::invalid_argument& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("\"no-such-attention\""), std::string::npos) << message;
  for (const std::string& name : names) {
    SCOPED_TRACE(name);
    EXPECT_NE(message.find(name), std::string::npos) << message;
    const auto expected = expected_types().find(name);
    ASSERT_NE(expected, expected_types().end()) << "a registered name the test does not know";
    const AnyAttention<float> f = softfree::make_attention<float>(name);
    EXPECT_EQ(f.name(), name);
    Tensor4<float> q = x;  // non-const: the library could write through it
    EXPECT_TRUE(expected->second(f, q));
    EXPECT_TRUE(bitwise_equal(q, x));
  }
}

TEST(Api, UnknownNameThrows) {
  EXPECT_TRUE(throws_naming([] { softfree::make_attention<float>("softmx"); },
                            {"make_attention", "unknown attention name \"softmx\"", "known names", "softmax"}));
  EXPECT_TRUE(throws_naming([] { softfree::make_attention<Eigen::half>(""); }, {"make_attention", "\"\""}));
  EXPECT_TRUE(throws_naming([] { softfree::make_attention<double>("Softmax"); }, {"\"Softmax\""}));  // case matters
}

// ---------------------------------------------------------------------------------------------
// Bad inputs. Each case calls both forms; the write-into form's out is filled with a sentinel
// that must survive the throw (errors come before any output is written).

template <class T>
::testing::AssertionResult untouched(const Tensor4<T>& out, T sentinel) {
  for (Index i = 0; i < out.size(); ++i)
    if (std::memcmp(&out.data()[i], &sentinel, sizeof(T)) != 0)
      return ::testing::AssertionFailure() << "out element " << i << " was written";
  return ::testing::AssertionSuccess();
}

// Both call forms throw naming the needles; out (shape `out_shape`) keeps its sentinel.
template <class T>
::testing::AssertionResult rejects(const SoftmaxAttention<T>& attn, const Tensor4<T>& q, const Tensor4<T>& k,
                                   const Tensor4<T>& v, std::initializer_list<const char*> needles,
                                   softfree::Shape4 out_shape = {}) {
  if (out_shape == softfree::Shape4{}) out_shape = softfree::shape_of(q);
  auto r = throws_naming([&] { attn(q, k, v); }, needles);
  if (!r) return r << " (allocating form)";
  const T sentinel = T(7.5);
  Tensor4<T> out(out_shape.B, out_shape.H, out_shape.N, out_shape.D);
  out.setConstant(sentinel);
  r = throws_naming([&] { attn(q, k, v, out); }, needles);
  if (!r) return r << " (write-into form)";
  return untouched(out, sentinel);
}

TYPED_TEST(ApiTyped, MismatchedShapes) {
  using T = TypeParam;
  const SoftmaxAttention<T> attn;
  const auto q = random_tensor<T>(2, 3, 7, 8, 10), kv = random_tensor<T>(2, 3, 9, 8, 11);
  const char* b = "batch (B) must match";
  const char* h = "k and v must have the same heads (H)";
  const auto t = [](Index B, Index H, Index N, Index D) { return random_tensor<T>(B, H, N, D, 12); };
  EXPECT_TRUE(rejects(attn, q, t(1, 3, 9, 8), kv, {"k has shape [1, 3, 9, 8]", "q has shape [2, 3, 7, 8]", b}));
  EXPECT_TRUE(rejects(attn, q, t(2, 4, 9, 8), kv, {"k has shape [2, 4, 9, 8]", "v has shape [2, 3, 9, 8]", h}));
  EXPECT_TRUE(rejects(attn, q, kv, t(3, 3, 9, 8), {"v has shape [3, 3, 9, 8]", "q has shape [2, 3, 7, 8]", b}));
  EXPECT_TRUE(rejects(attn, q, kv, t(2, 1, 9, 8), {"v has shape [2, 1, 9, 8]", h}));
  // Grouped-query heads: k and v may have fewer heads than q, but they must divide q's.
  EXPECT_TRUE(rejects(attn, q, t(2, 2, 9, 8), t(2, 2, 9, 8),
                      {"k and v have shape [2, 2, 9, 8]", "q has shape [2, 3, 7, 8]", "H_kv = 2", "must divide"}));
  EXPECT_TRUE(rejects(attn, q, t(2, 3, 9, 16), kv, {"k has shape [2, 3, 9, 16]", "head dim (D) must match"}));
  EXPECT_TRUE(rejects(attn, q, kv, t(2, 3, 9, 4), {"v has shape [2, 3, 9, 4]", "head dim (D) must match"}));
  EXPECT_TRUE(rejects(attn, q, kv, t(2, 3, 8, 8),
                      {"v has shape [2, 3, 8, 8]", "k has shape [2, 3, 9, 8]", "same tokens (N)"}));
  EXPECT_TRUE(rejects(attn, q, t(2, 3, 10, 8), kv, {"v has shape [2, 3, 9, 8]", "k has shape [2, 3, 10, 8]"}));
}

TYPED_TEST(ApiTyped, ZeroSizedDimensions) {
  using T = TypeParam;
  const SoftmaxAttention<T> attn;
  const Index full[4] = {2, 3, 7, 8};
  for (int which = 0; which < 3; ++which)
    for (int dim = 0; dim < 4; ++dim) {
      Index s[4] = {full[0], full[1], full[2], full[3]};
      s[dim] = 0;
      Tensor4<T> t[3] = {random_tensor<T>(2, 3, 7, 8, 20), random_tensor<T>(2, 3, 7, 8, 21),
                         random_tensor<T>(2, 3, 7, 8, 22)};
      t[which] = Tensor4<T>(s[0], s[1], s[2], s[3]);
      std::ostringstream head;
      head << "qkv"[which] << " has shape " << softfree::Shape4{s[0], s[1], s[2], s[3]};
      const std::string needle = head.str();
      EXPECT_TRUE(rejects(attn, t[0], t[1], t[2], {needle.c_str(), "every dimension must be positive"},
                          softfree::Shape4{2, 3, 7, 8}))
          << needle;
    }
}

TYPED_TEST(ApiTyped, OutWithWrongShape) {
  using T = TypeParam;
  const SoftmaxAttention<T> attn;
  const Inputs<T> in;  // result [2, 3, 7, 16]
  for (const softfree::Shape4& s : {softfree::Shape4{2, 3, 9, 16}, softfree::Shape4{1, 3, 7, 16},
                                    softfree::Shape4{2, 3, 7, 8}, softfree::Shape4{2, 6, 7, 8}}) {
    const T sentinel = T(7.5);
    Tensor4<T> out(s.B, s.H, s.N, s.D);
    out.setConstant(sentinel);
    std::ostringstream os;
    os << "out has shape " << s;
    const std::string needle = os.str();
    EXPECT_TRUE(throws_naming([&] { attn(in.q, in.k, in.v, out); }, {needle.c_str(), "[2, 3, 7, 16]"}));
    EXPECT_TRUE(untouched(out, sentinel));
  }
}

TYPED_TEST(ApiTyped, BadKeyLengths) {
  using T = TypeParam;
  const Inputs<T> in;  // B = 2, k has 9 tokens
  SoftmaxAttention<T> attn;
  attn.key_lengths = {9};
  EXPECT_TRUE(rejects(attn, in.q, in.k, in.v, {"key_lengths has 1 entries", "B = 2"}));
  attn.key_lengths = {9, 9, 9};
  EXPECT_TRUE(rejects(attn, in.q, in.k, in.v, {"key_lengths has 3 entries", "B = 2"}));
  attn.key_lengths = {3, -1};
  EXPECT_TRUE(rejects(attn, in.q, in.k, in.v, {"key_lengths[1] = -1", "[0, 9]"}));
  attn.key_lengths = {10, 3};
  EXPECT_TRUE(rejects(attn, in.q, in.k, in.v, {"key_lengths[0] = 10", "[0, 9]", "k has 9 tokens"}));
  attn.key_lengths = {0, 9};  // both bounds are valid
  EXPECT_NO_THROW(attn(in.q, in.k, in.v));
}

TYPED_TEST(ApiTyped, BadScale) {
  using T = TypeParam;
  const Inputs<T> in;
  SoftmaxAttention<T> attn;
  const std::pair<double, const char*> cases[] = {{0.0, "scale = 0"},
                                                  {-0.5, "scale = -0.5"},
                                                  {std::numeric_limits<double>::quiet_NaN(), "scale = nan"},
                                                  {std::numeric_limits<double>::infinity(), "scale = inf"},
                                                  {-std::numeric_limits<double>::infinity(), "scale = -inf"}};
  for (const auto& c : cases) {
    attn.scale = c.first;
    EXPECT_TRUE(rejects(attn, in.q, in.k, in.v, {"SoftmaxAttention", c.second, "positive and finite"}));
  }
}

// out sharing memory with an input: the same buffer, partial overlaps either side, and (control)
// touching but not overlapping buffers, which are accepted.
TYPED_TEST(ApiTyped, OutAliasingAnInput) {
  using T = TypeParam;
  const SoftmaxAttention<T> attn;
  const Index size = 2 * 3 * 7 * 16;  // self-attention: q, k, v and out all [2, 3, 7, 16]
  const auto src = random_tensor<T>(1, 1, 1, 5 * size, 30);
  std::vector<T> buf(src.data(), src.data() + src.size());
  // q, k, v at offsets size, 2 size, 3 size of one buffer, so out can start before or after each.
  const ConstView4<T> q(buf.data() + size, 2, 3, 7, 16), k(buf.data() + 2 * size, 2, 3, 7, 16),
      v(buf.data() + 3 * size, 2, 3, 7, 16);
  for (int which = 0; which < 3; ++which)
    for (Index shift : {Index(0), size / 2, -size / 2, size - 1, 1 - size}) {
      T* out_at = buf.data() + (which + 1) * size + shift;
      EXPECT_TRUE(throws_naming([&] { attn(q, k, v, View4<T>(out_at, 2, 3, 7, 16)); },
                                {"out (shape [2, 3, 7, 16]) overlaps an input"}))
          << "input " << which << ", shift " << shift;
      EXPECT_EQ(0, std::memcmp(buf.data(), src.data(), buf.size() * sizeof(T)))
          << "buffer written, input " << which << ", shift " << shift;
    }
  const Tensor4<T> expected = attn(q, k, v);
  for (T* out_at : {buf.data(), buf.data() + 4 * size}) {  // ends where q starts; starts where v ends
    attn(q, k, v, View4<T>(out_at, 2, 3, 7, 16));
    EXPECT_EQ(0, std::memcmp(out_at, expected.data(), static_cast<size_t>(size) * sizeof(T)));
  }
}

TEST(Api, ExceptionTypes) {
  static_assert(std::is_base_of<std::invalid_argument, softfree::invalid_argument>::value,
                "callers may catch std::invalid_argument");
  const Inputs<float> in;
  SoftmaxAttention<float> attn;
  attn.scale = -1.0;
  EXPECT_THROW(attn(in.q, in.k, in.v), std::invalid_argument);
  EXPECT_THROW(softfree::make_attention<float>("x"), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// One API shape: the registry's types, one rule for unsupported options, per-call reports, and
// errors that name the method behind an AnyAttention.

TEST(Api, RegistryBuildsEachNamedType) {
  const std::vector<std::pair<std::string, bool (*)(const AnyAttention<float>&)>> expected = {
      {"softmax", [](const AnyAttention<float>& a) { return a.target<SoftmaxAttention<float>>() != nullptr; }},
      {"sima", [](const AnyAttention<float>& a) { return a.target<softfree::SimA<float>>() != nullptr; }},
      {"soft-gaussian", [](const AnyAttention<float>& a) { return a.target<softfree::SoftGaussian<float>>() != nullptr; }},
      {"soft-nystrom", [](const AnyAttention<float>& a) { return a.target<softfree::SoftNystrom<float>>() != nullptr; }},
      {"aft-full", [](const AnyAttention<float>& a) { return a.target<softfree::AftFull<float>>() != nullptr; }},
      {"aft-local", [](const AnyAttention<float>& a) { return a.target<softfree::AftLocal<float>>() != nullptr; }},
      {"aft-simple", [](const AnyAttention<float>& a) { return a.target<softfree::AftSimple<float>>() != nullptr; }},
      {"aft-conv", [](const AnyAttention<float>& a) { return a.target<softfree::AftConv<float>>() != nullptr; }},
  };
  ASSERT_EQ(softfree::attention_names().size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(softfree::attention_names()[i], expected[i].first);
    EXPECT_TRUE(expected[i].second(softfree::make_attention<float>(expected[i].first))) << expected[i].first;
  }
}

// Every method has a `causal` field and states in kCapabilities whether it supports it; where it
// does not, causal = true is rejected with the same message, before anything is written.
template <class F>
void check_causal_rule(F f, bool supported) {
  SCOPED_TRACE(F::kName);
  EXPECT_EQ(F::kCapabilities.causal, supported);
  EXPECT_EQ(AnyAttention<float>(f).capabilities().causal, supported);
  const Tensor4<float> x = random_tensor<float>(1, 2, 16, 8, 31);
  f.causal = true;
  if (supported) {
    EXPECT_NO_THROW(f(x, x, x));
  } else {
    Tensor4<float> out(1, 2, 16, 8);
    out.setConstant(7.5f);
    EXPECT_TRUE(throws_naming([&] { f(x, x, x, out); }, {F::kName, "causal = true is not supported"}));
    for (Index i = 0; i < out.size(); ++i) ASSERT_EQ(out.data()[i], 7.5f);
  }
}

TEST(Api, OneRuleForCausal) {
  softfree::SoftNystrom<float> nystrom;
  nystrom.landmarks = softfree::Landmarks::segments(4);
  check_causal_rule(SoftmaxAttention<float>{}, true);
  check_causal_rule(softfree::SimA<float>{}, false);
  check_causal_rule(softfree::SoftGaussian<float>{}, false);
  check_causal_rule(nystrom, false);
  check_causal_rule(softfree::AftFull<float>{}, true);
  check_causal_rule(softfree::AftLocal<float>{}, true);
  check_causal_rule(softfree::AftSimple<float>{}, true);
  check_causal_rule(softfree::AftConv<float>{}, false);
  EXPECT_TRUE(SoftmaxAttention<float>::kCapabilities.cross_attention);
  EXPECT_FALSE(softfree::AftSimple<float>::kCapabilities.cross_attention);
}

TEST(Api, AnyAttentionErrorsNameTheHeldMethod) {
  const Inputs<float> in;
  const AnyAttention<float> any = softfree::make_attention<float>("softmax");
  EXPECT_STREQ(any.method_name(), "SoftmaxAttention");
  Tensor4<float> wrong(2, 3, 7, 8);
  EXPECT_TRUE(throws_naming([&] { any(in.q, in.k, in.v, wrong); }, {"softfree::SoftmaxAttention", "out has shape"}));
  const Tensor4<float> bad_k = random_tensor<float>(2, 3, 9, 8, 5);
  EXPECT_TRUE(throws_naming([&] { any(in.q, bad_k, in.v); }, {"softfree::SoftmaxAttention", "head dim"}));
  try {
    any(in.q, in.k, in.v, wrong);
  } catch (const softfree::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()).find("AnyAttention"), std::string::npos) << e.what();
  }
}

// SoftNystrom's Newton diagnostics come back per call, from run(), also through AnyAttention;
// every other method reports NoReport.
TEST(Api, PerCallReports) {
  const Tensor4<float> q = random_tensor<float>(1, 2, 32, 8, 41, 0.0, 1.0), v = random_tensor<float>(1, 2, 32, 8, 42);
  softfree::SoftNystrom<float> f;
  f.landmarks = softfree::Landmarks::segments(8);
  Tensor4<float> out(1, 2, 32, 8);
  const softfree::NewtonDiagnostics d = f.run(q, q, v, out);
  EXPECT_EQ(d.heads, 2);
  EXPECT_EQ(d.steps, 20);
  f.newton.steps = 3;
  const softfree::NewtonDiagnostics d3 = f.run(q, q, v, out);
  EXPECT_EQ(d3.steps, 3);
  EXPECT_GT(d3.residual, d.residual);  // fewer steps, a worse inverse: each call reports its own
  const std::any r = AnyAttention<float>(f).run(q, q, v, out);
  const auto* any_d = std::any_cast<softfree::NewtonDiagnostics>(&r);
  ASSERT_NE(any_d, nullptr);
  EXPECT_EQ(any_d->steps, 3);
  EXPECT_EQ(any_d->residual, d3.residual);
  const std::any none = softfree::make_attention<float>("sima").run(q, q, v, out);
  EXPECT_NE(std::any_cast<softfree::NoReport>(&none), nullptr);
  static_assert(std::is_same<decltype(softfree::SimA<float>{}.run(q, q, v, out)), softfree::NoReport>::value, "");
}

}  // namespace
