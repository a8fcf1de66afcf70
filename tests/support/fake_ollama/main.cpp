// fake_ollama: runs FakeOllama as a standalone process for integration tests
// and benchmarks that start digestd against it.
//
//   fake_ollama [--port N] [--port-file PATH] [--parallel C] [--embed-parallel C]
//               [--max-queue Q] [--token-ms MS] [--tokens N] [--latency-ms MS]
//               [--load-ms MS] [--models a,b] [--embed-dims D]
//
// Listens on 127.0.0.1 until SIGTERM or SIGINT, then exits 0. Exit 1 when it
// cannot listen or write the port file, 2 on a bad command line. Settings
// change at runtime through POST /_fake/settings (see fake_ollama.h).
//
// Threads: main only parses flags, starts the server and waits in sigwait();
// SIGTERM/SIGINT are blocked before any thread exists, so only sigwait sees
// them.
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "fake_ollama.h"

namespace digestd::testing {
namespace {

constexpr const char* kUsage =
    "usage: fake_ollama [options]\n"
    "  --port N          port on 127.0.0.1; 0 picks a free port (default 0)\n"
    "  --port-file PATH  write the bound port there once listening (atomic rename)\n"
    "  --parallel C      requests each generation model serves at once (default 1)\n"
    "  --embed-parallel C  requests each embedding model serves at once (default 1)\n"
    "  --max-queue Q     waiting requests before 503 (default 512)\n"
    "  --token-ms MS     delay per streamed token (default 0)\n"
    "  --tokens N        tokens per generation (default 8)\n"
    "  --latency-ms MS   delay before the first byte of each request (default 0)\n"
    "  --load-ms MS      model load time on first use (default 0)\n"
    "  --models LIST     known models, comma separated (default llama3.2,nomic-embed-text)\n"
    "  --embed-dims D    embedding length (default 8)\n";

struct Options {
  uint16_t port = 0;
  std::string port_file;
  Settings settings;
};

std::optional<long long> ParseInt(const std::string& text, long long lo, long long hi) {
  if (text.empty()) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (errno != 0 || *end != '\0' || v < lo || v > hi) return std::nullopt;
  return v;
}

std::vector<std::string> SplitModels(const std::string& list) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= list.size()) {
    std::size_t comma = list.find(',', start);
    if (comma == std::string::npos) comma = list.size();
    std::string name = list.substr(start, comma - start);
    name.erase(0, name.find_first_not_of(" \t"));
    name.erase(name.find_last_not_of(" \t") + 1);
    if (!name.empty()) out.push_back(name);
    start = comma + 1;
  }
  return out;
}

// Returns an error message, or "" when `*opts` is filled.
std::string ParseArgs(int argc, char** argv, Options* opts) {
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    std::string value;
    const std::size_t eq = flag.find('=');
    if (flag == "--help" || flag == "-h") return "help";
    if (eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag.resize(eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return flag + " needs a value";
    }
    auto number = [&](long long lo, long long hi, auto* out) -> std::string {
      std::optional<long long> v = ParseInt(value, lo, hi);
      if (!v) {
        return flag + " " + value + ": expected an integer in " + std::to_string(lo) + ".." +
               std::to_string(hi);
      }
      *out = static_cast<std::remove_pointer_t<decltype(out)>>(*v);
      return "";
    };
    constexpr long long kMaxMs = 24LL * 3600 * 1000;
    Settings& s = opts->settings;
    std::string err;
    if (flag == "--port")
      err = number(0, 65535, &opts->port);
    else if (flag == "--port-file")
      opts->port_file = value;
    else if (flag == "--parallel")
      err = number(1, 4096, &s.parallel);
    else if (flag == "--embed-parallel")
      err = number(1, 4096, &s.embed_parallel);
    else if (flag == "--max-queue")
      err = number(0, 1 << 20, &s.max_queue);
    else if (flag == "--token-ms")
      err = number(0, kMaxMs, &s.token_ms);
    else if (flag == "--tokens")
      err = number(0, 1 << 20, &s.tokens);
    else if (flag == "--latency-ms")
      err = number(0, kMaxMs, &s.latency_ms);
    else if (flag == "--load-ms")
      err = number(0, kMaxMs, &s.load_ms);
    else if (flag == "--embed-dims")
      err = number(1, 1 << 16, &s.embed_dims);
    else if (flag == "--models") {
      s.models = SplitModels(value);
      if (s.models.empty()) err = "--models needs at least one model name";
    } else {
      err = "unknown flag " + flag;
    }
    if (!err.empty()) return err;
  }
  return "";
}

bool WritePortFile(const std::string& path, int port, std::string* error) {
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << port << "\n";
    out.flush();
    if (!out) {
      *error = "cannot write " + tmp + ": " + std::strerror(errno);
      return false;
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    *error = "cannot rename " + tmp + " to " + path + ": " + std::strerror(errno);
    std::remove(tmp.c_str());
    return false;
  }
  return true;
}

// Hundreds of concurrent connections need more descriptors than the usual
// soft limit of 1024.
void RaiseFileLimit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

int Run(int argc, char** argv) {
  Options opts;
  const std::string err = ParseArgs(argc, argv, &opts);
  if (err == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (!err.empty()) {
    std::fprintf(stderr, "fake_ollama: %s\n%s", err.c_str(), kUsage);
    return 2;
  }
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);  // inherited by MHD's threads
  signal(SIGPIPE, SIG_IGN);
  RaiseFileLimit();

  FakeOllama fake(opts.settings);
  const int port = fake.Start(opts.port);
  if (port == 0) {
    std::fprintf(stderr, "fake_ollama: %s\n", fake.last_error().c_str());
    return 1;
  }
  std::string write_error;
  if (!opts.port_file.empty() && !WritePortFile(opts.port_file, port, &write_error)) {
    std::fprintf(stderr, "fake_ollama: %s\n", write_error.c_str());
    return 1;
  }
  std::fprintf(stderr, "fake_ollama: listening on 127.0.0.1:%d\n", port);
  int sig = 0;
  while (sigwait(&stop_signals, &sig) != 0) {
  }
  fake.Stop();
  std::fprintf(stderr, "fake_ollama: stopped by signal %d\n", sig);
  return 0;
}

}  // namespace
}  // namespace digestd::testing

int main(int argc, char** argv) {
  return digestd::testing::Run(argc, argv);
}
