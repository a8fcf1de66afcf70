#include "daemon_harness.h"

#include <fcntl.h>
#include <linux/sockios.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <toml++/toml.h>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "client/control_client.h"
#include "pg_fixture.h"

extern char** environ;

namespace digestd::testing {

namespace {

// systemd's SD_LISTEN_FDS_START: the first fd passed by socket activation.
constexpr int kListenFdsStart = 3;

// Variables the daemon must not inherit from whatever ran the tests.
constexpr const char* kScrubbed[] = {"NOTIFY_SOCKET",  "LISTEN_FDS",    "LISTEN_PID",
                                     "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID",
                                     "JOURNAL_STREAM", "DIGESTD_SOCKET"};

bool Scrubbed(const char* entry) {
  for (const char* name : kScrubbed) {
    size_t n = std::strlen(name);
    if (std::strncmp(entry, name, n) == 0 && entry[n] == '=') return true;
  }
  return false;
}

// The environment for a child: ours without the scrubbed variables, plus
// `extra`, in storage that outlives the fork.
std::vector<std::string> ChildEnv(const std::vector<std::string>& extra) {
  std::vector<std::string> out;
  for (char** e = environ; *e != nullptr; ++e) {
    if (!Scrubbed(*e)) out.emplace_back(*e);
  }
  for (const auto& e : extra) out.push_back(e);
  return out;
}

std::vector<char*> Pointers(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// Writes `value` in decimal after `prefix` into `buf`; async-signal-safe, for
// use between fork and exec.
void FormatPid(char* buf, size_t prefix_len, pid_t value) {
  char digits[16];
  int n = 0;
  auto v = static_cast<unsigned long>(value);
  do {
    digits[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  char* p = buf + prefix_len;
  while (n > 0) *p++ = digits[--n];
  *p = '\0';
}

void ChildFail(const char* what) {
  // Async-signal-safe: write(2) only.
  const char* why = std::strerror(errno);
  ssize_t ignored = write(STDERR_FILENO, what, std::strlen(what));
  ignored = write(STDERR_FILENO, ": ", 2);
  ignored = write(STDERR_FILENO, why, std::strlen(why));
  ignored = write(STDERR_FILENO, "\n", 1);
  (void)ignored;
  _exit(127);
}

std::optional<ExitStatus> Reap(pid_t pid, std::chrono::milliseconds timeout) {
  std::optional<ExitStatus> out;
  WaitFor(
      [&] {
        int status = 0;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) {
          out = ExitStatus{status};
          return true;
        }
        return r < 0;  // not our child (already reaped): stop waiting
      },
      timeout);
  return out;
}

}  // namespace

TempDir::TempDir() {
  char tmpl[] = "/tmp/dgt.XXXXXX";
  if (mkdtemp(tmpl) == nullptr) {
    ADD_FAILURE() << "mkdtemp: " << std::strerror(errno);
    return;
  }
  path_ = tmpl;
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string TempDir::File(std::string_view name) const {
  return path_ + "/" + std::string(name);
}

std::string ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

bool WriteTextFile(const std::string& path, std::string_view text) {
  // Write a new file and rename it over the old one, so a daemon reading the
  // file (on SIGHUP) never sees half of it.
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return false;
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    if (!out) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

bool PathExists(const std::string& path) {
  struct stat st {};
  return lstat(path.c_str(), &st) == 0;
}

std::vector<std::string> SplitLines(std::string_view text) {
  std::vector<std::string> out;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    out.emplace_back(text.substr(0, nl));
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
  return out;
}

std::string FindProgram(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  std::string dirs = path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin";
  std::istringstream in(dirs);
  std::string dir;
  while (std::getline(in, dir, ':')) {
    std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

bool ExitStatus::exited() const {
  return WIFEXITED(raw);
}
int ExitStatus::code() const {
  return WEXITSTATUS(raw);
}
bool ExitStatus::signaled() const {
  return WIFSIGNALED(raw);
}
int ExitStatus::signal() const {
  return WTERMSIG(raw);
}

std::string ExitStatus::ToString() const {
  if (exited()) return "exit " + std::to_string(code());
  if (signaled()) return "killed by signal " + std::to_string(signal());
  return "status " + std::to_string(raw);
}

ProcessOutput RunProcess(const std::vector<std::string>& argv, std::chrono::milliseconds timeout,
                         const std::vector<std::string>& env, int uid) {
  ProcessOutput result;
  TempDir dir;
  std::string out_path = dir.File("out");
  std::string err_path = dir.File("err");
  std::vector<std::string> args = argv;
  args[0] = FindProgram(args[0]);
  if (args[0].empty()) {
    result.err = "program not found: " + argv[0];
    return result;
  }
  auto arg_ptrs = Pointers(args);
  auto env_strings = ChildEnv(env);
  auto env_ptrs = Pointers(env_strings);
  int out_fd = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int err_fd = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (out_fd < 0 || err_fd < 0 || null_fd < 0) {
    result.err = std::string("cannot open capture files: ") + std::strerror(errno);
    return result;
  }
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (dup2(null_fd, STDIN_FILENO) < 0 || dup2(out_fd, STDOUT_FILENO) < 0 ||
        dup2(err_fd, STDERR_FILENO) < 0) {
      ChildFail("dup2");
    }
    if (uid >= 0 &&
        (setgid(static_cast<gid_t>(uid)) != 0 || setuid(static_cast<uid_t>(uid)) != 0)) {
      ChildFail("setuid");
    }
    execve(arg_ptrs[0], arg_ptrs.data(), env_ptrs.data());
    ChildFail("execve");
  }
  close(out_fd);
  close(err_fd);
  close(null_fd);
  if (pid < 0) {
    result.err = std::string("fork: ") + std::strerror(errno);
    return result;
  }
  result.status = Reap(pid, timeout);
  if (!result.status) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  result.out = ReadTextFile(out_path);
  result.err = ReadTextFile(err_path);
  return result;
}

int BindUnixSocket(const std::string& path, bool listen) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) {
    errno = ENAMETOOLONG;
    return -1;
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      (listen && ::listen(fd, 128) != 0)) {
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
  }
  return fd;
}

bool MakeStaleSocket(const std::string& path) {
  int fd = BindUnixSocket(path, false);
  if (fd < 0) return false;
  close(fd);
  return true;
}

int UnreadBytes(int fd) {
  int n = 0;
  return ioctl(fd, SIOCOUTQ, &n) == 0 ? n : -1;
}

Status SendByteByByte(int fd, std::string_view data, std::chrono::milliseconds timeout) {
  for (char c : data) {
    if (send(fd, &c, 1, MSG_NOSIGNAL) != 1) {
      return Status::IoError(std::string("send: ") + std::strerror(errno));
    }
    if (!WaitFor([&] { return UnreadBytes(fd) == 0; }, timeout)) {
      return Status::Unavailable("the peer stopped reading");
    }
  }
  return Status::Ok();
}

namespace {
std::string ErrorField(const nlohmann::json& answer, const char* field) {
  if (!answer.is_object()) return "";
  auto error = answer.find("error");
  if (error == answer.end() || !error->is_object()) return "";
  auto value = error->find(field);
  return value != error->end() && value->is_string() ? value->get<std::string>() : "";
}
}  // namespace

std::string ErrorCode(const nlohmann::json& answer) {
  return ErrorField(answer, "code");
}
std::string ErrorMessage(const nlohmann::json& answer) {
  return ErrorField(answer, "message");
}

Result<nlohmann::json> CallOnce(const std::string& socket_path, const nlohmann::json& request,
                                int timeout_ms) {
  ControlClient client;
  Status st = client.Connect(socket_path);
  if (!st.ok()) return st;
  return client.Call(request, timeout_ms);
}

std::string WorkersConfig(int min, int max, int interactive_reserved) {
  return "[workers]\nmin = " + std::to_string(min) + "\nmax = " + std::to_string(max) +
         "\ninteractive_reserved = " + std::to_string(interactive_reserved) + "\n";
}

DaemonProcess::DaemonProcess() = default;

DaemonProcess::~DaemonProcess() {
  if (pid_ > 0 && !exit_) {
    kill(pid_, SIGKILL);
    int status = 0;
    if (waitpid(pid_, &status, 0) == pid_) exit_ = ExitStatus{status};
  }
  StopReader();
}

::testing::AssertionResult DaemonProcess::Failure(const std::string& what) const {
  return ::testing::AssertionFailure() << what << "\n--- digestd stderr ---\n" << StderrText();
}

::testing::AssertionResult DaemonProcess::WriteConfig(const std::string& toml_text) {
  toml::table root;
  try {
    root = toml::parse(std::string_view(toml_text), std::string_view("test config"));
  } catch (const toml::parse_error& e) {
    return ::testing::AssertionFailure() << "the test's config is not TOML: " << e.description();
  }
  if (!root.contains("control")) root.insert("control", toml::table{});
  toml::table* control = root["control"].as_table();
  if (control == nullptr) return ::testing::AssertionFailure() << "control is not a table";
  if (!control->contains("socket")) control->insert("socket", socket_path_);
  // The store: memory unless the test or its suite's parameter says
  // postgres; then a fresh database of its own on the tests' server.
  if (!root.contains("jobs")) root.insert("jobs", toml::table{});
  toml::table* jobs = root["jobs"].as_table();
  if (jobs == nullptr) return ::testing::AssertionFailure() << "jobs is not a table";
  if (!jobs->contains("store")) jobs->insert("store", store_);
  if (store_ == "postgres") {
    if (!root.contains("postgres")) root.insert("postgres", toml::table{});
    toml::table* pg = root["postgres"].as_table();
    if (pg == nullptr) return ::testing::AssertionFailure() << "postgres is not a table";
    if (!pg->contains("conninfo")) {
      if (pg_conninfo_.empty()) {
        std::string why;
        PgServer* server = PgServer::Shared(&why);
        if (server == nullptr) {
          return ::testing::AssertionFailure() << "no PostgreSQL for the test: " << why;
        }
        auto db = server->CreateDatabase();
        if (!db.ok()) {
          return ::testing::AssertionFailure()
                 << "cannot create a database: " << db.status().ToString();
        }
        pg_conninfo_ = server->Conninfo(db.value());
      }
      pg->insert("conninfo", pg_conninfo_);
    }
  }
  std::ostringstream out;
  out << root << "\n";
  if (!WriteConfigRaw(out.str())) {
    return ::testing::AssertionFailure() << "cannot write " << config_path_;
  }
  return ::testing::AssertionSuccess();
}

bool DaemonProcess::WriteConfigRaw(const std::string& text) {
  return WriteTextFile(config_path_, text);
}

bool DaemonProcess::BindNotifySocket(bool pass_cred) {
  notify_path_ = dir_.File("notify.sock");
  notify_fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (notify_fd_ < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, notify_path_.c_str(), sizeof(addr.sun_path) - 1);
  if (bind(notify_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return false;
  if (pass_cred) {
    int one = 1;
    if (setsockopt(notify_fd_, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) != 0) return false;
  }
  stop_fd_ = eventfd(0, EFD_CLOEXEC);
  if (stop_fd_ < 0) return false;
  reader_ = std::thread([this] { ReadNotifications(); });
  return true;
}

void DaemonProcess::ReadNotifications() {
  char buf[8192];
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred))];
  for (;;) {
    pollfd fds[2] = {{notify_fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    int rc = poll(fds, 2, -1);
    if (rc < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[0].revents & POLLIN) {
      iovec iov{buf, sizeof(buf)};
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      ssize_t n = recvmsg(notify_fd_, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
      if (n < 0) continue;
      pid_t sender = 0;
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
          ucred cred{};
          std::memcpy(&cred, CMSG_DATA(c), sizeof(cred));
          sender = cred.pid;
        } else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
          // sd_notify may pass fds (FDSTORE=1); close them, we keep none.
          size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
          for (size_t i = 0; i < count; ++i) {
            int fd;
            std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            close(fd);
          }
        }
      }
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& line : SplitLines(std::string_view(buf, static_cast<size_t>(n)))) {
        if (!line.empty()) messages_.push_back({std::move(line), sender});
      }
      cv_.notify_all();
    }
    if (fds[1].revents & POLLIN) return;
  }
}

void DaemonProcess::StopReader() {
  if (reader_.joinable()) {
    uint64_t one = 1;
    ssize_t ignored = write(stop_fd_, &one, sizeof(one));
    (void)ignored;
    reader_.join();
  }
  if (notify_fd_ >= 0) close(notify_fd_);
  if (stop_fd_ >= 0) close(stop_fd_);
  notify_fd_ = stop_fd_ = -1;
}

::testing::AssertionResult DaemonProcess::Start(DaemonOptions options,
                                                std::chrono::milliseconds timeout) {
  if (pid_ > 0) return ::testing::AssertionFailure() << "Start() called twice";
  if (dir_.path().empty()) return ::testing::AssertionFailure() << "no temp dir";
  socket_path_ = options.socket_path.empty() ? dir_.File("ctl.sock") : options.socket_path;
  config_path_ = dir_.File("digestd.conf");
  store_ = options.store.empty() ? "memory" : options.store;
  if (auto written = WriteConfig(options.config); !written) return written;
  if (!BindNotifySocket(options.pass_cred)) {
    return ::testing::AssertionFailure()
           << "cannot set up the notify socket: " << std::strerror(errno);
  }

  std::vector<std::string> argv;
  for (const auto& w : options.wrapper) argv.push_back(w);
  if (!argv.empty()) {
    std::string found = FindProgram(argv[0]);
    if (found.empty()) return ::testing::AssertionFailure() << argv[0] << " is not installed";
    argv[0] = found;
  }
  argv.push_back(DIGESTD_BIN);
  argv.push_back("--config");
  argv.push_back(config_path_);
  for (const auto& a : options.args) argv.push_back(a);
  auto arg_ptrs = Pointers(argv);

  std::vector<std::string> extra = options.env;
  extra.push_back("NOTIFY_SOCKET=" + notify_path_);
  if (options.watchdog_usec != 0) {
    extra.push_back("WATCHDOG_USEC=" + std::to_string(options.watchdog_usec));
  }
  if (options.listen_fd >= 0) {
    extra.push_back("LISTEN_FDS=1");
    if (!options.listen_fdnames.empty()) {
      extra.push_back("LISTEN_FDNAMES=" + options.listen_fdnames);
    }
  }
  auto env_strings = ChildEnv(extra);
  // LISTEN_PID must be the daemon's own pid, known only after fork: keep a
  // buffer large enough for any pid and fill it in the child.
  constexpr const char kListenPid[] = "LISTEN_PID=";
  std::string listen_pid(sizeof(kListenPid) + 16, '\0');
  std::memcpy(listen_pid.data(), kListenPid, sizeof(kListenPid) - 1);
  if (options.listen_fd >= 0) env_strings.push_back(listen_pid);
  auto env_ptrs = Pointers(env_strings);
  char* listen_pid_buf = options.listen_fd >= 0 ? env_ptrs[env_ptrs.size() - 2] : nullptr;

  int err_fd = open(StderrPath().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int out_fd =
      open(dir_.File("stdout.log").c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (err_fd < 0 || out_fd < 0 || null_fd < 0) {
    return ::testing::AssertionFailure() << "cannot open log files: " << std::strerror(errno);
  }
  int listen_fd = options.listen_fd;

  pid_t pid = fork();
  if (pid == 0) {
    // Only async-signal-safe calls from here to exec: the test is threaded.
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a crashed test
    if (dup2(null_fd, STDIN_FILENO) < 0 || dup2(out_fd, STDOUT_FILENO) < 0 ||
        dup2(err_fd, STDERR_FILENO) < 0) {
      ChildFail("dup2");
    }
    if (listen_fd >= 0) {
      if (listen_fd == kListenFdsStart) {
        if (fcntl(listen_fd, F_SETFD, 0) != 0) ChildFail("fcntl");
      } else if (dup2(listen_fd, kListenFdsStart) < 0) {
        ChildFail("dup2 listen fd");
      }
      FormatPid(listen_pid_buf, sizeof(kListenPid) - 1, getpid());
    }
    execve(arg_ptrs[0], arg_ptrs.data(), env_ptrs.data());
    ChildFail("execve");
  }
  close(err_fd);
  close(out_fd);
  close(null_fd);
  if (pid < 0) return ::testing::AssertionFailure() << "fork: " << std::strerror(errno);
  pid_ = pid;

  if (!options.wait_ready) return ::testing::AssertionSuccess();
  bool ready = false;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!ready && std::chrono::steady_clock::now() < deadline) {
    // Wake now and then to notice a daemon that died before READY=1.
    ready = WaitForMessage("READY=1", std::chrono::milliseconds(100)).has_value();
    if (!ready && !Running()) {
      return Failure("digestd exited before READY=1 (" + exit_->ToString() + ")");
    }
  }
  if (!ready) return Failure("no READY=1 within the deadline");
  return ::testing::AssertionSuccess();
}

void DaemonProcess::Signal(int signum) {
  if (pid_ > 0 && !exit_) kill(pid_, signum);
}

::testing::AssertionResult DaemonProcess::Stop(std::chrono::milliseconds timeout) {
  Signal(SIGTERM);
  auto status = WaitExit(timeout);
  if (!status) return Failure("digestd did not exit after SIGTERM");
  if (!status->exited() || status->code() != 0) {
    return Failure("digestd ended with " + status->ToString() + " after SIGTERM");
  }
  return ::testing::AssertionSuccess();
}

std::optional<ExitStatus> DaemonProcess::WaitExit(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return std::nullopt;
  if (!exit_) exit_ = Reap(pid_, timeout);
  return exit_;
}

bool DaemonProcess::Running() {
  if (pid_ <= 0 || exit_) return false;
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) == pid_) {
    exit_ = ExitStatus{status};
    return false;
  }
  return true;
}

std::string DaemonProcess::WaitForLog(const std::string& needle,
                                      std::chrono::milliseconds timeout) {
  std::string found;
  WaitFor(
      [&] {
        for (const auto& line : SplitLines(StderrText())) {
          if (line.find(needle) != std::string::npos) {
            found = line;
            return true;
          }
        }
        return false;
      },
      timeout);
  return found;
}

std::vector<std::string> DaemonProcess::Messages() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  for (const auto& m : messages_) out.push_back(m.line);
  return out;
}

std::vector<NotifyMessage> DaemonProcess::NotifyMessages() const {
  std::lock_guard<std::mutex> lock(mu_);
  return messages_;
}

size_t DaemonProcess::CountMessages(const std::string& prefix) const {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = 0;
  for (const auto& m : messages_) n += m.line.rfind(prefix, 0) == 0 ? 1 : 0;
  return n;
}

std::optional<size_t> DaemonProcess::WaitForMessage(const std::string& prefix,
                                                    std::chrono::milliseconds timeout,
                                                    size_t from) {
  std::unique_lock<std::mutex> lock(mu_);
  std::optional<size_t> found;
  cv_.wait_for(lock, timeout, [&] {
    for (size_t i = from; i < messages_.size(); ++i) {
      if (messages_[i].line.rfind(prefix, 0) == 0) {
        found = i;
        return true;
      }
    }
    return false;
  });
  return found;
}

Result<nlohmann::json> DaemonProcess::Call(const nlohmann::json& request, int timeout_ms) const {
  return CallOnce(socket_path_, request, timeout_ms);
}

nlohmann::json DaemonProcess::CallOk(const nlohmann::json& request, int timeout_ms) const {
  auto answer = Call(request, timeout_ms);
  EXPECT_TRUE(answer.ok()) << request.dump() << ": " << answer.status().ToString();
  if (!answer.ok()) return nullptr;
  EXPECT_EQ(answer.value()["ok"], true) << request.dump() << " -> " << answer.value().dump();
  return answer.value();
}

void DaemonProcess::SubmitNoop(const std::string& key, int sleep_ms,
                               const std::string& lane) const {
  nlohmann::json answer = CallOk({{"op", "submit"},
                                  {"kind", "noop"},
                                  {"key", key},
                                  {"lane", lane},
                                  {"input", {{"sleep_ms", sleep_ms}}}});
  EXPECT_EQ(answer["existing"], false) << answer.dump();
}

}  // namespace digestd::testing
