#include "app/outcome_policy.h"

#include "backend/backoff.h"
#include "jobs/job_kind.h"
#include "obs/log.h"

namespace digestd {

namespace {

// The journal fields of a line about `job`'s attempt that ended in `outcome`.
JobLogFields JobFields(const JobRecord& job, const WorkOutcome& outcome) {
  return {job.key, job.kind, LaneName(job.lane), job.attempts,
          static_cast<int64_t>(outcome.backend_ns / 1000000)};
}

}  // namespace

bool UsesBackend(const JobRecord& job, const Config& config) {
  const JobKind* kind = JobKindRegistry::Global().Find(job.kind);
  return kind != nullptr && kind->UsesBackend(config);
}

Verdict Judge(JobRecord& job, WorkOutcome outcome, bool started, int max_attempts,
              const Config& config, BackendHealth& backend) {
  Verdict v;
  bool busy = outcome.kind == WorkOutcome::Kind::kBusy;
  bool retryable = busy || outcome.kind == WorkOutcome::Kind::kRetry;
  if (retryable && started) {
    // A busy backend (429/503) costs no attempt: an overloaded Ollama must
    // not use up a job's retries. Its backoff grows with its own count.
    int retry = busy ? job.busy_retries + 1 : job.attempts;
    if (busy || job.attempts < max_attempts) {
      v.retry = true;
      v.refund = busy;
      v.delay_ms =
          BackoffDelayMs(retry, config.backend.backoff_base_ms, config.backend.backoff_max_ms);
      LOG_JOB(LogLevel::kInfo, JobFields(job, outcome), "job %s: %s; retry %d in %lld ms%s",
              job.key.c_str(), outcome.error.c_str(), retry, static_cast<long long>(v.delay_ms),
              busy ? " (busy: no attempt spent)" : "");
      if (busy) ++job.busy_retries;
      if (UsesBackend(job, config)) backend.NoteRetry();
      v.outcome = std::move(outcome);
      return v;
    }
    outcome.error = "gave up after " + std::to_string(job.attempts) +
                    " attempts ([backend] max_attempts); last error: " + outcome.error;
  }
  if (retryable || outcome.kind == WorkOutcome::Kind::kFailed) {
    const JobKind* kind = JobKindRegistry::Global().Find(job.kind);
    nlohmann::json stand_in;
    if (kind != nullptr && job.input) stand_in = kind->FinalFailureResult(*job.input, config);
    if (stand_in.is_null()) {
      LOG_JOB(LogLevel::kWarning, JobFields(job, outcome), "job %s (%s) failed: %s",
              job.key.c_str(), job.kind.c_str(), outcome.error.c_str());
    } else {
      LOG_JOB(LogLevel::kWarning, JobFields(job, outcome),
              "job %s (%s) done with a stand-in result (the fallback): %s", job.key.c_str(),
              job.kind.c_str(), outcome.error.c_str());
    }
    if (kind != nullptr && job.input) {
      // A summary screen never shows a hole: store the kind's stand-in, with
      // the reason in error so `result` says why it is one.
      if (!stand_in.is_null()) {
        WorkOutcome stored = WorkOutcome::Done(std::move(stand_in));
        stored.error = std::move(outcome.error);
        v.outcome = std::move(stored);
        return v;
      }
    }
    outcome.kind = WorkOutcome::Kind::kFailed;
  }
  v.outcome = std::move(outcome);
  return v;
}

}  // namespace digestd
