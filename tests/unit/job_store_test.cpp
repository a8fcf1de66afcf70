// JobStore against a real PostgreSQL: insert and duplicate keys, concurrent
// claims, the lease guard, attempts, crash recovery, retention, lookups.
#include "store/job_store.h"
#include "util/clock.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "../support/pg_fixture.h"
#include "../support/pg_session.h"

namespace digestd {
namespace {

using testing::Await;
using testing::ConnectAndMigrate;
using testing::TestLoop;

NewJob Job(std::string key, Lane lane = Lane::kBackground, int max_attempts = 3,
           std::string group = "") {
  NewJob j;
  j.key = std::move(key);
  j.group = std::move(group);
  j.kind = "noop";
  j.lane = lane;
  j.input = std::make_shared<const nlohmann::json>(nlohmann::json{{"sleep_ms", 1}});
  j.max_attempts = max_attempts;
  return j;
}

class JobStoreTest : public testing::PgTest {
 protected:
  void SetUp() override {
    PgTest::SetUp();
    if (HasFatalFailure()) return;
    conn_ = std::make_unique<PgConn>(loop_.get(), PgConnOptions{conninfo()});
    ASSERT_TRUE(ConnectAndMigrate(loop_, *conn_));
    Scalar("TRUNCATE digestd.jobs");
    store_ = std::make_unique<JobStore>(*conn_, "node-a");
  }
  void TearDown() override {
    for (auto& c : extra_) c->Close();
    if (conn_) conn_->Close();
  }

  // Another connection, as another daemon would have.
  PgConn& ExtraConn() {
    extra_.push_back(std::make_unique<PgConn>(loop_.get(), PgConnOptions{conninfo()}));
    extra_.back()->Start();
    EXPECT_TRUE(loop_.RunUntil([&] { return extra_.back()->up(); }));
    return *extra_.back();
  }

  std::vector<InsertedJob> Insert(std::vector<NewJob> jobs) {
    auto r = Await<Result<std::vector<InsertedJob>>>(
        loop_, [&](auto cb) { return store_->InsertJobs(std::move(jobs), cb); });
    EXPECT_TRUE(r && r->ok()) << (r ? r->status().ToString() : "");
    return r && r->ok() ? r->value() : std::vector<InsertedJob>{};
  }
  std::vector<StoredJob> Claim(JobStore& s, Lane lane, int n, int lease_s = 60) {
    auto r = Await<Result<std::vector<StoredJob>>>(
        loop_, [&](auto cb) { return s.Claim(lane, n, lease_s, cb); });
    EXPECT_TRUE(r && r->ok()) << (r ? r->status().ToString() : "");
    return r && r->ok() ? r->value() : std::vector<StoredJob>{};
  }
  std::vector<bool> Finish(JobStore& s, std::vector<FinishRow> rows) {
    auto r = Await<Result<std::vector<bool>>>(
        loop_, [&](auto cb) { return s.Finish(std::move(rows), cb); });
    EXPECT_TRUE(r && r->ok()) << (r ? r->status().ToString() : "");
    return r && r->ok() ? r->value() : std::vector<bool>{};
  }
  RecoverCounts Recover(JobStore& s, bool startup) {
    auto r =
        Await<Result<RecoverCounts>>(loop_, [&](auto cb) { return s.RecoverExpired(startup, cb); });
    EXPECT_TRUE(r && r->ok()) << (r ? r->status().ToString() : "");
    return r && r->ok() ? r->value() : RecoverCounts{};
  }
  std::optional<StoredJob> Lookup(const std::string& key) {
    auto r = Await<Result<std::optional<StoredJob>>>(
        loop_, [&](auto cb) { return store_->Lookup(key, cb); });
    EXPECT_TRUE(r && r->ok());
    return r && r->ok() ? r->value() : std::nullopt;
  }
  // Makes every running lease look expired.
  // Records that `j` started (the start mark), which spends its attempt.
  void MarkStarted(JobStore& s, const StoredJob& j) {
    auto r = Await<Result<std::vector<uint64_t>>>(loop_, [&](auto cb) {
      return s.RenewLeases({LeaseRef{j.id, j.lease_token, UnixMillis()}}, 60, cb);
    });
    ASSERT_TRUE(r && r->ok());
    EXPECT_TRUE(r->value().empty()) << "the start mark found the lease lost";
  }

  void ExpireLeases() {
    Scalar(
        "UPDATE digestd.jobs SET lease_until = now() - interval '1 second' "
        "WHERE status = 'running'");
  }

  TestLoop loop_;  // first: destroyed last, after every handle is closed
  std::unique_ptr<PgConn> conn_;
  std::vector<std::unique_ptr<PgConn>> extra_;
  std::unique_ptr<JobStore> store_;
};

FinishRow Done(const StoredJob& j, nlohmann::json result) {
  return FinishRow{j.id, j.lease_token, j.key, JobState::kDone, std::move(result), ""};
}

TEST_F(JobStoreTest, InsertCreatesAndADuplicateKeyReturnsTheExistingJob) {
  auto first = Insert({Job("a"), Job("b", Lane::kInteractive)});
  ASSERT_EQ(first.size(), 2u);
  EXPECT_TRUE(first[0].created);
  EXPECT_TRUE(first[1].created);
  EXPECT_NE(first[0].id, first[1].id);
  // Claim "a" so the existing job's status is visible in the answer.
  auto claimed = Claim(*store_, Lane::kBackground, 1);
  ASSERT_EQ(claimed.size(), 1u);

  auto again = Insert({Job("a"), Job("c")});
  ASSERT_EQ(again.size(), 2u);
  EXPECT_FALSE(again[0].created);
  EXPECT_EQ(again[0].id, first[0].id);
  EXPECT_EQ(again[0].status, JobState::kRunning);
  EXPECT_TRUE(again[1].created);
  EXPECT_EQ(Scalar("SELECT count(*) FROM digestd.jobs"), "3");
}

// The insert answers for every key in one statement: a key that another
// transaction inserted and committed while this insert waited on it is
// found as it was committed (not lost between the insert and a lookup).
TEST_F(JobStoreTest, AKeyCommittedByAnotherSubmitWhileTheInsertWaitedIsFound) {
  testing::PgSession other(conninfo());
  ASSERT_TRUE(other.status().ok()) << other.status().ToString();
  ASSERT_TRUE(other
                  .Exec("BEGIN; INSERT INTO digestd.jobs (key, kind, input_hash) "
                        "VALUES ('raced', 'noop', 7)")
                  .ok());
  std::thread commit([&other] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    (void)other.Exec("COMMIT");
  });
  NewJob mine = Job("raced");
  mine.input_hash = 7;
  auto r = Insert({mine, Job("fresh")});
  commit.join();
  ASSERT_EQ(r.size(), 2u);
  EXPECT_FALSE(r[0].created);
  EXPECT_NE(r[0].id, 0u) << "the row the other submit committed is found";
  EXPECT_FALSE(r[0].conflict);
  EXPECT_EQ(r[0].status, JobState::kQueued);
  EXPECT_TRUE(r[1].created);
  EXPECT_EQ(Scalar("SELECT count(*) FROM digestd.jobs WHERE key = 'raced'"), "1");
}

TEST_F(JobStoreTest, SameKeyTwiceInOneInsertCreatesItOnce) {
  auto r = Insert({Job("twice"), Job("twice"), Job("other")});
  ASSERT_EQ(r.size(), 3u);
  EXPECT_TRUE(r[0].created);
  EXPECT_FALSE(r[1].created);
  EXPECT_EQ(r[0].id, r[1].id);
  EXPECT_TRUE(r[2].created);
  EXPECT_EQ(Scalar("SELECT count(*) FROM digestd.jobs WHERE key = 'twice'"), "1");
}

TEST_F(JobStoreTest, ConcurrentClaimersNeverGetTheSameJob) {
  constexpr int kJobs = 300;
  std::vector<NewJob> jobs;
  for (int i = 0; i < kJobs; ++i) jobs.push_back(Job("j" + std::to_string(i)));
  ASSERT_EQ(Insert(std::move(jobs)).size(), static_cast<size_t>(kJobs));

  // Three daemons, each with two claims in flight at once, until none is left.
  std::vector<std::unique_ptr<JobStore>> stores;
  for (int i = 0; i < 3; ++i) {
    stores.push_back(std::make_unique<JobStore>(ExtraConn(), "node-" + std::to_string(i)));
  }
  // Each session claims from the empty interactive lane first, so its
  // statement is prepared and its backend warm before the race: a fresh
  // backend's slow first statement must not decide who gets jobs.
  for (auto& s : stores) EXPECT_TRUE(Claim(*s, Lane::kInteractive, 1).empty());
  std::vector<StoredJob> all;
  int active = 0;
  std::function<void(JobStore*)> claim = [&](JobStore* s) {
    ++active;
    Status st = s->Claim(Lane::kBackground, 7, 60, [&, s](Result<std::vector<StoredJob>> r) {
      --active;
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      if (r->empty()) return;
      for (auto& j : *r) all.push_back(std::move(j));
      claim(s);
    });
    ASSERT_TRUE(st.ok());
  };
  for (auto& s : stores) {
    claim(s.get());
    claim(s.get());
  }
  ASSERT_TRUE(loop_.RunUntil([&] { return active == 0; }));
  ASSERT_EQ(all.size(), static_cast<size_t>(kJobs));
  std::set<uint64_t> ids;
  std::set<int64_t> tokens;
  std::set<std::string> owners;
  for (const auto& j : all) {
    ids.insert(j.id);
    tokens.insert(j.lease_token);
    owners.insert(j.lease_owner);
    EXPECT_EQ(j.state, JobState::kRunning);
    EXPECT_EQ(j.attempts, 0) << "a claim spends no attempt; a start does";
  }
  EXPECT_EQ(ids.size(), static_cast<size_t>(kJobs)) << "a job was claimed twice";
  EXPECT_EQ(tokens.size(), static_cast<size_t>(kJobs)) << "lease tokens must be unique";
  EXPECT_EQ(owners.size(), 3u) << "every daemon should have claimed some";
  EXPECT_EQ(Scalar("SELECT count(*) FROM digestd.jobs WHERE status = 'running'"),
            std::to_string(kJobs));
}

TEST_F(JobStoreTest, ClaimTakesOneLaneOldestFirstAndOnlyDueJobs) {
  Insert({Job("bg1"), Job("int1", Lane::kInteractive), Job("bg2"), Job("int2", Lane::kInteractive),
          Job("later", Lane::kInteractive)});
  Scalar("UPDATE digestd.jobs SET run_after = now() + interval '1 hour' WHERE key = 'later'");
  auto got = Claim(*store_, Lane::kInteractive, 10);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].key, "int1");
  EXPECT_EQ(got[1].key, "int2");
  EXPECT_EQ(got[0].lease_owner, "node-a");
  EXPECT_EQ(got[0].input, (nlohmann::json{{"sleep_ms", 1}}));
  EXPECT_EQ(got[0].lane, Lane::kInteractive);
  EXPECT_EQ(got[0].started_at_ms, 0) << "claimed, not started";
  auto bg = Claim(*store_, Lane::kBackground, 1);
  ASSERT_EQ(bg.size(), 1u);
  EXPECT_EQ(bg[0].key, "bg1");
  EXPECT_TRUE(Claim(*store_, Lane::kInteractive, 10).empty());
}

TEST_F(JobStoreTest, LeaseGuardIgnoresAStaleTokensLateResult) {
  Insert({Job("slow")});
  auto first = Claim(*store_, Lane::kBackground, 1);
  ASSERT_EQ(first.size(), 1u);
  // The worker hangs; its lease expires; the job is rescued and claimed again.
  ExpireLeases();
  EXPECT_EQ(Recover(*store_, false).requeued, 1u);
  JobStore other(ExtraConn(), "node-b");
  auto second = Claim(other, Lane::kBackground, 1);
  ASSERT_EQ(second.size(), 1u);
  EXPECT_NE(second[0].lease_token, first[0].lease_token);
  EXPECT_EQ(second[0].attempts, 0) << "the lost claim never started";
  EXPECT_EQ(second[0].lost_unstarted, 1);

  // The hung worker's late result is ignored...
  EXPECT_EQ(Finish(*store_, {Done(first[0], {{"by", "stale"}})}), std::vector<bool>{false});
  // ...also from the rescuer's node with the old token...
  EXPECT_EQ(Finish(other, {Done(first[0], {{"by", "stale"}})}), std::vector<bool>{false});
  // ...and the rescuer's result is stored, idempotently.
  EXPECT_EQ(Finish(other, {Done(second[0], {{"by", "rescuer"}})}), std::vector<bool>{true});
  std::string finished = Scalar("SELECT finished_at::text FROM digestd.jobs WHERE key = 'slow'");
  EXPECT_EQ(Finish(other, {Done(second[0], {{"by", "rescuer"}})}), std::vector<bool>{true})
      << "a repeat of a committed finish is accepted and changes nothing";
  EXPECT_EQ(Scalar("SELECT finished_at::text FROM digestd.jobs WHERE key = 'slow'"), finished);
  auto row = Lookup("slow");
  ASSERT_TRUE(row);
  EXPECT_EQ(row->state, JobState::kDone);
  EXPECT_EQ(row->result, (nlohmann::json{{"by", "rescuer"}}));
  // Late stale result after the finish: still ignored.
  EXPECT_EQ(Finish(*store_, {Done(first[0], {{"by", "stale"}})}), std::vector<bool>{false});
}

TEST_F(JobStoreTest, CrashedWorkersSpendAttemptsUntilTheJobFails) {
  Insert({Job("poison", Lane::kBackground, 2)});
  // Attempt 1 starts, then the daemon dies (its lease expires).
  auto first = Claim(*store_, Lane::kBackground, 1);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].attempts, 0);
  MarkStarted(*store_, first[0]);
  EXPECT_EQ(Lookup("poison")->attempts, 1);
  MarkStarted(*store_, first[0]);
  EXPECT_EQ(Lookup("poison")->attempts, 1) << "a repeated start mark counts once";
  ExpireLeases();
  RecoverCounts c1 = Recover(*store_, false);
  EXPECT_EQ(c1.requeued, 1u);
  EXPECT_TRUE(c1.failed_keys.empty());
  // Attempt 2 starts; the restarted daemon reclaims its own at startup.
  auto second = Claim(*store_, Lane::kBackground, 1);
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].attempts, 1);
  EXPECT_EQ(second[0].lost_unstarted, 0);
  MarkStarted(*store_, second[0]);
  RecoverCounts c2 = Recover(*store_, true);
  EXPECT_EQ(c2.requeued, 0u);
  ASSERT_EQ(c2.failed_keys, std::vector<std::string>{"poison"});
  auto row = Lookup("poison");
  ASSERT_TRUE(row);
  EXPECT_EQ(row->state, JobState::kFailed);
  EXPECT_EQ(row->attempts, 2);
  EXPECT_NE(row->error.find("worker crashed"), std::string::npos) << row->error;
  EXPECT_NE(row->error.find("attempt 2 of 2"), std::string::npos) << row->error;
  EXPECT_GT(row->finished_at_ms, 0);
  EXPECT_TRUE(Claim(*store_, Lane::kBackground, 1).empty());
}

// kill -9 of a node with a full ring: claims that never started spend no
// attempt however often it happens, and count in lost_unstarted instead.
TEST_F(JobStoreTest, ClaimsLostBeforeTheyStartedNeverFailTheJob) {
  Insert({Job("waiting", Lane::kBackground, 2)});
  for (int crash = 1; crash <= 5; ++crash) {
    auto got = Claim(*store_, Lane::kBackground, 1);
    ASSERT_EQ(got.size(), 1u) << "crash " << crash;
    RecoverCounts c = Recover(*store_, /*startup=*/true);
    EXPECT_EQ(c.requeued, 1u);
    EXPECT_TRUE(c.failed_keys.empty()) << "crash " << crash << " failed a job that never ran";
  }
  auto row = Lookup("waiting");
  ASSERT_TRUE(row);
  EXPECT_EQ(row->state, JobState::kQueued);
  EXPECT_EQ(row->attempts, 0);
  EXPECT_EQ(row->lost_unstarted, 5);
  // When it runs and finishes, the finish row counts the attempt it started.
  auto got = Claim(*store_, Lane::kBackground, 1);
  ASSERT_EQ(got.size(), 1u);
  FinishRow done = Done(got[0], {{"ok", true}});
  done.started_ms = UnixMillis();
  EXPECT_EQ(Finish(*store_, {done}), std::vector<bool>{true});
  EXPECT_EQ(Lookup("waiting")->attempts, 1);
  EXPECT_GT(Lookup("waiting")->started_at_ms, 0);
}

// A finish row carries when the job ended, so the row's run time is the
// job's own and not how long the result waited for the writer's commit.
TEST_F(JobStoreTest, FinishRecordsWhenTheJobEndedNotWhenItWasCommitted) {
  Insert({Job("timed")});
  auto got = Claim(*store_, Lane::kBackground, 1);
  ASSERT_EQ(got.size(), 1u);
  FinishRow done = Done(got[0], {{"ok", true}});
  int64_t now = UnixMillis();
  done.started_ms = now - 60000;   // ran for 1.5 s, a minute ago
  done.finished_ms = now - 58500;  // and its result waited since
  EXPECT_EQ(Finish(*store_, {done}), std::vector<bool>{true});
  auto row = Lookup("timed");
  ASSERT_TRUE(row);
  EXPECT_EQ(row->finished_at_ms - row->started_at_ms, 1500);
}

// A busy answer (429/503) spends no attempt, even when its start was
// recorded, and its count travels with the job through the table, so the
// next node's backoff keeps growing.
TEST_F(JobStoreTest, BusyRequeuesKeepTheirCountAndSpendNoAttempt) {
  Insert({Job("busy")});
  auto got = Claim(*store_, Lane::kBackground, 1);
  ASSERT_EQ(got.size(), 1u);
  MarkStarted(*store_, got[0]);
  EXPECT_EQ(Lookup("busy")->attempts, 1);
  auto req = Await<Result<std::vector<bool>>>(loop_, [&](auto cb) {
    return store_->Requeue(
        {RequeueRow{got[0].id, got[0].lease_token, 0, true, "HTTP 503", UnixMillis(), 3}}, cb);
  });
  ASSERT_TRUE(req && req->ok());
  auto again = Claim(*store_, Lane::kBackground, 1);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].attempts, 0) << "a busy answer spent an attempt";
  EXPECT_EQ(again[0].busy_retries, 3);
}

TEST_F(JobStoreTest, StartupRecoveryTakesBackOnlyThisNodesJobs) {
  Insert({Job("a1"), Job("a2"), Job("b1")});
  JobStore b(ExtraConn(), "node-b");
  ASSERT_EQ(Claim(*store_, Lane::kBackground, 2).size(), 2u);
  ASSERT_EQ(Claim(b, Lane::kBackground, 1).size(), 1u);
  EXPECT_EQ(Recover(*store_, false).requeued, 0u) << "no lease has expired";
  EXPECT_EQ(Recover(*store_, true).requeued, 2u);
  EXPECT_EQ(Scalar("SELECT string_agg(key || ':' || status, ',' ORDER BY key) FROM digestd.jobs"),
            "a1:queued,a2:queued,b1:running");
  EXPECT_EQ(Scalar("SELECT count(*) FROM digestd.jobs WHERE lease_owner IS NOT NULL AND "
                   "status = 'queued'"),
            "0");
}

TEST_F(JobStoreTest, ReleaseUnheldRequeuesOnlyClaimsThisNodeDoesNotHold) {
  Insert({Job("u1"), Job("u2"), Job("u3")});
  JobStore other(ExtraConn(), "node-b");
  auto mine = Claim(*store_, Lane::kBackground, 2);
  ASSERT_EQ(mine.size(), 2u);
  ASSERT_EQ(Claim(other, Lane::kBackground, 1).size(), 1u);
  // This node kept only the first claim; the second's answer was "lost".
  auto r = Await<Result<uint64_t>>(
      loop_, [&](auto cb) { return store_->ReleaseUnheld({mine[0].lease_token}, cb); });
  ASSERT_TRUE(r && r->ok()) << (r ? r->status().ToString() : "");
  EXPECT_EQ(r->value(), 1u);
  auto held = Lookup(mine[0].key);
  auto lost = Lookup(mine[1].key);
  EXPECT_EQ(held->state, JobState::kRunning);
  EXPECT_EQ(lost->state, JobState::kQueued);
  EXPECT_EQ(lost->attempts, 0) << "a claim that never reached the node spent no attempt";
  EXPECT_EQ(Scalar("SELECT count(*) FROM digestd.jobs WHERE lease_owner = 'node-b' AND "
                   "status = 'running'"),
            "1")
      << "another node's claim was touched";
  // Holding nothing releases everything this node has running.
  auto all = Await<Result<uint64_t>>(loop_, [&](auto cb) { return store_->ReleaseUnheld({}, cb); });
  ASSERT_TRUE(all && all->ok());
  EXPECT_EQ(all->value(), 1u);
}

TEST_F(JobStoreTest, ReleaseGivesTheAttemptBackAndRequeueDelays) {
  Insert({Job("r1"), Job("r2")});
  auto got = Claim(*store_, Lane::kBackground, 2);
  ASSERT_EQ(got.size(), 2u);
  auto rel = Await<Result<std::vector<bool>>>(loop_, [&](auto cb) {
    return store_->Release({LeaseRef{got[0].id, got[0].lease_token}}, cb);
  });
  ASSERT_TRUE(rel && rel->ok());
  EXPECT_EQ(rel->value(), std::vector<bool>{true});
  auto req = Await<Result<std::vector<bool>>>(loop_, [&](auto cb) {
    return store_->Requeue(
        {RequeueRow{got[1].id, got[1].lease_token, 3600000, false, "HTTP 500", UnixMillis(), 0}},
        cb);
  });
  ASSERT_TRUE(req && req->ok());
  EXPECT_EQ(req->value(), std::vector<bool>{true});
  auto r1 = Lookup(got[0].key);
  auto r2 = Lookup(got[1].key);
  EXPECT_EQ(r1->state, JobState::kQueued);
  EXPECT_EQ(r1->attempts, 0) << "a released job did not spend its attempt";
  EXPECT_EQ(r2->state, JobState::kQueued);
  EXPECT_EQ(r2->attempts, 1) << "a retried job spent its attempt";
  EXPECT_EQ(r2->error, "HTTP 500");
  EXPECT_TRUE(r1->lease_owner.empty());
  // Only the released one is due now.
  auto again = Claim(*store_, Lane::kBackground, 5);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].key, got[0].key);
  // A stale release is ignored.
  auto stale = Await<Result<std::vector<bool>>>(loop_, [&](auto cb) {
    return store_->Release({LeaseRef{got[0].id, got[0].lease_token}}, cb);
  });
  EXPECT_EQ(stale->value(), std::vector<bool>{false});
}

TEST_F(JobStoreTest, RenewExtendsLeasesAndReportsTheLostOnes) {
  Insert({Job("keep"), Job("lose")});
  auto got = Claim(*store_, Lane::kBackground, 2, 5);
  ASSERT_EQ(got.size(), 2u);
  Scalar(
      "UPDATE digestd.jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL "
      "WHERE key = 'lose'");
  auto r = Await<Result<std::vector<uint64_t>>>(loop_, [&](auto cb) {
    return store_->RenewLeases(
        {LeaseRef{got[0].id, got[0].lease_token}, LeaseRef{got[1].id, got[1].lease_token}}, 600,
        cb);
  });
  ASSERT_TRUE(r && r->ok());
  uint64_t lose_id = got[0].key == "lose" ? got[0].id : got[1].id;
  EXPECT_EQ(r->value(), std::vector<uint64_t>{lose_id});
  EXPECT_EQ(Scalar("SELECT lease_until > now() + interval '500 seconds' FROM digestd.jobs "
                   "WHERE key = 'keep'"),
            "t");
}

TEST_F(JobStoreTest, RetentionDeletesOnlyOldFinishedJobsInBatches) {
  std::vector<NewJob> jobs;
  for (int i = 0; i < 7; ++i) jobs.push_back(Job("old" + std::to_string(i)));
  jobs.push_back(Job("fresh"));
  jobs.push_back(Job("waiting"));
  Insert(std::move(jobs));
  Scalar(
      "UPDATE digestd.jobs SET status = 'done', finished_at = now() - interval '2 hours' "
      "WHERE key LIKE 'old%'");
  Scalar("UPDATE digestd.jobs SET status = 'failed', finished_at = now() WHERE key = 'fresh'");
  Scalar("UPDATE digestd.jobs SET created_at = now() - interval '3 hours' WHERE key = 'waiting'");
  std::vector<uint64_t> deleted;
  for (;;) {
    auto r = Await<Result<uint64_t>>(
        loop_, [&](auto cb) { return store_->DeleteFinishedOlderThan(3600, 3, cb); });
    ASSERT_TRUE(r && r->ok());
    deleted.push_back(r->value());
    if (r->value() < 3) break;
  }
  EXPECT_EQ(deleted, (std::vector<uint64_t>{3, 3, 1}));
  EXPECT_EQ(Scalar("SELECT string_agg(key, ',' ORDER BY key) FROM digestd.jobs"), "fresh,waiting");
}

TEST_F(JobStoreTest, LookupsBacklogAndCancel) {
  Insert({Job("g1", Lane::kBackground, 3, "grp"), Job("g2", Lane::kInteractive, 3, "grp"),
          Job("solo"), Job("delayed")});
  Scalar("UPDATE digestd.jobs SET run_after = now() + interval '1 hour' WHERE key = 'delayed'");
  auto claimed = Claim(*store_, Lane::kInteractive, 1);
  ASSERT_EQ(claimed.size(), 1u);
  ASSERT_EQ(Finish(*store_, {Done(claimed[0], {{"v", 1}})}), std::vector<bool>{true});

  auto group = Await<Result<std::vector<StoredJob>>>(
      loop_, [&](auto cb) { return store_->LookupGroup("grp", cb); });
  ASSERT_TRUE(group && group->ok());
  ASSERT_EQ(group->value().size(), 2u);
  EXPECT_EQ(group->value()[0].key, "g1");
  EXPECT_EQ(group->value()[1].state, JobState::kDone);
  EXPECT_EQ(group->value()[1].result, (nlohmann::json{{"v", 1}}));
  EXPECT_EQ(group->value()[1].group, "grp");
  EXPECT_FALSE(Lookup("nope").has_value());

  auto backlog = Await<Result<Backlog>>(loop_, [&](auto cb) { return store_->BacklogCounts(cb); });
  ASSERT_TRUE(backlog && backlog->ok());
  EXPECT_EQ(backlog->value().queued[1], 2);  // g1, solo
  EXPECT_EQ(backlog->value().delayed[1], 1);
  EXPECT_EQ(backlog->value().queued[0], 0);
  EXPECT_EQ(backlog->value().running[0], 0);

  auto cancel = Await<Result<std::optional<StoredJob>>>(
      loop_, [&](auto cb) { return store_->CancelQueued("solo", "cancelled by request", cb); });
  ASSERT_TRUE(cancel && cancel->ok());
  ASSERT_TRUE(cancel->value().has_value());
  EXPECT_EQ(cancel->value()->key, "solo");
  EXPECT_EQ(cancel->value()->kind, "noop");
  EXPECT_EQ(cancel->value()->state, JobState::kCancelled);
  auto twice = Await<Result<std::optional<StoredJob>>>(
      loop_, [&](auto cb) { return store_->CancelQueued("solo", "cancelled by request", cb); });
  ASSERT_TRUE(twice && twice->ok());
  EXPECT_FALSE(twice->value().has_value());
  EXPECT_EQ(Lookup("solo")->state, JobState::kCancelled);
}

// The backlog line is counted every few seconds: through the partial
// indexes of queued and running jobs, never by reading the finished rows
// that retention keeps (a sequential scan costs a core at a million rows).
TEST_F(JobStoreTest, BacklogCountsReadOnlyThePartialIndexes) {
  Insert({Job("q1"), Job("q2", Lane::kInteractive)});
  ASSERT_EQ(Claim(*store_, Lane::kInteractive, 1).size(), 1u);
  Scalar(
      "INSERT INTO digestd.jobs (key, kind, status, finished_at) "
      "SELECT 'old:' || i, 'noop', 'done', now() FROM generate_series(1, 20000) i");
  Scalar("ANALYZE digestd.jobs");
  auto plan = server()->Exec(db(), std::string("EXPLAIN ") + JobStore::BacklogSql());
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  std::string text;
  for (const auto& row : *plan) text += row.at(0) + "\n";
  EXPECT_EQ(text.find("Seq Scan"), std::string::npos) << text;
  EXPECT_NE(text.find("jobs_claim"), std::string::npos) << text;
  EXPECT_NE(text.find("jobs_lease"), std::string::npos) << text;
  auto backlog = Await<Result<Backlog>>(loop_, [&](auto cb) { return store_->BacklogCounts(cb); });
  ASSERT_TRUE(backlog && backlog->ok());
  EXPECT_EQ(backlog->value().queued[1], 1);
  EXPECT_EQ(backlog->value().running[0], 1);
}

// Jobs with "after" wait with run_after = infinity; a release after their
// dependency is done makes them due with its result, and reads only the
// waiting rows (the partial index), however many finished rows the groups
// have.
TEST_F(JobStoreTest, ReleaseAfterReadsOnlyTheWaitingRowsAndGivesTheirResults) {
  NewJob dep = Job("g7:dep");
  dep.group = "g7";
  NewJob waits = Job("g7:waits");
  waits.group = "g7";
  waits.after = {"g7:dep"};
  Insert({dep, waits});
  Scalar(
      "INSERT INTO digestd.jobs (key, group_key, kind, status, finished_at) "
      "SELECT 'old:' || i, 'g' || (i % 100), 'noop', 'done', now() "
      "FROM generate_series(1, 20000) i");
  Scalar("ANALYZE digestd.jobs");
  auto plan = server()->Exec(db(), std::string("PREPARE r(text[]) AS ") +
                                       JobStore::ReleaseAfterSql() + "; EXPLAIN EXECUTE r('{g7}')");
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  std::string text;
  for (const auto& row : *plan) text += row.at(0) + "\n";
  EXPECT_NE(text.find("jobs_waiting_after"), std::string::npos) << text;
  EXPECT_EQ(text.find("Seq Scan on jobs d"), std::string::npos) << text;

  auto release = [&] {
    auto r = Await<Result<std::vector<StoredJob>>>(
        loop_, [&](auto cb) { return store_->ReleaseAfter({"g7"}, cb); });
    EXPECT_TRUE(r && r->ok());
    return r && r->ok() ? r->value() : std::vector<StoredJob>{};
  };
  // Waiting: no claim takes it, and a release changes nothing yet.
  EXPECT_TRUE(release().empty());
  auto got = Claim(*store_, Lane::kBackground, 10);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].key, "g7:dep");
  FinishRow row = Done(got[0], {{"v", 1}});
  row.state = JobState::kDone;
  EXPECT_EQ(Finish(*store_, {row}), std::vector<bool>{true});
  auto released = release();
  ASSERT_EQ(released.size(), 1u);
  EXPECT_EQ(released[0].key, "g7:waits");
  EXPECT_EQ(released[0].state, JobState::kQueued);
  EXPECT_TRUE(release().empty());  // once
  auto next = Claim(*store_, Lane::kBackground, 10);
  ASSERT_EQ(next.size(), 1u);
  EXPECT_EQ(next[0].input["after_results"]["g7:dep"]["v"], 1) << next[0].input.dump();
}

TEST_F(JobStoreTest, ResultsWithNulCharactersAreStored) {
  Insert({Job("nul")});
  auto got = Claim(*store_, Lane::kBackground, 1);
  ASSERT_EQ(got.size(), 1u);
  nlohmann::json result = {{"text", std::string("a\0b", 3)}, {std::string("k\0", 2), "v"}};
  FinishRow row = Done(got[0], result);
  row.state = JobState::kDone;
  EXPECT_EQ(Finish(*store_, {row}), std::vector<bool>{true});
  auto stored = Lookup("nul");
  ASSERT_TRUE(stored);
  EXPECT_EQ(stored->result["text"],
            "a\xEF\xBF\xBD"
            "b");
}

TEST_F(JobStoreTest, AKeyInsertedAgainWithAnotherInputHashIsAConflict) {
  NewJob a = Job("h");
  a.input_hash = 11;
  EXPECT_TRUE(Insert({a})[0].created);
  auto same = Insert({a});
  EXPECT_FALSE(same[0].created);
  EXPECT_FALSE(same[0].conflict);
  NewJob b = a;
  b.input_hash = 12;
  EXPECT_TRUE(Insert({b})[0].conflict);
  // A row from before input hashes never conflicts.
  Scalar("UPDATE digestd.jobs SET input_hash = NULL WHERE key = 'h'");
  EXPECT_FALSE(Insert({b})[0].conflict);
}

// A `jobs` page reads the table through its primary key, backwards from the
// cursor, and stops at the limit: no sort of all rows, no sequential scan.
TEST_F(JobStoreTest, ListJobsPagesThroughThePrimaryKey) {
  Scalar(
      "INSERT INTO digestd.jobs (key, kind, status, finished_at, created_at) "
      "SELECT 'old:' || i, 'noop', 'done', now(), now() - i * interval '1 second' "
      "FROM generate_series(20000, 1, -1) i");
  Scalar("ANALYZE digestd.jobs");
  // The plan of a query, its parameters written in as literals.
  auto explain = [&](const JobsQuery& q) {
    PgStatement stmt = JobStore::ListJobsStatement(q);
    std::string sql = stmt.sql;
    for (size_t i = stmt.params.size(); i > 0; --i) {
      std::string name = "$" + std::to_string(i), value = "'" + *stmt.params[i - 1] + "'";
      for (size_t at = sql.find(name); at != std::string::npos; at = sql.find(name, at)) {
        sql.replace(at, name.size(), value);
      }
    }
    auto plan = server()->Exec(db(), "EXPLAIN " + sql);
    EXPECT_TRUE(plan.ok()) << plan.status().ToString() << "\n" << sql;
    std::string text;
    if (plan.ok()) {
      for (const auto& row : *plan) text += row.at(0) + "\n";
    }
    return text;
  };
  JobsQuery q;
  q.states = {JobState::kFailed, JobState::kDone};
  q.key_prefix = "old:1";
  q.limit = 3;
  q.after = JobsCursor{15000};
  std::string text = explain(q);
  EXPECT_NE(text.find("jobs_pkey"), std::string::npos) << text;
  EXPECT_EQ(text.find("Seq Scan"), std::string::npos) << text;
  EXPECT_EQ(text.find("Sort"), std::string::npos) << text;

  // Failed jobs among many done ones: read from their own index.
  JobsQuery failed;
  failed.states = {JobState::kFailed};
  text = explain(failed);
  EXPECT_NE(text.find("jobs_failed"), std::string::npos) << text;
  EXPECT_EQ(text.find("Sort"), std::string::npos) << text;

  // The pages themselves: newest first.
  JobsQuery page;
  page.key_prefix = "old:";
  page.limit = 2;
  std::vector<std::string> keys;
  for (int n = 0; n < 3; ++n) {
    auto r = Await<Result<std::vector<StoredJob>>>(
        loop_, [&](auto cb) { return store_->ListJobs(page, cb); });
    ASSERT_TRUE(r && r->ok()) << (r ? r->status().ToString() : "");
    ASSERT_EQ(r->value().size(), 3u);  // a page and one more
    for (size_t i = 0; i < 2; ++i) keys.push_back(r->value()[i].key);
    page.after = JobsCursor{r->value()[1].id};
  }
  EXPECT_EQ(keys, (std::vector<std::string>{"old:1", "old:2", "old:3", "old:4", "old:5", "old:6"}));
}

}  // namespace
}  // namespace digestd
