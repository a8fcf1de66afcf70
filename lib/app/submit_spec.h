// Checking a `submit` request before anything is queued: the request's shape
// (one job, or "jobs": [...] up to [jobs] max_batch) and every job in it
// (known fields, kind, key, group, lane, and the kind's own input check).
// kind, key, group and lane may not hold control characters: they are
// refused with bad_request naming the field.
// A batch with one bad job is rejected whole.
//
// Pure functions of the request and the config; any thread (the request
// fuzzer calls them).
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"
#include "control/protocol.h"
#include "jobs/job.h"
#include "util/status.h"

namespace digestd {

inline constexpr size_t kMaxKeyBytes = 512;  // key and group
inline constexpr int64_t kMaxWaitMs = 300000;
inline constexpr int64_t kMaxTtlS = 315360000;  // ten years
inline constexpr size_t kMaxAfter = 64;         // keys one job's "after" may name

// The offset of the first control character (U+0000-U+001F or U+007F) in
// `s`, if any. kind, key, group and lane with one are refused.
std::optional<size_t> FirstControlChar(std::string_view s);

// Checks one job object; `where` names it in messages ("submit", "jobs[3]").
Status CheckJobSpec(const nlohmann::json& spec, const std::string& where, const Config& config);

// Checks a submit request. On success `specs` points into req.body at each
// job, and `single` says whether it was a one-job submit.
Status CheckSubmit(const Request& req, const Config& config,
                   std::vector<const nlohmann::json*>* specs, bool* single);

// The fields of a checked job spec, with their defaults.
std::string SpecKey(const nlohmann::json& spec);
std::string SpecGroup(const nlohmann::json& spec);
std::string SpecKind(const nlohmann::json& spec);
Lane SpecLane(const nlohmann::json& spec);
nlohmann::json SpecInput(const nlohmann::json& spec);  // {} when absent
// "replace": true -- a key that exists with another kind or input is run
// again with this one instead of answering `conflict`.
bool SpecReplace(const nlohmann::json& spec);
// "ttl_s": seconds the job's result stays fresh once done; absent:
// [precompute] default_ttl_s. 0: never expires.
int64_t SpecTtlS(const nlohmann::json& spec, const Config& config);
// "after": the keys of the jobs this one needs (earlier jobs of the same
// batch and group), without repeats; empty when absent.
std::vector<std::string> SpecAfter(const nlohmann::json& spec);
// Every part an input names ({"part": KEY, ...}, jobs/job_kind.h PartRefs)
// must be listed in "after".
Status CheckPartRefs(const nlohmann::json& spec, const std::string& where);
// The `conflict` error for `key`.
Status ConflictError(const std::string& key);

}  // namespace digestd
