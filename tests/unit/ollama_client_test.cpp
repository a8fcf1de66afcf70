// OllamaClient and the LLM job kinds against the fake Ollama server
// (tests/support/fake_ollama) started as a subprocess, driven through its
// control API (POST /_fake/settings, /_fake/reset, GET /_fake/stats).
// Skipped when the fake is not built.
#include "backend/ollama_client.h"

#include <curl/curl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "../support/wait.h"
#include "fake_process.h"
#include "jobs/job_kind.h"
#include "jobs/llm_job.h"

namespace digestd {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;
using testing::FakeOllamaProcess;
using testing::WaitFor;

#ifdef FAKE_OLLAMA_BIN
constexpr const char* kFakeBin = FAKE_OLLAMA_BIN;
#else
constexpr const char* kFakeBin = nullptr;
#endif

class OllamaClientTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (kFakeBin == nullptr) return;
    OllamaClient::GlobalInit();
    fake_ = new FakeOllamaProcess();
    start_error_ = fake_->Start(kFakeBin, "");
    if (!start_error_.empty()) {
      delete fake_;
      fake_ = nullptr;
    }
  }
  static void TearDownTestSuite() {
    delete fake_;
    fake_ = nullptr;
  }

  void SetUp() override {
    if (kFakeBin == nullptr) GTEST_SKIP() << "fake_ollama is not built";
    ASSERT_NE(fake_, nullptr) << start_error_;
    ASSERT_EQ(fake_->Reset(), "");
    config_.backend.url = fake_->url();
    config_.backend.connect_timeout_ms = 2000;
    config_.backend.first_byte_timeout_s = 30;
    config_.backend.idle_timeout_s = 30;
    config_.backend.request_timeout_s = 60;
  }

  OllamaClient Client() const { return OllamaClient(config_.backend); }

  OllamaClient ClientWith(std::function<void(OllamaClientOptions*)> edit) const {
    OllamaClientOptions o = OllamaClientOptions::FromConfig(config_.backend);
    edit(&o);
    return OllamaClient(o);
  }

  static json Gen(const std::string& prompt, const std::string& model = "llama3.2") {
    return {{"model", model}, {"prompt", prompt}};
  }

  WorkOutcome RunKind(const std::string& kind, const json& input,
                      std::shared_ptr<std::atomic<bool>> cancel = nullptr,
                      std::shared_ptr<std::atomic<uint64_t>> progress = nullptr) {
    const JobKind* k = JobKindRegistry::Global().Find(kind);
    EXPECT_NE(k, nullptr);
    Status st = k->Validate(input, config_);
    EXPECT_TRUE(st.ok()) << st.message();
    WorkContext ctx;
    ctx.key = "test";
    ctx.input = std::make_shared<const json>(input);
    ctx.cancel = cancel ? cancel : std::make_shared<std::atomic<bool>>(false);
    ctx.progress = progress;  // null unless the test counts chunks
    ctx.config = std::make_shared<const Config>(config_);
    return k->Run(ctx);
  }

  // Merges `patch` into the fake's settings; a refusal fails the test.
  static void SetFake(const json& patch) { EXPECT_EQ(fake_->Set(patch), ""); }
  // GET `path` from the fake; a failure fails the test.
  static json GetFake(const std::string& path) {
    json answer;
    EXPECT_EQ(fake_->Call("GET", path, nullptr, &answer), "");
    return answer;
  }

  static FakeOllamaProcess* fake_;
  static std::string start_error_;
  Config config_;
};

FakeOllamaProcess* OllamaClientTest::fake_ = nullptr;
std::string OllamaClientTest::start_error_;

// A port on which nothing listens.
int ClosedPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

TEST_F(OllamaClientTest, GenerateStreamsTextAndCounters) {
  GenerateResult r = Client().Generate(Gen("Why is the sky blue?"), nullptr);
  ASSERT_TRUE(r.status.ok()) << r.status.error;
  EXPECT_EQ(r.status.http_status, 200);
  EXPECT_FALSE(r.text.empty());
  EXPECT_EQ(r.model, "llama3.2");
  EXPECT_EQ(r.done_reason, "stop");
  EXPECT_FALSE(r.truncated());
  EXPECT_EQ(r.metrics.eval_count, 8);
  EXPECT_TRUE(r.metrics.prompt_eval_count.has_value());
  EXPECT_TRUE(r.metrics.total_duration_ns.has_value());
  EXPECT_GT(r.status.elapsed.count(), 0);
}

TEST_F(OllamaClientTest, ChatStreamsTheAssistantMessage) {
  json req = {{"model", "llama3.2"},
              {"messages",
               {{{"role", "system"}, {"content", "Be brief."}},
                {{"role", "user"}, {"content", "Hello there"}}}},
              {"think", false}};
  GenerateResult r = Client().Chat(req, nullptr);
  ASSERT_TRUE(r.status.ok()) << r.status.error;
  EXPECT_FALSE(r.text.empty());
  EXPECT_EQ(r.done_reason, "stop");
}

TEST_F(OllamaClientTest, NumPredictStopsWithLengthAndIsTruncated) {
  json req = Gen("Tell me a long story");
  req["options"] = {{"num_predict", 3}};
  GenerateResult r = Client().Generate(req, nullptr);
  ASSERT_TRUE(r.status.ok()) << r.status.error;
  EXPECT_EQ(r.done_reason, "length");
  EXPECT_TRUE(r.truncated());
  EXPECT_EQ(r.metrics.eval_count, 3);
}

TEST_F(OllamaClientTest, Utf8SplitAcrossWritesAssemblesTheSameText) {
  GenerateResult plain =
      Client().Generate(Gen("caf\xC3\xA9 na\xC3\xAFve \xE2\x80\x94 ok"), nullptr);
  ASSERT_TRUE(plain.status.ok()) << plain.status.error;
  SetFake({{"split_utf8", true}});
  GenerateResult split =
      Client().Generate(Gen("caf\xC3\xA9 na\xC3\xAFve \xE2\x80\x94 ok"), nullptr);
  ASSERT_TRUE(split.status.ok()) << split.status.error;
  EXPECT_EQ(split.text, plain.text);
}

TEST_F(OllamaClientTest, EmbedReturnsOneVectorPerInput) {
  json req = {{"model", "nomic-embed-text"}, {"input", {"one", "two", "three"}}};
  EmbedResult r = Client().Embed(req, nullptr);
  ASSERT_TRUE(r.status.ok()) << r.status.error;
  ASSERT_EQ(r.embeddings.size(), 3u);
  EXPECT_EQ(r.embeddings[0].size(), 8u);
  EXPECT_NE(r.embeddings[0], r.embeddings[1]);
  EXPECT_EQ(r.model, "nomic-embed-text");
  EmbedResult again = Client().Embed(req, nullptr);
  EXPECT_EQ(again.embeddings, r.embeddings);  // deterministic
}

TEST_F(OllamaClientTest, UnknownModelIsFatalWithOllamasMessage) {
  GenerateResult r = Client().Generate(Gen("hi", "llama9"), nullptr);
  EXPECT_EQ(r.status.cls, CallClass::kFatal);
  EXPECT_EQ(r.status.http_status, 404);
  EXPECT_NE(r.status.error.find("model 'llama9' not found"), std::string::npos) << r.status.error;
  EXPECT_NE(r.status.error.find("; pull the model on the Ollama host (ollama pull <model>) or "
                                "name one it has in [backend] model or embed_model"),
            std::string::npos)
      << r.status.error;

  EmbedResult e = Client().Embed({{"model", "all-minilm"}, {"input", {"x"}}}, nullptr);
  EXPECT_EQ(e.status.cls, CallClass::kFatal);
  EXPECT_NE(e.status.error.find("model \"all-minilm\" not found, try pulling it first"),
            std::string::npos)
      << e.status.error;
}

TEST_F(OllamaClientTest, EmbeddingModelCannotGenerateIsFatal400) {
  GenerateResult r = Client().Generate(Gen("hi", "nomic-embed-text"), nullptr);
  EXPECT_EQ(r.status.cls, CallClass::kFatal);
  EXPECT_EQ(r.status.http_status, 400);
  EXPECT_NE(r.status.error.find("does not support generate"), std::string::npos);
}

TEST_F(OllamaClientTest, ServiceUnavailableAndTooManyRequestsAreBusy) {
  SetFake({{"fail_next",
            {{{"status", 503},
              {"body", json{{"error",
                             "server busy, please try again.  maximum pending "
                             "requests exceeded"}}}},
             {{"status", 429}, {"body", json{{"error", "rate limit exceeded"}}}}}}});
  GenerateResult a = Client().Generate(Gen("hi"), nullptr);
  EXPECT_EQ(a.status.cls, CallClass::kBusy);
  EXPECT_EQ(a.status.http_status, 503);
  EXPECT_NE(a.status.error.find("maximum pending requests exceeded"), std::string::npos);
  GenerateResult b = Client().Generate(Gen("hi"), nullptr);
  EXPECT_EQ(b.status.cls, CallClass::kBusy);
  EXPECT_EQ(b.status.http_status, 429);
  EXPECT_TRUE(Client().Generate(Gen("hi"), nullptr).status.ok());
}

TEST_F(OllamaClientTest, ServerErrorsAreRetryable) {
  SetFake({{"fail_next",
            {{{"status", 500}, {"body", json{{"error", "model runner has unexpectedly stopped"}}}},
             {{"status", 502}, {"body", json{{"error", "bad gateway"}}}},
             {{"status", 504}, {"body", json{{"error", "gateway timeout"}}}}}}});
  for (int status : {500, 502, 504}) {
    GenerateResult r = Client().Generate(Gen("hi"), nullptr);
    EXPECT_EQ(r.status.cls, CallClass::kRetryable) << status;
    EXPECT_EQ(r.status.http_status, status);
    EXPECT_FALSE(r.status.timed_out);
  }
}

TEST_F(OllamaClientTest, RunnerCrashBeforeTheFirstByteIsRetryableWithItsMessage) {
  SetFake({{"error_rate", 1.0}});
  GenerateResult r = Client().Generate(Gen("hi"), nullptr);
  EXPECT_EQ(r.status.cls, CallClass::kRetryable);
  EXPECT_EQ(r.status.http_status, 500);
  EXPECT_NE(r.status.error.find("model runner has unexpectedly stopped"), std::string::npos);
}

TEST_F(OllamaClientTest, NonJsonErrorBodyIsKeptAsRawText) {
  SetFake({{"fail_next",
            {{{"status", 502},
              {"body", "<html><body><h1>502 Bad Gateway</h1></body></html>\n"},
              {"content_type", "text/html"}}}}});
  GenerateResult r = Client().Generate(Gen("hi"), nullptr);
  EXPECT_EQ(r.status.cls, CallClass::kRetryable);
  EXPECT_NE(r.status.error.find("<html><body><h1>502 Bad Gateway</h1></body></html>"),
            std::string::npos)
      << r.status.error;
}

TEST_F(OllamaClientTest, BadRequestIsFatal) {
  SetFake({{"fail_next", {{{"status", 400}, {"body", json{{"error", "invalid model name"}}}}}}});
  GenerateResult r = Client().Generate(Gen("hi"), nullptr);
  EXPECT_EQ(r.status.cls, CallClass::kFatal);
  EXPECT_NE(r.status.error.find("invalid model name"), std::string::npos);
}

TEST_F(OllamaClientTest, MalformedOkBodyIsFatal) {
  SetFake({{"fail_next",
            {{{"status", 200},
              {"body", "this is not ndjson\n"},
              {"content_type", "application/x-ndjson"}}}}});
  GenerateResult r = Client().Generate(Gen("hi"), nullptr);
  EXPECT_EQ(r.status.cls, CallClass::kFatal);
  EXPECT_NE(r.status.error.find("this is not ndjson"), std::string::npos) << r.status.error;

  SetFake({{"fail_next", {{{"status", 200}, {"body", json{{"embeddings", "no"}}}}}}});
  EmbedResult e = Client().Embed({{"model", "nomic-embed-text"}, {"input", {"x"}}}, nullptr);
  EXPECT_EQ(e.status.cls, CallClass::kFatal);
}

TEST_F(OllamaClientTest, MidStreamErrorLineIsRetryableWithItsMessage) {
  SetFake({{"midstream_error_after", 3}});
  GenerateResult r = Client().Generate(Gen("hi"), nullptr);
  EXPECT_EQ(r.status.cls, CallClass::kRetryable);
  EXPECT_EQ(r.status.http_status, 200);
  EXPECT_NE(r.status.error.find("an error was encountered while running the model"),
            std::string::npos)
      << r.status.error;
  // The connection survives the error line.
  SetFake({{"midstream_error_after", nullptr}});
  EXPECT_TRUE(Client().Generate(Gen("hi"), nullptr).status.ok());
}

TEST_F(OllamaClientTest, CutStreamIsRetryable) {
  SetFake({{"cut_after", 2}});
  GenerateResult r = Client().Chat(
      {{"model", "llama3.2"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}}, nullptr);
  EXPECT_EQ(r.status.cls, CallClass::kRetryable);
  EXPECT_FALSE(r.status.timed_out);
  EXPECT_NE(r.status.error.find("without the final done line"), std::string::npos)
      << r.status.error;

  SetFake({{"cut_after", 0}});
  GenerateResult none = Client().Generate(Gen("hi"), nullptr);
  EXPECT_EQ(none.status.cls, CallClass::kRetryable);
  EXPECT_EQ(none.status.http_status, 0);
}

TEST_F(OllamaClientTest, StallMidStreamHitsTheIdleTimeout) {
  SetFake({{"stall_ms", 5000}});
  auto client = ClientWith([](OllamaClientOptions* o) { o->idle_timeout = 500ms; });
  auto start = Clock::now();
  GenerateResult r = client.Generate(Gen("hi"), nullptr);
  auto took = Clock::now() - start;
  EXPECT_EQ(r.status.cls, CallClass::kRetryable);
  EXPECT_NE(r.status.error.find("went silent"), std::string::npos) << r.status.error;
  EXPECT_TRUE(r.status.timed_out);
  EXPECT_GE(took, 500ms);
  EXPECT_LT(took, 2000ms);
}

TEST_F(OllamaClientTest, SilenceBeforeTheFirstByteHitsTheFirstByteTimeout) {
  SetFake({{"first_byte_stall_ms", 5000}});
  auto client = ClientWith([](OllamaClientOptions* o) {
    o->first_byte_timeout = 500ms;
    o->idle_timeout = 100ms;  // must not apply before the first byte
  });
  auto start = Clock::now();
  GenerateResult r = client.Generate(Gen("hi"), nullptr);
  auto took = Clock::now() - start;
  EXPECT_EQ(r.status.cls, CallClass::kRetryable);
  EXPECT_NE(r.status.error.find("first_byte_timeout_s"), std::string::npos) << r.status.error;
  EXPECT_TRUE(r.status.timed_out);
  EXPECT_GE(took, 500ms);
  EXPECT_LT(took, 2000ms);
}

TEST_F(OllamaClientTest, SlowFirstByteWithinTheTimeoutIsFine) {
  SetFake({{"first_byte_stall_ms", 700}});
  auto client = ClientWith([](OllamaClientOptions* o) {
    o->first_byte_timeout = 5s;
    o->idle_timeout = 300ms;
  });
  EXPECT_TRUE(client.Generate(Gen("hi"), nullptr).status.ok());
}

TEST_F(OllamaClientTest, TotalDeadlineEndsALongGeneration) {
  SetFake({{"token_ms", 100}, {"tokens", 100}});
  auto client = ClientWith([](OllamaClientOptions* o) { o->request_timeout = 600ms; });
  auto start = Clock::now();
  GenerateResult r = client.Generate(Gen("hi"), nullptr);
  EXPECT_EQ(r.status.cls, CallClass::kRetryable);
  EXPECT_NE(r.status.error.find("request_timeout_s"), std::string::npos) << r.status.error;
  EXPECT_TRUE(r.status.timed_out);
  EXPECT_LT(Clock::now() - start, 2000ms);
}

TEST_F(OllamaClientTest, RefusedConnectionIsRetryable) {
  config_.backend.url = "http://127.0.0.1:" + std::to_string(ClosedPort());
  GenerateResult r = Client().Generate(Gen("hi"), nullptr);
  EXPECT_EQ(r.status.cls, CallClass::kRetryable);
  EXPECT_EQ(r.status.http_status, 0);
  EXPECT_FALSE(r.status.timed_out);
  EXPECT_NE(r.status.error.find("cannot connect to Ollama"), std::string::npos) << r.status.error;
  EXPECT_NE(r.status.error.find("; start Ollama (systemctl start ollama) or fix [backend] url; "
                                "for Ollama on another machine, allow its address in the unit "
                                "(IPAddressAllow=)"),
            std::string::npos)
      << r.status.error;
}

TEST_F(OllamaClientTest, BadUrlIsFatal) {
  config_.backend.url = "ftp://127.0.0.1:1";
  GenerateResult r = Client().Generate(Gen("hi"), nullptr);
  EXPECT_EQ(r.status.cls, CallClass::kFatal) << r.status.error;
}

TEST_F(OllamaClientTest, CancelAbortsALongGenerationWithinASecond) {
  SetFake({{"token_ms", 50}, {"tokens", 100000}});
  std::atomic<bool> cancel{false};
  Clock::time_point cancelled_at;
  std::thread canceller([&] {
    std::this_thread::sleep_for(300ms);
    cancelled_at = Clock::now();
    cancel = true;
  });
  GenerateResult r = Client().Generate(Gen("hi"), &cancel);
  auto returned_at = Clock::now();
  canceller.join();
  EXPECT_EQ(r.status.cls, CallClass::kCancelled);
  EXPECT_FALSE(r.status.timed_out);
  EXPECT_LT(returned_at - cancelled_at, 1s);
  // Closing the connection made the server stop the generation.
  EXPECT_TRUE(WaitFor([&] { return fake_->Stats().value("disconnects", 0) >= 1; }));
}

TEST_F(OllamaClientTest, CancelAbortsTheWaitForTheFirstByteWithinASecond) {
  SetFake({{"latency_ms", 20000}});
  std::atomic<bool> cancel{false};
  Clock::time_point cancelled_at;
  std::thread canceller([&] {
    std::this_thread::sleep_for(300ms);
    cancelled_at = Clock::now();
    cancel = true;
  });
  GenerateResult r = Client().Generate(Gen("hi"), &cancel);
  auto returned_at = Clock::now();
  canceller.join();
  EXPECT_EQ(r.status.cls, CallClass::kCancelled);
  EXPECT_LT(returned_at - cancelled_at, 1s);
}

TEST_F(OllamaClientTest, SequentialRequestsOnOneThreadReuseOneConnection) {
  const uint64_t before = fake_->Stats().value("connections_accepted", uint64_t{0});
  std::thread worker([&] {
    OllamaClient client = Client();
    for (int i = 0; i < 200; ++i) {
      if (i % 20 == 19) {
        EmbedResult e = client.Embed({{"model", "nomic-embed-text"}, {"input", {"x"}}}, nullptr);
        ASSERT_TRUE(e.status.ok()) << e.status.error;
      } else {
        GenerateResult r = client.Generate(Gen("request " + std::to_string(i)), nullptr);
        ASSERT_TRUE(r.status.ok()) << i << ": " << r.status.error;
      }
    }
  });
  worker.join();
  json stats = fake_->Stats();
  // One new connection at most: none when an earlier test left a kept-alive
  // one in the client's handle pool.
  EXPECT_LE(stats.value("connections_accepted", uint64_t{0}) - before, 1u) << stats.dump();
  EXPECT_GE(stats["requests_by_path"].value("/api/generate", uint64_t{0}), 190u);
}

TEST_F(OllamaClientTest, ProbeSucceedsOnAWorkingServer) {
  CallStatus s = Client().Probe(config_.backend, 5s);
  EXPECT_TRUE(s.ok()) << s.error;
}

TEST_F(OllamaClientTest, ProbeFailsRetryablyWhenInferenceHangs) {
  SetFake({{"first_byte_stall_ms", 10000}});
  auto start = Clock::now();
  CallStatus s = Client().Probe(config_.backend, 500ms);
  EXPECT_EQ(s.cls, CallClass::kRetryable) << s.error;
  EXPECT_TRUE(s.timed_out);
  EXPECT_LT(Clock::now() - start, 2s);
  config_.backend.url = "http://127.0.0.1:" + std::to_string(ClosedPort());
  EXPECT_EQ(Client().Probe(config_.backend, 500ms).cls, CallClass::kRetryable);
}

TEST_F(OllamaClientTest, ServerOptionsKeepOneNumCtxPerModel) {
  config_.backend.num_ctx = 6144;
  config_.backend.keep_alive = "-1m";
  json req = Gen("hi");
  req["options"] = {{"temperature", 0.1}};
  ApplyServerOptions(config_.backend, &req);
  EXPECT_EQ(req["options"]["num_ctx"], 6144);
  EXPECT_EQ(req["options"]["temperature"], 0.1);
  EXPECT_EQ(req["keep_alive"], "-1m");
  ASSERT_TRUE(Client().Generate(req, nullptr).status.ok());
  json ps = GetFake("/api/ps");
  ASSERT_EQ(ps["models"].size(), 1u) << ps.dump();
  EXPECT_EQ(ps["models"][0]["context_length"], 6144);

  Config::Backend off;
  off.num_ctx = 0;
  off.keep_alive = "";
  json bare = Gen("hi");
  ApplyServerOptions(off, &bare);
  EXPECT_FALSE(bare.contains("options"));
  EXPECT_FALSE(bare.contains("keep_alive"));
}

TEST_F(OllamaClientTest, SuccessIsNotATimeout) {
  GenerateResult r = Client().Generate(Gen("hi"), nullptr);
  ASSERT_TRUE(r.status.ok()) << r.status.error;
  EXPECT_FALSE(r.status.timed_out);
}

// A connect that never completes: a listener on loopback whose accept queue
// is full (backlog 0, never accepting, filled by two earlier connects), so
// the kernel drops the client's SYN. Reported as a connect timeout. Skipped
// should a kernel answer such a SYN after all.
TEST_F(OllamaClientTest, ConnectTimeoutIsATimeout) {
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(listener, 0), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  std::vector<int> fillers;
  for (int i = 0; i < 2; ++i) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    fillers.push_back(fd);
  }
  config_.backend.url = "http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  config_.backend.connect_timeout_ms = 300;
  GenerateResult r = Client().Generate(Gen("hi"), nullptr);
  for (int fd : fillers) close(fd);
  close(listener);
  if (r.status.error.find("connect_timeout_ms") == std::string::npos) {
    GTEST_SKIP() << "this kernel did not leave the connect hanging: " << r.status.error;
  }
  EXPECT_EQ(r.status.cls, CallClass::kRetryable);
  EXPECT_TRUE(r.status.timed_out);
}

TEST_F(OllamaClientTest, ProgressCountsStreamedLines) {
  std::atomic<uint64_t> progress{0};
  GenerateResult r = Client().Generate(Gen("hi"), nullptr, &progress);
  ASSERT_TRUE(r.status.ok()) << r.status.error;
  EXPECT_EQ(progress.load(), 9u);  // 8 token lines and the done line

  progress = 0;
  SetFake({{"tokens", 3}, {"split_utf8", true}});
  GenerateResult c = Client().Chat(
      {{"model", "llama3.2"}, {"messages", {{{"role", "user"}, {"content", "caf\xC3\xA9"}}}}},
      nullptr, &progress);
  ASSERT_TRUE(c.status.ok()) << c.status.error;
  EXPECT_EQ(progress.load(), 4u);  // lines, not network writes

  progress = 0;
  SetFake({{"tokens", 8}, {"midstream_error_after", 3}});
  GenerateResult e = Client().Generate(Gen("hi"), nullptr, &progress);
  EXPECT_EQ(e.status.cls, CallClass::kRetryable);
  EXPECT_EQ(progress.load(), 4u);  // 3 token lines and the error line

  progress = 0;
  SetFake({{"midstream_error_after", nullptr}, {"fail_next", {{{"status", 500}}}}});
  GenerateResult failed = Client().Generate(Gen("hi"), nullptr, &progress);
  EXPECT_EQ(failed.status.cls, CallClass::kRetryable);
  EXPECT_EQ(progress.load(), 0u);  // an error body is not a stream
}

TEST_F(OllamaClientTest, ProgressCountsOneForAnEmbedAnswer) {
  std::atomic<uint64_t> progress{0};
  EmbedResult r =
      Client().Embed({{"model", "nomic-embed-text"}, {"input", {"a", "b"}}}, nullptr, &progress);
  ASSERT_TRUE(r.status.ok()) << r.status.error;
  EXPECT_EQ(progress.load(), 1u);

  SetFake({{"fail_next", {{{"status", 500}}}}});
  EmbedResult failed =
      Client().Embed({{"model", "nomic-embed-text"}, {"input", {"a"}}}, nullptr, &progress);
  EXPECT_EQ(failed.status.cls, CallClass::kRetryable);
  EXPECT_EQ(progress.load(), 1u);
}

// --- the job kinds end to end ---------------------------------------------

TEST_F(OllamaClientTest, SummarizeJobReturnsSummaryModelAndMeta) {
  WorkOutcome out = RunKind("summarize", {{"title", "Chapter 3"},
                                          {"text", "Anna found the ledger. She hid it."},
                                          {"context", "Anna is a clerk."}});
  ASSERT_EQ(out.kind, WorkOutcome::Kind::kDone) << out.error;
  EXPECT_FALSE(out.result["summary"].get<std::string>().empty());
  EXPECT_EQ(out.result["model"], "llama3.2");
  EXPECT_EQ(out.result["fallback"], false);
  EXPECT_FALSE(out.result.contains("truncated"));
  EXPECT_EQ(out.result["meta"]["eval_count"], 8);
  EXPECT_TRUE(out.result["meta"].contains("prompt_eval_count"));
  EXPECT_TRUE(out.result["meta"].contains("total_duration_ms"));
  EXPECT_TRUE(out.result["meta"].contains("load_duration_ms"));
  EXPECT_GT(out.backend_ns, 0u);
  // The fixed num_ctx from [backend] reached the server.
  json ps = GetFake("/api/ps");
  ASSERT_EQ(ps["models"].size(), 1u);
  EXPECT_EQ(ps["models"][0]["context_length"], config_.backend.num_ctx);
}

TEST_F(OllamaClientTest, SummarizeHittingNumPredictIsTruncated) {
  config_.summarize.num_predict = 20;
  config_.summarize.max_words = 5;
  SetFake({{"tokens", 50}});
  WorkOutcome out = RunKind("summarize", {{"text", "A long chapter."}});
  ASSERT_EQ(out.kind, WorkOutcome::Kind::kDone) << out.error;
  EXPECT_EQ(out.result["truncated"], true);
  EXPECT_EQ(out.result["meta"]["eval_count"], 20);
  EXPECT_EQ(out.result["meta"]["done_reason"], "length");
}

TEST_F(OllamaClientTest, GenerateJobPassesThroughAndReturnsText) {
  WorkOutcome out = RunKind("generate", {{"prompt", "Say hi"},
                                         {"system", "You are terse."},
                                         {"format", "json"},
                                         {"options", {{"num_predict", 4}, {"temperature", 0}}}});
  ASSERT_EQ(out.kind, WorkOutcome::Kind::kDone) << out.error;
  EXPECT_FALSE(out.result["text"].get<std::string>().empty());
  EXPECT_EQ(out.result["model"], "llama3.2");
  EXPECT_EQ(out.result["truncated"], true);  // 4 of 8 tokens
}

TEST_F(OllamaClientTest, EmbedJobReturnsEmbeddingsAndDims) {
  WorkOutcome out = RunKind("embed", {{"texts", {"alpha", "beta"}}});
  ASSERT_EQ(out.kind, WorkOutcome::Kind::kDone) << out.error;
  EXPECT_EQ(out.result["embeddings"].size(), 2u);
  EXPECT_EQ(out.result["dims"], 8);
  EXPECT_EQ(out.result["model"], "nomic-embed-text");
}

TEST_F(OllamaClientTest, SummarizeJobReportsTimingAndCountsChunks) {
  SetFake({{"load_ms", 20}, {"latency_ms", 5}, {"token_ms", 1}});  // every duration > 0
  auto progress = std::make_shared<std::atomic<uint64_t>>(0);
  WorkOutcome out = RunKind("summarize", {{"text", "Anna found the ledger."}}, nullptr, progress);
  ASSERT_EQ(out.kind, WorkOutcome::Kind::kDone) << out.error;
  EXPECT_EQ(progress->load(), 9u);  // 8 token lines and the done line
  ASSERT_TRUE(out.timing.total_ns.has_value());
  ASSERT_TRUE(out.timing.load_ns.has_value());
  ASSERT_TRUE(out.timing.prompt_eval_ns.has_value());
  ASSERT_TRUE(out.timing.eval_ns.has_value());
  EXPECT_GE(*out.timing.load_ns, 20'000'000);
  EXPECT_GE(*out.timing.total_ns, *out.timing.load_ns + *out.timing.eval_ns);
  EXPECT_FALSE(out.timing.timed_out);

  // The model is loaded now: Ollama leaves the zero load_duration out, and
  // the outcome says it was not sent rather than 0.
  SetFake({{"load_ms", 0}});
  WorkOutcome warm = RunKind("summarize", {{"text", "She hid it."}}, nullptr, progress);
  ASSERT_EQ(warm.kind, WorkOutcome::Kind::kDone) << warm.error;
  EXPECT_FALSE(warm.timing.load_ns.has_value());
  EXPECT_TRUE(warm.timing.eval_ns.has_value());
  EXPECT_EQ(warm.result["meta"]["load_duration_ms"], 0);
  EXPECT_EQ(progress->load(), 18u);  // the counter is the loop's to reset, not the job's
}

TEST_F(OllamaClientTest, GenerateJobReportsTimingAndCountsChunks) {
  auto progress = std::make_shared<std::atomic<uint64_t>>(0);
  WorkOutcome out = RunKind("generate", {{"prompt", "Say hi"}, {"options", {{"num_predict", 4}}}},
                            nullptr, progress);
  ASSERT_EQ(out.kind, WorkOutcome::Kind::kDone) << out.error;
  EXPECT_EQ(progress->load(), 5u);
  EXPECT_TRUE(out.timing.total_ns.has_value());
  EXPECT_TRUE(out.timing.eval_ns.has_value());
  EXPECT_FALSE(out.timing.timed_out);
}

TEST_F(OllamaClientTest, EmbedJobReportsTheDurationsItHas) {
  SetFake({{"load_ms", 20}});
  auto progress = std::make_shared<std::atomic<uint64_t>>(0);
  WorkOutcome out = RunKind("embed", {{"texts", {"alpha"}}}, nullptr, progress);
  ASSERT_EQ(out.kind, WorkOutcome::Kind::kDone) << out.error;
  EXPECT_EQ(progress->load(), 1u);
  EXPECT_TRUE(out.timing.total_ns.has_value());
  EXPECT_TRUE(out.timing.load_ns.has_value());
  EXPECT_FALSE(out.timing.prompt_eval_ns.has_value());  // /api/embed does not send them
  EXPECT_FALSE(out.timing.eval_ns.has_value());
  EXPECT_FALSE(out.timing.timed_out);
}

TEST_F(OllamaClientTest, JobThatTimesOutSaysSo) {
  config_.backend.first_byte_timeout_s = 1;
  SetFake({{"first_byte_stall_ms", 10000}});
  auto progress = std::make_shared<std::atomic<uint64_t>>(0);
  WorkOutcome out = RunKind("summarize", {{"text", "Hi."}}, nullptr, progress);
  EXPECT_EQ(out.kind, WorkOutcome::Kind::kRetry) << out.error;
  EXPECT_TRUE(out.timing.timed_out);
  EXPECT_FALSE(out.timing.total_ns.has_value());
  EXPECT_EQ(progress->load(), 0u);
  EXPECT_TRUE(CallStatusOf(out).timed_out);

  SetFake({{"fail_next", {{{"status", 500}, {"body", json{{"error", "crash"}}}}}}});
  WorkOutcome crash = RunKind("generate", {{"prompt", "x"}});
  EXPECT_EQ(crash.kind, WorkOutcome::Kind::kRetry);
  EXPECT_FALSE(crash.timing.timed_out);
}

TEST_F(OllamaClientTest, JobOutcomesFollowTheClassification) {
  WorkOutcome missing = RunKind("generate", {{"prompt", "x"}, {"model", "llama9"}});
  EXPECT_EQ(missing.kind, WorkOutcome::Kind::kFailed);
  EXPECT_NE(missing.error.find("model 'llama9' not found"), std::string::npos);

  SetFake({{"fail_next", {{{"status", 503}, {"body", json{{"error", "busy"}}}}}}});
  EXPECT_EQ(RunKind("summarize", {{"text", "Hi."}}).kind, WorkOutcome::Kind::kBusy);

  SetFake({{"fail_next", {{{"status", 500}, {"body", json{{"error", "crash"}}}}}}});
  WorkOutcome retry = RunKind("embed", {{"texts", {"a"}}});
  EXPECT_EQ(retry.kind, WorkOutcome::Kind::kRetry);
  EXPECT_NE(retry.error.find("crash"), std::string::npos);

  SetFake({{"token_ms", 50}, {"tokens", 100000}});
  auto cancel = std::make_shared<std::atomic<bool>>(false);
  std::thread canceller([&] {
    std::this_thread::sleep_for(200ms);
    *cancel = true;
  });
  WorkOutcome cancelled = RunKind("summarize", {{"text", "Hi."}}, cancel);
  canceller.join();
  EXPECT_EQ(cancelled.kind, WorkOutcome::Kind::kCancelled);
}

}  // namespace
}  // namespace digestd
