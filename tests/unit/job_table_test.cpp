#include "jobs/job_table.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace digestd {
namespace {

JobPtr Add(JobTable& table, const std::string& key, const std::string& group = "") {
  return table.Create(key, group, "noop", Lane::kBackground, nlohmann::json::object());
}

void Finish(JobTable& table, const JobPtr& job) {
  table.MarkRunning(job);
  table.MarkFinished(job, WorkOutcome::Done({{"slept_ms", 0}}));
}

TEST(JobTable, CreateAndFind) {
  JobTable table(10);
  JobPtr job = Add(table, "k1", "g");
  ASSERT_NE(job, nullptr);
  EXPECT_EQ(table.Find("k1"), job);
  EXPECT_EQ(job->state, JobState::kQueued);
  EXPECT_EQ(table.Find("nope"), nullptr);
  ASSERT_EQ(table.FindGroup("g").size(), 1u);
  EXPECT_TRUE(table.FindGroup("other").empty());
  EXPECT_EQ(table.counters().submitted, 1u);
}

TEST(JobTable, CountersFollowEachTerminalState) {
  JobTable table(10);
  JobPtr a = Add(table, "a");
  JobPtr b = Add(table, "b");
  JobPtr c = Add(table, "c");
  JobPtr d = Add(table, "d");
  table.MarkRunning(a);
  table.MarkRunning(b);
  EXPECT_EQ(table.counters().running, 2u);
  table.MarkFinished(a, WorkOutcome::Done({{"x", 1}}));
  table.MarkFinished(b, WorkOutcome::Failed("broke"));
  table.MarkRunning(c);
  table.MarkFinished(c, WorkOutcome::Cancelled("stopped"));
  table.MarkCancelled(d, "never ran");
  const auto& n = table.counters();
  EXPECT_EQ(n.submitted, 4u);
  EXPECT_EQ(n.running, 0u);
  EXPECT_EQ(n.done, 1u);
  EXPECT_EQ(n.failed, 1u);
  EXPECT_EQ(n.cancelled, 2u);
  EXPECT_EQ(a->state, JobState::kDone);
  EXPECT_EQ(a->result["x"], 1);
  EXPECT_EQ(b->state, JobState::kFailed);
  EXPECT_EQ(b->error, "broke");
  EXPECT_EQ(c->state, JobState::kCancelled);
  EXPECT_EQ(d->state, JobState::kCancelled);
  // Latency samples come from jobs that ran; d was cancelled in its queue.
  EXPECT_EQ(table.latency().Compute().count, 3u);
  EXPECT_EQ(table.run_time().Compute().count, 3u);
}

TEST(JobTable, ForgetUndoesCreate) {
  JobTable table(10);
  JobPtr job = Add(table, "k", "g");
  table.Forget(job);
  EXPECT_EQ(table.Find("k"), nullptr);
  EXPECT_TRUE(table.FindGroup("g").empty());
  EXPECT_EQ(table.counters().submitted, 0u);
  EXPECT_EQ(table.size(), 0u);
}

TEST(JobTable, RetentionEvictsTheOldestFinishedJobs) {
  JobTable table(2);
  JobPtr a = Add(table, "a");
  JobPtr b = Add(table, "b");
  JobPtr c = Add(table, "c");
  Finish(table, a);
  Finish(table, b);
  EXPECT_NE(table.Find("a"), nullptr);
  EXPECT_NE(table.Find("b"), nullptr);
  Finish(table, c);
  EXPECT_EQ(table.Find("a"), nullptr) << "the oldest finished job should be evicted";
  EXPECT_NE(table.Find("b"), nullptr);
  EXPECT_NE(table.Find("c"), nullptr);
  EXPECT_EQ(table.size(), 2u);
  // Counters are totals; eviction does not change them.
  EXPECT_EQ(table.counters().done, 3u);
}

TEST(JobTable, RetentionNeverEvictsUnfinishedJobs) {
  JobTable table(0);
  JobPtr queued = Add(table, "queued");
  JobPtr running = Add(table, "running");
  table.MarkRunning(running);
  JobPtr done = Add(table, "done");
  Finish(table, done);
  EXPECT_NE(table.Find("queued"), nullptr);
  EXPECT_NE(table.Find("running"), nullptr);
  EXPECT_EQ(table.Find("done"), nullptr);
}

TEST(JobTable, LoweringRetentionEvictsAtOnce) {
  JobTable table(10);
  for (int i = 0; i < 5; ++i) Finish(table, Add(table, "k" + std::to_string(i)));
  EXPECT_EQ(table.size(), 5u);
  table.SetRetention(2);
  EXPECT_EQ(table.size(), 2u);
  EXPECT_EQ(table.Find("k2"), nullptr);
  EXPECT_NE(table.Find("k3"), nullptr);
  EXPECT_NE(table.Find("k4"), nullptr);
}

TEST(JobTable, EvictionRemovesJobsFromTheirGroup) {
  JobTable table(1);
  JobPtr a = Add(table, "a", "g");
  JobPtr b = Add(table, "b", "g");
  Finish(table, a);
  Finish(table, b);
  ASSERT_EQ(table.FindGroup("g").size(), 1u);
  EXPECT_EQ(table.FindGroup("g")[0], b);
}

TEST(JobTable, JobWaiterFiresOnceWhenTheJobIsTerminal) {
  JobTable table(10);
  JobPtr job = Add(table, "k");
  int fired = 0;
  table.WaitJob("k", [&] { ++fired; });
  table.MarkRunning(job);
  EXPECT_EQ(fired, 0);
  table.MarkFinished(job, WorkOutcome::Done(nullptr));
  EXPECT_EQ(fired, 1);
  Finish(table, Add(table, "k2"));
  EXPECT_EQ(fired, 1);
}

TEST(JobTable, GroupWaiterFiresOnlyWhenEveryPartIsTerminal) {
  JobTable table(10);
  JobPtr a = Add(table, "a", "g");
  JobPtr b = Add(table, "b", "g");
  JobPtr c = Add(table, "c", "g");
  JobPtr other = Add(table, "x", "other");
  int fired = 0;
  table.WaitGroup("g", [&] { ++fired; });
  Finish(table, a);
  EXPECT_EQ(fired, 0);
  table.MarkRunning(b);
  table.MarkFinished(b, WorkOutcome::Failed("no"));
  EXPECT_EQ(fired, 0);
  Finish(table, other);  // another group finishing changes nothing
  EXPECT_EQ(fired, 0);
  table.MarkCancelled(c, "cancelled");
  EXPECT_EQ(fired, 1);
}

TEST(JobTable, RemovedWaiterNeverFires) {
  JobTable table(10);
  JobPtr job = Add(table, "k");
  int removed_fired = 0;
  int kept_fired = 0;
  uint64_t token = table.WaitJob("k", [&] { ++removed_fired; });
  table.WaitJob("k", [&] { ++kept_fired; });
  table.RemoveWaiter(token);
  table.RemoveWaiter(token);      // twice is harmless
  table.RemoveWaiter(123456789);  // so is an unknown token
  Finish(table, job);
  EXPECT_EQ(removed_fired, 0);
  EXPECT_EQ(kept_fired, 1);
}

TEST(JobTable, RemovedGroupWaiterNeverFires) {
  JobTable table(10);
  JobPtr a = Add(table, "a", "g");
  int fired = 0;
  uint64_t token = table.WaitGroup("g", [&] { ++fired; });
  table.RemoveWaiter(token);
  Finish(table, a);
  EXPECT_EQ(fired, 0);
}

TEST(JobTable, NewKeysAreUnique) {
  JobTable table(10);
  std::string k1 = table.NewKey("node");
  Add(table, k1);
  std::string k2 = table.NewKey("node");
  EXPECT_NE(k1, k2);
  EXPECT_NE(k1.find("node"), std::string::npos);
}

TEST(JobTable, RequeueResetsAttemptsKeepsTheErrorAndLeavesRetention) {
  JobTable table(1);
  std::vector<std::string> seen;
  table.SetObserver([&](std::string_view state, const JobRecord&) { seen.emplace_back(state); });
  JobPtr job = Add(table, "r");
  table.MarkRunning(job);
  table.MarkFinished(job, WorkOutcome::Failed("the backend said no"));
  auto old_flag = job->cancel;
  table.Requeue(job, Lane::kInteractive, "noop",
                std::make_shared<const nlohmann::json>(nlohmann::json{{"sleep_ms", 5}}));
  EXPECT_EQ(job->state, JobState::kQueued);
  EXPECT_EQ(job->attempts, 0);
  EXPECT_EQ(job->lane, Lane::kInteractive);
  EXPECT_TRUE(job->error.empty());
  EXPECT_EQ(job->last_error, "the backend said no");
  EXPECT_NE(job->cancel, old_flag);
  EXPECT_EQ(job->input_hash, InputHash("noop", nlohmann::json{{"sleep_ms", 5}}));
  EXPECT_EQ(seen.back(), "queued");
  // No longer finished: a later finished job does not evict it.
  Finish(table, Add(table, "other"));
  Finish(table, Add(table, "third"));
  EXPECT_EQ(table.Find("r"), job);
  // It ends again: the earlier error is gone.
  Finish(table, job);
  EXPECT_TRUE(job->last_error.empty());
}

TEST(JobTable, RemoveForgetsAFinishedJobAndTellsTheObserver) {
  JobTable table(10);
  std::string last;
  table.SetObserver([&](std::string_view state, const JobRecord&) { last = state; });
  JobPtr job = Add(table, "gone", "g");
  Finish(table, job);
  table.Remove(job);
  EXPECT_EQ(table.Find("gone"), nullptr);
  EXPECT_TRUE(table.FindGroup("g").empty());
  EXPECT_EQ(last, "deleted");
}

TEST(InputHash, FollowsKindAndInputNotMemberOrder) {
  nlohmann::json a = nlohmann::json::parse(R"({"b":1,"a":"x"})");
  nlohmann::json b = nlohmann::json::parse(R"({"a":"x","b":1})");
  EXPECT_EQ(InputHash("noop", a), InputHash("noop", b));
  EXPECT_NE(InputHash("noop", a), InputHash("summarize", a));
  EXPECT_NE(InputHash("noop", a), InputHash("noop", nlohmann::json{{"a", "x"}, {"b", 2}}));
  // Stable across builds: the PostgreSQL store keeps it.
  EXPECT_EQ(InputHash("noop", nlohmann::json::object()), 0x3b4f28e67090d13bull)
      << std::hex << InputHash("noop", nlohmann::json::object());
}

}  // namespace
}  // namespace digestd
