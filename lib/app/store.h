// Store: the record of jobs, as the Daemon sees it. Every control op that
// reads or changes jobs, and every job event from the dispatcher, goes
// through this interface; the Daemon never asks which store it has.
//
// Two implementations (docs/architecture.md, "The two stores"):
//   * PgStore (pg_store.h): the shipped default. The table digestd.jobs is
//     the record; this node's rings hold only the jobs it has claimed.
//   * MemoryStore (memory_store.h): the JobTable is the only record. A quick
//     local mode with the same answers and the same shutdown as far as memory
//     allows (nothing survives a restart), and the in-process stand-in the
//     daemon tests use.
//
// Threads: loop thread only, every method and callback. Lifetime: made by
// the Daemon after the parts in StoreEnv, destroyed before them; Close()
// first, then the loop runs until the store's handles are closed.
#pragma once

#include <uv.h>

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "app/job_query.h"
#include "app/precompute_tally.h"
#include "backend/backend_health.h"
#include "config/config.h"
#include "control/control_server.h"
#include "control/protocol.h"
#include "dispatch/dispatcher.h"
#include "jobs/job_table.h"
#include "sys/notify.h"

namespace digestd {

// The daemon's lifecycle, which the stores follow.
enum class Phase { kRunning, kDraining, kStopping };

// What a store may use of the Daemon. Every pointer outlives the store.
class EventHub;

struct StoreEnv {
  uv_loop_t* loop = nullptr;
  const Config* config = nullptr;  // the running config; ApplyConfig() follows a reload
  std::string node_id;
  int pool_size = 0;
  const Phase* phase = nullptr;
  JobTable* jobs = nullptr;
  Dispatcher* dispatcher = nullptr;
  BackendHealth* backend = nullptr;
  Notifier* notifier = nullptr;
  // `subscribe`'s subscribers: the JobTable tells them of state changes;
  // a store that keeps no record of a job (a submit to PostgreSQL) or that
  // tells terminal states only once committed publishes those itself.
  EventHub* events = nullptr;
  // Counts how `result` waits found their jobs (hit, late, miss).
  PrecomputeTally* precompute = nullptr;
  // The store can serve: READY=1 may go out. Called once; a store that gave
  // up waiting for its database ([postgres] ready_timeout_s) says so itself.
  std::function<void()> ready;
  // Everything the shutdown had to write is written: the daemon may stop.
  std::function<void()> drained;
  // The daemon's one-line status, for STATUS=.
  std::function<std::string()> status_line;
};

// A `result` request, checked: exactly one of key and group.
struct ResultQuery {
  std::string key;
  std::string group;
  int64_t wait_ms = 0;
};

class Store {
 public:
  virtual ~Store() = default;

  // Begins serving. The store calls env.ready once it can.
  [[nodiscard]] virtual Status Start() = 0;
  // "jobs in memory only", "jobs in PostgreSQL postgresql:///digestd", for
  // the ready log line.
  virtual std::string Describe() const = 0;

  // Control ops. Each answers through `reply` exactly once. `specs` were
  // checked by CheckSubmit (submit_spec.h); `single`: a one-job submit.
  // `then` (single submits only, may be empty): called with the accepted
  // job's answer instead of sending it, for a submit that waits for the job.
  using SubmitThen = std::function<void(nlohmann::json answer)>;
  virtual void Submit(const Request& req, std::vector<const nlohmann::json*> specs, bool single,
                      const ControlServer::Reply& reply, SubmitThen then = {}) = 0;
  virtual void GetResult(const Request& req, ResultQuery query,
                         const ControlServer::Reply& reply) = 0;
  virtual void Cancel(const Request& req, const std::string& key,
                      const ControlServer::Reply& reply) = 0;
  // `cancel` with a group: every queued job of it ends cancelled, every
  // running one here is asked to stop. Answers {"group","cancelled","running"}
  // (and "elsewhere": running on other daemons, not cancelled).
  virtual void CancelGroup(const Request& req, const std::string& group,
                           const ControlServer::Reply& reply) = 0;
  // `jobs`: the jobs that match `query`, newest first, one page.
  virtual void ListJobs(const Request& req, JobsQuery query, const ControlServer::Reply& reply) = 0;
  // `retry`: a failed or cancelled job (or every one of a group) queued
  // again on `lane` with its attempts reset; its error kept as last_error.
  virtual void Retry(const Request& req, JobTarget target, Lane lane,
                     const ControlServer::Reply& reply) = 0;
  // `delete`: removes the finished jobs of the key or group; answers
  // {"deleted","skipped"} (skipped: not finished).
  virtual void Delete(const Request& req, JobTarget target, const ControlServer::Reply& reply) = 0;
  // A `result` waits for these jobs: the store moves the queued background
  // ones it keeps outside this node's rings to the interactive lane (the
  // Daemon promotes those in the rings). Default: nothing outside the rings.
  virtual void PromoteQueued(const ResultQuery& /*query*/) {}
  // Jobs moved to the interactive lane outside the rings.
  virtual uint64_t promoted() const { return 0; }

  // Dispatcher events.
  virtual void OnJobStarted(const JobPtr& job) = 0;
  // Whether `job` may start as far as the store goes: room for its result,
  // a lease that has not run out, its start recorded first when it must be.
  // The store may drop the job here (its state is then no longer queued, and
  // the dispatcher skips it).
  virtual bool MayStart(const JobRecord& job) = 0;
  virtual void OnJobFinished(const JobPtr& job, WorkOutcome outcome) = 0;

  // Shutdown. BeginShutdown: accept nothing new into the rings, hand back
  // what has not started, put the pills in. ForceShutdown: the grace is over
  // (or a second signal): abort what runs and release the rest; called again
  // when even that takes too long. OnDrained: nothing runs any more; the
  // store writes what it must and then calls env.drained.
  virtual void BeginShutdown() = 0;
  // Returns the ms after which to call it again ("the final flush"); 0: not needed.
  virtual uint64_t ForceShutdown(const char* why) = 0;
  virtual void OnDrained() = 0;
  // Answers every open wait, fails what is pending, closes the store's
  // handles. Idempotent.
  virtual void Close() = 0;

  // The running config changed (reload).
  virtual void ApplyConfig() = 0;
  // `status` fields: the "db" block, and the count of jobs waiting out a
  // retry backoff in this process.
  virtual nlohmann::json StatusJson() const = 0;
  virtual size_t waiting_retry() const = 0;
  // Appended to the one-line status: ", db up, write ring 3/500".
  virtual std::string StatusSuffix() const = 0;
};

}  // namespace digestd
