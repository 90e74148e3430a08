// A session call's new K and V that lie in a client's registered shared memory, copied into one
// call-owned host block before they are appended: the session store reads new tokens on the host
// (16-bit pages are written from host bytes; 8-bit storage centres K and encodes V there), and a
// client's memory is never read in place there. System memory goes through the fault-tolerant copy
// (a client that shrinks its object gets an error, not a crashed server), CUDA memory through a
// device-to-host copy of the engine that opened it. Steps whose K/V the append reads in place on
// the GPU (SessionStepInput::kv_on_device) are left as they are.
#pragma once

#include <cstddef>
#include <memory>
#include <span>

#include "absl/status/statusor.h"
#include "server/core/session_attend.h"

namespace sage::server {

// Ranges of one region at most this far apart are read with one copy, the bytes between them
// included: a decode call's K and V of 64 sessions, back to back, cost one copy, not 128 (a CUDA
// copy costs ~10 us however small; 64 KiB more of it, a few us).
inline constexpr size_t kKvStagingMaxGap = size_t{64} << 10;

// Copies the k / v of `steps` that name shared memory (k_shared / v_shared) into one host block and
// points their k / v at the copies; null when none does. The block must outlive the append. Errors
// name the step's field ("steps[3].v.shared_memory: region 'r' shrank or was unmapped ..."):
// FAILED_PRECONDITION for a system region the client shrank, INTERNAL for a failed device copy.
absl::StatusOr<std::unique_ptr<std::byte[]>> StageSharedKv(std::span<SessionStepInput> steps);

}  // namespace sage::server
