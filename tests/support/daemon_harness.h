// Test support for end-to-end tests: a temporary directory, files and child
// processes, Unix sockets, and DaemonProcess, which runs the real digestd
// binary the way systemd would (a config file, a NOTIFY_SOCKET datagram
// socket the test owns, optionally WATCHDOG_USEC and a socket passed by
// activation), so a test can drive it through its control socket and read
// what it told "systemd". Waiting for a condition: wait.h (included).
//
// Threads: every method is called from the test's thread. DaemonProcess runs
// one helper thread of its own that drains the notify socket (digestd's
// sd_notify blocks once the datagram queue is full, so it must be read
// promptly); the messages it collects are guarded by a mutex.
#pragma once

#include <gtest/gtest.h>
#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "util/status.h"
#include "wait.h"

namespace digestd::testing {

// A fresh directory under /tmp with a short name (Unix socket paths must stay
// under 108 bytes), removed with everything in it at destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // `path()/name`.
  std::string File(std::string_view name) const;

 private:
  std::string path_;
};

// Whole-file helpers. ReadTextFile returns "" when the file cannot be read.
std::string ReadTextFile(const std::string& path);
bool WriteTextFile(const std::string& path, std::string_view text);
bool PathExists(const std::string& path);
// The lines of `text`, without their newlines.
std::vector<std::string> SplitLines(std::string_view text);
// An executable's absolute path from $PATH, or "" when there is none.
std::string FindProgram(const std::string& name);

// How a child process ended (the raw waitpid status).
struct ExitStatus {
  int raw = 0;
  bool exited() const;
  int code() const;  // valid when exited()
  bool signaled() const;
  int signal() const;  // valid when signaled()
  // "exit 0", "exit 1", "killed by signal 9": readable in assertions.
  std::string ToString() const;
};

// What RunProcess saw.
struct ProcessOutput {
  std::optional<ExitStatus> status;  // nullopt: killed after `timeout`
  std::string out;
  std::string err;
};

// Runs `argv` (argv[0] a path, or a name looked up in $PATH) to completion
// with stdout and stderr captured. `env` entries ("NAME=value") are added to
// the test's environment; `uid` >= 0 makes the child setuid() first. A child
// still running after `timeout` is killed with SIGKILL.
ProcessOutput RunProcess(const std::vector<std::string>& argv,
                         std::chrono::milliseconds timeout = kDeadline,
                         const std::vector<std::string>& env = {}, int uid = -1);

// A Unix stream socket bound to `path` (close-on-exec); -1 with errno set on
// failure. With `listen`, it also listens (a socket to hand to a daemon as
// systemd's socket activation does); without, it is closed again at once,
// which leaves the socket file behind with nobody listening, as a killed
// daemon does (MakeStaleSocket).
int BindUnixSocket(const std::string& path, bool listen);
[[nodiscard]] bool MakeStaleSocket(const std::string& path);

// Bytes written to the Unix stream socket `fd` that its peer has not read yet
// (SIOCOUTQ); -1 on error.
int UnreadBytes(int fd);
// Sends `data` on `fd` one byte at a time, each only after the peer has read
// the one before, so the peer really receives it in one-byte fragments.
[[nodiscard]] Status SendByteByByte(int fd, std::string_view data,
                                    std::chrono::milliseconds timeout = kDeadline);

// The error code and message of a protocol answer; "" when the answer is not
// an error object. Never throws, so it is safe on a client thread.
std::string ErrorCode(const nlohmann::json& answer);
std::string ErrorMessage(const nlohmann::json& answer);

// Sends `request` on a new connection to `socket_path` and returns the answer.
Result<nlohmann::json> CallOnce(const std::string& socket_path, const nlohmann::json& request,
                                int timeout_ms = 10000);

// A [workers] table for DaemonOptions::config: `min`, `max` and
// `interactive_reserved` slots.
std::string WorkersConfig(int min, int max, int interactive_reserved = 0);

// The stores a parameterised end-to-end suite runs on, PostgreSQL (the
// shipped default) first: INSTANTIATE_TEST_SUITE_P(Stores, Suite,
// ::testing::ValuesIn(kStores), StoreName).
inline const char* const kStores[] = {"postgres", "memory"};
inline std::string StoreName(const ::testing::TestParamInfo<const char*>& info) {
  return info.param;
}

struct DaemonOptions {
  // "memory" (or empty), or "postgres": then [postgres] conninfo, unless the
  // config sets it, names a fresh database on the tests' PostgreSQL server
  // (pg_fixture.h; a test fails when there is none). Suites that run on both
  // stores take it from their parameter (StoreName).
  std::string store{};
  // TOML text for the config file. [control] socket is set to the daemon's
  // socket path unless this text sets it, and [jobs] store to `store`.
  std::string config{};
  // The control socket; empty: "ctl.sock" in the daemon's temp dir.
  std::string socket_path{};
  // Arguments after "--config PATH".
  std::vector<std::string> args{};
  // Extra environment ("NAME=value").
  std::vector<std::string> env{};
  // Sets WATCHDOG_USEC when non-zero.
  uint64_t watchdog_usec = 0;
  // A bound, listening socket to hand over as systemd does: it becomes fd 3,
  // with LISTEN_FDS=1, LISTEN_FDNAMES and LISTEN_PID (the child's own pid,
  // set after fork). The caller keeps ownership of `listen_fd`.
  int listen_fd = -1;
  std::string listen_fdnames = "control";
  // A command run in front of digestd (such as systemd-socket-activate ...);
  // its argv[0] may be a name looked up in $PATH. The digestd command line is
  // appended to it.
  std::vector<std::string> wrapper{};
  // Start() waits for READY=1 when true.
  bool wait_ready = true;
  // Sets SO_PASSCRED on the notify socket so each message's sender is known.
  bool pass_cred = false;
};

// One line of one sd_notify datagram.
struct NotifyMessage {
  std::string line;
  pid_t sender = 0;  // 0 unless DaemonOptions::pass_cred
};

// The real digestd, started in its own temp dir. The destructor kills a
// daemon still running with SIGKILL and reaps it, so every test cleans up.
class DaemonProcess {
 public:
  DaemonProcess();
  ~DaemonProcess();
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  // Writes the config, binds the notify socket, forks and execs digestd, and
  // (when options.wait_ready) waits up to `timeout` for READY=1. The failure
  // message includes the daemon's stderr.
  ::testing::AssertionResult Start(DaemonOptions options = {},
                                   std::chrono::milliseconds timeout = kDeadline);

  pid_t Pid() const { return pid_; }
  const TempDir& dir() const { return dir_; }
  const std::string& SocketPath() const { return socket_path_; }
  const std::string& ConfigPath() const { return config_path_; }
  // The conninfo of the database a PostgreSQL store was given ("" for memory),
  // so a test can start the next daemon on the same jobs.
  const std::string& PgConninfo() const { return pg_conninfo_; }
  std::string StderrPath() const { return dir_.File("stderr.log"); }

  // Rewrites the config file as Start() does (the socket path and the store
  // added; a PostgreSQL store keeps the database Start() created).
  ::testing::AssertionResult WriteConfig(const std::string& toml);
  // Writes `text` to the config file unchanged (to test broken configs).
  bool WriteConfigRaw(const std::string& text);

  // Sends `signum` to the daemon (or its wrapper before it execs).
  void Signal(int signum);
  // Sends SIGTERM and expects exit status 0 within `timeout`. Under the
  // sanitizer build this is also where a leak or an ASan report surfaces.
  ::testing::AssertionResult Stop(std::chrono::milliseconds timeout = kDeadline);
  // Reaps the daemon; nullopt if it is still running after `timeout`.
  std::optional<ExitStatus> WaitExit(std::chrono::milliseconds timeout = kDeadline);
  // True while the process has not exited.
  bool Running();

  // Everything the daemon wrote to stderr so far.
  std::string StderrText() const { return ReadTextFile(StderrPath()); }
  // Waits until a stderr line contains `needle`; the line, or "" on timeout.
  std::string WaitForLog(const std::string& needle, std::chrono::milliseconds timeout = kDeadline);

  // Every notify line received so far, in order.
  std::vector<std::string> Messages() const;
  std::vector<NotifyMessage> NotifyMessages() const;
  size_t CountMessages(const std::string& prefix) const;
  // Waits for a notify line starting with `prefix` at index `from` or later;
  // returns its index, or nullopt on timeout.
  std::optional<size_t> WaitForMessage(const std::string& prefix,
                                       std::chrono::milliseconds timeout = kDeadline,
                                       size_t from = 0);

  // One request on a fresh connection to SocketPath().
  Result<nlohmann::json> Call(const nlohmann::json& request, int timeout_ms = 10000) const;
  // Call() that expects an answer with "ok": true (a test failure names the
  // request and the answer otherwise); the answer, or null when none came.
  nlohmann::json CallOk(const nlohmann::json& request, int timeout_ms = 10000) const;
  // CallOk({"op": "status"}).
  nlohmann::json Status() const { return CallOk({{"op", "status"}}); }
  // Submits a new noop job that sleeps `sleep_ms`; a test failure when it is
  // refused or the key already existed.
  void SubmitNoop(const std::string& key, int sleep_ms,
                  const std::string& lane = "background") const;

 private:
  bool BindNotifySocket(bool pass_cred);
  void ReadNotifications();
  void StopReader();
  ::testing::AssertionResult Failure(const std::string& what) const;

  TempDir dir_;
  std::string socket_path_;
  std::string config_path_;
  std::string store_ = "memory";  // DaemonOptions::store
  std::string pg_conninfo_;       // the database made for a PostgreSQL store
  std::string notify_path_;
  pid_t pid_ = -1;
  std::optional<ExitStatus> exit_;
  int notify_fd_ = -1;
  int stop_fd_ = -1;  // eventfd that wakes and stops the reader thread
  std::thread reader_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<NotifyMessage> messages_;  // guarded by mu_
};

}  // namespace digestd::testing
