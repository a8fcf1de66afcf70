// BackendHealth fed with the backend's own call classes (CallStatus), on a
// real uv loop. The breaker opens on the K-th retryable failure in a row;
// fatal answers prove the server up; busy answers and cancellations never
// count toward it. The probe timer is armed when it opens and closed with
// the object, before it could fire.
#include "backend/backend_health.h"

#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "jobs/llm_job.h"

namespace digestd {
namespace {

CallStatus Call(CallClass cls, std::string error = "", int64_t elapsed_ms = 0) {
  CallStatus c;
  c.cls = cls;
  c.error = std::move(error);
  c.elapsed = std::chrono::milliseconds(elapsed_ms);
  return c;
}

class BackendHealthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(uv_loop_init(&loop_), 0);
    Config::Backend b;
    b.breaker_failures = 3;
    b.breaker_open_s = 60;
    health_ = std::make_unique<BackendHealth>(&loop_, b, [this] { ++open_changes_; });
  }
  void TearDown() override {
    health_->Close();
    health_.reset();
    uv_run(&loop_, UV_RUN_DEFAULT);  // close callbacks
    EXPECT_EQ(uv_loop_close(&loop_), 0) << "a handle was leaked";
  }
  // One attempt, as the daemon reports it: OnStart, then its end.
  void Attempt(const CallStatus& call) {
    health_->OnStart();
    health_->OnOutcome(call);
  }

  uv_loop_t loop_{};
  std::unique_ptr<BackendHealth> health_;
  int open_changes_ = 0;
};

TEST_F(BackendHealthTest, RetryableFailuresInARowOpenTheBreaker) {
  Attempt(Call(CallClass::kRetryable, "connection refused"));
  Attempt(Call(CallClass::kRetryable, "connection refused"));
  EXPECT_TRUE(health_->AllowRequest());
  Attempt(Call(CallClass::kRetryable, "connection refused"));
  EXPECT_FALSE(health_->AllowRequest());
  nlohmann::json j = health_->ToJson();
  EXPECT_EQ(j["state"], "open") << j.dump();
  EXPECT_EQ(j["failures"], 3) << j.dump();
  EXPECT_EQ(j["requests"], 3) << j.dump();
  EXPECT_EQ(j["in_flight"], 0) << j.dump();
  EXPECT_NE(j["breaker"]["reason"].get<std::string>().find("connection refused"), std::string::npos)
      << j.dump();
}

TEST_F(BackendHealthTest, AFatalAnswerProvesTheServerUp) {
  Attempt(Call(CallClass::kRetryable, "timeout"));
  Attempt(Call(CallClass::kRetryable, "timeout"));
  Attempt(Call(CallClass::kFatal, "HTTP 404: model not found"));  // the run starts over
  Attempt(Call(CallClass::kRetryable, "timeout"));
  Attempt(Call(CallClass::kRetryable, "timeout"));
  EXPECT_TRUE(health_->AllowRequest());
  Attempt(Call(CallClass::kOk));
  Attempt(Call(CallClass::kRetryable, "timeout"));
  Attempt(Call(CallClass::kRetryable, "timeout"));
  EXPECT_TRUE(health_->AllowRequest());
}

TEST_F(BackendHealthTest, BusyAndCancelledNeverOpenIt) {
  for (int i = 0; i < 10; ++i) Attempt(Call(CallClass::kBusy, "HTTP 503"));
  for (int i = 0; i < 10; ++i) Attempt(Call(CallClass::kCancelled, "cancelled"));
  nlohmann::json j = health_->ToJson();
  EXPECT_EQ(j["state"], "closed") << j.dump();
  EXPECT_EQ(j["busy"], 10) << j.dump();
  EXPECT_EQ(j["failures"], 0) << j.dump();
  EXPECT_EQ(open_changes_, 0);
}

// Busy answers hold dispatch back: no new backend request until a jittered
// delay that doubles with every busy answer in a row has passed; the end of
// the hold kicks dispatch (on_open_change); an answer ends the streak.
TEST_F(BackendHealthTest, BusyAnswersHoldDispatchBackLongerEachTimeInARow) {
  Config::Backend b;
  b.backoff_base_ms = 1;
  b.backoff_max_ms = 40;
  health_->SetConfig(b);
  Attempt(Call(CallClass::kBusy, "HTTP 503"));
  EXPECT_FALSE(health_->AllowRequest()) << "a busy answer fed dispatch at once";
  uv_run(&loop_, UV_RUN_DEFAULT);  // the hold's timer fires, then nothing is left
  EXPECT_TRUE(health_->AllowRequest());
  EXPECT_EQ(open_changes_, 1) << "the end of the hold did not kick dispatch";
  for (int i = 0; i < 3; ++i) Attempt(Call(CallClass::kBusy, "HTTP 429"));
  nlohmann::json j = health_->ToJson();
  EXPECT_EQ(j["busy_streak"], 4) << j.dump();
  EXPECT_LE(j["busy_hold_ms"].get<int64_t>(), 40) << j.dump();
  EXPECT_FALSE(health_->AllowRequest());
  Attempt(Call(CallClass::kOk));
  EXPECT_EQ(health_->ToJson()["busy_streak"], 0);
  uv_run(&loop_, UV_RUN_DEFAULT);
  EXPECT_TRUE(health_->AllowRequest());
}

TEST_F(BackendHealthTest, ElapsedTimeIsALatencySample) {
  Attempt(Call(CallClass::kOk, "", 40));
  Attempt(Call(CallClass::kOk, "", 0));  // unknown: not a sample
  EXPECT_EQ(health_->ToJson()["latency"]["count"], 1);
}

// A job's WorkOutcome reaches it through CallStatusOf (jobs/llm_job.h), the
// inverse of OutcomeOf.
TEST_F(BackendHealthTest, JobOutcomesConvertToTheirCallClass) {
  for (CallClass cls : {CallClass::kOk, CallClass::kBusy, CallClass::kRetryable, CallClass::kFatal,
                        CallClass::kCancelled}) {
    CallStatus call = Call(cls, cls == CallClass::kOk ? "" : "why", 25);
    CallStatus back = CallStatusOf(OutcomeOf(call, nlohmann::json::object()));
    EXPECT_EQ(back.cls, cls) << CallClassName(cls);
    EXPECT_EQ(back.error, call.error) << CallClassName(cls);
    EXPECT_EQ(back.elapsed, call.elapsed) << CallClassName(cls);
  }
  for (int i = 0; i < 3; ++i) Attempt(CallStatusOf(WorkOutcome::Retry("connection reset")));
  EXPECT_FALSE(health_->AllowRequest());
}

}  // namespace
}  // namespace digestd
