// Tests of the fake Ollama server itself (tests/support/fake_ollama), driven
// over real HTTP with blocking libcurl. Ordering-sensitive tests wait on the
// fake's own counters (WaitFor), never on sleeps.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <curl/curl.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "../support/wait.h"
#include "fake_ollama.h"
#include "fake_process.h"

namespace {

using digestd::testing::FakeOllama;
using digestd::testing::FakeScheduler;
using digestd::testing::FakeStats;
using digestd::testing::FakeText;
using digestd::testing::WaitFor;
using nlohmann::json;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr const char* kBusyBody =
    R"({"error":"server busy, please try again.  maximum pending requests exceeded"})";

const bool kCurlReady = [] { return curl_global_init(CURL_GLOBAL_ALL) == CURLE_OK; }();

struct Response {
  CURLcode code = CURLE_OK;
  long status = 0;
  std::string body;
  std::string content_type;

  json Json() const { return json::parse(body); }
  std::vector<json> Lines() const {
    std::vector<json> lines;
    std::size_t start = 0;
    for (std::size_t nl; (nl = body.find('\n', start)) != std::string::npos; start = nl + 1) {
      lines.push_back(json::parse(body.substr(start, nl - start)));
    }
    return lines;
  }
};

// One curl easy handle; it keeps its connection alive between requests.
class Client {
 public:
  // Sees everything received so far; returning false hangs up.
  using OnData = std::function<bool(const std::string&)>;

  Client() : curl_(curl_easy_init()) {}
  ~Client() { curl_easy_cleanup(curl_); }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  Response Do(const std::string& method, const std::string& url, const std::string& body = "",
              long timeout_ms = 20000, OnData on_data = {}) {
    Response r;
    Sink sink{&r.body, &on_data};
    curl_easy_reset(curl_);  // keeps the connection cache
    curl_easy_setopt(curl_, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl_, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl_, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(curl_, CURLOPT_WRITEFUNCTION, &Client::Write);
    curl_easy_setopt(curl_, CURLOPT_WRITEDATA, &sink);
    curl_slist* headers = curl_slist_append(nullptr, "Content-Type: application/json");
    headers = curl_slist_append(headers, "Expect:");
    curl_easy_setopt(curl_, CURLOPT_HTTPHEADER, headers);
    if (method == "HEAD") {
      curl_easy_setopt(curl_, CURLOPT_NOBODY, 1L);
    } else if (method == "POST") {
      curl_easy_setopt(curl_, CURLOPT_POSTFIELDS, body.data());
      curl_easy_setopt(curl_, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
    }
    r.code = curl_easy_perform(curl_);
    curl_easy_getinfo(curl_, CURLINFO_RESPONSE_CODE, &r.status);
    char* type = nullptr;
    curl_easy_getinfo(curl_, CURLINFO_CONTENT_TYPE, &type);
    if (type != nullptr) r.content_type = type;
    curl_slist_free_all(headers);
    return r;
  }

 private:
  struct Sink {
    std::string* body;
    OnData* on_data;
  };
  static size_t Write(char* data, size_t size, size_t n, void* user) {
    auto* sink = static_cast<Sink*>(user);
    sink->body->append(data, size * n);
    if (*sink->on_data && !(*sink->on_data)(*sink->body)) return 0;
    return size * n;
  }

  CURL* curl_;
};

std::size_t CountLines(const std::string& s) {
  return std::count(s.begin(), s.end(), '\n');
}

constexpr int64_t kMs = 1'000'000;  // nanoseconds, Ollama's duration unit

// A duration field of a final chunk in ns; 0 when absent (Ollama omits zeros).
int64_t Ns(const json& j, const char* key) {
  return j.value(key, int64_t{0});
}

// What a client reads as the time the request waited at the server.
int64_t UnaccountedNs(const json& j) {
  return Ns(j, "total_duration") - Ns(j, "load_duration") - Ns(j, "prompt_eval_duration") -
         Ns(j, "eval_duration");
}

// Points into `s`, which must outlive the pointer (never a temporary).
const FakeScheduler::ModelStats* StatsOf(const FakeStats& s, const std::string& model) {
  for (const FakeScheduler::ModelStats& m : s.models) {
    if (m.name == model) return &m;
  }
  return nullptr;
}
const FakeScheduler::ModelStats* StatsOf(FakeStats&& s, const std::string& model) = delete;

class FakeOllamaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(kCurlReady);
    ASSERT_NE(fake_.Start(0), 0) << fake_.last_error();
    url_ = fake_.base_url();
  }
  void TearDown() override { fake_.Stop(); }

  void Configure(const json& patch) { ASSERT_EQ(fake_.MergeSettings(patch), ""); }
  Response Post(const std::string& path, const json& body, long timeout_ms = 20000) {
    return Client().Do("POST", url_ + path, body.dump(), timeout_ms);
  }
  Response PostRaw(const std::string& path, const std::string& body) {
    return Client().Do("POST", url_ + path, body);
  }
  Response Get(const std::string& path) { return Client().Do("GET", url_ + path); }
  // POST /api/generate for llama3.2 with prompt "x", plus the fields of `extra`.
  Response Generate(json extra = json::object(), long timeout_ms = 20000) {
    json body = {{"model", "llama3.2"}, {"prompt", "x"}};
    body.update(extra);
    return Post("/api/generate", body, timeout_ms);
  }
  // Streams Generate() through `on_data` (which may hang up).
  Response GenerateStream(Client::OnData on_data, long timeout_ms = 60000) {
    return Client().Do("POST", url_ + "/api/generate", R"({"model":"llama3.2","prompt":"x"})",
                       timeout_ms, std::move(on_data));
  }

  FakeOllama fake_;
  std::string url_;
};

TEST_F(FakeOllamaTest, ServesRootVersionTagsAndPs) {
  Response root = Get("/");
  EXPECT_EQ(root.status, 200);
  EXPECT_EQ(root.body, "Ollama is running");
  EXPECT_EQ(Client().Do("HEAD", url_ + "/").status, 200);
  EXPECT_EQ(Get("/api/version").body, R"({"version":"0.12.6"})");
  json tags = Get("/api/tags").Json();
  ASSERT_EQ(tags["models"].size(), 2u);
  EXPECT_EQ(tags["models"][0]["name"], "llama3.2:latest");
  EXPECT_EQ(tags["models"][0]["details"]["format"], "gguf");
  EXPECT_EQ(Get("/api/ps").Json()["models"].size(), 0u);
  EXPECT_EQ(Post("/api/generate", {{"model", "llama3.2"}, {"prompt", "hi"}}).status, 200);
  json ps = Get("/api/ps").Json();
  ASSERT_EQ(ps["models"].size(), 1u);
  EXPECT_EQ(ps["models"][0]["model"], "llama3.2:latest");
  EXPECT_EQ(ps["models"][0]["context_length"], 4096);
  Response missing = Get("/api/nothing");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(missing.body, "404 page not found");
}

TEST_F(FakeOllamaTest, CountsGenerationRequestsPerPromptFaultsIncluded) {
  EXPECT_EQ(Post("/api/generate", {{"model", "llama3.2"}, {"prompt", "p1"}}).status, 200);
  Configure({{"fail_next", {{{"status", 500}, {"body", {{"error", "boom"}}}}}}});
  EXPECT_EQ(Post("/api/generate", {{"model", "llama3.2"}, {"prompt", "p1"}}).status, 500);
  json messages = {{{"role", "system"}, {"content", "s"}}, {{"role", "user"}, {"content", "p2"}}};
  EXPECT_EQ(Post("/api/chat", {{"model", "llama3.2"}, {"messages", messages}}).status, 200);
  EXPECT_EQ(Post("/api/generate", {{"model", "llama3.2"}}).status, 200);  // a load: not counted
  json counts = Get("/_fake/prompts").Json();
  EXPECT_EQ(counts, json({{"p1", 2}, {"p2", 1}})) << counts.dump();
  EXPECT_EQ(fake_.PromptCounts().size(), 2u);
  fake_.Reset();
  EXPECT_TRUE(fake_.PromptCounts().empty());
}

TEST_F(FakeOllamaTest, StreamingGenerateSendsTokenLinesThenDoneWithMetrics) {
  const std::string prompt = "Summarize: the quick brown fox jumps";
  Response r = Post("/api/generate", {{"model", "llama3.2"}, {"prompt", prompt}, {"think", false}});
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.content_type, "application/x-ndjson");
  EXPECT_EQ(r.body.rfind(R"({"model":"llama3.2","created_at":")", 0), 0u) << r.body;
  std::vector<json> lines = r.Lines();
  ASSERT_EQ(lines.size(), 9u);
  std::string text;
  for (std::size_t i = 0; i + 1 < lines.size(); ++i) {
    EXPECT_EQ(lines[i]["done"], false);
    EXPECT_EQ(lines[i]["model"], "llama3.2");
    EXPECT_EQ(lines[i]["created_at"].get<std::string>().back(), 'Z');
    EXPECT_FALSE(lines[i].contains("eval_count"));
    text += lines[i]["response"].get<std::string>();
  }
  const json& last = lines.back();
  EXPECT_EQ(last["done"], true);
  EXPECT_EQ(last["done_reason"], "stop");
  EXPECT_EQ(last["response"], "");
  EXPECT_EQ(last["eval_count"], 8);
  EXPECT_EQ(last["prompt_eval_count"], 6);
  EXPECT_GT(last["total_duration"].get<int64_t>(), 0);
  EXPECT_GT(last["eval_duration"].get<int64_t>(), 0);
  EXPECT_FALSE(last.contains("load_duration"));  // load_ms 0: omitted, not 0
  EXPECT_EQ(last["context"].size(), 6u + 8u);
  EXPECT_EQ(text, FakeText(prompt, 8));
  EXPECT_EQ(text.rfind("Summary of Summarize: the quick —", 0), 0u) << text;
}

TEST_F(FakeOllamaTest, NonStreamingGenerateReturnsOneObject) {
  Response r =
      Post("/api/generate", {{"model", "llama3.2:latest"}, {"prompt", "a b"}, {"stream", false}});
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.content_type, "application/json; charset=utf-8");
  json j = r.Json();
  EXPECT_EQ(j["model"], "llama3.2:latest");
  EXPECT_EQ(j["response"], FakeText("a b", 8));
  EXPECT_EQ(j["done"], true);
  EXPECT_TRUE(j["context"].is_array());
}

TEST_F(FakeOllamaTest, NumPredictBelowTokensStopsWithLength) {
  Configure({{"tokens", 10}});
  Response r = Generate({{"options", {{"num_predict", 3}}}});
  std::vector<json> lines = r.Lines();
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines.back()["done_reason"], "length");
  EXPECT_EQ(lines.back()["eval_count"], 3);
}

TEST_F(FakeOllamaTest, ChatStreamsAssistantMessages) {
  json messages = json::array({{{"role", "system"}, {"content", "be brief"}},
                               {{"role", "user"}, {"content", "digest this mail"}}});
  std::vector<json> lines =
      Post("/api/chat", {{"model", "llama3.2"}, {"messages", messages}}).Lines();
  ASSERT_EQ(lines.size(), 9u);
  std::string text;
  for (std::size_t i = 0; i + 1 < lines.size(); ++i) {
    EXPECT_EQ(lines[i]["message"]["role"], "assistant");
    EXPECT_FALSE(lines[i].contains("response"));
    text += lines[i]["message"]["content"].get<std::string>();
  }
  EXPECT_EQ(text, FakeText("digest this mail", 8));
  EXPECT_EQ(lines.back()["message"]["content"], "");
  EXPECT_EQ(lines.back()["done_reason"], "stop");
  EXPECT_FALSE(lines.back().contains("context"));

  json whole =
      Post("/api/chat", {{"model", "llama3.2"}, {"messages", messages}, {"stream", false}}).Json();
  EXPECT_EQ(whole["message"]["content"], text);
}

TEST_F(FakeOllamaTest, EmptyPromptOrMessagesLoadsTheModel) {
  Configure({{"load_ms", 50}});
  json g = Post("/api/generate", {{"model", "llama3.2"}}).Json();  // stream defaults to true
  EXPECT_EQ(g["done_reason"], "load");
  EXPECT_EQ(g["response"], "");
  EXPECT_EQ(fake_.GetStats().loads, 1u);
  json c = Post("/api/chat", {{"model", "llama3.2"}, {"messages", json::array()}}).Json();
  EXPECT_EQ(c["done_reason"], "load");
  EXPECT_EQ(c["message"]["role"], "assistant");
  json u = Post("/api/generate", {{"model", "llama3.2"}, {"keep_alive", 0}}).Json();
  EXPECT_EQ(u["done_reason"], "unload");
  EXPECT_EQ(Get("/api/ps").Json()["models"].size(), 0u);
}

TEST_F(FakeOllamaTest, LoadIsPaidOnceAndAgainWhenNumCtxChanges) {
  Configure({{"load_ms", 100}});
  json body = {{"model", "llama3.2"}, {"prompt", "x"}, {"stream", false}};
  json first = Post("/api/generate", body).Json();
  EXPECT_GE(first["load_duration"].get<int64_t>(), 100'000'000);
  json second = Post("/api/generate", body).Json();
  EXPECT_FALSE(second.contains("load_duration"));
  body["options"] = {{"num_ctx", 8192}};
  EXPECT_TRUE(Post("/api/generate", body).Json().contains("load_duration"));
  EXPECT_EQ(fake_.GetStats().loads, 2u);
  EXPECT_EQ(Get("/api/ps").Json()["models"][0]["context_length"], 8192);
}

TEST_F(FakeOllamaTest, EmbedReturnsDeterministicNormalisedVectors) {
  json r =
      Post("/api/embed", {{"model", "nomic-embed-text"}, {"input", {"a b", "c", "a b"}}}).Json();
  ASSERT_EQ(r["embeddings"].size(), 3u);
  EXPECT_EQ(r["model"], "nomic-embed-text");
  EXPECT_EQ(r["prompt_eval_count"], 5);
  for (const json& v : r["embeddings"]) {
    ASSERT_EQ(v.size(), 8u);
    double norm = 0;
    for (const json& x : v) norm += x.get<double>() * x.get<double>();
    EXPECT_NEAR(std::sqrt(norm), 1.0, 1e-5);
  }
  EXPECT_EQ(r["embeddings"][0], r["embeddings"][2]);
  EXPECT_NE(r["embeddings"][0], r["embeddings"][1]);
  json single = Post("/api/embed", {{"model", "nomic-embed-text"}, {"input", "c"}}).Json();
  EXPECT_EQ(single["embeddings"][0], r["embeddings"][1]);
  json legacy = Post("/api/embeddings", {{"model", "nomic-embed-text"}, {"prompt", "c"}}).Json();
  ASSERT_EQ(legacy["embedding"].size(), 8u);
  EXPECT_NEAR(legacy["embedding"][3].get<double>(), r["embeddings"][1][3].get<double>(), 1e-6);
  json cut =
      Post("/api/embed", {{"model", "nomic-embed-text"}, {"input", "c"}, {"dimensions", 4}}).Json();
  EXPECT_EQ(cut["embeddings"][0].size(), 4u);
  json empty = Post("/api/embed", {{"model", "nomic-embed-text"}, {"input", ""}}).Json();
  EXPECT_EQ(empty.dump(), R"({"embeddings":[],"model":"nomic-embed-text"})");
}

TEST_F(FakeOllamaTest, UnknownModelWordingDependsOnEndpoint) {
  auto error_of = [&](const std::string& path, const json& body, long status) {
    Response r = Post(path, body);
    EXPECT_EQ(r.status, status) << path << " " << body.dump();
    return r.body;
  };
  EXPECT_EQ(error_of("/api/generate", {{"model", "nope"}, {"prompt", "x"}}, 404),
            R"({"error":"model 'nope' not found"})");
  EXPECT_EQ(error_of("/api/chat", {{"model", "nope"}}, 404),
            R"({"error":"model 'nope' not found"})");
  EXPECT_EQ(error_of("/api/embed", {{"model", "nope"}, {"input", "x"}}, 404),
            R"({"error":"model \"nope\" not found, try pulling it first"})");
  EXPECT_EQ(error_of("/api/embeddings", {{"model", "nope"}}, 404),
            R"({"error":"model \"nope\" not found, try pulling it first"})");
  EXPECT_EQ(error_of("/api/generate", json::object(), 404), R"({"error":"model '' not found"})");
  EXPECT_EQ(error_of("/api/embed", json::object(), 404), R"({"error":"model '' not found"})");
  EXPECT_EQ(error_of("/api/chat", json::object(), 400), R"({"error":"model is required"})");
  EXPECT_EQ(error_of("/api/embeddings", json::object(), 400), R"({"error":"model is required"})");
  EXPECT_EQ(error_of("/api/generate", {{"model", "nomic-embed-text"}, {"prompt", "x"}}, 400),
            R"({"error":"\"nomic-embed-text\" does not support generate"})");
}

TEST_F(FakeOllamaTest, BadRequestsGetOllamaErrors) {
  for (const char* path : {"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"}) {
    Response r = PostRaw(path, "");
    EXPECT_EQ(r.status, 400) << path;
    EXPECT_EQ(r.body, R"({"error":"missing request body"})") << path;
  }
  EXPECT_EQ(PostRaw("/api/generate", "x").body,
            R"({"error":"invalid character 'x' looking for beginning of value"})");
  EXPECT_EQ(PostRaw("/api/generate", R"({"model":"llama3.2","stream":"yes"})").body,
            R"({"error":"json: cannot unmarshal string into Go struct field )"
            R"(GenerateRequest.stream of type bool"})");
  Response bad_input = Post("/api/embed", {{"model", "nomic-embed-text"}, {"input", 5}});
  EXPECT_EQ(bad_input.status, 400);
  EXPECT_EQ(bad_input.body, R"({"error":"invalid input type"})");
  Response keep = Generate({{"keep_alive", "3600"}});
  EXPECT_EQ(keep.status, 400);
  EXPECT_EQ(keep.Json()["error"], "time: missing unit in duration \"3600\"");
  Response opt = Generate({{"options", {{"num_ctx", "big"}}}});
  EXPECT_EQ(opt.status, 500);
  EXPECT_EQ(opt.Json()["error"], "option \"num_ctx\" must be of type integer");
  EXPECT_EQ(Generate({{"think", "huge"}}).status, 400);
  EXPECT_EQ(Generate({{"think", "high"}}).status, 200);
}

TEST_F(FakeOllamaTest, ParallelSlotsBoundConcurrency) {
  Configure({{"parallel", 2}, {"latency_ms", 400}});
  // The model loaded first: requests that arrive while it loads all wait
  // (queued), however many slots it will have.
  json warm = {{"model", "llama3.2"}, {"prompt", "warm"}, {"stream", false}};
  ASSERT_EQ(Client().Do("POST", url_ + "/api/generate", warm.dump()).status, 200);
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int i = 0; i < 4; ++i) {
    clients.emplace_back([&, i] {
      json body = {{"model", "llama3.2"}, {"prompt", "p" + std::to_string(i)}, {"stream", false}};
      if (Client().Do("POST", url_ + "/api/generate", body.dump()).status == 200) ++ok;
    });
  }
  EXPECT_TRUE(WaitFor([&] {
    FakeStats s = fake_.GetStats();
    return s.in_flight == 2 && s.queued == 2;
  }));
  for (std::thread& t : clients) t.join();
  FakeStats s = fake_.GetStats();
  EXPECT_EQ(ok.load(), 4);
  EXPECT_EQ(s.max_in_flight_observed, 2);
  EXPECT_EQ(s.max_queued_observed, 2);
  EXPECT_EQ(s.in_flight, 0);
  EXPECT_EQ(s.requests_by_path["/api/generate"], 5u);
}

TEST(FakeSchedulerTest, SlotsAreHandedOutInArrivalOrder) {
  FakeScheduler sched;
  sched.SetLimits({1, 1, {}, 10});
  auto never = [] { return false; };
  ASSERT_EQ(sched.Admit("m", 0, 0, true, never).outcome, FakeScheduler::Outcome::kAdmitted);
  std::vector<int> order;
  std::mutex mu;
  std::vector<std::thread> waiters;
  for (int i = 0; i < 3; ++i) {
    waiters.emplace_back([&, i] {
      EXPECT_EQ(sched.Admit("m", 0, 0, true, never).outcome, FakeScheduler::Outcome::kAdmitted);
      {
        std::lock_guard l(mu);
        order.push_back(i);
      }
      sched.Finish("m", true, -1);
    });
    ASSERT_TRUE(WaitFor([&] { return sched.GetSnapshot().queued == i + 1; }));
  }
  sched.Finish("m", true, -1);
  for (std::thread& t : waiters) t.join();
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2}));
  EXPECT_EQ(sched.GetSnapshot().max_in_flight_observed, 1);
}

TEST_F(FakeOllamaTest, FullQueueGets503AndStopIsPrompt) {
  Configure({{"parallel", 1}, {"max_queue", 1}, {"latency_ms", 60000}});
  std::thread holder([&] { Generate(); });
  ASSERT_TRUE(WaitFor([&] { return fake_.GetStats().in_flight == 1; }));
  std::thread waiter([&] { Generate(); });
  ASSERT_TRUE(WaitFor([&] { return fake_.GetStats().queued == 1; }));
  Response r = Generate();
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.body, kBusyBody);
  EXPECT_EQ(fake_.GetStats().rejected_503, 1u);
  const Clock::time_point t0 = Clock::now();
  fake_.Stop();
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(5));
  holder.join();
  waiter.join();
  ASSERT_NE(fake_.Start(0), 0) << fake_.last_error();  // restartable after Stop()
  EXPECT_EQ(Client().Do("GET", fake_.base_url() + "/").status, 200);
  EXPECT_EQ(fake_.GetStats().in_flight, 0);
}

TEST_F(FakeOllamaTest, NoHeadersUntilTheFirstChunkExists) {
  Configure({{"latency_ms", 1500}});
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(fake_.port()));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  const std::string body = R"({"model":"llama3.2","prompt":"x"})";
  const std::string req = "POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: " +
                          std::to_string(body.size()) + "\r\n\r\n" + body;
  ASSERT_EQ(send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  pollfd p{fd, POLLIN, 0};
  EXPECT_EQ(poll(&p, 1, 500), 0) << "bytes arrived before the first chunk existed";
  ASSERT_EQ(poll(&p, 1, 10000), 1);
  char buf[64] = {};
  ASSERT_GT(recv(fd, buf, sizeof(buf) - 1, 0), 0);
  EXPECT_EQ(std::string(buf).rfind("HTTP/1.1 200", 0), 0u) << buf;
  close(fd);
}

TEST_F(FakeOllamaTest, DisconnectMidStreamFreesTheSlot) {
  Configure({{"tokens", 1000}, {"token_ms", 10}});
  Response r = GenerateStream([](const std::string& got) { return CountLines(got) < 2; });
  EXPECT_EQ(r.code, CURLE_WRITE_ERROR);
  EXPECT_TRUE(WaitFor([&] {
    FakeStats s = fake_.GetStats();
    return s.in_flight == 0 && s.disconnects == 1 && s.aborted_by_client == 1;
  }));
  EXPECT_EQ(fake_.GetStats().abandoned_waiting, 0u);
  Configure({{"tokens", 2}, {"token_ms", 0}});
  EXPECT_EQ(Post("/api/generate", {{"model", "llama3.2"}, {"prompt", "y"}}, 5000).Lines().size(),
            3u);
}

TEST_F(FakeOllamaTest, TimedOutWaiterIsCountedAsDisconnect) {
  Configure({{"latency_ms", 60000}});
  std::thread holder([&] { Generate(); });
  ASSERT_TRUE(WaitFor([&] { return fake_.GetStats().in_flight == 1; }));
  Response r = Post("/api/generate", {{"model", "llama3.2"}, {"prompt", "y"}}, 300);
  EXPECT_EQ(r.code, CURLE_OPERATION_TIMEDOUT);
  EXPECT_TRUE(WaitFor([&] {
    FakeStats s = fake_.GetStats();
    return s.queued == 0 && s.disconnects == 1 && s.abandoned_waiting == 1;
  }));
  fake_.Stop();
  holder.join();
  // The holder was woken by the stop, not by its client: no abort counted.
  EXPECT_EQ(fake_.GetStats().aborted_by_client, 0u);
}

TEST_F(FakeOllamaTest, KeepAliveReusesOneConnection) {
  fake_.Reset();
  Client c;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(c.Do("POST", url_ + "/api/generate", R"({"model":"llama3.2","prompt":"x"})").status,
              200);
  }
  EXPECT_EQ(c.Do("GET", url_ + "/api/version").status, 200);
  FakeStats s = fake_.GetStats();
  EXPECT_EQ(s.connections_accepted, 1u);
  EXPECT_EQ(s.requests_total, 4u);
}

TEST_F(FakeOllamaTest, FailNextAnswersCannedFailuresInOrder) {
  Configure({{"fail_next",
              {{{"status", 503}, {"body", R"({"error":"model is overloaded"})"}},
               {{"status", 502}, {"body", "<html>bad gateway</html>"}},
               {{"status", 429},
                {"body", {{"error", "rate limit exceeded"}}},
                {"path", "/api/embed"}}}}});
  json body = {{"model", "llama3.2"}, {"prompt", "x"}};
  Response first = Post("/api/generate", body);
  EXPECT_EQ(first.status, 503);
  EXPECT_EQ(first.body, R"({"error":"model is overloaded"})");
  Response second = Post("/api/chat", {{"model", "llama3.2"}, {"messages", {{{"role", "user"}}}}});
  EXPECT_EQ(second.status, 502);
  EXPECT_EQ(second.body, "<html>bad gateway</html>");
  EXPECT_EQ(second.content_type, "text/plain; charset=utf-8");
  EXPECT_EQ(Post("/api/generate", body).status, 200);  // the 429 waits for /api/embed
  Response third = Post("/api/embed", {{"model", "nomic-embed-text"}, {"input", "x"}});
  EXPECT_EQ(third.status, 429);
  EXPECT_EQ(third.body, R"({"error":"rate limit exceeded"})");
}

TEST_F(FakeOllamaTest, ErrorRateIsDeterministicForASeed) {
  auto run = [&] {
    Configure({{"error_rate", 0.5}, {"seed", 42}});
    std::string statuses;
    for (int i = 0; i < 16; ++i) {
      Response r = Generate({{"stream", false}});
      statuses += r.status == 200 ? '.' : 'E';
      if (r.status != 200) {
        EXPECT_EQ(r.status, 500);
        EXPECT_EQ(r.Json()["error"].get<std::string>().rfind("model runner has unexpectedly", 0),
                  0u);
      }
    }
    return statuses;
  };
  const std::string a = run();
  const std::string b = run();
  EXPECT_EQ(a, b);
  EXPECT_NE(a.find('.'), std::string::npos);
  EXPECT_NE(a.find('E'), std::string::npos);
}

TEST_F(FakeOllamaTest, MidstreamErrorEndsWithErrorLineAndNoDone) {
  Configure({{"midstream_error_after", 3}});
  Response r = Generate();
  EXPECT_EQ(r.code, CURLE_OK);
  EXPECT_EQ(r.status, 200);
  std::vector<json> lines = r.Lines();
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[2]["done"], false);
  EXPECT_EQ(lines[3].dump(), R"({"error":"an error was encountered while running the model"})");
  Response whole = Generate({{"stream", false}});
  EXPECT_EQ(whole.status, 500);
}

TEST_F(FakeOllamaTest, CutAfterDropsTheConnectionMidStream) {
  Configure({{"cut_after", 2}});
  Response r = Generate();
  EXPECT_NE(r.code, CURLE_OK);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(CountLines(r.body), 2u);
  EXPECT_EQ(r.body.find("\"done\":true"), std::string::npos);
  Configure({{"cut_after", 0}});
  EXPECT_EQ(Generate().code, CURLE_GOT_NOTHING);
  EXPECT_TRUE(WaitFor([&] { return fake_.GetStats().in_flight == 0; }));
  EXPECT_EQ(fake_.GetStats().disconnects, 0u);
  EXPECT_EQ(fake_.GetStats().aborted_by_client, 0u);  // the fake's own drop
}

TEST_F(FakeOllamaTest, StallAndFirstByteStallDelayTheStream) {
  Configure({{"stall_ms", 300}, {"first_byte_stall_ms", 200}, {"tokens", 3}});
  const Clock::time_point t0 = Clock::now();
  Clock::time_point first, second;
  Response r = GenerateStream([&](const std::string& got) {
    if (CountLines(got) >= 1 && first == Clock::time_point()) first = Clock::now();
    if (CountLines(got) >= 2 && second == Clock::time_point()) second = Clock::now();
    return true;
  });
  EXPECT_EQ(r.Lines().size(), 4u);
  EXPECT_GE(first - t0, milliseconds(190));
  EXPECT_GE(second - first, milliseconds(290));
}

TEST_F(FakeOllamaTest, StopReturnsPromptlyDuringAStall) {
  Configure({{"stall_ms", 60000}});
  std::atomic<bool> got_first{false};
  std::thread reader([&] {
    GenerateStream([&](const std::string& got) {
      if (CountLines(got) >= 1) got_first = true;
      return true;
    });
  });
  ASSERT_TRUE(WaitFor([&] { return got_first.load(); }));
  const Clock::time_point t0 = Clock::now();
  fake_.Stop();
  EXPECT_LT(Clock::now() - t0, std::chrono::seconds(5));
  reader.join();
}

TEST_F(FakeOllamaTest, SplitUtf8StillAssemblesTheSameText) {
  Configure({{"split_utf8", true}});
  std::vector<json> lines =
      Post("/api/generate", {{"model", "llama3.2"}, {"prompt", "é x"}}).Lines();
  std::string text;
  for (const json& l : lines) text += l["response"].get<std::string>();
  EXPECT_EQ(text, FakeText("é x", 8));
}

TEST_F(FakeOllamaTest, ControlApiOverHttp) {
  Response set = Post("/_fake/settings", {{"tokens", 3}, {"parallel", 4}});
  ASSERT_EQ(set.status, 200);
  EXPECT_EQ(set.Json()["tokens"], 3);
  EXPECT_EQ(Generate().Lines().size(), 4u);
  Response bad = Post("/_fake/settings", {{"tokenz", 3}});
  EXPECT_EQ(bad.status, 400);
  EXPECT_EQ(bad.Json()["error"], "unknown setting \"tokenz\"");
  json stats = Get("/_fake/stats").Json();
  for (const char* key : {"connections_accepted", "requests_total", "requests_by_path", "in_flight",
                          "max_in_flight_observed", "queued", "rejected_503", "disconnects"}) {
    EXPECT_TRUE(stats.contains(key)) << key;
  }
  EXPECT_EQ(stats["requests_total"], 1);
  EXPECT_EQ(stats["requests_by_path"]["/api/generate"], 1);
  EXPECT_EQ(Post("/_fake/reset", json::object()).Json()["tokens"], 8);
  EXPECT_EQ(Get("/_fake/stats").Json()["requests_total"], 0);
}

TEST_F(FakeOllamaTest, HandlesHundredsOfConcurrentConnections) {
  constexpr int kClients = 256;
  Configure({{"parallel", 32}, {"tokens", 4}, {"token_ms", 5}});
  std::atomic<int> ok{0};
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&] {
      Response r = Client().Do("POST", url_ + "/api/generate",
                               R"({"model":"llama3.2","prompt":"x"})", 60000);
      if (r.status == 200 && r.Lines().size() == 5) ++ok;
    });
  }
  for (std::thread& t : clients) t.join();
  EXPECT_EQ(ok.load(), kClients);
  FakeStats s = fake_.GetStats();
  EXPECT_EQ(s.connections_accepted, static_cast<uint64_t>(kClients));
  EXPECT_LE(s.max_in_flight_observed, 32);
}

TEST_F(FakeOllamaTest, TimingFieldsAccountForLoadPromptAndGeneration) {
  Configure({{"load_ms", 50},
             {"latency_ms", 60},
             {"first_byte_stall_ms", 300},
             {"tokens", 4},
             {"token_ms", 10},
             {"stall_ms", 100}});
  std::vector<json> finals;
  finals.push_back(Generate().Lines().back());  // pays the load
  finals.push_back(Generate({{"stream", false}}).Json());
  json chat = {{"model", "llama3.2"},
               {"messages", json::array({{{"role", "user"}, {"content", "x"}}})}};
  finals.push_back(Post("/api/chat", chat).Lines().back());
  chat["stream"] = false;
  finals.push_back(Post("/api/chat", chat).Json());
  EXPECT_GE(Ns(finals[0], "load_duration"), 50 * kMs);
  for (std::size_t i = 0; i < finals.size(); ++i) {
    const json& f = finals[i];
    SCOPED_TRACE(f.dump());
    ASSERT_EQ(f["done"], true);
    if (i > 0) {
      EXPECT_FALSE(f.contains("load_duration"));  // warm: omitted
    }
    EXPECT_GE(Ns(f, "prompt_eval_duration"), 360 * kMs);  // latency + first-byte stall
    EXPECT_GE(Ns(f, "eval_duration"), 140 * kMs);         // 4 tokens of 10 ms + the stall
    EXPECT_EQ(f["eval_count"], 4);
    EXPECT_GT(f["prompt_eval_count"].get<int>(), 0);
    // Nothing waited for a slot, so the phases cover total_duration but for
    // the handling itself; a phase left out (the 300 ms stall) would show.
    EXPECT_GE(UnaccountedNs(f), 0);
    EXPECT_LT(UnaccountedNs(f), 200 * kMs);
  }
  // /api/embed carries only total and load duration, as Ollama's does.
  json e = Post("/api/embed", {{"model", "nomic-embed-text"}, {"input", "a b"}}).Json();
  EXPECT_GE(Ns(e, "load_duration"), 50 * kMs);
  EXPECT_GE(Ns(e, "total_duration"), Ns(e, "load_duration") + 360 * kMs);
  EXPECT_FALSE(e.contains("prompt_eval_duration"));
  EXPECT_FALSE(e.contains("eval_duration"));
}

TEST_F(FakeOllamaTest, SlotWaitCountsInTotalDurationOnly) {
  Configure({{"tokens", 100000}, {"token_ms", 10}});
  std::atomic<bool> release{false};
  std::atomic<std::size_t> lines{0};
  std::thread holder([&] {
    GenerateStream([&](const std::string& got) {
      lines = CountLines(got);
      return !release.load();
    });
  });
  ASSERT_TRUE(WaitFor([&] { return fake_.GetStats().in_flight == 1; }));
  Configure({{"tokens", 2}, {"token_ms", 0}});  // the waiter's own work is short
  json waiter;
  std::thread second([&] { waiter = Generate({{"stream", false}}).Json(); });
  ASSERT_TRUE(WaitFor([&] { return fake_.GetStats().queued == 1; }));
  // The holder keeps the only slot for 20 more lines, 10 ms apart at the
  // server, while the second request waits.
  const std::size_t seen = lines.load();
  ASSERT_TRUE(WaitFor([&] { return lines.load() >= seen + 20; }));
  release = true;
  holder.join();
  second.join();

  FakeStats s = fake_.GetStats();
  const FakeScheduler::ModelStats* m = StatsOf(s, "llama3.2:latest");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->admitted, 2u);
  EXPECT_GE(m->slot_wait_ns, 50 * kMs);  // lines already in transit excepted
  EXPECT_EQ(s.slot_wait_ns, m->slot_wait_ns);
  EXPECT_EQ(m->aborted_by_client, 1u);  // the holder hung up mid-generation
  EXPECT_EQ(m->abandoned_waiting, 0u);
  // The wait is inside total_duration and outside every other phase, so a
  // client finds it as total - load - prompt_eval - eval.
  ASSERT_EQ(waiter["done"], true) << waiter.dump();
  EXPECT_GE(UnaccountedNs(waiter), m->slot_wait_ns - 1 * kMs) << waiter.dump();
  EXPECT_LT(Ns(waiter, "prompt_eval_duration") + Ns(waiter, "eval_duration"), m->slot_wait_ns)
      << waiter.dump();

  json stats = Get("/_fake/stats").Json();
  EXPECT_EQ(stats["aborted_by_client"], 1);
  EXPECT_GE(stats["slot_wait_ms"].get<double>(), 50.0);
  EXPECT_EQ(stats["models"]["llama3.2:latest"]["admitted"], 2) << stats.dump();
  EXPECT_EQ(stats["models"]["llama3.2:latest"]["aborted_by_client"], 1) << stats.dump();
}

TEST_F(FakeOllamaTest, HangUpDuringABufferedGenerationCountsAsAborted) {
  Configure({{"latency_ms", 60000}});
  Response r = Generate({{"stream", false}}, 300);
  EXPECT_EQ(r.code, CURLE_OPERATION_TIMEDOUT);
  EXPECT_TRUE(WaitFor([&] {
    FakeStats s = fake_.GetStats();
    return s.in_flight == 0 && s.aborted_by_client == 1;
  }));
  EXPECT_EQ(fake_.GetStats().abandoned_waiting, 0u);
}

TEST_F(FakeOllamaTest, CapacityChangeAppliesToRunningAndWaitingRequests) {
  ASSERT_EQ(Post("/_fake/settings", {{"parallel", 8}, {"tokens", 100000}, {"token_ms", 10}}).status,
            200);
  constexpr int kClients = 12;
  std::vector<std::atomic<bool>> hang_up(kClients);
  std::vector<std::atomic<bool>> streaming(kClients);
  std::vector<std::thread> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&, i] {
      GenerateStream([&, i](const std::string&) {
        streaming[i] = true;
        return !hang_up[i].load();
      });
    });
  }
  auto at = [&](int in_flight, int queued) {
    return WaitFor([&] {
      FakeStats s = fake_.GetStats();
      return s.in_flight == in_flight && s.queued == queued;
    });
  };
  auto count_streaming = [&] {
    return std::count_if(streaming.begin(), streaming.end(), [](auto& b) { return b.load(); });
  };
  ASSERT_TRUE(at(8, 4));
  ASSERT_TRUE(WaitFor([&] { return count_streaming() == 8; }));

  // 8 -> 2: the eight running requests go on; as seven of them end, only one
  // waiter is let in, which makes two.
  ASSERT_EQ(Post("/_fake/settings", {{"parallel", 2}}).status, 200);
  FakeStats s = fake_.GetStats();
  EXPECT_EQ(s.in_flight, 8);
  EXPECT_EQ(s.queued, 4);
  int hung_up = 0;
  for (int i = 0; i < kClients && hung_up < 7; ++i) {
    if (streaming[i].load()) {
      hang_up[i] = true;
      ++hung_up;
    }
  }
  EXPECT_TRUE(at(2, 3));
  FakeStats after_drop = fake_.GetStats();  // StatsOf points into it
  const FakeScheduler::ModelStats* m = StatsOf(after_drop, "llama3.2:latest");
  ASSERT_NE(m, nullptr);
  EXPECT_EQ(m->parallel, 2);
  EXPECT_EQ(m->aborted_by_client, 7u);

  // 2 -> 5: the three waiters start at once.
  ASSERT_EQ(Post("/_fake/settings", {{"parallel", 5}}).status, 200);
  EXPECT_TRUE(at(5, 0));
  fake_.Stop();
  for (std::thread& t : clients) t.join();
}

TEST_F(FakeOllamaTest, EachModelHasItsOwnSlots) {
  Configure({{"models", {"llama3.2", "nomic-embed-text", "big"}},
             {"parallel", 2},
             {"parallel_by_model", {{"Big", 3}}},
             {"latency_ms", 60000}});
  std::vector<std::thread> clients;
  auto start = [&](int n, const std::string& path, const json& body) {
    for (int i = 0; i < n; ++i) clients.emplace_back([&, path, body] { Post(path, body); });
  };
  start(3, "/api/generate", {{"model", "llama3.2"}, {"prompt", "x"}});
  start(2, "/api/embed", {{"model", "nomic-embed-text"}, {"input", "x"}});
  start(4, "/api/generate", {{"model", "big"}, {"prompt", "x"}});
  auto model_at = [&](const std::string& name, int in_flight, int queued) {
    FakeStats stats = fake_.GetStats();  // StatsOf points into it
    const FakeScheduler::ModelStats* m = StatsOf(stats, name);
    return m != nullptr && m->in_flight == in_flight && m->queued == queued;
  };
  EXPECT_TRUE(WaitFor([&] {
    return model_at("llama3.2:latest", 2, 1) && model_at("nomic-embed-text:latest", 1, 1) &&
           model_at("big:latest", 3, 1);
  }));
  FakeStats s = fake_.GetStats();
  EXPECT_EQ(s.in_flight, 6);
  EXPECT_EQ(s.queued, 3);
  json stats = Get("/_fake/stats").Json()["models"];
  EXPECT_EQ(stats["llama3.2:latest"]["parallel"], 2) << stats.dump();
  EXPECT_EQ(stats["nomic-embed-text:latest"]["parallel"], 1) << stats.dump();  // the default
  EXPECT_EQ(stats["big:latest"]["max_in_flight_observed"], 3) << stats.dump();
  fake_.Stop();
  for (std::thread& t : clients) t.join();
}

TEST_F(FakeOllamaTest, CapacitySettingsAreChecked) {
  EXPECT_EQ(fake_.MergeSettings({{"parallel_by_model", {{"llama3.2", 0}}}}),
            "parallel_by_model.llama3.2 must be an integer between 1 and 4096");
  EXPECT_EQ(fake_.MergeSettings({{"parallel_by_model", 4}}),
            "parallel_by_model must be an object of model name to slots, or null");
  EXPECT_EQ(fake_.MergeSettings({{"embed_parallel", 0}}),
            "embed_parallel must be between 1 and 4096");
  Configure({{"parallel_by_model", {{"llama3.2", 4}}}, {"embed_parallel", 2}});
  json got = Get("/_fake/settings").Json();
  EXPECT_EQ(got["parallel_by_model"]["llama3.2"], 4);
  EXPECT_EQ(got["embed_parallel"], 2);
  Configure({{"parallel_by_model", nullptr}});
  EXPECT_TRUE(fake_.GetSettings().parallel_by_model.empty());
}

#ifdef FAKE_OLLAMA_BIN
TEST(FakeOllamaBinary, WritesPortFileAndExitsZeroOnSigterm) {
  digestd::testing::FakeOllamaProcess process;
  ASSERT_EQ(process.Start(FAKE_OLLAMA_BIN, "", {"--tokens", "2", "--models", "llama3.2, other"}),
            "");
  EXPECT_GT(process.port(), 0);
  EXPECT_EQ(Client().Do("GET", process.url() + "/").body, "Ollama is running");
  Response r =
      Client().Do("POST", process.url() + "/api/generate", R"({"model":"other","prompt":"x"})");
  EXPECT_EQ(r.Lines().size(), 3u);
  EXPECT_EQ(process.Requests("/api/generate"), 1u);
  EXPECT_EQ(process.Stop(), "");  // SIGTERM: exit status 0
  EXPECT_FALSE(process.Running());
}
#endif

}  // namespace
