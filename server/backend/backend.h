// The interface between the request path (gRPC layer, scheduler) and an attention engine.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "server/backend/engine_io.h"
#include "server/backend/kv_memory.h"
#include "kernels/reference/recipe.h"

namespace sage::server {

class HostBufferPool;

enum class BackendKind { kCpu, kCuda };

// How a worker waits for its launch to finish on the GPU (the CUDA context's scheduling flag).
enum class CudaSync {
  kAuto,   // CUDA's heuristic: spin while the process has fewer contexts than cores (it does)
  kSpin,   // busy-wait: the lowest wake-up latency, a core per waiting worker
  kYield,  // busy-wait that yields the core between polls: other threads run, slightly later wake-up
  kBlock,  // sleep on an OS primitive: no CPU while waiting, a thread wake-up per launch
};

struct DeviceDescription {
  std::string name;            // "cpu (16 threads)", "NVIDIA H100 80GB HBM3"
  std::string architecture;    // "x86_64", "sm_90"
  int64_t memory_bytes = 0;    // device memory (0 for the CPU backend)
};

// Whether a backend can read a merged launch's tensors straight from its members' memory
// (AttendGathered), so the batcher need not concatenate them into one buffer first.
enum class InputGather { kContiguousOnly, kSegments };

struct BackendInfo {
  BackendKind kind = BackendKind::kCpu;
  std::vector<DeviceDescription> devices;
  std::vector<int> head_dims;         // supported head dims
  std::vector<KvStorage> kv_storages;  // session KV storages whose pages it reads (others are refused at creation)
  std::vector<Recipe> recipes;        // recipes this backend runs
  Recipe default_recipe = Recipe::kInt8QkFp8Pv;  // what runs when a request names none
  InputGather input_gather = InputGather::kContiguousOnly;  // kSegments: AttendGathered is implemented
};

// Live counters of one device of a backend (the CUDA backend reports one per GPU executor), for the
// metrics layer. Counters are cumulative since start; gauges are the value at the call.
struct DeviceStats {
  int device = -1;                 // CUDA ordinal
  std::string name;                // "NVIDIA H100 80GB HBM3"
  bool healthy = true;             // false after a sticky CUDA error; the dispatcher skips it
  int64_t batches = 0;             // launches completed (ok or failed)
  int64_t failed_batches = 0;
  int64_t tokens = 0;              // Σ total_q over completed launches
  int64_t in_flight = 0;           // gauge: launches holding or waiting for a stream slot
  int64_t queued_work = 0;         // gauge: Σ q_len·k_len of those launches
  int streams = 0;                 // stream slots, full-size and light
  int light_streams = 0;           // of which light (small launches only)
  int64_t pool_bytes = 0;          // device bytes preallocated for the buffer pool
  int64_t pinned_bytes = 0;        // pinned host staging bytes
  int64_t memory_used_bytes = 0;   // gauge: device memory in use (cudaMemGetInfo, all processes)
  int64_t memory_total_bytes = 0;
};

// A client's memory (shared memory the server mapped) made usable by an engine: host memory page-locked
// for direct DMA, or a CUDA IPC allocation opened in this process. Destroying it undoes that
// (cudaHostUnregister, cudaIpcCloseMemHandle); its owner keeps it alive while any launch may touch the
// memory.
class EngineMemory {
 public:
  virtual ~EngineMemory() = default;
  // Copies `src` (inside this memory) into host `dst`, done on return. Device memory (a CUDA IPC
  // mapping) implements it, for the server's host-side reads of a client's CUDA memory (session
  // steps' K and V); host memory is read by the caller itself, so the default is UNIMPLEMENTED.
  virtual absl::Status CopyToHost(std::span<std::byte> dst, const std::byte* src) const {
    (void)dst;
    (void)src;
    return absl::UnimplementedError("this memory is read in place, not by device copies");
  }
};

// A client's CUDA allocation opened by the engine (AttentionBackend::OpenCudaIpcMemory).
struct DeviceMapping {
  std::unique_ptr<EngineMemory> handle;
  std::byte* data = nullptr;  // the allocation's start, in this process's address space
};

// An engine the server can hand requests to. Attend() is blocking and thread-safe; it is called
// from the server's worker threads, never from a gRPC reactor callback.
class AttentionBackend {
 public:
  virtual ~AttentionBackend() = default;
  virtual const BackendInfo& info() const = 0;
  virtual absl::StatusOr<EngineOutput> Attend(const EngineInput& in, const RecipeConfig& config) = 0;
  // One launch over several problems without concatenating them first. `merged` describes the launch
  // (shapes over all members, chained cu_seqlens, mask, scale, LSE and output form, as AssembleBatch
  // builds it with AssembleMode::kMetadataOnly): its q/k/v data pointers are null. `members` are the
  // (validated) problems whose q/k/v rows, in this order, make up the merged tensors. The result is
  // the merged one, as Attend(merged with the bytes concatenated) would return it. Only called when
  // info().input_gather is kSegments; the default answers UNIMPLEMENTED.
  virtual absl::StatusOr<EngineOutput> AttendGathered(const EngineInput& merged,
                                                    std::span<const EngineInput* const> members,
                                                    const RecipeConfig& config);
  // Per-device counters; empty for engines without devices (the CPU engine). Thread-safe.
  virtual std::vector<DeviceStats> DeviceStatsSnapshot() const { return {}; }
  // Host memory the engine copies from and to fastest (the CUDA backend's pinned pool), where the
  // gRPC layer puts request payloads and results; null: ordinary heap blocks. Thread-safe; owned
  // by the backend.
  virtual HostBufferPool* host_buffers() { return nullptr; }

  // Prepares `bytes` of host memory at `data` (a client's shared memory, mapped by the server) for
  // the fastest copies: the CUDA backend pins it (cudaHostRegister) so launches DMA straight from
  // and to it. Null: nothing to do (the CPU engine reads any memory). The memory must stay mapped
  // until the result is destroyed.
  virtual absl::StatusOr<std::unique_ptr<EngineMemory>> PinHostMemory(std::byte* data, size_t bytes) {
    (void)data;
    (void)bytes;
    return std::unique_ptr<EngineMemory>();
  }
  // The memory of the KV page pools (server-resident sessions), one per device the engine runs on,
  // allocated now: `bytes` each, or with `fraction` > 0 that fraction of each GPU's free memory.
  // Engines read sessions' pages in place from it (EngineInput::paged). Default: one pool of host
  // memory (the CPU engine).
  virtual absl::StatusOr<std::vector<std::unique_ptr<KvMemory>>> CreateKvMemory(size_t bytes, double fraction) {
    (void)fraction;
    absl::StatusOr<std::unique_ptr<KvMemory>> host = CreateHostKvMemory(bytes);
    if (!host.ok()) return host.status();
    std::vector<std::unique_ptr<KvMemory>> out;
    out.push_back(*std::move(host));
    return out;
  }
  // Opens a client's device allocation from its cudaIpcMemHandle_t bytes, on CUDA ordinal `device`,
  // checking that it holds at least `bytes`. UNIMPLEMENTED on engines without a GPU.
  virtual absl::StatusOr<DeviceMapping> OpenCudaIpcMemory(std::span<const std::byte> handle, int device,
                                                          size_t bytes) {
    (void)handle;
    (void)device;
    (void)bytes;
    return absl::UnimplementedError("CUDA shared memory needs the cuda backend; this server runs the cpu engine");
  }
};

inline absl::StatusOr<EngineOutput> AttentionBackend::AttendGathered(const EngineInput& merged,
                                                                  std::span<const EngineInput* const> members,
                                                                  const RecipeConfig& config) {
  (void)merged;
  (void)members;
  (void)config;
  return absl::UnimplementedError("this backend does not gather inputs (BackendInfo::input_gather)");
}

}  // namespace sage::server
