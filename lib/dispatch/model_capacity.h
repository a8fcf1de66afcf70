// ModelCapacity: how many requests digestd keeps in flight to one backend
// model, so that the model's server is kept full but never queues. A request
// beyond the server's parallel capacity gains nothing: Ollama makes it wait,
// silently and in arrival order, where digestd's lanes can no longer put an
// interactive job first (docs/operations.md, "What digestd relies on about
// Ollama"). So the limit follows the capacity the server shows, between 1 and
// [workers] max, and the rest of the work waits in digestd's lanes.
//
// The signal: Ollama's final chunk carries total_duration (its timer starts
// in the request handler), load_duration, prompt_eval_duration and
// eval_duration, so
//     server wait = total - load - prompt_eval - eval
// is the time the request waited for a slot (plus a few ms of handling).
// When prompt_eval and eval are both absent (/api/embed sends neither; Ollama
// omits zero fields) the fallback is latency growth: the request's time at
// the server (total - load, else the client's latency) against the lowest
// smoothed latency seen with fewer requests in flight. It resolves small
// capacities well (embedding models always have 1); at larger ones, with
// service times that vary, it may settle a step or two high, as one request
// too many adds only 1/capacity to the mean latency.
//
// The rule, on each finished request (OnFinish), judged by its level: the
// number in flight to the model when it started, itself included.
//  * Queued (server wait > max(kWaitFloorNs, kWaitShare x its service time),
//    or in fallback latency > kLatencyGrowth x the best at lower levels):
//    the most requests in flight while it was (its peak: a request sent
//    just after it may reach the server first and take the slot) do not
//    fit at once, so the limit drops to peak - 1 (never to less than 1). A cut below the proven
//    level (what the server has served without waiting) needs a second queued sample before a good
//    one from a request started after the first: requests started together
//    can reach the server in either order, so one of a lower level may wait
//    behind one of a higher level, and one descheduled thread can make a
//    lone request wait. It then cuts to the higher of the two targets.
//    A sample from a level above the limit (started
//    before an earlier cut) cannot cut below its own level - 1, so the
//    requests already in flight when the limit drops do not cut it again
//    and again. When the wait is severe (over kSevereWait x the smoothed
//    service time: whole rounds of requests were ahead of it, which one
//    request too many cannot cause) the limit drops at once to the capacity
//    Little's law gives, level x service / (wait + service) rounded up, so
//    a capacity drop from 8 to 2 is followed within a few service times
//    instead of one step per round trip.
//    The level that queued is remembered (the probe ceiling); after a
//    severe wait, the level one above the estimate.
//  * Good (not queued), the limit was filled (level >= limit) and the
//    request started after the limit last changed: counts toward a raise.
//    After a window of max(kMinRaiseSamples, kRaiseRounds x limit) good
//    samples the limit goes up by one. A limit
//    that is not filled never rises, because nothing shows that more would
//    fit. Raising to the probe ceiling takes kProbeHoldoffRounds x limit
//    good samples instead, doubling with each failed probe of that level up
//    to kMaxProbeHoldoffRounds x limit: the capacity is probed again now and
//    then (Ollama may have been restarted with more slots), ever more rarely
//    while the answer stays the same. A full window at the ceiling forgets it.
//  * Busy (HTTP 429/503) or timeout: the limit is multiplied by kBusyCut
//    (at least 1), once per round: a busy answer to a request started before
//    the last such cut does not cut again.
//  * Cold load (load_duration > kColdLoadNs): loading the model is not
//    queueing, and the first requests after a load are not representative;
//    the sample is ignored. So are errors (no capacity signal) and cancelled
//    requests (no timing).
// Pinned mode ([backend] parallel = N) fixes the limit at min(N, max); the
// samples still update the figures shown in status.
//
// Every constant below says why it has its value.
//
// Threads: loop thread only; no I/O, no clock of its own (the caller passes
// `now_ms`, a monotonic clock such as uv_now, used only for status). Plain
// value: the daemon owns one per backend model.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace digestd {

// How a request to the model ended, as ModelCapacity needs it.
enum class CapacityOutcome {
  kOk,         // an answer with timing fields (or at least a latency)
  kBusy,       // HTTP 429 or 503
  kTimeout,    // a first-byte, idle or total timeout
  kError,      // any other failure: no capacity signal
  kCancelled,  // digestd aborted it (cancel, preemption, shutdown)
};

// What one finished request showed. Durations in nanoseconds, as Ollama
// sends them; a field Ollama left out (it omits zeros) stays empty.
struct CapacitySample {
  CapacityOutcome outcome = CapacityOutcome::kOk;
  std::optional<int64_t> total_ns;
  std::optional<int64_t> load_ns;
  std::optional<int64_t> prompt_eval_ns;
  std::optional<int64_t> eval_ns;
  int64_t latency_ns = 0;  // measured by digestd: request sent to answer complete
};

// Handed out by OnStart(), handed back with OnFinish(). Plain value.
struct CapacityTicket {
  uint64_t seq = 0;  // start order
  int level = 0;     // in flight to the model when it started, itself included
};

class ModelCapacity {
 public:
  // A wait shorter than this is handling, not queueing: Ollama's handler
  // reads the model's manifest and renders the template before its runner
  // times anything, a few ms that total_duration includes.
  static constexpr int64_t kWaitFloorNs = 10'000'000;
  // A wait over this share of the request's own service time is queueing.
  // One request over capacity makes each request wait about service /
  // capacity (Little's law), 6% at a capacity of 16, so the share must be
  // lower than that to see the first request too many.
  static constexpr double kWaitShare = 0.05;
  // A wait over this many smoothed service times means more than one round
  // of requests was ahead, which one probe step cannot cause: the limit
  // then drops to the capacity the wait implies, not by one.
  static constexpr double kSevereWait = 2.0;
  // A load longer than this is a cold model (warm requests report a few ms
  // of scheduling as load_duration).
  static constexpr int64_t kColdLoadNs = 100'000'000;
  // Raise window: this many rounds (limit samples each) without queueing,
  // and at least kMinRaiseSamples, so one lucky sample never raises.
  static constexpr int kRaiseRounds = 2;
  static constexpr int kMinRaiseSamples = 4;
  // Before a level that queued is tried again: 16 rounds, doubling per
  // failed probe up to 512 rounds (at 100 ms per answer, 1.6 s to 51 s; at
  // 3 s per summary, 48 s to 26 min). Each probe costs one request's wait.
  static constexpr int kProbeHoldoffRounds = 16;
  static constexpr int kMaxProbeHoldoffRounds = 512;
  // Busy answers and timeouts halve the limit: the server is overloaded,
  // perhaps by other clients, and halving empties it within a round.
  static constexpr double kBusyCut = 0.5;
  // Fallback: latency this many times the best seen with fewer in flight
  // means queueing (two requests on one slot take 2x; 1.5 splits the two).
  static constexpr double kLatencyGrowth = 1.5;
  // Samples a level needs before its smoothed latency serves as a best.
  static constexpr int kMinLevelSamples = 3;
  // Each sample moves a level's best this share of the way up to the
  // current smoothed latency, so a best from shorter work is forgotten
  // (else longer prompts would look like queueing for ever).
  static constexpr double kBestForget = 0.02;
  // Weight of a new sample in the smoothed wait, service time and latency.
  static constexpr double kSmoothing = 0.2;

  // `max`: [workers] max (at least 1). `initial`: the first limit, clamped
  // to [1, max]; 1 is the safe start (Ollama's default OLLAMA_NUM_PARALLEL).
  explicit ModelCapacity(int max, int initial = 1, int64_t now_ms = 0);

  // New upper bound ([workers] max after a reload or `digestctl workers`).
  // The limit is lowered to it at once when above; a higher bound is
  // reached by learning, not at once (a pinned limit follows at once).
  void SetBounds(int max, int64_t now_ms);
  // [backend] parallel = n (at least 1): the limit is min(n, max) and never
  // moves. Unpin() returns to learning from the current limit.
  void Pin(int n, int64_t now_ms);
  void Unpin(int64_t now_ms);
  bool pinned() const { return pinned_.has_value(); }

  // A request to the model starts. Call it for every request sent, even
  // when CanStart() is false (a preempting interactive job may start before
  // the aborted request has finished); keep the ticket for OnFinish.
  [[nodiscard]] CapacityTicket OnStart();
  // The request of `ticket` ended; exactly once per OnStart, whatever the
  // outcome (cancelled and failed requests too), else in_flight() drifts.
  void OnFinish(const CapacityTicket& ticket, const CapacitySample& sample, int64_t now_ms);

  // Whether one more request may be sent to the model now.
  bool CanStart() const { return in_flight_ < limit_; }
  int limit() const { return limit_; }
  // The most requests known to run at once without waiting at the server:
  // the limit, or one below it after a raise until a raise window of
  // requests sent with the new limit filled were served without waiting
  // (while the limit probes, the request over the capacity would wait).
  int proven() const { return unproven_ ? std::max(1, limit_ - 1) : limit_; }
  int in_flight() const { return in_flight_; }
  int max() const { return max_; }
  // Why the limit last changed, e.g. "4 in flight waited 180 ms at the
  // server (service 100 ms): 3", and when (the caller's now_ms).
  const std::string& reason() const { return reason_; }
  int64_t changed_at_ms() const { return changed_at_ms_; }
  // The smoothed server wait (or, in fallback, latency over the best at
  // lower levels), in ms; 0 before any sample.
  double server_wait_ms() const { return wait_ms_; }

  // For `status`: {"mode":"auto"|"pinned","limit","max","in_flight",
  // "reason","changed_ms_ago","server_wait_ms","service_ms",
  // "signal":"server_wait"|"latency"|"none","samples"} plus
  // "probe_ceiling" while a level that queued is remembered.
  nlohmann::json ToJson(int64_t now_ms) const;

 private:
  enum class Signal { kNone, kServerWait, kLatency };

  // One sample read against the state: usable or not, queued or not.
  struct Reading {
    bool usable = false;
    bool queued = false;
    Signal signal = Signal::kNone;
    double wait_ms = 0;
    double service_ms = 0;
    double latency_ms = 0;  // time at the server (or client latency)
    double best_ms = 0;     // fallback: best at lower levels, 0 if none
  };

  struct Level {
    int samples = 0;
    double latency_ms = 0;  // smoothed
    double best_ms = 0;     // lowest smoothed latency (drifting up), 0 until kMinLevelSamples
  };

  // What a queued sample says: the level that waited, the limit it asks
  // for, whether that is Little's-law estimate, and why (without the target).
  struct Cut {
    int level = 0;
    int target = 0;
    bool estimated = false;
    std::string why;
  };

  Reading Read(const CapacityTicket& ticket, const CapacitySample& sample) const;
  Cut CutFor(const CapacityTicket& ticket, const Reading& r) const;
  // The most requests in flight at any start from `ticket`'s on.
  int PeakSince(const CapacityTicket& ticket) const;
  double BestBelow(int level) const;
  void RecordLatency(int level, double latency_ms);
  void OnQueued(const CapacityTicket& ticket, const Reading& r, int64_t now_ms);
  void OnGood(const CapacityTicket& ticket, int64_t now_ms);
  void OnOverload(const CapacityTicket& ticket, CapacityOutcome outcome, int64_t now_ms);
  int RaiseWindow() const;
  int ProbeHoldoff() const;
  // Moves the limit to `limit` (clamped to [1, max]) with `why`; resets the
  // raise window. No-op when the limit would not change.
  void Change(int limit, std::string why, int64_t now_ms);

  int max_;
  int limit_;
  int in_flight_ = 0;
  std::optional<int> pinned_;  // [backend] parallel = N
  uint64_t next_seq_ = 0;
  std::string reason_;
  int64_t changed_at_ms_ = 0;
  double wait_ms_ = 0;             // smoothed
  double service_ms_ = 0;          // smoothed prompt_eval + eval (fallback: the best latency)
  Signal signal_ = Signal::kNone;  // of the last usable sample
  uint64_t samples_ = 0;           // usable samples
  int good_ = 0;                   // good filled samples since the last change
  int ceiling_ = 0;                // lowest level seen queueing, 0: none
  int probe_failures_ = 0;         // queued probes of ceiling_ in a row
  uint64_t overload_cut_seq_ = 0;  // tickets below this predate the last busy cut
  uint64_t change_seq_ = 0;        // tickets below this predate the last limit change
  bool unproven_ = false;          // raised, and no full window of good samples since
  std::optional<Cut> suspect_;     // a lone queued sample's cut below proven(), unconfirmed
  uint64_t suspect_seq_ = 0;       // tickets from here on can clear it
  std::vector<Level> levels_;      // by level; [0] unused
  // Starts as (seq, level), levels falling: PeakSince's suffix maximum.
  std::vector<std::pair<uint64_t, int>> peaks_;
};

}  // namespace digestd
