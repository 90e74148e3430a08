#include "server/registry/registry_json.h"

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/reference/recipe_names.h"
#include "nlohmann/json.hpp"

namespace sage::registry {
namespace {

// Insertion-ordered so the file reads top-down in the order written here.
using Json = nlohmann::ordered_json;

constexpr std::string_view kChecksumPrefix = "fnv1a64:";

// FNV-1a 64: not cryptographic (the file is not a security boundary), just a cheap, dependency-free
// detector of bytes that changed without the JSON breaking.
uint64_t Fnv1a64(std::string_view bytes) {
  constexpr uint64_t kOffsetBasis = 0xcbf29ce484222325ULL;
  constexpr uint64_t kPrime = 0x100000001b3ULL;
  uint64_t h = kOffsetBasis;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= kPrime;
  }
  return h;
}

std::string Checksum(const Json& models) {
  return absl::StrCat(std::string(kChecksumPrefix), absl::StrFormat("%016x", Fnv1a64(models.dump())));
}

Json EncodeRange(const Range& r) { return Json::array({r.first, r.last}); }

Json EncodeConfig(const RecipeConfig& c) {
  Json j = Json::object();
  j["qk"] = QkTypeName(c.qk);
  j["granularity"] = GranularityName(c.granularity);
  j["qk_smoothing"] = QkSmoothingName(c.qk_smoothing);
  j["pv"] = PvTypeName(c.pv);
  j["v_smoothing"] = VSmoothingName(c.v_smoothing);
  j["accumulation"] = AccumulationName(c.accumulation);
  return j;
}

Json EncodePlan(const Plan& p) {
  Json j = Json::object();
  j["version"] = p.version;
  j["source"] = PlanSourceName(p.source);
  j["accuracy_target"] = p.accuracy_target;
  j["created_at"] = FormatTimestamp(p.created_at);
  j["sample_count"] = p.sample_count;
  j["calibrated_on"] = Json{{"backend", p.calibrated_on.backend},
                            {"device", p.calibrated_on.device},
                            {"architecture", p.calibrated_on.architecture}};
  Json entries = Json::array();
  for (const PlanEntry& e : p.entries) {
    Json je = Json::object();
    je["layers"] = EncodeRange(e.layers);
    if (e.timesteps.has_value()) je["timesteps"] = EncodeRange(*e.timesteps);
    je["recipe"] = RecipeName(e.recipe);
    je["config"] = EncodeConfig(e.config);
    entries.push_back(std::move(je));
  }
  j["entries"] = std::move(entries);
  if (!p.kv_storages.empty()) {
    Json kv = Json::array();
    for (const KvStorageEntry& e : p.kv_storages) {
      kv.push_back(Json{{"layers", EncodeRange(e.layers)}, {"storage", KvStorageName(e.storage)}});
    }
    j["kv_storages"] = std::move(kv);
  }
  return j;
}

Json EncodeModel(const ModelRecord& r) {
  Json j = Json::object();
  j["num_layers"] = r.spec.num_layers;
  j["q_heads"] = r.spec.q_heads;
  j["kv_heads"] = r.spec.kv_heads;
  j["head_dim"] = r.spec.head_dim;
  if (r.spec.num_timesteps.has_value()) j["num_timesteps"] = *r.spec.num_timesteps;
  j["accuracy_target"] = r.spec.accuracy_target;
  j["created_at"] = FormatTimestamp(r.created_at);
  j["updated_at"] = FormatTimestamp(r.updated_at);
  if (r.plan.has_value()) j["plan"] = EncodePlan(*r.plan);
  return j;
}

// Path-aware accessors: every structural error names the JSON path ("models.m1.plan.entries[2]").
class Reader {
 public:
  Reader(const Json& j, std::string path) : j_(j), path_(std::move(path)) {}

  absl::Status Error(std::string_view what) const {
    return absl::DataLossError(absl::StrCat(path_, ": ", std::string(what)));
  }
  Reader Child(const std::string& key) const { return Reader(j_.at(key), absl::StrCat(path_, ".", key)); }
  bool Has(const std::string& key) const { return j_.is_object() && j_.contains(key); }

  absl::Status RequireObject() const { return j_.is_object() ? absl::OkStatus() : Error("expected an object"); }

  absl::StatusOr<Reader> Field(const std::string& key) const {
    if (!j_.is_object()) return Error("expected an object");
    if (!j_.contains(key)) return Error(absl::StrCat("missing field \"", key, "\""));
    return Child(key);
  }
  absl::StatusOr<int64_t> Int(const std::string& key) const {
    absl::StatusOr<Reader> f = Field(key);
    if (!f.ok()) return f.status();
    if (!f->j_.is_number_integer()) return f->Error("expected an integer");
    return f->j_.get<int64_t>();
  }
  absl::StatusOr<int> Int32(const std::string& key) const {
    absl::StatusOr<int64_t> v = Int(key);
    if (!v.ok()) return v.status();
    if (*v < INT32_MIN || *v > INT32_MAX) return Child(key).Error("integer out of range");
    return static_cast<int>(*v);
  }
  absl::StatusOr<double> Double(const std::string& key) const {
    absl::StatusOr<Reader> f = Field(key);
    if (!f.ok()) return f.status();
    if (!f->j_.is_number()) return f->Error("expected a number");
    return f->j_.get<double>();
  }
  absl::StatusOr<std::string> String(const std::string& key) const {
    absl::StatusOr<Reader> f = Field(key);
    if (!f.ok()) return f.status();
    if (!f->j_.is_string()) return f->Error("expected a string");
    return f->j_.get<std::string>();
  }
  absl::StatusOr<absl::Time> Time(const std::string& key) const {
    absl::StatusOr<std::string> s = String(key);
    if (!s.ok()) return s.status();
    absl::Time t;
    std::string err;
    if (!absl::ParseTime("%Y-%m-%dT%H:%M:%SZ", *s, absl::UTCTimeZone(), &t, &err)) {
      return Child(key).Error(absl::StrCat("bad timestamp '", *s, "': ", err));
    }
    return t;
  }
  absl::StatusOr<Range> RangeField(const std::string& key) const {
    absl::StatusOr<Reader> f = Field(key);
    if (!f.ok()) return f.status();
    const Json& a = f->j_;
    if (!a.is_array() || a.size() != 2 || !a[0].is_number_integer() || !a[1].is_number_integer()) {
      return f->Error("expected [first, last] (two integers)");
    }
    return Range{a[0].get<int>(), a[1].get<int>()};
  }
  // Converts an error of a parse helper (INVALID_ARGUMENT) into this file's DATA_LOSS at `key`.
  template <typename T>
  absl::StatusOr<T> Named(const std::string& key, absl::StatusOr<T> (*parse)(std::string_view)) const {
    absl::StatusOr<std::string> s = String(key);
    if (!s.ok()) return s.status();
    absl::StatusOr<T> v = parse(*s);
    if (!v.ok()) return Child(key).Error(std::string(v.status().message()));
    return v;
  }

  const Json& json() const { return j_; }
  const std::string& path() const { return path_; }

 private:
  const Json& j_;
  std::string path_;
};

#define SAGE_ASSIGN_OR_RETURN(lhs, expr) \
  auto lhs##_or = (expr);                \
  if (!lhs##_or.ok()) return lhs##_or.status(); \
  auto lhs = *std::move(lhs##_or)

absl::StatusOr<RecipeConfig> DecodeConfig(const Reader& r) {
  if (absl::Status s = r.RequireObject(); !s.ok()) return s;
  RecipeConfig c;
  SAGE_ASSIGN_OR_RETURN(qk, r.Named<QkType>("qk", ParseQkType));
  SAGE_ASSIGN_OR_RETURN(gran, r.Named<QuantGranularity>("granularity", ParseGranularity));
  SAGE_ASSIGN_OR_RETURN(qks, r.Named<QkSmoothing>("qk_smoothing", ParseQkSmoothing));
  SAGE_ASSIGN_OR_RETURN(pv, r.Named<PvType>("pv", ParsePvType));
  SAGE_ASSIGN_OR_RETURN(vs, r.Named<VSmoothing>("v_smoothing", ParseVSmoothing));
  SAGE_ASSIGN_OR_RETURN(acc, r.Named<PvAccumulation>("accumulation", ParseAccumulation));
  c.qk = qk;
  c.granularity = gran;
  c.qk_smoothing = qks;
  c.pv = pv;
  c.v_smoothing = vs;
  c.accumulation = acc;
  return c;
}

absl::StatusOr<Plan> DecodePlan(const Reader& r) {
  if (absl::Status s = r.RequireObject(); !s.ok()) return s;
  Plan p;
  SAGE_ASSIGN_OR_RETURN(version, r.Int("version"));
  SAGE_ASSIGN_OR_RETURN(source, r.Named<PlanSource>("source", ParsePlanSource));
  SAGE_ASSIGN_OR_RETURN(target, r.Double("accuracy_target"));
  SAGE_ASSIGN_OR_RETURN(created, r.Time("created_at"));
  SAGE_ASSIGN_OR_RETURN(samples, r.Int32("sample_count"));
  SAGE_ASSIGN_OR_RETURN(hw, r.Field("calibrated_on"));
  SAGE_ASSIGN_OR_RETURN(backend, hw.String("backend"));
  SAGE_ASSIGN_OR_RETURN(device, hw.String("device"));
  SAGE_ASSIGN_OR_RETURN(arch, hw.String("architecture"));
  p.version = version;
  p.source = source;
  p.accuracy_target = target;
  p.created_at = created;
  p.sample_count = samples;
  p.calibrated_on = HardwareDescription{backend, device, arch};
  SAGE_ASSIGN_OR_RETURN(entries, r.Field("entries"));
  if (!entries.json().is_array()) return entries.Error("expected an array");
  for (size_t i = 0; i < entries.json().size(); ++i) {
    Reader e(entries.json()[i], absl::StrCat(entries.path(), "[", i, "]"));
    if (absl::Status s = e.RequireObject(); !s.ok()) return s;
    PlanEntry entry;
    SAGE_ASSIGN_OR_RETURN(layers, e.RangeField("layers"));
    entry.layers = layers;
    if (e.Has("timesteps")) {
      SAGE_ASSIGN_OR_RETURN(steps, e.RangeField("timesteps"));
      entry.timesteps = steps;
    }
    SAGE_ASSIGN_OR_RETURN(recipe, e.Named<Recipe>("recipe", ParseRecipe));
    entry.recipe = recipe;
    if (e.Has("config")) {
      SAGE_ASSIGN_OR_RETURN(config, DecodeConfig(e.Child("config")));
      entry.config = config;
    } else {
      entry.config = ConfigFor(recipe);  // Hand-written files may leave the defaults implicit.
    }
    p.entries.push_back(entry);
  }
  if (r.Has("kv_storages")) {  // absent in files written before per-layer KV storage
    const Reader kv = r.Child("kv_storages");
    if (!kv.json().is_array()) return kv.Error("expected an array");
    for (size_t i = 0; i < kv.json().size(); ++i) {
      Reader e(kv.json()[i], absl::StrCat(kv.path(), "[", i, "]"));
      if (absl::Status s = e.RequireObject(); !s.ok()) return s;
      SAGE_ASSIGN_OR_RETURN(layers, e.RangeField("layers"));
      SAGE_ASSIGN_OR_RETURN(storage, e.Named<KvStorage>("storage", ParseKvStorage));
      p.kv_storages.push_back(KvStorageEntry{layers, storage});
    }
  }
  return p;
}

absl::StatusOr<ModelRecord> DecodeModel(const std::string& name, const Reader& r) {
  if (absl::Status s = r.RequireObject(); !s.ok()) return s;
  ModelRecord m;
  m.spec.name = name;
  SAGE_ASSIGN_OR_RETURN(layers, r.Int32("num_layers"));
  SAGE_ASSIGN_OR_RETURN(qh, r.Int32("q_heads"));
  SAGE_ASSIGN_OR_RETURN(kvh, r.Int32("kv_heads"));
  SAGE_ASSIGN_OR_RETURN(hd, r.Int32("head_dim"));
  SAGE_ASSIGN_OR_RETURN(target, r.Double("accuracy_target"));
  SAGE_ASSIGN_OR_RETURN(created, r.Time("created_at"));
  SAGE_ASSIGN_OR_RETURN(updated, r.Time("updated_at"));
  m.spec.num_layers = layers;
  m.spec.q_heads = qh;
  m.spec.kv_heads = kvh;
  m.spec.head_dim = hd;
  m.spec.accuracy_target = target;
  m.created_at = created;
  m.updated_at = updated;
  if (r.Has("num_timesteps")) {
    SAGE_ASSIGN_OR_RETURN(steps, r.Int32("num_timesteps"));
    m.spec.num_timesteps = steps;
  }
  if (r.Has("plan")) {
    SAGE_ASSIGN_OR_RETURN(plan, DecodePlan(r.Child("plan")));
    m.plan = plan;
  }
  return m;
}

#undef SAGE_ASSIGN_OR_RETURN

}  // namespace

std::string EncodeRegistry(const RegistrySnapshot& snapshot, absl::Time written_at) {
  Json models = Json::object();
  for (const auto& [name, record] : snapshot.models) models[name] = EncodeModel(record);
  Json root = Json::object();
  root["format"] = kRegistryFormatTag;
  root["schema_version"] = kRegistrySchemaVersion;
  root["generation"] = snapshot.generation;
  root["written_at"] = FormatTimestamp(written_at);
  root["checksum"] = Checksum(models);
  root["models"] = std::move(models);
  return root.dump(2) + "\n";
}

absl::StatusOr<RegistrySnapshot> DecodeRegistry(std::string_view text) {
  if (text.empty()) return absl::DataLossError("file is empty (a truncated write?)");
  Json root;
  try {
    root = Json::parse(text);
  } catch (const Json::parse_error& e) {
    // nlohmann reports the byte after the last one it could use; at or past the end means the
    // document simply stops, which is what an interrupted non-atomic write leaves behind.
    if (e.byte >= text.size()) {
      return absl::DataLossError(absl::StrCat("truncated: the JSON document ends early (",
                                              text.size(), " bytes, incomplete at the end)"));
    }
    return absl::DataLossError(absl::StrCat("not valid JSON at byte ", e.byte, ": ", e.what()));
  } catch (const Json::exception& e) {
    // The parser's other refusals, e.g. out_of_range 406 for a number no double holds ("1e999").
    return absl::DataLossError(absl::StrCat("not valid JSON: ", e.what()));
  }
  Reader r(root, "$");
  if (absl::Status s = r.RequireObject(); !s.ok()) return s;
  absl::StatusOr<std::string> format = r.String("format");
  if (!format.ok()) return format.status();
  if (*format != kRegistryFormatTag) {
    return absl::DataLossError(absl::StrCat("$.format: '", *format, "' is not a sageserve registry file"));
  }
  absl::StatusOr<int64_t> version = r.Int("schema_version");
  if (!version.ok()) return version.status();
  if (*version != kRegistrySchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "unsupported schema_version ", *version, " (this build reads version ", kRegistrySchemaVersion,
        *version > kRegistrySchemaVersion ? "; the file was written by a newer sageserve)" : ")"));
  }
  RegistrySnapshot snap;
  absl::StatusOr<int64_t> generation = r.Int("generation");
  if (!generation.ok()) return generation.status();
  snap.generation = *generation;
  absl::StatusOr<Reader> models = r.Field("models");
  if (!models.ok()) return models.status();
  if (absl::Status s = models->RequireObject(); !s.ok()) return s;
  if (r.Has("checksum")) {
    absl::StatusOr<std::string> stored = r.String("checksum");
    if (!stored.ok()) return stored.status();
    const std::string actual = Checksum(models->json());
    if (*stored != actual) {
      return absl::DataLossError(absl::StrCat(
          "checksum mismatch: file says ", *stored, ", content hashes to ", actual,
          " (corrupt, or edited by hand: after a deliberate edit delete the \"checksum\" field)"));
    }
  }
  for (auto it = models->json().begin(); it != models->json().end(); ++it) {
    absl::StatusOr<ModelRecord> m = DecodeModel(it.key(), models->Child(it.key()));
    if (!m.ok()) return m.status();
    snap.models.emplace(it.key(), *std::move(m));
  }
  return snap;
}

}  // namespace sage::registry
