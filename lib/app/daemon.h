// Daemon: the composition root. It builds the parts in dependency order
// (config -> job table -> dispatcher -> backend health -> control socket ->
// signals and timers -> store -> systemd notification), runs the loop, and
// tears down in reverse. It holds the lifecycle (running, draining,
// stopping), reads control requests and routes them; what happens to jobs is
// the Store's (store.h): PgStore with [jobs] store = "postgres" (the
// default), MemoryStore with "memory". The mechanisms live in their own
// modules (dispatch/, control/, jobs/, store/, backend/, sys/).
//
// One thread: Run() owns the loop and everything on it. Ownership: the
// Daemon owns every part below; the store is destroyed first, since it
// holds pointers to the others.
#pragma once

#include <uv.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "app/event_hub.h"
#include "app/store.h"
#include "backend/backend_health.h"
#include "config/config.h"
#include "control/control_server.h"
#include "dispatch/dispatcher.h"
#include "jobs/job_table.h"
#include "metrics/metrics_server.h"
#include "sys/notify.h"
#include "util/uv_handle.h"

namespace digestd {

inline constexpr int kThreadPoolHeadroom = 4;  // for libuv's own fs/DNS work

class Daemon {
 public:
  // `config_path` is re-read on reload; empty means built-in defaults.
  Daemon(Config config, std::string config_path);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Runs until shut down. Returns the process exit code: 0 after a clean
  // shutdown, 1 when startup failed (the reason is logged).
  int Run();

 private:
  Status Start();
  Status StartSignalsAndTimers();
  void Teardown();
  void OnReady();

  // Requests (requests.cpp).
  void Handle(Request request, const PeerCred& peer, ControlServer::Reply reply);
  bool Allowed(const PeerCred& peer) const;
  void OpSubmit(const Request& req, const ControlServer::Reply& reply);
  void OpResult(const Request& req, const ControlServer::Reply& reply);
  void OpCancel(const Request& req, const ControlServer::Reply& reply);
  void OpJobs(const Request& req, const ControlServer::Reply& reply);
  void OpRetry(const Request& req, const ControlServer::Reply& reply);
  void OpDelete(const Request& req, const ControlServer::Reply& reply);
  void OpWorkers(const Request& req, const ControlServer::Reply& reply);
  void OpReload(const Request& req, const ControlServer::Reply& reply);
  void OpDrain(const Request& req, const ControlServer::Reply& reply);
  void OpSubscribe(const Request& req, const ControlServer::Reply& reply);
  nlohmann::json StatusJson() const;
  // `hello`: the protocol version, digestd's version, the ops, job kinds
  // and features this daemon has, so a client can check what it talks to.
  nlohmann::json HelloJson() const;
  std::string StatusLine() const;
  std::string MetricsText() const;  // the body of GET /metrics

  // Lifecycle.
  Status Reload(nlohmann::json* changes);
  void ApplyRuntimeConfig();
  void BeginShutdown(const char* why);
  void ForceShutdown(const char* why);
  void FinishShutdown();

  uv_loop_t loop_{};
  bool loop_ready_ = false;
  Config config_;
  std::string config_path_;
  std::string node_id_;
  int pool_size_ = 0;
  uint64_t started_at_ = 0;  // uv_hrtime at start
  Phase phase_ = Phase::kRunning;
  int exit_code_ = 0;
  bool socket_activated_ = false;
  uint64_t watchdog_ms_ = 0;
  uint64_t reloads_ = 0;

  EventHub events_;  // before jobs_: the table's observer publishes here
  PrecomputeTally precompute_;
  std::unique_ptr<JobTable> jobs_;
  std::unique_ptr<Dispatcher> dispatcher_;
  std::unique_ptr<ControlServer> control_;
  std::unique_ptr<BackendHealth> backend_;  // breaker, probe, backend figures
  std::unique_ptr<MetricsServer> metrics_;  // [metrics] listen; null when off
  std::unique_ptr<Notifier> notifier_;
  std::unique_ptr<Store> store_;  // the record of jobs; uses every part above
  UvHandle<uv_signal_t> sigterm_;
  UvHandle<uv_signal_t> sigint_;
  UvHandle<uv_signal_t> sighup_;
  UvHandle<uv_timer_t> status_timer_;
  UvHandle<uv_timer_t> grace_timer_;
  UvHandle<uv_timer_t> final_timer_;
};

}  // namespace digestd
