#include "app/daemon.h"

#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <cstdlib>

#include "backend/backoff.h"
#include "jobs/summarize_fallback.h"
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
  if (auto level = ParseLogLevel(config_.log.level)) SetLogLevel(*level);

  bool durable_store = config_.jobs.store == "postgres";
  // With PostgreSQL the table holds only this node's claimed jobs: results
  // are read from the database.
  jobs_ = std::make_unique<JobTable>(
      durable_store ? 0 : static_cast<size_t>(config_.jobs.retain_finished));
  WorkerLimits limits{config_.workers.min, config_.workers.max,
                      config_.workers.interactive_reserved, config_.workers.max};
  Dispatcher::Hooks hooks;
  hooks.on_start = [this](const JobPtr& job) {
    jobs_->MarkRunning(job);
    if (UsesBackend(*job)) backend_->OnStart();
    // The ring just shrank: claim more once it is down to the low-water mark.
    if (durable()) {
      pace_[static_cast<int>(job->lane)].Started();
      Refill();
    }
  };
  hooks.can_start = [this](const JobRecord& job) {
    // With PostgreSQL, every running job keeps a write-ring slot for its
    // result: dispatch pauses while the ring is that full (on_space resumes).
    if (writer_ && writer_->free_slots() <=
                       pending_rows_.size() + static_cast<size_t>(dispatcher_->in_flight())) {
      writer_->NotifyWhenSpace();
      return false;
    }
    return !UsesBackend(job) || backend_->AllowRequest();
  };
  hooks.on_finish = [this](const JobPtr& job, WorkOutcome outcome) {
    OnJobFinished(job, std::move(outcome));
  };
  hooks.on_drained = [this] {
    if (phase_ != Phase::kDraining) return;
    if (durable()) {
      DurableDrained();  // the writer's last batch first
    } else {
      FinishShutdown();
    }
  };
  dispatcher_ =
      std::make_unique<Dispatcher>(&loop_, static_cast<size_t>(config_.queues.interactive),
                                   static_cast<size_t>(config_.queues.background), limits,
                                   pool_size_, JobKindRegistry::Global(), std::move(hooks));
  dispatcher_->SetConfig(std::make_shared<const Config>(config_));
  backend_ =
      std::make_unique<BackendHealth>(&loop_, config_.backend, [this] { dispatcher_->Kick(); });
  delayed_ = std::make_unique<DelayQueue>(&loop_, [this](JobPtr job) { OnRetryDue(job); });

  ControlServer::Options copts{static_cast<size_t>(config_.control.max_line_bytes),
                               config_.control.max_clients, config_.control.idle_timeout_s};
  control_ = std::make_unique<ControlServer>(
      &loop_, copts, [this](Request req, const PeerCred& peer, ControlServer::Reply reply) {
        Handle(std::move(req), peer, std::move(reply));
      });
  std::string why;
  int fd = TakeActivatedSocket(&why);
  if (!why.empty()) return Status::IoError(why);
  Status st = fd >= 0 ? control_->ListenFd(fd)
                      : control_->ListenPath(config_.control.socket, config_.control.mode);
  if (!st.ok()) return st;

  auto signal_init = [&](UvHandle<uv_signal_t>& h, int signum) -> Status {
    int r = uv_signal_init(&loop_, h.get());
    if (r != 0) return Status::Internal(std::string("uv_signal_init: ") + uv_strerror(r));
    h.set_initialized();
    h.get()->data = this;
    r = uv_signal_start(
        h.get(),
        [](uv_signal_t* s, int signum) {
          auto* self = static_cast<Daemon*>(s->data);
          // Only move the daemon into a state here; the loop does the work.
          if (signum == SIGHUP) {
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
  if (!(st = InitTimer(&loop_, final_timer_, this)).ok()) return st;

  notifier_ = std::make_unique<Notifier>(&loop_);
  uint64_t wd = notifier_->StartWatchdog();
  if (durable_store) {
    // READY=1 once the database answered (or after ready_timeout_s).
    if (!(st = StartStore()).ok()) return st;
    if (config_.postgres.ready_timeout_s == 0) MaybeReady(/*db_answered=*/false);
    return Status::Ok();
  }
  notifier_->Ready();
  notifier_->Status(StatusLine());
  LOG_NOTICE(
      "digestd %s ready: node %s, socket %s, workers %d..%d (pool %d), watchdog %s, "
      "jobs in memory only ([jobs] store = \"memory\")",
      DIGESTD_VERSION, node_id_.c_str(), fd >= 0 ? "from systemd" : config_.control.socket.c_str(),
      config_.workers.min, config_.workers.max, pool_size_,
      wd ? (std::to_string(wd) + " ms").c_str() : "off");
  return Status::Ok();
}

void Daemon::Teardown() {
  if (!loop_ready_) return;
  AnswerWaits();
  if (control_) control_->CloseAll(/*graceful=*/false);
  if (notifier_) notifier_->Close();
  if (backend_) backend_->Close();
  if (delayed_) delayed_->Close();
  sigterm_.Close();
  sigint_.Close();
  sighup_.Close();
  status_timer_.Close();
  grace_timer_.Close();
  final_timer_.Close();
  if (dispatcher_ && dispatcher_->in_flight() > 0) {
    dispatcher_->CancelInFlight();
  }
  // Let returning work hand its rows over before the writer closes.
  while (dispatcher_ && dispatcher_->in_flight() > 0 && uv_run(&loop_, UV_RUN_ONCE) != 0) {
  }
  CloseStore();
  // Let close callbacks and any returning work run.
  while (uv_run(&loop_, UV_RUN_DEFAULT) != 0) {
  }
  writer_.reset();
  wstore_.reset();
  store_.reset();
  pgw_.reset();
  pg_.reset();
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

bool Daemon::UsesBackend(const JobRecord& job) const {
  const JobKind* kind = JobKindRegistry::Global().Find(job.kind);
  return kind != nullptr && kind->UsesBackend(config_);
}

Daemon::Verdict Daemon::Judge(const JobPtr& job, WorkOutcome outcome, bool started,
                              int max_attempts) {
  Verdict v;
  bool busy = outcome.kind == WorkOutcome::Kind::kBusy;
  bool retryable = busy || outcome.kind == WorkOutcome::Kind::kRetry;
  if (retryable && started) {
    // A busy backend (429/503) costs no attempt: an overloaded Ollama must
    // not use up a job's retries. Its backoff grows with its own count.
    int retry = busy ? job->busy_retries + 1 : job->attempts;
    if (busy || job->attempts < max_attempts) {
      v.retry = true;
      v.refund = busy;
      v.delay_ms =
          BackoffDelayMs(retry, config_.backend.backoff_base_ms, config_.backend.backoff_max_ms);
      LOG_INFO("job %s: %s; retry %d in %lld ms%s", job->key.c_str(), outcome.error.c_str(), retry,
               static_cast<long long>(v.delay_ms), busy ? " (busy: no attempt spent)" : "");
      if (busy) ++job->busy_retries;
      if (UsesBackend(*job)) backend_->NoteRetry();
      v.outcome = std::move(outcome);
      return v;
    }
    outcome.error = "gave up after " + std::to_string(job->attempts) +
                    " attempts ([backend] max_attempts); last error: " + outcome.error;
  }
  if (retryable || outcome.kind == WorkOutcome::Kind::kFailed) {
    LOG_WARN("job %s (%s) failed: %s", job->key.c_str(), job->kind.c_str(), outcome.error.c_str());
    if (job->kind == "summarize") {
      // A summary screen never shows a hole: store the configured fallback,
      // with the reason in error so `result` says why it is one.
      nlohmann::json fallback = SummaryFallback(*job->input, config_);
      if (!fallback.is_null()) {
        WorkOutcome stored = WorkOutcome::Done(std::move(fallback));
        stored.error = std::move(outcome.error);
        v.outcome = std::move(stored);
        return v;
      }
    }
    outcome.kind = WorkOutcome::Kind::kFailed;
  }
  v.outcome = std::move(outcome);
  return v;
}

void Daemon::OnJobFinished(const JobPtr& job, WorkOutcome outcome) {
  if (durable()) {
    DurableFinished(job, std::move(outcome));
    return;
  }
  bool started = job->state == JobState::kRunning;  // else a failed uv_queue_work
  if (started && UsesBackend(*job)) backend_->OnOutcome(outcome);
  bool retryable =
      outcome.kind == WorkOutcome::Kind::kBusy || outcome.kind == WorkOutcome::Kind::kRetry;
  if (retryable && started && (phase_ != Phase::kRunning || job->cancel->load())) {
    jobs_->MarkRetrying(job, std::move(outcome.error), /*refund=*/true);
    Release(job, "released at shutdown while it waited for a retry");
    return;
  }
  Verdict v = Judge(job, std::move(outcome), started, config_.backend.max_attempts);
  if (v.retry) {
    jobs_->MarkRetrying(job, std::move(v.outcome.error), v.refund);
    delayed_->Add(job, static_cast<uint64_t>(v.delay_ms));
    return;
  }
  jobs_->MarkFinished(job, std::move(v.outcome));
}

void Daemon::OnRetryDue(JobPtr job) {
  if (job->state != JobState::kQueued) return;  // cancelled while it waited
  Status st = dispatcher_->Enqueue(job);
  if (st.code() == Status::Code::kQueueFull) {
    delayed_->Add(std::move(job), 1000);  // its lane is full; try again shortly
  } else if (!st.ok()) {
    Release(job, "released at shutdown while it waited for a retry");
  }
}

void Daemon::Release(const JobPtr& job, const char* why) {
  jobs_->MarkCancelled(job, why);
  jobs_->NoteReleased(1);
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
  config_ = MergeReloadable(config_, fresh);
  backend_->SetConfig(config_.backend);
  ApplyRuntimeConfig();
  if (writer_) {
    writer_->SetBatchLimits(config_.writer.batch_rows, config_.writer.batch_ms,
                            config_.writer.max_batch_rows);
  }
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
  if (!durable()) jobs_->SetRetention(static_cast<size_t>(config_.jobs.retain_finished));
  control_->SetOptions({static_cast<size_t>(config_.control.max_line_bytes),
                        config_.control.max_clients, config_.control.idle_timeout_s});
  uv_timer_set_repeat(status_timer_.get(), config_.daemon.status_interval_ms);
  if (durable()) {
    // The periodic store tasks take their new intervals from their next run.
    const auto& pc = config_.postgres;
    uv_timer_set_repeat(recover_timer_.get(), static_cast<uint64_t>(pc.recover_interval_s) * 1000);
    uv_timer_set_repeat(retention_timer_.get(),
                        static_cast<uint64_t>(pc.retention_interval_s) * 1000);
    uv_timer_set_repeat(backlog_timer_.get(), static_cast<uint64_t>(pc.backlog_interval_ms));
  }
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
  if (durable()) {
    DurableBeginShutdown();
    return;
  }
  // Jobs waiting out a retry backoff would come due after the pills.
  for (const auto& job : delayed_->TakeAll()) {
    if (job->state == JobState::kQueued) {
      Release(job, "released at shutdown while it waited for a retry");
    }
  }
  dispatcher_->PutPills();  // may finish the shutdown at once when idle
}

void Daemon::ForceShutdown(const char* why) {
  if (phase_ == Phase::kStopping) return;
  phase_ = Phase::kDraining;
  if (durable()) {
    if (writer_draining_) {
      LOG_WARN(
          "%s: %zu rows not yet written to PostgreSQL (%s); their jobs' leases expire and "
          "they run again",
          why, writer_->depth() + pending_rows_.size(),
          pgw_->up() ? "the database is slow" : "the database is unreachable");
      FinishShutdown();
      return;
    }
    if (forced_++ > 0) {
      LOG_WARN(
          "%s: %d jobs still running after they were aborted; stopping without them (their "
          "leases expire and they run again)",
          why, dispatcher_->in_flight());
      FinishShutdown();
      return;
    }
    DurableBeginShutdown();  // releases whatever is still queued
    LOG_WARN("%s: aborting %d running jobs; they go back to the queue", why,
             dispatcher_->in_flight());
    dispatcher_->CancelInFlight();
    // Aborted jobs and the writer's last batch get a few seconds more.
    uv_timer_start(
        grace_timer_.get(),
        [](uv_timer_t* t) { static_cast<Daemon*>(t->data)->ForceShutdown("the final flush"); },
        5000, 0);
    if (dispatcher_->Drained()) DurableDrained();
    return;
  }
  auto queued = dispatcher_->TakeQueued();
  for (const auto& job : queued) {
    if (job->state == JobState::kQueued) {
      jobs_->MarkCancelled(job, "not run: digestd shut down before its turn");
    }
  }
  jobs_->NoteReleased(queued.size());
  LOG_WARN("%s: stopping now; %d running jobs aborted, %zu queued jobs released", why,
           dispatcher_->in_flight(), queued.size());
  dispatcher_->CancelInFlight();
  if (dispatcher_->Drained()) FinishShutdown();  // else on_drained finishes it
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
  AnswerWaits();
  // Answers already queued still go out; nothing new is read. A client that
  // does not read them is cut off after a short while.
  control_->CloseAll(/*graceful=*/true);
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
  CloseStore();
}

}  // namespace digestd
