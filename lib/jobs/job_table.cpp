#include "jobs/job_table.h"

#include <uv.h>

#include <algorithm>

#include "util/clock.h"

namespace digestd {

namespace {
const std::vector<JobPtr> kNoJobs;
}  // namespace

JobPtr JobTable::Find(const std::string& key) const {
  auto it = by_key_.find(key);
  return it == by_key_.end() ? nullptr : it->second;
}

const std::vector<JobPtr>& JobTable::FindGroup(const std::string& group) const {
  auto it = by_group_.find(group);
  return it == by_group_.end() ? kNoJobs : it->second;
}

JobPtr JobTable::Create(std::string key, std::string group, std::string kind, Lane lane,
                        nlohmann::json input) {
  auto job = std::make_shared<JobRecord>();
  job->id = next_id_++;
  job->key = std::move(key);
  job->group = std::move(group);
  job->kind = std::move(kind);
  job->lane = lane;
  job->input = std::make_shared<const nlohmann::json>(std::move(input));
  job->input_hash = InputHash(job->kind, *job->input);
  job->submitted_at = uv_hrtime();
  job->submitted_unix_ms = UnixMillis();
  by_key_[job->key] = job;
  if (!job->group.empty()) by_group_[job->group].push_back(job);
  ++counters_.submitted;
  ++Tally(job->kind, job->lane).submitted;
  Notify("queued", *job);
  return job;
}

JobTally& JobTable::Tally(std::string_view kind, Lane lane) {
  auto it = tallies_.find(kind);
  if (it == tallies_.end())
    it = tallies_.emplace(std::string(kind), std::array<JobTally, kLaneCount>{}).first;
  return it->second[static_cast<int>(lane)];
}

void JobTable::ForEach(const std::function<void(const JobPtr&)>& fn) const {
  for (const auto& [key, job] : by_key_) fn(job);
}

void JobTable::Requeue(const JobPtr& job, Lane lane, std::string kind,
                       std::shared_ptr<const nlohmann::json> input) {
  finished_.erase(std::remove(finished_.begin(), finished_.end(), job), finished_.end());
  if (input) {
    if (!kind.empty()) job->kind = std::move(kind);
    job->input = std::move(input);
    job->input_hash = InputHash(job->kind, *job->input);
    job->model_resolved = false;  // the new input may name another model
    job->model.clear();
    job->embedding_model = false;
  }
  if (!job->error.empty()) job->last_error = std::move(job->error);
  job->error.clear();
  job->result = nullptr;
  job->lane = lane;
  job->state = JobState::kQueued;
  job->attempts = 0;
  job->busy_retries = 0;
  job->started_at = 0;
  job->finished_at = 0;
  // Latency counts from the new start of the queue; submitted_unix_ms keeps
  // the first submit (the order `jobs` lists in).
  job->submitted_at = uv_hrtime();
  job->user_cancelled = false;
  job->lease_lost = false;
  // The flag of the attempt that was cancelled stays set for its worker.
  job->cancel = std::make_shared<std::atomic<bool>>(false);
  ++counters_.requeued;
  Notify("queued", *job);
}

void JobTable::Remove(const JobPtr& job) {
  Drop(job);
  Notify("deleted", *job);
}

void JobTable::Forget(const JobPtr& job) {
  by_key_.erase(job->key);
  if (!job->group.empty()) {
    auto it = by_group_.find(job->group);
    if (it != by_group_.end()) {
      auto& v = it->second;
      v.erase(std::remove(v.begin(), v.end(), job), v.end());
      if (v.empty()) by_group_.erase(it);
    }
  }
  --counters_.submitted;
  --Tally(job->kind, job->lane).submitted;
}

void JobTable::Adopt(const JobPtr& job) {
  if (JobPtr old = Find(job->key)) Drop(old);
  by_key_[job->key] = job;
  if (!job->group.empty()) by_group_[job->group].push_back(job);
}

void JobTable::Unlink(const JobPtr& job) {
  auto it = by_key_.find(job->key);
  if (it != by_key_.end() && it->second == job) by_key_.erase(it);
  if (!job->group.empty()) {
    auto g = by_group_.find(job->group);
    if (g != by_group_.end()) {
      auto& v = g->second;
      v.erase(std::remove(v.begin(), v.end(), job), v.end());
      if (v.empty()) by_group_.erase(g);
    }
  }
}

void JobTable::Drop(const JobPtr& job) {
  Unlink(job);
  finished_.erase(std::remove(finished_.begin(), finished_.end(), job), finished_.end());
}

void JobTable::MarkRunning(const JobPtr& job) {
  job->state = JobState::kRunning;
  job->started_at = uv_hrtime();
  ++job->attempts;
  ++counters_.running;
  Notify("started", *job);
}

void JobTable::MarkFinished(const JobPtr& job, WorkOutcome outcome) {
  if (job->state == JobState::kRunning) --counters_.running;
  job->last_error.clear();
  job->finished_at = uv_hrtime();
  JobTally& tally = Tally(job->kind, job->lane);
  switch (outcome.kind) {
    case WorkOutcome::Kind::kDone:
      ++tally.done;
      // Done with an error: a stand-in stored after a final failure (the
      // store may already have moved the result itself to its writer).
      if (!outcome.error.empty()) ++tally.fallback;
      job->state = JobState::kDone;
      job->result = std::move(outcome.result);
      // An earlier attempt's error no longer applies; a fallback brings its own.
      job->error = std::move(outcome.error);
      ++counters_.done;
      break;
    case WorkOutcome::Kind::kFailed:
    case WorkOutcome::Kind::kRetry:  // the caller decided not to retry
    case WorkOutcome::Kind::kBusy:
      job->state = JobState::kFailed;
      job->error = std::move(outcome.error);
      ++counters_.failed;
      ++tally.failed;
      break;
    case WorkOutcome::Kind::kCancelled:
      job->state = JobState::kCancelled;
      job->error = std::move(outcome.error);
      ++counters_.cancelled;
      ++tally.cancelled;
      break;
  }
  int lane = static_cast<int>(job->lane);
  if (job->started_at != 0) {
    run_time_.Record(job->finished_at - job->started_at);
    run_seconds_[lane].Observe(static_cast<double>(job->finished_at - job->started_at) / 1e9);
  }
  latency_.Record(job->finished_at - job->submitted_at);
  latency_seconds_[lane].Observe(static_cast<double>(job->finished_at - job->submitted_at) / 1e9);
  NotifyTerminal(*job);
  Finished(job);
}

void JobTable::NotifyTerminal(const JobRecord& job) const {
  if (!terminal_events_) return;
  Notify(JobStateName(job.state), job);
}

void JobTable::MarkRetrying(const JobPtr& job, std::string error, bool refund) {
  if (job->state == JobState::kRunning) --counters_.running;
  job->state = JobState::kQueued;
  job->error = std::move(error);
  if (refund && job->attempts > 0) --job->attempts;
  ++counters_.retried;
  ++Tally(job->kind, job->lane).retried;
  Notify("retried", *job);
}

void JobTable::MarkPreempted(const JobPtr& job) {
  if (job->state == JobState::kRunning) --counters_.running;
  job->state = JobState::kQueued;
  if (job->attempts > 0) --job->attempts;  // the aborted attempt is not spent
  job->started_at = 0;
  Notify("preempted", *job);
}

void JobTable::MarkReleased(const JobPtr& job) {
  if (job->state == JobState::kRunning) --counters_.running;
  job->state = JobState::kQueued;
  ++counters_.released;
  ++Tally(job->kind, job->lane).released;
  Notify("released", *job);
}

void JobTable::MarkCancelled(const JobPtr& job, const std::string& why) {
  job->state = JobState::kCancelled;
  job->error = why;
  job->last_error.clear();
  job->finished_at = uv_hrtime();
  ++counters_.cancelled;
  ++Tally(job->kind, job->lane).cancelled;
  NotifyTerminal(*job);
  Finished(job);
}

void JobTable::Finished(const JobPtr& job) {
  finished_.push_back(job);
  Fire("k:" + job->key);
  if (!job->group.empty()) {
    const auto& parts = FindGroup(job->group);
    bool all = std::all_of(parts.begin(), parts.end(),
                           [](const JobPtr& j) { return IsTerminal(j->state); });
    if (all) Fire("g:" + job->group);
  }
  Evict();
}

void JobTable::Evict() {
  while (finished_.size() > retain_finished_) {
    JobPtr old = std::move(finished_.front());
    finished_.pop_front();
    Unlink(old);
  }
}

void JobTable::Fire(const std::string& waiter_key) {
  auto it = waiters_.find(waiter_key);
  if (it == waiters_.end()) return;
  auto list = std::move(it->second);
  waiters_.erase(it);
  for (auto& [token, fn] : list) {
    waiter_keys_.erase(token);
    fn();
  }
}

uint64_t JobTable::WaitJob(const std::string& key, Waiter fn) {
  uint64_t token = next_token_++;
  std::string k = "k:" + key;
  waiters_[k].emplace_back(token, std::move(fn));
  waiter_keys_[token] = std::move(k);
  return token;
}

uint64_t JobTable::WaitGroup(const std::string& group, Waiter fn) {
  uint64_t token = next_token_++;
  std::string k = "g:" + group;
  waiters_[k].emplace_back(token, std::move(fn));
  waiter_keys_[token] = std::move(k);
  return token;
}

void JobTable::RemoveWaiter(uint64_t token) {
  auto it = waiter_keys_.find(token);
  if (it == waiter_keys_.end()) return;
  auto w = waiters_.find(it->second);
  if (w != waiters_.end()) {
    auto& v = w->second;
    v.erase(std::remove_if(v.begin(), v.end(), [&](const auto& p) { return p.first == token; }),
            v.end());
    if (v.empty()) waiters_.erase(w);
  }
  waiter_keys_.erase(it);
}

void JobTable::SetRetention(size_t retain_finished) {
  retain_finished_ = retain_finished;
  Evict();
}

std::string JobTable::NewKey(const std::string& node_id) {
  // Unique per daemon start: node, start time and a sequence number.
  static const int64_t start_ms = UnixMillis();
  return "auto:" + node_id + ":" + std::to_string(start_ms) + ":" +
         std::to_string(next_auto_key_++);
}

}  // namespace digestd
