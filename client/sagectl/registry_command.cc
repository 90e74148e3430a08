// `sagectl registry <verb>`: the precision registry (sageserve.v1.RegistryService) from the shell.
//   register   --model --layers --heads_q --heads_kv --head_dim [--timesteps] [--accuracy_target] [--replace]
//   list | get --model | delete --model
//   get-plan   --model [--json]
//   set-plan   --model (--entries="0-11:int8_qk_fp8_pv,12-15@0-9:unquantized" | --plan_file=JSON)
//              [--expected_version=N] [--accuracy_target=X]
//   calibrate  --model [--dry_run] [--accuracy_target] [--candidates=a,b] [--kv_storages=A,B] [--json]
//              synthetic samples: [--layers=0,1,..] [--timesteps=..] [--outlier_gain=g0,g1,..]
//                                 [--samples=N] [--tokens=N] [--seed=N]
//              or files (raw fp16 [tokens, heads, D]): --q_file=a,b --k_file=.. --v_file=..
//                                 --sample_layers=0,1 [--sample_timesteps=..] --tokens=N
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/sagectl/commands.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "kernels/reference/recipe.h"
#include "sageserve/v1/registry.grpc.pb.h"
#include "kernels/reference/outlier_samples.h"

namespace sagectl {
namespace {

namespace v1 = ::sageserve::v1;

using Stub = v1::RegistryService::Stub;

// Deadline from --deadline_ms like every other command; calibration gets 10 minutes by default
// because it runs every recipe on every sample.
void SetDeadline(const Args& args, grpc::ClientContext* ctx, int64_t default_ms) {
  absl::StatusOr<int64_t> ms = args.Int("deadline_ms", default_ms);
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms.ok() ? *ms : default_ms));
}

int FailGrpc(const grpc::Status& s) {
  return Fail(absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message()));
}

absl::StatusOr<std::string> RequireModel(const Args& args) {
  std::string m = args.Str("model", "");
  if (m.empty()) return absl::InvalidArgumentError("--model is required");
  return m;
}

absl::StatusOr<std::vector<int>> IntList(const Args& args, const std::string& key) {
  std::vector<int> out;
  const std::string text = args.Str(key, "");
  if (text.empty()) return out;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    int v = 0;
    if (!absl::SimpleAtoi(part, &v)) {
      return absl::InvalidArgumentError(absl::StrCat("--", key, ": '", std::string(part), "' is not an integer"));
    }
    out.push_back(v);
  }
  return out;
}

absl::StatusOr<v1::Recipe> WireRecipe(absl::string_view name) {
  absl::StatusOr<sage::Recipe> r = sage::ParseRecipe(std::string(name));
  if (!r.ok()) return r.status();
  return static_cast<v1::Recipe>(static_cast<int>(*r) + 1);  // tensor.proto: wire = sage::Recipe + 1.
}

std::string RecipeText(v1::Recipe r) {
  if (r == v1::RECIPE_UNSPECIFIED) return "unspecified";
  return std::string(sage::RecipeName(static_cast<sage::Recipe>(static_cast<int>(r) - 1)));
}

std::string RangeText(const v1::IndexRange& r) {
  return r.first() == r.last() ? absl::StrCat(r.first()) : absl::StrCat(r.first(), "-", r.last());
}

// "QUANT_GRANULARITY_PER_THREAD" -> "per_thread": the enum name without its type prefix.
std::string Short(const std::string& name, const std::string& prefix) {
  std::string out = name.rfind(prefix, 0) == 0 ? name.substr(prefix.size()) : name;
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

void PrintPlan(const std::string& model, const v1::Plan& p) {
  std::printf("model %s: plan version %lld, %s, target %.4f, calibrated on %s %s (%s)%s\n", model.c_str(),
              static_cast<long long>(p.version()), Short(v1::PlanSource_Name(p.source()), "PLAN_SOURCE_").c_str(),
              p.accuracy_target(),
              p.calibrated_on().backend().c_str(), p.calibrated_on().architecture().c_str(),
              p.calibrated_on().device().c_str(), p.created_at().empty() ? "" : (", " + p.created_at()).c_str());
  for (const v1::PlanEntry& e : p.entries()) {
    const v1::RecipeConfig& c = e.config();
    std::printf("  layers %-7s %-18s %-16s granularity=%s qk_smoothing=%s v_smoothing=%s\n",
                RangeText(e.layers()).c_str(),
                e.has_timesteps() ? ("timesteps " + RangeText(e.timesteps())).c_str() : "all timesteps",
                RecipeText(e.recipe()).c_str(),
                Short(v1::QuantGranularity_Name(c.granularity()), "QUANT_GRANULARITY_").c_str(),
                Short(v1::QkSmoothing_Name(c.qk_smoothing()), "QK_SMOOTHING_").c_str(),
                Short(v1::VSmoothing_Name(c.v_smoothing()), "V_SMOOTHING_").c_str());
  }
  std::printf("  every other cell: %s (this server's default)\n", RecipeText(p.default_recipe()).c_str());
}

int Register(Stub& stub, const Args& args) {
  if (!CheckFlags(args, {"model", "layers", "heads_q", "heads_kv", "head_dim", "timesteps", "accuracy_target", "replace"})) return 2;
  v1::RegisterModelRequest req;
  v1::ModelSpec* spec = req.mutable_spec();
  absl::StatusOr<std::string> model = RequireModel(args);
  if (!model.ok()) return FailUsage(model.status());
  spec->set_name(*model);
  for (const auto& [key, setter] : std::vector<std::pair<std::string, void (v1::ModelSpec::*)(int32_t)>>{
           {"layers", &v1::ModelSpec::set_num_layers}, {"heads_q", &v1::ModelSpec::set_q_heads},
           {"heads_kv", &v1::ModelSpec::set_kv_heads}, {"head_dim", &v1::ModelSpec::set_head_dim}}) {
    absl::StatusOr<int64_t> v = args.Int(key, 0);
    if (!v.ok()) return FailUsage(v.status());
    (spec->*setter)(static_cast<int32_t>(*v));
  }
  if (args.Has("timesteps")) {
    absl::StatusOr<int64_t> t = args.Int("timesteps", 0);
    if (!t.ok()) return FailUsage(t.status());
    spec->set_num_timesteps(static_cast<int32_t>(*t));
  }
  absl::StatusOr<double> target = args.Double("accuracy_target", 0.0);
  if (!target.ok()) return FailUsage(target.status());
  spec->set_accuracy_target(*target);
  req.set_replace(args.Flag("replace"));
  grpc::ClientContext ctx;
  SetDeadline(args, &ctx, 10000);
  v1::RegisterModelResponse resp;
  grpc::Status s = stub.RegisterModel(&ctx, req, &resp);
  if (!s.ok()) return FailGrpc(s);
  PrintJson(resp.model());
  return 0;
}

int List(Stub& stub, const Args& args) {
  if (!CheckFlags(args, {"json"})) return 2;
  grpc::ClientContext ctx;
  SetDeadline(args, &ctx, 10000);
  v1::ListModelsResponse resp;
  grpc::Status s = stub.ListModels(&ctx, v1::ListModelsRequest(), &resp);
  if (!s.ok()) return FailGrpc(s);
  if (args.Flag("json")) {
    PrintJson(resp);
    return 0;
  }
  std::printf("%-24s %6s %4s %4s %4s %9s %7s  %s\n", "model", "layers", "Hq", "Hkv", "D", "timesteps", "target",
              "plan");
  for (const v1::ModelInfo& m : resp.models()) {
    const v1::ModelSpec& s2 = m.spec();
    std::printf("%-24s %6d %4d %4d %4d %9s %7.4f  %s v%lld, %d entries\n", s2.name().c_str(), s2.num_layers(),
                s2.q_heads(), s2.kv_heads(), s2.head_dim(),
                s2.has_num_timesteps() ? absl::StrCat(s2.num_timesteps()).c_str() : "-", s2.accuracy_target(),
                Short(v1::PlanSource_Name(m.plan().source()), "PLAN_SOURCE_").c_str(),
                static_cast<long long>(m.plan().version()),
                m.plan().entries_size());
  }
  return 0;
}

int Get(Stub& stub, const Args& args) {
  if (!CheckFlags(args, {"model"})) return 2;
  absl::StatusOr<std::string> model = RequireModel(args);
  if (!model.ok()) return FailUsage(model.status());
  grpc::ClientContext ctx;
  SetDeadline(args, &ctx, 10000);
  v1::GetModelRequest req;
  req.set_name(*model);
  v1::GetModelResponse resp;
  grpc::Status s = stub.GetModel(&ctx, req, &resp);
  if (!s.ok()) return FailGrpc(s);
  PrintJson(resp.model());
  return 0;
}

int Delete(Stub& stub, const Args& args) {
  if (!CheckFlags(args, {"model"})) return 2;
  absl::StatusOr<std::string> model = RequireModel(args);
  if (!model.ok()) return FailUsage(model.status());
  grpc::ClientContext ctx;
  SetDeadline(args, &ctx, 10000);
  v1::DeleteModelRequest req;
  req.set_name(*model);
  v1::DeleteModelResponse resp;
  grpc::Status s = stub.DeleteModel(&ctx, req, &resp);
  if (!s.ok()) return FailGrpc(s);
  std::printf("deleted %s\n", model->c_str());
  return 0;
}

int GetPlan(Stub& stub, const Args& args) {
  if (!CheckFlags(args, {"model", "json"})) return 2;
  absl::StatusOr<std::string> model = RequireModel(args);
  if (!model.ok()) return FailUsage(model.status());
  grpc::ClientContext ctx;
  SetDeadline(args, &ctx, 10000);
  v1::GetPlanRequest req;
  req.set_model(*model);
  v1::GetPlanResponse resp;
  grpc::Status s = stub.GetPlan(&ctx, req, &resp);
  if (!s.ok()) return FailGrpc(s);
  if (args.Flag("json")) {
    PrintJson(resp.plan());
  } else {
    PrintPlan(*model, resp.plan());
  }
  return 0;
}

absl::StatusOr<v1::IndexRange> ParseRange(absl::string_view text) {
  std::vector<std::string> parts = absl::StrSplit(text, '-');
  int first = 0, last = 0;
  if (parts.size() > 2 || !absl::SimpleAtoi(parts[0], &first) ||
      !absl::SimpleAtoi(parts.size() == 2 ? parts[1] : parts[0], &last)) {
    return absl::InvalidArgumentError(absl::StrCat("bad range '", std::string(text), "' (want N or A-B)"));
  }
  v1::IndexRange r;
  r.set_first(first);
  r.set_last(last);
  return r;
}

// "0-11:int8_qk_fp8_pv,12-15@0-9:unquantized": layers[@timesteps]:recipe, comma separated.
absl::StatusOr<v1::Plan> ParseEntries(const std::string& text) {
  v1::Plan plan;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    std::vector<std::string> kv = absl::StrSplit(item, ':');
    if (kv.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat("--entries: '", std::string(item), "' is not layers[@steps]:recipe"));
    }
    std::vector<std::string> where = absl::StrSplit(kv[0], '@');
    v1::PlanEntry* e = plan.add_entries();
    absl::StatusOr<v1::IndexRange> layers = ParseRange(where[0]);
    if (!layers.ok()) return layers.status();
    *e->mutable_layers() = *layers;
    if (where.size() == 2) {
      absl::StatusOr<v1::IndexRange> steps = ParseRange(where[1]);
      if (!steps.ok()) return steps.status();
      *e->mutable_timesteps() = *steps;
    }
    absl::StatusOr<v1::Recipe> recipe = WireRecipe(kv[1]);
    if (!recipe.ok()) return recipe.status();
    e->set_recipe(*recipe);
  }
  return plan;
}

int SetPlan(Stub& stub, const Args& args) {
  if (!CheckFlags(args, {"model", "entries", "plan_file", "expected_version", "accuracy_target", "json"})) return 2;
  absl::StatusOr<std::string> model = RequireModel(args);
  if (!model.ok()) return FailUsage(model.status());
  v1::SetPlanRequest req;
  req.set_model(*model);
  if (args.Has("plan_file")) {
    std::ifstream in(args.Str("plan_file", ""));
    if (!in) return FailUsage(absl::NotFoundError("cannot read --plan_file"));
    std::stringstream ss;
    ss << in.rdbuf();
    auto st = google::protobuf::util::JsonStringToMessage(ss.str(), req.mutable_plan());
    if (!st.ok()) return FailUsage(absl::InvalidArgumentError(absl::StrCat("--plan_file: ", st.ToString())));
  } else if (args.Has("entries")) {
    absl::StatusOr<v1::Plan> plan = ParseEntries(args.Str("entries", ""));
    if (!plan.ok()) return FailUsage(plan.status());
    *req.mutable_plan() = *plan;
  } else {
    return FailUsage(absl::InvalidArgumentError("set-plan needs --entries or --plan_file"));
  }
  if (args.Has("accuracy_target")) {
    absl::StatusOr<double> t = args.Double("accuracy_target", 0.0);
    if (!t.ok()) return FailUsage(t.status());
    req.mutable_plan()->set_accuracy_target(*t);
  }
  if (args.Has("expected_version")) {
    absl::StatusOr<int64_t> v = args.Int("expected_version", 0);
    if (!v.ok()) return FailUsage(v.status());
    req.set_expected_version(*v);
  }
  grpc::ClientContext ctx;
  SetDeadline(args, &ctx, 10000);
  v1::SetPlanResponse resp;
  grpc::Status s = stub.SetPlan(&ctx, req, &resp);
  if (!s.ok()) return FailGrpc(s);
  if (args.Flag("json")) {
    PrintJson(resp.plan());
  } else {
    PrintPlan(*model, resp.plan());
  }
  return 0;
}

void FillTensor(const std::vector<uint8_t>& bytes, int64_t tokens, int heads, int dim, v1::Tensor* t) {
  t->set_dtype(v1::DTYPE_FP16);
  t->add_shape(tokens);
  t->add_shape(heads);
  t->add_shape(dim);
  t->set_data(bytes.data(), bytes.size());
}

absl::StatusOr<std::vector<uint8_t>> ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Builds the sample messages (without the header fields) from files or synthetic data.
absl::StatusOr<std::vector<v1::CalibrationSample>> BuildSamples(const Args& args, const v1::ModelSpec& spec) {
  std::vector<v1::CalibrationSample> out;
  absl::StatusOr<int64_t> tokens = args.Int("tokens", 256);
  if (!tokens.ok()) return tokens.status();
  if (args.Has("q_file")) {
    std::vector<std::string> qf = absl::StrSplit(args.Str("q_file", ""), ',');
    std::vector<std::string> kf = absl::StrSplit(args.Str("k_file", ""), ',');
    std::vector<std::string> vf = absl::StrSplit(args.Str("v_file", ""), ',');
    absl::StatusOr<std::vector<int>> layers = IntList(args, "sample_layers");
    absl::StatusOr<std::vector<int>> steps = IntList(args, "sample_timesteps");
    if (!layers.ok()) return layers.status();
    if (!steps.ok()) return steps.status();
    if (kf.size() != qf.size() || vf.size() != qf.size() || layers->size() != qf.size() ||
        (!steps->empty() && steps->size() != qf.size())) {
      return absl::InvalidArgumentError(
          "--q_file, --k_file, --v_file, --sample_layers (and --sample_timesteps) need the same count");
    }
    for (size_t i = 0; i < qf.size(); ++i) {
      v1::CalibrationSample s;
      s.set_layer((*layers)[i]);
      if (!steps->empty()) s.set_timestep((*steps)[i]);
      for (auto [path, heads, tensor] : {std::tuple{qf[i], spec.q_heads(), s.mutable_q()},
                                         std::tuple{kf[i], spec.kv_heads(), s.mutable_k()},
                                         std::tuple{vf[i], spec.kv_heads(), s.mutable_v()}}) {
        absl::StatusOr<std::vector<uint8_t>> bytes = ReadBytes(path);
        if (!bytes.ok()) return bytes.status();
        FillTensor(*bytes, *tokens, heads, spec.head_dim(), tensor);
      }
      out.push_back(std::move(s));
    }
    return out;
  }
  absl::StatusOr<std::vector<int>> layers = IntList(args, "layers");
  absl::StatusOr<std::vector<int>> steps = IntList(args, "timesteps");
  absl::StatusOr<int64_t> per_cell = args.Int("samples", 2);
  absl::StatusOr<int64_t> seed = args.Int("seed", 1);
  if (!layers.ok() || !steps.ok() || !per_cell.ok() || !seed.ok()) {
    return absl::InvalidArgumentError("bad --layers / --timesteps / --samples / --seed");
  }
  if (layers->empty()) {
    for (int l = 0; l < spec.num_layers(); ++l) layers->push_back(l);
  }
  if (steps->empty() && spec.has_num_timesteps()) {
    // First, middle and last step: where diffusion attention statistics differ most.
    const int t = spec.num_timesteps();
    *steps = t >= 3 ? std::vector<int>{0, t / 2, t - 1} : std::vector<int>{0};
  }
  std::vector<double> gains;
  for (absl::string_view g : absl::StrSplit(args.Str("outlier_gain", "1"), ',')) {
    double v = 0;
    if (!absl::SimpleAtod(g, &v) || v <= 0) return absl::InvalidArgumentError("--outlier_gain: positive numbers");
    gains.push_back(v);
  }
  const std::vector<int> step_list = steps->empty() ? std::vector<int>{-1} : *steps;
  for (size_t li = 0; li < layers->size(); ++li) {
    for (int step : step_list) {
      for (int64_t n = 0; n < *per_cell; ++n) {
        sage::OutlierSampleSpec os;
        os.tokens = static_cast<int>(*tokens);
        os.q_heads = spec.q_heads();
        os.kv_heads = spec.kv_heads();
        os.head_dim = spec.head_dim();
        // One gain per listed layer (the last one repeats).
        os.k_outlier_gain = static_cast<float>(gains[std::min(li, gains.size() - 1)]);
        os.seed = static_cast<uint64_t>(*seed) * 1000003u + (*layers)[li] * 1009u + (step + 1) * 31u + n;
        sage::OutlierSample sample(os);
        v1::CalibrationSample s;
        s.set_layer((*layers)[li]);
        if (step >= 0) s.set_timestep(step);
        FillTensor(sample.q_bytes(), os.tokens, os.q_heads, os.head_dim, s.mutable_q());
        FillTensor(sample.k_bytes(), os.tokens, os.kv_heads, os.head_dim, s.mutable_k());
        FillTensor(sample.v_bytes(), os.tokens, os.kv_heads, os.head_dim, s.mutable_v());
        out.push_back(std::move(s));
      }
    }
  }
  return out;
}

int Calibrate(Stub& stub, const Args& args) {
  if (!CheckFlags(args, {"model", "dry_run", "accuracy_target", "candidates", "kv_storages", "json", "layers", "timesteps", "outlier_gain",
                         "samples", "tokens", "seed", "q_file", "k_file", "v_file", "sample_layers",
                         "sample_timesteps"})) {
    return 2;
  }
  absl::StatusOr<std::string> model = RequireModel(args);
  if (!model.ok()) return FailUsage(model.status());
  v1::GetModelResponse info;
  {
    grpc::ClientContext ctx;
    SetDeadline(args, &ctx, 10000);
    v1::GetModelRequest req;
    req.set_name(*model);
    grpc::Status s = stub.GetModel(&ctx, req, &info);
    if (!s.ok()) return FailGrpc(s);
  }
  absl::StatusOr<std::vector<v1::CalibrationSample>> samples = BuildSamples(args, info.model().spec());
  if (!samples.ok()) return FailUsage(samples.status());

  v1::CalibrateRequest header;
  header.set_model(*model);
  header.set_dry_run(args.Flag("dry_run"));
  if (args.Has("accuracy_target")) {
    absl::StatusOr<double> t = args.Double("accuracy_target", 0.0);
    if (!t.ok()) return FailUsage(t.status());
    header.set_accuracy_target(*t);
  }
  for (absl::string_view name : absl::StrSplit(args.Str("candidates", ""), ',', absl::SkipEmpty())) {
    absl::StatusOr<v1::Recipe> r = WireRecipe(name);
    if (!r.ok()) return FailUsage(r.status());
    header.add_candidates(*r);
  }
  // The session KV storages scored per layer (models without timesteps), by their wire names.
  for (absl::string_view name : absl::StrSplit(args.Str("kv_storages", ""), ',', absl::SkipEmpty())) {
    v1::KvStorage storage;
    if (!v1::KvStorage_Parse(std::string(name), &storage) || storage == v1::KV_STORAGE_UNSPECIFIED) {
      return FailUsage(absl::InvalidArgumentError(
          absl::StrCat("--kv_storages: '", std::string(name), "' (KV_STORAGE_16BIT, KV_STORAGE_INT8_K_FP8_V, KV_STORAGE_INT4_K_FP8_V)")));
    }
    header.add_kv_storage_candidates(storage);
  }
  grpc::ClientContext ctx;
  SetDeadline(args, &ctx, 600000);
  v1::CalibrateResponse resp;
  std::unique_ptr<grpc::ClientWriter<v1::CalibrateRequest>> writer = stub.Calibrate(&ctx, &resp);
  for (size_t i = 0; i < samples->size(); ++i) {
    v1::CalibrateRequest req = i == 0 ? header : v1::CalibrateRequest();
    *req.mutable_sample() = std::move((*samples)[i]);
    if (!writer->Write(req)) break;  // The server ended the call; Finish() says why.
  }
  if (samples->empty()) writer->Write(header);
  writer->WritesDone();
  grpc::Status s = writer->Finish();
  if (!s.ok()) return FailGrpc(s);
  if (args.Flag("json")) {
    PrintJson(resp);
  } else {
    std::printf("%s%s\n", resp.report().c_str(),
                resp.stored() ? absl::StrCat("stored as plan version ", resp.plan().version()).c_str()
                              : "dry run: nothing stored");
  }
  return 0;
}

}  // namespace

int RunRegistry(const std::string& verb, const Args& args) {
  auto client = Connect(args);
  if (!client.ok()) return FailUsage(client.status());  // Connection flags (TLS files, deadline)
  std::unique_ptr<Stub> stub = v1::RegistryService::NewStub((*client)->channel());
  if (verb == "register") return Register(*stub, args);
  if (verb == "list") return List(*stub, args);
  if (verb == "get") return Get(*stub, args);
  if (verb == "delete") return Delete(*stub, args);
  if (verb == "get-plan") return GetPlan(*stub, args);
  if (verb == "set-plan") return SetPlan(*stub, args);
  if (verb == "calibrate") return Calibrate(*stub, args);
  std::fprintf(stderr, "sagectl registry: unknown verb '%s' (register, list, get, delete, get-plan, set-plan, "
                       "calibrate)\n", verb.c_str());
  return 2;
}

}  // namespace sagectl
