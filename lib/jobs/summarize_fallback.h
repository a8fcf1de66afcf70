// The summary stored when a summarize job fails for good, so a summary
// screen never shows a hole ([summarize] fallback, docs/protocol.md,
// "Job kinds").
#pragma once

#include <nlohmann/json.hpp>

#include "config/config.h"

namespace digestd {

// The fallback result for a summarize job's `input` under `config`:
//   fallback = "extractive"  -> {"summary": leading sentences of input.text
//                                within max_words (the job's, else
//                                [summarize] max_words), "model":"extractive",
//                                "fallback":true}
//   fallback = "placeholder" -> {"summary": [summarize] placeholder_text,
//                                "model":"placeholder", "fallback":true}
//   fallback = "none"        -> null: the job stays failed.
// An extractive fallback for a text with no words uses the placeholder text.
// Pure; any thread. Never throws for any `input` (it may be unvalidated).
nlohmann::json SummaryFallback(const nlohmann::json& input, const Config& config);

// The result of the built-in extractive backend ([backend] kind =
// "extractive"): as the extractive fallback, but with "fallback": false.
nlohmann::json ExtractiveSummaryResult(const nlohmann::json& input, const Config& config);

}  // namespace digestd
