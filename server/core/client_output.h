// O and LSE into a client's registered shared memory (Attend's and AttendSession's o_output /
// lse_output) once an engine has answered: nothing to do when the engine wrote them there itself,
// otherwise fault-tolerant copies into the host mapping (shared_memory/safe_copy.h), because the
// client may shrink its object under the write.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "kernels/reference/attention_problem.h"
#include "kernels/reference/dtype.h"
#include "server/backend/engine_io.h"
#include "server/backend/output_placement.h"

namespace sage::server {

// The names of the regions behind OutputOffer::client_o / client_lse, for the copies' errors.
struct ClientOutputRegions {
  std::string o;
  std::string lse;
};

// Puts `output`'s O (as `dtype`, the whole [total_q, Hq, D]) and, with LseMode::kNatural, its LSE
// into offer.client_o / client_lse, unless the engine already did (OutputPlacement::kCallerBuffers).
// FAILED_PRECONDITION "o_output: region '<name>' shrank or was unmapped while the request used it"
// when the client shrank it; INTERNAL when the outputs are in device memory and the engine left
// them unwritten (only the engine can reach them: a bug).
absl::Status WriteClientOutputs(const EngineOutput& output, DType dtype, LseMode lse, const OutputOffer& offer,
                                const ClientOutputRegions& regions);

}  // namespace sage::server
