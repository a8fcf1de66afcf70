#include "fake_api.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "fake_content.h"

namespace digestd::testing {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::nanoseconds;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;  // keeps Ollama's key order on the wire

constexpr const char* kJsonType = "application/json; charset=utf-8";
constexpr const char* kNdjsonType = "application/x-ndjson";
constexpr const char* kTextType = "text/plain; charset=utf-8";
constexpr const char* kVersion = "0.12.6";
constexpr const char* kBusy = "server busy, please try again.  maximum pending requests exceeded";
constexpr const char* kMidstreamError = "an error was encountered while running the model";
constexpr const char* kRunnerCrash =
    "model runner has unexpectedly stopped, this may be due to resource limitations or an "
    "internal error, check ollama server logs for details";
constexpr const char* kBadThink =
    " (must be \"high\", \"medium\", \"low\", \"max\", true, or false)";
constexpr milliseconds kSplitGap{2};            // lets the two halves of a split line travel apart
constexpr int64_t kModifiedAtSec = 1759559643;  // fixed /api/tags modified_at
constexpr const char* kIntegerOptions[] = {"num_ctx",  "num_predict",   "num_keep",  "seed",
                                           "top_k",    "repeat_last_n", "num_batch", "num_gpu",
                                           "main_gpu", "num_thread"};

ApiReply JsonReply(int status, const ojson& body) {
  ApiReply r;
  r.status = status;
  r.content_type = kJsonType;
  r.body = GoJsonDump(body);
  return r;
}

ApiReply ErrorReply(int status, const std::string& message) {
  return JsonReply(status, ojson{{"error", message}});
}

ApiReply TextReply(int status, std::string text) {
  ApiReply r;
  r.status = status;
  r.content_type = kTextType;
  r.body = std::move(text);
  return r;
}

ApiReply CloseReply(ApiReply::Close how) {
  ApiReply r;
  r.close = how;
  return r;
}

ApiReply FailureReply(const FailSpec& f) {
  ApiReply r;
  r.status = f.status;
  r.body = f.body;
  r.content_type = !f.content_type.empty() ? f.content_type
                   : json::accept(f.body)  ? kJsonType
                                           : kTextType;
  return r;
}

bool Stopping(const ApiRequest& req) {
  return req.stopping && req.stopping();
}

bool KnownModel(const Settings& s, const std::string& canonical) {
  return std::any_of(s.models.begin(), s.models.end(),
                     [&](const std::string& m) { return CanonicalModelName(m) == canonical; });
}

std::string Str(const json& o, const char* key) {
  auto it = o.find(key);
  return (it != o.end() && it->is_string()) ? it->get<std::string>() : std::string();
}

// Typed reads that tolerate null (Go leaves the zero value / default).
bool Bool(const json& o, const char* key, bool fallback) {
  auto it = o.find(key);
  return (it != o.end() && it->is_boolean()) ? it->get<bool>() : fallback;
}

double Number(const json& o, const char* key, double fallback) {
  auto it = o.find(key);
  return (it != o.end() && it->is_number()) ? it->get<double>() : fallback;
}

std::optional<std::string> ParseKeepAlive(const json& r, int64_t fallback, int64_t* out) {
  auto it = r.find("keep_alive");
  if (it == r.end() || it->is_null()) {
    *out = fallback;
  } else if (it->is_number()) {
    const double secs = it->get<double>();
    *out = secs < 0 ? -1 : static_cast<int64_t>(secs * 1000);
  } else if (it->is_string()) {
    std::string err;
    std::optional<int64_t> ms = ParseGoDurationMs(it->get<std::string>(), &err);
    if (!ms) return err;
    *out = *ms;
  } else {
    return "Unsupported type: '" + GoTypeName(*it) + "'";
  }
  return std::nullopt;
}

// Returns the 500 text Ollama gives for a wrongly typed option, if any.
std::optional<std::string> ReadOptions(const json& r, int64_t* num_ctx, int64_t* num_predict) {
  auto it = r.find("options");
  if (it == r.end() || !it->is_object()) return std::nullopt;
  for (const char* key : kIntegerOptions) {
    auto o = it->find(key);
    if (o != it->end() && !o->is_null() && !o->is_number()) {
      return "option \"" + std::string(key) + "\" must be of type integer";
    }
  }
  auto get = [&](const char* key, int64_t* v) {
    auto o = it->find(key);
    if (o != it->end() && o->is_number()) *v = static_cast<int64_t>(o->get<double>());
  };
  get("num_ctx", num_ctx);
  get("num_predict", num_predict);
  return std::nullopt;
}

std::optional<std::string> CheckCommon(const json& r) {
  auto t = r.find("think");
  if (t != r.end() && !t->is_null() && !t->is_boolean()) {
    const std::string v = t->is_string() ? t->get<std::string>() : std::string();
    if (!t->is_string() || (v != "high" && v != "medium" && v != "low" && v != "max")) {
      return "invalid think value: " + (t->is_string() ? "\"" + v + "\"" : t->dump()) + kBadThink;
    }
  }
  auto lp = r.find("top_logprobs");
  if (lp != r.end() && lp->is_number() && (lp->get<double>() < 0 || lp->get<double>() > 20)) {
    return "top_logprobs must be between 0 and 20";
  }
  return std::nullopt;
}

// float32 values printed the way Go prints them (shortest float32 text).
double AsFloat32Text(float v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.9g", static_cast<double>(v));
  return std::strtod(buf, nullptr);
}

std::vector<float> Truncated(std::vector<float> v, int dims) {
  if (dims <= 0 || dims >= static_cast<int>(v.size())) return v;
  v.resize(static_cast<std::size_t>(dims));
  double norm = 0;
  for (float x : v) norm += static_cast<double>(x) * x;
  norm = std::sqrt(norm);
  for (float& x : v) x = static_cast<float>(norm > 0 ? x / norm : 0.0);
  return v;
}

struct Timing {
  Clock::time_point start;
  nanoseconds load{0};
  nanoseconds prompt_eval{0};
  Clock::time_point eval_start;
  int prompt_tokens = 0;
};

int64_t Nanos(Clock::duration d) {
  return std::chrono::duration_cast<nanoseconds>(d).count();
}

// Ollama's metric fields are omitempty: zero values are left out.
void AddMetrics(ojson* j, const Timing& t, int eval_count, bool embed) {
  const Clock::time_point now = Clock::now();
  auto put = [j](const char* key, int64_t v) {
    if (v > 0) (*j)[key] = v;
  };
  put("total_duration", Nanos(now - t.start));
  put("load_duration", t.load.count());
  put("prompt_eval_count", t.prompt_tokens);
  if (embed) return;
  put("prompt_eval_duration", t.prompt_eval.count());
  if (eval_count > 0) {
    put("eval_count", eval_count);
    put("eval_duration", Nanos(now - t.eval_start));
  }
}

struct GenSpec {
  bool chat = false;
  std::string model;   // as the client spelled it (Ollama echoes it)
  std::string prompt;  // all prompt text, for `context`
  std::vector<std::string> tokens;
  std::string done_reason;
  Settings settings;  // snapshot taken when the request started
  Timing timing;
};

ojson ChunkLine(const GenSpec& g, const std::string& text) {
  ojson j;
  j["model"] = g.model;
  j["created_at"] = Rfc3339Utc(std::chrono::system_clock::now());
  if (g.chat) {
    j["message"] = ojson{{"role", "assistant"}, {"content", text}};
  } else {
    j["response"] = text;
  }
  j["done"] = false;
  return j;
}

ojson FinalLine(const GenSpec& g, const std::string& text) {
  ojson j = ChunkLine(g, text);
  j["done"] = true;
  j["done_reason"] = g.done_reason;
  if (!g.chat) j["context"] = FakeContext(g.prompt, g.tokens);
  AddMetrics(&j, g.timing, static_cast<int>(g.tokens.size()), false);
  return j;
}

// The rest of a streamed generation; holds the slot until the last line.
class GenStream : public ChunkSource {
 public:
  GenStream(GenSpec spec, SlotLease lease, FakeScheduler* scheduler,
            FakeScheduler::CancelFn cancelled, FakeScheduler::CancelFn stopping)
      : spec_(std::move(spec)),
        lease_(std::move(lease)),
        scheduler_(scheduler),
        cancelled_(std::move(cancelled)),
        stopping_(std::move(stopping)) {}

  // MHD frees the stream without reading it to the end when the client hung
  // up and a write failed: that, too, is the client's abort.
  ~GenStream() override {
    if (lease_.held()) MarkAbortUnlessStopping();
  }

  Step Next(std::string* out) override {
    if (!pending_.empty()) {
      if (!scheduler_->SleepFor(kSplitGap, cancelled_)) return Gone();
      *out = std::exchange(pending_, std::string());
      return Step::kData;
    }
    if (done_) return Step::kEnd;
    const Settings& s = spec_.settings;
    const int n = static_cast<int>(spec_.tokens.size());
    if (s.cut_after >= 1 && index_ == s.cut_after) return Finish(Step::kDrop);
    if (s.midstream_error_after >= 1 && index_ == s.midstream_error_after) {
      Finish(Step::kEnd);
      Emit(GoJsonDump(ojson{{"error", kMidstreamError}}), out);
      return Step::kData;
    }
    if (chunks_ > 0) {
      nanoseconds delay = index_ < n ? milliseconds(s.token_ms) : nanoseconds(0);
      if (chunks_ == 1) delay += milliseconds(s.stall_ms);
      if (!scheduler_->SleepFor(delay, cancelled_)) return Gone();
    }
    if (index_ < n) {
      Emit(GoJsonDump(ChunkLine(spec_, spec_.tokens[static_cast<std::size_t>(index_++)])), out);
    } else {
      Finish(Step::kEnd);
      Emit(GoJsonDump(FinalLine(spec_, "")), out);
    }
    ++chunks_;
    return Step::kData;
  }

 private:
  Step Finish(Step step) {
    lease_.Release();
    done_ = true;
    return step;
  }

  Step Gone() {
    MarkAbortUnlessStopping();
    return Finish(Step::kGone);
  }

  void MarkAbortUnlessStopping() {
    if (!(stopping_ && stopping_())) lease_.MarkAborted();
  }

  // With split_utf8, the line leaves in two writes cut inside its first
  // multi-byte character.
  void Emit(std::string line, std::string* out) {
    line += '\n';
    if (spec_.settings.split_utf8) {
      for (std::size_t i = 0; i < line.size(); ++i) {
        if (static_cast<unsigned char>(line[i]) >= 0xC0) {
          pending_ = line.substr(i + 1);
          line.resize(i + 1);
          break;
        }
      }
    }
    *out = std::move(line);
  }

  GenSpec spec_;
  SlotLease lease_;
  FakeScheduler* scheduler_;  // borrowed, outlives the stream
  FakeScheduler::CancelFn cancelled_;
  FakeScheduler::CancelFn stopping_;
  int index_ = 0;   // tokens sent
  int chunks_ = 0;  // lines sent
  bool done_ = false;
  std::string pending_;  // second half of a split line
};

}  // namespace

ApiReply FakeApi::Handle(const ApiRequest& req) {
  const bool get = req.method == "GET" || req.method == "HEAD";
  const bool post = req.method == "POST";
  const std::string& p = req.path;
  const bool known =
      (post &&
       (p == "/api/generate" || p == "/api/chat" || p == "/api/embed" || p == "/api/embeddings")) ||
      (get && (p == "/" || p == "/api/version" || p == "/api/tags" || p == "/api/ps"));
  if (!known) return TextReply(404, "404 page not found");
  if (p == "/api/generate" || p == "/api/chat") CountPrompt(req.body, p == "/api/chat");
  if (std::optional<FailSpec> f = settings_->TakeFailure(p)) return FailureReply(*f);
  if (p == "/api/generate") return Generate(req, false);
  if (p == "/api/chat") return Generate(req, true);
  if (p == "/api/embed") return Embed(req, false);
  if (p == "/api/embeddings") return Embed(req, true);
  if (p == "/api/version") return JsonReply(200, ojson{{"version", kVersion}});
  if (p == "/api/tags") return Tags();
  if (p == "/api/ps") return Ps();
  return TextReply(200, "Ollama is running");
}

void FakeApi::CountPrompt(const std::string& body, bool chat) {
  const json r = json::parse(body, nullptr, false);
  if (!r.is_object()) return;
  std::string prompt;
  if (!chat) {
    auto it = r.find("prompt");
    if (it == r.end() || !it->is_string()) return;
    prompt = it->get<std::string>();
  } else {
    auto messages = r.find("messages");
    if (messages == r.end() || !messages->is_array() || messages->empty()) return;
    const json& last = messages->back();
    if (!last.is_object() || !last.contains("content") || !last["content"].is_string()) return;
    prompt = last["content"].get<std::string>();
  }
  if (prompt.empty()) return;  // a load or unload, not work
  std::lock_guard l(prompts_mu_);
  ++prompts_[prompt];
}

std::map<std::string, uint64_t> FakeApi::PromptCounts() const {
  std::lock_guard l(prompts_mu_);
  return prompts_;
}

void FakeApi::ResetPromptCounts() {
  std::lock_guard l(prompts_mu_);
  prompts_.clear();
}

ApiReply FakeApi::NotAdmitted(const ApiRequest& req, const std::string& model,
                              FakeScheduler::Outcome outcome) {
  if (outcome == FakeScheduler::Outcome::kQueueFull) return ErrorReply(503, kBusy);
  if (outcome == FakeScheduler::Outcome::kCancelled && !Stopping(req)) {
    scheduler_->NoteAbandoned(model);
  }
  return CloseReply(ApiReply::Close::kGone);
}

ApiReply FakeApi::Generate(const ApiRequest& req, bool chat) {
  Timing timing;
  timing.start = Clock::now();
  if (req.body.empty()) return ErrorReply(400, "missing request body");
  json r;
  std::optional<std::string> err =
      chat ? GoDecode(req.body, "ChatRequest",
                      {{"model", "string", "string"},
                       {"messages", "array", "[]api.Message"},
                       {"stream", "bool", "bool"},
                       {"options", "object", "map[string]interface {}"}},
                      &r)
           : GoDecode(req.body, "GenerateRequest",
                      {{"model", "string", "string"},
                       {"prompt", "string", "string"},
                       {"system", "string", "string"},
                       {"template", "string", "string"},
                       {"suffix", "string", "string"},
                       {"stream", "bool", "bool"},
                       {"raw", "bool", "bool"},
                       {"context", "array", "[]int"},
                       {"options", "object", "map[string]interface {}"}},
                      &r);
  if (err) return ErrorReply(400, *err);
  std::string source, all;  // text the tokens derive from; all prompt text
  const json messages = chat ? r.value("messages", json::array()) : json::array();
  for (const json& m : messages.is_array() ? messages : json::array()) {
    if (!m.is_object()) {
      return ErrorReply(400, "json: cannot unmarshal " + GoTypeName(m) +
                                 " into Go struct field ChatRequest.messages of type api.Message");
    }
    auto content = m.find("content");
    if (content != m.end() && !content->is_string() && !content->is_null()) {
      return ErrorReply(400, "json: cannot unmarshal " + GoTypeName(*content) +
                                 " into Go struct field Message.messages.content of type string");
    }
    source = Str(m, "content");
    all += source + "\n";
  }
  if (!chat) all = source = Str(r, "prompt");

  const Settings s = settings_->Get();
  const std::string model = Str(r, "model");
  if (chat && model.empty()) return ErrorReply(400, "model is required");
  const std::string canonical = CanonicalModelName(model);
  if (model.empty() || !KnownModel(s, canonical)) {
    return ErrorReply(404, "model '" + model + "' not found");
  }
  if (IsEmbeddingModel(canonical)) {
    return ErrorReply(400, "\"" + model + "\" does not support " + (chat ? "chat" : "generate"));
  }
  if ((err = CheckCommon(r))) return ErrorReply(400, *err);
  if (!chat && Bool(r, "raw", false) &&
      (!Str(r, "template").empty() || !Str(r, "system").empty() ||
       !r.value("context", json::array()).empty())) {
    return ErrorReply(400, "raw mode does not support template, system, or context");
  }
  int64_t keep_alive = 0;
  if ((err = ParseKeepAlive(r, s.keep_alive_ms, &keep_alive))) return ErrorReply(400, *err);
  int64_t num_ctx = 0, num_predict = -1;
  if ((err = ReadOptions(r, &num_ctx, &num_predict))) return ErrorReply(500, *err);

  GenSpec g{chat, model, all, {}, "stop", s, {}};
  if (chat ? messages.empty() : source.empty()) {
    // Ollama's "just load" (or, with keep_alive 0, "unload") reply: never streamed.
    ojson j = ChunkLine(g, "");
    j["done"] = true;
    if (keep_alive == 0) {
      scheduler_->Unload(canonical);
      j["done_reason"] = "unload";
      return JsonReply(200, j);
    }
    FakeScheduler::Admission a =
        scheduler_->Admit(canonical, num_ctx, s.load_ms, false, req.cancelled);
    if (a.outcome != FakeScheduler::Outcome::kAdmitted)
      return NotAdmitted(req, canonical, a.outcome);
    scheduler_->Finish(canonical, false, keep_alive);
    j["done_reason"] = "load";
    return JsonReply(200, j);
  }

  const json stream_field = r.value("stream", json());
  const bool stream = !stream_field.is_boolean() || stream_field.get<bool>();
  FakeScheduler::Admission a =
      scheduler_->Admit(canonical, num_ctx, s.load_ms, true, req.cancelled);
  if (a.outcome != FakeScheduler::Outcome::kAdmitted) return NotAdmitted(req, canonical, a.outcome);
  SlotLease lease(scheduler_, canonical, true, keep_alive);
  timing.load = a.load_paid;
  if (settings_->DrawError()) return ErrorReply(500, kRunnerCrash);
  auto gone = [&] {
    if (!Stopping(req)) lease.MarkAborted();
    return CloseReply(ApiReply::Close::kGone);
  };
  // Everything before the first token is prompt evaluation, stalls included.
  const Clock::time_point eval_begin = Clock::now();
  if (!scheduler_->SleepFor(milliseconds(s.latency_ms), req.cancelled)) return gone();
  if (!scheduler_->SleepFor(milliseconds(s.first_byte_stall_ms), req.cancelled)) return gone();
  timing.prompt_eval = Clock::now() - eval_begin;
  timing.prompt_tokens = FakePromptTokenCount(all);

  int n = s.tokens;
  if (num_predict > 0 && num_predict < n) {
    n = static_cast<int>(num_predict);
    g.done_reason = "length";
  }
  g.tokens = FakeTokens(source, n);
  timing.eval_start = Clock::now();
  g.timing = timing;
  if (n > 0 && !scheduler_->SleepFor(milliseconds(s.token_ms), req.cancelled)) return gone();
  // A fault "after 0 chunks" happens before anything is written.
  if (s.midstream_error_after == 0) return ErrorReply(500, kMidstreamError);
  if (s.cut_after == 0) return CloseReply(ApiReply::Close::kDrop);
  if (stream) {
    ApiReply reply;
    reply.content_type = kNdjsonType;
    reply.stream = std::make_unique<GenStream>(std::move(g), std::move(lease), scheduler_,
                                               req.cancelled, req.stopping);
    return reply;
  }
  // stream:false: the server buffers everything, so faults become plain replies.
  const nanoseconds rest = milliseconds(s.token_ms) * std::max(0, n - 1) + milliseconds(s.stall_ms);
  if (!scheduler_->SleepFor(rest, req.cancelled)) return gone();
  if (s.cut_after >= 1 && s.cut_after <= n) return CloseReply(ApiReply::Close::kDrop);
  if (s.midstream_error_after >= 1 && s.midstream_error_after <= n) {
    return ErrorReply(500, kMidstreamError);
  }
  std::string text;
  for (const std::string& t : g.tokens) text += t;
  return JsonReply(200, FinalLine(g, text));
}

ApiReply FakeApi::Embed(const ApiRequest& req, bool legacy) {
  Timing timing;
  timing.start = Clock::now();
  if (req.body.empty()) return ErrorReply(400, "missing request body");
  json r;
  std::optional<std::string> err =
      legacy ? GoDecode(req.body, "EmbeddingRequest",
                        {{"model", "string", "string"},
                         {"prompt", "string", "string"},
                         {"options", "object", "map[string]interface {}"}},
                        &r)
             : GoDecode(req.body, "EmbedRequest",
                        {{"model", "string", "string"},
                         {"truncate", "bool", "bool"},
                         {"dimensions", "number", "int"},
                         {"options", "object", "map[string]interface {}"}},
                        &r);
  if (err) return ErrorReply(400, *err);
  std::vector<std::string> inputs;
  const json input = legacy ? r.value("prompt", json()) : r.value("input", json());
  if (input.is_string()) {
    if (!input.get<std::string>().empty()) inputs.push_back(input.get<std::string>());
  } else if (input.is_array()) {
    for (const json& v : input) {
      if (!v.is_string()) return ErrorReply(400, "invalid input type");
      inputs.push_back(v.get<std::string>());
    }
  } else if (!input.is_null()) {
    return ErrorReply(400, "invalid input type");
  }

  const Settings s = settings_->Get();
  const std::string model = Str(r, "model");
  if (model.empty()) {
    return legacy ? ErrorReply(400, "model is required") : ErrorReply(404, "model '' not found");
  }
  const std::string canonical = CanonicalModelName(model);
  if (!KnownModel(s, canonical)) {
    return ErrorReply(404, "model \"" + model + "\" not found, try pulling it first");
  }
  int64_t keep_alive = 0;
  if ((err = ParseKeepAlive(r, s.keep_alive_ms, &keep_alive))) return ErrorReply(400, *err);
  int64_t num_ctx = 0, num_predict = -1;
  if ((err = ReadOptions(r, &num_ctx, &num_predict))) return ErrorReply(500, *err);
  if (!legacy && !Bool(r, "truncate", true)) {
    const int64_t limit = num_ctx > 0 ? num_ctx : FakeScheduler::kDefaultNumCtx;
    for (const std::string& in : inputs) {
      if (FakePromptTokenCount(in) > limit) {
        return ErrorReply(400, "the input length exceeds the context length");
      }
    }
  }

  const bool load_only = inputs.empty();
  FakeScheduler::Admission a =
      scheduler_->Admit(canonical, num_ctx, s.load_ms, !load_only, req.cancelled);
  if (a.outcome != FakeScheduler::Outcome::kAdmitted) return NotAdmitted(req, canonical, a.outcome);
  SlotLease lease(scheduler_, canonical, !load_only, keep_alive);
  if (load_only) {
    return legacy ? JsonReply(200, ojson{{"embedding", ojson::array()}})
                  : JsonReply(200, ojson{{"model", model}, {"embeddings", ojson::array()}});
  }
  timing.load = a.load_paid;
  if (settings_->DrawError()) return ErrorReply(500, kRunnerCrash);
  auto gone = [&] {
    if (!Stopping(req)) lease.MarkAborted();
    return CloseReply(ApiReply::Close::kGone);
  };
  if (!scheduler_->SleepFor(milliseconds(s.latency_ms + s.first_byte_stall_ms), req.cancelled)) {
    return gone();
  }
  if (s.midstream_error_after == 0) return ErrorReply(500, kMidstreamError);
  if (s.cut_after == 0) return CloseReply(ApiReply::Close::kDrop);

  const int dims = static_cast<int>(Number(r, "dimensions", 0));
  ojson vectors = ojson::array();
  for (const std::string& in : inputs) {
    timing.prompt_tokens += FakePromptTokenCount(in);
    ojson v = ojson::array();
    for (float x : Truncated(FakeEmbedding(in, s.embed_dims), dims)) {
      v.push_back(legacy ? static_cast<double>(x) : AsFloat32Text(x));
    }
    vectors.push_back(std::move(v));
  }
  lease.Release();
  if (legacy) return JsonReply(200, ojson{{"embedding", vectors[0]}});
  ojson j{{"model", model}, {"embeddings", std::move(vectors)}};
  AddMetrics(&j, timing, 0, true);
  return JsonReply(200, j);
}

ApiReply FakeApi::Tags() const {
  const Settings s = settings_->Get();
  const auto modified = std::chrono::system_clock::time_point(std::chrono::seconds(kModifiedAtSec));
  ojson models = ojson::array();
  for (const std::string& m : s.models) {
    const std::string c = CanonicalModelName(m);
    models.push_back(
        ojson{{"name", c},
              {"model", c},
              {"modified_at", Rfc3339Local(modified)},
              {"size", ModelSize(c)},
              {"digest", ModelDigest(c)},
              {"details", ModelDetailsJson(c)},
              {"capabilities", ojson::array({IsEmbeddingModel(c) ? "embedding" : "completion"})}});
  }
  return JsonReply(200, ojson{{"models", models}});
}

ApiReply FakeApi::Ps() const {
  const auto now = std::chrono::system_clock::now();
  ojson models = ojson::array();
  for (const FakeScheduler::LoadedModel& m : scheduler_->GetSnapshot().loaded) {
    // keep-alive "forever" (or still in use) shows as centuries ahead, as in Ollama.
    const auto expires = m.expires_in_ms < 0 ? now + std::chrono::hours(24 * 365 * 200)
                                             : now + milliseconds(m.expires_in_ms);
    models.push_back(ojson{{"name", m.name},
                           {"model", m.name},
                           {"size", ModelSize(m.name)},
                           {"digest", ModelDigest(m.name)},
                           {"details", ModelDetailsJson(m.name)},
                           {"expires_at", Rfc3339Local(expires)},
                           {"size_vram", ModelSize(m.name)},
                           {"context_length", m.num_ctx}});
  }
  return JsonReply(200, ojson{{"models", models}});
}

}  // namespace digestd::testing
