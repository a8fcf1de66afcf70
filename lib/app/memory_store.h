// MemoryStore: [jobs] store = "memory". The JobTable is the only record of
// jobs: a submit is queued in its lane's ring at once, a retry waits out its
// backoff in a DelayQueue, `result` waits on the table's waiters, and
// finished jobs are kept for `result` up to [jobs] retain_finished. Nothing
// survives a restart; at shutdown, jobs that cannot finish are cancelled
// with a reason ("released").
//
// Loop thread only. Owns its DelayQueue and open `result` waits; everything
// in StoreEnv is the Daemon's.
#pragma once

#include <memory>
#include <unordered_set>

#include "app/store.h"
#include "dispatch/delay_queue.h"
#include "util/uv_handle.h"

namespace digestd {

class MemoryStore final : public Store {
 public:
  explicit MemoryStore(StoreEnv env);
  ~MemoryStore() override;

  Status Start() override;
  std::string Describe() const override {
    return "jobs in memory only ([jobs] store = \"memory\")";
  }
  void Submit(const Request& req, std::vector<const nlohmann::json*> specs, bool single,
              const ControlServer::Reply& reply, SubmitThen then) override;
  void GetResult(const Request& req, ResultQuery query, const ControlServer::Reply& reply) override;
  void Cancel(const Request& req, const std::string& key,
              const ControlServer::Reply& reply) override;
  void CancelGroup(const Request& req, const std::string& group,
                   const ControlServer::Reply& reply) override;
  void ListJobs(const Request& req, JobsQuery query, const ControlServer::Reply& reply) override;
  void Retry(const Request& req, JobTarget target, Lane lane,
             const ControlServer::Reply& reply) override;
  void Delete(const Request& req, JobTarget target, const ControlServer::Reply& reply) override;
  void OnJobStarted(const JobPtr&) override {}
  bool MayStart(const JobRecord&) override { return true; }
  void OnJobFinished(const JobPtr& job, WorkOutcome outcome) override;
  void BeginShutdown() override;
  uint64_t ForceShutdown(const char* why) override;
  void OnDrained() override { env_.drained(); }
  void Close() override;
  void ApplyConfig() override;
  nlohmann::json StatusJson() const override { return {{"store", "memory"}}; }
  size_t waiting_retry() const override { return delayed_ ? delayed_->size() : 0; }
  std::string StatusSuffix() const override { return ""; }

 private:
  struct PendingWait;

  Result<nlohmann::json> SubmitOne(const nlohmann::json& spec);
  // A submit with "replace" of an existing key whose kind or input differ.
  Result<nlohmann::json> Replace(const JobPtr& job, const nlohmann::json& spec);
  // Queues a finished (or just taken out) job again; see JobTable::Requeue.
  // A lane that is full ends it cancelled again with the reason.
  Status Requeue(const JobPtr& job, Lane lane, std::string kind = {},
                 std::shared_ptr<const nlohmann::json> input = nullptr);
  // A job whose retry backoff is over goes back into its lane.
  void OnRetryDue(JobPtr job);
  // Gives up a job at shutdown: with no store it cannot wait for a restart.
  void Release(const JobPtr& job, const char* why);
  // Answers every open `result` wait with the job's current state.
  void AnswerWaits();
  // A done job whose ttl has passed: a submit of its key runs it again.
  bool Expired(const JobRecord& job) const;
  // A job with "after": true when every job it needs is done (its input
  // then holds their results, and it may be queued); when one failed, was
  // cancelled or is gone, the job is failed with the reason. Otherwise it
  // waits: it is looked at again (ReleaseDue) once each of them ends.
  bool ReleaseWhenReady(const JobPtr& job);
  // Looks again, on a turn of the loop of its own, at the jobs whose
  // dependencies ended (not inside the table's waiter, which runs in the
  // middle of another job's finish).
  void ReleaseDue();
  nlohmann::json View(const JobRecord& job) const;

  StoreEnv env_;
  std::unique_ptr<DelayQueue> delayed_;                     // jobs waiting out a retry backoff
  std::unordered_set<std::shared_ptr<PendingWait>> waits_;  // open `result` waits
  bool waits_answered_ = false;                             // the shutdown answered every wait
  UvHandle<uv_timer_t> release_timer_;                      // runs ReleaseDue
  std::vector<JobPtr> release_due_;  // jobs with "after" whose dependency ended
};

}  // namespace digestd
