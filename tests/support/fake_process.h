// FakeServer: the fake Ollama (tests/support/fake_ollama) as a child process
// of the test, the way digestd meets a real Ollama: another process on a TCP
// port. The test drives it through its control endpoints (fake_ollama.h):
// settings for faults, latency and capacity, counters, and the requests it
// received per prompt. Used by the backend end-to-end tests and the chaos
// suite.
//
// Threads: one FakeServer is driven from one thread at a time; every HTTP
// call opens a connection of its own, so two threads may each use their own
// FakeServer for the same port. Http() may be called from any thread.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "daemon_harness.h"

namespace digestd::testing {

struct HttpAnswer {
  long status = 0;
  std::string body;
};

// One request with a fresh curl handle (so exactly one TCP connection);
// nullopt when no answer came within 10 s.
std::optional<HttpAnswer> Http(const std::string& method, const std::string& url,
                               const std::string& body = "");

class FakeServer {
 public:
  FakeServer() = default;
  // Kills a fake still running with SIGKILL.
  ~FakeServer();
  FakeServer(const FakeServer&) = delete;
  FakeServer& operator=(const FakeServer&) = delete;

  // Starts fake_ollama with `flags` (its command-line options) on `port`
  // (0: any free port) and waits until it listens.
  ::testing::AssertionResult Start(const std::vector<std::string>& flags, int port = 0);
  // SIGTERM, then waits for the exit. The port stays known for a restart.
  ::testing::AssertionResult Stop();

  int port() const { return port_; }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

  // Merges `patch` into the fake's settings (fake_settings.h names).
  ::testing::AssertionResult Set(const nlohmann::json& patch);
  // GET /_fake/stats; an empty object when the fake does not answer.
  nlohmann::json Stats();
  // Requests to `path` so far (GET /_fake/stats, requests_by_path).
  uint64_t Requests(const std::string& path);
  // Generation requests received per prompt (GET /_fake/prompts); nullopt
  // when the fake does not answer.
  std::optional<std::map<std::string, uint64_t>> Prompts();
  // TCP connections the fake accepted from anyone but this object (the
  // stats call made here included).
  int64_t ForeignConnections();

 private:
  bool Running();
  void Kill();

  TempDir dir_;
  pid_t pid_ = -1;
  int port_ = 0;
  int64_t control_calls_ = 0;  // HTTP calls (= connections) this object made
};

}  // namespace digestd::testing
