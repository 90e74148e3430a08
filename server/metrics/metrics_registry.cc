#include "server/metrics/metrics_registry.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sage::metrics {
namespace {

bool IsSnakeCase(absl::string_view s) {
  if (s.empty()) return false;
  if (!(s[0] == '_' || (s[0] >= 'a' && s[0] <= 'z'))) return false;
  for (char c : s) {
    if (!(c == '_' || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) return false;
  }
  return true;
}

bool EndsWith(absl::string_view s, absl::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

void Counter::Increment(double delta) {
  if (!(delta > 0.0)) return;  // Also drops NaN.
  value_.fetch_add(delta, std::memory_order_relaxed);
}

Histogram::Histogram(std::vector<double> upper_bounds)
    : upper_bounds_(std::move(upper_bounds)),
      buckets_(new std::atomic<uint64_t>[upper_bounds_.size() + 1]) {
  for (size_t i = 0; i <= upper_bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void Histogram::Observe(double value) {
  if (std::isnan(value)) return;
  // First bound >= value: the smallest bucket whose `le` admits it; end() is +Inf.
  const size_t index = static_cast<size_t>(
      std::lower_bound(upper_bounds_.begin(), upper_bounds_.end(), value) - upper_bounds_.begin());
  buckets_[index].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

HistogramSnapshot Histogram::Snapshot() const {
  HistogramSnapshot snap;
  snap.upper_bounds = upper_bounds_;
  snap.cumulative.resize(upper_bounds_.size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= upper_bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    snap.cumulative[i] = running;
  }
  // The count is derived from the buckets so that the +Inf bucket and _count always agree.
  snap.count = running;
  snap.sum = sum_.load(std::memory_order_relaxed);
  return snap;
}

template <typename Metric>
Metric* Family<Metric>::NewMetric() const {
  if constexpr (std::is_same_v<Metric, Histogram>) {
    return new Histogram(upper_bounds_);
  } else {
    return new Metric();
  }
}

template <typename Metric>
const typename Family<Metric>::Child* Family<Metric>::Find(std::span<const absl::string_view> values) const {
  for (const Child* c = head_.load(std::memory_order_acquire); c != nullptr; c = c->next) {
    bool same = true;
    for (size_t i = 0; i < c->label_values.size() && same; ++i) {
      const absl::string_view want = i < values.size() ? values[i] : absl::string_view("", 0);  // missing: ""
      same = absl::string_view(c->label_values[i]) == want;
    }
    if (same) return c;
  }
  return nullptr;
}

template <typename Metric>
Metric& Family<Metric>::WithLabels(std::span<const absl::string_view> values) {
  if (const Child* found = Find(values)) return *found->metric;
  std::lock_guard<std::mutex> lock(mu_);
  if (const Child* found = Find(values)) return *found->metric;  // another thread made it meanwhile
  auto child = std::make_unique<Child>();
  child->label_values.resize(label_names_.size());
  for (size_t i = 0; i < label_names_.size() && i < values.size(); ++i) {
    child->label_values[i] = std::string(values[i]);
  }
  child->metric.reset(NewMetric());
  child->next = head_.load(std::memory_order_relaxed);
  const Child* published = child.get();
  children_.push_back(std::move(child));  // owned before readers can see it
  head_.store(published, std::memory_order_release);
  return *published->metric;
}

template <typename Metric>
FamilySnapshot Family<Metric>::Collect() const {
  FamilySnapshot snap;
  snap.name = name_;
  snap.help = help_;
  snap.type = type_;
  snap.label_names = label_names_;
  std::lock_guard<std::mutex> lock(mu_);
  snap.samples.reserve(children_.size());
  for (const auto& child : children_) {
    SampleSnapshot sample;
    sample.label_values = child->label_values;
    if constexpr (std::is_same_v<Metric, Histogram>) {
      sample.histogram = child->metric->Snapshot();
    } else {
      sample.value = child->metric->value();
    }
    snap.samples.push_back(std::move(sample));
  }
  std::sort(snap.samples.begin(), snap.samples.end(),
            [](const SampleSnapshot& a, const SampleSnapshot& b) { return a.label_values < b.label_values; });
  return snap;
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

absl::Status Registry::CheckNew(absl::string_view name, MetricType type,
                                const std::vector<std::string>& label_names) const {
  if (!IsSnakeCase(name) || name.substr(0, 2) == "__") {
    return absl::InvalidArgumentError(
        absl::StrCat("metric name '", name, "' must be snake_case ([a-z_][a-z0-9_]*)"));
  }
  if (type == MetricType::kCounter && !EndsWith(name, "_total")) {
    return absl::InvalidArgumentError(absl::StrCat("counter '", name, "' must end in _total"));
  }
  if (type != MetricType::kCounter && EndsWith(name, "_total")) {
    return absl::InvalidArgumentError(absl::StrCat("only counters end in _total: '", name, "'"));
  }
  for (absl::string_view reserved : {"_bucket", "_sum", "_count"}) {
    if (EndsWith(name, reserved)) {
      return absl::InvalidArgumentError(
          absl::StrCat("metric name '", name, "' ends in the reserved suffix ", reserved));
    }
  }
  for (size_t i = 0; i < label_names.size(); ++i) {
    const std::string& label = label_names[i];
    if (!IsSnakeCase(label) || label.substr(0, 2) == "__") {
      return absl::InvalidArgumentError(
          absl::StrCat("label '", label, "' of ", name, " must be snake_case and not start with __"));
    }
    if (type == MetricType::kHistogram && label == "le") {
      return absl::InvalidArgumentError(absl::StrCat("histogram ", name, " cannot use the label 'le'"));
    }
    if (std::find(label_names.begin(), label_names.begin() + i, label) != label_names.begin() + i) {
      return absl::InvalidArgumentError(absl::StrCat("label '", label, "' repeated in ", name));
    }
  }
  if (std::find(names_.begin(), names_.end(), name) != names_.end()) {
    return absl::AlreadyExistsError(absl::StrCat("metric '", name, "' is already registered"));
  }
  return absl::OkStatus();
}

absl::StatusOr<CounterFamily*> Registry::AddCounter(absl::string_view name, absl::string_view help,
                                                    std::vector<std::string> label_names) {
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = CheckNew(name, MetricType::kCounter, label_names); !s.ok()) return s;
  auto family = std::make_unique<CounterFamily>(std::string(name), std::string(help),
                                                MetricType::kCounter, std::move(label_names),
                                                std::vector<double>{});
  CounterFamily* raw = family.get();
  names_.emplace_back(name);
  families_.push_back(std::move(family));
  return raw;
}

absl::StatusOr<GaugeFamily*> Registry::AddGauge(absl::string_view name, absl::string_view help,
                                                std::vector<std::string> label_names) {
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = CheckNew(name, MetricType::kGauge, label_names); !s.ok()) return s;
  auto family = std::make_unique<GaugeFamily>(std::string(name), std::string(help), MetricType::kGauge,
                                              std::move(label_names), std::vector<double>{});
  GaugeFamily* raw = family.get();
  names_.emplace_back(name);
  families_.push_back(std::move(family));
  return raw;
}

absl::StatusOr<HistogramFamily*> Registry::AddHistogram(absl::string_view name, absl::string_view help,
                                                        std::vector<std::string> label_names,
                                                        std::vector<double> upper_bounds) {
  if (upper_bounds.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("histogram ", name, " needs at least one bucket"));
  }
  for (size_t i = 0; i < upper_bounds.size(); ++i) {
    if (!std::isfinite(upper_bounds[i]) || (i > 0 && upper_bounds[i] <= upper_bounds[i - 1])) {
      return absl::InvalidArgumentError(absl::StrCat(
          "histogram ", name, ": bucket bounds must be finite and strictly increasing (",
          absl::StrJoin(upper_bounds, ", "), ")"));
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = CheckNew(name, MetricType::kHistogram, label_names); !s.ok()) return s;
  auto family = std::make_unique<HistogramFamily>(std::string(name), std::string(help),
                                                  MetricType::kHistogram, std::move(label_names),
                                                  std::move(upper_bounds));
  HistogramFamily* raw = family.get();
  names_.emplace_back(name);
  families_.push_back(std::move(family));
  return raw;
}

std::vector<FamilySnapshot> Registry::Collect() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<FamilySnapshot> out;
  out.reserve(families_.size());
  for (const auto& family : families_) out.push_back(family->Collect());
  return out;
}

std::vector<double> ExponentialBuckets(double start, double factor, int count) {
  std::vector<double> bounds;
  bounds.reserve(static_cast<size_t>(std::max(count, 0)));
  double bound = start;
  for (int i = 0; i < count; ++i) {
    bounds.push_back(bound);
    bound *= factor;
  }
  return bounds;
}

std::vector<double> DurationBucketsSeconds() {
  // Written out rather than computed so that every `le` label prints as a short decimal.
  return {0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
          0.025,   0.05,     0.1,     0.25,   0.5,     1.0,    2.5,   5.0,    10.0};
}

}  // namespace sage::metrics
