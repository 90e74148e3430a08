// sageserve_soak: a bounded soak load against a running server (scripts/soak.sh starts the server,
// runs this, and watches the server's memory and descriptors).
//
// --clients threads each loop for --seconds, picking one kind of work per iteration:
//   unary     Attend with the tensors in the message: random small shapes, every recipe and the
//             default, fp16/bf16 in, fp16/bf16/fp32 out, masks, varlen batches, LSE.
//   stream    one AttendStream carrying 2-6 such requests (sometimes one malformed, which must fail
//             alone with INVALID_ARGUMENT, and sometimes one through shared memory).
//   shm       Attend with inputs and/or outputs in the thread's registered POSIX shared memory.
//   shm_cycle create an object, register it, one Attend through it, unregister, destroy.
//   cancel    a unary call cancelled mid-flight (TryCancel), or a stream cancelled with requests
//             in flight: each call is OK or CANCELLED.
//   deadline  a unary call or stream with a deadline too short for it: OK or DEADLINE_EXCEEDED.
//   bad       a malformed request (wrong shape, unknown recipe, bad dtype, unknown region, unknown
//             model, bytes that are not protobuf, ...) or control call: its exact code, and the
//             message must name the field.
//   control   GetServerInfo, GetSharedMemoryStatus, health.
// Successful answers are checked: dtype, shape, every value finite (shared-memory outputs are
// poisoned with NaN first, so this proves the server wrote them), and one in --verify_every against
// an fp64 attention computed here (cosine of O, LSE error) with a loose bound per recipe.
// Anything else is an unexpected error. The report counts per kind ok / expected / unexpected, and
// the exit status is 0 only when nothing unexpected happened.
//
// Client code only: the client library, the generated stubs and gRPC; no server source.
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <future>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "grpcpp/client_context.h"
#include "grpcpp/impl/client_unary_call.h"
#include "grpcpp/support/byte_buffer.h"
#include "sageserve/client/client.h"
#include "sageserve/client/shared_memory.h"
#include "sageserve/client/tensor.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "Server address (loopback: shared memory needs the same host)");
ABSL_FLAG(int, clients, 32, "Concurrent client threads");
ABSL_FLAG(int, seconds, 60, "How long each thread keeps starting new work");
ABSL_FLAG(int, connections, 4, "TCP connections the client spreads its calls over");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the random choices (thread i uses seed + i)");
ABSL_FLAG(bool, shared_memory, true, "Use shared memory (the server must run with --allow_shared_memory)");
ABSL_FLAG(int, verify_every, 4, "Check one in N successful answers against an fp64 oracle (0 = never)");
ABSL_FLAG(int, progress_s, 30, "Print a progress line every N seconds (0 = never)");
ABSL_FLAG(int, max_logged, 30, "Unexpected errors printed in full (the rest are only counted)");
ABSL_FLAG(std::string, mix, "unary=28,stream=16,shm=14,shm_cycle=3,cancel=12,deadline=12,bad=12,control=3",
          "Relative weight of each kind of work");

namespace {

namespace v1 = ::sageserve::v1;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------------------------
// Kinds and outcomes.

enum Kind { kUnary, kStream, kShm, kShmCycle, kCancel, kDeadline, kBad, kControl, kNumKinds };
constexpr std::array<const char*, kNumKinds> kKindNames = {"unary",  "stream",   "shm", "shm_cycle",
                                                           "cancel", "deadline", "bad", "control"};

struct KindStats {
  std::atomic<int64_t> ok{0}, expected{0}, unexpected{0};
};

class Stats {
 public:
  void Ok(Kind k) { kinds_[k].ok.fetch_add(1, std::memory_order_relaxed); }
  void Expected(Kind k, absl::StatusCode code) {
    kinds_[k].expected.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(mu_);
    ++expected_codes_[k][code];
  }
  void Unexpected(Kind k, const std::string& what) {
    kinds_[k].unexpected.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard<std::mutex> lock(mu_);
    if (++logged_ <= max_logged_) std::fprintf(stderr, "UNEXPECTED [%s] %s\n", kKindNames[k], what.c_str());
  }
  void Cosine(v1::Recipe recipe, double cosine, double lse_err) {
    std::lock_guard<std::mutex> lock(mu_);
    Worst& w = worst_[recipe];
    ++w.checked;
    w.cosine = std::min(w.cosine, cosine);
    w.lse_err = std::max(w.lse_err, lse_err);
  }
  int64_t Total(bool include_ok, bool include_expected, bool include_unexpected) const {
    int64_t n = 0;
    for (const KindStats& k : kinds_) {
      if (include_ok) n += k.ok.load();
      if (include_expected) n += k.expected.load();
      if (include_unexpected) n += k.unexpected.load();
    }
    return n;
  }
  void set_max_logged(int n) { max_logged_ = n; }

  // Machine-readable lines (scripts/soak.sh reads them) and a readable table.
  void Print(double wall_s) const {
    std::lock_guard<std::mutex> lock(mu_);
    std::printf("%-10s %10s %10s %10s %10s  expected codes\n", "kind", "calls", "ok", "expected", "unexpected");
    for (int k = 0; k < kNumKinds; ++k) {
      const KindStats& s = kinds_[k];
      std::string codes;
      auto it = expected_codes_.find(static_cast<Kind>(k));
      if (it != expected_codes_.end()) {
        for (const auto& [code, n] : it->second) {
          absl::StrAppend(&codes, codes.empty() ? "" : " ", absl::StatusCodeToString(code), "=", n);
        }
      }
      const int64_t calls = s.ok + s.expected + s.unexpected;
      std::printf("%-10s %10lld %10lld %10lld %10lld  %s\n", kKindNames[k], static_cast<long long>(calls),
                  static_cast<long long>(s.ok.load()), static_cast<long long>(s.expected.load()),
                  static_cast<long long>(s.unexpected.load()), codes.c_str());
    }
    for (const auto& [recipe, w] : worst_) {
      std::printf("oracle: %-24s %7lld answers checked, worst cosine %.6f, worst |LSE error| %.5f\n",
                  v1::Recipe_Name(recipe).c_str(), static_cast<long long>(w.checked), w.cosine, w.lse_err);
    }
    for (int k = 0; k < kNumKinds; ++k) {
      const KindStats& s = kinds_[k];
      std::printf("SOAK_KIND kind=%s calls=%lld ok=%lld expected=%lld unexpected=%lld\n", kKindNames[k],
                  static_cast<long long>(s.ok + s.expected + s.unexpected), static_cast<long long>(s.ok.load()),
                  static_cast<long long>(s.expected.load()), static_cast<long long>(s.unexpected.load()));
    }
    const int64_t total = Total(true, true, true);
    std::printf("SOAK_TOTAL calls=%lld ok=%lld expected=%lld unexpected=%lld seconds=%.1f calls_per_s=%.1f\n",
                static_cast<long long>(total), static_cast<long long>(Total(true, false, false)),
                static_cast<long long>(Total(false, true, false)), static_cast<long long>(Total(false, false, true)),
                wall_s, wall_s > 0 ? static_cast<double>(total) / wall_s : 0.0);
  }

 private:
  struct Worst {
    int64_t checked = 0;
    double cosine = 1.0;
    double lse_err = 0.0;
  };
  std::array<KindStats, kNumKinds> kinds_;
  mutable std::mutex mu_;
  std::map<Kind, std::map<absl::StatusCode, int64_t>> expected_codes_;
  std::map<v1::Recipe, Worst> worst_;
  int logged_ = 0;
  int max_logged_ = 30;
};

std::string StatusText(const absl::Status& s) { return s.ToString(absl::StatusToStringMode::kWithNoExtraData); }

// ---------------------------------------------------------------------------------------------
// Problems: random small attention batches built from a shared pool of N(0, 1) values.

constexpr size_t kPoolSize = size_t{1} << 20;

struct Pools {
  std::vector<uint16_t> fp16, bf16;
};

const Pools& SharedPools() {
  static const Pools* pools = [] {
    auto* p = new Pools;
    std::mt19937_64 rng(20261207);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    p->fp16.resize(kPoolSize);
    p->bf16.resize(kPoolSize);
    for (size_t i = 0; i < kPoolSize; ++i) {
      const float x = normal(rng);
      p->fp16[i] = sageserve::FloatToFp16(x);
      p->bf16[i] = sageserve::FloatToBf16(x);
    }
    return p;
  }();
  return *pools;
}

struct Problem {
  v1::DType dtype = v1::DTYPE_FP16;
  v1::DType out_dtype = v1::DTYPE_FP16;  // what O comes back as
  bool explicit_out = false;             // output_dtype set in the request
  v1::Recipe recipe = v1::RECIPE_UNSPECIFIED;
  int hq = 1, hkv = 1, d = 64;
  std::vector<int> lq, lk;  // per sequence
  bool explicit_cu = false;
  bool causal = false;
  bool lse = false;
  std::vector<uint16_t> q, k, v;
  int64_t total_q() const { return q.size() / (static_cast<size_t>(hq) * d); }
  int64_t total_k() const { return k.size() / (static_cast<size_t>(hkv) * d); }
  size_t o_bytes() const { return static_cast<size_t>(total_q()) * hq * d * sageserve::DTypeSize(out_dtype); }
  size_t lse_bytes() const { return lse ? static_cast<size_t>(total_q()) * hq * sizeof(float) : 0; }
};

class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  int Int(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(gen_); }  // inclusive
  bool Chance(double p) { return std::bernoulli_distribution(p)(gen_); }
  template <typename T>
  const T& Pick(const std::vector<T>& v) {
    return v[static_cast<size_t>(Int(0, static_cast<int>(v.size()) - 1))];
  }
  std::mt19937_64& gen() { return gen_; }

 private:
  std::mt19937_64 gen_;
};

void FillFromPool(Rng& rng, v1::DType dtype, size_t n, std::vector<uint16_t>* out) {
  const std::vector<uint16_t>& pool = dtype == v1::DTYPE_BF16 ? SharedPools().bf16 : SharedPools().fp16;
  const size_t at = static_cast<size_t>(rng.Int(0, static_cast<int>(kPoolSize - n)));
  out->assign(pool.begin() + static_cast<std::ptrdiff_t>(at), pool.begin() + static_cast<std::ptrdiff_t>(at + n));
}

// Small shapes, every option. Largest: 3 sequences x 48 queries x 8 heads x 128, keys 3 x 64 x 4 heads.
Problem RandomProblem(Rng& rng) {
  Problem p;
  p.dtype = rng.Chance(0.7) ? v1::DTYPE_FP16 : v1::DTYPE_BF16;
  p.recipe = rng.Pick(std::vector<v1::Recipe>{v1::RECIPE_UNSPECIFIED, v1::RECIPE_INT4_QK_FP8_PV,
                                              v1::RECIPE_INT8_QK_FP8_PV, v1::RECIPE_INT8_QK_FP16_PV,
                                              v1::RECIPE_UNQUANTIZED});
  p.hkv = rng.Pick(std::vector<int>{1, 2, 4});
  p.hq = p.hkv * rng.Int(1, 2);
  p.d = rng.Chance(0.5) ? 64 : 128;
  p.causal = rng.Chance(0.4);
  p.lse = rng.Chance(0.4);
  const int batch = rng.Int(1, 3);
  for (int b = 0; b < batch; ++b) {
    const int lq = rng.Int(1, 48);
    // Causal masks are aligned bottom-right: with at least as many keys as queries every row sees one.
    const int lk = p.causal ? rng.Int(lq, 64) : rng.Int(1, 64);
    p.lq.push_back(lq);
    p.lk.push_back(lk);
  }
  p.explicit_cu = batch > 1 || rng.Chance(0.5);
  switch (rng.Int(0, 3)) {
    case 0: p.explicit_out = false; p.out_dtype = p.dtype; break;
    case 1: p.explicit_out = true; p.out_dtype = v1::DTYPE_FP32; break;
    case 2: p.explicit_out = true; p.out_dtype = v1::DTYPE_FP16; break;
    default: p.explicit_out = true; p.out_dtype = v1::DTYPE_BF16; break;
  }
  int64_t tq = 0, tk = 0;
  for (size_t b = 0; b < p.lq.size(); ++b) {
    tq += p.lq[b];
    tk += p.lk[b];
  }
  FillFromPool(rng, p.dtype, static_cast<size_t>(tq) * p.hq * p.d, &p.q);
  FillFromPool(rng, p.dtype, static_cast<size_t>(tk) * p.hkv * p.d, &p.k);
  FillFromPool(rng, p.dtype, static_cast<size_t>(tk) * p.hkv * p.d, &p.v);
  return p;
}

// One sequence big enough to be in flight for a few milliseconds on the CPU engine (cancel, deadline).
Problem MediumProblem(Rng& rng) {
  Problem p;
  p.recipe = rng.Pick(std::vector<v1::Recipe>{v1::RECIPE_INT8_QK_FP8_PV, v1::RECIPE_UNQUANTIZED});
  p.hq = 4;
  p.hkv = 4;
  p.d = 128;
  p.lq = {rng.Int(96, 160)};
  p.lk = {rng.Int(192, 320)};
  FillFromPool(rng, p.dtype, static_cast<size_t>(p.lq[0]) * p.hq * p.d, &p.q);
  FillFromPool(rng, p.dtype, static_cast<size_t>(p.lk[0]) * p.hkv * p.d, &p.k);
  FillFromPool(rng, p.dtype, static_cast<size_t>(p.lk[0]) * p.hkv * p.d, &p.v);
  return p;
}

std::string Bytes(const std::vector<uint16_t>& bits) {
  return std::string(reinterpret_cast<const char*>(bits.data()), bits.size() * sizeof(uint16_t));
}

void SetTensor(v1::DType dtype, int64_t tokens, int heads, int d, const std::vector<uint16_t>& bits, v1::Tensor* t) {
  t->set_dtype(dtype);
  t->add_shape(tokens);
  t->add_shape(heads);
  t->add_shape(d);
  t->set_data(Bytes(bits));
}

// The request with every tensor in the message.
v1::AttendRequest ToRequest(const Problem& p, std::string id) {
  v1::AttendRequest r;
  r.set_request_id(std::move(id));
  SetTensor(p.dtype, p.total_q(), p.hq, p.d, p.q, r.mutable_q());
  SetTensor(p.dtype, p.total_k(), p.hkv, p.d, p.k, r.mutable_k());
  SetTensor(p.dtype, p.total_k(), p.hkv, p.d, p.v, r.mutable_v());
  if (p.explicit_cu) {
    int cq = 0, ck = 0;
    r.add_cu_seqlens_q(0);
    r.add_cu_seqlens_k(0);
    for (size_t b = 0; b < p.lq.size(); ++b) {
      r.add_cu_seqlens_q(cq += p.lq[b]);
      r.add_cu_seqlens_k(ck += p.lk[b]);
    }
  }
  if (p.causal) r.set_mask(v1::MASK_MODE_CAUSAL);
  r.set_return_lse(p.lse);
  if (p.explicit_out) r.set_output_dtype(p.out_dtype);
  r.set_recipe(p.recipe);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Checking answers.

float Decode16(v1::DType dtype, uint16_t bits) {
  return dtype == v1::DTYPE_BF16 ? sageserve::Bf16ToFloat(bits) : sageserve::Fp16ToFloat(bits);
}

// Exact attention in fp64: O [total_q, hq, d] and LSE [total_q, hq].
void Oracle(const Problem& p, std::vector<double>* o, std::vector<double>* lse) {
  const int64_t tq = p.total_q();
  o->assign(static_cast<size_t>(tq) * p.hq * p.d, 0.0);
  lse->assign(static_cast<size_t>(tq) * p.hq, 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(p.d));
  const int group = p.hq / p.hkv;
  std::vector<double> kf(p.k.size()), vf(p.v.size());
  for (size_t i = 0; i < p.k.size(); ++i) kf[i] = Decode16(p.dtype, p.k[i]);
  for (size_t i = 0; i < p.v.size(); ++i) vf[i] = Decode16(p.dtype, p.v[i]);
  std::vector<double> qrow(p.d), s;
  int64_t q0 = 0, k0 = 0;
  for (size_t b = 0; b < p.lq.size(); ++b) {
    const int lq = p.lq[b], lk = p.lk[b];
    for (int i = 0; i < lq; ++i) {
      const int last = p.causal ? std::min(lk - 1, i + (lk - lq)) : lk - 1;
      for (int h = 0; h < p.hq; ++h) {
        const int hk = h / group;
        const size_t qoff = (static_cast<size_t>(q0 + i) * p.hq + h) * p.d;
        for (int c = 0; c < p.d; ++c) qrow[c] = Decode16(p.dtype, p.q[qoff + c]);
        s.assign(static_cast<size_t>(last + 1), 0.0);
        double m = -INFINITY;
        for (int j = 0; j <= last; ++j) {
          const double* kr = &kf[(static_cast<size_t>(k0 + j) * p.hkv + hk) * p.d];
          double dot = 0;
          for (int c = 0; c < p.d; ++c) dot += qrow[c] * kr[c];
          s[j] = dot * scale;
          m = std::max(m, s[j]);
        }
        double l = 0;
        double* orow = &(*o)[qoff];
        for (int j = 0; j <= last; ++j) {
          const double e = std::exp(s[j] - m);
          l += e;
          const double* vr = &vf[(static_cast<size_t>(k0 + j) * p.hkv + hk) * p.d];
          for (int c = 0; c < p.d; ++c) orow[c] += e * vr[c];
        }
        for (int c = 0; c < p.d; ++c) orow[c] /= l;
        (*lse)[static_cast<size_t>(q0 + i) * p.hq + h] = m + std::log(l);
      }
    }
    q0 += lq;
    k0 += lk;
  }
}

// Loose bounds per recipe for these small Gaussian problems (docs/ACCURACY.md: INT4 is the fragile one).
double MinCosine(v1::Recipe r) {
  switch (r) {
    case v1::RECIPE_UNQUANTIZED: return 0.999;
    case v1::RECIPE_INT8_QK_FP16_PV: return 0.99;
    case v1::RECIPE_INT8_QK_FP8_PV: return 0.98;
    default: return 0.85;  // INT4
  }
}
// INT4 scores are off by up to ~0.5 on these shapes (a row with one visible key has LSE = its score).
double MaxLseError(v1::Recipe r) { return r == v1::RECIPE_INT4_QK_FP8_PV ? 1.5 : 0.1; }

bool SameShape(const v1::Tensor& t, std::initializer_list<int64_t> want) {
  return std::equal(t.shape().begin(), t.shape().end(), want.begin(), want.end());
}

// o and lse carry their bytes in `data` (shared-memory answers are resolved by the caller first).
absl::Status CheckAnswer(const Problem& p, const v1::AttendResponse& r, const v1::Tensor& o, const v1::Tensor* lse,
                         bool oracle, Stats& stats) {
  const int64_t tq = p.total_q();
  if (o.dtype() != p.out_dtype || !SameShape(o, {tq, p.hq, p.d})) {
    return absl::InternalError(absl::StrCat("O is ", v1::DType_Name(o.dtype()), " of shape [",
                                            absl::StrJoin(o.shape(), ","), "], want ", v1::DType_Name(p.out_dtype),
                                            " [", tq, ",", p.hq, ",", p.d, "]"));
  }
  if (p.recipe != v1::RECIPE_UNSPECIFIED && r.recipe() != p.recipe) {
    return absl::InternalError(absl::StrCat("asked for ", v1::Recipe_Name(p.recipe), ", ran ",
                                            v1::Recipe_Name(r.recipe())));
  }
  absl::StatusOr<std::vector<float>> of = sageserve::TensorToFloat(o);
  if (!of.ok()) return of.status();
  if (of->size() != static_cast<size_t>(tq) * p.hq * p.d) return absl::InternalError("O has the wrong byte count");
  for (size_t i = 0; i < of->size(); ++i) {
    if (!std::isfinite((*of)[i])) return absl::InternalError(absl::StrCat("O[", i, "] is not finite"));
  }
  std::vector<float> lf;
  if (p.lse) {
    if (lse == nullptr || lse->dtype() != v1::DTYPE_FP32 || !SameShape(*lse, {tq, p.hq})) {
      return absl::InternalError("LSE missing or of the wrong dtype or shape");
    }
    absl::StatusOr<std::vector<float>> l = sageserve::TensorToFloat(*lse);
    if (!l.ok()) return l.status();
    lf = std::move(*l);
    if (lf.size() != static_cast<size_t>(tq) * p.hq) return absl::InternalError("LSE has the wrong byte count");
    for (size_t i = 0; i < lf.size(); ++i) {
      if (!std::isfinite(lf[i])) return absl::InternalError(absl::StrCat("LSE[", i, "] is not finite"));
    }
  } else if (lse != nullptr && (!lse->data().empty() || lse->shape_size() != 0)) {
    return absl::InternalError("LSE returned though not asked for");
  }
  if (!oracle) return absl::OkStatus();
  std::vector<double> eo, el;
  Oracle(p, &eo, &el);
  double dot = 0, na = 0, nb = 0;
  for (size_t i = 0; i < eo.size(); ++i) {
    dot += eo[i] * (*of)[i];
    na += eo[i] * eo[i];
    nb += static_cast<double>((*of)[i]) * (*of)[i];
  }
  const double cosine = (na == 0 || nb == 0) ? (na == nb ? 1.0 : 0.0) : dot / std::sqrt(na * nb);
  double lse_err = 0;
  for (size_t i = 0; i < lf.size(); ++i) lse_err = std::max(lse_err, std::abs(lf[i] - el[i]));
  stats.Cosine(r.recipe(), cosine, lse_err);
  if (cosine < MinCosine(r.recipe()) || lse_err > MaxLseError(r.recipe())) {
    return absl::InternalError(absl::StrFormat("%s: cosine %.6f, max |LSE error| %.5f against fp64 (total_q %d in %d "
                                               "sequences, heads %d/%d, D %d%s)",
                                               v1::Recipe_Name(r.recipe()), cosine, lse_err, tq, p.lq.size(), p.hq,
                                               p.hkv, p.d, p.causal ? " causal" : ""));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Shared memory: each thread owns one registered object with two slots (a unary call and one
// streamed request can each use one). A slot holds one problem's q, k, v, O and LSE.

constexpr size_t kSlotBytes = size_t{3} << 19;  // 1.5 MiB: the largest small problem needs ~1.3 MB
constexpr size_t kSlots = 2;
constexpr uint64_t kAlign = 256;

uint64_t AlignUp(uint64_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

struct SlotLayout {
  uint64_t q = 0, k = 0, v = 0, o = 0, lse = 0, end = 0;
};

SlotLayout LayoutFor(const Problem& p, uint64_t base) {
  SlotLayout l;
  uint64_t at = base;
  auto place = [&](uint64_t bytes) {
    const uint64_t here = at;
    at = AlignUp(at + std::max<uint64_t>(bytes, 1));
    return here;
  };
  l.q = place(p.q.size() * 2);
  l.k = place(p.k.size() * 2);
  l.v = place(p.v.size() * 2);
  l.o = place(p.o_bytes());
  l.lse = place(p.lse_bytes());
  l.end = at;
  return l;
}

enum class ShmUse { kAll, kInputsOnly, kOutputsOnly };

// Writes the problem into `slot` of `mem` (region `region`), poisons the outputs with 0xFF (NaN in
// every float format), and turns `r` (from ToRequest) into the reference form `use` asks for.
void PlaceInShm(const Problem& p, sageserve::SystemSharedMemory& mem, const std::string& region, size_t slot,
                ShmUse use, v1::AttendRequest* r, SlotLayout* layout) {
  *layout = LayoutFor(p, slot * kSlotBytes);
  std::byte* base = mem.data();
  if (use != ShmUse::kOutputsOnly) {
    std::memcpy(base + layout->q, p.q.data(), p.q.size() * 2);
    std::memcpy(base + layout->k, p.k.data(), p.k.size() * 2);
    std::memcpy(base + layout->v, p.v.data(), p.v.size() * 2);
    for (auto [t, off, n] : {std::tuple{r->mutable_q(), layout->q, p.q.size() * 2},
                             std::tuple{r->mutable_k(), layout->k, p.k.size() * 2},
                             std::tuple{r->mutable_v(), layout->v, p.v.size() * 2}}) {
      t->clear_data();
      *t->mutable_shared_memory() = sageserve::SharedMemoryRange(region, off, n);
    }
  }
  if (use != ShmUse::kInputsOnly) {
    std::memset(base + layout->o, 0xFF, p.o_bytes());
    *r->mutable_o_output() = sageserve::SharedMemoryRange(region, layout->o, p.o_bytes());
    if (p.lse) {
      std::memset(base + layout->lse, 0xFF, p.lse_bytes());
      *r->mutable_lse_output() = sageserve::SharedMemoryRange(region, layout->lse, p.lse_bytes());
    }
  }
}

// The answer's output tensor with its bytes read from the region, after checking it names the
// range that was asked for and carries no data.
absl::StatusOr<v1::Tensor> ResolveOutput(const v1::Tensor& got, const v1::SharedMemoryRef& asked,
                                         const sageserve::SystemSharedMemory& mem, const char* what) {
  if (!got.data().empty()) return absl::InternalError(absl::StrCat(what, " came back in the message, not the region"));
  const v1::SharedMemoryRef& ref = got.shared_memory();
  if (ref.region() != asked.region() || ref.offset() != asked.offset() || ref.byte_size() != asked.byte_size()) {
    return absl::InternalError(absl::StrCat(what, " names another range than the one asked for"));
  }
  v1::Tensor t = got;
  t.clear_shared_memory();
  t.set_data(std::string(reinterpret_cast<const char*>(mem.data() + asked.offset()), asked.byte_size()));
  return t;
}

absl::Status CheckShmAnswer(const Problem& p, const v1::AttendRequest& req, const v1::AttendResponse& r,
                            const sageserve::SystemSharedMemory& mem, bool oracle, Stats& stats) {
  if (!req.has_o_output()) return CheckAnswer(p, r, r.o(), r.has_lse() ? &r.lse() : nullptr, oracle, stats);
  absl::StatusOr<v1::Tensor> o = ResolveOutput(r.o(), req.o_output(), mem, "O");
  if (!o.ok()) return o.status();
  std::optional<v1::Tensor> lse;
  if (p.lse) {
    absl::StatusOr<v1::Tensor> l = ResolveOutput(r.lse(), req.lse_output(), mem, "LSE");
    if (!l.ok()) return l.status();
    lse = std::move(*l);
  }
  return CheckAnswer(p, r, *o, lse ? &*lse : nullptr, oracle, stats);
}

// ---------------------------------------------------------------------------------------------
// Malformed requests and their exact outcome.

struct BadCase {
  const char* name;
  absl::StatusCode code;
  const char* needle;  // must appear in the message
};

// ---------------------------------------------------------------------------------------------
// One client thread.

struct Shared {
  sageserve::Client* client = nullptr;
  std::unique_ptr<v1::AttentionService::Stub> stub;  // raw stub for contexts (cancel, deadline)
  Stats stats;
  std::atomic<bool> stop{false};
  std::vector<int> weights;
  bool shm = true;
  int verify_every = 4;
};

class Worker {
 public:
  Worker(Shared& s, int index, uint64_t seed) : s_(s), index_(index), rng_(seed) {}

  absl::Status Setup() {
    if (!s_.shm) return absl::OkStatus();
    absl::StatusOr<std::unique_ptr<sageserve::SystemSharedMemory>> mem =
        sageserve::SystemSharedMemory::Create(sageserve::SystemSharedMemory::UniqueKey("soak"), kSlots * kSlotBytes);
    if (!mem.ok()) return mem.status();
    mem_ = std::move(*mem);
    region_ = absl::StrCat("soak-", getpid(), "-", index_);
    return s_.client->RegisterSystemSharedMemory(region_, mem_->key(), 0, mem_->size());
  }

  absl::Status Teardown() {
    if (!mem_) return absl::OkStatus();
    absl::StatusOr<std::vector<std::string>> gone = s_.client->UnregisterSharedMemory(region_);
    mem_.reset();
    return gone.status();
  }

  void Run() {
    std::discrete_distribution<int> pick(s_.weights.begin(), s_.weights.end());
    while (!s_.stop.load(std::memory_order_relaxed)) {
      const Kind k = static_cast<Kind>(pick(rng_.gen()));
      switch (k) {
        case kUnary: Unary(); break;
        case kStream: Stream(); break;
        case kShm: Shm(); break;
        case kShmCycle: ShmCycle(); break;
        case kCancel: rng_.Chance(0.5) ? CancelUnary() : CancelStream(); break;
        case kDeadline: rng_.Chance(0.5) ? DeadlineUnary() : DeadlineStream(); break;
        case kBad: Bad(); break;
        case kControl: Control(); break;
        default: break;
      }
    }
  }

 private:
  std::string Id(const char* what) { return absl::StrCat(what, "-", index_, "-", ++counter_); }
  bool Verify() { return s_.verify_every > 0 && rng_.Int(1, s_.verify_every) == 1; }

  void Judge(Kind k, const absl::Status& st, const std::string& what) {
    if (st.ok()) {
      s_.stats.Ok(k);
    } else {
      s_.stats.Unexpected(k, absl::StrCat(what, ": ", StatusText(st)));
    }
  }

  void Unary() {
    const Problem p = RandomProblem(rng_);
    const v1::AttendRequest req = ToRequest(p, Id("unary"));
    absl::StatusOr<v1::AttendResponse> r = s_.client->Attend(req);
    if (!r.ok()) return Judge(kUnary, r.status(), req.request_id());
    Judge(kUnary, CheckAnswer(p, *r, r->o(), r->has_lse() ? &r->lse() : nullptr, Verify(), s_.stats),
          req.request_id());
  }

  // 2-6 requests on one stream; sometimes one malformed (fails alone), sometimes one in shared memory.
  void Stream() {
    const int n = rng_.Int(2, 6);
    const int bad_at = rng_.Chance(0.25) ? rng_.Int(0, n - 1) : -1;
    const int shm_at = (s_.shm && rng_.Chance(0.3)) ? rng_.Int(0, n - 1) : -1;
    std::unique_ptr<sageserve::StreamSession> session = s_.client->OpenStream();
    struct Sent {
      Problem p;
      v1::AttendRequest req;
      bool bad = false;
      bool shm = false;
      std::future<absl::StatusOr<v1::AttendResponse>> result;
    };
    std::vector<Sent> sent(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      Sent& x = sent[i];
      x.p = RandomProblem(rng_);
      x.req = ToRequest(x.p, Id("stream"));
      if (i == bad_at) {
        x.bad = true;
        x.req.mutable_q()->set_shape(2, 96);  // head dim the server does not run
      } else if (i == shm_at) {
        x.shm = true;
        SlotLayout layout;
        PlaceInShm(x.p, *mem_, region_, 1, ShmUse::kAll, &x.req, &layout);
      }
      x.result = session->Send(x.req);
    }
    for (Sent& x : sent) {
      absl::StatusOr<v1::AttendResponse> r = x.result.get();
      if (x.bad) {
        if (!r.ok() && r.status().code() == absl::StatusCode::kInvalidArgument &&
            r.status().message().find("q.shape[2]") != std::string::npos) {
          s_.stats.Expected(kStream, r.status().code());
        } else {
          s_.stats.Unexpected(kStream, absl::StrCat(x.req.request_id(), " (bad head dim on a stream): ",
                                                    r.ok() ? "OK" : StatusText(r.status())));
        }
        continue;
      }
      if (!r.ok()) {
        Judge(kStream, r.status(), x.req.request_id());
        continue;
      }
      if (r->request_id() != x.req.request_id()) {
        s_.stats.Unexpected(kStream, absl::StrCat(x.req.request_id(), ": answered as ", r->request_id()));
        continue;
      }
      Judge(kStream,
            x.shm ? CheckShmAnswer(x.p, x.req, *r, *mem_, Verify(), s_.stats)
                  : CheckAnswer(x.p, *r, r->o(), r->has_lse() ? &r->lse() : nullptr, Verify(), s_.stats),
            x.req.request_id());
    }
    if (absl::Status closed = session->Close(); !closed.ok()) {
      s_.stats.Unexpected(kStream, absl::StrCat("stream close: ", StatusText(closed)));
    }
  }

  void Shm() {
    const Problem p = RandomProblem(rng_);
    v1::AttendRequest req = ToRequest(p, Id("shm"));
    const ShmUse use = rng_.Pick(std::vector<ShmUse>{ShmUse::kAll, ShmUse::kAll, ShmUse::kInputsOnly,
                                                     ShmUse::kOutputsOnly});
    SlotLayout layout;
    PlaceInShm(p, *mem_, region_, 0, use, &req, &layout);
    absl::StatusOr<v1::AttendResponse> r = s_.client->Attend(req);
    if (!r.ok()) return Judge(kShm, r.status(), req.request_id());
    Judge(kShm, CheckShmAnswer(p, req, *r, *mem_, Verify(), s_.stats), req.request_id());
  }

  // A region's whole life: the server maps it, serves from it, and unmaps it.
  void ShmCycle() {
    absl::StatusOr<std::unique_ptr<sageserve::SystemSharedMemory>> mem =
        sageserve::SystemSharedMemory::Create(sageserve::SystemSharedMemory::UniqueKey("soak-cycle"), kSlotBytes);
    if (!mem.ok()) return Judge(kShmCycle, mem.status(), "creating shared memory");
    const std::string region = absl::StrCat("cycle-", getpid(), "-", index_, "-", ++counter_);
    if (absl::Status st = s_.client->RegisterSystemSharedMemory(region, (*mem)->key(), 0, (*mem)->size()); !st.ok()) {
      return Judge(kShmCycle, st, "register " + region);
    }
    const Problem p = RandomProblem(rng_);
    v1::AttendRequest req = ToRequest(p, Id("cycle"));
    SlotLayout layout;
    PlaceInShm(p, **mem, region, 0, ShmUse::kAll, &req, &layout);
    absl::StatusOr<v1::AttendResponse> r = s_.client->Attend(req);
    absl::Status st = r.ok() ? CheckShmAnswer(p, req, *r, **mem, Verify(), s_.stats) : r.status();
    absl::StatusOr<std::vector<std::string>> gone = s_.client->UnregisterSharedMemory(region);
    if (st.ok() && !gone.ok()) st = gone.status();
    if (st.ok() && (gone->size() != 1 || (*gone)[0] != region)) {
      st = absl::InternalError("unregister did not name the region");
    }
    Judge(kShmCycle, st, req.request_id());
  }

  // OK (finished before the cancel) or CANCELLED; anything else is unexpected.
  void JudgeRace(Kind k, absl::StatusCode race_code, const Problem& p, const std::string& id,
                 const absl::StatusOr<v1::AttendResponse>& r) {
    if (r.ok()) return Judge(k, CheckAnswer(p, *r, r->o(), r->has_lse() ? &r->lse() : nullptr, false, s_.stats), id);
    if (r.status().code() == race_code) return s_.stats.Expected(k, race_code);
    s_.stats.Unexpected(k, absl::StrCat(id, ": ", StatusText(r.status())));
  }

  // Unary call through the raw stub with its own context, answered on a gRPC thread.
  std::future<absl::StatusOr<v1::AttendResponse>> StartUnary(grpc::ClientContext* ctx, const v1::AttendRequest& req) {
    auto promise = std::make_shared<std::promise<absl::StatusOr<v1::AttendResponse>>>();
    auto response = std::make_shared<v1::AttendResponse>();
    std::future<absl::StatusOr<v1::AttendResponse>> f = promise->get_future();
    s_.stub->async()->Attend(ctx, &req, response.get(), [promise, response](grpc::Status status) {
      if (status.ok()) {
        promise->set_value(std::move(*response));
      } else {
        promise->set_value(sageserve::FromGrpcStatus(status));
      }
    });
    return f;
  }

  void CancelUnary() {
    const Problem p = MediumProblem(rng_);
    const v1::AttendRequest req = ToRequest(p, Id("cancel"));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    std::future<absl::StatusOr<v1::AttendResponse>> f = StartUnary(&ctx, req);
    std::this_thread::sleep_for(std::chrono::microseconds(rng_.Int(0, 4000)));
    ctx.TryCancel();
    JudgeRace(kCancel, absl::StatusCode::kCancelled, p, req.request_id(), f.get());
  }

  void CancelStream() {
    std::unique_ptr<sageserve::StreamSession> session = s_.client->OpenStream();
    const int n = rng_.Int(2, 5);
    std::vector<std::pair<Problem, std::string>> problems;
    std::vector<std::future<absl::StatusOr<v1::AttendResponse>>> results;
    for (int i = 0; i < n; ++i) {
      Problem p = MediumProblem(rng_);
      v1::AttendRequest req = ToRequest(p, Id("cancel-stream"));
      problems.emplace_back(std::move(p), req.request_id());
      results.push_back(session->Send(std::move(req)));
    }
    std::this_thread::sleep_for(std::chrono::microseconds(rng_.Int(0, 6000)));
    session->Cancel();
    for (size_t i = 0; i < results.size(); ++i) {
      JudgeRace(kCancel, absl::StatusCode::kCancelled, problems[i].first, problems[i].second, results[i].get());
    }
    session.reset();  // waits for the stream to end
  }

  void DeadlineUnary() {
    const Problem p = MediumProblem(rng_);
    const v1::AttendRequest req = ToRequest(p, Id("deadline"));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::microseconds(rng_.Int(200, 20000)));
    JudgeRace(kDeadline, absl::StatusCode::kDeadlineExceeded, p, req.request_id(), StartUnary(&ctx, req).get());
  }

  void DeadlineStream() {
    sageserve::StreamOptions options;
    options.deadline = std::chrono::milliseconds(rng_.Int(1, 30));
    std::unique_ptr<sageserve::StreamSession> session = s_.client->OpenStream(options);
    const int n = rng_.Int(2, 4);
    std::vector<std::pair<Problem, std::string>> problems;
    std::vector<std::future<absl::StatusOr<v1::AttendResponse>>> results;
    for (int i = 0; i < n; ++i) {
      Problem p = MediumProblem(rng_);
      v1::AttendRequest req = ToRequest(p, Id("deadline-stream"));
      problems.emplace_back(std::move(p), req.request_id());
      results.push_back(session->Send(std::move(req)));
    }
    for (size_t i = 0; i < results.size(); ++i) {
      absl::StatusOr<v1::AttendResponse> r = results[i].get();
      // A thread descheduled past the deadline between two Sends finds the stream ending or ended:
      // the library refuses the send locally (FAILED_PRECONDITION, "stream is closing" once the
      // read has failed, "stream has ended: DEADLINE_EXCEEDED..." once it is done).
      if (!r.ok() && r.status().code() == absl::StatusCode::kFailedPrecondition &&
          (r.status().message() == "stream is closing" ||
           (r.status().message().find("stream has ended") != std::string::npos &&
            r.status().message().find("DEADLINE_EXCEEDED") != std::string::npos))) {
        s_.stats.Expected(kDeadline, r.status().code());
        continue;
      }
      JudgeRace(kDeadline, absl::StatusCode::kDeadlineExceeded, problems[i].first, problems[i].second, r);
    }
    // The stream's own status: OK if everything made it, DEADLINE_EXCEEDED otherwise.
    const absl::Status closed = session->Close();
    if (!closed.ok() && closed.code() != absl::StatusCode::kDeadlineExceeded) {
      s_.stats.Unexpected(kDeadline, absl::StrCat("deadline stream close: ", StatusText(closed)));
    }
  }

  void ExpectCode(const BadCase& c, const absl::Status& st) {
    if (st.code() == c.code && st.message().find(c.needle) != std::string::npos) {
      return s_.stats.Expected(kBad, st.code());
    }
    s_.stats.Unexpected(kBad, absl::StrCat(c.name, ": want ", absl::StatusCodeToString(c.code), " naming '", c.needle,
                                           "', got ", st.ok() ? "OK" : StatusText(st)));
  }

  void Bad() {
    using C = absl::StatusCode;
    const int which = rng_.Int(0, s_.shm ? 19 : 14);
    Problem p = RandomProblem(rng_);
    // Explicit cu_seqlens, so that the cases below can break them.
    p.explicit_cu = true;
    v1::AttendRequest r = ToRequest(p, Id("bad"));
    auto attend = [&](const BadCase& c) { ExpectCode(c, s_.client->Attend(r).status()); };
    switch (which) {
      case 0:
        r.mutable_q()->set_shape(2, 96);
        return attend({"head dim 96", C::kInvalidArgument, "q.shape[2]"});
      case 1:
        r.mutable_q()->mutable_data()->resize(r.q().data().size() / 2);
        return attend({"q bytes short", C::kInvalidArgument, "q.data"});
      case 2:
        r.set_recipe(static_cast<v1::Recipe>(17));
        return attend({"unknown recipe", C::kInvalidArgument, "recipe"});
      case 3:
        r.mutable_q()->set_dtype(static_cast<v1::DType>(42));
        return attend({"unknown dtype", C::kInvalidArgument, "q.dtype"});
      case 4:
        for (v1::Tensor* t : {r.mutable_q(), r.mutable_k(), r.mutable_v()}) {
          t->set_dtype(v1::DTYPE_FP32);
          t->mutable_data()->append(t->data());  // the right size for fp32
        }
        return attend({"fp32 inputs", C::kInvalidArgument, "q.dtype"});
      case 5:
        r.mutable_k()->set_dtype(r.q().dtype() == v1::DTYPE_FP16 ? v1::DTYPE_BF16 : v1::DTYPE_FP16);
        return attend({"k dtype differs", C::kInvalidArgument, "k.dtype"});
      case 6:
        // 3 k/v heads: no q head count here (1, 2, 4, 8) is a multiple of 3.
        for (v1::Tensor* t : {r.mutable_k(), r.mutable_v()}) {
          t->set_shape(1, 3);
          t->mutable_data()->resize(static_cast<size_t>(t->shape(0)) * 3 * t->shape(2) * 2);
        }
        return attend({"Hq not a multiple of Hkv", C::kInvalidArgument, "k.shape[1]"});
      case 7:
        r.set_cu_seqlens_k(r.cu_seqlens_k_size() - 1, r.cu_seqlens_k(r.cu_seqlens_k_size() - 1) + 1);
        return attend({"cu_seqlens_k past the total", C::kInvalidArgument, "cu_seqlens_k"});
      case 8:
        r.set_mask(static_cast<v1::MaskMode>(9));
        return attend({"unknown mask", C::kInvalidArgument, "mask"});
      case 9:
        r.set_softmax_scale(-1.0f);
        return attend({"negative scale", C::kInvalidArgument, "softmax_scale"});
      case 10:
        r.mutable_k()->set_shape(0, 2'000'000);  // over --max_tokens (1048576); checked before the bytes
        return attend({"too many tokens", C::kResourceExhausted, "k.shape[0]"});
      case 11:
        r.set_recipe(v1::RECIPE_UNSPECIFIED);
        r.mutable_layer_key()->set_model(absl::StrCat("no-such-model-", index_));
        r.mutable_layer_key()->set_layer(0);
        return attend({"unknown model", C::kNotFound, "not registered"});
      case 12: {
        // Bytes that are no AttendRequest at all.
        static const grpc::internal::RpcMethod method("/sageserve.v1.AttentionService/Attend",
                                                      grpc::internal::RpcMethod::NORMAL_RPC);
        const std::string valid = r.SerializeAsString();
        const std::string bytes = rng_.Chance(0.5) ? valid.substr(0, valid.size() / 2)
                                                   : std::string("\x12\xff\xff\x03\x08\x02", 6);
        grpc::Slice slice(bytes);
        grpc::ByteBuffer request(&slice, 1);
        grpc::ByteBuffer response;
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
        const grpc::Status status = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
            s_.client->channel().get(), method, &ctx, request, &response);
        return ExpectCode({"not a protobuf", C::kInvalidArgument, "malformed protobuf"},
                          sageserve::FromGrpcStatus(status));
      }
      case 13:
        r.clear_cu_seqlens_k();
        return attend({"cu_seqlens_k missing", C::kInvalidArgument, "cu_seqlens_k"});
      case 14:
        return ExpectCode({"unregister an unknown region", C::kNotFound, "never-registered"},
                          s_.client->UnregisterSharedMemory(absl::StrCat("never-registered-", index_)).status());
      // Shared memory.
      case 15: {
        SlotLayout layout;
        PlaceInShm(p, *mem_, region_, 0, ShmUse::kAll, &r, &layout);
        r.mutable_q()->mutable_shared_memory()->set_region(absl::StrCat("no-such-region-", index_));
        return attend({"unknown region", C::kNotFound, "q.shared_memory.region"});
      }
      case 16: {
        SlotLayout layout;
        PlaceInShm(p, *mem_, region_, 0, ShmUse::kAll, &r, &layout);
        r.mutable_k()->mutable_shared_memory()->set_byte_size(r.k().shared_memory().byte_size() + 2);
        return attend({"byte_size mismatch", C::kInvalidArgument, "k.shared_memory.byte_size"});
      }
      case 17: {
        SlotLayout layout;
        PlaceInShm(p, *mem_, region_, 0, ShmUse::kAll, &r, &layout);
        r.mutable_o_output()->set_offset(layout.q);  // O over q's bytes
        return attend({"output overlaps input", C::kInvalidArgument, "o_output: overlaps"});
      }
      case 18:
        return ExpectCode({"register a missing object", C::kNotFound, "/sage-soak-no-such-object"},
                          s_.client->RegisterSystemSharedMemory(absl::StrCat("missing-", index_),
                                                                "/sage-soak-no-such-object", 0, 4096));
      case 19:
        return ExpectCode({"register a taken name", C::kAlreadyExists, region_.c_str()},
                          s_.client->RegisterSystemSharedMemory(region_, mem_->key(), 0, 4096));
      default: return;
    }
  }

  void Control() {
    absl::Status st;
    switch (rng_.Int(0, 2)) {
      case 0: {
        absl::StatusOr<v1::GetServerInfoResponse> info = s_.client->GetServerInfo();
        st = info.status();
        if (st.ok() && info->backend().empty()) st = absl::InternalError("GetServerInfo names no backend");
        break;
      }
      case 1: {
        absl::StatusOr<sageserve::HealthStatus> h = s_.client->CheckHealth();
        st = h.status();
        if (st.ok() && *h != sageserve::HealthStatus::kServing) st = absl::InternalError("health is not SERVING");
        break;
      }
      default: {
        if (!s_.shm) return Control();
        absl::StatusOr<v1::GetSharedMemoryStatusResponse> status = s_.client->GetSharedMemoryStatus(region_);
        st = status.status();
        if (st.ok() && (status->regions_size() != 1 || status->regions(0).name() != region_)) {
          st = absl::InternalError("GetSharedMemoryStatus does not list this thread's region");
        }
        break;
      }
    }
    Judge(kControl, st, "control");
  }

  Shared& s_;
  const int index_;
  Rng rng_;
  uint64_t counter_ = 0;
  std::unique_ptr<sageserve::SystemSharedMemory> mem_;
  std::string region_;
};

absl::StatusOr<std::vector<int>> ParseMix(const std::string& text) {
  std::vector<int> w(kNumKinds, 0);
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    std::pair<std::string, std::string> kv = absl::StrSplit(part, absl::MaxSplits('=', 1));
    int value = 0;
    if (!absl::SimpleAtoi(kv.second, &value) || value < 0) {
      return absl::InvalidArgumentError(absl::StrCat("--mix: bad weight in '", part, "'"));
    }
    auto it = std::find(kKindNames.begin(), kKindNames.end(), kv.first);
    if (it == kKindNames.end()) return absl::InvalidArgumentError(absl::StrCat("--mix: unknown kind '", kv.first, "'"));
    w[static_cast<size_t>(it - kKindNames.begin())] = value;
  }
  if (std::all_of(w.begin(), w.end(), [](int x) { return x == 0; })) {
    return absl::InvalidArgumentError("--mix: every weight is 0");
  }
  return w;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "sageserve_soak --target=127.0.0.1:PORT [--clients=32] [--seconds=60]: a mixed load of good, cancelled, "
      "late and malformed calls; exit 0 only when every call ended as expected");
  absl::ParseCommandLine(argc, argv);
  const int clients = absl::GetFlag(FLAGS_clients);
  const int seconds = absl::GetFlag(FLAGS_seconds);
  if (clients < 1 || clients > 1024 || seconds < 1) {
    std::fprintf(stderr, "sageserve_soak: --clients must be in [1, 1024] and --seconds positive\n");
    return 2;
  }
  absl::StatusOr<std::vector<int>> mix = ParseMix(absl::GetFlag(FLAGS_mix));
  if (!mix.ok()) {
    std::fprintf(stderr, "sageserve_soak: %s\n", StatusText(mix.status()).c_str());
    return 2;
  }
  Shared shared;
  shared.shm = absl::GetFlag(FLAGS_shared_memory);
  shared.verify_every = absl::GetFlag(FLAGS_verify_every);
  shared.weights = *mix;
  if (!shared.shm) shared.weights[kShm] = shared.weights[kShmCycle] = 0;
  shared.stats.set_max_logged(absl::GetFlag(FLAGS_max_logged));

  sageserve::ClientOptions options;
  options.target = absl::GetFlag(FLAGS_target);
  options.connections = absl::GetFlag(FLAGS_connections);
  options.deadline = std::chrono::seconds(60);  // generous: the box is shared
  absl::StatusOr<std::unique_ptr<sageserve::Client>> client = sageserve::Client::Create(options);
  if (!client.ok()) {
    std::fprintf(stderr, "sageserve_soak: %s\n", StatusText(client.status()).c_str());
    return 2;
  }
  shared.client = client->get();
  shared.stub = v1::AttentionService::NewStub((*client)->channel());
  absl::StatusOr<v1::GetServerInfoResponse> info = (*client)->GetServerInfo();
  if (!info.ok()) {
    std::fprintf(stderr, "sageserve_soak: GetServerInfo: %s\n", StatusText(info.status()).c_str());
    return 1;
  }
  if (shared.shm && !info->shared_memory().enabled()) {
    std::fprintf(stderr, "sageserve_soak: the server runs without --allow_shared_memory (or pass "
                         "--shared_memory=false)\n");
    return 2;
  }
  SharedPools();
  std::printf("soak: %d clients for %d s against %s (backend %s, version %s), shared memory %s, mix %s\n", clients,
              seconds, options.target.c_str(), info->backend().c_str(), info->version().c_str(),
              shared.shm ? "on" : "off", absl::GetFlag(FLAGS_mix).c_str());
  std::fflush(stdout);

  std::vector<std::unique_ptr<Worker>> workers;
  int setup_failures = 0;
  for (int i = 0; i < clients; ++i) {
    workers.push_back(std::make_unique<Worker>(shared, i, absl::GetFlag(FLAGS_seed) + static_cast<uint64_t>(i)));
    if (absl::Status st = workers.back()->Setup(); !st.ok()) {
      std::fprintf(stderr, "sageserve_soak: client %d setup: %s\n", i, StatusText(st).c_str());
      ++setup_failures;
    }
  }
  if (setup_failures > 0) return 1;

  const Clock::time_point start = Clock::now();
  std::vector<std::thread> threads;
  for (auto& w : workers) threads.emplace_back([&w] { w->Run(); });
  {
    const int progress = absl::GetFlag(FLAGS_progress_s);
    const Clock::time_point end = start + std::chrono::seconds(seconds);
    Clock::time_point next = start + std::chrono::seconds(progress > 0 ? progress : seconds);
    while (Clock::now() < end) {
      std::this_thread::sleep_until(std::min(end, next));
      if (progress > 0 && Clock::now() >= next && Clock::now() < end) {
        const double t = std::chrono::duration<double>(Clock::now() - start).count();
        std::printf("soak: %6.0f s  %lld calls  %lld ok  %lld expected errors  %lld unexpected\n", t,
                    static_cast<long long>(shared.stats.Total(true, true, true)),
                    static_cast<long long>(shared.stats.Total(true, false, false)),
                    static_cast<long long>(shared.stats.Total(false, true, false)),
                    static_cast<long long>(shared.stats.Total(false, false, true)));
        std::fflush(stdout);
        next += std::chrono::seconds(progress);
      }
    }
  }
  shared.stop = true;
  for (std::thread& t : threads) t.join();
  const double wall_s = std::chrono::duration<double>(Clock::now() - start).count();

  int failures = 0;
  for (size_t i = 0; i < workers.size(); ++i) {
    if (absl::Status st = workers[i]->Teardown(); !st.ok()) {
      std::fprintf(stderr, "sageserve_soak: client %zu unregister: %s\n", i, StatusText(st).c_str());
      ++failures;
    }
  }
  // Nothing of ours may stay registered (the server holds a mapping per region).
  if (shared.shm) {
    absl::StatusOr<v1::GetSharedMemoryStatusResponse> left = (*client)->GetSharedMemoryStatus();
    if (!left.ok() || left->regions_size() != 0) {
      std::fprintf(stderr, "sageserve_soak: regions still registered after the run: %s\n",
                   left.ok() ? absl::StrCat(left->regions_size()).c_str() : StatusText(left.status()).c_str());
      ++failures;
    }
  }
  absl::StatusOr<sageserve::HealthStatus> health = (*client)->CheckHealth();
  const bool serving = health.ok() && *health == sageserve::HealthStatus::kServing;
  if (!serving) ++failures;

  shared.stats.Print(wall_s);
  std::printf("SOAK_END health=%s teardown_failures=%d\n", serving ? "SERVING" : "NOT_SERVING", failures);
  const int64_t unexpected = shared.stats.Total(false, false, true);
  std::printf("soak: %s\n", unexpected == 0 && failures == 0 ? "PASS" : "FAIL");
  return unexpected == 0 && failures == 0 ? 0 : 1;
}
