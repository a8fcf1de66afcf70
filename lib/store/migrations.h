// Migrations: the schema `digestd` that the daemon owns, created and brought
// up to date at start (and by `digestd --migrate-only`).
//
// Each migration has a version; digestd.schema_version records the ones
// applied. Migrate() sends every step as ONE unit on the connection, so it
// runs as one transaction, and the first statement takes a transaction-scoped
// advisory lock: when two daemons start at once against an empty database,
// the second waits for the first to commit, then finds every version applied
// and changes nothing. A migration is never edited once released; a schema
// change is a new version appended to the list.
//
// The jobs table (version 1), in short -- the .cpp has the DDL with reasons:
//   id bigserial, key text unique (the idempotency key), group_key, kind,
//   lane smallint (0 interactive, 1 background), input jsonb,
//   status queued|running|done|failed|cancelled (checked), attempts,
//   max_attempts, run_after, lease_owner, lease_until, lease_token (the
//   lease guard: a fresh value from digestd.lease_token_seq at every claim),
//   result jsonb, error, created_at, started_at, finished_at, updated_at.
//   Indexes: jobs_claim (lane, run_after, id) WHERE status = 'queued';
//   the unique key; jobs_group (group_key, id); jobs_lease (lease_until)
//   WHERE status = 'running'; jobs_finished (finished_at) WHERE terminal.
//   Storage: fillfactor 80 and eager autovacuum, as a queue table needs.
// Later versions: lost_unstarted and busy_retries (2), preempted (3);
// input_hash, last_error, and the index jobs_failed (id) of failed and
// cancelled rows for the `jobs` list (4).
//
// Threads: loop thread only (it uses a PgConn).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "store/pg_conn.h"
#include "util/status.h"

namespace digestd {

// The schema version this build creates and understands.
inline constexpr int kSchemaVersion = 5;

struct Migration {
  int version;
  std::string description;
  std::vector<std::string> statements;  // run in order, inside the transaction
};

// Every migration, oldest first; versions are 1, 2, 3, ... without gaps.
const std::vector<Migration>& Migrations();

// Brings schema `digestd` up to kSchemaVersion in one transaction under the
// advisory lock. `done` runs on the loop thread with Ok (also when nothing
// was to do), Unavailable (the connection failed; try again once it is up),
// or Internal (a statement failed -- nothing was changed -- or the database
// is at a newer version than this build knows). Returns Unavailable without
// calling `done` when `conn` is not up.
[[nodiscard]] Status Migrate(PgConn& conn, std::function<void(Status)> done);

}  // namespace digestd
