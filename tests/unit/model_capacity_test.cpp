// ModelCapacity: the learned per-model limit, driven by a model server
// simulated in discrete time inside the test (no real time, no threads):
// `capacity` slots, a service time per request, FIFO waiting beyond the
// capacity, and a client that keeps the limit filled from a backlog, as
// digestd does with its lanes. Each finished request becomes the sample
// Ollama would give: total = wait + service, prompt_eval + eval = service.
#include "dispatch/model_capacity.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <vector>

namespace digestd {
namespace {

constexpr int64_t kNsPerMs = 1'000'000;

// Which of Ollama's duration fields a simulated answer carries.
enum class Fields {
  kAll,           // /api/generate and /api/chat
  kTotalAndLoad,  // /api/embed: no prompt_eval_duration, no eval_duration
  kNone,          // only the client's own latency
};

class SimServer {
 public:
  struct Options {
    int capacity = 1;
    double service_ms = 100;
    double jitter = 0;  // service times vary by up to +- this share
    Fields fields = Fields::kAll;
    double network_ms = 1;                          // added to the client's latency
    int backlog = std::numeric_limits<int>::max();  // most the client keeps in flight
    // Requests that end at the same moment are all answered before the
    // client sends more, and requests sent at the same moment reach the
    // server last first, as two connections opened together may: one of a
    // lower level then waits behind one of a higher level.
    bool overtake = false;
  };

  SimServer(ModelCapacity* cap, Options o) : cap_(cap), opt_(o) {}

  // Running requests finish; waiting ones are let in under the new capacity.
  void SetCapacity(int c) {
    opt_.capacity = c;
    Admit();
  }
  // While set, every request is answered 503 at once (~17 ms), as Ollama
  // does when its queue is full.
  void SetBusy(bool busy) { busy_ = busy; }
  void SetBacklog(int most_in_flight) { opt_.backlog = most_in_flight; }
  // The next finished request reports a cold load of `load_ms` and
  // `extra_wait_ms` of unexplained time (a cold runner's first request).
  void ColdLoadNext(double load_ms, double extra_wait_ms) {
    cold_load_ms_ = load_ms;
    cold_extra_ms_ = extra_wait_ms;
  }

  // Runs until `n` more requests have finished; `each` runs after every one.
  void Run(int n, const std::function<void()>& each = {}) {
    for (int i = 0; i < n; ++i) {
      Step();
      if (each) each();
    }
  }
  // Runs until the simulated clock reaches `until_ms`.
  void RunUntil(double until_ms, const std::function<void()>& each = {}) {
    while (now_ms_ < until_ms) {
      Step();
      if (each) each();
    }
  }

  double now_ms() const { return now_ms_; }

 private:
  struct Req {
    CapacityTicket ticket;
    double arrive = 0;
    double admit = 0;
    double end = 0;
    double service = 0;
    bool busy = false;
  };

  double NextService() {
    if (opt_.jitter == 0) return opt_.service_ms;
    rng_ = rng_ * 6364136223846793005ULL + 1442695040888963407ULL;
    const double u = static_cast<double>(rng_ >> 11) * 0x1.0p-53;  // [0, 1)
    return opt_.service_ms * (1 + opt_.jitter * (2 * u - 1));
  }

  void Fill() {
    std::vector<Req> sent;
    while (cap_->CanStart() && cap_->in_flight() < opt_.backlog) {
      Req r;
      r.ticket = cap_->OnStart();
      r.arrive = now_ms_;
      r.service = NextService();
      if (busy_) {
        r.busy = true;
        r.end = now_ms_ + 17;
        bounced_.push_back(r);
      } else {
        sent.push_back(r);
      }
    }
    if (opt_.overtake) std::reverse(sent.begin(), sent.end());
    for (const Req& r : sent) waiting_.push_back(r);
    Admit();
  }

  void Admit() {
    while (!waiting_.empty() && static_cast<int>(running_.size()) < opt_.capacity) {
      Req r = waiting_.front();
      waiting_.pop_front();
      r.admit = now_ms_;
      r.end = now_ms_ + r.service;
      running_.push_back(r);
    }
  }

  bool EndsNow() const {
    return std::any_of(running_.begin(), running_.end(),
                       [this](const Req& q) { return q.end <= now_ms_; });
  }
  void Step() {
    if (!(opt_.overtake && EndsNow())) Fill();
    auto earliest = [](std::vector<Req>& v) {
      return std::min_element(v.begin(), v.end(),
                              [](const Req& a, const Req& b) { return a.end < b.end; });
    };
    auto run = earliest(running_);
    auto bounce = earliest(bounced_);
    const bool from_bounced =
        bounce != bounced_.end() && (run == running_.end() || bounce->end < run->end);
    ASSERT_TRUE(from_bounced || run != running_.end()) << "nothing in flight";
    Req r = from_bounced ? *bounce : *run;
    if (from_bounced) {
      bounced_.erase(bounce);
    } else {
      running_.erase(run);
    }
    now_ms_ = r.end;
    Admit();

    CapacitySample s;
    s.latency_ns = static_cast<int64_t>((r.end - r.arrive + opt_.network_ms) * kNsPerMs);
    if (r.busy) {
      s.outcome = CapacityOutcome::kBusy;
    } else {
      const double wait = r.admit - r.arrive + cold_extra_ms_;
      const double load = cold_load_ms_;
      s.latency_ns += static_cast<int64_t>((load + cold_extra_ms_) * kNsPerMs);
      if (opt_.fields != Fields::kNone) {
        s.total_ns = static_cast<int64_t>((wait + load + r.service) * kNsPerMs);
        if (load > 0) s.load_ns = static_cast<int64_t>(load * kNsPerMs);  // omitted when 0
      }
      if (opt_.fields == Fields::kAll) {
        s.prompt_eval_ns = static_cast<int64_t>(0.1 * r.service * kNsPerMs);
        s.eval_ns = static_cast<int64_t>(0.9 * r.service * kNsPerMs);
      }
    }
    cold_load_ms_ = cold_extra_ms_ = 0;
    cap_->OnFinish(r.ticket, s, static_cast<int64_t>(now_ms_));
    if (opt_.overtake && EndsNow()) return;  // the next Step answers it before any Fill
    Fill();
  }

  ModelCapacity* cap_;
  Options opt_;
  bool busy_ = false;
  double cold_load_ms_ = 0;
  double cold_extra_ms_ = 0;
  double now_ms_ = 0;
  uint64_t rng_ = 42;
  std::vector<Req> running_;
  std::deque<Req> waiting_;
  std::vector<Req> bounced_;
};

// A sample with an outcome and nothing else.
CapacitySample Ended(CapacityOutcome outcome) {
  CapacitySample s;
  s.outcome = outcome;
  return s;
}

// An answer Ollama would give: total_duration with the prompt and eval
// durations in it (ms); total - prompt - eval is the wait at the server.
CapacitySample Timed(int64_t total_ms, int64_t prompt_ms, int64_t eval_ms) {
  CapacitySample s;
  s.total_ns = total_ms * kNsPerMs;
  s.prompt_eval_ns = prompt_ms * kNsPerMs;
  s.eval_ns = eval_ms * kNsPerMs;
  return s;
}

// The limit seen after each finished request of a run.
struct LimitTrace {
  std::vector<int> limits;
  int first_at(int value) const {  // samples until the limit first equals value; -1 never
    for (std::size_t i = 0; i < limits.size(); ++i) {
      if (limits[i] == value) return static_cast<int>(i) + 1;
    }
    return -1;
  }
  int min() const { return *std::min_element(limits.begin(), limits.end()); }
  int max() const { return *std::max_element(limits.begin(), limits.end()); }
  double share_above(int value) const {
    return static_cast<double>(
               std::count_if(limits.begin(), limits.end(), [&](int l) { return l > value; })) /
           static_cast<double>(limits.size());
  }
};

LimitTrace Record(SimServer& sim, const ModelCapacity& cap, int samples) {
  LimitTrace t;
  sim.Run(samples, [&] { t.limits.push_back(cap.limit()); });
  return t;
}

// Starts from the first limit, lets the learning run, and checks that it
// reaches the capacity within kRounds rounds of requests and stays there,
// but for short probes one above it that back off: the share of samples
// taken above the capacity stays small.
void ExpectConvergence(Fields fields, double jitter, const std::vector<int>& capacities) {
  constexpr int kRounds = 20;  // a round is `capacity` finished requests
  constexpr int kTail = 3000;  // samples watched once converged
  constexpr double kProbeShare = 0.05;
  for (int c : capacities) {
    SCOPED_TRACE("capacity " + std::to_string(c) + ", jitter " + std::to_string(jitter));
    ModelCapacity cap(16);
    SimServer sim(&cap, {c, 100, jitter, fields});
    LimitTrace learn = Record(sim, cap, kRounds * c);
    const int first = learn.first_at(c);
    EXPECT_NE(first, -1) << cap.reason();
    LimitTrace tail = Record(sim, cap, kTail);
    // [C-1, C] is allowed at 8, where one noisy sample may cost a step.
    EXPECT_GE(tail.min(), c >= 8 ? c - 1 : c) << cap.reason();
    EXPECT_LE(tail.max(), c + 1) << cap.reason();
    EXPECT_LE(tail.share_above(c), kProbeShare);
    if (::testing::Test::HasFailure()) return;
  }
}

TEST(ModelCapacity, StartsAtOneAndCanStartOnlyBelowTheLimit) {
  ModelCapacity cap(16);
  EXPECT_EQ(cap.limit(), 1);
  EXPECT_TRUE(cap.CanStart());
  CapacityTicket a = cap.OnStart();
  EXPECT_EQ(a.level, 1);
  EXPECT_FALSE(cap.CanStart());
  CapacityTicket b = cap.OnStart();  // a start over the limit is still counted
  EXPECT_EQ(b.level, 2);
  EXPECT_GT(b.seq, a.seq);
  EXPECT_EQ(cap.in_flight(), 2);
  cap.OnFinish(a, Ended(CapacityOutcome::kCancelled), 0);
  cap.OnFinish(b, Ended(CapacityOutcome::kError), 0);
  EXPECT_EQ(cap.in_flight(), 0);
  EXPECT_EQ(cap.limit(), 1);  // no timing, no signal
  EXPECT_TRUE(cap.CanStart());
}

TEST(ModelCapacity, ConvergesToTheServerCapacity) {
  ExpectConvergence(Fields::kAll, 0.0, {1, 2, 4, 8});
}

TEST(ModelCapacity, ConvergesWhenServiceTimesVary) {
  ExpectConvergence(Fields::kAll, 0.3, {1, 2, 4, 8});
}

TEST(ModelCapacity, WithoutTimingFieldsFallsBackToLatencyGrowthAndConverges) {
  ExpectConvergence(Fields::kNone, 0.1, {1, 2, 4});
  ModelCapacity cap(16);
  SimServer sim(&cap, {2, 100, 0.1, Fields::kNone});
  sim.Run(200);
  EXPECT_EQ(cap.ToJson(0)["signal"], "latency");
  EXPECT_NE(cap.reason().find("latency"), std::string::npos) << cap.reason();
}

TEST(ModelCapacity, EmbedAnswersWithoutEvalDurationsUseTheFallback) {
  // /api/embed sends total and load duration only; embedding models run one
  // request at a time.
  ExpectConvergence(Fields::kTotalAndLoad, 0.1, {1});
}

TEST(ModelCapacity, FollowsACapacityDropFrom8To2WithinTenServiceTimes) {
  ModelCapacity cap(16);
  SimServer sim(&cap, {8, 100, 0.3, Fields::kAll});
  sim.Run(400);
  ASSERT_GE(cap.limit(), 8);
  const double drop = sim.now_ms();
  sim.SetCapacity(2);
  double followed = -1;
  sim.RunUntil(drop + 10 * 100, [&] {
    if (followed < 0 && cap.limit() <= 2) followed = sim.now_ms() - drop;
  });
  EXPECT_GE(followed, 0) << "limit " << cap.limit() << " ten service times after the drop; "
                         << cap.reason();
  LimitTrace after = Record(sim, cap, 1000);
  EXPECT_GE(after.min(), 2) << cap.reason();  // no overshoot below the new capacity
  EXPECT_LE(after.max(), 3);
}

TEST(ModelCapacity, FindsARaisedCapacityByProbingAgain) {
  ModelCapacity cap(16);
  SimServer sim(&cap, {2, 100, 0.0, Fields::kAll});
  sim.Run(2000);  // several failed probes of 3: the hold-off has grown
  ASSERT_EQ(cap.limit(), 2);
  sim.SetCapacity(4);
  const int most = (ModelCapacity::kMaxProbeHoldoffRounds + 20) * 4;
  EXPECT_NE(Record(sim, cap, most).first_at(4), -1) << cap.reason();
}

TEST(ModelCapacity, BusyAnswersHalveTheLimitOncePerRound) {
  ModelCapacity cap(16, 8);
  std::vector<CapacityTicket> round;
  for (int i = 0; i < 8; ++i) round.push_back(cap.OnStart());
  // All eight were sent before the server said busy: one cut, not eight.
  for (const CapacityTicket& t : round) cap.OnFinish(t, Ended(CapacityOutcome::kBusy), 5);
  EXPECT_EQ(cap.limit(), 4);
  EXPECT_NE(cap.reason().find("busy"), std::string::npos) << cap.reason();
  EXPECT_EQ(cap.changed_at_ms(), 5);
  round.clear();
  for (int i = 0; i < 4; ++i) round.push_back(cap.OnStart());
  for (const CapacityTicket& t : round) cap.OnFinish(t, Ended(CapacityOutcome::kTimeout), 6);
  EXPECT_EQ(cap.limit(), 2);
  EXPECT_NE(cap.reason().find("timed out"), std::string::npos) << cap.reason();
}

TEST(ModelCapacity, A503FloodCutsTheLimitToOneAndItRecoversAfterwards) {
  ModelCapacity cap(16);
  SimServer sim(&cap, {8, 100, 0.3, Fields::kAll});
  sim.Run(400);
  ASSERT_GE(cap.limit(), 8);
  sim.SetBusy(true);
  sim.Run(60);
  EXPECT_EQ(cap.limit(), 1) << cap.reason();
  sim.SetBusy(false);
  EXPECT_NE(Record(sim, cap, 20 * 8).first_at(8), -1) << cap.reason();
}

TEST(ModelCapacity, ACutBelowTheProvenLevelNeedsASecondQueuedSample) {
  ModelCapacity cap(16, 5);
  std::vector<CapacityTicket> t;
  for (int i = 0; i < 5; ++i) t.push_back(cap.OnStart());
  const CapacitySample queued = Timed(300, 50, 100);  // 150 ms wait on 150 ms of work: over 0.05 x
  const CapacitySample good = Timed(151, 50, 100);
  cap.OnFinish(t[4], queued, 1);  // level 5 queued, alone: not yet a cut
  EXPECT_EQ(cap.limit(), 5);
  cap.OnFinish(t[3], queued, 2);  // level 4 queued too: the higher of 4 and 3
  EXPECT_EQ(cap.limit(), 4);
  EXPECT_NE(cap.reason().find("5 in flight waited 150 ms"), std::string::npos) << cap.reason();
  EXPECT_EQ(cap.ToJson(2)["probe_ceiling"], 5);
  for (int i = 0; i < 3; ++i) cap.OnFinish(t[static_cast<size_t>(i)], good, 3);
  // Four in flight (the limit): one of them queued, alone, is cleared by a
  // good answer to a request started after it.
  std::vector<CapacityTicket> u;
  for (int i = 0; i < 4; ++i) u.push_back(cap.OnStart());
  cap.OnFinish(u[3], queued, 4);
  EXPECT_EQ(cap.limit(), 4);
  CapacityTicket after = cap.OnStart();
  cap.OnFinish(after, good, 5);
  cap.OnFinish(u[2], queued, 6);  // a new lone one
  EXPECT_EQ(cap.limit(), 4) << cap.reason();
  cap.OnFinish(u[1], queued, 7);  // confirmed: 4 in flight do not fit
  EXPECT_EQ(cap.limit(), 3) << cap.reason();
  EXPECT_NE(cap.reason().find("4 in flight waited 150 ms"), std::string::npos) << cap.reason();
}

// A probe that queues is cut back at once: the level below it is proven.
TEST(ModelCapacity, AProbeThatQueuesIsCutAtOnce) {
  ModelCapacity cap(16, 3);
  std::vector<CapacityTicket> t;
  for (int i = 0; i < 3; ++i) t.push_back(cap.OnStart());
  const CapacitySample good = Timed(101, 10, 90);
  // Two rounds of good filled samples raise 3 to 4.
  for (int i = 0; i < 20 && cap.limit() == 3; ++i) {
    cap.OnFinish(t[static_cast<size_t>(i % 3)], good, i);
    t[static_cast<size_t>(i % 3)] = cap.OnStart();
  }
  ASSERT_EQ(cap.limit(), 4) << cap.reason();
  EXPECT_EQ(cap.proven(), 3);
  CapacityTicket probe = cap.OnStart();              // level 4
  const CapacitySample queued = Timed(200, 10, 90);  // waited 100 ms: severe, Little says 2
  cap.OnFinish(probe, queued, 10);
  EXPECT_EQ(cap.limit(), 3) << cap.reason();  // the probe's step at once, 2 not yet
}

// Requests sent together may reach the server in any order; one that waits
// behind a later-sent one is not a sign that its own level does not fit.
TEST(ModelCapacity, RequestsThatOvertakeEachOtherDoNotCutBelowTheCapacity) {
  for (int c : {2, 3, 4, 6}) {
    SCOPED_TRACE("capacity " + std::to_string(c));
    ModelCapacity cap(16);
    SimServer::Options o{c, 100, 0.0, Fields::kAll};
    o.overtake = true;
    SimServer sim(&cap, o);
    sim.Run(40 * c);
    EXPECT_GE(cap.limit(), c) << cap.reason();
    LimitTrace tail = Record(sim, cap, 3000);
    EXPECT_GE(tail.min(), c) << cap.reason();
    EXPECT_LE(tail.share_above(c), 0.05);
  }
}

// While the limit probes a level that queued before, the proven level (what
// an interactive job may count on without waiting at the server) stays one
// below it; otherwise it is the limit.
TEST(ModelCapacity, ProvenStaysBelowAProbeOfALevelThatQueued) {
  ModelCapacity cap(16);
  SimServer sim(&cap, {4, 100, 0.0, Fields::kAll});
  int probes = 0, settled = 0;
  sim.Run(3000, [&] {
    ASSERT_LE(cap.proven(), 4) << "limit " << cap.limit() << ": " << cap.reason();
    if (cap.limit() == 5) ++probes;
    if (cap.limit() == 4 && cap.proven() == 4) ++settled;
  });
  EXPECT_GT(probes, 0) << "the limit never probed 5";
  EXPECT_GT(settled, 0) << "4 was never proven";
  ModelCapacity pinned(16);
  pinned.Pin(3, 0);
  EXPECT_EQ(pinned.proven(), 3);
}

TEST(ModelCapacity, AColdLoadIsNotMistakenForQueueing) {
  for (Fields fields : {Fields::kAll, Fields::kTotalAndLoad}) {
    SCOPED_TRACE(fields == Fields::kAll ? "generate" : "embed");
    ModelCapacity cap(16);
    SimServer sim(&cap, {4, 100, 0.0, fields});
    sim.Run(300);
    ASSERT_EQ(cap.limit(), 4);
    // A reload: 2 s of load_duration and half a second the warm-up costs.
    sim.ColdLoadNext(2000, 500);
    sim.Run(1);
    EXPECT_EQ(cap.limit(), 4) << cap.reason();
    // The same half second without a load is queueing (seen twice: one
    // request alone does not cut a proven limit).
    sim.ColdLoadNext(0, 500);
    sim.Run(1);
    EXPECT_EQ(cap.limit(), 4) << cap.reason();
    sim.ColdLoadNext(0, 500);
    sim.Run(1);
    EXPECT_LT(cap.limit(), 4) << cap.reason();
  }
}

TEST(ModelCapacity, NeverRaisesALimitThatIsNotFilled) {
  ModelCapacity cap(16, 4);
  SimServer sim(&cap, {8, 100, 0.0, Fields::kAll});
  sim.SetBacklog(2);  // the client never has more than two requests to send
  LimitTrace idle = Record(sim, cap, 2000);
  EXPECT_EQ(idle.max(), 4);
  EXPECT_EQ(idle.min(), 4);
  sim.SetBacklog(std::numeric_limits<int>::max());
  EXPECT_NE(Record(sim, cap, 20 * 8).first_at(8), -1) << cap.reason();
}

TEST(ModelCapacity, RequestsStartedBeforeACutDoNotRaiseItAgain) {
  ModelCapacity cap(16, 8);
  std::vector<CapacityTicket> tickets;
  for (int i = 0; i < 8; ++i) tickets.push_back(cap.OnStart());
  // The last two waited three service times: the server now serves 2.
  const CapacitySample waited = Timed(400, 10, 90);
  cap.OnFinish(tickets[7], waited, 1);
  cap.OnFinish(tickets[6], waited, 1);
  const int cut = cap.limit();
  ASSERT_LT(cut, 8) << cap.reason();
  // The other six were running already: they did not wait, yet they say
  // nothing about the new limit.
  const CapacitySample served = Timed(101, 10, 90);
  for (int i = 0; i < 6; ++i) cap.OnFinish(tickets[static_cast<size_t>(i)], served, 2);
  EXPECT_EQ(cap.limit(), cut) << cap.reason();
}

TEST(ModelCapacity, PinnedNeverMoves) {
  ModelCapacity cap(16);
  cap.Pin(4, 10);
  EXPECT_TRUE(cap.pinned());
  EXPECT_EQ(cap.limit(), 4);
  SimServer sim(&cap, {1, 100, 0.3, Fields::kAll});  // heavy queueing at the server
  LimitTrace t = Record(sim, cap, 500);
  EXPECT_EQ(t.min(), 4);
  EXPECT_EQ(t.max(), 4);
  EXPECT_GT(cap.server_wait_ms(), 100);  // the figures still follow the samples
  sim.SetBusy(true);
  EXPECT_EQ(Record(sim, cap, 50).min(), 4);
  sim.SetBusy(false);
  cap.SetBounds(2, 20);  // [workers] max still bounds it
  EXPECT_EQ(cap.limit(), 2);
  EXPECT_NE(cap.reason().find("[workers] max = 2"), std::string::npos) << cap.reason();
  cap.SetBounds(16, 30);
  EXPECT_EQ(cap.limit(), 4);
  EXPECT_EQ(cap.ToJson(30)["mode"], "pinned");
  cap.Unpin(40);
  EXPECT_FALSE(cap.pinned());
  sim.Run(200);
  EXPECT_EQ(cap.limit(), 1) << cap.reason();  // learning again
}

TEST(ModelCapacity, WorkersMaxBoundsTheLimitAndARaiseIsLearned) {
  ModelCapacity cap(16);
  SimServer sim(&cap, {8, 100, 0.0, Fields::kAll});
  sim.Run(400);
  ASSERT_GE(cap.limit(), 8);
  cap.SetBounds(4, 1000);
  EXPECT_EQ(cap.limit(), 4);
  EXPECT_EQ(cap.max(), 4);
  EXPECT_EQ(cap.reason(), "bounded by [workers] max = 4");
  EXPECT_EQ(Record(sim, cap, 500).max(), 4);
  cap.SetBounds(16, 2000);
  EXPECT_EQ(cap.limit(), 4);  // not at once: learned
  EXPECT_NE(Record(sim, cap, 20 * 8).first_at(8), -1) << cap.reason();
}

TEST(ModelCapacity, ToJsonShowsLimitReasonAndServerWait) {
  ModelCapacity cap(16);
  SimServer sim(&cap, {2, 100, 0.0, Fields::kAll});
  sim.Run(100);
  nlohmann::json j = cap.ToJson(static_cast<int64_t>(sim.now_ms()) + 250);
  EXPECT_EQ(j["mode"], "auto");
  EXPECT_EQ(j["limit"], cap.limit());
  EXPECT_EQ(j["max"], 16);
  EXPECT_EQ(j["in_flight"], cap.in_flight());
  EXPECT_EQ(j["reason"], cap.reason());
  EXPECT_GE(j["changed_ms_ago"].get<int64_t>(), 250);
  EXPECT_EQ(j["signal"], "server_wait");
  EXPECT_EQ(j["samples"], 100);
  EXPECT_NEAR(j["service_ms"].get<double>(), 100, 0.5);
  EXPECT_GE(j["server_wait_ms"].get<double>(), 0);
}

}  // namespace
}  // namespace digestd
