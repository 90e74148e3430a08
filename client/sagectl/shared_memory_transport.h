// `--shared_memory=system|cuda` for `attend` and `bench`: one registered region holding `slots`
// private copies of a problem's q, k, v plus output ranges for O (and LSE), so that `slots`
// requests can be in flight at once without sharing an output. Requests then carry only
// metadata and references; the server reads inputs from and writes outputs into the region.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/sagectl/args.h"
#include "client/sagectl/problem.h"
#include "client/sagectl/region_buffer.h"
#include "sageserve/client/client.h"

namespace sagectl {

enum class SharedMemoryMode { kNone, kSystem, kCuda };

struct SharedMemoryOptions {
  SharedMemoryMode mode = SharedMemoryMode::kNone;
  int cuda_device = 0;  // kCuda: the ordinal here and, as registered, on the server (same host).
};

// Flags read by SharedMemoryOptionsFromArgs (for CheckFlags).
std::vector<std::string> SharedMemoryFlags();
// --shared_memory=none|system|cuda, --cuda_device=N.
absl::StatusOr<SharedMemoryOptions> SharedMemoryOptionsFromArgs(const Args& args);
const char* SharedMemoryModeName(SharedMemoryMode mode);

class SharedMemoryTransport {
 public:
  // Allocates, fills every slot's inputs with the problem's bytes, and registers the region under
  // a unique name. `client` must outlive the transport. `options.mode` must not be kNone.
  static absl::StatusOr<std::unique_ptr<SharedMemoryTransport>> Create(const sageserve::Client& client,
                                                                       const SharedMemoryOptions& options,
                                                                       const HostProblem& problem, int slots);
  // Unregisters if Unregister() was not called (a failure goes to stderr), then frees the memory.
  ~SharedMemoryTransport();
  SharedMemoryTransport(const SharedMemoryTransport&) = delete;
  SharedMemoryTransport& operator=(const SharedMemoryTransport&) = delete;

  absl::Status Unregister();

  // The problem's request for `slot`: tensors by reference (no data), O/LSE into the slot's ranges.
  const sageserve::v1::AttendRequest& Request(int slot) const { return requests_[slot]; }

  // `response` (to Request(slot)) as the bytes path would have returned it: after checking that
  // o/lse carry the slot's references and no data, their bytes are read from the region.
  absl::StatusOr<sageserve::v1::AttendResponse> Resolve(int slot, const sageserve::v1::AttendResponse& response) const;
  // Resolve(), then O (and LSE) must equal `expected`'s (a bytes-path answer) bit for bit.
  absl::Status Verify(int slot, const sageserve::v1::AttendResponse& response,
                      const sageserve::v1::AttendResponse& expected) const;
  // Overwrites every output range with 0xFF bytes, so that verifying the next answer proves the
  // server wrote it (rather than an earlier request).
  absl::Status PoisonOutputs();

  // "system shared memory /sage-bench-1-0, region sage-bench-1-0, 16.8 MB, 4 slots"
  std::string Describe() const;

 private:
  struct Slot {
    uint64_t q = 0, k = 0, v = 0, o = 0, lse = 0;  // offsets in the region
  };

  SharedMemoryTransport(const sageserve::Client& client, std::unique_ptr<RegionBuffer> buffer, std::string name)
      : client_(client), buffer_(std::move(buffer)), name_(std::move(name)) {}
  // The bytes of an output the server wrote to `asked`, after checking `answered` names that range.
  absl::StatusOr<std::string> ReadOutput(const sageserve::v1::Tensor& answered,
                                         const sageserve::v1::SharedMemoryRef& asked, const char* what) const;

  const sageserve::Client& client_;
  std::unique_ptr<RegionBuffer> buffer_;
  std::string name_;
  bool registered_ = false;
  uint64_t o_bytes_ = 0, lse_bytes_ = 0;
  std::vector<Slot> slots_;
  std::vector<sageserve::v1::AttendRequest> requests_;
};

}  // namespace sagectl
