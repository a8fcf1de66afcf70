// What becomes of a finished attempt, in either store: another attempt after
// a backoff (retryable and attempts left; a busy backend's refusal spends no
// attempt) or the final outcome -- for a kind with a final-failure result
// (JobKind::FinalFailureResult: the summary fallback), that result in place
// of the failure.
//
// Loop thread only (it counts retries on BackendHealth and the job record).
#pragma once

#include "backend/backend_health.h"
#include "config/config.h"
#include "jobs/job.h"

namespace digestd {

struct Verdict {
  bool retry = false;
  int64_t delay_ms = 0;
  bool refund = false;  // the attempt is given back (busy)
  WorkOutcome outcome;  // retry: its error; else the final outcome
};

// `started`: the work really ran (not a failed hand-off to the pool).
// `max_attempts`: the job's limit. Counts a busy retry on `job`.
Verdict Judge(JobRecord& job, WorkOutcome outcome, bool started, int max_attempts,
              const Config& config, BackendHealth& backend);

// Whether `job`'s kind calls the LLM backend under `config`.
bool UsesBackend(const JobRecord& job, const Config& config);

}  // namespace digestd
