// store_bench: the PostgreSQL write path measured against its ceiling, in one
// run on one cluster, on a fresh database that digestd::Migrate prepares:
//
//   (a) COPY FROM STDIN: N finished rows, each with the same ~500-byte jsonb
//       result, into digestd.jobs_copy (LIKE digestd.jobs INCLUDING ALL:
//       the same columns, constraints and indexes, fillfactor 80), in one
//       transaction on a blocking connection of its own, on its own thread.
//       The fastest way PostgreSQL takes these bytes: the ceiling.
//   (b) BatchWriter finishing N claimed jobs (inserted and claimed by SQL
//       beforehand, not timed) with the same result, the write ring kept full
//       (refilled from the on_space hook): rows/s and the ratio writer/COPY
//       (the target is >= 0.5), at batch_rows 50 (the default) with one
//       batch in flight at a time and with two (the writer's default, the
//       second sent while the first commits), 500 with the default ring of
//       500, and 500 with a ring of 1000; batch_ms 500 throughout.
//   (c) commits per 1,000 results (BatchWriterStats).
//   (d) a row's wait from Enqueue to its commit, p50/p99
//       (BatchWriterStats::row_wait, its last 8192 rows), at full load and
//       at light loads (default 200 and 20 rows/s), where batch_rows and
//       batch_ms, not PostgreSQL, set the wait.
//   (e) CPU microseconds per row: this process (getrusage) plus every
//       process of the cluster -- the postmaster (pid from
//       $DIGESTD_PG_DIR/data/postmaster.pid) and its children, from
//       /proc/<pid>/stat utime+stime; the postmaster's cutime+cstime counts
//       children that exited meanwhile (autovacuum workers).
//
// Between phases the jobs tables are truncated, vacuumed and checkpointed,
// so each phase starts from the same state. Figures only: nothing is
// asserted. It exits non-zero only when PostgreSQL cannot be used. Other
// load on the machine moves every figure: compare runs on one machine.
//
//   store_bench [--rows N] [--conninfo 'host=... port=... user=...']
//               [--light-rate R]... [--light-seconds S] [--pg-dir DIR]
//
// scripts/bench runs it inside `scripts/pg-throwaway run`.
#include <libpq-fe.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "../support/wait.h"
#include "bench_support.h"
#include "obs/log.h"
#include "proc_cpu.h"
#include "store/batch_writer.h"
#include "store/job_store.h"
#include "store/migrations.h"
#include "store/pg_conn.h"
#include "util/uv_handle.h"

namespace {

using namespace digestd::bench;
using digestd::BatchWriter;
using digestd::BatchWriterOptions;
using digestd::BatchWriterStats;
using digestd::FinishRow;
using digestd::JobState;
using digestd::PgConn;
using digestd::RowOutcome;
using digestd::Status;
using digestd::WriteRow;

constexpr const char* kNode = "store-bench";
constexpr size_t kResultBytes = 500;

struct Options {
  int rows = 0;
  std::string conninfo;  // key=value; empty: libpq's PG* environment
  std::vector<double> light_rates;
  double light_s = 0;
  std::string pg_dir;  // pg-throwaway directory; default $DIGESTD_PG_DIR
};

// ------------------------------------------------------------------- CPU

struct CpuMark {
  double self_us = 0, pg_us = 0;
};

CpuMark Cpu(long postmaster) {
  return CpuMark{SelfCpuUs(), PostgresCpuUs(postmaster)};
}

// --------------------------------------------------------------- figures

struct Figures {
  std::string label;
  double rows = 0, seconds = 0;
  bool writer = false, full_load = false;
  double commits_per_1000 = 0;
  std::optional<digestd::Percentiles> wait;
  double self_us = 0, pg_us = 0;  // per row
};

Figures MakeFigures(std::string label, double rows, Clock::duration took, CpuMark before,
                    CpuMark after) {
  Figures f;
  f.label = std::move(label);
  f.rows = rows;
  f.seconds = Seconds(took);
  f.self_us = (after.self_us - before.self_us) / rows;
  f.pg_us = (after.pg_us - before.pg_us) / rows;
  return f;
}

// The same result for every row: a summary padded so the JSON is
// kResultBytes long, with nothing COPY's text format would need to escape.
nlohmann::json MakeResult() {
  nlohmann::json r = {{"model", "llama3.2:3b"}, {"tokens", 187}, {"ms", 2345}, {"summary", ""}};
  const std::string words =
      "The quarterly report shows revenue up four percent, driven by the new subscription "
      "tier, while support costs fell after the self-service portal launched. ";
  std::string summary;
  while (r.dump().size() < kResultBytes) {
    summary += words[summary.size() % words.size()];
    r["summary"] = summary;
  }
  return r;
}

// ------------------------------------------------------------ the phases

// (a) COPY of `rows` finished rows into digestd.jobs_copy, one transaction.
Figures RunCopy(const std::string& conninfo, int rows, const std::string& result_text,
                long postmaster) {
  BlockingPg c(conninfo);
  auto ts = c.Exec("SELECT now()::text").at(0).at(0);
  CpuMark before = Cpu(postmaster);
  Clock::time_point start = Clock::now();
  std::thread copier([&] {
    PGresult* res = PQexec(c.get(),
                           "COPY digestd.jobs_copy (key, kind, status, attempts, lease_token, "
                           "result, started_at, finished_at, updated_at) FROM STDIN");
    if (PQresultStatus(res) != PGRES_COPY_IN) Die("COPY: %s", PQresultErrorMessage(res));
    PQclear(res);
    std::string buf;
    buf.reserve(1 << 17);
    for (int i = 0; i < rows; ++i) {
      buf += "copy-" + std::to_string(i) + "\tnoop\tdone\t1\t" + std::to_string(i) + "\t";
      buf += result_text;
      buf += "\t" + ts + "\t" + ts + "\t" + ts + "\n";
      if (buf.size() >= (1 << 16) || i + 1 == rows) {
        if (PQputCopyData(c.get(), buf.data(), static_cast<int>(buf.size())) != 1) {
          Die("COPY: %s", PQerrorMessage(c.get()));
        }
        buf.clear();
      }
    }
    if (PQputCopyEnd(c.get(), nullptr) != 1) Die("COPY: %s", PQerrorMessage(c.get()));
    while (PGresult* r = PQgetResult(c.get())) {
      if (PQresultStatus(r) != PGRES_COMMAND_OK) Die("COPY: %s", PQresultErrorMessage(r));
      PQclear(r);
    }
  });
  copier.join();
  Clock::duration took = Clock::now() - start;
  return MakeFigures("COPY FROM STDIN, 1 transaction", rows, took, before, Cpu(postmaster));
}

struct Claimed {
  uint64_t id;
  int64_t token;
  std::string key;
};

// Empties both tables, then inserts `n` jobs and claims them as this node
// would (status running, a fresh lease token, attempts 1), and vacuums, so
// the timed part starts from a settled table.
std::vector<Claimed> PrepareJobs(BlockingPg& c, const std::string& prefix, int n) {
  c.Exec("TRUNCATE digestd.jobs, digestd.jobs_copy");
  c.Exec("INSERT INTO digestd.jobs (key, kind) SELECT '" + prefix +
         "-' || g, 'noop' FROM generate_series(1, " + std::to_string(n) + ") g");
  auto rows =
      c.Exec(std::string("UPDATE digestd.jobs SET status = 'running', lease_owner = '") + kNode +
             "', lease_until = now() + interval '1 hour', "
             "lease_token = nextval('digestd.lease_token_seq'), attempts = attempts + 1, "
             "started_at = now(), updated_at = now() WHERE status = 'queued' "
             "RETURNING id, lease_token, key");
  std::vector<Claimed> out;
  out.reserve(rows.size());
  for (auto& r : rows) {
    out.push_back(Claimed{std::stoull(r[0]), std::stoll(r[1]), std::move(r[2])});
  }
  std::sort(out.begin(), out.end(), [](const Claimed& a, const Claimed& b) { return a.id < b.id; });
  c.Exec("VACUUM ANALYZE digestd.jobs");
  c.Exec("CHECKPOINT");
  return out;
}

// The loop side: one PgConn, a JobStore and the loop that drives them.
class LoopRig {
 public:
  explicit LoopRig(const std::string& conninfo) {
    uv_loop_init(&loop_);
    digestd::PgConnOptions po;
    po.conninfo = conninfo;
    po.label = "store_bench";
    conn_ = std::make_unique<PgConn>(&loop_, po);
    if (!conn_->init_status().ok()) Die("%s", conn_->init_status().ToString().c_str());
    store_ = std::make_unique<digestd::JobStore>(*conn_, kNode);
    conn_->Start();
    if (!RunUntil([&] { return conn_->up(); }, 20)) {
      Die("the loop connection did not come up: %s", conn_->state().last_error.c_str());
    }
    std::optional<Status> migrated;
    Status st = digestd::Migrate(*conn_, [&](Status s) { migrated = std::move(s); });
    if (st.ok()) {
      st = RunUntil([&] { return migrated.has_value(); }, 60) ? *migrated
                                                              : Status::Internal("no answer");
    }
    if (!st.ok()) Die("migrating the bench database failed: %s", st.ToString().c_str());
  }
  ~LoopRig() {
    store_.reset();
    conn_->Close();
    conn_.reset();
    for (int i = 0; i < 100 && uv_loop_alive(&loop_) != 0; ++i) uv_run(&loop_, UV_RUN_NOWAIT);
    if (uv_loop_close(&loop_) != 0) std::fprintf(stderr, "store_bench: a handle was left open\n");
  }
  LoopRig(const LoopRig&) = delete;
  LoopRig& operator=(const LoopRig&) = delete;

  uv_loop_t* loop() { return &loop_; }
  PgConn& conn() { return *conn_; }
  digestd::JobStore& store() { return *store_; }

  // Runs the loop until `done` holds (true) or `timeout_s` passed (false).
  bool RunUntil(const std::function<bool()>& done, double timeout_s) {
    // UV_RUN_ONCE returns after every event, so `done` is seen at once; the
    // 100 ms tick only bounds an idle wait (and costs little CPU, which
    // counts in the figures).
    return digestd::testing::RunUntil(&loop_, done,
                                      std::chrono::duration_cast<std::chrono::milliseconds>(
                                          std::chrono::duration<double>(timeout_s)),
                                      std::chrono::milliseconds(100));
  }

 private:
  uv_loop_t loop_{};
  std::unique_ptr<PgConn> conn_;
  std::unique_ptr<digestd::JobStore> store_;
};

// (b)-(e) BatchWriter finishing `jobs`. `rate` 0: the ring kept full;
// otherwise rows are enqueued at `rate` rows/s.
Figures RunWriter(LoopRig& rig, const std::vector<Claimed>& jobs, const nlohmann::json& result,
                  int batch_rows, size_t capacity, double rate, long postmaster, std::string label,
                  int max_flights = BatchWriterOptions{}.max_flights) {
  BatchWriterOptions o;
  o.capacity = capacity;
  o.batch_rows = batch_rows;
  o.max_flights = max_flights;
  o.batch_ms = 500;
  size_t next = 0, committed = 0, bad = 0;
  std::string bad_why;
  std::function<void()> feed;
  BatchWriter::Hooks hooks;
  hooks.on_space = [&] { feed(); };
  BatchWriter writer(rig.loop(), rig.conn(), rig.store(), o, std::move(hooks));
  if (!writer.init_status().ok()) Die("%s", writer.init_status().ToString().c_str());
  auto on_row = [&](const RowOutcome& out) {
    ++committed;
    if (!out.status.ok() || !out.accepted) {
      ++bad;
      bad_why = out.status.ok() ? "the lease guard ignored it" : out.status.ToString();
    }
  };
  // Enqueues one row; false when the ring is full.
  auto enqueue_one = [&]() {
    const Claimed& j = jobs[next];
    FinishRow r{j.id, j.token, j.key, JobState::kDone, result, ""};
    Status st = writer.Enqueue(WriteRow::Finish(std::move(r), on_row));
    if (st.code() == Status::Code::kQueueFull) return false;
    if (!st.ok()) Die("Enqueue: %s", st.ToString().c_str());
    ++next;
    return true;
  };
  bool drained = false;
  feed = [&] {
    while (next < jobs.size() && enqueue_one()) {
    }
    if (next == jobs.size() && !drained) {
      drained = true;
      writer.Drain([] {});  // the last partial batch need not wait batch_ms
    }
  };

  uv_update_time(rig.loop());
  CpuMark before = Cpu(postmaster);
  Clock::time_point start = Clock::now();
  digestd::UvHandle<uv_timer_t> pacer;
  if (rate <= 0) {
    feed();
  } else {
    // Paced: every tick enqueues the rows due by now.
    struct Pace {
      std::function<void()> step;
    } pace;
    pace.step = [&] {
      double due = Seconds(Clock::now() - start) * rate;
      while (next < jobs.size() && static_cast<double>(next) < due + 1 && enqueue_one()) {
      }
    };
    uv_timer_init(rig.loop(), pacer.get());
    pacer.set_initialized();
    pacer.get()->data = &pace;
    auto every = static_cast<uint64_t>(std::max(1.0, 1000.0 / rate));
    uv_timer_start(
        pacer.get(), [](uv_timer_t* t) { static_cast<Pace*>(t->data)->step(); }, 0, every);
    double limit = static_cast<double>(jobs.size()) / rate + 30;
    if (!rig.RunUntil([&] { return committed == jobs.size(); }, limit)) {
      Die("%s: only %zu of %zu rows committed", label.c_str(), committed, jobs.size());
    }
    pacer.Close();
  }
  if (rate <= 0 && !rig.RunUntil([&] { return committed == jobs.size(); }, 600)) {
    Die("%s: only %zu of %zu rows committed", label.c_str(), committed, jobs.size());
  }
  Clock::duration took = Clock::now() - start;
  CpuMark after = Cpu(postmaster);
  if (bad > 0) Die("%s: %zu rows were not written: %s", label.c_str(), bad, bad_why.c_str());
  BatchWriterStats s = writer.stats();
  writer.Close();
  Figures f = MakeFigures(std::move(label), static_cast<double>(jobs.size()), took, before, after);
  f.writer = true;
  f.full_load = rate <= 0;
  f.commits_per_1000 = s.commits_per_1000_results;
  f.wait = s.row_wait;
  return f;
}

// ------------------------------------------------------------ the report

void PrintTable(const std::vector<Figures>& rows, double copy_rate) {
  std::printf("\n%-46s %9s %11s %8s %9s %9s   %s\n", "", "rows/s", "writer/COPY", "commits",
              "wait p50", "wait p99", "CPU us/row: bench + postgres = total");
  std::printf("%-46s %9s %11s %8s %9s %9s\n", "", "", "", "per 1k", "ms", "ms");
  for (const auto& f : rows) {
    double rate = f.rows / f.seconds;
    char ratio[16] = "-", commits[16] = "-", p50[16] = "-", p99[16] = "-";
    if (f.full_load) std::snprintf(ratio, sizeof ratio, "%.2f", rate / copy_rate);
    if (f.writer) std::snprintf(commits, sizeof commits, "%.1f", f.commits_per_1000);
    if (f.wait) {
      std::snprintf(p50, sizeof p50, "%.1f", f.wait->p50_ms);
      std::snprintf(p99, sizeof p99, "%.1f", f.wait->p99_ms);
    }
    std::printf("%-46s %9.0f %11s %8s %9s %9s   %6.1f + %6.1f = %6.1f\n", f.label.c_str(), rate,
                ratio, commits, p50, p99, f.self_us, f.pg_us, f.self_us + f.pg_us);
  }
}

Options ParseFlags(int argc, char** argv) {
  Flags flags("store_bench",
              "PostgreSQL's write path: COPY against the BatchWriter, in rows/s, commits per\n"
              "1,000 results, row wait and CPU per row. PostgreSQL from libpq's PG* variables\n"
              "or --conninfo.",
              {
                  {"rows", "N", "rows per full-load phase", "50000"},
                  {"conninfo", "STR",
                   "key=value conninfo of a server where this user may\ncreate a database "
                   "(default: libpq's PG* variables)"},
                  {"light-rate", "R", "a light-load phase at R rows/s (repeatable)", "200 20"},
                  {"light-seconds", "S", "length of each light-load phase", "4"},
                  {"pg-dir", "DIR",
                   "pg-throwaway directory, for the postmaster pid\n(default $DIGESTD_PG_DIR)"},
              });
  flags.Parse(argc, argv);
  Options o;
  o.rows = static_cast<int>(flags.Integer("rows", 100, 10000000));
  o.conninfo = flags.String("conninfo");
  o.light_rates = flags.Numbers("light-rate", 1, 100000);
  o.light_s = flags.Number("light-seconds", 0.5, 600);
  o.pg_dir = flags.String("pg-dir");
  if (o.pg_dir.empty()) {
    if (const char* d = std::getenv("DIGESTD_PG_DIR")) o.pg_dir = d;
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt = ParseFlags(argc, argv);
  digestd::SetLogLevel(digestd::LogLevel::kWarning);
  long postmaster = PostmasterPid(opt.pg_dir);

  // A fresh database, dropped at the end.
  BlockingPg admin(opt.conninfo);
  const std::string db = "store_bench_" + std::to_string(getpid());
  admin.Exec("DROP DATABASE IF EXISTS " + db);
  admin.Exec("CREATE DATABASE " + db);
  const std::string conninfo = opt.conninfo + " dbname=" + db;
  int version = PQserverVersion(admin.get());

  const nlohmann::json result = MakeResult();
  const std::string result_text = result.dump();
  std::printf(
      "store_bench: %d rows per full-load phase, result %zu bytes of JSON (jsonb), "
      "PostgreSQL %d.%d, %u CPUs\n",
      opt.rows, result_text.size(), version / 10000, version % 10000,
      std::thread::hardware_concurrency());
  if (postmaster > 0) {
    std::printf("CPU: this process + postmaster %ld and its children\n", postmaster);
  } else {
    std::printf("CPU: this process + every process named postgres (no $DIGESTD_PG_DIR)\n");
  }
  std::fflush(stdout);

  std::vector<Figures> rows;
  {
    LoopRig rig(conninfo);
    BlockingPg setup(conninfo);
    setup.Exec(
        "CREATE TABLE digestd.jobs_copy (LIKE digestd.jobs INCLUDING ALL) "
        "WITH (fillfactor = 80)");
    setup.Exec("CHECKPOINT");
    rows.push_back(RunCopy(conninfo, opt.rows, result_text, postmaster));

    struct Full {
      int batch_rows;
      size_t capacity;
      int max_flights;
    };
    const int two = BatchWriterOptions{}.max_flights;
    for (Full f :
         {Full{50, 500, 1}, Full{50, 500, two}, Full{500, 500, two}, Full{500, 1000, two}}) {
      auto jobs = PrepareJobs(setup, "full" + std::to_string(f.batch_rows), opt.rows);
      char label[80];
      std::snprintf(label, sizeof label, "writer batch_rows %d, ring %zu%s", f.batch_rows,
                    f.capacity, f.max_flights == 1 ? ", 1 in flight" : "");
      rows.push_back(RunWriter(rig, jobs, result, f.batch_rows, f.capacity, 0, postmaster, label,
                               f.max_flights));
    }
    for (double rate : opt.light_rates) {
      int n = std::max(1, static_cast<int>(rate * opt.light_s));
      auto jobs = PrepareJobs(setup, "light", n);
      char label[80];
      std::snprintf(label, sizeof label, "light load %.0f rows/s, batch_rows 50", rate);
      rows.push_back(RunWriter(rig, jobs, result, 50, 500, rate, postmaster, label));
    }
  }
  admin.Exec("DROP DATABASE " + db + " WITH (FORCE)");

  PrintTable(rows, rows[0].rows / rows[0].seconds);
  std::printf(
      "\nbatch_ms 500 in every writer line. writer/COPY: the writer's rows/s over COPY's (the "
      "target is >= 0.50).\ncommits per 1k: transactions that carried results, per 1,000 "
      "results. wait: Enqueue to COMMIT acknowledged,\nover the last 8192 rows of the phase. CPU: "
      "this process (getrusage) and the cluster's processes\n(/proc/<pid>/stat), over the "
      "phase, per row.\n");
  return 0;
}
