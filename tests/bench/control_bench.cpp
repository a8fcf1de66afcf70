// control_bench: starts the real digestd binary with a temporary config and
// measures it from outside, as an app or systemd sees it:
//
//   - time from exec to READY=1 (on a NOTIFY_SOCKET datagram socket this
//     program owns) and from SIGTERM to exit, median of --starts starts;
//   - control-socket round trips per second for `ping` and `status`, from one
//     client and from --clients concurrent clients (one thread and one
//     ControlClient each), with p50/p99 latency;
//   - `status` latency while --slots worker slots run --noop-ms noop jobs
//     continuously (a feeder keeps the background lane topped up with batch
//     submits), with the busy slots and jobs/s actually achieved;
//   - digestd's resident memory (VmRSS) after READY=1, after the round trips
//     and after the load has drained and settled, and its peak (VmHWM).
//
// Figures only: nothing is asserted. It exits non-zero only when the daemon
// cannot be started or stops answering. Built by tests/bench/CMakeLists.txt;
// scripts/bench runs it.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.h"

namespace {

using namespace digestd::bench;

struct Options {
  std::string digestd;
  int starts = 0;         // daemon starts timed for exec -> READY=1
  double rtt_s = 0;       // duration of each round-trip measurement
  int clients = 0;        // concurrent clients for the second round-trip run
  double load_s = 0;      // duration of the status-under-load measurement
  int slots = 0;          // worker slots kept busy during the load
  int noop_ms = 0;        // sleep of each noop job during the load
  double settle_s = 0;    // idle time before the last RSS reading
  bool keep_tmp = false;  // keep the temp dir (config, daemon log)
  std::string conninfo;   // [postgres] conninfo; empty: left out of the config
};

constexpr int kRetainFinished = 10000;  // the shipped [jobs] retain_finished

void SleepFor(double seconds) {
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

// VmRSS / VmHWM of `pid` in KiB; -1 when unreadable.
long ProcStatusKiB(pid_t pid, const char* key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  size_t n = std::strlen(key);
  while (std::getline(in, line)) {
    if (line.compare(0, n, key) == 0 && line.size() > n && line[n] == ':') {
      return std::strtol(line.c_str() + n + 1, nullptr, 10);
    }
  }
  return -1;
}

std::string MiB(long kib) {
  if (kib < 0) return "?";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f MiB", static_cast<double>(kib) / 1024.0);
  return buf;
}

struct RttResult {
  double per_second = 0;
  Summary latency_ms;
};

// `clients` threads, each with its own connection, send `line` back to back
// for `seconds`.
RttResult RoundTrips(const std::string& socket, const std::string& line, int clients,
                     double seconds) {
  std::atomic<int> connected{0};
  std::atomic<bool> go{false}, stop{false};
  std::vector<std::vector<double>> lat(static_cast<size_t>(clients));
  std::vector<std::thread> threads;
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back([&, i] {
      digestd::ControlClient c;
      Connect(c, socket);
      auto& mine = lat[static_cast<size_t>(i)];
      mine.reserve(1 << 18);
      connected.fetch_add(1);
      while (!go.load()) std::this_thread::yield();
      while (!stop.load(std::memory_order_relaxed)) {
        auto t0 = Clock::now();
        CallLine(c, line);
        mine.push_back(Ms(Clock::now() - t0));
      }
    });
  }
  while (connected.load() < clients) std::this_thread::yield();
  auto t0 = Clock::now();
  go.store(true);
  SleepFor(seconds);
  stop.store(true);
  for (auto& t : threads) t.join();
  double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<double> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  RttResult r;
  r.per_second = static_cast<double>(all.size()) / elapsed;
  r.latency_ms = Summarize(std::move(all));
  return r;
}

struct LoadResult {
  RttResult status;
  double busy_mean = 0;
  double busy_min = 0;
  double jobs_per_second = 0;
  double submitted = 0;
};

// Keeps `slots` workers busy with noop jobs while one client measures
// `status`. The feeder tops the background lane up to its capacity every
// 20 ms with one batch submit, so the lane never runs dry and nothing is
// refused as queue_full.
LoadResult StatusUnderLoad(const Options& opt, const std::string& socket, int max_batch) {
  std::atomic<bool> stop_feeder{false};
  std::atomic<long> submitted{0};
  std::thread feeder([&] {
    digestd::ControlClient c;
    Connect(c, socket);
    const std::string job = R"({"kind":"noop","lane":"background","input":{"sleep_ms":)" +
                            std::to_string(opt.noop_ms) + "}}";
    while (!stop_feeder.load()) {
      json st = CallJson(c, R"({"op":"status"})");
      long room = static_cast<long>(Field(st, "/queues/background/capacity") -
                                    Field(st, "/queues/background/depth"));
      room = std::min<long>(room, max_batch);
      if (room > 0) {
        std::string batch = R"({"op":"submit","jobs":[)";
        for (long i = 0; i < room; ++i) batch += (i ? "," : "") + job;
        batch += "]}";
        json r = CallJson(c, batch);
        submitted.fetch_add(static_cast<long>(Field(r, "/accepted")));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });

  digestd::ControlClient c;
  Connect(c, socket);
  const std::string status = R"({"op":"status"})";
  // Warm up until every slot is busy (or 5 s have passed).
  auto warm_deadline = Clock::now() + std::chrono::seconds(5);
  while (Clock::now() < warm_deadline) {
    if (Field(CallJson(c, status), "/workers/busy") >= opt.slots) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }

  LoadResult r;
  std::vector<double> lat;
  double busy_sum = 0;
  r.busy_min = opt.slots;
  json first = CallJson(c, status);
  auto t0 = Clock::now();
  auto end =
      t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opt.load_s));
  json last;
  while (Clock::now() < end) {
    auto t1 = Clock::now();
    std::string line = CallLine(c, status);
    lat.push_back(Ms(Clock::now() - t1));
    last = json::parse(line, nullptr, false);
    double busy = Field(last, "/workers/busy");
    busy_sum += busy;
    r.busy_min = std::min(r.busy_min, busy);
  }
  double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  stop_feeder.store(true);
  feeder.join();

  r.status.per_second = static_cast<double>(lat.size()) / elapsed;
  r.busy_mean = lat.empty() ? 0 : busy_sum / static_cast<double>(lat.size());
  r.jobs_per_second = (Field(last, "/jobs/done") - Field(first, "/jobs/done")) / elapsed;
  r.submitted = static_cast<double>(submitted.load());
  r.status.latency_ms = Summarize(std::move(lat));
  return r;
}

// Polls `status` until no job is queued or running (or 30 s have passed).
json WaitIdle(const std::string& socket) {
  digestd::ControlClient c;
  Connect(c, socket);
  auto deadline = Clock::now() + std::chrono::seconds(30);
  for (;;) {
    json st = CallJson(c, R"({"op":"status"})");
    bool idle = Field(st, "/workers/busy") == 0 && Field(st, "/queues/background/depth") == 0 &&
                Field(st, "/queues/interactive/depth") == 0;
    if (idle || Clock::now() > deadline) return st;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

int BackgroundCapacity(const Options& opt) {
  return std::max(1000, opt.slots * 64);
}

std::string WriteConfig(const Options& opt, const BenchDir& dir, const std::string& socket) {
  ConfigFile conf = DaemonConfig(socket, "bench");
  conf.Set("workers", "min", "1");
  conf.Set("workers", "max", std::to_string(opt.slots));
  conf.Set("workers", "interactive_reserved", "0");
  conf.Set("queues", "interactive", "200");
  conf.Set("queues", "background", std::to_string(BackgroundCapacity(opt)));
  conf.Set("jobs", "noop_max_sleep_ms", std::to_string(std::max(1000, opt.noop_ms)));
  conf.Set("jobs", "retain_finished", std::to_string(kRetainFinished));
  if (!opt.conninfo.empty()) UsePostgres(conf, opt.conninfo);
  return conf.Write(dir.File("digestd.conf"));
}

Options ParseFlags(int argc, char** argv) {
  Flags flags("control_bench",
              "Starts the real digestd with a temporary config and prints its startup time,\n"
              "control-socket round trips, status latency under load and memory.",
              {
                  {"digestd", "PATH", "the binary", DIGESTD_BIN},
                  {"starts", "N", "starts timed for exec -> READY=1", "20"},
                  {"seconds", "S", "duration of each round-trip run", "3"},
                  {"clients", "N", "concurrent clients of the second run", "8"},
                  {"load-seconds", "S", "duration of the status-under-load run", "5"},
                  {"slots", "N", "worker slots kept busy under load", "16"},
                  {"noop-ms", "N", "sleep of each noop job under load", "10"},
                  {"settle-seconds", "S", "idle time before the last memory reading", "1"},
                  {"conninfo", "STR", "[postgres] conninfo for digestd (default: none written)"},
                  {"keep-tmp", "", "keep the temp dir (config and digestd's log)"},
              });
  flags.Parse(argc, argv);
  Options o;
  o.digestd = flags.String("digestd");
  o.starts = static_cast<int>(flags.Integer("starts", 1, 1000));
  o.rtt_s = flags.Number("seconds", 0.1, 600);
  o.clients = static_cast<int>(flags.Integer("clients", 1, 256));
  o.load_s = flags.Number("load-seconds", 0.1, 600);
  o.slots = static_cast<int>(flags.Integer("slots", 1, 1024));
  o.noop_ms = static_cast<int>(flags.Integer("noop-ms", 0, 60000));
  o.settle_s = flags.Number("settle-seconds", 0, 600);
  o.conninfo = flags.String("conninfo");
  o.keep_tmp = flags.Has("keep-tmp");
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt = ParseFlags(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  RequireExecutable(opt.digestd);
  BenchDir dir("dgbench");
  const std::string socket = dir.File("control.sock");
  NotifySocket notify(dir.File("notify.sock"));
  DaemonOptions daemon;
  daemon.binary = opt.digestd;
  daemon.config = WriteConfig(opt, dir, socket);
  daemon.socket = socket;
  daemon.log = dir.File("digestd.log");
  daemon.notify = &notify;

  // 1. Startup and idle shutdown, one fresh process per start.
  std::vector<double> ready_ms, stop_ms;
  int bad_exits = 0;
  std::string bad_exit;
  for (int i = 0; i < opt.starts; ++i) {
    Daemon d(daemon);
    ready_ms.push_back(Ms(d.Start()));
    Daemon::Exit exit = d.Stop();
    stop_ms.push_back(Ms(exit.took));
    if (!(WIFEXITED(exit.status) && WEXITSTATUS(exit.status) == 0)) {
      ++bad_exits;
      bad_exit = DescribeExit(exit.status);
    }
  }

  // 2. One daemon for the rest.
  Daemon d(daemon);
  (void)d.Start();
  long rss_ready = ProcStatusKiB(d.pid(), "VmRSS");
  json status0 = d.Status();

  const std::string ping = R"({"op":"ping"})", status = R"({"op":"status"})";
  RttResult ping1 = RoundTrips(socket, ping, 1, opt.rtt_s);
  RttResult pingN = RoundTrips(socket, ping, opt.clients, opt.rtt_s);
  RttResult status1 = RoundTrips(socket, status, 1, opt.rtt_s);
  RttResult statusN = RoundTrips(socket, status, opt.clients, opt.rtt_s);
  long rss_rtt = ProcStatusKiB(d.pid(), "VmRSS");

  LoadResult load = StatusUnderLoad(opt, socket, 1000);
  long rss_loaded = ProcStatusKiB(d.pid(), "VmRSS");
  json idle = WaitIdle(socket);
  SleepFor(opt.settle_s);
  long rss_settled = ProcStatusKiB(d.pid(), "VmRSS");
  long hwm = ProcStatusKiB(d.pid(), "VmHWM");
  Daemon::Exit last_exit = d.Stop();

  // The report.
  auto label = [](const std::string& text) { std::printf("  %-38s", text.c_str()); };
  Summary ready = Summarize(ready_ms), stop = Summarize(stop_ms);
  std::printf("\ndigestd control benchmark: digestd %s (%s), %u CPUs\n",
              status0.value("version", std::string("?")).c_str(), opt.digestd.c_str(),
              std::thread::hardware_concurrency());
  std::printf("config: [workers] max = %d, [queues] background = %d, [log] level = warning\n",
              opt.slots, BackgroundCapacity(opt));
  std::printf("postgres: %s\n\n",
              opt.conninfo.empty() ? "[postgres] left at its default" : opt.conninfo.c_str());

  std::printf("%-40s%10s %8s %8s\n",
              ("startup and shutdown (" + std::to_string(opt.starts) + " starts)").c_str(),
              "median", "min", "max");
  label("exec -> READY=1");
  std::printf("%7.2f ms %8.2f %8.2f\n", ready.p50, ready.min, ready.max);
  label("SIGTERM -> exit, idle");
  std::printf("%7.2f ms %8.2f %8.2f   %s\n", stop.p50, stop.min, stop.max,
              bad_exits == 0 ? "(all exit 0)"
                             : (std::to_string(bad_exits) + " not exit 0: " + bad_exit).c_str());
  label("SIGTERM -> exit, after the load");
  std::printf("%7.2f ms                     (%s)\n\n", Ms(last_exit.took),
              DescribeExit(last_exit.status).c_str());

  std::printf("%-40s%7s %14s %7s %7s %7s\n", "control round trips", "clients", "round trips/s",
              "p50 ms", "p99 ms", "max ms");
  auto row = [&](const std::string& what, int clients, const RttResult& r) {
    label(what);
    std::printf("%7d %14.0f %7.3f %7.3f %7.3f\n", clients, r.per_second, r.latency_ms.p50,
                r.latency_ms.p99, r.latency_ms.max);
  };
  row("ping", 1, ping1);
  row("ping", opt.clients, pingN);
  row("status", 1, status1);
  row("status", opt.clients, statusN);
  row("status, " + std::to_string(opt.slots) + " slots running noop jobs", 1, load.status);
  std::printf(
      "  (%.1f s per idle run, %.1f s under load; each client sends its next request\n"
      "   when the answer to the last one has arrived)\n\n",
      opt.rtt_s, opt.load_s);

  double ideal = opt.noop_ms > 0 ? opt.slots * 1000.0 / opt.noop_ms : 0;
  std::printf("the load: %d slots running %d ms noop jobs, background lane kept topped up\n",
              opt.slots, opt.noop_ms);
  label("busy slots seen by status");
  std::printf("mean %.2f, min %.0f of %d\n", load.busy_mean, load.busy_min, opt.slots);
  label("noop jobs finished");
  std::printf("%.0f/s (ideal %.0f/s); %.0f submitted in batches\n\n", load.jobs_per_second, ideal,
              load.submitted);

  std::printf("memory of digestd (VmRSS)\n");
  label("idle, right after READY=1");
  std::printf("%s\n", MiB(rss_ready).c_str());
  label("idle, after the round-trip runs");
  std::printf("%s\n", MiB(rss_rtt).c_str());
  label("at the end of the load");
  std::printf("%s\n", MiB(rss_loaded).c_str());
  char settled[64];
  std::snprintf(settled, sizeof(settled), "idle, %.1f s after the load drained", opt.settle_s);
  label(settled);
  std::printf("%s  (%.0f finished jobs held; [jobs] retain_finished = %d)\n",
              MiB(rss_settled).c_str(), Field(idle, "/jobs/known"), kRetainFinished);
  label("peak (VmHWM)");
  std::printf("%s\n", MiB(hwm).c_str());

  dir.Finish(opt.keep_tmp, "config, digestd.log");
  return 0;
}
