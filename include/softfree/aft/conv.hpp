#pragma once
// AftConv: tokens form a row-major rows x cols grid (t = y * cols + x); one odd kh x kw kernel w
// per head (or one shared), shared by the head's channels (SPEC.md "AFT"):
//   Y = sigma(Q) * [conv(e^K V, e^w - 1) + sum e^K V] / [conv(e^K, e^w - 1) + sum e^K]
// with conv a zero-padded "same" cross-correlation: AftFull with w[t, t'] = kernel[y'-y+kh/2,
// x'-x+kw/2] inside the window and 0 outside. Computed as the sums outside the window (per-row
// prefix/suffix sums, no subtraction) plus the window's weighted sum: O(N kh kw D).
#include <algorithm>
#include <cmath>
#include <memory>

#include "../core/attention.hpp"
#include "../core/parallel.hpp"
#include "../core/schedule.hpp"
#include "common.hpp"
#include "simple.hpp"

namespace softfree {
namespace detail {

/// AftConv's kernels [1 or H, kh, kw].
template <class Acc>
class AftConvKernel {
 public:
  explicit AftConvKernel(AftTable<Acc> w) : w_(std::move(w)) {}
  const AftTable<Acc>& table() const { return w_; }

 private:
  AftTable<Acc> w_;
};

/// The token grid of an AftConv call.
struct AftGrid {
  Index rows, cols;
};

}  // namespace detail

/// AFT-conv. rows = cols = 0 (default) means a square grid (N must be a perfect square). The bias
/// is the kernel: set_bias(kh x kw matrix) shares one by every head, set_bias([1 or H, kh, kw])
/// gives one per head. Without one, w = 0 (the result equals AftSimple, for any N). Non-causal
/// only, as in the paper.
template <class T = float>
class AftConv : public Attention<AftConv<T>, T>, public detail::AftBias<AftConv<T>, T, detail::AftConvKernel<accum_t<T>>> {
  using Acc = accum_t<T>;
  using Params = detail::AftConvKernel<Acc>;

 public:
  static constexpr const char* kName = "AftConv";
  static constexpr Capabilities kCapabilities{false, false, "AFT-conv's 2-D window has no causal form"};

  Index rows = 0, cols = 0;
  bool causal = false;  ///< not supported: true is rejected
  Parallel parallel;

  AftConv() = default;
  /// A kernel shared by every head (kh x kw), or [1 or H, kh, kw], on a rows x cols grid (0 x 0:
  /// square).
  template <class W>
  explicit AftConv(const W& kernel, Index rows_ = 0, Index cols_ = 0) : rows(rows_), cols(cols_) {
    this->set_bias(kernel);
  }

  void check_options(const Shape4& s, const Shape4& sk) const {
    if (rows == 0 && cols == 0 && !this->bias_) return;  // w = 0: AftSimple, any N
    const detail::AftGrid g = grid(s.N);
    if (!this->bias_) return;
    const auto& w = this->bias_->table();
    detail::aft_check_heads(kName, "kernel", w.slots, s, sk);
    if (w.rows > 2 * g.rows - 1 || w.cols > 2 * g.cols - 1)
      detail::fail(kName, "kernel has shape [", w.slots, ", ", w.rows, ", ", w.cols, "], oversized for the ", g.rows,
                   " x ", g.cols, " grid: kh must be <= 2 rows - 1 and kw <= 2 cols - 1");
  }

  /// The grid of a call with n tokens (options assumed checked).
  detail::AftGrid grid(Index n) const {
    if (rows == 0 && cols == 0) {
      Index r = static_cast<Index>(std::llround(std::sqrt(static_cast<double>(n))));
      while (r * r > n) --r;
      while ((r + 1) * (r + 1) <= n) ++r;
      if (r * r != n)
        detail::fail(kName, "rows = 0, cols = 0 (square grid) but N = ", n,
                     " is not a perfect square: set rows and cols with rows * cols = N");
      return {r, r};
    }
    if (rows <= 0 || cols <= 0 || rows > n / cols || rows * cols != n)  // rows <= n / cols: no overflow
      detail::fail(kName, "grid rows = ", rows, ", cols = ", cols, ": rows * cols must equal N = ", n);
    return {rows, cols};
  }

 private:
  friend class detail::AftBias<AftConv, T, Params>;
  std::shared_ptr<const Params> make_bias(detail::AftTable<Acc> w) const {
    detail::aft_check_weights(kName, "kernel", w);
    if (w.rows % 2 == 0 || w.cols % 2 == 0)
      detail::fail(kName, "kernel has shape [", w.slots, ", ", w.rows, ", ", w.cols, "]: kh and kw must be odd");
    return std::make_shared<const Params>(std::move(w));
  }
};

namespace detail {
inline namespace SOFTFREE_ISA {

/// One thread's AftConv workspace, per (b, kv head): X, its per-grid-row prefix and suffix sums
/// and the sums over grid rows before and after each row (all sums of terms, no differences), then
/// per token the weighted sum of the few rows that make its window and its outside.
template <class T>
class AftConvHead {
  using Acc = accum_t<T>;

 public:
  AftConvHead(const AftGrid& g, Index d, Index kh, Index kw)
      : g_(g), d_(d), ldx_(aft_ld<Acc>(d)), x_(static_cast<size_t>(g.rows * g.cols * ldx_)),
        pre_(static_cast<size_t>(g.rows * (g.cols + 1) * ldx_)), suf_(pre_.size()),
        before_(static_cast<size_t>((g.rows + 1) * ldx_)), after_(before_.size()), acc_(static_cast<size_t>(ldx_)),
        m_(static_cast<size_t>(pad_to_packets<Acc>(d))), ek_(static_cast<size_t>(kh * kw)),
        rows_(static_cast<size_t>(kh * kw + 2 * kh + 2)), wts_(rows_.size()) {}

  /// Kv head h's group: the sums and windows once, finished for each of its query heads.
  void run(const AftTable<Acc>& w, Index h, const GroupSlices<T>& x) {
    const Index n = g_.rows * g_.cols, d = d_, slot = w.slot_for(h), kh = w.rows, kw = w.cols;
    const ConstMatrixMap<Acc> ker = w.slot(slot);
    // Weights e^{w - r} inside the window and e^{-r} outside, r = max(0, max w): all <= 1.
    const Acc r = std::max(Acc(0), *std::max_element(ker.data(), ker.data() + kh * kw));
    const Acc out_w = std::exp(-r);
    for (Index i = 0; i < kh * kw; ++i) ek_[static_cast<size_t>(i)] = std::exp(ker.data()[i] - r);
    const Acc *kk = load_k_(x.k, n, d).data(), *vv = load_v_(x.v, n, d).data();
    io_.bind(x.q, x.out, x.heads, x.stride, d);
    aft_col_max(kk, n, d, m_.data());
    aft_exp_rows(kk, vv, d, m_.data(), 0, n, ldx_, x_.data());
    sums();
    for (Index gy = 0; gy < g_.rows; ++gy)
      for (Index gx = 0; gx < g_.cols; ++gx) {
        window(gy, gx, kh, kw, out_w);
        const Index t = gy * g_.cols + gx, ch = kh / 2, cw = kw / 2;
        io_.rows(t, 1);
        for (Index i = 0; i < x.heads; ++i)
          aft_finish(io_.q(i), d, acc_.data(), ldx_, 1, io_.y(i), [&](Index, Index c) {
            return aft_exact_ratio(kk, vv, d, c, n - 1, [&](Index tp) {
              const Index a = tp / g_.cols - gy + ch, b = tp % g_.cols - gx + cw;
              return a >= 0 && a < kh && b >= 0 && b < kw ? ker(a, b) : Acc(0);
            });
          });
        io_.commit();
      }
  }

 private:
  using Row = Eigen::Map<Eigen::Array<Acc, 1, Eigen::Dynamic>>;
  Row at(AlignedBuffer<Acc>& b, Index i) { return Row(b.data() + i * ldx_, ldx_); }

  // pre[y][j] = sum of X over grid row y, columns < j; suf[y][j]: columns >= j;
  // before[y] = sum over grid rows < y; after[y]: rows >= y.
  void sums() {
    const Index R = g_.rows, C = g_.cols;
    for (Index y = 0; y < R; ++y) {
      at(pre_, y * (C + 1)).setZero();
      for (Index j = 0; j < C; ++j) at(pre_, y * (C + 1) + j + 1) = at(pre_, y * (C + 1) + j) + at(x_, y * C + j);
      at(suf_, y * (C + 1) + C).setZero();
      for (Index j = C - 1; j >= 0; --j) at(suf_, y * (C + 1) + j) = at(suf_, y * (C + 1) + j + 1) + at(x_, y * C + j);
    }
    at(before_, 0).setZero();
    for (Index y = 0; y < R; ++y) at(before_, y + 1) = at(before_, y) + at(pre_, y * (C + 1) + C);
    at(after_, R).setZero();
    for (Index y = R - 1; y >= 0; --y) at(after_, y) = at(after_, y + 1) + at(suf_, y * (C + 1));
  }

  // acc = [num | den] of token (y, x): its window with the kernel's weights, the rest with out_w.
  void window(Index y, Index x, Index kh, Index kw, Acc out_w) {
    const Index R = g_.rows, C = g_.cols, ch = kh / 2, cw = kw / 2, ldx = ldx_;
    const Index y0 = std::max<Index>(0, y - ch), y1 = std::min(R - 1, y + ch);
    const Index x0 = std::max<Index>(0, x - cw), x1 = std::min(C - 1, x + cw);
    size_t cnt = 0;
    const auto add = [&](const Acc* p, Acc wt) {
      rows_[cnt] = p;
      wts_[cnt++] = wt;
    };
    add(before_.data() + y0 * ldx, out_w);
    add(after_.data() + (y1 + 1) * ldx, out_w);
    for (Index yy = y0; yy <= y1; ++yy) {
      add(pre_.data() + (yy * (C + 1) + x0) * ldx, out_w);
      add(suf_.data() + (yy * (C + 1) + x1 + 1) * ldx, out_w);
      for (Index xx = x0; xx <= x1; ++xx)
        add(x_.data() + (yy * C + xx) * ldx, ek_[static_cast<size_t>((yy - y + ch) * kw + (xx - x + cw))]);
    }
    aft_weighted_sum(rows_.data(), wts_.data(), static_cast<Index>(cnt), ldx, acc_.data());
  }

  AftGrid g_;
  Index d_, ldx_;
  AlignedBuffer<Acc> x_, pre_, suf_, before_, after_, acc_, m_, ek_;
  std::vector<const Acc*> rows_;
  std::vector<Acc> wts_;
  TileLoader<T> load_k_, load_v_;
  GroupIO<T> io_;
};

template <class T>
struct Kernel<AftConv<T>> {
  static NoReport forward(const AftConv<T>& f, const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v,
                          const View4<T>& out) {
    const AftConvKernel<accum_t<T>>* w = f.bias_.get();
    if (!w) return aft_simple_forward(false, f.parallel, q, k, v, out);
    const Shape4 s = shape_of(q);
    const AftGrid g = f.grid(s.N);
    // One item = one (b, kv head) with its query heads (one (b, h) without grouped-query heads).
    for_each_item(f.parallel, WorkGrid{s.B, shape_of(k).H, s.N}, [&] {
      return [&, ws = AftConvHead<T>(g, s.D, w->table().rows, w->table().cols)](const WorkGrid::Item& it) mutable {
        ws.run(w->table(), it.h, group_slices(q, k, v, out, it.b, it.h));
      };
    });
    return {};
  }
};

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
