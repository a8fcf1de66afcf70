// Human-readable renderings of control answers for digestctl. Pure
// functions over the JSON the daemon sends; any thread.
#pragma once

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
// "1h02m", "3m05s", "12.4s".
std::string FormatDuration(double seconds);

}  // namespace digestd
