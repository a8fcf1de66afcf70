#include "app/event_hub.h"

#include <algorithm>

#include "util/clock.h"

namespace digestd {

bool EventFilter::Matches(const JobRecord& job) const {
  if (!key.empty() && job.key != key) return false;
  if (!group.empty() && job.group != group) return false;
  if (!prefix.empty() && job.key.compare(0, prefix.size(), prefix) != 0) return false;
  return !lane || job.lane == *lane;
}

Result<EventFilter> EventFilter::FromRequest(const nlohmann::json& body) {
  EventFilter f;
  for (auto [field, out] :
       {std::pair{"key", &f.key}, std::pair{"group", &f.group}, std::pair{"prefix", &f.prefix}}) {
    auto it = body.find(field);
    if (it == body.end()) continue;
    if (!it->is_string()) {
      return Status::BadRequest(std::string("subscribe: \"") + field +
                                "\" must be a string (a filter on the jobs' " + field + ")");
    }
    *out = it->get<std::string>();
  }
  if (auto it = body.find("lane"); it != body.end()) {
    std::optional<Lane> lane;
    if (it->is_string()) lane = ParseLane(it->get<std::string>());
    if (!lane) {
      return Status::BadRequest(
          "subscribe: \"lane\" must be \"interactive\" or \"background\" (or be left out for "
          "both)");
    }
    f.lane = lane;
  }
  if (auto it = body.find("partial"); it != body.end()) {
    if (!it->is_boolean()) {
      return Status::BadRequest(
          "subscribe: \"partial\" must be true (also send the text of summarize and generate "
          "jobs as it is written) or false");
    }
    f.partial = it->get<bool>();
  }
  return f;
}

void EventHub::Add(ControlServer::Stream stream, EventFilter filter) {
  subs_.push_back(Subscriber{std::move(stream), std::move(filter)});
}

std::string EventHub::EventLine(std::string_view state, const JobRecord& job, int64_t now_unix_ms) {
  nlohmann::json e = {{"event", "job"},
                      {"state", state},
                      {"key", job.key},
                      {"kind", job.kind},
                      {"lane", LaneName(job.lane)},
                      {"attempt", job.attempts},
                      {"at_ms", now_unix_ms}};
  if (!job.group.empty()) e["group"] = job.group;
  if (job.preempted > 0) e["preempted"] = job.preempted;
  const bool ended = state == "done" || state == "failed" || state == "cancelled";
  if (ended && job.started_at != 0 && job.finished_at >= job.started_at) {
    e["run_ms"] = static_cast<double>(job.finished_at - job.started_at) / 1e6;
  }
  if ((ended || state == "retried") && !job.error.empty()) e["error"] = job.error;
  return e.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

void EventHub::Publish(std::string_view state, const JobRecord& job) {
  if (subs_.empty()) return;
  std::string line;
  const int64_t now = UnixMillis();
  std::erase_if(subs_, [](const Subscriber& s) { return !s.stream.open(); });
  for (const auto& s : subs_) {
    if (!s.filter.Matches(job)) continue;
    if (line.empty()) line = EventLine(state, job, now);
    if (s.stream.Push(line)) {
      ++sent_;
    } else {
      ++dropped_;
    }
  }
}

bool EventHub::WantsText(const JobRecord& job) const {
  return std::any_of(subs_.begin(), subs_.end(), [&job](const Subscriber& s) {
    return s.filter.partial && s.filter.Matches(job) && s.stream.open();
  });
}

void EventHub::PublishText(const JobRecord& job, const std::string& text) {
  std::string line;
  for (const auto& s : subs_) {
    if (!s.filter.partial || !s.filter.Matches(job)) continue;
    if (line.empty()) {
      nlohmann::json e = {{"event", "text"},
                          {"key", job.key},
                          {"kind", job.kind},
                          {"lane", LaneName(job.lane)},
                          {"attempt", job.attempts},
                          {"at_ms", UnixMillis()},
                          {"text", text}};
      if (!job.group.empty()) e["group"] = job.group;
      line = e.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    }
    if (s.stream.Push(line)) {
      ++sent_;
    } else {
      ++dropped_;
    }
  }
}

nlohmann::json EventHub::StatusJson() const {
  size_t open = 0;
  for (const auto& s : subs_) open += s.stream.open() ? 1 : 0;
  return {{"subscribers", open}, {"sent", sent_}, {"dropped", dropped_}};
}

}  // namespace digestd
