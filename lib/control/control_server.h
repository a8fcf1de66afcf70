// ControlServer: the control socket. Listens on a Unix path (or a socket
// handed over by systemd), accepts any number of clients up to max_clients,
// splits each byte stream into request lines, and writes one response line
// per request in request order, even when a later request is answered first
// (a `result` with wait_ms stays in line until it has its answer).
//
// Limits (docs/protocol.md, "Limits"): a line longer than max_line_bytes gets a
// too_large error and the connection is closed; a client that pipelines too
// much without reading stops being read until its answers drain; a client
// silent for idle_timeout_s is closed. Connections are counted per peer uid:
// one uid may hold at most max_clients_per_uid, and the last
// reserved_clients of max_clients are kept for root and the server's own
// user (who are not capped per uid: they are the operator), so clients that
// hold connections open cannot lock the operator out of `status`. A client
// turned away gets one `unavailable` line naming the limit, then the
// connection is closed.
//
// Loop thread only. Owns its listener and every connection; the Handler gets
// a Reply that refers to its connection weakly, so answering a closed
// connection is a harmless no-op. Call CloseAll() and run the loop until
// clients() == 0 before destroying the server. The process must ignore
// SIGPIPE (Daemon::Run does): a client that leaves before reading its answer
// then costs an EPIPE, not the process.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "control/protocol.h"
#include "util/status.h"
#include "util/uv_handle.h"

namespace digestd {

// The peer's credentials as the kernel recorded them at connect().
struct PeerCred {
  bool known = false;  // SO_PEERCRED answered
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  // Supplementary groups (SO_PEERGROUPS); empty when the kernel gave none.
  // Why this source, and not /proc or the group database: control/peer_access.h.
  std::vector<gid_t> groups;
};

class ControlServer {
 public:
  struct Options {
    size_t max_line_bytes = 1 << 20;
    int max_clients = 1024;
    int idle_timeout_s = 300;       // 0: never
    int max_clients_per_uid = 256;  // root and the server's own uid: no cap
    int reserved_clients = 4;       // of max_clients; for root and the server's own uid
  };

  // Why a new client of uid `uid` would be turned away, with `open` clients
  // admitted already, `open_by_uid` of them its own; "" when it is admitted.
  // `privileged`: root or the server's own user. Pure; any thread.
  static std::string Refusal(const Options& options, size_t open, size_t open_by_uid, uid_t uid,
                             bool privileged);

  class Connection;
  struct Slot;

  // A connection that a request turned into an event stream (subscribe):
  // lines are written as they come, after the answers before them. What the
  // client leaves unread is bounded: a line that would take the unsent bytes
  // past the bound is dropped and counted, and the next line that fits is
  // preceded by one {"event":"lost","count":N}. Never blocks, never grows
  // past the bound. Cheap to copy; every copy writes to the same
  // connection, weakly (a gone client makes Push a no-op). Loop thread only.
  class Stream {
   public:
    Stream() = default;
    // Queues `line` (a JSON object, without its newline). False when the
    // client has gone or the line was dropped.
    bool Push(std::string_view line) const;
    // False once the client has gone.
    bool open() const;

   private:
    friend class ControlServer;
    explicit Stream(std::weak_ptr<Connection> conn) : conn_(std::move(conn)) {}
    std::weak_ptr<Connection> conn_;
  };

  // The right to answer one request, exactly once. Cheap to copy; every copy
  // answers the same slot. Loop thread only.
  class Reply {
   public:
    Reply() = default;
    // Sends a full response line (from OkLine/ErrorLine). A second call, or a
    // call after the client left, does nothing.
    void Send(std::string line) const;
    // Sends `line` as the answer and keeps the connection as an event stream
    // with at most `max_unsent` bytes unread; the idle timeout no longer
    // applies to it. An empty Stream when the client has gone.
    Stream SendAndStream(std::string line, size_t max_unsent) const;
    // False once the client has gone; a waiting handler may give up early.
    bool open() const;

   private:
    friend class ControlServer;
    Reply(std::weak_ptr<Connection> conn, std::shared_ptr<Slot> slot)
        : conn_(std::move(conn)), slot_(std::move(slot)) {}
    std::weak_ptr<Connection> conn_;
    std::shared_ptr<Slot> slot_;
  };

  using Handler = std::function<void(Request request, const PeerCred& peer, Reply reply)>;

  ControlServer(uv_loop_t* loop, Options options, Handler handler);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Binds `path` with file mode `mode` and listens. A stale socket file left
  // by a dead daemon is replaced; a live daemon's socket is never taken.
  [[nodiscard]] Status ListenPath(const std::string& path, unsigned mode);
  // Listens on an already bound socket (systemd socket activation).
  [[nodiscard]] Status ListenFd(int fd);

  void SetOptions(const Options& options);
  // Stops accepting new clients; existing ones are served. Removes the socket
  // file if this server created it.
  void StopAccepting();
  // Closes the listener and every connection. Graceful: a connection first
  // writes the answers it already has (nothing more is read).
  void CloseAll(bool graceful = false);

  size_t clients() const { return conns_.size(); }
  uint64_t accepted() const { return accepted_; }
  uint64_t requests() const { return requests_; }
  uint64_t rejected() const { return rejected_; }
  const std::string& path() const { return path_; }

 private:
  friend class Connection;
  Status StartListening();
  static void OnConnection(uv_stream_t* server, int status);
  static void OnSweep(uv_timer_t* timer);
  void Remove(Connection* conn);
  // Admits `conn` (counting it for its uid) or answers it with why not.
  bool Admit(const std::shared_ptr<Connection>& conn);
  void Dispatch(const std::shared_ptr<Connection>& conn, std::string_view line);

  uv_loop_t* loop_;
  Options options_;
  Handler handler_;
  UvHandle<uv_pipe_t> listener_;
  UvHandle<uv_timer_t> sweep_;
  std::string path_;       // the socket file we created; empty for an fd
  uint64_t path_ino_ = 0;  // its inode, so we only ever unlink our own
  std::unordered_map<Connection*, std::shared_ptr<Connection>> conns_;
  uint64_t accepted_ = 0;
  uint64_t requests_ = 0;
  uint64_t rejected_ = 0;                      // connections refused at a limit
  uid_t own_uid_;                              // geteuid(): may use the reserved slots
  size_t admitted_ = 0;                        // open connections that were admitted
  std::unordered_map<uid_t, size_t> per_uid_;  // admitted_ by peer uid
  char read_buf_[64 * 1024];
};

}  // namespace digestd
