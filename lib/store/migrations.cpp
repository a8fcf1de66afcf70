#include "store/migrations.h"

#include "obs/log.h"

namespace digestd {

namespace {

// pg_advisory_xact_lock's key: "digest" in ASCII (0x646967657374), so it is
// recognisable in pg_locks and unlikely to meet another application's.
constexpr const char* kLockKey = "110403869045620";

std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    out += c;
    if (c == '\'') out += '\'';
  }
  return out + "'";
}

}  // namespace

const std::vector<Migration>& Migrations() {
  static const std::vector<Migration> migrations = {
      {1,
       "jobs table, lease token sequence and the queue's indexes",
       {
           // The lease guard: every claim takes a fresh token, so a write
           // conditioned on (lease_owner, lease_token) can only come from the
           // claim that holds the job now.
           "CREATE SEQUENCE digestd.lease_token_seq",
           R"(CREATE TABLE digestd.jobs (
  id           bigserial PRIMARY KEY,
  key          text NOT NULL,
  group_key    text,
  kind         text NOT NULL,
  lane         smallint NOT NULL DEFAULT 1,
  input        jsonb NOT NULL DEFAULT '{}'::jsonb,
  status       text NOT NULL DEFAULT 'queued',
  attempts     integer NOT NULL DEFAULT 0,
  max_attempts integer NOT NULL DEFAULT 3,
  run_after    timestamptz NOT NULL DEFAULT now(),
  lease_owner  text,
  lease_until  timestamptz,
  lease_token  bigint NOT NULL DEFAULT 0,
  result       jsonb,
  error        text,
  created_at   timestamptz NOT NULL DEFAULT now(),
  started_at   timestamptz,
  finished_at  timestamptz,
  updated_at   timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT jobs_key_unique UNIQUE (key),
  CONSTRAINT jobs_status_valid
    CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
  CONSTRAINT jobs_lane_valid CHECK (lane IN (0, 1)),
  CONSTRAINT jobs_attempts_valid CHECK (attempts >= 0 AND max_attempts >= 1),
  CONSTRAINT jobs_running_has_lease
    CHECK (status <> 'running' OR (lease_owner IS NOT NULL AND lease_until IS NOT NULL)),
  CONSTRAINT jobs_finished_has_time
    CHECK (status NOT IN ('done', 'failed', 'cancelled') OR finished_at IS NOT NULL)
) WITH (
  fillfactor = 80,
  autovacuum_vacuum_scale_factor = 0.02,
  autovacuum_vacuum_threshold = 500,
  autovacuum_vacuum_insert_scale_factor = 0.05,
  autovacuum_analyze_scale_factor = 0.02,
  autovacuum_vacuum_cost_delay = 1
))",
           // Storage, for a queue table: every job is inserted, updated twice
           // (claim, finish) and deleted after the retention. fillfactor 80
           // leaves room on each page so a new row version can stay beside
           // the old one (lease renewals, which touch no indexed column, stay
           // HOT); autovacuum starts after 2% dead rows instead of 20%, and
           // runs with a short cost delay, so dead versions are reclaimed
           // while they are few and the table and indexes keep their size.
           //
           // The claim query's index: due queued jobs of one lane, oldest
           // first, read in order so LIMIT stops early; rows leave it when
           // they stop being queued, so it stays as small as the backlog.
           "CREATE INDEX jobs_claim ON digestd.jobs (lane, run_after, id) "
           "WHERE status = 'queued'",
           "CREATE INDEX jobs_group ON digestd.jobs (group_key, id) WHERE group_key IS NOT NULL",
           // Lease expiry: only running jobs, a set the size of all workers.
           "CREATE INDEX jobs_lease ON digestd.jobs (lease_until) WHERE status = 'running'",
           // Retention deletes the oldest finished jobs in small batches.
           "CREATE INDEX jobs_finished ON digestd.jobs (finished_at) "
           "WHERE status IN ('done', 'failed', 'cancelled')",
           "COMMENT ON TABLE digestd.jobs IS 'digestd jobs: one row per idempotency key. "
           "Written by digestd only; apps read results here (LISTEN digestd_done for a JSON "
           "array of finished keys).'",
           "COMMENT ON COLUMN digestd.jobs.lane IS '0 interactive, 1 background'",
           "COMMENT ON COLUMN digestd.jobs.attempts IS 'claims that spent an attempt: counted "
           "at claim, given back when a job is released unstarted or the backend was busy'",
           "COMMENT ON COLUMN digestd.jobs.lease_token IS 'fresh at every claim; a write that "
           "finishes the job must name it (with lease_owner), so a late result from a lost "
           "worker is ignored'",
       }},
      {2,
       "attempts counted when a job starts; lost unstarted claims and busy retries kept",
       {
           // A claim no longer spends an attempt: the attempt is counted when
           // the job starts (the start mark or the finish writes it), so a
           // crash spends attempts only of jobs that ran. A claim lost
           // before its start was recorded counts in lost_unstarted instead;
           // such a job's next start is recorded before it runs, so a job
           // that kills its worker still uses up its attempts.
           "ALTER TABLE digestd.jobs ADD COLUMN lost_unstarted integer NOT NULL DEFAULT 0",
           // Busy answers (429/503) spend no attempt but back off further
           // each time, across requeues through the table.
           "ALTER TABLE digestd.jobs ADD COLUMN busy_retries integer NOT NULL DEFAULT 0",
           "COMMENT ON COLUMN digestd.jobs.attempts IS 'attempts that started: counted when "
           "the job starts, never at claim; a busy backend''s refusal is not counted'",
           "COMMENT ON COLUMN digestd.jobs.started_at IS 'when the current or last attempt "
           "started; NULL while a claimed job has not started'",
           "COMMENT ON COLUMN digestd.jobs.lost_unstarted IS 'claims lost with their worker "
           "before the start was recorded; the next start is recorded before the job runs'",
       }},
      {3,
       "preemptions counted on the job",
       {
           "ALTER TABLE digestd.jobs ADD COLUMN preempted integer NOT NULL DEFAULT 0",
           "COMMENT ON COLUMN digestd.jobs.preempted IS 'times a background attempt was "
           "aborted so an interactive job could start; such an attempt is not counted'",
       }},
      {4,
       "input hashes for submit conflicts, last_error for retries, the jobs list's index",
       {
           // A submit of an existing key with another kind or input is a
           // conflict; rows from before this version have no hash and
           // never conflict.
           "ALTER TABLE digestd.jobs ADD COLUMN input_hash bigint",
           // A retried or replaced job keeps the error it had, until it
           // ends again.
           "ALTER TABLE digestd.jobs ADD COLUMN last_error text",
           // `jobs` lists newest first and pages by id, through the
           // primary key. The list people read before a retry -- failed
           // and cancelled jobs, few among many done ones -- has an index
           // of its own, so a page of them does not read the done rows
           // between them; only rows that become failed or cancelled are
           // written to it. IF NOT EXISTS: an operator may build it
           // beforehand with CREATE INDEX CONCURRENTLY, so the migration
           // does not hold writes while a large table is indexed.
           "CREATE INDEX IF NOT EXISTS jobs_failed ON digestd.jobs (id) "
           "WHERE status IN ('failed', 'cancelled')",
           "COMMENT ON COLUMN digestd.jobs.input_hash IS '64-bit FNV-1a of kind, NUL and the "
           "input''s compact JSON with sorted members, as digestd computes it; NULL on rows "
           "from before schema version 4'",
           "COMMENT ON COLUMN digestd.jobs.last_error IS 'the error a job had when it was "
           "retried or replaced; cleared when it ends again'",
       }},
      {5,
       "result ttl (precompute cache) and parts that need other parts (after)",
       {
           // A done job whose ttl has passed is run again by the next
           // submit of its key. NULL: never expires.
           "ALTER TABLE digestd.jobs ADD COLUMN ttl_s integer",
           // A job submitted with "after" waits queued with run_after =
           // 'infinity' (no claim takes it) until the jobs it names are
           // done; then their results are added to its input and it is due.
           "ALTER TABLE digestd.jobs ADD COLUMN after_keys text[]",
           // The waiting ones, by group: the release after a finish of a
           // group reads only these, and no other row is ever in it.
           "CREATE INDEX IF NOT EXISTS jobs_waiting_after ON digestd.jobs (group_key) "
           "WHERE after_keys IS NOT NULL AND status = 'queued' AND run_after = 'infinity'",
           "COMMENT ON COLUMN digestd.jobs.ttl_s IS 'seconds a done result stays fresh: a "
           "submit of the key after finished_at + ttl_s runs the job again; NULL: never'",
           "COMMENT ON COLUMN digestd.jobs.after_keys IS 'keys of jobs (of the same group) "
           "this one needs; it waits with run_after = infinity until they are done'",
       }},
  };
  return migrations;
}

Status Migrate(PgConn& conn, std::function<void(Status)> done) {
  std::vector<PgStatement> unit;
  auto add = [&unit](std::string sql) { unit.push_back(PgStatement{std::move(sql), {}, {}}); };
  // Serialises concurrent migrators; released at the end of the transaction.
  add(std::string("SELECT pg_advisory_xact_lock(") + kLockKey + ")");
  add("CREATE SCHEMA IF NOT EXISTS digestd");
  add(R"(CREATE TABLE IF NOT EXISTS digestd.schema_version (
  version     integer PRIMARY KEY,
  description text NOT NULL,
  applied_at  timestamptz NOT NULL DEFAULT now()
))");
  for (const auto& m : Migrations()) {
    std::string body =
        "DO $migration$\nBEGIN\n  IF EXISTS (SELECT 1 FROM digestd.schema_version "
        "WHERE version = " +
        std::to_string(m.version) + ") THEN\n    RETURN;\n  END IF;\n";
    for (const auto& s : m.statements) body += "  " + s + ";\n";
    body += "  INSERT INTO digestd.schema_version (version, description) VALUES (" +
            std::to_string(m.version) + ", " + Quote(m.description) + ");\n";
    body += "END\n$migration$";
    add(std::move(body));
  }
  // The versions applied by this transaction (now() is its start time), and
  // the highest version present.
  add("SELECT coalesce(max(version), 0), "
      "coalesce(string_agg(version::text, ',' ORDER BY version) "
      "FILTER (WHERE applied_at = now()), '') FROM digestd.schema_version");
  std::string target = conn.Describe();
  return conn.Send(std::move(unit), [done = std::move(done),
                                     target](Result<std::vector<PgResult>> r) {
    if (!r.ok()) {
      const Status& st = r.status();
      if (st.code() == Status::Code::kUnavailable) {
        done(st);
      } else {
        done(Status::Internal("migrating schema digestd (" + target +
                              ") failed and changed nothing: " + st.message()));
      }
      return;
    }
    const PgResult& last = r->back();
    int version = last.rows() > 0 ? static_cast<int>(last.Int(0, 0)) : 0;
    std::string applied(last.rows() > 0 ? last.Text(0, 1) : "");
    if (version > kSchemaVersion) {
      done(Status::Internal("the database schema digestd is at version " + std::to_string(version) +
                            ", newer than this digestd knows (" + std::to_string(kSchemaVersion) +
                            "); upgrade digestd, or point [postgres] conninfo at another "
                            "database"));
      return;
    }
    if (!applied.empty()) {
      LOG_NOTICE("schema digestd migrated to version %d (applied: %s)", version, applied.c_str());
    } else {
      LOG_INFO("schema digestd is at version %d; nothing to migrate", version);
    }
    done(Status::Ok());
  });
}

}  // namespace digestd
