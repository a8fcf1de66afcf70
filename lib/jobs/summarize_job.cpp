// summarize: {text, title?, context?, max_words?, model?} ->
// {summary, model, fallback: false, truncated?, meta}.
//
// With [backend] kind = "ollama" the chapter goes to POST /api/chat: the
// system message is [summarize] system_prompt; the user message carries the
// title, the story so far (`context`, to know who is who) and the word
// limit. The request always sets options.num_predict (a runaway generation
// must end) and think: false (a thinking model would otherwise spend its
// tokens thinking). done_reason "length" is stored as truncated: true. With
// kind = "extractive" the summary is the leading sentences of the text.
// On final failure the job stores SummaryFallback (summarize_fallback.h)
// instead, through FinalFailureResult, so a summary screen never shows a hole.
#include <algorithm>

#include "backend/ollama_client.h"
#include "jobs/job_kind.h"
#include "jobs/llm_job.h"
#include "jobs/summarize_fallback.h"

namespace digestd {
namespace {

constexpr std::string_view kUsage =
    "summarize takes text (string, required), title, context (strings), max_words (integer "
    "1 to 1000) and model (string)";
constexpr size_t kMaxTitleBytes = 1024;

class SummarizeKind final : public JobKind {
 public:
  std::string_view name() const override { return "summarize"; }

  bool UsesBackend(const Config& config) const override { return config.backend.kind == "ollama"; }
  std::optional<BackendModel> ModelOf(const nlohmann::json& input,
                                      const Config& config) const override {
    if (!UsesBackend(config)) return std::nullopt;
    return BackendModel{StringField(input, "model", config.backend.model), false};
  }

  // [summarize] fallback: the leading sentences, the placeholder, or null.
  nlohmann::json FinalFailureResult(const nlohmann::json& input,
                                    const Config& config) const override {
    return SummaryFallback(input, config);
  }

  Status Validate(const nlohmann::json& input, const Config& config) const override {
    Status st = CheckInputFields(input, {"text", "title", "context", "max_words", "model"}, kUsage);
    if (!st.ok()) return st;
    const auto limit = static_cast<size_t>(config.backend.max_input_bytes);
    if (!(st = CheckStringField(input, "text", true, true, limit, "[backend] max_input_bytes"))
             .ok()) {
      return st;
    }
    if (!(st = CheckStringField(input, "title", false, false, kMaxTitleBytes,
                                "the title limit of 1024 bytes"))
             .ok()) {
      return st;
    }
    if (!(st = CheckStringField(input, "context", false, false, limit, "[backend] max_input_bytes"))
             .ok()) {
      return st;
    }
    if (auto it = input.find("max_words"); it != input.end() && !it->is_null()) {
      if (!it->is_number_integer() || it->get<int64_t>() < 1 || it->get<int64_t>() > 1000) {
        return Status::BadRequest("input.max_words must be an integer from 1 to 1000");
      }
    }
    return CheckModelField(input);
  }

  WorkOutcome Run(const WorkContext& ctx) const override {
    const Config& config = *ctx.config;
    const nlohmann::json& input = *ctx.input;
    if (config.backend.kind == "extractive") {
      return WorkOutcome::Done(ExtractiveSummaryResult(input, config));
    }
    int max_words = config.summarize.max_words;
    if (auto it = input.find("max_words"); it != input.end() && it->is_number_integer()) {
      max_words = static_cast<int>(std::clamp<int64_t>(it->get<int64_t>(), 1, 1000));
    }
    const std::string model = StringField(input, "model", config.backend.model);
    nlohmann::json request = {
        {"model", model},
        {"messages",
         {{{"role", "system"}, {"content", config.summarize.system_prompt}},
          {{"role", "user"}, {"content", UserMessage(input, max_words)}}}},
        {"think", false},
        // A job may ask for more words than num_predict covers; give it room
        // (about two tokens a word) but never leave the length open.
        {"options", {{"num_predict", std::max(config.summarize.num_predict, 2 * max_words)}}},
    };
    ApplyServerOptions(config.backend, &request);

    OllamaClient client(config.backend);
    GenerateResult r = client.Chat(request, ctx.cancel.get(), ctx.progress.get(), ctx.text.get());
    if (!r.status.ok()) return OutcomeOf(r.status, nullptr, r.metrics);
    std::string summary = TrimmedText(r.text);
    if (summary.empty()) {
      CallStatus empty = r.status;
      empty.cls = CallClass::kRetryable;
      empty.error = "Ollama returned an empty summary (done_reason \"" + r.done_reason + "\")";
      return OutcomeOf(empty, nullptr, r.metrics);
    }
    nlohmann::json result = {
        {"summary", std::move(summary)},
        {"model", r.model.empty() ? model : r.model},
        {"fallback", false},
    };
    if (r.truncated()) result["truncated"] = true;
    result["meta"] = ResultMeta(r.metrics, r.status, r.done_reason);
    return OutcomeOf(r.status, std::move(result), r.metrics);
  }

 private:
  static std::string UserMessage(const nlohmann::json& input, int max_words) {
    std::string title = TrimmedText(StringField(input, "title"));
    std::string context = TrimmedText(StringField(input, "context"));
    std::string msg;
    if (!title.empty()) msg += "Chapter title: " + title + "\n\n";
    if (!context.empty()) msg += "The story so far:\n" + context + "\n\n";
    msg += "The chapter to summarise:\n" + TrimmedText(StringField(input, "text")) + "\n\n";
    msg += "Summarise this chapter in at most " + std::to_string(max_words) + " words.";
    return msg;
  }
};

}  // namespace

DIGESTD_REGISTER_JOB_KIND(SummarizeKind);

}  // namespace digestd
