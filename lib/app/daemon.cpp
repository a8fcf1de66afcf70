#include "app/daemon.h"

#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>

#include "app/memory_store.h"
#include "app/outcome_policy.h"
#include "app/pg_store.h"
#include "backend/ollama_client.h"
#include "control/peer_access.h"
#include "obs/log.h"

namespace digestd {

namespace {

std::string HostName() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof(buf) - 1) != 0 || buf[0] == '\0') return "digestd";
  return buf;
}

// 1,000 clients at once need more than the usual 1,024 descriptors. Under
// systemd's SystemCallFilter this may be refused; LimitNOFILE= covers it.
void RaiseFileLimit() {
  struct rlimit rl {};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
      LOG_DEBUG("could not raise the open-file limit; set LimitNOFILE= instead");
    }
  }
}

}  // namespace

Daemon::Daemon(Config config, std::string config_path)
    : config_(std::move(config)), config_path_(std::move(config_path)) {}

Daemon::~Daemon() {
  if (loop_ready_) Teardown();
}

int Daemon::Run() {
  // The pool is sized once, before anything uses it: enough for every worker
  // slot plus headroom so libuv's own file and DNS work never starves.
  pool_size_ = config_.workers.max + kThreadPoolHeadroom;
  setenv("UV_THREADPOOL_SIZE", std::to_string(pool_size_).c_str(), 1);
  signal(SIGPIPE, SIG_IGN);
  RaiseFileLimit();

  Status st = Start();
  if (!st.ok()) {
    LOG_ERROR("cannot start: %s", st.message().c_str());
    Teardown();
    return 1;
  }
  uv_run(&loop_, UV_RUN_DEFAULT);
  Teardown();
  return exit_code_;
}

Status Daemon::Start() {
  int rc = uv_loop_init(&loop_);
  if (rc != 0) return Status::Internal(std::string("uv_loop_init: ") + uv_strerror(rc));
  loop_ready_ = true;
  started_at_ = uv_hrtime();
  node_id_ = config_.daemon.node_id.empty() ? HostName() : config_.daemon.node_id;
  SetLogNode(node_id_);
  if (auto level = ParseLogLevel(config_.log.level)) SetLogLevel(*level);

  // With PostgreSQL the table holds only this node's claimed jobs (results
  // are read from the database); the memory store sets its retention.
  jobs_ = std::make_unique<JobTable>(0);
  jobs_->SetObserver([this](std::string_view state, const JobRecord& job) {
    events_.Publish(state, EventJob::Of(job));
    // The table tells ends only when it keeps the jobs (the memory store);
    // the PostgreSQL store counts a group's parts in the table itself.
    if (IsTerminal(job.state) && events_.WantsGroup(job.group)) {
      GroupProgress p;
      for (const auto& part : jobs_->FindGroup(job.group)) p.Add(part->state);
      events_.PublishGroup(job.group, p);
    }
  });
  WorkerLimits limits{config_.workers.min, config_.workers.max,
                      config_.workers.interactive_reserved, config_.workers.max};
  Dispatcher::Hooks hooks;
  hooks.want_text = [this](const JobRecord& job) { return events_.WantsText(EventJob::Of(job)); };
  hooks.on_text = [this](const JobRecord& job, const std::string& text) {
    events_.PublishText(EventJob::Of(job), text);
  };
  hooks.on_start = [this](const JobPtr& job) {
    jobs_->MarkRunning(job);
    if (UsesBackend(*job, config_)) job->backend_epoch = backend_->OnStart();
    store_->OnJobStarted(job);
  };
  hooks.can_start = [this](const JobRecord& job) {
    if (!store_->MayStart(job)) return false;
    if (job.state != JobState::kQueued) return true;  // dropped by the store: skipped
    return !UsesBackend(job, config_) || backend_->AllowRequest();
  };
  hooks.on_finish = [this](const JobPtr& job, WorkOutcome outcome) {
    store_->OnJobFinished(job, std::move(outcome));
  };
  hooks.on_preempted = [this](const JobPtr& job) {
    if (UsesBackend(*job, config_)) {
      CallStatus aborted;
      aborted.cls = CallClass::kCancelled;
      backend_->OnOutcome(aborted, job->backend_epoch);
    }
    jobs_->MarkPreempted(job);
  };
  hooks.wake_workers = [] { OllamaClient::WakeAll(); };
  hooks.on_drained = [this] {
    if (phase_ == Phase::kDraining) store_->OnDrained();
  };
  dispatcher_ =
      std::make_unique<Dispatcher>(&loop_, static_cast<size_t>(config_.queues.interactive),
                                   static_cast<size_t>(config_.queues.background), limits,
                                   pool_size_, JobKindRegistry::Global(), std::move(hooks));
  dispatcher_->SetConfig(std::make_shared<const Config>(config_));
  backend_ =
      std::make_unique<BackendHealth>(&loop_, config_.backend, [this] { dispatcher_->Kick(); });

  ControlServer::Options copts{static_cast<size_t>(config_.control.max_line_bytes),
                               config_.control.max_clients, config_.control.idle_timeout_s,
                               config_.control.max_clients_per_uid,
                               config_.control.reserved_clients};
  control_ = std::make_unique<ControlServer>(
      &loop_, copts, [this](Request req, const PeerCred& peer, ControlServer::Reply reply) {
        Handle(std::move(req), peer, std::move(reply));
      });
  std::string why;
  int fd = TakeActivatedSocket(&why);
  if (!why.empty()) return Status::IoError(why);
  socket_activated_ = fd >= 0;
  Status st = fd >= 0 ? control_->ListenFd(fd)
                      : control_->ListenPath(config_.control.socket, config_.control.mode);
  if (!st.ok()) return st;
  if (!config_.metrics.listen.empty()) {
    ListenAddress address;
    if (!(st = ParseListenAddress(config_.metrics.listen, &address)).ok()) return st;
    metrics_ = std::make_unique<MetricsServer>(&loop_, [this] { return MetricsText(); });
    if (!(st = metrics_->Start(address)).ok()) return st;
    LOG_NOTICE("metrics: serving Prometheus metrics at http://%s/metrics",
               metrics_->bound().c_str());
  }
  if (!(st = StartSignalsAndTimers()).ok()) return st;

  notifier_ = std::make_unique<Notifier>(&loop_);
  watchdog_ms_ = notifier_->StartWatchdog();

  StoreEnv env;
  env.loop = &loop_;
  env.config = &config_;
  env.node_id = node_id_;
  env.pool_size = pool_size_;
  env.phase = &phase_;
  env.jobs = jobs_.get();
  env.events = &events_;
  env.precompute = &precompute_;
  env.dispatcher = dispatcher_.get();
  env.backend = backend_.get();
  env.notifier = notifier_.get();
  env.ready = [this] { OnReady(); };
  env.drained = [this] { FinishShutdown(); };
  env.status_line = [this] { return StatusLine(); };
  if (config_.jobs.store == "postgres") {
    store_ = std::make_unique<PgStore>(std::move(env));
  } else {
    store_ = std::make_unique<MemoryStore>(std::move(env));
  }
  return store_->Start();
}

Status Daemon::StartSignalsAndTimers() {
  auto signal_init = [&](UvHandle<uv_signal_t>& h, int signum) -> Status {
    int r = uv_signal_init(&loop_, h.get());
    if (r != 0) return Status::Internal(std::string("uv_signal_init: ") + uv_strerror(r));
    h.set_initialized();
    h.get()->data = this;
    r = uv_signal_start(
        h.get(),
        [](uv_signal_t* s, int signum) {
          auto* self = static_cast<Daemon*>(s->data);
          // uv_signal callbacks run on the loop, not in signal context: the
          // reload runs here; a shutdown only moves the daemon into draining.
          if (signum == SIGHUP) {
            LOG_NOTICE("reload: SIGHUP received, re-reading the config");
            nlohmann::json changes;
            Status rs = self->Reload(&changes);
            if (!rs.ok())
              LOG_ERROR("reload failed, keeping the running config: %s", rs.message().c_str());
          } else {
            self->BeginShutdown(signum == SIGTERM ? "SIGTERM" : "SIGINT");
          }
        },
        signum);
    if (r != 0) return Status::Internal(std::string("uv_signal_start: ") + uv_strerror(r));
    return Status::Ok();
  };
  Status st;
  if (!(st = signal_init(sigterm_, SIGTERM)).ok()) return st;
  if (!(st = signal_init(sigint_, SIGINT)).ok()) return st;
  if (!(st = signal_init(sighup_, SIGHUP)).ok()) return st;

  if (!(st = InitTimer(&loop_, status_timer_, this)).ok()) return st;
  uv_timer_start(
      status_timer_.get(),
      [](uv_timer_t* t) {
        auto* self = static_cast<Daemon*>(t->data);
        self->notifier_->Status(self->StatusLine());
      },
      config_.daemon.status_interval_ms, config_.daemon.status_interval_ms);
  uv_unref(status_timer_.base());
  if (!(st = InitTimer(&loop_, grace_timer_, this)).ok()) return st;
  return InitTimer(&loop_, final_timer_, this);
}

void Daemon::OnReady() {
  notifier_->Ready();
  notifier_->Status(StatusLine());
  LOG_NOTICE("digestd %s ready: node %s, socket %s, workers %d..%d (pool %d), watchdog %s, %s",
             DIGESTD_VERSION, node_id_.c_str(),
             socket_activated_ ? "from systemd" : config_.control.socket.c_str(),
             config_.workers.min, config_.workers.max, pool_size_,
             watchdog_ms_ ? (std::to_string(watchdog_ms_) + " ms").c_str() : "off",
             store_->Describe().c_str());
}

void Daemon::Teardown() {
  if (!loop_ready_) return;
  if (control_) control_->CloseAll(/*graceful=*/false);
  if (metrics_) metrics_->Close();
  if (notifier_) notifier_->Close();
  if (backend_) backend_->Close();
  sigterm_.Close();
  sigint_.Close();
  sighup_.Close();
  status_timer_.Close();
  grace_timer_.Close();
  final_timer_.Close();
  if (dispatcher_ && dispatcher_->in_flight() > 0) {
    dispatcher_->CancelInFlight();
  }
  // Let returning work hand its outcome to the store before it closes.
  while (dispatcher_ && dispatcher_->in_flight() > 0 && uv_run(&loop_, UV_RUN_ONCE) != 0) {
  }
  if (store_) store_->Close();
  // Let close callbacks and any returning work run.
  while (uv_run(&loop_, UV_RUN_DEFAULT) != 0) {
  }
  store_.reset();
  metrics_.reset();
  control_.reset();
  dispatcher_.reset();
  int rc = uv_loop_close(&loop_);
  if (rc != 0) {
    LOG_ERROR("the loop still had open handles at exit (%s)", uv_strerror(rc));
    uv_walk(
        &loop_,
        [](uv_handle_t* h, void*) { LOG_ERROR("open handle: %s", uv_handle_type_name(h->type)); },
        nullptr);
    if (exit_code_ == 0) exit_code_ = 1;
  }
  loop_ready_ = false;
}

Status Daemon::Reload(nlohmann::json* changes) {
  notifier_->Reloading();
  ++reloads_;
  Config fresh;
  if (!config_path_.empty()) {
    auto loaded = LoadConfigFile(config_path_);
    if (!loaded.ok()) {
      notifier_->Ready();
      return loaded.status();
    }
    fresh = std::move(loaded).value();
  }
  if (fresh.workers.max > pool_size_) {
    notifier_->Ready();
    return Status::InvalidConfig(config_path_ +
                                 ": [workers] max = " + std::to_string(fresh.workers.max) +
                                 " is above the thread pool size " + std::to_string(pool_size_) +
                                 " fixed at start; restart digestd to raise it");
  }
  auto applied = DiffConfig(config_, fresh, true);
  auto ignored = DiffConfig(config_, fresh, false);
  auto merged = MergeForReload(config_, fresh, config_path_);
  if (!merged.ok()) {
    notifier_->Ready();
    return merged.status();
  }
  // As at start: an allow-list a user namespace hides could never admit
  // anyone (two small /proc reads, like the config file read above).
  Status visible = CheckAllowListsVisible(merged->control.allow_uids, merged->control.allow_gids);
  if (!visible.ok()) {
    notifier_->Ready();
    return visible;
  }
  config_ = std::move(merged).value();
  backend_->SetConfig(config_.backend);
  ApplyRuntimeConfig();
  for (const auto& line : applied) LOG_NOTICE("reload: %s", line.c_str());
  for (const auto& line : ignored) {
    LOG_WARN("reload: %s needs a restart; keeping the running value", line.c_str());
  }
  if (applied.empty()) LOG_NOTICE("reload: nothing changed");
  if (changes != nullptr) {
    (*changes)["changed"] = applied;
    (*changes)["needs_restart"] = ignored;
  }
  notifier_->Ready();
  return Status::Ok();
}

void Daemon::ApplyRuntimeConfig() {
  if (auto level = ParseLogLevel(config_.log.level)) SetLogLevel(*level);
  Status st = dispatcher_->SetLimits(config_.workers.min, config_.workers.max,
                                     config_.workers.interactive_reserved);
  if (!st.ok()) LOG_ERROR("reload: %s", st.message().c_str());
  dispatcher_->SetConfig(std::make_shared<const Config>(config_));
  control_->SetOptions({static_cast<size_t>(config_.control.max_line_bytes),
                        config_.control.max_clients, config_.control.idle_timeout_s,
                        config_.control.max_clients_per_uid, config_.control.reserved_clients});
  uv_timer_set_repeat(status_timer_.get(), config_.daemon.status_interval_ms);
  store_->ApplyConfig();
}

void Daemon::BeginShutdown(const char* why) {
  if (phase_ != Phase::kRunning) {
    ForceShutdown(why);
    return;
  }
  phase_ = Phase::kDraining;
  notifier_->Stopping();
  LOG_NOTICE(
      "%s: draining; %zu interactive and %zu background jobs queued, %d running; "
      "grace %d s",
      why, dispatcher_->depth(Lane::kInteractive), dispatcher_->depth(Lane::kBackground),
      dispatcher_->in_flight(), config_.daemon.shutdown_grace_s);
  notifier_->Status("draining: " + StatusLine());
  uv_timer_start(
      grace_timer_.get(),
      [](uv_timer_t* t) {
        static_cast<Daemon*>(t->data)->ForceShutdown("shutdown_grace_s passed");
      },
      static_cast<uint64_t>(config_.daemon.shutdown_grace_s) * 1000, 0);
  store_->BeginShutdown();  // may finish the shutdown at once when idle
}

void Daemon::ForceShutdown(const char* why) {
  if (phase_ == Phase::kStopping) return;
  phase_ = Phase::kDraining;
  uint64_t again_ms = store_->ForceShutdown(why);
  if (again_ms > 0 && phase_ != Phase::kStopping) {
    uv_timer_start(
        grace_timer_.get(),
        [](uv_timer_t* t) { static_cast<Daemon*>(t->data)->ForceShutdown("the final flush"); },
        again_ms, 0);
  }
}

void Daemon::FinishShutdown() {
  if (phase_ == Phase::kStopping) return;
  phase_ = Phase::kStopping;
  grace_timer_.Close();
  const auto& c = jobs_->counters();
  LOG_NOTICE("shutdown complete: %llu done, %llu failed, %llu cancelled",
             static_cast<unsigned long long>(c.done), static_cast<unsigned long long>(c.failed),
             static_cast<unsigned long long>(c.cancelled));
  notifier_->Status("stopped");
  // Answers already queued still go out; nothing new is read. A client that
  // does not read them is cut off after a short while.
  store_->Close();
  control_->CloseAll(/*graceful=*/true);
  if (metrics_) metrics_->Close();
  uv_timer_start(
      final_timer_.get(),
      [](uv_timer_t* t) {
        auto* self = static_cast<Daemon*>(t->data);
        self->control_->CloseAll(/*graceful=*/false);
        self->final_timer_.Close();
      },
      2000, 0);
  uv_unref(final_timer_.base());
  sigterm_.Close();
  sigint_.Close();
  sighup_.Close();
  status_timer_.Close();
  notifier_->Close();
  // An open breaker's probe timer would otherwise keep the loop, and the
  // exit, waiting until the next probe.
  backend_->Close();
}

}  // namespace digestd
