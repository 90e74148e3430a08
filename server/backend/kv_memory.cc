#include "server/backend/kv_memory.h"

#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"

namespace sage::server {
namespace {

class HostKvMemory final : public KvMemory {
 public:
  HostKvMemory(std::unique_ptr<std::byte[]> base, size_t bytes) : base_(std::move(base)), bytes_(bytes) {}
  std::byte* base() const override { return base_.get(); }
  size_t bytes() const override { return bytes_; }
  MemoryKind memory() const override { return MemoryKind::kPageable; }
  int device() const override { return -1; }
  absl::Status Write(std::span<const KvWrite> writes) override {
    for (const KvWrite& w : writes) {
      if (w.src_memory == MemoryKind::kDevice) return absl::InternalError("kv pool: a host pool got a write from device memory");
    }
    for (const KvWrite& w : writes) std::memcpy(base_.get() + w.offset, w.src, w.bytes);
    return absl::OkStatus();
  }
  absl::Status WriteTokens(const KvPageLayout& layout, std::span<const KvTokenWrite> tokens) override {
    return EncodeOnHost(layout, base_.get(), tokens);
  }
  absl::Status OrderAfterWrites(void* /*stream*/) const override { return absl::OkStatus(); }
  absl::Status WaitForWrites() const override { return absl::OkStatus(); }
  absl::Status Read(size_t offset, void* dst, size_t bytes) const override {
    std::memcpy(dst, base_.get() + offset, bytes);
    return absl::OkStatus();
  }
  absl::Status Copy(size_t dst_offset, size_t src_offset, size_t bytes) override {
    std::memcpy(base_.get() + dst_offset, base_.get() + src_offset, bytes);
    return absl::OkStatus();
  }

 private:
  const std::unique_ptr<std::byte[]> base_;
  const size_t bytes_;
};

}  // namespace

absl::Status EncodeOnHost(const KvPageLayout& layout, std::byte* base, std::span<const KvTokenWrite> tokens) {
  const size_t row = static_cast<size_t>(layout.heads) * layout.head_dim;
  for (const KvTokenWrite& t : tokens) {
    if (t.kv_memory == MemoryKind::kDevice) return absl::InternalError("kv pool: a host encode got tokens in device memory");
    EncodeKvTokens(layout, base + t.page_offset, t.slot, 1, t.k, t.v,
                   std::span<const float>(t.k_mean, t.k_mean != nullptr ? row : 0));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<KvMemory>> CreateHostKvMemory(size_t bytes) {
  std::unique_ptr<std::byte[]> base(new (std::nothrow) std::byte[bytes]);
  if (base == nullptr) return absl::ResourceExhaustedError(absl::StrCat("kv pool: cannot allocate ", bytes, " bytes of host memory"));
  return std::make_unique<HostKvMemory>(std::move(base), bytes);
}

}  // namespace sage::server
