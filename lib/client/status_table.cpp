#include "client/status_table.h"

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <vector>

namespace digestd {

namespace {

template <typename T>
T Get(const nlohmann::json& j, const char* a, const char* b, T fallback) {
  auto x = j.find(a);
  if (x == j.end() || !x->is_object()) return fallback;
  auto y = x->find(b);
  if (y == x->end()) return fallback;
  try {
    return y->get<T>();
  } catch (const nlohmann::json::exception&) {
    return fallback;
  }
}

std::string Ms(double ms) {
  char buf[32];
  if (ms >= 1000) {
    std::snprintf(buf, sizeof buf, "%.2f s", ms / 1000);
  } else {
    std::snprintf(buf, sizeof buf, "%.1f ms", ms);
  }
  return buf;
}

}  // namespace

std::string FormatBackend(const nlohmann::json& s) {
  auto b = s.value("backend", nlohmann::json::object());
  if (b.empty()) return "";
  auto breaker = b.value("breaker", nlohmann::json::object());
  std::string state = breaker.value("state", b.value("state", "closed"));
  const char* health = state == "closed" ? "up" : state == "open" ? "down" : "probing";
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line, "backend      %s  %s  %s  breaker %s  in flight %d",
                b.value("kind", "?").c_str(), b.value("url", "?").c_str(), health, state.c_str(),
                b.value("in_flight", 0));
  out += line;
  auto lat = b.value("latency", nlohmann::json::object());
  if (lat.value("count", 0ULL) == 0) {
    out += "  latency (no requests yet)\n";
  } else {
    out += "  latency p50 " + Ms(lat.value("p50_ms", 0.0)) + " p99 " +
           Ms(lat.value("p99_ms", 0.0)) + "\n";
  }
  if (state != "closed") {
    out += "  breaker    " + state;
    if (breaker.contains("reason")) out += ": " + breaker.value("reason", "");
    if (breaker.contains("probe_in_ms")) {
      out += "; next probe in " +
             FormatDuration(static_cast<double>(breaker.value("probe_in_ms", 0LL)) / 1000.0);
    } else if (state == "half-open") {
      out += "; probing now";
    }
    out += "\n";
  }
  auto held = b.value("held", 0LL);
  if (held > 0) {
    std::snprintf(line, sizeof line, "  held       %lld queued jobs wait for the backend (%s)\n",
                  held,
                  state == "closed" ? "it answered busy; they start when the hold ends"
                                    : "they start when the breaker closes");
    out += line;
  }
  return out;
}

std::string FormatModels(const nlohmann::json& s) {
  std::string out;
  char line[512];
  auto models = s.value("models", nlohmann::json::array());
  if (!models.is_array()) return out;
  for (const auto& m : models) {
    if (!m.is_object()) continue;
    std::snprintf(line, sizeof line,
                  "  model      %s%s  limit %d (%s, max %d)  in flight %d  waiting %d  server "
                  "wait %s\n",
                  m.value("model", "?").c_str(), m.value("embedding", false) ? " (embed)" : "",
                  m.value("limit", 0), m.value("mode", "?").c_str(), m.value("max", 0),
                  m.value("in_flight", 0), m.value("waiting", 0),
                  Ms(m.value("server_wait_ms", 0.0)).c_str());
    out += line;
    std::string why = m.value("reason", "");
    if (!why.empty()) {
      out += "             limit " + why + " (" +
             FormatDuration(m.value("changed_ms_ago", 0.0) / 1000.0) + " ago)\n";
    }
  }
  auto pre = Get(s, "jobs", "preempted", 0ULL);
  auto pro = Get(s, "jobs", "promoted", 0ULL);
  if (pre > 0 || pro > 0) {
    std::snprintf(line, sizeof line,
                  "  lanes      %llu background requests preempted for interactive jobs, %llu "
                  "jobs promoted (a result waited for them)\n",
                  pre, pro);
    out += line;
  }
  return out;
}

std::string FormatDuration(double s) {
  char buf[32];
  if (s < 60) {
    std::snprintf(buf, sizeof buf, "%.1fs", s);
  } else if (s < 3600) {
    std::snprintf(buf, sizeof buf, "%dm%02ds", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%dh%02dm", static_cast<int>(s) / 3600,
                  static_cast<int>(s) % 3600 / 60);
  }
  return buf;
}

std::string FormatStatus(const nlohmann::json& s) {
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line, "digestd %s  pid %lld  node %s  up %s  %s\n",
                s.value("version", "?").c_str(), static_cast<long long>(s.value("pid", 0)),
                s.value("node_id", "?").c_str(), FormatDuration(s.value("uptime_s", 0.0)).c_str(),
                s.value("state", "?").c_str());
  out += line;
  std::snprintf(
      line, sizeof line, "workers      busy %d/%d   min %d  max %d  reserved %d (interactive)\n",
      Get(s, "workers", "busy", 0), Get(s, "workers", "limit", 0), Get(s, "workers", "min", 0),
      Get(s, "workers", "max", 0), Get(s, "workers", "reserved", 0));
  out += line;
  out += "queue        depth / capacity   running\n";
  for (const char* lane : {"interactive", "background"}) {
    auto q = s.value("queues", nlohmann::json::object()).value(lane, nlohmann::json::object());
    std::snprintf(line, sizeof line, "  %-11s %6lld / %-8lld   %lld\n", lane, q.value("depth", 0LL),
                  q.value("capacity", 0LL), q.value("running", 0LL));
    out += line;
  }
  std::snprintf(line, sizeof line,
                "jobs         submitted %llu  running %llu  done %llu  failed %llu  cancelled "
                "%llu\n",
                Get(s, "jobs", "submitted", 0ULL), Get(s, "jobs", "running", 0ULL),
                Get(s, "jobs", "done", 0ULL), Get(s, "jobs", "failed", 0ULL),
                Get(s, "jobs", "cancelled", 0ULL));
  out += line;
  // Waits for results: did the app precompute early enough?
  auto hit = Get(s, "precompute", "hit", 0ULL), late = Get(s, "precompute", "late", 0ULL),
       miss = Get(s, "precompute", "miss", 0ULL);
  if (hit + late + miss > 0) {
    std::snprintf(line, sizeof line,
                  "waits        hit %llu  late %llu  miss %llu  (%.0f%% ready when asked)\n", hit,
                  late, miss,
                  100.0 * static_cast<double>(hit) / static_cast<double>(hit + late + miss));
    out += line;
  }
  auto count = Get(s, "latency", "count", 0ULL);
  if (count == 0) {
    out += "latency      (no finished jobs yet)\n";
  } else {
    std::snprintf(line, sizeof line, "latency      p50 %s  p95 %s  p99 %s  (last %llu jobs)\n",
                  Ms(Get(s, "latency", "p50_ms", 0.0)).c_str(),
                  Ms(Get(s, "latency", "p95_ms", 0.0)).c_str(),
                  Ms(Get(s, "latency", "p99_ms", 0.0)).c_str(), count);
    out += line;
  }
  out += FormatBackend(s);
  out += FormatModels(s);
  auto db = s.value("db", nlohmann::json::object());
  if (db.value("store", "") == "postgres") {
    auto w = db.value("writer", nlohmann::json::object());
    auto bl = db.value("backlog", nlohmann::json::object());
    auto lane = [&](const char* l, const char* f) {
      return bl.value(l, nlohmann::json::object()).value(f, 0LL);
    };
    std::snprintf(line, sizeof line, "db           %s  %s\n", db.value("state", "?").c_str(),
                  db.value("target", "").c_str());
    out += line;
    if (db.value("state", "") != "up" && db.contains("last_error")) {
      out += "  error      " + db.value("last_error", "") + "\n";
    }
    std::snprintf(line, sizeof line,
                  "  writer     ring %lld / %lld  rows %llu  batches %llu  last commit %s  "
                  "%.1f commits per 1000 finished jobs\n",
                  w.value("depth", 0LL), w.value("capacity", 0LL), w.value("rows_written", 0ULL),
                  w.value("batches", 0ULL), Ms(w.value("last_commit_ms", 0.0)).c_str(),
                  w.value("commits_per_1000_results", 0.0));
    out += line;
    std::snprintf(line, sizeof line,
                  "  backlog    interactive %lld queued %lld delayed %lld running   background "
                  "%lld queued %lld delayed %lld running\n",
                  lane("interactive", "queued"), lane("interactive", "delayed"),
                  lane("interactive", "running"), lane("background", "queued"),
                  lane("background", "delayed"), lane("background", "running"));
    out += line;
    if (db.contains("claims")) {
      auto c = db.value("claims", nlohmann::json::object());
      auto pace = [&](const char* l, const char* f) {
        return c.value(l, nlohmann::json::object()).value(f, 0.0);
      };
      std::snprintf(line, sizeof line,
                    "  claims     %llu sent (%llu empty), %llu jobs; per claim now: interactive "
                    "%.0f, background %.0f (starts/s %.1f, %.1f)\n",
                    c.value("sent", 0ULL), c.value("empty", 0ULL), c.value("jobs", 0ULL),
                    pace("interactive", "claim_size"), pace("background", "claim_size"),
                    pace("interactive", "start_rate_per_s"),
                    pace("background", "start_rate_per_s"));
      out += line;
    }
  } else if (db.value("store", "") == "memory") {
    out += "db           none: jobs are kept in memory only ([jobs] store = \"memory\")\n";
  }
  std::snprintf(line, sizeof line, "clients      %llu connected, %llu requests served\n",
                Get(s, "control", "clients", 0ULL), Get(s, "control", "requests", 0ULL));
  out += line;
  return out;
}

std::string FormatJobList(const nlohmann::json& jobs, int64_t now_unix_ms, bool header) {
  constexpr size_t kMaxKey = 48;
  auto cut = [](std::string s, size_t n) { return s.size() <= n ? s : s.substr(0, n - 3) + "..."; };
  size_t width = 3;
  for (const auto& j : jobs) width = std::max(width, std::min(kMaxKey, j.value("key", "").size()));
  std::string out;
  char line[1024];
  if (header) {
    std::snprintf(line, sizeof line, "%-*s  %-9s  %-9s  %-11s  %8s  %-9s  %s\n",
                  static_cast<int>(width), "KEY", "STATUS", "KIND", "LANE", "ATTEMPTS", "AGE",
                  "ERROR");
    out += line;
  }
  for (const auto& j : jobs) {
    double age_s = static_cast<double>(std::max<int64_t>(
                       0, now_unix_ms - j.value("submitted_at_ms", now_unix_ms))) /
                   1000.0;
    std::string error = j.value("error", j.value("last_error", ""));
    std::replace(error.begin(), error.end(), '\n', ' ');
    std::string attempts =
        std::to_string(j.value("attempts", 0)) + "/" + std::to_string(j.value("max_attempts", 0));
    std::snprintf(line, sizeof line, "%-*s  %-9s  %-9s  %-11s  %8s  %-9s  %s\n",
                  static_cast<int>(width), cut(j.value("key", ""), kMaxKey).c_str(),
                  j.value("status", "?").c_str(), cut(j.value("kind", "?"), 9).c_str(),
                  j.value("lane", "?").c_str(), attempts.c_str(), FormatDuration(age_s).c_str(),
                  cut(error, 80).c_str());
    out += line;
  }
  return out;
}

std::string FormatJob(const nlohmann::json& j) {
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line, "%s  %s  %s  lane %s  attempts %d  queued %s",
                j.value("key", "?").c_str(), j.value("kind", "?").c_str(),
                j.value("status", "?").c_str(), j.value("lane", "?").c_str(),
                j.value("attempts", 0), Ms(j.value("queued_ms", 0.0)).c_str());
  out += line;
  if (j.contains("run_ms")) out += "  ran " + Ms(j.value("run_ms", 0.0));
  if (j.value("busy_retries", 0) > 0) {
    out += "  busy retries " + std::to_string(j.value("busy_retries", 0));
  }
  if (j.value("preempted", 0) > 0) out += "  preempted " + std::to_string(j.value("preempted", 0));
  out += "\n";
  if (j.contains("result")) out += "result: " + j["result"].dump(2) + "\n";
  if (j.contains("error")) out += "error: " + j.value("error", "") + "\n";
  if (j.contains("last_error")) {
    out += "last error (before it was queued again): " + j.value("last_error", "") + "\n";
  }
  return out;
}

std::string FormatEvent(const nlohmann::json& e) {
  char when[32] = "--:--:--.---";
  if (int64_t ms = e.value("at_ms", int64_t{0}); ms > 0) {
    time_t secs = static_cast<time_t>(ms / 1000);
    tm t{};
    gmtime_r(&secs, &t);
    std::snprintf(when, sizeof(when), "%02d:%02d:%02d.%03d", t.tm_hour, t.tm_min, t.tm_sec,
                  static_cast<int>(ms % 1000));
  }
  if (e.value("event", "") == "lost") {
    return std::string(when) + "  lost " + std::to_string(e.value("count", int64_t{0})) +
           " events (read their state with result)\n";
  }
  char head[96];
  std::snprintf(head, sizeof(head), "%s  %-10s ", when, e.value("state", "?").c_str());
  std::string out = head;
  out += e.value("key", "");
  out += "  " + e.value("kind", "") + " " + e.value("lane", "");
  if (int attempt = e.value("attempt", 0); attempt > 0)
    out += " attempt " + std::to_string(attempt);
  if (e.contains("run_ms")) out += "  ran " + FormatDuration(e.value("run_ms", 0.0) / 1000);
  if (e.contains("error")) out += "  " + e.value("error", "");
  out += '\n';
  return out;
}

void GroupProgress::Add(const nlohmann::json& e) {
  const std::string group = e.value("group", "");
  if (e.value("event", "") != "job" || group.empty()) return;
  Tally& t = groups_[group];
  const std::string state = e.value("state", "");
  if (state == "queued") {
    ++t.queued;
  } else if (state == "done") {
    ++t.done;
  } else if (state == "failed") {
    ++t.failed;
  } else if (state == "cancelled") {
    ++t.cancelled;
  } else {
    return;
  }
  t.last = ++seq_;
}

std::string GroupProgress::Format(size_t max_groups, int bar_width) const {
  std::vector<std::pair<uint64_t, const std::string*>> order;
  for (const auto& [name, t] : groups_) order.emplace_back(t.last, &name);
  std::sort(order.begin(), order.end(),
            [](const auto& a, const auto& b) { return a.first > b.first; });
  std::string out;
  for (size_t i = 0; i < order.size() && i < max_groups; ++i) {
    const Tally& t = groups_.at(*order[i].second);
    const int ended = t.done + t.failed + t.cancelled;
    // Jobs queued before the watch began are seen only when they end.
    const int total = std::max(t.queued, ended);
    const int filled = total > 0 ? bar_width * ended / total : 0;
    char line[160];
    std::snprintf(line, sizeof(line), "  %-24s [%s%s] %3d/%-3d done", order[i].second->c_str(),
                  std::string(static_cast<size_t>(filled), '#').c_str(),
                  std::string(static_cast<size_t>(bar_width - filled), '-').c_str(), t.done, total);
    out += line;
    if (t.failed > 0) out += ", " + std::to_string(t.failed) + " failed";
    if (t.cancelled > 0) out += ", " + std::to_string(t.cancelled) + " cancelled";
    out += '\n';
  }
  return out;
}

}  // namespace digestd
