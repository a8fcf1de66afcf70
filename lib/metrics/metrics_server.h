// MetricsServer: the HTTP endpoint Prometheus scrapes ([metrics] listen).
// GET (or HEAD) /metrics answers 200 with the text `render` returns, in the
// exposition format (content type kPromContentType, prom_text.h); any other
// path is 404, any other method 405.
//
// HTTP is libmicrohttpd's, run from the libuv loop in MHD's external-event
// mode: MHD is started with MHD_USE_EPOLL and no thread of its own; a
// uv_poll_t watches MHD's epoll descriptor and a uv_timer_t follows
// MHD_get_timeout, and both call MHD_run, which never blocks. So the request
// handler -- and `render` -- runs on the loop thread and may read loop-owned
// state directly; there is no lock and no other thread. The listening socket
// is bound here (so a bind error names the address and the errno) and handed
// to MHD, which owns it from then on.
//
// Limits: at most kMaxConnections clients at once (more are refused by MHD),
// a connection idle for kIdleTimeoutS is closed; a request body is never
// read.
//
// Threads: loop thread only. Lifetime: `loop` outlives this object; Close()
// (idempotent; the destructor calls it) closes the handles and stops MHD, so
// the loop must run once more before uv_loop_close().
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <string>

#include "metrics/listen_address.h"
#include "util/status.h"
#include "util/uv_handle.h"

struct MHD_Daemon;
struct MHD_Connection;

namespace digestd {

class MetricsServer {
 public:
  static constexpr unsigned kMaxConnections = 16;
  static constexpr unsigned kIdleTimeoutS = 10;

  // Returns the body of a /metrics answer. Called on the loop thread, once
  // per scrape; an exception becomes a 500 answer.
  using Render = std::function<std::string()>;

  MetricsServer(uv_loop_t* loop, Render render);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // Binds `address`, listens, and starts serving. IoError naming the address
  // and the reason when the bind fails (in use, not an address of this host,
  // a port below 1024 without the capability); nothing is left open then.
  [[nodiscard]] Status Start(const ListenAddress& address);

  // The address bound ("127.0.0.1:9464"; port 0 resolved to the real port);
  // "" before Start() succeeded.
  const std::string& bound() const { return bound_; }
  // /metrics answers served.
  uint64_t scrapes() const { return scrapes_; }

  void Close();

 private:
  struct Access;  // MHD's request callback (metrics_server.cpp)
  friend struct Access;

  void Run();  // MHD_run, then the timer from MHD_get_timeout

  uv_loop_t* loop_;
  Render render_;
  MHD_Daemon* mhd_ = nullptr;
  UvHandle<uv_poll_t> poll_;    // MHD's epoll descriptor, readable
  UvHandle<uv_timer_t> timer_;  // MHD's next timeout
  std::string bound_;
  uint64_t scrapes_ = 0;
};

}  // namespace digestd
