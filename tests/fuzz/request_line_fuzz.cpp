// Fuzzes the control protocol's request-line parser and the response
// builders with whatever it returns. Every line a client sends reaches
// ParseRequestLine on the loop thread, outside any try block, so it must
// never throw or crash, and what it hands back must always make a valid
// one-line response (docs/protocol.md, "Limits").
//
// An invariant that does not hold calls abort(), which libFuzzer reports as
// a crash with the input that caused it.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "control/protocol.h"

namespace {

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "request_line_fuzz: invariant broken: %s\n", what);
    std::abort();
  }
}

// A response is exactly one line holding one JSON object with a boolean "ok".
nlohmann::json CheckResponseLine(const std::string& line) {
  Check(!line.empty() && line.back() == '\n', "a response line ends with a newline");
  Check(line.find('\n') == line.size() - 1, "a response is one line");
  nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  Check(!j.is_discarded(), "a response line is valid JSON");
  Check(j.is_object(), "a response is a JSON object");
  auto ok = j.find("ok");
  Check(ok != j.end() && ok->is_boolean(), "a response carries a boolean \"ok\"");
  return j;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view line(reinterpret_cast<const char*>(data), size);
  digestd::ParsedLine parsed = digestd::ParseRequestLine(line);
  const digestd::Request& req = parsed.request;
  Check(req.id.is_null() || req.id.is_string() || req.id.is_number(),
        "the id to echo is null, a string or a number");

  if (parsed.status.ok()) {
    Check(req.body.is_object(), "an accepted request is an object");
    bool known = false;
    for (auto op : digestd::KnownOps()) known = known || op == req.op;
    Check(known, "an accepted request names a known op");

    // What op handlers do first: typed field access must answer, not throw.
    std::string s;
    int64_t n = 0;
    (void)digestd::GetString(req.body, "key", &s, 512);
    (void)digestd::GetString(req.body, "lane", &s, 32);
    (void)digestd::GetInt(req.body, "wait_ms", &n, 0, 300000);
    (void)digestd::GetInt(req.body, "max", &n, 1, 1024);

    nlohmann::json ok = CheckResponseLine(digestd::OkLine(req.id, req.body));
    Check(ok["ok"] == true, "OkLine says ok:true");
  } else {
    auto code = parsed.status.code();
    Check(code == digestd::Status::Code::kBadRequest || code == digestd::Status::Code::kUnknownOp,
          "a rejected line is bad_request or unknown_op");
    Check(!parsed.status.message().empty(), "a rejection says what was wrong");
  }

  nlohmann::json err = CheckResponseLine(digestd::ErrorLine(req.id, parsed.status));
  Check(err["ok"] == false, "ErrorLine says ok:false");
  Check(req.id.is_null() ? !err.contains("id") : err.contains("id"),
        "ErrorLine echoes the id when there is one");
  auto error = err.find("error");
  Check(error != err.end() && error->is_object() && (*error)["code"].is_string() &&
            (*error)["message"].is_string(),
        "ErrorLine carries error.code and error.message strings");
  return 0;
}
