// What critical_path_bench, adaptive_bench and events_bench share: the real
// digestd with the SHIPPED config (conf/digestd.conf, read with toml++ and
// written back with only the keys a run must change: the control socket, the
// database, the backend URL when a fake Ollama runs, and for a "static N" run
// the worker bounds), the fake Ollama as a child process, a throwaway
// PostgreSQL cluster whose job table is emptied before every run, and the
// figures the fake reports per model. A benchmark without LLM jobs
// (events_bench) runs no fake: its Rig leaves the backend URL as shipped.
//
// A run's daemon modes:
//   shipped   the shipped config as it is (only paths changed): whatever the
//             daemon does by default, e.g. learning the backend's capacity
//   static N  [workers] max = N (min and interactive_reserved lowered when
//             the shipped values do not fit under N), plus [backend]
//             parallel = N when this digestd knows that key (probed with
//             --check-config, as an unknown key is an error)
//
// Threads: everything here is for the main thread.
#pragma once

#include <toml++/toml.h>
#include <memory>
#include <string>
#include <vector>

#include "bench_support.h"
#include "fake_process.h"

namespace digestd::bench {

// The shipped config file as a toml++ table: read once, changed key by key,
// written to a file digestd reads. Comments are not kept; every value is.
class ShippedConfig {
 public:
  // Die()s when `path` cannot be read or parsed.
  explicit ShippedConfig(const std::string& path);

  void SetString(const std::string& section, const std::string& key, const std::string& value);
  void SetInt(const std::string& section, const std::string& key, int64_t value);
  // The value of an integer or string key; `fallback` when it is absent.
  int64_t Int(const std::string& section, const std::string& key, int64_t fallback) const;
  std::string String(const std::string& section, const std::string& key,
                     const std::string& fallback) const;
  // Writes the table with a "# written by <program> from <path>" line on
  // top; Die()s when it cannot. Returns `path`.
  std::string Write(const std::string& path) const;

 private:
  toml::table& Section(const std::string& section);
  std::string source_;
  toml::table table_;
};

// One way to configure the daemon under measurement (see the file comment).
struct Mode {
  std::string name;    // "shipped", "static 16", ...
  int static_max = 0;  // 0: shipped
};
// "shipped", "static16", "static1" -> Mode; Die()s on anything else.
Mode ParseMode(const std::string& word);

// Flags every LLM benchmark takes (add them to its FlagSpecs); with `fake`
// false, a Rig's flags without --fake.
std::vector<FlagSpec> RigFlags(bool fake = true);

// The fake Ollama as a child process: `parallel` slots for the generation
// model, `latency_ms` before the first byte of every answer, `tokens`
// streamed tokens with no delay, a queue that never overflows.
class Fake {
 public:
  Fake(const std::string& binary, const std::string& dir, int parallel, int latency_ms, int tokens);
  std::string url() const { return process_.url(); }
  json Stats() { return process_.Stats(); }
  // Changes the model's capacity now (FakeOllamaProcess::Set); Die()s on a
  // refusal.
  void SetParallel(int parallel);

 private:
  testing::FakeOllamaProcess process_;
};

// One model's figures from the fake's GET /_fake/stats; zeros when the
// model has not been asked for yet.
struct ModelFigures {
  double admitted = 0;       // requests that got a slot
  double slot_wait_ms = 0;   // summed over admitted requests
  double in_flight = 0;      // holding a slot now
  double queued = 0;         // waiting for a slot now
  double max_in_flight = 0;  // the most at once
  double aborted = 0;        // the client hung up while it held a slot
  double parallel = 0;       // its capacity now
  // Requests digestd has at the server now (running or waiting there).
  double outstanding() const { return in_flight + queued; }
};
ModelFigures ModelOf(const json& stats, const std::string& model);

// "requests 620, max 16 at once, slot wait mean 2,310 ms, aborted_by_client 0".
std::string DescribeFake(const json& stats, const std::string& model);

// The whole setup of one benchmark program: flags, temp dir, the shipped
// config, the database and the probe of which keys this digestd knows.
class Rig {
 public:
  // Parses nothing: give it the values of RigFlags(fake). Connects to
  // PostgreSQL, reads the shipped config and probes the daemon. Without
  // `fake` there is no fake Ollama: fake_binary() is "" and the daemon's
  // backend URL stays as shipped.
  Rig(const Flags& flags, const std::string& dir_prefix, bool fake = true);

  const std::string& digestd() const { return digestd_; }
  const std::string& fake_binary() const { return fake_; }
  BenchDir& dir() { return *dir_; }
  BlockingPg& pg() { return *pg_; }
  // --conninfo ("": libpq's PG* variables), for more connections of its own.
  const std::string& conninfo() const { return conninfo_; }
  const ShippedConfig& shipped() const { return shipped_; }
  // The generation model summarize jobs use ([backend] model).
  std::string model() const { return shipped_.String("backend", "model", "llama3.2"); }
  int max_batch() const { return static_cast<int>(shipped_.Int("jobs", "max_batch", 1000)); }
  // Whether this digestd accepts [backend] parallel (--check-config).
  bool knows_parallel() const { return knows_parallel_; }

  // Prints the binaries, the PostgreSQL durability settings and the probe.
  void PrintHeader(const std::string& title);
  // The shipped config for `mode`, paths set, the backend at `fake_url`
  // ("": the shipped URL).
  ShippedConfig ConfigFor(const Mode& mode, const std::string& fake_url) const;
  // The keys ConfigFor changes beyond paths, for the report ("[workers] max
  // = 16, ..."); "nothing beyond paths" for shipped.
  std::string DescribeMode(const Mode& mode) const;

  // Empties the job table, writes the config for `mode` and starts digestd;
  // returns once its database is up and migrated. `fake_url` as for
  // ConfigFor.
  std::unique_ptr<Daemon> StartDaemon(const Mode& mode, const std::string& fake_url);
  // Stops digestd at once: two SIGTERMs (the second skips the drain of the
  // backlog), SIGKILL after 30 s.
  void StopDaemon(std::unique_ptr<Daemon>& daemon);
  void Finish();

 private:
  bool CheckConfig(const ShippedConfig& config, const std::string& name, std::string* output);

  std::string digestd_, fake_, conninfo_, shipped_path_;
  bool keep_tmp_ = false;
  std::unique_ptr<BenchDir> dir_;
  std::unique_ptr<BlockingPg> pg_;
  std::unique_ptr<NotifySocket> notify_;
  ShippedConfig shipped_;
  bool knows_parallel_ = false;
  int runs_ = 0;
};

// Submits `n` summarize jobs in `lane` with keys "<prefix><i>" (i from
// `first`), in batches of at most `max_batch`; returns how many were
// accepted. Die()s when digestd refuses a batch.
long SubmitSummaries(ControlClient& c, long n, const std::string& lane, const std::string& prefix,
                     long first, int max_batch);
// One summarize job's input.
json SummaryInput(long i);

// Sleeps `seconds`, checking every 100 ms that digestd still runs.
void SleepWatching(Daemon& d, double seconds);

// "PASS" when `ok`, else "MISS".
inline const char* Verdict(bool ok) {
  return ok ? "PASS" : "MISS";
}

// Comma-separated whole numbers within [lo, hi] ("1,4"); Die()s otherwise.
std::vector<int> ParseIntList(const std::string& text, int lo, int hi, const char* flag);

}  // namespace digestd::bench
