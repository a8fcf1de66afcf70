// PgStore: [jobs] store = "postgres", the shipped default. The table
// digestd.jobs is the record of every job; this node's rings hold only the
// jobs it has claimed from it. The flow (docs/architecture.md, "The life
// of a job"):
//   submit  -> a submit row in the write ring; the answer is sent from the
//              row's callback, after its commit (never before). While the
//              lane's last claim found nothing due and its ring has room, the
//              row is inserted already claimed by this node and goes straight
//              to the ring (no claim round trip).
//   refill  -> when a lane's ring falls to its low water, a claim (FOR UPDATE
//              SKIP LOCKED) takes due queued rows, interactive lane first, at
//              most what the ring can hold, sized by the lane's start rate.
//   finish  -> a finish or requeue row under the lease guard; a worker slot
//              starts only while the write ring has a slot for every job in
//              flight, so a result always has somewhere to wait.
//   result  -> read from the table; a wait is woken by NOTIFY digestd_done
//              (this session LISTENs, so it hears every daemon's commits).
// Leases of claimed jobs are renewed in the writer's batches; expired ones
// are recovered periodically; at shutdown unstarted claims are released.
// Which jobs this node holds, and when it may claim or release, is kept by a
// ClaimBook (claim_book.h), whose rules are its unit tests.
//
// The code is split by concern: pg_store.cpp (sessions, readiness, status,
// shutdown), pg_store_jobs.cpp (submit, result, cancel, outcomes and their
// rows), pg_store_claims.cpp (claims, leases, recovery, retention),
// pg_store_manage.cpp (the `jobs` list, retry, replace, group cancel,
// delete: each one statement on the claims session).
//
// Loop thread only. Owns both PostgreSQL sessions, the JobStores on them, the
// BatchWriter and its timers; destroyed after Close() and a loop run that
// lets their handles close. The writer and stores hold references to the
// sessions, so they are declared after them (destroyed first).
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "app/claim_book.h"
#include "app/store.h"
#include "dispatch/claim_pace.h"
#include "store/batch_writer.h"
#include "store/job_store.h"
#include "store/pg_conn.h"
#include "util/uv_handle.h"

namespace digestd {

class PgStore final : public Store {
 public:
  explicit PgStore(StoreEnv env);
  ~PgStore() override;

  Status Start() override;
  std::string Describe() const override;
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
  void OnJobStarted(const JobPtr& job) override;
  bool MayStart(const JobRecord& job) override;
  void OnJobFinished(const JobPtr& job, WorkOutcome outcome) override;
  void BeginShutdown() override;
  uint64_t ForceShutdown(const char* why) override;
  void OnDrained() override;
  void Close() override;
  void ApplyConfig() override;
  nlohmann::json StatusJson() const override;
  size_t waiting_retry() const override { return 0; }  // retries wait in the table
  std::string StatusSuffix() const override;

 private:
  struct SubmitBatch;
  // An open `result` wait: answered when its job (or every part of its
  // group) is terminal, at wait_ms with what is there, or at shutdown.
  struct DbWait : std::enable_shared_from_this<DbWait> {
    PgStore* owner = nullptr;
    nlohmann::json id;
    ControlServer::Reply reply;
    std::string key;  // one of key and group
    std::string group;
    UvHandle<uv_timer_t> timer;
    bool checking = false;  // a lookup is in flight
    bool recheck = false;   // something finished while it was
    bool expired = false;   // wait_ms passed: the next answer is final
    bool counted = false;   // wait_ms > 0: counted in the precompute tally
    int looks = 0;          // lookups answered so far
    bool ended = false;
  };

  const Config& config() const { return *env_.config; }
  // [postgres] lease_s in nanoseconds.
  uint64_t LeaseNs() const {
    return static_cast<uint64_t>(config().postgres.lease_s) * 1000000000ull;
  }
  Phase phase() const { return *env_.phase; }

  // pg_store.cpp: sessions and readiness.
  void OnDbState(bool up, const Status& why);
  void OnWriterDbState(bool up, const Status& why);
  void OnPeriodic(uv_timer_t* timer);
  void OnDbReady();
  // Calls env.ready once: when the database answered, or after ready_timeout_s.
  void MaybeReady(bool db_answered);
  void Drained();  // the writer's last batch, then env.drained
  // A finish row waits for the database (in the writer or pending_rows_).
  bool ResultsWaiting() const;

  // pg_store_jobs.cpp: results and their waits.
  void CheckDbWait(const std::shared_ptr<DbWait>& wait, bool final);
  // A `result` waits for this job (its key, or its group).
  bool HasWaiter(const std::string& key, const std::string& group) const;
  // A wait on `key` (or on `group` when it is not empty) began: a finish of
  // it that still waits for the batch window is committed at once.
  void HurryFinishes(const std::string& key, const std::string& group);

 public:
  void PromoteQueued(const ResultQuery& query) override;
  uint64_t promoted() const override { return promoted_; }

 private:
  // Reads the job again for every wait on its key or group (after its
  // finish committed).
  void WakeWaiters(const std::string& key, const std::string& group);
  void EndDbWait(const std::shared_ptr<DbWait>& wait);
  void OnNotify(const std::string& channel, const std::string& payload);
  // Rows: queues the row that ends `job` under its lease; `then` (may be
  // empty) hears the row's outcome.
  void WriteFinish(const JobPtr& job, JobState state, nlohmann::json result, std::string error,
                   RowCallback then = {});
  void WriteRequeue(const JobPtr& job, int64_t delay_ms, bool refund, std::string error,
                    RowCallback then = {});
  void Write(WriteRow row);
  Status WriteSubmit(WriteRow row);
  void FailPendingSubmits(const Status& why);
  void FlushPending();
  std::string UnavailableReason() const;

  // pg_store_manage.cpp.
  // Whether the claims session can take a management statement; else the
  // unavailable error for `what` ("retry", ...).
  Status ManageReady(const char* what) const;
  // A submit with "replace" of a key whose row has another input: the row
  // is queued again with `rep`; `done` gets the submit answer or the error.
  void ReplaceJob(Replacement rep, std::function<void(Result<nlohmann::json>)> done);
  // Jobs a by-request statement queued again: told as "queued", and their
  // lane is claimed from at once.
  void OnQueuedAgain(const std::vector<TouchedJob>& rows, Lane lane);
  // A job this node claimed and has not started, cancelled by request:
  // ended here and its cancelled row written; `then` hears the row.
  void CancelHeldQueued(const JobPtr& job, RowCallback then);

  // pg_store_claims.cpp.
  // Claims for lanes at their low water; `poll`: also lanes whose last
  // claim came back short (the periodic look for due retries).
  void Refill(bool poll = false);
  // `sent_ns`: when the claim was sent (uv_hrtime); its leases run at least
  // until then + lease_s.
  void OnClaimed(Lane lane, int asked, uint64_t sent_ns, Result<std::vector<StoredJob>> claimed);
  // Takes in a job this node holds the lease on: into the book, the job
  // table and its lane's ring (released at once when that fails).
  void TakeClaim(JobPtr job);
  void AdoptOwnSubmit(const NewJob& spec, const InsertedJob& row, uint64_t sent_ns);
  void ForgetClaim(const JobPtr& job);
  void ReleaseUnheld();
  void RenewLeases();
  void OnLeasesLost(std::vector<uint64_t> ids);
  void OnLeasesRenewed(const std::vector<LeaseRef>& renewed, uint64_t sent_ns);
  // A claimed job whose lease ran out before it could start (this node was
  // paused or starved): dropped here, left to lease recovery.
  void DropExpiredClaim(const JobPtr& job);
  // A claimed job still in its ring that this node gives up: out of the
  // book and the job table, and marked so the dispatcher skips it.
  void SkipQueuedClaim(const JobPtr& job);
  void Recover(bool startup);
  void RunRetention();
  void RefreshBacklog();
  // Hands back every claimed job that has not started, then the pills.
  void ReleaseQueued();

  StoreEnv env_;
  std::unique_ptr<PgConn> pg_;        // claims, lookups, LISTEN, upkeep
  std::unique_ptr<JobStore> store_;   // on pg_
  std::unique_ptr<PgConn> pgw_;       // the writer's session
  std::unique_ptr<JobStore> wstore_;  // on pgw_, for the writer's statements
  std::unique_ptr<BatchWriter> writer_;
  ClaimBook book_;
  ClaimPace pace_[kLaneCount];         // claim sizes from each lane's start rate
  bool migrated_ = false;              // the schema is up to date on this database
  bool migrating_ = false;             // Migrate() sent, not answered
  bool ready_sent_ = false;            // env.ready was called
  uint64_t migrate_retry_at_ = 0;      // uv_now before which a failed migration is not retried
  bool recovering_ = false;            // a lease recovery is in flight
  bool retention_running_ = false;     // a retention delete is in flight
  bool backlog_pending_ = false;       // a backlog count is in flight
  std::string store_error_;            // the last migration / claim / recovery error
  std::deque<WriteRow> pending_rows_;  // rows the full write ring refused; oldest first
  // Submits waiting for write-ring slots (a batch larger than the free
  // slots); their clients wait for the commit as any submit's do. Bounded.
  std::deque<WriteRow> pending_submits_;
  bool writer_draining_ = false;  // shutdown waits for the writer's last batch
  int forced_ = 0;                // ForceShutdown calls
  bool closed_ = false;
  Backlog backlog_{};            // from the table, every backlog_interval_ms
  int64_t backlog_unix_ms_ = 0;  // when backlog_ was read; 0: not yet
  uint64_t recovered_ = 0;       // jobs returned to the queue by lease recovery
  // Run once no claim is in flight: cancels that found their row claimed by
  // this node before the claim's answer arrived.
  std::vector<std::function<void()>> after_claims_;
  void RunAfterClaims();
  // Counts `group`'s parts in the table and sends its progress event, when
  // a subscriber wants it. group -> a part ended while a count was in flight.
  void PublishGroupProgress(const std::string& group);
  std::map<std::string, bool> group_counts_;
  // Jobs with "after" (JobStore::ReleaseAfter): after every commit that
  // ends a job of `group` or stores waiting ones, a release for the group;
  // one statement in flight, the groups that come meanwhile gathered for
  // the next. "" in the set: every group (after lease recovery, which also
  // heals a release lost with a crash).
  void QueueRelease(const std::string& group);
  void SendRelease();
  std::set<std::string> release_groups_;
  bool release_all_ = false;
  bool releasing_ = false;
  uint64_t released_after_ = 0;  // jobs made due when their dependencies were done
  uint64_t claims_sent_ = 0;     // claim queries sent
  uint64_t claims_empty_ = 0;    // of those, answered with no job
  uint64_t claimed_jobs_ = 0;    // jobs they took
  uint64_t crash_failed_ = 0;    // jobs failed for crashing their workers too often
  uint64_t retention_deleted_ = 0;
  uint64_t leases_lost_ = 0;
  uint64_t expired_unstarted_ = 0;  // claims dropped: their lease ran out before a start
  uint64_t lease_ignored_ = 0;      // finish rows the lease guard refused
  uint64_t promoted_ = 0;           // queued rows moved to the interactive lane
  std::unordered_map<std::string, std::vector<std::shared_ptr<DbWait>>> key_waits_;
  std::vector<std::shared_ptr<DbWait>> group_waits_;
  UvHandle<uv_timer_t> ready_timer_;      // ready without the database, after ready_timeout_s
  UvHandle<uv_timer_t> refill_timer_;     // polls the table for due jobs
  UvHandle<uv_timer_t> lease_timer_;      // lease renewals, every lease_s / 3
  UvHandle<uv_timer_t> recover_timer_;    // expired leases, every recover_interval_s
  UvHandle<uv_timer_t> retention_timer_;  // finished rows past retention_s
  UvHandle<uv_timer_t> backlog_timer_;    // backlog counts for status
};

}  // namespace digestd
