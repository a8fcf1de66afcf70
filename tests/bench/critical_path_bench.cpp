// critical_path_bench: is the user's own request slowed by background work?
// The real digestd with the shipped config (llm_bench.h), PostgreSQL with
// its durable defaults, and the fake Ollama with C parallel slots answering
// in L ms (C = 1 and 4, L = 300 ms by default), a capacity digestd is not
// told. For each C, on a fresh daemon and an empty job table:
//
//   1. idle: --idle-samples interactive summarize jobs, one at a time: the
//      time from sending the submit until the `result` (wait_ms) that says
//      the job is done has arrived, on one client connection; and digestd's
//      own share of it: that latency minus the backend request's time as
//      digestd measured it (the result's meta.request_ms, which covers the
//      HTTP exchange with the fake and nothing else);
//   2. loaded: --background summarize jobs submitted to the background lane
//      (batches of [jobs] max_batch), --settle-s for them to start, then
//      --loaded-samples interactive jobs one at a time, each submitted a
//      random 0.5 to 1.5 times --interval-s after the previous one (or when
//      it is answered, if that is later; a fixed seed). Before each, the background backlog is
//      topped up to
//      --background jobs not yet done, so it never runs dry. Background
//      throughput over that window (jobs.done from status, less the
//      interactive jobs) as a fraction of the ideal C/L. The interval keeps
//      the interactive jobs' own share of the capacity small (L / interval
//      / C: 0.10 at C = 1 with 3 s), so the background goal is reachable;
//      background work thrown away (a preempted request) lowers it.
//
// Goals (issue 9): loaded/idle <= 1.25 (p50 and p99), digestd's share of the
// idle latency <= 10 ms at p50, background throughput >= 0.85 of C/L while
// the interactive jobs arrive (their own share of the capacity is printed
// beside it). Also what the fake saw: requests, the most at once, the mean
// wait for a slot at the server, requests aborted by the client.
//
// Figures only: PASS/MISS is printed, nothing is asserted; the exit status
// is non-zero only when digestd, the fake or PostgreSQL cannot be used.
// scripts/bench runs it inside `scripts/pg-throwaway run` with fsync,
// synchronous_commit and full_page_writes on.
#include <curl/curl.h>
#include <signal.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "bench_support.h"
#include "llm_bench.h"

namespace {

using namespace digestd::bench;
using digestd::ControlClient;

constexpr double kRatioGoal = 1.25;
constexpr double kOwnShareGoalMs = 10;
constexpr double kBackgroundGoal = 0.85;

struct Options {
  std::vector<int> capacities;
  int latency_ms = 0;
  int tokens = 0;
  int idle_samples = 0;
  int loaded_samples = 0;
  long background = 0;
  double interval_s = 0;
  double settle_s = 0;
};

// One interactive job, submit to answered result.
struct Sample {
  double latency_ms = 0;  // submit sent -> result (done) received
  double request_ms = 0;  // meta.request_ms: digestd's backend request
  bool fallback = false;  // the job stored a fallback (the backend failed)
};

Sample Interactive(ControlClient& c, const std::string& key, long i) {
  const auto t0 = Clock::now();
  CallJson(c, json{{"op", "submit"},
                   {"kind", "summarize"},
                   {"key", key},
                   {"lane", "interactive"},
                   {"input", SummaryInput(i)}}
                  .dump());
  json r;
  for (;;) {
    r = CallJson(c, json{{"op", "result"}, {"key", key}, {"wait_ms", 60000}}.dump(), 70000);
    const std::string status = r.value("status", "");
    if (status == "done" || status == "failed" || status == "cancelled") break;
    if (Clock::now() - t0 > std::chrono::minutes(10)) {
      Die("interactive job %s not finished after 10 minutes (%s)", key.c_str(),
          r.dump().substr(0, 300).c_str());
    }
  }
  Sample s;
  s.latency_ms = Ms(Clock::now() - t0);
  if (r.value("status", "") != "done") {
    Die("interactive job %s ended %s: %s", key.c_str(), r.value("status", "").c_str(),
        r.dump().substr(0, 300).c_str());
  }
  s.request_ms = Field(r, "/result/meta/request_ms");
  s.fallback = r.value("result", json::object()).value("fallback", false);
  return s;
}

struct Figures {
  int capacity = 0;
  Summary idle, loaded, own, loaded_request;
  double background_fraction = 0;  // of C/L
  double interactive_share = 0;    // of the capacity, during the loaded window
  double window_s = 0;
  long background_done = 0, failed = 0, fallbacks = 0;
  std::string fake;
};

Figures RunOne(Rig& rig, const Options& opt, int capacity) {
  Figures f;
  f.capacity = capacity;
  const double ideal = capacity * 1000.0 / opt.latency_ms;  // jobs/s
  Fake fake(rig.fake_binary(), rig.dir().path(), capacity, opt.latency_ms, opt.tokens);
  auto daemon = rig.StartDaemon(Mode{"shipped", 0}, fake.url());
  ControlClient c;
  Connect(c, rig.dir().File("control.sock"));
  std::string tag = "c";  // (built in steps: g++ 12 -O3 warns on "c" + string + "-")
  tag += std::to_string(capacity) + "-";
  long n = 0;  // interactive jobs so far (keys)

  for (int i = 0; i < 2; ++i) {  // warm-up, not counted
    Interactive(c, "warm-" + tag + std::to_string(n), n);
    ++n;
  }

  std::vector<double> idle, own, loaded, loaded_request;
  for (int i = 0; i < opt.idle_samples; ++i) {
    Sample s = Interactive(c, "idle-" + tag + std::to_string(n), n);
    ++n;
    idle.push_back(s.latency_ms);
    own.push_back(s.latency_ms - s.request_ms);
    f.fallbacks += s.fallback;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }

  // The backlog. bg_done = jobs.done since here, less the interactive jobs
  // finished since here.
  const std::string status = R"({"op":"status"})";
  const double done_base = Field(CallJson(c, status), "/jobs/done");
  long bg_submitted =
      SubmitSummaries(c, opt.background, "background", "bg-" + tag, 0, rig.max_batch());
  SleepWatching(*daemon, opt.settle_s);

  json st0 = CallJson(c, status);
  const double done0 = Field(st0, "/jobs/done"), failed0 = Field(st0, "/jobs/failed");
  const json fake0 = fake.Stats();
  const auto t0 = Clock::now();
  auto next = t0;
  // The gaps between interactive submits are drawn uniformly from 0.5 to
  // 1.5 times --interval-s (fixed seed, so runs compare): a fixed interval
  // that is a multiple of L phase-locks each arrival to the end of a
  // background answer, so every preemption would throw away a nearly
  // finished request, which random arrivals do not.
  std::mt19937 rng(20261207u + static_cast<unsigned>(capacity));
  std::uniform_real_distribution<double> gap(0.5 * opt.interval_s, 1.5 * opt.interval_s);
  for (int i = 0; i < opt.loaded_samples; ++i) {
    std::this_thread::sleep_until(next);
    const double done_now = Field(CallJson(c, status), "/jobs/done");
    const long bg_done = static_cast<long>(done_now - done_base) - i;
    const long missing = opt.background - (bg_submitted - bg_done);
    if (missing > 0) {
      bg_submitted +=
          SubmitSummaries(c, missing, "background", "bg-" + tag, bg_submitted, rig.max_batch());
    }
    next = Clock::now() +
           std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(rng)));
    Sample s = Interactive(c, "loaded-" + tag + std::to_string(n), n);
    ++n;
    loaded.push_back(s.latency_ms);
    loaded_request.push_back(s.request_ms);
    f.fallbacks += s.fallback;
  }
  const auto t1 = Clock::now();
  json st1 = CallJson(c, status);
  const json fake1 = fake.Stats();
  f.window_s = Seconds(t1 - t0);
  f.background_done = static_cast<long>(Field(st1, "/jobs/done") - done0) - opt.loaded_samples;
  f.failed = static_cast<long>(Field(st1, "/jobs/failed") - failed0);
  f.background_fraction = static_cast<double>(f.background_done) / f.window_s / ideal;
  f.interactive_share = opt.loaded_samples / f.window_s / ideal;
  f.idle = Summarize(idle);
  f.own = Summarize(own);
  f.loaded = Summarize(loaded);
  f.loaded_request = Summarize(loaded_request);
  f.fake = DescribeFake(fake1, rig.model());
  const ModelFigures m0 = ModelOf(fake0, rig.model()), m1 = ModelOf(fake1, rig.model());
  const double admitted = m1.admitted - m0.admitted;
  char window_wait[128];
  std::snprintf(window_wait, sizeof window_wait, "; in the loaded window: slot wait mean %.0f ms",
                admitted > 0 ? (m1.slot_wait_ms - m0.slot_wait_ms) / admitted : 0.0);
  f.fake += window_wait;
  rig.StopDaemon(daemon);
  return f;
}

void Row(const char* what, const std::string& value, const std::string& goal, const char* verdict) {
  std::printf("  %-44s %-22s %-12s %s\n", what, value.c_str(), goal.c_str(), verdict);
}

std::string Fmt(const char* fmt, double a, double b = 0) {
  char buf[96];
  std::snprintf(buf, sizeof buf, fmt, a, b);
  return buf;
}

void Report(const Options& opt, const Figures& f) {
  const double r50 = f.loaded.p50 / f.idle.p50, r99 = f.loaded.p99 / f.idle.p99;
  std::printf(
      "\nC = %d slots, L = %d ms (ideal %.2f jobs/s); %zu idle, %zu loaded samples, %ld "
      "background jobs kept queued\n",
      f.capacity, opt.latency_ms, f.capacity * 1000.0 / opt.latency_ms, f.idle.n, f.loaded.n,
      opt.background);
  Row("figure", "value", "goal", "");
  Row("idle latency p50 / p99", Fmt("%.0f / %.0f ms", f.idle.p50, f.idle.p99), "", "");
  Row("loaded latency p50 / p99", Fmt("%.0f / %.0f ms", f.loaded.p50, f.loaded.p99), "", "");
  Row("loaded/idle at p50", Fmt("%.2f", r50), Fmt("<= %.2f", kRatioGoal),
      Verdict(r50 <= kRatioGoal));
  Row("loaded/idle at p99", Fmt("%.2f", r99), Fmt("<= %.2f", kRatioGoal),
      Verdict(r99 <= kRatioGoal));
  Row("digestd's share of idle latency p50 / p99", Fmt("%.1f / %.1f ms", f.own.p50, f.own.p99),
      Fmt("<= %.0f ms", kOwnShareGoalMs), Verdict(f.own.p50 <= kOwnShareGoalMs));
  Row("background throughput / (C/L)", Fmt("%.3f", f.background_fraction),
      Fmt(">= %.2f", kBackgroundGoal), Verdict(f.background_fraction >= kBackgroundGoal));
  Row("  background jobs done in the window",
      Fmt("%.0f in %.1f s", static_cast<double>(f.background_done), f.window_s), "", "");
  Row("  interactive share of the capacity", Fmt("%.3f", f.interactive_share), "", "");
  Row("loaded backend request (meta.request_ms) p50",
      Fmt("%.0f ms (p99 %.0f)", f.loaded_request.p50, f.loaded_request.p99), "", "");
  Row("failed jobs in the window / fallbacks",
      Fmt("%.0f / %.0f", static_cast<double>(f.failed), static_cast<double>(f.fallbacks)), "", "");
  std::printf("  fake: %s\n", f.fake.c_str());
  std::fflush(stdout);
}

Options ParseFlags(Flags& flags, int argc, char** argv) {
  flags.Parse(argc, argv);
  Options o;
  const bool quick = flags.Has("quick");
  o.capacities = ParseIntList(flags.String("c"), 1, 64, "--c");
  o.latency_ms = static_cast<int>(flags.Integer("latency-ms", 1, 60000));
  o.tokens = static_cast<int>(flags.Integer("tokens", 1, 100000));
  o.idle_samples = static_cast<int>(
      flags.Has("idle-samples") || !quick ? flags.Integer("idle-samples", 1, 100000) : 8);
  o.loaded_samples = static_cast<int>(
      flags.Has("loaded-samples") || !quick ? flags.Integer("loaded-samples", 1, 100000) : 6);
  o.background = flags.Integer("background", 1, 1000000);
  o.interval_s = flags.Number("interval-s", 0, 3600);
  o.settle_s = flags.Has("settle-s") || !quick ? flags.Number("settle-s", 0, 3600) : 2;
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<FlagSpec> specs = {
      {"c", "LIST", "fake capacities to run, comma separated", "1,4"},
      {"latency-ms", "L", "the fake's time per answer", "300"},
      {"tokens", "N", "streamed tokens per answer (no delay between them)", "8"},
      {"idle-samples", "N", "interactive jobs on the idle daemon", "20"},
      {"loaded-samples", "N", "interactive jobs behind the background backlog", "15"},
      {"background", "N", "background jobs kept queued during the loaded samples", "600"},
      {"interval-s", "S",
       "mean time from one loaded interactive submit to the next (each gap drawn from 0.5 to "
       "1.5 times it)",
       "3"},
      {"settle-s", "S", "wait after the backlog is submitted, before the loaded samples", "3"},
      {"quick", "", "8 idle and 6 loaded samples, 2 s settle (unless given)"},
  };
  for (auto& s : RigFlags()) specs.push_back(s);
  Flags flags("critical_path_bench",
              "Interactive summarize latency with the shipped config, idle and behind a "
              "background backlog, against the fake Ollama and PostgreSQL.",
              specs);
  Options opt = ParseFlags(flags, argc, argv);
  signal(SIGPIPE, SIG_IGN);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  Rig rig(flags, "dgcrit");
  rig.PrintHeader("critical path benchmark: interactive summarize latency, submit -> result");

  std::vector<Figures> all;
  for (int c : opt.capacities) {
    all.push_back(RunOne(rig, opt, c));
    Report(opt, all.back());
  }

  std::printf(
      "\nsummary (L = %d ms; goals: loaded/idle <= %.2f, digestd's share p50 <= %.0f ms, "
      "background >= %.2f of C/L)\n",
      opt.latency_ms, kRatioGoal, kOwnShareGoalMs, kBackgroundGoal);
  std::printf("  %3s %16s %18s %16s %16s %16s\n", "C", "idle p50/p99 ms", "loaded p50/p99 ms",
              "loaded/idle p50", "own share p50", "background/(C/L)");
  for (const Figures& f : all) {
    const double r50 = f.loaded.p50 / f.idle.p50;
    std::printf("  %3d %16s %18s %11.2f %4s %10.1f ms %s %11.3f %4s\n", f.capacity,
                Fmt("%.0f/%.0f", f.idle.p50, f.idle.p99).c_str(),
                Fmt("%.0f/%.0f", f.loaded.p50, f.loaded.p99).c_str(), r50,
                Verdict(r50 <= kRatioGoal), f.own.p50, Verdict(f.own.p50 <= kOwnShareGoalMs),
                f.background_fraction, Verdict(f.background_fraction >= kBackgroundGoal));
  }
  rig.Finish();
  curl_global_cleanup();
  return 0;
}
