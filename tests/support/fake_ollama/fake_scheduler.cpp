#include "fake_scheduler.h"

#include <algorithm>
#include <utility>

#include "fake_content.h"

namespace digestd::testing {
namespace {

// Idle timer applied when a request gives up after pinning a model; it has
// no keep_alive of its own to apply (Ollama's default is 5m).
constexpr std::chrono::minutes kAbandonKeepAlive{5};

}  // namespace

void FakeScheduler::SetLimits(Limits limits) {
  Limits n;
  n.parallel = std::max(1, limits.parallel);
  n.embed_parallel = std::max(1, limits.embed_parallel);
  n.max_queue = std::max(0, limits.max_queue);
  for (const auto& [name, slots] : limits.parallel_by_model) {
    n.parallel_by_model[CanonicalModelName(name)] = std::max(1, slots);
  }
  std::lock_guard l(mu_);
  limits_ = std::move(n);
  cv_.notify_all();
}

int FakeScheduler::CapacityOf(const std::string& model) const {
  std::lock_guard l(mu_);
  return CapacityLocked(model);
}

int FakeScheduler::CapacityLocked(const std::string& model) const {
  auto it = limits_.parallel_by_model.find(model);
  if (it != limits_.parallel_by_model.end()) return it->second;
  return IsEmbeddingModel(model) ? limits_.embed_parallel : limits_.parallel;
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
  const bool slot_now = !need_slot || (m.waiters.empty() && m.in_flight < CapacityLocked(model));
  const bool queued = !(ready && slot_now);
  if (queued) {
    if (queued_ >= limits_.max_queue) {
      ++rejected_;
      return {Outcome::kQueueFull};
    }
    ++queued_;
    ++m.queued;
    max_queued_ = std::max(max_queued_, queued_);
  }
  auto give_up = [&] {
    if (queued) {
      --queued_;
      --m.queued;
    }
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
  const Clock::time_point wait_start = Clock::now();
  Clock::duration slot_wait{0};
  if (need_slot) {
    const uint64_t id = next_waiter_++;
    m.waiters.push_back(id);
    // The capacity is read on every pass, so a change applies to waiters.
    while (!(m.waiters.front() == id && m.in_flight < CapacityLocked(model))) {
      if (stopping_ || cancelled()) {
        m.waiters.erase(std::find(m.waiters.begin(), m.waiters.end(), id));
        if (--m.active == 0 && !m.expires) {
          m.expires = true;
          m.expires_at = Clock::now() + kAbandonKeepAlive;
        }
        return give_up();
      }
      cv_.wait_for(l, kPollSlice);
    }
    m.waiters.pop_front();
    slot_wait = Clock::now() - wait_start;
    ++in_flight_;
    max_in_flight_ = std::max(max_in_flight_, in_flight_);
    ++m.in_flight;
    m.max_in_flight = std::max(m.max_in_flight, m.in_flight);
    ++m.admitted;
    m.slot_wait_ns += std::chrono::duration_cast<std::chrono::nanoseconds>(slot_wait).count();
  }
  if (queued) {
    --queued_;
    --m.queued;
  }
  cv_.notify_all();  // the next waiter may fit as well when the capacity is > 1
  return {Outcome::kAdmitted, std::chrono::duration_cast<std::chrono::nanoseconds>(load_paid),
          std::chrono::duration_cast<std::chrono::nanoseconds>(slot_wait)};
}

void FakeScheduler::Finish(const std::string& model, bool held_slot, int64_t keep_alive_ms,
                           bool aborted) {
  std::lock_guard l(mu_);
  ModelState& m = models_[model];
  if (held_slot) {
    --in_flight_;
    --m.in_flight;
    if (aborted) ++m.aborted;
  }
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

void FakeScheduler::NoteAbandoned(const std::string& model) {
  std::lock_guard l(mu_);
  ++models_[model].abandoned;
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
    s.models.push_back(ModelStats{name, CapacityLocked(name), m.in_flight, m.max_in_flight,
                                  m.queued, m.admitted, m.slot_wait_ns, m.aborted, m.abandoned});
    s.slot_wait_ns += m.slot_wait_ns;
    s.aborted_by_client += m.aborted;
    s.abandoned_waiting += m.abandoned;
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
    m.max_in_flight = m.in_flight;
    m.admitted = 0;
    m.slot_wait_ns = 0;
    m.aborted = 0;
    m.abandoned = 0;
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
    aborted_ = other.aborted_;
  }
  return *this;
}

void SlotLease::Release() {
  if (scheduler_ == nullptr) return;
  std::exchange(scheduler_, nullptr)->Finish(model_, held_slot_, keep_alive_ms_, aborted_);
}

}  // namespace digestd::testing
