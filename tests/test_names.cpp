// make_attention's options in the name ("aft-local:window=16"): each option sets the field it
// names (the held functor's field, and bitwise the result of a functor set by hand), errors list
// what is valid, and "soft-nystrom" fits any N (min(49, N) segments).
#include <functional>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace {

using namespace softfree_test;
using softfree::AnyAttention;
using softfree::make_attention;

template <class F>
const F& held(const AnyAttention<float>& any) {
  const F* f = any.target<F>();
  if (!f) throw std::runtime_error(std::string("make_attention built no ") + F::kName);
  return *f;
}

// Each option: the field it sets, and the call equal (bitwise) to a functor set by hand.
struct NameCase {
  std::string name;
  std::function<bool(const AnyAttention<float>&)> fields;
  std::function<Tensor4<float>(const Tensor4<float>&)> by_hand;
};

std::vector<NameCase> cases() {
  using namespace softfree;
  return {
      {"softmax:scale=0.25,causal=true",
       [](const AnyAttention<float>& a) {
         const auto& f = held<SoftmaxAttention<float>>(a);
         return f.scale == 0.25 && f.causal;
       },
       [](const Tensor4<float>& x) {
         SoftmaxAttention<float> f;
         f.scale = 0.25;
         f.causal = true;
         return f(x, x, x);
       }},
      {"sima:eps=0.5,order=qk-first",
       [](const AnyAttention<float>& a) {
         const auto& f = held<SimA<float>>(a);
         return f.eps == 0.5 && f.order == SimAOrder::QKFirst;
       },
       [](const Tensor4<float>& x) {
         SimA<float> f;
         f.eps = 0.5;
         f.order = SimAOrder::QKFirst;
         return f(x, x, x);
       }},
      {"soft-nystrom:landmarks=16,steps=10,lambda=0.1,init=paper-era,soft-norm=1,tolerance=1e-3",
       [](const AnyAttention<float>& a) {
         const auto& f = held<SoftNystrom<float>>(a);
         return f.landmarks.m == 16 && f.landmarks.up_to && f.newton.steps == 10 && f.newton.lambda == 0.1 &&
                f.newton.init == NewtonInit::PaperEra && f.soft_norm && f.newton.tolerance == 1e-3;
       },
       [](const Tensor4<float>& x) {
         SoftNystrom<float> f;
         f.landmarks = Landmarks::segments(16);
         f.newton.steps = 10;
         f.newton.lambda = 0.1;
         f.newton.init = NewtonInit::PaperEra;
         f.newton.tolerance = 1e-3;
         f.soft_norm = true;
         return f(x, x, x);
       }},
      {"soft-nystrom:grid=8x8x2",
       [](const AnyAttention<float>& a) {
         const auto& l = held<SoftNystrom<float>>(a).landmarks;
         return l.kind == Landmarks::Kind::Grid && l.rows == 8 && l.cols == 8 && l.r == 2;
       },
       [](const Tensor4<float>& x) {
         SoftNystrom<float> f;
         f.landmarks = Landmarks::grid(8, 8, 2);
         return f(x, x, x);
       }},
      {"aft-local:window=5,causal=true,threads=2",
       [](const AnyAttention<float>& a) {
         const auto& f = held<AftLocal<float>>(a);
         return f.window == 5 && f.causal && f.parallel.workers() == 2;
       },
       [](const Tensor4<float>& x) {
         AftLocal<float> f(5);
         f.causal = true;
         return f(x, x, x);  // one thread: results are bitwise the same for any thread count
       }},
      {"aft-conv:grid=4x16",
       [](const AnyAttention<float>& a) {
         const auto& f = held<AftConv<float>>(a);
         return f.rows == 4 && f.cols == 16;
       },
       [](const Tensor4<float>& x) {
         AftConv<float> f;
         f.rows = 4;
         f.cols = 16;
         return f(x, x, x);
       }},
      {"aft-full:math=f32,causal=false",
       [](const AnyAttention<float>& a) {
         const auto& f = held<AftFull<float>>(a);
         return f.math == Math::f32 && !f.causal;
       },
       [](const Tensor4<float>& x) { return AftFull<float>{}(x, x, x); }},
  };
}

}  // namespace

TEST(Names, OptionsSetTheirFields) {
  const Tensor4<float> x = random_tensor<float>(1, 2, 64, 16, 7);
  for (const NameCase& c : cases()) {
    SCOPED_TRACE(c.name);
    const AnyAttention<float> any = make_attention<float>(c.name);
    EXPECT_EQ(any.name(), c.name);
    EXPECT_TRUE(c.fields(any));
    EXPECT_TRUE(bitwise_equal(any(x, x, x), c.by_hand(x)));
  }
}

// By name, soft-nystrom takes min(49, N) segments: N = 10 is every token its own landmark, the
// same call as segments(10); N = 64 is segments(49), the functor's default.
TEST(Names, SoftNystromFitsAnyN) {
  for (const Index n : {1, 10, 48, 49, 64}) {
    SCOPED_TRACE(n);
    const Tensor4<float> x = random_tensor<float>(1, 2, n, 8, 11);
    softfree::SoftNystrom<float> f;
    f.landmarks = softfree::Landmarks::segments(std::min<Index>(49, n));
    EXPECT_TRUE(bitwise_equal(make_attention<float>("soft-nystrom")(x, x, x), f(x, x, x)));
    EXPECT_TRUE(bitwise_equal(make_attention<float>("soft-nystrom:landmarks=20")(x, x, x),
                              [&] {
                                f.landmarks = softfree::Landmarks::segments(std::min<Index>(20, n));
                                return f(x, x, x);
                              }()));
  }
  // The functor's own segments(49) still asks for N >= 49.
  const Tensor4<float> small = random_tensor<float>(1, 1, 10, 8, 12);
  EXPECT_TRUE(throws_naming([&] { softfree::SoftNystrom<float>{}(small, small, small); },
                            {"segments(m = 49)", "m must be in [1, N]"}));
}

TEST(Names, UnknownOptionListsTheValidOnes) {
  EXPECT_TRUE(throws_naming([] { make_attention<float>("aft-local:windw=3"); },
                            {"make_attention", "\"aft-local:windw=3\"", "no option \"windw\"", "window = an integer",
                             "causal = true | false", "math = automatic | f32 | bf16", "threads"}));
  // causal only where the method has a causal form.
  EXPECT_TRUE(throws_naming([] { make_attention<float>("sima:causal=true"); }, {"no option \"causal\"", "eps", "order"}));
  EXPECT_TRUE(throws_naming([] { make_attention<float>("soft-gaussian:window=3"); }, {"no option \"window\"", "math"}));
}

TEST(Names, BadValuesSayWhatIsValid) {
  const std::vector<std::pair<std::string, std::vector<const char*>>> bad = {
      {"aft-local:window=0", {"window = \"0\"", "an integer in [1, "}},
      {"aft-local:window=3.5", {"window = \"3.5\"", "an integer"}},
      {"aft-local:window=99999999999999999999", {"an integer"}},
      {"softmax:scale=-1", {"scale = \"-1\"", "a finite number > 0"}},
      {"softmax:scale=0", {"a finite number > 0"}},
      {"softmax:scale=nan", {"scale = \"nan\"", "a finite number"}},
      {"softmax:scale=inf", {"a finite number"}},
      {"softmax:causal=yes", {"causal = \"yes\"", "true or false"}},
      {"sima:order=fast", {"order = \"fast\"", "auto | qk-first | kv-first"}},
      {"sima:eps=-1e-9", {"a finite number >= 0"}},
      {"soft-nystrom:grid=14x14", {"grid = \"14x14\"", "3 positive integers joined by x"}},
      {"soft-nystrom:grid=14x0x2", {"3 positive integers"}},
      {"soft-nystrom:steps=-1", {"steps", "an integer in [0, 1000]"}},
      {"soft-nystrom:init=old", {"current | paper-era"}},
      {"aft-conv:grid=4", {"2 positive integers joined by x"}},
      {"aft-simple:math=fp32", {"automatic | f32 | bf16"}},
      {"aft-simple:threads=0", {"threads = \"0\"", "an integer in [1, 4096]"}},
      {"softmax:", {"option \"\" is not key=value"}},
      {"softmax:scale", {"option \"scale\" is not key=value"}},
      {"softmax:scale=", {"is not key=value"}},
      {"softmax:=1", {"is not key=value"}},
      {"softmax:scale=1,,causal=true", {"option \"\" is not key=value"}},
      {"softmax:scale=1,scale=2", {"option scale is given twice"}},
  };
  for (const auto& b : bad) {
    SCOPED_TRACE(b.first);
    std::string what = "(did not throw softfree::invalid_argument)";
    try {
      make_attention<float>(b.first);
    } catch (const softfree::invalid_argument& e) {
      what = e.what();
    }
    EXPECT_NE(what.find("make_attention"), std::string::npos) << what;
    for (const char* n : b.second) EXPECT_NE(what.find(n), std::string::npos) << what;
  }
  // An unknown method with options is named without them.
  EXPECT_TRUE(throws_naming([] { make_attention<float>("softmx:scale=1"); }, {"unknown attention name \"softmx\""}));
}
