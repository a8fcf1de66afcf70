// Plumbing shared by the benchmarks: flags, fatal errors, child processes,
// the digestd under measurement, its config file, a temp dir, blocking SQL
// and the small helpers every report uses. The benchmarks print figures and
// assert nothing, so these helpers do not return errors: when something
// cannot be used they end the program with a message that says what and why
// (Die), after killing the child processes they started.
//
// Threads: everything here is for the main thread, except Die, Connect,
// CallLine and CallJson, which client threads may call too, and
// NotifySocket's drainer, which runs on a thread of its own.
#pragma once

#include <libpq-fe.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "../support/pg_session.h"
#include "client/control_client.h"

namespace digestd::bench {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

// ------------------------------------------------------------ fatal errors

// The name messages start with ("control_bench: ..."); Flags sets it.
void SetProgramName(std::string name);
const std::string& ProgramName();

// Prints "<program>: <message>" on stderr, kills the children Spawn()
// started that are still running, runs the AtDie() hooks (newest first) and
// exits with status 1. Any thread may call it.
[[noreturn]] void Die(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// Adds `hook` to what Die() runs before exiting (e.g. saying which files it
// kept for a post-mortem).
void AtDie(std::function<void()> hook);

// ------------------------------------------------------------------ flags

// One flag a benchmark takes: --name VALUE, or --name alone for a switch.
struct FlagSpec {
  std::string name;   // without the dashes: "seconds"
  std::string value;  // the value's placeholder in --help ("N", "S", "PATH"); "" for a switch
  std::string help;   // one or more lines for --help
  // The value when the flag is not given, shown in --help as "(default
  // ...)"; "" for none (the getters then answer "", or no values).
  std::string fallback{};
};

// The command line of a benchmark, parsed against its FlagSpecs: values
// come as "--name value" or "--name=value"; a switch takes none. --help (or
// -h) prints the usage, generated from the specs, and exits 0. An unknown
// flag, a missing value or a value a getter cannot use is a usage error:
// a message naming the flag on stderr, and exit status 2. Getters take the
// last value given, else the spec's fallback; asking for a name that is not
// in the specs is a programming error (abort).
class Flags {
 public:
  // `program` names the program in messages (SetProgramName); `synopsis`
  // says what it does, for --help.
  Flags(std::string program, std::string synopsis, std::vector<FlagSpec> specs);

  // Parses argv[1..]; exits as described above.
  void Parse(int argc, char** argv);

  // Whether --name was given (for a switch: whether it is on).
  bool Has(const std::string& name) const;
  std::string String(const std::string& name) const;
  // A number within [lo, hi].
  double Number(const std::string& name, double lo, double hi) const;
  // A whole number within [lo, hi].
  long Integer(const std::string& name, long lo, long hi) const;
  // Every value given for --name, in order (a flag that may repeat); the
  // fallback, split at spaces, when none was given.
  std::vector<std::string> Strings(const std::string& name) const;
  std::vector<double> Numbers(const std::string& name, double lo, double hi) const;

  // Prints "<program>: <what>; see --help" and exits 2.
  [[noreturn]] void UsageError(const std::string& what) const;
  void PrintUsage(FILE* to) const;

 private:
  const FlagSpec& Spec(const std::string& name) const;  // aborts on a name not in the specs
  double ToNumber(const std::string& name, const std::string& text, double lo, double hi) const;

  std::string program_, synopsis_;
  std::vector<FlagSpec> specs_;
  std::vector<std::pair<std::string, std::string>> given_;  // (name, value) in order
};

// ------------------------------------------------------------- processes

// Starts `argv` (argv[0] a path, or a name looked up in $PATH) with stdin
// from /dev/null and stdout and stderr appended to `log`. Its environment is
// this program's without the variables that would tell digestd systemd
// started it or point it elsewhere (NOTIFY_SOCKET, LISTEN_*, WATCHDOG_*,
// JOURNAL_STREAM, DIGESTD_SOCKET, UV_THREADPOOL_SIZE), plus `extra_env`
// ("NAME=value"). Die()s when it cannot start; until it is reaped
// (WaitExit), Die() kills it.
pid_t Spawn(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env,
            const std::string& log);
// Waits up to `timeout` for the child `pid` to exit and reaps it; its wait
// status, or nullopt while it still runs. The exit is seen at once (pidfd).
std::optional<int> WaitExit(pid_t pid, Clock::duration timeout);
// Sends `signum` to `pid`, waits up to `timeout`, then SIGKILLs it if it is
// still running; its wait status.
int StopChild(pid_t pid, int signum, Clock::duration timeout);
// "exit 0", "killed by Killed", ...
std::string DescribeExit(int status);
// The last `lines` lines of the file at `path`, indented; "  (empty)" when
// there are none.
std::string LogTail(const std::string& path, size_t lines = 30);

// ------------------------------------------------------------------ files

// A fresh directory under /tmp with a short name (Unix socket paths are
// limited to 108 bytes) for configs, sockets and logs. Die() keeps it and
// says so; Finish() removes it, or keeps it and says so.
class BenchDir {
 public:
  // `prefix`: "dgbench" makes /tmp/dgbench.XXXXXX.
  explicit BenchDir(const std::string& prefix);
  BenchDir(const BenchDir&) = delete;
  BenchDir& operator=(const BenchDir&) = delete;

  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }
  // Removes the directory, or with `keep` prints "kept <dir> (<contents>)".
  void Finish(bool keep, const std::string& contents);

 private:
  std::string path_;
};

// A digestd config file: section -> key -> TOML value, written in one go.
// Values are TOML text, written as given: Set("workers", "max", "16");
// SetString quotes a string.
class ConfigFile {
 public:
  void Set(const std::string& section, const std::string& key, const std::string& toml);
  void SetString(const std::string& section, const std::string& key, const std::string& value);
  // "SECTION.KEY=VALUE" (VALUE TOML text, as --set takes it); false when
  // `assignment` is not of that form.
  [[nodiscard]] bool Override(const std::string& assignment);
  // Writes the file with a "# written by <program>" line on top; Die()s
  // when it cannot. Returns `path`.
  std::string Write(const std::string& path) const;
  const std::map<std::string, std::map<std::string, std::string>>& sections() const {
    return sections_;
  }

 private:
  std::map<std::string, std::map<std::string, std::string>> sections_;
};

// `s` as a TOML basic string, quotes included.
std::string TomlString(const std::string& s);

// The config every benchmark's digestd shares: [control] socket (mode
// 0600), [daemon] node_id and a 10 s shutdown grace, [log] level warning,
// [jobs] store "memory". Callers add their own keys.
ConfigFile DaemonConfig(const std::string& socket, const std::string& node_id);
// [jobs] store "postgres" with [postgres] conninfo (libpq's key=value or
// URI; "" leaves the connection to libpq's PG* variables).
void UsePostgres(ConfigFile& config, const std::string& conninfo);

// Die()s unless `path` is an executable file.
void RequireExecutable(const std::string& path);

// ---------------------------------------------------------------- digestd

// The NOTIFY_SOCKET a benchmark owns, as systemd's: a bound datagram socket
// (a file left at `path` is replaced). While no one waits on it, a drainer
// thread can read and drop what digestd sends (its STATUS= updates), so its
// queue never fills.
class NotifySocket {
 public:
  explicit NotifySocket(std::string path);  // Die()s when it cannot bind
  ~NotifySocket();
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;

  const std::string& path() const { return path_; }
  // Waits for a datagram with the line `word` ("READY=1") and returns when
  // it arrived, or nullopt at `deadline`. Other messages are dropped.
  // Not while draining.
  std::optional<Clock::time_point> WaitFor(const std::string& word, Clock::time_point deadline);
  // Reads and drops whatever is queued now.
  void Drain();
  // Starts / stops the drainer thread (idempotent).
  void StartDraining();
  void StopDraining();

 private:
  std::string path_;
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread drainer_;
};

struct DaemonOptions {
  std::string binary;                // digestd
  std::string config;                // the config file (--config)
  std::string socket;                // its control socket, as the config says
  std::string log;                   // stdout and stderr, appended
  std::vector<std::string> wrapper;  // a command to run digestd under (valgrind ...)
  // Given: NOTIFY_SOCKET, and Start() waits for READY=1 on it; null: Start()
  // waits until the control socket answers a ping. Must outlive the Daemon.
  NotifySocket* notify = nullptr;
  Clock::duration ready_timeout = std::chrono::seconds(10);
};

// One digestd process under measurement. Every failure Die()s with the
// tail of its log. The destructor kills a digestd still running.
class Daemon {
 public:
  explicit Daemon(DaemonOptions options);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Spawns digestd and waits until it serves (see DaemonOptions::notify);
  // the time from just before the spawn until then. With a notify socket,
  // its drainer runs from then until Stop().
  Clock::duration Start();
  // Polls status every 20 ms until `ready` holds for the answer; Die()s
  // naming `what` (and the last answer) after `timeout`, or when digestd
  // exits.
  void WaitStatus(const std::function<bool(const json&)>& ready, const std::string& what,
                  Clock::duration timeout);
  // Die()s when digestd has exited; `when` says during what.
  void DieIfExited(const char* when);
  // One request on a fresh connection; Die()s when it gets no answer.
  json Call(const json& request, int timeout_ms = 30000) const;
  json Status() const { return Call({{"op", "status"}}); }

  // SIGTERM, then waits up to `timeout` for the exit; Die()s when it does
  // not come.
  struct Exit {
    Clock::duration took{};  // SIGTERM to exit
    int status = 0;          // the wait status
  };
  Exit Stop(Clock::duration timeout = std::chrono::seconds(30));

  pid_t pid() const { return pid_; }
  std::string Tail() const { return LogTail(options_.log); }

 private:
  DaemonOptions options_;
  pid_t pid_ = -1;
};

// Connects `c` to `socket`; Die()s when it cannot.
void Connect(ControlClient& c, const std::string& socket);
// One request line out, one answer line back (within `timeout_ms`); Die()s
// when the daemon fails or does not answer "ok": true.
std::string CallLine(ControlClient& c, const std::string& line, int timeout_ms = 30000);
// CallLine, the answer parsed.
json CallJson(ControlClient& c, const std::string& line, int timeout_ms = 30000);

// ------------------------------------------------------------- PostgreSQL

// A blocking libpq connection (the tests' PgSession), for setup, checks and
// COPY, never on a loop. Die()s when it cannot connect or a statement fails.
class BlockingPg {
 public:
  using Rows = testing::Rows;

  explicit BlockingPg(const std::string& conninfo);

  PGconn* get() const { return session_.get(); }
  // Every row's fields as text.
  Rows Exec(const std::string& sql);
  // The first field of the first row; "" when there is none.
  std::string Scalar(const std::string& sql);
  long Count(const std::string& sql) { return std::strtol(Scalar(sql).c_str(), nullptr, 10); }

 private:
  testing::PgSession session_;
};

// After LISTEN digestd_done on `c`: waits up to `timeout_ms` for
// notifications and returns how many keys their payloads (JSON arrays of the
// keys a commit finished) carried. Die()s when the connection fails.
long WaitDoneKeys(BlockingPg& c, int timeout_ms);

// ---------------------------------------------------------------- figures

double Seconds(Clock::duration d);
double Ms(Clock::duration d);

// Nearest-rank percentiles of a sample, in the sample's unit.
struct Summary {
  size_t n = 0;
  double p50 = 0, p99 = 0, min = 0, max = 0;
};
Summary Summarize(std::vector<double> sample);

// A number inside a JSON answer, by JSON pointer ("/jobs/done"); -1 when
// absent or not a number, so a renamed field shows as -1, not a crash.
double Field(const json& j, const char* pointer);

}  // namespace digestd::bench
