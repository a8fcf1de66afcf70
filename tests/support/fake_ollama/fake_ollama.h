// FakeOllama: an in-process fake of the Ollama HTTP server for digestd's
// integration tests and benchmarks. It speaks Ollama's native API (the
// behaviour docs/operations.md, "Ollama", lists: streams, error bodies, busy
// answers, model loads) closely enough that a client cannot tell it from the
// real server, plus a control API for tests:
//
//   GET  /_fake/stats     counters (see FakeStats) as JSON; "models" holds
//                         each model's capacity and counters (ModelStats)
//   GET  /_fake/prompts   {"<prompt>": N, …}: generation requests received per
//                         prompt (FakeApi::PromptCounts), faults included
//   GET  /_fake/settings  current Settings as JSON
//   POST /_fake/settings  merge a JSON object of Settings fields (fake_settings.h);
//                         400 {"error":…} on a bad field, else the new settings
//   POST /_fake/reset     counters and settings back to the start, models unloaded
//
// Requests to /_fake/* are not counted in requests_total/requests_by_path and
// are never subject to fail_next; their TCP connections are counted.
//
// HTTP: libmicrohttpd, one thread per connection (so the API code may block
// while a request waits for a slot, a load or its first token), loopback
// only, up to kConnectionLimit connections, HTTP/1.1 keep-alive, no timeouts.
// Queueing follows Ollama's per-model slots with a single pending queue; see
// fake_scheduler.h for exactly how it differs. The timing fields of the
// answers account for the time really spent (fake_api.h).
//
// Ownership and threads: construct, Start() and Stop() from one thread (the
// test's). Settings, stats and Reset may be used from any thread while the
// server runs. Stop() wakes every waiting or stalled request, closes all
// connections and joins MHD's threads before it returns; the destructor
// calls Stop().
#ifndef DIGESTD_TESTS_SUPPORT_FAKE_OLLAMA_FAKE_OLLAMA_H_
#define DIGESTD_TESTS_SUPPORT_FAKE_OLLAMA_FAKE_OLLAMA_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fake_api.h"
#include "fake_content.h"
#include "fake_scheduler.h"
#include "fake_settings.h"

struct MHD_Daemon;

namespace digestd::testing {

struct FakeStats {
  uint64_t connections_accepted = 0;  // TCP connections accepted (keep-alive reuse shows here)
  int connections_open = 0;           // currently open (not reset by Reset())
  uint64_t requests_total = 0;        // HTTP requests, /_fake/* excluded
  std::map<std::string, uint64_t> requests_by_path;
  int in_flight = 0;               // requests holding a slot, all models
  int max_in_flight_observed = 0;  // since start / last reset, all models together
  int queued = 0;                  // requests waiting for a load or a slot
  int max_queued_observed = 0;
  uint64_t rejected_503 = 0;  // queue overflows
  // Requests whose HTTP exchange ended because the client hung up, at any
  // point (waiting, generating, or while the answer was being sent). The
  // two counters below split out the hang-ups the server's work noticed.
  uint64_t disconnects = 0;
  uint64_t aborted_by_client = 0;  // client hung up while the request held a slot
  uint64_t abandoned_waiting = 0;  // client hung up while it waited for a load or a slot
  int64_t slot_wait_ns = 0;        // total time admitted requests waited for a slot
  uint64_t loads = 0;              // model loads started
  std::vector<FakeScheduler::ModelStats> models;  // per model asked for, by name
};

nlohmann::json StatsToJson(const FakeStats& s);

class FakeOllama {
 public:
  static constexpr unsigned kConnectionLimit = 2048;
  static constexpr std::size_t kMaxBodyBytes = 64 << 20;  // larger bodies get 413

  explicit FakeOllama(Settings initial = Settings());
  ~FakeOllama();
  FakeOllama(const FakeOllama&) = delete;
  FakeOllama& operator=(const FakeOllama&) = delete;

  // Listens on 127.0.0.1:`port` (0 = an ephemeral port). Returns the bound
  // port, or 0 when listening failed (last_error() says why). May be called
  // again after Stop().
  [[nodiscard]] int Start(uint16_t port = 0);
  // Idempotent. Returns promptly even with stalled or queued requests.
  void Stop();

  int port() const { return port_; }
  std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  const std::string& last_error() const { return error_; }

  Settings GetSettings() const { return settings_.Get(); }
  void SetSettings(Settings s);
  // Same as POST /_fake/settings. Returns "" or what was wrong (nothing changed).
  [[nodiscard]] std::string MergeSettings(const nlohmann::json& patch);
  FakeStats GetStats() const;
  // Same as GET /_fake/prompts.
  std::map<std::string, uint64_t> PromptCounts() const { return api_.PromptCounts(); }
  // Same as POST /_fake/reset.
  void Reset();

 private:
  friend struct FakeOllamaGlue;  // the MHD callbacks, in fake_ollama.cpp

  struct DaemonDeleter {
    void operator()(MHD_Daemon* d) const;
  };

  void ApplyLimits();
  void CountRequest(const std::string& path);

  SettingsStore settings_;
  FakeScheduler scheduler_;
  FakeApi api_{&settings_, &scheduler_};
  std::unique_ptr<MHD_Daemon, DaemonDeleter> daemon_;  // null when stopped
  int port_ = 0;
  std::string error_;

  // Written by MHD threads, read by anyone.
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> connections_accepted_{0};
  std::atomic<int> connections_open_{0};
  std::atomic<uint64_t> disconnects_{0};
  mutable std::mutex counts_mu_;
  uint64_t requests_total_ = 0;                       // guarded by counts_mu_
  std::map<std::string, uint64_t> requests_by_path_;  // guarded by counts_mu_
};

}  // namespace digestd::testing

#endif  // DIGESTD_TESTS_SUPPORT_FAKE_OLLAMA_FAKE_OLLAMA_H_
