#include "backend/circuit_breaker.h"

#include <gtest/gtest.h>

namespace digestd {
namespace {

using namespace std::chrono_literals;
using State = CircuitBreaker::State;

class CircuitBreakerTest : public ::testing::Test {
 protected:
  CircuitBreaker::Clock::time_point now_{std::chrono::hours(1)};
  CircuitBreaker breaker_{{3, 10s}, [this] { return now_; }};
};

TEST_F(CircuitBreakerTest, StartsClosedAndAllowsRequests) {
  EXPECT_EQ(breaker_.state(), State::kClosed);
  EXPECT_TRUE(breaker_.AllowRequest());
  EXPECT_FALSE(breaker_.TryStartProbe());
  EXPECT_EQ(breaker_.ToJson()["state"], "closed");
}

TEST_F(CircuitBreakerTest, OpensAfterKConsecutiveRetryableFailures) {
  breaker_.RecordFailure("refused");
  breaker_.RecordFailure("refused");
  EXPECT_TRUE(breaker_.AllowRequest());
  breaker_.RecordFailure("connection refused");
  EXPECT_EQ(breaker_.state(), State::kOpen);
  EXPECT_FALSE(breaker_.AllowRequest());
  EXPECT_EQ(breaker_.reason(), "connection refused");
  EXPECT_EQ(breaker_.probe_at(), now_ + 10s);
  EXPECT_EQ(breaker_.times_opened(), 1u);
  nlohmann::json j = breaker_.ToJson();
  EXPECT_EQ(j["state"], "open");
  EXPECT_EQ(j["reason"], "connection refused");
  EXPECT_EQ(j["probe_in_ms"], 10000);
}

TEST_F(CircuitBreakerTest, ASuccessBreaksTheRun) {
  breaker_.RecordFailure("a");
  breaker_.RecordFailure("b");
  breaker_.RecordSuccess();
  breaker_.RecordFailure("c");
  breaker_.RecordFailure("d");
  EXPECT_EQ(breaker_.state(), State::kClosed);
  EXPECT_EQ(breaker_.consecutive_failures(), 2);
}

TEST_F(CircuitBreakerTest, ProbesExactlyOnceWhenTheOpenTimeIsUp) {
  for (int i = 0; i < 3; ++i) breaker_.RecordFailure("down");
  now_ += 9s;
  EXPECT_FALSE(breaker_.TryStartProbe());
  EXPECT_EQ(breaker_.ToJson()["probe_in_ms"], 1000);
  now_ += 1s;
  EXPECT_TRUE(breaker_.TryStartProbe());
  EXPECT_EQ(breaker_.state(), State::kHalfOpen);
  EXPECT_FALSE(breaker_.AllowRequest());
  EXPECT_FALSE(breaker_.TryStartProbe());  // only one probe at a time
  now_ += 100s;
  EXPECT_FALSE(breaker_.TryStartProbe());
}

TEST_F(CircuitBreakerTest, SuccessfulProbeCloses) {
  for (int i = 0; i < 3; ++i) breaker_.RecordFailure("down");
  now_ += 10s;
  ASSERT_TRUE(breaker_.TryStartProbe());
  breaker_.OnProbeResult(true, "");
  EXPECT_EQ(breaker_.state(), State::kClosed);
  EXPECT_TRUE(breaker_.AllowRequest());
  EXPECT_EQ(breaker_.consecutive_failures(), 0);
  EXPECT_TRUE(breaker_.reason().empty());
}

TEST_F(CircuitBreakerTest, FailedProbeReopensForAnotherPeriod) {
  for (int i = 0; i < 3; ++i) breaker_.RecordFailure("down");
  now_ += 10s;
  ASSERT_TRUE(breaker_.TryStartProbe());
  breaker_.OnProbeResult(false, "still refused");
  EXPECT_EQ(breaker_.state(), State::kOpen);
  EXPECT_EQ(breaker_.reason(), "still refused");
  EXPECT_EQ(breaker_.probe_at(), now_ + 10s);
  EXPECT_EQ(breaker_.times_opened(), 2u);
  EXPECT_FALSE(breaker_.TryStartProbe());
  now_ += 10s;
  EXPECT_TRUE(breaker_.TryStartProbe());
}

TEST_F(CircuitBreakerTest, LateFailuresWhileOpenDoNotPushTheProbeOut) {
  for (int i = 0; i < 3; ++i) breaker_.RecordFailure("down");
  auto probe_at = breaker_.probe_at();
  now_ += 5s;
  breaker_.RecordFailure("late");
  EXPECT_EQ(breaker_.probe_at(), probe_at);
  EXPECT_EQ(breaker_.reason(), "late");
  EXPECT_EQ(breaker_.times_opened(), 1u);
}

// A request in flight before the breaker opened that succeeds late says
// nothing about the server since: it used to close the breaker within
// milliseconds of opening, without a probe.
TEST_F(CircuitBreakerTest, ASuccessStartedBeforeItOpenedDoesNotCloseIt) {
  uint64_t before = breaker_.epoch();
  for (int i = 0; i < 3; ++i) breaker_.RecordFailure("down");
  ASSERT_EQ(breaker_.state(), State::kOpen);
  breaker_.RecordSuccess(before);
  EXPECT_EQ(breaker_.state(), State::kOpen);
  EXPECT_EQ(breaker_.reason(), "down");
  now_ += 10s;
  ASSERT_TRUE(breaker_.TryStartProbe());
  breaker_.RecordSuccess(before);  // still late, now while the probe runs
  EXPECT_EQ(breaker_.state(), State::kHalfOpen);
  breaker_.OnProbeResult(false, "probe timed out");
  EXPECT_EQ(breaker_.state(), State::kOpen);
  EXPECT_EQ(breaker_.times_opened(), 2u);
  // After a failed probe a request from the first period is older still.
  breaker_.RecordSuccess(before);
  EXPECT_EQ(breaker_.state(), State::kOpen);
}

TEST_F(CircuitBreakerTest, ASuccessStartedInTheCurrentPeriodClosesIt) {
  for (int i = 0; i < 3; ++i) breaker_.RecordFailure("down");
  uint64_t since = breaker_.epoch();  // e.g. the probe, started after it opened
  now_ += 10s;
  ASSERT_TRUE(breaker_.TryStartProbe());
  breaker_.RecordSuccess(since);
  EXPECT_EQ(breaker_.state(), State::kClosed);
  breaker_.OnProbeResult(false, "probe timed out");  // no probe outstanding now
  EXPECT_EQ(breaker_.state(), State::kClosed);
}

TEST_F(CircuitBreakerTest, NewOptionsApplyToTheNextOpening) {
  breaker_.SetOptions({1, 2s});
  breaker_.RecordFailure("x");
  EXPECT_EQ(breaker_.state(), State::kOpen);
  EXPECT_EQ(breaker_.probe_at(), now_ + 2s);
}

TEST(CircuitBreaker, ThresholdBelowOneActsAsOne) {
  CircuitBreaker b({0, std::chrono::seconds(1)});
  b.RecordFailure("x");
  EXPECT_EQ(b.state(), CircuitBreaker::State::kOpen);
  EXPECT_EQ(BreakerStateName(CircuitBreaker::State::kHalfOpen), "half-open");
}

}  // namespace
}  // namespace digestd
