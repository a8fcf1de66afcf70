#include "backend/backend_health.h"

#include <algorithm>

#include "backend/backoff.h"
#include "backend/ollama_client.h"
#include "obs/log.h"

namespace digestd {

namespace {

CircuitBreaker::Options BreakerOptions(const Config::Backend& b) {
  return {b.breaker_failures, std::chrono::milliseconds(int64_t{b.breaker_open_s} * 1000)};
}

// Long enough for a warm model's one-token answer, short enough that a hung
// server does not hold the probe for a whole request deadline.
constexpr std::chrono::milliseconds kProbeDeadline{15000};

}  // namespace

struct BackendHealth::ProbeWork {
  uv_work_t req{};
  Config::Backend backend;         // a copy: all the pool thread touches
  CallStatus status;               // written by the pool thread
  std::shared_ptr<bool> alive;     // loop thread only
  BackendHealth* owner = nullptr;  // valid while *alive
};

BackendHealth::BackendHealth(uv_loop_t* loop, const Config::Backend& backend,
                             std::function<void()> on_open_change)
    : loop_(loop),
      backend_(backend),
      on_open_change_(std::move(on_open_change)),
      breaker_(BreakerOptions(backend)) {
  if (uv_timer_init(loop_, probe_timer_.get()) == 0) {
    probe_timer_.set_initialized();
    probe_timer_.get()->data = this;
  }
  if (uv_timer_init(loop_, busy_timer_.get()) == 0) {
    busy_timer_.set_initialized();
    busy_timer_.get()->data = this;
  }
}

void BackendHealth::OnBusyTimer(uv_timer_t* timer) {
  auto* self = static_cast<BackendHealth*>(timer->data);
  self->busy_until_ms_ = 0;
  if (self->on_open_change_) self->on_open_change_();
}

BackendHealth::~BackendHealth() {
  Close();
}

void BackendHealth::Close() {
  *alive_ = false;
  probe_timer_.Close();
  busy_timer_.Close();
}

void BackendHealth::SetConfig(const Config::Backend& backend) {
  backend_ = backend;
  breaker_.SetOptions(BreakerOptions(backend));
}

void BackendHealth::OnOutcome(const CallStatus& call, uint64_t started_epoch) {
  if (in_flight_ > 0) --in_flight_;
  ++requests_;
  if (call.elapsed.count() > 0) {
    latency_.Record(static_cast<uint64_t>(call.elapsed.count()));
    latency_seconds_.Observe(std::chrono::duration<double>(call.elapsed).count());
  }
  bool was_allowed = breaker_.AllowRequest();
  switch (call.cls) {
    case CallClass::kOk:
    case CallClass::kFatal:  // a fatal answer: the server is up
      breaker_.RecordSuccess(started_epoch);
      busy_streak_ = 0;
      break;
    case CallClass::kBusy: {
      ++busy_;  // not the breaker's business: the server answered
      ++busy_streak_;
      const int64_t hold =
          BackoffDelayMs(busy_streak_, backend_.backoff_base_ms, backend_.backoff_max_ms);
      const uint64_t until = uv_now(loop_) + static_cast<uint64_t>(std::max<int64_t>(1, hold));
      if (until > busy_until_ms_ && busy_timer_.initialized()) {
        busy_until_ms_ = until;
        uv_timer_start(busy_timer_.get(), &BackendHealth::OnBusyTimer, until - uv_now(loop_), 0);
      }
      break;
    }
    case CallClass::kRetryable:
      ++failures_;
      breaker_.RecordFailure(call.error);
      break;
    case CallClass::kCancelled:
      break;
  }
  if (was_allowed && !breaker_.AllowRequest()) {
    LOG_WARN(
        "backend %s: circuit breaker open after %d failures in a row (%s); "
        "jobs stay queued, probing in %d s; fix what the reason says and they resume when a "
        "probe answers (digestctl status shows the breaker)",
        backend_.url.c_str(), breaker_.consecutive_failures(), breaker_.reason().c_str(),
        backend_.breaker_open_s);
    ArmProbeTimer();
  } else if (!was_allowed && breaker_.AllowRequest()) {
    LOG_NOTICE("backend %s: circuit breaker closed", backend_.url.c_str());
    if (on_open_change_) on_open_change_();
  }
}

void BackendHealth::ArmProbeTimer() {
  if (!probe_timer_.initialized()) return;
  auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(breaker_.probe_at() -
                                                                    CircuitBreaker::Clock::now());
  uv_timer_start(probe_timer_.get(), &BackendHealth::OnProbeTimer,
                 static_cast<uint64_t>(std::max<int64_t>(wait.count(), 0)) + 1, 0);
}

void BackendHealth::OnProbeTimer(uv_timer_t* timer) {
  auto* self = static_cast<BackendHealth*>(timer->data);
  if (self->breaker_.state() != CircuitBreaker::State::kOpen) return;
  if (!self->breaker_.TryStartProbe()) {
    self->ArmProbeTimer();
    return;
  }
  self->StartProbe();
}

void BackendHealth::StartProbe() {
  auto work = std::make_unique<ProbeWork>();
  work->backend = backend_;
  work->alive = alive_;
  work->owner = this;
  work->req.data = work.get();
  ++probes_;
  probing_ = true;
  int rc = uv_queue_work(
      loop_, &work->req,
      [](uv_work_t* req) {
        auto* w = static_cast<ProbeWork*>(req->data);
        OllamaClient client(w->backend);
        w->status = client.Probe(w->backend, kProbeDeadline);
      },
      [](uv_work_t* req, int) {
        std::unique_ptr<ProbeWork> w(static_cast<ProbeWork*>(req->data));
        if (!*w->alive) return;
        BackendHealth* self = w->owner;
        self->probing_ = false;
        bool ok = w->status.cls != CallClass::kRetryable && w->status.cls != CallClass::kCancelled;
        self->breaker_.OnProbeResult(ok, w->status.error);
        if (ok) {
          LOG_NOTICE("backend %s: probe answered; circuit breaker closed",
                     self->backend_.url.c_str());
          if (self->on_open_change_) self->on_open_change_();
        } else {
          LOG_WARN("backend %s: probe failed (%s); probing again in %d s",
                   self->backend_.url.c_str(), w->status.error.c_str(),
                   self->backend_.breaker_open_s);
          self->ArmProbeTimer();
        }
      });
  if (rc != 0) {
    probing_ = false;
    breaker_.OnProbeResult(false, std::string("could not start a probe: ") + uv_strerror(rc));
    ArmProbeTimer();
    return;
  }
  work.release();
}

nlohmann::json BackendHealth::ToJson() const {
  Percentiles p = latency_.Compute();
  nlohmann::json j = {
      {"kind", backend_.kind},
      {"url", backend_.url},
      {"state", BreakerStateName(breaker_.state())},
      {"breaker", breaker_.ToJson()},
      {"in_flight", in_flight_},
      {"requests", requests_},
      {"retries", retries_},
      {"busy", busy_},
      {"busy_streak", busy_streak_},
      {"busy_hold_ms", busy_until_ms_ > uv_now(loop_) ? busy_until_ms_ - uv_now(loop_) : 0},
      {"failures", failures_},
      {"probes", probes_},
      {"latency",
       {{"count", p.count}, {"p50_ms", p.p50_ms}, {"p95_ms", p.p95_ms}, {"p99_ms", p.p99_ms}}}};
  return j;
}

}  // namespace digestd
