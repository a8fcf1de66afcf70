// Parsing untrusted JSON with a bound on nesting depth.
//
// nlohmann::json parses iteratively, but dump(), copies and comparisons
// recurse once per level: a line of 80,000 nested objects parses fine and
// then overflows the stack the first time anything walks it. Every parser of
// bytes from outside (request lines, Ollama's answers, rows read back from
// PostgreSQL) goes through here, so nothing deeper than the bound is ever
// built. The check runs inside the parse (a SAX layer in front of
// nlohmann's own DOM builder), before the value exists.
//
// Pure functions; any thread.
#pragma once

#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>

namespace digestd {

// Deepest nesting of objects and arrays accepted from outside. `{}` is
// depth 1, `{"a":[1]}` depth 2. Deep enough for any real JSON schema or
// options object, shallow enough for every recursive walk and for
// PostgreSQL's jsonb.
inline constexpr int kMaxJsonDepth = 64;

// Thrown by ParseJsonBounded when the text nests deeper than `max_depth`.
class JsonTooDeep : public std::runtime_error {
 public:
  explicit JsonTooDeep(int max_depth)
      : std::runtime_error("JSON nests objects and arrays deeper than " +
                           std::to_string(max_depth) + " levels"),
        max_depth_(max_depth) {}
  int max_depth() const { return max_depth_; }

 private:
  int max_depth_;
};

// Parses `text` as nlohmann::json::parse(text) does, throwing its
// parse_error / out_of_range on bad input, and JsonTooDeep when nesting
// exceeds `max_depth`.
nlohmann::json ParseJsonBounded(std::string_view text, int max_depth = kMaxJsonDepth);

// Never throws: a discarded value (is_discarded()) on any error, too deep
// included.
nlohmann::json TryParseJsonBounded(std::string_view text, int max_depth = kMaxJsonDepth) noexcept;

}  // namespace digestd
