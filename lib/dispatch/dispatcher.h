// Dispatcher: the two lane rings and the worker slots. On the loop thread it
// takes the next job (interactive lane first) while fewer than `limit` jobs
// are in flight, and runs it on libuv's thread pool with uv_queue_work; the
// outcome comes back on the loop thread in the after-work callback. A job
// whose kind says it cannot block (JobKind::RunsOnLoop: a noop without a
// sleep) runs on the loop thread in its turn instead, on_start and on_finish
// called back to back; it holds no slot beyond that call.
//
// Reserved slots: background work starts only while in_flight < limit -
// interactive_reserved, so those slots stay free for the interactive lane
// (docs/architecture.md, "Lanes and worker slots").
//
// Per-model limits: a job whose kind calls the LLM backend (JobKind::ModelOf)
// also needs room at its model: fewer requests in flight to that model than
// its ModelCapacity allows ([backend] parallel: learned, or pinned; embedding
// models 1). A lane's head job whose model is full is parked in a queue of
// its model, in order, so the jobs behind it (other models, noops) still
// start; a parked job starts before any later job of its lane once its model
// has room. Jobs put back at the head of a lane (preempted) or moved into
// the interactive lane (promoted) wait in a front queue served first.
//
// Preemption ([workers] preempt): an interactive job whose model is full of
// background requests aborts the one with the least progress (its cancel
// flag; the client closes the connection, which stops Ollama's generation)
// and starts at once. The aborted job comes back through on_preempted (the
// store gives its attempt back) and waits at the head of its lane. A job
// preempted [workers] max_preemptions times is not preempted again.
//
// Poison pills: PutPills() appends a pill to each ring; everything queued
// before a pill is still dispatched, nothing after it (docs/architecture.md,
// "Shutdown").
//
// Threads: every method is loop-thread only. A running job's pool thread sees
// only its WorkContext. Ownership: the rings hold JobPtr references to records
// that the JobTable owns; the Dispatcher owns its in-flight work items until
// their after-work callback has run.
//
// Destruction: destroy it only when in_flight() is 0 -- after Drained(), or
// after CancelInFlight() and running the loop until every outcome is back --
// because every started job's outcome must reach on_finish. Destroying it
// with work in flight is a programming error: debug builds abort (assert);
// release builds log an error, cancel that work and detach it, so each late
// after-work callback only frees its own item and never touches the dead
// Dispatcher: memory stays safe, those outcomes are lost. (Cancelling and
// draining inside the destructor was not chosen: draining means running the
// loop, which a destructor called from a loop callback must not do, and it
// would block for as long as the slowest job runs.)
#pragma once

#include <uv.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_set>

#include "dispatch/model_capacity.h"
#include "jobs/job.h"
#include "jobs/job_kind.h"
#include "queue/ring_queue.h"
#include "util/status.h"
#include "util/uv_handle.h"

namespace digestd {

struct WorkerLimits {
  int min = 1;
  int max = 1;
  int interactive_reserved = 0;
  int limit = 1;  // the current worker limit, min <= limit <= max
};

class Dispatcher {
 public:
  struct Hooks {
    // A job leaves its ring and starts. May be empty.
    std::function<void(const JobPtr&)> on_start;
    // A job's work returned (or was cancelled before it started).
    std::function<void(const JobPtr&, WorkOutcome)> on_finish;
    // Every pill has been reached and nothing is in flight. May be empty.
    std::function<void()> on_drained;
    // Whether the job at the head of a lane may start now (false while the
    // backend's circuit breaker is open). The job then waits in its ring,
    // and so does its lane, until Kick(). May be empty: always true.
    std::function<bool(const JobRecord&)> can_start;
    // A running background job was aborted for an interactive one: the
    // store makes it queued again without spending its attempt. The
    // dispatcher then puts it at the head of its lane. May be empty.
    std::function<void(const JobPtr&)> on_preempted;
    // Cancel flags of running jobs were just set: wake their workers so
    // they notice at once (the Ollama client's wait). May be empty.
    std::function<void()> wake_workers;
    // Whether someone follows the text of `job`, which starts now: its
    // worker then hands the answer's text over as it streams (TextSink),
    // and on_text gets the whole text so far each time it grew, on the
    // loop, the last time before on_finish. Both may be empty.
    std::function<bool(const JobRecord&)> want_text;
    std::function<void(const JobRecord&, const std::string& text)> on_text;
  };

  // `loop` must outlive the Dispatcher. `pool_size` is the thread pool size
  // fixed at start; the worker limit can never exceed it.
  Dispatcher(uv_loop_t* loop, size_t interactive_capacity, size_t background_capacity,
             WorkerLimits limits, int pool_size, const JobKindRegistry& kinds, Hooks hooks);
  ~Dispatcher();
  Dispatcher(const Dispatcher&) = delete;
  Dispatcher& operator=(const Dispatcher&) = delete;

  // Queues `job` on its lane. QueueFull when the ring is full, Unavailable
  // once pills are in. Dispatches at once when a slot is free.
  [[nodiscard]] Status Enqueue(JobPtr job);

  // Dispatches whatever may start now (after can_start's answer changed).
  void Kick() { Pump(); }

  // Applies new worker bounds; the limit is clamped into [min, max] (a raise
  // of max raises the limit with it). Dispatches if the limit grew.
  [[nodiscard]] Status SetLimits(int min, int max, int interactive_reserved);
  const WorkerLimits& limits() const { return limits_; }

  // Appends a poison pill to each ring. Idempotent.
  void PutPills();
  bool pills_in() const { return pills_in_; }
  // True once every pill was reached and nothing is in flight.
  bool Drained() const;

  // Asks every in-flight job to stop (their cancel flags). Their outcomes
  // still arrive through on_finish.
  void CancelInFlight();
  // Removes every queued job (before or after a pill) and returns them, for
  // the caller to release. Nothing queued is dispatched afterwards.
  std::vector<JobPtr> TakeQueued();

  // Drops the entries of jobs that left the queue elsewhere (cancelled, or
  // released when this node's lease on them was lost) and of promoted jobs'
  // old places, so depth() and each model's waiting count only live jobs and
  // claims see the room they left; then dispatches. Call after such a change.
  void Sweep();

  // The config that jobs started from now on see (reload swaps it); also
  // [backend] parallel and [workers] preempt / max_preemptions.
  void SetConfig(std::shared_ptr<const Config> config);

  // Someone waits for `job` now: a queued background job moves to the
  // interactive lane (ahead of that lane's ring). A job waiting out a retry
  // backoff (backing_off) or for the jobs it needs (waiting_after) only
  // changes lane: it is queued when that ends. False when it is not a
  // queued background job.
  bool Promote(const JobPtr& job);

  // How many more jobs `lane` should take from the shared table now: what
  // the models its jobs go to can start soon (free room at each model plus
  // one job ahead, less the jobs already waiting here; for the interactive
  // lane also the background requests it may preempt). Unbounded (SIZE_MAX) while the
  // lane's work calls no backend model.
  size_t ClaimRoom(Lane lane) const;
  // Whether a new job of `kind` with `input` in `lane` could start at its
  // model soon: free room at the model, less the jobs waiting for it here;
  // for the interactive lane also the background requests it may preempt.
  // INT_MAX for a job that calls no backend model.
  int RoomFor(const JobKind& kind, const nlohmann::json& input, Lane lane);

  // Per model: {"model","embedding","mode","limit","max","in_flight",
  // "waiting","reason","changed_ms_ago","server_wait_ms",...}.
  nlohmann::json ModelsJson() const;
  // nullptr when no job of `model` was seen.
  const ModelCapacity* capacity_of(const std::string& model) const;

  size_t depth(Lane lane) const;
  size_t capacity(Lane lane) const;
  int in_flight() const { return in_flight_; }
  int in_flight(Lane lane) const { return in_flight_lane_[static_cast<int>(lane)]; }
  int pool_size() const { return pool_size_; }
  uint64_t dispatched() const { return dispatched_; }
  uint64_t ran_on_loop() const { return ran_on_loop_; }  // of dispatched()
  uint64_t preemptions() const { return preemptions_; }  // background requests aborted
  uint64_t promoted() const { return promoted_; }        // moved to the interactive lane

 private:
  struct Entry {
    JobPtr job;  // nullptr: a poison pill
  };
  struct WorkItem;
  // Model slots kept at most while idle ones can be forgotten.
  static constexpr size_t kMaxModels = 64;
  // One backend model: its limit, and the jobs parked while it was full.
  struct ModelSlot {
    ModelSlot(int max, int64_t now_ms) : cap(max, 1, now_ms) {}
    ModelCapacity cap;
    bool embedding = false;
    int preempting = 0;  // aborted for an interactive job, not yet returned
    int waiting = 0;     // queued here (any lane, any queue) for this model
    // uv_hrtime until which background jobs of this model wait: the room a
    // preemption made is the interactive request's until it has reached
    // the server (its FIFO would give a slot to whichever arrives first).
    uint64_t background_hold_until = 0;
    std::deque<JobPtr> parked[kLaneCount];
    int active() const { return cap.in_flight() - preempting; }
  };
  // Where the next job of a lane comes from.
  struct Pick {
    enum class From { kNone, kFront, kParked, kRing } from = From::kNone;
    size_t index = 0;           // kFront
    ModelSlot* slot = nullptr;  // kParked
    JobPtr job;
  };

  void Pump();
  Pick PickNext(int lane);
  void Take(int lane, const Pick& pick);
  // The job's model slot (created on first sight), or nullptr when its kind
  // calls no backend model.
  ModelSlot* SlotOf(JobRecord& job);
  ModelSlot* SlotFor(const BackendModel& model);
  void ApplyModelSettings(ModelSlot& slot);
  bool Startable(const JobRecord& job, const ModelSlot* slot) const;
  WorkItem* Victim(const ModelSlot* slot) const;
  // An entry of `lane` is stale when its job moved lanes (promoted); one
  // that is no longer queued is skipped too. Either way it leaves `waiting`.
  bool Skip(int lane, const JobPtr& job);
  void Start(JobPtr job);
  void RunOnLoop(const JobKind& kind, JobPtr job);
  WorkContext ContextFor(const JobRecord& job) const;
  // kind.Run(ctx), or Cancelled when ctx was cancelled before it began;
  // an exception becomes Failed. Any thread.
  static WorkOutcome RunGuarded(const JobKind& kind, const WorkContext& ctx);
  static void OnWork(uv_work_t* req);
  static void OnAfterWork(uv_work_t* req, int status);

  uv_loop_t* loop_;
  RingQueue<Entry> rings_[kLaneCount];
  bool lane_closed_[kLaneCount] = {false, false};  // its pill was reached
  bool pills_in_ = false;
  WorkerLimits limits_;
  int pool_size_;
  const JobKindRegistry& kinds_;
  Hooks hooks_;
  int in_flight_ = 0;
  int in_flight_lane_[kLaneCount] = {0, 0};
  int preempting_ = 0;  // of in_flight_: aborted, not yet returned
  uint64_t dispatched_ = 0;
  uint64_t ran_on_loop_ = 0;
  uint64_t preemptions_ = 0;
  uint64_t promoted_ = 0;
  // Jobs put back at the head of a lane or promoted into it; served before
  // the parked queues and the ring.
  std::deque<JobPtr> front_[kLaneCount];
  size_t parked_[kLaneCount] = {0, 0};  // jobs in the model slots' parked queues
  size_t stale_[kLaneCount] = {0, 0};   // entries left behind by promoted jobs
  uint64_t next_seq_ = 0;               // enqueue order, across queues
  // Whether the lane's last started job called a backend model (claims then
  // follow the models' room); true until a job without one starts.
  bool backend_lane_[kLaneCount] = {true, true};
  std::map<std::string, ModelSlot, std::less<>> models_;
  std::shared_ptr<const Config> config_ = std::make_shared<const Config>();
  bool pumping_ = false;
  // Work items queued on the pool and not yet returned; owned here.
  std::unordered_set<WorkItem*> items_;
  // Wakes the loop when a running job's text grew (TextSink); made on first
  // use, unreferenced so it never keeps the loop alive.
  UvHandle<uv_async_t> text_async_;
  void DeliverText(WorkItem& item);
  static void OnTextAsync(uv_async_t* async);
  // Pumps when a model's background hold ends; made on first use,
  // unreferenced, closed with text_async_ once drained.
  UvHandle<uv_timer_t> hold_timer_;
  void ArmHoldTimer();
  static void OnHoldTimer(uv_timer_t* timer);
};

}  // namespace digestd
