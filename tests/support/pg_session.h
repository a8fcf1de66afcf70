// PgSession: a blocking libpq session of a test's (or a benchmark's) own,
// for setup, checks and holding locks. The benchmarks use it too
// (bench_support.h), so it needs no GoogleTest.
//
// Threads: the thread that made it, never a loop's.
#pragma once

#include <libpq-fe.h>

#include <string>
#include <vector>

#include "util/status.h"

namespace digestd::testing {

using Rows = std::vector<std::vector<std::string>>;

// Each Exec returns when the server has answered, so it is for statements
// that do not wait on the code under test (its loop is not running
// meanwhile): BEGIN, taking a lock nobody else holds yet, COMMIT / ROLLBACK.
// The typical use holds a lock while the loop runs and ends it when the
// test has seen what it needs:
//
//   PgSession holder(conninfo());
//   ASSERT_TRUE(holder.Exec("BEGIN; LOCK TABLE digestd.jobs").ok());
//   ... run the loop until the writer waits on the lock ...
//   ASSERT_TRUE(holder.Exec("ROLLBACK").ok());
//
// Closing the session (the destructor) rolls back a transaction still open.
class PgSession {
 public:
  // Connects with a libpq key=value or URI conninfo ("" for libpq's PG*
  // variables). Notices are dropped.
  explicit PgSession(const std::string& conninfo);
  ~PgSession();
  PgSession(const PgSession&) = delete;
  PgSession& operator=(const PgSession&) = delete;

  // Unavailable when the connection failed (the Exec calls then fail too).
  const Status& status() const { return status_; }
  // Runs `sql` (one statement or several separated by ';'); every row of
  // the last statement's result, its fields as text ("" for NULL).
  Result<Rows> Exec(const std::string& sql);
  // The backend's process id (pg_backend_pid()), 0 when not connected.
  int BackendPid() const;
  // The connection itself, for what Exec does not cover (COPY, LISTEN).
  PGconn* get() const { return conn_; }

 private:
  PGconn* conn_ = nullptr;
  Status status_;
};

}  // namespace digestd::testing
