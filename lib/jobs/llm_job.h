// What the LLM job kinds (summarize_job.cpp, generate_job.cpp,
// embed_job.cpp) share: input checks whose errors name the offending field,
// and the translation of a backend call into a WorkOutcome (and back) and
// result meta.
// Pure functions; any thread.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "backend/ollama_client.h"
#include "jobs/job.h"
#include "util/status.h"

namespace digestd {

// BadRequest unless `input` is an object whose keys are all in `allowed`.
// `usage` is shown after the error ("summarize takes text, title, …").
Status CheckInputFields(const nlohmann::json& input,
                        std::initializer_list<std::string_view> allowed, std::string_view usage);

// Checks input[field]: absent is fine unless `required`; present must be a
// string, non-empty (not only whitespace) when `non_empty`, of at most
// `max_bytes` bytes. The message names "input.<field>" and, for the size, the
// config key `limit_name`.
Status CheckStringField(const nlohmann::json& input, std::string_view field, bool required,
                        bool non_empty, size_t max_bytes, std::string_view limit_name);

// input.model: absent, or a model name (1 to 256 bytes, no spaces).
Status CheckModelField(const nlohmann::json& input);

// The string at input[field], or `fallback` when absent.
std::string StringField(const nlohmann::json& input, std::string_view field,
                        std::string fallback = "");

// ok -> Done(result), busy -> Busy, retryable -> Retry, fatal -> Failed,
// cancelled -> Cancelled; errors carry `status.error`, backend_ns is the
// request's wall time (status.elapsed), and timing holds what `metrics` (the
// request's answer) says about Ollama's durations plus status.timed_out.
WorkOutcome OutcomeOf(const CallStatus& status, nlohmann::json result,
                      const GenerationMetrics& metrics = {});

// The four durations of `metrics`, each only when Ollama sent it, and
// status.timed_out.
BackendTiming TimingOf(const CallStatus& status, const GenerationMetrics& metrics);

// The inverse, for the backend's health figures (BackendHealth::OnOutcome):
// Done -> ok, Busy -> busy, Retry -> retryable, Failed -> fatal, Cancelled
// -> cancelled; error, elapsed (backend_ns) and timed_out carried over,
// http_status 0.
CallStatus CallStatusOf(const WorkOutcome& outcome);

// {"prompt_eval_count","eval_count","total_duration_ms","load_duration_ms",
//  "request_ms","done_reason"}: Ollama's counters (0 when it omitted them),
// its durations in milliseconds, and the client's own wall time for the
// request. done_reason is left out when empty.
nlohmann::json ResultMeta(const GenerationMetrics& metrics, const CallStatus& status,
                          const std::string& done_reason);

// Whitespace trimmed from both ends.
std::string TrimmedText(std::string_view text);

}  // namespace digestd
