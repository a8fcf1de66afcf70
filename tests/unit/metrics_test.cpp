// The Prometheus text the metrics endpoint serves: the writer (names,
// escaping, values, histograms), the histogram itself, the daemon's figures
// rendered from a status answer and a JobTable, and [metrics] listen
// addresses.
#include <gtest/gtest.h>
#include <netinet/in.h>

#include <cmath>
#include <limits>
#include <regex>

#include "../support/prom_parse.h"
#include "jobs/job_table.h"
#include "metrics/daemon_metrics.h"
#include "metrics/listen_address.h"
#include "metrics/prom_text.h"
#include "obs/histogram.h"

namespace digestd {
namespace {

using testing::ParsePromText;
using testing::PromScrape;

TEST(PromText, EscapesLabelValuesAndHelp) {
  EXPECT_EQ(EscapeLabelValue(R"(a\b"c)"
                             "\nd"),
            R"(a\\b\"c\nd)");
  EXPECT_EQ(EscapeLabelValue("plain text, with ünïcode"), "plain text, with ünïcode");
  // HELP escapes backslash and newline, not quotes.
  EXPECT_EQ(EscapeHelp("a \"b\" \\ c\nd"), "a \"b\" \\\\ c\\nd");

  PromText out;
  out.Family("x_total", PromText::Type::kCounter, "Help with a \\ and a\nnewline.");
  out.Sample({{"kind", "we\"ird\\kind\nname"}, {"lane", "background"}}, 3);
  EXPECT_EQ(out.text(),
            "# HELP x_total Help with a \\\\ and a\\nnewline.\n"
            "# TYPE x_total counter\n"
            "x_total{kind=\"we\\\"ird\\\\kind\\nname\",lane=\"background\"} 3\n");
  // And a reader gets the original value back.
  PromScrape scrape = ParsePromText(out.text());
  ASSERT_EQ(scrape.error, "");
  EXPECT_EQ(scrape.Value("x_total", {{"kind", "we\"ird\\kind\nname"}, {"lane", "background"}}), 3);
  EXPECT_EQ(scrape.help["x_total"], "Help with a \\ and a\nnewline.");
}

TEST(PromText, WritesValuesAsPrometheusReadsThem) {
  EXPECT_EQ(FormatPromValue(0), "0");
  EXPECT_EQ(FormatPromValue(12), "12");
  EXPECT_EQ(FormatPromValue(1e15), "1000000000000000");
  EXPECT_EQ(FormatPromValue(0.25), "0.25");
  EXPECT_EQ(FormatPromValue(-3.5), "-3.5");
  EXPECT_EQ(FormatPromValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatPromValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatPromValue(std::nan("")), "NaN");
  // Shortest form that reads back exactly.
  double third = 1.0 / 3.0;
  EXPECT_EQ(std::stod(FormatPromValue(third)), third);
}

TEST(PromText, UnlabelledSampleHasNoBraces) {
  PromText out;
  out.Single("up_seconds", PromText::Type::kGauge, "Seconds.", 1.5);
  EXPECT_EQ(out.text(), "# HELP up_seconds Seconds.\n# TYPE up_seconds gauge\nup_seconds 1.5\n");
}

TEST(Histogram, BucketsAreCumulativeAndEndWithInf) {
  Histogram h({0.1, 1, 10});
  for (double v : {0.05, 0.1, 0.5, 1.0, 5.0, 50.0, 500.0}) h.Observe(v);
  h.Observe(std::nan(""));  // ignored
  EXPECT_EQ(h.count(), 7u);
  EXPECT_DOUBLE_EQ(h.sum(), 0.05 + 0.1 + 0.5 + 1.0 + 5.0 + 50.0 + 500.0);
  // Own counts per bucket: a value equal to a bound belongs to it (le).
  EXPECT_EQ(h.counts(), (std::vector<uint64_t>{2, 2, 1, 2}));

  PromText out;
  out.Family("op_seconds", PromText::Type::kHistogram, "Time of an op.");
  out.HistogramSamples({{"lane", "interactive"}}, h);
  EXPECT_EQ(out.text(),
            "# HELP op_seconds Time of an op.\n"
            "# TYPE op_seconds histogram\n"
            "op_seconds_bucket{lane=\"interactive\",le=\"0.1\"} 2\n"
            "op_seconds_bucket{lane=\"interactive\",le=\"1\"} 4\n"
            "op_seconds_bucket{lane=\"interactive\",le=\"10\"} 5\n"
            "op_seconds_bucket{lane=\"interactive\",le=\"+Inf\"} 7\n"
            "op_seconds_sum{lane=\"interactive\"} 556.65\n"
            "op_seconds_count{lane=\"interactive\"} 7\n");
}

TEST(Histogram, SortsBoundsAndDropsDuplicatesAndInfinities) {
  Histogram h({10, 1, 1, std::numeric_limits<double>::infinity(), 5});
  EXPECT_EQ(h.bounds(), (std::vector<double>{1, 5, 10}));
  EXPECT_EQ(h.counts().size(), 4u);
}

TEST(Histogram, JsonRoundTrip) {
  Histogram h(CommitSecondsBuckets());
  for (double v : {0.0001, 0.003, 0.003, 0.2, 42.0}) h.Observe(v);
  nlohmann::json j = h.ToJson();
  EXPECT_EQ(j["le"].back(), "+Inf");
  EXPECT_EQ(j["buckets"].back(), 5);
  Histogram back({});
  ASSERT_TRUE(Histogram::FromJson(j, &back));
  EXPECT_EQ(back.bounds(), h.bounds());
  EXPECT_EQ(back.counts(), h.counts());
  EXPECT_EQ(back.count(), h.count());
  EXPECT_DOUBLE_EQ(back.sum(), h.sum());
  // Not cumulative: refused.
  j["buckets"][1] = 0;
  EXPECT_FALSE(Histogram::FromJson(j, &back));
  EXPECT_FALSE(Histogram::FromJson(nlohmann::json::object(), &back));
}

TEST(Histogram, ShippedBucketsAreAscending) {
  for (const auto& b : {JobSecondsBuckets(), BackendSecondsBuckets(), CommitSecondsBuckets()}) {
    ASSERT_FALSE(b.empty());
    EXPECT_TRUE(std::is_sorted(b.begin(), b.end()));
    EXPECT_EQ(Histogram(b).bounds().size(), b.size());
  }
}

// A status answer shaped like Daemon::StatusJson with a PostgreSQL store.
nlohmann::json SampleStatus() {
  Histogram commit(CommitSecondsBuckets());
  commit.Observe(0.002);
  commit.Observe(0.02);
  nlohmann::json j = nlohmann::json::parse(R"({
    "version": "0.1.0", "state": "running", "uptime_s": 12.5, "reloads": 1,
    "workers": {"limit": 4, "min": 2, "max": 8, "busy": 3, "reserved": 1, "pool": 12},
    "queues": {"interactive": {"depth": 1, "capacity": 200, "running": 1},
               "background": {"depth": 7, "capacity": 200, "running": 2}},
    "jobs": {"submitted": 5, "duplicates": 2, "running": 3, "done": 1, "failed": 1,
             "cancelled": 0, "released": 0, "retried": 1, "waiting_retry": 0},
    "backend": {"kind": "ollama", "url": "http://127.0.0.1:11434", "state": "open",
                "breaker": {"state": "open", "consecutive_failures": 5, "times_opened": 2},
                "in_flight": 2, "requests": 40, "retries": 3, "busy": 4, "failures": 6,
                "probes": 1},
    "db": {"store": "postgres", "state": "up", "connects": 2, "disconnects": 0,
           "backlog": {"interactive": {"queued": 0, "delayed": 0, "running": 1},
                       "background": {"queued": 120, "delayed": 3, "running": 2}},
           "leases": {"held": 3, "lost": 0},
           "writer": {"depth": 4, "capacity": 500, "rows_written": 90, "batches": 9,
                      "submits_written": 50, "results_written": 40, "ignored": 0,
                      "rejected": 0, "failed_batches": 1, "last_commit_ms": 2.5}},
    "control": {"clients": 1, "accepted": 10, "requests": 30, "rejected": 0},
    "precompute": {"hit": 5, "late": 2, "miss": 1,
                   "by_kind": {"embed": {"hit": 4, "late": 1, "miss": 0},
                               "group": {"hit": 1, "late": 1, "miss": 1}},
                   "by_prefix": {"game": {"hit": 5, "late": 2, "miss": 1}}}
  })");
  j["db"]["writer"]["commit_seconds"] = commit.ToJson();
  return j;
}

// Fills a JobTable as a run would: submits, starts and finishes.
void RunJobs(JobTable& jobs) {
  auto a = jobs.Create("a", "", "summarize", Lane::kInteractive, {});
  auto b = jobs.Create("b", "", "summarize", Lane::kBackground, {});
  auto c = jobs.Create("c", "", "noop", Lane::kBackground, {});
  auto d = jobs.Create("d", "", "noop", Lane::kBackground, {});
  for (const auto& j : {a, b, c, d}) jobs.MarkRunning(j);
  WorkOutcome fallback;
  fallback.kind = WorkOutcome::Kind::kDone;
  fallback.result = {{"summary", "First sentence."}, {"fallback", true}};
  fallback.error = "HTTP 404: model not found";
  jobs.MarkFinished(a, fallback);
  jobs.MarkRetrying(b, "timeout", false);
  WorkOutcome failed;
  failed.kind = WorkOutcome::Kind::kFailed;
  failed.error = "HTTP 400";
  jobs.MarkFinished(b, failed);
  WorkOutcome done;
  done.kind = WorkOutcome::Kind::kDone;
  done.result = {{"slept_ms", 0}};
  jobs.MarkFinished(c, done);
  jobs.MarkReleased(d);
}

PromScrape Render(const nlohmann::json& status, const JobTable* jobs, const Histogram* backend) {
  MetricsSources src;
  src.status = &status;
  src.jobs = jobs;
  src.backend_latency = backend;
  std::string text = RenderDaemonMetrics(src);
  PromScrape scrape = ParsePromText(text);
  EXPECT_EQ(scrape.error, "") << text;
  return scrape;
}

TEST(DaemonMetrics, FollowsPrometheusNaming) {
  JobTable jobs(100);
  RunJobs(jobs);
  Histogram backend(BackendSecondsBuckets());
  backend.Observe(0.3);
  PromScrape m = Render(SampleStatus(), &jobs, &backend);
  ASSERT_GT(m.types.size(), 40u);
  const std::regex name_re("digestd_[a-z0-9_]+");
  for (const auto& [name, type] : m.types) {
    EXPECT_TRUE(std::regex_match(name, name_re)) << name;
    EXPECT_FALSE(m.help[name].empty()) << name << " has no HELP";
    bool total = name.size() > 6 && name.substr(name.size() - 6) == "_total";
    EXPECT_EQ(total, type == "counter") << name << " is a " << type;
    // Base units only.
    for (const char* unit : {"_ms", "_milliseconds", "_us", "_minutes", "_kb", "_mb"}) {
      EXPECT_EQ(name.find(unit), std::string::npos) << name;
    }
    if (type == "histogram") {
      EXPECT_NE(name.find("_seconds"), std::string::npos) << name;
    }
  }
  for (const auto& s : m.samples) {
    for (const auto& [k, v] : s.labels) {
      EXPECT_NE(k.substr(0, 2), "__") << s.name;
      EXPECT_NE(k, "") << s.name;
    }
  }
}

TEST(DaemonMetrics, CountsByKindLaneAndOutcome) {
  JobTable jobs(100);
  RunJobs(jobs);
  PromScrape m = Render(SampleStatus(), &jobs, nullptr);
  using L = std::map<std::string, std::string>;
  EXPECT_EQ(
      m.Value("digestd_jobs_submitted_total", L{{"kind", "summarize"}, {"lane", "interactive"}}),
      1);
  EXPECT_EQ(m.Value("digestd_jobs_submitted_total", L{{"kind", "noop"}, {"lane", "background"}}),
            2);
  // The status says 5 submitted; the tallies know 4: the rest is unlabelled.
  EXPECT_EQ(m.Value("digestd_jobs_submitted_total"), 1);
  EXPECT_EQ(m.Sum("digestd_jobs_submitted_total"), 5);
  EXPECT_EQ(m.Value("digestd_jobs_finished_total",
                    L{{"kind", "summarize"}, {"lane", "interactive"}, {"outcome", "done"}}),
            1);
  EXPECT_EQ(m.Value("digestd_jobs_finished_total",
                    L{{"kind", "summarize"}, {"lane", "background"}, {"outcome", "failed"}}),
            1);
  EXPECT_EQ(m.Value("digestd_jobs_finished_total",
                    L{{"kind", "noop"}, {"lane", "background"}, {"outcome", "done"}}),
            1);
  EXPECT_EQ(m.Sum("digestd_jobs_finished_total"), 3);
  EXPECT_EQ(
      m.Value("digestd_jobs_fallback_total", L{{"kind", "summarize"}, {"lane", "interactive"}}), 1);
  EXPECT_EQ(m.Sum("digestd_jobs_fallback_total"), 1);
  EXPECT_EQ(m.Value("digestd_job_retries_total", L{{"kind", "summarize"}, {"lane", "background"}}),
            1);
  EXPECT_EQ(m.Value("digestd_jobs_released_total", L{{"kind", "noop"}, {"lane", "background"}}), 1);
}

TEST(DaemonMetrics, JobHistogramsAreCumulativePerLane) {
  JobTable jobs(100);
  RunJobs(jobs);
  PromScrape m = Render(SampleStatus(), &jobs, nullptr);
  for (const char* family : {"digestd_job_latency_seconds", "digestd_job_run_seconds"}) {
    ASSERT_EQ(m.types[family], "histogram");
    for (const char* lane : {"interactive", "background"}) {
      double last = -1;
      std::string last_le;
      for (const auto& s : m.All(std::string(family) + "_bucket")) {
        if (s.labels.at("lane") != lane) continue;
        EXPECT_GE(s.value, last) << family << " " << lane << " le=" << s.labels.at("le");
        last = s.value;
        last_le = s.labels.at("le");
      }
      EXPECT_EQ(last_le, "+Inf");
      EXPECT_EQ(m.Value(std::string(family) + "_count", {{"lane", lane}}), last);
      EXPECT_TRUE(m.Value(std::string(family) + "_sum", {{"lane", lane}}).has_value());
    }
  }
  // Three jobs finished: one interactive, two background.
  EXPECT_EQ(m.Value("digestd_job_latency_seconds_count", {{"lane", "interactive"}}), 1);
  EXPECT_EQ(m.Value("digestd_job_latency_seconds_count", {{"lane", "background"}}), 2);
}

TEST(DaemonMetrics, StatusFiguresAppearUnderTheirNames) {
  Histogram backend(BackendSecondsBuckets());
  backend.Observe(0.3);
  backend.Observe(7);
  PromScrape m = Render(SampleStatus(), nullptr, &backend);
  EXPECT_EQ(m.Value("digestd_build_info", {{"version", "0.1.0"}}), 1);
  EXPECT_EQ(m.Value("digestd_state", {{"state", "running"}}), 1);
  EXPECT_EQ(m.Value("digestd_state", {{"state", "draining"}}), 0);
  EXPECT_EQ(m.Value("digestd_workers_limit"), 4);
  EXPECT_EQ(m.Value("digestd_queue_depth", {{"lane", "background"}}), 7);
  EXPECT_EQ(m.Value("digestd_queue_capacity", {{"lane", "interactive"}}), 200);
  EXPECT_EQ(m.Value("digestd_jobs_running", {{"lane", "background"}}), 2);
  EXPECT_EQ(m.Value("digestd_backend_up"), 0);
  EXPECT_EQ(m.Value("digestd_backend_breaker_state", {{"state", "open"}}), 1);
  EXPECT_EQ(m.Value("digestd_backend_breaker_state", {{"state", "closed"}}), 0);
  EXPECT_EQ(m.Value("digestd_backend_breaker_opened_total"), 2);
  EXPECT_EQ(m.Value("digestd_backend_in_flight"), 2);
  EXPECT_EQ(m.Value("digestd_backend_busy_total"), 4);
  EXPECT_EQ(m.Value("digestd_backend_retries_total"), 3);
  EXPECT_EQ(m.Value("digestd_backend_request_duration_seconds_count"), 2);
  EXPECT_EQ(m.Value("digestd_backend_request_duration_seconds_bucket", {{"le", "+Inf"}}), 2);
  EXPECT_EQ(
      m.Value("digestd_backend_info", {{"kind", "ollama"}, {"url", "http://127.0.0.1:11434"}}), 1);
  EXPECT_EQ(m.Value("digestd_db_up"), 1);
  EXPECT_EQ(m.Value("digestd_db_state", {{"state", "up"}}), 1);
  EXPECT_EQ(m.Value("digestd_db_backlog_jobs", {{"lane", "background"}, {"state", "queued"}}), 120);
  EXPECT_EQ(m.Value("digestd_writer_rows_total"), 90);
  EXPECT_EQ(m.Value("digestd_writer_batches_total"), 9);
  EXPECT_EQ(m.Value("digestd_writer_last_commit_seconds"), 0.0025);
  EXPECT_EQ(m.Value("digestd_writer_commit_seconds_count"), 2);
  EXPECT_EQ(m.Value("digestd_writer_commit_seconds_bucket", {{"le", "0.0025"}}), 1);
  EXPECT_EQ(m.Value("digestd_control_requests_total"), 30);
  EXPECT_EQ(m.Value("digestd_result_waits_total", {{"kind", "embed"}, {"outcome", "hit"}}), 4);
  EXPECT_EQ(m.Value("digestd_result_waits_total", {{"kind", "group"}, {"outcome", "miss"}}), 1);
  EXPECT_EQ(
      m.Value("digestd_result_waits_by_prefix_total", {{"prefix", "game"}, {"outcome", "late"}}),
      2);
}

TEST(DaemonMetrics, MemoryStoreHasNoDatabaseFamilies) {
  nlohmann::json status = SampleStatus();
  status["db"] = {{"store", "memory"}};
  PromScrape m = Render(status, nullptr, nullptr);
  EXPECT_EQ(m.Value("digestd_store_info", {{"store", "memory"}}), 1);
  for (const auto& [name, type] : m.types) {
    EXPECT_NE(name.rfind("digestd_db_", 0), 0u) << name;
    EXPECT_NE(name.rfind("digestd_writer_", 0), 0u) << name;
  }
}

TEST(ListenAddress, ParsesNumericHostAndPort) {
  ListenAddress a;
  ASSERT_TRUE(ParseListenAddress("127.0.0.1:9464", &a).ok());
  EXPECT_EQ(a.family(), AF_INET);
  EXPECT_EQ(FormatListenAddress(reinterpret_cast<const sockaddr*>(&a.addr)), "127.0.0.1:9464");
  ASSERT_TRUE(ParseListenAddress("[::1]:0", &a).ok());
  EXPECT_EQ(a.family(), AF_INET6);
  EXPECT_EQ(FormatListenAddress(reinterpret_cast<const sockaddr*>(&a.addr)), "[::1]:0");
  EXPECT_TRUE(ParseListenAddress("0.0.0.0:65535", &a).ok());
}

TEST(ListenAddress, RefusesWhatIsNotANumericHostPort) {
  for (const char* bad : {"", "9464", ":9464", "localhost:9464", "127.0.0.1",
                          "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:94x", "::1:9464", "[::1]",
                          "[::1:9464", "[nothost]:9464", "300.1.1.1:80", "127.0.0.1:-1"}) {
    ListenAddress a;
    Status st = ParseListenAddress(bad, &a);
    EXPECT_FALSE(st.ok()) << bad;
    EXPECT_NE(st.message().find("HOST:PORT"), std::string::npos) << st.message();
    EXPECT_FALSE(ListenAddressProblem(bad).empty()) << bad;
  }
}

}  // namespace
}  // namespace digestd
