// RenderDaemonMetrics: the daemon's figures as Prometheus text (prom_text.h),
// the body of GET /metrics. Every family is named digestd_*; counters end in
// _total, durations are in seconds. docs/operations.md ("Metrics") lists
// them with their meaning.
//
// Most figures are the ones `status` already reports, read from its JSON
// answer, so the two never disagree; what status cannot carry -- counts per
// kind, lane and outcome, and histograms -- comes from the JobTable and the
// backend's histogram. A figure missing from the status JSON (the memory
// store has no database block) leaves its family out.
//
// Threads: the caller's (the loop thread, which owns what is read). Reads
// only; the pointers are used during the call.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "jobs/job_table.h"
#include "obs/histogram.h"

namespace digestd {

struct MetricsSources {
  // The `status` answer (Daemon::StatusJson). Required.
  const nlohmann::json* status = nullptr;
  // Counts per kind and lane, job histograms. May be null.
  const JobTable* jobs = nullptr;
  // BackendHealth::latency_histogram(). May be null.
  const Histogram* backend_latency = nullptr;
};

std::string RenderDaemonMetrics(const MetricsSources& sources);

}  // namespace digestd
