// Client-side shared memory for sageserve.v1.SharedMemoryService: a POSIX shared-memory object
// this process creates and owns, and references to byte ranges of registered regions. Tensors in
// shared memory do not cross gRPC; client and server must run on the same host.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/statusor.h"
#include "sageserve/v1/tensor.pb.h"

namespace sageserve {

// Owns a POSIX shared-memory object: created (never opened: the key must be new), sized, mapped
// read/write. The destructor unmaps and unlinks it. Unregister the region from the server first:
// the server's mapping outlives the name and holds the memory until the region is unregistered.
class SystemSharedMemory {
 public:
  // shm_open(key, O_CREAT | O_EXCL | O_RDWR, 0600), ftruncate to `bytes`, mmap MAP_SHARED. The
  // bytes start zeroed. INVALID_ARGUMENT for 0 bytes or a key that is not "/name" (one leading
  // '/', no other); ALREADY_EXISTS when the key is taken; otherwise the errno's code and text.
  static absl::StatusOr<std::unique_ptr<SystemSharedMemory>> Create(std::string key, size_t bytes);

  // "/sage-<prefix>-<pid>-<nonce>-<counter>": the pid keeps processes apart, the counter keeps this
  // process's objects apart, and the nonce (64 random bits per process) keeps the name unguessable
  // to other clients of the server. '/' in `prefix` becomes '_' so the key stays valid. Servers
  // open only keys under their --shared_memory_key_prefix, "/sage" by default.
  static std::string UniqueKey(std::string_view prefix);

  ~SystemSharedMemory();
  SystemSharedMemory(const SystemSharedMemory&) = delete;
  SystemSharedMemory& operator=(const SystemSharedMemory&) = delete;

  std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& key() const { return key_; }

 private:
  SystemSharedMemory(std::string key, std::byte* data, size_t size)
      : key_(std::move(key)), data_(data), size_(size) {}

  std::string key_;
  std::byte* data_;
  size_t size_;
};

// Bytes [offset, offset + byte_size) of the registered region `region`, for Tensor.shared_memory
// and AttendRequest.o_output / lse_output.
v1::SharedMemoryRef SharedMemoryRange(std::string region, uint64_t offset, uint64_t byte_size);

}  // namespace sageserve
