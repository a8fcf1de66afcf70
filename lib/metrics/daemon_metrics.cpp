#include "metrics/daemon_metrics.h"

#include <initializer_list>
#include <optional>
#include <string_view>

#include "metrics/prom_text.h"

namespace digestd {

namespace {

using Json = nlohmann::json;
using Type = PromText::Type;

const Json* At(const Json& root, std::initializer_list<std::string_view> path) {
  const Json* j = &root;
  for (std::string_view key : path) {
    if (!j->is_object()) return nullptr;
    auto it = j->find(key);
    if (it == j->end()) return nullptr;
    j = &*it;
  }
  return j;
}

std::optional<double> Number(const Json& root, std::initializer_list<std::string_view> path) {
  const Json* j = At(root, path);
  if (j == nullptr || !j->is_number()) return std::nullopt;
  return j->get<double>();
}

std::string String(const Json& root, std::initializer_list<std::string_view> path) {
  const Json* j = At(root, path);
  return j != nullptr && j->is_string() ? j->get<std::string>() : std::string();
}

// Writes the family with one unlabelled sample when the status holds it.
void FromStatus(PromText& out, const Json& status, std::string_view name, Type type,
                std::string_view help, std::initializer_list<std::string_view> path,
                double scale = 1) {
  if (auto v = Number(status, path)) out.Single(name, type, help, *v * scale);
}

// A state as one 0/1 gauge per possible value (Prometheus's enum pattern).
void StateSet(PromText& out, std::string_view name, std::string_view help,
              std::initializer_list<std::string_view> states, const std::string& current) {
  out.Family(name, Type::kGauge, help);
  for (std::string_view s : states) {
    out.Sample({{"state", std::string(s)}}, s == current ? 1 : 0);
  }
}

constexpr Lane kLanes[] = {Lane::kInteractive, Lane::kBackground};

void Daemon(PromText& out, const Json& s) {
  out.Family("digestd_build_info", Type::kGauge, "The running digestd's version (always 1).");
  out.Sample({{"version", String(s, {"version"})}}, 1);
  FromStatus(out, s, "digestd_uptime_seconds", Type::kGauge, "Seconds since digestd started.",
             {"uptime_s"});
  StateSet(out, "digestd_state",
           "The daemon's lifecycle: 1 for the current state (running, draining after SIGTERM "
           "or drain, stopping).",
           {"running", "draining", "stopping"}, String(s, {"state"}));
  FromStatus(out, s, "digestd_reloads_total", Type::kCounter,
             "Config reloads asked for (SIGHUP or the reload request).", {"reloads"});
}

void Workers(PromText& out, const Json& s) {
  FromStatus(out, s, "digestd_workers_limit", Type::kGauge,
             "Jobs that may run at once now (between min and max; digestctl workers sets it).",
             {"workers", "limit"});
  FromStatus(out, s, "digestd_workers_min", Type::kGauge, "[workers] min in force.",
             {"workers", "min"});
  FromStatus(out, s, "digestd_workers_max", Type::kGauge, "[workers] max in force.",
             {"workers", "max"});
  FromStatus(out, s, "digestd_workers_reserved", Type::kGauge,
             "Worker slots background jobs may never take ([workers] interactive_reserved).",
             {"workers", "reserved"});
  FromStatus(out, s, "digestd_workers_busy", Type::kGauge, "Jobs running now, both lanes.",
             {"workers", "busy"});
  FromStatus(out, s, "digestd_thread_pool_threads", Type::kGauge,
             "Threads in libuv's pool (fixed at start: [workers] max plus headroom).",
             {"workers", "pool"});
}

void Queues(PromText& out, const Json& s) {
  struct Field {
    const char* name;
    const char* help;
    const char* key;
  };
  const Field fields[] = {
      {"digestd_queue_depth", "Jobs waiting in the lane's ring in memory.", "depth"},
      {"digestd_queue_capacity", "Capacity of the lane's ring ([queues] interactive, background).",
       "capacity"},
      {"digestd_jobs_running", "Jobs of the lane running now.", "running"},
  };
  for (const Field& f : fields) {
    if (!Number(s, {"queues", "interactive", f.key})) continue;
    out.Family(f.name, Type::kGauge, f.help);
    for (Lane lane : kLanes) {
      std::string l(LaneName(lane));
      if (auto v = Number(s, {"queues", l, f.key})) out.Sample({{"lane", l}}, *v);
    }
  }
  FromStatus(out, s, "digestd_jobs_waiting_retry", Type::kGauge,
             "Jobs waiting out a retry backoff in this process.", {"jobs", "waiting_retry"});
}

// Per kind and lane from the tallies; `rest` (a total the tallies do not
// break down) becomes one unlabelled sample, so the family still sums to it.
template <typename Get>
void Tallied(PromText& out, const JobTallies& tallies, std::string_view name, std::string_view help,
             Get get, std::optional<double> total = std::nullopt) {
  out.Family(name, Type::kCounter, help);
  double sum = 0;
  for (const auto& [kind, lanes] : tallies) {
    for (Lane lane : kLanes) {
      double v = static_cast<double>(get(lanes[static_cast<int>(lane)]));
      sum += v;
      out.Sample({{"kind", kind}, {"lane", std::string(LaneName(lane))}}, v);
    }
  }
  if (total && *total > sum) out.Sample({}, *total - sum);
}

void Jobs(PromText& out, const Json& s, const JobTable* jobs) {
  if (jobs != nullptr) {
    const JobTallies& t = jobs->tallies();
    Tallied(
        out, t, "digestd_jobs_submitted_total",
        "New jobs stored, by kind and lane (a submit of a key that exists is not counted).",
        [](const JobTally& x) { return x.submitted; }, Number(s, {"jobs", "submitted"}));
    out.Family("digestd_jobs_finished_total", Type::kCounter,
               "Jobs that reached a terminal state, by kind, lane and outcome (done, failed, "
               "cancelled).");
    for (const auto& [kind, lanes] : t) {
      for (Lane lane : kLanes) {
        const JobTally& x = lanes[static_cast<int>(lane)];
        std::string l(LaneName(lane));
        out.Sample({{"kind", kind}, {"lane", l}, {"outcome", "done"}}, static_cast<double>(x.done));
        out.Sample({{"kind", kind}, {"lane", l}, {"outcome", "failed"}},
                   static_cast<double>(x.failed));
        out.Sample({{"kind", kind}, {"lane", l}, {"outcome", "cancelled"}},
                   static_cast<double>(x.cancelled));
      }
    }
    Tallied(
        out, t, "digestd_jobs_fallback_total",
        "Jobs done with a stored fallback instead of the model's answer ([summarize] fallback).",
        [](const JobTally& x) { return x.fallback; });
    Tallied(out, t, "digestd_job_retries_total",
            "Job attempts that ended in a retry (a failure worth retrying, or a busy backend).",
            [](const JobTally& x) { return x.retried; });
    Tallied(
        out, t, "digestd_jobs_released_total",
        "Jobs given up unfinished: handed back to the PostgreSQL queue (shutdown, a lost "
        "lease), or dropped at shutdown with the memory store.",
        [](const JobTally& x) { return x.released; }, Number(s, {"jobs", "released"}));
  }
  FromStatus(out, s, "digestd_jobs_duplicate_total", Type::kCounter,
             "Submits of a key that already existed (answered with the existing job).",
             {"jobs", "duplicates"});
  FromStatus(out, s, "digestd_jobs_requeued_total", Type::kCounter,
             "Jobs queued again by request (retry, or a submit with replace).",
             {"jobs", "requeued"});
  if (jobs != nullptr) {
    out.Family("digestd_job_latency_seconds", Type::kHistogram,
               "Time from a job's submit (or claim) to its terminal state, by lane.");
    for (Lane lane : kLanes) {
      out.HistogramSamples({{"lane", std::string(LaneName(lane))}}, jobs->latency_histogram(lane));
    }
    out.Family("digestd_job_run_seconds", Type::kHistogram,
               "Time a job's last attempt ran, from its start to its terminal state, by lane.");
    for (Lane lane : kLanes) {
      out.HistogramSamples({{"lane", std::string(LaneName(lane))}}, jobs->run_time_histogram(lane));
    }
  }
}

// Per backend model: the learned (or pinned) limit, what is in flight, what
// waits, the server wait seen; and the preemption and promotion counters.
void Models(PromText& out, const Json& s) {
  FromStatus(out, s, "digestd_preemptions_total", Type::kCounter,
             "Background requests aborted so an interactive job could start at once "
             "([workers] preempt); the job is requeued without spending an attempt.",
             {"jobs", "preempted"});
  FromStatus(out, s, "digestd_promotions_total", Type::kCounter,
             "Queued background jobs moved to the interactive lane because a result waited "
             "for them.",
             {"jobs", "promoted"});
  const Json* models = At(s, {"models"});
  if (models == nullptr || !models->is_array() || models->empty()) return;
  struct Field {
    const char* name;
    const char* help;
    const char* key;
  };
  const Field fields[] = {
      {"digestd_model_limit",
       "Requests digestd keeps in flight to the model at most ([backend] "
       "parallel: learned, or pinned).",
       "limit"},
      {"digestd_model_in_flight", "Requests to the model in flight now.", "in_flight"},
      {"digestd_model_waiting_jobs", "Jobs queued in this process for the model.", "waiting"},
      {"digestd_model_server_wait_seconds",
       "Smoothed time a request waited at the server for a slot (total_duration minus load "
       "and evaluation).",
       "server_wait_ms"},
  };
  for (const Field& f : fields) {
    out.Family(f.name, Type::kGauge, f.help);
    for (const auto& m : *models) {
      if (!m.is_object()) continue;
      auto v = Number(m, {f.key});
      if (!v) continue;
      double scale = std::string_view(f.key) == "server_wait_ms" ? 1e-3 : 1;
      out.Sample({{"model", String(m, {"model"})},
                  {"embedding", m.value("embedding", false) ? "true" : "false"}},
                 *v * scale);
    }
  }
}

void Backend(PromText& out, const Json& s, const Histogram* latency) {
  Models(out, s);
  const Json* b = At(s, {"backend"});
  if (b == nullptr) return;
  out.Family("digestd_backend_info", Type::kGauge,
             "The LLM backend digestd sends work to (always 1).");
  out.Sample({{"kind", String(*b, {"kind"})}, {"url", String(*b, {"url"})}}, 1);
  std::string state = String(*b, {"state"});
  out.Single("digestd_backend_up", Type::kGauge,
             "1 while the backend's circuit breaker is closed (jobs are sent), else 0.",
             state == "closed" ? 1 : 0);
  StateSet(out, "digestd_backend_breaker_state",
           "The backend's circuit breaker: 1 for the current state. Open or half-open: "
           "backend jobs stay queued until a probe answers.",
           {"closed", "open", "half-open"}, state);
  FromStatus(out, *b, "digestd_backend_breaker_opened_total", Type::kCounter,
             "Times the circuit breaker opened (re-opening after a failed probe counts).",
             {"breaker", "times_opened"});
  FromStatus(out, *b, "digestd_backend_consecutive_failures", Type::kGauge,
             "Retryable failures in a row; the breaker opens at [backend] breaker_failures.",
             {"breaker", "consecutive_failures"});
  FromStatus(out, *b, "digestd_backend_in_flight", Type::kGauge,
             "Requests to the backend in flight (bounded by digestd_workers_limit).",
             {"in_flight"});
  FromStatus(out, *b, "digestd_backend_requests_total", Type::kCounter,
             "Requests to the backend that ended, whatever the outcome.", {"requests"});
  FromStatus(out, *b, "digestd_backend_failures_total", Type::kCounter,
             "Retryable failures: refused or reset connections, timeouts, HTTP 500/502/504.",
             {"failures"});
  FromStatus(out, *b, "digestd_backend_busy_total", Type::kCounter,
             "Busy answers (HTTP 429 or 503): the job waits a backoff, its attempt refunded.",
             {"busy"});
  FromStatus(out, *b, "digestd_backend_retries_total", Type::kCounter,
             "Backend job attempts that were retried.", {"retries"});
  FromStatus(out, *b, "digestd_backend_probes_total", Type::kCounter,
             "Probe requests sent while the breaker was open.", {"probes"});
  if (latency != nullptr) {
    out.Family("digestd_backend_request_duration_seconds", Type::kHistogram,
               "Time of one request to the backend, sent to last byte (or to the failure).");
    out.HistogramSamples({}, *latency);
  }
}

void Db(PromText& out, const Json& s) {
  const Json* db = At(s, {"db"});
  if (db == nullptr) return;
  std::string store = String(*db, {"store"});
  out.Family("digestd_store_info", Type::kGauge,
             "Where jobs are recorded: postgres or memory ([jobs] store; always 1).");
  out.Sample({{"store", store}}, 1);
  if (store != "postgres") return;
  std::string state = String(*db, {"state"});
  out.Single("digestd_db_up", Type::kGauge,
             "1 while PostgreSQL answers and the schema is migrated, else 0.",
             state == "up" ? 1 : 0);
  StateSet(out, "digestd_db_state", "The PostgreSQL connection: 1 for the current state.",
           {"up", "migrating", "down"}, state);
  FromStatus(out, *db, "digestd_db_connects_total", Type::kCounter,
             "Connections to PostgreSQL made (both sessions).", {"connects"});
  FromStatus(out, *db, "digestd_db_disconnects_total", Type::kCounter,
             "Connections to PostgreSQL lost.", {"disconnects"});
  if (Number(*db, {"backlog", "interactive", "queued"})) {
    out.Family("digestd_db_backlog_jobs", Type::kGauge,
               "Jobs in the PostgreSQL table by lane and state (queued: due now; delayed: "
               "waiting a retry or run_after; running: claimed by any node); refreshed every "
               "[postgres] backlog_interval_ms.");
    for (Lane lane : kLanes) {
      std::string l(LaneName(lane));
      for (const char* st : {"queued", "delayed", "running"}) {
        if (auto v = Number(*db, {"backlog", l, st})) out.Sample({{"lane", l}, {"state", st}}, *v);
      }
    }
  }
  FromStatus(out, *db, "digestd_db_leases_held", Type::kGauge, "Jobs this node holds a lease on.",
             {"leases", "held"});
  FromStatus(out, *db, "digestd_db_leases_lost_total", Type::kCounter,
             "Leases this node found taken over (its work on them was stopped).",
             {"leases", "lost"});

  const Json* w = At(*db, {"writer"});
  if (w == nullptr) return;
  FromStatus(out, *w, "digestd_writer_queue_depth", Type::kGauge,
             "Rows in the write ring, the batches being committed included.", {"depth"});
  FromStatus(out, *w, "digestd_writer_queue_capacity", Type::kGauge,
             "Capacity of the write ring ([queues] write).", {"capacity"});
  FromStatus(out, *w, "digestd_writer_rows_total", Type::kCounter,
             "Rows committed by the batching writer.", {"rows_written"});
  FromStatus(out, *w, "digestd_writer_batches_total", Type::kCounter,
             "Transactions (batches) committed by the batching writer.", {"batches"});
  FromStatus(out, *w, "digestd_writer_submit_rows_total", Type::kCounter, "Submit rows committed.",
             {"submits_written"});
  FromStatus(out, *w, "digestd_writer_result_rows_total", Type::kCounter,
             "Result rows (done, failed, cancelled) committed.", {"results_written"});
  FromStatus(out, *w, "digestd_writer_ignored_rows_total", Type::kCounter,
             "Result or requeue rows ignored because this node had lost the job's lease.",
             {"ignored"});
  FromStatus(out, *w, "digestd_writer_rejected_rows_total", Type::kCounter,
             "Rows dropped because PostgreSQL refused their data.", {"rejected"});
  FromStatus(out, *w, "digestd_writer_failed_batches_total", Type::kCounter,
             "Batches whose transaction failed (their rows are written again).",
             {"failed_batches"});
  FromStatus(out, *w, "digestd_writer_last_commit_seconds", Type::kGauge,
             "Time the last batch took from send to COMMIT acknowledged.", {"last_commit_ms"},
             1e-3);
  Histogram commit({});
  if (const Json* h = At(*w, {"commit_seconds"});
      h != nullptr && Histogram::FromJson(*h, &commit)) {
    out.Family("digestd_writer_commit_seconds", Type::kHistogram,
               "Time of each batch from send to COMMIT acknowledged.");
    out.HistogramSamples({}, commit);
  }
}

void Control(PromText& out, const Json& s) {
  FromStatus(out, s, "digestd_control_clients", Type::kGauge,
             "Clients connected to the control socket now.", {"control", "clients"});
  FromStatus(out, s, "digestd_control_connections_total", Type::kCounter,
             "Connections accepted on the control socket.", {"control", "accepted"});
  FromStatus(out, s, "digestd_control_requests_total", Type::kCounter,
             "Request lines read on the control socket.", {"control", "requests"});
  FromStatus(out, s, "digestd_control_rejected_total", Type::kCounter,
             "Connections refused because [control] max_clients were connected.",
             {"control", "rejected"});
}

}  // namespace

// `result` waits by how they found their jobs: hit (already done when
// asked), late (done within the wait), miss (the wait ran out).
void Precompute(PromText& out, const Json& s) {
  const Json* p = At(s, {"precompute"});
  if (p == nullptr || !p->is_object()) return;
  struct By {
    const char* family;
    const char* help;
    const char* key;
    const char* label;
  };
  const By bys[] = {
      {"digestd_result_waits_total",
       "result requests that waited (wait_ms > 0), by job kind (\"group\" for a group) and by "
       "outcome: hit (already done when asked), late (done within the wait), miss (the wait ran "
       "out).",
       "by_kind", "kind"},
      {"digestd_result_waits_by_prefix_total",
       "The same waits by the part of the group (or key) before its first ':'.", "by_prefix",
       "prefix"},
  };
  for (const By& by : bys) {
    const Json* m = At(*p, {by.key});
    if (m == nullptr || !m->is_object()) continue;
    out.Family(by.family, Type::kCounter, by.help);
    for (const auto& [name, counts] : m->items()) {
      for (const char* outcome : {"hit", "late", "miss"}) {
        out.Sample({{by.label, name}, {"outcome", outcome}}, counts.value(outcome, 0.0));
      }
    }
  }
}

std::string RenderDaemonMetrics(const MetricsSources& sources) {
  static const Json kEmpty = Json::object();
  const Json& s = sources.status != nullptr ? *sources.status : kEmpty;
  PromText out;
  Daemon(out, s);
  Workers(out, s);
  Queues(out, s);
  Jobs(out, s, sources.jobs);
  Backend(out, s, sources.backend_latency);
  Db(out, s);
  Control(out, s);
  Precompute(out, s);
  return out.Take();
}

}  // namespace digestd
