#include "jobs/llm_job.h"

#include <algorithm>
#include <cmath>

namespace digestd {

namespace {

bool IsBlank(std::string_view s) {
  return s.find_first_not_of(" \t\r\n\f\v") == std::string_view::npos;
}

int64_t NanosToMs(const std::optional<int64_t>& ns) {
  return ns ? static_cast<int64_t>(std::llround(static_cast<double>(*ns) / 1e6)) : 0;
}

}  // namespace

Status CheckInputFields(const nlohmann::json& input,
                        std::initializer_list<std::string_view> allowed, std::string_view usage) {
  if (!input.is_object()) {
    return Status::BadRequest("input must be an object; " + std::string(usage));
  }
  for (const auto& [key, value] : input.items()) {
    (void)value;
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
      return Status::BadRequest("input." + key + " is not a field of this kind; " +
                                std::string(usage));
    }
  }
  return Status::Ok();
}

Status CheckStringField(const nlohmann::json& input, std::string_view field, bool required,
                        bool non_empty, size_t max_bytes, std::string_view limit_name) {
  const std::string name = "input." + std::string(field);
  auto it = input.find(std::string(field));
  if (it == input.end() || it->is_null()) {
    if (required) return Status::BadRequest(name + " is required (a string)");
    return Status::Ok();
  }
  if (!it->is_string()) return Status::BadRequest(name + " must be a string");
  const std::string& s = it->get_ref<const std::string&>();
  if (non_empty && IsBlank(s)) return Status::BadRequest(name + " must not be empty");
  if (s.size() > max_bytes) {
    return Status::BadRequest(name + " is " + std::to_string(s.size()) + " bytes, more than the " +
                              std::to_string(max_bytes) + " allowed by " + std::string(limit_name));
  }
  return Status::Ok();
}

Status CheckModelField(const nlohmann::json& input) {
  auto it = input.find("model");
  if (it == input.end() || it->is_null()) return Status::Ok();
  if (!it->is_string()) return Status::BadRequest("input.model must be a string");
  const std::string& m = it->get_ref<const std::string&>();
  bool bad = m.empty() || m.size() > 256 || std::any_of(m.begin(), m.end(), [](char c) {
               return static_cast<unsigned char>(c) <= ' ' || c == 0x7f;
             });
  if (bad) {
    return Status::BadRequest(
        "input.model must be a model name such as \"llama3.2\" (1 to 256 bytes, no spaces)");
  }
  return Status::Ok();
}

std::string StringField(const nlohmann::json& input, std::string_view field, std::string fallback) {
  auto it = input.find(std::string(field));
  if (it == input.end() || !it->is_string()) return fallback;
  return it->get<std::string>();
}

BackendTiming TimingOf(const CallStatus& status, const GenerationMetrics& metrics) {
  BackendTiming t;
  t.total_ns = metrics.total_duration_ns;
  t.load_ns = metrics.load_duration_ns;
  t.prompt_eval_ns = metrics.prompt_eval_duration_ns;
  t.eval_ns = metrics.eval_duration_ns;
  t.timed_out = status.timed_out;
  return t;
}

WorkOutcome OutcomeOf(const CallStatus& status, nlohmann::json result,
                      const GenerationMetrics& metrics) {
  WorkOutcome out;
  switch (status.cls) {
    case CallClass::kOk:
      out = WorkOutcome::Done(std::move(result));
      break;
    case CallClass::kBusy:
      out = WorkOutcome::Busy(status.error);
      break;
    case CallClass::kRetryable:
      out = WorkOutcome::Retry(status.error);
      break;
    case CallClass::kFatal:
      out = WorkOutcome::Failed(status.error);
      break;
    case CallClass::kCancelled:
      out = WorkOutcome::Cancelled(status.error);
      break;
  }
  out.backend_ns = static_cast<uint64_t>(std::max<int64_t>(status.elapsed.count(), 0));
  out.timing = TimingOf(status, metrics);
  return out;
}

CallStatus CallStatusOf(const WorkOutcome& outcome) {
  CallStatus call;
  switch (outcome.kind) {
    case WorkOutcome::Kind::kDone:
      call.cls = CallClass::kOk;
      break;
    case WorkOutcome::Kind::kBusy:
      call.cls = CallClass::kBusy;
      break;
    case WorkOutcome::Kind::kRetry:
      call.cls = CallClass::kRetryable;
      break;
    case WorkOutcome::Kind::kFailed:
      call.cls = CallClass::kFatal;
      break;
    case WorkOutcome::Kind::kCancelled:
      call.cls = CallClass::kCancelled;
      break;
  }
  call.error = outcome.error;
  call.elapsed = std::chrono::nanoseconds(static_cast<int64_t>(outcome.backend_ns));
  call.timed_out = outcome.timing.timed_out;
  return call;
}

nlohmann::json ResultMeta(const GenerationMetrics& metrics, const CallStatus& status,
                          const std::string& done_reason) {
  nlohmann::json meta = {
      {"prompt_eval_count", metrics.prompt_eval_count.value_or(0)},
      {"eval_count", metrics.eval_count.value_or(0)},
      {"total_duration_ms", NanosToMs(metrics.total_duration_ns)},
      {"load_duration_ms", NanosToMs(metrics.load_duration_ns)},
      {"request_ms", NanosToMs(status.elapsed.count())},
  };
  if (!done_reason.empty()) meta["done_reason"] = done_reason;
  return meta;
}

std::string TrimmedText(std::string_view text) {
  const char* kSpace = " \t\r\n\f\v";
  size_t b = text.find_first_not_of(kSpace);
  if (b == std::string_view::npos) return "";
  size_t e = text.find_last_not_of(kSpace);
  return std::string(text.substr(b, e - b + 1));
}

}  // namespace digestd
