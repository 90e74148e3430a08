// DeviceExecutor's paged launches: attention over KV pages that live in this GPU's KV pool, read in
// place by the paged decode kernel, or decoded on the GPU into the slot's K/V buffers for the dense
// kernels. Only Q, the page tables and the lengths go up; O and LSE come back.
#include <cuda_runtime.h>

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "server/backend/cuda/cuda_status.h"
#include "server/backend/cuda/device_slot.h"
#include "server/backend/cuda/host_staging.h"
#include "server/backend/cuda/transfer_plan.h"

namespace sage::server {
namespace {

size_t Align(size_t n) { return (n + 255) / 256 * 256; }

// Byte offsets of one paged launch's buffers in the slot's input staging and device buffer: what
// goes up (Q, the tables, the lengths) first, then, on the device only, the K/V a gather writes.
struct PagedLayout {
  size_t q = 0, page_table = 0, cu_pages = 0, cu_q = 0, cu_k = 0, seqlens_k = 0, upload_end = 0;
  size_t k = 0, v = 0, end = 0;
};

PagedLayout LayoutOf(const EngineInput& in, PagedKernel kernel) {
  PagedLayout l;
  const size_t seq_table = Align(in.cu_seqlens_q.size() * sizeof(int32_t));
  l.page_table = Align(static_cast<size_t>(in.q.bytes()));
  l.cu_pages = l.page_table + Align(in.paged->page_table.size() * sizeof(int32_t));
  l.cu_q = l.cu_pages + Align(in.paged->cu_pages.size() * sizeof(int32_t));
  l.cu_k = l.cu_q + seq_table;
  l.seqlens_k = l.cu_k + seq_table;
  l.upload_end = l.seqlens_k + Align(static_cast<size_t>(in.batch()) * sizeof(int32_t));
  l.k = l.v = l.end = l.upload_end;
  if (kernel == PagedKernel::kGatherThenDense) {
    const size_t kv = Align(static_cast<size_t>(in.k.numel()) * 2);
    l.v = l.k + kv;
    l.end = l.v + kv;
  }
  return l;
}

}  // namespace

absl::StatusOr<EngineOutput> DeviceExecutor::RunPaged(const LaunchShape& shape, const EngineInput& in, PagedLaunch launch,
                                                      DType dtype) {
  return OnSlot(shape, in.q.tokens, [&](Slot& slot) { return RunPagedOnSlot(slot, shape, in, launch, dtype); });
}

absl::StatusOr<EngineOutput> DeviceExecutor::RunPagedOnSlot(Slot& slot, const LaunchShape& shape, const EngineInput& in,
                                                            PagedLaunch& launch, DType dtype) {
  SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaSetDevice(device_), "cudaSetDevice"));
  const PagedLayout l = LayoutOf(in, launch.kernel);
  const size_t o_bytes = static_cast<size_t>(in.q.numel()) * 2;
  const bool want_lse = in.lse == LseMode::kNatural;
  const size_t lse_at = Align(o_bytes);
  const size_t lse_bytes = want_lse ? static_cast<size_t>(in.q.tokens) * in.q.heads * sizeof(float) : 0;
  if (l.end > slot.cap.in_bytes || lse_at + lse_bytes > slot.cap.out_bytes || shape.workspace_bytes > slot.cap.ws_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("cuda backend: paged launch of ", in.q.tokens, " query rows over ",
                                                     in.k.tokens, " cached tokens does not fit a stream slot"));
  }
  // Q and O in this GPU's memory (a session call's CUDA shared memory, q_dtype the pages' dtype as
  // LaunchPaged checked) are read and written where they are: the kernels take them in place when
  // aligned for them, else a device copy moves them. Nothing of theirs crosses the host.
  const bool q_on_device = in.memory == MemoryKind::kDevice;
  const bool o_on_device = in.output.memory == MemoryKind::kDevice;
  if ((q_on_device || o_on_device) && in.memory_device != device_) {
    return absl::InvalidArgumentError(absl::StrCat("cuda backend: paged launch on device ", device_,
                                                   " with tensors in device ", in.memory_device, "'s memory"));
  }
  if (o_on_device && (in.output.form != OutputForm::kNativeInto || in.output.o_into.size() < o_bytes ||
                      in.output.lse_into.size() * sizeof(float) < lse_bytes)) {
    return absl::InvalidArgumentError("cuda backend: paged launch without room for O in its device buffers");
  }
  const bool q_in_place = q_on_device && Aligned(in.q.data, 16);
  const bool o_in_place = o_on_device && Aligned(in.output.o_into.data(), 4) && Aligned(in.output.lse_into.data(), 4);
  // Host side: Q in the kernels' dtype (unless on the device), then the tables, all in one upload.
  const size_t upload_from = q_on_device ? l.page_table : l.q;
  if (!q_on_device) {
    StageSegment q_seg{in.q.data, in.q.dtype, slot.host_in + l.q, dtype, static_cast<size_t>(in.q.numel())};
    RunStaging(std::span<const StageSegment>(&q_seg, 1));
  }
  const auto put = [&](size_t at, std::span<const int32_t> v) { std::memcpy(slot.host_in + at, v.data(), v.size_bytes()); };
  put(l.page_table, in.paged->page_table);
  put(l.cu_pages, in.paged->cu_pages);
  put(l.cu_q, in.cu_seqlens_q);
  put(l.cu_k, in.cu_seqlens_k);
  auto* lens = reinterpret_cast<int32_t*>(slot.host_in + l.seqlens_k);
  for (int b = 0; b < in.batch(); ++b) lens[b] = in.cu_seqlens_k[b + 1] - in.cu_seqlens_k[b];
  const auto dev = [&](size_t at) { return slot.dev_in + at; };
  const auto table = [&](size_t at) { return reinterpret_cast<const int32_t*>(dev(at)); };
  const void* const q = q_in_place ? in.q.data : dev(l.q);
  void* const o = o_in_place ? static_cast<void*>(in.output.o_into.data()) : slot.dev_out;
  float* const lse = !want_lse ? nullptr : o_in_place ? in.output.lse_into.data() : reinterpret_cast<float*>(slot.dev_out + lse_at);

  cudaStream_t st = slot.stream;
  const auto sst = reinterpret_cast<sage_stream_t>(st);
  // The steps' appends may still be on the pool's write stream (not timed: before ev[0]).
  if (in.paged->writes != nullptr) SAGE_CUDA_RETURN_IF_ERROR(in.paged->writes->OrderAfterWrites(st));
  SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaEventRecord(slot.ev[0], st), "cudaEventRecord"));
  SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaMemcpyAsync(slot.dev_in + upload_from, slot.host_in + upload_from,
                                                     l.upload_end - upload_from, cudaMemcpyHostToDevice, st),
                                     "upload q and page tables"));
  if (q_on_device && !q_in_place) {
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaMemcpyAsync(slot.dev_in + l.q, in.q.data, static_cast<size_t>(in.q.bytes()),
                                                       cudaMemcpyDeviceToDevice, st),
                                       "copy q on the device"));
  }
  SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaEventRecord(slot.ev[1], st), "cudaEventRecord"));
  if (launch.kernel == PagedKernel::kDecode) {
    sage_paged_decode_params_t& p = launch.decode;
    p.q = q;
    p.page_table = table(l.page_table);
    p.cu_pages = table(l.cu_pages);
    p.cu_seqlens_q = table(l.cu_q);
    p.seqlens_k = table(l.seqlens_k);
    p.o = o;
    p.lse = lse;
    p.workspace = slot.dev_ws;
    p.workspace_bytes = slot.cap.ws_bytes;
    SAGE_CUDA_RETURN_IF_ERROR(FromSage(sage_paged_decode(&p, sst), "paged decode"));
  } else {
    sage_paged_gather_params_t& g = launch.gather;
    g.page_table = table(l.page_table);
    g.cu_pages = table(l.cu_pages);
    g.cu_seqlens_k = table(l.cu_k);
    g.k_out = dev(l.k);
    g.v_out = dev(l.v);
    SAGE_CUDA_RETURN_IF_ERROR(FromSage(sage_paged_gather(&g, sst), "paged gather"));
    sage_attn_params_t& p = launch.dense;
    p.q = q;
    p.k = dev(l.k);
    p.v = dev(l.v);
    p.o = o;
    p.lse = lse;
    p.cu_seqlens_q = table(l.cu_q);
    p.cu_seqlens_k = table(l.cu_k);
    p.workspace = slot.dev_ws;
    p.workspace_bytes = slot.cap.ws_bytes;
    SAGE_CUDA_RETURN_IF_ERROR(FromSage(sage_attn_forward(&p, sst), "forward over gathered pages"));
  }
  SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaEventRecord(slot.ev[2], st), "cudaEventRecord"));
  if (o_on_device && !o_in_place) {
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaMemcpyAsync(in.output.o_into.data(), slot.dev_out, o_bytes, cudaMemcpyDeviceToDevice, st),
                                       "copy o on the device"));
    if (want_lse) {
      SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaMemcpyAsync(in.output.lse_into.data(), slot.dev_out + lse_at, lse_bytes,
                                                         cudaMemcpyDeviceToDevice, st),
                                         "copy lse on the device"));
    }
  } else if (!o_on_device) {
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(
        cudaMemcpyAsync(slot.host_out, slot.dev_out, lse_at + lse_bytes, cudaMemcpyDeviceToHost, st), "download o"));
    SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaEventRecord(slot.ev[3], st), "cudaEventRecord"));
  }
  SAGE_CUDA_RETURN_IF_ERROR(FromCuda(cudaStreamSynchronize(st), "paged attention"));

  EngineOutput out;
  if (o_on_device) {
    out.placement = OutputPlacement::kCallerBuffers;  // O and LSE are in the caller's device buffers
  } else {
    ReadBackOutput(slot.host_out, static_cast<size_t>(in.q.numel()), dtype, in.output.form, slot.host_out + lse_at,
                   lse_bytes / sizeof(float), out);
  }
  absl::StatusOr<DeviceTimings> timings = StageTimings(slot.ev, true, !o_on_device);
  if (!timings.ok()) return timings.status();
  timings->device = device_;
  timings->stream_slot = slot.index;
  out.device_timings = *timings;
  return out;
}

}  // namespace sage::server
