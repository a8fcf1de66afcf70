// JobView: one picture of a job for every answer that shows one (result,
// group result, cancel, submit), from either store. The memory store builds
// it from a JobRecord, the PostgreSQL store from a StoredJob row; the JSON is
// rendered here and nowhere else, so both stores answer alike.
//
// Pure functions and values; any thread.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "control/protocol.h"
#include "jobs/job.h"
#include "store/job_store.h"
#include "util/status.h"

namespace digestd {

struct JobView {
  std::string key;
  std::string group;  // "" when in no group
  std::string kind;
  Lane lane = Lane::kBackground;
  JobState state = JobState::kQueued;
  int attempts = 0;
  int max_attempts = 0;
  std::optional<int> busy_retries;  // busy (429/503) answers so far
  int preempted = 0;                // attempts aborted for interactive work
  int64_t submitted_unix_ms = 0;    // 0: unknown
  std::optional<double> queued_ms;  // submit -> start (or now, while queued)
  std::optional<double> run_ms;     // start -> finish (or now, while running)
  std::string node;                 // the node running it, when known
  int64_t run_after_unix_ms = 0;    // a queued retry is not due before this
  nlohmann::json result;            // null unless done
  std::string error;
  std::string last_error;  // a retried or replaced job's error from before it was queued again
};

// `now` is uv_hrtime(); `max_attempts` is the store's limit for the job.
JobView ViewOf(const JobRecord& job, Nanos now, int max_attempts);
// `now_unix_ms` is UnixMillis().
JobView ViewOf(const StoredJob& job, int64_t now_unix_ms);

// {"key","kind","lane","status","attempts",...}: the job answer of
// docs/protocol.md.
nlohmann::json JobJson(const JobView& job);

// A group's status from its parts: pending (all queued), in_progress,
// completed (all done), failed (all failed or cancelled), partial.
const char* GroupStatusName(const std::vector<JobView>& parts);
// {"group","status","total","ready","parts":[...]}.
nlohmann::json GroupJson(const std::string& group, const std::vector<JobView>& parts);

// One job's line in a submit answer: {"key","status","existing"}.
nlohmann::json SubmitAnswerJson(const std::string& key, JobState state, bool existing);

// The answer line to a batch submit: every job's answer or error, in order,
// with "accepted" and "failed" counts. `answers[i]` is used when `errors[i]`
// is ok, else only its "key". When at least one job was accepted the answer
// is ok:true (a client checks "failed"); when none was, it is ok:false with
// the jobs' shared error code (the first one's when they differ), a message
// naming the first failure, and the same "jobs" list.
std::string BatchAnswerLine(const nlohmann::json& id, std::vector<nlohmann::json> answers,
                            const std::vector<Status>& errors);

}  // namespace digestd
