// The control ops: what each request does to the daemon's state.
#include <unistd.h>

#include <algorithm>

#include "app/daemon.h"
#include "obs/log.h"

namespace digestd {

namespace {

constexpr size_t kMaxKeyBytes = 512;
constexpr int64_t kMaxWaitMs = 300000;

double Millis(uint64_t nanos) {
  return static_cast<double>(nanos) / 1e6;
}

nlohmann::json PercentilesJson(const Percentiles& p) {
  return {{"count", p.count},
          {"p50_ms", p.p50_ms},
          {"p95_ms", p.p95_ms},
          {"p99_ms", p.p99_ms},
          {"max_ms", p.max_ms}};
}

}  // namespace

struct Daemon::PendingWait {
  UvHandle<uv_timer_t> timer;
  uint64_t token = 0;
  std::function<void()> answer;  // sends the current state, once
};

void Daemon::Handle(Request req, const PeerCred& peer, ControlServer::Reply reply) {
  if (IsMutatingOp(req.op) && !Allowed(peer)) {
    reply.Send(
        ErrorLine(req.id, Status::Forbidden("uid " + std::to_string(peer.uid) + " (gid " +
                                            std::to_string(peer.gid) + ") may not use \"" + req.op +
                                            "\"; add it to [control] allow_uids or allow_gids")));
    return;
  }
  if (req.op == "ping") {
    reply.Send(OkLine(req.id, {{"pong", true}}));
  } else if (req.op == "status") {
    OpStatus(req, reply);
  } else if (req.op == "submit") {
    OpSubmit(req, reply);
  } else if (req.op == "result") {
    OpResult(req, reply);
  } else if (req.op == "cancel") {
    OpCancel(req, reply);
  } else if (req.op == "workers") {
    OpWorkers(req, reply);
  } else if (req.op == "reload") {
    OpReload(req, reply);
  } else if (req.op == "drain") {
    OpDrain(req, reply);
  } else {
    reply.Send(ErrorLine(req.id, Status::UnknownOp("unknown op \"" + req.op + "\"")));
  }
}

bool Daemon::Allowed(const PeerCred& peer) const {
  const auto& uids = config_.control.allow_uids;
  const auto& gids = config_.control.allow_gids;
  if (uids.empty() && gids.empty()) return true;  // the socket's mode decides
  if (!peer.known) return false;
  if (peer.uid == 0 || peer.uid == geteuid()) return true;
  return std::find(uids.begin(), uids.end(), static_cast<int64_t>(peer.uid)) != uids.end() ||
         std::find(gids.begin(), gids.end(), static_cast<int64_t>(peer.gid)) != gids.end();
}

void Daemon::OpStatus(const Request& req, const ControlServer::Reply& reply) {
  reply.Send(OkLine(req.id, StatusJson()));
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
        {"waiting_retry", delayed_->size()},
        {"known", jobs_->size()}}},
      {"latency", PercentilesJson(jobs_->latency().Compute())},
      {"backend", backend_->ToJson()},
      {"run_time", PercentilesJson(jobs_->run_time().Compute())},
      {"db", StoreStatusJson()},
      {"control",
       {{"clients", control_->clients()},
        {"accepted", control_->accepted()},
        {"requests", control_->requests()},
        {"rejected", control_->rejected()}}},
  };
}

std::string Daemon::StatusLine() const {
  const auto& c = jobs_->counters();
  char buf[256];
  std::snprintf(buf, sizeof(buf),
                "busy %d/%d, interactive %zu/%zu, background %zu/%zu, done %llu, failed %llu",
                dispatcher_->in_flight(), dispatcher_->limits().limit,
                dispatcher_->depth(Lane::kInteractive), dispatcher_->capacity(Lane::kInteractive),
                dispatcher_->depth(Lane::kBackground), dispatcher_->capacity(Lane::kBackground),
                static_cast<unsigned long long>(c.done), static_cast<unsigned long long>(c.failed));
  std::string line = buf;
  if (durable()) {
    line += pg_->up() && pgw_->up() ? (migrated_ ? ", db up" : ", db migrating") : ", db down";
    line += ", write ring " + std::to_string(writer_->depth()) + "/" +
            std::to_string(writer_->capacity());
  }
  return line;
}

Status Daemon::CheckJobSpec(const nlohmann::json& spec, const std::string& where) const {
  if (!spec.is_object()) return Status::BadRequest(where + " must be an object");
  static const char* kFields[] = {"op", "id", "kind", "key", "group", "lane", "input"};
  for (const auto& [k, v] : spec.items()) {
    if (std::find_if(std::begin(kFields), std::end(kFields),
                     [&](const char* f) { return k == f; }) == std::end(kFields)) {
      return Status::BadRequest(where + "." + k +
                                " is not a submit field; use kind, key, group, lane, input");
    }
  }
  std::string kind, key, group, lane = "background";
  auto prefix = [&](Status st) {
    return st.ok() ? st : Status::BadRequest(where + ": " + st.message());
  };
  Status st = prefix(GetString(spec, "kind", &kind));
  if (!st.ok()) return st;
  if (kind.empty()) {
    return Status::BadRequest(
        where + ": \"kind\" is required; known kinds: " + JobKindRegistry::Global().Names());
  }
  const JobKind* k = JobKindRegistry::Global().Find(kind);
  if (k == nullptr) {
    return Status::BadRequest(where + ": unknown kind \"" + kind +
                              "\"; known kinds: " + JobKindRegistry::Global().Names());
  }
  if (!(st = prefix(GetString(spec, "key", &key, kMaxKeyBytes))).ok()) return st;
  if (!(st = prefix(GetString(spec, "group", &group, kMaxKeyBytes))).ok()) return st;
  if (!(st = prefix(GetString(spec, "lane", &lane, 32))).ok()) return st;
  if (!ParseLane(lane)) {
    return Status::BadRequest(where + ": \"lane\" must be \"interactive\" or \"background\"");
  }
  static const nlohmann::json kEmpty = nlohmann::json::object();
  auto input = spec.find("input");
  st = k->Validate(input == spec.end() ? kEmpty : *input, config_);
  if (!st.ok()) return Status::BadRequest(where + ": " + st.message());
  return Status::Ok();
}

Result<nlohmann::json> Daemon::SubmitOne(const nlohmann::json& spec, const std::string& where) {
  Status st = CheckJobSpec(spec, where);
  if (!st.ok()) return st;
  std::string key = spec.value("key", std::string());
  if (key.empty()) key = jobs_->NewKey(node_id_);
  if (JobPtr existing = jobs_->Find(key)) {
    jobs_->NoteDuplicate();
    return nlohmann::json{
        {"key", key}, {"status", JobStateName(existing->state)}, {"existing", true}};
  }
  Lane lane = *ParseLane(spec.value("lane", std::string("background")));
  auto input = spec.find("input");
  JobPtr job = jobs_->Create(key, spec.value("group", std::string()), spec.value("kind", ""), lane,
                             input == spec.end() ? nlohmann::json::object() : *input);
  st = dispatcher_->Enqueue(job);
  if (!st.ok()) {
    jobs_->Forget(job);
    return st;
  }
  return nlohmann::json{{"key", key}, {"status", JobStateName(job->state)}, {"existing", false}};
}

Status Daemon::CheckSubmit(const Request& req, std::vector<const nlohmann::json*>* specs,
                           bool* single) const {
  auto jobs = req.body.find("jobs");
  if (jobs == req.body.end()) {
    *single = true;
    Status st = CheckJobSpec(req.body, "submit");
    if (st.ok()) specs->push_back(&req.body);
    return st;
  }
  *single = false;
  if (!jobs->is_array() || jobs->empty()) {
    return Status::BadRequest("\"jobs\" must be a non-empty array of job objects");
  }
  if (jobs->size() > static_cast<size_t>(config_.jobs.max_batch)) {
    return Status::TooLarge("a batch of " + std::to_string(jobs->size()) +
                            " jobs is above [jobs] max_batch = " +
                            std::to_string(config_.jobs.max_batch) + "; split it");
  }
  // The whole batch is checked first, so a bad job rejects it before any is queued.
  for (size_t i = 0; i < jobs->size(); ++i) {
    Status st = CheckJobSpec((*jobs)[i], "jobs[" + std::to_string(i) + "]");
    if (!st.ok()) return st;
    specs->push_back(&(*jobs)[i]);
  }
  return Status::Ok();
}

void Daemon::OpSubmit(const Request& req, const ControlServer::Reply& reply) {
  if (phase_ != Phase::kRunning) {
    reply.Send(
        ErrorLine(req.id, Status::Unavailable("digestd is shutting down and accepts no new jobs; "
                                              "submit again once it has restarted")));
    return;
  }
  if (durable()) {
    DurableSubmit(req, reply);
    return;
  }
  std::vector<const nlohmann::json*> specs;
  bool single = false;
  Status checked = CheckSubmit(req, &specs, &single);
  if (!checked.ok()) {
    reply.Send(ErrorLine(req.id, checked));
    return;
  }
  if (single) {
    auto one = SubmitOne(req.body, "submit");
    reply.Send(one.ok() ? OkLine(req.id, std::move(one).value()) : ErrorLine(req.id, one.status()));
    return;
  }
  auto jobs = req.body.find("jobs");
  nlohmann::json out = nlohmann::json::array();
  size_t accepted = 0;
  for (size_t i = 0; i < jobs->size(); ++i) {
    auto one = SubmitOne((*jobs)[i], "jobs[" + std::to_string(i) + "]");
    if (one.ok()) {
      ++accepted;
      out.push_back(std::move(one).value());
    } else {
      out.push_back({{"key", (*jobs)[i].value("key", "")},
                     {"error",
                      {{"code", std::string(one.status().CodeName())},
                       {"message", one.status().message()}}}});
    }
  }
  reply.Send(OkLine(req.id, {{"jobs", std::move(out)}, {"accepted", accepted}}));
}

nlohmann::json Daemon::JobJson(const JobRecord& job) const {
  nlohmann::json j = {{"key", job.key},
                      {"kind", job.kind},
                      {"lane", LaneName(job.lane)},
                      {"status", JobStateName(job.state)},
                      {"attempts", job.attempts},
                      {"busy_retries", job.busy_retries},
                      {"submitted_at_ms", job.submitted_unix_ms}};
  if (!job.group.empty()) j["group"] = job.group;
  uint64_t now = uv_hrtime();
  uint64_t started = job.started_at ? job.started_at : (job.finished_at ? job.finished_at : now);
  j["queued_ms"] = Millis(started - job.submitted_at);
  if (job.started_at)
    j["run_ms"] = Millis((job.finished_at ? job.finished_at : now) - job.started_at);
  if (job.state == JobState::kDone) j["result"] = job.result;
  if (!job.error.empty()) j["error"] = job.error;
  return j;
}

const char* Daemon::GroupStatusName(size_t total, size_t queued, size_t done, size_t bad,
                                    size_t terminal) {
  return queued == total    ? "pending"
         : terminal < total ? "in_progress"
         : done == total    ? "completed"
         : bad == total     ? "failed"
                            : "partial";
}

nlohmann::json Daemon::GroupJson(const std::string& group) const {
  const auto& parts = jobs_->FindGroup(group);
  size_t queued = 0, done = 0, bad = 0, terminal = 0;
  nlohmann::json list = nlohmann::json::array();
  for (const auto& p : parts) {
    list.push_back(JobJson(*p));
    if (p->state == JobState::kQueued) ++queued;
    if (p->state == JobState::kDone) ++done;
    if (p->state == JobState::kFailed || p->state == JobState::kCancelled) ++bad;
    if (IsTerminal(p->state)) ++terminal;
  }
  return {{"group", group},
          {"status", GroupStatusName(parts.size(), queued, done, bad, terminal)},
          {"total", parts.size()},
          {"ready", done},
          {"parts", std::move(list)}};
}

void Daemon::OpResult(const Request& req, const ControlServer::Reply& reply) {
  std::string key, group;
  int64_t wait_ms = 0;
  Status st = GetString(req.body, "key", &key, kMaxKeyBytes);
  if (st.ok()) st = GetString(req.body, "group", &group, kMaxKeyBytes);
  if (st.ok()) st = GetInt(req.body, "wait_ms", &wait_ms, 0, kMaxWaitMs);
  if (st.ok() && key.empty() == group.empty()) {
    st = Status::BadRequest("result needs exactly one of \"key\" or \"group\"");
  }
  if (!st.ok()) {
    reply.Send(ErrorLine(req.id, st));
    return;
  }
  if (durable()) {
    DurableResult(req, reply, std::move(key), std::move(group), wait_ms);
    return;
  }
  bool is_group = !group.empty();
  auto answer = [this, id = req.id, key, group, is_group, reply]() {
    if (is_group) {
      if (jobs_->FindGroup(group).empty()) {
        reply.Send(ErrorLine(id, Status::NotFound("no group \"" + group + "\"")));
      } else {
        reply.Send(OkLine(id, GroupJson(group)));
      }
      return;
    }
    JobPtr job = jobs_->Find(key);
    if (!job) {
      reply.Send(
          ErrorLine(id, Status::NotFound("no job with key \"" + key +
                                         "\": never submitted, or finished and evicted past [jobs] "
                                         "retain_finished")));
    } else {
      reply.Send(OkLine(id, JobJson(*job)));
    }
  };
  bool ready;
  if (is_group) {
    const auto& parts = jobs_->FindGroup(group);
    ready = parts.empty() || std::all_of(parts.begin(), parts.end(),
                                         [](const JobPtr& j) { return IsTerminal(j->state); });
  } else {
    JobPtr job = jobs_->Find(key);
    ready = !job || IsTerminal(job->state);
  }
  if (ready || wait_ms == 0 || phase_ == Phase::kStopping) {
    answer();
    return;
  }
  auto wait = std::make_shared<PendingWait>();
  std::weak_ptr<PendingWait> weak = wait;
  wait->answer = [this, weak, answer]() {
    auto w = weak.lock();
    if (!w) return;
    jobs_->RemoveWaiter(w->token);
    w->timer.Close();
    waits_.erase(w);  // may free `w`'s owner entry; `w` keeps it alive here
    answer();
  };
  auto fire = [weak]() {
    if (auto w = weak.lock()) w->answer();
  };
  wait->token = is_group ? jobs_->WaitGroup(group, fire) : jobs_->WaitJob(key, fire);
  if (uv_timer_init(&loop_, wait->timer.get()) != 0) {
    jobs_->RemoveWaiter(wait->token);
    answer();
    return;
  }
  wait->timer.set_initialized();
  wait->timer.get()->data = wait.get();
  uv_timer_start(
      wait->timer.get(),
      [](uv_timer_t* t) {
        auto* w = static_cast<PendingWait*>(t->data);
        auto keep = w->answer;  // answer() releases the wait
        keep();
      },
      static_cast<uint64_t>(wait_ms), 0);
  waits_.insert(std::move(wait));
}

void Daemon::AnswerWaits() {
  auto all = waits_;
  for (const auto& w : all) w->answer();
  waits_.clear();
}

void Daemon::OpCancel(const Request& req, const ControlServer::Reply& reply) {
  std::string key;
  Status st = GetString(req.body, "key", &key, kMaxKeyBytes);
  if (st.ok() && key.empty()) st = Status::BadRequest("cancel needs \"key\"");
  if (!st.ok()) {
    reply.Send(ErrorLine(req.id, st));
    return;
  }
  if (durable()) {
    DurableCancel(req, reply, key);
    return;
  }
  JobPtr job = jobs_->Find(key);
  if (!job) {
    reply.Send(ErrorLine(req.id, Status::NotFound("no job with key \"" + key + "\"")));
    return;
  }
  bool cancelled = false;
  if (job->state == JobState::kQueued) {
    jobs_->MarkCancelled(job, "cancelled by request before it ran");
    cancelled = true;
  } else if (job->state == JobState::kRunning) {
    job->cancel->store(true, std::memory_order_relaxed);
    cancelled = true;
  }
  reply.Send(OkLine(
      req.id, {{"key", key}, {"status", JobStateName(job->state)}, {"cancelled", cancelled}}));
}

void Daemon::OpWorkers(const Request& req, const ControlServer::Reply& reply) {
  const auto& cur = dispatcher_->limits();
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
  nlohmann::json changes = nlohmann::json::object();
  Status st = Reload(&changes);
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
