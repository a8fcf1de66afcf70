// generate: {prompt, system?, model?, options?, format?, think?} ->
// {text, model, thinking?, truncated?, meta}.
//
// POST /api/generate with prompt, system, format and options passed through.
// think is false unless the job asks otherwise (thinking models think by
// default, which costs time). Options that make Ollama reload the model
// (num_ctx and the other load-time options) are refused at submit: they are
// fixed per server in [backend], or every job could force a reload.
#include "backend/ollama_client.h"
#include "jobs/job_kind.h"
#include "jobs/llm_job.h"

namespace digestd {
namespace {

constexpr std::string_view kUsage =
    "generate takes prompt (string, required), system (string), model (string), options "
    "(object), format (\"json\" or a JSON schema object) and think (true, false, \"low\", "
    "\"medium\", \"high\" or \"max\")";

// Ollama's load-time ("runner") options: a different value forces a reload.
constexpr std::string_view kRunnerOptions[] = {
    "num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "draft_num_predict"};
constexpr std::string_view kIntegerOptions[] = {"num_predict", "num_keep", "seed", "top_k",
                                                "repeat_last_n"};
constexpr std::string_view kNumberOptions[] = {
    "temperature",      "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty",
    "frequency_penalty"};

template <size_t N>
bool In(const std::string_view (&list)[N], std::string_view key) {
  for (std::string_view k : list) {
    if (k == key) return true;
  }
  return false;
}

Status CheckOptions(const nlohmann::json& options) {
  if (!options.is_object()) {
    return Status::BadRequest("input.options must be an object, such as {\"temperature\": 0.2}");
  }
  for (const auto& [key, value] : options.items()) {
    const std::string name = "input.options." + key;
    if (In(kRunnerOptions, key)) {
      return Status::BadRequest(name +
                                " is not allowed: changing it makes Ollama reload the model, so "
                                "it is fixed for all jobs in [backend] (num_ctx)");
    }
    if (In(kIntegerOptions, key)) {
      if (!value.is_number_integer()) return Status::BadRequest(name + " must be an integer");
    } else if (In(kNumberOptions, key)) {
      if (!value.is_number()) return Status::BadRequest(name + " must be a number");
    } else if (key == "stop") {
      bool ok = value.is_array() && value.size() <= 16;
      for (const auto& s : value)
        ok = ok && s.is_string() && !s.get_ref<const std::string&>().empty();
      if (!ok) return Status::BadRequest(name + " must be an array of up to 16 non-empty strings");
    } else {
      return Status::BadRequest(
          name +
          " is not an option digestd passes on; use num_predict, num_keep, seed, top_k, "
          "repeat_last_n, temperature, top_p, min_p, typical_p, repeat_penalty, "
          "presence_penalty, frequency_penalty or stop");
    }
  }
  return Status::Ok();
}

class GenerateKind final : public JobKind {
 public:
  std::string_view name() const override { return "generate"; }

  bool UsesBackend(const Config& config) const override { return config.backend.kind == "ollama"; }
  std::optional<BackendModel> ModelOf(const nlohmann::json& input,
                                      const Config& config) const override {
    if (!UsesBackend(config)) return std::nullopt;
    return BackendModel{StringField(input, "model", config.backend.model), false};
  }

  Status Validate(const nlohmann::json& input, const Config& config) const override {
    Status st = CheckInputFields(input, {"prompt", "system", "model", "options", "format", "think"},
                                 kUsage);
    if (!st.ok()) return st;
    if (config.backend.kind == "extractive") {
      return Status::BadRequest(
          "generate needs an LLM, and this digestd runs the built-in extractive backend "
          "([backend] kind = \"extractive\"); point [backend] at an Ollama server");
    }
    const auto limit = static_cast<size_t>(config.backend.max_input_bytes);
    if (!(st = CheckStringField(input, "prompt", true, true, limit, "[backend] max_input_bytes"))
             .ok()) {
      return st;
    }
    if (!(st = CheckStringField(input, "system", false, false, limit, "[backend] max_input_bytes"))
             .ok()) {
      return st;
    }
    if (!(st = CheckModelField(input)).ok()) return st;
    if (auto it = input.find("options"); it != input.end() && !it->is_null()) {
      if (!(st = CheckOptions(*it)).ok()) return st;
    }
    if (auto it = input.find("format"); it != input.end() && !it->is_null()) {
      if (!(*it == "json" || it->is_object())) {
        return Status::BadRequest(
            "input.format must be \"json\" or a JSON schema object, such as "
            "{\"type\":\"object\",\"properties\":{…}}");
      }
      if (it->dump().size() > limit) {
        return Status::BadRequest("input.format is larger than [backend] max_input_bytes");
      }
    }
    if (auto it = input.find("think"); it != input.end() && !it->is_null()) {
      bool ok =
          it->is_boolean() || *it == "low" || *it == "medium" || *it == "high" || *it == "max";
      if (!ok) {
        return Status::BadRequest(
            "input.think must be true, false, \"low\", \"medium\", \"high\" or \"max\"");
      }
    }
    return Status::Ok();
  }

  WorkOutcome Run(const WorkContext& ctx) const override {
    const Config& config = *ctx.config;
    const nlohmann::json& input = *ctx.input;
    if (config.backend.kind == "extractive") {
      return WorkOutcome::Failed("generate needs an LLM; [backend] kind = \"extractive\" has none");
    }
    const std::string model = StringField(input, "model", config.backend.model);
    nlohmann::json request = {{"model", model}, {"prompt", input.at("prompt")}, {"think", false}};
    for (const char* field : {"system", "format", "think", "options"}) {
      if (auto it = input.find(field); it != input.end() && !it->is_null()) request[field] = *it;
    }
    ApplyServerOptions(config.backend, &request);

    OllamaClient client(config.backend);
    GenerateResult r =
        client.Generate(request, ctx.cancel.get(), ctx.progress.get(), ctx.text.get());
    if (!r.status.ok()) return OutcomeOf(r.status, nullptr, r.metrics);
    nlohmann::json result = {{"text", r.text}, {"model", r.model.empty() ? model : r.model}};
    if (!r.thinking.empty()) result["thinking"] = r.thinking;
    if (r.truncated()) result["truncated"] = true;
    result["meta"] = ResultMeta(r.metrics, r.status, r.done_reason);
    return OutcomeOf(r.status, std::move(result), r.metrics);
  }
};

}  // namespace

DIGESTD_REGISTER_JOB_KIND(GenerateKind);

}  // namespace digestd
