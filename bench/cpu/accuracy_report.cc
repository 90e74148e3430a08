// sage-accuracy: error of every recipe (and the instructive config variants) against the double
// oracle, over synthetic input distributions that stress quantization. Prints a Markdown table.
//
//   sage-accuracy [--seed=N] [--threads=N] [--markdown-out=FILE]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_format.h"
#include "kernels/reference/cpu_engine.h"
#include "kernels/reference/metrics.h"
#include "kernels/reference/oracle.h"
#include "kernels/reference/recipe.h"
#include "kernels/reference/synthetic_data.h"

namespace {

using sage::Distribution;
using sage::Recipe;
using sage::RecipeConfig;

struct Variant {
  std::string name;
  RecipeConfig config;
};

std::vector<Variant> Variants() {
  std::vector<Variant> v;
  auto with = [](Recipe r, auto&& edit) {
    RecipeConfig c = sage::ConfigFor(r);
    edit(c);
    return c;
  };
  v.push_back({"int4_qk_fp8_pv", sage::ConfigFor(Recipe::kInt4QkFp8Pv)});
  v.push_back({"int4 K-smoothing only", with(Recipe::kInt4QkFp8Pv, [](RecipeConfig& c) { c.qk_smoothing = sage::QkSmoothing::kK; })});
  v.push_back({"int4 no smoothing", with(Recipe::kInt4QkFp8Pv, [](RecipeConfig& c) { c.qk_smoothing = sage::QkSmoothing::kNone; })});
  v.push_back({"int8_qk_fp8_pv", sage::ConfigFor(Recipe::kInt8QkFp8Pv)});
  v.push_back({"int8 per-warp", with(Recipe::kInt8QkFp8Pv, [](RecipeConfig& c) { c.granularity = sage::QuantGranularity::kPerWarp; })});
  v.push_back({"int8 per-block", with(Recipe::kInt8QkFp8Pv, [](RecipeConfig& c) { c.granularity = sage::QuantGranularity::kPerBlock; })});
  v.push_back({"int8 no smoothing", with(Recipe::kInt8QkFp8Pv, [](RecipeConfig& c) { c.qk_smoothing = sage::QkSmoothing::kNone; })});
  v.push_back({"int8 fp8 FP22-only", with(Recipe::kInt8QkFp8Pv, [](RecipeConfig& c) { c.accumulation = sage::PvAccumulation::kFp22Only; })});
  v.push_back({"int8 fp8 FP22-only + V smoothing", with(Recipe::kInt8QkFp8Pv, [](RecipeConfig& c) {
                 c.accumulation = sage::PvAccumulation::kFp22Only;
                 c.v_smoothing = sage::VSmoothing::kMean;
               })});
  v.push_back({"int8 fp8 + V smoothing", with(Recipe::kInt8QkFp8Pv, [](RecipeConfig& c) { c.v_smoothing = sage::VSmoothing::kMean; })});
  v.push_back({"int8_qk_fp16_pv", sage::ConfigFor(Recipe::kInt8QkFp16Pv)});
  v.push_back({"unquantized", sage::ConfigFor(Recipe::kUnquantized)});
  return v;
}

struct Case {
  std::string name;
  sage::ProblemSpec spec;
};

std::vector<Case> Cases(uint64_t seed) {
  std::vector<Case> cases;
  const Distribution dists[] = {Distribution::kGaussian, Distribution::kKChannelBias, Distribution::kQOutliers,
                                Distribution::kVChannelOffset, Distribution::kLlmLike};
  for (Distribution d : dists) {
    cases.push_back({std::string(sage::DistributionName(d)),
                     {.q_lens = {512, 384}, .k_lens = {512, 384}, .q_heads = 4, .kv_heads = 2, .head_dim = 128,
                      .lse = sage::LseMode::kNatural, .dtype = sage::DType::kF16, .distribution = d, .seed = seed}});
  }
  cases.push_back({"llm_like, 8k keys",
                   {.q_lens = {128}, .k_lens = {8192}, .q_heads = 2, .kv_heads = 1, .head_dim = 128,
                    .lse = sage::LseMode::kNatural, .dtype = sage::DType::kF16,
                    .distribution = Distribution::kLlmLike, .seed = seed + 1}});
  cases.push_back({"gaussian, 8k keys, causal",
                   {.q_lens = {512}, .k_lens = {8192}, .q_heads = 2, .kv_heads = 1, .head_dim = 128,
                    .mask = sage::MaskMode::kCausal, .lse = sage::LseMode::kNatural, .dtype = sage::DType::kF16,
                    .distribution = Distribution::kGaussian, .seed = seed + 2}});
  return cases;
}

bool ParseFlag(std::string_view arg, std::string_view name, std::string* value) {
  if (arg.substr(0, name.size()) != name || arg.size() <= name.size() || arg[name.size()] != '=') return false;
  *value = std::string(arg.substr(name.size() + 1));
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t seed = 2026;
  int threads = 0;
  std::string markdown_out;
  for (int i = 1; i < argc; ++i) {
    std::string value;
    const std::string_view arg = argv[i];
    if (ParseFlag(arg, "--seed", &value)) {
      seed = std::strtoull(value.c_str(), nullptr, 10);
    } else if (ParseFlag(arg, "--threads", &value)) {
      threads = std::atoi(value.c_str());
    } else if (ParseFlag(arg, "--markdown-out", &value)) {
      markdown_out = value;
    } else {
      std::cerr << "usage: sage-accuracy [--seed=N] [--threads=N] [--markdown-out=FILE]\n";
      return 2;
    }
  }
  auto engine = sage::CpuEngine::Create({.num_threads = threads});
  if (!engine.ok()) {
    std::cerr << engine.status() << "\n";
    return 1;
  }
  const auto start = std::chrono::steady_clock::now();
  const std::vector<Variant> variants = Variants();
  std::string table = absl::StrFormat("Seed %d. Metrics of O against the fp64 oracle; LSE err = mean |LSE - LSE_exact|.\n\n", seed);
  table += "| config | input | cosine | rel. L1 | RMSE | max abs | LSE err |\n";
  table += "|---|---|---:|---:|---:|---:|---:|\n";
  for (const Case& c : Cases(seed)) {
    sage::SyntheticProblem problem(c.spec);
    auto exact = sage::AttendExact(problem.input());
    if (!exact.ok()) {
      std::cerr << exact.status() << "\n";
      return 1;
    }
    for (const Variant& v : variants) {
      auto out = (*engine)->Run(problem.input(), v.config);
      if (!out.ok()) {
        std::cerr << out.status() << "\n";
        return 1;
      }
      const sage::ErrorMetrics m = sage::CompareToReference(out->o, exact->o);
      double lse_err = 0.0;
      size_t lse_rows = 0;
      for (size_t i = 0; i < out->lse.size(); ++i) {
        if (std::isinf(exact->lse[i])) continue;
        lse_err += std::fabs(out->lse[i] - exact->lse[i]);
        ++lse_rows;
      }
      table += absl::StrFormat("| %s | %s | %.6f | %.4f | %.5f | %.4f | %.4f |\n", v.name, c.name, m.cosine,
                               m.relative_l1, m.rmse, m.max_abs, lse_rows ? lse_err / lse_rows : 0.0);
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << table;
  std::cerr << absl::StrFormat("sage-accuracy: %.1f s on %d threads\n", seconds, (*engine)->num_threads());
  if (!markdown_out.empty()) {
    std::ofstream f(markdown_out);
    f << table;
    if (!f) {
      std::cerr << "cannot write " << markdown_out << "\n";
      return 1;
    }
  }
  return 0;
}
