// Randomly damaged requests against a real server on the CPU engine: every one gets a status (never
// a crash, hang or dropped call), OK answers have the shape that was asked for, and the server keeps
// serving valid work afterwards. Deterministic seeds, so a failure reproduces.
#include <cmath>
#include <limits>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/server/test_support.h"

namespace sage::testing {
namespace {
namespace v1 = ::sageserve::v1;

// One random damage to a valid request. Each kind targets a field the decoder or the validator
// must check; values include negative, zero, huge and out-of-enum ones.
void Damage(std::mt19937* rng, v1::AttendRequest* r) {
  auto pick = [&](int n) { return static_cast<int>((*rng)() % static_cast<unsigned>(n)); };
  const int64_t weird[] = {-1, 0, 1, 3, 63, 64, 65, 127, 128, 129, 1 << 20, std::numeric_limits<int32_t>::max(),
                           std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min()};
  auto weird_value = [&] { return weird[pick(static_cast<int>(std::size(weird)))]; };
  v1::Tensor* tensors[] = {r->mutable_q(), r->mutable_k(), r->mutable_v()};
  v1::Tensor* t = tensors[pick(3)];
  switch (pick(12)) {
    case 0:
      if (t->shape_size() > 0) t->set_shape(pick(t->shape_size()), weird_value());
      break;
    case 1:
      t->add_shape(weird_value());
      break;
    case 2:
      t->set_dtype(static_cast<v1::DType>(pick(6)));
      break;
    case 3: {  // Truncate or extend the bytes.
      std::string* d = t->mutable_data();
      if (pick(2) == 0) {
        d->resize(d->size() * static_cast<size_t>(pick(100)) / 100);
      } else {
        d->append(static_cast<size_t>(1 + pick(64)), '\x7f');
      }
      break;
    }
    case 4: {  // cu_seqlens: random length and contents.
      auto* cu = pick(2) ? r->mutable_cu_seqlens_q() : r->mutable_cu_seqlens_k();
      cu->Clear();
      const int n = pick(5);
      for (int i = 0; i < n; ++i) cu->Add(static_cast<int32_t>(weird_value()));
      break;
    }
    case 5: {
      const float scales[] = {0.0f, -1.0f, std::numeric_limits<float>::infinity(),
                              std::numeric_limits<float>::quiet_NaN(), 1e-30f, 1e30f};
      r->set_softmax_scale(scales[pick(static_cast<int>(std::size(scales)))]);
      break;
    }
    case 6:
      r->set_mask(static_cast<v1::MaskMode>(pick(5)));
      break;
    case 7:
      r->set_output_dtype(static_cast<v1::DType>(pick(6)));
      break;
    case 8:
      r->set_recipe(static_cast<v1::Recipe>(pick(7)));
      break;
    case 9:  // A model nobody registered, or a layer out of range.
      r->mutable_layer_key()->set_model(pick(2) ? "no-such-model" : "");
      r->mutable_layer_key()->set_layer(static_cast<int32_t>(weird_value()));
      break;
    case 10: {  // Non-finite values inside the data: not validated (a full pass), must not crash.
      std::string* d = t->mutable_data();
      for (size_t i = 0; i + 1 < d->size(); i += 2 + static_cast<size_t>(pick(512)) * 2) {
        (*d)[i] = '\x00';
        (*d)[i + 1] = '\x7c';  // fp16 +inf, bf16 a large finite value
      }
      break;
    }
    default:
      r->clear_q();
      break;
  }
}

TEST(RequestFuzz, EveryDamagedRequestGetsAStatusAndTheServerKeepsServing) {
  RunningServer s;
  ASSERT_NO_FATAL_FAILURE(StartServer(TestServerOptions(), nullptr, &s));
  std::mt19937 rng(20261125);
  int ok = 0;
  int rejected = 0;
  for (int i = 0; i < 300; ++i) {
    ProblemShape shape;
    shape.cu_q = {0, 1 + static_cast<int32_t>(rng() % 40), 50};
    shape.cu_k = {0, 1 + static_cast<int32_t>(rng() % 70), 90};
    shape.head_dim = (rng() % 2) ? 64 : 128;
    shape.dtype = (rng() % 2) ? v1::DTYPE_FP16 : v1::DTYPE_BF16;
    shape.seed = static_cast<uint32_t>(i);
    v1::AttendRequest request = MakeRequest(shape, absl::StrCat("fuzz-", i));
    const int damages = 1 + static_cast<int>(rng() % 3);
    for (int d = 0; d < damages; ++d) Damage(&rng, &request);

    absl::StatusOr<v1::AttendResponse> r = s.client->Attend(request);
    if (r.ok()) {
      ++ok;
      // What came back has the shape of what was asked: [total_q, Hq, D].
      ASSERT_EQ(r->o().shape_size(), 3) << i;
      EXPECT_EQ(r->o().shape(0), request.q().shape(0)) << i;
      EXPECT_EQ(r->o().shape(1), request.q().shape(1)) << i;
      EXPECT_EQ(r->o().shape(2), request.q().shape(2)) << i;
      continue;
    }
    ++rejected;
    const absl::StatusCode code = r.status().code();
    EXPECT_TRUE(code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kResourceExhausted ||
                code == absl::StatusCode::kNotFound)
        << "request " << i << ": " << r.status();
    EXPECT_FALSE(r.status().message().empty()) << i;
  }
  EXPECT_GT(rejected, 200);  // The damages are real: nearly all must be refused.

  // Still healthy, and a valid request still computes.
  absl::StatusOr<sageserve::HealthStatus> health = s.client->CheckHealth();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, sageserve::HealthStatus::kServing);
  absl::StatusOr<v1::AttendResponse> good = s.client->Attend(MakeRequest(ProblemShape{}, "after-fuzz"));
  ASSERT_TRUE(good.ok()) << good.status();
  std::printf("fuzz: %d accepted, %d refused\n", ok, rejected);
}

}  // namespace
}  // namespace sage::testing
