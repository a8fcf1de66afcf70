// JobStore: the statements on digestd.jobs, as asynchronous calls on a
// PgConn whose callbacks run on the loop thread. Every statement is
// parameterised (rows travel as one jsonb parameter, unpacked with
// jsonb_to_recordset) and prepared once per session.
//
// Attempts (the rule every statement keeps): an attempt is spent when a job
// starts, never when it is claimed, so a crash spends attempts only of jobs
// that ran.
//   * Claim leaves attempts alone and started_at NULL (claimed, not started).
//   * The start mark (a renewal whose LeaseRef has started_ms) sets
//     started_at and counts the attempt, once. Finish and Requeue rows carry
//     started_ms too and count it when no mark did (a job that ended before
//     its mark was written).
//   * Requeue keeps a started attempt, or gives it back (`refund_attempt`:
//     the backend was busy, 429/503; or a release of a job never started).
//   * RecoverExpired returns a job whose lease expired (or, at startup, one
//     this node held when it died) to `queued`. A started one (started_at
//     set) keeps its attempt and, when attempts >= max_attempts, ends
//     `failed` with "worker crashed or hung: attempt N of M ...". One whose
//     start was never recorded spends nothing and counts in lost_unstarted:
//     the daemon records such a job's next start before it runs it, so a
//     job that keeps killing its worker still ends after max_attempts
//     starts, while jobs that only sat in a crashed node's ring never fail.
//   The daemon decides between Requeue and Finish(failed) for a retryable
//   failure from the attempts count (attempts < max_attempts: retry).
//
// The lease guard: a claim sets lease_owner = this node and a fresh
// lease_token (digestd.lease_token_seq). Finish, Requeue, Release and
// RenewLeases change a row only WHERE status = 'running' AND lease_owner =
// node AND lease_token = token, in the same statement, so a worker whose job
// was rescued (lease expired, claimed again) can never overwrite the rescuer.
// They answer per row whether the row now holds what this lease wrote:
// `false` means ignored (the lease was lost). A repeat of a write that already
// committed (the commit's answer was lost with the connection) answers true
// and changes nothing, so every write is idempotent.
//
// Text: PostgreSQL stores no NUL character in text or jsonb; NULs in results
// and errors are replaced with U+FFFD, and invalid UTF-8 likewise. A submit's
// key or input holding one is refused by the server (BadRequest).
//
// Threads: loop thread only. Lifetimes: `conn` must outlive the JobStore;
// callbacks hold no reference to the JobStore. Every call returns
// Unavailable, without calling `done`, when the connection is not up;
// otherwise `done` runs exactly once with the outcome (PgConn's codes).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "jobs/job.h"
#include "store/pg_conn.h"
#include "util/status.h"

namespace digestd {

// The `jobs` op's filters and page (checked by ParseJobsQuery in
// app/job_query.h), answered by both stores.
inline constexpr int64_t kJobsDefaultLimit = 50;
inline constexpr int64_t kJobsMaxLimit = 500;

// A position in the `jobs` order: newest first, by the id each store gives
// its jobs in the order they are stored (the row's bigserial id, the job
// table's record id). Ordering by id rather than by created_at lets the
// PostgreSQL store page through its primary key: no index of its own to
// write on every claim and finish of the queue table.
struct JobsCursor {
  uint64_t id = 0;  // the last job of a page; the next page starts below it
};

// A `jobs` request.
struct JobsQuery {
  std::vector<JobState> states;  // empty: any state
  std::string group;             // "": any
  std::string kind;
  std::optional<Lane> lane;
  std::string key_prefix;
  int64_t max_age_s = -1;  // >= 0: submitted at most this many seconds ago
  int64_t min_age_s = -1;  // >= 0: submitted at least this many seconds ago
  int64_t limit = kJobsDefaultLimit;
  std::optional<JobsCursor> after;  // the page after this position

  // Whether a job with these fields passes every filter but the cursor.
  // `age_ms` is now minus its submit time.
  bool Matches(JobState state, const std::string& key, const std::string& job_group,
               const std::string& job_kind, Lane job_lane, int64_t age_ms) const;
};

// Whether `a` comes before `b` in the `jobs` order (newer first).
inline bool Before(const JobsCursor& a, const JobsCursor& b) {
  return a.id > b.id;
}

// A job to insert (a submit).
struct NewJob {
  std::string key;
  std::string group;  // "" for none
  std::string kind;
  Lane lane = Lane::kBackground;
  std::shared_ptr<const nlohmann::json> input;  // null: {}
  uint64_t input_hash = 0;  // InputHash(kind, input): a later submit of the key is compared to it
  int max_attempts = 3;
  // Non-empty: the row is created already claimed by this node (running,
  // not started, a fresh lease token, lease for lease_s seconds) -- for a
  // submit that its own daemon can start at once. A key that exists is
  // left as it is.
  std::string claim_owner;
  int lease_s = 0;
  int64_t ttl_s = 0;               // seconds the result stays fresh once done; 0: for ever
  std::vector<std::string> after;  // keys it needs: it waits (run_after = infinity) till done
};

// What inserting one NewJob found.
struct InsertedJob {
  uint64_t id = 0;       // 0: the existing row vanished meanwhile (retention); submit again
  bool created = false;  // false: the key existed and nothing was written
  JobState status = JobState::kQueued;  // the row's status (the existing row's when !created)
  int64_t lease_token = 0;              // created with claim_owner: the claim's token; else 0
  // !created: the existing row has another input hash (rows from before
  // schema version 4 have none and never conflict).
  bool conflict = false;
  // !created: the existing row is done and its ttl has passed.
  bool expired = false;
};

// A job row as read back (Claim, Lookup, LookupGroup).
struct StoredJob {
  uint64_t id = 0;
  std::string key;
  std::string group;
  std::string kind;
  Lane lane = Lane::kBackground;
  nlohmann::json input;
  JobState state = JobState::kQueued;
  int attempts = 0;
  int max_attempts = 0;
  std::string lease_owner;
  int64_t lease_token = 0;
  nlohmann::json result;  // null unless done
  std::string error;
  int64_t created_at_ms = 0;  // Unix milliseconds; 0 when unset
  int64_t started_at_ms = 0;
  int64_t finished_at_ms = 0;
  int64_t run_after_ms = 0;
  int lost_unstarted = 0;  // claims lost before their start was recorded
  int busy_retries = 0;    // busy answers so far (the backoff's exponent)
  int preempted = 0;       // attempts aborted for interactive work (no attempt spent)
  std::string last_error;  // the error from before a retry or replace
};

// A job that `retry`, a replacing submit or `delete` looked at, and whether
// the statement changed it (`state` is the state before).
struct TouchedJob {
  StoredJob job;  // id, key, group, kind, lane, state, attempts, error, lease_owner, started_at
  bool changed = false;
};

// A replacing submit's new content for an existing key.
struct Replacement {
  std::string key;
  std::string kind;
  Lane lane = Lane::kBackground;
  std::shared_ptr<const nlohmann::json> input;
  uint64_t input_hash = 0;
  int64_t ttl_s = 0;
};

// What a group cancel in the table found.
struct GroupCancel {
  std::vector<StoredJob> cancelled;  // queued rows now cancelled (key, group, kind, lane, attempts)
  int64_t elsewhere = 0;             // running under another node's lease
  std::string elsewhere_nodes;       // those nodes, comma-separated
  int64_t total = 0;                 // rows of the group
};

// A claim this node holds.
struct LeaseRef {
  uint64_t id = 0;
  int64_t token = 0;
  // In a renewal: > 0 records that the job started then (Unix ms), which
  // counts its attempt (once); 0 renews only.
  int64_t started_ms = 0;
};

// Ends a running job: kDone with `result`, kFailed or kCancelled with `error`.
struct FinishRow {
  uint64_t id = 0;
  int64_t token = 0;
  std::string key;  // for NOTIFY
  JobState state = JobState::kDone;
  nlohmann::json result;
  std::string error;
  int64_t started_ms = 0;  // > 0: the attempt started then (counted unless marked)
  // > 0: the job ended then (Unix ms), so finished_at - started_at is the
  // job's own run time, not the writer's wait; 0: the commit's time.
  int64_t finished_ms = 0;
  int preempted = 0;  // > 0: the job's preemption count from now on
  // Someone waits for it (an interactive job, or a `result` wait): the
  // writer commits it at once, as it does submits, not after batch_ms.
  bool urgent = false;
  std::string group = {};  // not written; lets a `result` wait on a group find it
};

// Puts a running job back in the queue, due after `delay_ms`.
struct RequeueRow {
  uint64_t id = 0;
  int64_t token = 0;
  int64_t delay_ms = 0;
  bool refund_attempt = false;  // give the attempt back (busy backend, release)
  std::string error;            // kept on the row for status; "" leaves it
  int64_t started_ms = 0;       // > 0: the attempt started then (counted unless refunded)
  int busy_retries = -1;        // >= 0: the row's busy count from now on; -1 leaves it
  int preempted = 0;            // > 0: the job's preemption count from now on
};

struct RecoverCounts {
  uint64_t requeued = 0;
  std::vector<std::string> failed_keys;  // ended failed (attempts used up)
};

// Non-terminal jobs in the table, by lane (index: Lane).
struct Backlog {
  std::array<int64_t, kLaneCount> queued{};   // due now
  std::array<int64_t, kLaneCount> delayed{};  // queued, run_after in the future
  std::array<int64_t, kLaneCount> running{};
};

// The channel finished keys are announced on; each payload is a JSON array
// of keys, under NOTIFY's 8000-byte limit (kFinishSql chunks them).
inline constexpr const char* kDoneChannel = "digestd_done";

class JobStore {
 public:
  template <typename T>
  using Callback = std::function<void(Result<T>)>;

  // `node_id` is written as lease_owner by Claim and required by the guard.
  JobStore(PgConn& conn, std::string node_id);

  // Inserts `jobs` in one transaction: INSERT ... ON CONFLICT (key) DO
  // NOTHING, then a lookup of every key; one InsertedJob per job, in order.
  // The same key twice in one call: the first creates, the second finds it.
  [[nodiscard]] Status InsertJobs(std::vector<NewJob> jobs,
                                  Callback<std::vector<InsertedJob>> done);

  // Claims up to `n` due queued jobs of `lane`, oldest run_after first
  // (FOR UPDATE SKIP LOCKED: concurrent claimers never get the same job),
  // making them running with this node's lease for `lease_s` seconds and a
  // fresh token (not started: no attempt spent). The jobs come back in claim
  // order.
  [[nodiscard]] Status Claim(Lane lane, int n, int lease_s, Callback<std::vector<StoredJob>> done);

  // Finishes rows under the lease guard; per row, whether it was accepted.
  [[nodiscard]] Status Finish(std::vector<FinishRow> rows, Callback<std::vector<bool>> done);
  // Requeues rows under the lease guard; per row, whether it was accepted
  // (also true when the job is queued again with the same token, e.g. after a
  // repeat or a recovery that did the same).
  [[nodiscard]] Status Requeue(std::vector<RequeueRow> rows, Callback<std::vector<bool>> done);
  // Requeue with no delay and the attempt given back.
  [[nodiscard]] Status Release(std::vector<LeaseRef> leases, Callback<std::vector<bool>> done);
  // Extends the leases to now + lease_s; `done` gets the ids whose lease is
  // lost (no longer running under this node and token): stop their work.
  [[nodiscard]] Status RenewLeases(std::vector<LeaseRef> leases, int lease_s,
                                   Callback<std::vector<uint64_t>> done);
  // Returns running jobs whose lease expired -- and with `startup`, every job
  // this node still holds from before -- to queued, or to failed when their
  // attempts are used up (see the rule above); failed keys are NOTIFYed.
  [[nodiscard]] Status RecoverExpired(bool startup, Callback<RecoverCounts> done);

  // After a reconnect: returns to `queued`, spending no attempt, every
  // job running under this node's name whose lease token is not in `held` --
  // claims whose answer was lost with the old connection, so this node never
  // started them. `done` gets how many. (Node ids must be unique per daemon.)
  [[nodiscard]] Status ReleaseUnheld(std::vector<int64_t> held, Callback<uint64_t> done);

  // The job with `key`; nullopt when there is none.
  [[nodiscard]] Status Lookup(std::string key, Callback<std::optional<StoredJob>> done);
  // Jobs of `groups` (empty: of every group) waiting for the jobs their
  // "after" names: made due, with those jobs' results in their input as
  // "after_results", once all are done; failed with the reason once one
  // failed, was cancelled or is gone (failed keys are NOTIFYed). `done` gets
  // the rows it changed (key, group, kind, lane, state, error). Run it after
  // every commit that ends a job of a group, or that stores waiting jobs.
  [[nodiscard]] Status ReleaseAfter(std::vector<std::string> groups,
                                    Callback<std::vector<StoredJob>> done);
  // Its statement (a test checks its plan reads the waiting rows through
  // jobs_waiting_after, not the table).
  static const char* ReleaseAfterSql();
  // Every job of `group` in submit order (at most 10,000); empty when none.
  [[nodiscard]] Status LookupGroup(std::string group, Callback<std::vector<StoredJob>> done);
  // Queued (due, delayed) and running jobs per lane. Reads two partial
  // indexes, not the table: cheap with any number of finished rows, but
  // still a query -- cache it, do not run it per status call.
  [[nodiscard]] Status BacklogCounts(Callback<Backlog> done);
  // Its statement (a test checks its plan reads only the partial indexes).
  static const char* BacklogSql();
  // Deletes at most `limit` finished jobs whose finished_at is older than
  // `retention_s` seconds, oldest first; `done` gets how many. Repeat while
  // it returns `limit`.
  [[nodiscard]] Status DeleteFinishedOlderThan(int64_t retention_s, int limit,
                                               Callback<uint64_t> done);
  // Cancels the job with `key` if it is still queued in the table (a job
  // some daemon is running is that daemon's to cancel); `done` gets the
  // cancelled job (key, group, kind, lane, attempts, state, error), or
  // nullopt when nothing queued had the key. The key is NOTIFYed.
  [[nodiscard]] Status CancelQueued(std::string key, std::string why,
                                    Callback<std::optional<StoredJob>> done);
  // `jobs`: one page of jobs matching `query`, newest first (by id), at
  // most query.limit + 1 rows (the extra one says there is a next page).
  // The statement is built per query (only the filters it has), so the
  // planner sees the real conditions; the primary key serves the order and
  // the cursor, jobs_failed a list of failed and cancelled jobs.
  [[nodiscard]] Status ListJobs(const JobsQuery& query, Callback<std::vector<StoredJob>> done);
  // Its statement, for plan checks.
  static PgStatement ListJobsStatement(const JobsQuery& query);
  // `retry`: the failed or cancelled jobs with `key` (or, when key is empty,
  // in `group`) go back to `queued` on `lane`, due now, attempts and busy
  // retries at 0, their error moved to last_error. `done` gets every job of
  // the key or group with whether it was retried; empty: none exists.
  [[nodiscard]] Status Retry(std::string key, std::string group, Lane lane,
                             Callback<std::vector<TouchedJob>> done);
  // A replacing submit: the row with r.key, when it is finished or queued
  // (not claimed by any node), gets the new kind and input and is queued as
  // Retry queues. `done` gets the row, changed or not; empty: no such key.
  [[nodiscard]] Status Replace(Replacement r, Callback<std::vector<TouchedJob>> done);
  // `delete`: removes the finished rows with `key` (or in `group`). `done`
  // gets the deleted rows (key, group, kind, lane) and, in `total`, how many
  // rows the key or group had.
  [[nodiscard]] Status DeleteFinished(std::string key, std::string group,
                                      Callback<std::pair<std::vector<StoredJob>, int64_t>> done);
  // `cancel` of a group: its queued rows end cancelled with `why` (their
  // keys NOTIFYed); rows running under other nodes are counted.
  [[nodiscard]] Status CancelGroupQueued(std::string group, std::string why,
                                         Callback<GroupCancel> done);

  // Moves the queued background jobs with `key` (or, when key is empty, in
  // `group`) to the interactive lane; `done` gets how many moved.
  [[nodiscard]] Status PromoteQueued(std::string key, std::string group, Callback<int64_t> done);

  // The statements and their parsers, for BatchWriter, which puts several
  // into one transaction. Parsers take the statement's own result.
  static std::vector<PgStatement> InsertStatements(const std::vector<NewJob>& jobs);
  // `result` is the result of InsertStatements' one statement.
  static Result<std::vector<InsertedJob>> ParseInsert(const std::vector<NewJob>& jobs,
                                                      const PgResult& result);
  PgStatement FinishStatement(const std::vector<FinishRow>& rows) const;
  PgStatement RequeueStatement(const std::vector<RequeueRow>& rows) const;
  // For Finish and Requeue results: per input row (matched by id), accepted.
  static std::vector<bool> ParseAccepted(const std::vector<uint64_t>& ids, const PgResult& res);
  PgStatement RenewStatement(const std::vector<LeaseRef>& leases, int lease_s) const;
  static std::vector<uint64_t> ParseLost(const std::vector<LeaseRef>& leases, const PgResult& res);

  const std::string& node_id() const { return node_id_; }

 private:
  PgConn& conn_;
  std::string node_id_;
};

// "queued" -> kQueued, ...; nullopt for anything else.
std::optional<JobState> ParseJobState(std::string_view name);

}  // namespace digestd
