#include "fake_process.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <deque>
#include <fstream>
#include <thread>

namespace digestd::testing {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

size_t Append(char* data, size_t size, size_t n, void* user) {
  static_cast<std::string*>(user)->append(data, size * n);
  return size * n;
}

std::string Tail(const std::string& path, size_t lines = 20) {
  std::ifstream in(path);
  std::deque<std::string> last;
  for (std::string line; std::getline(in, line);) {
    last.push_back(line);
    if (last.size() > lines) last.pop_front();
  }
  std::string out;
  for (const auto& line : last) out += line + "\n";
  return out.empty() ? "(the log is empty)\n" : out;
}

// Polls `done` every 5 ms until it is true or `limit` has passed.
template <typename F>
bool Poll(F done, std::chrono::milliseconds limit) {
  const auto end = Clock::now() + limit;
  while (!done()) {
    if (Clock::now() >= end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

}  // namespace

FakeOllamaProcess::~FakeOllamaProcess() {
  Kill();
  if (control_ != nullptr) curl_easy_cleanup(control_);
  if (!own_dir_.empty()) {
    std::remove((own_dir_ + "/fake.port").c_str());
    std::remove((own_dir_ + "/fake.log").c_str());
    rmdir(own_dir_.c_str());
  }
}

std::string FakeOllamaProcess::Start(const std::string& binary, const std::string& dir,
                                     const std::vector<std::string>& flags, int port) {
  if (pid_ > 0) return "the fake is already running";
  std::string where = dir;
  if (where.empty()) {
    if (own_dir_.empty()) {
      char temp[] = "/tmp/fake-ollama-XXXXXX";
      if (mkdtemp(temp) == nullptr) return "cannot make a directory under /tmp for the fake";
      own_dir_ = temp;
    }
    where = own_dir_;
  }
  const std::string port_file = where + "/fake.port";
  log_ = where + "/fake.log";
  std::remove(port_file.c_str());
  std::vector<std::string> args = {binary, "--port", std::to_string(port), "--port-file",
                                   port_file};
  args.insert(args.end(), flags.begin(), flags.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const int log_fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return "cannot open " + log_ + " for the fake's log";
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a crashed test
    const int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, STDIN_FILENO);
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(log_fd);
  if (pid < 0) return "fork failed";
  pid_ = pid;
  int got = 0;
  const bool up = Poll(
      [&] {
        std::ifstream in(port_file);
        if (in >> got && got > 0) return true;
        return !Running();
      },
      std::chrono::seconds(10));
  if (!up || !Running() || got <= 0) {
    Kill();
    return "fake_ollama (" + binary + ") did not start; its log:\n" + Tail(log_);
  }
  port_ = got;
  return "";
}

std::string FakeOllamaProcess::Stop() {
  if (pid_ <= 0) return "";
  kill(pid_, SIGTERM);
  int status = 0;
  const bool gone =
      Poll([&] { return waitpid(pid_, &status, WNOHANG) == pid_; }, std::chrono::seconds(10));
  if (!gone) {
    Kill();
    return "fake_ollama ignored SIGTERM for 10 s and was killed";
  }
  pid_ = -1;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return "fake_ollama exited with wait status " + std::to_string(status) + "; its log:\n" +
           Tail(log_);
  }
  return "";
}

void FakeOllamaProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

bool FakeOllamaProcess::Running() {
  if (pid_ <= 0) return false;
  if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
    pid_ = -1;
    return false;
  }
  return true;
}

std::string FakeOllamaProcess::url() const {
  return "http://127.0.0.1:" + std::to_string(port_);
}

std::string FakeOllamaProcess::Call(const std::string& method, const std::string& path,
                                    const json& body, json* answer) {
  if (control_ == nullptr) control_ = curl_easy_init();
  if (control_ == nullptr) return "curl_easy_init failed";
  std::string out;
  const std::string text = body.is_null() ? "" : body.dump();
  curl_slist* headers = curl_slist_append(nullptr, "Content-Type: application/json");
  curl_easy_reset(control_);
  curl_easy_setopt(control_, CURLOPT_URL, (url() + path).c_str());
  curl_easy_setopt(control_, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(control_, CURLOPT_TIMEOUT_MS, 10000L);
  curl_easy_setopt(control_, CURLOPT_WRITEFUNCTION, &Append);
  curl_easy_setopt(control_, CURLOPT_WRITEDATA, &out);
  if (method == "POST") {
    curl_easy_setopt(control_, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(control_, CURLOPT_POST, 1L);
    curl_easy_setopt(control_, CURLOPT_POSTFIELDS, text.c_str());
    curl_easy_setopt(control_, CURLOPT_POSTFIELDSIZE, static_cast<long>(text.size()));
  }
  const CURLcode rc = curl_easy_perform(control_);
  long status = 0;
  long connects = 0;
  curl_easy_getinfo(control_, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_getinfo(control_, CURLINFO_NUM_CONNECTS, &connects);
  curl_slist_free_all(headers);
  control_connections_ += connects;
  const std::string what = method + " " + path + (text.empty() ? "" : " " + text);
  if (rc != CURLE_OK) return what + ": no answer (" + curl_easy_strerror(rc) + ")";
  if (answer != nullptr) *answer = json::parse(out, nullptr, false);
  if (status != 200) return what + " -> " + std::to_string(status) + " " + out;
  return "";
}

std::string FakeOllamaProcess::Set(const json& patch) {
  return Call("POST", "/_fake/settings", patch, nullptr);
}

std::string FakeOllamaProcess::Reset() {
  std::string failed = Call("POST", "/_fake/reset", json::object(), nullptr);
  // The reset zeroed connections_accepted, this handle's connection included.
  if (failed.empty()) control_connections_ = 0;
  return failed;
}

json FakeOllamaProcess::Stats() {
  json stats;
  if (!Call("GET", "/_fake/stats", nullptr, &stats).empty() || !stats.is_object()) {
    return json::object();
  }
  return stats;
}

uint64_t FakeOllamaProcess::Requests(const std::string& path) {
  json stats = Stats();
  auto by_path = stats.find("requests_by_path");
  if (by_path == stats.end() || !by_path->is_object()) return 0;
  return by_path->value(path, uint64_t{0});
}

int64_t FakeOllamaProcess::ForeignConnections() {
  json s = Stats();
  return static_cast<int64_t>(s.value("connections_accepted", uint64_t{0})) - control_connections_;
}

}  // namespace digestd::testing
