// Job management against the real digestd, on both stores: the `jobs` list
// (filters, newest first, a cursor that stays stable while jobs arrive),
// `retry`, submit conflicts and "replace", `cancel` of a group and
// `delete`, and digestctl's commands for them.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "../support/daemon_harness.h"
#include "client/control_client.h"

namespace digestd {
namespace {

using nlohmann::json;
using testing::DaemonProcess;
using testing::WaitFor;

// One worker, so a long noop holds it and the jobs after it stay queued;
// summarize jobs fail at once (nothing listens at the backend's port, one
// attempt, no fallback).
constexpr const char* kConfig = R"(
[workers]
min = 1
max = 1
interactive_reserved = 0
[daemon]
node_id = "manage"
[backend]
url = "http://127.0.0.1:9"
max_attempts = 1
breaker_failures = 1000
[summarize]
fallback = "none"
)";

void ExpectError(const json& answer, const std::string& code, const std::string& mention = "") {
  ASSERT_TRUE(answer.is_object()) << answer.dump();
  EXPECT_EQ(answer.value("ok", true), false) << answer.dump();
  EXPECT_EQ(testing::ErrorCode(answer), code) << answer.dump();
  if (!mention.empty()) {
    EXPECT_NE(testing::ErrorMessage(answer).find(mention), std::string::npos) << answer.dump();
  }
}

std::vector<std::string> Keys(const json& page) {
  std::vector<std::string> keys;
  for (const auto& j : page.value("jobs", json::array())) keys.push_back(j.value("key", ""));
  return keys;
}

class ManageE2E : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override { ASSERT_TRUE(daemon_.Start({.store = GetParam(), .config = kConfig})); }
  void TearDown() override {
    if (daemon_.Pid() > 0) {
      EXPECT_TRUE(daemon_.Stop());
    }
  }

  json Call(const json& request) {
    auto answer = daemon_.Call(request);
    EXPECT_TRUE(answer.ok()) << request.dump() << ": " << answer.status().ToString();
    return answer.ok() ? answer.value() : json(nullptr);
  }
  // The job view of `key` once it has ended (waiting up to 10 s).
  json Finished(const std::string& key) {
    return daemon_.CallOk({{"op", "result"}, {"key", key}, {"wait_ms", 10000}}, 15000);
  }
  json Submit(const std::string& key, int sleep_ms, const std::string& group = "") {
    json req = {
        {"op", "submit"}, {"kind", "noop"}, {"key", key}, {"input", {{"sleep_ms", sleep_ms}}}};
    if (!group.empty()) req["group"] = group;
    return daemon_.CallOk(req);
  }
  // A noop that holds the one worker until it is cancelled.
  void StartBlocker(const std::string& key, const std::string& group = "") {
    Submit(key, 60000, group);
    ASSERT_TRUE(WaitFor([&] {
      json r = Call({{"op", "result"}, {"key", key}});
      return r.value("status", "") == "running";
    })) << "the blocker never started";
  }
  void StopBlocker(const std::string& key) {
    daemon_.CallOk({{"op", "cancel"}, {"key", key}});
    EXPECT_EQ(Finished(key).value("status", ""), "cancelled");
  }

  DaemonProcess daemon_;
};

INSTANTIATE_TEST_SUITE_P(Stores, ManageE2E, ::testing::ValuesIn(testing::kStores),
                         testing::StoreName);

TEST_P(ManageE2E, JobsListsNewestFirstAndPagesStablyWhileJobsArrive) {
  for (int i = 0; i < 7; ++i) Submit("p" + std::to_string(i), 0, "pages");
  daemon_.CallOk({{"op", "result"}, {"group", "pages"}, {"wait_ms", 10000}}, 15000);

  json first = daemon_.CallOk({{"op", "jobs"}, {"group", "pages"}, {"limit", 3}});
  EXPECT_EQ(Keys(first), (std::vector<std::string>{"p6", "p5", "p4"})) << first.dump();
  ASSERT_TRUE(first.contains("next")) << first.dump();
  EXPECT_EQ(first["jobs"][0].value("status", ""), "done");
  EXPECT_EQ(first["jobs"][0].value("group", ""), "pages");

  // Newer jobs arrive between pages: they sort before the cursor and shift
  // nothing after it.
  Submit("p7", 0, "pages");
  Submit("p8", 0, "pages");
  json second =
      daemon_.CallOk({{"op", "jobs"}, {"group", "pages"}, {"limit", 3}, {"cursor", first["next"]}});
  EXPECT_EQ(Keys(second), (std::vector<std::string>{"p3", "p2", "p1"})) << second.dump();
  ASSERT_TRUE(second.contains("next")) << second.dump();
  json last = daemon_.CallOk(
      {{"op", "jobs"}, {"group", "pages"}, {"limit", 3}, {"cursor", second["next"]}});
  EXPECT_EQ(Keys(last), (std::vector<std::string>{"p0"})) << last.dump();
  EXPECT_FALSE(last.contains("next")) << last.dump();

  json fresh = daemon_.CallOk({{"op", "jobs"}, {"group", "pages"}, {"limit", 2}});
  EXPECT_EQ(Keys(fresh), (std::vector<std::string>{"p8", "p7"})) << fresh.dump();
}

TEST_P(ManageE2E, JobsFiltersByStatusKindLanePrefixAndAge) {
  Submit("f/done", 0);
  daemon_.CallOk({{"op", "submit"},
                  {"kind", "summarize"},
                  {"key", "f/failed"},
                  {"input", {{"text", "One sentence. Two sentences."}}}});
  daemon_.CallOk({{"op", "submit"}, {"kind", "noop"}, {"key", "other"}, {"lane", "interactive"}});
  // Waited for without wait_ms: a waiting `result` would promote the
  // background jobs to the interactive lane.
  for (const char* key : {"f/done", "f/failed", "other"}) {
    ASSERT_TRUE(WaitFor([&] {
      std::string s = Call({{"op", "result"}, {"key", key}}).value("status", "");
      return s == "done" || s == "failed";
    })) << key;
  }

  auto keys = [&](json req) {
    req["op"] = "jobs";
    return Keys(daemon_.CallOk(req));
  };
  EXPECT_EQ(keys({{"status", "failed"}}), (std::vector<std::string>{"f/failed"}));
  EXPECT_EQ(keys({{"status", json::array({"failed", "done"})}, {"key_prefix", "f/"}}),
            (std::vector<std::string>{"f/failed", "f/done"}));
  EXPECT_EQ(keys({{"kind", "summarize"}}), (std::vector<std::string>{"f/failed"}));
  EXPECT_EQ(keys({{"lane", "interactive"}}), (std::vector<std::string>{"other"}));
  EXPECT_EQ(keys({{"lane", "background"}}), (std::vector<std::string>{"f/failed", "f/done"}));
  EXPECT_EQ(keys({{"key_prefix", "f/d"}}), (std::vector<std::string>{"f/done"}));
  // LIKE's wildcards are plain characters in a prefix.
  EXPECT_TRUE(keys({{"key_prefix", "f%"}}).empty());
  EXPECT_TRUE(keys({{"key_prefix", "f_"}}).empty());
  EXPECT_EQ(keys({{"max_age_s", 3600}}).size(), 3u);
  EXPECT_TRUE(keys({{"min_age_s", 3600}}).empty());

  ExpectError(Call({{"op", "jobs"}, {"limit", 501}}), "bad_request", "limit");
  ExpectError(Call({{"op", "jobs"}, {"status", "finished"}}), "bad_request", "status");
  ExpectError(Call({{"op", "jobs"}, {"cursor", "c1.x"}}), "bad_request", "cursor");
  ExpectError(Call({{"op", "jobs"}, {"lane", "fast"}}), "bad_request", "lane");
}

TEST_P(ManageE2E, RetryQueuesACancelledJobAgainAndKeepsItsError) {
  StartBlocker("blocker");
  Submit("c", 0);
  daemon_.CallOk({{"op", "cancel"}, {"key", "c"}});
  EXPECT_EQ(Finished("c").value("status", ""), "cancelled");

  json retried = daemon_.CallOk({{"op", "retry"}, {"key", "c"}});
  EXPECT_EQ(retried.value("retried", false), true) << retried.dump();
  json queued = daemon_.CallOk({{"op", "result"}, {"key", "c"}});
  EXPECT_EQ(queued.value("status", ""), "queued") << queued.dump();
  EXPECT_EQ(queued.value("attempts", -1), 0) << queued.dump();
  EXPECT_FALSE(queued.contains("error")) << queued.dump();
  EXPECT_NE(queued.value("last_error", "").find("cancelled"), std::string::npos) << queued.dump();
  ExpectError(Call({{"op", "retry"}, {"key", "c"}}), "bad_state", "queued");

  StopBlocker("blocker");
  json done = Finished("c");
  EXPECT_EQ(done.value("status", ""), "done") << done.dump();
  EXPECT_FALSE(done.contains("last_error")) << done.dump();
  ExpectError(Call({{"op", "retry"}, {"key", "c"}}), "bad_state", "replace");
  ExpectError(Call({{"op", "retry"}, {"key", "nope"}}), "not_found", "nope");
  ExpectError(Call({{"op", "retry"}}), "bad_request", "key");
}

TEST_P(ManageE2E, RetryRunsAFailedJobAgainWithAttemptsFromZero) {
  json sum = {{"op", "submit"}, {"kind", "summarize"}, {"input", {{"text", "A. B."}}}};
  for (const char* key : {"s1", "s2"}) {
    json req = sum;
    req["key"] = key;
    req["group"] = "sg";
    daemon_.CallOk(req);
  }
  Submit("s3", 0, "sg");
  daemon_.CallOk({{"op", "result"}, {"group", "sg"}, {"wait_ms", 10000}}, 15000);
  json failed = Finished("s1");
  ASSERT_EQ(failed.value("status", ""), "failed") << failed.dump();
  EXPECT_EQ(failed.value("attempts", 0), 1);

  daemon_.CallOk({{"op", "retry"}, {"key", "s1"}});
  json again = Finished("s1");
  EXPECT_EQ(again.value("status", ""), "failed") << again.dump();
  // One attempt of one: a second run only happened because attempts reset.
  EXPECT_EQ(again.value("attempts", 0), 1) << again.dump();
  EXPECT_FALSE(again.contains("last_error")) << again.dump();

  json group = daemon_.CallOk({{"op", "retry"}, {"group", "sg"}});
  EXPECT_EQ(group.value("retried", -1), 2) << group.dump();
  EXPECT_EQ(group.value("skipped", -1), 1) << group.dump();
  EXPECT_EQ(daemon_.Status()["jobs"].value("requeued", -1), 3);
  ExpectError(Call({{"op", "retry"}, {"group", "none"}}), "not_found");
}

TEST_P(ManageE2E, SubmitOfAKeyWithOtherInputIsAConflictUnlessItReplaces) {
  Submit("k", 0);
  EXPECT_EQ(Finished("k").value("status", ""), "done");
  json same = Submit("k", 0);
  EXPECT_EQ(same.value("existing", false), true) << same.dump();
  EXPECT_FALSE(same.contains("replaced")) << same.dump();

  json other = {{"op", "submit"}, {"kind", "noop"}, {"key", "k"}, {"input", {{"sleep_ms", 3}}}};
  ExpectError(Call(other), "conflict", "\"k\"");
  ExpectError(Call(other), "conflict", "replace");
  // Another kind with the same key conflicts too.
  ExpectError(
      Call({{"op", "submit"}, {"kind", "summarize"}, {"key", "k"}, {"input", {{"text", "A."}}}}),
      "conflict", "\"k\"");

  other["replace"] = true;
  json replaced = daemon_.CallOk(other);
  EXPECT_EQ(replaced.value("replaced", false), true) << replaced.dump();
  json done = Finished("k");
  EXPECT_EQ(done.value("status", ""), "done") << done.dump();
  EXPECT_EQ(done["result"].value("slept_ms", -1), 3) << done.dump();
  // The new input is now the job's: the same submit again is a duplicate.
  other.erase("replace");
  EXPECT_EQ(daemon_.CallOk(other).value("existing", false), true);

  // A batch checks each job.
  json batch = Call({{"op", "submit"},
                     {"jobs",
                      {{{"kind", "noop"}, {"key", "k"}, {"input", {{"sleep_ms", 4}}}},
                       {{"kind", "noop"}, {"key", "k2"}}}}});
  EXPECT_EQ(batch.value("ok", false), true) << batch.dump();
  EXPECT_EQ(batch.value("failed", 0), 1) << batch.dump();
  EXPECT_EQ(batch["jobs"][0]["error"].value("code", ""), "conflict") << batch.dump();
  EXPECT_EQ(batch["jobs"][1].value("existing", true), false) << batch.dump();
}

TEST_P(ManageE2E, ReplaceRunsAQueuedJobWithTheNewInputAndRefusesARunningOne) {
  StartBlocker("blocker");
  Submit("q", 0);
  ExpectError(Call({{"op", "submit"},
                    {"kind", "noop"},
                    {"key", "blocker"},
                    {"replace", true},
                    {"input", {{"sleep_ms", 1}}}}),
              "bad_state", "running");
  json replaced = daemon_.CallOk({{"op", "submit"},
                                  {"kind", "noop"},
                                  {"key", "q"},
                                  {"replace", true},
                                  {"input", {{"sleep_ms", 2}}}});
  EXPECT_EQ(replaced.value("replaced", false), true) << replaced.dump();
  StopBlocker("blocker");
  json done = Finished("q");
  EXPECT_EQ(done.value("status", ""), "done") << done.dump();
  EXPECT_EQ(done["result"].value("slept_ms", -1), 2) << done.dump();
}

TEST_P(ManageE2E, CancelWithAGroupCancelsItsQueuedAndRunningJobs) {
  StartBlocker("g/b", "cg");
  Submit("g/1", 0, "cg");
  Submit("g/2", 0, "cg");
  Submit("solo", 0);
  json answer = daemon_.CallOk({{"op", "cancel"}, {"group", "cg"}});
  EXPECT_EQ(answer.value("cancelled", -1), 3) << answer.dump();
  EXPECT_EQ(answer.value("running", -1), 1) << answer.dump();
  for (const char* key : {"g/b", "g/1", "g/2"}) {
    EXPECT_EQ(Finished(key).value("status", ""), "cancelled") << key;
  }
  EXPECT_EQ(Finished("solo").value("status", ""), "done");
  ExpectError(Call({{"op", "cancel"}, {"group", "none"}}), "not_found", "none");
  ExpectError(Call({{"op", "cancel"}, {"key", "a"}, {"group", "b"}}), "bad_request");
}

TEST_P(ManageE2E, DeleteRemovesFinishedJobsOnly) {
  Submit("d1", 0);
  Finished("d1");
  Submit("d3", 0, "dg");
  Finished("d3");
  StartBlocker("d2", "dg");

  json one = daemon_.CallOk({{"op", "delete"}, {"key", "d1"}});
  EXPECT_EQ(one.value("deleted", -1), 1) << one.dump();
  EXPECT_EQ(one.value("skipped", -1), 0) << one.dump();
  ExpectError(Call({{"op", "result"}, {"key", "d1"}}), "not_found");
  EXPECT_EQ(Keys(daemon_.CallOk({{"op", "jobs"}, {"key_prefix", "d1"}})).size(), 0u);

  json group = daemon_.CallOk({{"op", "delete"}, {"group", "dg"}});
  EXPECT_EQ(group.value("deleted", -1), 1) << group.dump();
  EXPECT_EQ(group.value("skipped", -1), 1) << group.dump();
  EXPECT_EQ(Keys(daemon_.CallOk({{"op", "jobs"}, {"group", "dg"}})),
            (std::vector<std::string>{"d2"}));
  ExpectError(Call({{"op", "delete"}, {"key", "nope"}}), "not_found", "nope");
  StopBlocker("d2");
}

TEST_P(ManageE2E, DigestctlListsRetriesAndDeletes) {
  Submit("cli/a", 0);
  Submit("cli/b", 0);
  Finished("cli/a");
  Finished("cli/b");
  auto ctl = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = {DIGESTCTL_BIN, "--socket", daemon_.SocketPath()};
    argv.insert(argv.end(), args.begin(), args.end());
    return testing::RunProcess(argv);
  };
  auto table = ctl({"jobs", "--prefix", "cli/"});
  ASSERT_TRUE(table.status && table.status->exited() && table.status->code() == 0) << table.err;
  EXPECT_NE(table.out.find("cli/a"), std::string::npos) << table.out;
  EXPECT_LT(table.out.find("cli/b"), table.out.find("cli/a")) << "newest first:\n" << table.out;

  auto raw = ctl({"--json", "jobs", "--limit", "1", "--prefix", "cli/"});
  json page = json::parse(raw.out, nullptr, false);
  ASSERT_TRUE(page.is_object()) << raw.out;
  EXPECT_EQ(Keys(page), (std::vector<std::string>{"cli/b"}));
  EXPECT_TRUE(page.contains("next")) << raw.out;

  auto all = ctl({"--json", "jobs", "--limit", "1", "--all", "--prefix", "cli/"});
  json every = json::parse(all.out, nullptr, false);
  ASSERT_TRUE(every.is_object()) << all.out;
  EXPECT_EQ(Keys(every), (std::vector<std::string>{"cli/b", "cli/a"})) << all.out;

  auto retry = ctl({"retry", "cli/a"});
  EXPECT_EQ(retry.status->code(), 1) << retry.out << retry.err;
  EXPECT_NE(retry.err.find("bad_state"), std::string::npos) << retry.err;

  auto del = ctl({"delete", "cli/a"});
  EXPECT_EQ(del.status->code(), 0) << del.err;
  ExpectError(Call({{"op", "result"}, {"key", "cli/a"}}), "not_found");

  auto none = ctl({"cancel", "--group", "no-such-group"});
  EXPECT_EQ(none.status->code(), 1) << none.out << none.err;
  EXPECT_NE(none.err.find("not_found"), std::string::npos) << none.err;
  auto usage = ctl({"retry"});
  EXPECT_EQ(usage.status->code(), 2) << usage.err;
  EXPECT_NE(usage.err.find("--group"), std::string::npos) << usage.err;
}

TEST_P(ManageE2E, RetryReplaceAndDeleteAreTold) {
  Submit("e1", 0);
  Finished("e1");
  Submit("e2", 0);
  Finished("e2");
  ControlClient events;
  ASSERT_TRUE(events.Connect(daemon_.SocketPath()).ok());
  auto sub = events.Call({{"op", "subscribe"}, {"prefix", "e"}});
  ASSERT_TRUE(sub.ok() && sub->value("ok", false)) << (sub.ok() ? sub->dump() : "");
  // The state of the next event about `key` (skipping others), "" if none came.
  auto next = [&](const std::string& key) {
    for (;;) {
      auto line = events.ReadLine(10000);
      if (!line.ok()) return std::string();
      json e = json::parse(*line, nullptr, false);
      if (e.value("key", "") == key) return e.value("state", "");
    }
  };
  daemon_.CallOk({{"op", "submit"},
                  {"kind", "noop"},
                  {"key", "e1"},
                  {"replace", true},
                  {"input", {{"sleep_ms", 1}}}});
  EXPECT_EQ(next("e1"), "queued");
  EXPECT_EQ(next("e1"), "started");
  EXPECT_EQ(next("e1"), "done");
  daemon_.CallOk({{"op", "delete"}, {"key", "e2"}});
  EXPECT_EQ(next("e2"), "deleted");
  StartBlocker("eb");
  Submit("e3", 0);
  daemon_.CallOk({{"op", "cancel"}, {"key", "e3"}});
  Finished("e3");
  daemon_.CallOk({{"op", "retry"}, {"key", "e3"}});
  EXPECT_EQ(next("e3"), "queued");  // the submit
  EXPECT_EQ(next("e3"), "cancelled");
  EXPECT_EQ(next("e3"), "queued");  // the retry
  StopBlocker("eb");
  EXPECT_EQ(next("e3"), "started");
}

}  // namespace
}  // namespace digestd
