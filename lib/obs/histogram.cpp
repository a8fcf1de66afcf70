#include "obs/histogram.h"

#include <algorithm>
#include <cmath>

namespace digestd {

Histogram::Histogram(std::vector<double> upper_bounds) : bounds_(std::move(upper_bounds)) {
  bounds_.erase(
      std::remove_if(bounds_.begin(), bounds_.end(), [](double b) { return !std::isfinite(b); }),
      bounds_.end());
  std::sort(bounds_.begin(), bounds_.end());
  bounds_.erase(std::unique(bounds_.begin(), bounds_.end()), bounds_.end());
  counts_.assign(bounds_.size() + 1, 0);
}

void Histogram::Observe(double value) {
  if (std::isnan(value)) return;
  auto it = std::lower_bound(bounds_.begin(), bounds_.end(), value);
  ++counts_[static_cast<size_t>(it - bounds_.begin())];
  ++count_;
  sum_ += value;
}

nlohmann::json Histogram::ToJson() const {
  nlohmann::json le = nlohmann::json::array();
  nlohmann::json buckets = nlohmann::json::array();
  uint64_t cumulative = 0;
  for (size_t i = 0; i < counts_.size(); ++i) {
    cumulative += counts_[i];
    if (i < bounds_.size()) {
      le.push_back(bounds_[i]);
    } else {
      le.push_back("+Inf");
    }
    buckets.push_back(cumulative);
  }
  return {{"le", std::move(le)}, {"buckets", std::move(buckets)}, {"sum", sum_}, {"count", count_}};
}

bool Histogram::FromJson(const nlohmann::json& j, Histogram* out) {
  if (!j.is_object()) return false;
  auto le = j.find("le");
  auto buckets = j.find("buckets");
  auto sum = j.find("sum");
  auto count = j.find("count");
  if (le == j.end() || buckets == j.end() || sum == j.end() || count == j.end()) return false;
  if (!le->is_array() || !buckets->is_array() || le->size() != buckets->size() || le->empty() ||
      !sum->is_number() || !count->is_number_unsigned()) {
    return false;
  }
  std::vector<double> bounds;
  for (size_t i = 0; i + 1 < le->size(); ++i) {
    if (!(*le)[i].is_number()) return false;
    bounds.push_back((*le)[i].get<double>());
  }
  Histogram h(bounds);
  if (h.bounds_.size() != bounds.size()) return false;  // not ascending or not finite
  uint64_t previous = 0;
  for (size_t i = 0; i < buckets->size(); ++i) {
    if (!(*buckets)[i].is_number_unsigned()) return false;
    uint64_t cumulative = (*buckets)[i].get<uint64_t>();
    if (cumulative < previous) return false;
    h.counts_[i] = cumulative - previous;
    previous = cumulative;
  }
  h.count_ = count->get<uint64_t>();
  if (h.count_ != previous) return false;
  h.sum_ = sum->get<double>();
  *out = std::move(h);
  return true;
}

std::vector<double> JobSecondsBuckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,    2.5,
          5,     10,   30,    60,   120, 300,  600, 1800, 3600};
}

std::vector<double> BackendSecondsBuckets() {
  return {0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 900};
}

std::vector<double> CommitSecondsBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
}

}  // namespace digestd
