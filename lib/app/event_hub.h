// EventHub: the `subscribe` op's subscribers and what they are sent. Each
// subscriber is a control connection turned into an event stream
// (ControlServer::Stream, which bounds what a slow reader leaves unread)
// with a filter; Publish sends a job's state change, as one JSON line, to
// every subscriber whose filter it matches. The line is built once per
// change and only when someone matches, so with no subscribers an event
// costs a test of an empty list.
//
// Loop thread only. Owns its subscriber list; the streams refer to their
// connections weakly, and a subscriber whose client has gone is dropped at
// the next Publish.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "control/control_server.h"
#include "jobs/job.h"
#include "util/status.h"

namespace digestd {

// What an event tells of a job: a view of a JobRecord, or of a row a store
// read for a job it keeps no record of. Borrows its strings.
struct EventJob {
  std::string_view key = {};
  std::string_view group = {};
  std::string_view kind = {};
  Lane lane = Lane::kBackground;
  int attempts = 0;
  int preempted = 0;
  double run_ms = -1;  // < 0: it has not run to an end
  std::string_view error = {};

  static EventJob Of(const JobRecord& job);
};

// A group's parts by state, for a progress event.
struct GroupProgress {
  size_t total = 0;
  size_t done = 0;
  size_t failed = 0;
  size_t cancelled = 0;
  size_t ended() const { return done + failed + cancelled; }
  // Counts one part in `state`.
  void Add(JobState state) {
    ++total;
    done += state == JobState::kDone;
    failed += state == JobState::kFailed;
    cancelled += state == JobState::kCancelled;
  }
};

// What a subscriber asked for; an empty field matches everything.
struct EventFilter {
  std::string key;
  std::string group;
  std::string prefix;  // of the key
  std::optional<Lane> lane;
  // Also the text of LLM jobs as it streams ("text" events).
  bool partial = false;

  bool Matches(const EventJob& job) const;
  // Whether progress events of `group` match: no key or lane filter, and
  // the group (or the prefix, of the group's name) matches.
  bool MatchesGroup(std::string_view group) const;
  // From a subscribe request's fields: bad_request naming a field that is
  // not what it should be.
  static Result<EventFilter> FromRequest(const nlohmann::json& body);
};

class EventHub {
 public:
  // The most bytes a subscriber may leave unread before events are dropped
  // for it (and it is told how many with {"event":"lost"}).
  static constexpr size_t kMaxUnsentBytes = 1 << 20;

  void Add(ControlServer::Stream stream, EventFilter filter);
  // Sends `state` of `job` to the subscribers it matches.
  void Publish(std::string_view state, const EventJob& job);
  // Whether a subscriber follows the text of `job` (one that starts now).
  bool WantsText(const EventJob& job) const;
  // Sends the text of `job` so far to the subscribers that follow it.
  void PublishText(const EventJob& job, const std::string& text);
  // Whether a subscriber wants progress events of `group` (so a store may
  // count its parts).
  bool WantsGroup(std::string_view group) const;
  // Sends a group's progress, after one of its parts ended.
  void PublishGroup(std::string_view group, const GroupProgress& progress);
  // The JSON line of a job event.
  static std::string EventLine(std::string_view state, const EventJob& job, int64_t now_unix_ms);

  size_t subscribers() const { return subs_.size(); }
  uint64_t sent() const { return sent_; }
  uint64_t dropped() const { return dropped_; }
  // {"subscribers","sent","dropped"} for `status`.
  nlohmann::json StatusJson() const;

 private:
  struct Subscriber {
    ControlServer::Stream stream;
    EventFilter filter;
  };
  // Pushes the line `make` builds (once, for the first match) to every
  // subscriber `wants`, counting what was sent and dropped.
  template <typename Wants, typename Make>
  void Send(Wants wants, Make make);
  std::vector<Subscriber> subs_;
  uint64_t sent_ = 0;
  uint64_t dropped_ = 0;  // lines a slow subscriber did not get
};

}  // namespace digestd
