// BatchWriter: every write of job state goes through one bounded write ring
// and leaves it in batches, one transaction per batch, modelled on LevelDB's
// BuildBatchGroup: gather what is queued up to a cap, write it as one unit,
// remember the background error for `status`; and, like a pipelined log
// writer, let a second full batch go while the first one commits.
//
// Rows: submits (INSERT ... ON CONFLICT (key) DO NOTHING, then a lookup of
// the keys), finishes (done / failed / cancelled with the result or error)
// and requeues (retries, releases), the last two under JobStore's lease
// guard. Lease renewals of in-flight jobs ride along in the same transaction
// without taking ring slots. The finish statement itself sends
// NOTIFY digestd_done with the keys it finished (never a row the lease guard
// refused), as JSON arrays within NOTIFY's 8000-byte payload limit (several
// NOTIFYs when needed); they reach listeners at COMMIT. Every statement is idempotent, so writing a
// batch again after a lost connection changes nothing that committed the first time.
//
// When a batch is written (the group-commit rule):
//   1. A batch takes the oldest rows of the ring, at most
//      max(batch_rows, max_batch_rows) of them and at most half the ring's
//      capacity (so a second batch has room) -- everything queued up to
//      that cap, LevelDB's group -- (1 while isolating a bad row, see below).
//      Up to max_flights batches (2) are in flight at once on the one
//      connection (its pipeline): the server runs the second while this
//      process reads the first one's answer and builds the third, so
//      neither waits for the other under load.
//   2. With nothing in flight, a batch starts as soon as any of these holds:
//        a. the ring holds batch_rows rows or more;
//        b. a submit is waiting -- someone waits for its acknowledgement; the
//           batch starts at the next turn of the loop, so every row queued
//           in the current turn (a batch submit, a burst of clients) shares
//           one commit; the same for an urgent finish row (an interactive
//           job's, or one a `result` waits for);
//        c. the oldest waiting row (or lease renewal) has waited batch_ms;
//        d. Drain() was called, or batch_ms is 0.
//   3. Rows that arrive while a batch is in flight wait for it, unless a
//      full batch (batch_rows, but at most a quarter of the ring's capacity)
//      gathers meanwhile (or Drain() was called):
//      that one goes at once, beside it. When a commit is answered, the
//      rules are applied again at once. So an idle writer commits a lone
//      submit at once, under load one commit serves every submit that arrived
//      during the previous one, and a submit waits for at most one commit in
//      flight plus its own. Background results (finish rows nobody waits
//      for) alone wait up to batch_ms for their batch to fill, which keeps
//      commits per result low.
//
// Failures:
//   * Connection lost (or down): rows other than submits stay in the ring,
//     in order, and are written after the reconnect. Submits are never
//     retried by the writer: each waiting submit's callback gets Unavailable
//     (the row may or may not have committed; a client that submits the same
//     key again gets the existing job), and new submits are refused with
//     Unavailable until the connection is back, so an ack is never a lie.
//   * A failed batch's rows go back to the front of the ring, in order;
//     no batch starts until every batch in flight has answered.
//   * The server rejected the data (BadRequest: SQLSTATE class 22, 23 or 54,
//     e.g. a key holding a NUL, or an input nested deeper than the server's
//     stack): the rows of the failed batch are written again one per
//     transaction; the row that fails alone is dropped and its callback gets
//     the error, so one client's row never fails another's or stalls the
//     writer.
//   * Any other error with the connection up: the batch's submits get the
//     error; the other rows are retried after a backoff (100 ms doubling to
//     5 s). status shows the error meanwhile.
//
// Threads: loop thread only. Lifetimes: `loop`, `conn` and `store` must
// outlive the writer. Row callbacks and hooks run on the loop thread, never
// inside Enqueue(); they may call Enqueue(). Destroying the writer with a
// batch in flight is safe (its answer is then ignored) but its rows' fate is
// unknown: Drain() first.
#pragma once

#include <uv.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "obs/histogram.h"
#include "obs/latency_window.h"
#include "store/job_store.h"
#include "store/pg_conn.h"
#include "util/status.h"
#include "util/uv_handle.h"

namespace digestd {

// What became of one row.
struct RowOutcome {
  // Ok: committed. Unavailable: not known to be written (connection lost,
  // writer closed). BadRequest: the server refused the row's data. Other
  // codes: the transaction failed (submits only).
  Status status;
  // Finish and requeue rows: false when the lease guard ignored the row
  // (this node no longer holds the job's lease).
  bool accepted = true;
  // Submit rows: what the insert found.
  InsertedJob inserted;
};

using RowCallback = std::function<void(const RowOutcome&)>;

// One row of the write ring.
struct WriteRow {
  std::variant<NewJob, FinishRow, RequeueRow> row;
  RowCallback done;  // may be empty

  static WriteRow Submit(NewJob job, RowCallback done) { return {std::move(job), std::move(done)}; }
  static WriteRow Finish(FinishRow r, RowCallback done = {}) {
    return {std::move(r), std::move(done)};
  }
  static WriteRow Requeue(RequeueRow r, RowCallback done = {}) {
    return {std::move(r), std::move(done)};
  }
  bool is_submit() const { return std::holds_alternative<NewJob>(row); }
};

// A finish row that someone waits for (FinishRow::urgent).
inline bool IsUrgent(const WriteRow& row) {
  const auto* f = std::get_if<FinishRow>(&row.row);
  return f != nullptr && f->urgent;
}

struct BatchWriterOptions {
  size_t capacity = 500;  // [queues] write
  int batch_rows = 50;    // [writer] batch_rows
  // [writer] max_batch_rows: most rows a batch takes when more than
  // batch_rows wait as it starts; 0 (or less than batch_rows): batch_rows.
  int max_batch_rows = 0;
  int batch_ms = 500;  // [writer] batch_ms
  int lease_s = 60;    // renewals extend leases to now + lease_s
  // Ring slots submits may not take, kept for the results of jobs in
  // flight (so a finished job can always queue its result).
  size_t submit_reserve = 0;
  int retry_min_ms = 100;  // backoff after a failed batch, connection up
  int retry_max_ms = 5000;
  int max_flights = 2;  // batches in flight at once (1: one at a time)
};

struct BatchWriterStats {
  size_t depth = 0;  // rows in the ring, the batches in flight included
  size_t capacity = 0;
  bool flushing = false;
  size_t batches_in_flight = 0;
  uint64_t rows_written = 0;  // rows committed
  uint64_t batches = 0;       // transactions committed
  uint64_t submits_written = 0;
  uint64_t results_written = 0;  // finish rows committed
  uint64_t ignored = 0;          // finish/requeue rows the lease guard ignored
  uint64_t rejected = 0;         // rows dropped because the server refused their data
  uint64_t failed_batches = 0;
  double last_commit_ms = 0;  // send to COMMIT acknowledged, of the last batch
  // The same span for every committed batch since start, in seconds
  // (CommitSecondsBuckets), for the metrics endpoint.
  Histogram commit_seconds{CommitSecondsBuckets()};
  // Commits that carried results, per 1,000 results (since start).
  double commits_per_1000_results = 0;
  Percentiles row_wait;    // a row's time from Enqueue to its commit
  std::string last_error;  // the last failed batch's error; "" when none yet
  int64_t last_error_unix_ms = 0;
};

class BatchWriter {
 public:
  struct Hooks {
    // Enqueue refused a row (ring full) and there is room again.
    std::function<void()> on_space;
    // Jobs whose lease renewal found the lease lost: stop their work; their
    // results will be ignored.
    std::function<void(std::vector<uint64_t> ids)> on_leases_lost;
    // Leases a committed batch renewed (start marks included), and when
    // that batch was sent (uv_hrtime): each lease now runs at least until
    // sent_ns + lease_s.
    std::function<void(const std::vector<LeaseRef>& renewed, uint64_t sent_ns)> on_leases_renewed;
  };

  // Check init_status() before use.
  BatchWriter(uv_loop_t* loop, PgConn& conn, JobStore& store, BatchWriterOptions options,
              Hooks hooks);
  ~BatchWriter();
  BatchWriter(const BatchWriter&) = delete;
  BatchWriter& operator=(const BatchWriter&) = delete;

  // Ok, or why the constructor could not set the writer up (its libuv timer
  // failed to initialise; Internal). Check it right after construction and
  // treat a failure as fatal at start: such a writer writes nothing --
  // Enqueue() refuses every row with this status, and Drain() calls `done`
  // at once, since it never holds a row. It stays safe to Close() and
  // destroy.
  [[nodiscard]] const Status& init_status() const { return init_status_; }

  // Queues `row` for a coming batch. QueueFull when the ring is full (for a
  // submit: when fewer than submit_reserve slots would remain);
  // Unavailable for a submit while the connection is down, and for any row
  // after Close(); init_status() when that is not ok. On failure `row.done`
  // is never called; otherwise exactly once, after the commit or with the
  // failure.
  [[nodiscard]] Status Enqueue(WriteRow row);

  // Asks for one on_space call when the next batch leaves the ring (for a
  // caller that checked free_slots() instead of being refused). Never calls
  // on_space from inside; the ring must hold rows (else there is room).
  void NotifyWhenSpace() { refused_ = true; }

  // The leases of the jobs running now: renewed in the next batch (due
  // within batch_ms), replacing any set not yet sent. Jobs finished or
  // requeued meanwhile are left out. Call every lease_s / 3 or so.
  void RenewLeases(std::vector<LeaseRef> leases);

  // Someone now waits for the finish rows that `match` picks: those still in
  // the ring become urgent (the next batch leaves at the next turn of the
  // loop, as for an interactive finish). Rows already in flight commit soon
  // anyway. Returns how many rows it made urgent.
  size_t Hurry(const std::function<bool(const FinishRow&)>& match);

  // Records that a job started (`lease.started_ms` > 0), which counts its
  // attempt: the mark rides along in a coming batch like a renewal (due
  // within batch_ms), and is dropped when the job's finish or requeue row,
  // which carries the start itself, is written first. `urgent`: the caller
  // waits for it (a job whose start must be recorded before it runs), so a
  // batch starts at the next turn of the loop; on_leases_renewed says when
  // it committed, on_leases_lost when the lease was gone.
  void MarkStarted(LeaseRef lease, bool urgent);

  // Writes everything queued now, without waiting for batch_ms, and from
  // then on every row at once (shutdown). `done` runs once the ring is empty
  // and nothing is in flight -- which waits for a reconnect if the
  // connection is down. A second call replaces `done`. (Inside this call
  // only when init_status() is not ok.)
  void Drain(std::function<void()> done);

  // Stops the writer: every row still in the ring gets Unavailable. The
  // timer is closed (the loop must run once more). Idempotent.
  void Close();

  // Reload: new batch limits apply from the next batch.
  void SetBatchLimits(int batch_rows, int batch_ms, int max_batch_rows = 0);
  void SetSubmitReserve(size_t slots) { options_.submit_reserve = slots; }

  // Rows held: waiting in the ring and in the batches in flight.
  size_t depth() const { return ring_.size() + in_flight_; }
  size_t capacity() const { return options_.capacity; }
  size_t free_slots() const {
    return depth() < options_.capacity ? options_.capacity - depth() : 0;
  }
  // Slots a submit may take now (submit_reserve kept back).
  size_t submit_free_slots() const {
    size_t used = depth() + options_.submit_reserve;
    return used < options_.capacity ? options_.capacity - used : 0;
  }
  bool flushing() const { return !flights_.empty(); }
  // A finish row (a job's result) waits in the ring or in a batch in flight.
  bool HoldsResults() const;
  BatchWriterStats stats() const;

 private:
  struct Entry {
    WriteRow row;
    uint64_t enqueued_ms;  // uv_now
    uint64_t enqueued_ns;  // uv_hrtime, for row_wait
  };
  struct Flight;

  int64_t DueInMs() const;
  size_t MaxFlights() const;
  bool Drained() const;  // nothing waits, nothing in flight
  void Pump();
  void OnTimer();
  void StartFlush();
  void OnFlushed(Flight& flight, Result<std::vector<PgResult>> result);
  // Every submit waiting in the ring gets `why` (none is in flight's).
  void FailSubmits(const Status& why);
  void Reject(const Status& why);
  void NoteError(const Status& why);
  void MaybeSpace();

  uv_loop_t* loop_;
  PgConn& conn_;
  JobStore& store_;
  Status init_status_;  // set by the constructor only
  BatchWriterOptions options_;
  Hooks hooks_;
  UvHandle<uv_timer_t> timer_;
  uint64_t observer_ = 0;
  std::deque<Entry> ring_;  // rows waiting, oldest first (not those in flight)
  // Batches sent and not yet answered, oldest first; each owns its rows.
  std::deque<std::shared_ptr<Flight>> flights_;
  size_t in_flight_ = 0;            // rows in flights_
  bool failed_since_idle_ = false;  // a batch failed while others were in flight
  size_t returned_ = 0;             // rows at the ring's front that came back from those
  size_t waiting_submits_ = 0;      // submits in the ring
  size_t urgent_rows_ = 0;          // finish rows in the ring someone waits for
  std::vector<LeaseRef> renewals_;  // the next set to renew
  uint64_t renewals_since_ms_ = 0;
  std::vector<LeaseRef> marks_;  // start marks not yet sent
  uint64_t marks_since_ms_ = 0;
  size_t urgent_marks_ = 0;  // of marks_, those a start waits for
  size_t isolate_ = 0;       // rows still to write one per transaction
  uint64_t retry_after_ms_ = 0;
  int retry_delay_ms_ = 0;
  bool refused_ = false;  // Enqueue said QueueFull since the last on_space
  bool draining_ = false;
  std::function<void()> drain_done_;
  bool closed_ = false;
  BatchWriterStats stats_;
  uint64_t batches_with_results_ = 0;
  LatencyWindow row_wait_;
  // Cleared by the destructor; the answer of a batch in flight checks it.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace digestd
