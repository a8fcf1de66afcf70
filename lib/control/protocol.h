// The control protocol's framing-free half: one request line in, one parsed
// Request (or the Status that explains what is wrong with it) out, and the
// response line builders. Pure functions; any thread; fuzzed by
// tests/fuzz/request_line_fuzz.cpp.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "util/status.h"

namespace digestd {

struct Request {
  nlohmann::json id;  // echoed; null when the request had none
  std::string op;
  nlohmann::json body;  // the whole request object
};

struct ParsedLine {
  Status status;  // ok, or what was wrong (bad_request, unknown_op)
  Request request;
};

// The control protocol's version, answered by `hello`: raised when an op,
// field or answer changes in a way an existing client would misread.
inline constexpr int kProtocolVersion = 1;

// The ops digestd answers, for validation and error messages.
const std::vector<std::string_view>& KnownOps();
// Ops that change state; the allow-list applies to these.
bool IsMutatingOp(std::string_view op);

// Parses one line (without its newline).
ParsedLine ParseRequestLine(std::string_view line);

// {"ok":true,"id":…,…fields} + "\n". `fields` must be an object or null;
// its own "ok" and "id" members are dropped (the framing owns them).
std::string OkLine(const nlohmann::json& id, nlohmann::json fields);
// {"ok":false,"id":…,"error":{"code":…,"message":…}} + "\n".
std::string ErrorLine(const nlohmann::json& id, const Status& status);
// The same with more fields beside "error" (a batch's per-job answers);
// `fields`' own "ok", "id" and "error" members are dropped.
std::string ErrorLine(const nlohmann::json& id, const Status& status, nlohmann::json fields);

// Typed field access for op handlers: each returns BadRequest naming the
// field when it is present with the wrong type, and leaves `out` unchanged
// when the field is absent.
Status GetString(const nlohmann::json& obj, const char* field, std::string* out,
                 size_t max_bytes = 4096);
Status GetInt(const nlohmann::json& obj, const char* field, int64_t* out, int64_t min, int64_t max);

}  // namespace digestd
