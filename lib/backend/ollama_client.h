// OllamaClient: the HTTP client for Ollama's native API over libcurl
// (docs/operations.md, "Ollama", lists the answers it expects and how it
// classifies them).
//
//   Generate()  POST /api/generate, streamed NDJSON
//   Chat()      POST /api/chat, streamed NDJSON
//   Embed()     POST /api/embed, one JSON object
//   Probe()     a one-token generation with a short deadline, for the
//               circuit breaker: it proves that inference works, which
//               /api/version does not (it keeps answering while
//               generation hangs)
//
// Threads: every call blocks until the answer is complete, so call it only
// from pool threads (inside uv_queue_work), never from the loop thread. Each
// request borrows a libcurl easy handle (with the multi handle that keeps its
// connection cache) from a process-wide pool, most recently used first, and
// gives it back at the end: consecutive requests reuse kept-alive
// connections, and there are never more connections than requests that
// were once in flight together, however many pool threads run them. An
// OllamaClient object holds only its options; it is cheap to build per job
// from the job's config snapshot. It never logs and touches no shared state
// besides curl's one-time global init and that pool (behind a mutex).
//
// Timeouts (all owned by the client; Ollama has none of its own):
//   connect     TCP connect (CURLOPT_CONNECTTIMEOUT_MS)
//   first byte  request sent -> first byte; Ollama sends no headers until
//               the first token, so this covers a cold model load
//   idle        longest silence between bytes after the first
//   request     deadline for the whole request (CURLOPT_TIMEOUT_MS)
// and a cancel flag: when *cancel becomes true the transfer is aborted
// within about 100 ms (the progress callback runs at least that often)
// and the connection is closed, which makes Ollama stop the generation.
//
// Progress: Generate, Chat and Embed take an optional counter that the
// calling pool thread's request adds to (relaxed) as the answer arrives: 1
// per NDJSON line of a stream (blank lines not counted), 1 for an embed
// answer once its body is complete. The loop reads it to tell how far a
// running request got (jobs/job.h, JobRecord::progress).
//
// Every result is classified (CallClass): ok; busy (HTTP 429, 503: retry
// later without spending an attempt); retryable (connection refused or
// reset, any timeout, HTTP 408, 500, 502, 504 and other 5xx, a stream cut
// short or ended by an {"error":…} line); fatal (HTTP 400, 404 and other 4xx,
// an answer that is not the documented shape, an answer over the size
// limits, a bad URL); cancelled. Error bodies: the `error` field when the
// body is JSON, else the raw text (truncated), as Ollama's own Go client does.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "backend/ndjson_stream.h"
#include "config/config.h"
#include "util/text_sink.h"

namespace digestd {

enum class CallClass { kOk, kBusy, kRetryable, kFatal, kCancelled };

// "ok" | "busy" | "retryable" | "fatal" | "cancelled".
std::string_view CallClassName(CallClass c);

// How one request went.
struct CallStatus {
  CallClass cls = CallClass::kOk;
  int http_status = 0;  // 0 when no HTTP answer arrived (connect error, timeout before headers)
  // What went wrong, for the job's error, e.g. "Ollama answered HTTP 404 on
  // /api/chat: model 'llama9' not found". Empty when ok.
  std::string error;
  // From starting the request to its end (success or failure): the latency
  // sample for `status`.
  std::chrono::nanoseconds elapsed{0};
  // The request ended by one of the client's timeouts (connect, first byte,
  // idle, request): a sign that the server is overloaded, not that it failed.
  bool timed_out = false;

  bool ok() const { return cls == CallClass::kOk; }
};

// A completed generation (Generate, Chat).
struct GenerateResult {
  CallStatus status;
  std::string text;         // the concatenated response / message.content
  std::string thinking;     // the concatenated thinking, when the model thought
  std::string model;        // as the server echoed it
  std::string done_reason;  // "stop", "length", "load", … or empty
  GenerationMetrics metrics;

  // The generation hit num_predict (or the context limit) and was cut.
  bool truncated() const { return done_reason == "length"; }
};

struct EmbedResult {
  CallStatus status;
  std::string model;
  // One vector per input, in input order, all of the same length.
  std::vector<std::vector<double>> embeddings;
  GenerationMetrics metrics;  // prompt_eval_count, total/load duration when sent
};

struct OllamaClientOptions {
  std::string base_url = "http://127.0.0.1:11434";  // without a trailing path
  std::chrono::milliseconds connect_timeout{2000};
  std::chrono::milliseconds first_byte_timeout{300000};
  std::chrono::milliseconds idle_timeout{60000};
  std::chrono::milliseconds request_timeout{900000};
  NdjsonStream::Limits stream_limits;  // for Generate and Chat
  size_t max_body_bytes = 64 << 20;    // a non-streamed answer (Embed)

  // From [backend] url and the four timeouts.
  static OllamaClientOptions FromConfig(const Config::Backend& backend);
};

class OllamaClient {
 public:
  explicit OllamaClient(OllamaClientOptions options);
  explicit OllamaClient(const Config::Backend& backend)
      : OllamaClient(OllamaClientOptions::FromConfig(backend)) {}

  // Initialises libcurl's globals. Call once from main before any thread
  // starts; idempotent. The first request also calls it, which is safe with
  // the thread-safe init of libcurl >= 7.84 (Debian 12 ships 7.88).
  static void GlobalInit();
  // Wakes every request waiting for bytes, so one whose cancel flag was
  // just set aborts now rather than within the ~100 ms poll. Any thread;
  // costs one wake-up per request in flight.
  static void WakeAll();

  // POST /api/generate with `request` as Ollama takes it (model, prompt,
  // system, options, format, think, keep_alive, …); "stream" is forced to
  // true. Pool thread only. `cancel`, `progress` and `text` may be null;
  // they must outlive the call. `progress` gains 1 per streamed line; `text`
  // gets the answer's text as it arrives.
  GenerateResult Generate(const nlohmann::json& request, const std::atomic<bool>* cancel,
                          std::atomic<uint64_t>* progress = nullptr,
                          TextSink* text = nullptr) const;

  // POST /api/chat with `request` (model, messages, options, …); "stream" is
  // forced to true. As Generate.
  GenerateResult Chat(const nlohmann::json& request, const std::atomic<bool>* cancel,
                      std::atomic<uint64_t>* progress = nullptr, TextSink* text = nullptr) const;

  // POST /api/embed with `request` (model, input: [texts…], …). The answer
  // must hold one vector per input, all of one length, or it is fatal.
  // `progress` (may be null) gains 1 when a complete 200 answer has arrived.
  EmbedResult Embed(const nlohmann::json& request, const std::atomic<bool>* cancel,
                    std::atomic<uint64_t>* progress = nullptr) const;

  // A real, tiny inference request: /api/generate on backend.model with
  // num_predict 1 and the server options every job sends (keep_alive,
  // num_ctx: see ApplyServerOptions, so the probe never forces a reload),
  // with `deadline` as both the first-byte timeout and the whole request's
  // deadline. Pool thread only. ok, busy and fatal all mean the server
  // answers (close the breaker); retryable means it still does not.
  CallStatus Probe(const Config::Backend& backend, std::chrono::milliseconds deadline,
                   const std::atomic<bool>* cancel = nullptr) const;

  const OllamaClientOptions& options() const { return options_; }

 private:
  GenerateResult Stream(const char* path, NdjsonStream::Format format,
                        const nlohmann::json& request, const std::atomic<bool>* cancel,
                        std::atomic<uint64_t>* progress, TextSink* text,
                        const OllamaClientOptions& options) const;

  OllamaClientOptions options_;
};

// Sets what every request to this server must carry the same way, so Ollama
// never reloads a model between requests (it reloads one whenever a request
// asks for different load-time options, such as num_ctx): `keep_alive` when
// [backend] keep_alive is not empty, and options.num_ctx when [backend]
// num_ctx > 0, replacing any value already in `request`.
void ApplyServerOptions(const Config::Backend& backend, nlohmann::json* request);

}  // namespace digestd
