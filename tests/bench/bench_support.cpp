#include "bench_support.h"

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
#include <cerrno>
#include <cstdarg>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string_view>

extern char** environ;

namespace digestd::bench {

namespace {

std::string& Program() {
  static std::string name = "bench";
  return name;
}

// Children Spawn() started and nobody has reaped yet; Die() kills them.
std::mutex& ChildrenMu() {
  static std::mutex mu;
  return mu;
}
std::vector<pid_t>& Children() {
  static std::vector<pid_t> children;
  return children;
}

void Forget(pid_t pid) {
  std::lock_guard<std::mutex> lock(ChildrenMu());
  auto& c = Children();
  c.erase(std::remove(c.begin(), c.end(), pid), c.end());
}

std::vector<std::function<void()>>& DieHooks() {
  static std::vector<std::function<void()>> hooks;
  return hooks;
}

// Variables a benchmark's children must not inherit: they would tell
// digestd that systemd started it, or point it or digestctl elsewhere.
bool Scrubbed(std::string_view kv) {
  for (const char* prefix : {"NOTIFY_SOCKET=", "LISTEN_", "WATCHDOG_",
                             "JOURNAL_STREAM=", "DIGESTD_SOCKET=", "UV_THREADPOOL_SIZE="}) {
    if (kv.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

}  // namespace

// ------------------------------------------------------------ fatal errors

void SetProgramName(std::string name) {
  Program() = std::move(name);
}

const std::string& ProgramName() {
  return Program();
}

void Die(const char* fmt, ...) {
  std::fflush(stdout);
  std::fprintf(stderr, "%s: ", Program().c_str());
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\n");
  {
    std::lock_guard<std::mutex> lock(ChildrenMu());
    for (pid_t p : Children()) kill(p, SIGKILL);
  }
  auto& hooks = DieHooks();
  for (auto it = hooks.rbegin(); it != hooks.rend(); ++it) (*it)();
  std::exit(1);
}

void AtDie(std::function<void()> hook) {
  DieHooks().push_back(std::move(hook));
}

// ------------------------------------------------------------------ flags

Flags::Flags(std::string program, std::string synopsis, std::vector<FlagSpec> specs)
    : program_(std::move(program)), synopsis_(std::move(synopsis)), specs_(std::move(specs)) {
  SetProgramName(program_);
}

void Flags::Parse(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      PrintUsage(stdout);
      std::exit(0);
    }
    if (arg.rfind("--", 0) != 0 || arg.size() == 2) {
      UsageError("unexpected argument '" + arg + "' (flags start with --)");
    }
    std::string name = arg.substr(2);
    std::optional<std::string> value;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name.resize(eq);
    }
    auto spec = std::find_if(specs_.begin(), specs_.end(),
                             [&](const FlagSpec& s) { return s.name == name; });
    if (spec == specs_.end()) UsageError("unknown flag --" + name);
    if (spec->value.empty()) {
      if (value) UsageError("--" + name + " takes no value");
      given_.emplace_back(name, "");
      continue;
    }
    if (!value) {
      if (i + 1 >= argc) UsageError("--" + name + " needs a value (" + spec->value + ")");
      value = argv[++i];
    }
    given_.emplace_back(name, *value);
  }
}

const FlagSpec& Flags::Spec(const std::string& name) const {
  for (const auto& s : specs_) {
    if (s.name == name) return s;
  }
  std::fprintf(stderr, "%s: internal error: no flag --%s is declared\n", program_.c_str(),
               name.c_str());
  std::abort();
}

bool Flags::Has(const std::string& name) const {
  Spec(name);
  for (const auto& [n, v] : given_) {
    if (n == name) return true;
  }
  return false;
}

std::string Flags::String(const std::string& name) const {
  std::string out = Spec(name).fallback;
  for (const auto& [n, v] : given_) {
    if (n == name) out = v;
  }
  return out;
}

std::vector<std::string> Flags::Strings(const std::string& name) const {
  std::vector<std::string> out;
  for (const auto& [n, v] : given_) {
    if (n == name) out.push_back(v);
  }
  if (out.empty()) {
    std::istringstream words(Spec(name).fallback);
    for (std::string w; words >> w;) out.push_back(w);
  }
  return out;
}

double Flags::ToNumber(const std::string& name, const std::string& text, double lo,
                       double hi) const {
  char* end = nullptr;
  errno = 0;
  double d = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || *end != '\0' || errno != 0 || !(d >= lo && d <= hi)) {
    char range[96];
    std::snprintf(range, sizeof range, "expected a number from %g to %g", lo, hi);
    UsageError("--" + name + " " + text + ": " + range);
  }
  return d;
}

double Flags::Number(const std::string& name, double lo, double hi) const {
  return ToNumber(name, String(name), lo, hi);
}

std::vector<double> Flags::Numbers(const std::string& name, double lo, double hi) const {
  std::vector<double> out;
  for (const auto& v : Strings(name)) out.push_back(ToNumber(name, v, lo, hi));
  return out;
}

long Flags::Integer(const std::string& name, long lo, long hi) const {
  std::string v = String(name);
  char* end = nullptr;
  errno = 0;
  long n = std::strtol(v.c_str(), &end, 10);
  if (end == v.c_str() || *end != '\0' || errno != 0 || n < lo || n > hi) {
    UsageError("--" + name + " " + v + ": expected a whole number from " + std::to_string(lo) +
               " to " + std::to_string(hi));
  }
  return n;
}

void Flags::UsageError(const std::string& what) const {
  std::fprintf(stderr, "%s: %s; see --help\n", program_.c_str(), what.c_str());
  std::exit(2);
}

void Flags::PrintUsage(FILE* to) const {
  std::fprintf(to, "usage: %s [flags]\n\n%s\n\n", program_.c_str(), synopsis_.c_str());
  size_t width = 0;
  auto left = [](const FlagSpec& s) {
    return "--" + s.name + (s.value.empty() ? "" : " " + s.value);
  };
  for (const auto& s : specs_) width = std::max(width, left(s).size());
  width += 3;
  for (const auto& s : specs_) {
    std::string help = s.help;
    if (!s.fallback.empty()) help += " (default " + s.fallback + ")";
    std::istringstream lines(help);
    std::string line;
    bool first = true;
    while (std::getline(lines, line)) {
      std::fprintf(to, "  %-*s%s\n", static_cast<int>(width), first ? left(s).c_str() : "",
                   line.c_str());
      first = false;
    }
    if (first) std::fprintf(to, "  %s\n", left(s).c_str());
  }
}

// ------------------------------------------------------------- processes

pid_t Spawn(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env,
            const std::string& log) {
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (!Scrubbed(*e)) env.emplace_back(*e);
  }
  env.insert(env.end(), extra_env.begin(), extra_env.end());
  std::vector<std::string> args = argv;
  std::vector<char*> envp, argp;
  for (auto& s : env) envp.push_back(s.data());
  envp.push_back(nullptr);
  for (auto& s : args) argp.push_back(s.data());
  argp.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                   0644);
  posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, argp[0], &fa, nullptr, argp.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) Die("cannot start %s: %s", argv[0].c_str(), std::strerror(rc));
  std::lock_guard<std::mutex> lock(ChildrenMu());
  Children().push_back(pid);
  return pid;
}

std::optional<int> WaitExit(pid_t pid, Clock::duration timeout) {
  auto deadline = Clock::now() + timeout;
  int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  std::optional<int> out;
  for (;;) {
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      out = status;
      Forget(pid);
      break;
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
  return out;
}

int StopChild(pid_t pid, int signum, Clock::duration timeout) {
  kill(pid, signum);
  if (auto status = WaitExit(pid, timeout)) return *status;
  kill(pid, SIGKILL);
  auto status = WaitExit(pid, std::chrono::seconds(10));
  return status ? *status : -1;
}

std::string DescribeExit(int status) {
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("killed by ") + strsignal(WTERMSIG(status));
  return "status " + std::to_string(status);
}

std::string LogTail(const std::string& path, size_t lines) {
  std::ifstream in(path);
  std::vector<std::string> all;
  for (std::string l; std::getline(in, l);) all.push_back(l);
  std::string out;
  for (size_t i = all.size() > lines ? all.size() - lines : 0; i < all.size(); ++i) {
    out += "  " + all[i] + "\n";
  }
  return out.empty() ? "  (empty)\n" : out;
}

// ------------------------------------------------------------------ files

BenchDir::BenchDir(const std::string& prefix) {
  std::string tmpl = "/tmp/" + prefix + ".XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) Die("mkdtemp %s: %s", tmpl.c_str(), std::strerror(errno));
  path_ = tmpl;
  AtDie([path = path_] {
    if (std::filesystem::exists(path)) {
      std::fprintf(stderr, "%s: kept %s (configs and logs)\n", ProgramName().c_str(), path.c_str());
    }
  });
}

void BenchDir::Finish(bool keep, const std::string& contents) {
  if (keep) {
    std::printf("\nkept %s (%s)\n", path_.c_str(), contents.c_str());
    return;
  }
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

void ConfigFile::Set(const std::string& section, const std::string& key, const std::string& toml) {
  sections_[section][key] = toml;
}

void ConfigFile::SetString(const std::string& section, const std::string& key,
                           const std::string& value) {
  Set(section, key, TomlString(value));
}

bool ConfigFile::Override(const std::string& assignment) {
  size_t dot = assignment.find('.'), eq = assignment.find('=');
  if (dot == std::string::npos || eq == std::string::npos || dot > eq || dot == 0 ||
      eq == dot + 1) {
    return false;
  }
  Set(assignment.substr(0, dot), assignment.substr(dot + 1, eq - dot - 1),
      assignment.substr(eq + 1));
  return true;
}

std::string ConfigFile::Write(const std::string& path) const {
  std::ofstream out(path);
  out << "# written by " << ProgramName() << "\n";
  for (const auto& [section, keys] : sections_) {
    out << "\n[" << section << "]\n";
    for (const auto& [key, value] : keys) out << key << " = " << value << "\n";
  }
  if (!out) Die("cannot write %s", path.c_str());
  return path;
}

std::string TomlString(const std::string& s) {
  // JSON's string escapes are a subset of TOML's basic-string escapes.
  return json(s).dump();
}

ConfigFile DaemonConfig(const std::string& socket, const std::string& node_id) {
  ConfigFile c;
  c.SetString("control", "socket", socket);
  c.SetString("control", "mode", "0600");
  c.SetString("daemon", "node_id", node_id);
  c.Set("daemon", "shutdown_grace_s", "10");
  c.SetString("log", "level", "warning");
  c.SetString("jobs", "store", "memory");
  return c;
}

void UsePostgres(ConfigFile& config, const std::string& conninfo) {
  config.SetString("jobs", "store", "postgres");
  config.SetString("postgres", "conninfo", conninfo);
}

void RequireExecutable(const std::string& path) {
  if (access(path.c_str(), X_OK) != 0) {
    Die("%s is not an executable: %s; build it first (scripts/bench does)", path.c_str(),
        std::strerror(errno));
  }
}

// ---------------------------------------------------------------- digestd

NotifySocket::NotifySocket(std::string path) : path_(std::move(path)) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path_.size() >= sizeof(addr.sun_path)) Die("notify socket path too long: %s", path_.c_str());
  std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
  unlink(path_.c_str());
  fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0 || bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    Die("cannot bind the notify socket %s: %s", path_.c_str(), std::strerror(errno));
  }
}

NotifySocket::~NotifySocket() {
  StopDraining();
  close(fd_);
}

std::optional<Clock::time_point> NotifySocket::WaitFor(const std::string& word,
                                                       Clock::time_point deadline) {
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return std::nullopt;
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left.count()) + 1) <= 0) continue;
    char buf[4096];
    ssize_t n = recv(fd_, buf, sizeof(buf) - 1, 0);
    if (n <= 0) continue;
    auto when = Clock::now();
    std::istringstream lines(std::string(buf, static_cast<size_t>(n)));
    for (std::string line; std::getline(lines, line);) {
      if (line == word) return when;
    }
  }
}

void NotifySocket::Drain() {
  char buf[4096];
  while (recv(fd_, buf, sizeof(buf), MSG_DONTWAIT) > 0) {
  }
}

void NotifySocket::StartDraining() {
  if (drainer_.joinable()) return;
  stop_ = false;
  drainer_ = std::thread([this] {
    while (!stop_.load()) {
      Drain();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  });
}

void NotifySocket::StopDraining() {
  if (!drainer_.joinable()) return;
  stop_ = true;
  drainer_.join();
}

Daemon::Daemon(DaemonOptions options) : options_(std::move(options)) {}

Daemon::~Daemon() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    (void)WaitExit(pid_, std::chrono::seconds(5));
  }
  if (options_.notify != nullptr) options_.notify->StopDraining();
}

Clock::duration Daemon::Start() {
  if (pid_ > 0) Die("digestd started twice");
  std::vector<std::string> argv = options_.wrapper;
  argv.insert(argv.end(), {options_.binary, "--config", options_.config});
  std::vector<std::string> env;
  NotifySocket* notify = options_.notify;
  if (notify != nullptr) {
    notify->StopDraining();
    notify->Drain();
    env.push_back("NOTIFY_SOCKET=" + notify->path());
  }
  const double limit_s = Seconds(options_.ready_timeout);
  auto t0 = Clock::now();
  pid_ = Spawn(argv, env, options_.log);
  if (notify != nullptr) {
    auto ready = notify->WaitFor("READY=1", t0 + options_.ready_timeout);
    if (!ready) {
      auto st = WaitExit(pid_, Clock::duration::zero());
      if (st) pid_ = -1;
      Die("digestd sent no READY=1 within %.0f s (%s); its log:\n%s", limit_s,
          st ? DescribeExit(*st).c_str() : "still running", Tail().c_str());
    }
    notify->StartDraining();
    return *ready - t0;
  }
  auto deadline = t0 + options_.ready_timeout;
  for (;;) {
    DieIfExited("while starting");
    ControlClient c;
    if (c.Connect(options_.socket).ok() && c.Call(json{{"op", "ping"}}, 2000).ok()) {
      return Clock::now() - t0;
    }
    if (Clock::now() > deadline) {
      Die("digestd did not answer on %s within %.0f s; its log:\n%s", options_.socket.c_str(),
          limit_s, Tail().c_str());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void Daemon::WaitStatus(const std::function<bool(const json&)>& ready, const std::string& what,
                        Clock::duration timeout) {
  auto deadline = Clock::now() + timeout;
  std::string last = "no answer";
  while (Clock::now() < deadline) {
    DieIfExited("while starting");
    ControlClient c;
    if (c.Connect(options_.socket).ok()) {
      auto st = c.Call(json{{"op", "status"}}, 2000);
      if (st.ok()) {
        if (ready(st.value())) return;
        last = st.value().dump();
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  Die("digestd did not report %s within %.0f s (last status: %s); its log:\n%s", what.c_str(),
      Seconds(timeout), last.substr(0, 600).c_str(), Tail().c_str());
}

void Daemon::DieIfExited(const char* when) {
  if (pid_ <= 0) return;
  if (auto st = WaitExit(pid_, Clock::duration::zero())) {
    pid_ = -1;
    Die("digestd ended %s (%s); its log:\n%s", when, DescribeExit(*st).c_str(), Tail().c_str());
  }
}

json Daemon::Call(const json& request, int timeout_ms) const {
  ControlClient c;
  Connect(c, options_.socket);
  auto answer = c.Call(request, timeout_ms);
  if (!answer.ok()) {
    Die("%s: %s", request.dump().substr(0, 80).c_str(), answer.status().message().c_str());
  }
  return std::move(answer).value();
}

Daemon::Exit Daemon::Stop(Clock::duration timeout) {
  if (pid_ <= 0) Die("digestd stopped but not running");
  Exit out;
  auto t0 = Clock::now();
  kill(pid_, SIGTERM);
  auto st = WaitExit(pid_, timeout);
  out.took = Clock::now() - t0;
  if (!st) {
    Die("digestd did not exit within %.0f s of SIGTERM; its log:\n%s", Seconds(timeout),
        Tail().c_str());
  }
  pid_ = -1;
  out.status = *st;
  if (options_.notify != nullptr) options_.notify->StopDraining();
  return out;
}

void Connect(ControlClient& c, const std::string& socket) {
  Status st = c.Connect(socket);
  if (!st.ok()) Die("%s", st.message().c_str());
}

std::string CallLine(ControlClient& c, const std::string& line, int timeout_ms) {
  Status st = c.SendLine(line);
  if (!st.ok()) Die("%s", st.message().c_str());
  auto answer = c.ReadLine(timeout_ms);
  if (!answer.ok()) Die("%s", answer.status().message().c_str());
  if (answer.value().find("\"ok\":true") == std::string::npos) {
    Die("digestd refused %s: %s", line.substr(0, 80).c_str(),
        answer.value().substr(0, 300).c_str());
  }
  return std::move(answer).value();
}

json CallJson(ControlClient& c, const std::string& line, int timeout_ms) {
  json j = json::parse(CallLine(c, line, timeout_ms), nullptr, false);
  if (j.is_discarded()) Die("digestd's answer to %s is not JSON", line.substr(0, 80).c_str());
  return j;
}

// ------------------------------------------------------------- PostgreSQL

BlockingPg::BlockingPg(const std::string& conninfo) : session_(conninfo) {
  if (!session_.status().ok()) {
    Die("cannot connect to PostgreSQL (%s): %s; run under scripts/pg-throwaway run, or pass "
        "--conninfo",
        conninfo.c_str(), session_.status().message().c_str());
  }
}

BlockingPg::Rows BlockingPg::Exec(const std::string& sql) {
  auto rows = session_.Exec(sql);
  if (!rows.ok()) Die("%s", rows.status().message().c_str());
  return std::move(rows).value();
}

std::string BlockingPg::Scalar(const std::string& sql) {
  Rows rows = Exec(sql);
  return rows.empty() || rows.front().empty() ? "" : rows.front().front();
}

long WaitDoneKeys(BlockingPg& c, int timeout_ms) {
  pollfd p{PQsocket(c.get()), POLLIN, 0};
  ::poll(&p, 1, timeout_ms);
  if (PQconsumeInput(c.get()) != 1) Die("LISTEN connection: %s", PQerrorMessage(c.get()));
  long keys = 0;
  while (PGnotify* n = PQnotifies(c.get())) {
    json a = json::parse(n->extra, nullptr, false);
    if (a.is_array()) keys += static_cast<long>(a.size());
    PQfreemem(n);
  }
  return keys;
}

// ---------------------------------------------------------------- figures

double Seconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

double Ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

Summary Summarize(std::vector<double> v) {
  Summary s;
  s.n = v.size();
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  auto rank = [&](double p) {
    return v[std::min(static_cast<size_t>(p * static_cast<double>(v.size())), v.size() - 1)];
  };
  s.p50 = rank(0.50);
  s.p99 = rank(0.99);
  s.min = v.front();
  s.max = v.back();
  return s;
}

double Field(const json& j, const char* pointer) {
  try {
    const json& v = j.at(json::json_pointer(pointer));
    return v.is_number() ? v.get<double>() : -1;
  } catch (const json::exception&) {
    return -1;
  }
}

}  // namespace digestd::bench
