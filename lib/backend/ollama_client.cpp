#include "backend/ollama_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <optional>

#include "util/json_parse.h"

namespace digestd {

namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

// How long curl_multi_poll may sleep: bounds how late a cancel or a timeout
// is noticed when no byte arrives.
constexpr int kPollMs = 100;
// Bytes of a non-200 body kept for the error message.
constexpr size_t kMaxErrorBody = 64 << 10;

// An easy handle inside a multi handle that owns its connection cache.
struct CurlHandle {
  CURLM* multi = nullptr;
  CURL* easy = nullptr;
  CurlHandle() {
    OllamaClient::GlobalInit();
    multi = curl_multi_init();
    easy = curl_easy_init();
  }
  ~CurlHandle() {
    if (easy != nullptr) curl_easy_cleanup(easy);
    if (multi != nullptr) curl_multi_cleanup(multi);
  }
  CurlHandle(const CurlHandle&) = delete;
  CurlHandle& operator=(const CurlHandle&) = delete;
};

// Handles are lent per request, not tied to a pool thread: libuv runs each
// job on whichever of its threads is free, and it has more threads than
// worker slots, so one handle per thread would open one connection per
// thread. Lent from here, most recently used first, the handles (and so the
// kept-alive connections) number at most the requests ever in flight at
// once. A handle is used by one thread at a time, as libcurl requires; the
// mutex hands it over. (libcurl's shared connection cache is not an option:
// sharing it between threads is a known libcurl bug.)
class HandlePool {
 public:
  std::unique_ptr<CurlHandle> Take() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!idle_.empty()) {
        std::unique_ptr<CurlHandle> h = std::move(idle_.back());
        idle_.pop_back();
        return h;
      }
    }
    return std::make_unique<CurlHandle>();
  }
  void Give(std::unique_ptr<CurlHandle> h) {
    if (h == nullptr || h->multi == nullptr || h->easy == nullptr) return;
    std::lock_guard<std::mutex> lock(mu_);
    idle_.push_back(std::move(h));
  }

 private:
  std::mutex mu_;
  std::vector<std::unique_ptr<CurlHandle>> idle_;  // guarded by mu_
};

HandlePool& Handles() {
  static HandlePool pool;
  return pool;
}

// The multi handles of the requests waiting in curl_multi_poll now, so a
// cancel set on another thread can wake them at once (WakeAll) instead of
// after kPollMs. A handle is registered for the length of its transfer loop.
class Polling {
 public:
  void Add(CURLM* m) {
    std::lock_guard<std::mutex> lock(mu_);
    active_.push_back(m);
  }
  void Remove(CURLM* m) {
    std::lock_guard<std::mutex> lock(mu_);
    active_.erase(std::remove(active_.begin(), active_.end(), m), active_.end());
  }
  // Under the mutex: a handle is never woken after Remove() returned.
  void WakeAll() {
    std::lock_guard<std::mutex> lock(mu_);
    for (CURLM* m : active_) curl_multi_wakeup(m);
  }

 private:
  std::mutex mu_;
  std::vector<CURLM*> active_;  // guarded by mu_
};

Polling& Pollers() {
  static Polling polling;
  return polling;
}

struct PollingScope {
  CURLM* multi;
  explicit PollingScope(CURLM* m) : multi(m) { Pollers().Add(m); }
  ~PollingScope() { Pollers().Remove(multi); }
  PollingScope(const PollingScope&) = delete;
  PollingScope& operator=(const PollingScope&) = delete;
};

// A handle lent for one request, given back when it goes out of scope.
struct HandleLease {
  std::unique_ptr<CurlHandle> handle = Handles().Take();
  ~HandleLease() { Handles().Give(std::move(handle)); }
};

struct HeaderList {
  curl_slist* list = nullptr;
  ~HeaderList() { curl_slist_free_all(list); }
  void Add(const char* h) {
    if (curl_slist* l = curl_slist_append(list, h)) list = l;
  }
};

// Why the client itself stopped a transfer.
enum class Abort { kNone, kCancelled, kFirstByte, kIdle, kTooLarge, kStream };

// State of one transfer, shared with libcurl's callbacks on this thread.
struct Transfer {
  CURL* easy = nullptr;
  const std::atomic<bool>* cancel = nullptr;
  Clock::time_point start;
  Clock::time_point last_byte;
  bool got_byte = false;
  std::chrono::milliseconds first_byte_timeout{0};
  std::chrono::milliseconds idle_timeout{0};
  Abort abort = Abort::kNone;
  long http_status = 0;
  NdjsonStream* stream = nullptr;             // set: a 200 body is NDJSON and goes here
  std::atomic<uint64_t>* progress = nullptr;  // may be null: +1 per stream line
  size_t lines_counted = 0;                   // stream lines already added to *progress
  TextSink* text = nullptr;                   // may be null: the answer's text as it grows
  size_t text_sent = 0;                       // bytes of stream->text() already appended
  std::string body;                           // otherwise the body (capped)
  size_t max_body = 0;                        // cap for a 200 body; beyond it: kTooLarge
  size_t body_seen = 0;

  // Checked from the progress callback and between polls. Returns true when
  // the transfer must stop.
  bool ShouldStop() {
    if (abort != Abort::kNone) return true;
    if (cancel != nullptr && cancel->load(std::memory_order_relaxed)) {
      abort = Abort::kCancelled;
      return true;
    }
    const Clock::time_point now = Clock::now();
    if (!got_byte && now - start > first_byte_timeout) {
      abort = Abort::kFirstByte;
      return true;
    }
    if (got_byte && now - last_byte > idle_timeout) {
      abort = Abort::kIdle;
      return true;
    }
    return false;
  }

  void SawBytes() {
    last_byte = Clock::now();
    got_byte = true;
  }

  // Adds the stream lines decoded since the last call to *progress.
  void CountLines() {
    if (stream == nullptr || stream->lines() == lines_counted) return;
    if (progress != nullptr) {
      progress->fetch_add(stream->lines() - lines_counted, std::memory_order_relaxed);
    }
    lines_counted = stream->lines();
    if (text != nullptr && stream->text().size() > text_sent) {
      text->Append(std::string_view(stream->text()).substr(text_sent));
      text_sent = stream->text().size();
    }
  }
};

size_t OnHeader(char* data, size_t size, size_t n, void* user) {
  (void)data;
  auto* t = static_cast<Transfer*>(user);
  t->SawBytes();
  return size * n;
}

// Returning less than was given makes libcurl stop with CURLE_WRITE_ERROR.
size_t OnWrite(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t len = size * n;
  t->SawBytes();
  if (t->http_status == 0) curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->http_status);
  std::string_view bytes(data, len);
  t->body_seen += len;
  if (t->http_status == 200 && t->stream != nullptr) {
    // No exception may cross into libcurl; NdjsonStream throws only
    // bad_alloc, which the caller's try/catch would never see from here.
    try {
      t->stream->Feed(bytes);
      t->CountLines();
    } catch (...) {
      t->abort = Abort::kTooLarge;
      return 0;
    }
    // An {"error":…} line is the last thing the server sends; read to the
    // end so the connection can be reused. Anything else is hopeless.
    if (t->stream->failed() && !t->stream->retryable()) {
      t->abort = Abort::kStream;
      return 0;
    }
    return len;
  }
  if (t->http_status == 200) {
    if (t->body.size() + len > t->max_body) {
      t->abort = Abort::kTooLarge;
      return 0;
    }
    t->body.append(bytes);
    return len;
  }
  // An error body: keep its start for the message, drain the rest.
  if (t->body.size() < kMaxErrorBody) {
    t->body.append(bytes.substr(0, kMaxErrorBody - t->body.size()));
  }
  return len;
}

int OnProgress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  return static_cast<Transfer*>(user)->ShouldStop() ? 1 : 0;
}

std::string Seconds(std::chrono::milliseconds ms) {
  if (ms.count() % 1000 == 0) return std::to_string(ms.count() / 1000) + " s";
  return std::to_string(ms.count()) + " ms";
}

// The message of a non-200 answer: `error` from a JSON body, else the text.
std::string ErrorBodyMessage(const std::string& body) {
  json j = TryParseJsonBounded(body);
  if (j.is_object()) {
    auto e = j.find("error");
    if (e != j.end()) {
      if (e->is_string() && !e->get_ref<const std::string&>().empty()) {
        return Excerpt(e->get_ref<const std::string&>(), 2000);
      }
      if (e->is_object() && e->contains("message") && (*e)["message"].is_string()) {
        return Excerpt((*e)["message"].get<std::string>(), 2000);  // OpenAI-shaped proxies
      }
    }
  }
  std::string_view text = body;
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) {
    text.remove_suffix(1);
  }
  if (text.empty()) return "(empty body)";
  return Excerpt(text, 1000);
}

CallClass ClassOfStatus(long status) {
  if (status == 429 || status == 503) return CallClass::kBusy;
  if (status == 408 || (status >= 500 && status <= 599)) return CallClass::kRetryable;
  return CallClass::kFatal;
}

// What a libcurl failure (not caused by the client itself) means.
CallStatus ClassifyCurlError(CURLcode rc, const char* errbuf, const Transfer& t,
                             const std::string& url, const OllamaClientOptions& o) {
  std::string detail = errbuf[0] != '\0' ? errbuf : curl_easy_strerror(rc);
  CallStatus s;
  s.http_status = static_cast<int>(t.http_status);
  s.cls = CallClass::kRetryable;
  switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
      s.error = "cannot connect to Ollama at " + url + ": " + detail +
                "; start Ollama (systemctl start ollama) or fix [backend] url; for Ollama on "
                "another machine, allow its address in the unit (IPAddressAllow=)";
      break;
    case CURLE_OPERATION_TIMEDOUT:
      s.timed_out = true;
      if (!t.got_byte) {
        curl_off_t connect_us = 0;
        curl_easy_getinfo(t.easy, CURLINFO_CONNECT_TIME_T, &connect_us);
        if (connect_us == 0) {
          s.error = "connecting to Ollama at " + url + " timed out after " +
                    Seconds(o.connect_timeout) +
                    " ([backend] connect_timeout_ms); check that the host is up and that a "
                    "firewall lets this machine reach its port";
          break;
        }
      }
      s.error = "Ollama did not finish the answer within " + Seconds(o.request_timeout) +
                " ([backend] request_timeout_s)";
      break;
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
      s.error = t.got_byte ? "Ollama closed the connection in the middle of the answer: " + detail
                           : "Ollama closed the connection without answering: " + detail;
      break;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
      s.cls = CallClass::kFatal;
      s.error = "cannot use the Ollama URL " + url + ": " + detail + "; check [backend] url";
      break;
    default:
      s.error = "request to Ollama at " + url + " failed: " + detail;
      break;
  }
  return s;
}

struct Request {
  const char* path;
  std::string body;
  NdjsonStream* stream;  // null: a plain JSON answer
  size_t max_body;
  std::atomic<uint64_t>* progress = nullptr;  // may be null
  TextSink* text = nullptr;                   // may be null
};

// Runs one POST on this thread's handle. On return t->body / t->stream hold
// the answer; the CallStatus says how the transport and the status line went
// (a 200 is kOk here; the caller checks the body).
CallStatus Perform(const OllamaClientOptions& o, const Request& req,
                   const std::atomic<bool>* cancel, Transfer* t) {
  HandleLease lease;  // declared first: given back after everything below
  CurlHandle& h = *lease.handle;
  t->start = Clock::now();
  CallStatus s;
  auto finish = [&](CallStatus st) {
    st.elapsed = Clock::now() - t->start;
    return st;
  };
  if (h.multi == nullptr || h.easy == nullptr) {
    s.cls = CallClass::kRetryable;
    s.error = "cannot set up libcurl (out of memory?)";
    return finish(s);
  }
  std::string base = o.base_url;
  while (!base.empty() && base.back() == '/') base.pop_back();
  const std::string url = base + req.path;

  CURL* easy = h.easy;
  curl_easy_reset(easy);  // keeps the connection cache
  char errbuf[CURL_ERROR_SIZE] = {0};
  HeaderList headers;
  headers.Add("Content-Type: application/json");
  headers.Add("Accept: application/x-ndjson, application/json");
  headers.Add("Expect:");  // no 100-continue round trip for large bodies
  // The handle keeps pointers to errbuf, the header list, the body and `t`
  // after the transfer; clear them before those go out of scope (declared
  // after them, so destroyed first).
  struct ResetAtExit {
    CURL* easy;
    ~ResetAtExit() { curl_easy_reset(easy); }
  } reset_at_exit{easy};
  t->easy = easy;
  t->cancel = cancel;
  t->first_byte_timeout = o.first_byte_timeout;
  t->idle_timeout = o.idle_timeout;
  t->stream = req.stream;
  t->max_body = req.max_body;
  t->progress = req.progress;
  t->text = req.text;

  curl_easy_setopt(easy, CURLOPT_URL, url.c_str());
  curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, errbuf);
  curl_easy_setopt(easy, CURLOPT_POST, 1L);
  curl_easy_setopt(easy, CURLOPT_POSTFIELDS, req.body.data());
  curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers.list);
  curl_easy_setopt(easy, CURLOPT_USERAGENT, "digestd/" DIGESTD_VERSION);
  curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(o.connect_timeout.count()));
  curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, static_cast<long>(o.request_timeout.count()));
  curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, &OnHeader);
  curl_easy_setopt(easy, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, &OnWrite);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(easy, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(easy, CURLOPT_XFERINFOFUNCTION, &OnProgress);
  curl_easy_setopt(easy, CURLOPT_XFERINFODATA, t);

  if (CURLMcode mc = curl_multi_add_handle(h.multi, easy); mc != CURLM_OK) {
    s.cls = CallClass::kRetryable;
    s.error = std::string("libcurl cannot start the request: ") + curl_multi_strerror(mc);
    return finish(s);
  }
  CURLcode rc = CURLE_OK;
  bool completed = false;
  std::optional<PollingScope> polling(std::in_place, h.multi);
  for (;;) {
    int running = 0;
    CURLMcode mc = curl_multi_perform(h.multi, &running);
    if (mc != CURLM_OK) {
      s.cls = CallClass::kRetryable;
      s.error = std::string("libcurl failed: ") + curl_multi_strerror(mc);
      break;
    }
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(h.multi, &left)) {
      if (msg->msg == CURLMSG_DONE && msg->easy_handle == easy) {
        rc = msg->data.result;
        completed = true;
      }
    }
    if (completed || running == 0) break;
    // The progress callback normally notices this first; checking here too
    // bounds the delay by kPollMs whatever libcurl's callback cadence.
    if (t->ShouldStop()) break;
    curl_multi_poll(h.multi, nullptr, 0, kPollMs, nullptr);
  }
  polling.reset();
  // Removing an unfinished transfer closes its connection, which is what
  // makes Ollama cancel the generation.
  curl_multi_remove_handle(h.multi, easy);
  if (t->http_status == 0) curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &t->http_status);
  s.http_status = static_cast<int>(t->http_status);
  if (!s.error.empty()) return finish(s);

  switch (t->abort) {
    case Abort::kNone:
      break;
    case Abort::kCancelled:
      s.cls = CallClass::kCancelled;
      s.error = "cancelled while waiting for Ollama";
      return finish(s);
    case Abort::kFirstByte:
      s.cls = CallClass::kRetryable;
      s.timed_out = true;
      s.error = "Ollama sent nothing within " + Seconds(o.first_byte_timeout) +
                " ([backend] first_byte_timeout_s): a model load that takes longer, or a "
                "server that hangs";
      return finish(s);
    case Abort::kIdle:
      s.cls = CallClass::kRetryable;
      s.timed_out = true;
      s.error = "Ollama went silent for " + Seconds(o.idle_timeout) +
                " in the middle of an answer ([backend] idle_timeout_s)";
      return finish(s);
    case Abort::kTooLarge:
      s.cls = CallClass::kFatal;
      s.error = "Ollama's answer on " + std::string(req.path) + " is larger than " +
                std::to_string(req.max_body) + " bytes";
      return finish(s);
    case Abort::kStream:
      return finish(s);  // the caller reads the stream's failure
  }
  if (!completed) {
    s.cls = CallClass::kRetryable;
    s.error = "the request to Ollama ended without a result";
    return finish(s);
  }
  if (rc != CURLE_OK) {
    // A 200 stream that broke off: the stream knows how far it got. If its
    // done line had arrived, the answer is complete and only the end of the
    // chunked body was lost.
    const bool closed = rc == CURLE_PARTIAL_FILE || rc == CURLE_RECV_ERROR ||
                        rc == CURLE_GOT_NOTHING || rc == CURLE_SEND_ERROR;
    if (t->http_status == 200 && req.stream != nullptr && req.stream->done() &&
        !req.stream->failed()) {
      return finish(s);
    }
    if (t->http_status == 200 && req.stream != nullptr && t->got_byte && closed) {
      req.stream->Finish();
      s.cls = req.stream->retryable() ? CallClass::kRetryable : CallClass::kFatal;
      s.error = "Ollama's stream on " + std::string(req.path) +
                " broke off: " + req.stream->error() + " (" +
                (errbuf[0] != '\0' ? std::string(errbuf) : curl_easy_strerror(rc)) + ")";
      return finish(s);
    }
    return finish(ClassifyCurlError(rc, errbuf, *t, url, o));
  }
  if (t->http_status != 200) {
    s.cls = ClassOfStatus(t->http_status);
    s.error = "Ollama answered HTTP " + std::to_string(t->http_status) + " on " + req.path + ": " +
              ErrorBodyMessage(t->body);
    if (t->http_status == 404 && s.error.find("not found") != std::string::npos) {
      s.error +=
          "; pull the model on the Ollama host (ollama pull <model>) or name one it has in "
          "[backend] model or embed_model";
    }
    return finish(s);
  }
  return finish(s);
}

std::string DumpRequest(const json& request) {
  return request.dump(-1, ' ', false, json::error_handler_t::replace);
}

// Reads the optional counters of a non-streamed answer.
GenerationMetrics ReadMetrics(const json& j) {
  GenerationMetrics m;
  auto get = [&](const char* key, std::optional<int64_t>* out) {
    auto it = j.find(key);
    if (it != j.end() && it->is_number()) *out = it->get<int64_t>();
  };
  get("prompt_eval_count", &m.prompt_eval_count);
  get("eval_count", &m.eval_count);
  get("total_duration", &m.total_duration_ns);
  get("load_duration", &m.load_duration_ns);
  get("prompt_eval_duration", &m.prompt_eval_duration_ns);
  get("eval_duration", &m.eval_duration_ns);
  return m;
}

}  // namespace

std::string_view CallClassName(CallClass c) {
  switch (c) {
    case CallClass::kOk:
      return "ok";
    case CallClass::kBusy:
      return "busy";
    case CallClass::kRetryable:
      return "retryable";
    case CallClass::kFatal:
      return "fatal";
    case CallClass::kCancelled:
      return "cancelled";
  }
  return "fatal";
}

OllamaClientOptions OllamaClientOptions::FromConfig(const Config::Backend& backend) {
  OllamaClientOptions o;
  o.base_url = backend.url;
  o.connect_timeout = std::chrono::milliseconds(backend.connect_timeout_ms);
  o.first_byte_timeout = std::chrono::seconds(backend.first_byte_timeout_s);
  o.idle_timeout = std::chrono::seconds(backend.idle_timeout_s);
  o.request_timeout = std::chrono::seconds(backend.request_timeout_s);
  return o;
}

OllamaClient::OllamaClient(OllamaClientOptions options) : options_(std::move(options)) {}

void OllamaClient::WakeAll() {
  Pollers().WakeAll();
}

void OllamaClient::GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

GenerateResult OllamaClient::Generate(const json& request, const std::atomic<bool>* cancel,
                                      std::atomic<uint64_t>* progress, TextSink* text) const {
  return Stream("/api/generate", NdjsonStream::Format::kGenerate, request, cancel, progress, text,
                options_);
}

GenerateResult OllamaClient::Chat(const json& request, const std::atomic<bool>* cancel,
                                  std::atomic<uint64_t>* progress, TextSink* text) const {
  return Stream("/api/chat", NdjsonStream::Format::kChat, request, cancel, progress, text,
                options_);
}

GenerateResult OllamaClient::Stream(const char* path, NdjsonStream::Format format,
                                    const json& request, const std::atomic<bool>* cancel,
                                    std::atomic<uint64_t>* progress, TextSink* text,
                                    const OllamaClientOptions& options) const {
  GenerateResult r;
  json body = request;
  body["stream"] = true;
  NdjsonStream stream(format, options.stream_limits);
  Transfer t;
  r.status =
      Perform(options, Request{path, DumpRequest(body), &stream, 0, progress, text}, cancel, &t);
  if (r.status.ok() || t.abort == Abort::kStream) {
    if (!stream.Finish()) {
      r.status.cls = stream.retryable() ? CallClass::kRetryable : CallClass::kFatal;
      r.status.error = std::string(stream.failure() == NdjsonStream::Failure::kErrorLine
                                       ? "Ollama reported an error on "
                                       : "bad answer from Ollama on ") +
                       path + ": " + stream.error();
    } else {
      r.status.cls = CallClass::kOk;
      r.status.error.clear();
    }
  }
  t.CountLines();  // a last line without "\n", decoded by Finish()
  r.text = stream.text();
  r.thinking = stream.thinking();
  r.model = stream.model();
  r.done_reason = stream.done_reason();
  r.metrics = stream.metrics();
  return r;
}

EmbedResult OllamaClient::Embed(const json& request, const std::atomic<bool>* cancel,
                                std::atomic<uint64_t>* progress) const {
  EmbedResult r;
  Transfer t;
  r.status = Perform(options_,
                     Request{"/api/embed", DumpRequest(request), nullptr, options_.max_body_bytes},
                     cancel, &t);
  if (!r.status.ok()) return r;
  if (progress != nullptr) progress->fetch_add(1, std::memory_order_relaxed);
  auto bad = [&](const std::string& what) {
    r.status.cls = CallClass::kFatal;
    r.status.error = "bad answer from Ollama on /api/embed: " + what;
    r.embeddings.clear();
    return r;
  };
  json j = TryParseJsonBounded(t.body);
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object: " + Excerpt(t.body));
  auto emb = j.find("embeddings");
  if (emb == j.end() || !emb->is_array()) return bad("no \"embeddings\" array");
  size_t inputs = 1;
  if (auto in = request.find("input"); in != request.end() && in->is_array()) inputs = in->size();
  if (emb->size() != inputs) {
    return bad(std::to_string(emb->size()) + " vectors for " + std::to_string(inputs) + " inputs");
  }
  r.embeddings.reserve(emb->size());
  for (const json& v : *emb) {
    if (!v.is_array() || v.empty()) return bad("a vector that is not a non-empty array");
    if (!r.embeddings.empty() && v.size() != r.embeddings.front().size()) {
      return bad("vectors of different lengths");
    }
    std::vector<double> vec;
    vec.reserve(v.size());
    for (const json& x : v) {
      if (!x.is_number()) return bad("a vector element that is not a number");
      vec.push_back(x.get<double>());
    }
    r.embeddings.push_back(std::move(vec));
  }
  if (auto m = j.find("model"); m != j.end() && m->is_string()) r.model = m->get<std::string>();
  r.metrics = ReadMetrics(j);
  return r;
}

CallStatus OllamaClient::Probe(const Config::Backend& backend, std::chrono::milliseconds deadline,
                               const std::atomic<bool>* cancel) const {
  json request = {{"model", backend.model},
                  {"prompt", "Reply with one word."},
                  {"options", {{"num_predict", 1}}}};
  ApplyServerOptions(backend, &request);
  OllamaClientOptions o = options_;
  o.first_byte_timeout = deadline;
  o.request_timeout = deadline;
  o.idle_timeout = std::min(o.idle_timeout, deadline);
  return Stream("/api/generate", NdjsonStream::Format::kGenerate, request, cancel, nullptr, nullptr,
                o)
      .status;
}

void ApplyServerOptions(const Config::Backend& backend, json* request) {
  if (!backend.keep_alive.empty()) (*request)["keep_alive"] = backend.keep_alive;
  if (backend.num_ctx > 0) {
    json& options = (*request)["options"];
    if (!options.is_object()) options = json::object();
    options["num_ctx"] = backend.num_ctx;
  }
}

}  // namespace digestd
