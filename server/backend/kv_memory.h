// The memory a KV page pool lives in (server-resident sessions): host memory for the CPU engine,
// one device allocation per GPU for the CUDA backend, made once at start. The session store keeps
// the page tables and encodes tokens on the host; it moves bytes in and out only through this
// interface, so engines can read the pages where they are (kernels/reference/kv_pages.h is the
// layout). Thread-safe: calls on disjoint byte ranges may run concurrently.
#pragma once

#include <cstddef>
#include <memory>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/reference/kv_pages.h"
#include "server/backend/memory_kind.h"

namespace sage::server {

// One byte range of a write into the pool: `bytes` from `src` to pool offset `offset`. `src` is
// host memory, or (kDevice) memory of a device pool's own GPU, e.g. a client's CUDA buffer, which
// the GPU copies without the host touching it.
struct KvWrite {
  size_t offset = 0;
  const void* src = nullptr;
  size_t bytes = 0;
  MemoryKind src_memory = MemoryKind::kPageable;
};

// One token of an append, for memory that encodes it where the pages are (EncodeKvTokens on the
// host for host memory, sage_kv_quantize on a GPU): its page's offset in the pool, its slot in the
// page, its K and V (16-bit values of the layout's dtype, heads x head_dim each; host memory, or
// with kv_memory kDevice memory of a device pool's own GPU) and, for storages with a K mean
// (HasKMean), its session's mean (fp32, heads x head_dim, host memory), on which K is centred
// (CenterKTokens); null otherwise. The pointers need only live until the call returns.
struct KvTokenWrite {
  size_t page_offset = 0;
  int slot = 0;
  const void* k = nullptr;
  const void* v = nullptr;
  const float* k_mean = nullptr;
  MemoryKind kv_memory = MemoryKind::kPageable;
};

class KvMemory {
 public:
  virtual ~KvMemory() = default;
  // The pool's first byte: a host address (kPageable) or a device address on `device()` (kDevice).
  virtual std::byte* base() const = 0;
  virtual size_t bytes() const = 0;
  virtual MemoryKind memory() const = 0;
  virtual int device() const = 0;  // CUDA ordinal, -1 for host memory
  // Copies every range; the sources may be reused on return. A device pool may return before a
  // small write has landed: writes are ordered before every later Write, Read and Copy, and before
  // work an engine queues on a stream after OrderAfterWrites.
  virtual absl::Status Write(std::span<const KvWrite> writes) = 0;
  // Encodes `tokens` (all of `layout`) into their pages: the bytes EncodeKvTokens writes. Ordered
  // as Write is.
  virtual absl::Status WriteTokens(const KvPageLayout& layout, std::span<const KvTokenWrite> tokens) = 0;
  // Makes what is queued next on `stream` (a device pool: the engine's cudaStream_t) run after
  // every write issued before this call. Host pools write synchronously: nothing to do.
  virtual absl::Status OrderAfterWrites(void* stream) const = 0;
  // Returns once every write issued before this call has landed (and has read its sources: a
  // client's buffer may then be reused). Host pools: at once.
  virtual absl::Status WaitForWrites() const = 0;
  // `bytes` from pool offset `offset` into host `dst`.
  virtual absl::Status Read(size_t offset, void* dst, size_t bytes) const = 0;
  // Copies `bytes` within the pool (a copy-on-write page); done on return.
  virtual absl::Status Copy(size_t dst_offset, size_t src_offset, size_t bytes) = 0;
};

// WriteTokens's bytes for memory the host writes: each token encoded into its page at `base` +
// page_offset (EncodeKvTokens).
absl::Status EncodeOnHost(const KvPageLayout& layout, std::byte* base, std::span<const KvTokenWrite> tokens);

// `bytes` of ordinary host memory. RESOURCE_EXHAUSTED when it cannot be had.
absl::StatusOr<std::unique_ptr<KvMemory>> CreateHostKvMemory(size_t bytes);

}  // namespace sage::server
