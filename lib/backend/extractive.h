// Extractive summaries: the leading sentences of a text, within a word limit.
// Used by the built-in `[backend] kind = "extractive"` and by the summary
// fallback (lib/jobs/summarize_fallback.h) when an LLM summary fails for good.
//
// Sentence boundaries: ".", "!", "?", "…" and "..." (and the CJK "。", "！",
// "？") followed by optional closing quotes or brackets and then whitespace
// or the end; a blank line (paragraph break) also ends a sentence. Not a
// boundary: abbreviations ("Mr.", "Dr.", "St.", "e.g.", "etc." …), single
// initials ("J. R. R. Tolkien"), and any terminator followed by a lower-case
// letter ("“Wait!” she said.", "He paused... then spoke.").
//
// UTF-8 safe: text is only ever cut at whitespace or, in a text without any,
// at a character boundary. Pure functions; any thread.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace digestd {

// The sentences of `text` in order, each trimmed of surrounding whitespace
// (inner whitespace, including line breaks, is kept). Views into `text`.
std::vector<std::string_view> SplitSentences(std::string_view text);

// Runs of non-whitespace characters.
size_t CountWords(std::string_view text);

// The leading sentences of `text` that together fit in `max_words` words
// (and in 12 bytes per word, which bounds text with no spaces, such as
// Chinese), with every run of whitespace collapsed to one space. When even
// the first sentence is longer, it is cut at a word boundary and "…" is
// appended. Empty when `text` has no words. max_words below 1 counts as 1.
std::string ExtractiveSummary(std::string_view text, int max_words);

}  // namespace digestd
