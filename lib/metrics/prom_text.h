// PromText: writes Prometheus's text exposition format, version 0.0.4 (the
// format every Prometheus server scrapes; content type kPromContentType).
// Each metric family starts with its "# HELP" and "# TYPE" lines, then its
// samples, one per line:
//
//   # HELP digestd_jobs_finished_total Jobs that reached a terminal state.
//   # TYPE digestd_jobs_finished_total counter
//   digestd_jobs_finished_total{kind="noop",lane="background",outcome="done"} 12
//
// A histogram family writes one `_bucket` sample per bound with a cumulative
// count and an `le` label, ending with le="+Inf" (equal to `_count`), then
// `_sum` and `_count`. Label values are escaped (\\, \" and \n), HELP text
// too (\\ and \n); values are written in the shortest form that reads back
// exactly, with +Inf, -Inf and NaN spelled as Prometheus spells them.
//
// The caller keeps Prometheus's naming rules: families are written once, a
// counter's name ends in _total, units are base units (seconds, bytes) and
// named in the metric's name. Names are not checked at run time; the unit
// test and `promtool check metrics` hold the names digestd writes to them.
//
// Plain value, no I/O; any thread, one writer per object.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "obs/histogram.h"

namespace digestd {

// The Content-Type of a /metrics answer in this format.
inline constexpr const char* kPromContentType = "text/plain; version=0.0.4; charset=utf-8";

// Label name and value pairs, written in the order given.
using PromLabels = std::vector<std::pair<std::string, std::string>>;

class PromText {
 public:
  enum class Type { kCounter, kGauge, kHistogram };

  // Starts the family `name`: writes its HELP and TYPE lines. The samples
  // that follow (Sample, HistogramSamples) belong to it.
  void Family(std::string_view name, Type type, std::string_view help);

  // One sample of the current counter or gauge family.
  void Sample(const PromLabels& labels, double value);
  // The samples of one labelled histogram of the current histogram family:
  // `name`_bucket{labels..., le="..."} per bound and +Inf (cumulative),
  // `name`_sum{labels} and `name`_count{labels}.
  void HistogramSamples(const PromLabels& labels, const Histogram& histogram);

  // Shorthand: a family with one unlabelled sample.
  void Single(std::string_view name, Type type, std::string_view help, double value) {
    Family(name, type, help);
    Sample({}, value);
  }

  const std::string& text() const { return out_; }
  std::string Take() { return std::move(out_); }

 private:
  void Line(std::string_view name, const PromLabels& labels, const std::string* le, double value);

  std::string out_;
  std::string family_;  // the current family's name
};

// A label value with \, " and newline escaped as the format requires.
std::string EscapeLabelValue(std::string_view value);
// HELP text with \ and newline escaped.
std::string EscapeHelp(std::string_view help);
// A sample value as the format writes it: "12", "0.25", "+Inf", "NaN".
std::string FormatPromValue(double value);

}  // namespace digestd
