#include "fake_scheduler.h"

#include <algorithm>
#include <utility>

namespace digestd::testing {
namespace {

// Idle timer applied when a request gives up after pinning a model; it has
// no keep_alive of its own to apply (Ollama's default is 5m).
constexpr std::chrono::minutes kAbandonKeepAlive{5};

}  // namespace

void FakeScheduler::SetLimits(int parallel, int max_queue) {
  std::lock_guard l(mu_);
  parallel_ = std::max(1, parallel);
  max_queue_ = std::max(0, max_queue);
  cv_.notify_all();
}

void FakeScheduler::ExpireIfIdle(ModelState* m, Clock::time_point now) {
  if (m->loaded && !m->loading && m->active == 0 && m->expires && now >= m->expires_at) {
    m->loaded = false;
  }
}

FakeScheduler::Admission FakeScheduler::Admit(const std::string& model, int64_t num_ctx,
                                              int64_t load_ms, bool need_slot,
                                              const CancelFn& cancelled) {
  const int64_t want_ctx = num_ctx > 0 ? num_ctx : kDefaultNumCtx;
  const Clock::time_point start = Clock::now();
  std::unique_lock l(mu_);
  if (stopping_) return {Outcome::kStopped};
  ModelState& m = models_[model];  // std::map: the reference survives unlocking
  ExpireIfIdle(&m, start);
  const bool ready = m.loaded && !m.loading && m.num_ctx == want_ctx;
  const bool slot_now = !need_slot || (waiters_.empty() && in_flight_ < parallel_);
  const bool queued = !(ready && slot_now);
  if (queued) {
    if (queued_ >= max_queue_) {
      ++rejected_;
      return {Outcome::kQueueFull};
    }
    ++queued_;
    max_queued_ = std::max(max_queued_, queued_);
  }
  auto give_up = [&] {
    if (queued) --queued_;
    cv_.notify_all();
    return Admission{stopping_ ? Outcome::kStopped : Outcome::kCancelled};
  };

  bool paid_load = false;
  for (;;) {
    if (stopping_) return give_up();
    ExpireIfIdle(&m, Clock::now());
    if (m.loading) {
      paid_load = true;
      if (cancelled()) return give_up();
      cv_.wait_for(l, kPollSlice);
      continue;
    }
    if (m.loaded && m.num_ctx == want_ctx) break;
    // This request performs the (re)load; the others for `model` wait above.
    m.loading = true;
    m.loaded = false;
    ++loads_;
    paid_load = true;
    l.unlock();
    const bool ok = SleepFor(std::chrono::milliseconds(load_ms), cancelled);
    l.lock();
    m.loading = false;
    if (!ok) return give_up();
    m.loaded = true;
    m.num_ctx = want_ctx;
    m.expires = false;
    cv_.notify_all();
    break;
  }
  // With load_ms 0 a load is instant: report none, like a warm model.
  const auto load_paid =
      (paid_load && load_ms > 0) ? Clock::now() - start : Clock::duration::zero();

  ++m.active;
  if (need_slot) {
    const uint64_t id = next_waiter_++;
    waiters_.push_back(id);
    while (!(waiters_.front() == id && in_flight_ < parallel_)) {
      if (stopping_ || cancelled()) {
        waiters_.erase(std::find(waiters_.begin(), waiters_.end(), id));
        if (--m.active == 0 && !m.expires) {
          m.expires = true;
          m.expires_at = Clock::now() + kAbandonKeepAlive;
        }
        return give_up();
      }
      cv_.wait_for(l, kPollSlice);
    }
    waiters_.pop_front();
    ++in_flight_;
    max_in_flight_ = std::max(max_in_flight_, in_flight_);
  }
  if (queued) --queued_;
  cv_.notify_all();  // the next waiter may fit as well when parallel > 1
  return {Outcome::kAdmitted, std::chrono::duration_cast<std::chrono::nanoseconds>(load_paid)};
}

void FakeScheduler::Finish(const std::string& model, bool held_slot, int64_t keep_alive_ms) {
  std::lock_guard l(mu_);
  if (held_slot) --in_flight_;
  ModelState& m = models_[model];
  if (m.active > 0) --m.active;
  if (keep_alive_ms < 0) {
    m.expires = false;
  } else {
    m.expires = true;
    m.expires_at = Clock::now() + std::chrono::milliseconds(keep_alive_ms);
  }
  ExpireIfIdle(&m, Clock::now());
  cv_.notify_all();
}

void FakeScheduler::Unload(const std::string& model) {
  std::lock_guard l(mu_);
  auto it = models_.find(model);
  if (it != models_.end() && !it->second.loading) it->second.loaded = false;
  cv_.notify_all();
}

bool FakeScheduler::SleepFor(std::chrono::nanoseconds d, const CancelFn& cancelled) {
  const Clock::time_point deadline = Clock::now() + d;
  for (;;) {
    // cancelled() may be a syscall: keep it outside the shared sleep lock.
    if (sleep_stopping_.load() || cancelled()) return false;
    const Clock::time_point now = Clock::now();
    if (now >= deadline) return true;
    std::unique_lock l(sleep_mu_);
    if (sleep_stopping_.load()) return false;
    sleep_cv_.wait_until(l, std::min(deadline, now + kPollSlice));
  }
}

void FakeScheduler::Stop() {
  {
    std::lock_guard l(mu_);
    stopping_ = true;
    cv_.notify_all();
  }
  std::lock_guard l(sleep_mu_);
  sleep_stopping_ = true;
  sleep_cv_.notify_all();
}

void FakeScheduler::Resume() {
  {
    std::lock_guard l(mu_);
    stopping_ = false;
  }
  std::lock_guard l(sleep_mu_);
  sleep_stopping_ = false;
}

FakeScheduler::Snapshot FakeScheduler::GetSnapshot() const {
  std::lock_guard l(mu_);
  Snapshot s;
  s.in_flight = in_flight_;
  s.max_in_flight_observed = max_in_flight_;
  s.queued = queued_;
  s.max_queued_observed = max_queued_;
  s.rejected_503 = rejected_;
  s.loads = loads_;
  const Clock::time_point now = Clock::now();
  for (const auto& [name, m] : models_) {
    if (!m.loaded) continue;
    if (m.active == 0 && m.expires && now >= m.expires_at) continue;
    LoadedModel lm{name, m.num_ctx, -1};
    if (m.active == 0 && m.expires) {
      lm.expires_in_ms =
          std::chrono::duration_cast<std::chrono::milliseconds>(m.expires_at - now).count();
    }
    s.loaded.push_back(lm);
  }
  return s;
}

void FakeScheduler::ResetCounters() {
  std::lock_guard l(mu_);
  max_in_flight_ = in_flight_;
  max_queued_ = queued_;
  rejected_ = 0;
  loads_ = 0;
  for (auto& [name, m] : models_) {
    if (m.active == 0 && !m.loading) m.loaded = false;
  }
  cv_.notify_all();
}

SlotLease& SlotLease::operator=(SlotLease&& other) noexcept {
  if (this != &other) {
    Release();
    scheduler_ = std::exchange(other.scheduler_, nullptr);
    model_ = std::move(other.model_);
    held_slot_ = other.held_slot_;
    keep_alive_ms_ = other.keep_alive_ms_;
  }
  return *this;
}

void SlotLease::Release() {
  if (scheduler_ == nullptr) return;
  std::exchange(scheduler_, nullptr)->Finish(model_, held_slot_, keep_alive_ms_);
}

}  // namespace digestd::testing
