#pragma once
// The functor protocol every attention follows.
//
// A method is a value type: its options are plain fields, its learned parameters are set through
// member functions, and deriving from Attention<Method, T> gives it the public calls:
//   Tensor4<T> operator()(q, k, v) const;            // allocates the result
//   void operator()(q, k, v, View4<T> out) const;    // writes into the caller's buffer
//   report_type run(q, k, v, View4<T> out) const;    // the same, returning the call's report
//   Shape4 check_inputs(q, k, v) const;              // validates without running
// where q, k, v are Tensor4<T> or (const) TensorMaps of one. A method supplies:
//   static constexpr const char* kName;              // names it in every error
//   static constexpr Capabilities kCapabilities;     // causal? cross-attention?
//   bool causal = false;                             // on every method (rejected where unsupported)
// and every method has the base's `Math math` (core/precision.hpp): how its products are computed.
//   void check_options(const Shape4& q, const Shape4& k) const;   // its own options
//   using report_type = ...;                         // optional: per-call results (default NoReport)
// and its kernel as a specialisation of detail::Kernel<Method> beside it (see below), so the
// functor holds configuration only and the kernel lives in the ISA-tagged namespace
// (core/kernels/isa.hpp). A kernel with bf16 products says so with `static constexpr bool
// kBf16Products = true` and turns detail::products_for(f) into its instantiation with
// detail::with_products. Every check runs before anything is written.
#include <type_traits>
#include <utility>

#include "checks.hpp"
#include "kernels/select.hpp"

namespace softfree {

/// The report of a call that has nothing to report.
struct NoReport {};

/// What a method supports beyond non-causal attention over as many queries as keys. Generic code
/// queries it (Method::kCapabilities, AnyAttention::capabilities()); a request beyond it is
/// rejected with one message for every method.
struct Capabilities {
  bool causal = false;           ///< `causal = true` is accepted (sums over keys t' <= t)
  bool cross_attention = false;  ///< q may have another token count than k and v
  const char* no_causal_reason = "";  ///< why not, when causal is false
};

namespace detail {
inline namespace SOFTFREE_ISA {

/// The kernel of method F: `static typename F::report_type forward(const F&, const ConstView4<T>&
/// q, const ConstView4<T>& k, const ConstView4<T>& v, const View4<T>& out)`, called with checked
/// inputs. Each method specialises it in its own header.
template <class F>
struct Kernel;

}  // namespace SOFTFREE_ISA

// What the protocol needs of a method F, one trait each, for the static checks of Attention.
template <class F, class = void>
struct has_kernel : std::false_type {};
template <class F>
struct has_kernel<F, std::void_t<decltype(sizeof(Kernel<F>))>> : std::true_type {};
template <class F, class = void>
struct has_name_and_capabilities : std::false_type {};
template <class F>
struct has_name_and_capabilities<
    F, std::enable_if_t<std::is_convertible<decltype(F::kName), const char*>::value &&
                        std::is_same<std::decay_t<decltype(F::kCapabilities)>, Capabilities>::value>>
    : std::true_type {};
template <class F, class = void>
struct has_options : std::false_type {};
template <class F>
struct has_options<F, std::void_t<decltype(std::declval<const F&>().check_options(Shape4{}, Shape4{})),
                                  decltype(bool(std::declval<const F&>().causal))>> : std::true_type {};

template <class F, class = void>
struct has_bf16_products : std::false_type {};
template <class F>
struct has_bf16_products<F, std::enable_if_t<Kernel<F>::kBf16Products>> : std::true_type {};

/// Rejects a Math value that is not one, or bf16 products for double storage.
template <class T>
void check_math(const char* where, Math m) {
  if (math_name(m) == nullptr)
    fail(where, "math = ", static_cast<int>(m), " is not a softfree::Math value (automatic, f32, bf16)");
  if (m == Math::bf16 && std::is_same<T, double>::value)
    fail(where, "math = bf16 is not supported for double storage (its products run in double; use f32 or automatic)");
}

inline namespace SOFTFREE_ISA {

/// The products a call of f runs (its policy, the build, the CPU, the method's kernels).
template <class F>
ProductChoice products_for(const F& f) {
  return choose_products<typename F::scalar_type>(f.math, has_bf16_products<F>::value);
}

}  // namespace SOFTFREE_ISA
}  // namespace detail

template <class Derived, class T>
class Attention {
 public:
  using scalar_type = T;
  using report_type = NoReport;

  /// How the products are computed (core/precision.hpp); backend() tells what that gives here.
  Math math = Math::automatic;

  /// The method's name, as errors give it.
  const char* method_name() const { return Derived::kName; }
  Capabilities capabilities() const { return Derived::kCapabilities; }

  /// The product backend this functor's calls run from the calling translation unit, and why.
  template <class Isa = detail::IsaTag>
  BackendInfo backend() const {
    detail::check_math<T>(Derived::kName, math);
    return detail::describe<T>(detail::products_for(self()), math, Derived::kName);
  }

  /// Validates q, k, v and the options; returns the output shape [B, H, Nq, D].
  template <class Q, class K, class V>
  Shape4 check_inputs(const Q& q, const K& k, const V& v) const {
    static_assert(detail::has_name_and_capabilities<Derived>::value,
                  "softfree::Attention<Method, T>: the method needs `static constexpr const char* kName` and "
                  "`static constexpr Capabilities kCapabilities` (see core/attention.hpp)");
    static_assert(detail::has_options<Derived>::value,
                  "softfree::Attention<Method, T>: the method needs a `bool causal` field and `void "
                  "check_options(const Shape4& q, const Shape4& k) const` (see core/attention.hpp)");
    const auto qv = as_const_view<T>(q), kv = as_const_view<T>(k), vv = as_const_view<T>(v);
    const Derived& f = self();
    const Shape4 s = detail::check_qkv(Derived::kName, qv, kv, vv, Derived::kCapabilities.cross_attention);
    if (!Derived::kCapabilities.causal && f.causal)
      detail::fail(Derived::kName, "causal = true is not supported: ", Derived::kCapabilities.no_causal_reason);
    detail::check_math<T>(Derived::kName, f.math);
    f.check_options(s, shape_of(kv));
    return s;
  }

  template <class Q, class K, class V, class Isa = detail::IsaTag>
  Tensor4<T> operator()(const Q& q, const K& k, const V& v) const {
    const Shape4 s = self().check_inputs(q, k, v);
    Tensor4<T> out(s.B, s.H, s.N, s.D);
    forward<Isa>(as_const_view<T>(q), as_const_view<T>(k), as_const_view<T>(v), View4<T>(out.data(), out.dimensions()));
    return out;
  }

  template <class Q, class K, class V, class Isa = detail::IsaTag>
  void operator()(const Q& q, const K& k, const V& v, View4<T> out) const {
    run<Q, K, V, Isa>(q, k, v, out);
  }

  template <class Q, class K, class V, class Isa = detail::IsaTag>
  auto run(const Q& q, const K& k, const V& v, View4<T> out) const {
    const auto qv = as_const_view<T>(q), kv = as_const_view<T>(k), vv = as_const_view<T>(v);
    const Shape4 s = self().check_inputs(qv, kv, vv);
    detail::check_out(self().method_name(), out, s, qv, kv, vv);
    return forward<Isa>(qv, kv, vv, out);
  }

 private:
  const Derived& self() const { return static_cast<const Derived&>(*this); }

  // Isa: the caller's (see core/kernels/isa.hpp), so each translation unit runs its own kernels.
  template <class Isa>
  auto forward(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v, const View4<T>& out) const {
    static_assert(std::is_base_of<Attention, Derived>::value, "softfree::Attention<Derived, T>: Derived must derive from it");
    static_assert(detail::has_kernel<Derived>::value,
                  "softfree::Attention<Method, T>: the method needs its kernel, a specialisation "
                  "`template <class T> struct detail::Kernel<Method<T>>` (in namespace softfree::detail, "
                  "inline namespace SOFTFREE_ISA) with `static typename Method<T>::report_type forward(const "
                  "Method<T>&, const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v, const "
                  "View4<T>& out)`; see core/attention.hpp");
    using Report = typename Derived::report_type;
    static_assert(std::is_same<decltype(detail::Kernel<Derived>::forward(self(), q, k, v, out)), Report>::value,
                  "softfree::Attention<Method, T>: detail::Kernel<Method>::forward must return Method::report_type");
    return detail::Kernel<Derived>::forward(self(), q, k, v, out);
  }
};

}  // namespace softfree
