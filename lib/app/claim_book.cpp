#include "app/claim_book.h"

namespace digestd {

bool ClaimBook::WantsClaim(Lane lane, bool poll) const {
  int l = Index(lane);
  if (claiming_[l]) return false;
  return poll || !dry_[l];
}

void ClaimBook::ClaimSent(Lane lane) {
  int l = Index(lane);
  claiming_[l] = true;
  due_while_claiming_[l] = false;
}

bool ClaimBook::ClaimAnswered(Lane lane, size_t asked, size_t got) {
  int l = Index(lane);
  claiming_[l] = false;
  bool again = got >= asked || due_while_claiming_[l];
  due_while_claiming_[l] = false;
  dry_[l] = !again;
  return again;
}

void ClaimBook::MarkDue(Lane lane) {
  int l = Index(lane);
  dry_[l] = false;
  if (claiming_[l]) due_while_claiming_[l] = true;
}

void ClaimBook::ClaimFailed(Lane lane) {
  int l = Index(lane);
  claiming_[l] = false;
  if (due_while_claiming_[l]) dry_[l] = false;
  due_while_claiming_[l] = false;
}

void ClaimBook::MarkAllDue() {
  for (Lane lane : {Lane::kInteractive, Lane::kBackground}) MarkDue(lane);
}

bool ClaimBook::TrySelfClaim(Lane lane, size_t ring_depth, size_t ring_capacity) {
  int l = Index(lane);
  if (dry_[l] && ring_depth + self_claims_[l] < ring_capacity) {
    ++self_claims_[l];
    return true;
  }
  dry_[l] = false;
  return false;
}

void ClaimBook::SelfClaimAnswered(Lane lane, bool outcome_unknown) {
  int l = Index(lane);
  if (self_claims_[l] > 0) --self_claims_[l];
  if (outcome_unknown) release_pending_ = true;
}

void ClaimBook::Hold(JobPtr job) {
  uint64_t id = job->row_id;
  held_[id] = std::move(job);
}

void ClaimBook::Forget(const JobPtr& job) {
  auto it = held_.find(job->row_id);
  if (it != held_.end() && it->second == job) held_.erase(it);
}

JobPtr ClaimBook::Find(uint64_t row_id) const {
  auto it = held_.find(row_id);
  return it == held_.end() ? nullptr : it->second;
}

std::vector<LeaseRef> ClaimBook::Leases() const {
  std::vector<LeaseRef> leases;
  leases.reserve(held_.size());
  for (const auto& [id, job] : held_) leases.push_back(LeaseRef{id, job->lease_token});
  return leases;
}

void ClaimBook::Unsettle(uint64_t row_id, int64_t token) {
  unsettled_[row_id] = token;
}

void ClaimBook::Settle(uint64_t row_id, int64_t token) {
  auto it = unsettled_.find(row_id);
  if (it != unsettled_.end() && it->second == token) unsettled_.erase(it);
}

void ClaimBook::SessionLost() {
  for (bool& c : claiming_) c = false;
  release_pending_ = true;
}

bool ClaimBook::ReleaseSafe() const {
  if (!release_pending_) return false;
  for (int l = 0; l < kLaneCount; ++l) {
    if (claiming_[l] || self_claims_[l] > 0) return false;
  }
  return true;
}

std::vector<int64_t> ClaimBook::BeginRelease() {
  release_pending_ = false;
  std::vector<int64_t> tokens;
  tokens.reserve(held_.size() + unsettled_.size());
  for (const auto& [id, job] : held_) tokens.push_back(job->lease_token);
  for (const auto& [id, token] : unsettled_) tokens.push_back(token);
  return tokens;
}

}  // namespace digestd
