// Non-finite inputs (README, "Non-finite inputs"): a NaN, +inf or -inf in one element of q, k or
// v, per method and storage type. Each call is compared with the same call on the finite inputs
// (the base): the output elements the maths says the value reaches get what the policy says
// (NaN for a NaN; for an inf, the limit where IEEE arithmetic gives it, else non-finite or, where
// the inf only drives a weight to 0, finite), and every other element is bitwise the base's.
// Masks are part of it: a NaN in a key or value hidden by causal masking or past key_lengths
// reaches no row. The calls run under ASan/UBSan too (the asan preset): no read out of bounds.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace {

using namespace softfree_test;

enum class Where { q, k, v };
enum class Poison { nan, pos_inf, neg_inf };
/// What one output element of the poisoned head must be. close: within tolerance<T>() of the
/// base relative to its row (floored as close_to_ref's rows), where the value sends the call down
/// another path of the same sums (SimA's double-scaled order when K^T V is not finite; AFT's exact
/// per-row ratio where a causal row block's sums are not finite).
enum class Expect { same, close, nan, non_finite, pos_inf, neg_inf, finite, any };

const char* name_of(Where w) { return w == Where::q ? "q" : w == Where::k ? "k" : "v"; }
const char* name_of(Poison p) { return p == Poison::nan ? "NaN" : p == Poison::pos_inf ? "+inf" : "-inf"; }

double value_of(Poison p) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  return p == Poison::nan ? std::numeric_limits<double>::quiet_NaN() : p == Poison::pos_inf ? inf : -inf;
}

/// The poisoned element: row j (token) and column jc of head (b, h).
struct Spot {
  Index b, h, j, jc;
};

/// Expectation for output element (t, c) of the poisoned head.
using Rule = std::function<Expect(Where, Poison, const Spot&, Index t, Index c)>;

template <class T>
using NfCall = std::function<Tensor4<T>(const Tensor4<T>&, const Tensor4<T>&, const Tensor4<T>&)>;

template <class T>
struct NfMethod {
  std::string name;
  NfCall<T> call;
  Rule rule;
  bool tied = false;  // q is passed as k too (SoftNystrom's tied path): no separate k to poison
};

// Shape: B = 2, H = 2, N = 150 (two 128-key tiles, several query blocks, a 10 x 15 AftConv grid,
// three SoftNystrom tokens per landmark), D = 12 (not whole packets: the tails are read too).
constexpr Index kNfB = 2, kNfH = 2, kNfN = 150, kNfD = 12, kLength = 100;  // key_lengths = {kNfN, kLength}

/// Tile and block edges (63/64), the padding (120 >= kLength), the first and last token.
const std::vector<Spot>& spots() {
  static const std::vector<Spot> s{{1, 0, 0, 0}, {1, 0, 63, 5}, {1, 0, 64, 11}, {1, 1, 99, 3},
                                   {1, 0, 120, 7}, {0, 1, 149, 11}};
  return s;
}

Expect for_value(Poison p) {  // a value reached through positive weights
  return p == Poison::nan ? Expect::nan : p == Poison::pos_inf ? Expect::pos_inf : Expect::neg_inf;
}
Expect nan_or(Poison p, Expect inf) { return p == Poison::nan ? Expect::nan : inf; }

/// SoftmaxAttention: q row i reaches row i only: a NaN makes it NaN; an inf makes its scores
/// +-inf, NaN where one is +inf, and zeros where every score it sees is -inf (as a row whose keys
/// are all masked); k row j every row that sees key j (an inf score gives NaN where it is +inf,
/// drops key j where it is -inf); v[j, c] column c of the rows that see j, with positive weights.
Rule softmax_rule(bool causal, bool padded) {
  return [=](Where w, Poison p, const Spot& s, Index t, Index c) {
    const Index length = padded && s.b == 1 ? kLength : kNfN;
    const auto sees = [&](Index key) { return key < length && (!causal || key <= t); };
    switch (w) {
      case Where::q: return t == s.j ? nan_or(p, Expect::any) : Expect::same;
      case Where::k: return sees(s.j) ? nan_or(p, Expect::any) : Expect::same;
      case Where::v: return sees(s.j) && c == s.jc ? for_value(p) : Expect::same;
    }
    return Expect::any;
  };
}

/// SimA: the l1 norms over tokens spread q[., c] or k[., c] to channel c of every token, and
/// channel c reaches every output element (NaN, or 1/inf = 0 times inf); an inf in q row i gives
/// row i NaN, the others lose channel c (finite). v[j, c] reaches column c of every row, through
/// weights of both signs.
Expect sima_rule(Where w, Poison p, const Spot& s, Index t, Index c) {
  if (w == Where::v) return c == s.jc ? nan_or(p, Expect::non_finite) : Expect::close;
  if (w == Where::q && p != Poison::nan) return t == s.j ? Expect::nan : Expect::finite;
  return Expect::nan;
}

/// SoftGaussian: q row i reaches row i, k row j every row (an inf distance: NaN or a weight of 0),
/// v[j, c] column c of every row through positive weights.
Expect gaussian_rule(Where w, Poison p, const Spot& s, Index t, Index c) {
  switch (w) {
    case Where::q: return t == s.j ? nan_or(p, Expect::any) : Expect::same;
    case Where::k: return nan_or(p, Expect::any);
    case Where::v: return c == s.jc ? for_value(p) : Expect::same;
  }
  return Expect::any;
}

/// SoftNystrom: q or k reaches a landmark, hence A, its pseudo-inverse and every output of the
/// head; v[j, c] column c of every row (R V, then weights of both signs).
Expect nystrom_rule(Where w, Poison p, const Spot& s, Index, Index c) {
  if (w == Where::v) return c == s.jc ? nan_or(p, Expect::non_finite) : Expect::same;
  return nan_or(p, Expect::any);
}

/// The AFT variants: every channel is independent. q[t, c] reaches element (t, c) only, and
/// sigma(+-inf) is 1 or 0 (finite); k[j, c] and v[j, c] column c of the rows that sum over j
/// (all, or t >= j when causal). v through positive weights where the bias enters as e^w
/// (AftFull, AftSimple); AftLocal and AftConv add (e^w - 1) corrections of either sign.
Rule aft_rule(bool causal, bool positive) {
  return [=](Where w, Poison p, const Spot& s, Index t, Index c) {
    if (c != s.jc) return Expect::same;
    if (w == Where::q) return t == s.j ? nan_or(p, Expect::finite) : Expect::same;
    if (causal && s.j > t) return Expect::close;
    if (w == Where::k) return nan_or(p, Expect::any);
    return positive ? for_value(p) : nan_or(p, Expect::non_finite);
  };
}

template <class F, class T>
NfCall<T> as_call(F f) {
  return [f](const Tensor4<T>& q, const Tensor4<T>& k, const Tensor4<T>& v) { return f(q, k, v); };
}

template <class T>
std::vector<NfMethod<T>> methods() {
  std::vector<NfMethod<T>> m;
  for (const bool causal : {false, true})
    for (const bool padded : {false, true}) {
      softfree::SoftmaxAttention<T> f;
      f.causal = causal;
      if (padded) f.key_lengths = {kNfN, kLength};
      m.push_back({std::string("softmax") + (causal ? " causal" : "") + (padded ? " key_lengths" : ""),
                   as_call<decltype(f), T>(f), softmax_rule(causal, padded)});
    }
  for (const auto order : {softfree::SimAOrder::KVFirst, softfree::SimAOrder::QKFirst}) {
    softfree::SimA<T> f;
    f.order = order;
    m.push_back({order == softfree::SimAOrder::KVFirst ? "sima kv-first" : "sima qk-first", as_call<decltype(f), T>(f),
                 sima_rule});
  }
  m.push_back({"soft-gaussian", as_call<softfree::SoftGaussian<T>, T>({}), gaussian_rule});
  m.push_back({"soft-nystrom", as_call<softfree::SoftNystrom<T>, T>({}), nystrom_rule});
  m.push_back({"soft-nystrom tied", as_call<softfree::SoftNystrom<T>, T>({}), nystrom_rule, true});
  const auto bias = random_weights<T>(kNfH, kNfN, kNfN, 5, -2, 2);
  for (const bool causal : {false, true}) {
    const std::string c = causal ? " causal" : "";
    softfree::AftFull<T> full(bias);
    softfree::AftLocal<T> local(8, bias);
    softfree::AftSimple<T> simple;
    full.causal = local.causal = simple.causal = causal;
    m.push_back({"aft-full" + c, as_call<decltype(full), T>(full), aft_rule(causal, true)});
    m.push_back({"aft-local" + c, as_call<decltype(local), T>(local), aft_rule(causal, false)});
    m.push_back({"aft-simple" + c, as_call<decltype(simple), T>(simple), aft_rule(causal, true)});
  }
  m.push_back({"aft-conv", as_call<softfree::AftConv<T>, T>(softfree::AftConv<T>(random_weights<T>(kNfH, 3, 5, 6, -2, 2), 10, 15)),
               aft_rule(false, false)});
  return m;
}

/// Whether got, from the call with `poison` at spot s of `where`, meets the method's rule against
/// base, the call on the finite inputs: other heads bitwise equal, the poisoned head element by
/// element. The message lists the first few misses and counts them.
template <class T>
::testing::AssertionResult meets_rule(const Tensor4<T>& got, const Tensor4<T>& base, const Rule& rule, Where where,
                                      Poison poison, const Spot& s) {
  std::ostringstream misses;
  int count = 0;
  double tensor_max = 0;
  for (Index i = 0; i < base.size(); ++i) tensor_max = std::max(tensor_max, std::abs(static_cast<double>(base.data()[i])));
  for (Index b = 0; b < kNfB; ++b)
    for (Index h = 0; h < kNfH; ++h)
      for (Index t = 0; t < kNfN; ++t) {
        double row_max = kRowFloorOfTensor * tensor_max;
        for (Index c = 0; c < kNfD; ++c) row_max = std::max(row_max, std::abs(static_cast<double>(base(b, h, t, c))));
        for (Index c = 0; c < kNfD; ++c) {
          const double g = static_cast<double>(got(b, h, t, c)), r = static_cast<double>(base(b, h, t, c));
          const Expect e = (b == s.b && h == s.h) ? rule(where, poison, s, t, c) : Expect::same;
          bool ok = true;
          switch (e) {
            case Expect::same: ok = std::memcmp(&got(b, h, t, c), &base(b, h, t, c), sizeof(T)) == 0; break;
            case Expect::close: ok = std::abs(g - r) <= tolerance<T>() * row_max; break;
            case Expect::nan: ok = std::isnan(g); break;
            case Expect::non_finite: ok = !std::isfinite(g); break;
            case Expect::pos_inf: ok = std::isinf(g) && g > 0; break;
            case Expect::neg_inf: ok = std::isinf(g) && g < 0; break;
            case Expect::finite: ok = std::isfinite(g); break;
            case Expect::any: break;
          }
          if (!ok && count++ < 4)
            misses << " [" << b << ", " << h << ", " << t << ", " << c << "] = " << g << " (base " << r << ", expected "
                   << static_cast<int>(e) << ");";
        }
      }
  if (count == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << count << " elements miss the policy (expect: 0 same, 1 close, 2 NaN, "
                                       << "3 non-finite, 4 +inf, 5 -inf, 6 finite):" << misses.str();
}

template <class T>
class NonFinite : public ::testing::Test {};
using NonFiniteTypes = ::testing::Types<float, Eigen::half, Eigen::bfloat16>;
TYPED_TEST_SUITE(NonFinite, NonFiniteTypes, TypeName);

// Every method, q, k and v, NaN and both infinities, at six spots (tile edges, padding, first
// and last token, both batch items and heads).
TYPED_TEST(NonFinite, OneElementReachesWhatThePolicySays) {
  using T = TypeParam;
  const Tensor4<T> q = random_tensor<T>(kNfB, kNfH, kNfN, kNfD, 1), k = keys_near(q, 2), v = random_tensor<T>(kNfB, kNfH, kNfN, kNfD, 3);
  for (const auto& m : methods<T>()) {
    const Tensor4<T>& kk = m.tied ? q : k;
    const Tensor4<T> base = m.call(q, kk, v);
    for (const Where where : {Where::q, Where::k, Where::v}) {
      if (m.tied && where == Where::k) continue;
      for (const Poison poison : {Poison::nan, Poison::pos_inf, Poison::neg_inf})
        for (const Spot& s : spots()) {
          Tensor4<T> pq = q, pk = kk, pv = v;
          Tensor4<T>& target = where == Where::q ? pq : where == Where::k ? pk : pv;
          target(s.b, s.h, s.j, s.jc) = static_cast<T>(value_of(poison));
          const Tensor4<T> got = m.call(pq, m.tied ? pq : pk, pv);
          EXPECT_TRUE(meets_rule(got, base, m.rule, where, poison, s))
              << m.name << ": " << name_of(poison) << " in " << name_of(where) << "[" << s.b << ", " << s.h << ", "
              << s.j << ", " << s.jc << "]";
        }
    }
  }
}

// Softmax masks, wholesale: every key and value past key_lengths (an unused KV-cache tail) or
// every key and value hidden from the first rows under causal masking NaN or inf, and the rows
// that cannot see them are bitwise those of the finite call.
TYPED_TEST(NonFinite, SoftmaxMaskedKeysAndValuesNeverReachAVisibleRow) {
  using T = TypeParam;
  const Tensor4<T> q = random_tensor<T>(kNfB, kNfH, kNfN, kNfD, 11), k = random_tensor<T>(kNfB, kNfH, kNfN, kNfD, 12),
                   v = random_tensor<T>(kNfB, kNfH, kNfN, kNfD, 13);
  for (const Poison poison : {Poison::nan, Poison::pos_inf, Poison::neg_inf}) {
    const T bad = static_cast<T>(value_of(poison));
    {  // padding: batch item 1 sees kLength keys
      softfree::SoftmaxAttention<T> f;
      f.key_lengths = {kNfN, kLength};
      Tensor4<T> pk = k, pv = v;
      for (Index h = 0; h < kNfH; ++h)
        for (Index j = kLength; j < kNfN; ++j)
          for (Index c = 0; c < kNfD; ++c) pk(1, h, j, c) = pv(1, h, j, c) = bad;
      EXPECT_TRUE(bitwise_equal(f(q, pk, pv), f(q, k, v))) << "padding " << name_of(poison);
      f.causal = true;
      EXPECT_TRUE(bitwise_equal(f(q, pk, pv), f(q, k, v))) << "padding + causal " << name_of(poison);
    }
    for (const Index first : {Index(1), Index(63), Index(64), Index(100)}) {  // causal: keys from `first` on
      softfree::SoftmaxAttention<T> f;
      f.causal = true;
      Tensor4<T> pk = k, pv = v;
      for (Index b = 0; b < kNfB; ++b)
        for (Index h = 0; h < kNfH; ++h)
          for (Index j = first; j < kNfN; ++j)
            for (Index c = 0; c < kNfD; ++c) pk(b, h, j, c) = pv(b, h, j, c) = bad;
      EXPECT_TRUE(rows_bitwise_equal(f(q, pk, pv), f(q, k, v), first - 1))
          << "causal, keys from " << first << " " << name_of(poison);
    }
  }
}

}  // namespace
