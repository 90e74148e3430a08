#include "server/metrics/metrics_registry.h"

#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace sage::metrics {
namespace {

TEST(Counter, CountsUpAndIgnoresNegativeAndNan) {
  Counter c;
  c.Increment();
  c.Increment(2.5);
  c.Increment(-10);
  c.Increment(std::nan(""));
  EXPECT_EQ(c.value(), 3.5);
}

TEST(Gauge, SetsAndAdds) {
  Gauge g;
  g.Set(7);
  g.Add(-2);
  EXPECT_EQ(g.value(), 5);
}

TEST(Histogram, BucketsUseLessOrEqualAndAreCumulative) {
  Histogram h({1.0, 2.0, 5.0});
  for (double v : {0.5, 1.0, 1.5, 2.0, 4.0, 9.0}) h.Observe(v);
  h.Observe(std::nan(""));
  const HistogramSnapshot s = h.Snapshot();
  EXPECT_EQ(s.cumulative, (std::vector<uint64_t>{2, 4, 5, 6}));  // le=1: 0.5 and 1.0.
  EXPECT_EQ(s.count, 6u);
  EXPECT_DOUBLE_EQ(s.sum, 18.0);
}

TEST(Family, OneChildPerLabelTupleWithStableReferences) {
  Registry r;
  auto f = r.AddCounter("x_total", "help", {"code", "recipe"});
  ASSERT_TRUE(f.ok());
  Counter& a = (*f)->WithLabels({"OK", "int8"});
  a.Increment();
  (*f)->WithLabels({"OK", "int8"}).Increment();
  (*f)->WithLabels({"INTERNAL", "int8"}).Increment(5);
  EXPECT_EQ(&a, &(*f)->WithLabels({"OK", "int8"}));
  EXPECT_EQ(a.value(), 2);
  const FamilySnapshot snap = (*f)->Collect();
  ASSERT_EQ(snap.samples.size(), 2u);
  // Ordered by label values: "INTERNAL" < "OK".
  EXPECT_EQ(snap.samples[0].label_values, (std::vector<std::string>{"INTERNAL", "int8"}));
  EXPECT_EQ(snap.samples[0].value, 5);
  // Missing values are empty, extra ones ignored.
  (*f)->WithLabels({"OK"}).Increment();
  (*f)->WithLabels({"OK", "int8", "extra"}).Increment();
  EXPECT_EQ(a.value(), 3);
  EXPECT_EQ((*f)->Collect().samples.size(), 3u);
}

TEST(Registry, EnforcesPrometheusNaming) {
  Registry r;
  EXPECT_TRUE(r.AddCounter("sageserve_requests_total", "h", {"code"}).ok());
  EXPECT_EQ(r.AddCounter("sageserve_requests_total", "h", {}).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_FALSE(r.AddCounter("sageserve_requests", "counter without _total", {}).ok());
  EXPECT_FALSE(r.AddGauge("queue_total", "only counters end in _total", {}).ok());
  EXPECT_FALSE(r.AddGauge("QueueDepth", "camel case", {}).ok());
  EXPECT_FALSE(r.AddGauge("queue-depth", "dash", {}).ok());
  EXPECT_FALSE(r.AddGauge("9lives", "digit first", {}).ok());
  EXPECT_FALSE(r.AddGauge("__reserved", "double underscore", {}).ok());
  EXPECT_FALSE(r.AddGauge("x_count", "reserved suffix", {}).ok());
  EXPECT_FALSE(r.AddGauge("g", "bad label", {"Code"}).ok());
  EXPECT_FALSE(r.AddGauge("g", "reserved label", {"__name"}).ok());
  EXPECT_FALSE(r.AddGauge("g", "repeated label", {"a", "a"}).ok());
  EXPECT_FALSE(r.AddHistogram("h_seconds", "le is reserved", {"le"}, {1.0}).ok());
  EXPECT_FALSE(r.AddHistogram("h_seconds", "no buckets", {}, {}).ok());
  EXPECT_FALSE(r.AddHistogram("h_seconds", "not increasing", {}, {1.0, 1.0}).ok());
  EXPECT_FALSE(r.AddHistogram("h_seconds", "infinite", {}, {1.0, HUGE_VAL}).ok());
  EXPECT_TRUE(r.AddHistogram("h_seconds", "fine", {"device"}, {1.0, 2.0}).ok());
  EXPECT_TRUE(r.AddGauge("g", "fine", {}).ok());
  const std::vector<FamilySnapshot> all = r.Collect();
  ASSERT_EQ(all.size(), 3u);  // Registration order.
  EXPECT_EQ(all[0].name, "sageserve_requests_total");
  EXPECT_EQ(all[1].name, "h_seconds");
  EXPECT_EQ(all[2].name, "g");
}

TEST(Registry, ConcurrentUpdatesAreNotLost) {
  Registry r;
  auto c = r.AddCounter("c_total", "h", {"thread_group"});
  auto h = r.AddHistogram("h_seconds", "h", {}, {0.5});
  ASSERT_TRUE(c.ok() && h.ok());
  constexpr int kThreads = 4;
  constexpr int kPerThread = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        (*c)->WithLabels({t % 2 == 0 ? "even" : "odd"}).Increment();
        (*h)->Get().Observe(i % 2 == 0 ? 0.25 : 1.0);
        if (i % 1000 == 0) r.Collect();  // Scrapes race with updates.
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ((*c)->WithLabels({"even"}).value() + (*c)->WithLabels({"odd"}).value(), kThreads * kPerThread);
  const HistogramSnapshot s = (*h)->Get().Snapshot();
  EXPECT_EQ(s.count, static_cast<uint64_t>(kThreads * kPerThread));
  EXPECT_EQ(s.cumulative[0], static_cast<uint64_t>(kThreads * kPerThread / 2));
}

// Lookups run without the family's lock: threads racing to first use the same label values must
// still end up with one child per tuple, the same one for every thread.
TEST(Family, ConcurrentFirstUseMakesOneChildPerTuple) {
  Registry r;
  auto f = r.AddCounter("first_use_total", "h", {"code", "recipe"});
  ASSERT_TRUE(f.ok());
  constexpr int kThreads = 8;
  constexpr int kTuples = 60;
  std::vector<std::vector<const Counter*>> seen(kThreads, std::vector<const Counter*>(kTuples));
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int n = 0; n < kTuples; ++n) {
        const int i = (n * 7 + t * 13) % kTuples;  // each thread meets the tuples in its own order
        const std::string code = absl::StrCat("c", i % 6), recipe = absl::StrCat("r", i / 6);
        Counter& c = (*f)->WithLabels({code, recipe});
        c.Increment();
        seen[t][i] = &c;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int t = 1; t < kThreads; ++t) EXPECT_EQ(seen[t], seen[0]) << "thread " << t;
  const FamilySnapshot snap = (*f)->Collect();
  ASSERT_EQ(snap.samples.size(), static_cast<size_t>(kTuples));
  for (size_t i = 0; i < snap.samples.size(); ++i) {
    EXPECT_EQ(snap.samples[i].value, kThreads) << snap.samples[i].label_values[0] << "," << snap.samples[i].label_values[1];
    if (i > 0) {
      EXPECT_LT(snap.samples[i - 1].label_values, snap.samples[i].label_values);  // sorted
    }
  }
}

TEST(Buckets, DurationAndExponential) {
  const std::vector<double> d = DurationBucketsSeconds();
  ASSERT_FALSE(d.empty());
  EXPECT_EQ(d.front(), 0.00001);
  EXPECT_EQ(d.back(), 10.0);
  for (size_t i = 1; i < d.size(); ++i) EXPECT_LT(d[i - 1], d[i]);
  EXPECT_EQ(ExponentialBuckets(1, 2, 4), (std::vector<double>{1, 2, 4, 8}));
}

}  // namespace
}  // namespace sage::metrics
