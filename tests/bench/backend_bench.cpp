// backend_bench: the real digestd against the fake Ollama (fake_ollama, a
// separate process), measured from outside as an app sees it:
//
//   1. capacity-bound: the fake serves C requests at once and each takes L ms;
//      digestd has C worker slots. N generate jobs are fed in batches that
//      keep the background lane topped up. Reported: jobs per second as a
//      fraction of the ideal C/L, and digestd's CPU time (user + sys from
//      /proc/PID/stat) per job.
//   2. daemon-bound: a 0 ms fake with 16 slots on both sides: jobs per second
//      end to end, and CPU per job again. With --per-token N the same daemon
//      then runs --per-token-jobs jobs whose answers stream N tokens, and the
//      two CPU figures give digestd's CPU per streamed token (the slope) and
//      per job without tokens (the intercept).
//
// --kind picks the job kind fed: generate (/api/generate) or summarize
// (/api/chat, the kind apps send most).
//
// Completion is read from `status` counters (jobs.done + jobs.failed). The
// status calls the feeder makes are counted and cost digestd a little CPU,
// which is included in the per-job figure (their number is printed).
//
// Profiling: --wrapper "valgrind --tool=callgrind …" runs digestd under a
// command (then only the CPU figure is not digestd's alone), and
// --perf-record FILE attaches `perf record` to digestd for phase 2.
// scripts/bench --profile uses both.
//
// Figures only: nothing is asserted. Exits non-zero only when a process
// cannot be started or stops answering.
#include <curl/curl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../support/wait.h"
#include "bench_support.h"
#include "fake_process.h"
#include "proc_cpu.h"

namespace {

using namespace digestd::bench;

struct Options {
  std::string digestd;
  std::string fake;
  long jobs = 0;       // phase 1
  long fast_jobs = 0;  // phase 2
  int capacity = 0;    // C: fake slots = digestd worker slots in phase 1
  int latency_ms = 0;  // L: per request in phase 1
  int tokens = 0;      // streamed tokens per generation
  int per_token = 0;   // phase 2 again with this many tokens; 0: not
  long per_token_jobs = 0;
  std::string kind = "generate";
  int fast_slots = 0;    // phase 2 slots on both sides
  int max_batch = 1000;  // jobs per submit ([jobs] max_batch)
  int ring = 2000;       // [queues] background
  bool phase1 = true;
  bool phase2 = true;
  std::vector<std::string> wrapper;  // command digestd runs under
  double ready_timeout_s = 0;
  std::string perf_record;  // perf.data path for phase 2; empty: none
  std::string conninfo;     // [postgres] conninfo; empty: left out
  bool keep_tmp = false;
};

// utime + stime of `pid` (all its threads) in seconds.
struct Cpu {
  double user = 0, sys = 0;
  double total() const { return user + sys; }
};
Cpu ProcCpu(pid_t pid) {
  auto stat = ReadStat(pid);
  if (!stat) return {};
  const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  return {static_cast<double>(stat->utime) / tick, static_cast<double>(stat->stime) / tick};
}

// The fake Ollama as a child process: C slots, L ms per request, Die() when
// it does not start.
class Fake {
 public:
  Fake(const Options& opt, const BenchDir& dir, int parallel, int latency_ms) {
    std::string failed = process_.Start(
        opt.fake, dir.path(),
        {"--parallel", std::to_string(parallel), "--latency-ms", std::to_string(latency_ms),
         "--tokens", std::to_string(opt.tokens), "--max-queue", "100000"});
    if (!failed.empty()) Die("%s", failed.c_str());
  }

  std::string url() const { return process_.url(); }
  json Stats() { return process_.Stats(); }
  void Set(const json& patch) {
    std::string failed = process_.Set(patch);
    if (!failed.empty()) Die("cannot change the fake's settings: %s", failed.c_str());
  }

 private:
  digestd::testing::FakeOllamaProcess process_;
};

std::string WriteConfig(const Options& opt, const BenchDir& dir, const std::string& name, int slots,
                        const std::string& url) {
  ConfigFile conf = DaemonConfig(dir.File("control.sock"), "bench");
  conf.Set("workers", "min", "1");
  conf.Set("workers", "max", std::to_string(slots));
  conf.Set("workers", "interactive_reserved", "0");
  conf.Set("queues", "interactive", "200");
  conf.Set("queues", "background", std::to_string(opt.ring));
  conf.Set("jobs", "max_batch", std::to_string(opt.max_batch));
  conf.Set("jobs", "retain_finished", "10000");
  conf.SetString("backend", "url", url);
  conf.Set("backend", "breaker_failures", "10000");
  if (!opt.conninfo.empty()) UsePostgres(conf, opt.conninfo);
  return conf.Write(dir.File(name + ".conf"));
}

struct Run {
  long jobs = 0;
  double seconds = 0;
  double done = 0, failed = 0;
  Cpu cpu;
  long status_calls = 0;
  long submits = 0;
  json last_status;
};

// Feeds `n` generate jobs in batches that keep the background lane topped up
// and waits until all have finished. Polls `status` every `poll_s` at most;
// near the end the poll interval shrinks with the expected time left, so
// the end is seen within a few milliseconds.
Run Feed(const Options& opt, const std::string& socket, pid_t pid, long n, double poll_s) {
  digestd::ControlClient c;
  Connect(c, socket);
  const std::string status = R"({"op":"status"})";
  Run r;
  r.jobs = n;
  json base = CallJson(c, status);
  const double done0 = Field(base, "/jobs/done"), failed0 = Field(base, "/jobs/failed");
  long submitted = 0;
  const Cpu cpu0 = ProcCpu(pid);
  const auto t0 = Clock::now();
  json st = base;
  for (;;) {
    const double finished = Field(st, "/jobs/done") - done0 + Field(st, "/jobs/failed") - failed0;
    if (finished >= static_cast<double>(n)) break;
    const long room = std::min<long>({static_cast<long>(Field(st, "/queues/background/capacity") -
                                                        Field(st, "/queues/background/depth")),
                                      opt.max_batch, n - submitted});
    if (room > 0) {
      std::string batch = R"({"op":"submit","jobs":[)";
      for (long i = 0; i < room; ++i) {
        batch += (i ? "," : "");
        batch += opt.kind == "summarize" ? R"({"kind":"summarize","input":{"text":"bench job )"
                                         : R"({"kind":"generate","input":{"prompt":"bench job )";
        batch += std::to_string(submitted + i) + R"("}})";
      }
      batch += "]}";
      json answer = CallJson(c, batch);
      submitted += static_cast<long>(Field(answer, "/accepted"));
      ++r.submits;
    }
    double wait = poll_s;
    const double elapsed = Seconds(Clock::now() - t0);
    if (submitted >= n && finished > 0 && elapsed > 0) {
      const double rate = finished / elapsed;
      wait = std::clamp((static_cast<double>(n) - finished) / rate / 2, 0.002, poll_s);
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(wait));
    st = CallJson(c, status);
    ++r.status_calls;
  }
  r.seconds = Seconds(Clock::now() - t0);
  const Cpu cpu1 = ProcCpu(pid);
  r.cpu = {cpu1.user - cpu0.user, cpu1.sys - cpu0.sys};
  r.done = Field(st, "/jobs/done") - done0;
  r.failed = Field(st, "/jobs/failed") - failed0;
  r.last_status = st;
  return r;
}

void Line(const char* label, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void Line(const char* label, const char* fmt, ...) {
  std::printf("  %-30s", label);
  va_list ap;
  va_start(ap, fmt);
  std::vprintf(fmt, ap);
  va_end(ap);
  std::printf("\n");
}

void Report(const Run& r, const json& fake_stats, bool wrapped) {
  Line("jobs", "%ld (%.0f done, %.0f failed)", r.jobs, r.done, r.failed);
  Line("wall time", "%.2f s", r.seconds);
  Line("throughput", "%.1f jobs/s", static_cast<double>(r.jobs) / r.seconds);
  Line(wrapped ? "CPU (digestd + wrapper)" : "digestd CPU (user+sys)",
       "%.2f s = %.0f us per job (user %.2f s, sys %.2f s)", r.cpu.total(),
       r.cpu.total() * 1e6 / static_cast<double>(r.jobs), r.cpu.user, r.cpu.sys);
  Line("backend latency (status)", "p50 %.1f ms, p95 %.1f ms, p99 %.1f ms",
       Field(r.last_status, "/backend/latency/p50_ms"),
       Field(r.last_status, "/backend/latency/p95_ms"),
       Field(r.last_status, "/backend/latency/p99_ms"));
  Line("job latency (status)", "p50 %.1f ms, p99 %.1f ms (submit to finish, queueing included)",
       Field(r.last_status, "/latency/p50_ms"), Field(r.last_status, "/latency/p99_ms"));
  Line("fake", "%.0f requests, max %.0f in flight, %.0f connections (1 is the bench's)",
       Field(fake_stats, "/requests_total"), Field(fake_stats, "/max_in_flight_observed"),
       Field(fake_stats, "/connections_accepted"));
  Line("bench overhead", "%ld submit batches, %ld status calls (their CPU is in the figure)",
       r.submits, r.status_calls);
}

std::vector<std::string> SplitWords(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

Options ParseFlags(int argc, char** argv) {
  Flags flags(
      "backend_bench",
      "Runs the real digestd against fake_ollama and prints throughput and CPU per job.",
      {
          {"jobs", "N", "jobs in the capacity-bound run", "5000"},
          {"fast-jobs", "N", "jobs in the 0 ms run", "20000"},
          {"capacity", "C", "fake slots = worker slots in the capacity-bound run", "4"},
          {"latency-ms", "L", "time per request in the capacity-bound run", "50"},
          {"fast-slots", "S", "slots on both sides in the 0 ms run", "16"},
          {"tokens", "N", "streamed tokens per generation", "8"},
          {"per-token", "N",
           "after the 0 ms run, run it again with N tokens per answer and print CPU per token"},
          {"per-token-jobs", "N", "jobs in the run with --per-token tokens", "2000"},
          {"kind", "KIND", "job kind fed: generate or summarize", "generate"},
          {"only", "WHICH", "run only the capacity-bound (capacity) or the 0 ms run (fast)"},
          {"wrapper", "CMD", "run digestd under CMD (split at spaces), e.g. valgrind"},
          {"ready-timeout", "S", "wait for READY=1; raise it under a wrapper", "10"},
          {"perf-record", "FILE", "attach perf record to digestd during the 0 ms run"},
          {"digestd", "PATH", "the daemon", DIGESTD_BIN},
          {"fake", "PATH", "the fake", FAKE_OLLAMA_BIN},
          {"conninfo", "STR", "[postgres] conninfo for digestd (default: none written)"},
          {"keep-tmp", "", "keep the temp dir (configs, logs)"},
      });
  flags.Parse(argc, argv);
  Options o;
  o.jobs = flags.Integer("jobs", 1, 10000000);
  o.fast_jobs = flags.Integer("fast-jobs", 1, 10000000);
  o.capacity = static_cast<int>(flags.Integer("capacity", 1, 256));
  o.latency_ms = static_cast<int>(flags.Integer("latency-ms", 1, 60000));
  o.fast_slots = static_cast<int>(flags.Integer("fast-slots", 1, 256));
  o.tokens = static_cast<int>(flags.Integer("tokens", 1, 100000));
  if (flags.Has("per-token")) {
    o.per_token = static_cast<int>(flags.Integer("per-token", 1, 100000));
    if (o.per_token == o.tokens) flags.UsageError("--per-token must differ from --tokens");
  }
  o.per_token_jobs = flags.Integer("per-token-jobs", 1, 10000000);
  o.kind = flags.String("kind");
  if (o.kind != "generate" && o.kind != "summarize") {
    flags.UsageError("--kind takes generate or summarize");
  }
  if (flags.Has("only")) {
    std::string w = flags.String("only");
    if (w != "capacity" && w != "fast") flags.UsageError("--only takes capacity or fast");
    o.phase1 = w == "capacity";
    o.phase2 = w == "fast";
  }
  o.wrapper = SplitWords(flags.String("wrapper"));
  o.ready_timeout_s = static_cast<double>(flags.Integer("ready-timeout", 1, 3600));
  o.perf_record = flags.String("perf-record");
  o.digestd = flags.String("digestd");
  o.fake = flags.String("fake");
  o.conninfo = flags.String("conninfo");
  o.keep_tmp = flags.Has("keep-tmp");
  o.ring = std::max(o.ring, o.max_batch);
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt = ParseFlags(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  RequireExecutable(opt.digestd);
  RequireExecutable(opt.fake);
  BenchDir dir("dgbbench");
  const std::string socket = dir.File("control.sock");
  const bool wrapped = !opt.wrapper.empty();
  NotifySocket notify(dir.File("notify.sock"));
  // digestd for one phase, with that phase's config.
  auto daemon = [&](const std::string& config) {
    DaemonOptions o;
    o.binary = opt.digestd;
    o.config = config;
    o.socket = socket;
    o.log = dir.File("digestd.log");
    o.wrapper = opt.wrapper;
    o.notify = &notify;
    o.ready_timeout = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(opt.ready_timeout_s));
    return o;
  };

  std::printf("digestd backend benchmark: %s against %s, %u CPUs%s\n", opt.digestd.c_str(),
              opt.fake.c_str(), std::thread::hardware_concurrency(),
              wrapped ? " (digestd under a wrapper)" : "");

  if (opt.phase1) {
    Fake fake(opt, dir, opt.capacity, opt.latency_ms);
    Daemon d(daemon(WriteConfig(opt, dir, "capacity", opt.capacity, fake.url())));
    d.Start();
    const double ideal = opt.capacity * 1000.0 / opt.latency_ms;
    // The ring holds ring/ideal seconds of work: poll a few times within that.
    const double poll_s = std::clamp(opt.ring / ideal / 8, 0.01, 0.25);
    Run r = Feed(opt, socket, d.pid(), opt.jobs, poll_s);
    json fs = fake.Stats();
    std::string exit = DescribeExit(d.Stop(std::chrono::seconds(60)).status);
    std::printf(
        "\n1. capacity-bound: fake C = %d slots, L = %d ms per request (%d tokens); "
        "[workers] max = %d\n",
        opt.capacity, opt.latency_ms, opt.tokens, opt.capacity);
    Report(r, fs, wrapped);
    const double rate = static_cast<double>(r.jobs) / r.seconds;
    Line("fraction of ideal C/L", "%.3f (%.1f of %.1f jobs/s)", rate / ideal, rate, ideal);
    Line("digestd after SIGTERM", "%s", exit.c_str());
  }

  if (opt.phase2) {
    Fake fake(opt, dir, opt.fast_slots, 0);
    Daemon d(daemon(WriteConfig(opt, dir, "fast", opt.fast_slots, fake.url())));
    d.Start();
    pid_t perf = -1;
    if (!opt.perf_record.empty()) {
      perf = Spawn(
          {"perf", "record", "-F", "999", "-o", opt.perf_record, "-p", std::to_string(d.pid())}, {},
          dir.File("perf.log"));
      std::this_thread::sleep_for(std::chrono::milliseconds(500));  // let perf attach
    }
    Run r = Feed(opt, socket, d.pid(), opt.fast_jobs, 0.02);
    if (perf > 0) StopChild(perf, SIGINT, std::chrono::seconds(60));
    json fs = fake.Stats();
    Run many;
    json many_fs;
    if (opt.per_token > 0) {
      fake.Set({{"tokens", opt.per_token}});
      many = Feed(opt, socket, d.pid(), opt.per_token_jobs, 0.02);
      many_fs = fake.Stats();
    }
    std::string exit = DescribeExit(d.Stop(std::chrono::seconds(wrapped ? 600 : 60)).status);
    std::printf(
        "\n2. daemon-bound: %s jobs, fake with 0 ms per request (%d tokens), C = %d; "
        "[workers] max = %d\n",
        opt.kind.c_str(), opt.tokens, opt.fast_slots, opt.fast_slots);
    Report(r, fs, wrapped);
    if (opt.per_token > 0) {
      std::printf("\n2b. the same daemon, %d tokens per answer\n", opt.per_token);
      Report(many, many_fs, wrapped);
      const double few_us = r.cpu.total() * 1e6 / static_cast<double>(r.jobs);
      const double many_us = many.cpu.total() * 1e6 / static_cast<double>(many.jobs);
      const double per_token = (many_us - few_us) / (opt.per_token - opt.tokens);
      Line("CPU per job and per token",
           "%.1f us/job at %d tokens, %.1f us/job at %d tokens: %.2f us per token, %.1f us per "
           "job at 0 tokens",
           few_us, opt.tokens, many_us, opt.per_token, per_token, few_us - per_token * opt.tokens);
    }
    Line("digestd after SIGTERM", "%s", exit.c_str());
    if (perf > 0) Line("perf record", "%s", opt.perf_record.c_str());
  }

  dir.Finish(opt.keep_tmp, "configs, digestd.log, fake.log");
  curl_global_cleanup();
  return 0;
}
