// BackendHealth: the loop-thread side of the LLM backend's health. It owns
// the circuit breaker, feeds it each backend job's outcome, and while the
// breaker is open runs one probe request on the thread pool when the open
// period is over (OllamaClient::Probe: a real one-token inference). It also
// keeps the backend's figures for `status`: requests in flight, retries,
// busy answers and latency percentiles from real samples.
//
// It is fed the backend's own classification of each call (CallStatus, from
// ollama_client.h), not a job's WorkOutcome: jobs/ sits above backend/ (the
// LLM job kinds call OllamaClient), so backend/ includes nothing from jobs/.
// The caller that holds a job's outcome converts it on the way in
// (CallStatusOf in jobs/llm_job.h, the inverse of OutcomeOf). Moving this
// class to dispatch/ would have broken the cycle too, but it would put the
// breaker's bookkeeping away from the breaker and the probe, which are
// backend concerns.
//
// Loop thread only; the probe's pool thread sees only a copy of the backend
// config. Close() before the loop closes; the probe, if running, finishes
// and is then discarded.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>

#include "backend/circuit_breaker.h"
#include "backend/ollama_client.h"
#include "config/config.h"
#include "obs/histogram.h"
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

  // False while the breaker is open or probing, and while busy answers hold
  // dispatch back: backend jobs stay queued.
  bool AllowRequest() const {
    return breaker_.AllowRequest() && (busy_until_ms_ == 0 || uv_now(loop_) >= busy_until_ms_);
  }

  // A backend job's attempt starts; returns the breaker's epoch for its
  // OnOutcome.
  uint64_t OnStart() {
    ++in_flight_;
    return breaker_.epoch();
  }
  // A backend job's attempt (begun with OnStart, which gave `started_epoch`)
  // ended as `call` says:
  // kOk and kFatal count as answers (the server is up), kRetryable toward
  // opening the breaker, kBusy as a busy answer: besides the job's own
  // backoff, no new backend request starts for a jittered delay that doubles
  // with every busy answer in a row (backoff_base_ms up to backoff_max_ms;
  // an answer ends the streak), so a flood of 429/503 slows dispatch instead
  // of feeding it;
  // kCancelled not toward the breaker. call.elapsed, when non-zero, is a
  // latency sample; call.error names the failure in the breaker's reason.
  // A success from before the breaker opened does not close it.
  void OnOutcome(const CallStatus& call, uint64_t started_epoch = CircuitBreaker::kNow);
  void NoteRetry() { ++retries_; }

  nlohmann::json ToJson() const;
  // Every call's latency (the samples behind ToJson's percentiles) since
  // start, in seconds (BackendSecondsBuckets), for the metrics endpoint.
  const Histogram& latency_histogram() const { return latency_seconds_; }
  void Close();

 private:
  struct ProbeWork;
  void ArmProbeTimer();
  void StartProbe();
  static void OnProbeTimer(uv_timer_t* timer);

  static void OnBusyTimer(uv_timer_t* timer);

  uv_loop_t* loop_;
  Config::Backend backend_;
  std::function<void()> on_open_change_;
  CircuitBreaker breaker_;
  UvHandle<uv_timer_t> probe_timer_;
  UvHandle<uv_timer_t> busy_timer_;  // kicks dispatch when a busy hold ends
  int busy_streak_ = 0;              // busy answers in a row
  uint64_t busy_until_ms_ = 0;       // uv_now until which dispatch holds back; 0 none
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
  Histogram latency_seconds_{BackendSecondsBuckets()};
};

}  // namespace digestd
