// NdjsonStream: an incremental parser for the NDJSON body Ollama streams from
// /api/generate and /api/chat (the stream's shape: docs/operations.md,
// "What digestd relies on about Ollama").
//
// Feed() takes the body in whatever pieces the network delivers: a piece may
// end inside a line or inside a multi-byte UTF-8 character, because only
// complete lines are decoded. Each line is one JSON object:
//   {"error":"…"}                 the server failed after output started:
//                                 kErrorLine, retryable, with its message
//   {…,"done":false,…}            a partial chunk: its `response` (generate)
//                                 or `message.content` (chat) is appended to
//                                 text(), its `thinking` to thinking()
//   {…,"done":true,…}             the final chunk: its text is appended too,
//                                 and done_reason and the counters are kept
// Anything else (not JSON, invalid UTF-8, not an object, a field of the wrong
// type, no `done`) is kMalformed, a fatal failure whose message keeps the
// start of the raw line. A line longer than Limits::max_line_bytes, or text
// beyond Limits::max_text_bytes, is kTooLarge (fatal). Finish() at the end of
// the body turns a stream that never sent done:true into kIncomplete
// (retryable: the connection was cut short). A last line without its "\n" is
// accepted at Finish(), because a non-streamed single object (Ollama's
// "load" reply) has none.
//
// Blank lines and a "\r" before "\n" are tolerated. Bytes after the done line
// are ignored: the answer is complete. After the first failure every further
// byte is ignored and the failure stays as it was.
//
// Each line is parsed with nlohmann::json's SAX interface, keeping only the
// fields above (no DOM), into buffers reused from line to line. Duplicate
// keys count as in a DOM parse (the last wins); nesting deeper than
// kMaxJsonDepth (util/json_parse.h) is kMalformed.
//
// Pure: no I/O, no globals; one instance per response, used by one thread.
// Safe on any input (this is the fuzz target's entry point).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace digestd {

// Ollama's counters from a final chunk (or a non-streamed reply). All are
// optional: Ollama omits zero values, and a field it left out stays empty
// (never 0), so a reader can tell "not sent" from a sent 0. Durations are in
// nanoseconds. A float is truncated; an unsigned value beyond int64 is
// clamped to INT64_MAX.
struct GenerationMetrics {
  std::optional<int64_t> prompt_eval_count;
  std::optional<int64_t> eval_count;
  std::optional<int64_t> total_duration_ns;
  std::optional<int64_t> load_duration_ns;
  std::optional<int64_t> prompt_eval_duration_ns;
  std::optional<int64_t> eval_duration_ns;
};

class NdjsonStream {
 public:
  enum class Format {
    kGenerate,  // text in "response", thinking in "thinking"
    kChat,      // text in "message.content", thinking in "message.thinking"
  };

  enum class Failure {
    kNone,
    kErrorLine,   // an {"error":…} line; retryable
    kIncomplete,  // the body ended without done:true; retryable
    kMalformed,   // a line that is not the documented shape; fatal
    kTooLarge,    // a line or the text over its limit; fatal
  };

  struct Limits {
    size_t max_line_bytes = 16 << 20;  // a generate final line carries `context`
    size_t max_text_bytes = 16 << 20;  // text() plus thinking()
  };

  explicit NdjsonStream(Format format) : NdjsonStream(format, Limits{}) {}
  NdjsonStream(Format format, Limits limits);
  ~NdjsonStream();
  NdjsonStream(NdjsonStream&&) noexcept;
  NdjsonStream& operator=(NdjsonStream&&) noexcept;

  // Consumes the next piece of the body. Returns false once the stream has
  // failed (the caller may stop reading); true otherwise, including after the
  // done line.
  bool Feed(std::string_view bytes);

  // The body has ended. Decodes a last line that had no "\n", then reports:
  // true when the done line was seen and nothing failed. Idempotent.
  bool Finish();

  bool done() const { return done_; }
  bool failed() const { return failure_ != Failure::kNone; }
  Failure failure() const { return failure_; }
  // kErrorLine and kIncomplete may succeed when the request is sent again.
  bool retryable() const {
    return failure_ == Failure::kErrorLine || failure_ == Failure::kIncomplete;
  }
  // What went wrong, for the job's error: the server's own message for
  // kErrorLine; otherwise a sentence that quotes up to 200 bytes of the raw
  // line. Empty when nothing failed.
  const std::string& error() const { return error_; }

  const std::string& text() const { return text_; }
  const std::string& thinking() const { return thinking_; }
  // The `model` the server echoed (last seen); may be empty.
  const std::string& model() const { return model_; }
  // The final chunk's done_reason ("stop", "length", "load", …); may be empty.
  const std::string& done_reason() const { return done_reason_; }
  const GenerationMetrics& metrics() const { return metrics_; }
  // Complete lines decoded so far (blank lines not counted).
  size_t lines() const { return lines_; }

 private:
  class LineSax;  // ndjson_stream.cpp

  void Line(std::string_view line);
  void Fail(Failure failure, std::string message);
  bool AppendText(std::string* to, std::string_view piece);

  Format format_;
  Limits limits_;
  std::unique_ptr<LineSax> sax_;  // the line parser, reused
  std::string partial_;           // bytes of the current, unfinished line
  std::string text_;
  std::string thinking_;
  std::string model_;
  std::string done_reason_;
  GenerationMetrics metrics_;
  size_t lines_ = 0;
  bool done_ = false;
  bool finished_ = false;
  Failure failure_ = Failure::kNone;
  std::string error_;
};

// A short, printable excerpt of untrusted bytes for an error message: at most
// `max_bytes`, cut at a UTF-8 character boundary, control characters and
// invalid UTF-8 replaced, "…" appended when cut.
std::string Excerpt(std::string_view raw, size_t max_bytes = 200);

}  // namespace digestd
