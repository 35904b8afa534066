#pragma once
// AnyAttention<T>: holds any attention functor of storage type T (type erasure), for programs that
// choose the method at run time. Its errors, capabilities and reports are the held method's.
#include <any>
#include <memory>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>

#include "attention.hpp"

namespace softfree {
namespace detail {

template <class T>
struct AnyConcept {
  virtual ~AnyConcept() = default;
  virtual Shape4 check_inputs(const ConstView4<T>&, const ConstView4<T>&, const ConstView4<T>&) const = 0;
  virtual std::any forward(const ConstView4<T>&, const ConstView4<T>&, const ConstView4<T>&,
                           const View4<T>&) const = 0;
  virtual const char* method_name() const = 0;
  virtual Capabilities capabilities() const = 0;
  virtual const void* target(const std::type_info& type) const = 0;
};

inline namespace SOFTFREE_ISA {

// In the ISA namespace: the held functor runs the kernels of the translation unit that wrapped it.
template <class F, class T>
struct AnyModel final : AnyConcept<T> {
  explicit AnyModel(F f) : fn(std::move(f)) {}
  Shape4 check_inputs(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v) const override {
    return fn.check_inputs(q, k, v);
  }
  std::any forward(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v,
                   const View4<T>& out) const override {
    return std::any(Kernel<F>::forward(fn, q, k, v, out));
  }
  const char* method_name() const override { return fn.method_name(); }
  Capabilities capabilities() const override { return fn.capabilities(); }
  const void* target(const std::type_info& type) const override { return type == typeid(F) ? &fn : nullptr; }
  F fn;
};

}  // namespace SOFTFREE_ISA
}  // namespace detail

/// Any attention functor for storage type T. Copies share the (immutable) held functor. Calls,
/// errors and capabilities are the held method's; run() returns its report as a std::any
/// (NewtonDiagnostics from SoftNystrom, NoReport from the others).
template <class T = float>
class AnyAttention : public Attention<AnyAttention<T>, T> {
 public:
  static constexpr const char* kName = "AnyAttention";
  using report_type = std::any;

  template <class F, class = std::enable_if_t<!std::is_same<std::decay_t<F>, AnyAttention>::value>,
            class Isa = detail::IsaTag>
  AnyAttention(F f, std::string name = std::decay_t<F>::kName)  // NOLINT: implicit by design
      : impl_(std::make_shared<const detail::AnyModel<std::decay_t<F>, T>>(std::move(f))), name_(std::move(name)) {
    static_assert(std::is_same<typename std::decay_t<F>::scalar_type, T>::value,
                  "softfree::AnyAttention<T> holds functors of the same storage type T");
  }

  /// The registry name (make_attention) or the functor's class name.
  const std::string& name() const { return name_; }
  /// The held method's class name (as its errors give it).
  const char* method_name() const { return impl_->method_name(); }
  Capabilities capabilities() const { return impl_->capabilities(); }

  /// The held functor if it is an F (as std::function::target), else nullptr.
  template <class F>
  const F* target() const {
    return static_cast<const F*>(impl_->target(typeid(F)));
  }

  template <class Q, class K, class V>
  Shape4 check_inputs(const Q& q, const K& k, const V& v) const {
    return impl_->check_inputs(as_const_view<T>(q), as_const_view<T>(k), as_const_view<T>(v));
  }

 private:
  template <class F>
  friend struct detail::Kernel;
  std::shared_ptr<const detail::AnyConcept<T>> impl_;
  std::string name_;
};

namespace detail {
inline namespace SOFTFREE_ISA {

template <class T>
struct Kernel<AnyAttention<T>> {
  static std::any forward(const AnyAttention<T>& f, const ConstView4<T>& q, const ConstView4<T>& k,
                          const ConstView4<T>& v, const View4<T>& out) {
    return f.impl_->forward(q, k, v, out);
  }
};

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
