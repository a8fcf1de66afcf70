// Deterministic content for the fake Ollama server: generated tokens,
// embedding vectors, token ids, the model catalogue, timestamps, and the
// Go-isms of Ollama's wire format (durations, JSON decoder errors, escaping).
//
// Everything here is a pure function of its arguments (timestamps aside), so
// client tests can compute what the fake will answer, e.g.
// FakeText("Summarize: the cat sat", 8) is exactly the text that
// /api/generate streams for that prompt with tokens=8.
//
// Thread-safety: all functions are reentrant.
#ifndef DIGESTD_TESTS_SUPPORT_FAKE_OLLAMA_FAKE_CONTENT_H_
#define DIGESTD_TESTS_SUPPORT_FAKE_OLLAMA_FAKE_CONTENT_H_

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace digestd::testing {

// The tokens generated for `source` (generate: the prompt; chat: the content
// of the last message). Shape: "Summary", " of", up to three words of the
// source, " —", then fillers chosen by a hash of the source. Some tokens
// contain multi-byte UTF-8 ("—", "é", "ï"), so clients that split at byte
// boundaries are exercised. Returns exactly `count` tokens (none if <= 0).
std::vector<std::string> FakeTokens(std::string_view source, int count);

// Concatenation of FakeTokens(source, count): the full generated text.
std::string FakeText(std::string_view source, int count);

// Number of "prompt tokens" the fake reports for `text`: whitespace-separated
// words, at least 1.
int FakePromptTokenCount(std::string_view text);

// Token ids reported in generate's `context`: one id per prompt word followed
// by one per generated token, all in [1, 32000).
std::vector<int> FakeContext(std::string_view prompt, const std::vector<std::string>& tokens);

// A deterministic, L2-normalised vector of `dims` floats for `text`: the same
// text always gives the same vector; different texts give different vectors.
// The first d values of FakeEmbedding(t, n), re-normalised, equal
// FakeEmbedding(t, d) (this is how `dimensions` truncation behaves).
std::vector<float> FakeEmbedding(std::string_view text, int dims);

// 64-bit FNV-1a hash; used for all derived values above.
uint64_t FakeHash(std::string_view text);

// RFC 3339 UTC with trimmed fractional seconds, as Go's RFC3339Nano prints it:
// "2025-10-17T23:14:07.414671Z".
std::string Rfc3339Utc(std::chrono::system_clock::time_point t);

// Same in the local time zone with its offset ("-07:00", or "Z" for UTC).
std::string Rfc3339Local(std::chrono::system_clock::time_point t);

// Parses an Ollama `keep_alive` string (Go duration with a unit: "5m", "1h30m",
// "-1m", "250ms"; "0" is allowed). Returns milliseconds; any negative value is
// returned as -1 (keep forever). On failure returns nullopt and sets *error to
// Go's wording, e.g. `time: missing unit in duration "3600"`.
std::optional<int64_t> ParseGoDurationMs(std::string_view text, std::string* error);

// Go-like text for a JSON syntax error at byte offset `byte` (1-based, as
// nlohmann::json::parse_error::byte reports it) of `body`, e.g.
// "invalid character 'x' looking for beginning of value" or "unexpected EOF".
std::string GoJsonSyntaxError(std::string_view body, std::size_t byte);

// Go's encoding/json output: compact, with <, > and & escaped as \u003c etc.
// Invalid UTF-8 is replaced, never thrown on.
std::string GoJsonDump(const nlohmann::ordered_json& j);

// JSON type names as Go's decoder prints them: string, bool, number, array,
// object, null.
std::string GoTypeName(const nlohmann::json& v);

// One field of an Ollama request struct, for GoDecode.
struct GoField {
  const char* key;
  const char* json_kind;  // as GoTypeName names it
  const char* go_type;    // Go type shown in the error, e.g. "bool", "[]api.Message"
};

// Parses `body` as Go's json.Decoder fills api.<go_struct>: returns the text
// of the 400 Ollama would send (syntax error, non-object body, a listed field
// of the wrong type), or nullopt with the object in *out. A null body
// decodes to {} as in Go.
std::optional<std::string> GoDecode(const std::string& body, const std::string& go_struct,
                                    std::initializer_list<GoField> fields, nlohmann::json* out);

// Model catalogue. Names are compared in canonical form: lower case, with
// ":latest" added when there is no tag. A model whose name contains "embed"
// is embedding-only. Digest, size and details are derived from the name.
std::string CanonicalModelName(const std::string& name);
bool IsEmbeddingModel(const std::string& canonical);
nlohmann::ordered_json ModelDetailsJson(const std::string& canonical);
std::string ModelDigest(const std::string& canonical);
int64_t ModelSize(const std::string& canonical);

}  // namespace digestd::testing

#endif  // DIGESTD_TESTS_SUPPORT_FAKE_OLLAMA_FAKE_CONTENT_H_
