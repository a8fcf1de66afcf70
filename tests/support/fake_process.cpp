#include "fake_process.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>

namespace digestd::testing {

using nlohmann::json;

namespace {

size_t AppendBody(char* data, size_t size, size_t n, void* user) {
  static_cast<std::string*>(user)->append(data, size * n);
  return size * n;
}

}  // namespace

std::optional<HttpAnswer> Http(const std::string& method, const std::string& url,
                               const std::string& body) {
  CURL* curl = curl_easy_init();
  if (curl == nullptr) return std::nullopt;
  HttpAnswer answer;
  curl_slist* headers = curl_slist_append(nullptr, "Content-Type: application/json");
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 10000L);
  curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &AppendBody);
  curl_easy_setopt(curl, CURLOPT_WRITEDATA, &answer.body);
  if (method == "POST") {
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.c_str());
  }
  CURLcode rc = curl_easy_perform(curl);
  if (rc == CURLE_OK) curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &answer.status);
  curl_slist_free_all(headers);
  curl_easy_cleanup(curl);
  if (rc != CURLE_OK) return std::nullopt;
  return answer;
}

FakeServer::~FakeServer() {
  Kill();
}

::testing::AssertionResult FakeServer::Start(const std::vector<std::string>& flags, int port) {
  if (pid_ > 0) return ::testing::AssertionFailure() << "the fake is already running";
  const std::string port_file = dir_.File("port");
  std::remove(port_file.c_str());
  std::vector<std::string> args = {FAKE_OLLAMA_BIN, "--port", std::to_string(port), "--port-file",
                                   port_file};
  args.insert(args.end(), flags.begin(), flags.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string log = dir_.File("fake.log");
  int log_fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return ::testing::AssertionFailure() << "cannot open " << log;
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a crashed test
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(log_fd);
  if (pid < 0) return ::testing::AssertionFailure() << "fork failed";
  pid_ = pid;
  bool up = WaitFor([&] { return PathExists(port_file) || !Running(); });
  if (!up || !Running()) {
    return ::testing::AssertionFailure() << "fake_ollama did not start:\n" << ReadTextFile(log);
  }
  port_ = std::stoi(ReadTextFile(port_file));
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult FakeServer::Stop() {
  if (pid_ <= 0) return ::testing::AssertionSuccess();
  kill(pid_, SIGTERM);
  int status = 0;
  bool gone = WaitFor([&] { return waitpid(pid_, &status, WNOHANG) == pid_; });
  if (!gone) {
    Kill();
    return ::testing::AssertionFailure() << "fake_ollama ignored SIGTERM";
  }
  pid_ = -1;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return ::testing::AssertionFailure() << "fake_ollama exited with status " << status;
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult FakeServer::Set(const json& patch) {
  ++control_calls_;
  auto answer = Http("POST", url() + "/_fake/settings", patch.dump());
  if (!answer || answer->status != 200) {
    return ::testing::AssertionFailure()
           << "POST /_fake/settings " << patch.dump() << " -> "
           << (answer ? std::to_string(answer->status) + " " + answer->body : "no answer");
  }
  return ::testing::AssertionSuccess();
}

json FakeServer::Stats() {
  ++control_calls_;
  auto answer = Http("GET", url() + "/_fake/stats");
  if (!answer || answer->status != 200) return json::object();
  json stats = json::parse(answer->body, nullptr, false);
  return stats.is_object() ? stats : json::object();
}

uint64_t FakeServer::Requests(const std::string& path) {
  json stats = Stats();
  auto by_path = stats.find("requests_by_path");
  if (by_path == stats.end() || !by_path->is_object()) return 0;
  return by_path->value(path, uint64_t{0});
}

std::optional<std::map<std::string, uint64_t>> FakeServer::Prompts() {
  ++control_calls_;
  auto answer = Http("GET", url() + "/_fake/prompts");
  if (!answer || answer->status != 200) return std::nullopt;
  json counts = json::parse(answer->body, nullptr, false);
  if (!counts.is_object()) return std::nullopt;
  std::map<std::string, uint64_t> out;
  for (const auto& [prompt, n] : counts.items()) {
    if (n.is_number_unsigned()) out[prompt] = n.get<uint64_t>();
  }
  return out;
}

int64_t FakeServer::ForeignConnections() {
  json s = Stats();
  return static_cast<int64_t>(s.value("connections_accepted", uint64_t{0})) - control_calls_;
}

bool FakeServer::Running() {
  if (pid_ <= 0) return false;
  int status = 0;
  if (waitpid(pid_, &status, WNOHANG) == pid_) {
    pid_ = -1;
    return false;
  }
  return true;
}

void FakeServer::Kill() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }
}

}  // namespace digestd::testing
