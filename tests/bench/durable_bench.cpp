// durable_bench: the real digestd with its jobs in PostgreSQL ([jobs] store =
// "postgres", [backend] kind = "extractive", [workers] max = 16), measured
// from outside in one run against one cluster:
//
//   1. durable single-job submits per second ({"op":"submit","kind":"noop",
//      "key":...}: one line out, one answer back, then the next) from 1 and
//      from --clients concurrent clients, each a thread with its own
//      connection, for --seconds each;
//   2. the same with batch submits of --batch jobs ({"op":"submit","jobs":
//      [...]}), reported as jobs/s;
//   3. end to end: --jobs noop jobs (sleep_ms 0) submitted in batches of
//      --e2e-batch from --e2e-clients clients as fast as they are answered,
//      timed from the first submit until the last done row is committed
//      (LISTEN digestd_done on a blocking libpq connection counts the
//      finished keys; SELECT count(*) FROM digestd.jobs WHERE status =
//      'done' then confirms the number accepted): jobs/s, CPU microseconds per
//      job of digestd (/proc/<pid>/stat utime+stime) plus every process of
//      the cluster (the postmaster from <pg-dir>/data/postmaster.pid, its own
//      and its reaped children's time, and its live children's; the LISTEN
//      backend's own time is shown apart and left out), and from digestd's
//      status the writer's commits per 1,000 results and row wait p50/p99;
//   4. a backlog: --jobs noop jobs inserted into digestd.jobs by one INSERT
//      (queued, as a submit to a busy daemon leaves them) and checkpointed
//      before the clock starts; timed from spawning a fresh digestd until the
//      last done row is committed (counted as in 3): jobs/s and CPU per job
//      as in 3, digestd's from its start (graphile-worker's method; the
//      figures of tests/bench/peers compare the two methods with its and
//      pg-boss's).
//
// --only picks measurements (submits, e2e, backlog; default all three);
// --json adds one line per end-to-end or backlog run for tests/bench/peers:
// {"method":"e2e"|"backlog","jobs":N,"seconds":S,"worker_us":...,
// "pg_us":...,"client_us":...,"observer_us":...} (CPU totals over the run, in
// microseconds: digestd, the cluster without the LISTEN backend, this
// program, the LISTEN backend).
//
// A submit is answered only once its row is committed, so every figure is of
// durable work. Each measurement gets a fresh digestd process (so status
// counters and CPU belong to it alone) on an emptied table: digestd.jobs is
// truncated and the cluster checkpointed between them. While submits are
// measured the 16 slots run the submitted jobs too, as in production.
//
// Figures only: nothing is asserted. It exits non-zero only when digestd or
// PostgreSQL cannot be used, with digestd's log. scripts/bench runs it inside
// `scripts/pg-throwaway run`. Other load on the machine moves every figure.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.h"
#include "proc_cpu.h"

namespace {

using namespace digestd::bench;

constexpr int kPollMs = 50;       // longest wait for a notification per turn
constexpr double kStallS = 20;    // no progress for this long ends a run
constexpr int kAnswerMs = 30000;  // longest wait for one answer

struct Options {
  std::string digestd;
  double seconds = 0;    // each submit measurement
  int jobs = 0;          // end-to-end jobs
  int clients = 0;       // concurrent clients of the second submit runs
  int batch = 0;         // jobs per batch submit in phase 2
  int e2e_clients = 0;   // clients submitting the end-to-end jobs
  int e2e_batch = 0;     // jobs per batch submit in phase 3
  std::string conninfo;  // PostgreSQL for digestd and for this program
  std::string pg_dir;    // pg-throwaway directory; default $DIGESTD_PG_DIR
  bool keep_tmp = false;
  bool json = false;
  bool keep_rows = false;  // leave the last run's rows (and dead rows) in the table
  bool submits = true, e2e = true, backlog = true;  // --only
  std::vector<std::string> set;                     // --set SECTION.KEY=VALUE config overrides
};

// ------------------------------------------------------------ blocking SQL

// Empties the job table (when digestd has created it) and checkpoints, so
// every measurement starts from the same state. No digestd runs meanwhile.
void ResetTable(BlockingPg& c) {
  c.Exec(
      "DO $$ BEGIN IF to_regclass('digestd.jobs') IS NOT NULL THEN "
      "TRUNCATE digestd.jobs; END IF; END $$");
  c.Exec("CHECKPOINT");
}

// ------------------------------------------------------------------- CPU

struct CpuMark {
  double digestd_us = 0, pg_us = 0, self_us = 0;
};

CpuMark Cpu(pid_t digestd, long postmaster) {
  return CpuMark{ProcessCpuUs(digestd), PostgresCpuUs(postmaster), SelfCpuUs()};
}

// ------------------------------------------------------------ the clients

// What the clients saw, merged over threads.
struct Tally {
  long requests = 0, accepted = 0, refused = 0;
  std::string first_error;  // the first refusal or failure, cut short
  std::vector<double> latency_ms;

  void Merge(Tally&& t) {
    requests += t.requests;
    accepted += t.accepted;
    refused += t.refused;
    if (first_error.empty()) first_error = std::move(t.first_error);
    latency_ms.insert(latency_ms.end(), t.latency_ms.begin(), t.latency_ms.end());
  }
};

// Counts the jobs an answer to a submit of `n` jobs accepted (n == 0: a
// single-job submit) and notes the first refusal. Reads the answer as text:
// the bench shares two cores with digestd and PostgreSQL, so it parses little.
void CountAnswer(const std::string& answer, int n, Tally* t) {
  ++t->requests;
  long accepted = 0;
  if (answer.find("\"ok\":true") != std::string::npos) {
    if (n == 0) {
      accepted = 1;
    } else {
      size_t at = answer.find("\"accepted\":");
      if (at != std::string::npos) accepted = std::strtol(answer.c_str() + at + 11, nullptr, 10);
    }
  }
  long want = n == 0 ? 1 : n;
  t->accepted += accepted;
  if (accepted < want) {
    t->refused += want - accepted;
    if (t->first_error.empty()) {
      size_t at = answer.find("\"error\"");
      t->first_error = answer.substr(at == std::string::npos ? 0 : at, 300);
    }
  }
}

// A submit of `n` noop jobs keyed <prefix><seq>-0.. (n == 0: one job, the
// single-job form).
std::string SubmitLine(const std::string& prefix, long seq, int n, const char* input) {
  std::string key = prefix + std::to_string(seq);
  if (n == 0) return R"({"op":"submit","kind":"noop","key":")" + key + "\"" + input + "}";
  std::string line = R"({"op":"submit","jobs":[)";
  line.reserve(static_cast<size_t>(n) * 60 + 32);
  for (int j = 0; j < n; ++j) {
    if (j > 0) line += ',';
    line += R"({"kind":"noop","key":")";
    line += key;
    line += '-';
    line += std::to_string(j);
    line += '"';
    line += input;
    line += '}';
  }
  line += "]}";
  return line;
}

// Sends the lines `next` gives, each once the answer to the last has been
// read, until `next` returns false or the connection fails (noted in the
// tally as refused jobs).
template <typename NextLine>
void ClientLoop(digestd::ControlClient& c, int n, NextLine next, Tally* t) {
  std::string line;
  while (next(&line)) {
    auto t0 = Clock::now();
    digestd::Status st = c.SendLine(line);
    auto answer = st.ok() ? c.ReadLine(kAnswerMs) : digestd::Result<std::string>(st);
    if (!answer.ok()) {
      t->refused += n == 0 ? 1 : n;
      if (t->first_error.empty()) t->first_error = answer.status().message();
      return;
    }
    t->latency_ms.push_back(Ms(Clock::now() - t0));
    CountAnswer(answer.value(), n, t);
  }
}

struct SubmitFigures {
  int clients = 0, batch = 0;
  double seconds = 0;
  Tally tally;
  CpuMark cpu;           // spent during the run
  long done_at_end = 0;  // jobs the slots finished meanwhile
};

// Phases 1 and 2: `clients` threads submit back to back for `seconds`.
SubmitFigures RunSubmits(const Options& opt, Daemon& d, BlockingPg& sql, const std::string& socket,
                         long postmaster, int clients, int batch, const std::string& prefix) {
  std::atomic<int> connected{0};
  std::atomic<bool> go{false}, stop{false};
  std::vector<Tally> tallies(static_cast<size_t>(clients));
  std::vector<std::thread> threads;
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back([&, i] {
      Tally& t = tallies[static_cast<size_t>(i)];
      t.latency_ms.reserve(1 << 16);
      digestd::ControlClient c;
      digestd::Status st = c.Connect(socket);
      connected.fetch_add(1);
      if (!st.ok()) {
        t.first_error = st.message();
        return;
      }
      while (!go.load()) std::this_thread::yield();
      std::string mine = prefix + std::to_string(i) + "-";
      long seq = 0;
      ClientLoop(
          c, batch,
          [&](std::string* line) {
            if (stop.load(std::memory_order_relaxed)) return false;
            *line = SubmitLine(mine, seq++, batch, "");
            return true;
          },
          &t);
    });
  }
  while (connected.load() < clients) std::this_thread::yield();
  SubmitFigures f;
  f.clients = clients;
  f.batch = batch;
  CpuMark before = Cpu(d.pid(), postmaster);
  auto t0 = Clock::now();
  go.store(true);
  std::this_thread::sleep_for(std::chrono::duration<double>(opt.seconds));
  stop.store(true);
  for (auto& t : threads) t.join();
  f.seconds = Seconds(Clock::now() - t0);
  CpuMark after = Cpu(d.pid(), postmaster);
  f.cpu = {after.digestd_us - before.digestd_us, after.pg_us - before.pg_us,
           after.self_us - before.self_us};
  for (auto& t : tallies) f.tally.Merge(std::move(t));
  f.done_at_end = sql.Count("SELECT count(*) FROM digestd.jobs WHERE status = 'done'");
  d.DieIfExited("during the submits");
  return f;
}

struct EndToEnd {
  long target = 0, done = 0;
  double seconds = 0, submit_seconds = 0;
  bool stalled = false;
  std::string stall;  // statuses in the table when it stalled
  Tally tally;
  CpuMark cpu;
  double poller_us = 0;  // the LISTEN backend's CPU, left out of cpu.pg_us
  json status;           // digestd's status at the end
};

// Phase 3: opt.jobs jobs in batches; the end is the commit of the last done
// row: LISTEN digestd_done counts finished keys as their commits are
// notified, and once they reach the jobs accepted, SELECT count(*) ... WHERE
// status = 'done' confirms (a count polled every 50 ms instead would cost
// PostgreSQL ~10 ms a query on 50,000 rows, on the same two cores).
EndToEnd RunEndToEnd(const Options& opt, Daemon& d, const std::string& socket, long postmaster) {
  BlockingPg watch(opt.conninfo);
  long watcher = watch.Count("SELECT pg_backend_pid()");
  watch.Exec("LISTEN digestd_done");
  int batches = (opt.jobs + opt.e2e_batch - 1) / opt.e2e_batch;
  std::vector<std::string> lines;
  for (int b = 0; b < batches; ++b) {
    int n = std::min(opt.e2e_batch, opt.jobs - b * opt.e2e_batch);
    lines.push_back(SubmitLine("e2e-", b, n, R"(,"input":{"sleep_ms":0})"));
  }

  std::atomic<int> connected{0}, next{0}, finished{0};
  std::atomic<bool> go{false};
  std::vector<Tally> tallies(static_cast<size_t>(opt.e2e_clients));
  std::vector<std::thread> threads;
  for (int i = 0; i < opt.e2e_clients; ++i) {
    threads.emplace_back([&, i] {
      Tally& t = tallies[static_cast<size_t>(i)];
      digestd::ControlClient c;
      digestd::Status st = c.Connect(socket);
      connected.fetch_add(1);
      if (st.ok()) {
        while (!go.load()) std::this_thread::yield();
        ClientLoop(
            c, opt.e2e_batch,
            [&](std::string* line) {
              int b = next.fetch_add(1);
              if (b >= batches) return false;
              *line = std::move(lines[static_cast<size_t>(b)]);
              return true;
            },
            &t);
      } else {
        t.first_error = st.message();
      }
      finished.fetch_add(1);
    });
  }
  while (connected.load() < opt.e2e_clients) std::this_thread::yield();

  EndToEnd r;
  double watcher0 = ProcessCpuUs(watcher);
  CpuMark before = Cpu(d.pid(), postmaster), after;
  auto t0 = Clock::now(), end = t0;
  go.store(true);
  auto last_progress = t0;
  bool submitted = false;
  long notified = 0;
  const std::string count_done = "SELECT count(*) FROM digestd.jobs WHERE status = 'done'";
  for (;;) {
    long got = WaitDoneKeys(watch, kPollMs);
    end = Clock::now();
    if (got > 0) last_progress = end;
    notified += got;
    if (!submitted && finished.load() == opt.e2e_clients) {
      submitted = true;
      r.submit_seconds = Seconds(end - t0);
      for (auto& t : threads) t.join();
      for (auto& t : tallies) r.tally.Merge(std::move(t));
      r.target = r.tally.accepted;
    }
    if (submitted && notified >= r.target) {
      after = Cpu(d.pid(), postmaster);
      r.done = watch.Count(count_done);
      if (r.done >= r.target) break;
    }
    if (Seconds(end - last_progress) > kStallS) {
      r.stalled = true;
      after = Cpu(d.pid(), postmaster);
      r.done = watch.Count(count_done);
      break;
    }
    d.DieIfExited("during the end-to-end run");
  }
  r.seconds = Seconds(end - t0);
  r.poller_us = ProcessCpuUs(watcher) - watcher0;
  r.cpu = {after.digestd_us - before.digestd_us, after.pg_us - before.pg_us - r.poller_us,
           after.self_us - before.self_us};
  if (r.stalled) {
    r.stall = watch.Scalar(
        "SELECT string_agg(status || ' ' || n, ', ') FROM "
        "(SELECT status, count(*) AS n FROM digestd.jobs GROUP BY status ORDER BY status) s");
    if (!submitted) {
      // The submitters are stuck on an answer; their 30 s timeout ends them.
      for (auto& t : threads) t.join();
      for (auto& t : tallies) r.tally.Merge(std::move(t));
      r.target = r.tally.accepted;
    }
  }
  r.status = d.Status();
  return r;
}

// Phase 4: opt.jobs queued rows inserted by SQL and checkpointed, then a
// fresh digestd spawned: timed from the spawn until the last done row is
// committed (LISTEN digestd_done, then count(*) confirms, as in phase 3).
// The table exists: an earlier digestd migrated it.
EndToEnd RunBacklog(const Options& opt, const DaemonOptions& options, BlockingPg& sql,
                    long postmaster, std::vector<std::string>* exits) {
  ResetTable(sql);
  sql.Exec(
      "INSERT INTO digestd.jobs (key, kind, lane, input) SELECT 'backlog-' || g, 'noop', 1, "
      "'{\"sleep_ms\":0}'::jsonb FROM generate_series(1, " +
      std::to_string(opt.jobs) + ") g");
  sql.Exec("CHECKPOINT");
  BlockingPg watch(opt.conninfo);
  long watcher = watch.Count("SELECT pg_backend_pid()");
  watch.Exec("LISTEN digestd_done");

  EndToEnd r;
  r.target = opt.jobs;
  double watcher0 = ProcessCpuUs(watcher), pg0 = PostgresCpuUs(postmaster), self0 = SelfCpuUs();
  auto t0 = Clock::now(), end = t0, last_progress = t0;
  Daemon d(options);
  d.Start();
  const std::string count_done = "SELECT count(*) FROM digestd.jobs WHERE status = 'done'";
  long notified = 0;
  CpuMark after;
  for (;;) {
    long got = WaitDoneKeys(watch, kPollMs);
    end = Clock::now();
    if (got > 0) last_progress = end;
    notified += got;
    bool stalled = Seconds(end - last_progress) > kStallS;
    if (notified >= r.target || stalled) {
      after = Cpu(d.pid(), postmaster);
      r.done = watch.Count(count_done);
      if (r.done >= r.target) break;
      if (stalled) {
        r.stalled = true;
        r.stall = watch.Scalar(
            "SELECT string_agg(status || ' ' || n, ', ') FROM "
            "(SELECT status, count(*) AS n FROM digestd.jobs GROUP BY status ORDER BY status) s");
        break;
      }
    }
    d.DieIfExited("during the backlog run");
  }
  r.seconds = Seconds(end - t0);
  r.submit_seconds = 0;
  r.tally.accepted = r.target;
  r.poller_us = ProcessCpuUs(watcher) - watcher0;
  r.cpu = {after.digestd_us, after.pg_us - pg0 - r.poller_us, after.self_us - self0};
  r.status = d.Status();
  exits->push_back(DescribeExit(d.Stop().status));
  return r;
}

// ------------------------------------------------------------------ setup

std::string WriteConfig(const Options& opt, const BenchDir& dir, const std::string& socket) {
  // The shipped defaults, except what the bench needs; --set overrides.
  ConfigFile conf = DaemonConfig(socket, "durable-bench");
  UsePostgres(conf, opt.conninfo);
  conf.Set("workers", "max", "16");
  conf.SetString("backend", "kind", "extractive");
  conf.Set("writer", "batch_rows", "50");
  conf.Set("writer", "batch_ms", "500");
  for (const auto& s : opt.set) {
    if (!conf.Override(s)) Die("--set %s: expected SECTION.KEY=VALUE", s.c_str());
  }
  return conf.Write(dir.File("digestd.conf"));
}

Options ParseFlags(int argc, char** argv) {
  Flags flags(
      "durable_bench",
      "Starts the real digestd with its jobs in PostgreSQL and prints durable submits/s\n"
      "(single and batched, 1 and N clients) and end-to-end noop jobs/s with CPU per job.\n"
      "PostgreSQL from --conninfo or libpq's PG* variables.",
      {
          {"seconds", "S", "duration of each submit measurement", "3"},
          {"jobs", "N", "end-to-end jobs", "50000"},
          {"clients", "N", "concurrent clients of the second submit runs", "8"},
          {"batch", "N", "jobs per batch submit in the batched runs", "100"},
          {"e2e-clients", "N", "clients submitting the end-to-end jobs", "4"},
          {"e2e-batch", "N", "jobs per batch submit end to end", "500"},
          {"digestd", "PATH", "the binary", DIGESTD_BIN},
          {"conninfo", "STR", "key=value conninfo, for digestd and this program"},
          {"pg-dir", "DIR",
           "pg-throwaway directory, for the postmaster pid\n(default $DIGESTD_PG_DIR)"},
          {"set", "S.K=V", "config override, V verbatim (repeatable): --set writer.batch_rows=500"},
          {"only", "WHAT",
           "measure only these, comma-separated: submits, e2e, backlog\n(default all three)"},
          {"json", "", "also print a JSON line per e2e and backlog run (tests/bench/peers)"},
          {"keep-rows", "",
           "leave the last run's rows in digestd.jobs (for a look at its statistics)"},
          {"keep-tmp", "", "keep the temp dir (config and digestd's log)"},
      });
  flags.Parse(argc, argv);
  Options o;
  o.seconds = flags.Number("seconds", 0.1, 600);
  o.jobs = static_cast<int>(flags.Integer("jobs", 1, 10000000));
  o.clients = static_cast<int>(flags.Integer("clients", 1, 256));
  o.batch = static_cast<int>(flags.Integer("batch", 1, 100000));
  o.e2e_clients = static_cast<int>(flags.Integer("e2e-clients", 1, 256));
  o.e2e_batch = static_cast<int>(flags.Integer("e2e-batch", 1, 100000));
  o.digestd = flags.String("digestd");
  o.conninfo = flags.String("conninfo");
  o.pg_dir = flags.String("pg-dir");
  if (o.pg_dir.empty()) {
    if (const char* d = std::getenv("DIGESTD_PG_DIR")) o.pg_dir = d;
  }
  o.set = flags.Strings("set");
  for (const auto& s : o.set) {
    if (!ConfigFile().Override(s)) flags.UsageError("--set " + s + ": expected SECTION.KEY=VALUE");
  }
  o.keep_tmp = flags.Has("keep-tmp");
  o.json = flags.Has("json");
  o.keep_rows = flags.Has("keep-rows");
  if (flags.Has("only")) {
    o.submits = o.e2e = o.backlog = false;
    std::string list = flags.String("only") + ",";
    for (size_t at = 0, comma; (comma = list.find(',', at)) != std::string::npos; at = comma + 1) {
      std::string w = list.substr(at, comma - at);
      if (w == "submits") {
        o.submits = true;
      } else if (w == "e2e") {
        o.e2e = true;
      } else if (w == "backlog") {
        o.backlog = true;
      } else {
        flags.UsageError("--only " + flags.String("only") + ": " +
                         (w.empty() ? "an empty name" : w) + " is not submits, e2e or backlog");
      }
    }
  }
  return o;
}

// ----------------------------------------------------------------- report

void PrintSubmits(const char* what, const std::vector<SubmitFigures>& runs) {
  std::printf("%-30s %7s %10s %10s %8s %8s %8s %12s %9s\n", what, "clients", "requests/s", "jobs/s",
              "p50 ms", "p99 ms", "refused", "CPU us/job", "done");
  for (const SubmitFigures& f : runs) {
    Summary l = Summarize(f.tally.latency_ms);
    double jobs = static_cast<double>(f.tally.accepted);
    char cpu[48] = "-";
    if (jobs > 0) {
      std::snprintf(cpu, sizeof cpu, "%.0f + %.0f", f.cpu.digestd_us / jobs, f.cpu.pg_us / jobs);
    }
    std::string label =
        f.batch == 0 ? "  single-job submit" : "  batch of " + std::to_string(f.batch);
    std::printf("%-30s %7d %10.0f %10.0f %8.2f %8.2f %8ld %12s %9ld\n", label.c_str(), f.clients,
                static_cast<double>(f.tally.requests) / f.seconds, jobs / f.seconds, l.p50, l.p99,
                f.tally.refused, cpu, f.done_at_end);
    if (!f.tally.first_error.empty()) {
      std::printf("    first refusal: %s\n", f.tally.first_error.c_str());
    }
  }
}

// Phase 3's or 4's figures under `title` (and the JSON line with --json).
void PrintRun(const Options& opt, const char* method, const std::string& title, const EndToEnd& r) {
  double jobs = static_cast<double>(r.done);
  double rate = jobs / r.seconds;
  double d_us = jobs > 0 ? r.cpu.digestd_us / jobs : 0, pg_us = jobs > 0 ? r.cpu.pg_us / jobs : 0;
  std::printf("\n%s\n", title.c_str());
  auto label = [](const char* text) { std::printf("  %-40s", text); };
  label("jobs accepted / done");
  std::printf("%ld / %ld%s\n", r.target, r.done,
              r.stalled ? "   STALLED: no progress for 20 s" : "");
  if (r.stalled) std::printf("  %-40s%s\n", "rows by status at the stall", r.stall.c_str());
  if (r.tally.refused > 0) {
    label("refused at submit");
    std::printf("%ld, first: %s\n", r.tally.refused, r.tally.first_error.c_str());
  }
  if (r.submit_seconds > 0) {
    label("all submits answered after");
    std::printf("%.2f s (%.0f jobs/s submitted)\n", r.submit_seconds,
                static_cast<double>(r.target) / r.submit_seconds);
  }
  label("last done row committed after");
  std::printf("%.2f s\n", r.seconds);
  label("durable jobs/s");
  std::printf("%.0f\n", rate);
  label("CPU us/job: digestd + postgres");
  std::printf("%.1f + %.1f = %.1f\n", d_us, pg_us, d_us + pg_us);
  label("  (not counted: the LISTEN backend)");
  std::printf("%.1f us/job; this program %.1f us/job\n", jobs > 0 ? r.poller_us / jobs : 0,
              jobs > 0 ? r.cpu.self_us / jobs : 0);
  label("writer commits per 1,000 results");
  std::printf("%.1f\n", Field(r.status, "/db/writer/commits_per_1000_results"));
  label("writer row wait p50 / p99");
  std::printf("%.1f / %.1f ms  (last 8192 rows, submits and results)\n",
              Field(r.status, "/db/writer/row_wait/p50_ms"),
              Field(r.status, "/db/writer/row_wait/p99_ms"));
  double batches = Field(r.status, "/db/writer/batches");
  label("writer transactions, rows per commit");
  std::printf("%.0f, %.1f (%.0f submits + %.0f results written, %.0f failed batches)\n", batches,
              batches > 0 ? Field(r.status, "/db/writer/rows_written") / batches : 0,
              Field(r.status, "/db/writer/submits_written"),
              Field(r.status, "/db/writer/results_written"),
              Field(r.status, "/db/writer/failed_batches"));
  if (opt.json) {
    json line = {{"method", method},           {"jobs", r.done},
                 {"seconds", r.seconds},       {"worker_us", r.cpu.digestd_us},
                 {"pg_us", r.cpu.pg_us},       {"client_us", r.cpu.self_us},
                 {"observer_us", r.poller_us}, {"stalled", r.stalled}};
    std::printf("%s\n", line.dump().c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  Options opt = ParseFlags(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  RequireExecutable(opt.digestd);
  BlockingPg sql(opt.conninfo);
  long postmaster = PostmasterPid(opt.pg_dir);
  if (postmaster <= 0) {
    // Same host: the postmaster is the parent of this connection's backend.
    auto s = ReadStat(sql.Count("SELECT pg_backend_pid()"));
    postmaster = s ? s->ppid : 0;
  }
  std::string version = sql.Scalar("SHOW server_version");
  std::string durability = sql.Scalar(
      "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings "
      "WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes')");

  BenchDir dir("dgdurable");
  const std::string socket = dir.File("control.sock");
  const std::string config = WriteConfig(opt, dir, socket);
  DaemonOptions daemon;
  daemon.binary = opt.digestd;
  daemon.config = config;
  daemon.socket = socket;
  daemon.log = dir.File("digestd.log");

  std::printf("durable_bench: digestd %s, PostgreSQL %s (%s), %u CPUs shared by all\n",
              opt.digestd.c_str(), version.c_str(), durability.c_str(),
              std::thread::hardware_concurrency());
  std::printf("config %s (socket and conninfo not shown):", config.c_str());
  {
    std::ifstream in(config);
    for (std::string l; std::getline(in, l);) {
      if (l.empty() || l[0] == '#' || l.rfind("conninfo", 0) == 0 || l.rfind("socket", 0) == 0 ||
          l.rfind("mode", 0) == 0) {
        continue;
      }
      std::printf("%s%s", l[0] == '[' ? "\n  " : " ", l.c_str());
    }
  }
  std::printf("\nCPU: digestd pid + postmaster %ld (%s) and its children\n", postmaster,
              opt.pg_dir.empty() ? "parent of a backend" : "postmaster.pid");
  std::fflush(stdout);

  // One fresh digestd per measurement, on an emptied table.
  std::vector<std::string> exits;
  auto with_daemon = [&](auto&& measure) {
    ResetTable(sql);
    Daemon d(daemon);
    d.Start();
    // The job table is usable once status says so: migrated, submits taken.
    d.WaitStatus(
        [](const json& st) {
          return st.value("db", json::object()).value("state", std::string()) == "up";
        },
        "db.state \"up\"", std::chrono::seconds(30));
    auto out = measure(d);
    exits.push_back(DescribeExit(d.Stop().status));
    return out;
  };
  std::vector<SubmitFigures> single, batched;
  int run = 0;
  if (opt.submits) {
    for (int clients : {1, opt.clients}) {
      single.push_back(with_daemon([&](Daemon& d) {
        return RunSubmits(opt, d, sql, socket, postmaster, clients, 0,
                          "s" + std::to_string(run++) + "-");
      }));
    }
    for (int clients : {1, opt.clients}) {
      batched.push_back(with_daemon([&](Daemon& d) {
        return RunSubmits(opt, d, sql, socket, postmaster, clients, opt.batch,
                          "b" + std::to_string(run++) + "-");
      }));
    }
  }
  std::optional<EndToEnd> e2e, backlog;
  if (opt.e2e) {
    e2e = with_daemon([&](Daemon& d) { return RunEndToEnd(opt, d, socket, postmaster); });
  }
  if (opt.backlog) {
    // The table must exist before the INSERT: a digestd that starts migrates it.
    if (!opt.submits && !opt.e2e) with_daemon([](Daemon&) { return 0; });
    backlog = RunBacklog(opt, daemon, sql, postmaster, &exits);
  }
  if (!opt.keep_rows) ResetTable(sql);

  if (opt.submits) {
    std::printf(
        "\n1-2. durable submits, %.1f s each; a client sends its next request when the last is\n"
        "     answered (= committed). CPU us/job: digestd + postgres over the run; the 16 slots\n"
        "     also run the submitted jobs meanwhile (done: finished by the end of the run)\n",
        opt.seconds);
    PrintSubmits("1. single-job submits", single);
    PrintSubmits("2. batch submits", batched);
  }
  if (e2e) {
    PrintRun(opt, "e2e",
             "3. end to end: " + std::to_string(opt.jobs) + " noop jobs (sleep_ms 0), batches of " +
                 std::to_string(opt.e2e_batch) + " from " + std::to_string(opt.e2e_clients) +
                 " clients, timed from the\n"
                 "   first submit to the commit of the last done row (LISTEN digestd_done, then\n"
                 "   count(*) WHERE status = 'done' confirms)",
             *e2e);
  }
  if (backlog) {
    PrintRun(opt, "backlog",
             "4. backlog: " + std::to_string(opt.jobs) +
                 " queued noop jobs inserted by SQL and checkpointed beforehand,\n"
                 "   timed from spawning digestd to the commit of the last done row",
             *backlog);
  }
  std::printf(
      "\nSide by side with graphile-worker and pg-boss on one cluster: scripts/bench --peers\n");

  std::string how;
  for (const auto& e : exits) how += (how.empty() ? "" : ", ") + e;
  std::printf("\ndigestd after SIGTERM, per run: %s\n", how.c_str());
  dir.Finish(opt.keep_tmp, "config, digestd.log");
  return 0;
}
