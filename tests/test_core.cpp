// The core layer: parallel_for, Parallel, tile conversion (TileLoader, store_rows), views and
// head slicing, shapes and the exception type.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <functional>
#include <future>
#include <limits>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <vector>

#include "test_util.hpp"

namespace {

using namespace softfree_test;
using softfree::Parallel;
using softfree::Shape4;

// ---------------------------------------------------------------------------------------------
// parallel_for

// The ways to run: serial (default), library pools of 2 and 4 threads, a caller's 2-thread device.
struct Runners {
  Eigen::ThreadPool pool{2};
  Eigen::ThreadPoolDevice device{&pool, 2};
  std::vector<Parallel> all() const {
    return {Parallel{}, Parallel::with_threads(2), Parallel::with_threads(4), Parallel::on(device)};
  }
};

TEST(ParallelFor, EveryItemExactlyOnce) {
  Runners runners;
  for (const Parallel& p : runners.all())
    for (Index n : {0, 1, 5, 1000}) {
      SCOPED_TRACE(::testing::Message() << "workers " << p.workers() << ", n " << n);
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      std::atomic<int> workers_made{0}, items_by_workers{0};
      softfree::detail::parallel_for(p, n, [&] {
        ++workers_made;
        // A worker's state (its "workspace") is owned by one thread: a plain counter suffices.
        return [&, mine = 0](Index i) mutable {
          ++hits[static_cast<size_t>(i)];
          ++mine;
          ++items_by_workers;
          EXPECT_LE(mine, n);
        };
      });
      for (Index i = 0; i < n; ++i) EXPECT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "item " << i;
      EXPECT_EQ(items_by_workers.load(), n);
      // make_worker once per participating thread: none for no work, at most one per worker.
      if (n == 0) EXPECT_EQ(workers_made.load(), 0);
      else {
        EXPECT_GE(workers_made.load(), 1);
        EXPECT_LE(workers_made.load(), std::min<Index>(p.workers(), n));
      }
    }
}

TEST(ParallelFor, SerialRunsOnTheCaller) {
  // Default Parallel, or more threads than items (n = 1): no other thread is involved.
  for (const Parallel& p : {Parallel{}, Parallel::with_threads(1), Parallel::with_threads(0)}) {
    std::set<std::thread::id> ids;
    softfree::detail::parallel_for(p, 50, [&] { return [&](Index) { ids.insert(std::this_thread::get_id()); }; });
    EXPECT_EQ(ids, std::set<std::thread::id>{std::this_thread::get_id()});
  }
  std::thread::id seen;
  softfree::detail::parallel_for(Parallel::with_threads(4), 1, [&] { return [&](Index) { seen = std::this_thread::get_id(); }; });
  EXPECT_EQ(seen, std::this_thread::get_id());
}

TEST(ParallelFor, WorkerExceptionReachesCaller) {
  Runners runners;
  for (const Parallel& p : runners.all())
    for (Index bad : {Index(0), Index(3), Index(999)}) {
      SCOPED_TRACE(::testing::Message() << "workers " << p.workers() << ", throwing item " << bad);
      std::atomic<int> ran{0};
      try {
        softfree::detail::parallel_for(p, 1000, [&] {
          return [&](Index i) {
            ++ran;
            if (i == bad) throw std::runtime_error("item failed");
          };
        });
        ADD_FAILURE() << "no exception";
      } catch (const std::runtime_error& e) {
        EXPECT_STREQ(e.what(), "item failed");
      }
      EXPECT_GE(ran.load(), 1);
      // The pool is still usable afterwards (no thread left waiting or holding the barrier).
      std::atomic<int> after{0};
      softfree::detail::parallel_for(p, 100, [&] { return [&](Index) { ++after; }; });
      EXPECT_EQ(after.load(), 100);
    }
}

TEST(ParallelFor, MakeWorkerExceptionReachesCaller) {
  Runners runners;
  for (const Parallel& p : runners.all()) {
    SCOPED_TRACE(::testing::Message() << "workers " << p.workers());
    EXPECT_THROW(softfree::detail::parallel_for(p, 10,
                                                [&]() -> std::function<void(Index)> {
                                                  throw softfree::invalid_argument("no workspace");
                                                }),
                 softfree::invalid_argument);
  }
}

TEST(ParallelFor, CallerFinishesWhenNoHelperStarts) {
  // The device's only thread is held by a task until the call returns: the caller does every item.
  Eigen::ThreadPool pool(1);
  const Eigen::ThreadPoolDevice device(&pool, 2);
  std::atomic<bool> release{false};
  pool.Schedule([&] {
    while (!release.load()) std::this_thread::yield();
  });
  std::atomic<int> items{0};
  finishes_in_time("parallel_for on a busy pool", [&] {
    softfree::detail::parallel_for(Parallel::on(device), 100, [&] { return [&](Index) { ++items; }; });
  });
  EXPECT_EQ(items.load(), 100);
  release = true;
}

TEST(ParallelFor, TwoPoolsCallingIntoEachOtherDoNotDeadlock) {
  // A task on pool A runs an attention on pool B while a task on B runs one on A; each pool has
  // one thread, held by its task, so neither call gets a helper. Results match the serial call.
  Eigen::ThreadPool pool_a(1), pool_b(1);
  const Eigen::ThreadPoolDevice on_a(&pool_a, 2), on_b(&pool_b, 2);
  const Tensor4<float> q = random_tensor<float>(2, 3, 40, 16, 1), k = random_tensor<float>(2, 3, 40, 16, 2),
                       v = random_tensor<float>(2, 3, 40, 16, 3);
  const Tensor4<float> serial = softfree::SoftmaxAttention<float>{}(q, k, v);
  Tensor4<float> out_a, out_b;
  std::atomic<int> started{0};
  std::promise<void> a_done, b_done;
  auto task = [&](const Eigen::ThreadPoolDevice& other, Tensor4<float>& out, std::promise<void>& done) {
    ++started;
    while (started.load() < 2) std::this_thread::yield();  // both pools busy before either call
    softfree::SoftmaxAttention<float> attn;
    attn.parallel = Parallel::on(other);
    out = attn(q, k, v);
    done.set_value();
  };
  finishes_in_time("two pools calling into each other", [&] {
    pool_a.Schedule([&] { task(on_b, out_a, a_done); });
    pool_b.Schedule([&] { task(on_a, out_b, b_done); });
    a_done.get_future().wait();
    b_done.get_future().wait();
  });
  EXPECT_TRUE(bitwise_equal(out_a, serial));
  EXPECT_TRUE(bitwise_equal(out_b, serial));
}

TEST(ParallelFor, Workers) {
  EXPECT_EQ(Parallel{}.workers(), 1);
  EXPECT_EQ(Parallel::with_threads(1).workers(), 1);
  EXPECT_EQ(Parallel::with_threads(3).workers(), 3);
  EXPECT_EQ(Parallel::with_threads(0).workers(), 1);  // nonsense counts mean serial
  EXPECT_EQ(Parallel::with_threads(-4).workers(), 1);
  Eigen::ThreadPool pool(3);
  const Eigen::ThreadPoolDevice two(&pool, 2), three(&pool, 3);
  EXPECT_EQ(Parallel::on(two).workers(), 2);
  EXPECT_EQ(Parallel::on(three).workers(), 3);
  EXPECT_EQ(Parallel::on(three).device, &three);
}

// ---------------------------------------------------------------------------------------------
// Tile conversion

template <class T>
T from_bits(std::uint32_t b) {
  return Eigen::numext::bit_cast<T>(static_cast<std::uint16_t>(b));
}

// Every half / bfloat16 value but NaN (infinities included).
template <class T>
std::vector<T> all_values() {
  std::vector<T> v;
  for (std::uint32_t b = 0; b < 0x10000u; ++b)
    if (!Eigen::numext::isnan(from_bits<T>(b))) v.push_back(from_bits<T>(b));
  return v;
}

template <class T>
class LowPrecision : public ::testing::Test {};
using LowPrecisionTypes = ::testing::Types<Eigen::half, Eigen::bfloat16>;
TYPED_TEST_SUITE(LowPrecision, LowPrecisionTypes, TypeName);

TYPED_TEST(LowPrecision, TileLoaderConvertsExactly) {
  using T = TypeParam;
  const std::vector<T> values = all_values<T>();
  softfree::detail::TileLoader<T> load;
  // Odd shapes (a tail after any vector width), then a larger tile (the buffer grows), then a
  // smaller one again (the buffer is reused and only rows x cols are read).
  for (const auto& rc : {std::pair<Index, Index>{3, 7}, {1, 1}, {127, 255}, {5, 13}}) {
    const Index rows = rc.first, cols = rc.second;
    const Index offset = (rows * 977) % static_cast<Index>(values.size() - static_cast<size_t>(rows * cols));
    const T* src = values.data() + offset;
    const auto m = load(src, rows, cols);
    ASSERT_EQ(m.rows(), rows);
    ASSERT_EQ(m.cols(), cols);
    for (Index r = 0; r < rows; ++r)
      for (Index c = 0; c < cols; ++c) {
        const float got = m(r, c), want = static_cast<float>(src[r * cols + c]);
        ASSERT_EQ(std::memcmp(&got, &want, sizeof want), 0)
            << "element (" << r << ", " << c << ") of " << rows << " x " << cols << ": got " << m(r, c)
            << ", want " << want;
      }
  }
}

// Rounding once on store: every output equals static_cast<T>(float), including round-half-even
// ties, overflow to infinity, subnormals, signed zeros and NaN.
TYPED_TEST(LowPrecision, OutputRoundsLikeStaticCast) {
  using T = TypeParam;
  std::vector<float> f;
  std::mt19937 gen(5);
  for (int i = 0; i < 4000; ++i) {  // random bit patterns: every exponent, including NaN payloads
    const std::uint32_t u = gen();
    float x;
    std::memcpy(&x, &u, 4);
    f.push_back(x);
  }
  for (std::uint32_t b = 0; b < 0xffffu; ++b) {  // every value, and the tie halfway to the next
    const float x = static_cast<float>(from_bits<T>(b)), y = static_cast<float>(from_bits<T>(b + 1));
    f.push_back(x);
    if (std::isfinite(x) && std::isfinite(y) && b != 0x7fffu) f.push_back(x + (y - x) / 2);  // exact in float
  }
  for (float x : {0.f, -0.f, 65504.f, 65520.f, 65519.f, 1e-8f, -3e-5f, std::numeric_limits<float>::max(),
                  std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                  std::numeric_limits<float>::denorm_min()})
    f.push_back(x);
  while (f.size() % 19) f.push_back(1.f);
  const Index cols = 19, rows = static_cast<Index>(f.size()) / cols;
  // Through an output tile with a row stride wider than the rows (as AFT's padded tiles are),
  // and through the contiguous bulk conversion.
  std::vector<T> out(f.size() + 1, T(3));
  softfree::detail::OutputTile<T> tile;
  float* y = tile.begin(out.data(), rows, cols, cols + 5);
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols + 5; ++c) y[r * (cols + 5) + c] = c < cols ? f[static_cast<size_t>(r * cols + c)] : 9.f;
  tile.commit();
  for (size_t i = 0; i < f.size(); ++i) {
    const T want = static_cast<T>(f[i]);
    if (Eigen::numext::isnan(want)) {
      EXPECT_TRUE(Eigen::numext::isnan(out[i])) << "element " << i;
    } else {
      ASSERT_EQ(std::memcmp(&out[i], &want, sizeof(T)), 0)
          << "element " << i << ": " << f[i] << " stored as " << static_cast<float>(out[i]) << ", want "
          << static_cast<float>(want);
    }
  }
  EXPECT_EQ(static_cast<float>(out.back()), 3.f) << "wrote past the block";
  // The bulk conversion splits packets and scalar tails elsewhere: the same values (a NaN's
  // payload may differ between the F16C instruction and the scalar path; NaN stays NaN).
  std::vector<T> out2(f.size());
  softfree::detail::convert_out(f.data(), out2.data(), static_cast<Index>(f.size()));
  for (size_t i = 0; i < f.size(); ++i) {
    if (Eigen::numext::isnan(out[i]))
      ASSERT_TRUE(Eigen::numext::isnan(out2[i])) << "element " << i;
    else
      ASSERT_EQ(std::memcmp(&out[i], &out2[i], sizeof(T)), 0) << "element " << i;
  }
}

// The output tile writes float results straight into the caller's buffer when the strides agree.
TEST(Precision, OutputTileIsZeroCopyForAccumulateTypes) {
  std::vector<float> out(6 * 5, 0.f);
  softfree::detail::OutputTile<float> tile;
  EXPECT_EQ(tile.begin(out.data(), 6, 5), out.data());
  EXPECT_NE(tile.begin(out.data(), 6, 5, 16), out.data());  // padded rows: a tile, copied on commit
}

TEST(Precision, AccumulateTypes) {
  static_assert(std::is_same<softfree::accum_t<float>, float>::value, "");
  static_assert(std::is_same<softfree::accum_t<double>, double>::value, "");
  static_assert(std::is_same<softfree::accum_t<Eigen::half>, float>::value, "");
  static_assert(std::is_same<softfree::accum_t<Eigen::bfloat16>, float>::value, "");
  EXPECT_STREQ(softfree::precision<Eigen::half>::name, "half");
  EXPECT_STREQ(softfree::precision<Eigen::bfloat16>::name, "bfloat16");
}

TEST(Precision, TileLoaderIsZeroCopyForAccumulateTypes) {
  const std::vector<float> f(6 * 5, 1.5f);
  const std::vector<double> d(6 * 5, 2.5);
  softfree::detail::TileLoader<float> lf;
  softfree::detail::TileLoader<double> ld;
  const auto mf = lf(f.data() + 5, 5, 5);
  const auto md = ld(d.data(), 6, 5);
  EXPECT_EQ(mf.data(), f.data() + 5);
  EXPECT_EQ(md.data(), d.data());
  EXPECT_EQ(mf.rows(), 5);
  EXPECT_EQ(md.cols(), 5);
}

// ---------------------------------------------------------------------------------------------
// Views, slices, shapes, errors

// Column-major (or other-rank) tensors are rejected by a static_assert in as_const_view: a
// compile-time property, so there is no runtime test for it.
TEST(Tensor, AsConstViewAcceptsTensorsAndMaps) {
  Tensor4<float> t(2, 3, 4, 5);
  t.setRandom();
  const Tensor4<float>& ct = t;
  const softfree::View4<float> map(t.data(), t.dimensions());
  const softfree::ConstView4<float> cmap(t.data(), 2, 3, 4, 5);
  const Eigen::TensorMap<const Tensor4<float>> cmap2(t.data(), 2, 3, 4, 5);
  const auto check = [&](const softfree::ConstView4<float>& v) {
    EXPECT_EQ(v.data(), t.data());
    EXPECT_EQ(softfree::shape_of(v), (Shape4{2, 3, 4, 5}));
  };
  check(softfree::as_const_view<float>(t));
  check(softfree::as_const_view<float>(ct));
  check(softfree::as_const_view<float>(map));
  check(softfree::as_const_view<float>(cmap));
  check(softfree::as_const_view<float>(cmap2));
}

TEST(Tensor, HeadAddressesTheSlice) {
  const Index B = 2, H = 3, N = 5, D = 4;
  Tensor4<double> t(B, H, N, D);
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h)
      for (Index n = 0; n < N; ++n)
        for (Index d = 0; d < D; ++d) t(b, h, n, d) = 1000.0 * b + 100.0 * h + 10.0 * n + d;
  const softfree::ConstView4<double> cv(t.data(), t.dimensions());
  const softfree::View4<double> mv(t.data(), t.dimensions());
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h) {
      const auto c = softfree::head(cv, b, h);
      const auto m = softfree::head(mv, b, h);
      ASSERT_EQ(c.rows(), N);
      ASSERT_EQ(c.cols(), D);
      ASSERT_EQ(m.rows(), N);
      ASSERT_EQ(m.cols(), D);
      for (Index n = 0; n < N; ++n)
        for (Index d = 0; d < D; ++d) {
          EXPECT_EQ(c(n, d), 1000.0 * b + 100.0 * h + 10.0 * n + d);
          EXPECT_EQ(&m(n, d), &t(b, h, n, d));  // a view, not a copy
        }
    }
  softfree::head(mv, 1, 2)(4, 3) = -1.0;  // writes go to the tensor
  EXPECT_EQ(t(1, 2, 4, 3), -1.0);
}

TEST(Tensor, Shape4) {
  const Tensor4<float> t(2, 3, 4, 5);
  const Shape4 s = softfree::shape_of(t);
  EXPECT_EQ(s, (Shape4{2, 3, 4, 5}));
  EXPECT_NE(s, (Shape4{2, 3, 5, 4}));
  EXPECT_EQ(s.size(), 120);
  std::ostringstream os;
  os << s;
  EXPECT_EQ(os.str(), "[2, 3, 4, 5]");
}

TEST(Errors, InvalidArgumentIsStdInvalidArgument) {
  static_assert(std::is_base_of<std::invalid_argument, softfree::invalid_argument>::value, "");
  try {
    softfree::detail::fail("Where", "x = ", 3, ", shape ", Shape4{1, 2, 3, 4});
    ADD_FAILURE() << "fail() returned";
  } catch (const std::invalid_argument& e) {  // caught through the standard base
    EXPECT_STREQ(e.what(), "softfree::Where: x = 3, shape [1, 2, 3, 4]");
    EXPECT_NE(dynamic_cast<const softfree::invalid_argument*>(&e), nullptr);
  }
}

TEST(Errors, OptionChecks) {
  EXPECT_TRUE(throws_naming([] { softfree::detail::check_positive_finite("M", "alpha", 0.0); }, {"M", "alpha = 0"}));
  EXPECT_NO_THROW(softfree::detail::check_positive_finite("M", "alpha", 1e-300));
  EXPECT_TRUE(throws_naming([] { softfree::detail::check_nonnegative_finite("M", "eps", -1e-9); }, {"eps = -1e-09"}));
  EXPECT_TRUE(throws_naming([] { softfree::detail::check_nonnegative_finite("M", "eps", NAN); }, {"eps = nan"}));
  EXPECT_NO_THROW(softfree::detail::check_nonnegative_finite("M", "eps", 0.0));
}

// Shapes whose element count overflows Index (views over a small buffer declared huge) are
// rejected by every method before anything is read: Shape4::size() would wrap around.
TEST(Errors, ShapesWhoseSizeOverflowsAreRejected) {
  std::vector<float> buf(64, 1.0f);
  const Index big = Index(1) << 32, half = Index(1) << 31;
  const Shape4 shapes[] = {{big, big, 1, 1}, {half, 4, half, 1}, {1, 1, Index(1) << 61, 2}};
  const softfree::ConstView4<float> small(buf.data(), 1, 1, 4, 16);
  for (const std::string& name : softfree::attention_names()) {
    const softfree::AnyAttention<float> f = softfree::make_attention<float>(name);
    for (const Shape4& s : shapes) {
      SCOPED_TRACE(::testing::Message() << name << " " << s);
      const softfree::ConstView4<float> huge(buf.data(), s.B, s.H, s.N, s.D);
      EXPECT_TRUE(throws_naming([&] { f(huge, huge, huge); }, {"q has shape", "overflows the index type"}));
      EXPECT_TRUE(throws_naming([&] { f(small, small, huge); }, {"v has shape", "overflows"}));
    }
  }
}

}  // namespace
