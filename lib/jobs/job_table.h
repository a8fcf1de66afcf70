// JobTable: the jobs this daemon knows, by key and by group, with the
// counters and latency samples `status` reports, and the waiters of `result`
// calls. With [jobs] store = "memory" this table is the only record: queued
// and running jobs stay until they finish; finished ones are kept for
// `result` up to `retain_finished`, oldest evicted first, so memory stays
// bounded (rings bound the queued, worker slots the running). With
// "postgres" the table digestd.jobs is the record: this table holds only the
// jobs this node has claimed (Adopt), each dropped (Drop) once its finish,
// requeue or release row is queued, and keeps no finished jobs.
//
// Loop thread only. Owns every JobRecord (shared with rings and work items).
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "jobs/job.h"
#include "obs/histogram.h"
#include "obs/latency_window.h"

namespace digestd {

struct JobCounters {
  uint64_t submitted = 0;
  uint64_t duplicates = 0;  // submits of a key that already existed
  uint64_t running = 0;
  uint64_t done = 0;
  uint64_t failed = 0;
  uint64_t cancelled = 0;
  // Given up unfinished: handed back to the PostgreSQL queue (shutdown, a
  // lost lease), or cancelled at shutdown with the memory store.
  uint64_t released = 0;
  uint64_t retried = 0;  // attempts that ended in a retry
  // Jobs queued again by request (`retry`, a replacing submit).
  uint64_t requeued = 0;
};

// The counters of the jobs of one kind on one lane, since start: what the
// metrics endpoint breaks down by kind, lane and outcome.
struct JobTally {
  uint64_t submitted = 0;  // new jobs stored (duplicates not counted)
  uint64_t done = 0;
  uint64_t failed = 0;
  uint64_t cancelled = 0;
  uint64_t fallback = 0;  // of done: a stand-in stored after a final failure (done with an error)
  uint64_t retried = 0;   // attempts that ended in a retry
  uint64_t released = 0;  // handed back unfinished (MarkReleased)
};
// By kind name, then by lane (index: static_cast<int>(Lane)). Kinds come
// from the registry (a submit of an unknown kind is refused), so it stays small.
using JobTallies = std::map<std::string, std::array<JobTally, kLaneCount>, std::less<>>;

class JobTable {
 public:
  // Told of every state change of a job here: "queued" (Create), "started",
  // "retried", "preempted", "released", and -- unless terminal events are
  // left to the store (SetTerminalEvents(false): the PostgreSQL store tells
  // them once the finish is committed) -- "done", "failed", "cancelled".
  // Called after the record changed; must not change the table.
  using Observer = std::function<void(std::string_view state, const JobRecord& job)>;
  void SetObserver(Observer observer) { observer_ = std::move(observer); }
  void SetTerminalEvents(bool here) { terminal_events_ = here; }
  // Tells the observer of `state` of `job` (also for a store's own events).
  void Notify(std::string_view state, const JobRecord& job) const {
    if (observer_) observer_(state, job);
  }
  bool observed() const { return static_cast<bool>(observer_); }

  // A callback fired once when the awaited job (or whole group) is terminal.
  using Waiter = std::function<void()>;

  explicit JobTable(size_t retain_finished) : retain_finished_(retain_finished) {}

  // nullptr when unknown (or evicted).
  JobPtr Find(const std::string& key) const;
  // Every known job of `group`, in submit order; empty when unknown.
  const std::vector<JobPtr>& FindGroup(const std::string& group) const;

  // Creates a queued record. The key must not exist (check with Find).
  JobPtr Create(std::string key, std::string group, std::string kind, Lane lane,
                nlohmann::json input);
  // Every known job, in no particular order. `fn` must not change the table.
  void ForEach(const std::function<void(const JobPtr&)>& fn) const;
  // A finished job (done, failed or cancelled) is queued again under its key
  // (`retry`, or a submit with "replace"): attempts and busy retries start
  // from 0, its error is kept as last_error, its result is dropped, and it
  // leaves the finished jobs retention counts. `input`, when not null,
  // replaces its input (the kind may change with it). Tells the observer
  // "queued". The caller puts it in a ring.
  void Requeue(const JobPtr& job, Lane lane, std::string kind = {},
               std::shared_ptr<const nlohmann::json> input = nullptr);
  // Removes a finished job for good (`delete`): gone from Find and
  // FindGroup; tells the observer "deleted".
  void Remove(const JobPtr& job);
  // Forgets a record that was never acknowledged (its enqueue failed).
  void Forget(const JobPtr& job);
  // Takes in a record made elsewhere (a job claimed from PostgreSQL),
  // replacing any record of the same key; counts nothing.
  void Adopt(const JobPtr& job);
  // Removes `job` (finished, requeued or released to the table) from the
  // lookups, counting nothing and firing no waiter.
  void Drop(const JobPtr& job);

  void MarkRunning(const JobPtr& job);
  // Moves a job to its terminal state, records its latency, fires waiters.
  // A kDone outcome's error (normally empty) replaces the job's error: a
  // stored fallback says there why it is not the real result.
  void MarkFinished(const JobPtr& job, WorkOutcome outcome);
  // A running job's attempt failed and it waits for another: back to queued,
  // keeping the error. `refund` gives the attempt back (a busy backend).
  void MarkRetrying(const JobPtr& job, std::string error, bool refund);
  // A queued job cancelled before it ran.
  void MarkCancelled(const JobPtr& job, const std::string& why);
  // A job handed back to the PostgreSQL queue unfinished (released at
  // shutdown, or its lease lost): counted as released, no longer running.
  void MarkReleased(const JobPtr& job);
  // A running job's attempt was aborted for interactive work: queued again,
  // the attempt given back (the dispatcher counts the preemption).
  void MarkPreempted(const JobPtr& job);
  void NoteDuplicate() { ++counters_.duplicates; }
  // A job queued elsewhere (PostgreSQL's table) was cancelled by this node.
  void NoteCancelled() { ++counters_.cancelled; }
  // A job queued elsewhere (PostgreSQL's table) failed there without
  // running (a job it needs failed).
  void NoteFailed() { ++counters_.failed; }
  void NoteSubmitted() { ++counters_.submitted; }
  // A new job of `kind` on `lane` was stored elsewhere (PostgreSQL): counted
  // in counters() and in its tally.
  void NoteSubmitted(std::string_view kind, Lane lane) {
    ++counters_.submitted;
    ++Tally(kind, lane).submitted;
  }
  void NoteReleased(size_t n) { counters_.released += n; }
  // Jobs queued again by request elsewhere (PostgreSQL's table).
  void NoteRequeued(size_t n) { counters_.requeued += n; }

  // Registers `fn` to run when `key` is terminal; returns a token for
  // RemoveWaiter. The caller checks the current state first.
  uint64_t WaitJob(const std::string& key, Waiter fn);
  // Registers `fn` to run when every job of `group` is terminal.
  uint64_t WaitGroup(const std::string& group, Waiter fn);
  void RemoveWaiter(uint64_t token);

  void SetRetention(size_t retain_finished);
  // Generates a key for a job submitted without one.
  std::string NewKey(const std::string& node_id);

  const JobCounters& counters() const { return counters_; }
  const LatencyWindow& latency() const { return latency_; }    // submit -> finish
  const LatencyWindow& run_time() const { return run_time_; }  // start -> finish
  size_t size() const { return by_key_.size(); }
  // Per kind and lane (NoteSubmitted() without them counts in no tally).
  const JobTallies& tallies() const { return tallies_; }
  // The same spans as latency() and run_time(), per lane, as histograms in
  // seconds since start (JobSecondsBuckets).
  const Histogram& latency_histogram(Lane lane) const {
    return latency_seconds_[static_cast<int>(lane)];
  }
  const Histogram& run_time_histogram(Lane lane) const {
    return run_seconds_[static_cast<int>(lane)];
  }

 private:
  JobTally& Tally(std::string_view kind, Lane lane);
  void Finished(const JobPtr& job);
  void NotifyTerminal(const JobRecord& job) const;
  Observer observer_;
  bool terminal_events_ = true;
  // Removes `job` from the key and group lookups (when it is the one there).
  void Unlink(const JobPtr& job);
  void Evict();
  void Fire(const std::string& waiter_key);

  size_t retain_finished_;
  uint64_t next_id_ = 1;
  uint64_t next_token_ = 1;
  uint64_t next_auto_key_ = 1;
  std::unordered_map<std::string, JobPtr> by_key_;
  std::unordered_map<std::string, std::vector<JobPtr>> by_group_;
  std::deque<JobPtr> finished_;  // oldest first, for eviction
  // "k:<key>" or "g:<group>" -> (token, waiter)
  std::unordered_map<std::string, std::vector<std::pair<uint64_t, Waiter>>> waiters_;
  std::unordered_map<uint64_t, std::string> waiter_keys_;
  JobCounters counters_;
  LatencyWindow latency_;
  LatencyWindow run_time_;
  JobTallies tallies_;
  std::array<Histogram, kLaneCount> latency_seconds_{Histogram(JobSecondsBuckets()),
                                                     Histogram(JobSecondsBuckets())};
  std::array<Histogram, kLaneCount> run_seconds_{Histogram(JobSecondsBuckets()),
                                                 Histogram(JobSecondsBuckets())};
};

}  // namespace digestd
