// The daemon with [jobs] store = "postgres": submits, claims and refills,
// results and their waits, lease upkeep, recovery, retention and shutdown.
// The flow is described in daemon.h; the statements live in store/.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>

#include "app/daemon.h"
#include "obs/log.h"
#include "store/migrations.h"
#include "util/json_parse.h"

namespace digestd {

namespace {

// How often an idle daemon looks in the table for due jobs: retries whose
// backoff is over and jobs other daemons' clients submitted. A submit to
// this daemon refills at once.
constexpr uint64_t kRefillPollMs = 500;
// Wait before a failed migration is tried again (the connection stayed up:
// a permission or schema problem the log names).
constexpr uint64_t kMigrateRetryMs = 5000;

int64_t UnixMillis() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double Millis(int64_t ms) {
  return static_cast<double>(ms);
}

}  // namespace

struct Daemon::SubmitBatch {
  nlohmann::json id;
  ControlServer::Reply reply;
  bool single = false;
  std::vector<nlohmann::json> answers;
  std::vector<Status> errors;  // per job; ok when answers[i] is set
  size_t waiting = 0;
};

struct Daemon::DbWait : std::enable_shared_from_this<Daemon::DbWait> {
  Daemon* owner = nullptr;
  nlohmann::json id;
  ControlServer::Reply reply;
  std::string key;  // one of key and group
  std::string group;
  UvHandle<uv_timer_t> timer;
  bool checking = false;  // a lookup is in flight
  bool recheck = false;   // something finished while it was
  bool expired = false;   // wait_ms passed: the next answer is final
  bool ended = false;
};

Status Daemon::InitTimer(uv_loop_t* loop, UvHandle<uv_timer_t>& h, void* data) {
  int rc = uv_timer_init(loop, h.get());
  if (rc != 0) return Status::Internal(std::string("uv_timer_init: ") + uv_strerror(rc));
  h.set_initialized();
  h.get()->data = data;
  return Status::Ok();
}

Status Daemon::StartStore() {
  const auto& pc = config_.postgres;
  if (config_.queues.write <= config_.workers.max) {
    return Status::InvalidConfig(
        "[queues] write = " + std::to_string(config_.queues.write) +
        " must be larger than [workers] max = " + std::to_string(config_.workers.max) +
        ": every running job keeps a write-ring slot for its result; raise [queues] write");
  }
  PgConnOptions po;
  po.conninfo = pc.conninfo;
  po.connect_timeout_ms = pc.connect_timeout_s * 1000;
  po.reconnect_max_ms = pc.reconnect_max_ms;
  po.query_timeout_ms = pc.query_timeout_s * 1000;
  // Two sessions: the writer's commits on one, claims, lookups, LISTEN and
  // upkeep on the other, so a claim never queues behind a batch in flight
  // and the server works on both at once.
  po.label = "postgres";
  pg_ = std::make_unique<PgConn>(&loop_, po);
  store_ = std::make_unique<JobStore>(*pg_, node_id_);
  po.label = "postgres writer";
  pgw_ = std::make_unique<PgConn>(&loop_, po);
  wstore_ = std::make_unique<JobStore>(*pgw_, node_id_);
  BatchWriterOptions wo;
  wo.capacity = static_cast<size_t>(config_.queues.write);
  wo.batch_rows = config_.writer.batch_rows;
  wo.batch_ms = config_.writer.batch_ms;
  wo.max_batch_rows = config_.writer.max_batch_rows;
  wo.lease_s = pc.lease_s;
  wo.submit_reserve = static_cast<size_t>(pool_size_);
  if (wo.submit_reserve >= wo.capacity) wo.submit_reserve = wo.capacity - 1;
  BatchWriter::Hooks wh;
  wh.on_space = [this] {
    FlushPending();
    dispatcher_->Kick();
  };
  wh.on_leases_lost = [this](std::vector<uint64_t> ids) { OnLeasesLost(std::move(ids)); };
  writer_ = std::make_unique<BatchWriter>(&loop_, *pgw_, *wstore_, wo, std::move(wh));
  pg_->SetNotifyHandler([this](const std::string& channel, const std::string& payload) {
    OnNotify(channel, payload);
  });
  pg_->AddStateObserver([this](bool up, const Status& why) { OnDbState(up, why); });
  pgw_->AddStateObserver([this](bool up, const Status& why) { OnWriterDbState(up, why); });

  uint64_t lease_ms = std::max<uint64_t>(1000, static_cast<uint64_t>(pc.lease_s) * 1000 / 3);
  const std::pair<UvHandle<uv_timer_t>*, uint64_t> periodic[] = {
      {&refill_timer_, kRefillPollMs},
      {&lease_timer_, lease_ms},
      {&recover_timer_, static_cast<uint64_t>(pc.recover_interval_s) * 1000},
      {&retention_timer_, static_cast<uint64_t>(pc.retention_interval_s) * 1000},
      {&backlog_timer_, static_cast<uint64_t>(pc.backlog_interval_ms)},
  };
  for (const auto& [timer, every_ms] : periodic) {
    Status st = InitTimer(&loop_, *timer, this);
    if (!st.ok()) return st;
    uv_timer_start(
        timer->get(), [](uv_timer_t* t) { static_cast<Daemon*>(t->data)->OnPeriodic(t); }, every_ms,
        every_ms);
  }
  Status st = InitTimer(&loop_, ready_timer_, this);
  if (!st.ok()) return st;
  if (pc.ready_timeout_s > 0) {
    uv_timer_start(
        ready_timer_.get(),
        [](uv_timer_t* t) { static_cast<Daemon*>(t->data)->MaybeReady(/*db_answered=*/false); },
        static_cast<uint64_t>(pc.ready_timeout_s) * 1000, 0);
  }
  LOG_INFO("connecting to PostgreSQL %s", pg_->Describe().c_str());
  pg_->Start();
  pgw_->Start();
  return Status::Ok();
}

// Plans each statement with the table's current size: the job table grows
// from empty to a large backlog in minutes, faster than autovacuum's
// statistics follow, and a generic plan cached while it was small (a
// sequential scan for the key lookup) would stay.
static void PlanPerExecution(PgConn& conn) {
  Status st = conn.Query(
      PgStatement{"SET plan_cache_mode = force_custom_plan", {}, {}}, [](Result<PgResult> r) {
        if (!r.ok()) {
          LOG_WARN("SET plan_cache_mode failed: %s", r.status().message().c_str());
        }
      });
  (void)st;  // not up after all: the next up sets it
}

void Daemon::OnPeriodic(uv_timer_t* timer) {
  if (timer == refill_timer_.get()) Refill(/*poll=*/true);
  if (timer == lease_timer_.get()) RenewLeases();
  if (timer == recover_timer_.get()) Recover(false);
  if (timer == retention_timer_.get()) RunRetention();
  if (timer == backlog_timer_.get()) RefreshBacklog();
}

void Daemon::OnWriterDbState(bool up, const Status& why) {
  if (phase_ == Phase::kStopping) return;
  if (up) {
    PlanPerExecution(*pgw_);
    if (migrated_ && pg_->up()) MaybeReady(/*db_answered=*/true);
    return;
  }
  LOG_WARN(
      "PostgreSQL writer session to %s lost: %s; results wait in the write ring until it "
      "is back",
      pgw_->Describe().c_str(), why.message().c_str());
  FailPendingSubmits(Status::Unavailable(
      "PostgreSQL became unreachable (" + why.message() +
      ") before the job could be stored; nothing was accepted, submit again later"));
}

void Daemon::OnDbState(bool up, const Status& why) {
  if (phase_ == Phase::kStopping) return;  // CloseStore() closed it
  if (!up) {
    LOG_WARN(
        "PostgreSQL %s is unreachable: %s; submits answer unavailable, results wait in the "
        "write ring, and digestd reconnects by itself",
        pg_->Describe().c_str(), why.message().c_str());
    for (bool& c : claiming_) c = false;  // their callbacks ran with Unavailable
    if (notifier_) notifier_->Status("db down: " + StatusLine());
    return;
  }
  LOG_NOTICE("PostgreSQL %s is up (server %d)", pg_->Describe().c_str(),
             pg_->state().server_version);
  PlanPerExecution(*pg_);
  // LISTEN belongs to the session: issue it on every new connection.
  Status st = pg_->Query(PgStatement{std::string("LISTEN ") + kDoneChannel, {}, {}},
                         [](Result<PgResult> r) {
                           if (!r.ok()) {
                             LOG_WARN("LISTEN %s failed: %s; result waits end at their wait_ms",
                                      kDoneChannel, r.status().message().c_str());
                           }
                         });
  (void)st;  // not up after all: the next up runs this again
  if (!migrated_) {
    OnDbReady();
    return;
  }
  // A claim in flight when the connection dropped may have committed with
  // its answer lost: those jobs run under this node's name but nowhere.
  release_unheld_pending_ = true;
  Recover(false);
  Refill(/*poll=*/true);
  RefreshBacklog();
}

void Daemon::OnDbReady() {
  if (migrated_ || migrating_ || !pg_->up()) return;
  if (migrate_retry_at_ > uv_now(&loop_)) return;
  migrating_ = true;
  Status st = Migrate(*pg_, [this](Status result) {
    migrating_ = false;
    if (!result.ok()) {
      store_error_ = result.message();
      migrate_retry_at_ = uv_now(&loop_) + kMigrateRetryMs;
      LOG_ERROR(
          "cannot bring schema digestd up to date on %s: %s; fix the database (the user "
          "needs CREATE on it) -- digestd tries again every %llu s",
          pg_->Describe().c_str(), result.message().c_str(),
          static_cast<unsigned long long>(kMigrateRetryMs / 1000));
      return;
    }
    migrated_ = true;
    store_error_.clear();
    LOG_INFO("schema digestd is at version %d", kSchemaVersion);
    // Jobs this node held when it last stopped go back to the queue first,
    // before any claim: they were not finished by anyone.
    Recover(true);
    Refill(/*poll=*/true);
    RefreshBacklog();
    // Ready once both sessions can serve a submit; the writer's own
    // "up" calls this when it connects second.
    if (pgw_->up()) MaybeReady(/*db_answered=*/true);
  });
  if (!st.ok()) migrating_ = false;
}

void Daemon::MaybeReady(bool db_answered) {
  if (ready_sent_ || phase_ != Phase::kRunning) return;
  ready_sent_ = true;
  ready_timer_.Close();
  notifier_->Ready();
  if (!db_answered) {
    std::string err = pg_->state().last_error;
    LOG_WARN(
        "ready without PostgreSQL after [postgres] ready_timeout_s = %d s (%s); submits "
        "answer unavailable until it answers",
        config_.postgres.ready_timeout_s, err.empty() ? "no answer yet" : err.c_str());
    notifier_->Status("waiting for PostgreSQL: " + (err.empty() ? std::string("no answer") : err));
  } else {
    notifier_->Status(StatusLine());
  }
  LOG_NOTICE("digestd %s ready: node %s, socket %s, workers %d..%d (pool %d), jobs in %s",
             DIGESTD_VERSION, node_id_.c_str(), config_.control.socket.c_str(), config_.workers.min,
             config_.workers.max, pool_size_, pg_->Describe().c_str());
}

// ---------------------------------------------------------------- submit

void Daemon::DurableSubmit(const Request& req, const ControlServer::Reply& reply) {
  std::vector<const nlohmann::json*> specs;
  bool single = false;
  Status st = CheckSubmit(req, &specs, &single);
  if (!st.ok()) {
    reply.Send(ErrorLine(req.id, st));
    return;
  }
  if (!migrated_ || !pg_->up() || !pgw_->up()) {
    std::string why;
    if (!pg_->up() || (migrated_ && !pgw_->up())) {
      std::string err = pg_->up() ? pgw_->state().last_error : pg_->state().last_error;
      why = "PostgreSQL is unreachable (" + (err.empty() ? std::string("connecting") : err) +
            "); nothing was accepted, submit again later";
    } else {
      why = "the job table is not ready yet (schema migration " +
            (store_error_.empty() ? std::string("in progress") : "failing: " + store_error_) +
            "); nothing was accepted, submit again shortly";
    }
    reply.Send(ErrorLine(req.id, Status::Unavailable(why)));
    return;
  }
  auto batch = std::make_shared<SubmitBatch>();
  batch->id = req.id;
  batch->reply = reply;
  batch->single = single;
  batch->answers.resize(specs.size());
  batch->errors.resize(specs.size());
  auto finish = [this](const std::shared_ptr<SubmitBatch>& b) {
    if (b->single) {
      b->reply.Send(b->errors[0].ok() ? OkLine(b->id, std::move(b->answers[0]))
                                      : ErrorLine(b->id, b->errors[0]));
    } else {
      nlohmann::json out = nlohmann::json::array();
      size_t accepted = 0;
      for (size_t i = 0; i < b->answers.size(); ++i) {
        if (b->errors[i].ok()) {
          ++accepted;
          out.push_back(std::move(b->answers[i]));
        } else {
          out.push_back({{"key", b->answers[i].value("key", "")},
                         {"error",
                          {{"code", std::string(b->errors[i].CodeName())},
                           {"message", b->errors[i].message()}}}});
        }
      }
      b->reply.Send(OkLine(b->id, {{"jobs", std::move(out)}, {"accepted", accepted}}));
    }
    Refill();
  };
  for (size_t i = 0; i < specs.size(); ++i) {
    const nlohmann::json& spec = *specs[i];
    NewJob job;
    job.key = spec.value("key", std::string());
    if (job.key.empty()) job.key = jobs_->NewKey(node_id_);
    job.group = spec.value("group", std::string());
    job.kind = spec.value("kind", std::string());
    job.lane = *ParseLane(spec.value("lane", std::string("background")));
    auto input = spec.find("input");
    job.input = std::make_shared<const nlohmann::json>(
        input == spec.end() ? nlohmann::json::object() : *input);
    job.max_attempts = config_.backend.max_attempts;
    // When the lane's table holds nothing due and its ring has room, the
    // row is created claimed by this node: no claim round trip, no second
    // row version. Otherwise it waits in the table for a claim.
    int l = static_cast<int>(job.lane);
    bool claim = lane_dry_[l] &&
                 dispatcher_->depth(job.lane) + self_claims_[l] < dispatcher_->capacity(job.lane);
    if (claim) {
      job.claim_owner = node_id_;
      job.lease_s = config_.postgres.lease_s;
      ++self_claims_[l];
    } else {
      lane_dry_[l] = false;
    }
    auto own = claim ? std::make_shared<NewJob>(job) : nullptr;
    std::string key = job.key;
    batch->answers[i] = {{"key", key}};
    Status enq = WriteSubmit(
        WriteRow::Submit(std::move(job), [this, batch, i, key, finish, own](const RowOutcome& o) {
          if (own) {
            --self_claims_[static_cast<int>(own->lane)];
            if (o.status.ok() && o.inserted.created && o.inserted.lease_token != 0) {
              AdoptOwnSubmit(*own, o.inserted);
            } else if (o.status.code() == Status::Code::kUnavailable) {
              release_unheld_pending_ = true;  // it may have committed, claimed by nobody
            }
          }
          if (o.status.ok() && o.inserted.id == 0) {
            batch->errors[i] = Status::Unavailable(
                "job " + key + " was deleted (retention) while this submit ran; submit again");
          } else if (o.status.ok()) {
            if (o.inserted.created) {
              jobs_->NoteSubmitted();
            } else {
              jobs_->NoteDuplicate();
            }
            batch->answers[i] = {{"key", key},
                                 {"status", JobStateName(o.inserted.status)},
                                 {"existing", !o.inserted.created}};
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

nlohmann::json Daemon::StoredJobJson(const StoredJob& job) const {
  nlohmann::json j = {{"key", job.key},
                      {"kind", job.kind},
                      {"lane", LaneName(job.lane)},
                      {"status", JobStateName(job.state)},
                      {"attempts", job.attempts},
                      {"max_attempts", job.max_attempts},
                      {"submitted_at_ms", job.created_at_ms}};
  if (!job.group.empty()) j["group"] = job.group;
  int64_t now = UnixMillis();
  int64_t started =
      job.started_at_ms ? job.started_at_ms : (job.finished_at_ms ? job.finished_at_ms : now);
  if (job.created_at_ms) j["queued_ms"] = Millis(std::max<int64_t>(0, started - job.created_at_ms));
  if (job.started_at_ms) {
    j["run_ms"] = Millis(
        std::max<int64_t>(0, (job.finished_at_ms ? job.finished_at_ms : now) - job.started_at_ms));
  }
  if (job.state == JobState::kRunning && !job.lease_owner.empty()) j["node"] = job.lease_owner;
  if (job.state == JobState::kQueued && job.run_after_ms > now)
    j["run_after_ms"] = job.run_after_ms;
  if (job.state == JobState::kDone) j["result"] = job.result;
  if (!job.error.empty()) j["error"] = job.error;
  return j;
}

nlohmann::json Daemon::StoredGroupJson(const std::string& group,
                                       const std::vector<StoredJob>& parts) const {
  size_t queued = 0, done = 0, bad = 0, terminal = 0;
  nlohmann::json list = nlohmann::json::array();
  for (const auto& p : parts) {
    list.push_back(StoredJobJson(p));
    if (p.state == JobState::kQueued) ++queued;
    if (p.state == JobState::kDone) ++done;
    if (p.state == JobState::kFailed || p.state == JobState::kCancelled) ++bad;
    if (IsTerminal(p.state)) ++terminal;
  }
  return {{"group", group},
          {"status", GroupStatusName(parts.size(), queued, done, bad, terminal)},
          {"total", parts.size()},
          {"ready", done},
          {"parts", std::move(list)}};
}

void Daemon::DurableResult(const Request& req, const ControlServer::Reply& reply, std::string key,
                           std::string group, int64_t wait_ms) {
  auto wait = std::make_shared<DbWait>();
  wait->owner = this;
  wait->id = req.id;
  wait->reply = reply;
  wait->key = std::move(key);
  wait->group = std::move(group);
  if (wait_ms > 0 && phase_ != Phase::kStopping) {
    // Registered before the first lookup, so a commit that lands while the
    // lookup is in flight still wakes it (recheck).
    if (InitTimer(&loop_, wait->timer, wait.get()).ok()) {
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
          static_cast<uint64_t>(wait_ms), 0);
    } else {
      wait->expired = true;
    }
  } else {
    wait->expired = true;
  }
  CheckDbWait(wait, wait->expired);
}

void Daemon::CheckDbWait(const std::shared_ptr<DbWait>& wait, bool final) {
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
      if (IsTerminal((*r)->state) || w->expired) {
        w->reply.Send(OkLine(w->id, StoredJobJson(**r)));
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
          if (all || w->expired) {
            w->reply.Send(OkLine(w->id, StoredGroupJson(w->group, *r)));
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

void Daemon::EndDbWait(const std::shared_ptr<DbWait>& wait) {
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

void Daemon::OnNotify(const std::string& channel, const std::string& payload) {
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

void Daemon::DurableCancel(const Request& req, const ControlServer::Reply& reply,
                           const std::string& key) {
  if (JobPtr job = jobs_->Find(key)) {
    if (job->state == JobState::kQueued) {
      // Claimed by this node, not started: finish it cancelled here.
      job->user_cancelled = true;
      job->state = JobState::kCancelled;
      ForgetClaim(job);
      WriteFinish(job, JobState::kCancelled, nullptr, "cancelled by request before it ran",
                  [reply, id = req.id, key](const RowOutcome& o) {
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
      key, "cancelled by request before it ran", [this, reply, id = req.id, key](Result<bool> r) {
        if (!r.ok()) {
          reply.Send(ErrorLine(id, r.status()));
          return;
        }
        if (*r) {
          reply.Send(OkLine(id, {{"key", key}, {"status", "cancelled"}, {"cancelled", true}}));
          return;
        }
        Status ls = store_->Lookup(key, [reply, id, key](Result<std::optional<StoredJob>> j) {
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

// ---------------------------------------------------------------- claims

void Daemon::Refill(bool poll) {
  if (!durable()) return;
  if (!migrated_) {
    OnDbReady();
    return;
  }
  if (!pg_->up()) return;
  if (release_unheld_pending_ && !claiming_[0] && !claiming_[1] && self_claims_[0] == 0 &&
      self_claims_[1] == 0) {
    ReleaseUnheld();
  }
  if (phase_ != Phase::kRunning) return;
  for (Lane lane : {Lane::kInteractive, Lane::kBackground}) {
    int l = static_cast<int>(lane);
    pace_[l].Measure(uv_now(&loop_));
    if (claiming_[l]) continue;
    // The lane's last claim found the table empty: nothing to claim until a
    // submit or requeue lands there (they clear the flag) or the poll looks
    // for due retries and other nodes' jobs. An empty claim costs a planned
    // query on the claims session.
    if (lane_dry_[l] && !poll) continue;
    size_t depth = dispatcher_->depth(lane);
    size_t cap = dispatcher_->capacity(lane);
    ClaimSize size = pace_[l].Size(config_.postgres.claim_batch, config_.postgres.refill_low_water);
    // At most half the ring: a claim then always has room for half a ring
    // of jobs, never a handful (each claim costs about the same to plan).
    size_t low = std::min(size.low_water, cap / 2);
    if (depth > low || depth >= cap) continue;
    int n = static_cast<int>(std::min(cap - depth, size.batch));
    Status st = store_->Claim(
        lane, n, config_.postgres.lease_s,
        [this, lane, n](Result<std::vector<StoredJob>> r) { OnClaimed(lane, n, std::move(r)); });
    if (st.ok()) {
      claiming_[l] = true;
      ++claims_sent_;
    }
  }
}

void Daemon::OnClaimed(Lane lane, int asked, Result<std::vector<StoredJob>> claimed) {
  claiming_[static_cast<int>(lane)] = false;
  if (!claimed.ok()) {
    if (claimed.status().code() != Status::Code::kUnavailable) {
      store_error_ = claimed.status().message();
      LOG_WARN("claiming %s jobs failed: %s", LaneName(lane).data(),
               claimed.status().message().c_str());
    }
    return;
  }
  uint64_t now_ns = uv_hrtime();
  int64_t now_ms = UnixMillis();
  for (auto& sj : *claimed) {
    auto job = std::make_shared<JobRecord>();
    job->id = sj.id;
    job->row_id = sj.id;
    job->key = std::move(sj.key);
    job->group = std::move(sj.group);
    job->kind = std::move(sj.kind);
    job->lane = sj.lane;
    job->input = std::make_shared<const nlohmann::json>(std::move(sj.input));
    job->attempts = std::max(0, sj.attempts - 1);  // MarkRunning counts the claim's attempt
    job->max_attempts = sj.max_attempts;
    job->lease_token = sj.lease_token;
    job->error = std::move(sj.error);
    job->submitted_unix_ms = sj.created_at_ms;
    int64_t age_ms = std::max<int64_t>(0, now_ms - sj.created_at_ms);
    job->submitted_at =
        now_ns - std::min<uint64_t>(now_ns, static_cast<uint64_t>(age_ms) * 1000000);
    TakeClaim(std::move(job));
  }
  claimed_jobs_ += claimed->size();
  if (claimed->empty()) ++claims_empty_;
  bool full = static_cast<int>(claimed->size()) == asked;
  lane_dry_[static_cast<int>(lane)] = !full;
  if (full) Refill();  // more may be due
}

void Daemon::AdoptOwnSubmit(const NewJob& spec, const InsertedJob& row) {
  auto job = std::make_shared<JobRecord>();
  job->id = row.id;
  job->row_id = row.id;
  job->key = spec.key;
  job->group = spec.group;
  job->kind = spec.kind;
  job->lane = spec.lane;
  job->input =
      spec.input ? spec.input : std::make_shared<const nlohmann::json>(nlohmann::json::object());
  job->attempts = 0;  // MarkRunning counts the attempt the insert recorded
  job->max_attempts = spec.max_attempts;
  job->lease_token = row.lease_token;
  job->submitted_at = uv_hrtime();
  job->submitted_unix_ms = UnixMillis();
  TakeClaim(std::move(job));
}

void Daemon::TakeClaim(JobPtr job) {
  claimed_[job->row_id] = job;
  jobs_->Adopt(job);
  if (phase_ != Phase::kRunning || !dispatcher_->Enqueue(job).ok()) {
    WriteRequeue(job, 0, /*refund=*/true, {});
    jobs_->MarkReleased(job);
    ForgetClaim(job);
  }
}

// Sent only while no claim and no claiming submit is in flight on either
// session, so every job this node holds is in claimed_ or unsettled_ (and
// Refill's claims, sent after it on the same session, come after it).
void Daemon::ReleaseUnheld() {
  release_unheld_pending_ = false;
  // Jobs whose finish or requeue row still waits in the write ring are held
  // too: that row settles them.
  std::vector<int64_t> held;
  held.reserve(claimed_.size() + unsettled_.size());
  for (const auto& [id, job] : claimed_) held.push_back(job->lease_token);
  for (const auto& [id, token] : unsettled_) held.push_back(token);
  Status st = store_->ReleaseUnheld(std::move(held), [this](Result<uint64_t> r) {
    if (!r.ok()) {
      release_unheld_pending_ = true;  // the next Refill tries again
      return;
    }
    if (*r > 0) {
      LOG_NOTICE("%llu jobs claimed just before a connection dropped went back to the queue",
                 static_cast<unsigned long long>(*r));
      lane_dry_[0] = lane_dry_[1] = false;
    }
  });
  if (!st.ok()) release_unheld_pending_ = true;
}

void Daemon::ForgetClaim(const JobPtr& job) {
  auto it = claimed_.find(job->row_id);
  if (it != claimed_.end() && it->second == job) claimed_.erase(it);
  jobs_->Drop(job);
}

// ---------------------------------------------------------------- outcomes

void Daemon::DurableFinished(const JobPtr& job, WorkOutcome outcome) {
  bool started = job->state == JobState::kRunning;  // else a failed uv_queue_work
  if (started && UsesBackend(*job)) backend_->OnOutcome(outcome);
  if (job->lease_lost) {
    LOG_WARN(
        "job %s: dropped its outcome: this node lost the job's lease (it was recovered "
        "and may run elsewhere)",
        job->key.c_str());
    jobs_->MarkReleased(job);
    ForgetClaim(job);
    return;
  }
  using Kind = WorkOutcome::Kind;
  if (outcome.kind == Kind::kCancelled && !job->user_cancelled) {
    // Aborted by a shutdown: back to the queue without spending the attempt.
    WriteRequeue(job, 0, /*refund=*/true, {});
    jobs_->MarkReleased(job);
    ForgetClaim(job);
    return;
  }
  Verdict v = Judge(job, std::move(outcome), started, job->max_attempts);
  if (v.retry) {
    // The retry waits in the table (run_after), not in this process.
    WriteRequeue(job, v.delay_ms, v.refund, v.outcome.error);
    jobs_->MarkRetrying(job, std::move(v.outcome.error), v.refund);
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
  jobs_->MarkFinished(job, std::move(v.outcome));
  ForgetClaim(job);
}

void Daemon::WriteFinish(const JobPtr& job, JobState state, nlohmann::json result,
                         std::string error, RowCallback then) {
  FinishRow row{job->row_id, job->lease_token,  job->key,
                state,       std::move(result), std::move(error)};
  unsettled_[job->row_id] = job->lease_token;
  Write(WriteRow::Finish(
      std::move(row), [this, key = job->key, id = job->row_id, token = job->lease_token,
                       then = std::move(then)](const RowOutcome& o) {
        Settle(id, token);
        if (then) then(o);
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

void Daemon::WriteRequeue(const JobPtr& job, int64_t delay_ms, bool refund, std::string error) {
  RequeueRow row{job->row_id, job->lease_token, delay_ms, refund, std::move(error)};
  unsettled_[job->row_id] = job->lease_token;
  Write(WriteRow::Requeue(std::move(row),
                          [this, id = job->row_id, token = job->lease_token,
                           lane = static_cast<int>(job->lane), delay_ms](const RowOutcome& o) {
                            Settle(id, token);
                            // Due again at once: the next refill looks (a delayed one waits
                            // for the refill poll).
                            if (o.status.ok() && o.accepted && delay_ms <= 0)
                              lane_dry_[lane] = false;
                          }));
}

void Daemon::Settle(uint64_t row_id, int64_t token) {
  auto it = unsettled_.find(row_id);
  if (it != unsettled_.end() && it->second == token) unsettled_.erase(it);
}

void Daemon::Write(WriteRow row) {
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

Status Daemon::WriteSubmit(WriteRow row) {
  if (pending_submits_.empty() && writer_->submit_free_slots() > 0) {
    return writer_->Enqueue(std::move(row));
  }
  // Four full batches may wait beyond the ring; past that the client is
  // told to come back, so memory stays bounded.
  size_t limit = static_cast<size_t>(config_.jobs.max_batch) * 4;
  if (pending_submits_.size() >= limit) {
    return Status::QueueFull("the write ring is full and " + std::to_string(limit) +
                             " more submits wait for it (PostgreSQL is slower than the "
                             "submits); submit again shortly, or raise [queues] write");
  }
  pending_submits_.push_back(std::move(row));
  writer_->NotifyWhenSpace();
  return Status::Ok();
}

void Daemon::FailPendingSubmits(const Status& why) {
  auto waiting = std::move(pending_submits_);
  pending_submits_.clear();
  for (auto& row : waiting) {
    if (row.done) row.done(RowOutcome{why, true, {}});
  }
}

void Daemon::FlushPending() {
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
  if (writer_draining_ && pending_rows_.empty()) DurableDrained();
}

// ---------------------------------------------------------------- upkeep

void Daemon::RenewLeases() {
  if (!durable() || claimed_.empty()) return;
  std::vector<LeaseRef> leases;
  leases.reserve(claimed_.size());
  for (const auto& [id, job] : claimed_) leases.push_back(LeaseRef{id, job->lease_token});
  writer_->RenewLeases(std::move(leases));
}

void Daemon::OnLeasesLost(std::vector<uint64_t> ids) {
  for (uint64_t id : ids) {
    auto it = claimed_.find(id);
    if (it == claimed_.end()) continue;
    JobPtr job = it->second;
    ++leases_lost_;
    job->lease_lost = true;
    LOG_WARN(
        "job %s: this node's lease on it was lost (it expired and the job was recovered); "
        "stopping it here",
        job->key.c_str());
    if (job->state == JobState::kQueued) {
      job->state = JobState::kCancelled;  // the dispatcher skips it
      jobs_->MarkReleased(job);
      ForgetClaim(job);
    } else {
      job->cancel->store(true, std::memory_order_relaxed);
      claimed_.erase(it);  // its outcome is dropped on return
    }
  }
}

void Daemon::Recover(bool startup) {
  if (!durable() || !migrated_ || recovering_) return;
  Status st = store_->RecoverExpired(startup, [this, startup](Result<RecoverCounts> r) {
    recovering_ = false;
    if (!r.ok()) {
      if (r.status().code() != Status::Code::kUnavailable) {
        store_error_ = r.status().message();
        LOG_WARN("lease recovery failed: %s", r.status().message().c_str());
      }
      return;
    }
    recovered_ += r->requeued;
    crash_failed_ += r->failed_keys.size();
    if (r->requeued > 0 || !r->failed_keys.empty()) {
      LOG_NOTICE("%s: %llu jobs back in the queue, %zu failed after using up their attempts%s",
                 startup ? "jobs this node held before it restarted" : "expired leases",
                 static_cast<unsigned long long>(r->requeued), r->failed_keys.size(),
                 r->failed_keys.empty() ? "" : " (their workers crashed or hung each time)");
    }
    if (r->requeued > 0) {
      lane_dry_[0] = lane_dry_[1] = false;  // they wait in the table now
      Refill();
    }
  });
  if (st.ok()) recovering_ = true;
}

void Daemon::RunRetention() {
  if (!durable() || !migrated_ || retention_running_ || config_.postgres.retention_s <= 0) return;
  int limit = config_.postgres.retention_batch;
  Status st = store_->DeleteFinishedOlderThan(
      config_.postgres.retention_s, limit, [this, limit](Result<uint64_t> r) {
        retention_running_ = false;
        if (!r.ok()) {
          LOG_WARN("retention delete failed: %s", r.status().message().c_str());
          return;
        }
        retention_deleted_ += *r;
        // Small batches, one after another: short transactions, no bloat.
        if (*r >= static_cast<uint64_t>(limit) && phase_ == Phase::kRunning) RunRetention();
      });
  if (st.ok()) retention_running_ = true;
}

void Daemon::RefreshBacklog() {
  if (!durable() || !migrated_ || backlog_pending_) return;
  Status st = store_->BacklogCounts([this](Result<Backlog> r) {
    backlog_pending_ = false;
    if (!r.ok()) return;
    backlog_ = *r;
    backlog_unix_ms_ = UnixMillis();
  });
  if (st.ok()) backlog_pending_ = true;
}

// ---------------------------------------------------------------- shutdown

void Daemon::DurableBeginShutdown() {
  // Claimed but not started: their leases go back to the queue at once, for
  // the next start or another node; the attempt is given back.
  auto queued = dispatcher_->TakeQueued();
  size_t released = 0;
  for (const auto& job : queued) {
    if (job->state != JobState::kQueued) continue;
    WriteRequeue(job, 0, /*refund=*/true, {});
    jobs_->MarkReleased(job);
    ForgetClaim(job);
    ++released;
  }
  LOG_NOTICE("released %zu claimed jobs that had not started; %d running jobs may finish", released,
             dispatcher_->in_flight());
  dispatcher_->PutPills();  // on_drained follows once nothing runs
}

void Daemon::DurableDrained() {
  if (phase_ != Phase::kDraining) return;
  writer_draining_ = true;
  if (!pending_rows_.empty()) return;  // FlushPending calls again
  writer_->Drain([this] {
    if (!pending_rows_.empty()) return;  // more came; FlushPending drains again
    LOG_INFO("every result and release is written to PostgreSQL");
    FinishShutdown();
  });
}

void Daemon::CloseStore() {
  if (!durable()) return;
  for (auto* t : {&ready_timer_, &refill_timer_, &lease_timer_, &recover_timer_, &retention_timer_,
                  &backlog_timer_}) {
    t->Close();
  }
  auto keys = key_waits_;
  for (const auto& [key, list] : keys) {
    for (const auto& w : list) {
      w->reply.Send(ErrorLine(w->id, Status::Unavailable("digestd is shutting down; ask again "
                                                         "once it has restarted")));
      EndDbWait(w);
    }
  }
  auto groups = group_waits_;
  for (const auto& w : groups) {
    w->reply.Send(ErrorLine(
        w->id, Status::Unavailable("digestd is shutting down; ask again once it has restarted")));
    EndDbWait(w);
  }
  FailPendingSubmits(
      Status::Unavailable("digestd is shutting down; submit again once it has "
                          "restarted"));
  if (writer_) writer_->Close();
  if (pgw_) pgw_->Close();
  if (pg_) pg_->Close();
}

nlohmann::json Daemon::StoreStatusJson() const {
  if (!durable()) return {{"store", "memory"}};
  PgConnState cs = pg_->state();
  PgConnState wcs = pgw_->state();
  if (cs.up && !wcs.up) cs = wcs;  // the session that is down tells why
  BatchWriterStats ws = writer_->stats();
  nlohmann::json db = {{"store", "postgres"},
                       {"state", cs.up ? (migrated_ ? "up" : "migrating") : "down"},
                       {"target", cs.target},
                       {"server_version", cs.server_version},
                       {"connects", pg_->state().connects + wcs.connects},
                       {"disconnects", pg_->state().disconnects + wcs.disconnects},
                       {"schema_version", migrated_ ? kSchemaVersion : 0}};
  if (!cs.last_error.empty()) {
    db["last_error"] = cs.last_error;
    db["last_error_unix_ms"] = cs.last_error_unix_ms;
  }
  if (!cs.up && cs.next_attempt_unix_ms) db["next_attempt_unix_ms"] = cs.next_attempt_unix_ms;
  if (!store_error_.empty()) db["store_error"] = store_error_;
  nlohmann::json writer = {
      {"depth", ws.depth},
      {"capacity", ws.capacity},
      {"pending", pending_rows_.size()},
      {"rows_written", ws.rows_written},
      {"batches", ws.batches},
      {"submits_written", ws.submits_written},
      {"results_written", ws.results_written},
      {"ignored", ws.ignored},
      {"rejected", ws.rejected},
      {"failed_batches", ws.failed_batches},
      {"last_commit_ms", ws.last_commit_ms},
      {"commits_per_1000_results", ws.commits_per_1000_results},
      {"row_wait", {{"p50_ms", ws.row_wait.p50_ms}, {"p99_ms", ws.row_wait.p99_ms}}}};
  if (!ws.last_error.empty()) writer["last_error"] = ws.last_error;
  db["writer"] = std::move(writer);
  auto lane = [&](Lane l) {
    int i = static_cast<int>(l);
    return nlohmann::json{{"queued", backlog_.queued[i]},
                          {"delayed", backlog_.delayed[i]},
                          {"running", backlog_.running[i]}};
  };
  db["backlog"] = {{"interactive", lane(Lane::kInteractive)},
                   {"background", lane(Lane::kBackground)},
                   {"as_of_unix_ms", backlog_unix_ms_}};
  db["leases"] = {{"held", claimed_.size()},
                  {"lost", leases_lost_},
                  {"results_ignored", lease_ignored_},
                  {"recovered", recovered_},
                  {"failed_after_crashes", crash_failed_}};
  auto pace = [&](Lane l) {
    const ClaimPace& p = pace_[static_cast<int>(l)];
    ClaimSize size = p.Size(config_.postgres.claim_batch, config_.postgres.refill_low_water);
    return nlohmann::json{{"start_rate_per_s", std::round(p.rate() * 10) / 10},
                          {"claim_size", size.batch}};
  };
  db["claims"] = {{"sent", claims_sent_},
                  {"empty", claims_empty_},
                  {"jobs", claimed_jobs_},
                  {"interactive", pace(Lane::kInteractive)},
                  {"background", pace(Lane::kBackground)}};
  db["retention_deleted"] = retention_deleted_;
  return db;
}

}  // namespace digestd
