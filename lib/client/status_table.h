// Human-readable renderings of control answers for digestctl. Pure
// functions over the JSON the daemon sends; any thread.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

namespace digestd {

// `status` as a compact table a person reads at a glance.
std::string FormatStatus(const nlohmann::json& status);
// The backend lines of FormatStatus: kind, URL, up/down, breaker, in flight
// and latency; when the breaker is not closed its reason and next probe; and
// the jobs held back waiting for it.
std::string FormatBackend(const nlohmann::json& status);
// The per-model lines: each backend model's limit (learned or pinned), in
// flight, jobs waiting for it, the server wait it sees and why the limit
// last changed; then the preemption and promotion counts.
std::string FormatModels(const nlohmann::json& status);
// One job from `result`: its state, timings, and result or error.
std::string FormatJob(const nlohmann::json& job);
// `jobs` answers as one table, a line per job, the header first:
// "KEY  STATUS  KIND  LANE  ATTEMPTS  AGE  ERROR" with the key column
// as wide as the widest key (up to 48 bytes; longer keys are cut with "...")
// and the time since the submit as AGE (`now_unix_ms` is now); `header` false
// leaves the header out (later pages of --all).
std::string FormatJobList(const nlohmann::json& jobs, int64_t now_unix_ms, bool header = true);
// "1h02m", "3m05s", "12.4s".
std::string FormatDuration(double seconds);

// One `subscribe` event as one line (UTC time of day):
// "12:03:04.512  done       book:7/ch:3  summarize background attempt 1  ran 3.20 s"
// and "... lost 37 events (read their state with result)" for a lost line.
std::string FormatEvent(const nlohmann::json& event);

// Per-group progress as seen in events since it was created (digestctl
// watch): jobs queued, and how many of them ended done, failed or
// cancelled. Not thread-safe.
class GroupProgress {
 public:
  void Add(const nlohmann::json& event);
  // One line per group, most recently changed first, at most `max_groups`:
  // "book:7       [##########----------]  5/10 done, 1 failed".
  std::string Format(size_t max_groups = 8, int bar_width = 20) const;

 private:
  struct Tally {
    int queued = 0, done = 0, failed = 0, cancelled = 0;
    uint64_t last = 0;  // order of the last change
  };
  std::map<std::string, Tally> groups_;
  uint64_t seq_ = 0;
};

}  // namespace digestd
