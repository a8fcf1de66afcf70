// The LLM work end to end (issue 3): the real digestd binary against the
// fake Ollama (tests/support/fake_ollama) running as a separate process, each
// test with its own fake and its own daemon. The fake's content is a pure
// function of the request (fake_content.h), so a test can compute exactly
// what the daemon must store; its fault injection (POST /_fake/settings)
// drives the failure paths; its counters (GET /_fake/stats) show what the
// daemon really sent: requests, connections, hang-ups.
//
// No sleeps to wait for a state: every wait polls with a generous deadline
// or uses `result` with wait_ms. The one timing assertion is the issue's own
// bound: a cancel aborts a running generation within a second.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "../support/daemon_harness.h"
#include "fake_content.h"
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

// Waits for states that take a few retries, probes or backoffs: long
// enough for a loaded machine or a sanitizer build, never a timing claim.
constexpr milliseconds kLongDeadline{30000};

// ---------------------------------------------------------------------------
// Config: section -> key -> TOML value, so a test changes single keys.

using Sections = std::map<std::string, std::map<std::string, std::string>>;

std::string Quoted(const std::string& s) {
  return json(s).dump();  // a JSON string is a valid TOML basic string
}

// Short backoffs, a breaker that stays out of the way, and deadlines far
// above what any healthy request takes.
Sections BaseConfig(const std::string& url) {
  return {
      {"workers", {{"min", "1"}, {"max", "4"}, {"interactive_reserved", "0"}}},
      {"daemon", {{"node_id", Quoted("backend-e2e")}, {"shutdown_grace_s", "5"}}},
      {"log", {{"level", Quoted("info")}}},
      {"backend",
       {{"url", Quoted(url)},
        {"connect_timeout_ms", "2000"},
        {"first_byte_timeout_s", "30"},
        {"idle_timeout_s", "30"},
        {"request_timeout_s", "60"},
        {"max_attempts", "3"},
        {"backoff_base_ms", "20"},
        {"backoff_max_ms", "200"},
        {"breaker_failures", "100"},
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

// ---------------------------------------------------------------------------
// What the daemon is expected to send: the user message summarize_job.cpp
// builds for a chapter. The fake derives its tokens from the last message, so
// this is what lets the test know the exact summary text.
std::string SummarizeUserMessage(const std::string& title, const std::string& context,
                                 const std::string& text, int max_words) {
  return "Chapter title: " + title + "\n\nThe story so far:\n" + context +
         "\n\nThe chapter to summarise:\n" + text + "\n\nSummarise this chapter in at most " +
         std::to_string(max_words) + " words.";
}

std::string Trimmed(const std::string& s) {
  const char* kSpace = " \t\r\n\f\v";
  size_t b = s.find_first_not_of(kSpace);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(kSpace) - b + 1);
}

// The delays digestd logged for `key`'s retries, in order ("job K: …; retry
// N in D ms").
std::vector<int64_t> LoggedRetryDelays(const std::string& log, const std::string& key) {
  std::vector<int64_t> out;
  for (const auto& line : testing::SplitLines(log)) {
    if (line.find("job " + key + ": ") == std::string::npos) continue;
    size_t at = line.rfind("; retry ");
    int retry = 0;
    long long delay = 0;
    if (at != std::string::npos &&
        std::sscanf(line.c_str() + at, "; retry %d in %lld ms", &retry, &delay) == 2) {
      out.push_back(delay);
    }
  }
  return out;
}

bool IsTerminal(const json& job) {
  const std::string s = job.value("status", "");
  return s == "done" || s == "failed" || s == "cancelled";
}

class BackendE2E : public ::testing::Test {
 protected:
  void TearDown() override {
    // A clean exit 0 after every test: under the sanitizer build this is
    // also where a leak surfaces.
    if (daemon_.Running()) {
      EXPECT_TRUE(daemon_.Stop());
    }
  }

  // Starts the fake with `flags` on `port` (0: any free port); its port
  // file and log live in the test's own directory.
  ::testing::AssertionResult StartFake(const std::vector<std::string>& flags = {}, int port = 0) {
    std::string failed = fake_.Start(FAKE_OLLAMA_BIN, fake_dir_.path(), flags, port);
    if (failed.empty()) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << failed;
  }

  ::testing::AssertionResult StartDaemon(const Sections& config) {
    return daemon_.Start({.config = Toml(config)});
  }

  json CallOk(const json& request, int timeout_ms = 10000) {
    auto answer = daemon_.Call(request, timeout_ms);
    EXPECT_TRUE(answer.ok()) << request.dump() << ": " << answer.status().ToString();
    if (!answer.ok()) return json::object();
    EXPECT_EQ(answer.value().value("ok", false), true)
        << request.dump() << " -> " << answer.value().dump();
    return answer.value();
  }

  void Submit(const std::string& kind, const std::string& key, const json& input) {
    json answer = CallOk({{"op", "submit"}, {"kind", kind}, {"key", key}, {"input", input}});
    EXPECT_EQ(answer.value("existing", true), false) << answer.dump();
  }

  json Job(const std::string& key) { return CallOk({{"op", "result"}, {"key", key}}); }

  // The job once it is done, failed or cancelled; fails the test (and
  // returns its last state) when that takes longer than `deadline`.
  json AwaitTerminal(const std::string& key, milliseconds deadline = kLongDeadline) {
    const auto end = Clock::now() + deadline;
    json job;
    for (;;) {
      auto left = std::chrono::duration_cast<milliseconds>(end - Clock::now()).count();
      int64_t wait = std::clamp<int64_t>(left, 0, 5000);
      job = CallOk({{"op", "result"}, {"key", key}, {"wait_ms", wait}}, 15000);
      if (IsTerminal(job) || left <= 0 || !job.value("ok", false)) break;
    }
    EXPECT_TRUE(IsTerminal(job)) << "job " << key << " not finished in time: " << job.dump();
    return job;
  }

  json Status() { return CallOk({{"op", "status"}}); }

  TempDir fake_dir_;
  FakeOllamaProcess fake_;
  DaemonProcess daemon_;
};

// ---------------------------------------------------------------------------
// Each kind end to end.

TEST_F(BackendE2E, SummarizeStoresTheTextTheModelStreamed) {
  ASSERT_TRUE(StartFake({"--tokens", "24"}));
  ASSERT_TRUE(StartDaemon(BaseConfig(fake_.url())));
  const std::string title = "The Gate";
  const std::string context = "Anna lives alone by the old wall.";
  const std::string text = "Anna found the key under the stone. She opened the gate at dawn.";
  Submit("summarize", "ch1",
         {{"title", title}, {"context", context}, {"text", text}, {"max_words", 40}});
  json job = AwaitTerminal("ch1");
  ASSERT_EQ(job["status"], "done") << job.dump();
  // The fake's tokens include multi-byte UTF-8 ("—", "é", "ï"): the summary
  // must be exactly their concatenation, trimmed.
  const std::string expected =
      Trimmed(testing::FakeText(SummarizeUserMessage(title, context, text, 40), 24));
  EXPECT_EQ(job["result"]["summary"], expected) << job.dump();
  EXPECT_EQ(job["result"]["fallback"], false);
  EXPECT_EQ(job["result"]["model"], "llama3.2");
  EXPECT_EQ(job["result"]["meta"]["eval_count"], 24) << job.dump();
  EXPECT_EQ(job["result"]["meta"]["done_reason"], "stop");
  EXPECT_EQ(job["attempts"], 1);
  EXPECT_FALSE(job.contains("error")) << job.dump();
  EXPECT_EQ(fake_.Requests("/api/chat"), 1u);
}

TEST_F(BackendE2E, GenerateStoresTheStreamedTextAndCounters) {
  ASSERT_TRUE(StartFake({"--tokens", "16"}));
  ASSERT_TRUE(StartDaemon(BaseConfig(fake_.url())));
  const std::string prompt = "Name three rivers of Europe.";
  Submit("generate", "gen", {{"prompt", prompt}, {"options", {{"temperature", 0.2}}}});
  json job = AwaitTerminal("gen");
  ASSERT_EQ(job["status"], "done") << job.dump();
  EXPECT_EQ(job["result"]["text"], testing::FakeText(prompt, 16)) << job.dump();
  EXPECT_EQ(job["result"]["model"], "llama3.2");
  EXPECT_FALSE(job["result"].contains("truncated"));
  const json& meta = job["result"]["meta"];
  EXPECT_EQ(meta["eval_count"], 16) << job.dump();
  EXPECT_EQ(meta["prompt_eval_count"], testing::FakePromptTokenCount(prompt));
  EXPECT_EQ(meta["done_reason"], "stop");
  EXPECT_EQ(job["attempts"], 1);
  EXPECT_EQ(fake_.Requests("/api/generate"), 1u);
}

TEST_F(BackendE2E, EmbedReturnsOneVectorPerText) {
  ASSERT_TRUE(StartFake({"--embed-dims", "12"}));
  ASSERT_TRUE(StartDaemon(BaseConfig(fake_.url())));
  const std::vector<std::string> texts = {"apple", "a red fruit", "the colour of the sea"};
  Submit("embed", "emb", {{"texts", texts}});
  json job = AwaitTerminal("emb");
  ASSERT_EQ(job["status"], "done") << job.dump();
  const json& r = job["result"];
  EXPECT_EQ(r["dims"], 12) << job.dump();
  EXPECT_EQ(r["model"], "nomic-embed-text");
  ASSERT_TRUE(r["embeddings"].is_array());
  ASSERT_EQ(r["embeddings"].size(), texts.size()) << job.dump();
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::vector<float> want = testing::FakeEmbedding(texts[i], 12);
    const json& got = r["embeddings"][i];
    ASSERT_EQ(got.size(), want.size()) << "vector " << i;
    for (size_t d = 0; d < want.size(); ++d) {
      EXPECT_NEAR(got[d].get<double>(), static_cast<double>(want[d]), 1e-6)
          << "vector " << i << " (\"" << texts[i] << "\"), element " << d;
    }
  }
  EXPECT_EQ(fake_.Requests("/api/embed"), 1u);
}

// ---------------------------------------------------------------------------
// Failures: classification, retries, backoff.

TEST_F(BackendE2E, MidStreamErrorIsRetriedThenFailsWithOllamasMessage) {
  ASSERT_TRUE(StartFake());
  ASSERT_EQ(fake_.Set({{"midstream_error_after", 2}}), "");  // every stream, every attempt
  ASSERT_TRUE(StartDaemon(BaseConfig(fake_.url())));
  Submit("generate", "mid", {{"prompt", "Tell a story."}});
  json job = AwaitTerminal("mid");
  ASSERT_EQ(job["status"], "failed") << job.dump();
  EXPECT_EQ(job["attempts"], 3) << job.dump();
  EXPECT_EQ(job["busy_retries"], 0);
  const std::string error = job.value("error", "");
  EXPECT_NE(error.find("an error was encountered while running the model"), std::string::npos)
      << error;
  EXPECT_NE(error.find("max_attempts"), std::string::npos) << error;
  EXPECT_FALSE(job.contains("result"));
  EXPECT_EQ(fake_.Requests("/api/generate"), 3u);
}

TEST_F(BackendE2E, UnknownModelFailsAtOnceWithOllamasMessage) {
  ASSERT_TRUE(StartFake());
  ASSERT_TRUE(StartDaemon(BaseConfig(fake_.url())));
  Submit("generate", "nomodel", {{"prompt", "Hello"}, {"model", "llama9"}});
  json job = AwaitTerminal("nomodel");
  ASSERT_EQ(job["status"], "failed") << job.dump();
  EXPECT_EQ(job["attempts"], 1) << job.dump();
  const std::string error = job.value("error", "");
  EXPECT_NE(error.find("model 'llama9' not found"), std::string::npos) << error;
  EXPECT_NE(error.find("404"), std::string::npos) << error;
  EXPECT_EQ(fake_.Requests("/api/generate"), 1u);
  // A fatal answer proves the server is up: the breaker saw no failure.
  json s = Status();
  EXPECT_EQ(s["backend"]["state"], "closed") << s.dump();
  EXPECT_EQ(s["backend"]["failures"], 0);
}

// Ollama answers 503 when its queue is full. By design (issue 3, point 4) a
// busy answer re-queues the job with backoff without spending an attempt.
// Full jitter makes any single delay possibly 0, so the backoff is checked
// against what digestd says it chose: each logged delay within its ceiling
// (base, then 2 × base: the busy count drives the exponent), and the job's
// queued time covering the sum of the delays (it was really held back).
TEST_F(BackendE2E, BusyAnswersBackOffWithoutSpendingAttempts) {
  ASSERT_TRUE(StartFake());
  const json busy = {{"status", 503},
                     {"body",
                      {{"error",
                        "server busy, please try again.  maximum pending requests "
                        "exceeded"}}}};
  ASSERT_EQ(fake_.Set({{"fail_next", {busy, busy}}}), "");
  Sections config = BaseConfig(fake_.url());
  config["backend"]["backoff_base_ms"] = "300";
  config["backend"]["backoff_max_ms"] = "5000";
  config["backend"]["max_attempts"] = "2";  // two busy answers would exceed it if they counted
  ASSERT_TRUE(StartDaemon(config));
  Submit("generate", "busy", {{"prompt", "Hello"}});
  json job = AwaitTerminal("busy");
  ASSERT_EQ(job["status"], "done") << job.dump();
  EXPECT_EQ(job["attempts"], 1) << job.dump();
  EXPECT_EQ(job["busy_retries"], 2) << job.dump();
  EXPECT_EQ(fake_.Requests("/api/generate"), 3u);

  std::vector<int64_t> delays = LoggedRetryDelays(daemon_.StderrText(), "busy");
  ASSERT_EQ(delays.size(), 2u) << daemon_.StderrText();
  EXPECT_LE(delays[0], 300);
  EXPECT_LE(delays[1], 600);
  // Timers run on the loop's cached clock (ms resolution): a little slack.
  EXPECT_GE(job["queued_ms"].get<double>() + 10.0, static_cast<double>(delays[0] + delays[1]))
      << job.dump();
  json s = Status();
  EXPECT_EQ(s["backend"]["busy"], 2) << s.dump();
  EXPECT_EQ(s["backend"]["retries"], 2);
  EXPECT_EQ(s["backend"]["failures"], 0);  // busy is not a breaker failure
  EXPECT_EQ(s["jobs"]["retried"], 2);
}

TEST_F(BackendE2E, ServerErrorsAreRetriedWithBackoffUntilDone) {
  ASSERT_TRUE(StartFake());
  const json crash = {{"status", 500},
                      {"body", {{"error", "model runner has unexpectedly stopped"}}}};
  ASSERT_EQ(fake_.Set({{"fail_next", {crash, crash}}}), "");
  Sections config = BaseConfig(fake_.url());
  config["backend"]["backoff_base_ms"] = "200";
  config["backend"]["backoff_max_ms"] = "5000";
  ASSERT_TRUE(StartDaemon(config));
  Submit("generate", "flaky", {{"prompt", "Hello"}});
  json job = AwaitTerminal("flaky");
  ASSERT_EQ(job["status"], "done") << job.dump();
  EXPECT_EQ(job["attempts"], 3) << job.dump();
  EXPECT_EQ(job["busy_retries"], 0);
  EXPECT_EQ(job["result"]["text"], testing::FakeText("Hello", 8));
  EXPECT_EQ(fake_.Requests("/api/generate"), 3u);

  std::vector<int64_t> delays = LoggedRetryDelays(daemon_.StderrText(), "flaky");
  ASSERT_EQ(delays.size(), 2u) << daemon_.StderrText();
  EXPECT_LE(delays[0], 200);
  EXPECT_LE(delays[1], 400);
  EXPECT_GE(job["queued_ms"].get<double>() + 10.0, static_cast<double>(delays[0] + delays[1]))
      << job.dump();
  EXPECT_NE(daemon_.StderrText().find("model runner has unexpectedly stopped"), std::string::npos);
}

TEST_F(BackendE2E, StalledStreamHitsIdleTimeoutAndIsRetried) {
  ASSERT_TRUE(StartFake({"--parallel", "2"}));
  ASSERT_EQ(fake_.Set({{"stall_ms", 20000}}), "");  // silence after the first chunk
  Sections config = BaseConfig(fake_.url());
  config["backend"]["idle_timeout_s"] = "1";
  ASSERT_TRUE(StartDaemon(config));
  Submit("generate", "stall", {{"prompt", "Hello"}});
  // The fake takes its settings snapshot before a request holds a slot:
  // once one did, the next request (the retry) may see a healthy server.
  ASSERT_TRUE(WaitFor([&] { return fake_.Stats().value("max_in_flight_observed", 0) >= 1; }));
  ASSERT_EQ(fake_.Set({{"stall_ms", 0}}), "");
  json job = AwaitTerminal("stall");
  ASSERT_EQ(job["status"], "done") << job.dump();
  EXPECT_EQ(job["attempts"], 2) << job.dump();
  EXPECT_EQ(job["result"]["text"], testing::FakeText("Hello", 8));
  EXPECT_EQ(fake_.Requests("/api/generate"), 2u);
  EXPECT_NE(daemon_.StderrText().find("went silent for 1 s"), std::string::npos)
      << daemon_.StderrText();
  // digestd hung up on the stalled stream (that is what makes Ollama stop).
  EXPECT_TRUE(WaitFor([&] { return fake_.Stats().value("disconnects", 0) >= 1; }));
}

// K retryable failures in a row open the breaker; while it is open nothing
// is sent, the jobs stay queued and keep their attempts; once the server is
// back a probe closes it and the jobs complete.
TEST_F(BackendE2E, BreakerOpensKeepsJobsQueuedAndClosesAfterRecovery) {
  constexpr int kFailures = 3;
  constexpr int kJobs = 4;
  ASSERT_TRUE(StartFake());
  const int port = fake_.port();
  Sections config = BaseConfig(fake_.url());
  // One worker: exactly one request at a time, so exactly K fail.
  config["workers"]["max"] = "1";
  config["backend"]["breaker_failures"] = std::to_string(kFailures);
  config["backend"]["breaker_open_s"] = "1";
  config["backend"]["max_attempts"] = "10";
  ASSERT_TRUE(StartDaemon(config));
  ASSERT_EQ(fake_.Stop(), "");  // connections are refused from now on

  std::vector<std::string> keys;
  for (int i = 0; i < kJobs; ++i) {
    keys.push_back("outage" + std::to_string(i));
    Submit("generate", keys.back(), {{"prompt", "Hello " + std::to_string(i)}});
  }
  json s;
  ASSERT_TRUE(WaitFor(
      [&] {
        s = Status();
        return s["backend"]["state"] == "open";
      },
      kLongDeadline))
      << s.dump();
  const std::string reason = s["backend"]["breaker"].value("reason", "");
  EXPECT_NE(reason.find("cannot connect"), std::string::npos) << s.dump();
  EXPECT_TRUE(s["backend"]["breaker"].contains("probe_in_ms")) << s.dump();
  // The log line says what to do, not only what happened.
  const std::string opened = daemon_.WaitForLog("circuit breaker open");
  EXPECT_NE(opened.find("jobs stay queued, probing in 1 s; fix what the reason says and they "
                        "resume when a probe answers (digestctl status shows the breaker)"),
            std::string::npos)
      << opened;

  // Let at least two probes fail while it stays open: nothing else is sent,
  // and no job spends an attempt or fails.
  ASSERT_TRUE(WaitFor([&] { return Status().value("/backend/probes"_json_pointer, 0) >= 2; },
                      kLongDeadline));
  int attempts = 0;
  for (const auto& key : keys) {
    json job = Job(key);
    EXPECT_EQ(job["status"], "queued") << job.dump();
    attempts += job.value("attempts", 0);
  }
  EXPECT_EQ(attempts, kFailures);
  s = Status();
  EXPECT_EQ(s["jobs"]["failed"], 0) << s.dump();
  EXPECT_EQ(s["jobs"]["done"], 0);
  EXPECT_NE(s["backend"]["state"], "closed");

  // The server comes back on the same port; the next probe closes the
  // breaker and the queued jobs run.
  ASSERT_TRUE(StartFake({}, port));
  for (const auto& key : keys) {
    json job = AwaitTerminal(key);
    EXPECT_EQ(job["status"], "done") << job.dump();
  }
  int final_attempts = 0;
  for (const auto& key : keys) final_attempts += Job(key).value("attempts", 0);
  EXPECT_EQ(final_attempts, kFailures + kJobs);  // one successful attempt each
  s = Status();
  EXPECT_EQ(s["backend"]["state"], "closed") << s.dump();
  EXPECT_EQ(s["jobs"]["done"], kJobs);
  EXPECT_EQ(s["jobs"]["failed"], 0);
  // The probe's request plus one per job reached the restarted server.
  EXPECT_EQ(fake_.Requests("/api/generate"), static_cast<uint64_t>(kJobs + 1));
}

// Where users look during an outage: the `digestctl status` table has a
// backend line with the breaker's reason and next probe and the jobs it
// holds, systemd's STATUS= says the backend is down, and the held jobs read
// as queued (no run time).
TEST_F(BackendE2E, StatusTableAndSystemdStatusShowTheOpenBreaker) {
  ASSERT_TRUE(StartFake());
  Sections config = BaseConfig(fake_.url());
  config["workers"]["max"] = "1";
  config["backend"]["breaker_failures"] = "2";
  config["backend"]["breaker_open_s"] = "60";  // stays open for the whole test
  config["backend"]["max_attempts"] = "10";
  config["daemon"]["status_interval_ms"] = "100";
  ASSERT_TRUE(StartDaemon(config));
  const std::string url = fake_.url();
  ASSERT_EQ(fake_.Stop(), "");  // connections are refused from now on

  std::vector<std::string> keys;
  for (int i = 0; i < 3; ++i) {
    keys.push_back("held" + std::to_string(i));
    Submit("generate", keys.back(), {{"prompt", "Hello " + std::to_string(i)}});
  }
  json s;
  ASSERT_TRUE(WaitFor(
      [&] {
        s = Status();
        return s["backend"]["state"] == "open" && s["backend"].value("held", 0) > 0;
      },
      kLongDeadline))
      << s.dump();

  testing::ProcessOutput table =
      testing::RunProcess({DIGESTCTL_BIN, "--socket", daemon_.SocketPath(), "status"});
  ASSERT_TRUE(table.status.has_value());
  EXPECT_EQ(table.status->ToString(), "exit 0") << table.err;
  EXPECT_NE(table.out.find("backend      ollama  " + url + "  down  breaker open  in flight 0"),
            std::string::npos)
      << table.out;
  EXPECT_NE(table.out.find("  breaker    open: "), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("cannot connect"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("; next probe in "), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("queued jobs wait for the backend"), std::string::npos) << table.out;

  for (const auto& key : keys) {
    json job = Job(key);
    EXPECT_EQ(job["status"], "queued") << job.dump();
    EXPECT_FALSE(job.contains("run_ms")) << job.dump();
  }

  auto at = daemon_.WaitForMessage("STATUS=backend down (breaker open: ");
  ASSERT_TRUE(at.has_value()) << ::testing::PrintToString(daemon_.Messages());
  EXPECT_NE(daemon_.Messages()[*at].find("cannot connect"), std::string::npos)
      << daemon_.Messages()[*at];
  // Held jobs are cancelled, so the daemon stops at once.
  for (const auto& key : keys) CallOk({{"op", "cancel"}, {"key", key}});
}

// ---------------------------------------------------------------------------
// Cancel, connections, shutdown.

TEST_F(BackendE2E, CancelAbortsALongGenerationWithinOneSecond) {
  ASSERT_TRUE(StartFake({"--token-ms", "200", "--tokens", "100000"}));  // about 5.5 hours
  ASSERT_TRUE(StartDaemon(BaseConfig(fake_.url())));
  Submit("generate", "long", {{"prompt", "Write a very long story."}});
  ASSERT_TRUE(WaitFor([&] { return fake_.Stats().value("in_flight", 0) == 1; }));
  ASSERT_EQ(Job("long")["status"], "running");

  json cancel = CallOk({{"op", "cancel"}, {"key", "long"}});
  const auto replied = Clock::now();
  EXPECT_EQ(cancel["cancelled"], true) << cancel.dump();
  // `result` with a wait answers the moment the job reaches its end state.
  json job = CallOk({{"op", "result"}, {"key", "long"}, {"wait_ms", 10000}}, 15000);
  const auto took = std::chrono::duration_cast<milliseconds>(Clock::now() - replied);
  ASSERT_EQ(job["status"], "cancelled") << job.dump();
  EXPECT_LT(took.count(), 1000) << "the cancel took " << took.count() << " ms";
  EXPECT_EQ(job["attempts"], 1);
  EXPECT_TRUE(WaitFor([&] { return fake_.Stats().value("disconnects", 0) >= 1; }));
  EXPECT_EQ(fake_.Requests("/api/generate"), 1u);  // not retried
}

TEST_F(BackendE2E, SequentialJobsReuseAtMostOneConnectionPerWorker) {
  constexpr int kWorkers = 4;
  ASSERT_TRUE(StartFake({"--parallel", "4"}));
  ASSERT_TRUE(StartDaemon(BaseConfig(fake_.url())));  // [workers] max = 4
  for (int i = 0; i < 200; ++i) {
    const std::string key = "seq" + std::to_string(i);
    Submit("generate", key, {{"prompt", "Prompt " + std::to_string(i)}});
    json job = AwaitTerminal(key);
    ASSERT_EQ(job["status"], "done") << job.dump();
  }
  EXPECT_EQ(fake_.Requests("/api/generate"), 200u);
  const int64_t connections = fake_.ForeignConnections();
  EXPECT_GE(connections, 1);
  EXPECT_LE(connections, kWorkers)
      << "200 sequential jobs opened " << connections << " connections";
}

// The same bound with the four slots busy at once: libuv runs the jobs on
// more pool threads than there are slots, yet connections follow the slots.
TEST_F(BackendE2E, ConcurrentJobsOpenAtMostOneConnectionPerWorker) {
  constexpr int kWorkers = 4;
  constexpr int kJobs = 200;
  ASSERT_TRUE(StartFake({"--parallel", "4", "--token-ms", "1"}));
  Sections config = BaseConfig(fake_.url());  // [workers] max = 4
  config["queues"]["background"] = std::to_string(2 * kJobs);
  ASSERT_TRUE(StartDaemon(config));
  json batch = json::array();
  for (int i = 0; i < kJobs; ++i) {
    batch.push_back({{"kind", "generate"},
                     {"key", "par" + std::to_string(i)},
                     {"input", {{"prompt", "Prompt " + std::to_string(i)}}}});
  }
  json answer = CallOk({{"op", "submit"}, {"jobs", batch}});
  ASSERT_EQ(answer.value("accepted", 0), kJobs) << answer.dump();
  for (int i = 0; i < kJobs; ++i) {
    json job = AwaitTerminal("par" + std::to_string(i));
    ASSERT_EQ(job["status"], "done") << job.dump();
  }
  // The slots really ran side by side, never more than four at once.
  json stats = fake_.Stats();
  EXPECT_GE(stats.value("max_in_flight_observed", 0), 2) << stats.dump();
  EXPECT_LE(stats.value("max_in_flight_observed", 0), kWorkers) << stats.dump();
  const int64_t connections = fake_.ForeignConnections();
  EXPECT_GE(connections, 1);
  EXPECT_LE(connections, kWorkers)
      << kJobs << " jobs on " << kWorkers << " workers opened " << connections << " connections";
}

TEST_F(BackendE2E, ShutdownAbortsLongGenerationsAfterGrace) {
  ASSERT_TRUE(StartFake({"--parallel", "2", "--token-ms", "200", "--tokens", "100000"}));
  Sections config = BaseConfig(fake_.url());
  config["workers"]["max"] = "2";
  config["backend"]["parallel"] = "2";  // both start at once, not one while it learns
  config["daemon"]["shutdown_grace_s"] = "1";
  ASSERT_TRUE(StartDaemon(config));
  Submit("generate", "long0", {{"prompt", "One"}});
  Submit("generate", "long1", {{"prompt", "Two"}});
  ASSERT_TRUE(WaitFor([&] { return fake_.Stats().value("in_flight", 0) == 2; }));

  // SIGTERM: the grace second passes, the two transfers are aborted, and the
  // daemon exits 0 long before the generations would have ended.
  ASSERT_TRUE(daemon_.Stop(std::chrono::seconds(10)));
  EXPECT_TRUE(WaitFor([&] { return fake_.Stats().value("disconnects", 0) >= 2; }));
  const std::string log = daemon_.StderrText();
  EXPECT_NE(log.find("shutdown_grace_s passed: stopping now; 2 running jobs aborted"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("shutdown complete: 0 done, 0 failed, 2 cancelled"), std::string::npos) << log;
}

// ---------------------------------------------------------------------------
// Summary fallback and the extractive backend.

constexpr const char* kChapter =
    "Anna found the key under the stone. She opened the old gate at dawn. Beyond it lay a "
    "garden that nobody had seen for years. The end.";
// Sentences of 7, 7 and 11 words: 16 words hold the first two.
constexpr const char* kLeadingSentences =
    "Anna found the key under the stone. She opened the old gate at dawn.";

TEST_F(BackendE2E, ExtractiveFallbackStoresTheLeadingSentences) {
  ASSERT_TRUE(StartFake());
  ASSERT_EQ(fake_.Set({{"error_rate", 1.0}}), "");  // every request: 500
  Sections config = BaseConfig(fake_.url());
  config["backend"]["max_attempts"] = "2";
  config["summarize"]["fallback"] = Quoted("extractive");
  ASSERT_TRUE(StartDaemon(config));
  Submit("summarize", "fb", {{"text", kChapter}, {"max_words", 16}});
  json job = AwaitTerminal("fb");
  ASSERT_EQ(job["status"], "done") << job.dump();
  EXPECT_EQ(job["result"]["fallback"], true) << job.dump();
  EXPECT_EQ(job["result"]["summary"], kLeadingSentences) << job.dump();
  EXPECT_EQ(job["result"]["model"], "extractive");
  EXPECT_EQ(job["attempts"], 2);
  // Why there is no real summary stays visible.
  EXPECT_NE(job.value("error", "").find("model runner has unexpectedly stopped"), std::string::npos)
      << job.dump();
  EXPECT_EQ(fake_.Requests("/api/chat"), 2u);
}

TEST_F(BackendE2E, PlaceholderFallbackStoresTheConfiguredText) {
  ASSERT_TRUE(StartFake());
  Sections config = BaseConfig(fake_.url());
  config["summarize"]["fallback"] = Quoted("placeholder");
  config["summarize"]["placeholder_text"] = Quoted("Summary coming soon.");
  ASSERT_TRUE(StartDaemon(config));
  Submit("summarize", "ph", {{"text", kChapter}, {"model", "missing-model"}});
  json job = AwaitTerminal("ph");
  ASSERT_EQ(job["status"], "done") << job.dump();
  EXPECT_EQ(job["result"]["fallback"], true);
  EXPECT_EQ(job["result"]["summary"], "Summary coming soon.") << job.dump();
  EXPECT_EQ(job["attempts"], 1);  // 404 is fatal: no retry before the fallback
  EXPECT_NE(job.value("error", "").find("model 'missing-model' not found"), std::string::npos)
      << job.dump();
}

TEST_F(BackendE2E, NoFallbackLeavesTheSummaryFailed) {
  ASSERT_TRUE(StartFake());
  Sections config = BaseConfig(fake_.url());
  config["summarize"]["fallback"] = Quoted("none");
  ASSERT_TRUE(StartDaemon(config));
  Submit("summarize", "nofb", {{"text", kChapter}, {"model", "missing-model"}});
  json job = AwaitTerminal("nofb");
  ASSERT_EQ(job["status"], "failed") << job.dump();
  EXPECT_FALSE(job.contains("result")) << job.dump();
  EXPECT_NE(job.value("error", "").find("model 'missing-model' not found"), std::string::npos)
      << job.dump();
}

TEST_F(BackendE2E, ExtractiveBackendNeedsNoServer) {
  // Nothing listens at the URL: the extractive backend must never use it.
  Sections config = BaseConfig("http://127.0.0.1:9");
  config["backend"]["kind"] = Quoted("extractive");
  ASSERT_TRUE(StartDaemon(config));
  Submit("summarize", "ex", {{"text", kChapter}, {"max_words", 16}});
  json job = AwaitTerminal("ex");
  ASSERT_EQ(job["status"], "done") << job.dump();
  EXPECT_EQ(job["result"]["summary"], kLeadingSentences) << job.dump();
  EXPECT_EQ(job["result"]["fallback"], false);
  EXPECT_EQ(job["result"]["model"], "extractive");
  EXPECT_FALSE(job.contains("error")) << job.dump();

  auto refused =
      daemon_.Call({{"op", "submit"}, {"kind", "generate"}, {"input", {{"prompt", "Hello"}}}});
  ASSERT_TRUE(refused.ok()) << refused.status().ToString();
  EXPECT_EQ(refused.value()["ok"], false) << refused.value().dump();
  EXPECT_EQ(refused.value()["error"]["code"], "bad_request");
  EXPECT_NE(refused.value()["error"].value("message", "").find("extractive"), std::string::npos);

  json s = Status();
  EXPECT_EQ(s["backend"]["kind"], "extractive") << s.dump();
  EXPECT_EQ(s["backend"]["requests"], 0);
}

}  // namespace
}  // namespace digestd
