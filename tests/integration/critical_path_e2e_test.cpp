// The user's critical path end to end: the real digestd (PostgreSQL store
// unless a test says otherwise) against the fake Ollama as a separate
// process, whose capacity digestd is not told. What is checked:
//   * each backend model's limit is learned (1, 2 and 4 slots, separately);
//   * a flood of 503 answers cuts the limit;
//   * an interactive job preempts exactly one background request, which is
//     requeued without spending an attempt and finishes later;
//   * [workers] max_preemptions stops a job from being preempted for ever;
//   * a `result` wait promotes a queued background job, which runs next;
//   * an interactive finish is answered without waiting for [writer] batch_ms;
//   * `submit` with wait_ms answers with the finished job, or with its state
//     when the time is up;
//   * two daemons on one database share a burst submitted to one of them.
//
// No sleeps to wait for a state: every wait polls with a generous deadline
// or uses `result` with wait_ms. Nothing here asserts a duration: the
// figures belong to tests/bench/critical_path_bench.
#include <algorithm>
#include <chrono>
#include <map>
#include <string>
#include <vector>

#include "../support/daemon_harness.h"
#include "client/control_client.h"
#include "fake_process.h"

namespace digestd {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using testing::DaemonProcess;
using testing::FakeOllamaProcess;
using testing::TempDir;
using testing::WaitFor;
using Clock = std::chrono::steady_clock;

constexpr milliseconds kLongDeadline{60000};

using Sections = std::map<std::string, std::map<std::string, std::string>>;

std::string Quoted(const std::string& s) {
  return json(s).dump();
}

// What a user changes least: the shipped [backend] parallel ("auto") and
// [workers] preempt, short backoffs, deadlines far above any request.
Sections BaseConfig(const std::string& url) {
  return {
      {"workers", {{"min", "1"}, {"max", "8"}, {"interactive_reserved", "1"}}},
      {"daemon", {{"node_id", Quoted("critical-e2e")}, {"shutdown_grace_s", "5"}}},
      {"log", {{"level", Quoted("info")}}},
      {"backend",
       {{"url", Quoted(url)},
        {"first_byte_timeout_s", "30"},
        {"idle_timeout_s", "30"},
        {"request_timeout_s", "120"},
        {"max_attempts", "3"},
        {"backoff_base_ms", "20"},
        {"backoff_max_ms", "200"},
        {"breaker_failures", "1000"},
        {"breaker_open_s", "1"}}},
  };
}

std::string Toml(const Sections& sections) {
  std::string out;
  for (const auto& [section, keys] : sections) {
    out += "[" + section + "]\n";
    for (const auto& [key, value] : keys) out += key + " = " + value + "\n";
    out += "\n";
  }
  return out;
}

bool IsTerminal(const json& job) {
  const std::string s = job.value("status", "");
  return s == "done" || s == "failed" || s == "cancelled";
}

// A generate job of `model` whose answer takes `tokens` streamed tokens.
json Generate(const std::string& key, const std::string& model, int tokens,
              const std::string& lane = "background") {
  return {
      {"kind", "generate"},
      {"key", key},
      {"lane", lane},
      {"input",
       {{"prompt", "prompt of " + key}, {"model", model}, {"options", {{"num_predict", tokens}}}}}};
}

// The status block of one model, or an empty object.
json ModelStatus(const json& status, const std::string& model) {
  for (const auto& m : status.value("models", json::array())) {
    if (m.value("model", "") == model) return m;
  }
  return json::object();
}

// The fake's figures for one model (it names them canonically, "m1:latest").
json FakeModel(const json& stats, const std::string& model) {
  json models = stats.value("models", json::object());
  for (const std::string& name : {model, model + ":latest"}) {
    if (models.contains(name)) return models[name];
  }
  return json::object();
}

class CriticalPathE2E : public ::testing::TestWithParam<const char*> {
 protected:
  void TearDown() override {
    for (auto* d : {&daemon_, &daemon2_}) {
      if (d->Running()) {
        EXPECT_TRUE(d->Stop());
      }
    }
  }

  // The jobs' options.num_predict sets each answer's length.
  ::testing::AssertionResult StartFake(FakeOllamaProcess& fake, const TempDir& dir, json settings) {
    settings["tokens"] = 1000;
    std::string failed = fake.Start(FAKE_OLLAMA_BIN, dir.path());
    if (failed.empty()) failed = fake.Set(settings);
    if (failed.empty()) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << failed;
  }

  ::testing::AssertionResult StartDaemon(DaemonProcess& d, const Sections& config,
                                         const std::string& store) {
    return d.Start({.store = store, .config = Toml(config)});
  }

  json CallOk(const DaemonProcess& d, const json& request, int timeout_ms = 10000) {
    json answer = d.CallOk(request, timeout_ms);
    return answer.is_object() ? answer : json::object();
  }

  void Submit(const DaemonProcess& d, const json& spec) {
    json req = spec;
    req["op"] = "submit";
    json answer = CallOk(d, req);
    EXPECT_EQ(answer.value("existing", true), false) << answer.dump();
  }

  void SubmitBatch(const DaemonProcess& d, const std::vector<json>& specs) {
    json answer = CallOk(d, {{"op", "submit"}, {"jobs", specs}}, 30000);
    EXPECT_EQ(answer.value("accepted", 0), static_cast<int>(specs.size())) << answer.dump();
  }

  // Without wait_ms: a look that promotes nothing.
  json Peek(const DaemonProcess& d, const std::string& key) {
    return CallOk(d, {{"op", "result"}, {"key", key}});
  }

  json AwaitTerminal(const DaemonProcess& d, const std::string& key,
                     milliseconds deadline = kLongDeadline) {
    const auto end = Clock::now() + deadline;
    json job;
    for (;;) {
      auto left = std::chrono::duration_cast<milliseconds>(end - Clock::now()).count();
      int64_t wait = std::clamp<int64_t>(left, 0, 5000);
      job = CallOk(d, {{"op", "result"}, {"key", key}, {"wait_ms", wait}}, 15000);
      if (IsTerminal(job) || left <= 0 || !job.value("ok", false)) break;
    }
    EXPECT_TRUE(IsTerminal(job)) << "job " << key << " not finished in time: " << job.dump();
    return job;
  }

  // Polls (without waiting on the jobs, so nothing is promoted) until
  // every key is terminal.
  void AwaitAll(const DaemonProcess& d, const std::vector<std::string>& keys,
                milliseconds deadline = kLongDeadline) {
    bool all = WaitFor(
        [&] {
          for (const auto& k : keys) {
            if (!IsTerminal(Peek(d, k))) return false;
          }
          return true;
        },
        deadline, milliseconds(100));
    EXPECT_TRUE(all) << "not every job finished in time";
  }

  TempDir fake_dir_, fake2_dir_;
  FakeOllamaProcess fake_, fake2_;
  DaemonProcess daemon_, daemon2_;
};

class CriticalPathPg : public CriticalPathE2E {};

// ---------------------------------------------------------------------------
// Learning the capacity.

TEST_F(CriticalPathPg, CapacityIsLearnedForEachModelSeparately) {
  const std::map<std::string, int> capacity = {{"m1", 1}, {"m2", 2}, {"m4", 4}};
  ASSERT_TRUE(StartFake(fake_, fake_dir_,
                        {{"models", {"m1", "m2", "m4", "nomic-embed-text"}},
                         {"parallel_by_model", {{"m1", 1}, {"m2", 2}, {"m4", 4}}},
                         {"latency_ms", 60},
                         {"token_ms", 20}}));
  ASSERT_TRUE(StartDaemon(daemon_, BaseConfig(fake_.url()), "postgres"));
  std::vector<json> specs;
  std::vector<std::string> keys;
  for (int i = 0; i < 70; ++i) {
    for (const auto& [model, c] : capacity) {
      std::string key = model + "/" + std::to_string(i);
      specs.push_back(Generate(key, model, 4));
      keys.push_back(key);
    }
  }
  SubmitBatch(daemon_, specs);
  // Watch the limits while the backlog runs: they settle at each model's
  // capacity and never go past one probe above it.
  std::map<std::string, int> highest, settled_at;
  bool done = WaitFor(
      [&] {
        json s = daemon_.Status();
        for (const auto& [model, c] : capacity) {
          int limit = ModelStatus(s, model).value("limit", 0);
          highest[model] = std::max(highest[model], limit);
          if (limit == c) ++settled_at[model];
        }
        return s["jobs"].value("done", 0) >= static_cast<int>(keys.size());
      },
      kLongDeadline * 2, milliseconds(50));
  ASSERT_TRUE(done) << daemon_.Status().dump();
  json s = daemon_.Status();
  json stats = fake_.Stats();
  for (const auto& [model, c] : capacity) {
    SCOPED_TRACE(model);
    json m = ModelStatus(s, model);
    EXPECT_EQ(m.value("mode", ""), "auto") << m.dump();
    EXPECT_GT(settled_at[model], 0) << "the limit never reached the capacity " << c;
    EXPECT_LE(highest[model], c + 1) << m.dump();
    EXPECT_GE(m.value("limit", 0), c) << m.dump();
    EXPECT_LE(m.value("limit", 0), c + 1) << m.dump();
    EXPECT_LE(FakeModel(stats, model).value("max_in_flight_observed", 99), c + 1);
  }
}

TEST_F(CriticalPathPg, BusyAnswersCutTheLimit) {
  ASSERT_TRUE(StartFake(fake_, fake_dir_, {{"parallel", 4}, {"latency_ms", 60}, {"token_ms", 20}}));
  ASSERT_TRUE(StartDaemon(daemon_, BaseConfig(fake_.url()), "postgres"));
  std::vector<json> specs;
  for (int i = 0; i < 200; ++i) specs.push_back(Generate("b" + std::to_string(i), "llama3.2", 4));
  SubmitBatch(daemon_, specs);
  ASSERT_TRUE(
      WaitFor([&] { return ModelStatus(daemon_.Status(), "llama3.2").value("limit", 0) >= 4; },
              kLongDeadline, milliseconds(50)))
      << daemon_.Status().dump();
  json busy = {{"status", 503}, {"body", "{\"error\":\"server busy, please try again\"}"}};
  ASSERT_EQ(fake_.Set({{"fail_next", json::array({busy, busy, busy, busy, busy, busy})}}), "");
  ASSERT_TRUE(WaitFor(
      [&] {
        json m = ModelStatus(daemon_.Status(), "llama3.2");
        return m.value("limit", 99) <= 2 && m.value("reason", "").find("busy") != std::string::npos;
      },
      kLongDeadline, milliseconds(20)))
      << daemon_.Status().dump();
}

// ---------------------------------------------------------------------------
// Preemption, on both stores.

TEST_P(CriticalPathE2E, InteractiveJobPreemptsExactlyOneBackgroundRequest) {
  // One slot; background answers take 40 tokens x 100 ms.
  ASSERT_TRUE(StartFake(fake_, fake_dir_, {{"parallel", 1}, {"token_ms", 100}}));
  ASSERT_TRUE(StartDaemon(daemon_, BaseConfig(fake_.url()), GetParam()));
  Submit(daemon_, Generate("bg1", "llama3.2", 40));
  Submit(daemon_, Generate("bg2", "llama3.2", 40));
  ASSERT_TRUE(WaitFor([&] { return fake_.Stats().value("in_flight", 0) == 1; }, kLongDeadline));
  Submit(daemon_, Generate("fg", "llama3.2", 2, "interactive"));
  json fg = AwaitTerminal(daemon_, "fg");
  EXPECT_EQ(fg.value("status", ""), "done") << fg.dump();
  EXPECT_EQ(fake_.Stats().value("aborted_by_client", 0), 1) << fake_.Stats().dump();
  EXPECT_EQ(daemon_.Status()["jobs"].value("preempted", 0), 1);
  AwaitAll(daemon_, {"bg1", "bg2"}, kLongDeadline * 2);
  int preempted = 0;
  for (const char* key : {"bg1", "bg2"}) {
    json j = Peek(daemon_, key);
    EXPECT_EQ(j.value("status", ""), "done") << j.dump();
    // The aborted attempt was given back: one attempt, however it went.
    EXPECT_EQ(j.value("attempts", 0), 1) << j.dump();
    preempted += j.value("preempted", 0);
  }
  EXPECT_EQ(preempted, 1);
  EXPECT_EQ(fake_.Stats().value("aborted_by_client", 0), 1);
}

// subscribe with "partial": the text of a streaming job arrives as it is
// written, each event the whole text so far, in order, before the job's
// done event; the last one equals the stored result.
TEST_P(CriticalPathE2E, PartialTextArrivesInOrderAndTheLastEqualsTheResult) {
  ASSERT_TRUE(StartFake(fake_, fake_dir_, {{"parallel", 1}, {"token_ms", 30}}));
  ASSERT_TRUE(StartDaemon(daemon_, BaseConfig(fake_.url()), GetParam()));
  ControlClient sub;
  ASSERT_TRUE(sub.Connect(daemon_.SocketPath()).ok());
  auto answer = sub.Call({{"op", "subscribe"}, {"key", "written"}, {"partial", true}});
  ASSERT_TRUE(answer.ok() && answer->value("ok", false)) << answer->dump();
  Submit(daemon_, Generate("written", "llama3.2", 12));
  std::vector<std::string> texts;
  json done;
  while (done.is_null()) {
    auto line = sub.ReadLine(static_cast<int>(kLongDeadline.count()));
    ASSERT_TRUE(line.ok()) << line.status().ToString();
    json e = json::parse(*line);
    if (e.value("event", "") == "text") {
      EXPECT_EQ(e.value("key", ""), "written");
      texts.push_back(e.value("text", ""));
    } else if (e.value("state", "") == "done") {
      done = e;
    }
  }
  ASSERT_GE(texts.size(), 2u) << "the text came in one piece";
  for (size_t i = 1; i < texts.size(); ++i) {
    EXPECT_EQ(texts[i].rfind(texts[i - 1], 0), 0u)
        << "each text extends the one before: " << texts[i - 1] << " / " << texts[i];
  }
  json result = daemon_.CallOk({{"op", "result"}, {"key", "written"}});
  EXPECT_EQ(texts.back(), result["result"].value("text", "")) << result.dump();
}

// digestctl follow prints the job's text as it is written and exits 0 with
// it; a job already done prints its text at once.
TEST_P(CriticalPathE2E, DigestctlFollowPrintsTheTextAndExitsWithTheJob) {
  ASSERT_TRUE(StartFake(fake_, fake_dir_, {{"parallel", 1}, {"token_ms", 30}}));
  ASSERT_TRUE(StartDaemon(daemon_, BaseConfig(fake_.url()), GetParam()));
  Submit(daemon_, Generate("slow", "llama3.2", 20));
  ASSERT_TRUE(WaitFor([&] { return fake_.Stats().value("in_flight", 0) == 1; }, kLongDeadline));
  testing::ProcessOutput out = testing::RunProcess(
      {DIGESTCTL_BIN, "--socket", daemon_.SocketPath(), "follow", "slow"}, kLongDeadline);
  ASSERT_TRUE(out.status.has_value());
  EXPECT_EQ(out.status->ToString(), "exit 0") << out.err;
  json result = daemon_.CallOk({{"op", "result"}, {"key", "slow"}});
  const std::string text = result["result"].value("text", "");
  ASSERT_FALSE(text.empty()) << result.dump();
  EXPECT_EQ(out.out, text + "\n");
  testing::ProcessOutput again = testing::RunProcess(
      {DIGESTCTL_BIN, "--socket", daemon_.SocketPath(), "follow", "slow"}, kLongDeadline);
  ASSERT_TRUE(again.status.has_value());
  EXPECT_EQ(again.status->ToString(), "exit 0") << again.err;
  EXPECT_EQ(again.out, text + "\n");
}

TEST_P(CriticalPathE2E, MaxPreemptionsStopsAJobFromBeingPreemptedAgain) {
  ASSERT_TRUE(StartFake(fake_, fake_dir_, {{"parallel", 1}, {"token_ms", 100}}));
  Sections config = BaseConfig(fake_.url());
  config["workers"]["max_preemptions"] = "1";
  ASSERT_TRUE(StartDaemon(daemon_, config, GetParam()));
  Submit(daemon_, Generate("bg", "llama3.2", 30));
  ASSERT_TRUE(WaitFor([&] { return fake_.Stats().value("in_flight", 0) == 1; }, kLongDeadline));
  Submit(daemon_, Generate("fg1", "llama3.2", 2, "interactive"));
  EXPECT_EQ(AwaitTerminal(daemon_, "fg1").value("status", ""), "done");
  // bg runs again; a second interactive job now waits for it.
  ASSERT_TRUE(WaitFor(
      [&] {
        return Peek(daemon_, "bg").value("status", "") == "running" &&
               fake_.Stats().value("in_flight", 0) == 1;
      },
      kLongDeadline));
  Submit(daemon_, Generate("fg2", "llama3.2", 2, "interactive"));
  json fg2 = AwaitTerminal(daemon_, "fg2", kLongDeadline * 2);
  EXPECT_EQ(fg2.value("status", ""), "done");
  json bg = Peek(daemon_, "bg");
  EXPECT_EQ(bg.value("status", ""), "done") << "fg2 ran before bg: it was preempted again";
  EXPECT_EQ(bg.value("preempted", 0), 1) << bg.dump();
  EXPECT_EQ(bg.value("attempts", 0), 1) << bg.dump();
  EXPECT_EQ(fake_.Stats().value("aborted_by_client", 0), 1);
  EXPECT_EQ(daemon_.Status()["jobs"].value("preempted", 0), 1);
}

// ---------------------------------------------------------------------------
// Promote on wait, on both stores.

TEST_P(CriticalPathE2E, AResultWaitPromotesAQueuedBackgroundJobWhichRunsNext) {
  ASSERT_TRUE(StartFake(fake_, fake_dir_, {{"parallel", 1}, {"token_ms", 100}}));
  Sections config = BaseConfig(fake_.url());
  config["backend"]["parallel"] = "1";
  ASSERT_TRUE(StartDaemon(daemon_, config, GetParam()));
  std::vector<json> specs;
  for (int i = 0; i < 6; ++i) specs.push_back(Generate("p" + std::to_string(i), "llama3.2", 4));
  SubmitBatch(daemon_, specs);
  ASSERT_TRUE(WaitFor([&] { return fake_.Stats().value("in_flight", 0) == 1; }, kLongDeadline));
  json last = AwaitTerminal(daemon_, "p5");
  EXPECT_EQ(last.value("status", ""), "done") << last.dump();
  EXPECT_EQ(last.value("lane", ""), "interactive") << last.dump();
  // p5 was last in line; promoted, it ran before the jobs ahead of it.
  EXPECT_NE(Peek(daemon_, "p4").value("status", ""), "done");
  EXPECT_GE(daemon_.Status()["jobs"].value("promoted", 0), 1);
  AwaitAll(daemon_, {"p1", "p2", "p3", "p4"}, kLongDeadline * 2);
}

// ---------------------------------------------------------------------------
// Sync submit, on both stores.

TEST_P(CriticalPathE2E, SubmitWithWaitAnswersTheFinishedJobOrItsStateWhenTimeIsUp) {
  ASSERT_TRUE(StartFake(fake_, fake_dir_, {{"parallel", 1}, {"token_ms", 50}}));
  ASSERT_TRUE(StartDaemon(daemon_, BaseConfig(fake_.url()), GetParam()));
  json quick = Generate("sync-quick", "llama3.2", 2);
  quick["op"] = "submit";
  quick["wait_ms"] = 30000;
  json done = CallOk(daemon_, quick, 40000);
  EXPECT_EQ(done.value("status", ""), "done") << done.dump();
  EXPECT_EQ(done.value("lane", ""), "interactive") << "a submit that waits is interactive";
  EXPECT_TRUE(done.contains("result")) << done.dump();

  json slow = Generate("sync-slow", "llama3.2", 200);
  slow["op"] = "submit";
  slow["wait_ms"] = 200;
  json pending = CallOk(daemon_, slow, 10000);
  EXPECT_TRUE(pending.value("status", "") == "queued" || pending.value("status", "") == "running")
      << pending.dump();
  EXPECT_EQ(pending.value("key", ""), "sync-slow");
  CallOk(daemon_, {{"op", "cancel"}, {"key", "sync-slow"}});

  json batch = {
      {"op", "submit"}, {"jobs", json::array({Generate("x", "llama3.2", 1)})}, {"wait_ms", 100}};
  auto refused = daemon_.Call(batch);
  ASSERT_TRUE(refused.ok());
  EXPECT_EQ(testing::ErrorCode(refused.value()), "bad_request") << refused.value().dump();
}

INSTANTIATE_TEST_SUITE_P(Stores, CriticalPathE2E, ::testing::ValuesIn(testing::kStores),
                         testing::StoreName);

// ---------------------------------------------------------------------------
// PostgreSQL: the writer and the shared table.

TEST_F(CriticalPathPg, InteractiveAndWaitedForFinishesSkipTheBatchWindow) {
  ASSERT_TRUE(StartFake(fake_, fake_dir_, {{"parallel", 2}}));
  Sections config = BaseConfig(fake_.url());
  // A batch window no test would wait for: a finish that waited for it
  // would still read "running" when the result wait below ends.
  config["writer"]["batch_ms"] = "60000";
  ASSERT_TRUE(StartDaemon(daemon_, config, "postgres"));
  Submit(daemon_, Generate("fast-i", "llama3.2", 2, "interactive"));
  json i = CallOk(daemon_, {{"op", "result"}, {"key", "fast-i"}, {"wait_ms", 20000}}, 30000);
  EXPECT_EQ(i.value("status", ""), "done") << i.dump();
  Submit(daemon_, Generate("fast-b", "llama3.2", 2));
  json b = CallOk(daemon_, {{"op", "result"}, {"key", "fast-b"}, {"wait_ms", 20000}}, 30000);
  EXPECT_EQ(b.value("status", ""), "done") << "someone waited for it: " << b.dump();
}

// A background job that finished before anyone asked: its finish waits in
// the writer's batch window until a `result` wait arrives, which commits it
// at once.
TEST_F(CriticalPathPg, AWaitForAFinishInTheBatchWindowCommitsItAtOnce) {
  ASSERT_TRUE(StartFake(fake_, fake_dir_, {{"parallel", 2}}));
  Sections config = BaseConfig(fake_.url());
  config["writer"]["batch_ms"] = "60000";
  ASSERT_TRUE(StartDaemon(daemon_, config, "postgres"));
  // One batch, so one insert commit: a second submit's commit could carry
  // the first job's finish with it when that job is quick.
  json part = Generate("early-g1", "llama3.2", 2);
  part["group"] = "early-g";
  SubmitBatch(daemon_, {Generate("early-b", "llama3.2", 2), part});
  // Finished here (counted), not yet committed.
  ASSERT_TRUE(
      WaitFor([&] { return daemon_.Status().at("jobs").value("done", 0) == 2; }, kLongDeadline));
  json before = CallOk(daemon_, {{"op", "result"}, {"key", "early-b"}});
  EXPECT_NE(before.value("status", ""), "done")
      << "committed before anyone waited: " << before.dump();
  json b = CallOk(daemon_, {{"op", "result"}, {"key", "early-b"}, {"wait_ms", 20000}}, 30000);
  EXPECT_EQ(b.value("status", ""), "done") << b.dump();
  json g = CallOk(daemon_, {{"op", "result"}, {"group", "early-g"}, {"wait_ms", 20000}}, 30000);
  EXPECT_EQ(g.value("status", ""), "completed") << g.dump();
  EXPECT_EQ(g.value("ready", 0), 1) << g.dump();
}

TEST_F(CriticalPathPg, TwoDaemonsShareABurstSubmittedToOne) {
  json settings = {{"parallel", 1}, {"token_ms", 100}};
  ASSERT_TRUE(StartFake(fake_, fake_dir_, settings));
  ASSERT_TRUE(StartFake(fake2_, fake2_dir_, settings));
  Sections c1 = BaseConfig(fake_.url());
  c1["daemon"]["node_id"] = Quoted("node-1");
  ASSERT_TRUE(StartDaemon(daemon_, c1, "postgres"));
  Sections c2 = BaseConfig(fake2_.url());
  c2["daemon"]["node_id"] = Quoted("node-2");
  c2["postgres"]["conninfo"] = Quoted(daemon_.PgConninfo());
  ASSERT_TRUE(StartDaemon(daemon2_, c2, "postgres"));
  std::vector<json> specs;
  std::vector<std::string> keys;
  for (int i = 0; i < 16; ++i) {
    keys.push_back("burst/" + std::to_string(i));
    specs.push_back(Generate(keys.back(), "llama3.2", 3));
  }
  SubmitBatch(daemon_, specs);
  AwaitAll(daemon_, keys, kLongDeadline * 2);
  uint64_t on1 = fake_.Requests("/api/generate");
  uint64_t on2 = fake2_.Requests("/api/generate");
  EXPECT_EQ(on1 + on2, 16u);
  EXPECT_GE(on1, 4u) << "node 1 ran " << on1 << ", node 2 ran " << on2;
  EXPECT_GE(on2, 4u) << "node 1 ran " << on1 << ", node 2 ran " << on2;
}

}  // namespace
}  // namespace digestd
