#include "backend/circuit_breaker.h"

#include <algorithm>

namespace digestd {

CircuitBreaker::CircuitBreaker(Options options, NowFn now)
    : options_(options), now_(now ? std::move(now) : NowFn([] { return Clock::now(); })) {
  options_.failure_threshold = std::max(options_.failure_threshold, 1);
}

void CircuitBreaker::SetOptions(Options options) {
  options_ = options;
  options_.failure_threshold = std::max(options_.failure_threshold, 1);
}

void CircuitBreaker::RecordSuccess(uint64_t started_epoch) {
  if (state_ != State::kClosed && started_epoch < times_opened_) return;
  state_ = State::kClosed;
  consecutive_failures_ = 0;
  reason_.clear();
}

void CircuitBreaker::RecordFailure(std::string reason) {
  reason_ = std::move(reason);
  if (state_ != State::kClosed) return;
  if (++consecutive_failures_ >= options_.failure_threshold) Open(reason_);
}

bool CircuitBreaker::TryStartProbe() {
  if (state_ != State::kOpen || now_() < probe_at_) return false;
  state_ = State::kHalfOpen;
  return true;
}

void CircuitBreaker::OnProbeResult(bool ok, std::string reason) {
  if (state_ != State::kHalfOpen) return;
  if (ok) {
    RecordSuccess();
  } else {
    Open(std::move(reason));
  }
}

void CircuitBreaker::Open(std::string reason) {
  state_ = State::kOpen;
  reason_ = std::move(reason);
  probe_at_ = now_() + options_.open_for;
  ++times_opened_;
}

nlohmann::json CircuitBreaker::ToJson() const {
  nlohmann::json j = {{"state", BreakerStateName(state_)},
                      {"consecutive_failures", consecutive_failures_},
                      {"times_opened", times_opened_}};
  if (!reason_.empty()) j["reason"] = reason_;
  if (state_ == State::kOpen) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(probe_at_ - now_());
    j["probe_in_ms"] = std::max<int64_t>(left.count(), 0);
  }
  return j;
}

std::string_view BreakerStateName(CircuitBreaker::State state) {
  switch (state) {
    case CircuitBreaker::State::kClosed:
      return "closed";
    case CircuitBreaker::State::kOpen:
      return "open";
    case CircuitBreaker::State::kHalfOpen:
      return "half-open";
  }
  return "closed";
}

}  // namespace digestd
