// events_bench: what `subscribe` delivers and what it costs. The real
// digestd with the SHIPPED config (llm_bench.h's Rig without a fake Ollama:
// conf/digestd.conf with only the control socket and [postgres] conninfo
// rewritten; noop jobs never reach the backend), its jobs in PostgreSQL with
// the durable defaults, measured from outside in one run:
//
//   1. events delivered: --jobs noop jobs (sleep_ms 0) submitted by one
//      client in batches of [jobs] max_batch ({"op":"submit","jobs":[...]},
//      each answered once its rows are committed), while S subscribers (S = 1
//      and --subscribers), each a connection of its own that sent
//      {"op":"subscribe"} (no filter: every job) with a reader thread of its
//      own, count the lines they get: job events (queued, started and done,
//      3 per job) and the events their `lost` lines say they missed. Timed
//      from the first submit: the jobs' wall time ends with the commit of the
//      last done row (LISTEN digestd_done counts the finished keys,
//      count(*) WHERE status = 'done' then confirms), the delivery with the
//      last job event a subscriber read (the run waits until every
//      subscriber has an event or a lost count for 3 per job, or nothing came
//      for 10 s). Events/s: every subscriber's job events together over the
//      delivery time. Beside them digestd's status.events (sent, dropped).
//   2. CPU per job, in the same runs and in runs with no subscriber:
//      utime+stime of digestd (/proc/<pid>/stat) and of every process of the
//      cluster (the postmaster from <pg-dir>/data/postmaster.pid, its own
//      and its reaped children's time, and its live children's; the LISTEN
//      backend's own time is left out), from just before the first submit
//      until the jobs are done and their events read, over the jobs done.
//      The subscriber counts run interleaved, --rounds rounds of [0, 1, S],
//      each run on a fresh digestd and an emptied job table (truncated and
//      checkpointed): per count the median over the rounds, and the median
//      against 0 subscribers'.
//   3. `result` round trip: 3 noop jobs submitted in one group on a fresh
//      digestd, waited for with {"op":"result","group":G,"wait_ms":...}
//      until the group is completed, then --result-calls
//      {"op":"result","group":G} on one connection, each sent once the last
//      is answered: the time from sending one to reading its answer, p50 and
//      p99 in microseconds (every answer is read from the table).
//
// Figures only: nothing is asserted. It exits non-zero only when digestd or
// PostgreSQL cannot be used, with digestd's log. scripts/bench --events runs
// it inside `scripts/pg-throwaway run` with fsync, synchronous_commit and
// full_page_writes on. The subscribers' reader threads (they match each line
// as text, parsing only `lost` counts) share the machine's cores with
// digestd and PostgreSQL; this program's own CPU per job is printed beside
// digestd's. Other load on the machine moves every figure.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.h"
#include "llm_bench.h"
#include "proc_cpu.h"

namespace {

using namespace digestd::bench;
using digestd::ControlClient;

constexpr int kPollMs = 50;           // longest wait for a notification per turn
constexpr int kReadMs = 100;          // a reader's longest wait for a line per turn
constexpr double kStallS = 20;        // no job finished for this long ends a run
constexpr double kDeliveryS = 10;     // no event read for this long ends the delivery
constexpr int kEventsPerJob = 3;      // queued, started, done
constexpr int kResultWaitMs = 30000;  // the wait_ms of part 3's wait

struct Options {
  int jobs = 0;
  int rounds = 0;
  int subscribers = 0;
  int result_calls = 0;
  std::string pg_dir;  // pg-throwaway directory; default $DIGESTD_PG_DIR
};

// ------------------------------------------------------------ subscribers

// One subscriber: its connection and the reader thread that counts what it
// reads. The counters are read by the main thread while the reader runs.
struct Subscriber {
  ControlClient c;
  std::thread reader;
  std::atomic<long> events{0};      // job events
  std::atomic<long> lost{0};        // what lost lines said was missed
  std::atomic<long> lost_lines{0};  // lost lines
  std::atomic<Clock::rep> last{0};  // when the last job event was read
  std::atomic<bool> closed{false};  // the connection failed or digestd closed it
};

// Subscribes `n` connections to every job, each with a reader thread that
// runs until `stop`.
std::vector<std::unique_ptr<Subscriber>> Subscribe(const std::string& socket, int n,
                                                   const std::atomic<bool>& stop) {
  std::vector<std::unique_ptr<Subscriber>> subs;
  for (int i = 0; i < n; ++i) {
    auto s = std::make_unique<Subscriber>();
    Connect(s->c, socket);
    CallLine(s->c, R"({"op":"subscribe"})");
    Subscriber* me = s.get();
    s->reader = std::thread([me, &stop] {
      while (!stop.load(std::memory_order_relaxed)) {
        auto line = me->c.TryReadLine(kReadMs);
        if (!line.ok()) {
          me->closed.store(true);
          return;
        }
        if (!line->has_value()) continue;
        const std::string& l = **line;
        if (l.find(R"("event":"job")") != std::string::npos) {
          me->events.fetch_add(1, std::memory_order_relaxed);
          me->last.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
        } else if (l.find(R"("event":"lost")") != std::string::npos) {
          size_t at = l.find(R"("count":)");
          long n = at == std::string::npos ? 0 : std::strtol(l.c_str() + at + 8, nullptr, 10);
          me->lost.fetch_add(n, std::memory_order_relaxed);
          me->lost_lines.fetch_add(1, std::memory_order_relaxed);
        }
      }
    });
    subs.push_back(std::move(s));
  }
  return subs;
}

// --------------------------------------------------------------- submits

// A batch submit of `n` noop jobs (sleep_ms 0) keyed <prefix>0.., in `group`
// unless it is "".
std::string NoopBatch(const std::string& prefix, int n, const std::string& group) {
  std::string line = R"({"op":"submit","jobs":[)";
  line.reserve(static_cast<size_t>(n) * 70 + 32);
  for (int j = 0; j < n; ++j) {
    if (j > 0) line += ',';
    line += R"({"kind":"noop","key":")";
    line += prefix;
    line += std::to_string(j);
    line += '"';
    if (!group.empty()) {
      line += R"(,"group":")";
      line += group;
      line += '"';
    }
    line += R"(,"input":{"sleep_ms":0}})";
  }
  line += "]}";
  return line;
}

struct Submitted {
  long accepted = 0, refused = 0;
  std::string first_error;  // the first refusal, cut short
};

// Sends `batches`, each once the last is answered; counts what was accepted.
Submitted SubmitAll(const std::string& socket, const std::vector<std::string>& batches) {
  ControlClient c;
  Connect(c, socket);
  Submitted s;
  for (const std::string& line : batches) {
    digestd::Status st = c.SendLine(line);
    if (!st.ok()) Die("submit: %s", st.message().c_str());
    auto answer = c.ReadLine(120000);
    if (!answer.ok()) Die("submit: %s", answer.status().message().c_str());
    json a = json::parse(answer.value(), nullptr, false);
    long accepted = std::max(0L, static_cast<long>(Field(a, "/accepted")));
    long failed = std::max(0L, static_cast<long>(Field(a, "/failed")));
    if (a.is_discarded() || (accepted == 0 && failed == 0)) {
      Die("digestd's answer to a batch submit: %s", answer.value().substr(0, 300).c_str());
    }
    s.accepted += accepted;
    s.refused += failed;
    if (failed > 0 && s.first_error.empty()) {
      size_t at = answer.value().find("\"error\"");
      s.first_error = answer.value().substr(at == std::string::npos ? 0 : at, 300);
    }
  }
  return s;
}

// ------------------------------------------------------------------ runs

struct CpuMark {
  double digestd_us = 0, pg_us = 0, self_us = 0;
};

CpuMark Cpu(pid_t digestd, long postmaster) {
  return CpuMark{ProcessCpuUs(digestd), PostgresCpuUs(postmaster), SelfCpuUs()};
}

// One run: `subscribers` subscribers, opt.jobs jobs, parts 1 and 2.
struct Run {
  int round = 0, subscribers = 0;
  Submitted submitted;
  long done = 0;             // done rows counted at the end
  bool stalled = false;      // no job finished for kStallS
  std::string stall;         // rows by status when it stalled
  double jobs_s = 0;         // first submit -> last done row committed
  double delivery_s = 0;     // first submit -> last job event read (0: none read)
  bool undelivered = false;  // a subscriber still lacked events after kDeliveryS
  long events = 0, lost = 0, lost_lines = 0, closed = 0;
  double sent = 0, dropped = 0;  // digestd's status.events
  CpuMark cpu;                   // spent from the first submit to the end
  double poller_us = 0;          // the LISTEN backend's, left out of cpu.pg_us

  double PerJob(double us) const { return done > 0 ? us / static_cast<double>(done) : 0; }
  double EventsPerSecond() const {
    return delivery_s > 0 ? static_cast<double>(events) / delivery_s : 0;
  }
  double EventsPerJobPerSubscriber() const {
    return subscribers > 0 && submitted.accepted > 0
               ? static_cast<double>(events) / subscribers / static_cast<double>(submitted.accepted)
               : 0;
  }
};

// Parts 1 and 2, one run: a fresh digestd with `subscribers` subscribers,
// opt.jobs jobs from the first submit until the last done row is committed
// and every subscriber has its events.
Run RunJobs(Rig& rig, const Options& opt, long postmaster, int round, int subscribers, int seq) {
  Run r;
  r.round = round;
  r.subscribers = subscribers;
  const std::string socket = rig.dir().File("control.sock");
  std::vector<std::string> batches;
  const int max_batch = rig.max_batch();
  for (int b = 0; b * max_batch < opt.jobs; ++b) {
    // (built in steps: g++ 12 -O3 warns on "r" + string + "-")
    std::string prefix = "r";
    prefix += std::to_string(seq);
    prefix += '-';
    prefix += std::to_string(b);
    prefix += '-';
    batches.push_back(NoopBatch(prefix, std::min(max_batch, opt.jobs - b * max_batch), ""));
  }

  auto daemon = rig.StartDaemon(Mode{"shipped", 0}, "");
  std::atomic<bool> stop{false};
  auto subs = Subscribe(socket, subscribers, stop);
  const double listening = Field(daemon->Status(), "/events/subscribers");
  if (listening != subscribers) {
    Die("status.events.subscribers is %.0f with %d subscribed", listening, subscribers);
  }
  BlockingPg watch(rig.conninfo());
  const long watcher = watch.Count("SELECT pg_backend_pid()");
  watch.Exec("LISTEN digestd_done");
  const std::string count_done = "SELECT count(*) FROM digestd.jobs WHERE status = 'done'";

  const double watcher0 = ProcessCpuUs(watcher);
  const CpuMark before = Cpu(daemon->pid(), postmaster);
  const auto t0 = Clock::now();
  std::atomic<bool> submitting{true};
  Submitted submitted;
  std::thread submitter([&] {
    submitted = SubmitAll(socket, batches);
    submitting.store(false);
  });

  // The jobs: LISTEN digestd_done counts the finished keys; once they reach
  // the jobs accepted, count(*) confirms.
  bool joined = false, jobs_done = false;
  long notified = 0, seen = 0;
  auto last_progress = t0;
  for (;;) {
    const long got = WaitDoneKeys(watch, kPollMs);
    const auto now = Clock::now();
    notified += got;
    if (got > 0) last_progress = now;
    if (!joined && !submitting.load()) {
      submitter.join();
      joined = true;
      r.submitted = submitted;
    }
    if (joined && !jobs_done && notified >= r.submitted.accepted) {
      r.done = watch.Count(count_done);
      if (r.done >= r.submitted.accepted) {
        jobs_done = true;
        r.jobs_s = Seconds(now - t0);
        last_progress = now;
      }
    }
    // The events: every subscriber has 3 per job, or was told it lost them.
    long events = 0;
    bool all = true;
    for (const auto& s : subs) {
      const long e = s->events.load(std::memory_order_relaxed);
      events += e;
      all = all && (s->closed.load() || e + s->lost.load(std::memory_order_relaxed) >=
                                            kEventsPerJob * r.submitted.accepted);
    }
    if (events != seen) {
      seen = events;
      last_progress = now;
    }
    if (jobs_done) {
      if (all) break;
      if (Seconds(now - last_progress) > kDeliveryS) {
        r.undelivered = true;
        break;
      }
    } else if (Seconds(now - last_progress) > kStallS) {
      r.stalled = true;
      r.done = watch.Count(count_done);
      r.jobs_s = Seconds(now - t0);
      r.stall = watch.Scalar(
          "SELECT string_agg(status || ' ' || n, ', ') FROM "
          "(SELECT status, count(*) AS n FROM digestd.jobs GROUP BY status ORDER BY status) s");
      break;
    }
    daemon->DieIfExited("during the run");
  }
  const CpuMark after = Cpu(daemon->pid(), postmaster);
  r.poller_us = ProcessCpuUs(watcher) - watcher0;
  r.cpu = {after.digestd_us - before.digestd_us, after.pg_us - before.pg_us - r.poller_us,
           after.self_us - before.self_us};
  if (!joined) {
    // Stalled with submits unanswered: their 120 s timeout ends them.
    submitter.join();
    r.submitted = submitted;
  }

  const json status = daemon->Status();
  r.sent = Field(status, "/events/sent");
  r.dropped = Field(status, "/events/dropped");
  stop.store(true);
  Clock::rep last = 0;
  for (const auto& s : subs) {
    s->reader.join();
    r.events += s->events.load();
    r.lost += s->lost.load();
    r.lost_lines += s->lost_lines.load();
    r.closed += s->closed.load() ? 1 : 0;
    last = std::max(last, s->last.load());
  }
  if (last > 0) r.delivery_s = Seconds(Clock::time_point(Clock::duration(last)) - t0);
  subs.clear();  // closes the connections
  rig.StopDaemon(daemon);
  return r;
}

// Part 3 on a fresh digestd.
Summary ResultRoundTrips(Rig& rig, const Options& opt, double* seconds) {
  auto daemon = rig.StartDaemon(Mode{"shipped", 0}, "");
  ControlClient c;
  Connect(c, rig.dir().File("control.sock"));
  const std::string group = "rt-group";
  json a = CallJson(c, NoopBatch("rt-", 3, group));
  if (Field(a, "/accepted") != 3) Die("the group's submit: %s", a.dump().substr(0, 300).c_str());
  const std::string wait =
      json{{"op", "result"}, {"group", group}, {"wait_ms", kResultWaitMs}}.dump();
  const auto deadline = Clock::now() + std::chrono::minutes(2);
  for (;;) {
    json g = CallJson(c, wait, kResultWaitMs + 10000);
    if (g.value("status", "") == "completed") break;
    if (Clock::now() > deadline) {
      Die("the group of 3 noop jobs is not completed after 2 minutes: %s",
          g.dump().substr(0, 300).c_str());
    }
  }
  const std::string line = json{{"op", "result"}, {"group", group}}.dump();
  std::vector<double> us;
  us.reserve(static_cast<size_t>(opt.result_calls));
  std::string answer;
  const auto t0 = Clock::now();
  for (int i = 0; i < opt.result_calls; ++i) {
    const auto s = Clock::now();
    answer = CallLine(c, line);
    us.push_back(Ms(Clock::now() - s) * 1000);
  }
  *seconds = Seconds(Clock::now() - t0);
  json last = json::parse(answer, nullptr, false);
  if (Field(last, "/ready") != 3) {
    Die("the last result answer is not the completed group: %s", answer.substr(0, 300).c_str());
  }
  c.Close();
  rig.StopDaemon(daemon);
  return Summarize(std::move(us));
}

// ---------------------------------------------------------------- report

double Median(const std::vector<Run>& runs, int subscribers, double (*f)(const Run&)) {
  std::vector<double> v;
  for (const Run& r : runs) {
    if (r.subscribers == subscribers) v.push_back(f(r));
  }
  return Summarize(std::move(v)).p50;
}

void PrintRuns(const std::vector<Run>& runs) {
  std::printf(
      "\nper run (sent: digestd's status.events.sent; read: the job events the subscribers "
      "read;\n lost: the events their lost lines counted; CPU in us per job, from the first "
      "submit\n until the jobs are done and their events read)\n");
  std::printf("  %5s %4s %6s %7s %8s %9s %9s %10s %6s %7s %9s %10s %10s %10s\n", "round", "subs",
              "jobs", "wall s", "jobs/s", "sent", "read", "ev/job/sub", "lost", "dropped",
              "events/s", "digestd", "postgres", "this prog");
  for (const Run& r : runs) {
    std::printf(
        "  %5d %4d %6ld %7.2f %8.0f %9.0f %9ld %10.2f %6ld %7.0f %9.0f %10.1f %10.1f %10.1f%s%s\n",
        r.round, r.subscribers, r.done, r.jobs_s,
        r.jobs_s > 0 ? static_cast<double>(r.done) / r.jobs_s : 0, r.sent, r.events,
        r.EventsPerJobPerSubscriber(), r.lost, r.dropped, r.EventsPerSecond(),
        r.PerJob(r.cpu.digestd_us), r.PerJob(r.cpu.pg_us), r.PerJob(r.cpu.self_us),
        r.stalled ? "  STALLED" : "", r.undelivered ? "  events missing after 10 s" : "");
    if (r.stalled) std::printf("        rows by status at the stall: %s\n", r.stall.c_str());
    if (r.submitted.refused > 0) {
      std::printf("        refused at submit: %ld, first: %s\n", r.submitted.refused,
                  r.submitted.first_error.c_str());
    }
    if (r.lost_lines > 0) {
      std::printf("        %ld lost lines, %ld events missed\n", r.lost_lines, r.lost);
    }
    if (r.closed > 0) std::printf("        %ld subscriber connections closed early\n", r.closed);
  }
}

// /proc/loadavg's first three fields: the other load on the machine.
std::string LoadAverage() {
  std::ifstream in("/proc/loadavg");
  std::string one, five, fifteen;
  in >> one >> five >> fifteen;
  return in ? one + " " + five + " " + fifteen : "unknown";
}

Options ParseFlags(Flags& flags, int argc, char** argv) {
  flags.Parse(argc, argv);
  Options o;
  const bool quick = flags.Has("quick");
  auto integer = [&](const char* name, long lo, long hi, long quick_value) {
    return static_cast<int>(flags.Has(name) || !quick ? flags.Integer(name, lo, hi) : quick_value);
  };
  o.jobs = integer("jobs", 1, 1000000, 1000);
  o.rounds = integer("rounds", 1, 100, 1);
  o.subscribers = integer("subscribers", 1, 200, 50);
  o.result_calls = integer("result-calls", 1, 1000000, 500);
  o.pg_dir = flags.String("pg-dir");
  if (o.pg_dir.empty()) {
    if (const char* d = std::getenv("DIGESTD_PG_DIR")) o.pg_dir = d;
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<FlagSpec> specs = {
      {"jobs", "N", "noop jobs per run (--quick: 1000)", "5000"},
      {"rounds", "N", "rounds of [0, 1, S subscribers] (--quick: 1)", "3"},
      {"subscribers", "S", "subscribers of the many-subscriber runs", "50"},
      {"result-calls", "N", "timed result calls on the finished group (--quick: 500)", "2000"},
      {"pg-dir", "DIR",
       "pg-throwaway directory, for the postmaster pid\n(default $DIGESTD_PG_DIR)"},
      {"quick", "", "1000 jobs, 1 round, 500 result calls (unless given)"},
  };
  for (auto& s : RigFlags(false)) specs.push_back(s);
  Flags flags("events_bench",
              "Events/s delivered to 1 and S subscribers and digestd's and PostgreSQL's CPU per "
              "job with 0, 1 and S subscribers, while noop jobs run with the shipped config; "
              "then the result round trip of a finished group.",
              specs);
  Options opt = ParseFlags(flags, argc, argv);
  signal(SIGPIPE, SIG_IGN);
  Rig rig(flags, "dgevents", false);
  long postmaster = PostmasterPid(opt.pg_dir);
  if (postmaster <= 0) {
    // Same host: the postmaster is the parent of this connection's backend.
    auto s = ReadStat(rig.pg().Count("SELECT pg_backend_pid()"));
    postmaster = s ? s->ppid : 0;
  }
  rig.PrintHeader("events benchmark: subscribe, with the shipped config");
  std::printf(
      "  %d noop jobs (sleep_ms 0) per run, batches of %d ([jobs] max_batch) from one client;\n"
      "  %d round(s) of [0, 1, %d] subscribers, each run on a fresh digestd and an emptied table\n"
      "  CPU: digestd pid + postmaster %ld (%s) and its children\n"
      "  load average before: %s\n",
      opt.jobs, rig.max_batch(), opt.rounds, opt.subscribers, postmaster,
      opt.pg_dir.empty() ? "parent of a backend" : "postmaster.pid", LoadAverage().c_str());
  std::fflush(stdout);

  std::vector<int> counts = {0, 1};
  if (opt.subscribers > 1) counts.push_back(opt.subscribers);
  std::vector<Run> runs;
  int seq = 0;
  for (int round = 1; round <= opt.rounds; ++round) {
    for (int n : counts) {
      runs.push_back(RunJobs(rig, opt, postmaster, round, n, seq++));
      const Run& r = runs.back();
      std::printf("  round %d, %2d subscribers: %ld jobs in %.2f s, %ld events%s\n", round, n,
                  r.done, r.jobs_s, r.events, r.stalled ? " (STALLED)" : "");
      std::fflush(stdout);
    }
  }
  double result_s = 0;
  const Summary rt = ResultRoundTrips(rig, opt, &result_s);
  const std::string load_after = LoadAverage();

  PrintRuns(runs);

  std::printf(
      "\n1. events delivered while %d noop jobs run from submit to done (median of %d "
      "round%s)\n",
      opt.jobs, opt.rounds, opt.rounds == 1 ? "" : "s");
  std::printf("  %11s %10s %20s %12s %16s %10s %10s\n", "subscribers", "events/s",
              "events/job/subscr.", "jobs wall s", "last event at s", "lost, all", "dropped");
  for (int n : counts) {
    if (n == 0) continue;
    long lost = 0;
    double dropped = 0;
    for (const Run& r : runs) {
      if (r.subscribers != n) continue;
      lost += r.lost;
      dropped += std::max(0.0, r.dropped);
    }
    std::printf("  %11d %10.0f %20.2f %12.2f %16.2f %10ld %10.0f\n", n,
                Median(runs, n, [](const Run& r) { return r.EventsPerSecond(); }),
                Median(runs, n, [](const Run& r) { return r.EventsPerJobPerSubscriber(); }),
                Median(runs, n, [](const Run& r) { return r.jobs_s; }),
                Median(runs, n, [](const Run& r) { return r.delivery_s; }), lost, dropped);
  }
  std::printf(
      "  (events/s: every subscriber's job events over the time from the first submit to the\n"
      "   last event read; jobs wall: from the first submit to the commit of the last done\n"
      "   row; lost and dropped: summed over the rounds, lost as the subscribers' lost lines\n"
      "   counted, dropped as digestd's status.events.dropped)\n");

  std::printf("\n2. CPU per job, us (median of %d round%s; x: against 0 subscribers)\n", opt.rounds,
              opt.rounds == 1 ? "" : "s");
  std::printf("  %11s %12s %7s %12s %7s %12s %10s %12s\n", "subscribers", "digestd", "x",
              "postgres", "x", "together", "jobs/s", "this program");
  const double d0 = Median(runs, 0, [](const Run& r) { return r.PerJob(r.cpu.digestd_us); });
  const double p0 = Median(runs, 0, [](const Run& r) { return r.PerJob(r.cpu.pg_us); });
  for (int n : counts) {
    const double d = Median(runs, n, [](const Run& r) { return r.PerJob(r.cpu.digestd_us); });
    const double p = Median(runs, n, [](const Run& r) { return r.PerJob(r.cpu.pg_us); });
    const double both =
        Median(runs, n, [](const Run& r) { return r.PerJob(r.cpu.digestd_us + r.cpu.pg_us); });
    std::printf("  %11d %12.1f %7.2f %12.1f %7.2f %12.1f %10.0f %12.1f\n", n, d,
                d0 > 0 ? d / d0 : 0, p, p0 > 0 ? p / p0 : 0, both,
                Median(runs, n,
                       [](const Run& r) {
                         return r.jobs_s > 0 ? static_cast<double>(r.done) / r.jobs_s : 0;
                       }),
                Median(runs, n, [](const Run& r) { return r.PerJob(r.cpu.self_us); }));
  }

  std::printf(
      "\n3. result round trip: {\"op\":\"result\",\"group\":G} for a completed group of 3 noop "
      "jobs,\n   %d calls one after the other on one connection\n",
      opt.result_calls);
  std::printf("  p50 %.0f us, p99 %.0f us (min %.0f, max %.0f), %.0f calls/s\n", rt.p50, rt.p99,
              rt.min, rt.max, static_cast<double>(rt.n) / result_s);

  std::printf("\nload average after: %s (before: see the top)\n", load_after.c_str());
  rig.Finish();
  return 0;
}
