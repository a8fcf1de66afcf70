#include "client/status_table.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace digestd {
namespace {

using nlohmann::json;

json Backend(const std::string& state) {
  json b = {{"kind", "ollama"},
            {"url", "http://127.0.0.1:11434"},
            {"state", state},
            {"breaker", {{"state", state}}},
            {"in_flight", 2},
            {"latency", {{"count", 10}, {"p50_ms", 120.0}, {"p95_ms", 300.0}, {"p99_ms", 1500.0}}}};
  return b;
}

TEST(StatusTable, BackendLineShowsKindUrlStateInFlightAndLatency) {
  std::string out = FormatStatus({{"backend", Backend("closed")}});
  EXPECT_NE(out.find("backend      ollama  http://127.0.0.1:11434  up  breaker closed  in flight 2"
                     "  latency p50 120.0 ms p99 1.50 s\n"),
            std::string::npos)
      << out;
  EXPECT_EQ(out.find("held"), std::string::npos) << out;
}

TEST(StatusTable, ResultWaitsShowHowManyWereReadyWhenAsked) {
  EXPECT_EQ(FormatStatus(json::object()).find("waits"), std::string::npos);
  std::string out = FormatStatus({{"precompute", {{"hit", 6}, {"late", 1}, {"miss", 1}}}});
  EXPECT_NE(out.find("waits        hit 6  late 1  miss 1  (75% ready when asked)\n"),
            std::string::npos)
      << out;
}

TEST(StatusTable, OpenBreakerShowsItsReasonNextProbeAndHeldJobs) {
  json b = Backend("open");
  b["breaker"]["reason"] = "connection refused";
  b["breaker"]["probe_in_ms"] = 4200;
  b["held"] = 3;
  std::string out = FormatStatus({{"backend", b}});
  EXPECT_NE(out.find("  down  breaker open"), std::string::npos) << out;
  EXPECT_NE(out.find("  breaker    open: connection refused; next probe in 4.2s\n"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("  held       3 queued jobs wait for the backend"), std::string::npos) << out;
}

TEST(StatusTable, WriterCommitRateHasALabelThatSaysWhatItCounts) {
  json db = {
      {"store", "postgres"}, {"state", "up"}, {"writer", {{"commits_per_1000_results", 12.5}}}};
  std::string out = FormatStatus({{"db", db}});
  EXPECT_NE(out.find("12.5 commits per 1000 finished jobs"), std::string::npos) << out;
  EXPECT_EQ(out.find("commits/1000"), std::string::npos) << out;
}

TEST(StatusTable, JobShowsBusyRetriesWhenThereWereAny) {
  json job = {{"key", "k"}, {"kind", "summarize"}, {"status", "done"}, {"busy_retries", 2}};
  EXPECT_NE(FormatJob(job).find("busy retries 2"), std::string::npos) << FormatJob(job);
  job["busy_retries"] = 0;
  EXPECT_EQ(FormatJob(job).find("busy retries"), std::string::npos) << FormatJob(job);
}

TEST(StatusTable, AnEventIsOneLineWithTimeStateKeyAndWhatItRan) {
  nlohmann::json done = {{"event", "job"},         {"state", "done"},      {"key", "book:7/ch:3"},
                         {"kind", "summarize"},    {"lane", "background"}, {"attempt", 2},
                         {"at_ms", 1796655323680}, {"run_ms", 3201.4}};
  std::string line = FormatEvent(done);
  EXPECT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1) << line;
  for (const char* want :
       {"14:55:23.680", "done", "book:7/ch:3", "summarize background", "attempt 2", "ran 3.2s"}) {
    EXPECT_NE(line.find(want), std::string::npos) << want << " in " << line;
  }
  nlohmann::json failed = {
      {"event", "job"}, {"state", "failed"}, {"key", "k"}, {"error", "Ollama answered HTTP 404"}};
  EXPECT_NE(FormatEvent(failed).find("Ollama answered HTTP 404"), std::string::npos);
  std::string lost = FormatEvent({{"event", "lost"}, {"count", 37}});
  EXPECT_NE(lost.find("lost 37 events"), std::string::npos) << lost;
}

TEST(StatusTable, GroupProgressCountsWhatEndedOfWhatWasQueued) {
  GroupProgress p;
  auto ev = [](const char* group, const char* state) {
    return nlohmann::json{{"event", "job"}, {"state", state}, {"key", "k"}, {"group", group}};
  };
  for (int i = 0; i < 4; ++i) p.Add(ev("book:7", "queued"));
  p.Add(ev("book:7", "started"));
  p.Add(ev("book:7", "done"));
  p.Add(ev("book:7", "failed"));
  p.Add(ev("game:1", "done"));                                    // queued before the watch began
  p.Add({{"event", "job"}, {"state", "done"}, {"key", "solo"}});  // no group
  std::string out = p.Format(8, 10);
  EXPECT_NE(out.find("book:7"), std::string::npos) << out;
  EXPECT_NE(out.find("[#####-----]   1/4   done, 1 failed"), std::string::npos) << out;
  EXPECT_NE(out.find("[##########]   1/1   done"), std::string::npos) << out;
  EXPECT_LT(out.find("game:1"), out.find("book:7")) << "most recently changed first: " << out;
  EXPECT_EQ(out.find("solo"), std::string::npos) << out;
}

TEST(StatusTable, JobListIsATableWithAHeaderAndOneLinePerJob) {
  json jobs = json::array({{{"key", "book:7/ch:3"},
                            {"status", "failed"},
                            {"kind", "summarize"},
                            {"lane", "background"},
                            {"attempts", 3},
                            {"max_attempts", 3},
                            {"submitted_at_ms", 1000},
                            {"error", "backend down\nfor good"}},
                           {{"key", "k"},
                            {"status", "queued"},
                            {"kind", "noop"},
                            {"lane", "interactive"},
                            {"attempts", 0},
                            {"max_attempts", 3},
                            {"submitted_at_ms", 61000},
                            {"last_error", "cancelled by request"}}});
  std::string out = FormatJobList(jobs, 121000);
  auto lines = std::count(out.begin(), out.end(), '\n');
  EXPECT_EQ(lines, 3) << out;
  EXPECT_EQ(out.rfind("KEY", 0), 0u) << out;
  EXPECT_NE(out.find("book:7/ch:3  failed"), std::string::npos) << out;
  EXPECT_NE(out.find("3/3"), std::string::npos) << out;
  EXPECT_NE(out.find("2m00s"), std::string::npos) << out;
  EXPECT_NE(out.find("backend down for good"), std::string::npos) << out;
  EXPECT_NE(out.find("cancelled by request"), std::string::npos) << out;
  EXPECT_EQ(FormatJobList(jobs, 121000, /*header=*/false).find("KEY"), std::string::npos);
}

}  // namespace
}  // namespace digestd
