// The client shared-memory regions a server has registered (sageserve.v1.SharedMemoryService), and
// the lookup that turns a request's (region, offset, byte_size) into bytes an engine can use.
//
// System regions are mapped once at registration and, with the CUDA backend, page-locked so
// launches DMA straight from and into them. CUDA regions are opened once from their IPC handle.
// A request holds a reference to each region it names: unregistering a region stops new requests
// from naming it, and the mapping goes away when the last request using it is answered.
//
// Regions belong to the identity that registered them (core/access_control.h): names are per owner,
// and another identity is told NOT_FOUND, as if the region did not exist. A caller that sees all
// (the admin scope) lists, unregisters and names every owner's regions.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "server/backend/memory_kind.h"
#include "server/backend/backend.h"

namespace sage::server {

class SystemMapping;

enum class SharedMemoryKind { kSystem, kCuda };

// Whether clients may register memory: they can make the server map any shared-memory object its
// user may open, so it is off unless the operator turns it on.
enum class SharedMemoryPolicy { kRefuse, kAllow };

// The POSIX shm names a server opens by default: the client library's (SystemSharedMemory::UniqueKey)
// start with it; objects of other software on the host (e.g. "/psm_...", "/PostgreSQL...") do not.
inline constexpr std::string_view kDefaultShmKeyPrefix = "/sage";

struct SharedMemoryOptions {
  SharedMemoryPolicy policy = SharedMemoryPolicy::kRefuse;
  int max_regions = 256;
  // System regions: only keys starting with this are opened (PERMISSION_DENIED otherwise); empty
  // opens any object the server's user can open.
  std::string key_prefix = std::string(kDefaultShmKeyPrefix);
};

// Who asks. Without access control every caller is the same anonymous identity, with sees_all.
struct RegionCaller {
  std::string identity;
  bool sees_all = false;  // admin: every identity's regions
};

struct SharedMemoryRegionInfo {
  std::string name;
  std::string owner;  // the identity that registered it
  SharedMemoryKind kind = SharedMemoryKind::kSystem;
  std::string key;      // system
  uint64_t offset = 0;  // system
  int device = -1;      // CUDA
  uint64_t byte_size = 0;
  MemoryKind memory = MemoryKind::kPageable;  // kPinned once the engine page-locked it; kDevice for CUDA
  int64_t requests = 0;
};

// One registered region. Immutable but for its request counter; destroyed when unregistered and
// no request holds it.
class SharedMemoryRegion {
 public:
  ~SharedMemoryRegion();
  const SharedMemoryRegionInfo& info() const { return info_; }
  std::byte* data() const { return data_; }
  MemoryKind memory() const { return info_.memory; }
  int device() const { return info_.device; }
  // Counts one accepted request that names the region (however many of its tensors do).
  void CountRequest() const { requests_.fetch_add(1, std::memory_order_relaxed); }
  // Copies `src` (a range of this region) into server memory `dst` of the same size, done on
  // return: system memory with the fault-tolerant copy (safe_copy.h: FAILED_PRECONDITION naming
  // `field` when the client shrank its object), CUDA memory with a device-to-host copy by the
  // engine that opened it (INTERNAL naming `field` when it fails).
  absl::Status CopyOut(std::span<const std::byte> src, std::span<std::byte> dst, absl::string_view field) const;

 private:
  friend class SharedMemoryRegistry;
  SharedMemoryRegion() = default;

  SharedMemoryRegionInfo info_;
  std::byte* data_ = nullptr;
  std::unique_ptr<SystemMapping> mapping_;  // system
  std::unique_ptr<EngineMemory> engine_;    // the engine's pin or IPC mapping; released before unmapping
  mutable std::atomic<int64_t> requests_{0};
};

// A byte range of a region, resolved for one request; `region` keeps it mapped.
struct SharedRange {
  std::shared_ptr<const SharedMemoryRegion> region;
  std::span<std::byte> bytes;
  MemoryKind memory() const { return region->memory(); }
};

class SharedMemoryRegistry {
 public:
  // `backend` pins host regions and opens CUDA ones; it must outlive the registry.
  SharedMemoryRegistry(const SharedMemoryOptions& options, AttentionBackend* backend);
  ~SharedMemoryRegistry();

  bool allowed() const { return options_.policy == SharedMemoryPolicy::kAllow; }
  // FAILED_PRECONDITION naming the flag that turns shared memory on, unless allowed().
  absl::Status CheckAllowed() const;

  // A region owned by `caller.identity`. FAILED_PRECONDITION when not allowed; ALREADY_EXISTS for
  // a name the caller already uses; RESOURCE_EXHAUSTED at max_regions (all owners together);
  // PERMISSION_DENIED for a system key outside options.key_prefix or one another identity has
  // registered; otherwise SystemMapping::Map's and the backend's errors.
  absl::Status RegisterSystem(const RegionCaller& caller, const std::string& name, const std::string& key,
                              uint64_t offset, uint64_t byte_size);
  absl::Status RegisterCuda(const RegionCaller& caller, const std::string& name, std::span<const std::byte> raw_handle,
                            int device, uint64_t byte_size);
  // The names unregistered. An empty name: every region of the caller (of everyone, for sees_all).
  // A name: the caller's region of that name; for sees_all without one of its own, every owner's
  // region of that name. NOT_FOUND when there is none the caller may see.
  absl::StatusOr<std::vector<std::string>> Unregister(const RegionCaller& caller, const std::string& name);
  // The regions Unregister would remove, in name order (then owner), with their counters.
  absl::StatusOr<std::vector<SharedMemoryRegionInfo>> Status(const RegionCaller& caller,
                                                             const std::string& name) const;
  int size() const;

  // The `byte_size` bytes at `offset` of region `region` (the caller's own; for sees_all without
  // one of its own, the first owner's of that name), for the request field `field` (named in
  // errors, e.g. "q.shared_memory"). FAILED_PRECONDITION when not allowed, NOT_FOUND for a region
  // the caller may not see, INVALID_ARGUMENT for a range outside it or a size other than
  // `expected_bytes`.
  absl::StatusOr<SharedRange> Resolve(const RegionCaller& caller, const std::string& field, const std::string& region,
                                      uint64_t offset, uint64_t byte_size, size_t expected_bytes) const;

 private:
  // (name, owner): a name's regions sit together, in owner order.
  using Key = std::pair<std::string, std::string>;
  using Map = std::map<Key, std::shared_ptr<SharedMemoryRegion>>;

  absl::Status CheckNewName(const Key& key) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Allowed, a valid name, not taken, room for one more: checked before the (slow) mapping work;
  // Insert checks the name and count again under the lock.
  absl::Status CheckRegistrable(const RegionCaller& caller, const std::string& name) const;
  absl::Status Insert(std::shared_ptr<SharedMemoryRegion> region);
  // A system key this caller may open: under options_.key_prefix, not another identity's.
  absl::Status CheckKey(const RegionCaller& caller, const std::string& key) const;
  // The regions `caller` addresses with `name` (see Unregister), in map order.
  std::vector<Map::const_iterator> Matching(const RegionCaller& caller, const std::string& name) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SharedMemoryOptions options_;
  AttentionBackend* const backend_;
  mutable absl::Mutex mu_;
  Map regions_ ABSL_GUARDED_BY(mu_);
};

}  // namespace sage::server
