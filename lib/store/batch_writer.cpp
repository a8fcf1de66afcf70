#include "store/batch_writer.h"

#include <algorithm>
#include <unordered_set>

#include "obs/log.h"
#include "util/clock.h"

namespace digestd {

// One batch in flight: its rows, taken out of the ring (oldest first), and
// what parsing its answer needs.
struct BatchWriter::Flight {
  size_t rows = 0;
  std::deque<Entry> entries;
  std::vector<NewJob> submits;  // keys only, for ParseInsert
  std::vector<uint64_t> finish_ids;
  std::vector<uint64_t> requeue_ids;
  std::vector<LeaseRef> renewals;  // start marks included (started_ms > 0)
  size_t urgent_marks = 0;
  size_t urgent_rows = 0;  // finish rows someone waits for
  uint64_t started_ns = 0;
};

BatchWriter::BatchWriter(uv_loop_t* loop, PgConn& conn, JobStore& store, BatchWriterOptions options,
                         Hooks hooks)
    : loop_(loop),
      conn_(conn),
      store_(store),
      options_(std::move(options)),
      hooks_(std::move(hooks)),
      row_wait_(8192) {
  if (options_.capacity == 0) options_.capacity = 1;
  if (options_.batch_rows < 1) options_.batch_rows = 1;
  if (int rc = uv_timer_init(loop_, timer_.get()); rc != 0) {
    // Without its timer no batch would ever start: refuse rows instead.
    init_status_ = Status::Internal("the PostgreSQL writer cannot run: uv_timer_init failed (" +
                                    std::string(uv_strerror(rc)) + "); restart digestd");
  } else {
    timer_.set_initialized();
    timer_.get()->data = this;
  }
  std::weak_ptr<bool> alive = alive_;
  observer_ = conn_.AddStateObserver([this, alive](bool up, const Status& why) {
    if (alive.expired() || closed_) return;
    if (up) {
      Pump();
    } else {
      FailSubmits(why);  // those in flight fail with their batch
    }
  });
}

BatchWriter::~BatchWriter() {
  Close();
  *alive_ = false;
}

Status BatchWriter::Enqueue(WriteRow row) {
  if (!init_status_.ok()) return init_status_;
  if (closed_) {
    return Status::Unavailable("digestd is shutting down and writes nothing more");
  }
  if (row.is_submit()) {
    if (!conn_.up()) {
      PgConnState s = conn_.state();
      return Status::Unavailable(
          "PostgreSQL is unreachable, so the job cannot be stored and was not accepted (" +
          (s.last_error.empty() ? std::string("not connected yet") : s.last_error) +
          "); submit it again later");
    }
    if (depth() + options_.submit_reserve >= options_.capacity) {
      refused_ = true;
      return Status::QueueFull("the write ring is full (" + std::to_string(depth()) + " of " +
                               std::to_string(options_.capacity) +
                               " rows wait for PostgreSQL); submit again shortly, or raise "
                               "[queues] write");
    }
    ++waiting_submits_;
  } else if (depth() >= options_.capacity) {
    refused_ = true;
    return Status::QueueFull("the write ring is full (" + std::to_string(options_.capacity) +
                             " rows)");
  } else if (IsUrgent(row)) {
    ++urgent_rows_;
  }
  uint64_t now = uv_now(loop_);
  ring_.push_back(Entry{std::move(row), now, uv_hrtime()});
  Pump();
  return Status::Ok();
}

size_t BatchWriter::Hurry(const std::function<bool(const FinishRow&)>& match) {
  size_t n = 0;
  for (auto& e : ring_) {
    auto* f = std::get_if<FinishRow>(&e.row.row);
    if (f == nullptr || f->urgent || !match(*f)) continue;
    f->urgent = true;
    ++urgent_rows_;
    ++n;
  }
  if (n > 0) Pump();
  return n;
}

void BatchWriter::RenewLeases(std::vector<LeaseRef> leases) {
  if (closed_) return;
  if (renewals_.empty() && !leases.empty()) renewals_since_ms_ = uv_now(loop_);
  renewals_ = std::move(leases);
  Pump();
}

bool BatchWriter::HoldsResults() const {
  auto is_result = [](const Entry& e) { return std::holds_alternative<FinishRow>(e.row.row); };
  if (std::any_of(ring_.begin(), ring_.end(), is_result)) return true;
  for (const auto& f : flights_) {
    if (!f->finish_ids.empty()) return true;
  }
  return false;
}

void BatchWriter::MarkStarted(LeaseRef lease, bool urgent) {
  if (closed_) return;
  if (marks_.empty()) marks_since_ms_ = uv_now(loop_);
  marks_.push_back(lease);
  if (urgent) ++urgent_marks_;
  Pump();
}

void BatchWriter::Drain(std::function<void()> done) {
  draining_ = true;
  if (!init_status_.ok()) {
    if (done) done();  // it never held a row (see init_status())
    return;
  }
  drain_done_ = std::move(done);
  Pump();
}

void BatchWriter::SetBatchLimits(int batch_rows, int batch_ms, int max_batch_rows) {
  options_.batch_rows = std::max(1, batch_rows);
  options_.batch_ms = std::max(0, batch_ms);
  options_.max_batch_rows = max_batch_rows;
  Pump();
}

void BatchWriter::Close() {
  if (closed_) return;
  closed_ = true;
  timer_.Close();
  conn_.RemoveStateObserver(observer_);
  // Oldest first: the batches in flight (their answers are ignored now),
  // then the ring.
  std::deque<Entry> rows;
  for (auto& f : flights_) {
    for (auto& e : f->entries) rows.push_back(std::move(e));
  }
  for (auto& e : ring_) rows.push_back(std::move(e));
  flights_.clear();
  ring_.clear();
  in_flight_ = 0;
  waiting_submits_ = 0;
  urgent_rows_ = 0;
  drain_done_ = nullptr;
  auto alive = alive_;
  RowOutcome out;
  out.status = Status::Unavailable("digestd stopped before this row was written");
  for (auto& e : rows) {
    if (e.row.done) e.row.done(out);
    if (!*alive) return;
  }
}

int64_t BatchWriter::DueInMs() const {
  if (ring_.empty() && renewals_.empty() && marks_.empty()) return -1;
  uint64_t now = uv_now(loop_);
  if (retry_after_ms_ > now) return static_cast<int64_t>(retry_after_ms_ - now);
  if (!flights_.empty()) {
    // A batch is in flight: the next one goes beside it only when a full
    // batch waits (or while draining); otherwise the commit's answer
    // applies the rules again, so waiting rows share one commit. "Full"
    // is at most a quarter of the ring: with batch_rows near the ring's
    // capacity, a whole second batch could never gather.
    if (failed_since_idle_) return -1;
    size_t full = std::min(static_cast<size_t>(options_.batch_rows),
                           std::max<size_t>(1, options_.capacity / 4));
    return draining_ || ring_.size() >= full ? 0 : -1;
  }
  if (draining_ || isolate_ > 0 || waiting_submits_ > 0 || urgent_marks_ > 0 || urgent_rows_ > 0 ||
      options_.batch_ms == 0 || ring_.size() >= static_cast<size_t>(options_.batch_rows)) {
    return 0;
  }
  uint64_t oldest = UINT64_MAX;
  if (!ring_.empty()) oldest = ring_.front().enqueued_ms;
  if (!renewals_.empty()) oldest = std::min(oldest, renewals_since_ms_);
  if (!marks_.empty()) oldest = std::min(oldest, marks_since_ms_);
  uint64_t due = oldest + static_cast<uint64_t>(options_.batch_ms);
  return due > now ? static_cast<int64_t>(due - now) : 0;
}

size_t BatchWriter::MaxFlights() const {
  return isolate_ > 0 ? 1 : static_cast<size_t>(std::max(1, options_.max_flights));
}

bool BatchWriter::Drained() const {
  return ring_.empty() && renewals_.empty() && marks_.empty() && flights_.empty();
}

void BatchWriter::Pump() {
  if (closed_ || !timer_.initialized()) return;
  if (!conn_.up() || flights_.size() >= MaxFlights()) {
    uv_timer_stop(timer_.get());  // a commit's answer (or the reconnect) pumps again
    return;
  }
  int64_t due = DueInMs();
  if (due < 0 && !(draining_ && drain_done_ && Drained())) {
    uv_timer_stop(timer_.get());
    return;
  }
  // Never flush inside the caller's turn: the timer fires at the start of
  // the next loop iteration, after every row of this one is queued.
  uv_timer_start(
      timer_.get(), [](uv_timer_t* t) { static_cast<BatchWriter*>(t->data)->OnTimer(); },
      static_cast<uint64_t>(std::max<int64_t>(due, 0)), 0);
}

void BatchWriter::OnTimer() {
  if (closed_ || !conn_.up() || flights_.size() >= MaxFlights()) return;
  int64_t due = DueInMs();
  if (due == 0) {
    StartFlush();
    return;
  }
  if (due < 0 && draining_ && drain_done_ && Drained()) {
    auto done = std::move(drain_done_);
    drain_done_ = nullptr;
    done();
    return;
  }
  Pump();
}

void BatchWriter::StartFlush() {
  auto flight = std::make_shared<Flight>();
  size_t cap = static_cast<size_t>(std::max(options_.batch_rows, options_.max_batch_rows));
  // Room for a second batch beside this one: at most half the ring.
  if (MaxFlights() > 1) cap = std::min(cap, std::max<size_t>(1, options_.capacity / 2));
  size_t n = std::min(ring_.size(), cap);
  if (isolate_ > 0) n = std::min<size_t>(n, 1);
  std::vector<FinishRow> finishes;
  std::vector<RequeueRow> requeues;
  std::vector<NewJob> submits;
  // Jobs this batch, or one still in flight, finishes or requeues: no
  // renewal for them (it would find the job ended and call it lost).
  std::unordered_set<uint64_t> ended;
  for (const auto& f : flights_) {
    ended.insert(f->finish_ids.begin(), f->finish_ids.end());
    ended.insert(f->requeue_ids.begin(), f->requeue_ids.end());
  }
  size_t batch_submits = 0;
  for (size_t i = 0; i < n; ++i) {
    auto& row = ring_[i].row.row;
    if (auto* s = std::get_if<NewJob>(&row)) {
      submits.push_back(*s);
      NewJob key_only;
      key_only.key = s->key;
      key_only.input_hash = s->input_hash;
      flight->submits.push_back(std::move(key_only));
      ++batch_submits;
    } else if (auto* f = std::get_if<FinishRow>(&row)) {
      if (f->urgent) ++flight->urgent_rows;
      finishes.push_back(*f);
      flight->finish_ids.push_back(f->id);
      ended.insert(f->id);
    } else if (auto* r = std::get_if<RequeueRow>(&row)) {
      requeues.push_back(*r);
      flight->requeue_ids.push_back(r->id);
      ended.insert(r->id);
    }
  }
  // Renewals and start marks in one statement; a job both renews and is
  // marked is sent once, with its mark.
  std::unordered_set<uint64_t> marked;
  for (const auto& m : marks_) {
    if (ended.count(m.id) == 0 && marked.insert(m.id).second) flight->renewals.push_back(m);
  }
  flight->urgent_marks = urgent_marks_;
  for (const auto& l : renewals_) {
    if (ended.count(l.id) == 0 && marked.count(l.id) == 0) flight->renewals.push_back(l);
  }
  std::vector<PgStatement> unit;
  if (!submits.empty()) {
    for (auto& s : JobStore::InsertStatements(submits)) unit.push_back(std::move(s));
  }
  if (!finishes.empty()) unit.push_back(store_.FinishStatement(finishes));
  if (!requeues.empty()) unit.push_back(store_.RequeueStatement(requeues));
  if (!flight->renewals.empty()) {
    unit.push_back(store_.RenewStatement(flight->renewals, options_.lease_s));
  }
  if (unit.empty()) {
    renewals_.clear();  // every lease in the set ended meanwhile
    marks_.clear();
    urgent_marks_ = 0;
    Pump();
    return;
  }
  flight->rows = n;
  flight->started_ns = uv_hrtime();
  std::weak_ptr<bool> alive = alive_;
  Status st =
      conn_.Send(std::move(unit), [this, alive, flight](Result<std::vector<PgResult>> result) {
        if (alive.expired() || closed_) return;
        OnFlushed(*flight, std::move(result));
      });
  if (!st.ok()) return;  // the connection is down; the up observer pumps again
  for (size_t i = 0; i < n; ++i) {
    flight->entries.push_back(std::move(ring_.front()));
    ring_.pop_front();
  }
  renewals_.clear();
  marks_.clear();
  urgent_marks_ = 0;
  flights_.push_back(flight);
  in_flight_ += n;
  waiting_submits_ -= batch_submits;
  urgent_rows_ -= std::min(urgent_rows_, flight->urgent_rows);
  Pump();  // a second full batch may go beside this one
}

void BatchWriter::OnFlushed(Flight& flight, Result<std::vector<PgResult>> result) {
  // Answers come in the order the batches were sent (one connection).
  std::shared_ptr<Flight> keep;
  if (!flights_.empty() && flights_.front().get() == &flight) {
    keep = std::move(flights_.front());
    flights_.pop_front();
  }
  in_flight_ -= std::min(in_flight_, flight.rows);
  uint64_t now_ns = uv_hrtime();
  if (!result.ok()) {
    const Status& st = result.status();
    ++stats_.failed_batches;
    NoteError(st);
    // The rows go back to the front of the ring, in order: behind the rows
    // of an earlier batch that failed in the same run, before every row
    // that waited. No batch starts until every one in flight has answered.
    failed_since_idle_ = true;
    auto at = ring_.begin() + static_cast<std::ptrdiff_t>(std::min(returned_, ring_.size()));
    ring_.insert(at, std::make_move_iterator(flight.entries.begin()),
                 std::make_move_iterator(flight.entries.end()));
    returned_ += flight.entries.size();
    waiting_submits_ += flight.submits.size();
    urgent_rows_ += flight.urgent_rows;
    flight.entries.clear();
    if (flights_.empty()) {
      failed_since_idle_ = false;
      returned_ = 0;
    }
    // A newer set of leases, if any, supersedes the one that failed.
    if (renewals_.empty() && !flight.renewals.empty()) {
      renewals_ = flight.renewals;
      renewals_since_ms_ = uv_now(loop_);
    }
    // Start marks go again with the next batch.
    for (const auto& l : flight.renewals) {
      if (l.started_ms <= 0) continue;
      if (marks_.empty()) marks_since_ms_ = uv_now(loop_);
      marks_.push_back(l);
    }
    urgent_marks_ += flight.urgent_marks;
    if (st.code() == Status::Code::kBadRequest) {
      if (flight.rows > 1) {
        // One row holds data the server refuses; find it by writing the
        // batch's rows one per transaction.
        LOG_WARN("writer: PostgreSQL refused a batch of %zu rows (%s); writing them one by one",
                 flight.rows, st.message().c_str());
        isolate_ += flight.rows;
      } else if (flight.rows == 1) {
        Reject(st);  // isolating: this one row went back to the front
        if (isolate_ > 0) --isolate_;
      }
    } else if (!conn_.up()) {
      FailSubmits(st);
    } else {
      // The submits' clients hear the error now; the rest waits and retries.
      FailSubmits(st);
      retry_delay_ms_ = retry_delay_ms_ == 0 ? options_.retry_min_ms
                                             : std::min(retry_delay_ms_ * 2, options_.retry_max_ms);
      retry_after_ms_ = uv_now(loop_) + static_cast<uint64_t>(retry_delay_ms_);
      LOG_WARN("writer: a batch of %zu rows failed (%s); retrying in %d ms", flight.rows,
               st.message().c_str(), retry_delay_ms_);
    }
    MaybeSpace();
    Pump();
    return;
  }
  if (flights_.empty()) {
    failed_since_idle_ = false;
    returned_ = 0;
  }
  retry_delay_ms_ = 0;
  retry_after_ms_ = 0;
  std::vector<PgResult>& res = *result;
  size_t idx = 0;
  auto next = [&]() -> const PgResult& {
    static const PgResult kEmpty;
    return idx < res.size() ? res[idx++] : kEmpty;
  };
  std::vector<InsertedJob> inserted;
  if (!flight.submits.empty()) {
    auto parsed = JobStore::ParseInsert(flight.submits, next());
    if (parsed.ok()) inserted = std::move(parsed).value();
  }
  std::vector<bool> finish_ok, requeue_ok;
  if (!flight.finish_ids.empty()) finish_ok = JobStore::ParseAccepted(flight.finish_ids, next());
  if (!flight.requeue_ids.empty()) {
    requeue_ok = JobStore::ParseAccepted(flight.requeue_ids, next());
  }
  std::vector<uint64_t> lost;
  if (!flight.renewals.empty()) lost = JobStore::ParseLost(flight.renewals, next());

  // Jobs this batch ended need no renewal or start mark any more.
  if ((!renewals_.empty() || !marks_.empty()) &&
      (!flight.finish_ids.empty() || !flight.requeue_ids.empty())) {
    std::unordered_set<uint64_t> ended(flight.finish_ids.begin(), flight.finish_ids.end());
    ended.insert(flight.requeue_ids.begin(), flight.requeue_ids.end());
    renewals_.erase(std::remove_if(renewals_.begin(), renewals_.end(),
                                   [&](const LeaseRef& l) { return ended.count(l.id) > 0; }),
                    renewals_.end());
    marks_.erase(std::remove_if(marks_.begin(), marks_.end(),
                                [&](const LeaseRef& l) { return ended.count(l.id) > 0; }),
                 marks_.end());
  }

  stats_.last_commit_ms = static_cast<double>(now_ns - flight.started_ns) / 1e6;
  stats_.commit_seconds.Observe(static_cast<double>(now_ns - flight.started_ns) / 1e9);
  ++stats_.batches;
  stats_.rows_written += flight.rows;
  stats_.submits_written += flight.submits.size();
  stats_.results_written += flight.finish_ids.size();
  if (!flight.finish_ids.empty()) ++batches_with_results_;
  if (isolate_ > 0) isolate_ -= std::min(isolate_, flight.rows);
  LOG_DEBUG(
      "writer: committed a batch of %zu rows (%zu submits, %zu finishes, %zu requeues, %zu "
      "renewals, %zu leases lost) in %.1f ms",
      flight.rows, flight.submits.size(), flight.finish_ids.size(), flight.requeue_ids.size(),
      flight.renewals.size(), lost.size(), stats_.last_commit_ms);

  std::vector<std::pair<RowCallback, RowOutcome>> calls;
  calls.reserve(flight.rows);
  size_t si = 0, fi = 0, ri = 0;
  for (Entry& e : flight.entries) {
    row_wait_.Record(now_ns - e.enqueued_ns);
    RowOutcome out;
    if (e.row.is_submit()) {
      if (si < inserted.size()) out.inserted = inserted[si];
      ++si;
      if (out.inserted.id == 0) {
        out.status = Status::Unavailable(
            "the job's key existed but its row was deleted meanwhile (retention); submit again");
      }
    } else if (std::holds_alternative<FinishRow>(e.row.row)) {
      out.accepted = fi < finish_ok.size() && finish_ok[fi];
      ++fi;
    } else {
      out.accepted = ri < requeue_ok.size() && requeue_ok[ri];
      ++ri;
    }
    if (!out.accepted) ++stats_.ignored;
    if (e.row.done) calls.emplace_back(std::move(e.row.done), std::move(out));
  }
  auto alive = alive_;
  for (auto& [fn, out] : calls) {
    fn(out);
    if (!*alive || closed_) return;
  }
  if (hooks_.on_leases_renewed && !flight.renewals.empty()) {
    std::vector<LeaseRef> renewed;
    std::unordered_set<uint64_t> gone(lost.begin(), lost.end());
    for (const auto& l : flight.renewals) {
      if (gone.count(l.id) == 0) renewed.push_back(l);
    }
    if (!renewed.empty()) hooks_.on_leases_renewed(renewed, flight.started_ns);
    if (!*alive || closed_) return;
  }
  if (!lost.empty()) {
    LOG_WARN(
        "writer: %zu job lease(s) were lost (the jobs were rescued elsewhere); their "
        "results will be ignored",
        lost.size());
    if (hooks_.on_leases_lost) hooks_.on_leases_lost(std::move(lost));
    if (!*alive || closed_) return;
  }
  MaybeSpace();
  if (!*alive || closed_) return;
  Pump();
}

void BatchWriter::FailSubmits(const Status& why) {
  bool any = false;
  for (size_t i = 0; i < ring_.size() && !any; ++i) any = ring_[i].row.is_submit();
  if (!any) return;
  std::vector<RowCallback> calls;
  std::deque<Entry> kept;
  size_t returned_kept = 0;
  for (size_t i = 0; i < ring_.size(); ++i) {
    Entry& e = ring_[i];
    if (e.row.is_submit()) {
      if (e.row.done) calls.push_back(std::move(e.row.done));
    } else {
      if (i < returned_) ++returned_kept;
      kept.push_back(std::move(e));
    }
  }
  ring_.swap(kept);
  returned_ = returned_kept;
  waiting_submits_ = 0;
  urgent_rows_ = static_cast<size_t>(
      std::count_if(ring_.begin(), ring_.end(), [](const Entry& e) { return IsUrgent(e.row); }));
  if (isolate_ > ring_.size()) isolate_ = ring_.size();
  Status st = why.code() == Status::Code::kUnavailable
                  ? Status::Unavailable("the job was not stored: " + why.message() +
                                        "; submit it again (the same key is safe to repeat)")
                  : why;
  RowOutcome out;
  out.status = st;
  auto alive = alive_;
  for (auto& fn : calls) {
    fn(out);
    if (!*alive || closed_) return;
  }
  MaybeSpace();
}

void BatchWriter::Reject(const Status& why) {
  if (ring_.empty()) return;
  Entry e = std::move(ring_.front());
  ring_.pop_front();
  ++stats_.rejected;
  std::string what = e.row.is_submit() ? "submit of key \"" + std::get<NewJob>(e.row.row).key + "\""
                     : std::holds_alternative<FinishRow>(e.row.row)
                         ? "result of job " + std::to_string(std::get<FinishRow>(e.row.row).id)
                         : "requeue of job " + std::to_string(std::get<RequeueRow>(e.row.row).id);
  LOG_ERROR("writer: PostgreSQL refused the %s: %s; the row is dropped", what.c_str(),
            why.message().c_str());
  RowOutcome out;
  // Submits are the rows whose data came from a client: the message names
  // what the client sent and says what to do.
  out.status = Status::BadRequest(
      e.row.is_submit()
          ? "PostgreSQL refused to store this job's input (or its key or group): " + why.message() +
                "; only this job was refused: change the input (e.g. less deeply nested or "
                "smaller) and submit it again"
          : "PostgreSQL refused this job's data: " + why.message());
  out.accepted = false;
  if (e.row.done) e.row.done(out);
}

void BatchWriter::NoteError(const Status& why) {
  stats_.last_error = why.message();
  stats_.last_error_unix_ms = UnixMillis();
}

void BatchWriter::MaybeSpace() {
  if (!refused_ || closed_) return;
  if (depth() >= options_.capacity) return;
  refused_ = false;
  if (hooks_.on_space) hooks_.on_space();
}

BatchWriterStats BatchWriter::stats() const {
  BatchWriterStats s = stats_;
  s.depth = depth();
  s.capacity = options_.capacity;
  s.flushing = !flights_.empty();
  s.batches_in_flight = flights_.size();
  s.commits_per_1000_results = stats_.results_written == 0
                                   ? 0
                                   : 1000.0 * static_cast<double>(batches_with_results_) /
                                         static_cast<double>(stats_.results_written);
  s.row_wait = row_wait_.Compute();
  return s;
}

}  // namespace digestd
