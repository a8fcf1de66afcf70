#include "app/event_hub.h"

#include <algorithm>

#include "util/clock.h"

namespace digestd {

EventJob EventJob::Of(const JobRecord& job) {
  EventJob e;
  e.key = job.key;
  e.group = job.group;
  e.kind = job.kind;
  e.lane = job.lane;
  e.attempts = job.attempts;
  e.preempted = job.preempted;
  if (job.started_at != 0 && job.finished_at >= job.started_at) {
    e.run_ms = static_cast<double>(job.finished_at - job.started_at) / 1e6;
  }
  e.error = job.error;
  return e;
}

bool EventFilter::Matches(const EventJob& job) const {
  if (!key.empty() && job.key != key) return false;
  if (!group.empty() && job.group != group) return false;
  if (!prefix.empty() && !job.key.starts_with(prefix)) return false;
  return !lane || job.lane == *lane;
}

bool EventFilter::MatchesGroup(std::string_view g) const {
  if (!key.empty() || lane) return false;
  if (!group.empty() && g != group) return false;
  return prefix.empty() || g.starts_with(prefix);
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

std::string EventHub::EventLine(std::string_view state, const EventJob& job, int64_t now_unix_ms) {
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
  if (ended && job.run_ms >= 0) e["run_ms"] = job.run_ms;
  if ((ended || state == "retried") && !job.error.empty()) e["error"] = job.error;
  return e.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

template <typename Wants, typename Make>
void EventHub::Send(Wants wants, Make make) {
  std::erase_if(subs_, [](const Subscriber& s) { return !s.stream.open(); });
  std::string line;
  for (const auto& s : subs_) {
    if (!wants(s.filter)) continue;
    if (line.empty()) line = make();
    if (s.stream.Push(line)) {
      ++sent_;
    } else {
      ++dropped_;
    }
  }
}

void EventHub::Publish(std::string_view state, const EventJob& job) {
  if (subs_.empty()) return;
  Send([&job](const EventFilter& f) { return f.Matches(job); },
       [&] { return EventLine(state, job, UnixMillis()); });
}

bool EventHub::WantsText(const EventJob& job) const {
  return std::any_of(subs_.begin(), subs_.end(), [&job](const Subscriber& s) {
    return s.filter.partial && s.filter.Matches(job) && s.stream.open();
  });
}

void EventHub::PublishText(const EventJob& job, const std::string& text) {
  Send([&job](const EventFilter& f) { return f.partial && f.Matches(job); },
       [&] {
         nlohmann::json e = {{"event", "text"},
                             {"key", job.key},
                             {"kind", job.kind},
                             {"lane", LaneName(job.lane)},
                             {"attempt", job.attempts},
                             {"at_ms", UnixMillis()},
                             {"text", text}};
         if (!job.group.empty()) e["group"] = job.group;
         return e.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
       });
}

bool EventHub::WantsGroup(std::string_view group) const {
  if (group.empty()) return false;
  return std::any_of(subs_.begin(), subs_.end(), [group](const Subscriber& s) {
    return s.filter.MatchesGroup(group) && s.stream.open();
  });
}

void EventHub::PublishGroup(std::string_view group, const GroupProgress& p) {
  if (subs_.empty() || group.empty()) return;
  Send([group](const EventFilter& f) { return f.MatchesGroup(group); },
       [&] {
         nlohmann::json e = {{"event", "group"},         {"group", group},
                             {"total", p.total},         {"ended", p.ended()},
                             {"done", p.done},           {"failed", p.failed},
                             {"cancelled", p.cancelled}, {"at_ms", UnixMillis()}};
         return e.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
       });
}

nlohmann::json EventHub::StatusJson() const {
  size_t open = 0;
  for (const auto& s : subs_) open += s.stream.open() ? 1 : 0;
  return {{"subscribers", open}, {"sent", sent_}, {"dropped", dropped_}};
}

}  // namespace digestd
