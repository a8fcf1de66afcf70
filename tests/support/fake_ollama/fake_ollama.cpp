#include "fake_ollama.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include <microhttpd.h>

namespace digestd::testing {
namespace {

using nlohmann::json;

constexpr std::size_t kStreamBlockSize = 16 * 1024;
constexpr unsigned kListenBacklog = 1024;
constexpr const char* kControlPrefix = "/_fake/";

// One HTTP request, from its headers to MHD's completion callback.
struct RequestState {
  std::string method;
  std::string path;
  std::string body;
  bool control = false;
  bool too_large = false;
  // Set when the fake closes the connection on purpose (cut_after), so the
  // close is not counted as a client disconnect. Shared with the stream,
  // which may outlive this state.
  std::shared_ptr<std::atomic<bool>> intentional_close = std::make_shared<std::atomic<bool>>(false);
};

// The cls of a chunked response: adapts ChunkSource to MHD's reader.
struct StreamReader {
  std::unique_ptr<ChunkSource> source;
  std::shared_ptr<std::atomic<bool>> intentional_close;
  std::string pending;  // current piece; part may already be sent
  std::size_t offset = 0;
};

// True when the client has closed its end (or the socket failed). A client
// never half-closes an HTTP/1.1 request it still wants answered.
bool PeerClosed(int fd) {
  pollfd p{fd, POLLRDHUP, 0};
  if (poll(&p, 1, 0) <= 0) return false;
  return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

ApiReply MakeJsonReply(int status, const json& body) {
  ApiReply r;
  r.status = status;
  r.content_type = "application/json; charset=utf-8";
  r.body = body.dump();
  return r;
}

}  // namespace

// MHD callbacks. Each catches everything: no exception may cross into C.
struct FakeOllamaGlue {
  static MHD_Result OnAccess(void* cls, MHD_Connection* conn, const char* url, const char* method,
                             const char* /*version*/, const char* upload_data, size_t* upload_size,
                             void** con_cls) {
    auto* self = static_cast<FakeOllama*>(cls);
    try {
      if (*con_cls == nullptr) {
        auto st = std::make_unique<RequestState>();
        st->method = method;
        st->path = url;
        st->control = st->path.rfind(kControlPrefix, 0) == 0;
        if (!st->control) self->CountRequest(st->path);
        *con_cls = st.release();  // owned from here by OnCompleted
        return MHD_YES;
      }
      auto* st = static_cast<RequestState*>(*con_cls);
      if (*upload_size != 0) {
        if (st->body.size() + *upload_size > FakeOllama::kMaxBodyBytes) {
          st->too_large = true;
          st->body.clear();
        } else if (!st->too_large) {
          st->body.append(upload_data, *upload_size);
        }
        *upload_size = 0;
        return MHD_YES;
      }
      if (st->too_large) {
        return Send(conn, MakeJsonReply(413, {{"error", "request body too large"}}), st);
      }
      if (st->control) return Send(conn, Control(self, *st), st);
      const MHD_ConnectionInfo* info =
          MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
      const int fd = info != nullptr ? info->connect_fd : -1;
      ApiRequest req{st->method, st->path, std::move(st->body),
                     [self, fd] { return self->stopping_.load() || (fd >= 0 && PeerClosed(fd)); },
                     [self] { return self->stopping_.load(); }};
      return Send(conn, self->api_.Handle(req), st);
    } catch (...) {
      return MHD_NO;  // closes the connection
    }
  }

  static ApiReply Control(FakeOllama* self, const RequestState& st) {
    const bool get = st.method == "GET" || st.method == "HEAD";
    const bool post = st.method == "POST";
    if (st.path == "/_fake/stats" && get) return MakeJsonReply(200, StatsToJson(self->GetStats()));
    if (st.path == "/_fake/prompts" && get) {
      return MakeJsonReply(200, json(self->api_.PromptCounts()));
    }
    if (st.path == "/_fake/settings" && get) {
      return MakeJsonReply(200, SettingsToJson(self->GetSettings()));
    }
    if (st.path == "/_fake/settings" && post) {
      json patch = json::parse(st.body.empty() ? "{}" : st.body, nullptr, false);
      if (patch.is_discarded()) return MakeJsonReply(400, {{"error", "settings: invalid JSON"}});
      std::string err = self->MergeSettings(patch);
      if (!err.empty()) return MakeJsonReply(400, {{"error", err}});
      return MakeJsonReply(200, SettingsToJson(self->GetSettings()));
    }
    if (st.path == "/_fake/reset" && post) {
      self->Reset();
      return MakeJsonReply(200, SettingsToJson(self->GetSettings()));
    }
    return MakeJsonReply(404, {{"error", "unknown control endpoint " + st.method + " " + st.path}});
  }

  static MHD_Result Send(MHD_Connection* conn, ApiReply reply, RequestState* st) {
    if (reply.close != ApiReply::Close::kNo) {
      if (reply.close == ApiReply::Close::kDrop) st->intentional_close->store(true);
      return MHD_NO;
    }
    MHD_Response* resp = nullptr;
    if (reply.stream) {
      auto reader = std::make_unique<StreamReader>();
      reader->source = std::move(reply.stream);
      reader->intentional_close = st->intentional_close;
      resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, kStreamBlockSize, &ReadChunk,
                                               reader.get(), &FreeReader);
      if (resp != nullptr) reader.release();  // owned by the response; freed in FreeReader
    } else {
      resp = MHD_create_response_from_buffer(reply.body.size(), reply.body.data(),
                                             MHD_RESPMEM_MUST_COPY);
    }
    if (resp == nullptr) return MHD_NO;
    if (!reply.content_type.empty()) {
      MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, reply.content_type.c_str());
    }
    const MHD_Result queued = MHD_queue_response(conn, static_cast<unsigned>(reply.status), resp);
    MHD_destroy_response(resp);
    return queued;
  }

  // Blocks in ChunkSource::Next for the token delays: fine with one thread
  // per connection, and it never returns 0 (which would make MHD spin).
  static ssize_t ReadChunk(void* cls, uint64_t /*pos*/, char* buf, size_t max) {
    auto* r = static_cast<StreamReader*>(cls);
    try {
      while (r->offset >= r->pending.size()) {
        r->pending.clear();
        r->offset = 0;
        switch (r->source->Next(&r->pending)) {
          case ChunkSource::Step::kData:
            break;
          case ChunkSource::Step::kEnd:
            return MHD_CONTENT_READER_END_OF_STREAM;
          case ChunkSource::Step::kDrop:
            r->intentional_close->store(true);
            return MHD_CONTENT_READER_END_WITH_ERROR;
          case ChunkSource::Step::kGone:
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
      }
      const std::size_t n = std::min(max, r->pending.size() - r->offset);
      std::memcpy(buf, r->pending.data() + r->offset, n);
      r->offset += n;
      return static_cast<ssize_t>(n);
    } catch (...) {
      return MHD_CONTENT_READER_END_WITH_ERROR;
    }
  }

  static void FreeReader(void* cls) {
    std::unique_ptr<StreamReader> owned(static_cast<StreamReader*>(cls));
  }

  static void OnCompleted(void* cls, MHD_Connection* /*conn*/, void** con_cls,
                          MHD_RequestTerminationCode toe) {
    std::unique_ptr<RequestState> st(static_cast<RequestState*>(*con_cls));
    *con_cls = nullptr;
    auto* self = static_cast<FakeOllama*>(cls);
    if (st == nullptr || toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ||
        toe == MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN) {
      return;
    }
    if (!st->intentional_close->load() && !self->stopping_.load()) ++self->disconnects_;
  }

  static void OnConnection(void* cls, MHD_Connection* /*conn*/, void** /*socket_context*/,
                           MHD_ConnectionNotificationCode code) {
    auto* self = static_cast<FakeOllama*>(cls);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
      ++self->connections_accepted_;
      ++self->connections_open_;
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
      --self->connections_open_;
    }
  }
};

json StatsToJson(const FakeStats& s) {
  json models = json::object();
  for (const FakeScheduler::ModelStats& m : s.models) {
    models[m.name] = {{"parallel", m.parallel},
                      {"in_flight", m.in_flight},
                      {"max_in_flight_observed", m.max_in_flight_observed},
                      {"queued", m.queued},
                      {"admitted", m.admitted},
                      {"slot_wait_ms", static_cast<double>(m.slot_wait_ns) / 1e6},
                      {"aborted_by_client", m.aborted_by_client},
                      {"abandoned_waiting", m.abandoned_waiting}};
  }
  return {{"connections_accepted", s.connections_accepted},
          {"connections_open", s.connections_open},
          {"requests_total", s.requests_total},
          {"requests_by_path", s.requests_by_path},
          {"in_flight", s.in_flight},
          {"max_in_flight_observed", s.max_in_flight_observed},
          {"queued", s.queued},
          {"max_queued_observed", s.max_queued_observed},
          {"rejected_503", s.rejected_503},
          {"disconnects", s.disconnects},
          {"aborted_by_client", s.aborted_by_client},
          {"abandoned_waiting", s.abandoned_waiting},
          {"slot_wait_ms", static_cast<double>(s.slot_wait_ns) / 1e6},
          {"loads", s.loads},
          {"models", models}};
}

void FakeOllama::DaemonDeleter::operator()(MHD_Daemon* d) const {
  MHD_stop_daemon(d);
}

FakeOllama::FakeOllama(Settings initial) : settings_(std::move(initial)) {
  ApplyLimits();
}

FakeOllama::~FakeOllama() {
  Stop();
}

int FakeOllama::Start(uint16_t port) {
  if (daemon_ != nullptr) {
    error_ = "fake ollama is already running on port " + std::to_string(port_);
    return 0;
  }
  stopping_ = false;
  scheduler_.Resume();
  ApplyLimits();
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const unsigned flags =
      MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_USE_ITC;
  errno = 0;
  MHD_Daemon* d = MHD_start_daemon(
      flags, port, nullptr, nullptr, &FakeOllamaGlue::OnAccess, this, MHD_OPTION_SOCK_ADDR,
      reinterpret_cast<sockaddr*>(&addr), MHD_OPTION_CONNECTION_LIMIT, kConnectionLimit,
      MHD_OPTION_LISTEN_BACKLOG_SIZE, kListenBacklog, MHD_OPTION_CONNECTION_TIMEOUT, 0u,
      MHD_OPTION_NOTIFY_COMPLETED, &FakeOllamaGlue::OnCompleted, this, MHD_OPTION_NOTIFY_CONNECTION,
      &FakeOllamaGlue::OnConnection, this, MHD_OPTION_END);
  if (d == nullptr) {
    error_ = "cannot listen on 127.0.0.1:" + std::to_string(port) + ": " +
             (errno != 0 ? std::strerror(errno) : "MHD_start_daemon failed") +
             " (try another --port, or 0 for any free port)";
    return 0;
  }
  daemon_.reset(d);
  const MHD_DaemonInfo* info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
  port_ = info != nullptr ? info->port : port;
  return port_;
}

void FakeOllama::Stop() {
  if (daemon_ == nullptr) return;
  stopping_ = true;
  scheduler_.Stop();  // wakes queued, loading and stalled requests
  daemon_.reset();    // closes every connection and joins MHD's threads
  port_ = 0;
}

void FakeOllama::SetSettings(Settings s) {
  settings_.Set(std::move(s));
  ApplyLimits();
}

std::string FakeOllama::MergeSettings(const nlohmann::json& patch) {
  std::string err = settings_.Merge(patch);
  if (err.empty()) ApplyLimits();
  return err;
}

void FakeOllama::Reset() {
  settings_.Reset();
  ApplyLimits();
  scheduler_.ResetCounters();
  api_.ResetPromptCounts();
  connections_accepted_ = 0;
  disconnects_ = 0;
  std::lock_guard l(counts_mu_);
  requests_total_ = 0;
  requests_by_path_.clear();
}

FakeStats FakeOllama::GetStats() const {
  FakeStats s;
  const FakeScheduler::Snapshot snap = scheduler_.GetSnapshot();
  s.connections_accepted = connections_accepted_.load();
  s.connections_open = connections_open_.load();
  s.in_flight = snap.in_flight;
  s.max_in_flight_observed = snap.max_in_flight_observed;
  s.queued = snap.queued;
  s.max_queued_observed = snap.max_queued_observed;
  s.rejected_503 = snap.rejected_503;
  s.disconnects = disconnects_.load();
  s.aborted_by_client = snap.aborted_by_client;
  s.abandoned_waiting = snap.abandoned_waiting;
  s.slot_wait_ns = snap.slot_wait_ns;
  s.loads = snap.loads;
  s.models = snap.models;
  std::lock_guard l(counts_mu_);
  s.requests_total = requests_total_;
  s.requests_by_path = requests_by_path_;
  return s;
}

void FakeOllama::ApplyLimits() {
  const Settings s = settings_.Get();
  scheduler_.SetLimits({s.parallel, s.embed_parallel, s.parallel_by_model, s.max_queue});
}

void FakeOllama::CountRequest(const std::string& path) {
  std::lock_guard l(counts_mu_);
  ++requests_total_;
  ++requests_by_path_[path];
}

}  // namespace digestd::testing
