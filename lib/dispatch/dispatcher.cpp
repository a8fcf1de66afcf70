#include "dispatch/dispatcher.h"

#include <algorithm>
#include <cassert>
#include <climits>

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
  // Loop thread only: the job's model slot (nullptr: no backend model) and
  // its capacity ticket; whether it is being aborted for an interactive job.
  ModelSlot* slot = nullptr;
  CapacityTicket ticket;
  bool preempting = false;
};

namespace {

// How long background jobs of a model wait after a preemption made room for
// an interactive request: time for that request to reach the server (a
// localhost send takes well under a millisecond; a busy machine may
// deschedule a thread for a few).
constexpr uint64_t kPreemptHoldNs = 20'000'000;

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

// What a finished request showed its model's capacity.
CapacitySample SampleOf(const WorkOutcome& outcome) {
  CapacitySample s;
  switch (outcome.kind) {
    case WorkOutcome::Kind::kDone:
      s.outcome = CapacityOutcome::kOk;
      break;
    case WorkOutcome::Kind::kBusy:
      s.outcome = CapacityOutcome::kBusy;
      break;
    case WorkOutcome::Kind::kRetry:
    case WorkOutcome::Kind::kFailed:
      s.outcome = outcome.timing.timed_out ? CapacityOutcome::kTimeout : CapacityOutcome::kError;
      break;
    case WorkOutcome::Kind::kCancelled:
      s.outcome = CapacityOutcome::kCancelled;
      break;
  }
  // A done job that stored a stand-in (fallback) has no answer's timing.
  if (s.outcome == CapacityOutcome::kOk && !outcome.error.empty() && !outcome.timing.total_ns)
    s.outcome = CapacityOutcome::kError;
  s.total_ns = outcome.timing.total_ns;
  s.load_ns = outcome.timing.load_ns;
  s.prompt_eval_ns = outcome.timing.prompt_eval_ns;
  s.eval_ns = outcome.timing.eval_ns;
  s.latency_ns = static_cast<int64_t>(outcome.backend_ns);
  return s;
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
  if (ring.size() >= ring.capacity() - 1 || depth(job->lane) >= capacity(job->lane)) {
    return Status::QueueFull("the " + std::string(LaneName(job->lane)) + " lane is full (" +
                             std::to_string(ring.capacity() - 1) +
                             " jobs); retry later or raise [queues] " +
                             std::string(LaneName(job->lane)));
  }
  job->queue_seq = ++next_seq_;
  if (ModelSlot* slot = SlotOf(*job)) ++slot->waiting;
  bool pushed = ring.Push(Entry{std::move(job)});
  (void)pushed;  // the size check above guarantees room
  Pump();
  return Status::Ok();
}

void Dispatcher::SetConfig(std::shared_ptr<const Config> config) {
  config_ = std::move(config);
  for (auto& [name, slot] : models_) ApplyModelSettings(slot);
  Pump();
}

void Dispatcher::ApplyModelSettings(ModelSlot& slot) {
  const int64_t now = static_cast<int64_t>(uv_now(loop_));
  slot.cap.SetBounds(limits_.max, now);
  // Ollama runs an embedding model one request at a time.
  int pin = slot.embedding ? 1 : config_->backend.parallel;
  if (pin > 0) {
    slot.cap.Pin(pin, now);
  } else if (slot.cap.pinned()) {
    slot.cap.Unpin(now);
  }
}

Dispatcher::ModelSlot* Dispatcher::SlotFor(const BackendModel& model) {
  auto it = models_.find(model.name);
  if (it == models_.end()) {
    // Jobs may name any model: forget idle ones (what they learned too)
    // rather than grow without bound.
    if (models_.size() >= kMaxModels) {
      std::erase_if(models_, [](const auto& entry) {
        const ModelSlot& s = entry.second;
        return s.cap.in_flight() == 0 && s.waiting == 0 && s.parked[0].empty() &&
               s.parked[1].empty();
      });
    }
    it = models_.try_emplace(model.name, limits_.max, static_cast<int64_t>(uv_now(loop_))).first;
    it->second.embedding = model.embedding;
    ApplyModelSettings(it->second);
  }
  return &it->second;
}

Dispatcher::ModelSlot* Dispatcher::SlotOf(JobRecord& job) {
  if (!job.model_resolved) {
    job.model_resolved = true;
    const JobKind* kind = kinds_.Find(job.kind);
    if (kind != nullptr && job.input) {
      if (auto m = kind->ModelOf(*job.input, *config_)) {
        job.model = std::move(m->name);
        job.embedding_model = m->embedding;
      }
    }
  }
  if (job.model.empty()) return nullptr;
  return SlotFor(BackendModel{job.model, job.embedding_model});
}

bool Dispatcher::Startable(const JobRecord& job, const ModelSlot* slot) const {
  if (slot == nullptr) return true;
  if (job.lane == Lane::kBackground) {
    // Requests being aborted still count until they return, and for a
    // moment after a preemption the room it made is the interactive job's:
    // a background request sent beside it could reach the server first.
    return slot->cap.in_flight() < slot->cap.limit() &&
           (slot->background_hold_until == 0 || uv_hrtime() >= slot->background_hold_until);
  }
  return slot->active() < slot->cap.limit() || Victim(slot) != nullptr;
}

void Dispatcher::ArmHoldTimer() {
  if (!hold_timer_.initialized()) {
    if (hold_timer_.get() == nullptr || uv_timer_init(loop_, hold_timer_.get()) != 0) return;
    hold_timer_.set_initialized();
    hold_timer_.get()->data = this;
    uv_unref(hold_timer_.base());
  }
  uint64_t next = 0;
  for (auto& [name, slot] : models_) {
    if (slot.background_hold_until != 0 && (next == 0 || slot.background_hold_until < next))
      next = slot.background_hold_until;
  }
  if (next == 0) {
    uv_timer_stop(hold_timer_.get());
    return;
  }
  const uint64_t now = uv_hrtime();
  // Rounded up: the loop's clock is in whole milliseconds.
  const uint64_t ms = next > now ? (next - now + 999999) / 1000000 : 0;
  uv_timer_start(hold_timer_.get(), &Dispatcher::OnHoldTimer, ms, 0);
}

void Dispatcher::OnHoldTimer(uv_timer_t* timer) {
  auto* self = static_cast<Dispatcher*>(timer->data);
  const uint64_t now = uv_hrtime();
  for (auto& [name, slot] : self->models_) {
    if (slot.background_hold_until != 0 && now >= slot.background_hold_until)
      slot.background_hold_until = 0;
  }
  self->ArmHoldTimer();
  self->Pump();
}

Dispatcher::WorkItem* Dispatcher::Victim(const ModelSlot* slot) const {
  if (!config_->workers.preempt) return nullptr;
  WorkItem* best = nullptr;
  uint64_t least = UINT64_MAX;
  for (WorkItem* item : items_) {
    if (item->slot != slot || item->preempting || item->job->lane != Lane::kBackground) continue;
    if (item->job->preempted >= config_->workers.max_preemptions) continue;
    uint64_t p = item->job->progress->load(std::memory_order_relaxed);
    // Least progress; of equals, the latest started: the least work thrown
    // away, and likely the one still waiting at the server.
    if (p < least || (p == least && item->started_ns > best->started_ns)) {
      least = p;
      best = item;
    }
  }
  return best;
}

bool Dispatcher::Skip(int lane, const JobPtr& job) {
  if (static_cast<int>(job->lane) != lane) {
    if (stale_[lane] > 0) --stale_[lane];
    return true;
  }
  if (job->state == JobState::kQueued) return false;
  if (ModelSlot* slot = SlotOf(*job); slot != nullptr && slot->waiting > 0) --slot->waiting;
  return true;
}

bool Dispatcher::Promote(const JobPtr& job) {
  if (pills_in_ || job->state != JobState::kQueued || job->lane != Lane::kBackground) return false;
  job->lane = Lane::kInteractive;
  if (job->backing_off || job->waiting_after) {
    // Not queued here yet: it joins the interactive lane when its backoff
    // ends (starting it now would skip the backoff the server asked for),
    // or when the jobs it needs are done.
    ++promoted_;
    return true;
  }
  ++stale_[static_cast<int>(Lane::kBackground)];
  front_[static_cast<int>(Lane::kInteractive)].push_back(job);
  ++promoted_;
  Pump();
  return true;
}

size_t Dispatcher::ClaimRoom(Lane lane) const {
  int l = static_cast<int>(lane);
  if (!backend_lane_[l]) return SIZE_MAX;
  if (models_.empty()) return depth(lane) == 0 ? 1 : 0;
  long room = 0;
  for (const auto& [name, slot] : models_) {
    // One job ahead per model: the next slot that frees starts it without
    // waiting for a claim's round trip.
    room += std::max(0, slot.cap.limit() + 1 - slot.active() - slot.waiting);
    if (lane == Lane::kInteractive && config_->workers.preempt) {
      for (WorkItem* item : items_) {
        if (item->slot == &slot && !item->preempting && item->job->lane == Lane::kBackground &&
            item->job->preempted < config_->workers.max_preemptions)
          ++room;
      }
    }
  }
  return static_cast<size_t>(std::max(0L, room));
}

int Dispatcher::RoomFor(const JobKind& kind, const nlohmann::json& input, Lane lane) {
  auto m = kind.ModelOf(input, *config_);
  if (!m) return INT_MAX;
  const ModelSlot* slot = SlotFor(*m);
  int room = std::max(0, slot->cap.limit() - slot->active() - slot->waiting);
  if (lane == Lane::kInteractive && room == 0 && slot->parked[0].empty() &&
      Victim(slot) != nullptr) {
    room = 1;  // it starts at once, in a preempted request's place
  }
  return room;
}

nlohmann::json Dispatcher::ModelsJson() const {
  const int64_t now = static_cast<int64_t>(uv_now(loop_));
  nlohmann::json out = nlohmann::json::array();
  for (const auto& [name, slot] : models_) {
    nlohmann::json m = slot.cap.ToJson(now);
    m["model"] = name;
    m["embedding"] = slot.embedding;
    m["waiting"] = slot.waiting;
    m["preempting"] = slot.preempting;
    out.push_back(std::move(m));
  }
  return out;
}

const ModelCapacity* Dispatcher::capacity_of(const std::string& model) const {
  auto it = models_.find(model);
  return it == models_.end() ? nullptr : &it->second.cap;
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
  for (auto& [name, slot] : models_) ApplyModelSettings(slot);
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
  if (!items_.empty() && hooks_.wake_workers) hooks_.wake_workers();
}

std::vector<JobPtr> Dispatcher::TakeQueued() {
  std::vector<JobPtr> out;
  auto take = [&out](int lane, JobPtr job) {
    // A promoted job's old entry in the other lane is not a second job.
    if (job && static_cast<int>(job->lane) == lane) out.push_back(std::move(job));
  };
  for (int lane = 0; lane < kLaneCount; ++lane) {
    for (auto& job : front_[lane]) take(lane, std::move(job));
    front_[lane].clear();
    for (auto& [name, slot] : models_) {
      for (auto& job : slot.parked[lane]) take(lane, std::move(job));
      slot.parked[lane].clear();
    }
    while (auto entry = rings_[lane].Pop()) take(lane, std::move(entry->job));
    parked_[lane] = 0;
    stale_[lane] = 0;
    if (pills_in_) lane_closed_[lane] = true;
  }
  for (auto& [name, slot] : models_) slot.waiting = 0;
  return out;
}

void Dispatcher::Sweep() {
  if (pumping_) return;  // a hook of Pump's own; Pump skips such entries itself
  auto live = [](int lane, const JobPtr& job) {
    return static_cast<int>(job->lane) == lane && job->state == JobState::kQueued;
  };
  for (auto& [name, slot] : models_) slot.waiting = 0;
  auto count = [this](const JobPtr& job) {
    if (ModelSlot* slot = SlotOf(*job)) ++slot->waiting;
  };
  for (int lane = 0; lane < kLaneCount; ++lane) {
    std::erase_if(front_[lane], [&](const JobPtr& job) { return !live(lane, job); });
    for (const JobPtr& job : front_[lane]) count(job);
    parked_[lane] = 0;
    for (auto& [name, slot] : models_) {
      std::erase_if(slot.parked[lane], [&](const JobPtr& job) { return !live(lane, job); });
      parked_[lane] += slot.parked[lane].size();
      for (const JobPtr& job : slot.parked[lane]) count(job);
    }
    // The ring keeps its order: every entry goes round once, the dead ones
    // are left out.
    auto& ring = rings_[lane];
    for (size_t n = ring.size(); n > 0; --n) {
      Entry e = std::move(*ring.Pop());
      if (e.job && !live(lane, e.job)) continue;
      if (e.job) count(e.job);
      bool pushed = ring.Push(std::move(e));
      (void)pushed;  // one out, one back in
    }
    stale_[lane] = 0;
  }
  Pump();
}

size_t Dispatcher::depth(Lane lane) const {
  int l = static_cast<int>(lane);
  const auto& ring = rings_[l];
  size_t n = ring.size();
  if (pills_in_ && !lane_closed_[l] && n > 0) --n;  // the pill
  n += front_[l].size() + parked_[l];
  return n > stale_[l] ? n - stale_[l] : 0;
}

size_t Dispatcher::capacity(Lane lane) const {
  return rings_[static_cast<int>(lane)].capacity() - 1;
}

Dispatcher::Pick Dispatcher::PickNext(int lane) {
  Pick pick;
  // 1. Jobs put back at the head of the lane or promoted into it, in order;
  // one whose model is full lets the next one (another model) go first.
  auto& front = front_[lane];
  while (!front.empty() && Skip(lane, front.front())) front.pop_front();
  for (size_t i = 0; i < front.size(); ++i) {
    const JobPtr& job = front[i];
    if (static_cast<int>(job->lane) != lane || job->state != JobState::kQueued) continue;
    if (Startable(*job, SlotOf(*job))) {
      pick.from = Pick::From::kFront;
      pick.index = i;
      pick.job = job;
      return pick;
    }
  }
  // 2. Parked jobs (popped from the ring while their model was full) came
  // before every job still in the ring: the oldest whose model has room.
  if (parked_[lane] > 0) {
    for (auto& [name, slot] : models_) {
      auto& q = slot.parked[lane];
      while (!q.empty() && Skip(lane, q.front())) {
        q.pop_front();
        --parked_[lane];
      }
      if (q.empty() || !Startable(*q.front(), &slot)) continue;
      if (!pick.job || q.front()->queue_seq < pick.job->queue_seq) {
        pick.from = Pick::From::kParked;
        pick.slot = &slot;
        pick.job = q.front();
      }
    }
    if (pick.job) return pick;
  }
  // 3. The ring: a head job whose model is full is parked, so the jobs
  // behind it are not held up.
  auto& ring = rings_[lane];
  while (!ring.empty()) {
    Entry* head = ring.Front();
    if (!head->job) {
      // The pill: the lane closes once nothing before it waits any more.
      if (front.empty() && parked_[lane] == 0) {
        ring.Pop();
        lane_closed_[lane] = true;
        LOG_INFO("%s lane reached its shutdown pill", LaneName(static_cast<Lane>(lane)).data());
      }
      return pick;
    }
    if (Skip(lane, head->job)) {
      ring.Pop();
      continue;
    }
    ModelSlot* slot = SlotOf(*head->job);
    if (Startable(*head->job, slot)) {
      pick.from = Pick::From::kRing;
      pick.job = head->job;
      return pick;
    }
    slot->parked[lane].push_back(std::move(head->job));
    ++parked_[lane];
    ring.Pop();
  }
  return pick;
}

void Dispatcher::Take(int lane, const Pick& pick) {
  switch (pick.from) {
    case Pick::From::kFront:
      front_[lane].erase(front_[lane].begin() + static_cast<std::ptrdiff_t>(pick.index));
      break;
    case Pick::From::kParked:
      pick.slot->parked[lane].pop_front();
      --parked_[lane];
      break;
    case Pick::From::kRing:
      rings_[lane].Pop();
      break;
    case Pick::From::kNone:
      break;
  }
}

void Dispatcher::Pump() {
  if (pumping_) return;  // a hook re-entered; the outer loop continues
  pumping_ = true;
  // Slots of requests being aborted are as good as free: their threads
  // return within the client's cancel check.
  while (in_flight_ - preempting_ < limits_.limit) {
    JobPtr next;
    for (int lane = 0; lane < kLaneCount && !next; ++lane) {
      if (lane_closed_[lane]) continue;
      if (lane == static_cast<int>(Lane::kBackground) &&
          in_flight_ - preempting_ >= limits_.limit - limits_.interactive_reserved) {
        continue;  // the remaining slots are reserved for interactive work
      }
      Pick pick = PickNext(lane);
      if (!pick.job) continue;
      if (hooks_.can_start && !hooks_.can_start(*pick.job)) {
        if (pick.job->state == JobState::kQueued) continue;  // held back; waits for Kick()
      }
      Take(lane, pick);
      if (pick.job->state != JobState::kQueued) {  // dropped by the store meanwhile
        Skip(lane, pick.job);
        continue;
      }
      next = std::move(pick.job);
    }
    if (!next) break;
    if (ModelSlot* slot = SlotOf(*next); slot != nullptr && slot->waiting > 0) --slot->waiting;
    Start(std::move(next));
  }
  pumping_ = false;
  if (Drained()) {
    text_async_.Close();  // nothing runs any more: the loop may end
    hold_timer_.Close();
    if (hooks_.on_drained) hooks_.on_drained();
  }
}

void Dispatcher::Start(JobPtr job) {
  const JobKind* kind = kinds_.Find(job->kind);
  if (kind == nullptr) {
    // Validated at submit; reaching here means the registry changed.
    if (hooks_.on_finish)
      hooks_.on_finish(job, WorkOutcome::Failed("unknown job kind " + job->kind));
    return;
  }
  // Whether the lane's jobs go to a backend model (ClaimRoom): told by
  // every start, a job run on the loop (a noop) too, or a lane of such jobs
  // would claim one job at a time for ever.
  backend_lane_[static_cast<int>(job->lane)] = !job->model.empty();
  if (job->input && kind->RunsOnLoop(*job->input, *config_)) {
    RunOnLoop(*kind, std::move(job));
    return;
  }
  auto item = std::make_unique<WorkItem>();
  item->owner = this;
  item->kind = kind;
  if (ModelSlot* slot = SlotOf(*job)) {
    // An interactive job must not wait at the server either: it needs a
    // slot within what the server is known to take. While the limit probes
    // one over that, it may take two requests' places (the probe's, which
    // waits at the server anyway, and one more).
    const int room = job->lane == Lane::kInteractive ? slot->cap.proven() : slot->cap.limit();
    bool preempted = false;
    while (slot->active() >= room) {
      // Only an interactive job gets here with its model full (Startable):
      // abort the background request with the least progress.
      WorkItem* victim = Victim(slot);
      if (victim == nullptr) break;
      victim->preempting = true;
      preempted = true;
      ++slot->preempting;
      ++preempting_;
      ++preemptions_;
      victim->ctx.cancel->store(true, std::memory_order_relaxed);
      if (hooks_.wake_workers) hooks_.wake_workers();
      LOG_INFO("job %s (background, %s): aborted for interactive job %s (preempted %d times)",
               victim->job->key.c_str(), job->model.c_str(), job->key.c_str(),
               victim->job->preempted + 1);
    }
    if (preempted) {
      slot->background_hold_until = uv_hrtime() + kPreemptHoldNs;
      ArmHoldTimer();
    }
    item->slot = slot;
    item->ticket = slot->cap.OnStart();
  }
  job->progress->store(0, std::memory_order_relaxed);
  item->ctx = ContextFor(*job);
  if (hooks_.want_text && hooks_.on_text && hooks_.want_text(*job)) {
    if (!text_async_.initialized() && text_async_.get() != nullptr &&
        uv_async_init(loop_, text_async_.get(), &OnTextAsync) == 0) {
      text_async_.set_initialized();
      text_async_.get()->data = this;
      uv_unref(text_async_.base());
    }
    if (text_async_.initialized()) item->ctx.text = std::make_shared<TextSink>(text_async_.get());
  }
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
    if (item->slot != nullptr) {
      item->slot->cap.OnFinish(item->ticket,
                               CapacitySample{CapacityOutcome::kError, {}, {}, {}, {}, 0},
                               static_cast<int64_t>(uv_now(loop_)));
    }
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

void Dispatcher::DeliverText(WorkItem& item) {
  if (!item.ctx.text || !hooks_.on_text) return;
  if (auto text = item.ctx.text->TakeIfChanged()) hooks_.on_text(*item.job, *text);
}

void Dispatcher::OnTextAsync(uv_async_t* async) {
  auto* self = static_cast<Dispatcher*>(async->data);
  // Copied: on_text must not change the work items, but be safe if it does.
  std::vector<WorkItem*> items(self->items_.begin(), self->items_.end());
  for (WorkItem* item : items) {
    if (self->items_.count(item) > 0) self->DeliverText(*item);
  }
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
  self->DeliverText(*item);  // the text so far, before the job's end is told
  --self->in_flight_;
  --self->in_flight_lane_[static_cast<int>(item->job->lane)];
  if (status == UV_ECANCELED) {
    item->outcome = WorkOutcome::Cancelled("cancelled before it started");
  }
  LogEnded(*item->job, item->ctx.attempt, item->outcome, item->started_ns);
  const JobPtr& job = item->job;
  if (item->slot != nullptr) {
    ModelSlot* slot = item->slot;
    const int before = slot->cap.limit();
    slot->cap.OnFinish(item->ticket, SampleOf(item->outcome),
                       static_cast<int64_t>(uv_now(self->loop_)));
    if (slot->cap.limit() != before) {
      LOG_INFO("model %s: limit %d -> %d: %s", job->model.c_str(), before, slot->cap.limit(),
               slot->cap.reason().c_str());
    }
    if (item->preempting) {
      --slot->preempting;
      --self->preempting_;
    }
  }
  // Aborted for an interactive job (not by a cancel or the shutdown): back
  // to the head of its lane, its attempt given back.
  if (item->preempting && item->outcome.kind == WorkOutcome::Kind::kCancelled &&
      !job->user_cancelled && !self->pills_in_) {
    ++job->preempted;
    if (self->hooks_.on_preempted) self->hooks_.on_preempted(job);
    job->cancel->store(false, std::memory_order_relaxed);
    if (ModelSlot* slot = self->SlotOf(*job)) ++slot->waiting;
    self->front_[static_cast<int>(job->lane)].push_front(job);
    self->Pump();
    return;
  }
  if (self->hooks_.on_finish) self->hooks_.on_finish(job, std::move(item->outcome));
  self->Pump();
}

}  // namespace digestd
