// What an engine is asked to run and what it gives back, beyond the math of
// kernels/reference/attention_problem.h: where the request's bytes live and where O goes
// (OutputTarget), and what a GPU launch reports. Every layer of the serving path speaks these types;
// output_placement.h holds the rules over them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>

#include "kernels/reference/attention_problem.h"
#include "kernels/reference/dtype.h"
#include "server/backend/memory_kind.h"
#include "server/backend/paged_kv.h"

namespace sage::server {

// How the caller accepts O back (OutputTarget::form).
//   kFloat:         EngineOutput::o, fp32 (every engine; the default).
//   kNativeAllowed: an engine whose kernel writes 16-bit O may return those codes as they are, in
//                   EngineOutput::o_native (o_native_dtype says fp16 or bf16), and leave `o` empty.
//                   The serving path asks for this: the response encoder copies or converts the codes
//                   once, with the same bits as decoding to float and encoding again.
//   kNativeInto:    as kNativeAllowed, and an engine that writes 16-bit O may put the codes (of q's
//                   dtype) straight into OutputTarget::o_into, and LSE into lse_into, instead of
//                   returning them; it says so with EngineOutput::placement.
enum class OutputForm : uint8_t { kFloat, kNativeAllowed, kNativeInto };

// Where an engine put O and LSE (EngineOutput::placement).
enum class OutputPlacement : uint8_t { kInOutput, kCallerBuffers };

// Where O (and LSE) of one problem go. Chosen once per request by ChooseOutputTarget
// (output_placement.h); the batcher and the engines only read it.
struct OutputTarget {
  OutputForm form = OutputForm::kFloat;
  MemoryKind memory = MemoryKind::kPageable;  // of o_into and lse_into
  std::span<std::byte> o_into;  // kNativeInto: room for total_q * Hq * D 16-bit codes
  std::span<float> lse_into;    // kNativeInto with LseMode::kNatural: room for total_q * Hq
};

// One problem as an engine receives it: the math, where its q/k/v bytes live, where O goes.
struct EngineInput : AttnInput {
  EngineInput() = default;
  // The math problem alone, as an engine input: host memory, O returned as float.
  EngineInput(const AttnInput& problem) : AttnInput(problem) {}  // NOLINT(google-explicit-constructor)

  MemoryKind memory = MemoryKind::kPageable;  // of q, k, v
  int memory_device = -1;  // with kDevice in `memory` or output.memory: the CUDA ordinal holding it
  OutputTarget output;
  // Set: K and V come from KV pages, read in place (paged_kv.h); k/v give their shapes only.
  std::optional<PagedKv> paged;
};

// Where the time of one GPU launch went, measured with CUDA events on the launch's stream (the
// CUDA backend fills it; the CPU engine leaves it empty). For a merged batch the numbers are the
// batch's, shared by every request in it.
struct DeviceTimings {
  double h2d_us = 0;     // host-to-device copy of q/k/v and cu_seqlens
  double kernel_us = 0;  // quantization + attention
  double d2h_us = 0;     // device-to-host copy of o (and lse)
  int device = -1;       // CUDA ordinal the batch ran on
  int stream_slot = -1;  // which of the device's stream slots ran it
};

// An engine's result. `o` (fp32) is empty when O came back in o_native or in the caller's buffers.
struct EngineOutput : AttnOutput {
  EngineOutput() = default;
  // An engine's fp32 result, nothing placed (the CPU engine's answer as the serving path's type).
  explicit EngineOutput(AttnOutput out) : AttnOutput(std::move(out)) {}

  std::optional<DeviceTimings> device_timings;  // set by the CUDA backend
  // O as the kernel wrote it: [total_q, Hq, D] 16-bit codes of o_native_dtype, as raw bytes (2 per
  // element, host byte order), only for OutputForm::kNativeAllowed/kNativeInto from an engine that
  // produces 16-bit O (the CUDA backend). A std::string so the encoder can move it into the
  // response's bytes field without a copy. o_native_dtype kF32 = unused.
  std::string o_native;
  DType o_native_dtype = DType::kF32;
  // kCallerBuffers: O (and LSE) were written into the input's output.o_into / lse_into; o, o_native
  // and lse are empty. Only for OutputForm::kNativeInto.
  OutputPlacement placement = OutputPlacement::kInOutput;

  bool has_native_o() const { return o_native_dtype != DType::kF32; }
  size_t o_elements() const { return has_native_o() ? o_native.size() / 2 : o.size(); }
};

}  // namespace sage::server
