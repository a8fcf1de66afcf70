#include "jobs/summarize_fallback.h"

#include "backend/extractive.h"

namespace digestd {

namespace {

int MaxWordsOf(const nlohmann::json& input, const Config& config) {
  if (input.is_object()) {
    auto it = input.find("max_words");
    if (it != input.end() && it->is_number_integer()) {
      int64_t v = it->get<int64_t>();
      if (v >= 1 && v <= 1000) return static_cast<int>(v);
    }
  }
  return config.summarize.max_words;
}

std::string TextOf(const nlohmann::json& input) {
  if (!input.is_object()) return "";
  auto it = input.find("text");
  return it != input.end() && it->is_string() ? it->get<std::string>() : "";
}

nlohmann::json Extractive(const nlohmann::json& input, const Config& config, bool fallback) {
  std::string summary = ExtractiveSummary(TextOf(input), MaxWordsOf(input, config));
  if (summary.empty()) summary = config.summarize.placeholder_text;
  return {{"summary", std::move(summary)}, {"model", "extractive"}, {"fallback", fallback}};
}

}  // namespace

nlohmann::json SummaryFallback(const nlohmann::json& input, const Config& config) {
  const std::string& mode = config.summarize.fallback;
  if (mode == "extractive") return Extractive(input, config, true);
  if (mode == "placeholder") {
    return {{"summary", config.summarize.placeholder_text},
            {"model", "placeholder"},
            {"fallback", true}};
  }
  return nullptr;
}

nlohmann::json ExtractiveSummaryResult(const nlohmann::json& input, const Config& config) {
  return Extractive(input, config, false);
}

}  // namespace digestd
