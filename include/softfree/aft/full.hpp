#pragma once
// AftFull: AFT with learned position biases w (N x N shared by every head, or one per head),
// O(N^2 D) (SPEC.md "AFT"). exp(w) is cached once per bias (shared by copies of the functor),
// packed for the kernel layer's gemm; each call is then one product of the cache against
// X = [e^K V, e^K] per (b, h).
#include <algorithm>
#include <limits>
#include <memory>
#include <mutex>
#include <type_traits>

#include "../core/attention.hpp"
#include "../core/parallel.hpp"
#include "../core/kernels/pairs.hpp"
#include "../core/schedule.hpp"
#include "common.hpp"
#include "decode.hpp"
#include "simple.hpp"

namespace softfree {
namespace detail {

/// AftFull's bias and exp(w) per head slot, packed in chunks of kKC keys, each chunk as row groups
/// of kMR queries key-major: group g of chunk c holds its keys j, each as kMR consecutive values
/// (queries g*kMR + r; rows past N are zero), the order a PackedA<kMR> operand reads; an item's
/// groups of one chunk are contiguous. Row t is shifted by max_t' w[t, t'] over its summed keys
/// (all, or t' <= t when causal; the causal table is zero above the diagonal), so entries are <= 1
/// and the shift cancels in the ratio. Each variant is built on first use, once, and shared.
template <class Acc>
class AftFullBias {
 public:
  static constexpr Index kMR = 6, kKC = 128;

  explicit AftFullBias(AftTable<Acc> w) : w_(std::move(w)) {}
  const AftTable<Acc>& table() const { return w_; }
  /// w[t, t'] of slot hs.
  Acc w(Index hs, Index t, Index tp) const { return w_(hs, t, tp); }

  const Acc* packed(bool causal) const {
    const int c = causal ? 1 : 0;
    std::call_once(once_[c], [&] { build(causal, packed_[c]); });
    return packed_[c].data();
  }

  /// The same table rounded to bf16 pairs along the keys (pairs.hpp), for bf16 products: per
  /// slot and chunk, group g as [pairs_of(chunk)][kMR] words; a slot is pairs_words(n) words.
  const PairWord* packed_pairs(bool causal) const {
    const int c = causal ? 1 : 0;
    std::call_once(pairs_once_[c], [&] { build_pairs(packed(causal), pairs_[c]); });
    return pairs_[c].data();
  }
  static Index pairs_words(Index n) { return (n + kMR - 1) / kMR * kMR * pairs_of(n); }

 private:
  void build_pairs(const Acc* tab, AlignedBuffer<PairWord>& out) const {
    const Index n = w_.rows, ng = (n + kMR - 1) / kMR;
    out.assign(static_cast<size_t>(w_.slots * pairs_words(n)), PairWord(0));
    for (Index hs = 0; hs < w_.slots; ++hs)
      for (Index j0 = 0; j0 < n; j0 += kKC) {
        const Index chunk = std::min(kKC, n - j0), cp = pairs_of(chunk);
        for (Index g = 0; g < ng; ++g) {
          const Acc* a = tab + hs * ng * n * kMR + j0 * ng * kMR + g * chunk * kMR;  // [chunk][kMR]
          PairWord* o = out.data() + hs * pairs_words(n) + j0 / 2 * ng * kMR + g * cp * kMR;
          for (Index t = 0; t < cp; ++t)
            for (Index r = 0; r < kMR; ++r)
              o[t * kMR + r] = pair_word_rounded(a[2 * t * kMR + r], 2 * t + 1 < chunk ? a[(2 * t + 1) * kMR + r] : 0);
        }
      }
  }

  void build(bool causal, AlignedBuffer<Acc>& tab) const {
    const Index slots = w_.slots, n = w_.rows, ng = (n + kMR - 1) / kMR;
    tab.assign(static_cast<size_t>(slots * ng * n * kMR), Acc(0));
    for (Index hs = 0; hs < slots; ++hs)
      for (Index t = 0; t < n; ++t) {
        const Index last = causal ? t : n - 1;
        Acc mx = -std::numeric_limits<Acc>::infinity();
        for (Index j = 0; j <= last; ++j) mx = std::max(mx, w_(hs, t, j));
        for (Index j = 0; j <= last; ++j) {
          const Index j0 = j / kKC * kKC, chunk = std::min(kKC, n - j0);
          tab[static_cast<size_t>(hs * ng * n * kMR + j0 * ng * kMR + ((t / kMR) * chunk + j - j0) * kMR + t % kMR)] =
              std::exp(w_(hs, t, j) - mx);
        }
      }
  }

  AftTable<Acc> w_;
  mutable std::once_flag once_[2], pairs_once_[2];
  mutable AlignedBuffer<Acc> packed_[2];
  mutable AlignedBuffer<PairWord> pairs_[2];
};

}  // namespace detail

/// AFT-full: per-channel attention with learned position biases w, O(N^2 D). Without a bias,
/// w = 0 for any N (the result equals AftSimple). causal: sums over t' <= t.
template <class T = float>
class AftFull : public Attention<AftFull<T>, T>,
                public detail::AftBias<AftFull<T>, T, detail::AftFullBias<accum_t<T>>> {
  using Acc = accum_t<T>;
  using Params = detail::AftFullBias<Acc>;

 public:
  static constexpr const char* kName = "AftFull";
  static constexpr Capabilities kCapabilities{true, false, ""};

  bool causal = false;
  Parallel parallel;

  AftFull() = default;
  /// w: N x N (shared by every head).
  template <class Derived>
  explicit AftFull(const Eigen::MatrixBase<Derived>& w) {
    this->set_bias(w);
  }
  /// w: [1 or H, N, N].
  explicit AftFull(const AftWeights<T>& w) { this->set_bias(w); }

  /// Causal decoding of one head, token by token: step(q_t, k_t, v_t, y_t) gives row t of the
  /// causal call (row t of the bias against every earlier key), in O(t D), never allocating; at
  /// most N tokens (the bias's). The state shares the bias as set when it is made.
  class State : public detail::AftWindowState<T, detail::AftFullBias<Acc>> {
   public:
    State(const AftFull& f, Index d, Index head = 0)
        : detail::AftWindowState<T, detail::AftFullBias<Acc>>(
              "AftFull::State", f.bias_, f.bias_ ? f.bias_->table().rows : 1, d, head) {}
  };

  void check_options(const Shape4& s, const Shape4& sk) const {
    if (!this->bias_) return;
    const auto& w = this->bias_->table();
    if (w.rows != s.N)
      detail::fail(kName, "w has shape [", w.slots, ", ", w.rows, ", ", w.cols, "] but q has shape ", s,
                   ": the bias must be N x N with N = ", s.N);
    detail::aft_check_heads(kName, "w", w.slots, s, sk);
  }

 private:
  friend class detail::AftBias<AftFull, T, Params>;
  std::shared_ptr<const Params> make_bias(detail::AftTable<Acc> w) const {
    detail::aft_check_weights(kName, "w", w);
    if (w.rows != w.cols)
      detail::fail(kName, "w has shape [", w.slots, ", ", w.rows, ", ", w.cols, "]: must be [1 or H, N, N]");
    return std::make_shared<const Params>(std::move(w));
  }
};

namespace detail {
inline namespace SOFTFREE_ISA {

/// One thread's AftFull workspace: the product exp(w) (N x N) * X (N x 2D) as a register-blocked
/// gemm of kMR query rows by kNP packets of X's columns (6 x 4 = 24 accumulators of AVX-512's 32
/// registers; 6 x 2 with 16). The depth (keys) is cut in chunks of kKC; per chunk and head the
/// chunk's X rows (kKC x 2D, 64 KiB for D = 64) are built once, and each row group's packed exp(w)
/// (kMR x kKC) stays in L1 across X's column blocks, which stay in L2. An item's exp(w) chunk
/// (kRows x kKC) stays in L2 across its heads, and so do their [num | den] accumulators.
/// Pairs: the product on bf16 pairs (pairs.hpp) of the bf16 exp(w) table and each chunk of X
/// rounded to bf16, accumulated in float.
template <class T, bool Pairs = false>
class AftFullRows {
  using Acc = accum_t<T>;
  static constexpr Index kMR = AftFullBias<Acc>::kMR, kKC = AftFullBias<Acc>::kKC;
  static constexpr int kNP = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS >= 32 ? 4 : 2;
  using TableWord = std::conditional_t<Pairs, PairWord, Acc>;  // of the packed exp(w)

 public:
  // Query rows per work item: X is rebuilt per item (kend x D exponentials against 2 kRows kend D
  // multiply-adds per head).
  static constexpr Index kRows = 32 * kMR;

  AftFullRows(Index d, Index heads)
      : d_(d), ldx_(aft_ld<Acc>(d)), dp_(pad_to_packets<Acc>(d)), x_(static_cast<size_t>(kKC * ldx_)),
        kv_(static_cast<size_t>(2 * kKC * d)), xp_(Pairs ? static_cast<size_t>(pairs_of(kKC) * ldx_) : 0),
        acc_(static_cast<size_t>(heads * kRows * ldx_)),
        m_(static_cast<size_t>(heads * dp_)), m_src_(static_cast<size_t>(heads), nullptr),
        m_rows_(static_cast<size_t>(heads), 0) {}

  /// Query rows [it.r0, it.r0 + it.rows) of kv heads it.h .. it.h + it.heads - 1 (one bias slot),
  /// finished for each query head that reads them.
  void run(const AftFull<T>& f, const AftFullBias<Acc>& bias, const ConstView4<T>& q, const ConstView4<T>& k,
           const ConstView4<T>& v, const WorkGrid::Item& it, const View4<T>& out) {
    const Index n = q.dimension(2), i0 = it.r0, slot = bias.table().slot_for(it.h);
    // Keys these rows see; shifted by their max, so the block's last row has a term equal to 1.
    const Index kend = f.causal ? i0 + it.rows : n;
    for (Index i = 0; i < it.heads; ++i) key_max(head(k, it.b, it.h + i).data(), kend, i);
    std::fill(acc_.begin(), acc_.end(), Acc(0));
    const TableWord* packed;
    if constexpr (Pairs)
      packed = bias.packed_pairs(f.causal) + slot * bias.pairs_words(n);
    else
      packed = bias.packed(f.causal) + slot * ((n + kMR - 1) / kMR) * n * kMR;
    for (Index j0 = 0; j0 < kend; j0 += kKC)
      for (Index i = 0; i < it.heads; ++i)
        accumulate(f.causal, packed, n, j0, std::min(kKC, kend - j0), head(k, it.b, it.h + i).data() + j0 * d_,
                   head(v, it.b, it.h + i).data() + j0 * d_, i, it);
    const Index per_kv = q.dimension(1) / k.dimension(1);  // query heads per kv head
    for (Index i = 0; i < it.heads; ++i)
      for (Index h = (it.h + i) * per_kv; h < (it.h + i + 1) * per_kv; ++h)
        finish(f.causal, bias.table(), slot, q, k, v, it, i, h, out);
  }

 private:
  // m = max over keys [0, kend) of head i's K, kept from this thread's previous item of the same
  // head (extended when kend grew; a max is exact, so the result does not depend on the order).
  void key_max(const T* kp, Index kend, Index i) {
    const Index d = d_;
    Acc* m = m_.data() + i * dp_;
    const auto si = static_cast<size_t>(i);
    Index from = m_rows_[si];
    if (kp != m_src_[si] || kend < from) {
      std::fill(m, m + dp_, -std::numeric_limits<Acc>::infinity());
      from = 0;
    }
    for (Index t0 = from; t0 < kend; t0 += kKC) {
      const Index rows = std::min(kKC, kend - t0);
      const Acc* kt = padded_rows(kp + t0 * d, rows, d, d, kv_.data());
      for_each_packet<Acc>(d, [&](auto p, Index c) {
        using P = decltype(p);
        P mx = ei::ploadu<P>(m + c);
        for (Index r = 0; r < rows; ++r) mx = vmax(mx, ei::ploadu<P>(kt + r * d + c));
        ei::pstoreu(m + c, mx);
      });
    }
    m_src_[si] = kp;
    m_rows_[si] = kend;
  }

  // [num | den] of head i += exp(w) rows of the item x X of keys [j0, j0 + kc) (kp, vp: those
  // keys' rows). table: the slot's packed exp(w) (floats, or pair words when Pairs).
  void accumulate(bool causal, const TableWord* table, Index n, Index j0, Index kc, const T* kp, const T* vp, Index i,
                  const WorkGrid::Item& it) {
    constexpr Index L = kLanes<Acc>;
    const Index d = d_, ldx = ldx_, ng = (n + kMR - 1) / kMR, chunk = std::min(kKC, n - j0);
    const Acc* kt = padded_rows(kp, kc, d, d, kv_.data());
    const Acc* vt = padded_rows(vp, kc, d, d, kv_.data() + kKC * d);
    // The chunk of X as column panels {data, stride, width, column of [num | den]}: when D is a
    // multiple of the packet width, e^K V and e^K apart (kc x D each, contiguous), else rows of ldx.
    struct Panel {
      const Acc* b;
      Index ldb, width, col;
    } panels[2];
    int np = 1;
    const Acc* m = m_.data() + i * dp_;
    if (d % L == 0) {
      aft_exp_rows_split(kt, vt, d, m, kc, x_.data(), x_.data() + kKC * d);
      panels[0] = Panel{x_.data(), d, d, 0};
      panels[1] = Panel{x_.data() + kKC * d, d, d, d};
      np = 2;
    } else {
      aft_exp_rows(kt, vt, d, m, 0, kc, ldx, x_.data());
      panels[0] = Panel{x_.data(), ldx, ldx, 0};
    }
    Acc* acc = acc_.data() + i * kRows * ldx;
    PairWord* xp[2] = {};
    if constexpr (Pairs) {  // X's panels as pair rows, [pairs_of(kc)][width] each
      for (int pi = 0; pi < np; ++pi) {
        xp[pi] = xp_.data() + pi * pairs_of(kKC) * panels[pi].width;
        pack_row_pairs<PairOps>(panels[pi].b, kc, panels[pi].width, panels[pi].ldb, xp[pi], panels[pi].width);
      }
    }
    const Index g0 = it.r0 / kMR, g1 = (it.r0 + it.rows + kMR - 1) / kMR;  // kRows is a multiple of kMR
    for (Index g = g0; g < g1; ++g) {  // row group outer: its exp(w) chunk is read once for every column block
      // Causal: keys past the group's last row are zero in the table; skip them.
      const Index kg = causal ? std::min(kc, (g + 1) * kMR - j0) : kc;
      if (kg <= 0) continue;
      for (int pi = 0; pi < np; ++pi) {
        const AddC<Acc> c{acc + (g - g0) * kMR * ldx + panels[pi].col, ldx};
        if constexpr (Pairs) {
          // This chunk's group g: [pairs_of(chunk)][kMR] words; a pair past kg meets zeros in the
          // table (causal) or in X's padding.
          const PairWord* a = table + j0 / 2 * ng * kMR + g * pairs_of(chunk) * kMR;
          gemm_pairs<Tiling<kNP, kMR>>(kMR, panels[pi].width, pairs_of(kg), PairA{a, 1, kMR},
                                       PairRowsB<PairOps>{xp[pi], panels[pi].width}, c);
        } else {
          const Acc* a = table + j0 * ng * kMR + g * chunk * kMR;
          gemm<Tiling<kNP, kMR>>(kMR, panels[pi].width, kg, PackedA<Acc, kMR>{a}, RowsB<Acc>{panels[pi].b, panels[pi].ldb}, c);
        }
      }
    }
  }

  // Query head h's output rows from kv head i's sums: sigma(q) num / den, with the exact ratio
  // where den underflowed.
  void finish(bool causal, const AftTable<Acc>& w, Index slot, const ConstView4<T>& q, const ConstView4<T>& k,
              const ConstView4<T>& v, const WorkGrid::Item& it, Index i, Index h, const View4<T>& out) {
    const Index n = q.dimension(2), d = d_;
    const T *kp = head(k, it.b, it.h + i).data(), *vp = head(v, it.b, it.h + i).data();
    const Acc* qq = load_q_(head(q, it.b, h).data() + it.r0 * d, it.rows, d).data();
    Acc* y = out_.begin(head(out, it.b, h).data() + it.r0 * d, it.rows, d);
    aft_finish(qq, d, acc_.data() + i * kRows * ldx_, ldx_, it.rows, y, [&](Index r, Index c) {
      const Index t = it.r0 + r;  // rare: the whole head's keys, converted on demand
      return aft_exact_ratio(load_k_(kp, n, d).data(), load_v_(vp, n, d).data(), d, c, causal ? t : n - 1,
                             [&](Index tp) { return w(slot, t, tp); });
    });
    out_.commit();
  }

  Index d_, ldx_, dp_;
  AlignedBuffer<Acc> x_, kv_;            // X chunk; K, V chunk
  AlignedBuffer<PairWord> xp_;           // X chunk as pairs (Pairs)
  AlignedBuffer<Acc> acc_, m_;           // [num | den] per head; key max per head
  std::vector<const T*> m_src_;          // m of head i is the max of keys [0, m_rows_[i]) of m_src_[i]
  std::vector<Index> m_rows_;
  TileLoader<T> load_q_, load_k_, load_v_;
  OutputTile<T> out_;
};

template <class T>
struct Kernel<AftFull<T>> {
  static constexpr bool kBf16Products = true;

  static NoReport forward(const AftFull<T>& f, const ConstView4<T>& q, const ConstView4<T>& k, const ConstView4<T>& v,
                          const View4<T>& out) {
    const AftFullBias<accum_t<T>>* bias = f.bias_.get();
    if (!bias) return aft_simple_forward(f.causal, f.parallel, q, k, v, out);
    return with_products<T>(products_for(f).kind,
                            [&](auto pairs) { return run<AftFullRows<T, decltype(pairs)::value>>(f, *bias, q, k, v, out); });
  }

  // One item = kRows query rows of every kv head that shares a bias slot (all H_kv for a shared
  // bias, else one) of one batch, and of the query heads that read them: each key chunk of packed
  // exp(w) is then read from memory once for all those heads, and each kv head's sums are formed
  // once for its query heads. About N / 192 items per batch, so threads balance.
  template <class Rows>
  static NoReport run(const AftFull<T>& f, const AftFullBias<accum_t<T>>& bias, const ConstView4<T>& q,
                      const ConstView4<T>& k, const ConstView4<T>& v, const View4<T>& out) {
    const Shape4 s = shape_of(q);
    const Index kv_heads = shape_of(k).H, group = bias.table().slots == 1 ? kv_heads : 1;
    for_each_item(f.parallel, WorkGrid{s.B, kv_heads, s.N, Rows::kRows, group}, [&] {
      return [&, ws = Rows(s.D, group)](const WorkGrid::Item& it) mutable { ws.run(f, bias, q, k, v, it, out); };
    });
    return {};
  }
};

}  // namespace SOFTFREE_ISA
}  // namespace detail
}  // namespace softfree
