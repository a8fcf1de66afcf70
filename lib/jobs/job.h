// Job: one unit of work, as the loop thread keeps it (JobRecord), and the
// part a pool thread may see while the job runs (WorkContext / WorkOutcome).
//
// Ownership: JobTable owns every JobRecord (shared_ptr so a ring entry or a
// waiting reply can hold one); records are touched only on the loop thread.
// A pool thread gets a WorkContext that shares only immutable input and an
// atomic cancel flag, and returns a WorkOutcome by value.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"
#include "util/text_sink.h"

namespace digestd {

enum class Lane { kInteractive = 0, kBackground = 1 };
inline constexpr int kLaneCount = 2;

enum class JobState { kQueued, kRunning, kDone, kFailed, kCancelled };

std::string_view LaneName(Lane lane);
std::optional<Lane> ParseLane(std::string_view name);
std::string_view JobStateName(JobState state);
inline bool IsTerminal(JobState s) {
  return s == JobState::kDone || s == JobState::kFailed || s == JobState::kCancelled;
}

// What a submit's conflict check compares: a 64-bit FNV-1a hash of the kind,
// a NUL, and the input's compact JSON (object members sorted by name, so
// equal inputs hash alike however their members were ordered). Stable
// across builds: the PostgreSQL store keeps it in the row. Not a defence
// against anyone crafting collisions; keys are the caller's own.
uint64_t InputHash(std::string_view kind, const nlohmann::json& input);

// Monotonic nanoseconds (uv_hrtime).
using Nanos = uint64_t;

struct JobRecord {
  uint64_t id = 0;
  std::string key;    // the idempotency key; unique
  std::string group;  // empty when the job is in no group
  std::string kind;
  Lane lane = Lane::kBackground;
  std::shared_ptr<const nlohmann::json> input;  // immutable once submitted
  JobState state = JobState::kQueued;
  int attempts = 0;       // attempts spent (a busy backend's refusals are not)
  int busy_retries = 0;   // times the backend said it was busy (429/503)
  nlohmann::json result;  // set when done
  std::string error;      // set when failed or cancelled
  // A retried (or replaced) job's error from before, kept until it ends again.
  std::string last_error;
  uint64_t input_hash = 0;  // InputHash(kind, *input)
  // Seconds its result stays fresh once done (submit "ttl_s" or [precompute]
  // default_ttl_s); a submit of the key after that runs it again. 0: for ever.
  int64_t ttl_s = 0;
  // The keys of the jobs it needs ("after"): it waits, in no queue, until
  // they are done (memory store; with PostgreSQL the row waits).
  std::vector<std::string> after;
  Nanos submitted_at = 0;
  Nanos started_at = 0;
  Nanos finished_at = 0;
  int64_t submitted_unix_ms = 0;
  // With the PostgreSQL store: the row's id, the lease this node holds on it
  // (JobStore's lease guard) and its max_attempts.
  uint64_t row_id = 0;
  int64_t lease_token = 0;
  int max_attempts = 0;
  bool user_cancelled = false;  // a `cancel` asked for it (not a shutdown)
  uint64_t backend_epoch = 0;   // the breaker's epoch when its backend attempt started
  bool lease_lost = false;      // another claim holds the row now: drop the outcome
  // PostgreSQL store: when the current attempt started (Unix ms; 0 not yet),
  // for the start mark and the finish row, which count the attempt.
  int64_t started_unix_ms = 0;
  // The lease runs at least until this uv_hrtime (claim or last renewal
  // sent + lease_s); a job not started by then is left to lease recovery.
  Nanos lease_deadline = 0;
  // The start must be recorded before the job runs (an earlier claim of it
  // was lost with its worker before its start was recorded).
  bool mark_first = false;
  enum class Mark : uint8_t { kNone, kSent, kRecorded };
  Mark mark = Mark::kNone;  // the start mark of the current attempt
  // Set by the loop thread to ask a running job to stop; read by its worker.
  std::shared_ptr<std::atomic<bool>> cancel = std::make_shared<std::atomic<bool>>(false);
  // How far the running attempt got: stream chunks received from the backend
  // so far. Written by its worker, read by the loop thread (preemption takes
  // the request with the least progress). Reset when an attempt starts.
  std::shared_ptr<std::atomic<uint64_t>> progress = std::make_shared<std::atomic<uint64_t>>(0);
  // Waiting out a retry's backoff (the memory store's delay queue): in no
  // dispatcher queue until it is due, however urgently someone waits.
  bool backing_off = false;
  // Waiting for the jobs its "after" names (memory store): in no dispatcher
  // queue until they are done, however urgently someone waits.
  bool waiting_after = false;
  int preempted = 0;  // times a background attempt was aborted for interactive work
  // The backend model its requests go to (JobKind::ModelOf), resolved by the
  // dispatcher when the job is first queued; empty: no backend model.
  bool model_resolved = false;
  std::string model;
  bool embedding_model = false;
  uint64_t queue_seq = 0;  // the dispatcher's order of queueing, across lanes' queues
};

using JobPtr = std::shared_ptr<JobRecord>;

// What a pool thread receives. Copyable; owns nothing mutable but `cancel`.
struct WorkContext {
  std::string_view key;  // points into the record's key, which outlives the work
  std::shared_ptr<const nlohmann::json> input;
  std::shared_ptr<std::atomic<bool>> cancel;
  // Chunks received so far, for the loop's preemption choice; the worker
  // adds to it (relaxed), never reads it for anything else.
  std::shared_ptr<std::atomic<uint64_t>> progress;
  // Set when someone follows the job's text (subscribe with "partial"): an
  // LLM kind hands its answer's text here as it streams. Null otherwise.
  std::shared_ptr<TextSink> text;
  int attempt = 1;
  // The config when the job started; immutable, shared with the loop.
  std::shared_ptr<const Config> config;
  bool cancelled() const { return cancel->load(std::memory_order_relaxed); }
};

// What the backend's last answer said about its timing, for the model's
// learned capacity (dispatch/model_capacity.h). Durations in nanoseconds as
// Ollama sends them; a field it left out stays empty.
struct BackendTiming {
  std::optional<int64_t> total_ns;
  std::optional<int64_t> load_ns;
  std::optional<int64_t> prompt_eval_ns;
  std::optional<int64_t> eval_ns;
  bool timed_out = false;  // a connect, first-byte, idle or total timeout
};

// What a pool thread returns.
struct WorkOutcome {
  enum class Kind {
    kDone,
    kFailed,  // fatal: no retry
    kRetry,   // retryable: run again after a backoff, spending an attempt
    kBusy,    // the backend said it is busy (429/503): retry, attempt not spent
    kCancelled,
  };
  Kind kind = Kind::kDone;
  nlohmann::json result;  // kDone
  std::string error;      // otherwise: what went wrong, for the user; with kDone,
                          // why a fallback was stored instead (else empty)
  // Time spent talking to the backend, for its latency figures; 0 when the
  // kind used no backend.
  uint64_t backend_ns = 0;
  // The backend's timing of the job's last request; empty fields when the
  // kind used no backend or the answer had none.
  BackendTiming timing{};

  static WorkOutcome Done(nlohmann::json r) { return {Kind::kDone, std::move(r), {}, 0, {}}; }
  static WorkOutcome Failed(std::string e) { return {Kind::kFailed, nullptr, std::move(e), 0, {}}; }
  static WorkOutcome Retry(std::string e) { return {Kind::kRetry, nullptr, std::move(e), 0, {}}; }
  static WorkOutcome Busy(std::string e) { return {Kind::kBusy, nullptr, std::move(e), 0, {}}; }
  static WorkOutcome Cancelled(std::string e) {
    return {Kind::kCancelled, nullptr, std::move(e), 0, {}};
  }
};

}  // namespace digestd
