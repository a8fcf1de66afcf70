// `subscribe` against the real daemon, on both stores: every state change a
// job goes through reaches a subscriber whose filter matches it, in order,
// and nothing else does; a subscriber that never reads stays bounded and is
// told how many events it lost; bad filters are refused.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "../support/daemon_harness.h"
#include "../support/wait.h"

namespace digestd {
namespace {

using nlohmann::json;
using testing::DaemonProcess;
using testing::WaitFor;
using namespace std::chrono_literals;

// One raw connection to the control socket: sends request lines, reads
// answer and event lines as they come.
class RawClient {
 public:
  explicit RawClient(const std::string& path) {
    fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      close(fd_);
      fd_ = -1;
    }
  }
  ~RawClient() {
    if (fd_ >= 0) close(fd_);
  }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  bool connected() const { return fd_ >= 0; }
  bool Send(const json& request) {
    std::string line = request.dump() + "\n";
    return write(fd_, line.data(), line.size()) == static_cast<ssize_t>(line.size());
  }
  // The next line, parsed; null when none came within `timeout`.
  json Next(std::chrono::milliseconds timeout = 10s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (size_t nl = buf_.find('\n'); nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return json::parse(line, nullptr, false);
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return nullptr;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) return nullptr;
      char chunk[65536];
      ssize_t n = read(fd_, chunk, sizeof(chunk));
      if (n <= 0) return nullptr;
      read_bytes_ += static_cast<size_t>(n);
      buf_.append(chunk, static_cast<size_t>(n));
    }
  }
  size_t read_bytes() const { return read_bytes_; }

 private:
  int fd_ = -1;
  std::string buf_;
  size_t read_bytes_ = 0;
};

class EventsE2E : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    // One worker: a second job waits in the lane while the first runs.
    ASSERT_TRUE(daemon_.Start({.store = GetParam(), .config = R"(
[workers]
min = 1
max = 1
interactive_reserved = 0
[daemon]
node_id = "events"
)"}));
  }
  json Subscribe(RawClient& c, const json& filter) {
    json request = filter;
    request["op"] = "subscribe";
    EXPECT_TRUE(c.Send(request));
    return c.Next();
  }
  DaemonProcess daemon_;
};

INSTANTIATE_TEST_SUITE_P(Stores, EventsE2E, ::testing::ValuesIn(testing::kStores),
                         testing::StoreName);

TEST_P(EventsE2E, EveryStateChangeOfAMatchingJobArrivesInOrder) {
  RawClient sub(daemon_.SocketPath());
  ASSERT_TRUE(sub.connected());
  json answer = Subscribe(sub, {{"prefix", "ev:"}});
  ASSERT_EQ(answer.value("ok", false), true) << answer.dump();
  EXPECT_EQ(answer.value("subscribed", false), true) << answer.dump();

  daemon_.SubmitNoop("ev:a", 600);
  ASSERT_TRUE(WaitFor([&] { return daemon_.Status()["jobs"].value("running", 0) == 1; }, 10s));
  daemon_.SubmitNoop("ev:b", 300);  // waits behind ev:a: one worker
  daemon_.SubmitNoop("other", 1);   // not under the prefix
  json cancel = daemon_.Call({{"op", "cancel"}, {"key", "ev:b"}}).value();
  ASSERT_EQ(cancel.value("ok", false), true) << cancel.dump();

  std::map<std::string, std::vector<std::string>> states;
  std::vector<json> all;
  while (states["ev:a"].empty() || states["ev:a"].back() != "done" || states["ev:b"].empty() ||
         states["ev:b"].back() != "cancelled") {
    json e = sub.Next();
    ASSERT_FALSE(e.is_null()) << "no event within 10 s; so far: " << json(all).dump();
    all.push_back(e);
    ASSERT_EQ(e.value("event", ""), "job") << e.dump();
    EXPECT_EQ(e.value("kind", ""), "noop") << e.dump();
    EXPECT_EQ(e.value("lane", ""), "background") << e.dump();
    EXPECT_GT(e.value("at_ms", int64_t{0}), 0) << e.dump();
    states[e.value("key", "")].push_back(e.value("state", ""));
    if (e.value("key", "") == "ev:a" && e.value("state", "") == "done") {
      EXPECT_EQ(e.value("attempt", 0), 1) << e.dump();
      EXPECT_GE(e.value("run_ms", 0.0), 500.0) << e.dump();
    }
  }
  EXPECT_EQ(states["ev:a"], (std::vector<std::string>{"queued", "started", "done"}))
      << json(all).dump();
  EXPECT_EQ(states["ev:b"], (std::vector<std::string>{"queued", "cancelled"})) << json(all).dump();
  EXPECT_EQ(states.count("other"), 0u) << json(all).dump();

  // What `result` says after an event is what the event said.
  json r = daemon_.CallOk({{"op", "result"}, {"key", "ev:a"}});
  EXPECT_EQ(r.value("status", ""), "done") << r.dump();
  json st = daemon_.Status();
  EXPECT_EQ(st["events"].value("subscribers", 0), 1) << st["events"].dump();
  EXPECT_GE(st["events"].value("sent", 0), 5) << st["events"].dump();
}

TEST_P(EventsE2E, FiltersByKeyGroupAndLane) {
  RawClient by_group(daemon_.SocketPath()), by_lane(daemon_.SocketPath());
  ASSERT_EQ(Subscribe(by_group, {{"group", "g1"}}).value("ok", false), true);
  ASSERT_EQ(Subscribe(by_lane, {{"lane", "interactive"}}).value("ok", false), true);
  daemon_.CallOk({{"op", "submit"},
                  {"kind", "noop"},
                  {"key", "in-g1"},
                  {"group", "g1"},
                  {"input", {{"sleep_ms", 1}}}});
  daemon_.SubmitNoop("fg", 1, "interactive");
  auto keys_until_done = [](RawClient& c, const std::string& last) {
    std::vector<std::string> keys;
    for (;;) {
      json e = c.Next();
      if (e.is_null()) return keys;
      keys.push_back(e.value("key", ""));
      if (e.value("key", "") == last && e.value("state", "") == "done") return keys;
    }
  };
  auto g = keys_until_done(by_group, "in-g1");
  ASSERT_FALSE(g.empty());
  for (const auto& k : g) EXPECT_EQ(k, "in-g1");
  EXPECT_EQ(g.size(), 3u) << "queued, started, done";
  auto l = keys_until_done(by_lane, "fg");
  ASSERT_FALSE(l.empty());
  for (const auto& k : l) EXPECT_EQ(k, "fg");
}

TEST_P(EventsE2E, GroupProgressIsToldAsItsPartsEnd) {
  RawClient by_group(daemon_.SocketPath()), by_key(daemon_.SocketPath());
  ASSERT_EQ(Subscribe(by_group, {{"group", "game:9"}}).value("ok", false), true);
  ASSERT_EQ(Subscribe(by_key, {{"key", "game:9:b"}}).value("ok", false), true);
  json parts = json::array();
  for (const char* k : {"game:9:a", "game:9:b", "game:9:c"}) {
    parts.push_back(
        {{"kind", "noop"}, {"key", k}, {"group", "game:9"}, {"input", {{"sleep_ms", 20}}}});
  }
  json batch = daemon_.CallOk({{"op", "submit"}, {"jobs", parts}});
  ASSERT_EQ(batch.value("ok", false), true) << batch.dump();
  daemon_.CallOk({{"op", "cancel"}, {"key", "game:9:c"}});

  std::vector<json> progress;
  for (;;) {
    json e = by_group.Next();
    ASSERT_FALSE(e.is_null()) << "no group event with every part ended; so far: "
                              << json(progress).dump();
    if (e.value("event", "") != "group") continue;
    progress.push_back(e);
    EXPECT_EQ(e.value("group", ""), "game:9") << e.dump();
    EXPECT_EQ(e.value("total", 0), 3) << e.dump();
    if (e.value("ended", 0) == 3) break;
  }
  for (size_t i = 1; i < progress.size(); ++i) {
    EXPECT_GE(progress[i].value("ended", 0), progress[i - 1].value("ended", 0))
        << json(progress).dump();
  }
  EXPECT_EQ(progress.back().value("done", 0) + progress.back().value("cancelled", 0), 3)
      << json(progress).dump();
  // A subscriber to one key hears of that job only.
  for (;;) {
    json e = by_key.Next(500ms);
    if (e.is_null()) break;
    EXPECT_EQ(e.value("event", ""), "job") << e.dump();
    EXPECT_EQ(e.value("key", ""), "game:9:b") << e.dump();
  }
}

TEST_P(EventsE2E, BadFiltersAreRefusedWithWhatToDo) {
  for (const json& bad :
       {json{{"op", "subscribe"}, {"lane", "urgent"}}, json{{"op", "subscribe"}, {"key", 7}},
        json{{"op", "subscribe"}, {"partial", "yes"}}}) {
    auto answer = daemon_.Call(bad);
    ASSERT_TRUE(answer.ok());
    EXPECT_EQ(answer->value("ok", true), false) << answer->dump();
    EXPECT_EQ(testing::ErrorCode(*answer), "bad_request") << answer->dump();
    EXPECT_NE(testing::ErrorMessage(*answer).find("subscribe"), std::string::npos)
        << answer->dump();
  }
}

// A subscriber that never reads: the daemon keeps at most its bound of
// unread bytes, drops the rest, and once the subscriber catches up tells it
// how many it lost before the next event. Everyone else is served meanwhile.
TEST_P(EventsE2E, ASubscriberThatNeverReadsStaysBoundedAndIsToldWhatItLost) {
  RawClient slow(daemon_.SocketPath());
  ASSERT_EQ(Subscribe(slow, json::object()).value("ok", false), true);
  // About 2 KB of events per job (three events, 500-byte keys): 3,000 jobs
  // make some 6 MB, far past the 1 MiB bound and the socket's buffers.
  const std::string pad(480, 'x');
  int submitted = 0;
  for (int b = 0; b < 3; ++b) {
    json jobs = json::array();
    for (int i = 0; i < 1000; ++i) {
      jobs.push_back({{"kind", "noop"},
                      {"key", "slow:" + pad + std::to_string(submitted++)},
                      {"input", {{"sleep_ms", 0}}}});
    }
    json answer = daemon_.CallOk({{"op", "submit"}, {"jobs", jobs}}, 60000);
    ASSERT_EQ(answer.value("accepted", 0), 1000) << answer.dump().substr(0, 500);
  }
  ASSERT_TRUE(WaitFor([&] { return daemon_.Status()["jobs"].value("done", 0) >= submitted; }, 60s));
  EXPECT_GT(daemon_.Status()["events"].value("dropped", int64_t{0}), 0);

  // Catch up: what the daemon kept for it, with every loss told by a
  // {"event":"lost"} line (the last one as soon as it has caught up).
  int64_t lost = 0;
  int lost_lines = 0;
  for (json e = slow.Next(5s); !e.is_null(); e = slow.Next(2s)) {
    if (e.value("event", "") == "lost") {
      lost += e.value("count", int64_t{0});
      ++lost_lines;
    }
  }
  EXPECT_GE(lost_lines, 1);
  json events = daemon_.Status()["events"];
  EXPECT_EQ(lost, events.value("dropped", int64_t{-1})) << events.dump();
  // Bounded: the 1 MiB the daemon keeps plus what the kernel buffers, not
  // the 6 MB the jobs made.
  EXPECT_LT(slow.read_bytes(), size_t{3} << 20);
  // Caught up, it gets every event again.
  daemon_.SubmitNoop("after", 0);
  json next = slow.Next();
  EXPECT_EQ(next.value("key", ""), "after") << next.dump();
  EXPECT_EQ(next.value("state", ""), "queued") << next.dump();
}

}  // namespace
}  // namespace digestd
