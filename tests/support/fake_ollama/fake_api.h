// FakeApi: the Ollama endpoints of the fake server, independent of HTTP
// plumbing. FakeOllama (fake_ollama.cpp) turns an HTTP request into an
// ApiRequest and an ApiReply back into an HTTP response.
//
// Handle() does all waiting that happens before the first byte (queueing,
// model load, latency, first-byte stall, the first token's delay) in the
// calling thread, so nothing, not even the status line, reaches the client
// until the first chunk exists, as Ollama does (docs/operations.md, "Ollama",
// the first-byte timeout). The rest of a stream is produced by
// ApiReply::stream, one chunk per Next() call, with the per-token delays paid
// inside Next().
//
// Timing fields (Ollama's, in ns, omitted when zero): total_duration runs
// from the handler's start to the final chunk, so it includes the wait for a
// load and for a slot; load_duration is the load this request paid or waited
// for; prompt_eval_duration covers `latency_ms` and `first_byte_stall_ms`;
// eval_duration runs from then to the final chunk (token delays, `stall_ms`).
// So total - load - prompt_eval - eval is the slot wait plus microseconds of
// handling, as with Ollama, whose timer also starts in the handler.
// /api/embed has total_duration, load_duration and prompt_eval_count only.
//
// Endpoints: POST /api/generate, /api/chat, /api/embed, /api/embeddings;
// GET|HEAD /api/tags, /api/ps, /api/version, /. Anything else: 404
// "404 page not found" (text/plain), as gin answers.
//
// Thread-safety: Handle() may run on many threads at once. A ChunkSource is
// used by one thread at a time.
#ifndef DIGESTD_TESTS_SUPPORT_FAKE_OLLAMA_FAKE_API_H_
#define DIGESTD_TESTS_SUPPORT_FAKE_OLLAMA_FAKE_API_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "fake_scheduler.h"
#include "fake_settings.h"

namespace digestd::testing {

struct ApiRequest {
  std::string method;  // "GET", "HEAD", "POST", ...
  std::string path;    // without the query string
  std::string body;
  // True once the client has hung up or the server is stopping. Must stay
  // callable until the request's reply (and its stream) is destroyed.
  FakeScheduler::CancelFn cancelled;
  // True once the server is stopping (empty: never), so that a cancelled
  // request is counted as the client's abort only when the server was not
  // stopping. Same lifetime as `cancelled`.
  FakeScheduler::CancelFn stopping;
};

// The body of a streamed reply. Each Next() blocks for the delay before its
// chunk (interrupted by ApiRequest::cancelled) and then returns one piece.
class ChunkSource {
 public:
  enum class Step {
    kData,  // *out holds the next piece (non-empty)
    kEnd,   // the body is complete
    kDrop,  // fault injection: close the connection without ending the body
    kGone,  // the client hung up or the server is stopping
  };
  virtual ~ChunkSource() = default;
  virtual Step Next(std::string* out) = 0;
};

struct ApiReply {
  enum class Close {
    kNo,    // send the reply
    kDrop,  // fault injection: close the connection without any reply
    kGone,  // client hung up or server stopping: close, nothing to send
  };
  int status = 200;
  std::string content_type;
  std::string body;                     // unused when `stream` is set
  std::unique_ptr<ChunkSource> stream;  // set: chunked body (holds the slot until done)
  Close close = Close::kNo;
};

class FakeApi {
 public:
  // Both pointers are borrowed and must outlive this object and every
  // ChunkSource it returned.
  FakeApi(SettingsStore* settings, FakeScheduler* scheduler)
      : settings_(settings), scheduler_(scheduler) {}
  FakeApi(const FakeApi&) = delete;
  FakeApi& operator=(const FakeApi&) = delete;

  // Answers one request; blocks until the first byte exists. Never throws
  // for bad input (bad input is a 4xx reply); may throw std::bad_alloc.
  ApiReply Handle(const ApiRequest& req);

  // Generation requests received per prompt (/api/generate: `prompt`;
  // /api/chat: the last message's content), counted on arrival, before
  // admission or any injected fault, so a count is the times a client sent
  // that work. Loads (an empty prompt) are not counted. Thread-safe.
  std::map<std::string, uint64_t> PromptCounts() const;
  void ResetPromptCounts();

 private:
  // The reply to a failed admission; counts a client's hang-up as abandoned.
  ApiReply NotAdmitted(const ApiRequest& req, const std::string& model,
                       FakeScheduler::Outcome outcome);
  ApiReply Generate(const ApiRequest& req, bool chat);
  ApiReply Embed(const ApiRequest& req, bool legacy);
  ApiReply Tags() const;
  void CountPrompt(const std::string& body, bool chat);
  ApiReply Ps() const;

  SettingsStore* settings_;
  FakeScheduler* scheduler_;
  mutable std::mutex prompts_mu_;
  std::map<std::string, uint64_t> prompts_;  // guarded by prompts_mu_
};

}  // namespace digestd::testing

#endif  // DIGESTD_TESTS_SUPPORT_FAKE_OLLAMA_FAKE_API_H_
