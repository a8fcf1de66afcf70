#include "app/submit_spec.h"

#include <algorithm>
#include <iterator>
#include <unordered_map>

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
  static const char* kFields[] = {"op",   "id",    "kind",    "key",   "group",
                                  "lane", "input", "replace", "ttl_s", "after"};
  for (const auto& item : spec.items()) {
    const std::string& k = item.key();
    if (std::find_if(std::begin(kFields), std::end(kFields),
                     [&k](const char* f) { return k == f; }) == std::end(kFields)) {
      return Status::BadRequest(where + "." + k +
                                " is not a submit field; use kind, key, group, lane, input, "
                                "replace, ttl_s, after");
    }
  }
  std::string kind, key, group, lane = "background";
  if (auto r = spec.find("replace"); r != spec.end() && !r->is_null() && !r->is_boolean()) {
    return Status::BadRequest(where + ": \"replace\" must be true or false, not " + r->type_name());
  }
  if (auto t = spec.find("ttl_s"); t != spec.end() && !t->is_null()) {
    if (!t->is_number_integer() || t->get<int64_t>() < 0 || t->get<int64_t>() > kMaxTtlS) {
      return Status::BadRequest(where + ": \"ttl_s\" must be an integer from 0 to " +
                                std::to_string(kMaxTtlS) +
                                " (seconds a done result stays fresh; 0: never expires)");
    }
  }
  if (auto a = spec.find("after"); a != spec.end() && !a->is_null()) {
    if (!a->is_array() || a->empty() || a->size() > kMaxAfter) {
      return Status::BadRequest(where + ": \"after\" must be a non-empty array of at most " +
                                std::to_string(kMaxAfter) +
                                " keys of earlier jobs of the same batch and group");
    }
    for (const auto& k : *a) {
      if (!k.is_string() || k.get_ref<const std::string&>().empty() ||
          k.get_ref<const std::string&>().size() > kMaxKeyBytes ||
          FirstControlChar(k.get_ref<const std::string&>())) {
        return Status::BadRequest(where +
                                  ": \"after\" must hold keys (non-empty printable "
                                  "strings of at most 512 bytes)");
      }
    }
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
    if (st.ok() && !SpecAfter(req.body).empty()) {
      st = Status::BadRequest(
          "submit: \"after\" names earlier jobs of the same batch; submit the job with the "
          "jobs it needs in one {\"jobs\": [...]} batch");
    }
    if (st.ok()) st = CheckPartRefs(req.body, "submit");
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
  // `after` names earlier jobs of the batch, of the same group: so the
  // dependencies form no cycle, exist once the batch is stored, and are
  // found by group.
  std::unordered_map<std::string, std::string> earlier;  // key -> group
  for (size_t i = 0; i < jobs->size(); ++i) {
    const nlohmann::json& spec = (*jobs)[i];
    const std::string where = "jobs[" + std::to_string(i) + "]";
    Status st = CheckJobSpec(spec, where, config);
    if (!st.ok()) return st;
    const std::string group = SpecGroup(spec);
    for (const std::string& dep : SpecAfter(spec)) {
      if (group.empty()) {
        return Status::BadRequest(where +
                                  ": a job with \"after\" needs a \"group\" (the jobs it "
                                  "names are of the same group)");
      }
      auto it = earlier.find(dep);
      if (it == earlier.end()) {
        return Status::BadRequest(where + ": \"after\" names \"" + dep +
                                  "\", which is not the key of an earlier job of this batch; "
                                  "put the jobs it needs before it, with their keys");
      }
      if (it->second != group) {
        return Status::BadRequest(where + ": \"after\" names \"" + dep + "\" of group \"" +
                                  it->second + "\"; a job may only need jobs of its own group");
      }
    }
    if (Status refs = CheckPartRefs(spec, where); !refs.ok()) return refs;
    const std::string key = SpecKey(spec);
    if (!key.empty()) earlier.emplace(key, group);
    specs->push_back(&spec);
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

int64_t SpecTtlS(const nlohmann::json& spec, const Config& config) {
  auto t = spec.find("ttl_s");
  if (t == spec.end() || !t->is_number_integer()) return config.precompute.default_ttl_s;
  return std::clamp<int64_t>(t->get<int64_t>(), 0, kMaxTtlS);
}

std::vector<std::string> SpecAfter(const nlohmann::json& spec) {
  std::vector<std::string> out;
  auto a = spec.find("after");
  if (a == spec.end() || !a->is_array()) return out;
  for (const auto& k : *a) {
    if (k.is_string() && std::find(out.begin(), out.end(), k.get<std::string>()) == out.end()) {
      out.push_back(k.get<std::string>());
    }
  }
  return out;
}

Status CheckPartRefs(const nlohmann::json& spec, const std::string& where) {
  auto input = spec.find("input");
  if (input == spec.end()) return Status::Ok();
  std::vector<std::string> refs = PartRefs(*input);
  if (refs.empty()) return Status::Ok();
  std::vector<std::string> after = SpecAfter(spec);
  for (const std::string& r : refs) {
    if (std::find(after.begin(), after.end(), r) == after.end()) {
      return Status::BadRequest(where + ": the input names part \"" + r +
                                "\", which \"after\" does not list; add it to \"after\"");
    }
  }
  return Status::Ok();
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
