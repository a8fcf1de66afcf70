// CircuitBreaker: stops sending work to a backend that keeps failing, and
// finds out with a single probe when it works again.
//
//   closed ──K retryable failures in a row──▶ open ──T elapsed──▶ half-open
//     ▲                                        ▲                     │
//     └──────────── probe (or any request) succeeds ◀────────────────┤
//                                              └──── probe fails ────┘
//
// While open or half-open, AllowRequest() is false: the caller keeps jobs
// queued (no attempt is spent) instead of failing them. Once T has passed,
// TryStartProbe() returns true exactly once and moves to half-open; the
// caller sends one small real inference request (OllamaClient::Probe) and
// reports how it went with OnProbeResult().
//
// What to report: RecordFailure() for retryable failures only (refused or
// reset connections, timeouts, HTTP 500/502/504, cut streams). Fatal answers
// (400, 404, malformed) and busy answers (429, 503) prove that the server is
// up and answering, so report those with RecordSuccess() / not at all: a
// busy server is handled by backoff, not by the breaker.
//
// Pure state machine: no I/O, no libuv; time comes from the injected clock.
// Not thread-safe: the loop thread owns it.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace digestd {

class CircuitBreaker {
 public:
  using Clock = std::chrono::steady_clock;
  using NowFn = std::function<Clock::time_point()>;

  enum class State { kClosed, kOpen, kHalfOpen };

  struct Options {
    int failure_threshold = 5;                  // K: [backend] breaker_failures
    std::chrono::milliseconds open_for{30000};  // T: [backend] breaker_open_s
  };

  // `now` defaults to std::chrono::steady_clock::now (the same clock as
  // uv_hrtime on Linux). A threshold below 1 is treated as 1.
  explicit CircuitBreaker(Options options, NowFn now = nullptr);

  // Takes effect from the next event (reload). An open breaker keeps the
  // probe time it already has.
  void SetOptions(Options options);

  // True when a job may be sent: the breaker is closed.
  bool AllowRequest() const { return state_ == State::kClosed; }

  // The open period a request starting now belongs to: pass it back with
  // its success, so that a request sent before the breaker opened cannot
  // close it by finishing late (only a probe, or a request sent since, can).
  uint64_t epoch() const { return times_opened_; }
  static constexpr uint64_t kNow = UINT64_MAX;  // "started in the current period"

  // A request reached the backend and got an answer: closes the breaker from
  // any state (the backend works) and clears the failure run -- unless the
  // breaker is open or half-open and the request started before it opened
  // (`started_epoch` < epoch()): that answer says nothing about the server
  // since, and is ignored.
  void RecordSuccess(uint64_t started_epoch = kNow);

  // A retryable failure, with the error text shown by status. Counts toward
  // the threshold while closed; while open or half-open it only updates the
  // reason (a request sent before the breaker opened finishing late must not
  // push the probe further out).
  void RecordFailure(std::string reason);

  // True exactly once per open period, when the breaker is open and its time
  // is up: the state becomes half-open and the caller must send one probe and
  // then call OnProbeResult(). False in every other case.
  [[nodiscard]] bool TryStartProbe();

  // The outcome of the probe started by TryStartProbe(). Success closes the
  // breaker; failure opens it again for open_for with `reason`. Ignored when
  // no probe is outstanding (for example, a late success already closed it).
  void OnProbeResult(bool ok, std::string reason);

  State state() const { return state_; }
  // The last failure's text; empty while closed with no failure run.
  const std::string& reason() const { return reason_; }
  int consecutive_failures() const { return consecutive_failures_; }
  // When the breaker will probe; meaningful only while open.
  Clock::time_point probe_at() const { return probe_at_; }
  // Times it has opened since construction (re-opening after a failed probe
  // counts).
  uint64_t times_opened() const { return times_opened_; }

  // For `status`: {"state":"open","reason":"…","consecutive_failures":5,
  // "probe_in_ms":1234,"times_opened":1}. probe_in_ms appears only while
  // open; reason only when non-empty.
  nlohmann::json ToJson() const;

 private:
  void Open(std::string reason);

  Options options_;
  NowFn now_;
  State state_ = State::kClosed;
  int consecutive_failures_ = 0;
  std::string reason_;
  Clock::time_point probe_at_{};
  uint64_t times_opened_ = 0;
};

// "closed" | "open" | "half-open".
std::string_view BreakerStateName(CircuitBreaker::State state);

}  // namespace digestd
