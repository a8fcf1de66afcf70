#include "app/job_view.h"

#include <gtest/gtest.h>

namespace digestd {
namespace {

using nlohmann::json;

json Parse(const std::string& line) {
  return json::parse(line);
}

TEST(JobView, BothStoresRenderTheSameFieldsForTheSameJob) {
  JobRecord rec;
  rec.key = "k";
  rec.group = "g";
  rec.kind = "noop";
  rec.state = JobState::kDone;
  rec.attempts = 1;
  rec.submitted_at = 1'000'000'000;
  rec.started_at = 1'250'000'000;
  rec.finished_at = 1'750'000'000;
  rec.submitted_unix_ms = 5000;
  rec.result = {{"slept_ms", 0}};
  StoredJob row;
  row.key = "k";
  row.group = "g";
  row.kind = "noop";
  row.state = JobState::kDone;
  row.attempts = 1;
  row.max_attempts = 3;
  row.created_at_ms = 5000;
  row.started_at_ms = 5250;
  row.finished_at_ms = 5750;
  row.result = {{"slept_ms", 0}};
  rec.busy_retries = 2;
  row.busy_retries = 2;
  json mem = JobJson(ViewOf(rec, 2'000'000'000, 3));
  json pg = JobJson(ViewOf(row, 9000));
  EXPECT_EQ(mem, pg);
  // Busy retries are reported by both stores.
  EXPECT_EQ(pg["busy_retries"], 2);
  EXPECT_EQ(pg["queued_ms"], 250.0);
  EXPECT_EQ(pg["run_ms"], 500.0);
  EXPECT_EQ(pg["max_attempts"], 3);
}

TEST(JobView, AClaimedJobNotStartedYetReadsAsQueuedWithoutRunTime) {
  // A job in this node's ring (claimed, lease held) that the breaker holds.
  StoredJob row;
  row.key = "k";
  row.kind = "summarize";
  row.state = JobState::kRunning;
  row.lease_owner = "node-a";
  row.created_at_ms = 5000;
  json held = JobJson(ViewOf(row, 12810));
  EXPECT_EQ(held["status"], "queued") << held.dump();
  EXPECT_EQ(held["queued_ms"], 7810.0);
  EXPECT_FALSE(held.contains("run_ms")) << held.dump();
  // Once its start is recorded it runs.
  row.started_at_ms = 12000;
  row.attempts = 1;
  json running = JobJson(ViewOf(row, 12810));
  EXPECT_EQ(running["status"], "running") << running.dump();
  EXPECT_EQ(running["run_ms"], 810.0);
  EXPECT_EQ(running["node"], "node-a");
}

TEST(JobView, AJobWaitingForARetryHasNoRunTimeInEitherStore) {
  // Its first attempt ran from 1.25 s to 1.5 s; it has been queued since.
  JobRecord rec;
  rec.key = "k";
  rec.kind = "generate";
  rec.state = JobState::kQueued;
  rec.attempts = 1;
  rec.submitted_at = 1'000'000'000;
  rec.started_at = 1'250'000'000;
  json mem = JobJson(ViewOf(rec, 9'000'000'000, 3));
  EXPECT_EQ(mem["status"], "queued") << mem.dump();
  EXPECT_FALSE(mem.contains("run_ms")) << mem.dump();
  EXPECT_EQ(mem["queued_ms"], 8000.0);
  StoredJob row;
  row.key = "k";
  row.kind = "generate";
  row.state = JobState::kQueued;
  row.attempts = 1;
  row.created_at_ms = 1000;
  row.started_at_ms = 1250;
  json pg = JobJson(ViewOf(row, 9000));
  EXPECT_FALSE(pg.contains("run_ms")) << pg.dump();
  EXPECT_EQ(pg["queued_ms"], 8000.0);
}

TEST(JobView, GroupStatusFollowsItsParts) {
  auto part = [](JobState s) {
    JobView v;
    v.state = s;
    return v;
  };
  using S = JobState;
  EXPECT_STREQ(GroupStatusName({part(S::kQueued), part(S::kQueued)}), "pending");
  EXPECT_STREQ(GroupStatusName({part(S::kDone), part(S::kRunning)}), "in_progress");
  EXPECT_STREQ(GroupStatusName({part(S::kDone), part(S::kDone)}), "completed");
  EXPECT_STREQ(GroupStatusName({part(S::kFailed), part(S::kCancelled)}), "failed");
  EXPECT_STREQ(GroupStatusName({part(S::kDone), part(S::kFailed)}), "partial");
  json g = GroupJson("g", {part(S::kDone), part(S::kFailed)});
  EXPECT_EQ(g["total"], 2);
  EXPECT_EQ(g["ready"], 1);
}

TEST(BatchAnswer, EveryJobAcceptedIsOk) {
  json a = Parse(BatchAnswerLine(7, {SubmitAnswerJson("a", JobState::kQueued, false)}, {Status()}));
  EXPECT_EQ(a["ok"], true);
  EXPECT_EQ(a["id"], 7);
  EXPECT_EQ(a["accepted"], 1);
  EXPECT_EQ(a["failed"], 0);
}

TEST(BatchAnswer, SomeAcceptedIsOkWithTheFailuresCounted) {
  json a = Parse(BatchAnswerLine(nullptr,
                                 {SubmitAnswerJson("a", JobState::kQueued, false), {{"key", "b"}}},
                                 {Status(), Status::QueueFull("the background lane is full")}));
  EXPECT_EQ(a["ok"], true);
  EXPECT_EQ(a["accepted"], 1);
  EXPECT_EQ(a["failed"], 1);
  EXPECT_EQ(a["jobs"][1]["key"], "b");
  EXPECT_EQ(a["jobs"][1]["error"]["code"], "queue_full");
}

TEST(BatchAnswer, NoneAcceptedIsAnErrorWithTheirSharedCodeAndEveryJob) {
  json a = Parse(
      BatchAnswerLine("x", {{{"key", "a"}}, {{"key", "b"}}},
                      {Status::QueueFull("lane full (a)"), Status::QueueFull("lane full (b)")}));
  EXPECT_EQ(a["ok"], false);
  EXPECT_EQ(a["id"], "x");
  EXPECT_EQ(a["error"]["code"], "queue_full");
  std::string message = a["error"]["message"];
  EXPECT_NE(message.find("none of the 2 jobs was accepted"), std::string::npos) << message;
  EXPECT_NE(message.find("lane full (a)"), std::string::npos) << message;
  EXPECT_EQ(a["accepted"], 0);
  EXPECT_EQ(a["failed"], 2);
  ASSERT_EQ(a["jobs"].size(), 2u);
  EXPECT_EQ(a["jobs"][1]["error"]["message"], "lane full (b)");
}

TEST(BatchAnswer, NoneAcceptedForDifferentReasonsIsInternalAndSaysSo) {
  json a = Parse(BatchAnswerLine(nullptr, {{{"key", "a"}}, {{"key", "b"}}},
                                 {Status::QueueFull("full"), Status::Unavailable("db down")}));
  EXPECT_EQ(a["ok"], false);
  EXPECT_EQ(a["error"]["code"], "internal");
  EXPECT_NE(a["error"]["message"].get<std::string>().find("other reasons"), std::string::npos);
}

}  // namespace
}  // namespace digestd
