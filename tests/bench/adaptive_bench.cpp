// adaptive_bench: does digestd keep a backend of unknown capacity full but
// not queueing? The real digestd (llm_bench.h) against the fake Ollama with
// C parallel slots answering in L ms (100 ms by default), PostgreSQL with its
// durable defaults, in three daemon modes side by side: the shipped config
// (whatever digestd does by default: learned capacity), a static max = 16
// and a static max = 1 (llm_bench.h says which keys each sets).
//
//   1. steady state, for each C (1..8 by default): a backlog of --backlog-s
//      seconds of work at the ideal rate (backlog-s x C / L background
//      summarize jobs), --settle-s for digestd to settle, then a window of
//      --window-s: throughput (jobs.done from status over the window) as a
//      fraction of C/L, and the mean time a request spends at the server,
//      queueing there included: the fake's mean slot wait of the requests
//      it admitted in the window plus L (its service time; no token
//      delays). Little's law on the requests at the server (running +
//      waiting, sampled every 50 ms) over the admission rate is printed
//      beside it as a cross-check.
//   2. capacity drop: the fake at --drop-from slots (8) with a backlog,
//      --settle-s, then its capacity is set to --drop-to (2) while the
//      backlog runs. Sampled every 10 ms for --observe-s: how long until
//      the requests digestd has at the server (running + waiting there)
//      are <= the new capacity for good, and until the requests the fake
//      admits have waited for a slot no more than L/10 on average (per L-long
//      bin, for good); throughput over the second half as a fraction of the
//      new C/L.
//
// Goals (issue 9): throughput >= 0.95 of C/L, time at the server <= 1.3 L,
// both drop times <= 10 L. Also what the fake saw: requests, the most at
// once, the mean slot wait, requests aborted by the client.
//
// Figures only: PASS/MISS is printed, nothing is asserted; the exit status
// is non-zero only when digestd, the fake or PostgreSQL cannot be used.
// scripts/bench runs it inside `scripts/pg-throwaway run` with fsync,
// synchronous_commit and full_page_writes on.
#include <curl/curl.h>
#include <signal.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "bench_support.h"
#include "llm_bench.h"

namespace {

using namespace digestd::bench;
using digestd::ControlClient;

constexpr double kThroughputGoal = 0.95;
constexpr double kServerTimeGoal = 1.3;  // x L
constexpr double kFollowGoal = 10;       // x L
constexpr double kNearZeroWait = 0.1;    // x L: "no slot wait"

struct Options {
  std::vector<int> capacities;
  std::vector<Mode> modes;
  int latency_ms = 0;
  int tokens = 0;
  double backlog_s = 0, settle_s = 0, window_s = 0, observe_s = 0;
  bool drop = true;
  int drop_from = 0, drop_to = 0;
};

// Steady-state figures of one (C, mode) run.
struct Steady {
  double fraction = 0;          // throughput / (C/L)
  double server_ms = 0;         // mean slot wait + L
  double slot_wait_ms = 0;      // mean slot wait in the window
  double little_ms = 0;         // mean requests at the server / admission rate
  double mean_outstanding = 0;  // requests at the server, mean over the window
  std::string fake;
};

// Capacity-drop figures of one mode.
struct Drop {
  double limit_s = -1;        // until digestd's limit for the model first <= new capacity; -1 never
  double outstanding_s = -1;  // until requests at the server <= new capacity for good; -1 never
  double wait_s = -1;         // until the slot wait is near zero for good; -1 never
  double final_outstanding = 0;  // requests at the server, mean over the second half
  double final_wait_ms = 0;      // mean slot wait of admissions in the second half
  double fraction = 0;           // throughput in the second half / (new C/L)
  std::string fake;
};

long Backlog(const Options& opt, int capacity) {
  return std::lround(opt.backlog_s * capacity * 1000.0 / opt.latency_ms);
}

// Starts digestd in `mode` against `fake`, submits the backlog and waits
// --settle-s.
std::unique_ptr<Daemon> Loaded(Rig& rig, const Options& opt, const Mode& mode, Fake& fake,
                               int capacity, ControlClient& c) {
  auto daemon = rig.StartDaemon(mode, fake.url());
  Connect(c, rig.dir().File("control.sock"));
  SubmitSummaries(c, Backlog(opt, capacity), "background", "bg-", 0, rig.max_batch());
  SleepWatching(*daemon, opt.settle_s);
  return daemon;
}

Steady RunSteady(Rig& rig, const Options& opt, const Mode& mode, int capacity) {
  Fake fake(rig.fake_binary(), rig.dir().path(), capacity, opt.latency_ms, opt.tokens);
  ControlClient c;
  auto daemon = Loaded(rig, opt, mode, fake, capacity, c);
  const std::string status = R"({"op":"status"})";
  const double done0 = Field(CallJson(c, status), "/jobs/done");
  const ModelFigures m0 = ModelOf(fake.Stats(), rig.model());
  const auto t0 = Clock::now();
  const auto end =
      t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opt.window_s));
  double outstanding_sum = 0;
  long polls = 0;
  while (Clock::now() < end) {
    outstanding_sum += ModelOf(fake.Stats(), rig.model()).outstanding();
    ++polls;
    daemon->DieIfExited("during the window");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const double done1 = Field(CallJson(c, status), "/jobs/done");
  const json fake1 = fake.Stats();
  const double seconds = Seconds(Clock::now() - t0);
  const ModelFigures m1 = ModelOf(fake1, rig.model());
  Steady s;
  const double ideal = capacity * 1000.0 / opt.latency_ms;
  s.fraction = (done1 - done0) / seconds / ideal;
  const double admitted = m1.admitted - m0.admitted;
  s.slot_wait_ms = admitted > 0 ? (m1.slot_wait_ms - m0.slot_wait_ms) / admitted : 0;
  s.server_ms = s.slot_wait_ms + opt.latency_ms;
  s.mean_outstanding = polls > 0 ? outstanding_sum / static_cast<double>(polls) : 0;
  s.little_ms = admitted > 0 ? s.mean_outstanding / (admitted / seconds) * 1000 : 0;
  s.fake = DescribeFake(fake1, rig.model());
  rig.StopDaemon(daemon);
  return s;
}

Drop RunDrop(Rig& rig, const Options& opt, const Mode& mode) {
  Fake fake(rig.fake_binary(), rig.dir().path(), opt.drop_from, opt.latency_ms, opt.tokens);
  ControlClient c;
  auto daemon = Loaded(rig, opt, mode, fake, opt.drop_from, c);
  struct Point {
    double t;  // s since the drop
    double outstanding, admitted, slot_wait_ms;
  };
  std::vector<Point> points;
  const std::string status = R"({"op":"status"})";
  const auto t0 = Clock::now();
  fake.SetParallel(opt.drop_to);
  const auto end = t0 + std::chrono::duration_cast<Clock::duration>(
                            std::chrono::duration<double>(opt.observe_s));
  const auto half = t0 + (end - t0) / 2;
  double done_half = -1;
  Drop d;
  while (Clock::now() < end) {
    if (d.limit_s < 0) {
      // digestd's own limit (status "models"; absent in a daemon without one).
      const double limit = Field(CallJson(c, status), "/models/0/limit");
      if (limit > 0 && limit <= opt.drop_to) d.limit_s = Seconds(Clock::now() - t0);
    }
    ModelFigures m = ModelOf(fake.Stats(), rig.model());
    points.push_back({Seconds(Clock::now() - t0), m.outstanding(), m.admitted, m.slot_wait_ms});
    if (done_half < 0 && Clock::now() >= half) {
      done_half = Field(CallJson(c, status), "/jobs/done");
    }
    daemon->DieIfExited("after the capacity drop");
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const double done_end = Field(CallJson(c, status), "/jobs/done");
  const double half_s = Seconds(Clock::now() - half);
  d.fake = DescribeFake(fake.Stats(), rig.model());
  rig.StopDaemon(daemon);

  // Requests at the server: the first sample from which on all are <= drop_to.
  for (size_t i = points.size(); i-- > 0;) {
    if (points[i].outstanding > opt.drop_to) {
      if (i + 1 < points.size()) d.outstanding_s = points[i + 1].t;
      break;
    }
    if (i == 0) d.outstanding_s = 0;
  }
  // Slot wait of the admissions per L-long bin; near zero from which bin on.
  const double bin_s = opt.latency_ms / 1000.0;
  std::map<long, std::pair<double, double>> bins;  // bin -> (admitted, wait ms)
  for (size_t i = 1; i < points.size(); ++i) {
    auto& b = bins[static_cast<long>(points[i].t / bin_s)];
    b.first += points[i].admitted - points[i - 1].admitted;
    b.second += points[i].slot_wait_ms - points[i - 1].slot_wait_ms;
  }
  const double near_zero_ms = kNearZeroWait * opt.latency_ms;
  d.wait_s = 0;
  for (auto it = bins.rbegin(); it != bins.rend(); ++it) {
    const auto& [bin, aw] = *it;
    if (aw.first > 0 && aw.second / aw.first > near_zero_ms) {
      d.wait_s = it == bins.rbegin() ? -1 : static_cast<double>(bin + 1) * bin_s;
      break;
    }
  }
  double adm = 0, wait = 0, outstanding = 0, n = 0;
  for (size_t i = 1; i < points.size(); ++i) {
    if (points[i].t < opt.observe_s / 2) continue;
    adm += points[i].admitted - points[i - 1].admitted;
    wait += points[i].slot_wait_ms - points[i - 1].slot_wait_ms;
    outstanding += points[i].outstanding;
    ++n;
  }
  d.final_outstanding = n > 0 ? outstanding / n : 0;
  d.final_wait_ms = adm > 0 ? wait / adm : 0;
  d.fraction = (done_end - done_half) / half_s / (opt.drop_to * 1000.0 / opt.latency_ms);
  return d;
}

std::string Fmt(const char* fmt, double a) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, a);
  return buf;
}

std::string Follow(double s, double limit_s) {
  return s < 0 ? "not in " + Fmt("%.0f s", limit_s) : Fmt("%.2f s", s);
}

Options ParseFlags(Flags& flags, int argc, char** argv) {
  flags.Parse(argc, argv);
  Options o;
  const bool quick = flags.Has("quick");
  auto number = [&](const char* name, double quick_value) {
    return flags.Has(name) || !quick ? flags.Number(name, 0, 3600) : quick_value;
  };
  o.capacities = ParseIntList(flags.Has("c") || !quick ? flags.String("c") : "1,4,8", 1, 64, "--c");
  std::istringstream modes(flags.String("modes"));
  for (std::string m; std::getline(modes, m, ',');) o.modes.push_back(ParseMode(m));
  if (o.modes.empty()) flags.UsageError("--modes needs at least one mode");
  o.latency_ms = static_cast<int>(flags.Integer("latency-ms", 1, 60000));
  o.tokens = static_cast<int>(flags.Integer("tokens", 1, 100000));
  o.backlog_s = number("backlog-s", 15);
  o.settle_s = number("settle-s", 4);
  o.window_s = number("window-s", 4);
  o.observe_s = number("observe-s", 3);
  if (o.window_s <= 0 || o.observe_s <= 0)
    flags.UsageError("--window-s and --observe-s must be > 0");
  o.drop = !flags.Has("no-drop");
  o.drop_from = static_cast<int>(flags.Integer("drop-from", 1, 64));
  o.drop_to = static_cast<int>(flags.Integer("drop-to", 1, 64));
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<FlagSpec> specs = {
      {"c", "LIST", "fake capacities of the steady-state runs, comma separated (--quick: 1,4,8)",
       "1,2,3,4,5,6,7,8"},
      {"modes", "LIST", "daemon modes: shipped, staticN", "shipped,static16,static1"},
      {"latency-ms", "L", "the fake's time per answer", "100"},
      {"tokens", "N", "streamed tokens per answer (no delay between them)", "8"},
      {"backlog-s", "S", "backlog, in seconds of work at the ideal rate C/L (--quick: 15)", "30"},
      {"settle-s", "S", "wait after the backlog is submitted (--quick: 4)", "10"},
      {"window-s", "S", "steady-state measuring window (--quick: 4)", "10"},
      {"observe-s", "S", "how long the capacity drop is watched (--quick: 3)", "5"},
      {"drop-from", "C", "capacity before the drop", "8"},
      {"drop-to", "C", "capacity after the drop", "2"},
      {"no-drop", "", "skip the capacity drop"},
      {"quick", "", "fewer capacities, shorter backlog, settle, window and observation"},
  };
  for (auto& s : RigFlags()) specs.push_back(s);
  Flags flags("adaptive_bench",
              "Throughput and time at the server against a fake Ollama of unknown capacity, "
              "and how fast a capacity drop is followed, for three daemon configs.",
              specs);
  Options opt = ParseFlags(flags, argc, argv);
  signal(SIGPIPE, SIG_IGN);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  Rig rig(flags, "dgadapt");
  rig.PrintHeader("adaptive benchmark: a backend of unknown capacity");
  std::printf("  L = %d ms, backlog %.0f s of work, settle %.0f s, window %.0f s\n", opt.latency_ms,
              opt.backlog_s, opt.settle_s, opt.window_s);
  for (const Mode& m : opt.modes) {
    std::printf("  mode %-10s %s\n", m.name.c_str(), rig.DescribeMode(m).c_str());
  }
  std::fflush(stdout);

  std::map<std::pair<int, size_t>, Steady> steady;  // (C, mode index)
  for (int c : opt.capacities) {
    for (size_t i = 0; i < opt.modes.size(); ++i) {
      Steady s = RunSteady(rig, opt, opt.modes[i], c);
      std::printf(
          "  C = %d, %-10s throughput %.3f of C/L, at the server %.0f ms (Little %.0f ms), "
          "%.1f there on average; fake: %s\n",
          c, opt.modes[i].name.c_str(), s.fraction, s.server_ms, s.little_ms, s.mean_outstanding,
          s.fake.c_str());
      std::fflush(stdout);
      steady[{c, i}] = s;
    }
  }

  std::vector<Drop> drops;
  if (opt.drop) {
    for (const Mode& m : opt.modes) {
      drops.push_back(RunDrop(rig, opt, m));
      std::printf("  drop %d -> %d, %-10s fake: %s\n", opt.drop_from, opt.drop_to, m.name.c_str(),
                  drops.back().fake.c_str());
      std::fflush(stdout);
    }
  }

  std::printf(
      "\nsteady state (L = %d ms; goals: throughput >= %.2f of C/L, time at the server "
      "<= %.1f L = %.0f ms)\n",
      opt.latency_ms, kThroughputGoal, kServerTimeGoal, kServerTimeGoal * opt.latency_ms);
  std::printf("  %3s", "C");
  for (const Mode& m : opt.modes) std::printf(" | %-29s", m.name.c_str());
  std::printf("\n  %3s", "");
  for (size_t i = 0; i < opt.modes.size(); ++i)
    std::printf(" | %-14s %-14s", "thr/(C/L)", "server");
  std::printf("\n");
  for (int c : opt.capacities) {
    std::printf("  %3d", c);
    for (size_t i = 0; i < opt.modes.size(); ++i) {
      const Steady& s = steady[{c, i}];
      std::printf(" | %5.3f %-8s %5.0f ms %-5s", s.fraction, Verdict(s.fraction >= kThroughputGoal),
                  s.server_ms, Verdict(s.server_ms <= kServerTimeGoal * opt.latency_ms));
    }
    std::printf("\n");
  }

  if (opt.drop) {
    const double goal_s = kFollowGoal * opt.latency_ms / 1000.0;
    std::printf("\ncapacity drop %d -> %d with a backlog (goal: followed within %.0f L = %.1f s)\n",
                opt.drop_from, opt.drop_to, kFollowGoal, goal_s);
    std::printf("  %-10s %-26s %-26s %-26s %-24s %s\n", "mode", "digestd's limit <= new C",
                "at the server <= new C", "slot wait <= L/10", "2nd half: at the server",
                "thr/(new C/L)");
    for (size_t i = 0; i < drops.size(); ++i) {
      const Drop& d = drops[i];
      const bool limit_ok = d.limit_s >= 0 && d.limit_s <= goal_s;
      const bool out_ok = d.outstanding_s >= 0 && d.outstanding_s <= goal_s;
      const bool wait_ok = d.wait_s >= 0 && d.wait_s <= goal_s;
      std::printf("  %-10s %-20s %-5s %-20s %-5s %-20s %-5s %4.1f, wait %5.0f ms     %.3f\n",
                  opt.modes[i].name.c_str(), Follow(d.limit_s, opt.observe_s).c_str(),
                  Verdict(limit_ok), Follow(d.outstanding_s, opt.observe_s).c_str(),
                  Verdict(out_ok), Follow(d.wait_s, opt.observe_s).c_str(), Verdict(wait_ok),
                  d.final_outstanding, d.final_wait_ms, d.fraction);
    }
    std::printf(
        "  (\"for good\" columns: a learned limit still probes one above the new capacity now\n"
        "   and then, by design, which puts one request more at the server for a moment)\n");
  }
  rig.Finish();
  curl_global_cleanup();
  return 0;
}
