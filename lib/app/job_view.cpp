#include "app/job_view.h"

#include <algorithm>

namespace digestd {

namespace {

double NanosToMillis(uint64_t nanos) {
  return static_cast<double>(nanos) / 1e6;
}

}  // namespace

JobView ViewOf(const JobRecord& job, Nanos now, int max_attempts) {
  JobView v;
  v.key = job.key;
  v.group = job.group;
  v.kind = job.kind;
  v.lane = job.lane;
  v.state = job.state;
  v.attempts = job.attempts;
  v.max_attempts = job.max_attempts > 0 ? job.max_attempts : max_attempts;
  v.busy_retries = job.busy_retries;
  v.preempted = job.preempted;
  v.submitted_unix_ms = job.submitted_unix_ms;
  // A queued job (new, held back, or waiting for a retry) has no run time,
  // whatever an earlier attempt took: it has waited since it was submitted.
  bool queued = job.state == JobState::kQueued;
  Nanos started =
      queued ? now : (job.started_at ? job.started_at : (job.finished_at ? job.finished_at : now));
  v.queued_ms = NanosToMillis(started > job.submitted_at ? started - job.submitted_at : 0);
  if (job.started_at && !queued) {
    Nanos end = job.finished_at ? job.finished_at : now;
    v.run_ms = NanosToMillis(end > job.started_at ? end - job.started_at : 0);
  }
  if (job.state == JobState::kDone) v.result = job.result;
  v.error = job.error;
  v.last_error = job.last_error;
  return v;
}

JobView ViewOf(const StoredJob& job, int64_t now_unix_ms) {
  JobView v;
  v.key = job.key;
  v.group = job.group;
  v.kind = job.kind;
  v.lane = job.lane;
  v.state = job.state;
  v.attempts = job.attempts;
  v.max_attempts = job.max_attempts;
  v.busy_retries = job.busy_retries;
  v.preempted = job.preempted;
  v.submitted_unix_ms = job.created_at_ms;
  // A claimed job this node has not started yet (its ring is waiting, such as
  // for the backend's breaker) is still queued to whoever asks; the table
  // calls it running only to hold the lease.
  if (job.state == JobState::kRunning && job.started_at_ms == 0) v.state = JobState::kQueued;
  // A queued job (new, claimed, held back, or waiting for a retry) has no
  // run time, whatever an earlier attempt took.
  bool queued = v.state == JobState::kQueued;
  int64_t started =
      queued ? now_unix_ms
             : (job.started_at_ms ? job.started_at_ms
                                  : (job.finished_at_ms ? job.finished_at_ms : now_unix_ms));
  if (job.created_at_ms) {
    v.queued_ms = static_cast<double>(std::max<int64_t>(0, started - job.created_at_ms));
  }
  if (job.started_at_ms && !queued) {
    int64_t end = job.finished_at_ms ? job.finished_at_ms : now_unix_ms;
    v.run_ms = static_cast<double>(std::max<int64_t>(0, end - job.started_at_ms));
  }
  if (v.state == JobState::kRunning) v.node = job.lease_owner;
  if (job.state == JobState::kQueued && job.run_after_ms > now_unix_ms) {
    v.run_after_unix_ms = job.run_after_ms;
  }
  if (job.state == JobState::kDone) v.result = job.result;
  v.error = job.error;
  v.last_error = job.last_error;
  return v;
}

nlohmann::json JobJson(const JobView& job) {
  nlohmann::json j = {{"key", job.key},
                      {"kind", job.kind},
                      {"lane", LaneName(job.lane)},
                      {"status", JobStateName(job.state)},
                      {"attempts", job.attempts},
                      {"max_attempts", job.max_attempts},
                      {"submitted_at_ms", job.submitted_unix_ms}};
  if (job.busy_retries) j["busy_retries"] = *job.busy_retries;
  j["preempted"] = job.preempted;
  if (!job.group.empty()) j["group"] = job.group;
  if (job.queued_ms) j["queued_ms"] = *job.queued_ms;
  if (job.run_ms) j["run_ms"] = *job.run_ms;
  if (!job.node.empty()) j["node"] = job.node;
  if (job.run_after_unix_ms) j["run_after_ms"] = job.run_after_unix_ms;
  if (job.state == JobState::kDone) j["result"] = job.result;
  if (!job.error.empty()) j["error"] = job.error;
  if (!job.last_error.empty()) j["last_error"] = job.last_error;
  return j;
}

const char* GroupStatusName(const std::vector<JobView>& parts) {
  size_t queued = 0, done = 0, bad = 0, terminal = 0;
  for (const auto& p : parts) {
    if (p.state == JobState::kQueued) ++queued;
    if (p.state == JobState::kDone) ++done;
    if (p.state == JobState::kFailed || p.state == JobState::kCancelled) ++bad;
    if (IsTerminal(p.state)) ++terminal;
  }
  size_t total = parts.size();
  return queued == total    ? "pending"
         : terminal < total ? "in_progress"
         : done == total    ? "completed"
         : bad == total     ? "failed"
                            : "partial";
}

nlohmann::json GroupJson(const std::string& group, const std::vector<JobView>& parts) {
  nlohmann::json list = nlohmann::json::array();
  size_t done = 0;
  for (const auto& p : parts) {
    list.push_back(JobJson(p));
    if (p.state == JobState::kDone) ++done;
  }
  return {{"group", group},
          {"status", GroupStatusName(parts)},
          {"total", parts.size()},
          {"ready", done},
          {"parts", std::move(list)}};
}

nlohmann::json SubmitAnswerJson(const std::string& key, JobState state, bool existing) {
  return {{"key", key}, {"status", JobStateName(state)}, {"existing", existing}};
}

std::string BatchAnswerLine(const nlohmann::json& id, std::vector<nlohmann::json> answers,
                            const std::vector<Status>& errors) {
  nlohmann::json out = nlohmann::json::array();
  size_t accepted = 0;
  const Status* first = nullptr;
  size_t first_index = 0;
  bool one_code = true;
  for (size_t i = 0; i < answers.size(); ++i) {
    if (errors[i].ok()) {
      ++accepted;
      out.push_back(std::move(answers[i]));
      continue;
    }
    if (first == nullptr) {
      first = &errors[i];
      first_index = i;
    } else if (errors[i].code() != first->code()) {
      one_code = false;
    }
    out.push_back(
        {{"key", answers[i].value("key", "")},
         {"error",
          {{"code", std::string(errors[i].CodeName())}, {"message", errors[i].message()}}}});
  }
  size_t failed = answers.size() - accepted;
  nlohmann::json fields = {{"jobs", std::move(out)}, {"accepted", accepted}, {"failed", failed}};
  if (accepted > 0 || first == nullptr) return OkLine(id, std::move(fields));
  std::string message = "none of the " + std::to_string(answers.size()) +
                        " jobs was accepted; jobs[" + std::to_string(first_index) +
                        "]: " + first->message() +
                        (one_code ? "" : " (the others failed for other reasons: see \"jobs\")");
  Status st = first->code() == Status::Code::kQueueFull     ? Status::QueueFull(message)
              : first->code() == Status::Code::kUnavailable ? Status::Unavailable(message)
              : first->code() == Status::Code::kBadRequest  ? Status::BadRequest(message)
              : first->code() == Status::Code::kTooLarge    ? Status::TooLarge(message)
              : first->code() == Status::Code::kConflict    ? Status::Conflict(message)
              : first->code() == Status::Code::kBadState    ? Status::BadState(message)
                                                            : Status::Internal(message);
  if (!one_code) st = Status::Internal(message);
  return ErrorLine(id, st, std::move(fields));
}

}  // namespace digestd
