// The job management ops' requests, checked: `jobs` (a filtered, paged list,
// newest first), and the key-or-group target of `retry`, `delete` and
// `cancel`. Also the `jobs` cursor: the position after the last job of a
// page (its id in the store's order), handed to clients as an opaque
// string. Paging by that position, not by an offset, keeps later pages
// stable while new jobs arrive: a newer job sorts before the cursor and
// never shifts what follows it.
//
// Pure functions and values; any thread.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "control/protocol.h"
#include "jobs/job.h"
#include "store/job_store.h"
#include "util/status.h"

namespace digestd {

// Checks a `jobs` request's fields (bad_request naming the one that is wrong).
Result<JobsQuery> ParseJobsQuery(const nlohmann::json& body);

std::string EncodeCursor(const JobsCursor& cursor);
std::optional<JobsCursor> DecodeCursor(const std::string& text);

// The `jobs` answer's fields: the views, and "next" when `next` is set.
nlohmann::json JobsAnswer(nlohmann::json views, const std::optional<JobsCursor>& next);

// What `retry`, `delete` and `cancel` act on: exactly one of key and group.
struct JobTarget {
  std::string key;
  std::string group;
};

// `op` names the op in messages.
Result<JobTarget> ParseJobTarget(const nlohmann::json& body, const std::string& op);

// The bad_state error of a `retry` of `key`, which is in `state`.
Status NotRetryable(const std::string& key, JobState state);
// The bad_state error of a replacing submit of `key`, which is running.
Status RunningNotReplaceable(const std::string& key, const std::string& node = {});

}  // namespace digestd
