// BatchWriter against a real PostgreSQL: batches by size and by time, group
// commit of submits, idempotent repeats, NOTIFY, lease renewals, a poisoned
// row, a full ring, and a server stopped mid-run. Where a batch must stay in
// flight, a session of the test's own (PgSession) holds a lock the batch
// waits on, and the test ends that transaction when it has seen what it
// needs: nothing depends on how long anything takes.
#include "store/batch_writer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "../support/pg_fixture.h"
#include "obs/log.h"
#include "util/clock.h"

namespace digestd {
namespace {

using testing::Await;
using testing::ConnectAndMigrate;
using testing::PgServer;
using testing::PgSession;
using testing::TestLoop;

NewJob Job(std::string key) {
  NewJob j;
  j.key = std::move(key);
  j.kind = "noop";
  j.input = std::make_shared<const nlohmann::json>(nlohmann::json::object());
  return j;
}

// Loop, connection, store and writer on a database, torn down in order.
struct Rig {
  Rig(TestLoop& loop, const std::string& conninfo, BatchWriterOptions o,
      BatchWriter::Hooks hooks = {}, int reconnect_ms = 200)
      : loop(loop) {
    PgConnOptions po;
    po.conninfo = conninfo;
    po.reconnect_min_ms = 50;
    po.reconnect_max_ms = reconnect_ms;
    conn = std::make_unique<PgConn>(loop.get(), po);
    ok = ConnectAndMigrate(loop, *conn);
    store = std::make_unique<JobStore>(*conn, "node-a");
    writer = std::make_unique<BatchWriter>(loop.get(), *conn, *store, o, std::move(hooks));
    EXPECT_TRUE(writer->init_status().ok()) << writer->init_status().ToString();
  }
  ~Rig() {
    writer->Close();
    writer.reset();
    conn->Close();
  }
  // Inserts and claims `n` jobs named prefix0.. directly through the store.
  std::vector<StoredJob> Claimed(const std::string& prefix, int n) {
    std::vector<NewJob> jobs;
    for (int i = 0; i < n; ++i) jobs.push_back(Job(prefix + std::to_string(i)));
    auto ins = Await<Result<std::vector<InsertedJob>>>(
        loop, [&](auto cb) { return store->InsertJobs(std::move(jobs), cb); });
    EXPECT_TRUE(ins && ins->ok());
    auto got = Await<Result<std::vector<StoredJob>>>(
        loop, [&](auto cb) { return store->Claim(Lane::kBackground, n, 60, cb); });
    EXPECT_TRUE(got && got->ok());
    return got && got->ok() ? got->value() : std::vector<StoredJob>{};
  }

  TestLoop& loop;
  ::testing::AssertionResult ok = ::testing::AssertionSuccess();
  std::unique_ptr<PgConn> conn;
  std::unique_ptr<JobStore> store;
  std::unique_ptr<BatchWriter> writer;
};

// A job that started and finished (the row counts its attempt).
FinishRow DoneRow(const StoredJob& j, int v = 1) {
  return FinishRow{j.id, j.lease_token, j.key, JobState::kDone, {{"v", v}}, "", UnixMillis()};
}

BatchWriterOptions Opts(int rows, int ms, size_t capacity = 500) {
  BatchWriterOptions o;
  o.batch_rows = rows;
  o.batch_ms = ms;
  o.capacity = capacity;
  return o;
}

class BatchWriterTest : public testing::PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    if (HasFatalFailure()) return;
    Scalar("TRUNCATE digestd.jobs");  // fails harmlessly before the first migration
  }

  // Opens a session of the test's own and runs `sql` in a transaction it
  // leaves open, so whatever `sql` locked stays locked until the test ends
  // the transaction (COMMIT or ROLLBACK on the session).
  static std::unique_ptr<PgSession> Hold(const std::string& sql) {
    auto session = std::make_unique<PgSession>(conninfo());
    auto r = session->Exec("BEGIN; " + sql);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return session;
  }

  // How many sessions wait for a lock that `holder` holds ("1", ...).
  static std::string WaitingOn(const PgSession& holder) {
    return Scalar("SELECT count(*) FROM pg_stat_activity WHERE " +
                  std::to_string(holder.BackendPid()) + " = ANY(pg_blocking_pids(pid))");
  }
};

TEST_F(BatchWriterTest, FlushesWhenTheBatchIsFull) {
  TestLoop loop;
  Rig rig(loop, conninfo(), Opts(10, 60000));
  ASSERT_TRUE(rig.ok);
  auto jobs = rig.Claimed("full", 25);
  ASSERT_EQ(jobs.size(), 25u);
  int committed = 0;
  for (const auto& j : jobs) {
    ASSERT_TRUE(rig.writer
                    ->Enqueue(WriteRow::Finish(DoneRow(j),
                                               [&](const RowOutcome& o) {
                                                 // The last 5 get Unavailable at Close.
                                                 if (o.status.ok() && o.accepted) ++committed;
                                               }))
                    .ok());
  }
  ASSERT_TRUE(loop.RunUntil([&] { return committed == 20; }));
  // The last 5 wait for batch_ms (a minute) or more rows: no batch starts
  // at the next turns of the loop.
  loop.RunTurns();
  EXPECT_FALSE(rig.writer->flushing());
  EXPECT_EQ(committed, 20);
  BatchWriterStats s = rig.writer->stats();
  EXPECT_EQ(s.batches, 2u);
  EXPECT_EQ(s.depth, 5u);
  EXPECT_EQ(s.results_written, 20u);
  EXPECT_DOUBLE_EQ(s.commits_per_1000_results, 100.0);
  EXPECT_EQ(Scalar("SELECT count(*) FROM digestd.jobs WHERE status = 'done'"), "20");
}

TEST_F(BatchWriterTest, FlushesAfterBatchMsWhenTheBatchStaysSmall) {
  TestLoop loop;
  Rig rig(loop, conninfo(), Opts(1000, 300));
  ASSERT_TRUE(rig.ok);
  auto jobs = rig.Claimed("slow", 3);
  uv_update_time(loop.get());
  uint64_t start = uv_now(loop.get());
  uint64_t committed_at = 0;
  int committed = 0;
  for (const auto& j : jobs) {
    ASSERT_TRUE(rig.writer
                    ->Enqueue(WriteRow::Finish(DoneRow(j),
                                               [&](const RowOutcome&) {
                                                 ++committed;
                                                 committed_at = uv_now(loop.get());
                                               }))
                    .ok());
  }
  ASSERT_TRUE(loop.RunUntil([&] { return committed == 3; }));
  EXPECT_GE(committed_at - start, 290u) << "results wait batch_ms for their batch to fill";
  EXPECT_EQ(rig.writer->stats().batches, 1u);
}

TEST_F(BatchWriterTest, IdleWriterCommitsALoneSubmitAtOnce) {
  TestLoop loop;
  Rig rig(loop, conninfo(), Opts(50, 60000));
  ASSERT_TRUE(rig.ok);
  std::optional<RowOutcome> got;
  ASSERT_TRUE(
      rig.writer->Enqueue(WriteRow::Submit(Job("lone"), [&](const RowOutcome& o) { got = o; }))
          .ok());
  // The batch starts at the next turn of the loop, not after batch_ms (60 s).
  loop.RunTurns(1);
  EXPECT_TRUE(rig.writer->flushing() || got.has_value());
  ASSERT_TRUE(loop.RunUntil([&] { return got.has_value(); }));
  ASSERT_TRUE(got->status.ok()) << got->status.ToString();
  EXPECT_TRUE(got->inserted.created);
  EXPECT_GT(got->inserted.id, 0u);
  // Committed by the time the callback runs.
  EXPECT_EQ(Scalar("SELECT status FROM digestd.jobs WHERE key = 'lone'"), "queued");
}

TEST_F(BatchWriterTest, EachCommittedBatchIsLoggedAtDebug) {
  TestLoop loop;
  Rig rig(loop, conninfo(), Opts(50, 60000));
  ASSERT_TRUE(rig.ok);
  std::FILE* file = std::tmpfile();
  ASSERT_NE(file, nullptr);
  int saved = dup(STDERR_FILENO);
  dup2(fileno(file), STDERR_FILENO);
  SetLogLevel(LogLevel::kDebug);
  int got = 0;
  for (const char* key : {"logged1", "logged2"}) {
    Status st = rig.writer->Enqueue(WriteRow::Submit(Job(key), [&](const RowOutcome&) { ++got; }));
    EXPECT_TRUE(st.ok()) << st.ToString();
  }
  bool done = loop.RunUntil([&] { return got == 2; });
  SetLogLevel(LogLevel::kInfo);
  dup2(saved, STDERR_FILENO);
  close(saved);
  std::string out(8192, '\0');
  std::rewind(file);
  out.resize(std::fread(out.data(), 1, out.size(), file));
  std::fclose(file);
  ASSERT_TRUE(done);
  EXPECT_NE(out.find("debug: writer: committed a batch of 2 rows (2 submits, 0 finishes, 0 "
                     "requeues, 0 renewals, 0 leases lost) in "),
            std::string::npos)
      << out;
}

TEST_F(BatchWriterTest, SubmitsOfOneTurnShareOneCommitAndLaterOnesTheNext) {
  TestLoop loop;
  Rig rig(loop, conninfo(), Opts(50, 60000));
  ASSERT_TRUE(rig.ok);
  int acked = 0;
  auto submit = [&](const std::string& key) {
    ASSERT_TRUE(rig.writer
                    ->Enqueue(WriteRow::Submit(Job(key),
                                               [&, key](const RowOutcome& o) {
                                                 EXPECT_TRUE(o.status.ok());
                                                 // turn0 was made by the other session.
                                                 EXPECT_EQ(o.inserted.created, key != "turn0");
                                                 ++acked;
                                               }))
                    .ok());
  };
  // The test's session inserts key turn0 and keeps its transaction open, so
  // the writer's first commit (which inserts turn0 too) waits on it: a flush
  // in flight until the test commits.
  auto other = Hold("INSERT INTO digestd.jobs (key, kind) VALUES ('turn0', 'noop')");
  for (int i = 0; i < 40; ++i) submit("turn" + std::to_string(i));
  ASSERT_TRUE(loop.RunUntil([&] { return WaitingOn(*other) == "1"; }))
      << "the first commit never waited for turn0";
  ASSERT_TRUE(rig.writer->flushing());
  // These arrive while the first commit is in flight: not a full batch, so
  // they wait for it, and then share one more commit.
  for (int i = 0; i < 30; ++i) submit("later" + std::to_string(i));
  loop.RunTurns();
  EXPECT_EQ(rig.writer->stats().batches_in_flight, 1u);
  EXPECT_EQ(acked, 0);
  ASSERT_TRUE(other->Exec("COMMIT").ok());
  ASSERT_TRUE(loop.RunUntil([&] { return acked == 70; }));
  EXPECT_EQ(rig.writer->stats().batches, 2u);
  EXPECT_EQ(rig.writer->stats().submits_written, 70u);
}

TEST_F(BatchWriterTest, ASecondFullBatchGoesWhileTheFirstCommitsAndAThirdWaits) {
  TestLoop loop;
  Rig rig(loop, conninfo(), Opts(10, 60000, 100));
  ASSERT_TRUE(rig.ok);
  std::vector<std::string> acked;
  auto submit = [&](const std::string& key) {
    ASSERT_TRUE(rig.writer
                    ->Enqueue(WriteRow::Submit(Job(key),
                                               [&, key](const RowOutcome& o) {
                                                 EXPECT_TRUE(o.status.ok()) << key;
                                                 acked.push_back(key);
                                               }))
                    .ok());
  };
  // The first batch inserts key a0, which the test's session inserted and
  // holds uncommitted: it waits until the test commits.
  auto other = Hold("INSERT INTO digestd.jobs (key, kind) VALUES ('a0', 'noop')");
  for (int i = 0; i < 10; ++i) submit("a" + std::to_string(i));
  ASSERT_TRUE(loop.RunUntil([&] { return rig.writer->stats().batches_in_flight == 1; }));
  // A full batch gathers while the first waits: it is sent beside it.
  for (int i = 0; i < 10; ++i) submit("b" + std::to_string(i));
  ASSERT_TRUE(loop.RunUntil([&] { return rig.writer->stats().batches_in_flight == 2; }))
      << "the second full batch waited for the first commit";
  // A third full batch waits: two in flight at most.
  for (int i = 0; i < 10; ++i) submit("c" + std::to_string(i));
  loop.RunTurns();
  EXPECT_EQ(rig.writer->stats().batches_in_flight, 2u);
  EXPECT_EQ(rig.writer->depth(), 30u);
  EXPECT_TRUE(acked.empty());
  ASSERT_TRUE(other->Exec("COMMIT").ok());
  ASSERT_TRUE(loop.RunUntil([&] { return acked.size() == 30; }));
  // Answered in the order the batches were sent, each batch in ring order.
  for (size_t i = 0; i < acked.size(); ++i) {
    EXPECT_EQ(acked[i], std::string(1, static_cast<char>('a' + i / 10)) + std::to_string(i % 10));
  }
  EXPECT_EQ(rig.writer->stats().batches, 3u);
  EXPECT_EQ(Scalar("SELECT count(*) FROM digestd.jobs"), "30");
}

TEST_F(BatchWriterTest, ABatchThatFailsWhileTheNextIsInFlightIsWrittenAgainAfterIt) {
  TestLoop loop;
  Rig rig(loop, conninfo(), Opts(10, 60000, 100));
  ASSERT_TRUE(rig.ok);
  auto jobs = rig.Claimed("f", 20);
  ASSERT_EQ(jobs.size(), 20u);
  // The test's session locks f0's row: the first batch (f0..f9) waits on it.
  auto other = Hold("SELECT id FROM digestd.jobs WHERE key = 'f0' FOR UPDATE");
  std::vector<std::string> done;
  for (const auto& j : jobs) {
    ASSERT_TRUE(rig.writer
                    ->Enqueue(WriteRow::Finish(DoneRow(j),
                                               [&, key = j.key](const RowOutcome& o) {
                                                 EXPECT_TRUE(o.status.ok() && o.accepted) << key;
                                                 done.push_back(key);
                                               }))
                    .ok());
  }
  ASSERT_TRUE(loop.RunUntil([&] { return rig.writer->stats().batches_in_flight == 2; }));
  // Cancel the statement that waits: the first batch fails, the second
  // (f10..f19, no lock in its way) commits, then the first is written again
  // (and waits for the lock again until the test releases it).
  ASSERT_TRUE(loop.RunUntil([&] { return WaitingOn(*other) == "1"; }));
  EXPECT_EQ(Scalar("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE " +
                   std::to_string(other->BackendPid()) + " = ANY(pg_blocking_pids(pid))"),
            "t");
  ASSERT_TRUE(loop.RunUntil([&] { return done.size() == 10; }));
  ASSERT_TRUE(other->Exec("ROLLBACK").ok());
  ASSERT_TRUE(loop.RunUntil([&] { return done.size() == 20; }));
  for (size_t i = 0; i < 10; ++i) EXPECT_EQ(done[i], "f" + std::to_string(i + 10));
  for (size_t i = 10; i < 20; ++i) EXPECT_EQ(done[i], "f" + std::to_string(i - 10));
  EXPECT_EQ(rig.writer->stats().failed_batches, 1u);
  EXPECT_EQ(rig.writer->depth(), 0u);
  EXPECT_EQ(Scalar("SELECT count(*) FROM digestd.jobs WHERE status = 'done'"), "20");
}

TEST_F(BatchWriterTest, RepeatedWritesAreIdempotent) {
  TestLoop loop;
  Rig rig(loop, conninfo(), Opts(50, 0));
  ASSERT_TRUE(rig.ok);
  std::vector<RowOutcome> outs;
  auto record = [&](const RowOutcome& o) { outs.push_back(o); };
  ASSERT_TRUE(rig.writer->Enqueue(WriteRow::Submit(Job("dup"), record)).ok());
  ASSERT_TRUE(loop.RunUntil([&] { return outs.size() == 1; }));
  ASSERT_TRUE(rig.writer->Enqueue(WriteRow::Submit(Job("dup"), record)).ok());
  ASSERT_TRUE(loop.RunUntil([&] { return outs.size() == 2; }));
  EXPECT_TRUE(outs[0].inserted.created);
  EXPECT_FALSE(outs[1].inserted.created);
  EXPECT_EQ(outs[0].inserted.id, outs[1].inserted.id);
  EXPECT_EQ(outs[1].inserted.status, JobState::kQueued);

  auto got = Await<Result<std::vector<StoredJob>>>(
      loop, [&](auto cb) { return rig.store->Claim(Lane::kBackground, 1, 60, cb); });
  ASSERT_TRUE(got && got->ok() && got->value().size() == 1);
  const StoredJob& j = got->value()[0];
  // The same finish written twice, as after a commit whose answer was lost.
  ASSERT_TRUE(rig.writer->Enqueue(WriteRow::Finish(DoneRow(j, 5), record)).ok());
  ASSERT_TRUE(loop.RunUntil([&] { return outs.size() == 3; }));
  std::string finished = Scalar("SELECT finished_at::text FROM digestd.jobs WHERE key = 'dup'");
  ASSERT_TRUE(rig.writer->Enqueue(WriteRow::Finish(DoneRow(j, 5), record)).ok());
  ASSERT_TRUE(loop.RunUntil([&] { return outs.size() == 4; }));
  EXPECT_TRUE(outs[2].accepted);
  EXPECT_TRUE(outs[3].accepted);
  EXPECT_EQ(Scalar("SELECT finished_at::text FROM digestd.jobs WHERE key = 'dup'"), finished);
  EXPECT_EQ(Scalar("SELECT result::text FROM digestd.jobs WHERE key = 'dup'"), "{\"v\": 5}");
  EXPECT_EQ(Scalar("SELECT count(*) FROM digestd.jobs"), "1");
}

TEST_F(BatchWriterTest, ListenerHearsFinishedKeysSplitUnderThePayloadLimit) {
  TestLoop loop;
  PgConn listener(loop.get(), {conninfo()});
  std::vector<std::string> payloads;
  listener.SetNotifyHandler([&](const std::string& ch, const std::string& p) {
    if (ch == kDoneChannel) payloads.push_back(p);
  });
  listener.Start();
  ASSERT_TRUE(loop.RunUntil([&] { return listener.up(); }));
  auto l = Await<Result<PgResult>>(loop, [&](auto cb) {
    return listener.Query(PgStatement{"LISTEN digestd_done", {}, {}}, cb);
  });
  ASSERT_TRUE(l && l->ok());
  {
    Rig rig(loop, conninfo(), Opts(100, 60000));
    ASSERT_TRUE(rig.ok);
    // 60 keys of ~400 bytes, half of them quotes (each escaped in JSON):
    // several NOTIFYs' worth.
    auto jobs = rig.Claimed(std::string(200, 'n') + std::string(200, '"'), 60);
    ASSERT_EQ(jobs.size(), 60u);
    for (const auto& j : jobs) ASSERT_TRUE(rig.writer->Enqueue(WriteRow::Finish(DoneRow(j))).ok());
    // A late result from a lost lease is ignored and never announced.
    auto other = rig.Claimed("stale", 1);
    ASSERT_EQ(other.size(), 1u);
    StoredJob stale = other[0];
    stale.lease_token += 1000;
    ASSERT_TRUE(rig.writer->Enqueue(WriteRow::Finish(DoneRow(stale))).ok());
    bool drained = false;
    rig.writer->Drain([&] { drained = true; });
    ASSERT_TRUE(loop.RunUntil([&] { return drained; }));
    std::set<std::string> keys;
    ASSERT_TRUE(loop.RunUntil([&] {
      keys.clear();
      for (const auto& p : payloads) {
        for (const auto& k : nlohmann::json::parse(p)) keys.insert(k.get<std::string>());
      }
      return keys.size() == 60;
    }));
    EXPECT_EQ(keys.count("stale0"), 0u) << "a refused result was announced";
    EXPECT_GE(payloads.size(), 3u);
    for (const auto& p : payloads) EXPECT_LT(p.size(), 8000u);
    EXPECT_EQ(rig.writer->stats().batches, 1u) << "one transaction, several NOTIFYs";
  }
  listener.Close();
}

TEST_F(BatchWriterTest, StaleLeaseRowsAreReportedNotAccepted) {
  TestLoop loop;
  Rig rig(loop, conninfo(), Opts(50, 0));
  ASSERT_TRUE(rig.ok);
  auto jobs = rig.Claimed("guard", 2);
  ASSERT_EQ(jobs.size(), 2u);
  FinishRow stale = DoneRow(jobs[1]);
  stale.token += 1000;
  std::vector<RowOutcome> outs;
  auto record = [&](const RowOutcome& o) { outs.push_back(o); };
  ASSERT_TRUE(rig.writer->Enqueue(WriteRow::Finish(DoneRow(jobs[0]), record)).ok());
  ASSERT_TRUE(rig.writer->Enqueue(WriteRow::Finish(stale, record)).ok());
  ASSERT_TRUE(rig.writer
                  ->Enqueue(WriteRow::Requeue(
                      RequeueRow{jobs[1].id, jobs[1].lease_token, 0, true, ""}, record))
                  .ok());
  ASSERT_TRUE(loop.RunUntil([&] { return outs.size() == 3; }));
  EXPECT_TRUE(outs[0].accepted);
  EXPECT_FALSE(outs[1].accepted);
  EXPECT_TRUE(outs[2].accepted);
  EXPECT_TRUE(outs[1].status.ok());
  EXPECT_EQ(rig.writer->stats().ignored, 1u);
  EXPECT_EQ(Scalar("SELECT string_agg(status || '/' || attempts, ',' ORDER BY id) FROM "
                   "digestd.jobs"),
            "done/1,queued/0");
}

TEST_F(BatchWriterTest, LeaseRenewalsRideAlongAndLostLeasesAreReported) {
  TestLoop loop;
  std::vector<uint64_t> lost;
  BatchWriter::Hooks hooks;
  hooks.on_leases_lost = [&](std::vector<uint64_t> ids) { lost = std::move(ids); };
  BatchWriterOptions o = Opts(50, 200);
  o.lease_s = 900;
  Rig rig(loop, conninfo(), o, std::move(hooks));
  ASSERT_TRUE(rig.ok);
  auto jobs = rig.Claimed("lease", 3);
  ASSERT_EQ(jobs.size(), 3u);
  // jobs[2] was rescued by someone else meanwhile.
  Scalar("UPDATE digestd.jobs SET lease_owner = 'node-z' WHERE id = " + std::to_string(jobs[2].id));
  std::vector<LeaseRef> leases;
  for (const auto& j : jobs) leases.push_back({j.id, j.lease_token});
  rig.writer->RenewLeases(leases);
  // jobs[0] finishes in the same batch: it must not be reported lost.
  ASSERT_TRUE(rig.writer->Enqueue(WriteRow::Finish(DoneRow(jobs[0]))).ok());
  ASSERT_TRUE(loop.RunUntil([&] { return rig.writer->stats().batches == 1; }));
  ASSERT_TRUE(loop.RunUntil([&] { return !lost.empty(); }));
  EXPECT_EQ(lost, std::vector<uint64_t>{jobs[2].id});
  EXPECT_EQ(Scalar("SELECT lease_until > now() + interval '800 seconds' FROM digestd.jobs "
                   "WHERE id = " +
                   std::to_string(jobs[1].id)),
            "t");
  EXPECT_EQ(rig.writer->stats().depth, 0u);
}

// Start marks ride along like renewals: each counts its job's attempt once,
// on_leases_renewed reports it; a job whose finish is in the same batch
// sends no mark (its finish row counts the attempt); an urgent mark goes at
// the next turn, not after batch_ms.
TEST_F(BatchWriterTest, StartMarksRideAlongCountOnceAndAreReported) {
  TestLoop loop;
  std::vector<LeaseRef> renewed;
  BatchWriter::Hooks hooks;
  hooks.on_leases_renewed = [&](const std::vector<LeaseRef>& r, uint64_t) {
    renewed.insert(renewed.end(), r.begin(), r.end());
  };
  Rig rig(loop, conninfo(), Opts(50, 60000), std::move(hooks));
  ASSERT_TRUE(rig.ok);
  auto jobs = rig.Claimed("mark", 3);
  ASSERT_EQ(jobs.size(), 3u);
  const int64_t t = UnixMillis();
  rig.writer->MarkStarted({jobs[0].id, jobs[0].lease_token, t}, false);
  rig.writer->MarkStarted({jobs[1].id, jobs[1].lease_token, t}, false);
  ASSERT_TRUE(rig.writer->Enqueue(WriteRow::Finish(DoneRow(jobs[1]))).ok());
  // batch_ms is a minute: only the urgent mark makes the batch go now.
  rig.writer->MarkStarted({jobs[2].id, jobs[2].lease_token, t}, true);
  ASSERT_TRUE(loop.RunUntil([&] { return rig.writer->stats().batches == 1; }));
  std::set<uint64_t> ids;
  for (const auto& l : renewed) ids.insert(l.id);
  EXPECT_EQ(ids, (std::set<uint64_t>{jobs[0].id, jobs[2].id}));
  EXPECT_EQ(Scalar("SELECT string_agg(status || '/' || attempts || '/' || (started_at IS NOT "
                   "NULL), ',' ORDER BY id) FROM digestd.jobs"),
            "running/1/true,done/1/true,running/1/true");
  // A repeated mark changes nothing.
  rig.writer->MarkStarted({jobs[0].id, jobs[0].lease_token, t + 5}, true);
  ASSERT_TRUE(loop.RunUntil([&] { return rig.writer->stats().batches == 2; }));
  EXPECT_EQ(Scalar("SELECT attempts FROM digestd.jobs WHERE id = " + std::to_string(jobs[0].id)),
            "1");
}

TEST_F(BatchWriterTest, ARowTheServerRefusesIsIsolatedAndTheOthersAreWritten) {
  TestLoop loop;
  Rig rig(loop, conninfo(), Opts(50, 60000));
  ASSERT_TRUE(rig.ok);
  std::vector<RowOutcome> outs(5);
  int answered = 0;
  for (int i = 0; i < 5; ++i) {
    std::string key = i == 2 ? std::string("bad\0key", 7) : "good" + std::to_string(i);
    ASSERT_TRUE(rig.writer
                    ->Enqueue(WriteRow::Submit(Job(key),
                                               [&, i](const RowOutcome& o) {
                                                 outs[static_cast<size_t>(i)] = o;
                                                 ++answered;
                                               }))
                    .ok());
  }
  ASSERT_TRUE(loop.RunUntil([&] { return answered == 5; }));
  for (int i = 0; i < 5; ++i) {
    if (i == 2) {
      EXPECT_EQ(outs[2].status.code(), Status::Code::kBadRequest) << outs[2].status.ToString();
    } else {
      EXPECT_TRUE(outs[static_cast<size_t>(i)].status.ok())
          << outs[static_cast<size_t>(i)].status.ToString();
    }
  }
  EXPECT_EQ(rig.writer->stats().rejected, 1u);
  EXPECT_EQ(Scalar("SELECT count(*) FROM digestd.jobs"), "4");
  EXPECT_FALSE(rig.writer->stats().last_error.empty());
}

// An input nested deeper than the server's stack allows (SQLSTATE 54001,
// here with max_stack_depth at its minimum so a modest depth, 1,500, reaches
// it; deep enough for the server, shallow enough for nlohmann::json's own
// recursive copies under AddressSanitizer):
// only that submit fails, with a message naming the input; the submits
// batched with it and after it are written, and the writer never retries
// the bad batch.
TEST_F(BatchWriterTest, AnInputTooDeepForTheServerFailsAloneAndNothingWaits) {
  TestLoop loop;
  Rig rig(loop, conninfo() + " options='-c max_stack_depth=100kB'", Opts(50, 60000));
  ASSERT_TRUE(rig.ok);
  nlohmann::json deep = nlohmann::json::array();
  for (int i = 0; i < 1500; ++i) deep = nlohmann::json::array({std::move(deep)});
  std::vector<RowOutcome> outs(6);
  int answered = 0;
  for (int i = 0; i < 6; ++i) {
    NewJob job = Job("job" + std::to_string(i));
    if (i == 2) job.input = std::make_shared<const nlohmann::json>(nlohmann::json{{"d", deep}});
    ASSERT_TRUE(rig.writer
                    ->Enqueue(WriteRow::Submit(std::move(job),
                                               [&, i](const RowOutcome& o) {
                                                 outs[static_cast<size_t>(i)] = o;
                                                 ++answered;
                                               }))
                    .ok());
  }
  ASSERT_TRUE(loop.RunUntil([&] { return answered == 6; }));
  for (int i = 0; i < 6; ++i) {
    const RowOutcome& o = outs[static_cast<size_t>(i)];
    if (i == 2) {
      EXPECT_EQ(o.status.code(), Status::Code::kBadRequest) << o.status.ToString();
      EXPECT_NE(o.status.message().find("input"), std::string::npos) << o.status.message();
      EXPECT_NE(o.status.message().find("54001"), std::string::npos) << o.status.message();
    } else {
      EXPECT_TRUE(o.status.ok()) << "job" << i << ": " << o.status.ToString();
    }
  }
  EXPECT_EQ(rig.writer->stats().rejected, 1u);
  EXPECT_EQ(Scalar("SELECT count(*) FROM digestd.jobs"), "5");
}

TEST_F(BatchWriterTest, AFullRingRefusesRowsAndSaysWhenThereIsRoom) {
  TestLoop loop;
  int space = 0;
  BatchWriter::Hooks hooks;
  hooks.on_space = [&] { ++space; };
  BatchWriterOptions o = Opts(50, 60000, 5);
  o.submit_reserve = 2;
  Rig rig(loop, conninfo(), o, std::move(hooks));
  ASSERT_TRUE(rig.ok);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(
        rig.writer
            ->Enqueue(WriteRow::Finish(FinishRow{1000u + i, 1, "x", JobState::kDone, nullptr, ""}))
            .ok());
  }
  // Submits may not take the 2 reserved slots...
  EXPECT_EQ(rig.writer->Enqueue(WriteRow::Submit(Job("s"), {})).code(), Status::Code::kQueueFull);
  // ...results may.
  ASSERT_TRUE(
      rig.writer->Enqueue(WriteRow::Finish(FinishRow{2000, 1, "y", JobState::kDone, nullptr, ""}))
          .ok());
  ASSERT_TRUE(
      rig.writer->Enqueue(WriteRow::Finish(FinishRow{2001, 1, "z", JobState::kDone, nullptr, ""}))
          .ok());
  EXPECT_EQ(
      rig.writer->Enqueue(WriteRow::Finish(FinishRow{2002, 1, "w", JobState::kDone, nullptr, ""}))
          .code(),
      Status::Code::kQueueFull);
  EXPECT_EQ(rig.writer->depth(), 5u);
  // A full ring (5 >= batch_rows? no: 50) is written after Drain.
  rig.writer->Drain([] {});
  ASSERT_TRUE(loop.RunUntil([&] { return space == 1 && rig.writer->depth() == 0; }));
  EXPECT_EQ(rig.writer->stats().ignored, 5u) << "no such jobs: every guard says no";
}

TEST(BatchWriterOutage, ServerStoppedMidRunLosesNothing) {
  std::string error;
  auto pg = PgServer::StartPrivate(&error);
  ASSERT_TRUE(pg) << error;
  TestLoop loop;
  Rig rig(loop, pg->Conninfo("digestd"), Opts(20, 50));
  ASSERT_TRUE(rig.ok);
  constexpr int kJobs = 200;
  auto jobs = rig.Claimed("o", kJobs);
  ASSERT_EQ(jobs.size(), static_cast<size_t>(kJobs));

  int accepted = 0, failed = 0;
  auto finish = [&](const StoredJob& j) {
    return rig.writer->Enqueue(WriteRow::Finish(DoneRow(j), [&](const RowOutcome& o) {
      if (o.status.ok() && o.accepted) {
        ++accepted;
      } else {
        ++failed;
      }
    }));
  };
  // Half written while the server is up.
  for (int i = 0; i < kJobs / 2; ++i) ASSERT_TRUE(finish(jobs[static_cast<size_t>(i)]).ok());
  ASSERT_TRUE(loop.RunUntil([&] { return accepted >= 40; }));

  // A submit in the ring when the server goes away: its client hears
  // unavailable, never ok.
  std::optional<RowOutcome> submit;
  ASSERT_TRUE(
      rig.writer->Enqueue(WriteRow::Submit(Job("during"), [&](const RowOutcome& o) { submit = o; }))
          .ok());
  ASSERT_TRUE(pg->Stop("fast").ok());
  ASSERT_TRUE(loop.RunUntil([&] { return !rig.conn->up(); }));
  ASSERT_TRUE(loop.RunUntil([&] { return submit.has_value(); }));
  EXPECT_EQ(submit->status.code(), Status::Code::kUnavailable) << submit->status.ToString();
  // New submits are refused while down; results keep coming into the ring.
  EXPECT_EQ(rig.writer->Enqueue(WriteRow::Submit(Job("refused"), {})).code(),
            Status::Code::kUnavailable);
  for (int i = kJobs / 2; i < kJobs; ++i) ASSERT_TRUE(finish(jobs[static_cast<size_t>(i)]).ok());
  // Let a reconnect attempt fail while they wait.
  int64_t planned = rig.conn->state().next_attempt_unix_ms;
  ASSERT_TRUE(loop.RunUntil([&] { return rig.conn->state().next_attempt_unix_ms > planned; }));
  // Every row not yet committed waits in the ring: the second half at least.
  EXPECT_EQ(rig.writer->depth(), static_cast<size_t>(kJobs - accepted)) << "rows wait in the ring";
  EXPECT_GE(rig.writer->depth(), static_cast<size_t>(kJobs / 2));
  EXPECT_FALSE(rig.writer->stats().last_error.empty());
  EXPECT_EQ(failed, 0);

  ASSERT_TRUE(pg->Start().ok());
  ASSERT_TRUE(loop.RunUntil([&] { return accepted == kJobs; }))
      << accepted << " accepted, " << failed << " failed, ignored " << rig.writer->stats().ignored
      << ", depth " << rig.writer->depth() << ", flushing " << rig.writer->flushing() << ", up "
      << rig.conn->up() << ", units " << rig.conn->units_in_flight() << ", last error "
      << rig.writer->stats().last_error;
  EXPECT_EQ(failed, 0);
  EXPECT_EQ(rig.writer->depth(), 0u);
  EXPECT_EQ(pg->Scalar("digestd",
                       "SELECT count(*) FROM digestd.jobs WHERE status = 'done' "
                       "AND result = '{\"v\": 1}'::jsonb"),
            std::to_string(kJobs));
  EXPECT_EQ(pg->Scalar("digestd", "SELECT count(*) FROM digestd.jobs WHERE key = 'refused'"), "0");
  // And submits work again.
  std::optional<RowOutcome> again;
  ASSERT_TRUE(
      rig.writer->Enqueue(WriteRow::Submit(Job("during"), [&](const RowOutcome& o) { again = o; }))
          .ok());
  ASSERT_TRUE(loop.RunUntil([&] { return again.has_value(); }));
  EXPECT_TRUE(again->status.ok()) << again->status.ToString();
  EXPECT_EQ(pg->Scalar("digestd", "SELECT count(*) FROM digestd.jobs WHERE key = 'during'"), "1");
}

}  // namespace
}  // namespace digestd
