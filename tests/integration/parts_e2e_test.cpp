// Precompute as a cache and parts that need other parts, against the real
// digestd on both stores (and the fake Ollama for embeddings):
//   * ttl_s and [precompute] default_ttl_s: a submit of a key whose result
//     has expired runs it again ("expired": true); a fresh one is returned;
//   * "after": a part starts only once the parts it names are done, and its
//     input gets their results; the similarity kind takes its vectors from
//     embed parts ({"part": KEY, "index": i}), checked against a reference
//     computed here; a failed or cancelled dependency fails the part that
//     needs it (and the parts that need that one) with the reason; a retry
//     of the dependency and then of the part runs both.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>
#include <thread>
#include <vector>

#include "../support/daemon_harness.h"
#include "client/control_client.h"
#include "fake_process.h"

namespace digestd {
namespace {

using nlohmann::json;
using testing::DaemonProcess;
using testing::FakeOllamaProcess;
using testing::TempDir;
using testing::WaitFor;

bool IsTerminal(const json& job) {
  const std::string s = job.value("status", "");
  return s == "done" || s == "failed" || s == "cancelled";
}

json Noop(const std::string& key, int sleep_ms, const std::string& group = "") {
  json j = {{"kind", "noop"}, {"key", key}, {"input", {{"sleep_ms", sleep_ms}}}};
  if (!group.empty()) j["group"] = group;
  return j;
}

class PartsE2E : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    ASSERT_EQ(fake_.Start(FAKE_OLLAMA_BIN, fake_dir_.path()), "");
    const std::string config = R"(
[workers]
min = 2
max = 4
interactive_reserved = 0
[daemon]
node_id = "parts"
[precompute]
default_ttl_s = 1
[backend]
url = ")" + fake_.url() + R"("
max_attempts = 1
breaker_failures = 1000
)";
    ASSERT_TRUE(daemon_.Start({.store = GetParam(), .config = config}));
  }
  void TearDown() override {
    if (daemon_.Running()) {
      EXPECT_TRUE(daemon_.Stop());
    }
  }

  json Call(const json& request, int timeout_ms = 10000) {
    json answer = daemon_.CallOk(request, timeout_ms);
    return answer.is_object() ? answer : json::object();
  }
  json Submit(json spec) {
    spec["op"] = "submit";
    return Call(spec);
  }
  json Batch(const std::vector<json>& jobs) {
    json answer = Call({{"op", "submit"}, {"jobs", jobs}}, 30000);
    EXPECT_EQ(answer.value("accepted", 0), static_cast<int>(jobs.size())) << answer.dump();
    return answer;
  }
  json Peek(const std::string& key) { return Call({{"op", "result"}, {"key", key}}); }
  json Finished(const std::string& key) {
    json job;
    EXPECT_TRUE(WaitFor([&] {
      job = Call({{"op", "result"}, {"key", key}, {"wait_ms", 2000}});
      return IsTerminal(job);
    })) << "job "
        << key << " did not end: " << job.dump();
    return job;
  }

  TempDir fake_dir_;
  FakeOllamaProcess fake_;
  DaemonProcess daemon_;
};

INSTANTIATE_TEST_SUITE_P(Stores, PartsE2E, ::testing::ValuesIn(testing::kStores),
                         testing::StoreName);

// [precompute] default_ttl_s = 1 here; "ttl_s" overrides it per job.
TEST_P(PartsE2E, AnExpiredResultIsRunAgainAndAFreshOneIsReturned) {
  // A sleep, so a job run again is seen queued or running first.
  Submit(Noop("ttl-default", 200));  // the default: 1 s
  Submit({{"kind", "noop"}, {"key", "ttl-long"}, {"ttl_s", 3600}, {"input", {{"sleep_ms", 0}}}});
  Submit({{"kind", "noop"}, {"key", "ttl-zero"}, {"ttl_s", 0}, {"input", {{"sleep_ms", 0}}}});
  for (const char* k : {"ttl-default", "ttl-long", "ttl-zero"}) {
    EXPECT_EQ(Finished(k).value("status", ""), "done") << k;
  }
  // Fresh: the stored job, as always.
  json again = Submit(Noop("ttl-default", 200));
  EXPECT_EQ(again.value("existing", false), true) << again.dump();
  EXPECT_EQ(again.value("status", ""), "done") << again.dump();
  EXPECT_FALSE(again.contains("expired")) << again.dump();

  std::this_thread::sleep_for(std::chrono::milliseconds(1300));
  json expired = Submit(Noop("ttl-default", 200));
  EXPECT_EQ(expired.value("expired", false), true) << expired.dump();
  EXPECT_EQ(expired.value("existing", false), true) << expired.dump();
  EXPECT_NE(expired.value("status", ""), "done") << expired.dump();
  EXPECT_EQ(Finished("ttl-default").value("status", ""), "done");
  // Run again: fresh now, for another second.
  json fresh = Submit(Noop("ttl-default", 200));
  EXPECT_FALSE(fresh.contains("expired")) << fresh.dump();
  EXPECT_EQ(fresh.value("status", ""), "done") << fresh.dump();

  for (const char* k : {"ttl-long", "ttl-zero"}) {
    json s = Submit({{"kind", "noop"}, {"key", k}, {"input", {{"sleep_ms", 0}}}});
    EXPECT_FALSE(s.contains("expired")) << k << ": " << s.dump();
    EXPECT_EQ(s.value("status", ""), "done") << k << ": " << s.dump();
  }
}

TEST_P(PartsE2E, DigestctlSubmitsWithATtl) {
  auto ctl = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = {DIGESTCTL_BIN, "--socket", daemon_.SocketPath(), "--json"};
    argv.insert(argv.end(), args.begin(), args.end());
    return testing::RunProcess(argv);
  };
  auto bad = ctl({"submit", "noop", "--key", "cli-ttl", "--ttl", "1.5s"});
  ASSERT_TRUE(bad.status && bad.status->exited());
  EXPECT_EQ(bad.status->code(), 2) << bad.out << bad.err;
  EXPECT_NE(bad.err.find("whole seconds"), std::string::npos) << bad.err;
  auto first = ctl({"submit", "noop", "--key", "cli-ttl", "--ttl", "1s", "--wait", "5s"});
  ASSERT_TRUE(first.status && first.status->exited() && first.status->code() == 0) << first.err;
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  auto again = ctl({"submit", "noop", "--key", "cli-ttl", "--ttl", "1s"});
  ASSERT_TRUE(again.status && again.status->exited() && again.status->code() == 0) << again.err;
  json answer = json::parse(again.out, nullptr, false);
  EXPECT_EQ(answer.value("expired", false), true) << again.out;
}

TEST_P(PartsE2E, APartStartsOnlyOnceTheJobsItNeedsAreDone) {
  Batch({Noop("g1:slow", 600, "g1"),
         Noop("g1:quick", 0, "g1"),
         {{"kind", "noop"},
          {"key", "g1:after"},
          {"group", "g1"},
          {"after", {"g1:slow", "g1:quick"}},
          {"input", {{"sleep_ms", 0}}}}});
  bool early = false;
  ASSERT_TRUE(WaitFor([&] {
    // The part first: a dependency that ends between the two looks must
    // not make a part that started after it look early.
    json after = Peek("g1:after");
    json slow = Peek("g1:slow");
    if (!IsTerminal(slow) && after.value("status", "") != "queued") early = true;
    return IsTerminal(slow);
  }));
  EXPECT_FALSE(early) << "g1:after left the queue before g1:slow was done";
  EXPECT_EQ(Finished("g1:after").value("status", ""), "done");
  json group = Call({{"op", "result"}, {"group", "g1"}});
  EXPECT_EQ(group.value("status", ""), "completed") << group.dump();
}

// Reference similarity: cosine, and where the pair falls among a's
// similarities to each sample vector (ties counted half).
double Cosine(const json& a, const json& b) {
  double dot = 0, na = 0, nb = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    dot += a[i].get<double>() * b[i].get<double>();
    na += a[i].get<double>() * a[i].get<double>();
    nb += b[i].get<double>() * b[i].get<double>();
  }
  return dot / std::sqrt(na * nb);
}

TEST_P(PartsE2E, SimilarityTakesItsVectorsFromTheEmbedPartsItNeeds) {
  const std::vector<std::string> words = {"river",   "stone",  "lantern",
                                          "orchard", "violin", "cloud"};
  Batch({{{"kind", "embed"},
          {"key", "game:1:answer"},
          {"group", "game:1"},
          {"input", {{"texts", {"harbour"}}, {"model", "nomic-embed-text"}}}},
         {{"kind", "embed"},
          {"key", "game:1:sample"},
          {"group", "game:1"},
          {"input", {{"texts", words}, {"model", "nomic-embed-text"}}}},
         {{"kind", "similarity"},
          {"key", "game:1:score"},
          {"group", "game:1"},
          {"after", {"game:1:answer", "game:1:sample"}},
          {"input",
           {{"a", {{"part", "game:1:answer"}}},
            {"b", {{"part", "game:1:sample"}, {"index", 2}}},
            {"sample", {{"part", "game:1:sample"}}}}}}});
  json score = Finished("game:1:score");
  ASSERT_EQ(score.value("status", ""), "done") << score.dump();
  json answer = Finished("game:1:answer")["result"]["embeddings"][0];
  json sample = Finished("game:1:sample")["result"]["embeddings"];
  ASSERT_EQ(sample.size(), words.size());
  const double sim = Cosine(answer, sample[2]);
  double below = 0;
  for (const auto& v : sample) {
    double x = Cosine(answer, v);
    below += x < sim ? 1.0 : x == sim ? 0.5 : 0.0;
  }
  const json& r = score["result"];
  EXPECT_NEAR(r.value("similarity", 0.0), sim, 1e-9) << r.dump();
  EXPECT_NEAR(r.value("percentile", -1.0), 100.0 * below / static_cast<double>(words.size()), 1e-9)
      << r.dump();
  EXPECT_EQ(r["null"].value("n", 0), static_cast<int>(words.size())) << r.dump();
}

TEST_P(PartsE2E, AFailedOrCancelledDependencyFailsThePartsThatNeedItWithTheReason) {
  // g2: the embed answers 400 (the fake's canned failure), one attempt.
  json bad = {{"status", 400}, {"body", "{\"error\":\"model \\\"x\\\" not found\"}"}};
  ASSERT_EQ(fake_.Set({{"fail_next", json::array({bad})}}), "");
  Batch({{{"kind", "embed"},
          {"key", "g2:e"},
          {"group", "g2"},
          {"input", {{"texts", {"a"}}, {"model", "nomic-embed-text"}}}},
         {{"kind", "similarity"},
          {"key", "g2:s"},
          {"group", "g2"},
          {"after", {"g2:e"}},
          {"input", {{"a", {{"part", "g2:e"}}}, {"b", {{"part", "g2:e"}}}}}},
         {{"kind", "noop"}, {"key", "g2:t"}, {"group", "g2"}, {"after", {"g2:s"}}}});
  EXPECT_EQ(Finished("g2:e").value("status", ""), "failed");
  json s = Finished("g2:s");
  EXPECT_EQ(s.value("status", ""), "failed") << s.dump();
  EXPECT_NE(s.value("error", "").find("needs job g2:e, which failed"), std::string::npos)
      << s.dump();
  json t = Finished("g2:t");
  EXPECT_EQ(t.value("status", ""), "failed") << t.dump();
  EXPECT_NE(t.value("error", "").find("needs job g2:s"), std::string::npos) << t.dump();

  // g3: the dependency is cancelled while it waits behind a long noop.
  Batch({Noop("g3:hold", 60000, "g3"),
         {{"kind", "noop"},
          {"key", "g3:dep"},
          {"group", "g3"},
          {"after", {"g3:hold"}},
          {"input", {{"sleep_ms", 0}}}},
         {{"kind", "noop"}, {"key", "g3:last"}, {"group", "g3"}, {"after", {"g3:dep"}}}});
  Call({{"op", "cancel"}, {"key", "g3:hold"}});
  json dep = Finished("g3:dep");
  EXPECT_EQ(dep.value("status", ""), "failed") << dep.dump();
  EXPECT_NE(dep.value("error", "").find("needs job g3:hold, which was cancelled"),
            std::string::npos)
      << dep.dump();
  EXPECT_EQ(Finished("g3:last").value("status", ""), "failed");

  // Run again in order, they run: the dependency (replaced by a short
  // one), then the parts that need it.
  Submit({{"kind", "noop"},
          {"key", "g3:hold"},
          {"group", "g3"},
          {"replace", true},
          {"input", {{"sleep_ms", 1}}}});
  EXPECT_EQ(Finished("g3:hold").value("status", ""), "done");
  Call({{"op", "retry"}, {"key", "g3:dep"}});
  EXPECT_EQ(Finished("g3:dep").value("status", ""), "done");
  Call({{"op", "retry"}, {"key", "g3:last"}});
  EXPECT_EQ(Finished("g3:last").value("status", ""), "done");
}

TEST_P(PartsE2E, AfterMustNameEarlierPartsOfTheSameBatchAndGroup) {
  auto code = [&](const json& request) {
    auto answer = daemon_.Call(request);
    return answer.ok() ? testing::ErrorCode(answer.value()) : std::string("no answer");
  };
  // A later part, another group, no group, a single submit, a part the
  // input names but "after" does not list.
  EXPECT_EQ(code({{"op", "submit"},
                  {"jobs",
                   {{{"kind", "noop"}, {"key", "x:a"}, {"group", "x"}, {"after", {"x:b"}}},
                    {{"kind", "noop"}, {"key", "x:b"}, {"group", "x"}}}}}),
            "bad_request");
  EXPECT_EQ(code({{"op", "submit"},
                  {"jobs",
                   {{{"kind", "noop"}, {"key", "y:a"}, {"group", "y"}},
                    {{"kind", "noop"}, {"key", "y:b"}, {"group", "z"}, {"after", {"y:a"}}}}}}),
            "bad_request");
  EXPECT_EQ(code({{"op", "submit"},
                  {"jobs",
                   {{{"kind", "noop"}, {"key", "w:a"}}, {{"kind", "noop"}, {"after", {"w:a"}}}}}}),
            "bad_request");
  EXPECT_EQ(code({{"op", "submit"}, {"kind", "noop"}, {"group", "v"}, {"after", {"v:a"}}}),
            "bad_request");
  EXPECT_EQ(code({{"op", "submit"},
                  {"kind", "similarity"},
                  {"input", {{"a", {{"part", "u:e"}}}, {"b", {1.0, 2.0}}}}}),
            "bad_request");
  EXPECT_EQ(code({{"op", "submit"}, {"kind", "noop"}, {"ttl_s", -1}}), "bad_request");
  // Nothing of those was stored.
  EXPECT_EQ(Call({{"op", "jobs"}}).value("jobs", json::array()).size(), 0u);
}

}  // namespace
}  // namespace digestd
