// The control requests: checking each one and routing it to the store or the
// daemon's lifecycle, and the status the daemon reports.
#include <unistd.h>

#include "app/daemon.h"
#include "app/submit_spec.h"
#include "control/peer_access.h"
#include "metrics/daemon_metrics.h"
#include "obs/log.h"

namespace digestd {

namespace {

nlohmann::json PercentilesJson(const Percentiles& p) {
  return {{"count", p.count},
          {"p50_ms", p.p50_ms},
          {"p95_ms", p.p95_ms},
          {"p99_ms", p.p99_ms},
          {"max_ms", p.max_ms}};
}

// The backend's health, with "held": the jobs queued in the rings while the
// breaker (or a busy hold) keeps backend requests back; a lane's head holds
// the rest behind it, so they all wait for the backend.
nlohmann::json BackendJson(const BackendHealth& backend, const Dispatcher& dispatcher) {
  nlohmann::json b = backend.ToJson();
  b["held"] = backend.AllowRequest()
                  ? 0
                  : dispatcher.depth(Lane::kInteractive) + dispatcher.depth(Lane::kBackground);
  return b;
}

// "workers" without "min", "max" or "reserved" only reads the limits.
bool ChangesWorkers(const Request& req) {
  return req.body.contains("min") || req.body.contains("max") || req.body.contains("reserved");
}

}  // namespace

void Daemon::Handle(Request req, const PeerCred& peer, ControlServer::Reply reply) {
  bool mutating = IsMutatingOp(req.op) && (req.op != "workers" || ChangesWorkers(req));
  if (mutating && !Allowed(peer)) {
    reply.Send(
        ErrorLine(req.id, Status::Forbidden("uid " + std::to_string(peer.uid) + " (gid " +
                                            std::to_string(peer.gid) + ") may not use \"" + req.op +
                                            "\"; add it to [control] allow_uids or allow_gids")));
    return;
  }
  if (req.op == "hello") {
    reply.Send(OkLine(req.id, HelloJson()));
  } else if (req.op == "ping") {
    reply.Send(OkLine(req.id, {{"pong", true}}));
  } else if (req.op == "status") {
    reply.Send(OkLine(req.id, StatusJson()));
  } else if (req.op == "submit") {
    OpSubmit(req, reply);
  } else if (req.op == "result") {
    OpResult(req, reply);
  } else if (req.op == "cancel") {
    OpCancel(req, reply);
  } else if (req.op == "jobs") {
    OpJobs(req, reply);
  } else if (req.op == "retry") {
    OpRetry(req, reply);
  } else if (req.op == "delete") {
    OpDelete(req, reply);
  } else if (req.op == "workers") {
    OpWorkers(req, reply);
  } else if (req.op == "reload") {
    OpReload(req, reply);
  } else if (req.op == "drain") {
    OpDrain(req, reply);
  } else if (req.op == "subscribe") {
    OpSubscribe(req, reply);
  } else {
    reply.Send(ErrorLine(req.id, Status::UnknownOp("unknown op \"" + req.op + "\"")));
  }
}

bool Daemon::Allowed(const PeerCred& peer) const {
  return PeerMayChangeState(peer, config_.control.allow_uids, config_.control.allow_gids,
                            geteuid());
}

void Daemon::OpSubscribe(const Request& req, const ControlServer::Reply& reply) {
  Result<EventFilter> filter = EventFilter::FromRequest(req.body);
  if (!filter.ok()) {
    reply.Send(ErrorLine(req.id, filter.status()));
    return;
  }
  ControlServer::Stream stream = reply.SendAndStream(
      OkLine(req.id, {{"subscribed", true}, {"max_unread_bytes", EventHub::kMaxUnsentBytes}}),
      EventHub::kMaxUnsentBytes);
  if (stream.open()) events_.Add(std::move(stream), std::move(*filter));
}

nlohmann::json Daemon::HelloJson() const {
  nlohmann::json ops = nlohmann::json::array();
  for (std::string_view op : KnownOps()) ops.push_back(op);
  return {{"protocol", kProtocolVersion},
          {"version", DIGESTD_VERSION},
          {"node_id", node_id_},
          {"store", store_->StatusJson().value("store", "")},
          {"ops", std::move(ops)},
          {"kinds", JobKindRegistry::Global().List()},
          {"features",
           {"groups", "result_wait", "sync_submit", "promote_on_wait", "preemption",
            "learned_capacity", "events", "jobs_list", "retry", "delete", "cancel_group",
            "submit_conflict", "ttl", "after"}}};
}

nlohmann::json Daemon::StatusJson() const {
  const auto& c = jobs_->counters();
  const auto& w = dispatcher_->limits();
  const char* state = phase_ == Phase::kRunning    ? "running"
                      : phase_ == Phase::kDraining ? "draining"
                                                   : "stopping";
  auto lane = [&](Lane l) {
    return nlohmann::json{{"depth", dispatcher_->depth(l)},
                          {"capacity", dispatcher_->capacity(l)},
                          {"running", dispatcher_->in_flight(l)}};
  };
  return {
      {"version", DIGESTD_VERSION},
      {"pid", static_cast<int64_t>(getpid())},
      {"node_id", node_id_},
      {"state", state},
      {"uptime_s", static_cast<double>(uv_hrtime() - started_at_) / 1e9},
      {"config", config_path_.empty() ? "(built-in defaults)" : config_path_},
      {"reloads", reloads_},
      {"workers",
       {{"limit", w.limit},
        {"min", w.min},
        {"max", w.max},
        {"busy", dispatcher_->in_flight()},
        {"reserved", w.interactive_reserved},
        {"pool", pool_size_}}},
      {"queues",
       {{"interactive", lane(Lane::kInteractive)}, {"background", lane(Lane::kBackground)}}},
      {"jobs",
       {{"submitted", c.submitted},
        {"duplicates", c.duplicates},
        {"running", c.running},
        {"done", c.done},
        {"failed", c.failed},
        {"cancelled", c.cancelled},
        {"released", c.released},
        {"retried", c.retried},
        {"requeued", c.requeued},
        {"preempted", dispatcher_->preemptions()},
        {"promoted", dispatcher_->promoted() + store_->promoted()},
        {"waiting_retry", store_->waiting_retry()},
        {"known", jobs_->size()}}},
      {"latency", PercentilesJson(jobs_->latency().Compute())},
      {"backend", BackendJson(*backend_, *dispatcher_)},
      {"models", dispatcher_->ModelsJson()},
      {"run_time", PercentilesJson(jobs_->run_time().Compute())},
      {"db", store_->StatusJson()},
      {"events", events_.StatusJson()},
      {"precompute", precompute_.ToJson()},
      {"control",
       {{"clients", control_->clients()},
        {"accepted", control_->accepted()},
        {"requests", control_->requests()},
        {"rejected", control_->rejected()}}},
      {"metrics",
       {{"listen", metrics_ ? metrics_->bound() : std::string()},
        {"scrapes", metrics_ ? metrics_->scrapes() : 0}}},
  };
}

std::string Daemon::MetricsText() const {
  nlohmann::json status = StatusJson();
  MetricsSources sources;
  sources.status = &status;
  sources.jobs = jobs_.get();
  sources.backend_latency = &backend_->latency_histogram();
  return RenderDaemonMetrics(sources);
}

std::string Daemon::StatusLine() const {
  const auto& c = jobs_->counters();
  std::string prefix;
  nlohmann::json b = backend_->ToJson();
  nlohmann::json breaker = b.value("breaker", nlohmann::json::object());
  std::string state = breaker.value("state", "closed");
  if (state != "closed") {
    std::string reason = breaker.value("reason", "");
    if (reason.size() > 120) reason = reason.substr(0, 117) + "...";
    prefix = "backend down (breaker " + state + (reason.empty() ? "" : ": " + reason) + "), ";
  }
  char buf[256];
  std::snprintf(buf, sizeof(buf),
                "busy %d/%d, interactive %zu/%zu, background %zu/%zu, done %llu, failed %llu",
                dispatcher_->in_flight(), dispatcher_->limits().limit,
                dispatcher_->depth(Lane::kInteractive), dispatcher_->capacity(Lane::kInteractive),
                dispatcher_->depth(Lane::kBackground), dispatcher_->capacity(Lane::kBackground),
                static_cast<unsigned long long>(c.done), static_cast<unsigned long long>(c.failed));
  return prefix + buf + store_->StatusSuffix();
}

void Daemon::OpSubmit(const Request& req, const ControlServer::Reply& reply) {
  if (phase_ != Phase::kRunning) {
    reply.Send(
        ErrorLine(req.id, Status::Unavailable("digestd is shutting down and accepts no new jobs; "
                                              "submit again once it has restarted")));
    return;
  }
  // Sync mode: a submit with wait_ms answers with the finished job when it
  // is done within the time, else with the job as it stands then. Someone
  // waits for it, so it is interactive.
  if (req.body.is_object() && req.body.contains("wait_ms")) {
    int64_t wait_ms = 0;
    Status st = GetInt(req.body, "wait_ms", &wait_ms, 0, kMaxWaitMs);
    if (st.ok() && req.body.contains("jobs")) {
      st = Status::BadRequest(
          "wait_ms waits for a single job; submit a batch without it and wait with "
          "{\"op\":\"result\",\"group\":…,\"wait_ms\":…}");
    }
    if (!st.ok()) {
      reply.Send(ErrorLine(req.id, st));
      return;
    }
    Request sync = req;
    sync.body.erase("wait_ms");
    sync.body["lane"] = "interactive";
    if (!sync.body.contains("key") || sync.body["key"].is_null())
      sync.body["key"] = jobs_->NewKey(node_id_);
    auto owned = std::make_shared<Request>(std::move(sync));
    std::vector<const nlohmann::json*> specs;
    bool single = false;
    Status checked = CheckSubmit(*owned, config_, &specs, &single);
    if (!checked.ok()) {
      reply.Send(ErrorLine(req.id, checked));
      return;
    }
    store_->Submit(*owned, std::move(specs), single, reply,
                   [this, owned, wait_ms, reply](nlohmann::json answer) {
                     ResultQuery q;
                     q.key = answer.value("key", owned->body["key"].get<std::string>());
                     q.wait_ms = wait_ms;
                     // An existing job the key named may be background work
                     // still queued: someone waits for it now.
                     if (JobPtr j = jobs_->Find(q.key)) dispatcher_->Promote(j);
                     if (answer.value("existing", false)) store_->PromoteQueued(q);
                     store_->GetResult(*owned, std::move(q), reply);
                   });
    return;
  }
  std::vector<const nlohmann::json*> specs;
  bool single = false;
  Status checked = CheckSubmit(req, config_, &specs, &single);
  if (!checked.ok()) {
    reply.Send(ErrorLine(req.id, checked));
    return;
  }
  store_->Submit(req, std::move(specs), single, reply);
}

void Daemon::OpResult(const Request& req, const ControlServer::Reply& reply) {
  ResultQuery q;
  Status st = GetString(req.body, "key", &q.key, kMaxKeyBytes);
  if (st.ok()) st = GetString(req.body, "group", &q.group, kMaxKeyBytes);
  if (st.ok()) st = GetInt(req.body, "wait_ms", &q.wait_ms, 0, kMaxWaitMs);
  if (st.ok() && q.key.empty() == q.group.empty()) {
    st = Status::BadRequest("result needs exactly one of \"key\" or \"group\"");
  }
  if (!st.ok()) {
    reply.Send(ErrorLine(req.id, st));
    return;
  }
  // Someone waits now: queued background work they wait for becomes
  // interactive, here and in the table.
  if (q.wait_ms > 0 && phase_ == Phase::kRunning) {
    std::vector<JobPtr> jobs;
    if (!q.key.empty()) {
      if (JobPtr j = jobs_->Find(q.key)) jobs.push_back(std::move(j));
    } else {
      jobs = jobs_->FindGroup(q.group);  // a copy: promoting may start (and end) jobs
    }
    for (const auto& j : jobs) dispatcher_->Promote(j);
    store_->PromoteQueued(q);
  }
  store_->GetResult(req, std::move(q), reply);
}

void Daemon::OpCancel(const Request& req, const ControlServer::Reply& reply) {
  Result<JobTarget> target = ParseJobTarget(req.body, "cancel");
  if (!target.ok()) {
    reply.Send(ErrorLine(req.id, target.status()));
    return;
  }
  if (!target->group.empty()) {
    store_->CancelGroup(req, target->group, reply);
  } else {
    store_->Cancel(req, target->key, reply);
  }
}

void Daemon::OpJobs(const Request& req, const ControlServer::Reply& reply) {
  Result<JobsQuery> query = ParseJobsQuery(req.body);
  if (!query.ok()) {
    reply.Send(ErrorLine(req.id, query.status()));
    return;
  }
  store_->ListJobs(req, std::move(query).value(), reply);
}

void Daemon::OpRetry(const Request& req, const ControlServer::Reply& reply) {
  if (phase_ != Phase::kRunning) {
    reply.Send(ErrorLine(
        req.id, Status::Unavailable("digestd is shutting down and queues nothing new; retry "
                                    "once it has restarted")));
    return;
  }
  Result<JobTarget> target = ParseJobTarget(req.body, "retry");
  std::string lane = "background";
  Status st = target.ok() ? GetString(req.body, "lane", &lane, 32) : target.status();
  std::optional<Lane> parsed = ParseLane(lane);
  if (st.ok() && !parsed) {
    st = Status::BadRequest("\"lane\" must be \"interactive\" or \"background\"");
  }
  if (!st.ok()) {
    reply.Send(ErrorLine(req.id, st));
    return;
  }
  store_->Retry(req, std::move(target).value(), *parsed, reply);
}

void Daemon::OpDelete(const Request& req, const ControlServer::Reply& reply) {
  Result<JobTarget> target = ParseJobTarget(req.body, "delete");
  if (!target.ok()) {
    reply.Send(ErrorLine(req.id, target.status()));
    return;
  }
  store_->Delete(req, std::move(target).value(), reply);
}

void Daemon::OpWorkers(const Request& req, const ControlServer::Reply& reply) {
  const auto& cur = dispatcher_->limits();
  if (!ChangesWorkers(req)) {
    reply.Send(OkLine(req.id, {{"limit", cur.limit},
                               {"min", cur.min},
                               {"max", cur.max},
                               {"reserved", cur.interactive_reserved}}));
    return;
  }
  int64_t min = cur.min, max = cur.max, reserved = cur.interactive_reserved;
  Status st = GetInt(req.body, "min", &min, 1, 1024);
  if (st.ok()) st = GetInt(req.body, "max", &max, 1, 1024);
  if (st.ok()) st = GetInt(req.body, "reserved", &reserved, 0, 1023);
  if (st.ok()) {
    st = dispatcher_->SetLimits(static_cast<int>(min), static_cast<int>(max),
                                static_cast<int>(reserved));
  }
  if (!st.ok()) {
    reply.Send(ErrorLine(req.id, st));
    return;
  }
  const auto& w = dispatcher_->limits();
  LOG_NOTICE("workers: limit %d, min %d, max %d, reserved %d (set over the control socket)",
             w.limit, w.min, w.max, w.interactive_reserved);
  reply.Send(OkLine(
      req.id,
      {{"limit", w.limit}, {"min", w.min}, {"max", w.max}, {"reserved", w.interactive_reserved}}));
}

void Daemon::OpReload(const Request& req, const ControlServer::Reply& reply) {
  // Logged as a SIGHUP reload is, so the journal tells the same story.
  LOG_NOTICE("reload: requested over the control socket, re-reading the config");
  nlohmann::json changes = nlohmann::json::object();
  Status st = Reload(&changes);
  if (!st.ok()) LOG_ERROR("reload failed, keeping the running config: %s", st.message().c_str());
  reply.Send(st.ok() ? OkLine(req.id, std::move(changes)) : ErrorLine(req.id, st));
}

void Daemon::OpDrain(const Request& req, const ControlServer::Reply& reply) {
  nlohmann::json out = {
      {"draining", true},
      {"queued", dispatcher_->depth(Lane::kInteractive) + dispatcher_->depth(Lane::kBackground)},
      {"running", dispatcher_->in_flight()}};
  reply.Send(OkLine(req.id, std::move(out)));
  if (phase_ == Phase::kRunning) BeginShutdown("drain requested");
}

}  // namespace digestd
