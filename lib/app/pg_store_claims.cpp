// PgStore: claims and refills, the jobs this node holds, lease renewal,
// recovery, retention and the backlog count. Which claims may be sent and
// when a release is safe is the ClaimBook's to say (claim_book.h).
#include <algorithm>

#include "app/pg_store.h"
#include "backend/ollama_client.h"
#include "obs/log.h"
#include "util/clock.h"

namespace digestd {

void PgStore::Refill(bool poll) {
  if (closed_) return;
  if (!migrated_) {
    OnDbReady();
    return;
  }
  if (!pg_->up()) return;
  if (book_.ReleaseSafe()) ReleaseUnheld();
  if (phase() != Phase::kRunning) return;
  const auto& pc = config().postgres;
  for (Lane lane : {Lane::kInteractive, Lane::kBackground}) {
    int l = static_cast<int>(lane);
    pace_[l].Measure(uv_now(env_.loop));
    // A dry lane (its last claim found the table empty) waits until a
    // submit or requeue lands there or the poll looks for due retries and
    // other nodes' jobs: an empty claim costs a planned query.
    if (!book_.WantsClaim(lane, poll)) continue;
    size_t depth = env_.dispatcher->depth(lane);
    size_t cap = env_.dispatcher->capacity(lane);
    ClaimSize size = pace_[l].Size(pc.claim_batch, pc.refill_low_water);
    // At most half the ring: a claim then always has room for half a ring
    // of jobs, never a handful (each claim costs about the same to plan).
    size_t low = std::min(size.low_water, cap / 2);
    if (depth > low || depth >= cap) continue;
    // No more than the lane's backend models can start soon: jobs claimed
    // beyond that would wait here while another node could run them.
    size_t room = env_.dispatcher->ClaimRoom(lane);
    if (room == 0) continue;
    int n = static_cast<int>(std::min({cap - depth, size.batch, room}));
    LOG_DEBUG("claiming up to %d %s jobs (ring %zu of %zu, pace %zu, room %s)", n,
              LaneName(lane).data(), depth, cap, size.batch,
              room == SIZE_MAX ? "any" : std::to_string(room).c_str());
    Status st =
        store_->Claim(lane, n, pc.lease_s,
                      [this, lane, n, sent_ns = uv_hrtime()](Result<std::vector<StoredJob>> r) {
                        OnClaimed(lane, n, sent_ns, std::move(r));
                      });
    if (st.ok()) {
      book_.ClaimSent(lane);
      ++claims_sent_;
    }
  }
}

void PgStore::OnClaimed(Lane lane, int asked, uint64_t sent_ns,
                        Result<std::vector<StoredJob>> claimed) {
  struct AfterClaims {
    PgStore* store;
    ~AfterClaims() { store->RunAfterClaims(); }
  } after_claims{this};
  if (!claimed.ok()) {
    book_.ClaimFailed(lane);
    if (claimed.status().code() != Status::Code::kUnavailable) {
      store_error_ = claimed.status().message();
      LOG_WARN("claiming %s jobs failed: %s", LaneName(lane).data(),
               claimed.status().message().c_str());
    }
    return;
  }
  uint64_t now_ns = uv_hrtime();
  int64_t now_ms = UnixMillis();
  // The book learns of the answer before the jobs go into the ring, so a
  // start that refills sees the lane's claim as answered.
  bool full = book_.ClaimAnswered(lane, static_cast<size_t>(asked), claimed->size());
  for (auto& sj : *claimed) {
    auto job = std::make_shared<JobRecord>();
    job->id = sj.id;
    job->row_id = sj.id;
    job->key = std::move(sj.key);
    job->group = std::move(sj.group);
    job->kind = std::move(sj.kind);
    job->lane = sj.lane;
    job->input = std::make_shared<const nlohmann::json>(std::move(sj.input));
    job->attempts = sj.attempts;  // attempts that started; MarkRunning counts this one
    job->max_attempts = sj.max_attempts;
    job->busy_retries = sj.busy_retries;
    job->preempted = sj.preempted;
    job->mark_first = sj.lost_unstarted > 0;
    job->lease_deadline = sent_ns + LeaseNs();
    job->lease_token = sj.lease_token;
    job->error = std::move(sj.error);
    job->submitted_unix_ms = sj.created_at_ms;
    int64_t age_ms = std::max<int64_t>(0, now_ms - sj.created_at_ms);
    job->submitted_at =
        now_ns - std::min<uint64_t>(now_ns, static_cast<uint64_t>(age_ms) * 1000000);
    TakeClaim(std::move(job));
  }
  claimed_jobs_ += claimed->size();
  if (claimed->empty()) ++claims_empty_;
  if (full) Refill();  // more may be due
}

void PgStore::RunAfterClaims() {
  if (after_claims_.empty()) return;
  if (!closed_ && (book_.claiming(Lane::kInteractive) || book_.claiming(Lane::kBackground))) return;
  auto run = std::exchange(after_claims_, {});
  for (auto& f : run) f();
}

void PgStore::AdoptOwnSubmit(const NewJob& spec, const InsertedJob& row, uint64_t sent_ns) {
  auto job = std::make_shared<JobRecord>();
  job->id = row.id;
  job->row_id = row.id;
  job->key = spec.key;
  job->group = spec.group;
  job->kind = spec.kind;
  job->lane = spec.lane;
  job->input =
      spec.input ? spec.input : std::make_shared<const nlohmann::json>(nlohmann::json::object());
  job->attempts = 0;  // MarkRunning counts the first attempt
  job->max_attempts = spec.max_attempts;
  job->lease_deadline = sent_ns + LeaseNs();
  job->lease_token = row.lease_token;
  job->submitted_at = uv_hrtime();
  job->submitted_unix_ms = UnixMillis();
  TakeClaim(std::move(job));
}

void PgStore::TakeClaim(JobPtr job) {
  book_.Hold(job);
  env_.jobs->Adopt(job);
  if (phase() != Phase::kRunning || !env_.dispatcher->Enqueue(job).ok()) {
    WriteRequeue(job, 0, /*refund=*/true, {});
    env_.jobs->MarkReleased(job);
    ForgetClaim(job);
  }
}

void PgStore::ForgetClaim(const JobPtr& job) {
  book_.Forget(job);
  env_.jobs->Drop(job);
}

void PgStore::ReleaseUnheld() {
  Status st = store_->ReleaseUnheld(book_.BeginRelease(), [this](Result<uint64_t> r) {
    if (!r.ok()) {
      book_.ReleaseFailed();  // the next Refill tries again
      return;
    }
    if (*r > 0) {
      LOG_NOTICE("%llu jobs claimed just before a connection dropped went back to the queue",
                 static_cast<unsigned long long>(*r));
      book_.MarkAllDue();
    }
  });
  if (!st.ok()) book_.ReleaseFailed();
}

// ---------------------------------------------------------------- upkeep

void PgStore::RenewLeases() {
  if (book_.held() == 0) return;
  writer_->RenewLeases(book_.Leases());
}

void PgStore::OnLeasesLost(std::vector<uint64_t> ids) {
  bool dropped_queued = false;
  for (uint64_t id : ids) {
    JobPtr job = book_.Find(id);
    if (!job) continue;
    ++leases_lost_;
    job->lease_lost = true;
    LOG_WARN(
        "job %s: this node's lease on it was lost (it expired and the job was recovered); "
        "stopping it here",
        job->key.c_str());
    if (job->state == JobState::kQueued) {
      SkipQueuedClaim(job);
      dropped_queued = true;
    } else {
      job->cancel->store(true, std::memory_order_relaxed);
      OllamaClient::WakeAll();  // the transfer aborts now, not at its next poll
      book_.Forget(job);        // its outcome is dropped on return
    }
  }
  // Their places in the lanes go, so the models' room is claimed again.
  if (dropped_queued) env_.dispatcher->Sweep();
}

void PgStore::OnLeasesRenewed(const std::vector<LeaseRef>& renewed, uint64_t sent_ns) {
  bool kick = false;
  for (const auto& l : renewed) {
    JobPtr job = book_.Find(l.id);
    if (!job || job->lease_token != l.token) continue;
    job->lease_deadline = std::max(job->lease_deadline, sent_ns + LeaseNs());
    if (l.started_ms > 0 && job->mark == JobRecord::Mark::kSent) {
      job->mark = JobRecord::Mark::kRecorded;
      // A job whose start had to be recorded first may start now.
      if (job->mark_first && job->state == JobState::kQueued) kick = true;
    }
  }
  if (kick) env_.dispatcher->Kick();
}

void PgStore::DropExpiredClaim(const JobPtr& job) {
  ++expired_unstarted_;
  LOG_WARN(
      "job %s: not started: this node's lease on it ran out while it waited (the node was "
      "paused or starved for %d s); lease recovery hands it to a node that can run it",
      job->key.c_str(), config().postgres.lease_s);
  job->lease_lost = true;
  SkipQueuedClaim(job);
}

void PgStore::SkipQueuedClaim(const JobPtr& job) {
  env_.jobs->MarkReleased(job);
  job->state =
      JobState::kCancelled;  // after MarkReleased (it sets queued): the dispatcher skips it
  ForgetClaim(job);
}

void PgStore::Recover(bool startup) {
  if (!migrated_ || recovering_ || closed_) return;
  Status st = store_->RecoverExpired(startup, [this, startup](Result<RecoverCounts> r) {
    recovering_ = false;
    if (!r.ok()) {
      if (r.status().code() != Status::Code::kUnavailable) {
        store_error_ = r.status().message();
        LOG_WARN("lease recovery failed: %s", r.status().message().c_str());
      }
      return;
    }
    recovered_ += r->requeued;
    crash_failed_ += r->failed_keys.size();
    // Every group's waiting parts: heals a release lost with a crash
    // between a commit and its release, and follows jobs failed here.
    QueueRelease("");
    if (r->requeued > 0 || !r->failed_keys.empty()) {
      LOG_NOTICE("%s: %llu jobs back in the queue, %zu failed after using up their attempts%s",
                 startup ? "jobs this node held before it restarted" : "expired leases",
                 static_cast<unsigned long long>(r->requeued), r->failed_keys.size(),
                 r->failed_keys.empty() ? "" : " (their workers crashed or hung each time)");
    }
    if (r->requeued > 0) {
      book_.MarkAllDue();  // they wait in the table now
      Refill();
    }
  });
  if (st.ok()) recovering_ = true;
}

void PgStore::RunRetention() {
  if (!migrated_ || retention_running_ || closed_ || config().postgres.retention_s <= 0) return;
  int limit = config().postgres.retention_batch;
  Status st = store_->DeleteFinishedOlderThan(
      config().postgres.retention_s, limit, [this, limit](Result<uint64_t> r) {
        retention_running_ = false;
        if (!r.ok()) {
          LOG_WARN("retention delete failed: %s", r.status().message().c_str());
          return;
        }
        retention_deleted_ += *r;
        // Small batches, one after another: short transactions, no bloat.
        if (*r >= static_cast<uint64_t>(limit) && phase() == Phase::kRunning) RunRetention();
      });
  if (st.ok()) retention_running_ = true;
}

void PgStore::RefreshBacklog() {
  if (!migrated_ || backlog_pending_ || closed_) return;
  Status st = store_->BacklogCounts([this](Result<Backlog> r) {
    backlog_pending_ = false;
    if (!r.ok()) return;
    backlog_ = *r;
    backlog_unix_ms_ = UnixMillis();
  });
  if (st.ok()) backlog_pending_ = true;
}

}  // namespace digestd
