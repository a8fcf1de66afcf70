// ClaimBook: which jobs this node holds a lease on, and when it may claim,
// self-claim or release -- the bookkeeping of the PostgreSQL store, with no
// I/O, so that its safety rules are unit tests (tests/unit/claim_book_test.cpp)
// and not only comments. docs/architecture.md ("Leases") tells the protocol
// these rules serve.
//
// What it tracks, per lane: a claim in flight; whether the lane is "dry" (its
// last claim found fewer due jobs than it asked for, so the table holds
// nothing due there until a row lands); claiming submits in flight. For the
// node: every held job by row id (claimed and not yet finished, requeued or
// released), and rows whose finish or requeue is queued in the writer but not
// yet committed ("unsettled": still this node's until the row lands).
//
// The rules:
//   1. A lane that is dry is not claimed from except by the periodic poll:
//      an empty claim costs a planned query. Anything that may put a due row
//      in the table (a submit not self-claimed, a requeue with no delay, a
//      recovery, a release) marks the lane due again.
//   2. A submit may be inserted already claimed by this node (no claim round
//      trip) only while its lane is dry -- it then jumps no queued job -- and
//      only while the lane's ring has room for it beside the other claiming
//      submits in flight (each will be put in the ring when its insert
//      commits).
//   3. After a lost connection, jobs running in the table under this node's
//      name but held by nobody here (a claim or claiming insert committed
//      while its answer was lost) must be released. That release names the
//      tokens this node holds: so it may be sent only while no claim and no
//      claiming submit is in flight -- one of those could commit a token not
//      yet in the book and be released under a running job's feet.
//   4. The tokens held are the held jobs' and the unsettled rows'.
//   5. A settle (or forget) acts only on the exact lease it names: a row id
//      claimed again (new token, new record) is not touched by the late
//      answer for the old lease.
//
// Loop thread only. Holds JobPtr references to jobs it tracks; owns nothing
// else.
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "jobs/job.h"
#include "store/job_store.h"

namespace digestd {

class ClaimBook {
 public:
  // ---- claims (rule 1)

  // Whether a claim for `lane` should be sent now: none is in flight and the
  // lane is not dry (`poll`: the periodic look, which also tries dry lanes).
  bool WantsClaim(Lane lane, bool poll) const;
  void ClaimSent(Lane lane);
  // The claim came back with `got` of `asked` jobs. Returns true when another
  // claim should follow: it was full (more may be due), or a row was marked
  // due while it was in flight (its snapshot may predate that row).
  bool ClaimAnswered(Lane lane, size_t asked, size_t got);
  // The claim failed (its jobs, if any committed, are found by rule 3).
  void ClaimFailed(Lane lane);
  bool claiming(Lane lane) const { return claiming_[Index(lane)]; }
  bool dry(Lane lane) const { return dry_[Index(lane)]; }
  // A due row may be in the table for `lane` now (or in any lane).
  // A claim in flight may have been planned before that row committed: the
  // lane stays due when it answers.
  void MarkDue(Lane lane);
  void MarkAllDue();

  // ---- claiming submits (rule 2)

  // Whether a submit to `lane` is inserted already claimed, given the ring's
  // depth and capacity. When true it is counted in flight until
  // SelfClaimAnswered; when false the lane is marked due (the row will wait
  // in the table).
  bool TrySelfClaim(Lane lane, size_t ring_depth, size_t ring_capacity);
  // Its insert answered. `outcome_unknown`: the answer was lost with the
  // connection, so the row may have committed claimed by this node and held
  // by nobody: a release is needed (rule 3).
  void SelfClaimAnswered(Lane lane, bool outcome_unknown);
  size_t self_claims(Lane lane) const { return self_claims_[Index(lane)]; }

  // ---- held jobs (rules 4, 5)

  void Hold(JobPtr job);  // by job->row_id
  // Stops tracking `job` if it is the record held under its row id.
  void Forget(const JobPtr& job);
  // The held record for `row_id`, or null.
  JobPtr Find(uint64_t row_id) const;
  size_t held() const { return held_.size(); }
  // The leases to renew: every held job.
  std::vector<LeaseRef> Leases() const;
  // A finish or requeue row for (row_id, token) is queued: the lease stays
  // this node's until Settle.
  void Unsettle(uint64_t row_id, int64_t token);
  void Settle(uint64_t row_id, int64_t token);
  size_t unsettled() const { return unsettled_.size(); }

  // ---- releasing unheld claims (rule 3)

  // The claims session was lost: claims in flight answered Unavailable (and
  // may have committed), so a release is due.
  void SessionLost();
  void NeedRelease() { release_pending_ = true; }
  bool release_pending() const { return release_pending_; }
  // Whether the release may be sent now: it is pending and nothing that
  // could commit an unknown token is in flight.
  bool ReleaseSafe() const;
  // Call only when ReleaseSafe(): clears the pending flag and returns the
  // tokens this node holds (rule 4), for JobStore::ReleaseUnheld.
  std::vector<int64_t> BeginRelease();
  // The release failed: it is pending again.
  void ReleaseFailed() { release_pending_ = true; }

 private:
  static int Index(Lane lane) { return static_cast<int>(lane); }

  bool claiming_[kLaneCount] = {false, false};
  bool dry_[kLaneCount] = {false, false};
  bool due_while_claiming_[kLaneCount] = {false, false};
  size_t self_claims_[kLaneCount] = {0, 0};
  bool release_pending_ = false;
  std::unordered_map<uint64_t, JobPtr> held_;
  std::unordered_map<uint64_t, int64_t> unsettled_;
};

}  // namespace digestd
