#include "dispatch/dispatcher.h"

#include <algorithm>
#include <cassert>

#include "obs/log.h"

namespace digestd {

struct Dispatcher::WorkItem {
  uv_work_t req{};
  Dispatcher* owner = nullptr;  // null once detached by ~Dispatcher; loop thread only
  JobPtr job;                   // loop thread only: never read in OnWork
  const JobKind* kind = nullptr;
  WorkContext ctx;          // all the pool thread may touch
  WorkOutcome outcome;      // written by the pool thread, read after work
  uint64_t started_ns = 0;  // uv_hrtime when it was handed to the pool
};

namespace {

std::string_view OutcomeName(WorkOutcome::Kind kind) {
  switch (kind) {
    case WorkOutcome::Kind::kDone:
      return "done";
    case WorkOutcome::Kind::kFailed:
      return "failed";
    case WorkOutcome::Kind::kRetry:
      return "retry";
    case WorkOutcome::Kind::kBusy:
      return "busy";
    case WorkOutcome::Kind::kCancelled:
      return "cancelled";
  }
  return "done";
}

// The per-job debug lines: one when an attempt starts, one when it ends.
void LogStarted(const JobRecord& job, int attempt) {
  LOG_JOB(LogLevel::kDebug, (JobLogFields{job.key, job.kind, LaneName(job.lane), attempt, -1}),
          "job %s (%s, %s lane): attempt %d started", job.key.c_str(), job.kind.c_str(),
          LaneName(job.lane).data(), attempt);
}

void LogEnded(const JobRecord& job, int attempt, const WorkOutcome& outcome, uint64_t started_ns) {
  if (!LogEnabled(LogLevel::kDebug)) return;
  const double ran_s = static_cast<double>(uv_hrtime() - started_ns) / 1e9;
  const auto backend_ms = static_cast<int64_t>(outcome.backend_ns / 1000000);
  LOG_JOB(LogLevel::kDebug,
          (JobLogFields{job.key, job.kind, LaneName(job.lane), attempt, backend_ms}),
          "job %s (%s, %s lane): attempt %d ended %s after %.3f s (backend %lld ms)%s%s",
          job.key.c_str(), job.kind.c_str(), LaneName(job.lane).data(), attempt,
          OutcomeName(outcome.kind).data(), ran_s, static_cast<long long>(backend_ms),
          outcome.error.empty() ? "" : ": ", outcome.error.c_str());
}

}  // namespace

Dispatcher::Dispatcher(uv_loop_t* loop, size_t interactive_capacity, size_t background_capacity,
                       WorkerLimits limits, int pool_size, const JobKindRegistry& kinds,
                       Hooks hooks)
    : loop_(loop),
      // One extra slot per ring so a pill always fits behind a full lane.
      rings_{RingQueue<Entry>(interactive_capacity + 1), RingQueue<Entry>(background_capacity + 1)},
      limits_(limits),
      pool_size_(pool_size),
      kinds_(kinds),
      hooks_(std::move(hooks)) {
  limits_.limit = std::clamp(limits_.limit, limits_.min, std::min(limits_.max, pool_size_));
}

Dispatcher::~Dispatcher() {
  if (items_.empty()) return;
  LOG_ERROR(
      "dispatcher destroyed with %zu jobs in flight; their outcomes are lost (a bug: run the "
      "loop until in_flight() is 0 first)",
      items_.size());
  assert(items_.empty() && "Dispatcher destroyed with work in flight");
  // Items still on the pool would call back into a dead object: detach them.
  for (WorkItem* item : items_) {
    item->ctx.cancel->store(true, std::memory_order_relaxed);
    uv_cancel(reinterpret_cast<uv_req_t*>(&item->req));  // fails harmlessly once running
    item->owner = nullptr;
  }
}

Status Dispatcher::Enqueue(JobPtr job) {
  if (pills_in_) {
    return Status::Unavailable("digestd is shutting down and accepts no new jobs");
  }
  auto& ring = rings_[static_cast<int>(job->lane)];
  if (ring.size() >= ring.capacity() - 1) {
    return Status::QueueFull("the " + std::string(LaneName(job->lane)) + " lane is full (" +
                             std::to_string(ring.capacity() - 1) +
                             " jobs); retry later or raise [queues] " +
                             std::string(LaneName(job->lane)));
  }
  bool pushed = ring.Push(Entry{std::move(job)});
  (void)pushed;  // the size check above guarantees room
  Pump();
  return Status::Ok();
}

Status Dispatcher::SetLimits(int min, int max, int interactive_reserved) {
  if (min < 1 || min > max) {
    return Status::BadRequest("workers: min = " + std::to_string(min) +
                              " and max = " + std::to_string(max) + " need 1 <= min <= max");
  }
  if (max > pool_size_) {
    return Status::BadRequest("workers: max = " + std::to_string(max) +
                              " is above the thread pool size " + std::to_string(pool_size_) +
                              " fixed at start; restart digestd with a larger [workers] max");
  }
  if (interactive_reserved >= max) {
    return Status::BadRequest(
        "workers: interactive_reserved = " + std::to_string(interactive_reserved) +
        " must be below max = " + std::to_string(max));
  }
  bool raise = max > limits_.max;
  limits_.min = min;
  limits_.max = max;
  limits_.interactive_reserved = interactive_reserved;
  limits_.limit = raise ? max : std::clamp(limits_.limit, min, max);
  Pump();
  return Status::Ok();
}

void Dispatcher::PutPills() {
  if (pills_in_) return;
  pills_in_ = true;
  for (auto& ring : rings_) {
    bool pushed = ring.Push(Entry{nullptr});
    (void)pushed;  // the spare slot is kept for the pill
  }
  Pump();
}

bool Dispatcher::Drained() const {
  return lane_closed_[0] && lane_closed_[1] && in_flight_ == 0;
}

void Dispatcher::CancelInFlight() {
  for (WorkItem* item : items_) {
    item->ctx.cancel->store(true, std::memory_order_relaxed);
    uv_cancel(reinterpret_cast<uv_req_t*>(&item->req));  // fails harmlessly once running
  }
}

std::vector<JobPtr> Dispatcher::TakeQueued() {
  std::vector<JobPtr> out;
  for (int lane = 0; lane < kLaneCount; ++lane) {
    while (auto entry = rings_[lane].Pop()) {
      if (entry->job) out.push_back(std::move(entry->job));
    }
    if (pills_in_) lane_closed_[lane] = true;
  }
  return out;
}

size_t Dispatcher::depth(Lane lane) const {
  const auto& ring = rings_[static_cast<int>(lane)];
  size_t n = ring.size();
  if (pills_in_ && !lane_closed_[static_cast<int>(lane)] && n > 0) --n;  // the pill
  return n;
}

size_t Dispatcher::capacity(Lane lane) const {
  return rings_[static_cast<int>(lane)].capacity() - 1;
}

void Dispatcher::Pump() {
  if (pumping_) return;  // a hook re-entered; the outer loop continues
  pumping_ = true;
  while (in_flight_ < limits_.limit) {
    std::optional<Entry> next;
    for (int lane = 0; lane < kLaneCount && !next; ++lane) {
      if (lane_closed_[lane]) continue;
      auto& ring = rings_[lane];
      if (ring.empty()) continue;
      if (lane == static_cast<int>(Lane::kBackground) && ring.Front()->job != nullptr &&
          in_flight_ >= limits_.limit - limits_.interactive_reserved) {
        continue;  // the remaining slots are reserved for interactive work
      }
      if (ring.Front()->job != nullptr && ring.Front()->job->state == JobState::kQueued &&
          hooks_.can_start && !hooks_.can_start(*ring.Front()->job)) {
        continue;  // held back (breaker open); the lane waits for Kick()
      }
      next = ring.Pop();
      if (!next->job) {
        lane_closed_[lane] = true;
        LOG_INFO("%s lane reached its shutdown pill", LaneName(static_cast<Lane>(lane)).data());
        next.reset();
        continue;
      }
    }
    if (!next) break;
    if (next->job->state != JobState::kQueued) continue;  // cancelled while queued
    Start(std::move(next->job));
  }
  pumping_ = false;
  if (Drained() && hooks_.on_drained) hooks_.on_drained();
}

void Dispatcher::Start(JobPtr job) {
  const JobKind* kind = kinds_.Find(job->kind);
  if (kind == nullptr) {
    // Validated at submit; reaching here means the registry changed.
    if (hooks_.on_finish)
      hooks_.on_finish(job, WorkOutcome::Failed("unknown job kind " + job->kind));
    return;
  }
  if (job->input && kind->RunsOnLoop(*job->input, *config_)) {
    RunOnLoop(*kind, std::move(job));
    return;
  }
  auto item = std::make_unique<WorkItem>();
  item->owner = this;
  item->kind = kind;
  item->ctx = ContextFor(*job);
  item->req.data = item.get();
  item->job = std::move(job);
  int lane = static_cast<int>(item->job->lane);
  if (hooks_.on_start) hooks_.on_start(item->job);
  LogStarted(*item->job, item->ctx.attempt);
  item->started_ns = uv_hrtime();
  int rc = uv_queue_work(loop_, &item->req, &Dispatcher::OnWork, &Dispatcher::OnAfterWork);
  if (rc != 0) {
    // libuv's rule: the callbacks will not run, so finish the job here.
    LOG_ERROR("uv_queue_work failed: %s", uv_strerror(rc));
    if (hooks_.on_finish) {
      hooks_.on_finish(item->job,
                       WorkOutcome::Failed(std::string("could not start: ") + uv_strerror(rc)));
    }
    return;
  }
  ++in_flight_;
  ++in_flight_lane_[lane];
  ++dispatched_;
  items_.insert(item.release());
}

WorkContext Dispatcher::ContextFor(const JobRecord& job) const {
  WorkContext ctx;
  ctx.key = job.key;
  ctx.input = job.input;
  ctx.cancel = job.cancel;
  ctx.progress = job.progress;
  ctx.attempt = job.attempts + 1;
  ctx.config = config_;
  return ctx;
}

WorkOutcome Dispatcher::RunGuarded(const JobKind& kind, const WorkContext& ctx) {
  try {
    if (ctx.cancelled()) return WorkOutcome::Cancelled("cancelled before it started");
    return kind.Run(ctx);
  } catch (const std::exception& e) {
    return WorkOutcome::Failed(std::string("internal error: ") + e.what());
  }
}

void Dispatcher::RunOnLoop(const JobKind& kind, JobPtr job) {
  WorkContext ctx = ContextFor(*job);
  if (hooks_.on_start) hooks_.on_start(job);
  LogStarted(*job, ctx.attempt);
  const uint64_t started_ns = uv_hrtime();
  ++dispatched_;
  ++ran_on_loop_;
  WorkOutcome outcome = RunGuarded(kind, ctx);
  LogEnded(*job, ctx.attempt, outcome, started_ns);
  if (hooks_.on_finish) hooks_.on_finish(job, std::move(outcome));
}

void Dispatcher::OnWork(uv_work_t* req) {
  auto* item = static_cast<WorkItem*>(req->data);
  item->outcome = RunGuarded(*item->kind, item->ctx);
}

void Dispatcher::OnAfterWork(uv_work_t* req, int status) {
  std::unique_ptr<WorkItem> item(static_cast<WorkItem*>(req->data));
  Dispatcher* self = item->owner;
  if (self == nullptr) return;  // detached by the destructor: only free the item
  self->items_.erase(item.get());
  --self->in_flight_;
  --self->in_flight_lane_[static_cast<int>(item->job->lane)];
  if (status == UV_ECANCELED) {
    item->outcome = WorkOutcome::Cancelled("cancelled before it started");
  }
  LogEnded(*item->job, item->ctx.attempt, item->outcome, item->started_ns);
  if (self->hooks_.on_finish) self->hooks_.on_finish(item->job, std::move(item->outcome));
  self->Pump();
}

}  // namespace digestd
