#include "app/submit_spec.h"

#include <algorithm>
#include <iterator>

#include "jobs/job_kind.h"

namespace digestd {

std::optional<size_t> FirstControlChar(std::string_view s) {
  for (size_t i = 0; i < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) return i;
  }
  return std::nullopt;
}

Status CheckJobSpec(const nlohmann::json& spec, const std::string& where, const Config& config) {
  if (!spec.is_object()) return Status::BadRequest(where + " must be an object");
  static const char* kFields[] = {"op", "id", "kind", "key", "group", "lane", "input", "replace"};
  for (const auto& item : spec.items()) {
    const std::string& k = item.key();
    if (std::find_if(std::begin(kFields), std::end(kFields),
                     [&k](const char* f) { return k == f; }) == std::end(kFields)) {
      return Status::BadRequest(where + "." + k +
                                " is not a submit field; use kind, key, group, lane, input, "
                                "replace");
    }
  }
  std::string kind, key, group, lane = "background";
  if (auto r = spec.find("replace"); r != spec.end() && !r->is_null() && !r->is_boolean()) {
    return Status::BadRequest(where + ": \"replace\" must be true or false, not " + r->type_name());
  }
  auto prefix = [&](Status st) {
    return st.ok() ? st : Status::BadRequest(where + ": " + st.message());
  };
  // kind, key, group and lane name jobs in logs, status and NOTIFY payloads;
  // a line break or terminal escape has no business there (the log escapes
  // them as well, but they are refused here first).
  auto printable = [&](const char* field, const std::string& value) {
    auto at = FirstControlChar(value);
    if (!at) return Status::Ok();
    return Status::BadRequest(where + ": \"" + field + "\" contains a control character (at byte " +
                              std::to_string(*at) +
                              "); use printable text without line breaks, tabs or escapes");
  };
  Status st = prefix(GetString(spec, "kind", &kind));
  if (st.ok()) st = printable("kind", kind);
  if (!st.ok()) return st;
  if (kind.empty()) {
    return Status::BadRequest(
        where + ": \"kind\" is required; known kinds: " + JobKindRegistry::Global().Names());
  }
  const JobKind* k = JobKindRegistry::Global().Find(kind);
  if (k == nullptr) {
    return Status::BadRequest(where + ": unknown kind \"" + kind +
                              "\"; known kinds: " + JobKindRegistry::Global().Names());
  }
  if (!(st = prefix(GetString(spec, "key", &key, kMaxKeyBytes))).ok()) return st;
  if (!(st = printable("key", key)).ok()) return st;
  if (!(st = prefix(GetString(spec, "group", &group, kMaxKeyBytes))).ok()) return st;
  if (!(st = printable("group", group)).ok()) return st;
  if (!(st = prefix(GetString(spec, "lane", &lane, 32))).ok()) return st;
  if (!(st = printable("lane", lane)).ok()) return st;
  if (!ParseLane(lane)) {
    return Status::BadRequest(where + ": \"lane\" must be \"interactive\" or \"background\"");
  }
  static const nlohmann::json kEmpty = nlohmann::json::object();
  auto input = spec.find("input");
  st = k->Validate(input == spec.end() ? kEmpty : *input, config);
  if (!st.ok()) return Status::BadRequest(where + ": " + st.message());
  return Status::Ok();
}

Status CheckSubmit(const Request& req, const Config& config,
                   std::vector<const nlohmann::json*>* specs, bool* single) {
  auto jobs = req.body.find("jobs");
  if (jobs == req.body.end()) {
    *single = true;
    Status st = CheckJobSpec(req.body, "submit", config);
    if (st.ok()) specs->push_back(&req.body);
    return st;
  }
  *single = false;
  if (!jobs->is_array() || jobs->empty()) {
    return Status::BadRequest("\"jobs\" must be a non-empty array of job objects");
  }
  if (jobs->size() > static_cast<size_t>(config.jobs.max_batch)) {
    return Status::TooLarge("a batch of " + std::to_string(jobs->size()) +
                            " jobs is above [jobs] max_batch = " +
                            std::to_string(config.jobs.max_batch) + "; split it");
  }
  // The whole batch is checked first, so a bad job rejects it before any is queued.
  for (size_t i = 0; i < jobs->size(); ++i) {
    Status st = CheckJobSpec((*jobs)[i], "jobs[" + std::to_string(i) + "]", config);
    if (!st.ok()) return st;
    specs->push_back(&(*jobs)[i]);
  }
  return Status::Ok();
}

namespace {

// A checked spec's string field; absent, null (which CheckJobSpec takes as
// absent) or anything else: `fallback`. Never throws.
std::string StringOr(const nlohmann::json& spec, const char* field, std::string fallback) {
  auto it = spec.find(field);
  if (it == spec.end() || !it->is_string()) return fallback;
  return it->get<std::string>();
}

}  // namespace

std::string SpecKey(const nlohmann::json& spec) {
  return StringOr(spec, "key", "");
}

std::string SpecGroup(const nlohmann::json& spec) {
  return StringOr(spec, "group", "");
}

std::string SpecKind(const nlohmann::json& spec) {
  return StringOr(spec, "kind", "");
}

Lane SpecLane(const nlohmann::json& spec) {
  return ParseLane(StringOr(spec, "lane", "background")).value_or(Lane::kBackground);
}

bool SpecReplace(const nlohmann::json& spec) {
  auto r = spec.find("replace");
  return r != spec.end() && r->is_boolean() && r->get<bool>();
}

Status ConflictError(const std::string& key) {
  return Status::Conflict("job \"" + key +
                          "\" already exists with another kind or input; submit it with "
                          "\"replace\": true to run it again with this input, or use a new key");
}

nlohmann::json SpecInput(const nlohmann::json& spec) {
  auto input = spec.find("input");
  return input == spec.end() || input->is_null() ? nlohmann::json::object() : *input;
}

}  // namespace digestd
