#pragma once
// The functor protocol every attention follows, and AnyAttention, its type-erased holder.
//
// A method is a value type with its options as plain fields and two const member functions:
//   Shape4 check_inputs(q, k, v) const;   // validates inputs and options, returns the out shape
//   void compute(q, k, v, out) const;     // the kernel; assumes checked inputs
// Deriving from Attention<Derived, T> gives it the two public call forms:
//   Tensor4<T> operator()(q, k, v) const;            // allocates the result
//   void operator()(q, k, v, View4<T> out) const;    // writes into the caller's buffer
// where q, k, v are Tensor4<T> or (const) TensorMaps of one.
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include "checks.hpp"

namespace softfree {

template <class Derived, class T>
class Attention {
 public:
  using scalar_type = T;

  template <class Q, class K, class V>
  Tensor4<T> operator()(const Q& q, const K& k, const V& v) const {
    const auto qv = as_const_view<T>(q), kv = as_const_view<T>(k), vv = as_const_view<T>(v);
    const Shape4 s = self().check_inputs(qv, kv, vv);
    Tensor4<T> out(s.B, s.H, s.N, s.D);
    self().compute(qv, kv, vv, View4<T>(out.data(), out.dimensions()));
    return out;
  }

  template <class Q, class K, class V>
  void operator()(const Q& q, const K& k, const V& v, View4<T> out) const {
    const auto qv = as_const_view<T>(q), kv = as_const_view<T>(k), vv = as_const_view<T>(v);
    const Shape4 s = self().check_inputs(qv, kv, vv);
    detail::check_out(Derived::kName, out, s, qv, kv, vv);
    self().compute(qv, kv, vv, out);
  }

 private:
  const Derived& self() const { return static_cast<const Derived&>(*this); }
};

/// Holds any attention functor for storage type T (type erasure), for programs that choose the
/// method at run time. Copies share the (immutable) held functor.
template <class T = float>
class AnyAttention : public Attention<AnyAttention<T>, T> {
  struct Concept {
    virtual ~Concept() = default;
    virtual Shape4 check_inputs(const ConstView4<T>&, const ConstView4<T>&, const ConstView4<T>&) const = 0;
    virtual void compute(const ConstView4<T>&, const ConstView4<T>&, const ConstView4<T>&,
                         const View4<T>&) const = 0;
  };
  template <class F>
  struct Model final : Concept {
    explicit Model(F f) : fn(std::move(f)) {}
    Shape4 check_inputs(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v) const override {
      return fn.check_inputs(q, k, v);
    }
    void compute(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v,
                 const View4<T>& out) const override {
      fn.compute(q, k, v, out);
    }
    F fn;
  };

 public:
  static constexpr const char* kName = "AnyAttention";

  template <class F, class = std::enable_if_t<!std::is_same<std::decay_t<F>, AnyAttention>::value>>
  AnyAttention(F f, std::string name = std::decay_t<F>::kName)  // NOLINT: implicit by design
      : impl_(std::make_shared<Model<std::decay_t<F>>>(std::move(f))), name_(std::move(name)) {
    static_assert(std::is_same<typename std::decay_t<F>::scalar_type, T>::value,
                  "softfree::AnyAttention<T> holds functors of the same storage type T");
  }

  /// The registry name (make_attention) or the functor's class name.
  const std::string& name() const { return name_; }

  /// The held functor if it is an F (as std::function::target), else nullptr.
  template <class F>
  const F* target() const {
    auto* m = dynamic_cast<const Model<F>*>(impl_.get());
    return m ? &m->fn : nullptr;
  }

  Shape4 check_inputs(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v) const {
    return impl_->check_inputs(q, k, v);
  }
  void compute(const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v, const View4<T>& out) const {
    impl_->compute(q, k, v, out);
  }

 private:
  std::shared_ptr<const Concept> impl_;
  std::string name_;
};

}  // namespace softfree
