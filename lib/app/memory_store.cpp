#include "app/memory_store.h"

#include <algorithm>

#include "app/job_view.h"
#include "app/outcome_policy.h"
#include "app/submit_spec.h"
#include "backend/ollama_client.h"
#include "jobs/llm_job.h"
#include "obs/log.h"
#include "util/clock.h"

namespace digestd {

struct MemoryStore::PendingWait {
  UvHandle<uv_timer_t> timer;
  uint64_t token = 0;
  std::function<void()> answer;  // sends the current state, once
};

MemoryStore::MemoryStore(StoreEnv env) : env_(std::move(env)) {}

MemoryStore::~MemoryStore() = default;

Status MemoryStore::Start() {
  env_.jobs->SetRetention(static_cast<size_t>(env_.config->jobs.retain_finished));
  delayed_ = std::make_unique<DelayQueue>(env_.loop, [this](JobPtr job) { OnRetryDue(job); });
  if (Status st = InitTimer(env_.loop, release_timer_, this); !st.ok()) return st;
  env_.ready();
  return Status::Ok();
}

nlohmann::json MemoryStore::View(const JobRecord& job) const {
  return JobJson(ViewOf(job, uv_hrtime(), env_.config->backend.max_attempts));
}

Result<nlohmann::json> MemoryStore::SubmitOne(const nlohmann::json& spec) {
  std::string key = SpecKey(spec);
  if (key.empty()) key = env_.jobs->NewKey(env_.node_id);
  if (JobPtr existing = env_.jobs->Find(key)) {
    if (existing->input_hash != InputHash(SpecKind(spec), SpecInput(spec))) {
      if (!SpecReplace(spec)) return ConflictError(key);
      return Replace(existing, spec);
    }
    if (Expired(*existing)) {
      auto answer = Replace(existing, spec);
      if (answer.ok()) {
        answer->erase("replaced");
        (*answer)["expired"] = true;
      }
      return answer;
    }
    env_.jobs->NoteDuplicate();
    return SubmitAnswerJson(key, existing->state, /*existing=*/true);
  }
  JobPtr job =
      env_.jobs->Create(key, SpecGroup(spec), SpecKind(spec), SpecLane(spec), SpecInput(spec));
  job->ttl_s = SpecTtlS(spec, *env_.config);
  job->after = SpecAfter(spec);
  if (!job->after.empty() && !ReleaseWhenReady(job)) {
    return SubmitAnswerJson(key, job->state, /*existing=*/false);
  }
  Status st = env_.dispatcher->Enqueue(job);
  if (!st.ok()) {
    env_.jobs->Forget(job);
    return st;
  }
  return SubmitAnswerJson(key, job->state, /*existing=*/false);
}

bool MemoryStore::Expired(const JobRecord& job) const {
  return job.state == JobState::kDone && job.ttl_s > 0 && job.finished_at != 0 &&
         uv_hrtime() - job.finished_at >= static_cast<uint64_t>(job.ttl_s) * 1'000'000'000ULL;
}

Result<nlohmann::json> MemoryStore::Replace(const JobPtr& job, const nlohmann::json& spec) {
  if (job->state == JobState::kRunning) return RunningNotReplaceable(job->key);
  job->ttl_s = SpecTtlS(spec, *env_.config);
  auto input = std::make_shared<const nlohmann::json>(SpecInput(spec));
  if (job->state == JobState::kQueued && !job->backing_off && !job->waiting_after) {
    // Out of its ring first (Sweep drops entries that are not queued), so
    // it is queued once, with the new input.
    job->state = JobState::kCancelled;
    env_.dispatcher->Sweep();
  }
  Status st = Requeue(job, SpecLane(spec), SpecKind(spec), std::move(input));
  if (!st.ok()) return st;
  nlohmann::json answer = SubmitAnswerJson(job->key, job->state, /*existing=*/true);
  answer["replaced"] = true;
  return answer;
}

Status MemoryStore::Requeue(const JobPtr& job, Lane lane, std::string kind,
                            std::shared_ptr<const nlohmann::json> input) {
  env_.jobs->Requeue(job, lane, std::move(kind), std::move(input));
  // A job cancelled while it waited out a retry backoff is still in the
  // delay queue, which queues it when the backoff ends.
  if (job->backing_off) return Status::Ok();
  // A job with "after" waits for the jobs it needs again, and gets their
  // results as they are now.
  if (!job->after.empty()) {
    if (job->input->is_object() && job->input->contains(kAfterResults)) {
      nlohmann::json plain = *job->input;
      plain.erase(kAfterResults);
      job->input = std::make_shared<const nlohmann::json>(std::move(plain));
    }
    if (!ReleaseWhenReady(job)) return Status::Ok();
  }
  Status st = env_.dispatcher->Enqueue(job);
  if (!st.ok()) {
    env_.jobs->MarkCancelled(job, "queued again, but not run: " + st.message());
  }
  return st;
}

void MemoryStore::Submit(const Request& req, std::vector<const nlohmann::json*> specs, bool single,
                         const ControlServer::Reply& reply, SubmitThen then) {
  if (single) {
    auto one = SubmitOne(*specs[0]);
    if (one.ok() && then) {
      then(std::move(one).value());
      return;
    }
    reply.Send(one.ok() ? OkLine(req.id, std::move(one).value()) : ErrorLine(req.id, one.status()));
    return;
  }
  std::vector<nlohmann::json> answers(specs.size());
  std::vector<Status> errors(specs.size());
  for (size_t i = 0; i < specs.size(); ++i) {
    auto one = SubmitOne(*specs[i]);
    if (one.ok()) {
      answers[i] = std::move(one).value();
    } else {
      answers[i] = {{"key", SpecKey(*specs[i])}};
      errors[i] = one.status();
    }
  }
  reply.Send(BatchAnswerLine(req.id, std::move(answers), errors));
}

void MemoryStore::GetResult(const Request& req, ResultQuery query,
                            const ControlServer::Reply& reply) {
  JobTable& jobs = *env_.jobs;
  bool is_group = !query.group.empty();
  // `waited`: the answer comes after waiting (not at the first look), so it
  // counts as late or miss, never hit.
  const bool counted = query.wait_ms > 0;  // not when a shutdown answers it (AnswerWaits)
  auto answer = [this, id = req.id, key = query.key, group = query.group, is_group, reply,
                 counted](bool waited) {
    if (is_group) {
      const auto& parts = env_.jobs->FindGroup(group);
      if (parts.empty()) {
        reply.Send(ErrorLine(id, Status::NotFound("no group \"" + group + "\"")));
        return;
      }
      if (counted && !waits_answered_ && env_.precompute != nullptr) {
        bool all = std::all_of(parts.begin(), parts.end(),
                               [](const JobPtr& j) { return IsTerminal(j->state); });
        env_.precompute->Count("group", group, PrecomputeTally::OutcomeOf(all, waited));
      }
      std::vector<JobView> views;
      views.reserve(parts.size());
      Nanos now = uv_hrtime();
      for (const auto& p : parts) {
        views.push_back(ViewOf(*p, now, env_.config->backend.max_attempts));
      }
      reply.Send(OkLine(id, GroupJson(group, views)));
      return;
    }
    JobPtr job = env_.jobs->Find(key);
    if (!job) {
      reply.Send(
          ErrorLine(id, Status::NotFound("no job with key \"" + key +
                                         "\": never submitted, or finished and evicted past [jobs] "
                                         "retain_finished")));
    } else {
      if (counted && !waits_answered_ && env_.precompute != nullptr) {
        env_.precompute->Count(job->kind, job->group.empty() ? job->key : job->group,
                               PrecomputeTally::OutcomeOf(IsTerminal(job->state), waited));
      }
      reply.Send(OkLine(id, View(*job)));
    }
  };
  bool ready;
  if (is_group) {
    const auto& parts = jobs.FindGroup(query.group);
    ready = parts.empty() || std::all_of(parts.begin(), parts.end(),
                                         [](const JobPtr& j) { return IsTerminal(j->state); });
  } else {
    JobPtr job = jobs.Find(query.key);
    ready = !job || IsTerminal(job->state);
  }
  if (ready || query.wait_ms == 0 || *env_.phase == Phase::kStopping) {
    answer(/*waited=*/false);
    return;
  }
  auto wait = std::make_shared<PendingWait>();
  std::weak_ptr<PendingWait> weak = wait;
  wait->answer = [this, weak, answer]() {
    auto w = weak.lock();
    if (!w) return;
    env_.jobs->RemoveWaiter(w->token);
    w->timer.Close();
    waits_.erase(w);  // may free `w`'s owner entry; `w` keeps it alive here
    answer(/*waited=*/true);
  };
  auto fire = [weak]() {
    if (auto w = weak.lock()) w->answer();
  };
  wait->token = is_group ? jobs.WaitGroup(query.group, fire) : jobs.WaitJob(query.key, fire);
  if (!InitTimer(env_.loop, wait->timer, wait.get()).ok()) {
    jobs.RemoveWaiter(wait->token);
    answer(/*waited=*/false);
    return;
  }
  uv_timer_start(
      wait->timer.get(),
      [](uv_timer_t* t) {
        auto* w = static_cast<PendingWait*>(t->data);
        auto keep = w->answer;  // answer() releases the wait
        keep();
      },
      static_cast<uint64_t>(query.wait_ms), 0);
  waits_.insert(std::move(wait));
}

void MemoryStore::AnswerWaits() {
  waits_answered_ = true;  // cut short by the shutdown: not counted as a miss
  auto all = waits_;
  for (const auto& w : all) w->answer();
  waits_.clear();
}

void MemoryStore::Cancel(const Request& req, const std::string& key,
                         const ControlServer::Reply& reply) {
  JobPtr job = env_.jobs->Find(key);
  if (!job) {
    reply.Send(ErrorLine(req.id, Status::NotFound("no job with key \"" + key + "\"")));
    return;
  }
  bool cancelled = false;
  if (job->state == JobState::kQueued) {
    env_.jobs->MarkCancelled(job, "cancelled by request before it ran");
    env_.dispatcher->Sweep();
    cancelled = true;
  } else if (job->state == JobState::kRunning) {
    job->user_cancelled = true;
    job->cancel->store(true, std::memory_order_relaxed);
    OllamaClient::WakeAll();  // the transfer aborts now, not at its next poll
    cancelled = true;
  }
  reply.Send(OkLine(
      req.id, {{"key", key}, {"status", JobStateName(job->state)}, {"cancelled", cancelled}}));
}

void MemoryStore::CancelGroup(const Request& req, const std::string& group,
                              const ControlServer::Reply& reply) {
  std::vector<JobPtr> parts = env_.jobs->FindGroup(group);  // a copy: cancelling changes it
  if (parts.empty()) {
    reply.Send(ErrorLine(req.id, Status::NotFound("no group \"" + group + "\"")));
    return;
  }
  int64_t cancelled = 0, running = 0;
  for (const auto& job : parts) {
    if (job->state == JobState::kQueued) {
      env_.jobs->MarkCancelled(job, "cancelled by request before it ran");
      ++cancelled;
    } else if (job->state == JobState::kRunning) {
      job->user_cancelled = true;
      job->cancel->store(true, std::memory_order_relaxed);
      ++cancelled;
      ++running;
    }
  }
  if (running > 0) OllamaClient::WakeAll();
  env_.dispatcher->Sweep();
  reply.Send(OkLine(req.id, {{"group", group}, {"cancelled", cancelled}, {"running", running}}));
}

void MemoryStore::ListJobs(const Request& req, JobsQuery query, const ControlServer::Reply& reply) {
  const int64_t now_ms = UnixMillis();
  auto position = [](const JobRecord& j) { return JobsCursor{j.id}; };
  std::vector<JobPtr> found;
  env_.jobs->ForEach([&](const JobPtr& j) {
    if (query.after && !Before(*query.after, position(*j))) return;
    if (query.Matches(j->state, j->key, j->group, j->kind, j->lane,
                      now_ms - j->submitted_unix_ms)) {
      found.push_back(j);
    }
  });
  auto newer = [&](const JobPtr& a, const JobPtr& b) { return Before(position(*a), position(*b)); };
  size_t limit = static_cast<size_t>(query.limit);
  bool more = found.size() > limit;
  if (more) {
    std::partial_sort(found.begin(), found.begin() + static_cast<std::ptrdiff_t>(limit),
                      found.end(), newer);
    found.resize(limit);
  } else {
    std::sort(found.begin(), found.end(), newer);
  }
  nlohmann::json views = nlohmann::json::array();
  for (const auto& j : found) views.push_back(View(*j));
  std::optional<JobsCursor> next;
  if (more) next = position(*found.back());
  reply.Send(OkLine(req.id, JobsAnswer(std::move(views), next)));
}

void MemoryStore::Retry(const Request& req, JobTarget target, Lane lane,
                        const ControlServer::Reply& reply) {
  auto retryable = [](const JobPtr& j) {
    return j->state == JobState::kFailed || j->state == JobState::kCancelled;
  };
  if (!target.key.empty()) {
    JobPtr job = env_.jobs->Find(target.key);
    if (!job) {
      reply.Send(ErrorLine(req.id, Status::NotFound("no job with key \"" + target.key + "\"")));
      return;
    }
    if (!retryable(job)) {
      reply.Send(ErrorLine(req.id, NotRetryable(job->key, job->state)));
      return;
    }
    Status st = Requeue(job, lane);
    reply.Send(st.ok() ? OkLine(req.id, {{"key", job->key},
                                         {"status", JobStateName(job->state)},
                                         {"retried", true}})
                       : ErrorLine(req.id, st));
    return;
  }
  std::vector<JobPtr> parts = env_.jobs->FindGroup(target.group);
  if (parts.empty()) {
    reply.Send(ErrorLine(req.id, Status::NotFound("no group \"" + target.group + "\"")));
    return;
  }
  int64_t retried = 0, skipped = 0;
  Status first;
  for (const auto& job : parts) {
    if (!retryable(job)) {
      ++skipped;
      continue;
    }
    Status st = Requeue(job, lane);
    if (st.ok()) {
      ++retried;
    } else {
      ++skipped;
      if (first.ok()) first = st;
    }
  }
  if (retried == 0 && !first.ok()) {
    reply.Send(ErrorLine(req.id, first));
    return;
  }
  reply.Send(OkLine(req.id, {{"group", target.group}, {"retried", retried}, {"skipped", skipped}}));
}

void MemoryStore::Delete(const Request& req, JobTarget target, const ControlServer::Reply& reply) {
  std::vector<JobPtr> jobs;
  if (!target.key.empty()) {
    if (JobPtr j = env_.jobs->Find(target.key)) jobs.push_back(std::move(j));
  } else {
    jobs = env_.jobs->FindGroup(target.group);  // a copy: removing changes it
  }
  if (jobs.empty()) {
    reply.Send(ErrorLine(
        req.id, Status::NotFound(target.key.empty() ? "no group \"" + target.group + "\""
                                                    : "no job with key \"" + target.key + "\"")));
    return;
  }
  int64_t deleted = 0, skipped = 0;
  for (const auto& job : jobs) {
    if (IsTerminal(job->state)) {
      env_.jobs->Remove(job);
      ++deleted;
    } else {
      ++skipped;
    }
  }
  reply.Send(OkLine(req.id, {{"deleted", deleted}, {"skipped", skipped}}));
}

void MemoryStore::OnJobFinished(const JobPtr& job, WorkOutcome outcome) {
  const Config& config = *env_.config;
  // False only for a job the dispatcher could not start at all (its kind
  // is unknown): on_start has not run for it.
  bool started = job->state == JobState::kRunning;
  if (started && UsesBackend(*job, config))
    env_.backend->OnOutcome(CallStatusOf(outcome), job->backend_epoch);
  bool retryable =
      outcome.kind == WorkOutcome::Kind::kBusy || outcome.kind == WorkOutcome::Kind::kRetry;
  if (retryable && started && (*env_.phase != Phase::kRunning || job->cancel->load())) {
    env_.jobs->MarkRetrying(job, std::move(outcome.error), /*refund=*/true);
    Release(job, "released at shutdown while it waited for a retry");
    return;
  }
  Verdict v =
      Judge(*job, std::move(outcome), started, config.backend.max_attempts, config, *env_.backend);
  if (v.retry) {
    env_.jobs->MarkRetrying(job, std::move(v.outcome.error), v.refund);
    job->backing_off = true;
    delayed_->Add(job, static_cast<uint64_t>(v.delay_ms));
    return;
  }
  env_.jobs->MarkFinished(job, std::move(v.outcome));
}

void MemoryStore::OnRetryDue(JobPtr job) {
  job->backing_off = false;
  if (job->state != JobState::kQueued) return;  // cancelled while it waited
  Status st = env_.dispatcher->Enqueue(job);
  if (st.code() == Status::Code::kQueueFull) {
    job->backing_off = true;
    delayed_->Add(std::move(job), 1000);  // its lane is full; try again shortly
  } else if (!st.ok()) {
    Release(job, "released at shutdown while it waited for a retry");
  }
}

void MemoryStore::Release(const JobPtr& job, const char* why) {
  env_.jobs->MarkCancelled(job, why);
  env_.jobs->NoteReleased(1);
}

void MemoryStore::BeginShutdown() {
  // Jobs waiting out a retry backoff would come due after the pills.
  for (const auto& job : delayed_->TakeAll()) {
    if (job->state == JobState::kQueued) {
      Release(job, "released at shutdown while it waited for a retry");
    }
  }
  // So would jobs waiting for the jobs they need.
  std::vector<JobPtr> waiting;
  env_.jobs->ForEach([&waiting](const JobPtr& job) {
    if (job->state == JobState::kQueued && job->waiting_after) waiting.push_back(job);
  });
  for (const auto& job : waiting) {
    job->waiting_after = false;
    Release(job, "released at shutdown while it waited for the jobs it needs");
  }
  env_.dispatcher->PutPills();  // may finish the shutdown at once when idle
}

uint64_t MemoryStore::ForceShutdown(const char* why) {
  Dispatcher& dispatcher = *env_.dispatcher;
  auto queued = dispatcher.TakeQueued();
  for (const auto& job : queued) {
    if (job->state == JobState::kQueued) {
      env_.jobs->MarkCancelled(job, "not run: digestd shut down before its turn");
    }
  }
  env_.jobs->NoteReleased(queued.size());
  LOG_WARN("%s: stopping now; %d running jobs aborted, %zu queued jobs released", why,
           dispatcher.in_flight(), queued.size());
  dispatcher.CancelInFlight();
  if (dispatcher.Drained()) env_.drained();  // else on_drained finishes it
  return 0;
}

void MemoryStore::Close() {
  AnswerWaits();
  if (delayed_) delayed_->Close();
  release_timer_.Close();
  release_due_.clear();
}

bool MemoryStore::ReleaseWhenReady(const JobPtr& job) {
  nlohmann::json results = nlohmann::json::object();
  std::vector<std::string> pending;
  for (const std::string& dep : job->after) {
    JobPtr d = env_.jobs->Find(dep);
    std::string why;
    if (d == nullptr) {
      why = "needs job " + dep + ", which is no longer known (deleted or dropped by [jobs] " +
            "retain_finished); submit the batch again";
    } else if (d->state == JobState::kFailed || d->state == JobState::kCancelled) {
      why = "needs job " + dep + ", which " +
            (d->state == JobState::kFailed ? "failed" : "was cancelled") +
            (d->error.empty() ? "" : ": " + d->error) + "; retry it, then retry this one";
    } else if (d->state == JobState::kDone) {
      results[dep] = d->result;
      continue;
    } else {
      pending.push_back(dep);
      continue;
    }
    job->waiting_after = false;
    env_.jobs->MarkFinished(job, WorkOutcome::Failed(why));
    return false;
  }
  job->waiting_after = !pending.empty();
  if (!pending.empty()) {
    for (const std::string& dep : pending) {
      env_.jobs->WaitJob(dep, [this, weak = std::weak_ptr<JobRecord>(job)] {
        JobPtr j = weak.lock();
        if (j == nullptr || !release_timer_.initialized()) return;
        release_due_.push_back(std::move(j));
        uv_timer_start(
            release_timer_.get(),
            [](uv_timer_t* t) { static_cast<MemoryStore*>(t->data)->ReleaseDue(); }, 0, 0);
      });
    }
    return false;
  }
  nlohmann::json input = *job->input;
  if (!input.is_object()) input = nlohmann::json::object();
  input[kAfterResults] = std::move(results);
  job->input = std::make_shared<const nlohmann::json>(std::move(input));
  return true;
}

void MemoryStore::ReleaseDue() {
  std::vector<JobPtr> due;
  due.swap(release_due_);
  for (const JobPtr& job : due) {
    // Cancelled meanwhile, released by an earlier entry, or shutting down.
    if (job->state != JobState::kQueued || !job->waiting_after) continue;
    if (env_.jobs->Find(job->key) != job) continue;
    if (*env_.phase != Phase::kRunning) continue;
    bool all_ended = std::all_of(job->after.begin(), job->after.end(), [this](const auto& k) {
      JobPtr d = env_.jobs->Find(k);
      return d == nullptr || IsTerminal(d->state);
    });
    if (!all_ended) continue;  // another dependency's waiter brings it back
    if (!ReleaseWhenReady(job)) continue;
    Status st = env_.dispatcher->Enqueue(job);
    if (!st.ok()) env_.jobs->MarkCancelled(job, "ready to run, but not queued: " + st.message());
  }
}

void MemoryStore::ApplyConfig() {
  env_.jobs->SetRetention(static_cast<size_t>(env_.config->jobs.retain_finished));
}

}  // namespace digestd
