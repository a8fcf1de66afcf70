// FakeScheduler: the fake Ollama's model-load and slot model.
//
// This is a deliberate simplification of Ollama's server/sched.go (what a
// client sees of it: docs/operations.md, "What digestd relies on about
// Ollama"):
//  * Slots per model, as each loaded model is its own runner in Ollama: a
//    model serves at most its capacity at once (Limits: `parallel` for
//    generation models, `embed_parallel` for embedding models, or its entry
//    in `parallel_by_model`); the rest wait for that model's slots in strict
//    FIFO order. Different models never wait for each other's slots.
//  * The capacities may change while requests wait or run (a test tool; real
//    Ollama reads OLLAMA_NUM_PARALLEL when it loads a model): running
//    requests finish, and waiters are admitted only while the model's
//    in-flight count is below its new capacity, so a drop from 8 to 2 takes
//    effect as the running ones end and a raise admits waiters at once.
//  * Every request that cannot start at once (its model is loading or must be
//    loaded, no slot is free, or others are already waiting) counts as
//    "queued"; when `max_queue` requests are already queued (all models
//    together), a new one is rejected at once (the caller answers 503). Real
//    Ollama caps only the requests that need a (re)load and never 503s on a
//    warm model; capping all waiters is a fair approximation for testing a
//    client, which must handle a fast 503 the same way either way.
//  * Loads: the first request for a model, the first after its keep-alive
//    expired, or one whose num_ctx (0 = kDefaultNumCtx) differs from the
//    loaded one pays `load_ms`; other requests for that model wait behind the
//    load and report the time they waited as their load duration (Ollama's
//    load_duration is the time until the runner was ready). The wait for a
//    slot comes after that and is reported separately (Admission::slot_wait),
//    as Ollama counts it in total_duration only. Different models load
//    concurrently, and a reload does not wait for in-flight requests of the
//    old instance.
//  * Keep-alive: when a request finishes, the model expires `keep_alive_ms`
//    later (-1 = never; 0 = unloaded as soon as no request uses it).
//
// Counters per model (Snapshot::models): in flight, the most seen at once,
// waiting, admitted, the total time admitted requests waited for a slot,
// requests whose client hung up while they held a slot (aborted) or while
// they waited (abandoned). The caller reports the last two (Finish's
// `aborted`, NoteAbandoned) because only it can tell a client's hang-up from
// a server stop.
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
    std::chrono::nanoseconds slot_wait{0};  // time it then waited for a slot
  };

  // Capacities (slots per model) and the queue bound. Model names are
  // compared in canonical form (fake_content.h, CanonicalModelName).
  struct Limits {
    int parallel = 1;                              // each generation model
    int embed_parallel = 1;                        // each embedding model (Ollama: always 1)
    std::map<std::string, int> parallel_by_model;  // overrides the two above
    int max_queue = 512;                           // waiting requests, all models
  };

  struct LoadedModel {
    std::string name;
    int64_t num_ctx = 0;
    int64_t expires_in_ms = -1;  // -1: never (or in use)
  };

  struct ModelStats {
    std::string name;  // canonical
    int parallel = 1;  // its capacity now
    int in_flight = 0;
    int max_in_flight_observed = 0;
    int queued = 0;
    uint64_t admitted = 0;           // requests that got a slot
    int64_t slot_wait_ns = 0;        // summed over admitted requests
    uint64_t aborted_by_client = 0;  // hung up while holding a slot
    uint64_t abandoned_waiting = 0;  // hung up while waiting for a load or a slot
  };

  struct Snapshot {
    int in_flight = 0;  // all models
    int max_in_flight_observed = 0;
    int queued = 0;
    int max_queued_observed = 0;
    uint64_t rejected_503 = 0;
    uint64_t loads = 0;
    int64_t slot_wait_ns = 0;  // all models
    uint64_t aborted_by_client = 0;
    uint64_t abandoned_waiting = 0;
    std::vector<LoadedModel> loaded;
    std::vector<ModelStats> models;  // every model a request has asked for
  };

  FakeScheduler() = default;
  FakeScheduler(const FakeScheduler&) = delete;
  FakeScheduler& operator=(const FakeScheduler&) = delete;

  // Changes the capacities and the queue bound; waiters re-check at once.
  void SetLimits(Limits limits);
  // The capacity of `model` (canonical) under the current limits.
  int CapacityOf(const std::string& model) const;

  // Blocks until `model` is loaded (paying `load_ms` if needed) and, when
  // `need_slot`, one of its slots is held. On kAdmitted the caller must call
  // Finish() exactly once (use SlotLease). Any other outcome leaves nothing
  // to undo.
  [[nodiscard]] Admission Admit(const std::string& model, int64_t num_ctx, int64_t load_ms,
                                bool need_slot, const CancelFn& cancelled);

  // Ends an admitted request: frees its slot (if it held one) and starts the
  // model's keep-alive timer (`keep_alive_ms`: -1 forever, 0 unload now).
  // `aborted`: the client hung up while it held the slot.
  void Finish(const std::string& model, bool held_slot, int64_t keep_alive_ms,
              bool aborted = false);

  // Counts a request for `model` whose client hung up before it was admitted
  // (Admit returned kCancelled for a client's hang-up, not a stop).
  void NoteAbandoned(const std::string& model);

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
    std::deque<uint64_t> waiters;  // slot waiters in arrival order
    int in_flight = 0;             // slots held
    int max_in_flight = 0;
    int queued = 0;  // waiting for a load or a slot
    uint64_t admitted = 0;
    int64_t slot_wait_ns = 0;
    uint64_t aborted = 0;
    uint64_t abandoned = 0;
  };

  // Drops `m`'s load if its keep-alive expired. mu_ held.
  static void ExpireIfIdle(ModelState* m, Clock::time_point now);
  // CapacityOf with mu_ held.
  int CapacityLocked(const std::string& model) const;

  mutable std::mutex mu_;
  std::condition_variable cv_;  // signalled on any change of the state below
  std::map<std::string, ModelState> models_;
  uint64_t next_waiter_ = 0;
  Limits limits_;  // parallel_by_model keys canonical
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

  // The client hung up while this request held its slot: Release() counts
  // it as aborted. No effect after Release().
  void MarkAborted() { aborted_ = true; }
  bool held() const { return scheduler_ != nullptr; }
  void Release();

 private:
  FakeScheduler* scheduler_ = nullptr;  // not owned; outlives the lease
  std::string model_;
  bool held_slot_ = false;
  int64_t keep_alive_ms_ = 0;
  bool aborted_ = false;
};

}  // namespace digestd::testing

#endif  // DIGESTD_TESTS_SUPPORT_FAKE_OLLAMA_FAKE_SCHEDULER_H_
