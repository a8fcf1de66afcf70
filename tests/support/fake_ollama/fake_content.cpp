#include "fake_content.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>

namespace digestd::testing {
namespace {

constexpr std::array<std::string_view, 10> kFillers = {
    " café", " notes", " —", " naïve", " points", " résumé", " key", " ideas", " é", " détails"};
constexpr int kMaxSourceWords = 3;
constexpr int kVocabularySize = 32000;

bool IsSpace(char c) {
  return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f';
}

std::vector<std::string_view> SplitWords(std::string_view text, std::size_t limit) {
  std::vector<std::string_view> words;
  std::size_t i = 0;
  while (i < text.size() && words.size() < limit) {
    while (i < text.size() && IsSpace(text[i])) ++i;
    std::size_t start = i;
    while (i < text.size() && !IsSpace(text[i])) ++i;
    if (i > start) words.push_back(text.substr(start, i - start));
  }
  return words;
}

// splitmix64: tiny, well-mixed and identical on every platform.
uint64_t SplitMix(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

int TokenId(std::string_view text) {
  return static_cast<int>(FakeHash(text) % (kVocabularySize - 1)) + 1;
}

std::string FormatFraction(long nanos) {
  if (nanos == 0) return "";
  char buf[16];
  std::snprintf(buf, sizeof(buf), ".%09ld", nanos);
  std::string s(buf);
  while (s.back() == '0') s.pop_back();
  return s;
}

std::string FormatTime(std::chrono::system_clock::time_point t, bool local) {
  auto since = t.time_since_epoch();
  auto secs = std::chrono::duration_cast<std::chrono::seconds>(since);
  if (since < secs) secs -= std::chrono::seconds(1);
  long nanos =
      static_cast<long>(std::chrono::duration_cast<std::chrono::nanoseconds>(since - secs).count());
  std::time_t tt = static_cast<std::time_t>(secs.count());
  std::tm tm{};
  if (local) {
    localtime_r(&tt, &tm);
  } else {
    gmtime_r(&tt, &tm);
  }
  char date[32];
  std::strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%S", &tm);
  std::string out = std::string(date) + FormatFraction(nanos);
  long off = local ? tm.tm_gmtoff : 0;
  if (off == 0) return out + "Z";
  char zone[32];
  long a = off < 0 ? -off : off;
  std::snprintf(zone, sizeof(zone), "%c%02ld:%02ld", off < 0 ? '-' : '+', a / 3600, (a / 60) % 60);
  return out + zone;
}

}  // namespace

uint64_t FakeHash(std::string_view text) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

std::vector<std::string> FakeTokens(std::string_view source, int count) {
  std::vector<std::string> tokens;
  if (count <= 0) return tokens;
  tokens.reserve(static_cast<std::size_t>(count));
  auto push = [&](std::string t) {
    if (static_cast<int>(tokens.size()) < count) tokens.push_back(std::move(t));
  };
  push("Summary");
  push(" of");
  for (std::string_view w : SplitWords(source, kMaxSourceWords)) push(" " + std::string(w));
  push(" —");
  uint64_t h = FakeHash(source);
  for (std::size_t i = 0; static_cast<int>(tokens.size()) < count; ++i) {
    push(std::string(kFillers[(h + i * 7) % kFillers.size()]));
  }
  return tokens;
}

std::string FakeText(std::string_view source, int count) {
  std::string text;
  for (const std::string& t : FakeTokens(source, count)) text += t;
  return text;
}

int FakePromptTokenCount(std::string_view text) {
  int n = static_cast<int>(SplitWords(text, static_cast<std::size_t>(-1)).size());
  return n > 0 ? n : 1;
}

std::vector<int> FakeContext(std::string_view prompt, const std::vector<std::string>& tokens) {
  std::vector<int> ids;
  for (std::string_view w : SplitWords(prompt, static_cast<std::size_t>(-1))) {
    ids.push_back(TokenId(w));
  }
  for (const std::string& t : tokens) ids.push_back(TokenId(t));
  return ids;
}

std::vector<float> FakeEmbedding(std::string_view text, int dims) {
  if (dims <= 0) return {};
  uint64_t state = FakeHash(text);
  std::vector<double> raw(static_cast<std::size_t>(dims));
  double norm = 0;
  for (double& v : raw) {
    v = static_cast<double>(SplitMix(&state) >> 11) * 0x1.0p-53 * 2.0 - 1.0;
    norm += v * v;
  }
  norm = std::sqrt(norm);
  std::vector<float> out;
  out.reserve(raw.size());
  for (double v : raw) out.push_back(static_cast<float>(norm > 0 ? v / norm : 0.0));
  return out;
}

std::string Rfc3339Utc(std::chrono::system_clock::time_point t) {
  return FormatTime(t, false);
}

std::string Rfc3339Local(std::chrono::system_clock::time_point t) {
  return FormatTime(t, true);
}

std::optional<int64_t> ParseGoDurationMs(std::string_view text, std::string* error) {
  const std::string quoted = "\"" + std::string(text) + "\"";
  std::string_view s = text;
  bool negative = false;
  if (!s.empty() && (s[0] == '-' || s[0] == '+')) {
    negative = s[0] == '-';
    s.remove_prefix(1);
  }
  if (s == "0") return 0;
  if (s.empty()) {
    *error = "time: invalid duration " + quoted;
    return std::nullopt;
  }
  double total_ns = 0;
  while (!s.empty()) {
    std::size_t i = 0;
    while (i < s.size() && ((s[i] >= '0' && s[i] <= '9') || s[i] == '.')) ++i;
    if (i == 0) {
      *error = "time: invalid duration " + quoted;
      return std::nullopt;
    }
    double value = std::strtod(std::string(s.substr(0, i)).c_str(), nullptr);
    s.remove_prefix(i);
    std::size_t u = 0;
    while (u < s.size() && !((s[u] >= '0' && s[u] <= '9') || s[u] == '.')) ++u;
    std::string_view unit = s.substr(0, u);
    s.remove_prefix(u);
    double scale = 0;
    if (unit == "ns")
      scale = 1;
    else if (unit == "us" || unit == "µs" || unit == "μs")
      scale = 1e3;
    else if (unit == "ms")
      scale = 1e6;
    else if (unit == "s")
      scale = 1e9;
    else if (unit == "m")
      scale = 60e9;
    else if (unit == "h")
      scale = 3600e9;
    if (unit.empty()) {
      *error = "time: missing unit in duration " + quoted;
      return std::nullopt;
    }
    if (scale == 0) {
      *error = "time: unknown unit \"" + std::string(unit) + "\" in duration " + quoted;
      return std::nullopt;
    }
    total_ns += value * scale;
  }
  if (negative && total_ns > 0) return -1;
  return static_cast<int64_t>(total_ns / 1e6);
}

std::string GoJsonSyntaxError(std::string_view body, std::size_t byte) {
  std::size_t pos = byte > 0 ? byte - 1 : 0;
  while (pos < body.size() && IsSpace(body[pos])) ++pos;
  if (pos >= body.size()) return "unexpected EOF";
  char c = body[pos];
  std::string shown = (c == '\'') ? "'\\''" : std::string("'") + c + "'";
  std::size_t prev = pos;
  while (prev > 0 && IsSpace(body[prev - 1])) --prev;
  if (prev == 0) return "invalid character " + shown + " looking for beginning of value";
  char before = body[prev - 1];
  if (before == '{')
    return "invalid character " + shown + " looking for beginning of object key string";
  if (before == ':' || before == '[' || before == ',') {
    return "invalid character " + shown + " looking for beginning of value";
  }
  return "invalid character " + shown + " after object key:value pair";
}

std::string GoJsonDump(const nlohmann::ordered_json& j) {
  const std::string raw = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::string out;
  out.reserve(raw.size());
  for (char c : raw) {
    if (c == '<')
      out += "\\u003c";
    else if (c == '>')
      out += "\\u003e";
    else if (c == '&')
      out += "\\u0026";
    else
      out += c;
  }
  return out;
}

std::string CanonicalModelName(const std::string& name) {
  std::string n = name;
  std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return std::tolower(c); });
  if (n.find(':') == std::string::npos) n += ":latest";
  return n;
}

bool IsEmbeddingModel(const std::string& canonical) {
  return canonical.find("embed") != std::string::npos;
}

std::string GoTypeName(const nlohmann::json& v) {
  if (v.is_string()) return "string";
  if (v.is_boolean()) return "bool";
  if (v.is_number()) return "number";
  if (v.is_array()) return "array";
  if (v.is_object()) return "object";
  return "null";
}

std::optional<std::string> GoDecode(const std::string& body, const std::string& go_struct,
                                    std::initializer_list<GoField> rules, nlohmann::json* out) {
  try {
    *out = nlohmann::json::parse(body);
  } catch (const nlohmann::json::parse_error& e) {
    return GoJsonSyntaxError(body, e.byte);
  }
  if (out->is_null()) *out = nlohmann::json::object();  // Go decodes null into a struct as a no-op
  if (!out->is_object()) {
    return "json: cannot unmarshal " + GoTypeName(*out) + " into Go value of type api." + go_struct;
  }
  for (const GoField& rule : rules) {
    auto it = out->find(rule.key);
    if (it == out->end() || it->is_null() || GoTypeName(*it) == rule.json_kind) continue;
    return "json: cannot unmarshal " + GoTypeName(*it) + " into Go struct field " + go_struct +
           "." + rule.key + " of type " + rule.go_type;
  }
  return std::nullopt;
}

nlohmann::ordered_json ModelDetailsJson(const std::string& canonical) {
  std::string family;
  for (char c : canonical) {
    if (!std::isalpha(static_cast<unsigned char>(c))) break;
    family += c;
  }
  const bool embed = IsEmbeddingModel(canonical);
  return nlohmann::ordered_json{{"parent_model", ""},
                                {"format", "gguf"},
                                {"family", family},
                                {"families", nlohmann::ordered_json::array({family})},
                                {"parameter_size", embed ? "137M" : "3.2B"},
                                {"quantization_level", embed ? "F16" : "Q4_K_M"}};
}

std::string ModelDigest(const std::string& canonical) {
  std::string hex;
  for (char salt = 'a'; salt < 'e'; ++salt) {
    char buf[17];
    std::snprintf(buf, sizeof(buf), "%016llx",
                  static_cast<unsigned long long>(FakeHash(std::string(1, salt) + canonical)));
    hex += buf;
  }
  return hex;
}

int64_t ModelSize(const std::string& canonical) {
  return 200000000 + static_cast<int64_t>(FakeHash(canonical) % 3000000000ULL);
}

}  // namespace digestd::testing
