// FakeScheduler: the fake Ollama's model-load and slot model.
//
// This is a deliberate simplification of Ollama's server/sched.go (what a
// client sees of it: docs/operations.md, "What digestd relies on about
// Ollama"):
//  * One scheduler for all models: `parallel` slots in total, handed out in
//    strict FIFO order. (Real Ollama: NUM_PARALLEL slots per loaded model.)
//  * Every request that cannot start at once (its model is loading or must be
//    loaded, no slot is free, or others are already waiting) counts as
//    "queued"; when `max_queue` requests are already queued, a new one is
//    rejected at once (the caller answers 503). Real Ollama caps only the
//    requests that need a (re)load and never 503s on a warm model; capping
//    all waiters is a fair approximation for testing a client, which must
//    handle a fast 503 the same way either way.
//  * Loads: the first request for a model, the first after its keep-alive
//    expired, or one whose num_ctx (0 = kDefaultNumCtx) differs from the
//    loaded one pays `load_ms`; other
//    requests for that model wait behind the load and report the time they
//    waited as their load duration. Different models load concurrently, and
//    a reload does not wait for in-flight requests of the old instance.
//  * Keep-alive: when a request finishes, the model expires `keep_alive_ms`
//    later (-1 = never; 0 = unloaded as soon as no request uses it).
//
// Waiting and sleeping are done in slices of at most kPollSlice so a
// cancellation predicate (client hung up) is checked regularly, and Stop()
// wakes every waiter and sleeper at once.
//
// Thread-safety: every method may be called from any thread.
#ifndef DIGESTD_TESTS_SUPPORT_FAKE_OLLAMA_FAKE_SCHEDULER_H_
#define DIGESTD_TESTS_SUPPORT_FAKE_OLLAMA_FAKE_SCHEDULER_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace digestd::testing {

class FakeScheduler {
 public:
  using Clock = std::chrono::steady_clock;
  // Returns true when the request should give up (client gone, server
  // stopping). May be called with the scheduler's lock held: must be cheap
  // and must not call back into the scheduler.
  using CancelFn = std::function<bool()>;

  static constexpr std::chrono::milliseconds kPollSlice{20};
  static constexpr int64_t kDefaultNumCtx = 4096;

  enum class Outcome { kAdmitted, kQueueFull, kCancelled, kStopped };

  struct Admission {
    Outcome outcome = Outcome::kCancelled;
    std::chrono::nanoseconds load_paid{0};  // time this request spent on a load
  };

  struct LoadedModel {
    std::string name;
    int64_t num_ctx = 0;
    int64_t expires_in_ms = -1;  // -1: never (or in use)
  };

  struct Snapshot {
    int in_flight = 0;
    int max_in_flight_observed = 0;
    int queued = 0;
    int max_queued_observed = 0;
    uint64_t rejected_503 = 0;
    uint64_t loads = 0;
    std::vector<LoadedModel> loaded;
  };

  FakeScheduler() = default;
  FakeScheduler(const FakeScheduler&) = delete;
  FakeScheduler& operator=(const FakeScheduler&) = delete;

  // Changes the limits; waiters re-check at once.
  void SetLimits(int parallel, int max_queue);

  // Blocks until `model` is loaded (paying `load_ms` if needed) and, when
  // `need_slot`, a slot is held. On kAdmitted the caller must call Finish()
  // exactly once (use SlotLease). Any other outcome leaves nothing to undo.
  [[nodiscard]] Admission Admit(const std::string& model, int64_t num_ctx, int64_t load_ms,
                                bool need_slot, const CancelFn& cancelled);

  // Ends an admitted request: frees its slot (if it held one) and starts the
  // model's keep-alive timer (`keep_alive_ms`: -1 forever, 0 unload now).
  void Finish(const std::string& model, bool held_slot, int64_t keep_alive_ms);

  // Unloads `model` now (Ollama's keep_alive:0 with an empty prompt).
  void Unload(const std::string& model);

  // Sleeps `d`; returns false early when `cancelled` turns true or Stop() is
  // called. Does not take the scheduler lock while sleeping.
  [[nodiscard]] bool SleepFor(std::chrono::nanoseconds d, const CancelFn& cancelled);

  // Wakes and fails every current and future waiter/sleeper until Resume().
  void Stop();
  void Resume();

  Snapshot GetSnapshot() const;
  // Resets counters (max observed values restart from the current values)
  // and unloads every idle model.
  void ResetCounters();

 private:
  struct ModelState {
    bool loaded = false;
    bool loading = false;
    int64_t num_ctx = 0;
    int active = 0;  // admitted requests pinning this model
    bool expires = false;
    Clock::time_point expires_at;
  };

  // Drops `m`'s load if its keep-alive expired. mu_ held.
  static void ExpireIfIdle(ModelState* m, Clock::time_point now);

  mutable std::mutex mu_;
  std::condition_variable cv_;  // signalled on any change of the state below
  std::map<std::string, ModelState> models_;
  std::deque<uint64_t> waiters_;  // slot waiters in arrival order
  uint64_t next_waiter_ = 0;
  int parallel_ = 1;
  int max_queue_ = 512;
  int in_flight_ = 0;
  int max_in_flight_ = 0;
  int queued_ = 0;
  int max_queued_ = 0;
  uint64_t rejected_ = 0;
  uint64_t loads_ = 0;
  bool stopping_ = false;

  // Sleepers wait here so that frequent slot changes don't wake them.
  std::mutex sleep_mu_;
  std::condition_variable sleep_cv_;
  std::atomic<bool> sleep_stopping_{false};  // written under sleep_mu_
};

// Owns one admitted request: calls FakeScheduler::Finish on Release() or
// destruction, whichever comes first. Movable, not copyable. Used from one
// thread at a time.
class SlotLease {
 public:
  SlotLease() = default;
  SlotLease(FakeScheduler* scheduler, std::string model, bool held_slot, int64_t keep_alive_ms)
      : scheduler_(scheduler),
        model_(std::move(model)),
        held_slot_(held_slot),
        keep_alive_ms_(keep_alive_ms) {}
  SlotLease(SlotLease&& other) noexcept { *this = std::move(other); }
  SlotLease& operator=(SlotLease&& other) noexcept;
  SlotLease(const SlotLease&) = delete;
  SlotLease& operator=(const SlotLease&) = delete;
  ~SlotLease() { Release(); }

  void Release();

 private:
  FakeScheduler* scheduler_ = nullptr;  // not owned; outlives the lease
  std::string model_;
  bool held_slot_ = false;
  int64_t keep_alive_ms_ = 0;
};

}  // namespace digestd::testing

#endif  // DIGESTD_TESTS_SUPPORT_FAKE_OLLAMA_FAKE_SCHEDULER_H_
