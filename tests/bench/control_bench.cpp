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
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "client/control_client.h"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

struct Options {
  std::string digestd = DIGESTD_BIN;
  int starts = 20;        // daemon starts timed for exec -> READY=1
  double rtt_s = 3.0;     // duration of each round-trip measurement
  int clients = 8;        // concurrent clients for the second round-trip run
  double load_s = 5.0;    // duration of the status-under-load measurement
  int slots = 16;         // worker slots kept busy during the load
  int noop_ms = 10;       // sleep of each noop job during the load
  double settle_s = 1.0;  // idle time before the last RSS reading
  bool keep_tmp = false;  // keep the temp dir (config, daemon log)
  std::string conninfo;   // [postgres] conninfo; empty: left out of the config
};

constexpr int kRetainFinished = 10000;  // the shipped [jobs] retain_finished

pid_t g_child = -1;  // the digestd being measured; killed by Die()

[[noreturn]] void Die(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void Die(const char* fmt, ...) {
  std::fflush(stdout);
  std::fprintf(stderr, "control_bench: ");
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\n");
  if (g_child > 0) kill(g_child, SIGKILL);
  std::exit(1);
}

double Ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

void SleepFor(double seconds) {
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

// Nearest-rank percentiles of a sample, in the sample's unit.
struct Summary {
  size_t n = 0;
  double p50 = 0, p99 = 0, min = 0, max = 0;
};

Summary Summarize(std::vector<double> v) {
  Summary s;
  s.n = v.size();
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  auto rank = [&](double p) {
    size_t i = static_cast<size_t>(p * static_cast<double>(v.size()));
    return v[std::min(i, v.size() - 1)];
  };
  s.p50 = rank(0.50);
  s.p99 = rank(0.99);
  s.min = v.front();
  s.max = v.back();
  return s;
}

// A number inside a status answer, by JSON pointer; -1 when absent or not a
// number, so a renamed field shows up as -1 in the table instead of a crash.
double Field(const json& j, const char* pointer) {
  try {
    const json& v = j.at(json::json_pointer(pointer));
    return v.is_number() ? v.get<double>() : -1;
  } catch (const json::exception&) {
    return -1;
  }
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

// The bound NOTIFY_SOCKET: a datagram socket this program owns, as systemd's.
class NotifySocket {
 public:
  explicit NotifySocket(const std::string& path) : path_(path) {
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) Die("socket(AF_UNIX, SOCK_DGRAM): %s", std::strerror(errno));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof(addr.sun_path)) Die("notify socket path too long: %s", path.c_str());
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      Die("bind %s: %s", path.c_str(), std::strerror(errno));
    }
  }
  ~NotifySocket() { close(fd_); }
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;

  const std::string& path() const { return path_; }

  // Waits for a datagram with the line `word` ("READY=1"); returns when it
  // arrived, or nullopt at `deadline`. Other messages are read and dropped.
  std::optional<Clock::time_point> WaitFor(const std::string& word, Clock::time_point deadline) {
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) return std::nullopt;
      pollfd p{fd_, POLLIN, 0};
      int rc = poll(&p, 1, static_cast<int>(left.count()) + 1);
      if (rc <= 0) continue;
      char buf[4096];
      ssize_t n = recv(fd_, buf, sizeof(buf) - 1, 0);
      if (n <= 0) continue;
      auto when = Clock::now();
      std::istringstream lines(std::string(buf, static_cast<size_t>(n)));
      std::string line;
      while (std::getline(lines, line)) {
        if (line == word) return when;
      }
    }
  }

  // Reads and drops whatever is queued (STATUS= updates, STOPPING=1).
  void Drain() {
    char buf[4096];
    while (recv(fd_, buf, sizeof(buf), MSG_DONTWAIT) > 0) {
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
};

// Keeps a NotifySocket drained from a thread, so the daemon's STATUS=
// updates never fill its queue while nobody waits on it.
class NotifyDrainer {
 public:
  explicit NotifyDrainer(NotifySocket* sock)
      : thread_([this, sock] {
          while (!stop_.load()) {
            sock->Drain();
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
          }
        }) {}
  ~NotifyDrainer() {
    stop_.store(true);
    thread_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Waits up to `timeout` for `pid` to exit; its exit status, or nullopt.
std::optional<int> WaitExit(pid_t pid, Clock::duration timeout) {
  auto deadline = Clock::now() + timeout;
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  for (;;) {
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      if (pidfd >= 0) close(pidfd);
      return status;
    }
    if (r < 0 && errno != EINTR) break;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) break;
    if (pidfd >= 0) {
      pollfd p{pidfd, POLLIN, 0};
      poll(&p, 1, static_cast<int>(left.count()) + 1);
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  if (pidfd >= 0) close(pidfd);
  return std::nullopt;
}

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("killed by ") + strsignal(WTERMSIG(status));
  return "status " + std::to_string(status);
}

// One digestd process: spawned with NOTIFY_SOCKET, stderr to `log`.
class Digestd {
 public:
  Digestd(const Options& opt, const std::string& config, const std::string& log,
          NotifySocket* notify)
      : opt_(opt), config_(config), log_(log), notify_(notify) {}
  ~Digestd() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      (void)WaitExit(pid_, std::chrono::seconds(5));
      g_child = -1;
    }
  }
  Digestd(const Digestd&) = delete;
  Digestd& operator=(const Digestd&) = delete;

  // Spawns digestd and waits for READY=1; returns the time from just before
  // the spawn to the datagram's arrival.
  Clock::duration Start() {
    notify_->Drain();
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
      std::string_view kv(*e);
      bool drop = false;
      for (const char* name : {"NOTIFY_SOCKET=", "LISTEN_", "WATCHDOG_",
                               "JOURNAL_STREAM=", "DIGESTD_SOCKET=", "UV_THREADPOOL_SIZE="}) {
        drop = drop || kv.rfind(name, 0) == 0;
      }
      if (!drop) env.emplace_back(kv);
    }
    env.push_back("NOTIFY_SOCKET=" + notify_->path());
    std::vector<char*> envp;
    for (auto& s : env) envp.push_back(s.data());
    envp.push_back(nullptr);
    std::string arg0 = opt_.digestd, arg_config = "--config";
    std::vector<char*> argv = {arg0.data(), arg_config.data(), config_.data(), nullptr};

    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log_.c_str(),
                                     O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);

    auto t0 = Clock::now();
    int rc = posix_spawn(&pid_, opt_.digestd.c_str(), &fa, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) Die("cannot start %s: %s", opt_.digestd.c_str(), std::strerror(rc));
    g_child = pid_;
    auto ready = notify_->WaitFor("READY=1", t0 + std::chrono::seconds(10));
    if (!ready) {
      auto st = WaitExit(pid_, std::chrono::milliseconds(0));
      Die("digestd sent no READY=1 within 10 s (%s); its log:\n%s",
          st ? DescribeExit(*st).c_str() : "still running", Tail().c_str());
    }
    return *ready - t0;
  }

  // SIGTERM, then waits for the exit; returns the time it took and the
  // exit status.
  std::pair<Clock::duration, int> Stop() {
    auto t0 = Clock::now();
    kill(pid_, SIGTERM);
    auto st = WaitExit(pid_, std::chrono::seconds(30));
    auto took = Clock::now() - t0;
    if (!st) Die("digestd did not exit within 30 s of SIGTERM; its log:\n%s", Tail().c_str());
    pid_ = -1;
    g_child = -1;
    return {took, *st};
  }

  pid_t pid() const { return pid_; }

  std::string Tail() const {
    std::ifstream in(log_);
    std::vector<std::string> lines;
    for (std::string l; std::getline(in, l);) lines.push_back(l);
    std::string out;
    for (size_t i = lines.size() > 30 ? lines.size() - 30 : 0; i < lines.size(); ++i) {
      out += "  " + lines[i] + "\n";
    }
    return out;
  }

 private:
  const Options& opt_;
  std::string config_;
  std::string log_;
  NotifySocket* notify_;
  pid_t pid_ = -1;
};

void Connect(digestd::ControlClient& c, const std::string& socket) {
  digestd::Status st = c.Connect(socket);
  if (!st.ok()) Die("%s", st.message().c_str());
}

// One request line out, one answer line back; dies when the daemon fails.
std::string Call(digestd::ControlClient& c, const std::string& line) {
  digestd::Status st = c.SendLine(line);
  if (!st.ok()) Die("%s", st.message().c_str());
  auto answer = c.ReadLine(10000);
  if (!answer.ok()) Die("%s", answer.status().message().c_str());
  if (answer.value().find("\"ok\":true") == std::string::npos) {
    Die("digestd refused %s: %s", line.substr(0, 80).c_str(),
        answer.value().substr(0, 300).c_str());
  }
  return std::move(answer).value();
}

json CallJson(digestd::ControlClient& c, const std::string& line) {
  json j = json::parse(Call(c, line), nullptr, false);
  if (j.is_discarded()) Die("digestd's answer to %s is not JSON", line.c_str());
  return j;
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
        Call(c, line);
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
    std::string line = Call(c, status);
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

std::string WriteConfig(const Options& opt, const std::string& dir, const std::string& socket) {
  std::string path = dir + "/digestd.conf";
  std::ofstream out(path);
  out << "# written by control_bench\n"
      << "[workers]\nmin = 1\nmax = " << opt.slots << "\ninteractive_reserved = 0\n\n"
      << "[queues]\ninteractive = 200\nbackground = " << BackgroundCapacity(opt) << "\n\n"
      << "[control]\nsocket = \"" << socket << "\"\nmode = \"0600\"\n\n"
      << "[daemon]\nnode_id = \"bench\"\nshutdown_grace_s = 10\n\n"
      << "[jobs]\nstore = \"" << (opt.conninfo.empty() ? "memory" : "postgres")
      << "\"\nnoop_max_sleep_ms = " << std::max(1000, opt.noop_ms)
      << "\nretain_finished = " << kRetainFinished << "\n\n"
      << "[log]\nlevel = \"warning\"\n";
  if (!opt.conninfo.empty()) {
    std::string quoted;
    for (char ch : opt.conninfo) {
      if (ch == '"' || ch == '\\') quoted += '\\';
      quoted += ch;
    }
    out << "\n[postgres]\nconninfo = \"" << quoted << "\"\n";
  }
  if (!out) Die("cannot write %s", path.c_str());
  return path;
}

void Usage(FILE* out) {
  std::fprintf(out,
               "usage: control_bench [--digestd PATH] [--starts N] [--seconds S] [--clients N]\n"
               "                     [--load-seconds S] [--slots N] [--noop-ms N]\n"
               "                     [--settle-seconds S] [--conninfo STR] [--keep-tmp]\n"
               "\n"
               "Starts the real digestd with a temporary config and prints its startup time,\n"
               "control-socket round trips, status latency under load and memory.\n"
               "\n"
               "  --digestd PATH       the binary (default %s)\n"
               "  --starts N           starts timed for exec -> READY=1 (default 20)\n"
               "  --seconds S          duration of each round-trip run (default 3)\n"
               "  --clients N          concurrent clients of the second run (default 8)\n"
               "  --load-seconds S     duration of the status-under-load run (default 5)\n"
               "  --slots N            worker slots kept busy under load (default 16)\n"
               "  --noop-ms N          sleep of each noop job under load (default 10)\n"
               "  --settle-seconds S   idle time before the last memory reading (default 1)\n"
               "  --conninfo STR       [postgres] conninfo for digestd (default: none written)\n"
               "  --keep-tmp           keep the temp dir (config and digestd's log)\n",
               DIGESTD_BIN);
}

Options ParseFlags(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "control_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    auto number = [&](double lo, double hi) {
      std::string v = value();
      char* end = nullptr;
      double d = std::strtod(v.c_str(), &end);
      if (end == v.c_str() || *end != '\0' || d < lo || d > hi) {
        std::fprintf(stderr, "control_bench: %s %s: expected a number from %g to %g\n", a.c_str(),
                     v.c_str(), lo, hi);
        std::exit(2);
      }
      return d;
    };
    if (a == "--digestd") {
      o.digestd = value();
    } else if (a == "--starts") {
      o.starts = static_cast<int>(number(1, 1000));
    } else if (a == "--seconds") {
      o.rtt_s = number(0.1, 600);
    } else if (a == "--clients") {
      o.clients = static_cast<int>(number(1, 256));
    } else if (a == "--load-seconds") {
      o.load_s = number(0.1, 600);
    } else if (a == "--slots") {
      o.slots = static_cast<int>(number(1, 1024));
    } else if (a == "--noop-ms") {
      o.noop_ms = static_cast<int>(number(0, 60000));
    } else if (a == "--settle-seconds") {
      o.settle_s = number(0, 600);
    } else if (a == "--conninfo") {
      o.conninfo = value();
    } else if (a == "--keep-tmp") {
      o.keep_tmp = true;
    } else if (a == "--help" || a == "-h") {
      Usage(stdout);
      std::exit(0);
    } else {
      std::fprintf(stderr, "control_bench: unknown argument '%s'; see --help\n", a.c_str());
      std::exit(2);
    }
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt = ParseFlags(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  if (access(opt.digestd.c_str(), X_OK) != 0) {
    Die("%s is not an executable: %s; build digestd first (scripts/bench does)",
        opt.digestd.c_str(), std::strerror(errno));
  }

  // A short /tmp path: Unix socket paths are limited to 108 bytes.
  char tmpl[] = "/tmp/dgbench.XXXXXX";
  if (mkdtemp(tmpl) == nullptr) Die("mkdtemp: %s", std::strerror(errno));
  const std::string dir = tmpl;
  const std::string socket = dir + "/control.sock";
  const std::string config = WriteConfig(opt, dir, socket);
  NotifySocket notify(dir + "/notify.sock");

  // 1. Startup and idle shutdown, one fresh process per start.
  std::vector<double> ready_ms, stop_ms;
  int bad_exits = 0;
  std::string bad_exit;
  for (int i = 0; i < opt.starts; ++i) {
    Digestd d(opt, config, dir + "/digestd.log", &notify);
    ready_ms.push_back(Ms(d.Start()));
    auto [took, status] = d.Stop();
    stop_ms.push_back(Ms(took));
    if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
      ++bad_exits;
      bad_exit = DescribeExit(status);
    }
  }

  // 2. One daemon for the rest.
  Digestd d(opt, config, dir + "/digestd.log", &notify);
  (void)d.Start();
  NotifyDrainer drainer(&notify);
  long rss_ready = ProcStatusKiB(d.pid(), "VmRSS");
  json status0;
  {
    digestd::ControlClient c;
    Connect(c, socket);
    status0 = CallJson(c, R"({"op":"status"})");
  }

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
  auto [stop_loaded, final_status] = d.Stop();

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
  std::printf("%7.2f ms                     (%s)\n\n", Ms(stop_loaded),
              DescribeExit(final_status).c_str());

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

  if (opt.keep_tmp) {
    std::printf("\nkept %s (config, digestd.log)\n", dir.c_str());
  } else {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  return 0;
}
