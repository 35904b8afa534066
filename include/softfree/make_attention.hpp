#pragma once
// make_attention<T>(name): builds any attention by name with default options, for programs that
// choose the method at run time. Learned parameters (the AFT biases) are unset there (w = 0) and
// are set through the concrete functor (AnyAttention::target<F>() gives it). The registry is in
// the ISA-tagged namespace, so each translation unit builds functors that run its own kernels.
#include <string>
#include <vector>

#include "aft.hpp"
#include "core/any_attention.hpp"
#include "sima.hpp"
#include "soft.hpp"
#include "softmax.hpp"

namespace softfree {

namespace detail {
inline namespace SOFTFREE_ISA {

template <class T, class F>
AnyAttention<T> make_named(const std::string& name) {
  return AnyAttention<T>(F{}, name);
}

template <class T>
struct NamedAttention {
  const char* name;
  AnyAttention<T> (*make)(const std::string&);
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

/// The attention called `name`, with default options; throws softfree::invalid_argument listing
/// the known names when there is none.
template <class T = float>
AnyAttention<T> make_attention(const std::string& name) {
  for (const auto& e : detail::attention_registry<T>())
    if (name == e.name) return e.make(name);
  std::string known;
  for (const std::string& n : attention_names()) known += (known.empty() ? "" : ", ") + n;
  detail::fail("make_attention", "unknown attention name \"", name, "\"; known names: ", known);
}

}  // namespace SOFTFREE_ISA
}  // namespace softfree
