// Migrations against a real PostgreSQL: a fresh database, a repeat, two
// daemons migrating at once, a schema newer than this build.
#include "store/migrations.h"

#include <gtest/gtest.h>

#include <optional>
#include <string>

#include "../support/pg_fixture.h"

namespace digestd {
namespace {

using testing::ConnectAndMigrate;
using testing::MigrateNow;
using testing::TestLoop;

class MigrationsTest : public testing::PgTest {
 protected:
  // A database of this test's own: migrations need an empty one.
  std::string FreshDb() {
    auto db = server()->CreateDatabase();
    EXPECT_TRUE(db.ok()) << db.status().ToString();
    if (db.ok()) dbs_.push_back(*db);
    return db.ok() ? *db : std::string();
  }
  void TearDown() override {
    for (const auto& d : dbs_) (void)server()->DropDatabase(d);
  }
  std::string Q(const std::string& db, const std::string& sql) { return server()->Scalar(db, sql); }
  std::vector<std::string> dbs_;
};

TEST_F(MigrationsTest, FreshDatabaseGetsTheSchemaAndItsIndexes) {
  std::string db = FreshDb();
  TestLoop loop;
  PgConn conn(loop.get(), {server()->Conninfo(db)});
  ASSERT_TRUE(ConnectAndMigrate(loop, conn));
  conn.Close();

  std::string versions;
  for (const auto& m : Migrations())
    versions += (versions.empty() ? "" : ",") + std::to_string(m.version);
  EXPECT_EQ(
      Q(db, "SELECT string_agg(version::text, ',' ORDER BY version) FROM digestd.schema_version"),
      versions);
  EXPECT_EQ(Migrations().back().version, kSchemaVersion);
  EXPECT_EQ(Q(db,
              "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes "
              "WHERE schemaname = 'digestd' AND tablename = 'jobs'"),
            "jobs_claim,jobs_failed,jobs_finished,jobs_group,jobs_key_unique,jobs_lease,jobs_pkey,"
            "jobs_waiting_after");
  EXPECT_EQ(Q(db,
              "SELECT indexdef LIKE '%(lane, run_after, id) WHERE (status = ''queued''::text)'"
              " FROM pg_indexes WHERE indexname = 'jobs_claim'"),
            "t");
  std::string opts = Q(db,
                       "SELECT array_to_string(reloptions, ',') FROM pg_class "
                       "WHERE oid = 'digestd.jobs'::regclass");
  EXPECT_NE(opts.find("fillfactor=80"), std::string::npos) << opts;
  EXPECT_NE(opts.find("autovacuum_vacuum_scale_factor=0.02"), std::string::npos) << opts;
  // The status check constraint holds.
  EXPECT_NE(Q(db, "INSERT INTO digestd.jobs (key, kind, status) VALUES ('k', 'noop', 'bogus')")
                .find("jobs_status_valid"),
            std::string::npos);
}

TEST_F(MigrationsTest, RepeatedMigrationChangesNothing) {
  std::string db = FreshDb();
  TestLoop loop;
  PgConn conn(loop.get(), {server()->Conninfo(db)});
  ASSERT_TRUE(ConnectAndMigrate(loop, conn));
  std::string applied = Q(db, "SELECT applied_at::text FROM digestd.schema_version");
  Q(db, "INSERT INTO digestd.jobs (key, kind) VALUES ('survivor', 'noop')");
  for (int i = 0; i < 3; ++i) {
    Status st = MigrateNow(loop, conn);
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  conn.Close();
  EXPECT_EQ(Q(db, "SELECT count(*) FROM digestd.schema_version"),
            std::to_string(Migrations().size()));
  EXPECT_EQ(Q(db, "SELECT applied_at::text FROM digestd.schema_version"), applied);
  EXPECT_EQ(Q(db, "SELECT count(*) FROM digestd.jobs WHERE key = 'survivor'"), "1");
}

TEST_F(MigrationsTest, TwoDaemonsStartingAtOnceMigrateOnce) {
  // Several rounds: without the advisory lock the two CREATE TABLEs race and
  // one fails on a duplicate catalog entry.
  for (int round = 0; round < 3; ++round) {
    std::string db = FreshDb();
    TestLoop loop;
    PgConn a(loop.get(), {server()->Conninfo(db)});
    PgConn b(loop.get(), {server()->Conninfo(db)});
    a.Start();
    b.Start();
    ASSERT_TRUE(loop.RunUntil([&] { return a.up() && b.up(); }));
    std::optional<Status> da, dbs;
    ASSERT_TRUE(Migrate(a, [&](Status s) { da = std::move(s); }).ok());
    ASSERT_TRUE(Migrate(b, [&](Status s) { dbs = std::move(s); }).ok());
    ASSERT_TRUE(loop.RunUntil([&] { return da && dbs; }));
    EXPECT_TRUE(da->ok()) << da->ToString();
    EXPECT_TRUE(dbs->ok()) << dbs->ToString();
    a.Close();
    b.Close();
    EXPECT_EQ(Q(db, "SELECT count(*) FROM digestd.schema_version"),
              std::to_string(Migrations().size()));
  }
}

TEST_F(MigrationsTest, NewerSchemaThanThisBuildIsRefused) {
  std::string db = FreshDb();
  TestLoop loop;
  PgConn conn(loop.get(), {server()->Conninfo(db)});
  ASSERT_TRUE(ConnectAndMigrate(loop, conn));
  Q(db, "INSERT INTO digestd.schema_version (version, description) VALUES (99, 'future')");
  Status st = MigrateNow(loop, conn);
  EXPECT_EQ(st.code(), Status::Code::kInternal);
  EXPECT_NE(st.message().find("newer than this digestd"), std::string::npos) << st.message();
  // It says what to do (the README's troubleshooting table quotes it).
  EXPECT_NE(
      st.message().find("; upgrade digestd, or point [postgres] conninfo at another database"),
      std::string::npos)
      << st.message();
  conn.Close();
}

TEST_F(MigrationsTest, RefusesWhileDisconnected) {
  TestLoop loop;
  PgConn conn(loop.get(), {"host=/nonexistent-dir dbname=x"});
  bool called = false;
  Status st = Migrate(conn, [&](Status) { called = true; });
  EXPECT_EQ(st.code(), Status::Code::kUnavailable);
  EXPECT_FALSE(called);
}

TEST(MigrationsList, VersionsRunFromOneWithoutGaps) {
  int expect = 1;
  for (const auto& m : Migrations()) {
    EXPECT_EQ(m.version, expect++);
    EXPECT_FALSE(m.statements.empty());
  }
  EXPECT_EQ(expect - 1, kSchemaVersion);
}

}  // namespace
}  // namespace digestd
