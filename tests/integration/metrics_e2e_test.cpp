// The metrics endpoint end to end: the real digestd with [metrics] listen on
// a free port (port 0; the daemon logs and reports the port it bound), real
// jobs against the fake Ollama (in process, tests/support/fake_ollama) with
// a busy answer, a retryable failure and a fatal one injected, and /metrics
// scraped with libcurl before and after, parsed (prom_parse.h) and compared:
// the counters moved as the jobs did. Run on both stores, PostgreSQL first.
// A scrape is also given to `promtool check metrics` when promtool is
// installed (Debian's prometheus package; scripts/setup installs it in CI).
#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <regex>
#include <set>
#include <string>

#include "../support/daemon_harness.h"
#include "../support/prom_parse.h"
#include "fake_ollama.h"

namespace digestd {
namespace {

using nlohmann::json;
using testing::DaemonProcess;
using testing::ParsePromText;
using testing::PromScrape;
using L = std::map<std::string, std::string>;

struct Scrape {
  long status = 0;
  std::string content_type;
  std::string body;
  std::string error;
};

Scrape Get(const std::string& url) {
  Scrape s;
  CURL* curl = curl_easy_init();
  if (curl == nullptr) {
    s.error = "curl_easy_init failed";
    return s;
  }
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 10000L);
  curl_easy_setopt(
      curl, CURLOPT_WRITEFUNCTION, +[](char* p, size_t size, size_t n, void* user) {
        static_cast<std::string*>(user)->append(p, size * n);
        return size * n;
      });
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &s.body);
  CURLcode rc = curl_easy_perform(curl);
  if (rc == CURLE_OK) {
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &s.status);
    char* ct = nullptr;
    curl_easy_getinfo(curl, CURLINFO_CONTENT_TYPE, &ct);
    if (ct != nullptr) s.content_type = ct;
  } else {
    s.error = curl_easy_strerror(rc);
  }
  curl_easy_cleanup(curl);
  return s;
}

class MetricsE2E : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    int port = fake_.Start(0);
    ASSERT_NE(port, 0) << fake_.last_error();
    std::string config = R"([metrics]
listen = "127.0.0.1:0"
[backend]
url = ")" + fake_.base_url() +
                         R"("
max_attempts = 5
backoff_base_ms = 10
backoff_max_ms = 50
[writer]
batch_ms = 20
)";
    ASSERT_TRUE(daemon_.Start({.store = GetParam(), .config = config}));
    listen_ = daemon_.Status()["metrics"].value("listen", "");
    ASSERT_NE(listen_, "");
    ASSERT_EQ(listen_.rfind("127.0.0.1:", 0), 0u) << listen_;
    ASSERT_NE(listen_, "127.0.0.1:0") << "status shows the port bound, not 0";
  }

  void TearDown() override {
    if (daemon_.Running()) {
      EXPECT_TRUE(daemon_.Stop());
    }
    fake_.Stop();
  }

  PromScrape ScrapeOk() {
    Scrape s = Get("http://" + listen_ + "/metrics");
    EXPECT_EQ(s.error, "");
    EXPECT_EQ(s.status, 200);
    EXPECT_EQ(s.content_type, "text/plain; version=0.0.4; charset=utf-8");
    last_body_ = s.body;
    PromScrape m = ParsePromText(s.body);
    EXPECT_EQ(m.error, "") << s.body;
    return m;
  }

  void Submit(const std::string& kind, const std::string& key, const json& input,
              const std::string& lane = "background") {
    json answer = daemon_.CallOk(
        {{"op", "submit"}, {"kind", kind}, {"key", key}, {"lane", lane}, {"input", input}});
    EXPECT_EQ(answer.value("existing", true), false) << answer.dump();
  }

  // Polls without wait_ms: a waiting `result` would promote a background
  // job to the interactive lane, and the counters below are by lane.
  json AwaitDone(const std::string& key) {
    json job;
    bool done = testing::WaitFor(
        [&] {
          job = daemon_.CallOk({{"op", "result"}, {"key", key}}, 15000);
          std::string s = job.value("status", "");
          return s == "done" || s == "failed" || s == "cancelled";
        },
        std::chrono::milliseconds(30000));
    EXPECT_TRUE(done) << key << ": " << job.dump();
    return job;
  }

  bool Postgres() const { return std::string(GetParam()) == "postgres"; }

  testing::FakeOllama fake_;
  DaemonProcess daemon_;
  std::string listen_;
  std::string last_body_;
};

TEST_P(MetricsE2E, LogsTheBoundPortAndAnswers404Elsewhere) {
  std::string line = daemon_.WaitForLog("metrics: serving");
  EXPECT_NE(line.find("http://" + listen_ + "/metrics"), std::string::npos) << line;
  Scrape other = Get("http://" + listen_ + "/");
  EXPECT_EQ(other.status, 404);
}

TEST_P(MetricsE2E, CountersMoveWithRealJobs) {
  PromScrape before = ScrapeOk();
  EXPECT_EQ(before.Value("digestd_state", {{"state", "running"}}), 1);
  EXPECT_EQ(before.Value("digestd_backend_up"), 1);
  EXPECT_EQ(before.Value("digestd_store_info", {{"store", GetParam()}}), 1);
  if (Postgres()) {
    EXPECT_EQ(before.Value("digestd_db_up"), 1);
  }

  // 1. A summary whose first attempt gets a busy answer and whose second a
  //    runner crash: two retries, then the model's answer.
  ASSERT_EQ(fake_.MergeSettings(json::parse(
                R"({"fail_next":[{"status":503,"body":{"error":"server busy"}},
                                 {"status":500,"body":{"error":"runner crashed"}}]})")),
            "");
  Submit("summarize", "m:retry", {{"text", "Anna found the key. She opened the door."}});
  json retried = AwaitDone("m:retry");
  EXPECT_EQ(retried.value("status", ""), "done") << retried.dump();
  // 2. A summary whose model answers 400 (fatal): the stored fallback.
  ASSERT_EQ(fake_.MergeSettings(
                json::parse(R"({"fail_next":[{"status":400,"body":{"error":"bad request"}}]})")),
            "");
  Submit("summarize", "m:fallback", {{"text", "Bert left early. Nobody noticed."}});
  json fallback = AwaitDone("m:fallback");
  EXPECT_EQ(fallback["result"].value("fallback", false), true) << fallback.dump();
  // 3. An embedding and an interactive generation that just work, and two noops.
  Submit("embed", "m:embed", {{"texts", {"one", "two"}}});
  Submit("generate", "m:gen", {{"prompt", "Say hello."}}, "interactive");
  daemon_.SubmitNoop("m:noop1", 0);
  daemon_.SubmitNoop("m:noop2", 0, "interactive");
  for (const char* key : {"m:embed", "m:gen", "m:noop1", "m:noop2"}) {
    EXPECT_EQ(AwaitDone(key).value("status", ""), "done") << key;
  }
  // A duplicate submit (the same kind and input: another input is a conflict).
  json dup = daemon_.CallOk(
      {{"op", "submit"}, {"kind", "noop"}, {"key", "m:noop1"}, {"input", {{"sleep_ms", 0}}}});
  EXPECT_EQ(dup.value("existing", false), true);
  if (Postgres()) {
    // The result rows commit in the writer's next batch.
    ASSERT_TRUE(testing::WaitFor([&] {
      return ScrapeOk().Value("digestd_writer_result_rows_total").value_or(0) >=
             before.Value("digestd_writer_result_rows_total").value_or(0) + 6;
    }));
  }

  PromScrape after = ScrapeOk();
  auto moved = [&](const std::string& name, const L& labels = {}) {
    return after.Sum(name, labels) - before.Sum(name, labels);
  };
  // Six new jobs, one duplicate.
  EXPECT_EQ(moved("digestd_jobs_submitted_total"), 6);
  EXPECT_EQ(moved("digestd_jobs_duplicate_total"), 1);
  if (!Postgres()) {
    // PostgreSQL counts its submits without kind and lane labels (unlabelled sample).
    EXPECT_EQ(
        moved("digestd_jobs_submitted_total", {{"kind", "summarize"}, {"lane", "background"}}), 2);
    EXPECT_EQ(moved("digestd_jobs_submitted_total", {{"kind", "noop"}, {"lane", "interactive"}}),
              1);
  }
  EXPECT_EQ(moved("digestd_jobs_finished_total",
                  {{"kind", "summarize"}, {"lane", "background"}, {"outcome", "done"}}),
            2);
  EXPECT_EQ(moved("digestd_jobs_finished_total",
                  {{"kind", "generate"}, {"lane", "interactive"}, {"outcome", "done"}}),
            1);
  EXPECT_EQ(moved("digestd_jobs_finished_total",
                  {{"kind", "embed"}, {"lane", "background"}, {"outcome", "done"}}),
            1);
  EXPECT_EQ(moved("digestd_jobs_finished_total", {{"outcome", "done"}}), 6);
  EXPECT_EQ(moved("digestd_jobs_finished_total", {{"outcome", "failed"}}), 0);
  EXPECT_EQ(moved("digestd_jobs_fallback_total", {{"kind", "summarize"}}), 1);
  EXPECT_EQ(moved("digestd_job_retries_total", {{"kind", "summarize"}, {"lane", "background"}}), 2);
  EXPECT_EQ(moved("digestd_backend_busy_total"), 1);
  EXPECT_GE(moved("digestd_backend_retries_total"), 1);
  EXPECT_EQ(moved("digestd_backend_failures_total"), 1);
  // Six backend requests: three for the first summary, one each for the
  // fallback, the embedding and the generation.
  EXPECT_EQ(moved("digestd_backend_requests_total"), 6);
  EXPECT_EQ(moved("digestd_backend_request_duration_seconds_count"), 6);
  EXPECT_EQ(moved("digestd_backend_request_duration_seconds_bucket", {{"le", "+Inf"}}), 6);
  EXPECT_EQ(moved("digestd_job_latency_seconds_count"), 6);
  EXPECT_EQ(moved("digestd_job_latency_seconds_count", {{"lane", "interactive"}}), 2);
  EXPECT_EQ(after.Value("digestd_jobs_running", {{"lane", "background"}}), 0);
  EXPECT_EQ(after.Value("digestd_backend_in_flight"), 0);
  EXPECT_EQ(after.Value("digestd_queue_capacity", {{"lane", "interactive"}}), 200);
  // Buckets are cumulative and end at +Inf = _count.
  for (const char* lane : {"interactive", "background"}) {
    double last = 0;
    for (const auto& s : after.All("digestd_job_latency_seconds_bucket")) {
      if (s.labels.at("lane") != lane) continue;
      EXPECT_GE(s.value, last);
      last = s.value;
    }
    EXPECT_EQ(after.Value("digestd_job_latency_seconds_count", {{"lane", lane}}), last);
  }
  if (Postgres()) {
    EXPECT_GE(moved("digestd_writer_rows_total"), 12) << "six submits and six results";
    EXPECT_GE(moved("digestd_writer_batches_total"), 1);
    EXPECT_EQ(after.Value("digestd_db_state", {{"state", "up"}}), 1);
  }
  EXPECT_GE(daemon_.Status()["metrics"].value("scrapes", 0), 2);
}

TEST_P(MetricsE2E, PromtoolAcceptsTheScrape) {
  daemon_.SubmitNoop("p:1", 0);
  Submit("summarize", "p:2", {{"text", "One sentence. Another one."}});
  AwaitDone("p:2");
  ScrapeOk();
  const std::string promtool = testing::FindProgram("promtool");
  if (promtool.empty()) {
    GTEST_SKIP() << "promtool is not installed, so `promtool check metrics` was not run (it "
                    "comes with Debian's prometheus package, which scripts/setup installs when "
                    "CI=true or with --with-promtool)";
  }
  const std::string file = daemon_.dir().File("scrape.txt");
  ASSERT_TRUE(testing::WriteTextFile(file, last_body_));
  auto out = testing::RunProcess({"/bin/sh", "-c", "'" + promtool + "' check metrics < " + file});
  ASSERT_TRUE(out.status.has_value()) << "promtool did not finish";
  EXPECT_EQ(out.status->ToString(), "exit 0") << out.out << out.err;
  EXPECT_EQ(out.out + out.err, "") << "promtool's lint found problems";
}

// Every metric the Grafana dashboard queries is one digestd serves (the
// database and writer panels only with PostgreSQL), so a renamed metric
// cannot leave a panel silently empty.
TEST_P(MetricsE2E, GrafanaDashboardQueriesOnlyServedMetrics) {
  const std::string path = DIGESTD_SOURCE_DIR "/contrib/grafana/digestd.json";
  json dashboard = json::parse(testing::ReadTextFile(path), nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(dashboard.is_object()) << path << " is missing or not JSON";
  std::set<std::string> queried;
  const std::regex name_re("digestd_[a-z0-9_]+");
  int panels = 0;
  for (const auto& panel : dashboard["panels"]) {
    if (!panel.contains("targets")) continue;
    ++panels;
    for (const auto& target : panel["targets"]) {
      std::string expr = target.value("expr", "");
      for (std::sregex_iterator it(expr.begin(), expr.end(), name_re), end; it != end; ++it) {
        queried.insert(it->str());
      }
    }
  }
  EXPECT_GE(panels, 15);
  daemon_.SubmitNoop("g:1", 0);
  PromScrape m = ScrapeOk();
  for (std::string name : queried) {
    if (name.size() > 7 && name.substr(name.size() - 7) == "_bucket") {
      name.resize(name.size() - 7);
    }
    if (!Postgres() &&
        (name.rfind("digestd_db_", 0) == 0 || name.rfind("digestd_writer_", 0) == 0)) {
      continue;
    }
    // The commit histogram appears once the store reports it.
    if (name == "digestd_writer_commit_seconds") continue;
    EXPECT_TRUE(m.types.count(name))
        << path << " queries " << name << ", which digestd does not serve";
  }
}

// An address that cannot be bound stops digestd at start, naming it.
TEST(MetricsStart, PortInUseStopsDigestdNamingTheAddress) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string taken = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));

  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.store = "memory",
                            .config = "[metrics]\nlisten = \"" + taken + "\"\n",
                            .wait_ready = false}));
  auto exit = daemon.WaitExit();
  close(fd);
  ASSERT_TRUE(exit.has_value()) << "digestd kept running on a port in use";
  EXPECT_EQ(exit->ToString(), "exit 1");
  std::string log = daemon.StderrText();
  EXPECT_NE(log.find("[metrics] listen = \"" + taken + "\": cannot bind"), std::string::npos)
      << log;
  EXPECT_NE(log.find("in use"), std::string::npos) << log;
}

INSTANTIATE_TEST_SUITE_P(Stores, MetricsE2E, ::testing::ValuesIn(testing::kStores),
                         testing::StoreName);

}  // namespace
}  // namespace digestd
