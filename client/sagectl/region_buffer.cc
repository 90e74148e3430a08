#include "client/sagectl/region_buffer.h"

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "sageserve/client/shared_memory.h"

namespace sagectl {

absl::Status CheckRange(size_t size, size_t offset, size_t bytes) {
  if (offset > size || bytes > size - offset) {
    return absl::OutOfRangeError(absl::StrCat("bytes [", offset, ", +", bytes, ") outside a buffer of ", size));
  }
  return absl::OkStatus();
}

namespace {

class SystemBuffer final : public RegionBuffer {
 public:
  explicit SystemBuffer(std::unique_ptr<sageserve::SystemSharedMemory> shm) : shm_(std::move(shm)) {}

  size_t size() const override { return shm_->size(); }
  absl::Status Write(size_t offset, const void* src, size_t bytes) override {
    if (absl::Status st = CheckRange(size(), offset, bytes); !st.ok()) return st;
    std::memcpy(shm_->data() + offset, src, bytes);
    return absl::OkStatus();
  }
  absl::Status Read(size_t offset, void* dst, size_t bytes) const override {
    if (absl::Status st = CheckRange(size(), offset, bytes); !st.ok()) return st;
    std::memcpy(dst, shm_->data() + offset, bytes);
    return absl::OkStatus();
  }
  absl::Status Register(const sageserve::Client& client, const std::string& name) const override {
    return client.RegisterSystemSharedMemory(name, shm_->key(), 0, shm_->size());
  }
  std::string Describe() const override { return absl::StrCat("system shared memory ", shm_->key()); }

 private:
  std::unique_ptr<sageserve::SystemSharedMemory> shm_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<RegionBuffer>> MakeSystemBuffer(std::string key, size_t bytes) {
  absl::StatusOr<std::unique_ptr<sageserve::SystemSharedMemory>> shm =
      sageserve::SystemSharedMemory::Create(std::move(key), bytes);
  if (!shm.ok()) return shm.status();
  return std::unique_ptr<RegionBuffer>(new SystemBuffer(std::move(*shm)));
}

}  // namespace sagectl
