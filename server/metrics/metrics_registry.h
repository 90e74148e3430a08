// A small thread-safe metrics registry: counters and gauges with labels, and histograms with
// fixed buckets (cumulative on export, as Prometheus expects; no summaries). Updating a metric is
// lock-free, and so is looking up a labelled child that exists: the request path does it several
// times per call, from every worker. Only creating a child takes the family's mutex.
#pragma once

#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace sage::metrics {

enum class MetricType { kCounter, kGauge, kHistogram };

// Monotonic. Negative increments are ignored (a counter never goes down).
class Counter {
 public:
  void Increment(double delta = 1.0);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Add(double delta) { value_.fetch_add(delta, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

struct HistogramSnapshot {
  std::vector<double> upper_bounds;  // Finite, strictly increasing; +Inf is implicit.
  std::vector<uint64_t> cumulative;  // upper_bounds.size() + 1 entries; the last is the count.
  double sum = 0.0;
  uint64_t count = 0;
};

class Histogram {
 public:
  // `upper_bounds` must be finite and strictly increasing (the registry checks).
  explicit Histogram(std::vector<double> upper_bounds);
  // NaN is ignored. A value equal to a bound falls into that bound's bucket (le semantics).
  void Observe(double value);
  HistogramSnapshot Snapshot() const;

 private:
  const std::vector<double> upper_bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // Per bucket (not cumulative), +Inf last.
  std::atomic<double> sum_{0.0};
};

// One exported sample (a labelled child) of a family.
struct SampleSnapshot {
  std::vector<std::string> label_values;
  double value = 0.0;             // Counter and gauge.
  HistogramSnapshot histogram;    // Histogram.
};

struct FamilySnapshot {
  std::string name;
  std::string help;
  MetricType type = MetricType::kCounter;
  std::vector<std::string> label_names;
  std::vector<SampleSnapshot> samples;  // Ordered by label values.
};

class FamilyBase {
 public:
  virtual ~FamilyBase() = default;
  virtual FamilySnapshot Collect() const = 0;
};

// A metric name with fixed label names; one child per distinct tuple of label values.
template <typename Metric>
class Family final : public FamilyBase {
 public:
  Family(std::string name, std::string help, MetricType type, std::vector<std::string> label_names,
         std::vector<double> upper_bounds)
      : name_(std::move(name)),
        help_(std::move(help)),
        type_(type),
        label_names_(std::move(label_names)),
        upper_bounds_(std::move(upper_bounds)) {}

  // The child for these label values, created on first use. Values pair with the label names in
  // order; missing values are empty and extra ones ignored. The reference stays valid as long
  // as the registry lives.
  Metric& WithLabels(std::span<const absl::string_view> values);
  Metric& WithLabels(std::initializer_list<absl::string_view> values) {
    return WithLabels(std::span<const absl::string_view>(values.begin(), values.size()));
  }
  Metric& Get() { return WithLabels({}); }  // For families without labels.

  FamilySnapshot Collect() const override;

 private:
  // Children form a list that only grows at its head: readers walk it without a lock (a child is
  // complete before it is published), writers add under mu_.
  struct Child {
    std::vector<std::string> label_values;  // label_names_.size() entries
    std::unique_ptr<Metric> metric;
    const Child* next = nullptr;  // the child published before this one
  };
  const Child* Find(std::span<const absl::string_view> values) const;
  Metric* NewMetric() const;

  const std::string name_;
  const std::string help_;
  const MetricType type_;
  const std::vector<std::string> label_names_;
  const std::vector<double> upper_bounds_;  // Histograms only.
  std::atomic<const Child*> head_{nullptr};
  mutable std::mutex mu_;                        // serializes creation; Collect reads under it
  std::vector<std::unique_ptr<Child>> children_;  // owns the list; guarded by mu_
};

using CounterFamily = Family<Counter>;
using GaugeFamily = Family<Gauge>;
using HistogramFamily = Family<Histogram>;

// Owns the families. Registration validates names the Prometheus way (snake_case metric and label
// names, counters ending in `_total`, no reserved suffixes or labels) and refuses duplicates.
class Registry {
 public:
  absl::StatusOr<CounterFamily*> AddCounter(absl::string_view name, absl::string_view help,
                                            std::vector<std::string> label_names);
  absl::StatusOr<GaugeFamily*> AddGauge(absl::string_view name, absl::string_view help,
                                        std::vector<std::string> label_names);
  absl::StatusOr<HistogramFamily*> AddHistogram(absl::string_view name, absl::string_view help,
                                                std::vector<std::string> label_names,
                                                std::vector<double> upper_bounds);

  // All families in registration order.
  std::vector<FamilySnapshot> Collect() const;

 private:
  absl::Status CheckNew(absl::string_view name, MetricType type,
                        const std::vector<std::string>& label_names) const;

  mutable std::mutex mu_;
  std::vector<std::string> names_;
  std::vector<std::unique_ptr<FamilyBase>> families_;
};

// Bucket helpers.
std::vector<double> ExponentialBuckets(double start, double factor, int count);
// 10 µs .. 10 s in 1-2.5-5 steps: request-path durations from a tiny CPU problem to a long prefill.
std::vector<double> DurationBucketsSeconds();

}  // namespace sage::metrics
