#include "app/job_query.h"

#include <algorithm>
#include <charconv>

#include "app/submit_spec.h"
#include "store/job_store.h"

namespace digestd {

namespace {

constexpr std::string_view kCursorPrefix = "c1.";

Status ParseStates(const nlohmann::json& body, std::vector<JobState>* out) {
  auto it = body.find("status");
  if (it == body.end() || it->is_null()) return Status::Ok();
  std::vector<nlohmann::json> names;
  if (it->is_string()) {
    names.push_back(*it);
  } else if (it->is_array()) {
    names.assign(it->begin(), it->end());
  } else {
    return Status::BadRequest("\"status\" must be a job state or an array of them");
  }
  for (const auto& n : names) {
    std::optional<JobState> s = n.is_string() ? ParseJobState(n.get<std::string>()) : std::nullopt;
    if (!s) {
      return Status::BadRequest("\"status\" holds " +
                                n.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) +
                                "; use queued, running, done, failed or cancelled");
    }
    out->push_back(*s);
  }
  return Status::Ok();
}

}  // namespace

Result<JobsQuery> ParseJobsQuery(const nlohmann::json& body) {
  JobsQuery q;
  std::string lane, cursor;
  Status st = ParseStates(body, &q.states);
  if (st.ok()) st = GetString(body, "group", &q.group, kMaxKeyBytes);
  if (st.ok()) st = GetString(body, "kind", &q.kind, 256);
  if (st.ok()) st = GetString(body, "lane", &lane, 32);
  if (st.ok()) st = GetString(body, "key_prefix", &q.key_prefix, kMaxKeyBytes);
  if (st.ok()) st = GetInt(body, "max_age_s", &q.max_age_s, 0, INT32_MAX);
  if (st.ok()) st = GetInt(body, "min_age_s", &q.min_age_s, 0, INT32_MAX);
  if (st.ok()) st = GetInt(body, "limit", &q.limit, 1, kJobsMaxLimit);
  if (st.ok()) st = GetString(body, "cursor", &cursor, 128);
  if (!st.ok()) return st;
  if (!lane.empty()) {
    q.lane = ParseLane(lane);
    if (!q.lane) return Status::BadRequest("\"lane\" must be \"interactive\" or \"background\"");
  }
  if (q.max_age_s >= 0 && q.min_age_s > q.max_age_s) {
    return Status::BadRequest("\"min_age_s\" (" + std::to_string(q.min_age_s) +
                              ") is above \"max_age_s\" (" + std::to_string(q.max_age_s) +
                              "), so no job could match; swap them");
  }
  if (!cursor.empty()) {
    q.after = DecodeCursor(cursor);
    if (!q.after) {
      return Status::BadRequest(
          "\"cursor\" is not one digestd gave out; pass the \"next\" of the previous page "
          "unchanged, or leave it out to start from the newest job");
    }
  }
  return q;
}

std::string EncodeCursor(const JobsCursor& cursor) {
  return std::string(kCursorPrefix) + std::to_string(cursor.id);
}

std::optional<JobsCursor> DecodeCursor(const std::string& text) {
  if (text.compare(0, kCursorPrefix.size(), kCursorPrefix) != 0) return std::nullopt;
  const char* p = text.data() + kCursorPrefix.size();
  const char* end = text.data() + text.size();
  JobsCursor c;
  auto [last, ec] = std::from_chars(p, end, c.id);
  if (p == end || ec != std::errc() || last != end) return std::nullopt;
  return c;
}

nlohmann::json JobsAnswer(nlohmann::json views, const std::optional<JobsCursor>& next) {
  nlohmann::json out = {{"jobs", std::move(views)}};
  if (next) out["next"] = EncodeCursor(*next);
  return out;
}

Result<JobTarget> ParseJobTarget(const nlohmann::json& body, const std::string& op) {
  JobTarget t;
  Status st = GetString(body, "key", &t.key, kMaxKeyBytes);
  if (st.ok()) st = GetString(body, "group", &t.group, kMaxKeyBytes);
  if (st.ok() && t.key.empty() == t.group.empty()) {
    st = Status::BadRequest(op +
                            " needs exactly one of \"key\" (one job) or \"group\" (every "
                            "job of the group)");
  }
  if (!st.ok()) return st;
  return t;
}

Status NotRetryable(const std::string& key, JobState state) {
  std::string what = state == JobState::kDone
                         ? "; a done job runs again only with new input: submit it with "
                           "\"replace\": true"
                         : "; wait until it has ended, then retry it if it failed";
  return Status::BadState("job \"" + key + "\" is " + std::string(JobStateName(state)) +
                          "; only failed or cancelled jobs can be retried" + what);
}

Status RunningNotReplaceable(const std::string& key, const std::string& node) {
  return Status::BadState("job \"" + key + "\" is running" +
                          (node.empty() ? std::string() : " on node " + node) +
                          " and cannot be replaced while it runs; cancel it, or wait for it to "
                          "end, then submit it again with \"replace\": true");
}

}  // namespace digestd
