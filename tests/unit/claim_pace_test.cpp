// ClaimPace: claim sizes follow the lane's start rate, within the bounds.
#include "dispatch/claim_pace.h"

#include <gtest/gtest.h>

namespace digestd {
namespace {

// Starts `per_window` jobs in each of `windows` windows of kWindowMs.
uint64_t StartJobs(ClaimPace& pace, uint64_t now, int windows, int per_window) {
  pace.Measure(now);
  for (int w = 0; w < windows; ++w) {
    for (int i = 0; i < per_window; ++i) pace.Started();
    now += ClaimPace::kWindowMs;
    pace.Measure(now);
  }
  return now;
}

TEST(ClaimPace, BeforeAnyJobStartedClaimsTheLowWater) {
  ClaimPace pace;
  ClaimSize s = pace.Size(200, 50);
  EXPECT_EQ(s.batch, 50u);
  EXPECT_EQ(s.low_water, 50u);
}

TEST(ClaimPace, SlowJobsAreClaimedAtTheLowWater) {
  ClaimPace pace;
  StartJobs(pace, 1000, 8, 4);  // 16 jobs/s: LLM calls on 16 slots
  EXPECT_NEAR(pace.rate(), 16.0, 0.5);
  ClaimSize s = pace.Size(200, 50);
  EXPECT_EQ(s.batch, 50u);
  EXPECT_EQ(s.low_water, 50u);
}

TEST(ClaimPace, FastJobsAreClaimedAQuarterSecondAheadUpToClaimBatch) {
  ClaimPace pace;
  StartJobs(pace, 1000, 8, 100);  // 400 jobs/s: 100 ahead, refill at 50
  EXPECT_NEAR(pace.rate(), 400.0, 5);
  ClaimSize s = pace.Size(200, 20);
  EXPECT_NEAR(static_cast<double>(s.batch), 100.0, 2);
  EXPECT_NEAR(static_cast<double>(s.low_water), 50.0, 1);

  StartJobs(pace, 10000, 8, 5000);  // 20,000 jobs/s: claim_batch bounds it
  s = pace.Size(200, 20);
  EXPECT_EQ(s.batch, 200u);
  EXPECT_EQ(s.low_water, 200u);
}

TEST(ClaimPace, AnIdleStretchResetsTheRate) {
  ClaimPace pace;
  uint64_t now = StartJobs(pace, 1000, 8, 5000);
  now += 60000;  // a minute without work, then a slow trickle
  pace.Started();
  pace.Measure(now);
  EXPECT_LT(pace.rate(), 1.0);
  EXPECT_EQ(pace.Size(200, 50).batch, 50u);
}

TEST(ClaimPace, BoundsHoldForOddSettings) {
  ClaimPace pace;
  StartJobs(pace, 1000, 8, 5000);
  EXPECT_EQ(pace.Size(10, 50).batch, 10u);  // low water above claim_batch
  EXPECT_EQ(pace.Size(1, 0).batch, 1u);
  ClaimPace idle;
  EXPECT_EQ(idle.Size(200, 0).batch, 1u);  // never a claim of 0
}

}  // namespace
}  // namespace digestd
