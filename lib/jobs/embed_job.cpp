// embed: {texts: [string, …], model?} -> {embeddings: [[…], …], model, dims,
// meta}. One POST /api/embed with the texts as an array input; the vectors
// come back in input order. Uses [backend] embed_model unless the job names
// a model.
#include "backend/ollama_client.h"
#include "jobs/job_kind.h"
#include "jobs/llm_job.h"

namespace digestd {
namespace {

constexpr std::string_view kUsage =
    "embed takes texts (an array of non-empty strings, required) and model (string)";

class EmbedKind final : public JobKind {
 public:
  std::string_view name() const override { return "embed"; }

  bool UsesBackend(const Config& config) const override { return config.backend.kind == "ollama"; }
  std::optional<BackendModel> ModelOf(const nlohmann::json& input,
                                      const Config& config) const override {
    if (!UsesBackend(config)) return std::nullopt;
    return BackendModel{StringField(input, "model", config.backend.embed_model), true};
  }

  Status Validate(const nlohmann::json& input, const Config& config) const override {
    Status st = CheckInputFields(input, {"texts", "model"}, kUsage);
    if (!st.ok()) return st;
    if (config.backend.kind == "extractive") {
      return Status::BadRequest(
          "embed needs an embedding model, and this digestd runs the built-in extractive "
          "backend ([backend] kind = \"extractive\"); point [backend] at an Ollama server");
    }
    auto it = input.find("texts");
    if (it == input.end() || it->is_null()) {
      return Status::BadRequest("input.texts is required (an array of strings)");
    }
    if (!it->is_array()) return Status::BadRequest("input.texts must be an array of strings");
    if (it->empty()) return Status::BadRequest("input.texts must hold at least one text");
    if (it->size() > static_cast<size_t>(config.backend.max_embed_texts)) {
      return Status::BadRequest("input.texts holds " + std::to_string(it->size()) +
                                " texts, more than the " +
                                std::to_string(config.backend.max_embed_texts) +
                                " allowed by [backend] max_embed_texts; split the job");
    }
    size_t total = 0;
    for (size_t i = 0; i < it->size(); ++i) {
      const auto& t = (*it)[i];
      const std::string name = "input.texts[" + std::to_string(i) + "]";
      if (!t.is_string()) return Status::BadRequest(name + " must be a string");
      const std::string& s = t.get_ref<const std::string&>();
      if (s.find_first_not_of(" \t\r\n\f\v") == std::string::npos) {
        return Status::BadRequest(name + " must not be empty");
      }
      total += s.size();
      if (total > static_cast<size_t>(config.backend.max_input_bytes)) {
        return Status::BadRequest("input.texts add up to more than the " +
                                  std::to_string(config.backend.max_input_bytes) +
                                  " bytes allowed by [backend] max_input_bytes (reached at " +
                                  name + ")");
      }
    }
    return CheckModelField(input);
  }

  WorkOutcome Run(const WorkContext& ctx) const override {
    const Config& config = *ctx.config;
    const nlohmann::json& input = *ctx.input;
    if (config.backend.kind == "extractive") {
      return WorkOutcome::Failed(
          "embed needs an embedding model; [backend] kind = "
          "\"extractive\" has none");
    }
    const std::string model = StringField(input, "model", config.backend.embed_model);
    nlohmann::json request = {{"model", model}, {"input", input.at("texts")}};
    ApplyServerOptions(config.backend, &request);

    OllamaClient client(config.backend);
    EmbedResult r = client.Embed(request, ctx.cancel.get(), ctx.progress.get());
    if (!r.status.ok()) return OutcomeOf(r.status, nullptr, r.metrics);
    const size_t dims = r.embeddings.empty() ? 0 : r.embeddings.front().size();
    nlohmann::json result = {{"embeddings", std::move(r.embeddings)},
                             {"model", r.model.empty() ? model : r.model},
                             {"dims", dims}};
    nlohmann::json meta = ResultMeta(r.metrics, r.status, "");
    meta.erase("eval_count");
    result["meta"] = std::move(meta);
    return OutcomeOf(r.status, std::move(result), r.metrics);
  }
};

}  // namespace

DIGESTD_REGISTER_JOB_KIND(EmbedKind);

}  // namespace digestd
