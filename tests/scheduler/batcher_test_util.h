// Test doubles for the scheduler tests: tagged work items, a fake backend that records the launches
// it gets (and can be held shut or made to fail on chosen items), and a result collector.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/reference/cpu_engine.h"
#include "server/backend/backend.h"
#include "server/scheduler/batch_assembler.h"
#include "server/scheduler/scheduler.h"

namespace sage::server::testing {

// The CPU engine's result as the serving path's type (fp32 O, nothing placed).
inline absl::StatusOr<EngineOutput> RunOnCpu(const CpuEngine& engine, const AttnInput& in, const RecipeConfig& config) {
  absl::StatusOr<AttnOutput> out = engine.Run(in, config);
  if (!out.ok()) return out.status();
  return EngineOutput(*std::move(out));
}

inline constexpr auto kWaitLimit = std::chrono::seconds(20);  // Generous: CI may be loaded.

// A work item's storage. Every element of Q, K and V holds the item's tag (as a float for fp32,
// as the raw integer for 16-bit types), so a backend can tell whose sequence it is looking at.
struct TaggedProblem {
  int tag = 0;
  std::vector<uint8_t> q, k, v;
  std::vector<int32_t> cu_q, cu_k;
  EngineInput input;
  RecipeConfig config;
};

struct ProblemShape {
  std::vector<int> q_lens = {128};
  std::vector<int> k_lens = {128};
  int q_heads = 2;
  int kv_heads = 2;
  int head_dim = 64;
  DType dtype = DType::kF32;
  MaskMode mask = MaskMode::kNone;
  LseMode lse = LseMode::kNone;
  std::optional<float> scale;
  RecipeConfig config;
};

inline void FillTag(std::vector<uint8_t>& buf, DType dtype, int64_t numel, int tag) {
  buf.resize(static_cast<size_t>(numel) * DTypeSize(dtype));
  for (int64_t i = 0; i < numel; ++i) {
    if (dtype == DType::kF32) {
      const float f = static_cast<float>(tag);
      std::memcpy(buf.data() + i * 4, &f, 4);
    } else {
      const uint16_t u = static_cast<uint16_t>(tag);
      std::memcpy(buf.data() + i * 2, &u, 2);
    }
  }
}

inline std::unique_ptr<TaggedProblem> MakeTagged(int tag, const ProblemShape& s = {}) {
  auto p = std::make_unique<TaggedProblem>();
  p->tag = tag;
  p->cu_q = {0};
  p->cu_k = {0};
  for (size_t i = 0; i < s.q_lens.size(); ++i) {
    p->cu_q.push_back(p->cu_q.back() + s.q_lens[i]);
    p->cu_k.push_back(p->cu_k.back() + s.k_lens[i]);
  }
  const int64_t tq = p->cu_q.back();
  const int64_t tk = p->cu_k.back();
  FillTag(p->q, s.dtype, tq * s.q_heads * s.head_dim, tag);
  FillTag(p->k, s.dtype, tk * s.kv_heads * s.head_dim, tag);
  FillTag(p->v, s.dtype, tk * s.kv_heads * s.head_dim, tag);
  p->input.q = TensorView{s.dtype, p->q.data(), tq, s.q_heads, s.head_dim};
  p->input.k = TensorView{s.dtype, p->k.data(), tk, s.kv_heads, s.head_dim};
  p->input.v = TensorView{s.dtype, p->v.data(), tk, s.kv_heads, s.head_dim};
  p->input.cu_seqlens_q = p->cu_q;
  p->input.cu_seqlens_k = p->cu_k;
  p->input.mask = s.mask;
  p->input.lse = s.lse;
  p->input.softmax_scale = s.scale;
  p->config = s.config;
  return p;
}

// The tag of whatever sits at element 0 of `row` of a tensor.
inline int TagAt(const TensorView& t, int64_t row) {
  const size_t offset = static_cast<size_t>(row) * t.heads * t.head_dim * DTypeSize(t.dtype);
  const uint8_t* p = static_cast<const uint8_t*>(t.data) + offset;
  if (t.dtype == DType::kF32) {
    float f;
    std::memcpy(&f, p, 4);
    return static_cast<int>(f);
  }
  uint16_t u;
  std::memcpy(&u, p, 2);
  return u;
}

// Records every launch a test backend gets and holds launches shut on demand, so that work
// submitted meanwhile queues up behind the held one.
template <typename Launch>
class LaunchGate {
 public:
  // Records `launch`, then waits while the gate is shut.
  void Pass(Launch launch) {
    std::unique_lock<std::mutex> lock(mu_);
    launches_.push_back(std::move(launch));
    cv_.notify_all();
    cv_.wait(lock, [this] { return open_; });
  }
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = false;
  }
  void Open() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  // Waits until at least `n` launches have started.
  bool WaitForLaunches(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kWaitLimit, [&] { return launches_.size() >= n; });
  }
  std::vector<Launch> launches() const {
    std::lock_guard<std::mutex> lock(mu_);
    return launches_;
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = true;
  std::vector<Launch> launches_;
};

// Records each launch as the list of item tags in it (one per item, in order).
class FakeBackend final : public AttentionBackend {
 public:
  FakeBackend() { info_.kind = BackendKind::kCpu; }
  const BackendInfo& info() const override { return info_; }

  absl::StatusOr<EngineOutput> Attend(const EngineInput& in, const RecipeConfig&) override {
    std::vector<int> seq_tags;
    std::vector<int> items;
    for (int s = 0; s < in.batch(); ++s) {
      const int tag = TagAt(in.q, in.cu_seqlens_q[s]);
      seq_tags.push_back(tag);
      if (items.empty() || items.back() != tag) items.push_back(tag);
    }
    gate_.Pass(items);
    bool poisoned = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int tag : items) poisoned |= poison_.count(tag) > 0;
    }
    if (poisoned) return absl::InternalError("fake backend: poisoned item in the launch");
    EngineOutput out;
    const size_t row = static_cast<size_t>(in.q.heads) * in.q.head_dim;
    out.o.resize(static_cast<size_t>(in.q.tokens) * row);
    if (in.lse == LseMode::kNatural) out.lse.resize(static_cast<size_t>(in.q.tokens) * in.q.heads);
    for (int s = 0; s < in.batch(); ++s) {
      for (int32_t t = in.cu_seqlens_q[s]; t < in.cu_seqlens_q[s + 1]; ++t) {
        std::fill_n(out.o.begin() + t * row, row, static_cast<float>(seq_tags[s]));
        if (!out.lse.empty()) {
          std::fill_n(out.lse.begin() + t * in.q.heads, in.q.heads, static_cast<float>(seq_tags[s]));
        }
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      out.device_timings = timings_;
    }
    return out;
  }

  // Like the CUDA backend: merged launches come as metadata plus members (AttendGathered). The fake
  // checks the metadata has no bytes, concatenates the members itself and runs Attend on that.
  void EnableGather() { info_.input_gather = InputGather::kSegments; }
  absl::StatusOr<EngineOutput> AttendGathered(const EngineInput& merged, std::span<const EngineInput* const> members,
                                            const RecipeConfig& config) override {
    if (merged.q.data != nullptr || merged.k.data != nullptr || merged.v.data != nullptr) {
      return absl::InternalError("fake backend: gathered launch came with bytes");
    }
    absl::StatusOr<AssembledBatch> copy = AssembleBatch(members);
    if (!copy.ok()) return copy.status();
    if (copy->input().q.tokens != merged.q.tokens || copy->input().batch() != merged.batch()) {
      return absl::InternalError("fake backend: members do not match the merged metadata");
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++gathered_;
    }
    absl::StatusOr<EngineOutput> out = Attend(copy->input(), config);
    if (!out.ok() || merged.output.form != OutputForm::kNativeInto) return out;
    // As the CUDA backend does with kNativeInto: every member's rows go into its own o_into (here
    // each 16-bit code is the member's tag) and nothing comes back in the output.
    for (const EngineInput* m : members) {
      const uint16_t tag = static_cast<uint16_t>(TagAt(m->q, 0));
      for (size_t i = 0; i + 1 < m->output.o_into.size(); i += 2) std::memcpy(m->output.o_into.data() + i, &tag, 2);
    }
    EngineOutput placed;
    placed.placement = OutputPlacement::kCallerBuffers;
    placed.device_timings = out->device_timings;
    return placed;
  }
  int gathered() const {
    std::lock_guard<std::mutex> lock(mu_);
    return gathered_;
  }

  // Outputs carry these DeviceTimings from now on, as the CUDA backend's do.
  void ReportTimings(const DeviceTimings& t) {
    std::lock_guard<std::mutex> lock(mu_);
    timings_ = t;
  }
  void Close() { gate_.Close(); }
  void Open() { gate_.Open(); }
  void Poison(int tag) {
    std::lock_guard<std::mutex> lock(mu_);
    poison_.insert(tag);
  }
  bool WaitForLaunches(size_t n) { return gate_.WaitForLaunches(n); }
  std::vector<std::vector<int>> launches() const { return gate_.launches(); }
  bool EverLaunched(int tag) const {
    for (const auto& l : gate_.launches()) {
      for (int t : l) {
        if (t == tag) return true;
      }
    }
    return false;
  }

 private:
  BackendInfo info_;
  LaunchGate<std::vector<int>> gate_;
  mutable std::mutex mu_;  // poison_, timings_, gathered_
  std::set<int> poison_;
  std::optional<DeviceTimings> timings_;
  int gathered_ = 0;
};

struct Result {
  absl::StatusOr<EngineOutput> out;
  WorkTimings timings;
};

// Collects the completions of tagged items.
class Collector {
 public:
  WorkItem MakeItem(const TaggedProblem& p, std::optional<Clock::time_point> deadline = std::nullopt,
                    std::function<bool()> is_cancelled = {}) {
    WorkItem item;
    item.input = p.input;
    item.config = p.config;
    item.deadline = deadline;
    item.is_cancelled = std::move(is_cancelled);
    const int tag = p.tag;
    item.done = [this, tag](absl::StatusOr<EngineOutput> out, const WorkTimings& t) {
      std::lock_guard<std::mutex> lock(mu_);
      ++calls_[tag];
      results_.insert_or_assign(tag, Result{std::move(out), t});
      cv_.notify_all();
    };
    return item;
  }
  bool WaitFor(int tag) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kWaitLimit, [&] { return results_.count(tag) > 0; });
  }
  bool WaitForAll(const std::vector<int>& tags) {
    for (int t : tags) {
      if (!WaitFor(t)) return false;
    }
    return true;
  }
  Result Get(int tag) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = results_.find(tag);
    return it == results_.end() ? Result{absl::NotFoundError("no result"), {}} : it->second;
  }
  bool Has(int tag) {
    std::lock_guard<std::mutex> lock(mu_);
    return results_.count(tag) > 0;
  }
  int Calls(int tag) {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_[tag];
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<int, Result> results_;
  std::map<int, int> calls_;
};

}  // namespace sage::server::testing
