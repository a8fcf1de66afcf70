// PostgreSQL for tests: a reachable server, a fresh database per test suite,
// server stop/start for outage tests, a blocking session the test controls
// (to hold a transaction and its locks open until the test ends it), and
// helpers that run the asynchronous store code on a TestLoop.
//
// Which server: PGHOST/PGPORT/PGUSER when set (scripts/test runs ctest under
// `scripts/pg-throwaway run`); else the cluster that ctest's store_pg fixture
// started, named by the env file in DIGESTD_PG_ENV_FILE; else a throwaway
// cluster this process starts with scripts/pg-throwaway and stops at exit.
// When none can be reached or started, every PgTest fails with the reason
// -- tests never skip for want of a database.
//
// Outage tests stop and start the server. They use PgServer::StartPrivate(),
// a cluster of their own, never the shared one that other tests are using.
//
// Threads: the test's thread. The blocking libpq calls here (Exec, PgSession)
// are for test setup and assertions only, never on a loop.
#pragma once

#include <gtest/gtest.h>
#include <uv.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "pg_session.h"
#include "store/pg_conn.h"
#include "test_loop.h"
#include "util/status.h"

namespace digestd::testing {

class PgServer {
 public:
  // The server shared by this process's tests; nullptr (and `error` says
  // why) when there is none.
  static PgServer* Shared(std::string* error);
  // A cluster of the caller's own, which Stop() and Start() may control.
  static std::unique_ptr<PgServer> StartPrivate(std::string* error);
  // Stops and removes a cluster this object started.
  ~PgServer();
  PgServer(const PgServer&) = delete;
  PgServer& operator=(const PgServer&) = delete;

  // A libpq key=value conninfo for database `db`.
  std::string Conninfo(const std::string& db) const;
  // Creates an empty database with a fresh name and returns the name.
  Result<std::string> CreateDatabase();
  Status DropDatabase(const std::string& name);
  // Runs `sql` on `db` with a blocking connection; every row's fields as
  // text ("" for NULL). Fails on any error.
  Result<Rows> Exec(const std::string& db, const std::string& sql) const;
  // The first field of the first row, or the error message.
  std::string Scalar(const std::string& db, const std::string& sql) const;

  // Server control, for a cluster this process started (see controllable()).
  // `mode` is pg_ctl's: "fast" (sessions terminated) or "immediate" (a crash).
  Status Stop(const std::string& mode = "fast");
  Status Start();
  bool controllable() const { return !dir_.empty(); }
  const std::string& host() const { return host_; }
  const std::string& port() const { return port_; }

 private:
  PgServer() = default;
  static std::unique_ptr<PgServer> Launch(std::string* error);

  std::string host_, port_, user_;
  std::string dir_;     // the pg-throwaway directory when this process owns the cluster
  bool owned_ = false;  // stop and remove at destruction
};

// Base of tests that need a database: one fresh database per test suite.
class PgTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite();
  static void TearDownTestSuite();
  // Fails the test (never skips it) when no server is available.
  void SetUp() override;

  static PgServer* server() { return server_; }
  static const std::string& db() { return db_; }
  static std::string conninfo() { return server_->Conninfo(db_); }
  static std::string Scalar(const std::string& sql) { return server_->Scalar(db_, sql); }

 private:
  static PgServer* server_;
  static std::string db_;
  static std::string error_;
};

// Starts an asynchronous call and runs the loop until its callback has run;
// returns the callback's argument. `start` receives the callback and returns
// the call's Status; a refused call or no answer fails the test (nullopt).
template <typename T, typename Start>
std::optional<T> Await(TestLoop& loop, Start start) {
  std::optional<T> out;
  Status st = start([&out](T v) { out.emplace(std::move(v)); });
  EXPECT_TRUE(st.ok()) << st.ToString();
  if (!st.ok()) return std::nullopt;
  EXPECT_TRUE(loop.RunUntil([&] { return out.has_value(); })) << "the callback never ran";
  return out;
}

// Runs Migrate on `conn` (which is up) and waits for its answer.
Status MigrateNow(TestLoop& loop, PgConn& conn);
// Checks `conn`'s init_status(), starts it, waits until it is up, and
// migrates schema digestd.
::testing::AssertionResult ConnectAndMigrate(TestLoop& loop, PgConn& conn);

}  // namespace digestd::testing
