// Daemon: builds the parts in dependency order (config -> job table ->
// dispatcher -> control socket -> PostgreSQL -> systemd notification), runs
// the loop, and tears down in reverse. It holds the lifecycle (running,
// draining, stopping) and answers the control ops; the mechanisms live in
// their own modules (dispatch/, control/, jobs/, store/, sys/).
//
// Two stores ([jobs] store). "memory": the JobTable is the only record
// (ops.cpp). "postgres" (durable.cpp): the table digestd.jobs is the record
// and the rings hold only jobs this node has claimed from it:
//   submit  -> a submit row in the write ring; the answer is sent from the
//              row's callback, after its commit (never before);
//              When the lane's last claim found the table empty and its ring
//              has room, the row is inserted already claimed by this node
//              and goes straight to the ring (no claim round trip);
//   refill  -> when a lane's ring falls to [postgres] refill_low_water, a
//              claim (FOR UPDATE SKIP LOCKED) takes due queued rows, interactive
//              lane first, at most what the ring can hold;
//   finish  -> a finish or requeue row under the lease guard; a worker slot
//              starts only while the write ring has a slot for every job in
//              flight, so a result always has somewhere to wait;
//   result  -> read from the table; a wait is woken by NOTIFY digestd_done
//              (this session LISTENs, so it hears every daemon's commits).
//   Leases of claimed jobs are renewed in the writer's batches; expired ones
//   are recovered periodically; at shutdown unstarted claims are released.
//
// One thread: Run() owns the loop and everything on it. Ownership: the
// Daemon owns every part below; the writer and store hold references to the
// PgConn, so they are destroyed first.
#pragma once

#include <uv.h>

#include <deque>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_map>
#include <unordered_set>

#include "backend/backend_health.h"
#include "config/config.h"
#include "control/control_server.h"
#include "dispatch/claim_pace.h"
#include "dispatch/delay_queue.h"
#include "dispatch/dispatcher.h"
#include "jobs/job_table.h"
#include "store/batch_writer.h"
#include "store/job_store.h"
#include "store/pg_conn.h"
#include "sys/notify.h"
#include "util/uv_handle.h"

namespace digestd {

inline constexpr int kThreadPoolHeadroom = 4;  // for libuv's own fs/DNS work

class Daemon {
 public:
  // `config_path` is re-read on reload; empty means built-in defaults.
  Daemon(Config config, std::string config_path);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Runs until shut down. Returns the process exit code: 0 after a clean
  // shutdown, 1 when startup failed (the reason is logged).
  int Run();

 private:
  enum class Phase { kRunning, kDraining, kStopping };
  struct PendingWait;
  struct DbWait;
  struct SubmitBatch;

  Status Start();
  void Teardown();

  // Control ops.
  void Handle(Request request, const PeerCred& peer, ControlServer::Reply reply);
  bool Allowed(const PeerCred& peer) const;
  void OpStatus(const Request& req, const ControlServer::Reply& reply);
  void OpSubmit(const Request& req, const ControlServer::Reply& reply);
  void OpResult(const Request& req, const ControlServer::Reply& reply);
  void OpCancel(const Request& req, const ControlServer::Reply& reply);
  void OpWorkers(const Request& req, const ControlServer::Reply& reply);
  void OpReload(const Request& req, const ControlServer::Reply& reply);
  void OpDrain(const Request& req, const ControlServer::Reply& reply);

  // Checks a submit's shape and every job in it; `specs` gets the jobs (one
  // for a single submit, then `single` is true).
  Status CheckSubmit(const Request& req, std::vector<const nlohmann::json*>* specs,
                     bool* single) const;
  // A group's status from its parts' counts.
  static const char* GroupStatusName(size_t total, size_t queued, size_t done, size_t bad,
                                     size_t terminal);
  static Status InitTimer(uv_loop_t* loop, UvHandle<uv_timer_t>& h, void* data);
  // Validates one job of a submit and queues it; the JSON answer for it.
  Result<nlohmann::json> SubmitOne(const nlohmann::json& spec, const std::string& where);
  Status CheckJobSpec(const nlohmann::json& spec, const std::string& where) const;
  nlohmann::json JobJson(const JobRecord& job) const;
  nlohmann::json GroupJson(const std::string& group) const;
  nlohmann::json StatusJson() const;
  std::string StatusLine() const;

  // Lifecycle.
  Status Reload(nlohmann::json* changes);
  void ApplyRuntimeConfig();
  void BeginShutdown(const char* why);
  void ForceShutdown(const char* why);
  void FinishShutdown();
  // Answers every open `result` wait with the job's current state.
  void AnswerWaits();
  void OnJobFinished(const JobPtr& job, WorkOutcome outcome);
  // What becomes of a job's outcome, in either store: another attempt after
  // a backoff (retryable, attempts left; a busy backend's refused no
  // attempt) or the final outcome, a failed summary replaced by the
  // configured fallback. `started`: the work really ran.
  struct Verdict {
    bool retry = false;
    int64_t delay_ms = 0;
    bool refund = false;  // the attempt is given back (busy)
    WorkOutcome outcome;  // retry: its error; else the final outcome
  };
  Verdict Judge(const JobPtr& job, WorkOutcome outcome, bool started, int max_attempts);
  // Whether `job`'s kind calls the LLM backend under the running config.
  bool UsesBackend(const JobRecord& job) const;
  // A job whose retry backoff is over goes back into its lane.
  void OnRetryDue(JobPtr job);
  // Gives up a job at shutdown: with no store it cannot wait for a restart.
  void Release(const JobPtr& job, const char* why);

  // The PostgreSQL store (durable.cpp). Loop thread only.
  bool durable() const { return pg_ != nullptr; }
  Status StartStore();
  void OnDbState(bool up, const Status& why);
  void OnWriterDbState(bool up, const Status& why);
  // The store's periodic tasks; `timer` says which one is due.
  void OnPeriodic(uv_timer_t* timer);
  void OnDbReady();
  // Sends READY=1 once: when the database answered, or after ready_timeout_s.
  void MaybeReady(bool db_answered);
  void DurableSubmit(const Request& req, const ControlServer::Reply& reply);
  void DurableResult(const Request& req, const ControlServer::Reply& reply, std::string key,
                     std::string group, int64_t wait_ms);
  void DurableCancel(const Request& req, const ControlServer::Reply& reply, const std::string& key);
  void CheckDbWait(const std::shared_ptr<DbWait>& wait, bool final);
  void EndDbWait(const std::shared_ptr<DbWait>& wait);
  void OnNotify(const std::string& channel, const std::string& payload);
  // Claims for lanes at their low water; `poll`: also lanes whose last
  // claim came back short (the periodic look for due retries).
  void Refill(bool poll = false);
  void OnClaimed(Lane lane, int asked, Result<std::vector<StoredJob>> claimed);
  void DurableFinished(const JobPtr& job, WorkOutcome outcome);
  // Queues the row that ends `job` under its lease; `then` (may be empty)
  // hears the row's outcome.
  void WriteFinish(const JobPtr& job, JobState state, nlohmann::json result, std::string error,
                   RowCallback then = {});
  void WriteRequeue(const JobPtr& job, int64_t delay_ms, bool refund, std::string error);
  void Write(WriteRow row);
  Status WriteSubmit(WriteRow row);
  void FailPendingSubmits(const Status& why);
  void FlushPending();
  void ForgetClaim(const JobPtr& job);
  // Takes in a job this node holds the lease on: into claimed_, the job
  // table and its lane's ring (released at once when that fails).
  void TakeClaim(JobPtr job);
  void AdoptOwnSubmit(const NewJob& spec, const InsertedJob& row);
  void ReleaseUnheld();
  void Settle(uint64_t row_id, int64_t token);
  void RenewLeases();
  void OnLeasesLost(std::vector<uint64_t> ids);
  void Recover(bool startup);
  void RunRetention();
  void RefreshBacklog();
  void DurableBeginShutdown();
  void DurableDrained();
  void CloseStore();
  nlohmann::json StoreStatusJson() const;
  nlohmann::json StoredJobJson(const StoredJob& job) const;
  nlohmann::json StoredGroupJson(const std::string& group,
                                 const std::vector<StoredJob>& parts) const;

  uv_loop_t loop_{};
  bool loop_ready_ = false;
  Config config_;
  std::string config_path_;
  std::string node_id_;
  int pool_size_ = 0;
  uint64_t started_at_ = 0;  // uv_hrtime at start
  Phase phase_ = Phase::kRunning;
  int exit_code_ = 0;

  std::unique_ptr<JobTable> jobs_;
  std::unique_ptr<Dispatcher> dispatcher_;
  std::unique_ptr<ControlServer> control_;
  std::unique_ptr<DelayQueue> delayed_;     // jobs waiting out a retry backoff
  std::unique_ptr<BackendHealth> backend_;  // breaker, probe, backend figures
  std::unique_ptr<Notifier> notifier_;
  UvHandle<uv_signal_t> sigterm_;
  UvHandle<uv_signal_t> sigint_;
  UvHandle<uv_signal_t> sighup_;
  UvHandle<uv_timer_t> status_timer_;
  UvHandle<uv_timer_t> grace_timer_;
  UvHandle<uv_timer_t> final_timer_;
  std::unordered_set<std::shared_ptr<PendingWait>> waits_;  // open `result` waits
  uint64_t reloads_ = 0;

  // The PostgreSQL store; all null with [jobs] store = "memory".
  std::unique_ptr<PgConn> pg_;        // claims, lookups, LISTEN, upkeep
  std::unique_ptr<JobStore> store_;   // on pg_
  std::unique_ptr<PgConn> pgw_;       // the writer's session
  std::unique_ptr<JobStore> wstore_;  // on pgw_, for the writer's statements
  std::unique_ptr<BatchWriter> writer_;
  bool migrated_ = false;           // the schema is up to date on this database
  bool migrating_ = false;          // Migrate() sent, not answered
  bool ready_sent_ = false;         // READY=1 went out
  uint64_t migrate_retry_at_ = 0;   // uv_now before which a failed migration is not retried
  bool recovering_ = false;         // a lease recovery is in flight
  bool retention_running_ = false;  // a retention delete is in flight
  bool backlog_pending_ = false;    // a backlog count is in flight
  std::string store_error_;         // the last migration / claim / recovery error
  bool claiming_[kLaneCount] = {false, false};  // a claim is in flight
  // The lane's last claim found fewer due jobs than it asked for: a submit
  // to this node may then be inserted already claimed (it jumps no queue).
  bool lane_dry_[kLaneCount] = {false, false};
  size_t self_claims_[kLaneCount] = {0, 0};  // such submits in flight
  ClaimPace pace_[kLaneCount];               // claim sizes from each lane's start rate
  bool release_unheld_pending_ = false;      // ReleaseUnheld() once it is safe
  // Every job this node holds a lease on (in a ring or running), by row id,
  // until its finish, requeue or release row is queued.
  std::unordered_map<uint64_t, JobPtr> claimed_;
  // Lease tokens of jobs whose finish or requeue row is queued but not yet
  // committed, by row id: still this node's until the row lands.
  std::unordered_map<uint64_t, int64_t> unsettled_;
  std::deque<WriteRow> pending_rows_;  // rows the full write ring refused; oldest first
  // Submits waiting for write-ring slots (a batch larger than the free
  // slots); their clients wait for the commit as any submit's do. Bounded.
  std::deque<WriteRow> pending_submits_;
  bool writer_draining_ = false;  // shutdown waits for the writer's last batch
  int forced_ = 0;                // ForceShutdown calls with the store
  Backlog backlog_{};             // from the table, every backlog_interval_ms
  int64_t backlog_unix_ms_ = 0;   // when backlog_ was read; 0: not yet
  uint64_t recovered_ = 0;        // jobs returned to the queue by lease recovery
  uint64_t claims_sent_ = 0;      // claim queries sent
  uint64_t claims_empty_ = 0;     // of those, answered with no job
  uint64_t claimed_jobs_ = 0;     // jobs they took
  uint64_t crash_failed_ = 0;     // jobs failed for crashing their workers too often
  uint64_t retention_deleted_ = 0;
  uint64_t leases_lost_ = 0;
  uint64_t lease_ignored_ = 0;  // finish rows the lease guard refused
  std::unordered_map<std::string, std::vector<std::shared_ptr<DbWait>>> key_waits_;
  std::vector<std::shared_ptr<DbWait>> group_waits_;
  UvHandle<uv_timer_t> ready_timer_;      // READY=1 without the database, after ready_timeout_s
  UvHandle<uv_timer_t> refill_timer_;     // polls the table for due jobs
  UvHandle<uv_timer_t> lease_timer_;      // lease renewals, every lease_s / 3
  UvHandle<uv_timer_t> recover_timer_;    // expired leases, every recover_interval_s
  UvHandle<uv_timer_t> retention_timer_;  // finished rows past retention_s
  UvHandle<uv_timer_t> backlog_timer_;    // backlog counts for status
};

}  // namespace digestd
