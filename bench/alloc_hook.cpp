// The suite's allocation counter: replaces the global operator new and delete (every form), so
// it sees what the library allocates -- its workspaces are std::vectors whose AlignedAllocator
// calls the aligned ::operator new (core/kernels/packet.hpp). Eigen's own aligned_malloc (the
// tensors the bench allocates, an allocating call's output) and oneDNN's scratchpads go through
// malloc and are not seen.
//
// Each block carries a header in front of it with its size and whether it was allocated inside a
// probe, so a delete subtracts exactly what its new added, and only then: blocks from before a
// probe (the bench's buffers, a functor's earlier caches) freed inside it do not hide what the
// call itself holds. Counts are atomics: two-thread rows allocate on pool threads too.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

#include "harness.hpp"

namespace {

std::atomic<bool> g_on{false};
std::atomic<std::int64_t> g_now{0}, g_peak{0};

struct Header {
  std::size_t size;
  bool counted;
};

// The header sits just before the user's pointer; the block starts `pad` bytes before it, pad a
// multiple of the alignment and at least the header's size.
std::size_t pad_for(std::size_t align) {
  std::size_t pad = align;
  while (pad < sizeof(Header)) pad += align;
  return pad;
}

void* allocate(std::size_t size, std::size_t align) {
  if (align < __STDCPP_DEFAULT_NEW_ALIGNMENT__) align = __STDCPP_DEFAULT_NEW_ALIGNMENT__;
  const std::size_t pad = pad_for(align), total = (pad + size + align - 1) / align * align;
  void* base = align <= alignof(std::max_align_t) ? std::malloc(total) : std::aligned_alloc(align, total);
  if (!base) return nullptr;
  char* user = static_cast<char*>(base) + pad;
  Header* h = reinterpret_cast<Header*>(user) - 1;
  h->size = size;
  h->counted = g_on.load(std::memory_order_relaxed);
  if (h->counted) {
    const std::int64_t now = g_now.fetch_add(static_cast<std::int64_t>(size)) + static_cast<std::int64_t>(size);
    std::int64_t peak = g_peak.load();
    while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
    }
  }
  return user;
}

void release(void* p, std::size_t align) noexcept {
  if (!p) return;
  if (align < __STDCPP_DEFAULT_NEW_ALIGNMENT__) align = __STDCPP_DEFAULT_NEW_ALIGNMENT__;
  const Header* h = static_cast<const Header*>(p) - 1;
  if (h->counted) g_now.fetch_sub(static_cast<std::int64_t>(h->size));
  std::free(static_cast<char*>(p) - pad_for(align));
}

void* allocate_or_throw(std::size_t size, std::size_t align) {
  for (;;) {
    if (void* p = allocate(size, align)) return p;
    std::new_handler handler = std::get_new_handler();
    if (!handler) throw std::bad_alloc();
    handler();
  }
}

constexpr std::size_t kDefault = __STDCPP_DEFAULT_NEW_ALIGNMENT__;

}  // namespace

namespace softfree_bench {

AllocationProbe::AllocationProbe() {
  g_now.store(0);
  g_peak.store(0);
  g_on.store(true);
}

AllocationProbe::~AllocationProbe() { g_on.store(false); }

double AllocationProbe::peak_bytes() const { return static_cast<double>(g_peak.load()); }

}  // namespace softfree_bench

void* operator new(std::size_t n) { return allocate_or_throw(n, kDefault); }
void* operator new[](std::size_t n) { return allocate_or_throw(n, kDefault); }
void* operator new(std::size_t n, std::align_val_t a) { return allocate_or_throw(n, static_cast<std::size_t>(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return allocate_or_throw(n, static_cast<std::size_t>(a)); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept { return allocate(n, kDefault); }
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept { return allocate(n, kDefault); }
void* operator new(std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return allocate(n, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a, const std::nothrow_t&) noexcept {
  return allocate(n, static_cast<std::size_t>(a));
}

void operator delete(void* p) noexcept { release(p, kDefault); }
void operator delete[](void* p) noexcept { release(p, kDefault); }
void operator delete(void* p, std::size_t) noexcept { release(p, kDefault); }
void operator delete[](void* p, std::size_t) noexcept { release(p, kDefault); }
void operator delete(void* p, std::align_val_t a) noexcept { release(p, static_cast<std::size_t>(a)); }
void operator delete[](void* p, std::align_val_t a) noexcept { release(p, static_cast<std::size_t>(a)); }
void operator delete(void* p, std::size_t, std::align_val_t a) noexcept { release(p, static_cast<std::size_t>(a)); }
void operator delete[](void* p, std::size_t, std::align_val_t a) noexcept { release(p, static_cast<std::size_t>(a)); }
void operator delete(void* p, const std::nothrow_t&) noexcept { release(p, kDefault); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { release(p, kDefault); }
void operator delete(void* p, std::align_val_t a, const std::nothrow_t&) noexcept {
  release(p, static_cast<std::size_t>(a));
}
void operator delete[](void* p, std::align_val_t a, const std::nothrow_t&) noexcept {
  release(p, static_cast<std::size_t>(a));
}
