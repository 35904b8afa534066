#pragma once
// make_attention<T>(name): builds any attention by name, with default options or those written
// in the name ("aft-local:window=16"), for programs that choose the method at run time. Learned parameters (the AFT biases) are unset there (w = 0) and
// are set through the concrete functor (AnyAttention::target<F>() gives it). The registry is in
// the ISA-tagged namespace, so each translation unit builds functors that run its own kernels.
#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "aft.hpp"
#include "core/any_attention.hpp"
#include "core/name_options.hpp"
#include "sima.hpp"
#include "soft.hpp"
#include "softmax.hpp"

namespace softfree {

namespace detail {
inline namespace SOFTFREE_ISA {

constexpr Index kMaxIndex = std::numeric_limits<Index>::max();

/// An option a method takes in its name: the key, what it accepts (listed in errors), and how it
/// sets the functor.
template <class F>
struct NamedOption {
  const char* key;
  const char* accepts;
  void (*set)(F&, const OptionValue&);
};

/// A method's own options and its starting value; the primary: none, default-constructed.
template <class F>
struct OwnOptions {
  static F initial() { return F{}; }
  static std::vector<NamedOption<F>> list() { return {}; }
};

template <class T>
struct OwnOptions<SoftmaxAttention<T>> {
  using F = SoftmaxAttention<T>;
  static F initial() { return F{}; }
  static std::vector<NamedOption<F>> list() {
    return {{"scale", "a finite number > 0", [](F& f, const OptionValue& v) { f.scale = v.number(0, true); }}};
  }
};

template <class T>
struct OwnOptions<SimA<T>> {
  using F = SimA<T>;
  static F initial() { return F{}; }
  static std::vector<NamedOption<F>> list() {
    return {{"eps", "a finite number >= 0", [](F& f, const OptionValue& v) { f.eps = v.number(0, false); }},
            {"order", "auto | qk-first | kv-first", [](F& f, const OptionValue& v) {
               const SimAOrder o[] = {SimAOrder::Auto, SimAOrder::QKFirst, SimAOrder::KVFirst};
               f.order = o[v.word({"auto", "qk-first", "kv-first"})];
             }}};
  }
};

/// By name, SoftNystrom takes at most its landmark count: min(m, N) segments (49 by default), so
/// a name fits any N.
template <class T>
struct OwnOptions<SoftNystrom<T>> {
  using F = SoftNystrom<T>;
  static F initial() {
    F f;
    f.landmarks = Landmarks::segments_up_to(49);
    return f;
  }
  static std::vector<NamedOption<F>> list() {
    return {
        {"landmarks", "an integer m >= 1 (min(m, N) segments)",
         [](F& f, const OptionValue& v) { f.landmarks = Landmarks::segments_up_to(v.integer(1, kMaxIndex)); }},
        {"grid", "ROWSxCOLSxR (grid(rows, cols, r) pooling)",
         [](F& f, const OptionValue& v) {
           const auto g = v.dims(3);
           f.landmarks = Landmarks::grid(g[0], g[1], g[2]);
         }},
        {"steps", "an integer in [0, 1000]", [](F& f, const OptionValue& v) { f.newton.steps = static_cast<int>(v.integer(0, 1000)); }},
        {"lambda", "a finite number >= 0", [](F& f, const OptionValue& v) { f.newton.lambda = v.number(0, false); }},
        {"tolerance", "a finite number >= 0", [](F& f, const OptionValue& v) { f.newton.tolerance = v.number(0, false); }},
        {"init", "current | paper-era",
         [](F& f, const OptionValue& v) {
           f.newton.init = v.word({"current", "paper-era"}) == 0 ? NewtonInit::Current : NewtonInit::PaperEra;
         }},
        {"soft-norm", "true | false", [](F& f, const OptionValue& v) { f.soft_norm = v.flag(); }},
    };
  }
};

template <class T>
struct OwnOptions<AftLocal<T>> {
  using F = AftLocal<T>;
  static F initial() { return F{}; }
  static std::vector<NamedOption<F>> list() {
    return {{"window", "an integer s >= 1", [](F& f, const OptionValue& v) { f.window = v.integer(1, kMaxIndex); }}};
  }
};

template <class T>
struct OwnOptions<AftConv<T>> {
  using F = AftConv<T>;
  static F initial() { return F{}; }
  static std::vector<NamedOption<F>> list() {
    return {{"grid", "ROWSxCOLS (the token grid)", [](F& f, const OptionValue& v) {
               const auto g = v.dims(2);
               f.rows = g[0];
               f.cols = g[1];
             }}};
  }
};

/// Every option F takes by name: its own, then math and threads, and causal where F has a causal
/// form.
template <class F>
std::vector<NamedOption<F>> named_options() {
  std::vector<NamedOption<F>> o = OwnOptions<F>::list();
  if (F::kCapabilities.causal)
    o.push_back({"causal", "true | false", [](F& f, const OptionValue& v) { f.causal = v.flag(); }});
  o.push_back({"math", "automatic | f32 | bf16", [](F& f, const OptionValue& v) {
                 const Math m[] = {Math::automatic, Math::f32, Math::bf16};
                 f.math = m[v.word({"automatic", "f32", "bf16"})];
               }});
  o.push_back({"threads", "an integer in [1, 4096]", [](F& f, const OptionValue& v) {
                 f.parallel = Parallel::with_threads(static_cast<int>(v.integer(1, 4096)));
               }});
  return o;
}

/// F from the options of spec, in the order written; an unknown key is an error listing F's.
template <class T, class F>
AnyAttention<T> make_named(const NameSpec& spec) {
  F f = OwnOptions<F>::initial();
  const std::vector<NamedOption<F>> options = named_options<F>();
  for (const auto& kv : spec.options) {
    const auto it = std::find_if(options.begin(), options.end(), [&](const NamedOption<F>& o) { return kv.first == o.key; });
    if (it == options.end()) {
      std::string known;
      for (const NamedOption<F>& o : options) known += std::string(known.empty() ? "" : "; ") + o.key + " = " + o.accepts;
      fail("make_attention", "\"", spec.text, "\": ", spec.method, " has no option \"", kv.first, "\"; its options: ", known);
    }
    it->set(f, OptionValue(spec, kv.first, kv.second));
  }
  return AnyAttention<T>(std::move(f), spec.text);
}

template <class T>
struct NamedAttention {
  const char* name;
  AnyAttention<T> (*make)(const NameSpec&);
};

/// The registry: each name once, beside the functor it builds.
template <class T>
const std::vector<NamedAttention<T>>& attention_registry() {
  static const std::vector<NamedAttention<T>> entries = {
      {"softmax", &make_named<T, SoftmaxAttention<T>>}, {"sima", &make_named<T, SimA<T>>},
      {"soft-gaussian", &make_named<T, SoftGaussian<T>>}, {"soft-nystrom", &make_named<T, SoftNystrom<T>>},
      {"aft-full", &make_named<T, AftFull<T>>},           {"aft-local", &make_named<T, AftLocal<T>>},
      {"aft-simple", &make_named<T, AftSimple<T>>},       {"aft-conv", &make_named<T, AftConv<T>>},
  };
  return entries;
}

}  // namespace SOFTFREE_ISA
}  // namespace detail

inline namespace SOFTFREE_ISA {

/// The names make_attention knows, in registry order.
inline std::vector<std::string> attention_names() {
  std::vector<std::string> names;
  for (const auto& e : detail::attention_registry<float>()) names.emplace_back(e.name);
  return names;
}

/// The attention called `name`, "method" or "method:key=value,key=value" (options in README);
/// throws softfree::invalid_argument listing the known names for an unknown method, and a
/// method's options for an unknown option or a bad value.
template <class T = float>
AnyAttention<T> make_attention(const std::string& name) {
  const detail::NameSpec spec = detail::parse_name_spec(name);
  for (const auto& e : detail::attention_registry<T>())
    if (spec.method == e.name) return e.make(spec);
  std::string known;
  for (const std::string& n : attention_names()) known += (known.empty() ? "" : ", ") + n;
  detail::fail("make_attention", "unknown attention name \"", spec.method, "\"; known names: ", known);
}

}  // namespace SOFTFREE_ISA
}  // namespace softfree
