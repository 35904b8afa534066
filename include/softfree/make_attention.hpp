#pragma once
// make_attention<T>(name): builds any attention by name with default options, for programs that
// choose the method at run time. Learned parameters (AFT biases, conv kernels) default to zeros
// and are set through the concrete functor.
#include <string>
#include <utility>

#include "core/attention.hpp"
#include "aft.hpp"
#include "sima.hpp"
#include "soft.hpp"
#include "softmax.hpp"

namespace softfree {

namespace detail {
inline const char* const kAttentionNames[] = {"softmax", "sima", "soft-gaussian", "soft-nystrom", "aft-full", "aft-local", "aft-simple", "aft-conv"};
}  // namespace detail

template <class T = float>
AnyAttention<T> make_attention(const std::string& name) {
  if (name == "softmax") return AnyAttention<T>(SoftmaxAttention<T>{}, name);
  if (name == "sima") return AnyAttention<T>(SimA<T>{}, name);
  if (name == "soft-gaussian") return AnyAttention<T>(SoftGaussian<T>{}, name);
  if (name == "soft-nystrom") return AnyAttention<T>(SoftNystrom<T>{}, name);
  if (name == "aft-full") return AnyAttention<T>(AftFull<T>{}, name);
  if (name == "aft-local") return AnyAttention<T>(AftLocal<T>{}, name);
  if (name == "aft-simple") return AnyAttention<T>(AftSimple<T>{}, name);
  if (name == "aft-conv") return AnyAttention<T>(AftConv<T>{}, name);
  std::string known;
  for (const char* n : detail::kAttentionNames) known += (known.empty() ? "" : ", ") + std::string(n);
  detail::fail("make_attention", "unknown attention name \"", name, "\"; known names: ", known);
}

}  // namespace softfree
