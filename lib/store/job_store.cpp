#include "store/job_store.h"

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "util/json_parse.h"

namespace digestd {

namespace {

// Every read returns the same columns, in this order (ParseStored).
constexpr const char* kColumns =
    "id, key, coalesce(group_key, ''), kind, lane, input::text, status, attempts, "
    "max_attempts, coalesce(lease_owner, ''), lease_token, result::text, coalesce(error, ''), "
    "(extract(epoch FROM created_at) * 1000)::bigint, "
    "coalesce((extract(epoch FROM started_at) * 1000)::bigint, 0), "
    "coalesce((extract(epoch FROM finished_at) * 1000)::bigint, 0), "
    "coalesce((extract(epoch FROM nullif(run_after, 'infinity')) * 1000)::bigint, 0) "
    "AS run_after_ms, lost_unstarted, "
    "busy_retries, preempted, coalesce(last_error, '')";

const std::string kReplacement = "\xEF\xBF\xBD";  // U+FFFD

void ScrubNul(std::string& s) {
  size_t pos = 0;
  while ((pos = s.find('\0', pos)) != std::string::npos) {
    s.replace(pos, 1, kReplacement);
    pos += kReplacement.size();
  }
}

// jsonb refuses \u0000 anywhere; a worker's result must still be storable.
void ScrubJson(nlohmann::json& j) {
  if (j.is_string()) {
    ScrubNul(j.get_ref<std::string&>());
  } else if (j.is_array()) {
    for (auto& el : j) ScrubJson(el);
  } else if (j.is_object()) {
    bool bad_key = false;
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (it.key().find('\0') != std::string::npos) bad_key = true;
      ScrubJson(it.value());
    }
    if (bad_key) {
      nlohmann::json fixed = nlohmann::json::object();
      for (auto it = j.begin(); it != j.end(); ++it) {
        std::string k = it.key();
        ScrubNul(k);
        fixed[k] = std::move(it.value());
      }
      j = std::move(fixed);
    }
  }
}

// Invalid UTF-8 becomes U+FFFD instead of an exception.
std::string Dump(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string Text(std::string s) {
  ScrubNul(s);
  return s;
}

nlohmann::json ParseJsonField(std::string_view text) {
  if (text.empty()) return nullptr;
  nlohmann::json j = TryParseJsonBounded(text);
  return j.is_discarded() ? nlohmann::json(nullptr) : j;
}

StoredJob ParseStored(const PgResult& r, int row) {
  StoredJob j;
  j.id = static_cast<uint64_t>(r.Int(row, 0));
  j.key = std::string(r.Text(row, 1));
  j.group = std::string(r.Text(row, 2));
  j.kind = std::string(r.Text(row, 3));
  j.lane = r.Int(row, 4) == 0 ? Lane::kInteractive : Lane::kBackground;
  j.input = r.IsNull(row, 5) ? nlohmann::json::object() : ParseJsonField(r.Text(row, 5));
  j.state = ParseJobState(r.Text(row, 6)).value_or(JobState::kQueued);
  j.attempts = static_cast<int>(r.Int(row, 7));
  j.max_attempts = static_cast<int>(r.Int(row, 8));
  j.lease_owner = std::string(r.Text(row, 9));
  j.lease_token = r.Int(row, 10);
  j.result = r.IsNull(row, 11) ? nlohmann::json(nullptr) : ParseJsonField(r.Text(row, 11));
  j.error = std::string(r.Text(row, 12));
  j.created_at_ms = r.Int(row, 13);
  j.started_at_ms = r.Int(row, 14);
  j.finished_at_ms = r.Int(row, 15);
  j.run_after_ms = r.Int(row, 16);
  j.lost_unstarted = static_cast<int>(r.Int(row, 17));
  j.busy_retries = static_cast<int>(r.Int(row, 18));
  j.preempted = static_cast<int>(r.Int(row, 19));
  j.last_error = std::string(r.Text(row, 20));
  return j;
}

std::vector<StoredJob> ParseStoredRows(const PgResult& r) {
  std::vector<StoredJob> out;
  out.reserve(static_cast<size_t>(r.rows()));
  for (int i = 0; i < r.rows(); ++i) out.push_back(ParseStored(r, i));
  return out;
}

PgStatement Stmt(const char* name, std::string sql, std::vector<std::optional<std::string>> p) {
  return PgStatement{std::move(sql), std::move(p), name};
}

// The guard's status test in Finish, Requeue and Renew is written
// `status || '' = 'running'` so that it cannot match the partial index
// jobs_lease: these statements name their rows by id and must find them by
// primary key. jobs_lease collects an entry per claim, dead ones included
// until vacuum, and a scan of it per batch grows with every job since.
//
// Finish: the UPDATE under the guard in a CTE; the outer query sees the rows
// as they were before it (one snapshot), so `already` recognises a row this
// same lease finished in an earlier, committed, attempt; it looks only at
// the rows the UPDATE did not take, so a batch that is all accepted reads
// each row once. `NOT IN (SELECT ...)` rather than a join with the CTE: it
// becomes a hashed subplan, where a join rescans the CTE once per row
// (quadratic in the batch).
const char* kFinishSql = R"(WITH u AS (
  SELECT * FROM jsonb_to_recordset($2::jsonb)
    AS u(id bigint, token bigint, status text, result jsonb, error text, started_ms bigint,
         finished_ms bigint, preempted integer)
), upd AS (
  UPDATE digestd.jobs j
     SET status = u.status, result = u.result, error = u.error, last_error = NULL,
         attempts = j.attempts + CASE WHEN u.started_ms > 0 AND j.started_at IS NULL
                                      THEN 1 ELSE 0 END,
         started_at = CASE WHEN u.started_ms > 0
                           THEN coalesce(j.started_at, to_timestamp(u.started_ms / 1000.0))
                           ELSE j.started_at END,
         finished_at = CASE WHEN u.finished_ms > 0 THEN to_timestamp(u.finished_ms / 1000.0)
                            ELSE now() END,
         preempted = coalesce(u.preempted, j.preempted),
         updated_at = now(), lease_until = NULL
    FROM u
   WHERE j.id = u.id AND j.lease_token = u.token AND j.lease_owner = $1
     AND j.status || '' = 'running'
  RETURNING j.id, j.key
), notified AS (
  -- NOTIFY digestd_done with the keys this statement finished (never a row
  -- the lease guard refused, nor a repeat), as JSON arrays within NOTIFY's
  -- payload limit: chunks of up to 6,800 bytes of quoted keys plus at most
  -- one more key (512 bytes, at most 1,026 quoted).
  SELECT pg_notify('digestd_done', json_agg(key ORDER BY id)::text)
    FROM (SELECT id, key,
                 (sum(octet_length(to_json(key)::text) + 2) OVER (ORDER BY id) - 1) / 6800 AS chunk
            FROM upd) c
   GROUP BY chunk
)
SELECT id, true FROM upd WHERE (SELECT count(*) FROM notified) >= 0
UNION ALL
SELECT u.id, coalesce(j.status = u.status AND j.lease_token = u.token AND j.lease_owner = $1,
                      false)
  FROM u LEFT JOIN digestd.jobs j ON j.id = u.id
 WHERE u.id NOT IN (SELECT id FROM upd))";

// Requeue: a job back in the queue with the same token (ours, repeated, or a
// recovery that did the same) counts as accepted. The attempt: a started
// one counts (unless its start mark already did); a refunded one (busy,
// released unstarted) does not (and gives back a start mark's count).
const char* kRequeueSql = R"(WITH u AS (
  SELECT * FROM jsonb_to_recordset($2::jsonb)
    AS u(id bigint, token bigint, delay_ms bigint, refund boolean, error text,
         started_ms bigint, busy_retries integer, preempted integer)
), upd AS (
  UPDATE digestd.jobs j
     SET status = 'queued',
         run_after = now() + coalesce(u.delay_ms, 0) * interval '1 millisecond',
         attempts = greatest(j.attempts
             + CASE WHEN u.started_ms > 0 AND NOT u.refund AND j.started_at IS NULL
                    THEN 1 ELSE 0 END
             - CASE WHEN u.refund AND j.started_at IS NOT NULL THEN 1 ELSE 0 END, 0),
         started_at = NULL,
         busy_retries = coalesce(u.busy_retries, j.busy_retries),
         preempted = coalesce(u.preempted, j.preempted),
         error = coalesce(u.error, j.error),
         lease_owner = NULL, lease_until = NULL, updated_at = now()
    FROM u
   WHERE j.id = u.id AND j.lease_token = u.token AND j.lease_owner = $1
     AND j.status || '' = 'running'
  RETURNING j.id
)
SELECT id, true FROM upd
UNION ALL
SELECT u.id, coalesce(j.status = 'queued' AND j.lease_token = u.token, false)
  FROM u LEFT JOIN digestd.jobs j ON j.id = u.id
 WHERE u.id NOT IN (SELECT id FROM upd))";

// Renewal, and the start mark: a lease with started_ms records that the job
// started then, counting its attempt once.
const char* kRenewSql = R"(UPDATE digestd.jobs j
   SET lease_until = now() + $3::double precision * interval '1 second',
       attempts = j.attempts + CASE WHEN u.started_ms > 0 AND j.started_at IS NULL
                                    THEN 1 ELSE 0 END,
       started_at = CASE WHEN u.started_ms > 0
                         THEN coalesce(j.started_at, to_timestamp(u.started_ms / 1000.0))
                         ELSE j.started_at END
  FROM jsonb_to_recordset($2::jsonb) AS u(id bigint, token bigint, started_ms bigint)
 WHERE j.id = u.id AND j.lease_token = u.token AND j.lease_owner = $1
   AND j.status || '' = 'running'
RETURNING j.id)";

// A row with an owner is created claimed, as Claim would leave it (not
// started: no attempt spent yet).
// One statement answers for every key: a key that exists takes the
// ON CONFLICT path, a no-op update (the same key, so the new row version is
// a HOT one) that locks the row and returns it as it is committed -- also a
// row a concurrent transaction committed while this one waited on its key.
// `created`: xmax is 0 only on a row this statement inserted (the update
// path leaves the lock's xid there). The statement may name a key once
// (InsertStatements sends each key once): the update path may not touch a
// row the same statement inserted. `expired`: a done result whose ttl has
// passed.
const char* kInsertSql =
    R"(INSERT INTO digestd.jobs AS j (key, group_key, kind, lane, input, max_attempts, status,
                               attempts, lease_owner, lease_until, lease_token, started_at,
                               input_hash, ttl_s, after_keys, run_after)
SELECT t.key, t.group_key, t.kind, t.lane, coalesce(t.input, '{}'::jsonb), t.max_attempts,
       CASE WHEN t.owner IS NULL THEN 'queued' ELSE 'running' END,
       0,
       t.owner,
       CASE WHEN t.owner IS NULL THEN NULL
            ELSE now() + t.lease_s * interval '1 second' END,
       CASE WHEN t.owner IS NULL THEN 0 ELSE nextval('digestd.lease_token_seq') END,
       NULL, t.input_hash, t.ttl_s,
       CASE WHEN t.after IS NULL THEN NULL
            ELSE ARRAY(SELECT jsonb_array_elements_text(t.after)) END,
       CASE WHEN t.after IS NULL THEN now() ELSE 'infinity' END
  FROM jsonb_to_recordset($1::jsonb)
    AS t(ord integer, key text, group_key text, kind text, lane smallint, input jsonb,
         max_attempts integer, owner text, lease_s integer, input_hash bigint, ttl_s integer,
         after jsonb)
 ORDER BY t.ord
ON CONFLICT (key) DO UPDATE SET key = j.key
RETURNING j.id, j.key, j.lease_token, j.xmax = 0, j.status, j.input_hash,
          j.status = 'done' AND j.ttl_s > 0
            AND j.finished_at + j.ttl_s * interval '1 second' <= now())";

// Jobs waiting for the jobs their "after" names (of the given groups, or
// all): due, with the results added to their input, once every one is
// done; failed with the reason once one failed, was cancelled or is gone
// (its own dependents follow in the next release). Idempotent, and correct
// under concurrency as long as it runs after each commit that ends a
// dependency or inserts a waiting job (the later of two commits' releases
// sees both); a finished row lock makes two releases of one job serialise,
// and the second finds it no longer waiting.
const char* kReleaseAfterSql = R"(WITH w AS (
  SELECT d.id,
         count(p.id) AS found,
         min(p.key) FILTER (WHERE p.status IN ('failed', 'cancelled')) AS bad,
         jsonb_object_agg(p.key, coalesce(p.result, 'null'::jsonb))
           FILTER (WHERE p.status = 'done') AS results,
         count(p.id) FILTER (WHERE p.status = 'done') = cardinality(d.after_keys) AS ready
    FROM digestd.jobs d
    LEFT JOIN digestd.jobs p ON p.key = ANY (d.after_keys)
   WHERE d.after_keys IS NOT NULL AND d.status = 'queued' AND d.run_after = 'infinity'
     AND ($1::text[] IS NULL OR d.group_key = ANY ($1::text[]))
   GROUP BY d.id
), u AS (
  UPDATE digestd.jobs j
     SET status = CASE WHEN w.ready THEN 'queued' ELSE 'failed' END,
         run_after = CASE WHEN w.ready THEN now() ELSE j.run_after END,
         input = CASE WHEN w.ready
                      THEN j.input || jsonb_build_object('after_results',
                                                         coalesce(w.results, '{}'::jsonb))
                      ELSE j.input END,
         error = CASE WHEN w.ready THEN j.error
                      WHEN w.bad IS NOT NULL THEN
                        'needs job ' || w.bad || ', which ' ||
                        (SELECT CASE p.status WHEN 'failed' THEN 'failed' ELSE 'was cancelled' END ||
                                coalesce(': ' || p.error, '')
                           FROM digestd.jobs p WHERE p.key = w.bad) ||
                        '; retry it, then retry this one'
                      ELSE 'needs a job that no longer exists (deleted); submit the batch again'
                 END,
         finished_at = CASE WHEN w.ready THEN NULL ELSE now() END,
         updated_at = now()
    FROM w
   WHERE j.id = w.id AND j.status = 'queued' AND j.run_after = 'infinity'
     AND (w.ready OR w.bad IS NOT NULL OR w.found < cardinality(j.after_keys))
  RETURNING j.key, coalesce(j.group_key, '') AS g, j.kind, j.lane, j.status,
            coalesce(j.error, '') AS error
), n AS (
  SELECT pg_notify('digestd_done', json_build_array(key)::text) FROM u WHERE status = 'failed'
)
SELECT key, g, kind, lane, status, error FROM u, (SELECT count(*) FROM n) AS notified)";

}  // namespace

bool JobsQuery::Matches(JobState state, const std::string& key, const std::string& job_group,
                        const std::string& job_kind, Lane job_lane, int64_t age_ms) const {
  if (!states.empty() && std::find(states.begin(), states.end(), state) == states.end())
    return false;
  if (!group.empty() && job_group != group) return false;
  if (!kind.empty() && job_kind != kind) return false;
  if (lane && job_lane != *lane) return false;
  if (!key_prefix.empty() && key.compare(0, key_prefix.size(), key_prefix) != 0) return false;
  if (max_age_s >= 0 && age_ms > max_age_s * 1000) return false;
  if (min_age_s >= 0 && age_ms < min_age_s * 1000) return false;
  return true;
}

std::optional<JobState> ParseJobState(std::string_view name) {
  if (name == "queued") return JobState::kQueued;
  if (name == "running") return JobState::kRunning;
  if (name == "done") return JobState::kDone;
  if (name == "failed") return JobState::kFailed;
  if (name == "cancelled") return JobState::kCancelled;
  return std::nullopt;
}

JobStore::JobStore(PgConn& conn, std::string node_id) : conn_(conn), node_id_(std::move(node_id)) {}

std::vector<PgStatement> JobStore::InsertStatements(const std::vector<NewJob>& jobs) {
  nlohmann::json rows = nlohmann::json::array();
  std::unordered_set<std::string_view> seen;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const NewJob& j = jobs[i];
    // A key twice in one batch: the first creates the job, the later ones
    // find it (ParseInsert), as they would in a later batch.
    if (!seen.insert(j.key).second) continue;
    nlohmann::json row = {{"ord", i},
                          {"key", j.key},
                          {"kind", j.kind},
                          {"lane", static_cast<int>(j.lane)},
                          {"max_attempts", j.max_attempts},
                          {"input_hash", static_cast<int64_t>(j.input_hash)}};
    if (!j.group.empty()) row["group_key"] = j.group;
    if (j.ttl_s > 0) row["ttl_s"] = j.ttl_s;
    if (!j.after.empty()) row["after"] = j.after;
    if (j.input) row["input"] = *j.input;
    if (!j.claim_owner.empty()) {
      row["owner"] = j.claim_owner;
      row["lease_s"] = j.lease_s;
    }
    rows.push_back(std::move(row));
  }
  std::vector<PgStatement> out;
  out.push_back(Stmt("digestd_insert", kInsertSql, {Dump(rows)}));
  return out;
}

Result<std::vector<InsertedJob>> JobStore::ParseInsert(const std::vector<NewJob>& jobs,
                                                       const PgResult& r) {
  struct Row {
    uint64_t id;
    int64_t lease_token;
    bool created;
    JobState state;
    std::optional<int64_t> hash;  // none: a row from before input hashes
    bool expired;
  };
  std::unordered_map<std::string, Row> rows;
  for (int i = 0; i < r.rows(); ++i) {
    std::optional<int64_t> hash;
    if (!r.IsNull(i, 5)) hash = r.Int(i, 5);
    rows.emplace(std::string(r.Text(i, 1)),
                 Row{static_cast<uint64_t>(r.Int(i, 0)), r.Int(i, 2), r.Text(i, 3) == "t",
                     ParseJobState(r.Text(i, 4)).value_or(JobState::kQueued), hash,
                     !r.IsNull(i, 6) && r.Text(i, 6) == "t"});
  }
  std::vector<InsertedJob> out;
  out.reserve(jobs.size());
  std::unordered_set<std::string_view> seen;
  for (const auto& j : jobs) {
    InsertedJob ins;
    auto it = rows.find(j.key);
    if (it != rows.end()) {
      const Row& row = it->second;
      const bool first = seen.insert(j.key).second;
      ins.id = row.id;
      ins.created = row.created && first;
      ins.lease_token = ins.created ? row.lease_token : 0;
      ins.status = row.state;
      ins.conflict = !ins.created && row.hash && *row.hash != static_cast<int64_t>(j.input_hash);
      ins.expired = !ins.created && row.expired;
    }
    out.push_back(ins);
  }
  return out;
}

PgStatement JobStore::FinishStatement(const std::vector<FinishRow>& rows) const {
  nlohmann::json arr = nlohmann::json::array();
  for (const auto& r : rows) {
    nlohmann::json row = {{"id", r.id}, {"token", r.token}, {"status", JobStateName(r.state)}};
    if (r.state == JobState::kDone) {
      nlohmann::json result = r.result;
      ScrubJson(result);
      row["result"] = std::move(result);
    }
    if (!r.error.empty()) row["error"] = Text(r.error);
    if (r.started_ms > 0) row["started_ms"] = r.started_ms;
    if (r.finished_ms > 0) row["finished_ms"] = r.finished_ms;
    if (r.preempted > 0) row["preempted"] = r.preempted;
    arr.push_back(std::move(row));
  }
  return Stmt("digestd_finish", kFinishSql, {node_id_, Dump(arr)});
}

PgStatement JobStore::RequeueStatement(const std::vector<RequeueRow>& rows) const {
  nlohmann::json arr = nlohmann::json::array();
  for (const auto& r : rows) {
    nlohmann::json row = {
        {"id", r.id}, {"token", r.token}, {"delay_ms", r.delay_ms}, {"refund", r.refund_attempt}};
    if (!r.error.empty()) row["error"] = Text(r.error);
    if (r.started_ms > 0) row["started_ms"] = r.started_ms;
    if (r.busy_retries >= 0) row["busy_retries"] = r.busy_retries;
    if (r.preempted > 0) row["preempted"] = r.preempted;
    arr.push_back(std::move(row));
  }
  return Stmt("digestd_requeue", kRequeueSql, {node_id_, Dump(arr)});
}

std::vector<bool> JobStore::ParseAccepted(const std::vector<uint64_t>& ids, const PgResult& res) {
  std::unordered_map<uint64_t, bool> accepted;
  for (int i = 0; i < res.rows(); ++i) {
    accepted[static_cast<uint64_t>(res.Int(i, 0))] = res.Bool(i, 1);
  }
  std::vector<bool> out;
  out.reserve(ids.size());
  for (uint64_t id : ids) {
    auto it = accepted.find(id);
    out.push_back(it != accepted.end() && it->second);
  }
  return out;
}

PgStatement JobStore::RenewStatement(const std::vector<LeaseRef>& leases, int lease_s) const {
  nlohmann::json arr = nlohmann::json::array();
  for (const auto& l : leases) {
    nlohmann::json row = {{"id", l.id}, {"token", l.token}};
    if (l.started_ms > 0) row["started_ms"] = l.started_ms;
    arr.push_back(std::move(row));
  }
  return Stmt("digestd_renew", kRenewSql, {node_id_, Dump(arr), std::to_string(lease_s)});
}

std::vector<uint64_t> JobStore::ParseLost(const std::vector<LeaseRef>& leases,
                                          const PgResult& res) {
  std::unordered_set<uint64_t> renewed;
  for (int i = 0; i < res.rows(); ++i) renewed.insert(static_cast<uint64_t>(res.Int(i, 0)));
  std::vector<uint64_t> lost;
  for (const auto& l : leases) {
    if (renewed.count(l.id) == 0) lost.push_back(l.id);
  }
  return lost;
}

Status JobStore::InsertJobs(std::vector<NewJob> jobs, Callback<std::vector<InsertedJob>> done) {
  if (jobs.empty()) return Status::Internal("JobStore::InsertJobs: no jobs");
  auto stmts = InsertStatements(jobs);
  return conn_.Send(std::move(stmts), [jobs = std::move(jobs),
                                       done = std::move(done)](Result<std::vector<PgResult>> r) {
    if (!r.ok()) return done(r.status());
    if (r->size() != 1) return done(Status::Internal("InsertJobs: unexpected result count"));
    done(ParseInsert(jobs, (*r)[0]));
  });
}

Status JobStore::Claim(Lane lane, int n, int lease_s, Callback<std::vector<StoredJob>> done) {
  std::string sql = std::string(R"(WITH claimed AS (
  UPDATE digestd.jobs j
     SET status = 'running', lease_owner = $1,
         lease_until = now() + $4::double precision * interval '1 second',
         lease_token = nextval('digestd.lease_token_seq'),
         started_at = NULL, updated_at = now()
   WHERE j.id = ANY (ARRAY(
           SELECT q.id FROM digestd.jobs q
            WHERE q.status = 'queued' AND q.lane = $2 AND q.run_after <= now()
            ORDER BY q.run_after, q.id
            LIMIT $3
            FOR UPDATE SKIP LOCKED))
     AND j.status || '' = 'queued'
  RETURNING )") + kColumns +
                    R"(
)
SELECT * FROM claimed ORDER BY run_after_ms, id)";
  return conn_.Query(Stmt("digestd_claim", std::move(sql),
                          {node_id_, std::to_string(static_cast<int>(lane)), std::to_string(n),
                           std::to_string(lease_s)}),
                     [done = std::move(done)](Result<PgResult> r) {
                       if (!r.ok()) return done(r.status());
                       done(ParseStoredRows(*r));
                     });
}

Status JobStore::Finish(std::vector<FinishRow> rows, Callback<std::vector<bool>> done) {
  if (rows.empty()) return Status::Internal("JobStore::Finish: no rows");
  std::vector<uint64_t> ids;
  for (const auto& r : rows) ids.push_back(r.id);
  return conn_.Query(FinishStatement(rows),
                     [ids = std::move(ids), done = std::move(done)](Result<PgResult> r) {
                       if (!r.ok()) return done(r.status());
                       done(ParseAccepted(ids, *r));
                     });
}

Status JobStore::Requeue(std::vector<RequeueRow> rows, Callback<std::vector<bool>> done) {
  if (rows.empty()) return Status::Internal("JobStore::Requeue: no rows");
  std::vector<uint64_t> ids;
  for (const auto& r : rows) ids.push_back(r.id);
  return conn_.Query(RequeueStatement(rows),
                     [ids = std::move(ids), done = std::move(done)](Result<PgResult> r) {
                       if (!r.ok()) return done(r.status());
                       done(ParseAccepted(ids, *r));
                     });
}

Status JobStore::Release(std::vector<LeaseRef> leases, Callback<std::vector<bool>> done) {
  std::vector<RequeueRow> rows;
  for (const auto& l : leases) rows.push_back(RequeueRow{l.id, l.token, 0, true, {}, 0, -1});
  return Requeue(std::move(rows), std::move(done));
}

Status JobStore::RenewLeases(std::vector<LeaseRef> leases, int lease_s,
                             Callback<std::vector<uint64_t>> done) {
  if (leases.empty()) return Status::Internal("JobStore::RenewLeases: no leases");
  PgStatement stmt = RenewStatement(leases, lease_s);
  return conn_.Query(std::move(stmt),
                     [leases = std::move(leases), done = std::move(done)](Result<PgResult> r) {
                       if (!r.ok()) return done(r.status());
                       done(ParseLost(leases, *r));
                     });
}

Status JobStore::ReleaseUnheld(std::vector<int64_t> held, Callback<uint64_t> done) {
  std::string tokens = "{";
  for (size_t i = 0; i < held.size(); ++i) {
    if (i) tokens += ',';
    tokens += std::to_string(held[i]);
  }
  tokens += '}';
  const char* sql = R"(UPDATE digestd.jobs j
   SET status = 'queued', started_at = NULL, lease_owner = NULL,
       lease_until = NULL, run_after = now(), updated_at = now()
 WHERE j.status = 'running' AND j.lease_owner = $1 AND NOT (j.lease_token = ANY ($2::bigint[])))";
  return conn_.Query(Stmt("digestd_release_unheld", sql, {node_id_, tokens}),
                     [done = std::move(done)](Result<PgResult> r) {
                       if (!r.ok()) return done(r.status());
                       done(r->Affected());
                     });
}

Status JobStore::RecoverExpired(bool startup, Callback<RecoverCounts> done) {
  const char* sql = R"(WITH r AS (
  SELECT id FROM digestd.jobs
   WHERE status = 'running' AND (lease_until < now() OR ($2::boolean AND lease_owner = $1))
   FOR UPDATE SKIP LOCKED
), upd AS (
  UPDATE digestd.jobs j
     SET status = CASE WHEN j.started_at IS NOT NULL AND j.attempts >= j.max_attempts
                       THEN 'failed' ELSE 'queued' END,
         error = CASE WHEN j.started_at IS NOT NULL AND j.attempts >= j.max_attempts
                      THEN format('worker crashed or hung: attempt %s of %s was lost with its '
                                  'worker (digestd on %s died or its lease expired); no attempts '
                                  'left', j.attempts, j.max_attempts, j.lease_owner)
                      ELSE j.error END,
         finished_at = CASE WHEN j.started_at IS NOT NULL AND j.attempts >= j.max_attempts
                            THEN now() END,
         lease_owner = CASE WHEN j.started_at IS NOT NULL AND j.attempts >= j.max_attempts
                            THEN j.lease_owner END,
         -- A claim lost before its start was recorded spends no attempt;
         -- the job's next start is recorded before it runs.
         lost_unstarted = j.lost_unstarted + CASE WHEN j.started_at IS NULL THEN 1 ELSE 0 END,
         started_at = CASE WHEN j.started_at IS NOT NULL AND j.attempts >= j.max_attempts
                           THEN j.started_at END,
         lease_until = NULL, run_after = now(), updated_at = now()
    FROM r
   WHERE j.id = r.id
  RETURNING j.key, j.status
), notified AS (
  SELECT pg_notify('digestd_done', json_build_array(key)::text) FROM upd WHERE status = 'failed'
)
SELECT key, status, (SELECT count(*) FROM notified) FROM upd)";
  return conn_.Query(Stmt("digestd_recover", sql, {node_id_, startup ? "true" : "false"}),
                     [done = std::move(done)](Result<PgResult> r) {
                       if (!r.ok()) return done(r.status());
                       RecoverCounts c;
                       for (int i = 0; i < r->rows(); ++i) {
                         if (r->Text(i, 1) == "failed") {
                           c.failed_keys.emplace_back(r->Text(i, 0));
                         } else {
                           ++c.requeued;
                         }
                       }
                       done(std::move(c));
                     });
}

Status JobStore::Lookup(std::string key, Callback<std::optional<StoredJob>> done) {
  std::string sql = std::string("SELECT ") + kColumns + " FROM digestd.jobs WHERE key = $1";
  return conn_.Query(Stmt("digestd_lookup", std::move(sql), {Text(std::move(key))}),
                     [done = std::move(done)](Result<PgResult> r) {
                       if (!r.ok()) return done(r.status());
                       if (r->rows() == 0) return done(std::optional<StoredJob>());
                       done(std::optional<StoredJob>(ParseStored(*r, 0)));
                     });
}

Status JobStore::LookupGroup(std::string group, Callback<std::vector<StoredJob>> done) {
  std::string sql = std::string("SELECT ") + kColumns +
                    " FROM digestd.jobs WHERE group_key = $1 ORDER BY id LIMIT 10000";
  return conn_.Query(Stmt("digestd_lookup_group", std::move(sql), {Text(std::move(group))}),
                     [done = std::move(done)](Result<PgResult> r) {
                       if (!r.ok()) return done(r.status());
                       done(ParseStoredRows(*r));
                     });
}

const char* JobStore::BacklogSql() {
  // One count per state, each through its partial index (jobs_claim,
  // jobs_lease), so the cost follows the backlog, not the finished rows
  // that retention keeps: one `status IN (...)` scans the whole table.
  return R"(SELECT 'queued', lane, count(*) FILTER (WHERE run_after <= now()),
       count(*) FILTER (WHERE run_after > now())
  FROM digestd.jobs
 WHERE status = 'queued'
 GROUP BY lane
UNION ALL
SELECT 'running', lane, count(*), 0
  FROM digestd.jobs
 WHERE status = 'running'
 GROUP BY lane)";
}

Status JobStore::BacklogCounts(Callback<Backlog> done) {
  const char* sql = BacklogSql();
  return conn_.Query(Stmt("digestd_backlog", sql, {}),
                     [done = std::move(done)](Result<PgResult> r) {
                       if (!r.ok()) return done(r.status());
                       Backlog b;
                       for (int i = 0; i < r->rows(); ++i) {
                         int64_t lane = r->Int(i, 1);
                         if (lane < 0 || lane >= kLaneCount) continue;
                         auto l = static_cast<size_t>(lane);
                         if (r->Text(i, 0) == "queued") {
                           b.queued[l] = r->Int(i, 2);
                           b.delayed[l] = r->Int(i, 3);
                         } else {
                           b.running[l] = r->Int(i, 2) + r->Int(i, 3);
                         }
                       }
                       done(b);
                     });
}

Status JobStore::DeleteFinishedOlderThan(int64_t retention_s, int limit, Callback<uint64_t> done) {
  const char* sql = R"(WITH d AS (
  SELECT id FROM digestd.jobs
   WHERE status IN ('done', 'failed', 'cancelled')
     AND finished_at < now() - $1::double precision * interval '1 second'
   ORDER BY finished_at
   LIMIT $2
   FOR UPDATE SKIP LOCKED
)
DELETE FROM digestd.jobs j USING d WHERE j.id = d.id)";
  return conn_.Query(
      Stmt("digestd_retention", sql, {std::to_string(retention_s), std::to_string(limit)}),
      [done = std::move(done)](Result<PgResult> r) {
        if (!r.ok()) return done(r.status());
        done(r->Affected());
      });
}

Status JobStore::PromoteQueued(std::string key, std::string group, Callback<int64_t> done) {
  // Background jobs still queued in the table move to the interactive lane,
  // so whichever node claims them next treats them as interactive.
  const char* by_key = R"(WITH p AS (
  UPDATE digestd.jobs SET lane = 0, updated_at = now()
   WHERE key = $1 AND status = 'queued' AND lane = 1
  RETURNING id
)
SELECT count(*) FROM p)";
  const char* by_group = R"(WITH p AS (
  UPDATE digestd.jobs SET lane = 0, updated_at = now()
   WHERE group_key = $1 AND status = 'queued' AND lane = 1
  RETURNING id
)
SELECT count(*) FROM p)";
  bool key_query = !key.empty();
  return conn_.Query(
      Stmt(key_query ? "digestd_promote_key" : "digestd_promote_group",
           key_query ? by_key : by_group, {Text(key_query ? std::move(key) : std::move(group))}),
      [done = std::move(done)](Result<PgResult> r) {
        if (!r.ok()) return done(r.status());
        done(r->rows() > 0 ? r->Int(0, 0) : int64_t{0});
      });
}

Status JobStore::CancelQueued(std::string key, std::string why,
                              Callback<std::optional<StoredJob>> done) {
  std::string sql = std::string(R"(WITH c AS (
  UPDATE digestd.jobs
     SET status = 'cancelled', error = $2, last_error = NULL, finished_at = now(),
         updated_at = now()
   WHERE key = $1 AND status = 'queued'
  RETURNING *
), n AS (
  SELECT pg_notify('digestd_done', json_build_array(key)::text) FROM c
)
SELECT )") + kColumns +
                    " FROM c, (SELECT count(*) FROM n) AS notified";
  return conn_.Query(
      Stmt("digestd_cancel", std::move(sql), {Text(std::move(key)), Text(std::move(why))}),
      [done = std::move(done)](Result<PgResult> r) {
        if (!r.ok()) return done(r.status());
        std::vector<StoredJob> rows = ParseStoredRows(*r);
        if (rows.empty()) return done(std::optional<StoredJob>());
        done(std::optional<StoredJob>(std::move(rows.front())));
      });
}

}  // namespace digestd

namespace digestd {

namespace {

// Every `retry`, replace and `delete` statement answers with the rows it
// looked at, in this shape (ParseTouched), read before its change.
constexpr const char* kTouchedColumns =
    "j.id, j.key, coalesce(j.group_key, ''), j.kind, j.lane, j.status, j.attempts, "
    "coalesce(j.error, ''), coalesce(j.lease_owner, ''), j.started_at IS NOT NULL, "
    "r.id IS NOT NULL";

// What a job queued again by request starts from: no attempts, busy
// retries or lost claims, no result; its error kept as last_error.
// A job with "after" waits for its dependencies again (the release that
// follows lets it go at once when they are still done).
constexpr const char* kQueuedAgain =
    "status = 'queued', attempts = 0, busy_retries = 0, lost_unstarted = 0, "
    "last_error = coalesce(j.error, j.last_error), error = NULL, result = NULL, "
    "started_at = NULL, finished_at = NULL, "
    "run_after = CASE WHEN j.after_keys IS NULL THEN now() ELSE 'infinity' END, "
    "lease_owner = NULL, lease_until = NULL, updated_at = now()";

std::vector<TouchedJob> ParseTouched(const PgResult& r) {
  std::vector<TouchedJob> out;
  for (int i = 0; i < r.rows(); ++i) {
    TouchedJob t;
    t.job.id = static_cast<uint64_t>(r.Int(i, 0));
    t.job.key = std::string(r.Text(i, 1));
    t.job.group = std::string(r.Text(i, 2));
    t.job.kind = std::string(r.Text(i, 3));
    t.job.lane = r.Int(i, 4) == 0 ? Lane::kInteractive : Lane::kBackground;
    t.job.state = ParseJobState(r.Text(i, 5)).value_or(JobState::kQueued);
    t.job.attempts = static_cast<int>(r.Int(i, 6));
    t.job.error = std::string(r.Text(i, 7));
    t.job.lease_owner = std::string(r.Text(i, 8));
    t.job.started_at_ms = r.Bool(i, 9) ? 1 : 0;
    t.changed = r.Bool(i, 10);
    out.push_back(std::move(t));
  }
  return out;
}

// "key = $1" or "group_key = $1": the rows a by-request statement acts on.
std::string TargetRows(bool by_key) {
  return std::string("SELECT id FROM digestd.jobs WHERE ") +
         (by_key ? "key = $1" : "group_key = $1");
}

}  // namespace

PgStatement JobStore::ListJobsStatement(const JobsQuery& query) {
  std::vector<std::optional<std::string>> params;
  auto param = [&params](std::string value) {
    params.emplace_back(std::move(value));
    return "$" + std::to_string(params.size());
  };
  std::string where = "true";
  if (!query.states.empty()) {
    // A row claimed by a node that has not started it is queued to anyone
    // who asks (the job view says so too); the table calls it running only
    // to hold the lease.
    std::string any;
    for (JobState s : query.states) {
      std::string one = s == JobState::kQueued
                            ? "status = 'queued' OR (status = 'running' AND started_at IS NULL)"
                        : s == JobState::kRunning
                            ? "(status = 'running' AND started_at IS NOT NULL)"
                            : "status = '" + std::string(JobStateName(s)) + "'";
      any += (any.empty() ? "" : " OR ") + one;
    }
    where += " AND (" + any + ")";
  }
  if (!query.group.empty()) where += " AND group_key = " + param(Text(query.group));
  if (!query.kind.empty()) where += " AND kind = " + param(Text(query.kind));
  if (query.lane) where += " AND lane = " + param(std::to_string(static_cast<int>(*query.lane)));
  if (!query.key_prefix.empty()) {
    // Compared as a prefix, not with LIKE: no character of the key is a
    // pattern, whatever it holds.
    std::string p = param(Text(query.key_prefix));
    where += " AND left(key, length(" + p + "::text)) = " + p;
  }
  if (query.max_age_s >= 0) {
    where += " AND created_at >= now() - " + param(std::to_string(query.max_age_s)) +
             "::double precision * interval '1 second'";
  }
  if (query.min_age_s >= 0) {
    where += " AND created_at <= now() - " + param(std::to_string(query.min_age_s)) +
             "::double precision * interval '1 second'";
  }
  if (query.after) where += " AND id < " + param(std::to_string(query.after->id)) + "::bigint";
  std::string sql = std::string("SELECT ") + kColumns + " FROM digestd.jobs WHERE " + where +
                    " ORDER BY id DESC LIMIT " + param(std::to_string(query.limit + 1));
  // Not prepared: the text differs with the filters.
  return PgStatement{std::move(sql), std::move(params), {}};
}

Status JobStore::ListJobs(const JobsQuery& query, Callback<std::vector<StoredJob>> done) {
  return conn_.Query(ListJobsStatement(query), [done = std::move(done)](Result<PgResult> r) {
    if (!r.ok()) return done(r.status());
    done(ParseStoredRows(*r));
  });
}

Status JobStore::Retry(std::string key, std::string group, Lane lane,
                       Callback<std::vector<TouchedJob>> done) {
  bool by_key = !key.empty();
  std::string sql = "WITH t AS (" + TargetRows(by_key) +
                    "), r AS (\n  UPDATE digestd.jobs j SET lane = $2, "
                    "input = CASE WHEN j.after_keys IS NULL THEN j.input "
                    "ELSE j.input - 'after_results' END, " +
                    kQueuedAgain +
                    "\n    FROM t WHERE j.id = t.id AND j.status IN ('failed', 'cancelled')"
                    "\n  RETURNING j.id\n)\nSELECT " +
                    kTouchedColumns +
                    " FROM digestd.jobs j JOIN t ON t.id = j.id LEFT JOIN r ON r.id = j.id "
                    "ORDER BY j.id";
  return conn_.Query(Stmt(by_key ? "digestd_retry_key" : "digestd_retry_group", std::move(sql),
                          {Text(by_key ? std::move(key) : std::move(group)),
                           std::to_string(static_cast<int>(lane))}),
                     [done = std::move(done)](Result<PgResult> r) {
                       if (!r.ok()) return done(r.status());
                       done(ParseTouched(*r));
                     });
}

Status JobStore::Replace(Replacement rep, Callback<std::vector<TouchedJob>> done) {
  std::string sql = "WITH t AS (" + TargetRows(true) +
                    "), r AS (\n  UPDATE digestd.jobs j SET kind = $2, lane = $3, "
                    "input = coalesce($4::jsonb, '{}'::jsonb), input_hash = $5, "
                    "ttl_s = nullif($6::integer, 0), " +
                    kQueuedAgain +
                    "\n    FROM t WHERE j.id = t.id"
                    // A claimed row is some node's to run: not replaced.
                    "\n     AND j.status IN ('queued', 'done', 'failed', 'cancelled')"
                    "\n  RETURNING j.id\n)\nSELECT " +
                    kTouchedColumns +
                    " FROM digestd.jobs j JOIN t ON t.id = j.id LEFT JOIN r ON r.id = j.id";
  std::optional<std::string> input;
  if (rep.input) input = Dump(*rep.input);
  return conn_.Query(
      Stmt("digestd_replace", std::move(sql),
           {Text(std::move(rep.key)), Text(std::move(rep.kind)),
            std::to_string(static_cast<int>(rep.lane)), std::move(input),
            std::to_string(static_cast<int64_t>(rep.input_hash)), std::to_string(rep.ttl_s)}),
      [done = std::move(done)](Result<PgResult> r) {
        if (!r.ok()) return done(r.status());
        done(ParseTouched(*r));
      });
}

const char* JobStore::ReleaseAfterSql() {
  return kReleaseAfterSql;
}

Status JobStore::ReleaseAfter(std::vector<std::string> groups,
                              Callback<std::vector<StoredJob>> done) {
  // A text[] literal, not a JSON array unpacked in SQL: the planner sees
  // the groups and reads jobs_waiting_after by them.
  std::optional<std::string> arg;  // none: every group
  if (!groups.empty()) {
    std::string a = "{";
    for (size_t i = 0; i < groups.size(); ++i) {
      if (i > 0) a += ',';
      a += '"';
      for (char c : groups[i]) {
        if (c == '"' || c == '\\') a += '\\';
        a += c;
      }
      a += '"';
    }
    a += '}';
    arg = Text(std::move(a));
  }
  return conn_.Query(Stmt("digestd_release_after", kReleaseAfterSql, {std::move(arg)}),
                     [done = std::move(done)](Result<PgResult> r) {
                       if (!r.ok()) return done(r.status());
                       std::vector<StoredJob> out;
                       for (int i = 0; i < r->rows(); ++i) {
                         StoredJob j;
                         j.key = std::string(r->Text(i, 0));
                         j.group = std::string(r->Text(i, 1));
                         j.kind = std::string(r->Text(i, 2));
                         j.lane = r->Int(i, 3) == 0 ? Lane::kInteractive : Lane::kBackground;
                         j.state = ParseJobState(r->Text(i, 4)).value_or(JobState::kQueued);
                         j.error = std::string(r->Text(i, 5));
                         out.push_back(std::move(j));
                       }
                       done(std::move(out));
                     });
}

Status JobStore::DeleteFinished(std::string key, std::string group,
                                Callback<std::pair<std::vector<StoredJob>, int64_t>> done) {
  bool by_key = !key.empty();
  std::string sql = "WITH t AS (" + TargetRows(by_key) + R"(), d AS (
  DELETE FROM digestd.jobs j USING t
   WHERE j.id = t.id AND j.status IN ('done', 'failed', 'cancelled')
  RETURNING j.key, coalesce(j.group_key, '') AS g, j.kind, j.lane
)
SELECT 'd', key, g, kind, lane::bigint FROM d
UNION ALL
SELECT 't', '', '', '', count(*) FROM t)";
  return conn_.Query(Stmt(by_key ? "digestd_delete_key" : "digestd_delete_group", std::move(sql),
                          {Text(by_key ? std::move(key) : std::move(group))}),
                     [done = std::move(done)](Result<PgResult> r) {
                       if (!r.ok()) return done(r.status());
                       std::pair<std::vector<StoredJob>, int64_t> out{{}, 0};
                       for (int i = 0; i < r->rows(); ++i) {
                         if (r->Text(i, 0) == "t") {
                           out.second = r->Int(i, 4);
                           continue;
                         }
                         StoredJob j;
                         j.key = std::string(r->Text(i, 1));
                         j.group = std::string(r->Text(i, 2));
                         j.kind = std::string(r->Text(i, 3));
                         j.lane = r->Int(i, 4) == 0 ? Lane::kInteractive : Lane::kBackground;
                         out.first.push_back(std::move(j));
                       }
                       done(std::move(out));
                     });
}

Status JobStore::CancelGroupQueued(std::string group, std::string why, Callback<GroupCancel> done) {
  const char* sql = R"(WITH c AS (
  UPDATE digestd.jobs
     SET status = 'cancelled', error = $2, last_error = NULL, finished_at = now(),
         updated_at = now()
   WHERE group_key = $1 AND status = 'queued'
  RETURNING key, coalesce(group_key, '') AS g, kind, lane, attempts
), n AS (
  SELECT pg_notify('digestd_done', json_build_array(key)::text) FROM c
)
SELECT 'c', key, g, kind, lane::bigint, attempts::bigint FROM c, (SELECT count(*) FROM n) AS x
UNION ALL
SELECT 'e', coalesce(string_agg(DISTINCT lease_owner, ','), ''), '', '', count(*), 0
  FROM digestd.jobs WHERE group_key = $1 AND status = 'running' AND lease_owner <> $3
UNION ALL
SELECT 't', '', '', '', count(*), 0 FROM digestd.jobs WHERE group_key = $1)";
  return conn_.Query(
      Stmt("digestd_cancel_group", sql, {Text(std::move(group)), Text(std::move(why)), node_id_}),
      [done = std::move(done)](Result<PgResult> r) {
        if (!r.ok()) return done(r.status());
        GroupCancel out;
        for (int i = 0; i < r->rows(); ++i) {
          std::string_view tag = r->Text(i, 0);
          if (tag == "e") {
            out.elsewhere = r->Int(i, 4);
            out.elsewhere_nodes = std::string(r->Text(i, 1));
          } else if (tag == "t") {
            out.total = r->Int(i, 4);
          } else {
            StoredJob j;
            j.key = std::string(r->Text(i, 1));
            j.group = std::string(r->Text(i, 2));
            j.kind = std::string(r->Text(i, 3));
            j.lane = r->Int(i, 4) == 0 ? Lane::kInteractive : Lane::kBackground;
            j.attempts = static_cast<int>(r->Int(i, 5));
            j.state = JobState::kCancelled;
            out.cancelled.push_back(std::move(j));
          }
        }
        done(std::move(out));
      });
}

}  // namespace digestd
