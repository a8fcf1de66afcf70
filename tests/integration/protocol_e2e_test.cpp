// The control protocol against the real digestd binary: every kind of bad
// input from issue 2 gets a clear error (or a clean close) and the daemon
// keeps serving; the ops that exist behave as docs/protocol.md says. Each
// test ends with a clean SIGTERM shutdown (exit 0), which under the sanitizer
// build is also the leak check.
#include <fcntl.h>
#include <grp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "../support/daemon_harness.h"
#include "client/control_client.h"

namespace digestd {
namespace {

using nlohmann::json;
using testing::DaemonOptions;
using testing::DaemonProcess;
using testing::WaitFor;

constexpr const char* kConfig = R"(
[control]
max_line_bytes = 1024
[daemon]
node_id = "e2e"
)";

// Checks an error answer: the code, and a message a person can act on.
void ExpectError(const json& answer, const std::string& code, const std::string& mention = "") {
  ASSERT_TRUE(answer.is_object()) << answer.dump();
  EXPECT_EQ(answer.value("ok", true), false) << answer.dump();
  EXPECT_EQ(testing::ErrorCode(answer), code) << answer.dump();
  std::string message = testing::ErrorMessage(answer);
  EXPECT_FALSE(message.empty()) << answer.dump();
  if (!mention.empty()) {
    EXPECT_NE(message.find(mention), std::string::npos)
        << "\"" << mention << "\" not in: " << message;
  }
}

// The answer to `request` on a new connection (any answer, error or not);
// null, and a test failure, when none came.
json Answer(const DaemonProcess& daemon, const json& request) {
  auto answer = daemon.Call(request);
  EXPECT_TRUE(answer.ok()) << request.dump() << ": " << answer.status().ToString();
  return answer.ok() ? answer.value() : json(nullptr);
}

class ProtocolE2E : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override { ASSERT_TRUE(daemon_.Start({.store = GetParam(), .config = kConfig})); }

  void TearDown() override {
    if (daemon_.Pid() > 0) {
      EXPECT_TRUE(daemon_.Stop());
    }
  }

  // Sends one raw line (a newline is added) on a new connection and returns
  // the parsed answer.
  json SendRaw(const std::string& line) {
    ControlClient client;
    Status st = client.Connect(daemon_.SocketPath());
    EXPECT_TRUE(st.ok()) << st.ToString();
    if (!st.ok()) return nullptr;
    st = client.SendLine(line);
    EXPECT_TRUE(st.ok()) << st.ToString();
    auto answer = client.ReadLine(10000);
    EXPECT_TRUE(answer.ok()) << answer.status().ToString();
    if (!answer.ok()) return nullptr;
    json j = json::parse(answer.value(), nullptr, false);
    EXPECT_TRUE(j.is_object()) << answer.value();
    return j;
  }

  json Call(const json& request) {
    auto answer = daemon_.Call(request);
    EXPECT_TRUE(answer.ok()) << request.dump() << ": " << answer.status().ToString();
    return answer.ok() ? answer.value() : json(nullptr);
  }

  // The daemon still answers a ping on a new connection.
  void ExpectStillServing() {
    auto answer = daemon_.Call({{"op", "ping"}, {"id", "alive?"}});
    ASSERT_TRUE(answer.ok()) << answer.status().ToString() << "\n" << daemon_.StderrText();
    EXPECT_EQ(answer.value()["pong"], true);
    EXPECT_EQ(answer.value()["id"], "alive?");
  }

  DaemonProcess daemon_;
};

INSTANTIATE_TEST_SUITE_P(Stores, ProtocolE2E, ::testing::ValuesIn(testing::kStores),
                         testing::StoreName);

TEST_P(ProtocolE2E, PingIsAnswered) {
  json answer = Call({{"op", "ping"}, {"id", 1}});
  EXPECT_EQ(answer["ok"], true);
  EXPECT_EQ(answer["pong"], true);
  EXPECT_EQ(answer["id"], 1);
}

TEST_P(ProtocolE2E, HelloNamesTheProtocolVersionOpsKindsAndStore) {
  json answer = Call({{"op", "hello"}, {"id", "h"}});
  EXPECT_EQ(answer["ok"], true) << answer.dump();
  EXPECT_EQ(answer["id"], "h");
  EXPECT_EQ(answer.value("protocol", 0), 1) << answer.dump();
  EXPECT_FALSE(answer.value("version", "").empty()) << answer.dump();
  EXPECT_EQ(answer.value("store", ""), GetParam()) << answer.dump();
  auto has = [&](const char* field, const char* name) {
    const json& list = answer.value(field, json::array());
    return std::find(list.begin(), list.end(), name) != list.end();
  };
  for (const char* op :
       {"hello", "submit", "result", "cancel", "status", "jobs", "retry", "delete"})
    EXPECT_TRUE(has("ops", op)) << op << " in " << answer.dump();
  for (const char* kind : {"noop", "similarity", "summarize", "embed", "generate"})
    EXPECT_TRUE(has("kinds", kind)) << kind << " in " << answer.dump();
  for (const char* feature : {"sync_submit", "jobs_list", "retry", "delete", "cancel_group",
                              "submit_conflict", "ttl", "after"}) {
    EXPECT_TRUE(has("features", feature)) << feature << " in " << answer.dump();
  }
}

TEST_P(ProtocolE2E, SimilarityRunsThroughTheDaemonAndRefusesBadVectors) {
  json submitted = Call({{"op", "submit"},
                         {"kind", "similarity"},
                         {"key", "sim"},
                         {"wait_ms", 10000},
                         {"input",
                          {{"a", {1.0, 0.0}},
                           {"b", {1.0, 1.0}},
                           {"sample", {{0.0, 1.0}, {1.0, 0.1}, {-1.0, 0.0}}}}}});
  ASSERT_EQ(submitted["status"], "done") << submitted.dump();
  const json& r = submitted["result"];
  EXPECT_NEAR(r["similarity"].get<double>(), 1.0 / std::sqrt(2.0), 1e-12) << r.dump();
  // Null: cos(a, s) = 0, 0.995, -1; the pair's 0.707 is above two of three.
  EXPECT_NEAR(r["percentile"].get<double>(), 100.0 * 2 / 3, 1e-9) << r.dump();
  EXPECT_EQ(r["rank"], 2) << r.dump();
  json bad = Call(
      {{"op", "submit"}, {"kind", "similarity"}, {"input", {{"a", {1.0, 0.0}}, {"b", {1.0}}}}});
  EXPECT_EQ(bad["ok"], false) << bad.dump();
  EXPECT_EQ(bad["error"]["code"], "bad_request") << bad.dump();
}

TEST_P(ProtocolE2E, ResultWaitsAreCountedAsHitLateOrMiss) {
  // hit: done before anyone asked.
  daemon_.SubmitNoop("game:1:ready", 0);
  ASSERT_TRUE(WaitFor([&] {
    return Call({{"op", "result"}, {"key", "game:1:ready"}})["status"] == "done";
  }));
  EXPECT_EQ(Call({{"op", "result"}, {"key", "game:1:ready"}, {"wait_ms", 5000}})["status"], "done");
  // late: done within the wait.
  daemon_.SubmitNoop("game:2:slow", 300);
  EXPECT_EQ(Call({{"op", "result"}, {"key", "game:2:slow"}, {"wait_ms", 10000}})["status"], "done");
  // miss: the wait runs out first.
  daemon_.SubmitNoop("book:1:ch1", 5000);
  EXPECT_NE(Call({{"op", "result"}, {"key", "book:1:ch1"}, {"wait_ms", 50}})["status"], "done");
  // A group wait, late: counted under "group" and the group's prefix.
  json batch = Call({{"op", "submit"},
                     {"jobs",
                      {{{"kind", "noop"},
                        {"key", "game:3:a"},
                        {"group", "game:3"},
                        {"input", {{"sleep_ms", 200}}}},
                       {{"kind", "noop"},
                        {"key", "game:3:b"},
                        {"group", "game:3"},
                        {"input", {{"sleep_ms", 250}}}}}}});
  ASSERT_EQ(batch["ok"], true) << batch.dump();
  json group = Call({{"op", "result"}, {"group", "game:3"}, {"wait_ms", 10000}});
  EXPECT_EQ(group["status"], "completed") << group.dump();
  // Not counted: no wait, and an unknown key.
  Call({{"op", "result"}, {"key", "game:1:ready"}});
  Call({{"op", "result"}, {"key", "game:404"}, {"wait_ms", 50}});

  json p = daemon_.Status()["precompute"];
  EXPECT_EQ(p["hit"], 1) << p.dump();
  EXPECT_EQ(p["late"], 2) << p.dump();
  EXPECT_EQ(p["miss"], 1) << p.dump();
  EXPECT_EQ(p["by_kind"]["noop"], json({{"hit", 1}, {"late", 1}, {"miss", 1}})) << p.dump();
  EXPECT_EQ(p["by_kind"]["group"], json({{"hit", 0}, {"late", 1}, {"miss", 0}})) << p.dump();
  EXPECT_EQ(p["by_prefix"]["game"], json({{"hit", 1}, {"late", 2}, {"miss", 0}})) << p.dump();
  EXPECT_EQ(p["by_prefix"]["book"], json({{"hit", 0}, {"late", 0}, {"miss", 1}})) << p.dump();
  Call({{"op", "cancel"}, {"key", "book:1:ch1"}});
}

TEST_P(ProtocolE2E, LineThatIsNotJsonGetsBadRequest) {
  ExpectError(SendRaw("hello digestd"), "bad_request", "JSON");
  ExpectStillServing();
}

TEST_P(ProtocolE2E, JsonThatIsNotAnObjectGetsBadRequest) {
  ExpectError(SendRaw("[\"op\", \"ping\"]"), "bad_request", "not an object");
  ExpectError(SendRaw("17"), "bad_request", "not an object");
  ExpectStillServing();
}

TEST_P(ProtocolE2E, RequestWithoutOpGetsBadRequest) {
  json answer = SendRaw(R"({"id":"no-op","key":"k"})");
  ExpectError(answer, "bad_request", "op");
  EXPECT_EQ(answer["id"], "no-op");
  ExpectStillServing();
}

TEST_P(ProtocolE2E, UnknownOpGetsUnknownOp) {
  json answer = SendRaw(R"({"op":"launch","id":4})");
  ExpectError(answer, "unknown_op", "launch");
  EXPECT_EQ(answer["id"], 4);
  ExpectStillServing();
}

TEST_P(ProtocolE2E, WrongFieldTypesGetBadRequestNamingTheField) {
  ExpectError(Call({{"op", "submit"}, {"kind", 5}}), "bad_request", "kind");
  ExpectError(Call({{"op", "result"}, {"key", "k"}, {"wait_ms", "x"}}), "bad_request", "wait_ms");
  ExpectError(Call({{"op", "result"}, {"key", 12}}), "bad_request", "key");
  ExpectError(Call({{"op", "cancel"}, {"key", json::array()}}), "bad_request", "key");
  ExpectError(Call({{"op", "workers"}, {"max", "8"}}), "bad_request", "max");
  ExpectError(Call({{"op", "submit"}, {"kind", "noop"}, {"lane", 1}}), "bad_request", "lane");
  ExpectError(Call({{"op", "submit"}, {"kind", "noop"}, {"lane", "fast"}}), "bad_request", "lane");
  ExpectError(Call({{"op", "submit"}, {"kind", "noop"}, {"input", "sleep"}}), "bad_request",
              "input");
  ExpectError(Call({{"op", "submit"}, {"kind", "noop"}, {"input", {{"sleep_ms", "10"}}}}),
              "bad_request", "sleep_ms");
  ExpectError(Call({{"op", "submit"}, {"kind", "nonesuch"}}), "bad_request", "nonesuch");
  ExpectError(Call({{"op", "submit"}, {"jobs", "all of them"}}), "bad_request", "jobs");
  ExpectError(Call({{"op", "result"}, {"key", "k"}, {"wait_ms", -5}}), "bad_request", "wait_ms");
  ExpectStillServing();
}

TEST_P(ProtocolE2E, LineOverMaxLineBytesGetsTooLargeAndTheConnectionCloses) {
  ControlClient client;
  ASSERT_TRUE(client.Connect(daemon_.SocketPath()).ok());
  std::string big = R"({"op":"ping","pad":")" + std::string(4000, 'x') + R"("})";
  ASSERT_TRUE(client.SendLine(big).ok());
  auto line = client.ReadLine(10000);
  ASSERT_TRUE(line.ok()) << line.status().ToString();
  json answer = json::parse(line.value());
  ExpectError(answer, "too_large", "max_line_bytes");
  // Then the daemon closes the connection: EOF, or a reset because the rest
  // of the oversized line was never read.
  auto after = client.ReadLine(10000);
  ASSERT_FALSE(after.ok()) << "still open, got: " << after.value();
  EXPECT_EQ(after.status().message().find("did not answer"), std::string::npos)
      << after.status().message();
  ExpectStillServing();
}

TEST_P(ProtocolE2E, InvalidUtf8GetsBadRequest) {
  ExpectError(SendRaw("{\"op\":\"ping\",\"id\":\"\xff\xfe\xfd\"}"), "bad_request", "UTF-8");
  ExpectError(SendRaw("{\"op\":\"submit\",\"kind\":\"noop\",\"key\":\"\xc3\x28\"}"), "bad_request",
              "UTF-8");
  ExpectStillServing();
}

TEST_P(ProtocolE2E, RequestArrivingOneByteAtATimeIsAnswered) {
  ControlClient client;
  ASSERT_TRUE(client.Connect(daemon_.SocketPath()).ok());
  std::string line =
      json{{"op", "submit"}, {"kind", "noop"}, {"key", "by-bytes"}, {"id", "slow"}}.dump() + "\n";
  Status st = testing::SendByteByByte(client.fd(), line);
  ASSERT_TRUE(st.ok()) << st.ToString();
  auto answer = client.ReadLine(10000);
  ASSERT_TRUE(answer.ok()) << answer.status().ToString();
  json j = json::parse(answer.value());
  EXPECT_EQ(j["ok"], true) << j.dump();
  EXPECT_EQ(j["id"], "slow");
  EXPECT_EQ(j["key"], "by-bytes");
  ExpectStillServing();
}

TEST_P(ProtocolE2E, SilentClientDoesNotDelayOthers) {
  ControlClient silent;
  ASSERT_TRUE(silent.Connect(daemon_.SocketPath()).ok());
  ControlClient half;  // says half a request and then nothing
  ASSERT_TRUE(half.Connect(daemon_.SocketPath()).ok());
  std::string partial = R"({"op":"sta)";
  ASSERT_EQ(send(half.fd(), partial.data(), partial.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(partial.size()));
  for (int i = 0; i < 5; ++i) ExpectStillServing();
  // The silent client is still connected and is served when it speaks.
  auto answer = silent.Call({{"op", "ping"}});
  ASSERT_TRUE(answer.ok()) << answer.status().ToString();
  EXPECT_EQ(answer.value()["pong"], true);
}

TEST_P(ProtocolE2E, ClientThatDisconnectsMidRequestHurtsNoOne) {
  for (int i = 0; i < 10; ++i) {
    ControlClient client;
    ASSERT_TRUE(client.Connect(daemon_.SocketPath()).ok());
    std::string partial = R"({"op":"submit","kind":"noop","key":"half-)" + std::to_string(i);
    ASSERT_EQ(send(client.fd(), partial.data(), partial.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(partial.size()));
  }  // each closes here, mid-line
  ExpectStillServing();
  // None of the half requests became a job.
  json status = Call({{"op", "status"}});
  EXPECT_EQ(status["jobs"]["submitted"], 0) << status.dump();
}

TEST_P(ProtocolE2E, ClientThatDisconnectsBeforeReadingItsAnswerHurtsNoOne) {
  for (int i = 0; i < 10; ++i) {
    ControlClient client;
    ASSERT_TRUE(client.Connect(daemon_.SocketPath()).ok());
    std::string burst;
    for (int j = 0; j < 50; ++j) burst += "{\"op\":\"status\"}\n";
    burst += R"({"op":"result","key":"never-submitted","wait_ms":5000})";
    ASSERT_TRUE(client.SendLine(burst).ok());
  }  // each closes with its answers unread
  // A client that waits for a result and leaves before it comes.
  {
    ControlClient client;
    ASSERT_TRUE(client.Connect(daemon_.SocketPath()).ok());
    json submitted =
        Call({{"op", "submit"}, {"kind", "noop"}, {"key", "slow"}, {"input", {{"sleep_ms", 300}}}});
    ASSERT_EQ(submitted["ok"], true) << submitted.dump();
    ASSERT_TRUE(client.SendLine(R"({"op":"result","key":"slow","wait_ms":10000})").ok());
  }
  ExpectStillServing();
  json done = Call({{"op", "result"}, {"key", "slow"}, {"wait_ms", 10000}});
  EXPECT_EQ(done["status"], "done") << done.dump();
  ExpectStillServing();
  // Every connection that was left behind is cleaned up.
  EXPECT_TRUE(WaitFor([&] {
    auto status = daemon_.Call({{"op", "status"}});
    return status.ok() && status.value()["control"]["clients"] == 1;  // this status call
  })) << Call({{"op", "status"}}).dump();
}

TEST_P(ProtocolE2E, ThousandConnectionsOpenedAtOnceAreAllServed) {
  constexpr int kClients = 1000;
  struct rlimit rl {};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &rl), 0);
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &rl), 0);
  }
  ASSERT_GE(rl.rlim_cur, static_cast<rlim_t>(kClients + 100)) << "not enough file descriptors";

  std::vector<std::unique_ptr<ControlClient>> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(std::make_unique<ControlClient>());
    Status st = clients.back()->Connect(daemon_.SocketPath());
    ASSERT_TRUE(st.ok()) << "client " << i << ": " << st.ToString();
  }
  for (int i = 0; i < kClients; ++i) {
    ASSERT_TRUE(clients[i]->SendLine(json{{"op", "ping"}, {"id", i}}.dump()).ok()) << i;
  }
  for (int i = 0; i < kClients; ++i) {
    auto line = clients[i]->ReadLine(10000);
    ASSERT_TRUE(line.ok()) << "client " << i << ": " << line.status().ToString();
    json answer = json::parse(line.value());
    ASSERT_EQ(answer["pong"], true) << answer.dump();
    ASSERT_EQ(answer["id"], i);
  }
  json status = Call({{"op", "status"}});
  EXPECT_EQ(status["control"]["clients"], kClients + 1) << status.dump();
  clients.clear();
  ExpectStillServing();
}

TEST_P(ProtocolE2E, PipelinedRequestsAreAnsweredInOrderWithIdsEchoed) {
  constexpr int kRequests = 300;
  ControlClient client;
  ASSERT_TRUE(client.Connect(daemon_.SocketPath()).ok());
  std::string burst;
  for (int i = 0; i < kRequests; ++i) {
    if (i > 0) burst += "\n";
    const char* op = i % 3 == 0 ? "status" : i % 3 == 1 ? "ping" : "launch";
    burst += json{{"op", op}, {"id", "r" + std::to_string(i)}}.dump();
  }
  ASSERT_TRUE(client.SendLine(burst).ok());
  for (int i = 0; i < kRequests; ++i) {
    auto line = client.ReadLine(10000);
    ASSERT_TRUE(line.ok()) << i << ": " << line.status().ToString();
    json answer = json::parse(line.value());
    ASSERT_EQ(answer["id"], "r" + std::to_string(i)) << answer.dump();
    if (i % 3 == 0) {
      ASSERT_TRUE(answer.contains("workers")) << answer.dump();
    } else if (i % 3 == 1) {
      ASSERT_EQ(answer["pong"], true) << answer.dump();
    } else {
      ASSERT_EQ(answer["error"]["code"], "unknown_op") << answer.dump();
    }
  }
}

TEST_P(ProtocolE2E, BatchSubmitAcceptsEveryJobInOneRoundTrip) {
  json jobs = json::array();
  for (int i = 0; i < 5; ++i) {
    jobs.push_back({{"kind", "noop"}, {"key", "batch-" + std::to_string(i)}, {"group", "g1"}});
  }
  json answer = Call({{"op", "submit"}, {"jobs", jobs}, {"id", "b"}});
  ASSERT_EQ(answer["ok"], true) << answer.dump();
  EXPECT_EQ(answer["id"], "b");
  EXPECT_EQ(answer["accepted"], 5);
  ASSERT_EQ(answer["jobs"].size(), 5u);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(answer["jobs"][i]["key"], "batch-" + std::to_string(i));
    EXPECT_EQ(answer["jobs"][i]["existing"], false);
  }
  json group = Call({{"op", "result"}, {"group", "g1"}, {"wait_ms", 10000}});
  EXPECT_EQ(group["status"], "completed") << group.dump();
  EXPECT_EQ(group["total"], 5);
  EXPECT_EQ(group["ready"], 5);
}

TEST_P(ProtocolE2E, BatchWithOneBadJobIsRejectedWhole) {
  json jobs = json::array({{{"kind", "noop"}, {"key", "good"}}, {{"kind", 7}, {"key", "bad"}}});
  ExpectError(Call({{"op", "submit"}, {"jobs", jobs}}), "bad_request", "jobs[1]");
  ExpectError(Call({{"op", "result"}, {"key", "good"}}), "not_found");
}

// A null key, group or lane means "absent", as the submit check says: it
// used to pass the check and then throw, answering internal after part of a
// batch was already stored (found by submit_fuzz).
TEST_P(ProtocolE2E, NullKeyGroupAndLaneAreTakenAsAbsent) {
  json one = Call({{"op", "submit"},
                   {"kind", "noop"},
                   {"key", nullptr},
                   {"group", nullptr},
                   {"lane", nullptr}});
  EXPECT_EQ(one["ok"], true) << one.dump();
  EXPECT_EQ(one["existing"], false) << one.dump();
  EXPECT_FALSE(one.value("key", std::string()).empty()) << one.dump();
  json batch = Call({{"op", "submit"},
                     {"jobs",
                      {{{"kind", "noop"}, {"key", "null-a"}},
                       {{"kind", "noop"}, {"key", nullptr}, {"input", {{"sleep_ms", 1}}}}}}});
  EXPECT_EQ(batch["ok"], true) << batch.dump();
  EXPECT_EQ(batch["accepted"], 2) << batch.dump();
  json r = Call({{"op", "result"}, {"key", "null-a"}, {"wait_ms", 10000}});
  EXPECT_EQ(r["status"], "done") << r.dump();
  ExpectStillServing();
}

TEST_P(ProtocolE2E, DuplicateKeyReturnsTheExistingJob) {
  json first = Call({{"op", "submit"}, {"kind", "noop"}, {"key", "dup"}});
  ASSERT_EQ(first["ok"], true) << first.dump();
  EXPECT_EQ(first["existing"], false);
  json second = Call({{"op", "submit"}, {"kind", "noop"}, {"key", "dup"}});
  ASSERT_EQ(second["ok"], true) << second.dump();
  EXPECT_EQ(second["existing"], true);
  EXPECT_EQ(second["key"], "dup");
  json status = Call({{"op", "status"}});
  EXPECT_EQ(status["jobs"]["submitted"], 1) << status.dump();
  EXPECT_EQ(status["jobs"]["duplicates"], 1) << status.dump();
}

TEST_P(ProtocolE2E, ResultWithWaitMsWaitsForANoopJob) {
  json submitted = Call({{"op", "submit"},
                         {"kind", "noop"},
                         {"key", "wait-me"},
                         {"lane", "interactive"},
                         {"input", {{"sleep_ms", 300}}}});
  ASSERT_EQ(submitted["ok"], true) << submitted.dump();
  json result = Call({{"op", "result"}, {"key", "wait-me"}, {"wait_ms", 10000}, {"id", 3}});
  EXPECT_EQ(result["ok"], true) << result.dump();
  EXPECT_EQ(result["id"], 3);
  EXPECT_EQ(result["status"], "done") << result.dump();
  EXPECT_EQ(result["result"]["slept_ms"], 300) << result.dump();
  EXPECT_EQ(result["lane"], "interactive");
}

TEST_P(ProtocolE2E, ResultOfAnUnknownKeyIsNotFound) {
  ExpectError(Call({{"op", "result"}, {"key", "nobody"}, {"wait_ms", 100}}), "not_found", "nobody");
  ExpectError(Call({{"op", "result"}}), "bad_request", "key");
}

// One request line of 80,000 nested objects used to kill the daemon
// (SIGSEGV in a recursive walk of the parsed value). With the shipped
// max_line_bytes it reaches the parser whole, is refused, and every other
// client is still served.
class ProtocolE2EHostile : public ::testing::TestWithParam<const char*> {};
INSTANTIATE_TEST_SUITE_P(Stores, ProtocolE2EHostile, ::testing::ValuesIn(testing::kStores),
                         testing::StoreName);

TEST_P(ProtocolE2EHostile, DeeplyNestedRequestGetsBadRequestAndTheDaemonLives) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.store = GetParam(),
                            .config = "[backend]\nkind = \"ollama\"\n"
                                      "url = \"http://127.0.0.1:9\"\n"}));
  std::string deep;
  for (int i = 0; i < 80000; ++i) deep += "{\"a\":";
  deep += "1" + std::string(80000, '}');
  for (const char* kind : {"generate", "noop"}) {
    ControlClient client;
    ASSERT_TRUE(client.Connect(daemon.SocketPath()).ok());
    std::string line = std::string(R"({"op":"submit","id":"deep","kind":")") + kind +
                       R"(","key":"x","input":{"prompt":"x","format":)" + deep + "}}";
    ASSERT_TRUE(client.SendLine(line).ok());
    auto answer = client.ReadLine(20000);
    ASSERT_TRUE(answer.ok()) << answer.status().ToString() << "\n" << daemon.StderrText();
    json j = json::parse(answer.value());
    ExpectError(j, "bad_request", "deeper than 64 levels");
  }
  auto ping = daemon.Call({{"op", "ping"}});
  ASSERT_TRUE(ping.ok()) << ping.status().ToString() << "\n" << daemon.StderrText();
  EXPECT_EQ(ping.value()["pong"], true);
  auto missing = daemon.Call({{"op", "result"}, {"key", "x"}});
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ(testing::ErrorCode(missing.value()), "not_found") << missing.value().dump();
  EXPECT_TRUE(daemon.Stop());
}

// A batch that stored nothing must not read as a success to a client that
// checks only "ok" (it used to answer ok:true, accepted:0).
// Memory only: a lane that is full refuses jobs there, while with PostgreSQL
// the backlog waits in the table and a batch is refused only as a whole
// (the database unreachable), which durable_e2e_test covers.
class ProtocolE2EBatch : public ::testing::TestWithParam<const char*> {};
INSTANTIATE_TEST_SUITE_P(Memory, ProtocolE2EBatch, ::testing::Values("memory"), testing::StoreName);

TEST_P(ProtocolE2EBatch, ABatchWithNoJobAcceptedIsAnErrorListingEveryJob) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.store = GetParam(),
                            .config = "[workers]\nmin = 1\nmax = 1\ninteractive_reserved = 0\n"
                                      "[queues]\nbackground = 2\n"}));
  auto call = [&](const json& request) { return Answer(daemon, request); };
  daemon.SubmitNoop("blocker", 60000);
  ASSERT_TRUE(WaitFor([&] { return daemon.Status()["jobs"]["running"] == 1; }));
  json fill = call({{"op", "submit"},
                    {"jobs",
                     {{{"kind", "noop"}, {"key", "q1"}},
                      {{"kind", "noop"}, {"key", "q2"}},
                      {{"kind", "noop"}, {"key", "q3"}}}}});
  EXPECT_EQ(fill["ok"], true) << fill.dump();
  EXPECT_EQ(fill["accepted"], 2) << fill.dump();
  EXPECT_EQ(fill["failed"], 1) << fill.dump();
  EXPECT_EQ(fill["jobs"][2]["error"]["code"], "queue_full") << fill.dump();

  json none =
      call({{"op", "submit"},
            {"id", "b2"},
            {"jobs", {{{"kind", "noop"}, {"key", "r1"}}, {{"kind", "noop"}, {"key", "r2"}}}}});
  ExpectError(none, "queue_full", "none of the 2 jobs was accepted");
  EXPECT_EQ(none["id"], "b2");
  EXPECT_EQ(none["accepted"], 0) << none.dump();
  EXPECT_EQ(none["failed"], 2) << none.dump();
  ASSERT_EQ(none["jobs"].size(), 2u) << none.dump();
  EXPECT_EQ(none["jobs"][1]["key"], "r2");
  EXPECT_EQ(none["jobs"][1]["error"]["code"], "queue_full");
  EXPECT_EQ(testing::ErrorCode(call({{"op", "result"}, {"key", "r1"}})), "not_found");
  EXPECT_EQ(call({{"op", "cancel"}, {"key", "blocker"}})["ok"], true);
  EXPECT_TRUE(daemon.Stop());
}

class ProtocolE2ECancel : public ::testing::TestWithParam<const char*> {};
INSTANTIATE_TEST_SUITE_P(Stores, ProtocolE2ECancel, ::testing::ValuesIn(testing::kStores),
                         testing::StoreName);

TEST_P(ProtocolE2ECancel, CancelOfAQueuedJob) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start(
      {.store = GetParam(), .config = "[workers]\nmin = 1\nmax = 1\ninteractive_reserved = 0\n"}));
  auto call = [&](const json& request) { return Answer(daemon, request); };
  daemon.SubmitNoop("blocker", 60000);
  ASSERT_TRUE(WaitFor([&] { return daemon.Status()["jobs"]["running"] == 1; }));
  json victim = call({{"op", "submit"}, {"kind", "noop"}, {"key", "victim"}});
  // With PostgreSQL a submit to an idle lane is inserted already claimed by
  // this node, so its row reads running while it waits in this node's ring.
  ASSERT_TRUE(victim["status"] == "queued" ||
              (std::string(GetParam()) == "postgres" && victim["status"] == "running"))
      << victim.dump();

  json cancelled = call({{"op", "cancel"}, {"key", "victim"}, {"id", "c1"}});
  EXPECT_EQ(cancelled["ok"], true) << cancelled.dump();
  EXPECT_EQ(cancelled["id"], "c1");
  EXPECT_EQ(cancelled["cancelled"], true);
  EXPECT_EQ(cancelled["status"], "cancelled");
  EXPECT_EQ(call({{"op", "result"}, {"key", "victim"}})["status"], "cancelled");
  ExpectError(call({{"op", "cancel"}, {"key", "no-such-job"}}), "not_found", "no-such-job");

  // Cancelling the running one stops it early.
  json stop = call({{"op", "cancel"}, {"key", "blocker"}});
  EXPECT_EQ(stop["cancelled"], true) << stop.dump();
  json blocker = call({{"op", "result"}, {"key", "blocker"}, {"wait_ms", 10000}});
  EXPECT_EQ(blocker["status"], "cancelled") << blocker.dump();
  json status = call({{"op", "status"}});
  EXPECT_EQ(status["jobs"]["cancelled"], 2) << status.dump();
  EXPECT_EQ(status["jobs"]["done"], 0) << status.dump();
  EXPECT_TRUE(daemon.Stop());
}

// Runs `requests` on the daemon's socket from a forked child running as
// `uid`; returns the answer lines (or what went wrong in the child).
std::vector<std::string> CallAsUser(uid_t uid, const std::string& socket_path,
                                    const std::vector<json>& requests) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return {"pipe failed"};
  pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    std::string out;
    if (setgroups(0, nullptr) != 0 || setgid(uid) != 0 || setuid(uid) != 0) {
      out = "setuid failed\n";
    } else {
      ControlClient client;
      Status st = client.Connect(socket_path);
      if (!st.ok()) out = "connect: " + st.message() + "\n";
      for (size_t i = 0; st.ok() && i < requests.size(); ++i) {
        st = client.SendLine(requests[i].dump());
        if (!st.ok()) {
          out += "send: " + st.message() + "\n";
          break;
        }
        auto line = client.ReadLine(10000);
        out += (line.ok() ? line.value() : "read: " + line.status().message()) + "\n";
      }
    }
    ssize_t ignored = write(fds[1], out.data(), out.size());
    (void)ignored;
    _exit(0);
  }
  close(fds[1]);
  std::string all;
  char buf[4096];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof(buf))) > 0) all.append(buf, static_cast<size_t>(n));
  close(fds[0]);
  waitpid(pid, nullptr, 0);
  std::vector<std::string> lines = testing::SplitLines(all);
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  return lines;
}

TEST(ProtocolE2EAllowList, MutatingOpsAreForbiddenToUidsOutsideTheAllowList) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run a client as another uid";
  constexpr uid_t kNobody = 65534;
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.config = "[control]\nmode = \"0666\"\nallow_uids = [12345]\n"}));
  // Let the other uid reach the socket inside the daemon's temp dir.
  ASSERT_EQ(chmod(daemon.dir().path().c_str(), 0755), 0);

  auto lines = CallAsUser(kNobody, daemon.SocketPath(),
                          {{{"op", "submit"}, {"kind", "noop"}, {"key", "sneaky"}, {"id", 1}},
                           {{"op", "workers"}, {"max", 2}},
                           {{"op", "drain"}},
                           {{"op", "retry"}, {"key", "k"}},
                           {{"op", "delete"}, {"group", "g"}},
                           {{"op", "ping"}, {"id", 2}},
                           {{"op", "status"}},
                           {{"op", "workers"}},
                           {{"op", "jobs"}}});
  ASSERT_EQ(lines.size(), 9u) << ::testing::PrintToString(lines);
  for (int i = 0; i < 5; ++i) {
    json answer = json::parse(lines[i], nullptr, false);
    ASSERT_TRUE(answer.is_object()) << lines[i];
    ExpectError(answer, "forbidden", "allow_uids");
  }
  EXPECT_EQ(json::parse(lines[0])["id"], 1);
  // Read-only ops stay open to anyone who can reach the socket.
  json ping = json::parse(lines[5], nullptr, false);
  EXPECT_EQ(ping["pong"], true) << lines[5];
  json status = json::parse(lines[6], nullptr, false);
  EXPECT_EQ(status["ok"], true) << lines[6];
  // "workers" without a bound only reads the limits.
  json workers = json::parse(lines[7], nullptr, false);
  EXPECT_EQ(workers["ok"], true) << lines[7];
  EXPECT_TRUE(workers.contains("limit")) << lines[7];
  json jobs = json::parse(lines[8], nullptr, false);
  EXPECT_EQ(jobs["ok"], true) << lines[8];

  // Nothing the forbidden client asked for happened.
  auto check = daemon.Call({{"op", "status"}});
  ASSERT_TRUE(check.ok());
  EXPECT_EQ(check.value()["jobs"]["submitted"], 0);
  EXPECT_EQ(check.value()["state"], "running");
  EXPECT_NE(check.value()["workers"]["max"], 2);
  // root is always allowed.
  auto mine = daemon.Call({{"op", "submit"}, {"kind", "noop"}, {"key", "mine"}});
  ASSERT_TRUE(mine.ok());
  EXPECT_EQ(mine.value()["ok"], true) << mine.value().dump();
  EXPECT_TRUE(daemon.Stop());
}

}  // namespace
}  // namespace digestd
