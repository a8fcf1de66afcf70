// BackendHealth: the loop-thread side of the LLM backend's health. It owns
// the circuit breaker, feeds it each backend job's outcome, and while the
// breaker is open runs one probe request on the thread pool when the open
// period is over (OllamaClient::Probe: a real one-token inference). It also
// keeps the backend's figures for `status`: requests in flight, retries,
// busy answers and latency percentiles from real samples.
//
// Loop thread only; the probe's pool thread sees only a copy of the backend
// config. Close() before the loop closes; the probe, if running, finishes
// and is then discarded.
#pragma once

#include <uv.h>

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>

#include "backend/circuit_breaker.h"
#include "config/config.h"
#include "jobs/job.h"
#include "obs/latency_window.h"
#include "util/uv_handle.h"

namespace digestd {

class BackendHealth {
 public:
  // `on_open_change` runs whenever AllowRequest() may have changed (the
  // dispatcher's Kick). `loop` must outlive this object.
  BackendHealth(uv_loop_t* loop, const Config::Backend& backend,
                std::function<void()> on_open_change);
  ~BackendHealth();
  BackendHealth(const BackendHealth&) = delete;
  BackendHealth& operator=(const BackendHealth&) = delete;

  // New timeouts, thresholds, URL (reload).
  void SetConfig(const Config::Backend& backend);

  // False while the breaker is open or probing: backend jobs stay queued.
  bool AllowRequest() const { return breaker_.AllowRequest(); }

  void OnStart() { ++in_flight_; }
  // A backend job's attempt ended with `outcome`.
  void OnOutcome(const WorkOutcome& outcome);
  void NoteRetry() { ++retries_; }

  nlohmann::json ToJson() const;
  void Close();

 private:
  struct ProbeWork;
  void ArmProbeTimer();
  void StartProbe();
  static void OnProbeTimer(uv_timer_t* timer);

  uv_loop_t* loop_;
  Config::Backend backend_;
  std::function<void()> on_open_change_;
  CircuitBreaker breaker_;
  UvHandle<uv_timer_t> probe_timer_;
  // Shared with a running probe so its after-work callback can tell that
  // this object is gone (Close() clears `alive`).
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  bool probing_ = false;
  int in_flight_ = 0;
  uint64_t requests_ = 0;
  uint64_t retries_ = 0;
  uint64_t busy_ = 0;
  uint64_t failures_ = 0;
  uint64_t probes_ = 0;
  LatencyWindow latency_;
};

}  // namespace digestd
