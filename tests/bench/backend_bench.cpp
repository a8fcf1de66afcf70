// backend_bench: the real digestd against the fake Ollama (fake_ollama, a
// separate process), measured from outside as an app sees it:
//
//   1. capacity-bound: the fake serves C requests at once and each takes L ms;
//      digestd has C worker slots. N generate jobs are fed in batches that
//      keep the background lane topped up. Reported: jobs per second as a
//      fraction of the ideal C/L, and digestd's CPU time (user + sys from
//      /proc/PID/stat) per job.
//   2. daemon-bound: a 0 ms fake with 16 slots on both sides: jobs per second
//      end to end, and CPU per job again.
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
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
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
  std::string fake = FAKE_OLLAMA_BIN;
  long jobs = 5000;        // phase 1
  long fast_jobs = 20000;  // phase 2
  int capacity = 4;        // C: fake slots = digestd worker slots in phase 1
  int latency_ms = 50;     // L: per request in phase 1
  int tokens = 8;          // streamed tokens per generation
  int fast_slots = 16;     // phase 2 slots on both sides
  int max_batch = 1000;    // jobs per submit ([jobs] max_batch)
  int ring = 2000;         // [queues] background
  bool phase1 = true;
  bool phase2 = true;
  std::vector<std::string> wrapper;  // command digestd runs under
  double ready_timeout_s = 10;
  std::string perf_record;  // perf.data path for phase 2; empty: none
  std::string conninfo;     // [postgres] conninfo; empty: left out
  bool keep_tmp = false;
};

std::vector<pid_t> g_children;  // killed by Die()

[[noreturn]] void Die(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void Die(const char* fmt, ...) {
  std::fflush(stdout);
  std::fprintf(stderr, "backend_bench: ");
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\n");
  for (pid_t p : g_children) kill(p, SIGKILL);
  std::exit(1);
}

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// A number inside a JSON answer by JSON pointer; -1 when absent.
double Field(const json& j, const char* pointer) {
  try {
    const json& v = j.at(json::json_pointer(pointer));
    return v.is_number() ? v.get<double>() : -1;
  } catch (const json::exception&) {
    return -1;
  }
}

// utime + stime of `pid` (all its threads) in seconds, from /proc/PID/stat.
struct Cpu {
  double user = 0, sys = 0;
  double total() const { return user + sys; }
};
Cpu ProcCpu(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(in, line);
  size_t close = line.rfind(')');
  if (close == std::string::npos) return {};
  std::istringstream rest(line.substr(close + 2));
  std::string field;
  std::vector<std::string> f;  // f[0] is field 3 (state)
  while (rest >> field) f.push_back(field);
  if (f.size() < 13) return {};
  const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
  return {std::stod(f[11]) / tick, std::stod(f[12]) / tick};  // fields 14 and 15
}

bool WaitExit(pid_t pid, double seconds, int* status) {
  auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
  while (Clock::now() < deadline) {
    pid_t r = waitpid(pid, status, WNOHANG);
    if (r == pid || (r < 0 && errno != EINTR)) return r == pid;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

pid_t Spawn(const std::vector<std::string>& args, const std::vector<std::string>& extra_env,
            const std::string& log) {
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
  env.insert(env.end(), extra_env.begin(), extra_env.end());
  std::vector<char*> envp, argv;
  for (auto& s : env) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> a = args;
  for (auto& s : a) argv.push_back(s.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                   0644);
  posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, argv[0], &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) Die("cannot start %s: %s", args[0].c_str(), std::strerror(rc));
  g_children.push_back(pid);
  return pid;
}

void Forget(pid_t pid) {
  g_children.erase(std::remove(g_children.begin(), g_children.end(), pid), g_children.end());
}

std::string Tail(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  std::string out;
  for (size_t i = lines.size() > 20 ? lines.size() - 20 : 0; i < lines.size(); ++i) {
    out += "  " + lines[i] + "\n";
  }
  return out;
}

size_t AppendBody(char* data, size_t size, size_t n, void* user) {
  static_cast<std::string*>(user)->append(data, size * n);
  return size * n;
}

// GET `url`; the parsed JSON body, or null.
json HttpGetJson(const std::string& url) {
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return nullptr;
  std::string body;
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 10000L);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &AppendBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
  CURLcode rc = curl_easy_perform(curl);
  curl_easy_cleanup(curl);
  if (rc != CURLE_OK) return nullptr;
  return json::parse(body, nullptr, false);
}

// The fake Ollama as a child process.
class Fake {
 public:
  Fake(const Options& opt, const std::string& dir, int parallel, int latency_ms) {
    const std::string port_file = dir + "/fake.port";
    std::filesystem::remove(port_file);
    pid_ = Spawn({opt.fake, "--port", "0", "--port-file", port_file, "--parallel",
                  std::to_string(parallel), "--latency-ms", std::to_string(latency_ms), "--tokens",
                  std::to_string(opt.tokens), "--max-queue", "100000"},
                 {}, dir + "/fake.log");
    auto deadline = Clock::now() + std::chrono::seconds(10);
    while (!std::filesystem::exists(port_file)) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_ || Clock::now() > deadline) {
        Die("fake_ollama did not start; its log:\n%s", Tail(dir + "/fake.log").c_str());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    std::ifstream in(port_file);
    in >> port_;
  }
  ~Fake() {
    kill(pid_, SIGTERM);
    int status = 0;
    if (!WaitExit(pid_, 10, &status)) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    Forget(pid_);
  }
  Fake(const Fake&) = delete;
  Fake& operator=(const Fake&) = delete;

  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  json Stats() const { return HttpGetJson(url() + "/_fake/stats"); }

 private:
  pid_t pid_ = -1;
  int port_ = 0;
};

// The NOTIFY_SOCKET, drained by a thread once READY=1 has arrived.
class Notify {
 public:
  explicit Notify(const std::string& path) : path_(path) {
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
    if (fd_ < 0 || bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      Die("cannot bind %s: %s", path.c_str(), std::strerror(errno));
    }
  }
  ~Notify() {
    stop_ = true;
    if (drainer_.joinable()) drainer_.join();
    close(fd_);
  }
  Notify(const Notify&) = delete;
  Notify& operator=(const Notify&) = delete;

  const std::string& path() const { return path_; }

  bool WaitReady(double seconds) {
    auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
    while (Clock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char buf[4096];
      ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n > 0 &&
          std::string_view(buf, static_cast<size_t>(n)).find("READY=1") != std::string_view::npos) {
        drainer_ = std::thread([this] {
          char b[4096];
          while (!stop_) {
            while (recv(fd_, b, sizeof(b), MSG_DONTWAIT) > 0) {
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
          }
        });
        return true;
      }
    }
    return false;
  }

 private:
  std::string path_;
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::thread drainer_;
};

// One digestd, started with its config and stopped with SIGTERM.
class Daemon {
 public:
  Daemon(const Options& opt, const std::string& dir, const std::string& config, Notify* notify)
      : log_(dir + "/digestd.log") {
    std::vector<std::string> args = opt.wrapper;
    args.push_back(opt.digestd);
    args.push_back("--config");
    args.push_back(config);
    pid_ = Spawn(args, {"NOTIFY_SOCKET=" + notify->path()}, log_);
    if (!notify->WaitReady(opt.ready_timeout_s)) {
      Die("digestd sent no READY=1 within %.0f s; its log:\n%s", opt.ready_timeout_s,
          Tail(log_).c_str());
    }
  }
  ~Daemon() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      Forget(pid_);
    }
  }
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  pid_t pid() const { return pid_; }

  // SIGTERM; the exit status text.
  std::string Stop(double timeout_s) {
    kill(pid_, SIGTERM);
    int status = 0;
    if (!WaitExit(pid_, timeout_s, &status)) {
      Die("digestd did not exit within %.0f s of SIGTERM; its log:\n%s", timeout_s,
          Tail(log_).c_str());
    }
    Forget(pid_);
    pid_ = -1;
    if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
    return std::string("killed by ") + strsignal(WTERMSIG(status));
  }

 private:
  std::string log_;
  pid_t pid_ = -1;
};

std::string WriteConfig(const Options& opt, const std::string& dir, const std::string& name,
                        int slots, const std::string& url) {
  const std::string path = dir + "/" + name + ".conf";
  std::ofstream out(path);
  out << "# written by backend_bench\n"
      << "[workers]\nmin = 1\nmax = " << slots << "\ninteractive_reserved = 0\n\n"
      << "[queues]\ninteractive = 200\nbackground = " << opt.ring << "\n\n"
      << "[control]\nsocket = \"" << dir << "/control.sock\"\nmode = \"0600\"\n\n"
      << "[daemon]\nnode_id = \"bench\"\nshutdown_grace_s = 10\n\n"
      << "[jobs]\nstore = \"" << (opt.conninfo.empty() ? "memory" : "postgres")
      << "\"\nmax_batch = " << opt.max_batch << "\nretain_finished = 10000\n\n"
      << "[log]\nlevel = \"warning\"\n\n"
      << "[backend]\nurl = \"" << url << "\"\nbreaker_failures = 10000\n";
  if (!opt.conninfo.empty()) {
    out << "\n[postgres]\nconninfo = " << json(opt.conninfo).dump() << "\n";
  }
  if (!out) Die("cannot write %s", path.c_str());
  return path;
}

json CallOk(digestd::ControlClient& c, const json& request) {
  auto answer = c.Call(request, 30000);
  if (!answer.ok()) Die("%s", answer.status().message().c_str());
  if (!answer.value().value("ok", false)) {
    Die("digestd refused %s: %s", request.dump().substr(0, 80).c_str(),
        answer.value().dump().substr(0, 300).c_str());
  }
  return std::move(answer).value();
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
  if (digestd::Status st = c.Connect(socket); !st.ok()) Die("%s", st.message().c_str());
  Run r;
  r.jobs = n;
  json base = CallOk(c, {{"op", "status"}});
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
        batch += R"({"kind":"generate","input":{"prompt":"bench job )" +
                 std::to_string(submitted + i) + R"("}})";
      }
      batch += "]}";
      if (digestd::Status s = c.SendLine(batch); !s.ok()) Die("%s", s.message().c_str());
      auto line = c.ReadLine(30000);
      if (!line.ok()) Die("%s", line.status().message().c_str());
      json answer = json::parse(line.value(), nullptr, false);
      if (!answer.value("ok", false))
        Die("submit refused: %s", line.value().substr(0, 300).c_str());
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
    st = CallOk(c, {{"op", "status"}});
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

void Usage(FILE* out) {
  std::fprintf(
      out,
      "usage: backend_bench [--jobs N] [--fast-jobs N] [--capacity C] [--latency-ms L]\n"
      "                     [--fast-slots S] [--tokens N] [--only capacity|fast]\n"
      "                     [--wrapper CMD] [--ready-timeout S] [--perf-record FILE]\n"
      "                     [--digestd PATH] [--fake PATH] [--conninfo STR] [--keep-tmp]\n"
      "\n"
      "Runs the real digestd against fake_ollama and prints throughput and CPU per job.\n"
      "\n"
      "  --jobs N           jobs in the capacity-bound run (default 5000)\n"
      "  --fast-jobs N      jobs in the 0 ms run (default 20000)\n"
      "  --capacity C       fake slots = worker slots in the capacity-bound run (default 4)\n"
      "  --latency-ms L     time per request in the capacity-bound run (default 50)\n"
      "  --fast-slots S     slots on both sides in the 0 ms run (default 16)\n"
      "  --tokens N         streamed tokens per generation (default 8)\n"
      "  --only WHICH       run only the capacity-bound or only the fast run\n"
      "  --wrapper CMD      run digestd under CMD (split at spaces), e.g. valgrind\n"
      "  --ready-timeout S  wait for READY=1 (default 10; raise it under a wrapper)\n"
      "  --perf-record F    attach perf record to digestd during the 0 ms run\n"
      "  --digestd PATH     the daemon (default %s)\n"
      "  --fake PATH        the fake (default %s)\n"
      "  --conninfo STR     [postgres] conninfo for digestd (default: none written)\n"
      "  --keep-tmp         keep the temp dir (configs, logs)\n",
      DIGESTD_BIN, FAKE_OLLAMA_BIN);
}

Options ParseFlags(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "backend_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    auto number = [&](long lo, long hi) {
      std::string v = value();
      char* end = nullptr;
      long n = std::strtol(v.c_str(), &end, 10);
      if (end == v.c_str() || *end != '\0' || n < lo || n > hi) {
        std::fprintf(stderr, "backend_bench: %s %s: expected an integer from %ld to %ld\n",
                     a.c_str(), v.c_str(), lo, hi);
        std::exit(2);
      }
      return n;
    };
    if (a == "--jobs") {
      o.jobs = number(1, 10000000);
    } else if (a == "--fast-jobs") {
      o.fast_jobs = number(1, 10000000);
    } else if (a == "--capacity") {
      o.capacity = static_cast<int>(number(1, 256));
    } else if (a == "--latency-ms") {
      o.latency_ms = static_cast<int>(number(1, 60000));
    } else if (a == "--fast-slots") {
      o.fast_slots = static_cast<int>(number(1, 256));
    } else if (a == "--tokens") {
      o.tokens = static_cast<int>(number(1, 100000));
    } else if (a == "--only") {
      std::string w = value();
      if (w != "capacity" && w != "fast") {
        std::fprintf(stderr, "backend_bench: --only takes capacity or fast\n");
        std::exit(2);
      }
      o.phase1 = w == "capacity";
      o.phase2 = w == "fast";
    } else if (a == "--wrapper") {
      o.wrapper = SplitWords(value());
    } else if (a == "--ready-timeout") {
      o.ready_timeout_s = static_cast<double>(number(1, 3600));
    } else if (a == "--perf-record") {
      o.perf_record = value();
    } else if (a == "--digestd") {
      o.digestd = value();
    } else if (a == "--fake") {
      o.fake = value();
    } else if (a == "--conninfo") {
      o.conninfo = value();
    } else if (a == "--keep-tmp") {
      o.keep_tmp = true;
    } else if (a == "--help" || a == "-h") {
      Usage(stdout);
      std::exit(0);
    } else {
      std::fprintf(stderr, "backend_bench: unknown argument '%s'; see --help\n", a.c_str());
      std::exit(2);
    }
  }
  o.ring = std::max(o.ring, o.max_batch);
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt = ParseFlags(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  for (const std::string& bin : {opt.digestd, opt.fake}) {
    if (access(bin.c_str(), X_OK) != 0) {
      Die("%s is not an executable: %s; build it first (scripts/bench does)", bin.c_str(),
          std::strerror(errno));
    }
  }
  char tmpl[] = "/tmp/dgbbench.XXXXXX";  // short: Unix socket paths are limited
  if (mkdtemp(tmpl) == nullptr) Die("mkdtemp: %s", std::strerror(errno));
  const std::string dir = tmpl;
  const std::string socket = dir + "/control.sock";
  const bool wrapped = !opt.wrapper.empty();

  std::printf("digestd backend benchmark: %s against %s, %u CPUs%s\n", opt.digestd.c_str(),
              opt.fake.c_str(), std::thread::hardware_concurrency(),
              wrapped ? " (digestd under a wrapper)" : "");

  if (opt.phase1) {
    Fake fake(opt, dir, opt.capacity, opt.latency_ms);
    Notify notify(dir + "/notify1.sock");
    Daemon d(opt, dir, WriteConfig(opt, dir, "capacity", opt.capacity, fake.url()), &notify);
    const double ideal = opt.capacity * 1000.0 / opt.latency_ms;
    // The ring holds ring/ideal seconds of work: poll a few times within that.
    const double poll_s = std::clamp(opt.ring / ideal / 8, 0.01, 0.25);
    Run r = Feed(opt, socket, d.pid(), opt.jobs, poll_s);
    json fs = fake.Stats();
    std::string exit = d.Stop(60);
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
    Notify notify(dir + "/notify2.sock");
    Daemon d(opt, dir, WriteConfig(opt, dir, "fast", opt.fast_slots, fake.url()), &notify);
    pid_t perf = -1;
    if (!opt.perf_record.empty()) {
      perf = Spawn(
          {"perf", "record", "-F", "999", "-o", opt.perf_record, "-p", std::to_string(d.pid())}, {},
          dir + "/perf.log");
      std::this_thread::sleep_for(std::chrono::milliseconds(500));  // let perf attach
    }
    Run r = Feed(opt, socket, d.pid(), opt.fast_jobs, 0.02);
    if (perf > 0) {
      kill(perf, SIGINT);
      int status = 0;
      if (!WaitExit(perf, 60, &status)) kill(perf, SIGKILL);
      Forget(perf);
    }
    json fs = fake.Stats();
    std::string exit = d.Stop(wrapped ? 600 : 60);
    std::printf(
        "\n2. daemon-bound: fake with 0 ms per request (%d tokens), C = %d; "
        "[workers] max = %d\n",
        opt.tokens, opt.fast_slots, opt.fast_slots);
    Report(r, fs, wrapped);
    Line("digestd after SIGTERM", "%s", exit.c_str());
    if (perf > 0) Line("perf record", "%s", opt.perf_record.c_str());
  }

  if (opt.keep_tmp) {
    std::printf("\nkept %s (configs, digestd.log, fake.log)\n", dir.c_str());
  } else {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  curl_global_cleanup();
  return 0;
}
