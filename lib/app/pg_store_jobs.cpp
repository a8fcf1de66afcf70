// PgStore: submits, results and their waits, cancels, and the rows that end
// a job's attempt. The flow is described in pg_store.h.
#include <algorithm>
#include <climits>
#include <set>

#include "app/event_hub.h"
#include "app/job_view.h"
#include "app/outcome_policy.h"
#include "app/pg_store.h"
#include "app/submit_spec.h"
#include "backend/ollama_client.h"
#include "jobs/job_kind.h"
#include "jobs/llm_job.h"
#include "obs/log.h"
#include "util/clock.h"
#include "util/json_parse.h"

namespace digestd {

namespace {

// After a job finishes, the backlog counts in status are read again within
// this long (and no more often, however many jobs finish).
constexpr uint64_t kBacklogAfterFinishMs = 200;

}  // namespace

struct PgStore::SubmitBatch {
  nlohmann::json id;
  ControlServer::Reply reply;
  bool single = false;
  std::vector<nlohmann::json> answers;
  std::vector<Status> errors;  // per job; ok when answers[i] is set
  size_t waiting = 0;
  std::set<std::string> release;  // groups of jobs stored waiting for others
};

// ---------------------------------------------------------------- submit

std::string PgStore::UnavailableReason() const {
  if (!pg_->up() || (migrated_ && !pgw_->up())) {
    std::string err = pg_->up() ? pgw_->state().last_error : pg_->state().last_error;
    return "PostgreSQL is unreachable (" + (err.empty() ? std::string("connecting") : err) +
           "); nothing was accepted, submit again later";
  }
  if (store_error_.find("newer than this digestd knows") != std::string::npos) {
    return "the job table's schema is newer than this digestd (" + store_error_ +
           "); nothing was accepted: upgrade digestd";
  }
  return "the job table is not ready yet (schema migration " +
         (store_error_.empty() ? std::string("in progress") : "failing: " + store_error_) +
         "); nothing was accepted, submit again shortly";
}

void PgStore::Submit(const Request& req, std::vector<const nlohmann::json*> specs, bool single,
                     const ControlServer::Reply& reply, SubmitThen then) {
  if (!migrated_ || !pg_->up() || !pgw_->up()) {
    reply.Send(ErrorLine(req.id, Status::Unavailable(UnavailableReason())));
    return;
  }
  auto batch = std::make_shared<SubmitBatch>();
  batch->id = req.id;
  batch->reply = reply;
  batch->single = single;
  batch->answers.resize(specs.size());
  batch->errors.resize(specs.size());
  auto finish = [this, then = std::move(then)](const std::shared_ptr<SubmitBatch>& b) {
    // Jobs stored waiting for others: released now if those are done.
    for (const auto& g : b->release) QueueRelease(g);
    if (b->single && b->errors[0].ok() && then) {
      then(std::move(b->answers[0]));
      Refill();
      return;
    }
    if (b->single) {
      b->reply.Send(b->errors[0].ok() ? OkLine(b->id, std::move(b->answers[0]))
                                      : ErrorLine(b->id, b->errors[0]));
    } else {
      b->reply.Send(BatchAnswerLine(b->id, std::move(b->answers), b->errors));
    }
    Refill();
  };
  const Config& cfg = config();
  for (size_t i = 0; i < specs.size(); ++i) {
    const nlohmann::json& spec = *specs[i];
    NewJob job;
    job.key = SpecKey(spec);
    if (job.key.empty()) job.key = env_.jobs->NewKey(env_.node_id);
    job.group = SpecGroup(spec);
    job.kind = SpecKind(spec);
    job.lane = SpecLane(spec);
    job.input = std::make_shared<const nlohmann::json>(SpecInput(spec));
    job.input_hash = InputHash(job.kind, *job.input);
    job.max_attempts = cfg.backend.max_attempts;
    job.ttl_s = SpecTtlS(spec, cfg);
    job.after = SpecAfter(spec);
    const bool waits = !job.after.empty();
    // When the lane's table holds nothing due and its ring has room, the
    // row is created claimed by this node: no claim round trip, no second
    // row version. Otherwise it waits in the table for a claim.
    // Only a job that can start soon here is claimed here: one whose model
    // is full waits in the table, where any node with room claims it.
    const size_t depth = env_.dispatcher->depth(job.lane);
    size_t room_cap = env_.dispatcher->capacity(job.lane);
    if (const JobKind* k = JobKindRegistry::Global().Find(job.kind); k != nullptr) {
      int room = env_.dispatcher->RoomFor(*k, *job.input, job.lane);
      if (room != INT_MAX) room_cap = std::min(room_cap, depth + static_cast<size_t>(room));
    }
    // A job that waits for others is never created claimed.
    bool claim = !waits && book_.TrySelfClaim(job.lane, depth, room_cap);
    if (claim) {
      job.claim_owner = env_.node_id;
      job.lease_s = cfg.postgres.lease_s;
    }
    auto own = claim ? std::make_shared<NewJob>(job) : nullptr;
    const uint64_t queued_ns = uv_hrtime();
    std::string key = job.key;
    std::string kind = job.kind;  // copied before `job` is moved below
    std::string group = job.group;
    Lane lane = job.lane;
    // What a replacing (or expired) submit puts in place of the row's input.
    const bool replace = SpecReplace(spec);
    std::shared_ptr<const nlohmann::json> input = job.input;
    const uint64_t input_hash = job.input_hash;
    const int64_t ttl_s = job.ttl_s;
    batch->answers[i] = {{"key", key}};
    Status enq = WriteSubmit(WriteRow::Submit(
        std::move(job), [this, batch, i, key, kind, group, lane, finish, own, queued_ns, replace,
                         input, input_hash, ttl_s, waits](const RowOutcome& o) {
          // Told before a job claimed at its insert can start here.
          if (o.status.ok() && o.inserted.created && o.inserted.id != 0 && env_.events != nullptr) {
            env_.events->Publish("queued",
                                 EventJob{.key = key, .group = group, .kind = kind, .lane = lane});
          }
          if (own) {
            bool adopted = o.status.ok() && o.inserted.created && o.inserted.lease_token != 0;
            // Unavailable: it may have committed, claimed by nobody.
            book_.SelfClaimAnswered(own->lane, o.status.code() == Status::Code::kUnavailable);
            if (adopted) AdoptOwnSubmit(*own, o.inserted, queued_ns);
          }
          // Committed unclaimed: due in the table now. A claim sent since
          // the submit arrived may have looked before this commit.
          if (o.status.ok() && o.inserted.created && !(own && o.inserted.lease_token != 0)) {
            book_.MarkDue(lane);
          }
          if (o.status.ok() && o.inserted.created && waits) batch->release.insert(group);
          if (o.status.ok() && o.inserted.id != 0 && (o.inserted.conflict || o.inserted.expired)) {
            if (o.inserted.conflict && !replace) {
              batch->errors[i] = ConflictError(key);
            } else {
              // Answered once the row holds the new input (or, expired,
              // is queued again).
              const bool expired = !o.inserted.conflict;
              ReplaceJob(Replacement{key, kind, lane, input, input_hash, ttl_s},
                         [this, batch, i, finish, expired, group, key](Result<nlohmann::json> r) {
                           if (r.ok()) {
                             batch->answers[i] = std::move(r).value();
                             if (expired) {
                               batch->answers[i].erase("replaced");
                               batch->answers[i]["expired"] = true;
                             }
                           } else if (expired && r.status().code() == Status::Code::kBadState) {
                             // Another submit of the expired key ran it again first,
                             // and it runs now: that run is the fresh result.
                             batch->answers[i] = SubmitAnswerJson(key, JobState::kRunning, true);
                           } else {
                             batch->errors[i] = r.status();
                           }
                           if (!group.empty()) QueueRelease(group);
                           if (--batch->waiting == 0) finish(batch);
                         });
              return;
            }
          } else if (o.status.ok() && o.inserted.id == 0) {
            batch->errors[i] = Status::Unavailable(
                "job " + key + " was deleted (retention) while this submit ran; submit again");
          } else if (o.status.ok()) {
            if (o.inserted.created) {
              env_.jobs->NoteSubmitted(kind, lane);
            } else {
              env_.jobs->NoteDuplicate();
            }
            batch->answers[i] = SubmitAnswerJson(key, o.inserted.status, !o.inserted.created);
          } else {
            batch->errors[i] =
                o.status.code() == Status::Code::kUnavailable
                    ? Status::Unavailable("job " + key +
                                          " is not known to be stored: the connection to "
                                          "PostgreSQL was lost (" +
                                          o.status.message() +
                                          "); submit it again (the same key is safe to repeat)")
                    : o.status;
          }
          if (--batch->waiting == 0) finish(batch);
        }));
    if (enq.ok()) {
      ++batch->waiting;
    } else {
      batch->errors[i] = enq;
    }
  }
  if (batch->waiting == 0) finish(batch);
}

// ---------------------------------------------------------------- result

void PgStore::GetResult(const Request& req, ResultQuery query, const ControlServer::Reply& reply) {
  auto wait = std::make_shared<DbWait>();
  wait->owner = this;
  wait->id = req.id;
  wait->reply = reply;
  wait->key = std::move(query.key);
  wait->group = std::move(query.group);
  wait->expired = true;
  wait->counted = query.wait_ms > 0;
  if (query.wait_ms > 0 && phase() != Phase::kStopping) {
    // Registered before the first lookup, so a commit that lands while the
    // lookup is in flight still wakes it (recheck).
    if (InitTimer(env_.loop, wait->timer, wait.get()).ok()) {
      wait->expired = false;
      if (wait->group.empty()) {
        key_waits_[wait->key].push_back(wait);
      } else {
        group_waits_.push_back(wait);
      }
      uv_timer_start(
          wait->timer.get(),
          [](uv_timer_t* t) {
            auto* w = static_cast<DbWait*>(t->data);
            w->owner->CheckDbWait(w->shared_from_this(), /*final=*/true);
          },
          static_cast<uint64_t>(query.wait_ms), 0);
      // A job that finished before anyone asked may still be in the
      // writer's batch window: it is the critical path now.
      HurryFinishes(wait->key, wait->group);
    }
  }
  CheckDbWait(wait, wait->expired);
}

void PgStore::CheckDbWait(const std::shared_ptr<DbWait>& wait, bool final) {
  if (wait->ended) return;
  if (final) wait->expired = true;
  if (wait->checking) {
    wait->recheck = true;
    return;
  }
  wait->checking = true;
  // The lookups hold the wait: a wait with wait_ms = 0 has no other owner.
  auto failed = [this, w = wait](const Status& why) {
    if (w->ended) return;
    w->reply.Send(ErrorLine(
        w->id, Status::Unavailable("cannot read the job from PostgreSQL (" + why.message() +
                                   "); ask again once digestd status shows db: up")));
    EndDbWait(w);
  };
  Status st;
  if (wait->group.empty()) {
    st = store_->Lookup(wait->key, [this, w = wait, failed](Result<std::optional<StoredJob>> r) {
      if (w->ended) return;
      w->checking = false;
      if (!r.ok()) return failed(r.status());
      if (!r->has_value()) {
        w->reply.Send(
            ErrorLine(w->id, Status::NotFound("no job with key \"" + w->key +
                                              "\": never submitted, or finished longer ago than "
                                              "[postgres] retention_s and deleted")));
        return EndDbWait(w);
      }
      const bool waited = w->looks++ > 0;
      if (IsTerminal((*r)->state) || w->expired) {
        if (w->counted && env_.precompute != nullptr) {
          env_.precompute->Count((*r)->kind, (*r)->group.empty() ? (*r)->key : (*r)->group,
                                 PrecomputeTally::OutcomeOf(IsTerminal((*r)->state), waited));
        }
        w->reply.Send(OkLine(w->id, JobJson(ViewOf(**r, UnixMillis()))));
        return EndDbWait(w);
      }
      if (w->recheck) {
        w->recheck = false;
        CheckDbWait(w, false);
      }
    });
  } else {
    st = store_->LookupGroup(
        wait->group, [this, w = wait, failed](Result<std::vector<StoredJob>> r) {
          if (w->ended) return;
          w->checking = false;
          if (!r.ok()) return failed(r.status());
          if (r->empty()) {
            w->reply.Send(ErrorLine(w->id, Status::NotFound("no group \"" + w->group + "\"")));
            return EndDbWait(w);
          }
          bool all = std::all_of(r->begin(), r->end(),
                                 [](const StoredJob& j) { return IsTerminal(j.state); });
          const bool waited = w->looks++ > 0;
          if (all || w->expired) {
            if (w->counted && env_.precompute != nullptr) {
              env_.precompute->Count("group", w->group, PrecomputeTally::OutcomeOf(all, waited));
            }
            int64_t now = UnixMillis();
            std::vector<JobView> views;
            views.reserve(r->size());
            for (const auto& p : *r) views.push_back(ViewOf(p, now));
            w->reply.Send(OkLine(w->id, GroupJson(w->group, views)));
            return EndDbWait(w);
          }
          if (w->recheck) {
            w->recheck = false;
            CheckDbWait(w, false);
          }
        });
  }
  if (!st.ok()) {
    wait->checking = false;
    failed(st);
  }
}

void PgStore::PromoteQueued(const ResultQuery& query) {
  if (closed_ || !migrated_ || !pg_->up() || phase() != Phase::kRunning) return;
  Status st = store_->PromoteQueued(query.key, query.group, [this](Result<int64_t> moved) {
    if (!moved.ok() || *moved <= 0 || closed_) return;
    promoted_ += static_cast<uint64_t>(*moved);
    // Claim them now, as interactive work.
    book_.MarkDue(Lane::kInteractive);
    Refill();
  });
  if (!st.ok()) LOG_DEBUG("promote on wait not sent: %s", st.message().c_str());
}

void PgStore::HurryFinishes(const std::string& key, const std::string& group) {
  auto match = [&key, &group](const FinishRow& f) {
    return group.empty() ? f.key == key : f.group == group;
  };
  // Rows the full ring refused go in later, urgent from now on.
  for (auto& row : pending_rows_) {
    if (auto* f = std::get_if<FinishRow>(&row.row); f != nullptr && match(*f)) f->urgent = true;
  }
  if (writer_) writer_->Hurry(match);
}

bool PgStore::HasWaiter(const std::string& key, const std::string& group) const {
  if (key_waits_.count(key) > 0) return true;
  if (group.empty()) return false;
  return std::any_of(group_waits_.begin(), group_waits_.end(),
                     [&group](const std::shared_ptr<DbWait>& w) { return w->group == group; });
}

void PgStore::WakeWaiters(const std::string& key, const std::string& group) {
  if (auto it = key_waits_.find(key); it != key_waits_.end()) {
    auto waits = it->second;  // CheckDbWait may end a wait and erase it
    for (const auto& w : waits) CheckDbWait(w, false);
  }
  if (group.empty()) return;
  auto groups = group_waits_;
  for (const auto& w : groups) {
    if (w->group == group) CheckDbWait(w, false);
  }
}

void PgStore::EndDbWait(const std::shared_ptr<DbWait>& wait) {
  if (wait->ended) return;
  wait->ended = true;
  wait->timer.Close();
  if (wait->group.empty()) {
    auto it = key_waits_.find(wait->key);
    if (it != key_waits_.end()) {
      auto& v = it->second;
      v.erase(std::remove(v.begin(), v.end(), wait), v.end());
      if (v.empty()) key_waits_.erase(it);
    }
  } else {
    group_waits_.erase(std::remove(group_waits_.begin(), group_waits_.end(), wait),
                       group_waits_.end());
  }
}

void PgStore::OnNotify(const std::string& channel, const std::string& payload) {
  if (channel != kDoneChannel) return;
  if (!key_waits_.empty()) {
    auto keys = TryParseJsonBounded(payload);
    if (keys.is_array()) {
      for (const auto& k : keys) {
        if (!k.is_string()) continue;
        auto it = key_waits_.find(k.get<std::string>());
        if (it == key_waits_.end()) continue;
        auto list = it->second;  // a check may end waits
        for (const auto& w : list) CheckDbWait(w, false);
      }
    }
  }
  auto groups = group_waits_;
  for (const auto& w : groups) CheckDbWait(w, false);
}

// ---------------------------------------------------------------- cancel

void PgStore::Cancel(const Request& req, const std::string& key,
                     const ControlServer::Reply& reply) {
  if (JobPtr job = env_.jobs->Find(key)) {
    if (job->state == JobState::kQueued) {
      CancelHeldQueued(job, [reply, id = req.id, key](const RowOutcome& o) {
        if (!o.status.ok()) {
          reply.Send(ErrorLine(id, o.status));
        } else {
          reply.Send(OkLine(id, {{"key", key},
                                 {"status", o.accepted ? "cancelled" : "unknown"},
                                 {"cancelled", o.accepted}}));
        }
      });
      return;
    }
    if (job->state == JobState::kRunning) {
      job->user_cancelled = true;
      job->cancel->store(true, std::memory_order_relaxed);
      OllamaClient::WakeAll();  // the transfer aborts now, not at its next poll
      reply.Send(OkLine(req.id, {{"key", key}, {"status", "running"}, {"cancelled", true}}));
      return;
    }
  }
  if (!migrated_ || !pg_->up()) {
    reply.Send(ErrorLine(req.id, Status::Unavailable("PostgreSQL is unreachable; cancel again "
                                                     "once digestd status shows db: up")));
    return;
  }
  Status st = store_->CancelQueued(
      key, "cancelled by request before it ran",
      [this, reply, id = req.id, key](Result<std::optional<StoredJob>> r) {
        if (!r.ok()) {
          reply.Send(ErrorLine(id, r.status()));
          return;
        }
        if (r->has_value()) {
          env_.jobs->NoteCancelled();
          if (env_.events != nullptr) {
            const StoredJob& s = **r;
            env_.events->Publish("cancelled", EventJob{.key = s.key,
                                                       .group = s.group,
                                                       .kind = s.kind,
                                                       .lane = s.lane,
                                                       .attempts = s.attempts,
                                                       .error = s.error});
            PublishGroupProgress(s.group);
          }
          if (!(*r)->group.empty()) QueueRelease((*r)->group);
          reply.Send(OkLine(id, {{"key", key}, {"status", "cancelled"}, {"cancelled", true}}));
          return;
        }
        Status ls = store_->Lookup(key, [this, reply, id, key](Result<std::optional<StoredJob>> j) {
          if (j.ok() && j->has_value() && (*j)->state == JobState::kRunning &&
              (*j)->lease_owner == env_.node_id && !closed_ &&
              (book_.claiming(Lane::kInteractive) || book_.claiming(Lane::kBackground)) &&
              !env_.jobs->Find(key)) {
            // This node's claim took the row and has not answered yet: cancel
            // it here once the claim has brought it in.
            after_claims_.push_back([this, reply, id, key] {
              Request again{id, "cancel", nlohmann::json::object()};
              Cancel(again, key, reply);
            });
            return;
          }
          if (!j.ok()) {
            reply.Send(ErrorLine(id, j.status()));
          } else if (!j->has_value()) {
            reply.Send(ErrorLine(id, Status::NotFound("no job with key \"" + key + "\"")));
          } else {
            nlohmann::json out = {
                {"key", key}, {"status", JobStateName((*j)->state)}, {"cancelled", false}};
            if ((*j)->state == JobState::kRunning) {
              out["message"] = "running on node " + (*j)->lease_owner + "; cancel it there";
            }
            reply.Send(OkLine(id, std::move(out)));
          }
        });
        if (!ls.ok()) reply.Send(ErrorLine(id, ls));
      });
  if (!st.ok()) reply.Send(ErrorLine(req.id, st));
}

void PgStore::CancelHeldQueued(const JobPtr& job, RowCallback then) {
  // Claimed by this node, not started: finish it cancelled here (the
  // dispatcher skips it in the ring), counted as the memory store counts.
  job->user_cancelled = true;
  env_.jobs->MarkCancelled(job, "cancelled by request before it ran");
  ForgetClaim(job);
  env_.dispatcher->Sweep();
  WriteFinish(job, JobState::kCancelled, nullptr, "cancelled by request before it ran",
              std::move(then));
}

// ---------------------------------------------------------------- outcomes

void PgStore::OnJobStarted(const JobPtr& job) {
  // The attempt counts from now: the start mark records it (the finish or
  // requeue row does when it is written first). A start recorded before the
  // job ran (mark_first) is already counted.
  if (job->mark == JobRecord::Mark::kNone) {
    job->started_unix_ms = UnixMillis();
    job->mark = JobRecord::Mark::kSent;
    writer_->MarkStarted(LeaseRef{job->row_id, job->lease_token, job->started_unix_ms}, false);
  }
  // The ring just shrank: claim more once it is down to the low-water mark.
  pace_[static_cast<int>(job->lane)].Started();
  Refill();
}

bool PgStore::MayStart(const JobRecord& record) {
  JobPtr job = book_.Find(record.row_id);
  if (job && job.get() == &record) {
    // A lease that ran out while the job waited (the node was paused or
    // starved): another node may run it now, so it never starts here. A
    // quarter of the lease is kept in hand for the first renewal.
    if (job->lease_deadline != 0 && uv_hrtime() + LeaseNs() / 4 >= job->lease_deadline) {
      DropExpiredClaim(job);
      return true;  // the dispatcher skips it (no longer queued)
    }
    // An earlier claim of this job was lost with its worker before its
    // start was recorded: record this start first, so a job that kills its
    // worker still uses up its attempts.
    if (job->mark_first && job->mark != JobRecord::Mark::kRecorded) {
      if (job->mark == JobRecord::Mark::kNone) {
        job->started_unix_ms = UnixMillis();
        job->mark = JobRecord::Mark::kSent;
        writer_->MarkStarted(LeaseRef{job->row_id, job->lease_token, job->started_unix_ms}, true);
      }
      return false;  // OnLeasesRenewed kicks the dispatcher
    }
  }
  // Every running job keeps a write-ring slot for its result: dispatch
  // pauses while the ring is that full (on_space resumes).
  if (writer_->free_slots() <=
      pending_rows_.size() + static_cast<size_t>(env_.dispatcher->in_flight())) {
    writer_->NotifyWhenSpace();
    return false;
  }
  return true;
}

void PgStore::OnJobFinished(const JobPtr& job, WorkOutcome outcome) {
  // A slot at the job's model is free now: claim what it can start.
  struct RefillAfter {
    PgStore* store;
    ~RefillAfter() { store->Refill(); }
  } refill_after{this};
  const Config& cfg = config();
  // False only for a job the dispatcher could not start at all (its kind
  // is unknown): on_start has not run for it.
  bool started = job->state == JobState::kRunning;
  if (started && UsesBackend(*job, cfg))
    env_.backend->OnOutcome(CallStatusOf(outcome), job->backend_epoch);
  if (job->lease_lost) {
    LOG_WARN(
        "job %s: dropped its outcome: this node lost the job's lease (it was recovered "
        "and may run elsewhere)",
        job->key.c_str());
    env_.jobs->MarkReleased(job);
    ForgetClaim(job);
    return;
  }
  using Kind = WorkOutcome::Kind;
  if (outcome.kind == Kind::kCancelled && !job->user_cancelled) {
    // Aborted by a shutdown: back to the queue without spending the attempt.
    WriteRequeue(job, 0, /*refund=*/true, {});
    env_.jobs->MarkReleased(job);
    ForgetClaim(job);
    return;
  }
  Verdict v = Judge(*job, std::move(outcome), started, job->max_attempts, cfg, *env_.backend);
  if (v.retry) {
    // The retry waits in the table (run_after), not in this process.
    WriteRequeue(job, v.delay_ms, v.refund, v.outcome.error);
    env_.jobs->MarkRetrying(job, std::move(v.outcome.error), v.refund);
    ForgetClaim(job);
    return;
  }
  JobState state = v.outcome.kind == Kind::kDone     ? JobState::kDone
                   : v.outcome.kind == Kind::kFailed ? JobState::kFailed
                                                     : JobState::kCancelled;
  if (state == JobState::kCancelled && v.outcome.error.empty()) {
    v.outcome.error = "cancelled by request";
  }
  // The table keeps the result; the job table only counts.
  WriteFinish(job, state, std::move(v.outcome.result), v.outcome.error);
  v.outcome.result = nullptr;
  env_.jobs->MarkFinished(job, std::move(v.outcome));
  ForgetClaim(job);
}

void PgStore::PublishGroupProgress(const std::string& group) {
  if (env_.events == nullptr || closed_ || !env_.events->WantsGroup(group)) return;
  // One count in flight per group: parts that end meanwhile are counted by
  // one more lookup once it answers.
  auto [it, fresh] = group_counts_.try_emplace(group, false);
  if (!fresh) {
    it->second = true;
    return;
  }
  Status st = store_->LookupGroup(group, [this, group](Result<std::vector<StoredJob>> r) {
    auto at = group_counts_.find(group);
    const bool again = at != group_counts_.end() && at->second;
    if (at != group_counts_.end()) group_counts_.erase(at);
    if (closed_ || env_.events == nullptr) return;
    if (r.ok() && !r->empty()) {
      GroupProgress p;
      for (const auto& part : *r) p.Add(part.state);
      env_.events->PublishGroup(group, p);
    }
    if (again) PublishGroupProgress(group);
  });
  if (!st.ok()) group_counts_.erase(group);
}

void PgStore::WriteFinish(const JobPtr& job, JobState state, nlohmann::json result,
                          std::string error, RowCallback then) {
  FinishRow row{job->row_id,      job->lease_token,     job->key,    state, std::move(result),
                std::move(error), job->started_unix_ms, UnixMillis()};
  row.preempted = job->preempted;
  row.group = job->group;
  // Someone waits for it: committed at once, not after the batch window.
  row.urgent = job->lane == Lane::kInteractive || HasWaiter(job->key, job->group);
  book_.Unsettle(job->row_id, job->lease_token);
  Write(WriteRow::Finish(
      std::move(row), [this, job, state, key = job->key, group = job->group, id = job->row_id,
                       token = job->lease_token, then = std::move(then)](const RowOutcome& o) {
        book_.Settle(id, token);
        if (then) then(o);
        if (o.status.ok() && o.accepted && env_.events != nullptr) {
          env_.events->Publish(JobStateName(state), EventJob::Of(*job));
          PublishGroupProgress(group);
        }
        // The waiters read the committed row now, not after the NOTIFY's
        // round trip: what `result` says is what the table says.
        if (o.status.ok() && o.accepted) WakeWaiters(key, group);
        // Parts of the group may wait for this one.
        if (o.status.ok() && o.accepted && !group.empty()) QueueRelease(group);
        // The backlog counts in status change with every finished job:
        // count again soon rather than at the next backlog_interval_ms.
        uv_timer_t* backlog = backlog_timer_.get();
        if (o.status.ok() && o.accepted && !closed_ && uv_is_active(backlog_timer_.base()) &&
            uv_timer_get_due_in(backlog) > kBacklogAfterFinishMs) {
          uv_timer_start(
              backlog, [](uv_timer_t* t) { static_cast<PgStore*>(t->data)->OnPeriodic(t); },
              kBacklogAfterFinishMs, uv_timer_get_repeat(backlog));
        }
        if (o.status.ok() && !o.accepted) {
          ++lease_ignored_;
          LOG_WARN(
              "job %s: its result was not stored: this node's lease was lost meanwhile (the "
              "job was recovered and claimed again)",
              key.c_str());
        } else if (!o.status.ok()) {
          LOG_ERROR(
              "job %s: its result could not be stored: %s; the job runs again once its "
              "lease expires",
              key.c_str(), o.status.message().c_str());
        }
      }));
}

void PgStore::WriteRequeue(const JobPtr& job, int64_t delay_ms, bool refund, std::string error,
                           RowCallback then) {
  RequeueRow row{job->row_id,      job->lease_token,     delay_ms,         refund,
                 std::move(error), job->started_unix_ms, job->busy_retries};
  row.preempted = job->preempted;
  book_.Unsettle(job->row_id, job->lease_token);
  Write(WriteRow::Requeue(
      std::move(row), [this, id = job->row_id, token = job->lease_token, lane = job->lane, delay_ms,
                       then = std::move(then)](const RowOutcome& o) {
        book_.Settle(id, token);
        // Due again at once: the next refill looks (a delayed one waits for the
        // refill poll).
        if (o.status.ok() && o.accepted && delay_ms <= 0) book_.MarkDue(lane);
        if (then) then(o);
      }));
}

void PgStore::Write(WriteRow row) {
  if (!pending_rows_.empty() || writer_->free_slots() == 0) {
    pending_rows_.push_back(std::move(row));
    writer_->NotifyWhenSpace();
    return;
  }
  Status st = writer_->Enqueue(std::move(row));
  if (!st.ok()) {
    LOG_ERROR(
        "a job's state could not be queued for PostgreSQL: %s; the job runs again once "
        "its lease expires",
        st.message().c_str());
  }
}

Status PgStore::WriteSubmit(WriteRow row) {
  if (pending_submits_.empty() && writer_->submit_free_slots() > 0) {
    return writer_->Enqueue(std::move(row));
  }
  // Four full batches may wait beyond the ring; past that the client is
  // told to come back, so memory stays bounded.
  size_t limit = static_cast<size_t>(config().jobs.max_batch) * 4;
  if (pending_submits_.size() >= limit) {
    return Status::QueueFull("the write ring is full and " + std::to_string(limit) +
                             " more submits wait for it (PostgreSQL is slower than the "
                             "submits); submit again shortly, or raise [queues] write");
  }
  pending_submits_.push_back(std::move(row));
  writer_->NotifyWhenSpace();
  return Status::Ok();
}

void PgStore::FailPendingSubmits(const Status& why) {
  auto waiting = std::move(pending_submits_);
  pending_submits_.clear();
  for (auto& row : waiting) {
    if (row.done) row.done(RowOutcome{why, true, {}});
  }
}

void PgStore::FlushPending() {
  // Results first: they free worker slots and ring slots alike.
  while (!pending_rows_.empty() && writer_->free_slots() > 0) {
    WriteRow row = std::move(pending_rows_.front());
    pending_rows_.pop_front();
    Status st = writer_->Enqueue(std::move(row));
    if (!st.ok()) {
      LOG_ERROR("a job's state could not be queued for PostgreSQL: %s", st.message().c_str());
    }
  }
  while (!pending_submits_.empty() && writer_->submit_free_slots() > 0) {
    WriteRow row = std::move(pending_submits_.front());
    pending_submits_.pop_front();
    RowCallback done = row.done;  // Enqueue consumes the row even when it refuses it
    Status st = writer_->Enqueue(std::move(row));
    if (!st.ok() && done) done(RowOutcome{st, true, {}});
  }
  if (!pending_rows_.empty() || !pending_submits_.empty()) writer_->NotifyWhenSpace();
  if (writer_draining_ && pending_rows_.empty()) Drained();
}

}  // namespace digestd
