// Dispatcher tests on a real uv loop and libuv's real thread pool. Pool
// threads are held by a test-only job kind that blocks on a gate the test
// opens job by job, so which job runs when is decided by the test, never by
// timing (libuv's test-threadpool-cancel.c does the same with semaphores).
#include "dispatch/dispatcher.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "../support/test_loop.h"
#include "obs/log.h"

namespace digestd {
namespace {

// libuv sizes its pool from UV_THREADPOOL_SIZE on first use; these tests
// count on exactly four pool threads.
constexpr int kPoolThreads = 4;
const bool kPoolSized = [] { return setenv("UV_THREADPOOL_SIZE", "4", 1) == 0; }();

// Holds "block" jobs in their pool thread until the test opens them.
class Gate {
 public:
  void Open(const std::string& key) {
    std::lock_guard<std::mutex> lock(mu_);
    open_.insert(key);
    cv_.notify_all();
  }
  void OpenAll() {
    std::lock_guard<std::mutex> lock(mu_);
    all_open_ = true;
    cv_.notify_all();
  }
  // Wakes waiters so they see a cancel flag set since they began waiting.
  void Wake() {
    std::lock_guard<std::mutex> lock(mu_);
    cv_.notify_all();
  }
  // Pool thread: waits until `ctx` is opened (true) or cancelled (false).
  bool Wait(const WorkContext& ctx) {
    std::unique_lock<std::mutex> lock(mu_);
    ++entered_;
    std::string key(ctx.key);
    cv_.wait(lock, [&] { return all_open_ || open_.count(key) > 0 || ctx.cancelled(); });
    return !ctx.cancelled();
  }
  // How many jobs have reached a pool thread so far.
  int entered() {
    std::lock_guard<std::mutex> lock(mu_);
    return entered_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<std::string> open_;
  bool all_open_ = false;
  int entered_ = 0;
};

class BlockingKind final : public JobKind {
 public:
  explicit BlockingKind(Gate* gate) : gate_(gate) {}
  std::string_view name() const override { return "block"; }
  Status Validate(const nlohmann::json&, const Config&) const override { return Status::Ok(); }
  WorkOutcome Run(const WorkContext& ctx) const override {
    if (!gate_->Wait(ctx)) return WorkOutcome::Cancelled("cancelled while blocked");
    return WorkOutcome::Done({{"key", std::string(ctx.key)}});
  }

 private:
  Gate* gate_;
};

// Records the thread its Run() ran on; RunsOnLoop when input.inline is true.
class InstantKind final : public JobKind {
 public:
  std::string_view name() const override { return "instant"; }
  Status Validate(const nlohmann::json&, const Config&) const override { return Status::Ok(); }
  bool RunsOnLoop(const nlohmann::json& input, const Config&) const override {
    return input.value("inline", false);
  }
  WorkOutcome Run(const WorkContext& ctx) const override {
    std::lock_guard<std::mutex> lock(mu_);
    ran_on_[std::string(ctx.key)] = std::this_thread::get_id();
    return WorkOutcome::Done({{"key", std::string(ctx.key)}});
  }
  std::thread::id RanOn(const std::string& key) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = ran_on_.find(key);
    return it == ran_on_.end() ? std::thread::id() : it->second;
  }

 private:
  mutable std::mutex mu_;
  mutable std::map<std::string, std::thread::id> ran_on_;
};

// A "block" job that calls a backend model: input.model.
class ModelKind final : public JobKind {
 public:
  explicit ModelKind(Gate* gate) : gate_(gate) {}
  std::string_view name() const override { return "llm"; }
  Status Validate(const nlohmann::json&, const Config&) const override { return Status::Ok(); }
  std::optional<BackendModel> ModelOf(const nlohmann::json& input, const Config&) const override {
    return BackendModel{input.value("model", "m"), false};
  }
  WorkOutcome Run(const WorkContext& ctx) const override {
    if (!gate_->Wait(ctx)) return WorkOutcome::Cancelled("cancelled while blocked");
    return WorkOutcome::Done({{"key", std::string(ctx.key)}});
  }

 private:
  Gate* gate_;
};

struct Finished {
  std::string key;
  WorkOutcome::Kind kind;
};

class DispatcherTest : public ::testing::Test {
 protected:
  static constexpr int kPoolSize = 8;  // the most slots SetLimits may grant

  void SetUp() override {
    ASSERT_TRUE(kPoolSized);
    kinds_.Add(std::make_unique<BlockingKind>(&gate_));
    kinds_.Add(std::make_unique<ModelKind>(&gate_));
    auto instant = std::make_unique<InstantKind>();
    instant_ = instant.get();
    kinds_.Add(std::move(instant));
  }

  void TearDown() override {
    if (dispatcher_) {
      dispatcher_->TakeQueued();
      gate_.OpenAll();
      EXPECT_TRUE(RunUntil([&] { return dispatcher_->in_flight() == 0; }))
          << dispatcher_->in_flight() << " jobs still in flight";
      dispatcher_.reset();
    }
    // loop_'s destructor runs the close callbacks and checks that nothing
    // was left open.
  }

  void Make(int max, int reserved, size_t interactive_capacity = 100,
            size_t background_capacity = 100) {
    WorkerLimits limits{1, max, reserved, max};
    Dispatcher::Hooks hooks;
    hooks.on_start = [this](const JobPtr& job) {
      // Checked at every start: background work never takes a reserved slot.
      const auto& l = dispatcher_->limits();
      if (job->lane == Lane::kBackground &&
          dispatcher_->in_flight() >= l.limit - l.interactive_reserved) {
        ADD_FAILURE() << "background job " << job->key << " took a reserved slot ("
                      << dispatcher_->in_flight() << " in flight, limit " << l.limit
                      << ", reserved " << l.interactive_reserved << ")";
      }
      job->state = JobState::kRunning;
      started_.push_back(job->key);
      started_at_[job->key] = uv_hrtime();
    };
    hooks.on_finish = [this](const JobPtr& job, WorkOutcome outcome) {
      job->state =
          outcome.kind == WorkOutcome::Kind::kDone ? JobState::kDone : JobState::kCancelled;
      finished_.push_back({job->key, outcome.kind});
    };
    hooks.on_drained = [this] { ++drained_calls_; };
    hooks.on_preempted = [this](const JobPtr& job) {
      job->state = JobState::kQueued;
      preempted_.push_back(job->key);
    };
    dispatcher_ =
        std::make_unique<Dispatcher>(loop_.get(), interactive_capacity, background_capacity, limits,
                                     kPoolSize, kinds_, std::move(hooks));
  }

  static JobPtr NewJob(const std::string& key, Lane lane, const std::string& kind = "block") {
    auto job = std::make_shared<JobRecord>();
    job->key = key;
    job->kind = kind;
    job->lane = lane;
    job->input = std::make_shared<const nlohmann::json>(nlohmann::json::object());
    return job;
  }

  Status Submit(const std::string& key, Lane lane) {
    return dispatcher_->Enqueue(NewJob(key, lane));
  }

  void SubmitOk(const std::string& key, Lane lane) {
    Status st = Submit(key, lane);
    ASSERT_TRUE(st.ok()) << key << ": " << st.ToString();
  }

  bool RunUntil(const std::function<bool()>& done) { return loop_.RunUntil(done); }

  // Opens `key` and runs the loop until its outcome is back.
  void Release(std::string key) {  // by value: started_ may grow meanwhile
    size_t before = finished_.size();
    gate_.Open(key);
    ASSERT_TRUE(RunUntil([&] {
      for (size_t i = before; i < finished_.size(); ++i) {
        if (finished_[i].key == key) return true;
      }
      return false;
    })) << key
        << " did not finish";
  }

  bool Started(const std::string& key) const {
    return std::find(started_.begin(), started_.end(), key) != started_.end();
  }

  testing::TestLoop loop_;  // first: closed after everything that uses it
  Gate gate_;
  JobKindRegistry kinds_;
  const InstantKind* instant_ = nullptr;
  std::unique_ptr<Dispatcher> dispatcher_;
  std::vector<std::string> started_;
  std::map<std::string, uint64_t> started_at_;  // key -> uv_hrtime of its last start
  std::vector<Finished> finished_;
  int drained_calls_ = 0;
  std::vector<std::string> preempted_;
};

TEST_F(DispatcherTest, StartsJobsUpToTheLimitAtOnce) {
  Make(/*max=*/3, /*reserved=*/0);
  for (int i = 0; i < 5; ++i) SubmitOk("j" + std::to_string(i), Lane::kBackground);
  EXPECT_EQ(started_, (std::vector<std::string>{"j0", "j1", "j2"}));
  EXPECT_EQ(dispatcher_->in_flight(), 3);
  EXPECT_EQ(dispatcher_->depth(Lane::kBackground), 2u);
  Release("j1");
  EXPECT_EQ(started_.back(), "j3");
  EXPECT_EQ(dispatcher_->in_flight(), 3);
  ASSERT_EQ(finished_.size(), 1u);
  EXPECT_EQ(finished_[0].kind, WorkOutcome::Kind::kDone);
}

TEST_F(DispatcherTest, EachAttemptIsLoggedAtDebugWhenItStartsAndEnds) {
  Make(/*max=*/2, /*reserved=*/0);
  std::FILE* file = std::tmpfile();
  ASSERT_NE(file, nullptr);
  int saved = dup(STDERR_FILENO);
  dup2(fileno(file), STDERR_FILENO);
  SetLogLevel(LogLevel::kDebug);
  SubmitOk("book:7/ch:3", Lane::kInteractive);
  Release("book:7/ch:3");
  SetLogLevel(LogLevel::kInfo);
  dup2(saved, STDERR_FILENO);
  close(saved);
  std::string out(8192, '\0');
  std::rewind(file);
  out.resize(std::fread(out.data(), 1, out.size(), file));
  std::fclose(file);
  EXPECT_NE(out.find("debug: job book:7/ch:3 (block, interactive lane): attempt 1 started\n"),
            std::string::npos)
      << out;
  EXPECT_NE(
      out.find("debug: job book:7/ch:3 (block, interactive lane): attempt 1 ended done after "),
      std::string::npos)
      << out;
  EXPECT_NE(out.find(" s (backend 0 ms)\n"), std::string::npos) << out;
}

TEST_F(DispatcherTest, InteractiveLaneIsDispatchedBeforeBackground) {
  Make(/*max=*/1, /*reserved=*/0);
  SubmitOk("blocker", Lane::kBackground);
  SubmitOk("bg1", Lane::kBackground);
  SubmitOk("bg2", Lane::kBackground);
  SubmitOk("int1", Lane::kInteractive);
  SubmitOk("int2", Lane::kInteractive);
  EXPECT_EQ(started_, std::vector<std::string>{"blocker"});
  for (const char* key : {"blocker", "int1", "int2", "bg1", "bg2"}) Release(key);
  EXPECT_EQ(started_, (std::vector<std::string>{"blocker", "int1", "int2", "bg1", "bg2"}));
}

TEST_F(DispatcherTest, BackgroundFloodNeverTakesTheReservedSlots) {
  Make(/*max=*/4, /*reserved=*/2);
  for (int i = 0; i < 50; ++i) SubmitOk("bg" + std::to_string(i), Lane::kBackground);
  EXPECT_EQ(dispatcher_->in_flight(Lane::kBackground), 2);
  EXPECT_EQ(dispatcher_->in_flight(), 2);
  EXPECT_EQ(started_.size(), 2u);
  // As background jobs finish, the next ones take only the same two slots.
  for (int round = 0; round < 10; ++round) {
    Release(started_[static_cast<size_t>(round)]);
    EXPECT_EQ(dispatcher_->in_flight(Lane::kBackground), 2) << "round " << round;
    EXPECT_EQ(dispatcher_->in_flight(), 2) << "round " << round;
  }
  // The reserved slots are free for interactive work at once.
  SubmitOk("int1", Lane::kInteractive);
  SubmitOk("int2", Lane::kInteractive);
  EXPECT_TRUE(Started("int1"));
  EXPECT_TRUE(Started("int2"));
  EXPECT_EQ(dispatcher_->in_flight(), 4);
  SubmitOk("int3", Lane::kInteractive);
  EXPECT_FALSE(Started("int3")) << "the limit is 4";
  // When an interactive job ends with background work waiting, the freed
  // reserved slot still does not go to background work.
  Release("int1");
  EXPECT_EQ(started_.back(), "int3");
  Release("int3");
  EXPECT_EQ(dispatcher_->in_flight(Lane::kBackground), 2);
  EXPECT_EQ(dispatcher_->in_flight(), 3);
}

TEST_F(DispatcherTest, InteractiveJobBehindThousandBackgroundJobsStartsAtTheNextFreeSlot) {
  Make(/*max=*/2, /*reserved=*/0, /*interactive_capacity=*/10, /*background_capacity=*/1000);
  for (int i = 0; i < 1000; ++i) SubmitOk("bg" + std::to_string(i), Lane::kBackground);
  ASSERT_EQ(started_, (std::vector<std::string>{"bg0", "bg1"}));
  EXPECT_EQ(dispatcher_->depth(Lane::kBackground), 998u);
  SubmitOk("urgent", Lane::kInteractive);
  EXPECT_FALSE(Started("urgent")) << "no slot was free";
  EXPECT_EQ(dispatcher_->depth(Lane::kInteractive), 1u);
  Release("bg0");
  ASSERT_EQ(started_.size(), 3u);
  EXPECT_EQ(started_[2], "urgent");
  EXPECT_EQ(dispatcher_->depth(Lane::kBackground), 998u);
  EXPECT_EQ(dispatcher_->depth(Lane::kInteractive), 0u);
}

TEST_F(DispatcherTest, InteractiveJobStartsAtOnceWhenASlotIsReserved) {
  Make(/*max=*/2, /*reserved=*/1, /*interactive_capacity=*/10, /*background_capacity=*/1000);
  for (int i = 0; i < 1000; ++i) SubmitOk("bg" + std::to_string(i), Lane::kBackground);
  EXPECT_EQ(started_.size(), 1u);
  SubmitOk("urgent", Lane::kInteractive);
  ASSERT_EQ(started_.size(), 2u);
  EXPECT_EQ(started_[1], "urgent");
}

TEST_F(DispatcherTest, FullLaneAnswersQueueFull) {
  Make(/*max=*/1, /*reserved=*/0, /*interactive_capacity=*/1, /*background_capacity=*/2);
  SubmitOk("running", Lane::kBackground);
  SubmitOk("q1", Lane::kBackground);
  SubmitOk("q2", Lane::kBackground);
  EXPECT_EQ(dispatcher_->capacity(Lane::kBackground), 2u);
  Status st = Submit("q3", Lane::kBackground);
  EXPECT_EQ(st.code(), Status::Code::kQueueFull);
  EXPECT_NE(st.message().find("background"), std::string::npos) << st.message();
  EXPECT_EQ(dispatcher_->depth(Lane::kBackground), 2u);
  // The other lane has its own room.
  SubmitOk("i1", Lane::kInteractive);
  EXPECT_EQ(Submit("i2", Lane::kInteractive).code(), Status::Code::kQueueFull);
  // A pill still fits behind a full lane, and everything before it runs.
  dispatcher_->PutPills();
  gate_.OpenAll();
  ASSERT_TRUE(RunUntil([&] { return dispatcher_->Drained(); }));
  EXPECT_EQ(started_, (std::vector<std::string>{"running", "i1", "q1", "q2"}));
}

TEST_F(DispatcherTest, PillsLetQueuedJobsRunAndNothingAfterThem) {
  Make(/*max=*/1, /*reserved=*/0);
  SubmitOk("a", Lane::kBackground);
  SubmitOk("b", Lane::kBackground);
  SubmitOk("c", Lane::kBackground);
  SubmitOk("i", Lane::kInteractive);
  dispatcher_->PutPills();
  EXPECT_TRUE(dispatcher_->pills_in());
  EXPECT_FALSE(dispatcher_->Drained());
  // Depths count jobs, not pills.
  EXPECT_EQ(dispatcher_->depth(Lane::kBackground), 2u);
  EXPECT_EQ(dispatcher_->depth(Lane::kInteractive), 1u);
  Status late = Submit("late", Lane::kBackground);
  EXPECT_EQ(late.code(), Status::Code::kUnavailable);
  EXPECT_FALSE(late.message().empty());
  EXPECT_EQ(Submit("late-i", Lane::kInteractive).code(), Status::Code::kUnavailable);
  dispatcher_->PutPills();  // idempotent

  for (const char* key : {"a", "i", "b", "c"}) Release(key);
  EXPECT_TRUE(dispatcher_->Drained());
  EXPECT_EQ(drained_calls_, 1);
  EXPECT_EQ(started_, (std::vector<std::string>{"a", "i", "b", "c"}));
  EXPECT_EQ(dispatcher_->dispatched(), 4u);
  EXPECT_EQ(dispatcher_->depth(Lane::kBackground), 0u);
  // Raising the limit after the pills dispatches nothing.
  ASSERT_TRUE(dispatcher_->SetLimits(1, 4, 0).ok());
  EXPECT_EQ(Submit("later", Lane::kInteractive).code(), Status::Code::kUnavailable);
  EXPECT_EQ(dispatcher_->dispatched(), 4u);
  EXPECT_EQ(dispatcher_->in_flight(), 0);
}

TEST_F(DispatcherTest, PillsOnAnIdleDispatcherDrainAtOnce) {
  Make(/*max=*/2, /*reserved=*/0);
  dispatcher_->PutPills();
  EXPECT_TRUE(dispatcher_->Drained());
  EXPECT_EQ(drained_calls_, 1);
}

TEST_F(DispatcherTest, TakeQueuedAfterPillsLeavesNothingToDispatch) {
  Make(/*max=*/1, /*reserved=*/0);
  SubmitOk("a", Lane::kBackground);
  SubmitOk("b", Lane::kBackground);
  SubmitOk("i", Lane::kInteractive);
  dispatcher_->PutPills();
  auto taken = dispatcher_->TakeQueued();
  ASSERT_EQ(taken.size(), 2u);
  EXPECT_EQ(dispatcher_->depth(Lane::kBackground), 0u);
  Release("a");
  EXPECT_EQ(started_, std::vector<std::string>{"a"});
  EXPECT_TRUE(dispatcher_->Drained());
}

TEST_F(DispatcherTest, SetLimitsRaisesAndLowersTheLimit) {
  Make(/*max=*/2, /*reserved=*/0);
  for (int i = 0; i < 8; ++i) SubmitOk("j" + std::to_string(i), Lane::kBackground);
  EXPECT_EQ(started_.size(), 2u);

  // Raising max raises the limit and dispatches at once.
  ASSERT_TRUE(dispatcher_->SetLimits(1, 4, 0).ok());
  EXPECT_EQ(dispatcher_->limits().limit, 4);
  EXPECT_EQ(started_.size(), 4u);
  EXPECT_EQ(dispatcher_->in_flight(), 4);

  // Lowering it preempts nothing, but nothing starts until below the limit.
  ASSERT_TRUE(dispatcher_->SetLimits(1, 2, 0).ok());
  EXPECT_EQ(dispatcher_->limits().limit, 2);
  EXPECT_EQ(dispatcher_->in_flight(), 4);
  Release(started_[0]);
  Release(started_[1]);
  EXPECT_EQ(started_.size(), 4u);
  EXPECT_EQ(dispatcher_->in_flight(), 2);
  Release(started_[2]);
  EXPECT_EQ(started_.size(), 5u);
  EXPECT_EQ(dispatcher_->in_flight(), 2);
}

TEST_F(DispatcherTest, SetLimitsRejectsImpossibleBounds) {
  Make(/*max=*/2, /*reserved=*/0);
  WorkerLimits before = dispatcher_->limits();
  Status st = dispatcher_->SetLimits(3, 2, 0);
  EXPECT_EQ(st.code(), Status::Code::kBadRequest);
  EXPECT_NE(st.message().find("min"), std::string::npos) << st.message();
  st = dispatcher_->SetLimits(1, kPoolSize + 1, 0);
  EXPECT_EQ(st.code(), Status::Code::kBadRequest);
  EXPECT_NE(st.message().find("thread pool"), std::string::npos) << st.message();
  st = dispatcher_->SetLimits(1, 2, 2);
  EXPECT_EQ(st.code(), Status::Code::kBadRequest);
  EXPECT_NE(st.message().find("interactive_reserved"), std::string::npos) << st.message();
  EXPECT_EQ(dispatcher_->SetLimits(0, 2, 0).code(), Status::Code::kBadRequest);
  EXPECT_EQ(dispatcher_->limits().limit, before.limit);
  EXPECT_EQ(dispatcher_->limits().max, before.max);
  EXPECT_EQ(dispatcher_->limits().interactive_reserved, before.interactive_reserved);
}

TEST_F(DispatcherTest, CancelInFlightCancelsRunningAndPoolQueuedWork) {
  // Eight in flight on four pool threads: four block in Run, four wait in
  // libuv's queue. Both kinds must come back cancelled.
  Make(/*max=*/kPoolSize, /*reserved=*/0);
  for (int i = 0; i < kPoolSize; ++i) SubmitOk("j" + std::to_string(i), Lane::kBackground);
  EXPECT_EQ(dispatcher_->in_flight(), kPoolSize);
  ASSERT_TRUE(testing::WaitFor([&] { return gate_.entered() == kPoolThreads; }));
  dispatcher_->CancelInFlight();
  gate_.Wake();
  ASSERT_TRUE(RunUntil([&] { return finished_.size() == static_cast<size_t>(kPoolSize); }));
  for (const auto& f : finished_) {
    EXPECT_EQ(f.kind, WorkOutcome::Kind::kCancelled) << f.key;
  }
  EXPECT_EQ(dispatcher_->in_flight(), 0);
}

// Destroying a Dispatcher with work in flight breaks its contract: debug
// builds abort; release builds cancel and detach the work, so the late
// after-work callbacks free their items without touching the dead object.
TEST_F(DispatcherTest, DestroyedWithWorkInFlightCancelsAndDetachesIt) {
  // Eight in flight on four pool threads: four block in Run, four wait in
  // libuv's queue (their after-work comes with UV_ECANCELED).
  Make(/*max=*/kPoolSize, /*reserved=*/0);
  std::vector<JobPtr> jobs;
  for (int i = 0; i < kPoolSize; ++i) {
    jobs.push_back(NewJob("j" + std::to_string(i), Lane::kBackground));
    ASSERT_TRUE(dispatcher_->Enqueue(jobs.back()).ok());
  }
  ASSERT_TRUE(testing::WaitFor([&] { return gate_.entered() == kPoolThreads; }));
#ifndef NDEBUG
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(dispatcher_.reset(), "work in flight");
  (void)jobs;
#else
  dispatcher_.reset();
  for (const auto& job : jobs) EXPECT_TRUE(job->cancel->load()) << job->key << " not cancelled";
  gate_.Wake();  // the blocked jobs see their cancel flags and return
  // Every after-work callback runs (the loop ends when none is left), and
  // none reaches the hooks of the destroyed Dispatcher.
  uv_run(loop_.get(), UV_RUN_DEFAULT);
  EXPECT_TRUE(finished_.empty()) << finished_.size() << " outcomes reached a dead dispatcher";
#endif
}

TEST_F(DispatcherTest, JobCancelledWhileQueuedIsSkipped) {
  Make(/*max=*/1, /*reserved=*/0);
  SubmitOk("a", Lane::kBackground);
  JobPtr b = NewJob("b", Lane::kBackground);
  ASSERT_TRUE(dispatcher_->Enqueue(b).ok());
  SubmitOk("c", Lane::kBackground);
  b->state = JobState::kCancelled;  // what `cancel` does to a queued job
  Release("a");
  EXPECT_EQ(started_, (std::vector<std::string>{"a", "c"}));
}

TEST_F(DispatcherTest, UnknownKindFailsWithoutUsingASlot) {
  Make(/*max=*/1, /*reserved=*/0);
  ASSERT_TRUE(dispatcher_->Enqueue(NewJob("x", Lane::kBackground, "no-such-kind")).ok());
  ASSERT_EQ(finished_.size(), 1u);
  EXPECT_EQ(finished_[0].kind, WorkOutcome::Kind::kFailed);
  EXPECT_EQ(dispatcher_->in_flight(), 0);
  SubmitOk("next", Lane::kBackground);
  EXPECT_TRUE(Started("next"));
}

TEST_F(DispatcherTest, AJobThatCannotBlockRunsOnTheLoopThreadInItsSlotsTurn) {
  Make(/*max=*/1, /*reserved=*/0);
  SubmitOk("holder", Lane::kBackground);  // takes the only slot
  auto inline_job = NewJob("inline", Lane::kBackground, "instant");
  inline_job->input = std::make_shared<const nlohmann::json>(nlohmann::json{{"inline", true}});
  ASSERT_TRUE(dispatcher_->Enqueue(inline_job).ok());
  EXPECT_FALSE(Started("inline")) << "it must wait for a free slot like any job";
  Release("holder");
  // Started and finished within the after-work callback that freed the slot.
  ASSERT_TRUE(Started("inline"));
  ASSERT_EQ(finished_.back().key, "inline");
  EXPECT_EQ(finished_.back().kind, WorkOutcome::Kind::kDone);
  EXPECT_EQ(instant_->RanOn("inline"), std::this_thread::get_id());
  EXPECT_EQ(dispatcher_->ran_on_loop(), 1u);
  EXPECT_EQ(dispatcher_->in_flight(), 0);

  // The same kind when it says it may block goes to a pool thread.
  auto pooled = NewJob("pooled", Lane::kBackground, "instant");
  ASSERT_TRUE(dispatcher_->Enqueue(pooled).ok());
  EXPECT_EQ(dispatcher_->in_flight(), 1);
  ASSERT_TRUE(RunUntil([&] { return finished_.back().key == "pooled"; }));
  EXPECT_NE(instant_->RanOn("pooled"), std::this_thread::get_id());
  EXPECT_NE(instant_->RanOn("pooled"), std::thread::id());
  EXPECT_EQ(dispatcher_->ran_on_loop(), 1u);
  EXPECT_EQ(dispatcher_->dispatched(), 3u);
}

// ---------------------------------------------------------------------------
// Per-model limits, preemption, promotion.

class ModelDispatchTest : public DispatcherTest {
 protected:
  // [backend] parallel pinned to `parallel`; preemption as given.
  void MakeModels(int max, int parallel, bool preempt = true, int max_preemptions = 3) {
    Make(max, /*reserved=*/0);
    auto config = std::make_shared<Config>();
    config->backend.parallel = parallel;
    config->workers.preempt = preempt;
    config->workers.max_preemptions = max_preemptions;
    dispatcher_->SetConfig(config);
  }
  JobPtr Llm(const std::string& key, const std::string& model, Lane lane) {
    auto job = NewJob(key, lane, "llm");
    job->input = std::make_shared<const nlohmann::json>(nlohmann::json{{"model", model}});
    jobs_[key] = job;
    return job;
  }
  void EnqueueOk(const JobPtr& job) {
    Status st = dispatcher_->Enqueue(job);
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  std::map<std::string, JobPtr> jobs_;
};

TEST_F(ModelDispatchTest, AFullModelHoldsBackOnlyItsOwnJobs) {
  MakeModels(/*max=*/4, /*parallel=*/1);
  EnqueueOk(Llm("a1", "A", Lane::kBackground));
  EnqueueOk(Llm("a2", "A", Lane::kBackground));
  EnqueueOk(Llm("b1", "B", Lane::kBackground));
  SubmitOk("plain", Lane::kBackground);
  // a2 waits for A; b1 and the job that calls no model pass it.
  EXPECT_EQ(started_, (std::vector<std::string>{"a1", "b1", "plain"}));
  EXPECT_EQ(dispatcher_->depth(Lane::kBackground), 1u);
  ASSERT_NE(dispatcher_->capacity_of("A"), nullptr);
  EXPECT_EQ(dispatcher_->capacity_of("A")->in_flight(), 1);
  EXPECT_EQ(dispatcher_->ModelsJson().size(), 2u);
  Release("a1");
  EXPECT_EQ(started_.back(), "a2");
  EXPECT_EQ(dispatcher_->depth(Lane::kBackground), 0u);
}

TEST_F(ModelDispatchTest, AParkedJobStartsBeforeLaterJobsOfItsModel) {
  MakeModels(/*max=*/4, /*parallel=*/1);
  EnqueueOk(Llm("a1", "A", Lane::kBackground));
  EnqueueOk(Llm("a2", "A", Lane::kBackground));
  EnqueueOk(Llm("b1", "B", Lane::kBackground));
  EnqueueOk(Llm("a3", "A", Lane::kBackground));
  Release("a1");
  EXPECT_EQ(started_.back(), "a2");
  Release("a2");
  EXPECT_EQ(started_.back(), "a3");
}

TEST_F(ModelDispatchTest, InteractiveJobPreemptsTheBackgroundRequestWithLeastProgress) {
  MakeModels(/*max=*/4, /*parallel=*/2);
  EnqueueOk(Llm("bg1", "A", Lane::kBackground));
  EnqueueOk(Llm("bg2", "A", Lane::kBackground));
  EnqueueOk(Llm("bg3", "A", Lane::kBackground));
  ASSERT_EQ(started_, (std::vector<std::string>{"bg1", "bg2"}));
  jobs_["bg1"]->progress->store(7);
  jobs_["bg2"]->progress->store(2);
  EnqueueOk(Llm("fg", "A", Lane::kInteractive));
  // Started at once, beside the request being aborted.
  EXPECT_EQ(started_.back(), "fg");
  EXPECT_TRUE(jobs_["bg2"]->cancel->load());
  EXPECT_FALSE(jobs_["bg1"]->cancel->load());
  EXPECT_EQ(dispatcher_->preemptions(), 1u);
  gate_.Wake();
  ASSERT_TRUE(RunUntil([&] { return !preempted_.empty(); }));
  EXPECT_EQ(preempted_, (std::vector<std::string>{"bg2"}));
  EXPECT_EQ(jobs_["bg2"]->preempted, 1);
  EXPECT_EQ(jobs_["bg2"]->state, JobState::kQueued);
  EXPECT_FALSE(jobs_["bg2"]->cancel->load()) << "a fresh attempt must not start cancelled";
  // No outcome reached on_finish for it; it waits at the head of its lane,
  // before bg3.
  EXPECT_TRUE(finished_.empty());
  Release("bg1");
  // Background work of the model waits a moment after the preemption.
  ASSERT_TRUE(RunUntil([&] { return started_.back() == "bg2"; }));
  Release("bg2");
  EXPECT_EQ(started_.back(), "bg3");
}

TEST_F(ModelDispatchTest, RoomAPreemptionMadeIsTheInteractiveRequestsForAMoment) {
  MakeModels(/*max=*/4, /*parallel=*/2);
  EnqueueOk(Llm("bg1", "A", Lane::kBackground));
  EnqueueOk(Llm("bg2", "A", Lane::kBackground));
  EnqueueOk(Llm("bg3", "A", Lane::kBackground));
  EnqueueOk(Llm("fg", "A", Lane::kInteractive));
  ASSERT_EQ(started_, (std::vector<std::string>{"bg1", "bg2", "fg"}));
  ASSERT_TRUE(jobs_["bg2"]->cancel->load());
  // While the aborted request has not returned it still counts for
  // background work: nothing else starts.
  Release("fg");
  EXPECT_EQ(started_.back(), "fg");
  gate_.Wake();
  ASSERT_TRUE(RunUntil([&] { return !preempted_.empty(); }));
  // Room now, but a background request sent at once could reach the
  // server before the interactive one: it waits out the hold first.
  ASSERT_TRUE(RunUntil([&] { return started_.back() == "bg2"; }));
  EXPECT_GE(started_at_["bg2"] - started_at_["fg"], 20'000'000u)
      << "background work started " << (started_at_["bg2"] - started_at_["fg"]) / 1000
      << " us after the preempting interactive job";
  Release("bg1");
  Release("bg2");
  EXPECT_EQ(started_.back(), "bg3");
}

TEST_F(ModelDispatchTest, NoPreemptionPastMaxPreemptionsOrWhenOff) {
  MakeModels(/*max=*/4, /*parallel=*/1, /*preempt=*/true, /*max_preemptions=*/1);
  EnqueueOk(Llm("bg", "A", Lane::kBackground));
  jobs_["bg"]->preempted = 1;  // already preempted once
  EnqueueOk(Llm("fg", "A", Lane::kInteractive));
  EXPECT_EQ(started_, (std::vector<std::string>{"bg"}));
  EXPECT_FALSE(jobs_["bg"]->cancel->load());
  Release("bg");
  EXPECT_EQ(started_.back(), "fg");
  Release("fg");

  MakeModels(/*max=*/4, /*parallel=*/1, /*preempt=*/false);
  started_.clear();
  EnqueueOk(Llm("bg-b", "A", Lane::kBackground));
  EnqueueOk(Llm("fg-b", "A", Lane::kInteractive));
  EXPECT_EQ(started_, (std::vector<std::string>{"bg-b"}));
  EXPECT_EQ(dispatcher_->preemptions(), 0u);
}

TEST_F(ModelDispatchTest, PromoteMovesAQueuedBackgroundJobToTheInteractiveLane) {
  MakeModels(/*max=*/4, /*parallel=*/1, /*preempt=*/false);
  for (const char* k : {"p0", "p1", "p2", "p3"}) EnqueueOk(Llm(k, "A", Lane::kBackground));
  EXPECT_FALSE(dispatcher_->Promote(jobs_["p0"])) << "running, not queued";
  EXPECT_TRUE(dispatcher_->Promote(jobs_["p3"]));
  EXPECT_FALSE(dispatcher_->Promote(jobs_["p3"])) << "already interactive";
  EXPECT_EQ(jobs_["p3"]->lane, Lane::kInteractive);
  EXPECT_EQ(dispatcher_->promoted(), 1u);
  EXPECT_EQ(dispatcher_->depth(Lane::kBackground), 2u);
  EXPECT_EQ(dispatcher_->depth(Lane::kInteractive), 1u);
  Release("p0");
  EXPECT_EQ(started_.back(), "p3");
  Release("p3");
  EXPECT_EQ(started_.back(), "p1");
  // The promoted job's old place in the background lane is skipped.
  Release("p1");
  Release("p2");
  EXPECT_EQ(started_, (std::vector<std::string>{"p0", "p3", "p1", "p2"}));
  EXPECT_EQ(dispatcher_->depth(Lane::kBackground), 0u);
}

TEST_F(ModelDispatchTest, PromotingAJobInItsRetryBackoffDoesNotStartItEarly) {
  MakeModels(/*max=*/4, /*parallel=*/2, /*preempt=*/false);
  JobPtr job = Llm("retrying", "A", Lane::kBackground);
  job->backing_off = true;  // the store holds it until its backoff ends
  EXPECT_TRUE(dispatcher_->Promote(job));
  EXPECT_EQ(job->lane, Lane::kInteractive);
  EXPECT_TRUE(started_.empty()) << "started before its backoff ended";
  EXPECT_EQ(dispatcher_->depth(Lane::kInteractive), 0u);
  EXPECT_EQ(dispatcher_->depth(Lane::kBackground), 0u);
  // Its backoff ends: the store queues it, in the lane it was promoted to.
  job->backing_off = false;
  EnqueueOk(job);
  EXPECT_EQ(started_, (std::vector<std::string>{"retrying"}));
  Release("retrying");
  // Nothing of it was left behind in either lane.
  EnqueueOk(Llm("next", "A", Lane::kBackground));
  EXPECT_EQ(started_, (std::vector<std::string>{"retrying", "next"}));
  EXPECT_EQ(dispatcher_->depth(Lane::kBackground), 0u);
}

TEST_F(ModelDispatchTest, AnInteractiveJobHasRoomWhereItCanPreempt) {
  MakeModels(/*max=*/4, /*parallel=*/1);
  const JobKind* kind = kinds_.Find("llm");
  ASSERT_NE(kind, nullptr);
  const nlohmann::json input{{"model", "A"}};
  EXPECT_EQ(dispatcher_->RoomFor(*kind, input, Lane::kBackground), 1);
  EnqueueOk(Llm("bg1", "A", Lane::kBackground));
  EnqueueOk(Llm("bg2", "A", Lane::kBackground));
  EXPECT_EQ(dispatcher_->RoomFor(*kind, input, Lane::kBackground), 0);
  EXPECT_EQ(dispatcher_->RoomFor(*kind, input, Lane::kInteractive), 1) << "bg1 can be preempted";
  jobs_["bg1"]->preempted = 3;  // max_preemptions reached: it runs to its end
  EXPECT_EQ(dispatcher_->RoomFor(*kind, input, Lane::kInteractive), 0);
  jobs_["bg1"]->preempted = 0;
  Release("bg1");
  Release("bg2");
}

TEST_F(ModelDispatchTest, ClaimRoomFollowsTheModelsRoom) {
  MakeModels(/*max=*/4, /*parallel=*/2);
  EXPECT_EQ(dispatcher_->ClaimRoom(Lane::kBackground), 1u) << "nothing known: one job to learn";
  // Room at the model (2 slots) plus one job ahead.
  EnqueueOk(Llm("a1", "A", Lane::kBackground));
  EXPECT_EQ(dispatcher_->ClaimRoom(Lane::kBackground), 2u);
  EnqueueOk(Llm("a2", "A", Lane::kBackground));
  EXPECT_EQ(dispatcher_->ClaimRoom(Lane::kBackground), 1u);
  EnqueueOk(Llm("a3", "A", Lane::kBackground));
  EXPECT_EQ(dispatcher_->ClaimRoom(Lane::kBackground), 0u) << "a3 waits: the one ahead";
  // The interactive lane may claim what it could preempt.
  EXPECT_EQ(dispatcher_->ClaimRoom(Lane::kInteractive), 2u);
  Release("a1");
  EXPECT_EQ(dispatcher_->ClaimRoom(Lane::kBackground), 1u) << "a3 took the freed slot";
  Release("a2");
  EXPECT_EQ(dispatcher_->ClaimRoom(Lane::kBackground), 2u);
  // A lane whose work calls no model claims what its pace says.
  SubmitOk("plain", Lane::kBackground);
  EXPECT_EQ(dispatcher_->ClaimRoom(Lane::kBackground), SIZE_MAX);
}

// A lane of jobs that run on the loop (a noop without a sleep) calls no
// model either: once one has started, claims follow the pace, not one job
// at a time.
TEST_F(ModelDispatchTest, ALaneOfJobsRunOnTheLoopClaimsWhatItsPaceSays) {
  MakeModels(/*max=*/4, /*parallel=*/2);
  EXPECT_EQ(dispatcher_->ClaimRoom(Lane::kBackground), 1u) << "nothing known: one job to learn";
  auto inline_job = NewJob("inline", Lane::kBackground, "instant");
  inline_job->input = std::make_shared<const nlohmann::json>(nlohmann::json{{"inline", true}});
  ASSERT_TRUE(dispatcher_->Enqueue(inline_job).ok());
  ASSERT_TRUE(Started("inline"));
  EXPECT_EQ(dispatcher_->ran_on_loop(), 1u);
  EXPECT_EQ(dispatcher_->ClaimRoom(Lane::kBackground), SIZE_MAX);
}

TEST_F(ModelDispatchTest, JobsDroppedWhileQueuedLeaveDepthAndClaimRoomAtOnce) {
  MakeModels(/*max=*/4, /*parallel=*/1, /*preempt=*/false);
  for (const char* k : {"a1", "a2", "a3", "a4"}) EnqueueOk(Llm(k, "A", Lane::kBackground));
  EnqueueOk(Llm("b1", "B", Lane::kBackground));
  EnqueueOk(Llm("b2", "B", Lane::kBackground));
  ASSERT_TRUE(dispatcher_->Promote(jobs_["a4"]));        // leaves a stale place behind
  EXPECT_EQ(dispatcher_->depth(Lane::kBackground), 3u);  // a2 and a3 parked, b2
  EXPECT_EQ(dispatcher_->ClaimRoom(Lane::kBackground), 0u);
  // Elsewhere (a cancel, a lost lease) a2, a3 and b2 leave the queue while
  // every slot of their models is taken: nothing pumps through them.
  for (const char* k : {"a2", "a3", "b2"}) jobs_[k]->state = JobState::kCancelled;
  dispatcher_->Sweep();
  EXPECT_EQ(dispatcher_->depth(Lane::kBackground), 0u);
  EXPECT_EQ(dispatcher_->depth(Lane::kInteractive), 1u) << "a4 still waits, promoted";
  // B is full and has nothing waiting: one job ahead; A has a4 waiting.
  EXPECT_EQ(dispatcher_->ClaimRoom(Lane::kBackground), 1u);
  for (const auto& m : dispatcher_->ModelsJson()) {
    EXPECT_EQ(m["waiting"], m["model"] == "A" ? 1 : 0) << m.dump();
  }
  Release("a1");
  EXPECT_EQ(started_.back(), "a4");
  Release("a4");
  Release("b1");
  EXPECT_EQ(started_, (std::vector<std::string>{"a1", "b1", "a4"}));
  EXPECT_EQ(dispatcher_->depth(Lane::kBackground), 0u);
  EXPECT_EQ(dispatcher_->depth(Lane::kInteractive), 0u);
}

TEST_F(ModelDispatchTest, WorkerBoundsAndReloadsBoundEveryModel) {
  MakeModels(/*max=*/6, /*parallel=*/0);  // auto
  EnqueueOk(Llm("a1", "A", Lane::kBackground));
  const ModelCapacity* a = dispatcher_->capacity_of("A");
  ASSERT_NE(a, nullptr);
  EXPECT_FALSE(a->pinned());
  EXPECT_EQ(a->max(), 6);
  ASSERT_TRUE(dispatcher_->SetLimits(1, 3, 0).ok());  // digestctl workers --max 3
  EXPECT_EQ(a->max(), 3);
  auto pinned = std::make_shared<Config>();
  pinned->backend.parallel = 2;  // a reload that pins it
  dispatcher_->SetConfig(pinned);
  EXPECT_TRUE(a->pinned());
  EXPECT_EQ(a->limit(), 2);
  dispatcher_->SetConfig(std::make_shared<Config>());  // back to "auto"
  EXPECT_FALSE(a->pinned());
  Release("a1");
}

}  // namespace
}  // namespace digestd
