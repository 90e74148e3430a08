// CPU engine throughput: D=128, 32 heads, 2k tokens (one sequence), causal and not, per recipe,
// plus the double-precision oracle. Reported as attention TOPS-equivalent (4·H·D·Nq·Nk, halved
// for causal) so recipes compare directly.
#include <memory>
#include <string>

#include "benchmark/benchmark.h"
#include "kernels/reference/cpu_engine.h"
#include "kernels/reference/oracle.h"
#include "kernels/reference/recipe.h"
#include "kernels/reference/synthetic_data.h"

namespace {

constexpr int kHeads = 32;
constexpr int kHeadDim = 128;
constexpr int kTokens = 2048;
constexpr int kOracleTokens = 512;  // the scalar fp64 oracle is ~5x slower per FLOP; keep its runs short

sage::ProblemSpec Spec(int tokens, sage::MaskMode mask) {
  return {.q_lens = {tokens}, .k_lens = {tokens}, .q_heads = kHeads, .kv_heads = kHeads, .head_dim = kHeadDim,
          .mask = mask, .dtype = sage::DType::kF16, .distribution = sage::Distribution::kLlmLike, .seed = 1};
}

void SetCounters(benchmark::State& state, int tokens, sage::MaskMode mask) {
  double flops = 4.0 * kHeads * kHeadDim * static_cast<double>(tokens) * tokens;
  if (mask == sage::MaskMode::kCausal) flops /= 2;
  state.counters["GFLOPS"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_CpuEngine(benchmark::State& state, sage::Recipe recipe, sage::MaskMode mask) {
  static const auto engine = *sage::CpuEngine::Create({});
  const sage::SyntheticProblem problem(Spec(kTokens, mask));
  const sage::RecipeConfig config = sage::ConfigFor(recipe);
  for (auto _ : state) {
    auto out = engine->Run(problem.input(), config);
    if (!out.ok()) state.SkipWithError(std::string(out.status().message()).c_str());
    benchmark::DoNotOptimize(out);
  }
  SetCounters(state, kTokens, mask);
  state.counters["threads"] = engine->num_threads();
}

void BM_Oracle(benchmark::State& state, sage::MaskMode mask) {
  const sage::SyntheticProblem problem(Spec(kOracleTokens, mask));
  for (auto _ : state) {
    auto out = sage::AttendExact(problem.input());
    if (!out.ok()) state.SkipWithError(std::string(out.status().message()).c_str());
    benchmark::DoNotOptimize(out);
  }
  SetCounters(state, kOracleTokens, mask);
}

void Register() {
  for (sage::Recipe r : sage::kAllRecipes) {
    for (sage::MaskMode mask : {sage::MaskMode::kNone, sage::MaskMode::kCausal}) {
      const std::string name = std::string("CpuEngine/") + std::string(sage::RecipeName(r)) +
                               (mask == sage::MaskMode::kCausal ? "/causal" : "/full");
      benchmark::RegisterBenchmark(name.c_str(), BM_CpuEngine, r, mask)->Unit(benchmark::kMillisecond)->UseRealTime();
    }
  }
  benchmark::RegisterBenchmark("Oracle/fp64/512tok/full", BM_Oracle, sage::MaskMode::kNone)
      ->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("Oracle/fp64/512tok/causal", BM_Oracle, sage::MaskMode::kCausal)
      ->Unit(benchmark::kMillisecond)->UseRealTime();
}

}  // namespace

int main(int argc, char** argv) {
  Register();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
