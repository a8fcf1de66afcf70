#include "backend/extractive.h"

#include <algorithm>
#include <cctype>
#include <iterator>

namespace digestd {

namespace {

constexpr size_t kBytesPerWord = 12;
constexpr std::string_view kEllipsis = "\u2026";

bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

bool IsLower(char c) {
  return c >= 'a' && c <= 'z';
}

// Abbreviations that are (nearly) always followed by more of the same
// sentence: titles before a name, and Latin and reference shorthands. Lower
// case, without the final "." (inner dots kept: "e.g"). Abbreviations that
// often end a sentence ("etc.", "Inc.", "p.m.") are left to the general rule:
// a boundary unless a lower-case letter follows.
constexpr std::string_view kAbbreviations[] = {
    "mr",   "mrs", "ms",     "messrs", "mme", "mlle", "dr",  "prof", "st",  "mt",
    "ft",   "rev", "hon",    "gen",    "col", "capt", "cpt", "lt",   "sgt", "maj",
    "cmdr", "adm", "gov",    "sen",    "rep", "pres", "e.g", "i.e",  "cf",  "vs",
    "viz",  "al",  "approx", "ca",     "vol", "pp",   "fig", "dept", "esp"};

bool IsAbbreviation(std::string_view word) {
  if (word.empty() || word.size() > 8) return false;
  std::string lower;
  for (char c : word) lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  // A single letter is an initial ("J. R. R. Tolkien"), except the pronoun
  // that ends many a sentence ("It was I.").
  if (lower.size() == 1) return std::isalpha(static_cast<unsigned char>(lower[0])) && word != "I";
  return std::find(std::begin(kAbbreviations), std::end(kAbbreviations), lower) !=
         std::end(kAbbreviations);
}

// Length of a terminator at text[i] (".", "!", "?", "…", "。", "！", "？"), or 0.
// `cjk` is set for the full-width ones, which need no space after them.
size_t TerminatorAt(std::string_view text, size_t i, bool* cjk) {
  *cjk = false;
  char c = text[i];
  if (c == '.' || c == '!' || c == '?') return 1;
  std::string_view rest = text.substr(i);
  if (rest.starts_with("\u2026")) return 3;
  if (rest.starts_with("\u3002") || rest.starts_with("\uFF01") || rest.starts_with("\uFF1F")) {
    *cjk = true;
    return 3;
  }
  return 0;
}

// Length of a closing quote or bracket at text[i], or 0.
size_t CloserAt(std::string_view text, size_t i) {
  char c = text[i];
  if (c == '"' || c == '\'' || c == ')' || c == ']' || c == '}') return 1;
  std::string_view rest = text.substr(i);
  for (std::string_view closer : {"\u201D", "\u2019", "\u00BB", "\u203A", "\u300D", "\u300F"}) {
    if (rest.starts_with(closer)) return closer.size();
  }
  return 0;
}

// The word just before position `end`, without leading opening quotes or
// brackets.
std::string_view WordBefore(std::string_view text, size_t end) {
  size_t start = end;
  while (start > 0 && !IsSpace(text[start - 1])) --start;
  std::string_view word = text.substr(start, end - start);
  while (!word.empty() && (word[0] == '"' || word[0] == '\'' || word[0] == '(' || word[0] == '[')) {
    word.remove_prefix(1);
  }
  for (std::string_view opener : {"\u201C", "\u2018", "\u00AB"}) {
    if (word.starts_with(opener)) word.remove_prefix(opener.size());
  }
  return word;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && IsSpace(s.front())) s.remove_prefix(1);
  while (!s.empty() && IsSpace(s.back())) s.remove_suffix(1);
  return s;
}

// Appends `s` to `out` with every whitespace run collapsed to one space.
void AppendCollapsed(std::string* out, std::string_view s) {
  bool space = false;
  for (char c : s) {
    if (IsSpace(c)) {
      space = true;
      continue;
    }
    if (space && !out->empty()) *out += ' ';
    space = false;
    *out += c;
  }
}

// Largest cut <= max_bytes of `s` that does not split a UTF-8 character.
size_t CharBoundary(std::string_view s, size_t max_bytes) {
  if (max_bytes >= s.size()) return s.size();
  size_t cut = max_bytes;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  return cut;
}

// The first words of `sentence` within both limits, then "…".
std::string CutSentence(std::string_view sentence, size_t max_words, size_t max_bytes) {
  std::string out;
  size_t words = 0;
  size_t i = 0;
  while (i < sentence.size() && words < max_words) {
    while (i < sentence.size() && IsSpace(sentence[i])) ++i;
    size_t start = i;
    while (i < sentence.size() && !IsSpace(sentence[i])) ++i;
    if (start == i) break;
    std::string_view word = sentence.substr(start, i - start);
    size_t need = word.size() + (out.empty() ? 0 : 1);
    if (out.size() + need > max_bytes) {
      if (out.empty()) out.append(word.substr(0, CharBoundary(word, max_bytes)));
      break;
    }
    if (!out.empty()) out += ' ';
    out.append(word);
    ++words;
  }
  while (!out.empty() &&
         (out.back() == ',' || out.back() == ';' || out.back() == ':' || out.back() == '-')) {
    out.pop_back();
  }
  out.append(kEllipsis);
  return out;
}

}  // namespace

std::vector<std::string_view> SplitSentences(std::string_view text) {
  std::vector<std::string_view> out;
  size_t start = 0;
  auto emit = [&](size_t end) {
    std::string_view s = Trim(text.substr(start, end - start));
    if (!s.empty()) out.push_back(s);
    start = end;
  };
  size_t i = 0;
  while (i < text.size()) {
    // A blank line ends a paragraph, and with it a sentence.
    if (text[i] == '\n') {
      size_t j = i + 1;
      while (j < text.size() && IsSpace(text[j]) && text[j] != '\n') ++j;
      if (j < text.size() && text[j] == '\n') {
        emit(i);
        i = j + 1;
        continue;
      }
      ++i;
      continue;
    }
    bool cjk = false;
    size_t len = TerminatorAt(text, i, &cjk);
    if (len == 0) {
      ++i;
      continue;
    }
    // A run of terminators ("?!", "...", "?…") counts as one.
    size_t j = i + len;
    bool any_cjk = cjk;
    while (j < text.size()) {
      bool c2 = false;
      size_t l2 = TerminatorAt(text, j, &c2);
      if (l2 == 0) break;
      any_cjk = any_cjk || c2;
      j += l2;
    }
    const bool single_dot = j == i + 1 && text[i] == '.';
    while (j < text.size()) {
      size_t l2 = CloserAt(text, j);
      if (l2 == 0) break;
      j += l2;
    }
    bool boundary = j == text.size() || IsSpace(text[j]) || any_cjk;
    if (boundary && single_dot && IsAbbreviation(WordBefore(text, i))) {
      boundary = false;
    }
    if (boundary && !any_cjk) {
      size_t k = j;
      while (k < text.size() && IsSpace(text[k])) ++k;
      if (k < text.size() && IsLower(text[k])) boundary = false;
    }
    if (boundary) emit(j);
    i = j;
  }
  emit(text.size());
  return out;
}

size_t CountWords(std::string_view text) {
  size_t words = 0;
  bool in_word = false;
  for (char c : text) {
    if (IsSpace(c)) {
      in_word = false;
    } else if (!in_word) {
      in_word = true;
      ++words;
    }
  }
  return words;
}

std::string ExtractiveSummary(std::string_view text, int max_words) {
  const size_t word_limit = static_cast<size_t>(std::max(max_words, 1));
  const size_t byte_limit = word_limit * kBytesPerWord;
  std::string out;
  size_t words = 0;
  for (std::string_view sentence : SplitSentences(text)) {
    size_t n = CountWords(sentence);
    std::string collapsed;
    AppendCollapsed(&collapsed, sentence);
    size_t bytes = out.size() + (out.empty() ? 0 : 1) + collapsed.size();
    if (words + n > word_limit || bytes > byte_limit) {
      if (out.empty()) out = CutSentence(sentence, word_limit, byte_limit);
      break;
    }
    if (!out.empty()) out += ' ';
    out += collapsed;
    words += n;
  }
  return out;
}

}  // namespace digestd
