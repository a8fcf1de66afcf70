// Daemon: builds the parts in dependency order (config -> job table ->
// dispatcher -> control socket -> systemd notification), runs the loop, and
// tears down in reverse. It holds the lifecycle (running, draining,
// stopping) and answers the control ops; the mechanisms live in their own
// modules (dispatch/, control/, jobs/, sys/).
//
// One thread: Run() owns the loop and everything on it.
#pragma once

#include <uv.h>

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_set>

#include "backend/backend_health.h"
#include "config/config.h"
#include "control/control_server.h"
#include "dispatch/delay_queue.h"
#include "dispatch/dispatcher.h"
#include "jobs/job_table.h"
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
  enum class Phase { kRunning, kDraining, kStopping };
  struct PendingWait;

  Status Start();
  void Teardown();

  // Control ops.
  void Handle(Request request, const PeerCred& peer, ControlServer::Reply reply);
  bool Allowed(const PeerCred& peer) const;
  void OpStatus(const Request& req, const ControlServer::Reply& reply);
  void OpSubmit(const Request& req, const ControlServer::Reply& reply);
  void OpResult(const Request& req, const ControlServer::Reply& reply);
  void OpCancel(const Request& req, const ControlServer::Reply& reply);
  void OpWorkers(const Request& req, const ControlServer::Reply& reply);
  void OpReload(const Request& req, const ControlServer::Reply& reply);
  void OpDrain(const Request& req, const ControlServer::Reply& reply);

  // Validates one job of a submit and queues it; the JSON answer for it.
  Result<nlohmann::json> SubmitOne(const nlohmann::json& spec, const std::string& where);
  Status CheckJobSpec(const nlohmann::json& spec, const std::string& where) const;
  nlohmann::json JobJson(const JobRecord& job) const;
  nlohmann::json GroupJson(const std::string& group) const;
  nlohmann::json StatusJson() const;
  std::string StatusLine() const;

  // Lifecycle.
  Status Reload(nlohmann::json* changes);
  void ApplyRuntimeConfig();
  void BeginShutdown(const char* why);
  void ForceShutdown(const char* why);
  void FinishShutdown();
  // Answers every open `result` wait with the job's current state.
  void AnswerWaits();
  void OnJobFinished(const JobPtr& job, WorkOutcome outcome);
  // Whether `job`'s kind calls the LLM backend under the running config.
  bool UsesBackend(const JobRecord& job) const;
  // A job whose retry backoff is over goes back into its lane.
  void OnRetryDue(JobPtr job);
  // Gives up a job at shutdown: with no store it cannot wait for a restart.
  void Release(const JobPtr& job, const char* why);

  uv_loop_t loop_{};
  bool loop_ready_ = false;
  Config config_;
  std::string config_path_;
  std::string node_id_;
  int pool_size_ = 0;
  uint64_t started_at_ = 0;  // uv_hrtime at start
  Phase phase_ = Phase::kRunning;
  int exit_code_ = 0;

  std::unique_ptr<JobTable> jobs_;
  std::unique_ptr<Dispatcher> dispatcher_;
  std::unique_ptr<ControlServer> control_;
  std::unique_ptr<DelayQueue> delayed_;     // jobs waiting out a retry backoff
  std::unique_ptr<BackendHealth> backend_;  // breaker, probe, backend figures
  std::unique_ptr<Notifier> notifier_;
  UvHandle<uv_signal_t> sigterm_;
  UvHandle<uv_signal_t> sigint_;
  UvHandle<uv_signal_t> sighup_;
  UvHandle<uv_timer_t> status_timer_;
  UvHandle<uv_timer_t> grace_timer_;
  UvHandle<uv_timer_t> final_timer_;
  std::unordered_set<std::shared_ptr<PendingWait>> waits_;  // open `result` waits
  uint64_t reloads_ = 0;
};

}  // namespace digestd
