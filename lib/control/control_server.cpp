#include "control/control_server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "control/peer_access.h"
#include "obs/log.h"

namespace digestd {

namespace {
// A client that pipelines more than this many unanswered requests, or leaves
// this many bytes unread, is not read from until it catches up.
constexpr size_t kMaxPending = 256;
constexpr size_t kMaxUnsentBytes = 4 << 20;
}  // namespace

struct ControlServer::Slot {
  bool ready = false;
  std::string line;
};

class ControlServer::Connection : public std::enable_shared_from_this<Connection> {
 public:
  explicit Connection(ControlServer* server) : server_(server) { pipe_.data = this; }

  uv_pipe_t pipe_{};  // freed with the Connection, after its close callback
  ControlServer* server_;
  PeerCred peer_;
  std::string inbuf_;
  std::deque<std::shared_ptr<Slot>> pending_;  // answers not yet written, in order
  size_t writes_in_flight_ = 0;
  uint64_t last_active_ = 0;
  bool reading_ = false;
  bool eof_ = false;          // the client sent EOF; close once answers are out
  bool close_after_ = false;  // close once what is queued is written
  bool closing_ = false;
  bool counted_ = false;  // admitted, and so counted in per_uid_
  // An event stream (Reply::SendAndStream): its bound on unread bytes, and
  // the lines dropped since the client last kept up.
  bool streaming_ = false;
  size_t stream_max_ = 0;
  uint64_t stream_lost_ = 0;

  // The {"event":"lost"} line, when it fits.
  bool PushLost() {
    std::string line = R"({"event":"lost","count":)" + std::to_string(stream_lost_) + "}\n";
    if (Unsent() + line.size() > stream_max_) return false;
    stream_lost_ = 0;
    auto slot = std::make_shared<Slot>();
    slot->ready = true;
    slot->line = std::move(line);
    pending_.push_back(std::move(slot));
    Flush();
    return true;
  }

  size_t Unsent() const {
    size_t n = uv_stream_get_write_queue_size(reinterpret_cast<const uv_stream_t*>(&pipe_));
    for (const auto& s : pending_) n += s->line.size();
    return n;
  }

  uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&pipe_); }

  void Close() {
    if (closing_) return;
    closing_ = true;
    pending_.clear();
    uv_close(reinterpret_cast<uv_handle_t*>(&pipe_), [](uv_handle_t* h) {
      auto* self = static_cast<Connection*>(h->data);
      self->server_->Remove(self);  // drops the last owning reference
    });
  }

  void StartReading() {
    if (reading_ || closing_ || eof_) return;
    int rc = uv_read_start(
        stream(),
        [](uv_handle_t* h, size_t, uv_buf_t* buf) {
          auto* self = static_cast<Connection*>(h->data);
          *buf = uv_buf_init(self->server_->read_buf_, sizeof(self->server_->read_buf_));
        },
        [](uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
          static_cast<Connection*>(s->data)->OnRead(n, buf);
        });
    if (rc != 0) {
      LOG_WARN("control: cannot read from client: %s", uv_strerror(rc));
      Close();
      return;
    }
    reading_ = true;
  }

  void StopReading() {
    if (!reading_) return;
    uv_read_stop(stream());
    reading_ = false;
  }

  bool Congested() const {
    return pending_.size() >= kMaxPending ||
           uv_stream_get_write_queue_size(reinterpret_cast<const uv_stream_t*>(&pipe_)) >=
               kMaxUnsentBytes;
  }

  void OnRead(ssize_t n, const uv_buf_t* buf) {
    if (n == 0) return;
    if (n < 0) {
      if (n != UV_EOF) {
        Close();
        return;
      }
      StopReading();
      eof_ = true;
      // A last line without its newline still counts as a request.
      if (!inbuf_.empty()) {
        std::string line = std::move(inbuf_);
        inbuf_.clear();
        server_->Dispatch(shared_from_this(), line);
      }
      MaybeClose();
      return;
    }
    last_active_ = uv_now(server_->loop_);
    size_t max = server_->options_.max_line_bytes;
    std::string_view chunk(buf->base, static_cast<size_t>(n));
    auto self = shared_from_this();  // a handler may close us
    while (!chunk.empty() && !closing_ && !close_after_) {
      size_t nl = chunk.find('\n');
      if (nl == std::string_view::npos) {
        if (inbuf_.size() + chunk.size() > max) {
          TooLarge(inbuf_.size() + chunk.size());
          return;
        }
        inbuf_.append(chunk);
        break;
      }
      if (inbuf_.size() + nl > max) {
        TooLarge(inbuf_.size() + nl);
        return;
      }
      if (inbuf_.empty()) {
        server_->Dispatch(self, chunk.substr(0, nl));
      } else {
        inbuf_.append(chunk.substr(0, nl));
        std::string line = std::move(inbuf_);
        inbuf_.clear();
        server_->Dispatch(self, line);
      }
      chunk.remove_prefix(nl + 1);
    }
    if (Congested()) StopReading();
  }

  void TooLarge(size_t seen) {
    inbuf_.clear();
    StopReading();
    auto slot = std::make_shared<Slot>();
    pending_.push_back(slot);
    Reply(weak_from_this(), slot)
        .Send(ErrorLine(nullptr,
                        Status::TooLarge("request line exceeds [control] max_line_bytes = " +
                                         std::to_string(server_->options_.max_line_bytes) +
                                         " bytes (got " + std::to_string(seen) +
                                         " without a newline); send smaller requests; closing")));
    close_after_ = true;
    MaybeClose();
  }

  struct WriteReq {
    uv_write_t req{};
    std::string data;
    Connection* conn;
  };

  void Flush() {
    if (closing_) return;
    std::string out;
    while (!pending_.empty() && pending_.front()->ready) {
      out += pending_.front()->line;
      pending_.pop_front();
    }
    if (!out.empty()) {
      auto wr = std::make_unique<WriteReq>();
      wr->data = std::move(out);
      wr->conn = this;
      wr->req.data = wr.get();
      uv_buf_t b = uv_buf_init(wr->data.data(), static_cast<unsigned>(wr->data.size()));
      int rc = uv_write(&wr->req, stream(), &b, 1, [](uv_write_t* req, int status) {
        std::unique_ptr<WriteReq> owned(static_cast<WriteReq*>(req->data));
        Connection* c = owned->conn;
        --c->writes_in_flight_;
        if (status < 0) {
          c->Close();  // the client left before reading its answer
          return;
        }
        c->AfterWrite();
      });
      if (rc != 0) {
        Close();
        return;
      }
      wr.release();
      ++writes_in_flight_;
    }
    MaybeClose();
  }

  void AfterWrite() {
    if (closing_) return;
    // An event stream that caught up is told what it missed at once, not
    // only with the next event.
    if (streaming_ && stream_lost_ > 0 && writes_in_flight_ == 0 && !close_after_) PushLost();
    if (!Congested() && !close_after_) StartReading();
    MaybeClose();
  }

  void MaybeClose() {
    if ((eof_ || close_after_) && pending_.empty() && writes_in_flight_ == 0) Close();
  }
};

void ControlServer::Reply::Send(std::string line) const {
  if (!slot_ || slot_->ready) return;
  slot_->ready = true;
  slot_->line = std::move(line);
  if (auto conn = conn_.lock()) conn->Flush();
}

ControlServer::Stream ControlServer::Reply::SendAndStream(std::string line,
                                                          size_t max_unsent) const {
  auto conn = conn_.lock();
  if (!conn || conn->closing_ || !slot_ || slot_->ready) return Stream();
  conn->streaming_ = true;
  conn->stream_max_ = max_unsent;
  Send(std::move(line));
  return Stream(conn);
}

bool ControlServer::Stream::Push(std::string_view line) const {
  auto conn = conn_.lock();
  if (!conn || conn->closing_ || conn->close_after_) return false;
  if (conn->stream_lost_ > 0 && !conn->PushLost()) {
    ++conn->stream_lost_;
    return false;
  }
  std::string out(line);
  out += '\n';
  if (conn->Unsent() + out.size() > conn->stream_max_) {
    ++conn->stream_lost_;
    return false;
  }
  auto slot = std::make_shared<Slot>();
  slot->ready = true;
  slot->line = std::move(out);
  conn->pending_.push_back(std::move(slot));
  conn->Flush();
  return true;
}

bool ControlServer::Stream::open() const {
  auto conn = conn_.lock();
  return conn && !conn->closing_ && !conn->close_after_;
}

bool ControlServer::Reply::open() const {
  auto conn = conn_.lock();
  return conn && !conn->closing_;
}

ControlServer::ControlServer(uv_loop_t* loop, Options options, Handler handler)
    : loop_(loop), options_(options), handler_(std::move(handler)), own_uid_(geteuid()) {}

std::string ControlServer::Refusal(const Options& o, size_t open, size_t open_by_uid, uid_t uid,
                                   bool privileged) {
  size_t max = static_cast<size_t>(std::max(o.max_clients, 0));
  size_t reserved = std::min(static_cast<size_t>(std::max(o.reserved_clients, 0)), max);
  size_t per_uid = static_cast<size_t>(std::max(o.max_clients_per_uid, 0));
  if (open >= max) {
    return "too many clients (" + std::to_string(open) +
           " connected, the [control] max_clients limit); retry later or raise it";
  }
  if (!privileged && open >= max - reserved) {
    return "too many clients (" + std::to_string(open) + " connected; the last " +
           std::to_string(reserved) + " of [control] max_clients = " + std::to_string(max) +
           " are kept for root and digestd's own user, [control] reserved_clients); retry "
           "later or raise max_clients";
  }
  if (!privileged && open_by_uid >= per_uid) {
    return "uid " + std::to_string(uid) + " already has " + std::to_string(open_by_uid) +
           " connections open, the [control] max_clients_per_uid limit; reuse a connection for "
           "many requests, close idle ones, or raise the limit";
  }
  return "";
}

bool ControlServer::Admit(const std::shared_ptr<Connection>& conn) {
  // A peer whose credentials are unknown is counted as one anonymous uid and
  // never gets the reserved slots.
  uid_t uid = conn->peer_.known ? conn->peer_.uid : static_cast<uid_t>(-1);
  bool privileged = conn->peer_.known && (uid == 0 || uid == own_uid_);
  auto it = per_uid_.find(uid);
  size_t mine = it == per_uid_.end() ? 0 : it->second;
  std::string why = Refusal(options_, admitted_, mine, uid, privileged);
  if (!why.empty()) {
    ++rejected_;
    LOG_DEBUG("control: turned a client of uid %lld away: %s",
              conn->peer_.known ? static_cast<long long>(uid) : -1LL, why.c_str());
    auto slot = std::make_shared<Slot>();
    conn->pending_.push_back(slot);
    conn->close_after_ = true;
    Reply(conn, slot).Send(ErrorLine(nullptr, Status::Unavailable(why)));
    return false;
  }
  ++admitted_;
  ++per_uid_[uid];
  conn->counted_ = true;
  return true;
}

ControlServer::~ControlServer() {
  CloseAll();
}

void ControlServer::SetOptions(const Options& options) {
  options_ = options;
  if (sweep_.initialized()) {
    uv_timer_set_repeat(sweep_.get(), 1000);
  }
}

Status ControlServer::ListenPath(const std::string& path, unsigned mode) {
  struct stat st {};
  // libuv reports a bind into a missing directory as EACCES or ENOENT, which
  // reads as a permission problem; name the real one first.
  std::string dir = path.substr(0, path.find_last_of('/'));
  if (dir.empty()) dir = "/";
  if (path.find('/') != std::string::npos) {
    if (stat(dir.c_str(), &st) != 0) {
      if (errno == ENOENT) {
        return Status::IoError("the socket directory " + dir + " (for [control] socket " + path +
                               ") does not exist; create it (systemd's RuntimeDirectory= "
                               "does) or set [control] socket");
      }
    } else if (!S_ISDIR(st.st_mode)) {
      return Status::IoError(dir + " (for [control] socket " + path +
                             ") is not a directory; set [control] socket to a path in a "
                             "directory");
    }
  }
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Status::IoError(path +
                             " exists and is not a socket; remove it or set another "
                             "[control] socket");
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    // Startup, before the loop runs: a connect to a local socket answers at once.
    int rc = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    int err = errno;
    close(fd);
    if (rc == 0) {
      return Status::Unavailable("another digestd is already listening on " + path +
                                 "; stop it first (digestctl drain) or set another [control] "
                                 "socket");
    }
    if (err != ECONNREFUSED) {
      return Status::IoError("cannot probe the existing socket " + path + ": " +
                             std::strerror(err) + "; check its permissions");
    }
    if (unlink(path.c_str()) != 0) {
      return Status::IoError("cannot remove the stale socket " + path + ": " +
                             std::strerror(errno));
    }
    LOG_NOTICE("removed stale control socket %s left by a daemon that is gone", path.c_str());
  }
  int rc = uv_pipe_init(loop_, listener_.get(), 0);
  if (rc != 0) return Status::IoError(std::string("uv_pipe_init: ") + uv_strerror(rc));
  listener_.set_initialized();
  listener_.get()->data = this;
  mode_t old = umask(~mode & 0777);
  rc = uv_pipe_bind(listener_.get(), path.c_str());
  umask(old);
  if (rc != 0) {
    return Status::IoError("cannot bind the control socket " + path + ": " + uv_strerror(rc) +
                           "; check that " + dir +
                           " is writable by the daemon's user (the unit's User=), or set "
                           "[control] socket");
  }
  chmod(path.c_str(), mode);
  if (stat(path.c_str(), &st) == 0) path_ino_ = st.st_ino;
  path_ = path;
  return StartListening();
}

Status ControlServer::ListenFd(int fd) {
  int rc = uv_pipe_init(loop_, listener_.get(), 0);
  if (rc != 0) return Status::IoError(std::string("uv_pipe_init: ") + uv_strerror(rc));
  listener_.set_initialized();
  listener_.get()->data = this;
  rc = uv_pipe_open(listener_.get(), fd);
  if (rc != 0) {
    return Status::IoError("cannot use the socket passed by systemd (fd " + std::to_string(fd) +
                           "): " + uv_strerror(rc));
  }
  return StartListening();
}

Status ControlServer::StartListening() {
  int rc = uv_listen(listener_.stream(), 4096, &ControlServer::OnConnection);
  if (rc != 0) return Status::IoError(std::string("cannot listen: ") + uv_strerror(rc));
  rc = uv_timer_init(loop_, sweep_.get());
  if (rc != 0) return Status::IoError(std::string("uv_timer_init: ") + uv_strerror(rc));
  sweep_.set_initialized();
  sweep_.get()->data = this;
  uv_timer_start(sweep_.get(), &ControlServer::OnSweep, 1000, 1000);
  uv_unref(sweep_.base());
  return Status::Ok();
}

void ControlServer::OnConnection(uv_stream_t* listener, int status) {
  auto* self = static_cast<ControlServer*>(listener->data);
  if (status < 0) {
    LOG_WARN("control: accept failed: %s", uv_strerror(status));
    return;
  }
  auto conn = std::make_shared<Connection>(self);
  if (uv_pipe_init(self->loop_, &conn->pipe_, 0) != 0) return;
  self->conns_[conn.get()] = conn;
  if (uv_accept(listener, conn->stream()) != 0) {
    conn->Close();
    return;
  }
  ++self->accepted_;
  conn->last_active_ = uv_now(self->loop_);
  uv_os_fd_t fd;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(&conn->pipe_), &fd) == 0) {
    struct ucred cred {};
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
      conn->peer_ = PeerCred{true, cred.pid, cred.uid, cred.gid, {}};
      conn->peer_.groups = ReadPeerGroups(fd);
    }
  }
  if (self->Admit(conn)) conn->StartReading();
}

void ControlServer::OnSweep(uv_timer_t* timer) {
  auto* self = static_cast<ControlServer*>(timer->data);
  if (self->options_.idle_timeout_s <= 0) return;
  uint64_t now = uv_now(self->loop_);
  uint64_t limit = static_cast<uint64_t>(self->options_.idle_timeout_s) * 1000;
  std::vector<Connection*> idle;
  for (auto& [raw, conn] : self->conns_) {
    if (!conn->streaming_ && conn->pending_.empty() && conn->writes_in_flight_ == 0 &&
        now - conn->last_active_ >= limit) {
      idle.push_back(raw);
    }
  }
  for (Connection* c : idle) {
    LOG_DEBUG("control: closing a client idle for %d s", self->options_.idle_timeout_s);
    c->Close();
  }
}

void ControlServer::Dispatch(const std::shared_ptr<Connection>& conn, std::string_view line) {
  ++requests_;
  auto slot = std::make_shared<Slot>();
  conn->pending_.push_back(slot);
  Reply reply(conn, slot);
  nlohmann::json id;
  try {
    ParsedLine parsed = ParseRequestLine(line);
    id = parsed.request.id;
    if (!parsed.status.ok()) {
      reply.Send(ErrorLine(id, parsed.status));
      return;
    }
    handler_(std::move(parsed.request), conn->peer_, reply);
  } catch (const std::exception& e) {
    // No exception may cross into libuv; one client's request must never end
    // the daemon.
    LOG_ERROR("control: request failed: %s", e.what());
    reply.Send(ErrorLine(id, Status::Internal(std::string("internal error: ") + e.what())));
  }
}

void ControlServer::Remove(Connection* conn) {
  if (conn->counted_) {
    conn->counted_ = false;
    --admitted_;
    uid_t uid = conn->peer_.known ? conn->peer_.uid : static_cast<uid_t>(-1);
    auto it = per_uid_.find(uid);
    if (it != per_uid_.end() && --it->second == 0) per_uid_.erase(it);
  }
  conns_.erase(conn);
}

void ControlServer::StopAccepting() {
  listener_.Close();
  sweep_.Close();
  if (!path_.empty()) {
    struct stat st {};
    if (stat(path_.c_str(), &st) == 0 && st.st_ino == path_ino_) unlink(path_.c_str());
    path_.clear();
  }
}

void ControlServer::CloseAll(bool graceful) {
  StopAccepting();
  std::vector<std::shared_ptr<Connection>> all;
  for (auto& [raw, conn] : conns_) all.push_back(conn);
  for (auto& c : all) {
    if (graceful) {
      c->StopReading();
      c->close_after_ = true;
      // Unanswered slots would hold the connection open; drop them.
      while (!c->pending_.empty() && !c->pending_.back()->ready) c->pending_.pop_back();
      c->Flush();
    } else {
      c->Close();
    }
  }
}

}  // namespace digestd
