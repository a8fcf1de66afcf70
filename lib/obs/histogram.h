// Histogram: counts of observations in fixed buckets, with their sum, the
// shape a Prometheus histogram exposes (lib/metrics/prom_text.h writes it).
// LatencyWindow keeps recent samples for percentiles in `status`; this keeps
// every observation since start in constant memory, so rates and quantiles
// over any range can be computed by Prometheus.
//
// Units are the caller's; digestd observes seconds (Prometheus's base unit).
// Plain value, no I/O. Loop thread only, like the counters it sits beside.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <vector>

namespace digestd {

class Histogram {
 public:
  // `upper_bounds`: ascending and finite; the +Inf bucket is implicit. Bounds
  // that are not ascending are sorted and duplicates dropped.
  explicit Histogram(std::vector<double> upper_bounds);

  // Adds one observation: it falls into the first bucket whose bound is >=
  // `value` (Prometheus's `le`), or the +Inf bucket. NaN is ignored.
  void Observe(double value);

  const std::vector<double>& bounds() const { return bounds_; }
  // Observations per bucket, not cumulative: counts()[i] for bounds()[i]
  // (above bounds()[i-1]), and one more entry at the end for +Inf.
  const std::vector<uint64_t>& counts() const { return counts_; }
  uint64_t count() const { return count_; }
  double sum() const { return sum_; }

  // {"le":[bounds..., "+Inf"], "buckets":[cumulative counts...], "sum":s,
  // "count":n}: the same figures in JSON, for `status`. FromJson reads it
  // back; false (and `out` untouched) when the shape is not that.
  nlohmann::json ToJson() const;
  static bool FromJson(const nlohmann::json& j, Histogram* out);

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;
  uint64_t count_ = 0;
  double sum_ = 0;
};

// Bucket bounds in seconds, chosen for what each histogram times.
// A job from submit to finish, or its own run: from a noop's milliseconds to
// an hour-long wait behind a backlog.
std::vector<double> JobSecondsBuckets();
// One request to the LLM backend: an embedding's tens of ms to a long
// generation's minutes (request_timeout_s is 900 s by default).
std::vector<double> BackendSecondsBuckets();
// One PostgreSQL commit of the writer: a millisecond on a local socket to
// seconds on a slow disk or a remote server.
std::vector<double> CommitSecondsBuckets();

}  // namespace digestd
