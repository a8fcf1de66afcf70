// The claim/lease bookkeeping's safety rules (app/claim_book.h), one test
// per rule: each fails when its condition is removed from ClaimBook.
#include "app/claim_book.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace digestd {
namespace {

constexpr Lane kI = Lane::kInteractive;
constexpr Lane kB = Lane::kBackground;

JobPtr Job(uint64_t row_id, int64_t token) {
  auto job = std::make_shared<JobRecord>();
  job->row_id = row_id;
  job->lease_token = token;
  return job;
}

bool Has(const std::vector<int64_t>& v, int64_t x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

// Rule 1.
TEST(ClaimBook, ADryLaneIsClaimedFromOnlyByThePoll) {
  ClaimBook book;
  EXPECT_TRUE(book.WantsClaim(kB, /*poll=*/false));
  book.ClaimSent(kB);
  EXPECT_FALSE(book.WantsClaim(kB, false)) << "a second claim while one is in flight";
  EXPECT_FALSE(book.WantsClaim(kB, true)) << "not even the poll sends a second";
  EXPECT_FALSE(book.ClaimAnswered(kB, /*asked=*/50, /*got=*/3));
  EXPECT_TRUE(book.dry(kB));
  EXPECT_FALSE(book.WantsClaim(kB, false)) << "a dry lane is claimed from at a job start";
  EXPECT_TRUE(book.WantsClaim(kB, true));
  EXPECT_TRUE(book.WantsClaim(kI, false)) << "the other lane is not dry";
}

TEST(ClaimBook, AFullClaimAsksForMoreAndLeavesTheLaneDue) {
  ClaimBook book;
  book.ClaimSent(kI);
  EXPECT_TRUE(book.ClaimAnswered(kI, 50, 50));
  EXPECT_FALSE(book.dry(kI));
  EXPECT_TRUE(book.WantsClaim(kI, false));
}

TEST(ClaimBook, WhateverMayPutADueRowInTheTableMakesTheLaneDueAgain) {
  ClaimBook book;
  book.ClaimSent(kB);
  book.ClaimAnswered(kB, 50, 0);
  book.ClaimSent(kI);
  book.ClaimAnswered(kI, 50, 0);
  book.MarkDue(kB);  // a requeue with no delay
  EXPECT_TRUE(book.WantsClaim(kB, false));
  EXPECT_FALSE(book.WantsClaim(kI, false));
  book.MarkAllDue();  // a recovery
  EXPECT_TRUE(book.WantsClaim(kI, false));
}

TEST(ClaimBook, ARowMarkedDueWhileAClaimIsInFlightKeepsTheLaneDue) {
  ClaimBook book;
  book.ClaimSent(kI);
  book.MarkDue(kI);  // a submit committed after the claim was planned
  EXPECT_TRUE(book.ClaimAnswered(kI, 50, 0)) << "the claim may not have seen that row";
  EXPECT_FALSE(book.dry(kI));
  EXPECT_TRUE(book.WantsClaim(kI, false));
  // The next claim saw it: an empty answer now leaves the lane dry.
  book.ClaimSent(kI);
  EXPECT_FALSE(book.ClaimAnswered(kI, 50, 0));
  EXPECT_TRUE(book.dry(kI));
  // The same when the claim in flight fails.
  book.ClaimSent(kB);
  book.MarkAllDue();
  book.ClaimFailed(kB);
  EXPECT_TRUE(book.WantsClaim(kB, false));
}

TEST(ClaimBook, AFailedClaimIsNoLongerInFlight) {
  ClaimBook book;
  book.ClaimSent(kB);
  book.ClaimFailed(kB);
  EXPECT_TRUE(book.WantsClaim(kB, false));
}

// Rule 2.
TEST(ClaimBook, ASubmitIsSelfClaimedOnlyWhileItsLaneIsDry) {
  ClaimBook book;
  EXPECT_FALSE(book.TrySelfClaim(kB, 0, 10)) << "the table may hold due jobs it would jump";
  book.ClaimSent(kB);
  book.ClaimAnswered(kB, 50, 0);
  EXPECT_TRUE(book.TrySelfClaim(kB, 0, 10));
  EXPECT_EQ(book.self_claims(kB), 1u);
  EXPECT_FALSE(book.TrySelfClaim(kI, 0, 10)) << "the other lane is not dry";
}

TEST(ClaimBook, SelfClaimsInFlightCountAgainstTheRing) {
  ClaimBook book;
  book.ClaimSent(kB);
  book.ClaimAnswered(kB, 50, 0);
  // Ring of 4 with 2 queued: room for two claiming submits, not three.
  EXPECT_TRUE(book.TrySelfClaim(kB, 2, 4));
  EXPECT_TRUE(book.TrySelfClaim(kB, 2, 4));
  EXPECT_FALSE(book.TrySelfClaim(kB, 2, 4));
  EXPECT_EQ(book.self_claims(kB), 2u);
}

TEST(ClaimBook, ASubmitThatWaitsInTheTableMakesItsLaneDue) {
  ClaimBook book;
  book.ClaimSent(kB);
  book.ClaimAnswered(kB, 50, 0);
  EXPECT_FALSE(book.TrySelfClaim(kB, 10, 10));  // ring full: it waits in the table
  EXPECT_FALSE(book.dry(kB));
  EXPECT_TRUE(book.WantsClaim(kB, false));
}

// Rule 3.
TEST(ClaimBook, ReleaseWaitsForEveryClaimInFlight) {
  ClaimBook book;
  book.ClaimSent(kI);
  book.NeedRelease();
  EXPECT_FALSE(book.ReleaseSafe()) << "a claim in flight may commit a token not yet held";
  book.ClaimAnswered(kI, 10, 10);
  EXPECT_TRUE(book.ReleaseSafe());
  book.ClaimSent(kB);
  EXPECT_FALSE(book.ReleaseSafe());
  book.ClaimFailed(kB);
  EXPECT_TRUE(book.ReleaseSafe());
}

TEST(ClaimBook, ReleaseWaitsForEveryClaimingSubmitInFlight) {
  ClaimBook book;
  book.ClaimSent(kB);
  book.ClaimAnswered(kB, 50, 0);
  ASSERT_TRUE(book.TrySelfClaim(kB, 0, 10));
  book.NeedRelease();
  EXPECT_FALSE(book.ReleaseSafe()) << "a claiming insert in flight may commit a token";
  book.SelfClaimAnswered(kB, /*outcome_unknown=*/false);
  EXPECT_TRUE(book.ReleaseSafe());
}

TEST(ClaimBook, ASelfClaimWhoseAnswerWasLostNeedsARelease) {
  ClaimBook book;
  book.ClaimSent(kI);
  book.ClaimAnswered(kI, 50, 0);
  ASSERT_TRUE(book.TrySelfClaim(kI, 0, 10));
  EXPECT_FALSE(book.release_pending());
  book.SelfClaimAnswered(kI, /*outcome_unknown=*/true);
  EXPECT_TRUE(book.release_pending());
  EXPECT_TRUE(book.ReleaseSafe());
}

TEST(ClaimBook, ALostSessionEndsItsClaimsAndAsksForARelease) {
  ClaimBook book;
  book.ClaimSent(kI);
  book.ClaimSent(kB);
  book.SessionLost();
  EXPECT_FALSE(book.claiming(kI));
  EXPECT_FALSE(book.claiming(kB));
  EXPECT_TRUE(book.ReleaseSafe());
}

TEST(ClaimBook, NoReleaseUnlessOneIsPending) {
  ClaimBook book;
  EXPECT_FALSE(book.ReleaseSafe());
  book.NeedRelease();
  ASSERT_TRUE(book.ReleaseSafe());
  book.BeginRelease();
  EXPECT_FALSE(book.ReleaseSafe()) << "BeginRelease clears the pending release";
  book.ReleaseFailed();
  EXPECT_TRUE(book.ReleaseSafe());
}

// Rule 4.
TEST(ClaimBook, TheReleaseKeepsHeldJobsAndUnsettledRows) {
  ClaimBook book;
  book.Hold(Job(1, 101));
  book.Hold(Job(2, 102));
  book.Unsettle(3, 103);  // its finish row waits in the write ring
  book.NeedRelease();
  auto tokens = book.BeginRelease();
  EXPECT_EQ(tokens.size(), 3u);
  EXPECT_TRUE(Has(tokens, 101));
  EXPECT_TRUE(Has(tokens, 102));
  EXPECT_TRUE(Has(tokens, 103)) << "an unsettled row is still this node's";
}

TEST(ClaimBook, LeasesToRenewAreTheHeldJobs) {
  ClaimBook book;
  book.Hold(Job(7, 70));
  book.Hold(Job(8, 80));
  auto leases = book.Leases();
  ASSERT_EQ(leases.size(), 2u);
  int64_t sum = 0;
  for (const auto& l : leases) sum += l.token + static_cast<int64_t>(l.id);
  EXPECT_EQ(sum, 70 + 7 + 80 + 8);
}

// Rule 5.
TEST(ClaimBook, ASettleForAnOldLeaseLeavesTheNewOne) {
  ClaimBook book;
  book.Unsettle(5, 50);
  book.Unsettle(5, 51);  // the row was claimed again and finished again
  book.Settle(5, 50);    // the old row's late answer
  EXPECT_EQ(book.unsettled(), 1u);
  book.NeedRelease();
  EXPECT_TRUE(Has(book.BeginRelease(), 51));
  book.Settle(5, 51);
  EXPECT_EQ(book.unsettled(), 0u);
}

TEST(ClaimBook, ForgettingAStaleRecordLeavesTheHeldOne) {
  ClaimBook book;
  JobPtr old_claim = Job(9, 90);
  JobPtr new_claim = Job(9, 91);
  book.Hold(old_claim);
  book.Hold(new_claim);  // claimed again under a new lease
  book.Forget(old_claim);
  EXPECT_EQ(book.Find(9), new_claim);
  book.Forget(new_claim);
  EXPECT_EQ(book.Find(9), nullptr);
  EXPECT_EQ(book.held(), 0u);
}

}  // namespace
}  // namespace digestd
