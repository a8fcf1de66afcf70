#include "llm_bench.h"

#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <fstream>
#include <sstream>

namespace digestd::bench {

// ------------------------------------------------------------ the config

ShippedConfig::ShippedConfig(const std::string& path) : source_(path) {
  try {
    table_ = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    std::ostringstream what;
    what << e;
    Die("cannot read the shipped config %s: %s", path.c_str(), what.str().c_str());
  }
}

toml::table& ShippedConfig::Section(const std::string& section) {
  if (toml::table* t = table_.get_as<toml::table>(section)) return *t;
  table_.insert_or_assign(section, toml::table{});
  return *table_.get_as<toml::table>(section);
}

void ShippedConfig::SetString(const std::string& section, const std::string& key,
                              const std::string& value) {
  Section(section).insert_or_assign(key, value);
}

void ShippedConfig::SetInt(const std::string& section, const std::string& key, int64_t value) {
  Section(section).insert_or_assign(key, value);
}

int64_t ShippedConfig::Int(const std::string& section, const std::string& key,
                           int64_t fallback) const {
  return table_[section][key].value<int64_t>().value_or(fallback);
}

std::string ShippedConfig::String(const std::string& section, const std::string& key,
                                  const std::string& fallback) const {
  return table_[section][key].value<std::string>().value_or(fallback);
}

std::string ShippedConfig::Write(const std::string& path) const {
  std::ofstream out(path);
  out << "# written by " << ProgramName() << " from " << source_ << "\n\n" << table_ << "\n";
  if (!out) Die("cannot write %s", path.c_str());
  return path;
}

Mode ParseMode(const std::string& word) {
  if (word == "shipped") return {"shipped", 0};
  if (word.rfind("static", 0) == 0) {
    int n = std::atoi(word.c_str() + 6);
    if (n >= 1 && n <= 1024 && word == "static" + std::to_string(n)) {
      return {"static " + std::to_string(n), n};
    }
  }
  Die("unknown mode %s: expected shipped or staticN (static16, static1)", word.c_str());
}

std::vector<int> ParseIntList(const std::string& text, int lo, int hi, const char* flag) {
  std::vector<int> out;
  std::istringstream in(text);
  for (std::string item; std::getline(in, item, ',');) {
    char* end = nullptr;
    long v = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || v < lo || v > hi) {
      Die("%s %s: expected comma-separated whole numbers from %d to %d", flag, text.c_str(), lo,
          hi);
    }
    out.push_back(static_cast<int>(v));
  }
  if (out.empty()) Die("%s needs at least one value", flag);
  return out;
}

std::vector<FlagSpec> RigFlags(bool fake) {
  std::vector<FlagSpec> specs = {
      {"digestd", "PATH", "the daemon", DIGESTD_BIN},
      {"shipped-config", "PATH", "the config file digestd ships", SHIPPED_CONF},
      {"conninfo", "STR",
       "PostgreSQL for digestd and this program (libpq key=value); default: libpq's PG* "
       "variables, as scripts/pg-throwaway run sets them"},
      {"keep-tmp", "",
       fake ? "keep the temp dir (configs, digestd.log, fake.log)"
            : "keep the temp dir (configs, digestd.log)"},
  };
  if (fake) specs.insert(specs.begin() + 1, {"fake", "PATH", "the fake Ollama", FAKE_OLLAMA_BIN});
  return specs;
}

// ------------------------------------------------------------------ fake

Fake::Fake(const std::string& binary, const std::string& dir, int parallel, int latency_ms,
           int tokens) {
  std::string failed = process_.Start(
      binary, dir,
      {"--parallel", std::to_string(parallel), "--latency-ms", std::to_string(latency_ms),
       "--tokens", std::to_string(tokens), "--max-queue", "100000"});
  if (!failed.empty()) Die("%s", failed.c_str());
}

void Fake::SetParallel(int parallel) {
  std::string failed = process_.Set({{"parallel", parallel}});
  if (!failed.empty()) Die("the fake refused its new capacity: %s", failed.c_str());
}

ModelFigures ModelOf(const json& stats, const std::string& model) {
  ModelFigures f;
  auto models = stats.find("models");
  if (models == stats.end() || !models->is_object()) return f;
  const std::string canonical = model.find(':') == std::string::npos ? model + ":latest" : model;
  auto m = models->find(canonical);
  if (m == models->end() || !m->is_object()) return f;
  auto num = [&](const char* key) {
    auto v = m->find(key);
    return v != m->end() && v->is_number() ? v->get<double>() : 0.0;
  };
  f.admitted = num("admitted");
  f.slot_wait_ms = num("slot_wait_ms");
  f.in_flight = num("in_flight");
  f.queued = num("queued");
  f.max_in_flight = num("max_in_flight_observed");
  f.aborted = num("aborted_by_client");
  f.parallel = num("parallel");
  return f;
}

std::string DescribeFake(const json& stats, const std::string& model) {
  ModelFigures m = ModelOf(stats, model);
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "%.0f requests, max %.0f at once, slot wait mean %.0f ms, aborted_by_client %.0f",
                Field(stats, "/requests_total"), m.max_in_flight,
                m.admitted > 0 ? m.slot_wait_ms / m.admitted : 0.0, m.aborted);
  return buf;
}

// ------------------------------------------------------------------- rig

Rig::Rig(const Flags& flags, const std::string& dir_prefix, bool fake)
    : digestd_(flags.String("digestd")),
      fake_(fake ? flags.String("fake") : ""),
      conninfo_(flags.String("conninfo")),
      shipped_path_(flags.String("shipped-config")),
      keep_tmp_(flags.Has("keep-tmp")),
      shipped_(shipped_path_) {
  RequireExecutable(digestd_);
  if (fake) RequireExecutable(fake_);
  dir_ = std::make_unique<BenchDir>(dir_prefix);
  pg_ = std::make_unique<BlockingPg>(conninfo_);
  notify_ = std::make_unique<NotifySocket>(dir_->File("notify.sock"));
  // Both configs must pass; the second only adds [backend] parallel.
  std::string output;
  ShippedConfig base = ConfigFor(Mode{"shipped", 0}, fake_.empty() ? "" : "http://127.0.0.1:1");
  if (!CheckConfig(base, "probe-base", &output)) {
    Die("digestd --check-config refuses the shipped config with the bench's paths:\n%s",
        output.c_str());
  }
  base.SetInt("backend", "parallel", 4);
  knows_parallel_ = CheckConfig(base, "probe-parallel", &output);
}

bool Rig::CheckConfig(const ShippedConfig& config, const std::string& name, std::string* output) {
  const std::string path = config.Write(dir_->File(name + ".conf"));
  const std::string log = dir_->File(name + ".log");
  pid_t pid = Spawn({digestd_, "--config", path, "--check-config"}, {}, log);
  auto status = WaitExit(pid, std::chrono::seconds(30));
  if (!status) {
    StopChild(pid, SIGKILL, std::chrono::seconds(5));
    Die("digestd --check-config %s did not finish within 30 s", path.c_str());
  }
  *output = LogTail(log, 10);
  return WIFEXITED(*status) && WEXITSTATUS(*status) == 0;
}

void Rig::PrintHeader(const std::string& title) {
  std::printf("%s\n", title.c_str());
  std::printf("  digestd          %s\n", digestd_.c_str());
  if (!fake_.empty()) {
    std::printf("  fake Ollama      %s\n", fake_.c_str());
    std::printf("  shipped config   %s (socket, conninfo and backend url rewritten)\n",
                shipped_path_.c_str());
    std::printf("  [backend] parallel known to this digestd: %s\n",
                knows_parallel_ ? "yes" : "no (static modes set [workers] only)");
  } else {
    std::printf("  shipped config   %s (socket and conninfo rewritten)\n", shipped_path_.c_str());
  }
  auto show = [&](const char* name) { return pg_->Scalar(std::string("SHOW ") + name); };
  const std::string fsync = show("fsync"), sync = show("synchronous_commit"),
                    fpw = show("full_page_writes");
  const bool durable = fsync == "on" && sync == "on" && fpw == "on";
  std::printf("  PostgreSQL %s: fsync = %s, synchronous_commit = %s, full_page_writes = %s%s\n",
              show("server_version").c_str(), fsync.c_str(), sync.c_str(), fpw.c_str(),
              durable ? " (the durable defaults)"
                      : "  ** NOT the durable defaults: every figure is flattered; run under "
                        "scripts/bench, which switches them on **");
  std::printf("  %u CPUs\n", std::thread::hardware_concurrency());
  std::fflush(stdout);
}

ShippedConfig Rig::ConfigFor(const Mode& mode, const std::string& fake_url) const {
  ShippedConfig c = shipped_;
  c.SetString("control", "socket", dir_->File("control.sock"));
  c.SetString("postgres", "conninfo", conninfo_);
  if (!fake_url.empty()) c.SetString("backend", "url", fake_url);
  if (mode.static_max > 0) {
    const int n = mode.static_max;
    c.SetInt("workers", "max", n);
    c.SetInt("workers", "min", std::min<int64_t>(c.Int("workers", "min", 1), n));
    c.SetInt("workers", "interactive_reserved",
             std::min<int64_t>(c.Int("workers", "interactive_reserved", 0), n - 1));
    if (knows_parallel_) c.SetInt("backend", "parallel", n);
  }
  return c;
}

std::string Rig::DescribeMode(const Mode& mode) const {
  if (mode.static_max == 0) return "the shipped config, nothing changed beyond paths";
  ShippedConfig c = ConfigFor(mode, "");
  std::string s =
      "[workers] max = " + std::to_string(c.Int("workers", "max", 0)) +
      ", min = " + std::to_string(c.Int("workers", "min", 0)) +
      ", interactive_reserved = " + std::to_string(c.Int("workers", "interactive_reserved", 0));
  if (knows_parallel_) s += ", [backend] parallel = " + std::to_string(mode.static_max);
  return s;
}

std::unique_ptr<Daemon> Rig::StartDaemon(const Mode& mode, const std::string& fake_url) {
  // The previous run's backlog must not leak into this one.
  pg_->Exec(
      "DO $$ BEGIN IF to_regclass('digestd.jobs') IS NOT NULL THEN "
      "TRUNCATE digestd.jobs; END IF; END $$");
  pg_->Exec("CHECKPOINT");
  ++runs_;
  DaemonOptions o;
  o.binary = digestd_;
  o.config = ConfigFor(mode, fake_url).Write(dir_->File("run" + std::to_string(runs_) + ".conf"));
  o.socket = dir_->File("control.sock");
  o.log = dir_->File("digestd.log");
  o.notify = notify_.get();
  o.ready_timeout = std::chrono::seconds(60);
  auto d = std::make_unique<Daemon>(o);
  d->Start();
  d->WaitStatus(
      [](const json& st) {
        const json db = st.value("db", json::object());
        return db.value("state", std::string()) == "up" && db.value("schema_version", 0) > 0;
      },
      "db.state \"up\" and a schema", std::chrono::seconds(60));
  return d;
}

void Rig::StopDaemon(std::unique_ptr<Daemon>& daemon) {
  if (!daemon) return;
  // The first SIGTERM starts the drain of the backlog; the second stops at once.
  kill(daemon->pid(), SIGTERM);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  daemon->Stop(std::chrono::seconds(30));
  daemon.reset();
}

void Rig::Finish() {
  dir_->Finish(keep_tmp_,
               fake_.empty() ? "configs, digestd.log" : "configs, digestd.log, fake.log");
}

// --------------------------------------------------------------- submits

json SummaryInput(long i) {
  return {{"title", "Chapter " + std::to_string(i)},
          {"text",
           "Mara left the harbour town at dawn with the letter her brother had hidden in the "
           "lighthouse. On the coast road she met the tinker Oswin, who claimed to know the "
           "seal on it. By nightfall they reached the abbey, where the prior refused them "
           "shelter until Mara showed him the letter. Chapter " +
               std::to_string(i) + "."}};
}

long SubmitSummaries(ControlClient& c, long n, const std::string& lane, const std::string& prefix,
                     long first, int max_batch) {
  long accepted = 0;
  for (long done = 0; done < n;) {
    const long take = std::min<long>(n - done, max_batch);
    json jobs = json::array();
    for (long i = 0; i < take; ++i) {
      const long k = first + done + i;
      jobs.push_back({{"kind", "summarize"},
                      {"key", prefix + std::to_string(k)},
                      {"lane", lane},
                      {"input", SummaryInput(k)}});
    }
    json answer = CallJson(c, json{{"op", "submit"}, {"jobs", jobs}}.dump(), 120000);
    accepted += static_cast<long>(Field(answer, "/accepted"));
    if (Field(answer, "/failed") > 0) {
      Die("digestd refused %.0f of a batch of %ld: %s", Field(answer, "/failed"), take,
          answer.dump().substr(0, 300).c_str());
    }
    done += take;
  }
  return accepted;
}

void SleepWatching(Daemon& d, double seconds) {
  const auto end = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(seconds));
  while (Clock::now() < end) {
    d.DieIfExited("while the benchmark ran");
    std::this_thread::sleep_for(
        std::min<Clock::duration>(std::chrono::milliseconds(100), end - Clock::now()));
  }
}

}  // namespace digestd::bench
