// PgStore: job management by request -- the `jobs` list, `retry`, a
// replacing submit, `cancel` of a group and `delete`. Each is one statement
// on the claims session (JobStore), answered from its callback; jobs this
// node holds (claimed, in its rings) are dealt with here first.
#include <algorithm>

#include "app/event_hub.h"
#include "app/job_view.h"
#include "app/pg_store.h"
#include "backend/ollama_client.h"
#include "obs/log.h"
#include "util/clock.h"

namespace digestd {

namespace {

EventJob EventOf(const StoredJob& s) {
  return EventJob{.key = s.key,
                  .group = s.group,
                  .kind = s.kind,
                  .lane = s.lane,
                  .attempts = s.attempts,
                  .error = s.error};
}

// The state a person sees: a row claimed by a node that has not started it
// is still queued (as in the job view).
JobState SeenState(const StoredJob& s) {
  return s.state == JobState::kRunning && s.started_at_ms == 0 ? JobState::kQueued : s.state;
}

}  // namespace

Status PgStore::ManageReady(const char* what) const {
  if (closed_ || !migrated_ || !pg_->up()) {
    return Status::Unavailable(std::string("PostgreSQL is unreachable or the job table is not "
                                           "ready; ") +
                               what + " again once digestd status shows db: up");
  }
  return Status::Ok();
}

void PgStore::OnQueuedAgain(const std::vector<TouchedJob>& rows, Lane lane) {
  bool any = false;
  for (const auto& t : rows) {
    if (!t.changed) continue;
    any = true;
    // A job with "after" waits again for the jobs it needs (so do the
    // group's parts that need this one).
    if (!t.job.group.empty()) QueueRelease(t.job.group);
    env_.jobs->NoteRequeued(1);
    if (env_.events != nullptr) {
      StoredJob s = t.job;
      s.lane = lane;
      s.attempts = 0;
      s.error.clear();
      env_.events->Publish("queued", EventOf(s));
    }
  }
  if (!any) return;
  book_.MarkDue(lane);
  Refill();
}

// ---------------------------------------------------------------- jobs

void PgStore::ListJobs(const Request& req, JobsQuery query, const ControlServer::Reply& reply) {
  if (Status ready = ManageReady("list jobs"); !ready.ok()) {
    reply.Send(ErrorLine(req.id, ready));
    return;
  }
  size_t limit = static_cast<size_t>(query.limit);
  Status st =
      store_->ListJobs(query, [reply, id = req.id, limit](Result<std::vector<StoredJob>> rows) {
        if (!rows.ok()) {
          reply.Send(ErrorLine(id, rows.status()));
          return;
        }
        bool more = rows->size() > limit;
        if (more) rows->resize(limit);
        int64_t now = UnixMillis();
        nlohmann::json views = nlohmann::json::array();
        for (const auto& r : *rows) views.push_back(JobJson(ViewOf(r, now)));
        std::optional<JobsCursor> next;
        if (more) next = JobsCursor{rows->back().id};
        reply.Send(OkLine(id, JobsAnswer(std::move(views), next)));
      });
  if (!st.ok()) reply.Send(ErrorLine(req.id, st));
}

// ---------------------------------------------------------------- retry

void PgStore::Retry(const Request& req, JobTarget target, Lane lane,
                    const ControlServer::Reply& reply) {
  if (Status ready = ManageReady("retry"); !ready.ok()) {
    reply.Send(ErrorLine(req.id, ready));
    return;
  }
  Status st = store_->Retry(
      target.key, target.group, lane,
      [this, reply, id = req.id, target, lane](Result<std::vector<TouchedJob>> rows) {
        if (!rows.ok()) {
          reply.Send(ErrorLine(id, rows.status()));
          return;
        }
        if (rows->empty()) {
          reply.Send(ErrorLine(
              id, Status::NotFound(target.key.empty() ? "no group \"" + target.group + "\""
                                                      : "no job with key \"" + target.key + "\"")));
          return;
        }
        OnQueuedAgain(*rows, lane);
        if (!target.key.empty()) {
          const TouchedJob& t = rows->front();
          if (!t.changed) {
            reply.Send(ErrorLine(id, NotRetryable(t.job.key, SeenState(t.job))));
          } else {
            reply.Send(OkLine(id, {{"key", t.job.key}, {"status", "queued"}, {"retried", true}}));
          }
          return;
        }
        int64_t retried = std::count_if(rows->begin(), rows->end(),
                                        [](const TouchedJob& t) { return t.changed; });
        reply.Send(OkLine(id, {{"group", target.group},
                               {"retried", retried},
                               {"skipped", static_cast<int64_t>(rows->size()) - retried}}));
      });
  if (!st.ok()) reply.Send(ErrorLine(req.id, st));
}

// ---------------------------------------------------------------- replace

void PgStore::ReplaceJob(Replacement rep, std::function<void(Result<nlohmann::json>)> done) {
  if (Status ready = ManageReady("submit"); !ready.ok()) {
    done(ready);
    return;
  }
  auto replace = [this, done](Replacement r) {
    Lane lane = r.lane;
    std::string key = r.key;
    Status st = store_->Replace(
        std::move(r), [this, done, lane, key](Result<std::vector<TouchedJob>> rows) {
          if (!rows.ok()) return done(rows.status());
          if (rows->empty()) {
            return done(Status::Unavailable(
                "job " + key + " was deleted while this submit replaced it; submit again"));
          }
          const TouchedJob& t = rows->front();
          if (!t.changed) {
            return done(RunningNotReplaceable(key, t.job.lease_owner));
          }
          OnQueuedAgain(*rows, lane);
          nlohmann::json answer = SubmitAnswerJson(key, JobState::kQueued, /*existing=*/true);
          answer["replaced"] = true;
          done(std::move(answer));
        });
    if (!st.ok()) done(st);
  };
  // Claimed here and not started: handed back to the table first (its
  // attempt given back), then replaced there like any queued row.
  JobPtr held = env_.jobs->Find(rep.key);
  if (held && held->state == JobState::kQueued) {
    WriteRequeue(held, 0, /*refund=*/true, {}, [replace, rep, done](const RowOutcome& o) {
      if (!o.status.ok()) return done(o.status);
      replace(rep);
    });
    SkipQueuedClaim(held);
    env_.dispatcher->Sweep();
    return;
  }
  if (held && held->state == JobState::kRunning) {
    done(RunningNotReplaceable(rep.key, env_.node_id));
    return;
  }
  replace(std::move(rep));
}

// ---------------------------------------------------------------- cancel group

void PgStore::CancelGroup(const Request& req, const std::string& group,
                          const ControlServer::Reply& reply) {
  if (Status ready = ManageReady("cancel"); !ready.ok()) {
    reply.Send(ErrorLine(req.id, ready));
    return;
  }
  // Answered once the table's statement and the rows of the jobs held here
  // are all written.
  struct Pending {
    nlohmann::json id;
    ControlServer::Reply reply;
    std::string group;
    int waiting = 1;  // the statement
    int64_t cancelled = 0;
    int64_t running = 0;
    int64_t held = 0;  // jobs of the group this node holds
    GroupCancel table;
    Status error;
  };
  auto p = std::make_shared<Pending>();
  p->id = req.id;
  p->reply = reply;
  p->group = group;
  auto settle = [p]() {
    if (--p->waiting > 0) return;
    if (!p->error.ok()) {
      p->reply.Send(ErrorLine(p->id, p->error));
      return;
    }
    if (p->table.total == 0 && p->held == 0) {
      p->reply.Send(ErrorLine(p->id, Status::NotFound("no group \"" + p->group + "\"")));
      return;
    }
    nlohmann::json out = {
        {"group", p->group},
        {"cancelled", p->cancelled + static_cast<int64_t>(p->table.cancelled.size())},
        {"running", p->running}};
    if (p->table.elsewhere > 0) {
      out["elsewhere"] = p->table.elsewhere;
      out["message"] = std::to_string(p->table.elsewhere) + " jobs run on other nodes (" +
                       p->table.elsewhere_nodes + "); cancel the group there too";
    }
    p->reply.Send(OkLine(p->id, std::move(out)));
  };
  std::vector<JobPtr> mine = env_.jobs->FindGroup(group);  // a copy: cancelling changes it
  bool stopping = false;
  for (const auto& job : mine) {
    ++p->held;
    if (job->state == JobState::kQueued) {
      ++p->waiting;
      CancelHeldQueued(job, [p, settle](const RowOutcome& o) {
        if (o.status.ok() && o.accepted) ++p->cancelled;
        settle();
      });
    } else if (job->state == JobState::kRunning) {
      job->user_cancelled = true;
      job->cancel->store(true, std::memory_order_relaxed);
      stopping = true;
      ++p->cancelled;
      ++p->running;
    }
  }
  if (stopping) OllamaClient::WakeAll();
  auto on_table = [this, p, settle](Result<GroupCancel> r) {
    if (!r.ok()) {
      p->error = r.status();
    } else {
      p->table = std::move(r).value();
      for (const auto& s : p->table.cancelled) {
        env_.jobs->NoteCancelled();
        if (env_.events != nullptr) env_.events->Publish("cancelled", EventOf(s));
      }
      if (!p->table.cancelled.empty()) PublishGroupProgress(p->group);
      QueueRelease(p->group);
    }
    settle();
  };
  Status st = store_->CancelGroupQueued(group, "cancelled by request before it ran", on_table);
  if (!st.ok()) {
    p->error = st;
    settle();
  }
}

// ---------------------------------------------------------------- delete

void PgStore::Delete(const Request& req, JobTarget target, const ControlServer::Reply& reply) {
  if (Status ready = ManageReady("delete"); !ready.ok()) {
    reply.Send(ErrorLine(req.id, ready));
    return;
  }
  Status st = store_->DeleteFinished(
      target.key, target.group,
      [this, reply, id = req.id, target](Result<std::pair<std::vector<StoredJob>, int64_t>> r) {
        if (!r.ok()) {
          reply.Send(ErrorLine(id, r.status()));
          return;
        }
        const auto& [deleted, total] = *r;
        if (total == 0) {
          reply.Send(ErrorLine(
              id, Status::NotFound(target.key.empty() ? "no group \"" + target.group + "\""
                                                      : "no job with key \"" + target.key + "\"")));
          return;
        }
        if (env_.events != nullptr) {
          std::vector<std::string> groups;
          for (const auto& s : deleted) {
            env_.events->Publish("deleted", EventOf(s));
            if (!s.group.empty() &&
                std::find(groups.begin(), groups.end(), s.group) == groups.end()) {
              groups.push_back(s.group);
            }
          }
          // The group has fewer parts now (with the memory store the job
          // table's observer tells the same).
          for (const auto& g : groups) {
            PublishGroupProgress(g);
            QueueRelease(g);  // a part that needed a deleted one fails
          }
        }
        auto n = static_cast<int64_t>(deleted.size());
        reply.Send(OkLine(id, {{"deleted", n}, {"skipped", total - n}}));
      });
  if (!st.ok()) reply.Send(ErrorLine(req.id, st));
}

// ---------------------------------------------------------------- after

void PgStore::QueueRelease(const std::string& group) {
  if (group.empty()) {
    release_all_ = true;
  } else {
    release_groups_.insert(group);
  }
  SendRelease();
}

void PgStore::SendRelease() {
  if (releasing_ || closed_ || !migrated_ || (release_groups_.empty() && !release_all_)) return;
  std::vector<std::string> groups;
  if (!release_all_) groups.assign(release_groups_.begin(), release_groups_.end());
  release_groups_.clear();
  release_all_ = false;
  Status st = store_->ReleaseAfter(std::move(groups), [this](Result<std::vector<StoredJob>> r) {
    releasing_ = false;
    if (closed_) return;
    if (!r.ok()) {
      // Lease recovery runs the release for every group again.
      if (r.status().code() != Status::Code::kUnavailable) {
        LOG_WARN(
            "releasing jobs that wait for others failed: %s; tried again with the next "
            "lease recovery",
            r.status().message().c_str());
      }
    } else {
      bool due[kLaneCount] = {false, false};
      for (const StoredJob& s : *r) {
        if (s.state == JobState::kQueued) {
          ++released_after_;
          due[static_cast<int>(s.lane)] = true;
          continue;
        }
        // Failed: a job it needs failed, was cancelled or is gone.
        env_.jobs->NoteFailed();
        if (env_.events != nullptr) env_.events->Publish("failed", EventOf(s));
        PublishGroupProgress(s.group);
        WakeWaiters(s.key, s.group);
        QueueRelease(s.group);  // its own dependents
      }
      for (int lane = 0; lane < kLaneCount; ++lane) {
        if (due[lane]) book_.MarkDue(static_cast<Lane>(lane));
      }
      if (due[0] || due[1]) Refill();
    }
    SendRelease();
  });
  if (st.ok()) releasing_ = true;
}

}  // namespace digestd
