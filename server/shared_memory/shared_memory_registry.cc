#include "server/shared_memory/shared_memory_registry.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/shared_memory/safe_copy.h"
#include "server/shared_memory/system_mapping.h"
#include "server/util/log_field.h"
#include "server/util/status_details.h"
#include "spdlog/spdlog.h"

namespace sage::server {
namespace {

constexpr size_t kMaxNameBytes = 256;
constexpr size_t kMaxKeyInMessage = 96;  // a key quoted in an error (escaped, truncated)
constexpr absl::string_view kRegionResource = "sageserve.v1.SharedMemoryRegion";

absl::Status RegionNotFound(const std::string& name) {
  return WithResource(absl::NotFoundError(absl::StrCat("region '", name, "' is not registered")), kRegionResource,
                      name);
}

absl::Status CheckName(const std::string& name) {
  if (name.empty()) return absl::InvalidArgumentError("name: must not be empty");
  if (name.size() > kMaxNameBytes) {
    return absl::InvalidArgumentError(absl::StrCat("name: ", name.size(), " bytes, at most ", kMaxNameBytes));
  }
  return absl::OkStatus();
}

}  // namespace

SharedMemoryRegion::~SharedMemoryRegion() {
  engine_.reset();  // unpin / close the IPC mapping while the memory is still mapped
  mapping_.reset();
}

absl::Status SharedMemoryRegion::CopyOut(std::span<const std::byte> src, std::span<std::byte> dst,
                                         absl::string_view field) const {
  if (info_.kind == SharedMemoryKind::kSystem) return CopyFromClient(dst, src, field, info_.name);
  if (engine_ == nullptr) return absl::InternalError(absl::StrCat(field, ": CUDA region '", info_.name, "' is not open"));
  absl::Status s = engine_->CopyToHost(dst, src.data());
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat(field, ": region '", info_.name, "': ", s.message()));
  return absl::OkStatus();
}

SharedMemoryRegistry::SharedMemoryRegistry(const SharedMemoryOptions& options, AttentionBackend* backend)
    : options_(options), backend_(backend) {}

SharedMemoryRegistry::~SharedMemoryRegistry() = default;

absl::Status SharedMemoryRegistry::CheckAllowed() const {
  if (allowed()) return absl::OkStatus();
  return absl::FailedPreconditionError(
      "shared memory is turned off on this server (start it with --allow_shared_memory)");
}

absl::Status SharedMemoryRegistry::CheckNewName(const Key& key) const {
  if (regions_.count(key) != 0) {
    return WithResource(absl::AlreadyExistsError(absl::StrCat("region '", key.first, "' is already registered")),
                        kRegionResource, key.first);
  }
  if (static_cast<int>(regions_.size()) >= options_.max_regions) {
    return absl::ResourceExhaustedError(absl::StrCat("already ", regions_.size(),
                                                     " regions registered, the server's limit; unregister some first"));
  }
  return absl::OkStatus();
}

absl::Status SharedMemoryRegistry::CheckRegistrable(const RegionCaller& caller, const std::string& name) const {
  if (absl::Status s = CheckAllowed(); !s.ok()) return s;
  if (absl::Status s = CheckName(name); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  return CheckNewName(Key{name, caller.identity});
}

absl::Status SharedMemoryRegistry::Insert(std::shared_ptr<SharedMemoryRegion> region) {
  absl::MutexLock lock(&mu_);
  const SharedMemoryRegionInfo& i = region->info_;
  // Checked again: another registration of the name may have won while this one was mapping.
  if (absl::Status s = CheckNewName(Key{i.name, i.owner}); !s.ok()) return s;
  spdlog::info("shared memory: registered '{}' for '{}' ({}, {} bytes{})", LogField(i.name), LogField(i.owner),
               i.kind == SharedMemoryKind::kSystem ? absl::StrCat("system ", LogField(i.key), " @", i.offset)
                                                   : absl::StrCat("cuda device ", i.device),
               i.byte_size, i.memory == MemoryKind::kPinned ? ", pinned" : "");
  Key key{i.name, i.owner};
  regions_.emplace(std::move(key), std::move(region));
  return absl::OkStatus();
}

std::vector<SharedMemoryRegistry::Map::const_iterator> SharedMemoryRegistry::Matching(const RegionCaller& caller,
                                                                                        const std::string& name) const {
  std::vector<Map::const_iterator> out;
  if (name.empty()) {
    for (auto it = regions_.begin(); it != regions_.end(); ++it) {
      if (caller.sees_all || it->first.second == caller.identity) out.push_back(it);
    }
    return out;
  }
  if (auto own = regions_.find(Key{name, caller.identity}); own != regions_.end()) {
    out.push_back(own);
    return out;
  }
  if (!caller.sees_all) return out;
  for (auto it = regions_.lower_bound(Key{name, ""}); it != regions_.end() && it->first.first == name; ++it) {
    out.push_back(it);
  }
  return out;
}

absl::Status SharedMemoryRegistry::CheckKey(const RegionCaller& caller, const std::string& key) const {
  // A malformed key is left to SystemMapping::Map (INVALID_ARGUMENT, saying what a key looks like).
  const bool well_formed = key.size() > 1 && key[0] == '/' && key.find('/', 1) == std::string::npos;
  if (well_formed && !absl::StartsWith(key, options_.key_prefix)) {
    return absl::PermissionDeniedError(absl::StrCat("key: '", LogField(key, kMaxKeyInMessage), "' does not start with '",
                                                    options_.key_prefix,
                                                    "', the prefix this server opens (--shared_memory_key_prefix)"));
  }
  // One identity may not map an object another has registered (its bytes are that client's).
  absl::MutexLock lock(&mu_);
  for (const auto& [k, region] : regions_) {
    if (region->info_.kind == SharedMemoryKind::kSystem && region->info_.key == key && k.second != caller.identity) {
      return absl::PermissionDeniedError(
          absl::StrCat("key: '", LogField(key, kMaxKeyInMessage), "' is registered by another identity"));
    }
  }
  return absl::OkStatus();
}

absl::Status SharedMemoryRegistry::RegisterSystem(const RegionCaller& caller, const std::string& name,
                                                  const std::string& key, uint64_t offset, uint64_t byte_size) {
  if (absl::Status s = CheckRegistrable(caller, name); !s.ok()) return s;
  if (absl::Status s = CheckKey(caller, key); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<SystemMapping>> mapping = SystemMapping::Map(key, offset, byte_size);
  if (!mapping.ok()) return mapping.status();
  auto region = std::shared_ptr<SharedMemoryRegion>(new SharedMemoryRegion());
  region->info_.name = name;
  region->info_.owner = caller.identity;
  region->info_.kind = SharedMemoryKind::kSystem;
  region->info_.key = key;
  region->info_.offset = offset;
  region->info_.byte_size = byte_size;
  region->data_ = (*mapping)->data();
  region->mapping_ = *std::move(mapping);
  // Requests reach the region only through safe_copy.h; where that copy cannot work (a seccomp
  // filter refusing process_vm_readv), refuse the registration rather than every request later.
  std::byte probe{};
  if (absl::Status s = CopyFromClient({&probe, 1}, {region->data_, 1}, "key", name); !s.ok()) return s;
  if (backend_ != nullptr) {
    absl::StatusOr<std::unique_ptr<EngineMemory>> pinned = backend_->PinHostMemory(region->data_, byte_size);
    if (!pinned.ok()) return pinned.status();
    region->engine_ = *std::move(pinned);
  }
  region->info_.memory = region->engine_ != nullptr ? MemoryKind::kPinned : MemoryKind::kPageable;
  return Insert(std::move(region));
}

absl::Status SharedMemoryRegistry::RegisterCuda(const RegionCaller& caller, const std::string& name,
                                                std::span<const std::byte> raw_handle, int device, uint64_t byte_size) {
  if (byte_size == 0) return absl::InvalidArgumentError("byte_size: must be > 0");
  if (device < 0) return absl::InvalidArgumentError(absl::StrCat("device_id: ", device, " is not a CUDA ordinal"));
  if (absl::Status s = CheckRegistrable(caller, name); !s.ok()) return s;
  if (backend_ == nullptr) return absl::UnimplementedError("CUDA shared memory needs the cuda backend");
  absl::StatusOr<DeviceMapping> opened = backend_->OpenCudaIpcMemory(raw_handle, device, byte_size);
  if (!opened.ok()) return opened.status();
  auto region = std::shared_ptr<SharedMemoryRegion>(new SharedMemoryRegion());
  region->info_.name = name;
  region->info_.owner = caller.identity;
  region->info_.kind = SharedMemoryKind::kCuda;
  region->info_.device = device;
  region->info_.byte_size = byte_size;
  region->info_.memory = MemoryKind::kDevice;
  region->data_ = opened->data;
  region->engine_ = std::move(opened->handle);
  return Insert(std::move(region));
}

absl::StatusOr<std::vector<std::string>> SharedMemoryRegistry::Unregister(const RegionCaller& caller,
                                                                         const std::string& name) {
  // Regions are destroyed outside the lock (unmapping and unpinning can take a while).
  std::vector<std::shared_ptr<SharedMemoryRegion>> removed;
  std::vector<std::string> names;
  std::vector<std::string> owners;
  {
    absl::MutexLock lock(&mu_);
    std::vector<Map::const_iterator> found = Matching(caller, name);
    if (found.empty() && !name.empty()) return RegionNotFound(name);
    for (Map::const_iterator it : found) {
      names.push_back(it->first.first);
      owners.push_back(it->first.second);
      removed.push_back(it->second);
      regions_.erase(it);
    }
  }
  for (size_t i = 0; i < names.size(); ++i) {
    spdlog::info("shared memory: unregistered '{}' of '{}' (by '{}')", LogField(names[i]), LogField(owners[i]),
                 LogField(caller.identity));
  }
  return names;
}

absl::StatusOr<std::vector<SharedMemoryRegionInfo>> SharedMemoryRegistry::Status(const RegionCaller& caller,
                                                                                 const std::string& name) const {
  absl::MutexLock lock(&mu_);
  std::vector<Map::const_iterator> found = Matching(caller, name);
  if (found.empty() && !name.empty()) return RegionNotFound(name);
  std::vector<SharedMemoryRegionInfo> out;
  for (Map::const_iterator it : found) {
    out.push_back(it->second->info_);
    out.back().requests = it->second->requests_.load(std::memory_order_relaxed);
  }
  return out;
}

int SharedMemoryRegistry::size() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(regions_.size());
}

absl::StatusOr<SharedRange> SharedMemoryRegistry::Resolve(const RegionCaller& caller, const std::string& field,
                                                          const std::string& region, uint64_t offset,
                                                          uint64_t byte_size, size_t expected_bytes) const {
  if (absl::Status s = CheckAllowed(); !s.ok()) return s;
  std::shared_ptr<const SharedMemoryRegion> r;
  {
    absl::MutexLock lock(&mu_);
    std::vector<Map::const_iterator> found = region.empty() ? std::vector<Map::const_iterator>{}
                                                            : Matching(caller, region);
    if (found.empty()) {
      return WithResource(absl::NotFoundError(absl::StrCat(field, ".region: '", region, "' is not registered")),
                          kRegionResource, region);
    }
    r = found.front()->second;
  }
  const uint64_t size = r->info_.byte_size;
  if (byte_size != expected_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(field, ".byte_size: ", byte_size, " bytes, expected ",
                                                   expected_bytes, " for the tensor's shape and dtype"));
  }
  if (offset > size || byte_size > size - offset) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": offset ", offset, " + byte_size ", byte_size,
                                                   " runs past the end of region '", region, "' (", size, " bytes)"));
  }
  if (r->mapping_ != nullptr) {
    if (absl::Status s = r->mapping_->CheckStillCovered(); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat(field, ": region '", region, "': ", s.message()));
    }
  }
  SharedRange out;
  out.bytes = std::span<std::byte>(r->data_ + offset, static_cast<size_t>(byte_size));
  out.region = std::move(r);
  return out;
}

}  // namespace sage::server
