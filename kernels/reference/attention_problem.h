// One attention problem over a packed varlen batch, and its validation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/reference/dtype.h"

namespace sage {

// Causal masks are aligned bottom-right, as in FlashAttention: with q_len < k_len, query i of a
// sequence sees keys j <= i + (k_len - q_len). A query row that sees no key (q_len > k_len) yields
// O = 0 and LSE = -inf.
enum class MaskMode { kNone, kCausal };

enum class LseMode { kNone, kNatural };  // kNatural: fp32 log-sum-exp in natural log, [total_q, Hq].

// How the caller accepts O back (AttnInput::output_form).
//   kFloat:         AttnOutput::o, fp32 (every engine; the default).
//   kNativeAllowed: an engine whose kernel writes 16-bit O may return those codes as they are, in
//                   AttnOutput::o_native (o_native_dtype says fp16 or bf16), and leave `o` empty. The
//                   gRPC path asks for this: the response codec copies or converts the codes once,
//                   with the same bits as decoding to float and encoding again.
//   kNativeInto:    as kNativeAllowed, and an engine that writes 16-bit O may put the codes (of q's
//                   dtype) straight into AttnInput::o_into, and LSE into lse_into, instead of
//                   returning them; it says so with AttnOutput::placement. The gRPC path asks for this
//                   when the response goes out of the request's own (pinned) block.
enum class OutputForm : uint8_t { kFloat, kNativeAllowed, kNativeInto };

// Where a problem's bytes (q/k/v: AttnInput::memory; o_into/lse_into: out_memory) live.
//   kPageable: ordinary host memory.
//   kPinned:   host memory page-locked and registered with the CUDA driver, so a GPU engine copies
//              straight from and to it, with no staging copy.
//   kDevice:   memory of the GPU the engine runs on (a client's CUDA shared memory), read and written
//              by device copies only. Engines without a GPU never receive it (the server refuses
//              CUDA shared memory there).
enum class MemoryKind : uint8_t { kPageable, kPinned, kDevice };

// Where an engine put O and LSE (AttnOutput::placement).
enum class OutputPlacement : uint8_t { kInOutput, kCallerBuffers };

// Head dims the engines implement; anything else is rejected with INVALID_ARGUMENT.
inline constexpr int kSupportedHeadDims[] = {64, 128};

struct AttnInput {
  TensorView q;  // [total_q, Hq, D]
  TensorView k;  // [total_k, Hkv, D]
  TensorView v;  // [total_k, Hkv, D]
  std::span<const int32_t> cu_seqlens_q;  // batch + 1 entries, cu[0] = 0, cu[batch] = total_q.
  std::span<const int32_t> cu_seqlens_k;  // batch + 1 entries, cu[0] = 0, cu[batch] = total_k.
  MaskMode mask = MaskMode::kNone;
  std::optional<float> softmax_scale;  // default 1/sqrt(D).
  LseMode lse = LseMode::kNone;
  OutputForm output_form = OutputForm::kFloat;
  MemoryKind memory = MemoryKind::kPageable;      // q, k, v
  MemoryKind out_memory = MemoryKind::kPageable;  // o_into, lse_into
  int memory_device = -1;  // with kDevice in either: the CUDA ordinal that holds that memory
  std::span<std::byte> o_into;  // kNativeInto: room for total_q * Hq * D 16-bit codes
  std::span<float> lse_into;    // kNativeInto with LseMode::kNatural: room for total_q * Hq

  int batch() const { return cu_seqlens_q.empty() ? 0 : static_cast<int>(cu_seqlens_q.size()) - 1; }
  float scale() const;
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

struct AttnOutput {
  std::vector<float> o;    // [total_q, Hq, D] (empty when O came back in o_native)
  std::vector<float> lse;  // [total_q, Hq] when requested, else empty.
  std::optional<DeviceTimings> device_timings;  // set by the CUDA backend
  // O as the kernel wrote it: [total_q, Hq, D] 16-bit codes of o_native_dtype, as raw bytes (2 per
  // element, host byte order), only when the input had OutputForm::kNativeAllowed and the engine
  // produces 16-bit O (the CUDA backend). A std::string so the gRPC codec can move it into the
  // response's bytes field without a copy. o_native_dtype kF32 = unused.
  std::string o_native;
  DType o_native_dtype = DType::kF32;
  // kCallerBuffers: O (and LSE) were written into the input's o_into / lse_into; o, o_native and lse
  // are empty. Only for OutputForm::kNativeInto.
  OutputPlacement placement = OutputPlacement::kInOutput;

  bool has_native_o() const { return o_native_dtype != DType::kF32; }
  size_t o_elements() const { return has_native_o() ? o_native.size() / 2 : o.size(); }
};

// Checks shapes, dtypes, head dims, GQA divisibility, cu_seqlens and data pointers. Every error is
// INVALID_ARGUMENT and names the field ("q.head_dim", "cu_seqlens_k[3]", ...).
absl::Status ValidateInput(const AttnInput& in);

}  // namespace sage
