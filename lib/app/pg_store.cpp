// PgStore: the two sessions, readiness, status and shutdown. The flow is
// described in pg_store.h.
#include "app/pg_store.h"

#include <algorithm>
#include <cmath>

#include "obs/log.h"
#include "store/migrations.h"
#include "util/clock.h"

namespace digestd {

namespace {

// How often an idle daemon looks in the table for due jobs: retries whose
// backoff is over and jobs other daemons' clients submitted. A submit to
// this daemon refills at once.
constexpr uint64_t kRefillPollMs = 500;
// Wait before a failed migration is tried again (the connection stayed up:
// a permission or schema problem the log names).
constexpr uint64_t kMigrateRetryMs = 5000;
// After the grace, aborted jobs and the writer's last batch get this long.
constexpr uint64_t kFinalFlushMs = 5000;

// Plans each statement with the table's current size: the job table grows
// from empty to a large backlog in minutes, faster than autovacuum's
// statistics follow, and a generic plan cached while it was small (a
// sequential scan for the key lookup) would stay.
void PlanPerExecution(PgConn& conn) {
  Status st = conn.Query(
      PgStatement{"SET plan_cache_mode = force_custom_plan", {}, {}}, [](Result<PgResult> r) {
        if (!r.ok()) {
          LOG_WARN("SET plan_cache_mode failed: %s", r.status().message().c_str());
        }
      });
  (void)st;  // not up after all: the next up sets it
}

}  // namespace

PgStore::PgStore(StoreEnv env) : env_(std::move(env)) {
  // A finish is told to subscribers once committed (WriteFinish), so what
  // `result` reads after a "done" event is what the event said.
  env_.jobs->SetTerminalEvents(false);
}

PgStore::~PgStore() = default;

std::string PgStore::Describe() const {
  return "jobs in " + pg_->Describe();
}

Status PgStore::Start() {
  const Config& cfg = config();
  const auto& pc = cfg.postgres;
  PgConnOptions po;
  po.conninfo = pc.conninfo;
  po.connect_timeout_ms = pc.connect_timeout_s * 1000;
  po.reconnect_max_ms = pc.reconnect_max_ms;
  po.query_timeout_ms = pc.query_timeout_s * 1000;
  // Two sessions: the writer's commits on one, claims, lookups, LISTEN and
  // upkeep on the other, so a claim never queues behind a batch in flight
  // and the server works on both at once.
  po.label = "postgres";
  pg_ = std::make_unique<PgConn>(env_.loop, po);
  store_ = std::make_unique<JobStore>(*pg_, env_.node_id);
  po.label = "postgres writer";
  pgw_ = std::make_unique<PgConn>(env_.loop, po);
  wstore_ = std::make_unique<JobStore>(*pgw_, env_.node_id);
  for (const PgConn* conn : {pg_.get(), pgw_.get()}) {
    if (!conn->init_status().ok()) return conn->init_status();
  }
  BatchWriterOptions wo;
  wo.capacity = static_cast<size_t>(cfg.queues.write);
  wo.batch_rows = cfg.writer.batch_rows;
  wo.batch_ms = cfg.writer.batch_ms;
  wo.max_batch_rows = cfg.writer.max_batch_rows;
  wo.lease_s = pc.lease_s;
  wo.submit_reserve = static_cast<size_t>(env_.pool_size);
  if (wo.submit_reserve >= wo.capacity) wo.submit_reserve = wo.capacity - 1;
  BatchWriter::Hooks wh;
  wh.on_space = [this] {
    FlushPending();
    env_.dispatcher->Kick();
  };
  wh.on_leases_lost = [this](std::vector<uint64_t> ids) { OnLeasesLost(std::move(ids)); };
  wh.on_leases_renewed = [this](const std::vector<LeaseRef>& renewed, uint64_t sent_ns) {
    OnLeasesRenewed(renewed, sent_ns);
  };
  writer_ = std::make_unique<BatchWriter>(env_.loop, *pgw_, *wstore_, wo, std::move(wh));
  if (!writer_->init_status().ok()) return writer_->init_status();
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
    Status st = InitTimer(env_.loop, *timer, this);
    if (!st.ok()) return st;
    uv_timer_start(
        timer->get(), [](uv_timer_t* t) { static_cast<PgStore*>(t->data)->OnPeriodic(t); },
        every_ms, every_ms);
  }
  Status st = InitTimer(env_.loop, ready_timer_, this);
  if (!st.ok()) return st;
  if (pc.ready_timeout_s > 0) {
    uv_timer_start(
        ready_timer_.get(),
        [](uv_timer_t* t) { static_cast<PgStore*>(t->data)->MaybeReady(/*db_answered=*/false); },
        static_cast<uint64_t>(pc.ready_timeout_s) * 1000, 0);
  }
  LOG_INFO("connecting to PostgreSQL %s", pg_->Describe().c_str());
  pg_->Start();
  pgw_->Start();
  if (pc.ready_timeout_s == 0) MaybeReady(/*db_answered=*/false);
  return Status::Ok();
}

void PgStore::OnPeriodic(uv_timer_t* timer) {
  if (timer == refill_timer_.get()) Refill(/*poll=*/true);
  if (timer == lease_timer_.get()) RenewLeases();
  if (timer == recover_timer_.get()) Recover(false);
  if (timer == retention_timer_.get()) RunRetention();
  if (timer == backlog_timer_.get()) RefreshBacklog();
}

void PgStore::OnWriterDbState(bool up, const Status& why) {
  if (phase() == Phase::kStopping) return;
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
  if (writer_draining_ && phase() == Phase::kDraining) Drained();  // maybe nothing to wait for
}

void PgStore::OnDbState(bool up, const Status& why) {
  if (phase() == Phase::kStopping) return;  // Close() closed it
  if (!up) {
    LOG_WARN(
        "PostgreSQL %s is unreachable: %s; submits answer unavailable, results wait in the "
        "write ring, and digestd reconnects by itself",
        pg_->Describe().c_str(), why.message().c_str());
    book_.SessionLost();  // claims in flight answered Unavailable; they may have committed
    env_.notifier->Status("db down: " + env_.status_line());
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
  book_.NeedRelease();
  Recover(false);
  Refill(/*poll=*/true);
  RefreshBacklog();
}

void PgStore::OnDbReady() {
  if (migrated_ || migrating_ || !pg_->up()) return;
  if (migrate_retry_at_ > uv_now(env_.loop)) return;
  migrating_ = true;
  Status st = Migrate(*pg_, [this](Status result) {
    migrating_ = false;
    if (!result.ok()) {
      const bool newer = store_error_ == result.message();
      store_error_ = result.message();
      migrate_retry_at_ = uv_now(env_.loop) + kMigrateRetryMs;
      if (result.message().find("newer than this digestd knows") != std::string::npos) {
        // Retrying cannot help and CREATE is not the problem: say it once.
        if (!newer) {
          LOG_ERROR("cannot use schema digestd on %s: %s", pg_->Describe().c_str(),
                    result.message().c_str());
        }
        return;
      }
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

void PgStore::MaybeReady(bool db_answered) {
  if (ready_sent_ || phase() != Phase::kRunning) return;
  ready_sent_ = true;
  ready_timer_.Close();
  env_.ready();
  if (!db_answered) {
    std::string err = pg_->state().last_error;
    LOG_WARN(
        "ready without PostgreSQL after [postgres] ready_timeout_s = %d s (%s); submits "
        "answer unavailable until it answers",
        config().postgres.ready_timeout_s, err.empty() ? "no answer yet" : err.c_str());
    env_.notifier->Status("waiting for PostgreSQL: " +
                          (err.empty() ? std::string("no answer") : err));
  }
}

// ---------------------------------------------------------------- shutdown

void PgStore::ReleaseQueued() {
  // Claimed but not started: their leases go back to the queue at once, for
  // the next start or another node; the attempt is given back.
  auto queued = env_.dispatcher->TakeQueued();
  size_t released = 0;
  for (const auto& job : queued) {
    if (job->state != JobState::kQueued) continue;
    WriteRequeue(job, 0, /*refund=*/true, {});
    env_.jobs->MarkReleased(job);
    ForgetClaim(job);
    ++released;
  }
  LOG_NOTICE("released %zu claimed jobs that had not started; %d running jobs may finish", released,
             env_.dispatcher->in_flight());
  env_.dispatcher->PutPills();  // on_drained follows once nothing runs
}

void PgStore::BeginShutdown() {
  ReleaseQueued();
}

uint64_t PgStore::ForceShutdown(const char* why) {
  Dispatcher& dispatcher = *env_.dispatcher;
  if (writer_draining_) {
    LOG_WARN(
        "%s: %zu rows not yet written to PostgreSQL (%s); their jobs' leases expire and "
        "they run again",
        why, writer_->depth() + pending_rows_.size(),
        pgw_->up() ? "the database is slow" : "the database is unreachable");
    env_.drained();
    return 0;
  }
  if (forced_++ > 0) {
    LOG_WARN(
        "%s: %d jobs still running after they were aborted; stopping without them (their "
        "leases expire and they run again)",
        why, dispatcher.in_flight());
    env_.drained();
    return 0;
  }
  ReleaseQueued();  // whatever is still queued
  LOG_WARN("%s: aborting %d running jobs; they go back to the queue", why, dispatcher.in_flight());
  dispatcher.CancelInFlight();
  if (dispatcher.Drained()) Drained();
  return kFinalFlushMs;  // aborted jobs and the writer's last batch get a few seconds more
}

void PgStore::OnDrained() {
  Drained();
}

bool PgStore::ResultsWaiting() const {
  if (writer_->HoldsResults()) return true;
  for (const auto& r : pending_rows_) {
    if (std::holds_alternative<FinishRow>(r.row)) return true;
  }
  return false;
}

void PgStore::Drained() {
  if (phase() != Phase::kDraining) return;
  writer_draining_ = true;
  if (!pgw_->up() && !ResultsWaiting()) {
    // Only releases wait (claimed jobs handed back): lease recovery does
    // the same, so there is nothing worth the shutdown grace.
    LOG_NOTICE(
        "PostgreSQL is unreachable and no result waits to be written: stopping now; the "
        "%zu claimed jobs not handed back return to the queue when their leases expire (or "
        "at this node's next start)",
        writer_->depth() + pending_rows_.size());
    env_.drained();
    return;
  }
  if (!pending_rows_.empty()) return;  // FlushPending calls again
  writer_->Drain([this] {
    if (!pending_rows_.empty()) return;  // more came; FlushPending drains again
    LOG_INFO("every result and release is written to PostgreSQL");
    env_.drained();
  });
}

void PgStore::Close() {
  if (closed_) return;
  closed_ = true;
  for (auto* t : {&ready_timer_, &refill_timer_, &lease_timer_, &recover_timer_, &retention_timer_,
                  &backlog_timer_}) {
    t->Close();
  }
  RunAfterClaims();
  const Status closing =
      Status::Unavailable("digestd is shutting down; ask again once it has restarted");
  auto keys = key_waits_;
  for (const auto& [key, list] : keys) {
    for (const auto& w : list) {
      w->reply.Send(ErrorLine(w->id, closing));
      EndDbWait(w);
    }
  }
  auto groups = group_waits_;
  for (const auto& w : groups) {
    w->reply.Send(ErrorLine(w->id, closing));
    EndDbWait(w);
  }
  FailPendingSubmits(
      Status::Unavailable("digestd is shutting down; submit again once it has restarted"));
  if (writer_) writer_->Close();
  if (pgw_) pgw_->Close();
  if (pg_) pg_->Close();
}

void PgStore::ApplyConfig() {
  const auto& pc = config().postgres;
  writer_->SetBatchLimits(config().writer.batch_rows, config().writer.batch_ms,
                          config().writer.max_batch_rows);
  // The periodic store tasks take their new intervals from their next run.
  uv_timer_set_repeat(recover_timer_.get(), static_cast<uint64_t>(pc.recover_interval_s) * 1000);
  uv_timer_set_repeat(retention_timer_.get(),
                      static_cast<uint64_t>(pc.retention_interval_s) * 1000);
  uv_timer_set_repeat(backlog_timer_.get(), static_cast<uint64_t>(pc.backlog_interval_ms));
}

// ---------------------------------------------------------------- status

std::string PgStore::StatusSuffix() const {
  std::string line =
      pg_->up() && pgw_->up() ? (migrated_ ? ", db up" : ", db migrating") : ", db down";
  line += ", write ring " + std::to_string(writer_->depth()) + "/" +
          std::to_string(writer_->capacity());
  return line;
}

nlohmann::json PgStore::StatusJson() const {
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
      {"row_wait", {{"p50_ms", ws.row_wait.p50_ms}, {"p99_ms", ws.row_wait.p99_ms}}},
      {"commit_seconds", ws.commit_seconds.ToJson()}};
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
  db["leases"] = {{"held", book_.held()},
                  {"lost", leases_lost_},
                  {"expired_unstarted", expired_unstarted_},
                  {"results_ignored", lease_ignored_},
                  {"recovered", recovered_},
                  {"failed_after_crashes", crash_failed_}};
  auto pace = [&](Lane l) {
    const ClaimPace& p = pace_[static_cast<int>(l)];
    ClaimSize size = p.Size(config().postgres.claim_batch, config().postgres.refill_low_water);
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
