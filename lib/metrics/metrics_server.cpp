#include "metrics/metrics_server.h"

#include <microhttpd.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdarg>
#include <cstring>

#include "metrics/prom_text.h"
#include "obs/log.h"

namespace digestd {

namespace {

void OnMhdLog(void*, const char* fmt, va_list ap) {
  char buf[512];
  vsnprintf(buf, sizeof(buf), fmt, ap);
  size_t n = strlen(buf);
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r')) buf[--n] = '\0';
  LOG_WARN("metrics endpoint: %s", buf);
}

MHD_Result Answer(MHD_Connection* connection, unsigned status, std::string body,
                  const char* content_type) {
  MHD_Response* response =
      MHD_create_response_from_buffer(body.size(), body.data(), MHD_RESPMEM_MUST_COPY);
  if (response == nullptr) return MHD_NO;
  MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
  MHD_Result r = MHD_queue_response(connection, status, response);
  MHD_destroy_response(response);
  return r;
}

}  // namespace

struct MetricsServer::Access {
  static MHD_Result OnRequest(void* cls, MHD_Connection* connection, const char* url,
                              const char* method, const char* version, const char* upload_data,
                              size_t* upload_data_size, void** req_cls);
};

MetricsServer::MetricsServer(uv_loop_t* loop, Render render)
    : loop_(loop), render_(std::move(render)) {}

MetricsServer::~MetricsServer() {
  Close();
}

Status MetricsServer::Start(const ListenAddress& address) {
  std::string where = FormatListenAddress(reinterpret_cast<const sockaddr*>(&address.addr));
  auto fail = [&](const std::string& what, int err) {
    return Status::IoError("[metrics] listen = \"" + where + "\": " + what + " (" + strerror(err) +
                           "); choose another address or port, or set listen = \"\" to turn "
                           "the metrics endpoint off");
  };
  int fd = socket(address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail("cannot create a socket", errno);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (bind(fd, reinterpret_cast<const sockaddr*>(&address.addr), address.len) != 0) {
    int err = errno;
    close(fd);
    return fail("cannot bind", err);
  }
  if (listen(fd, 64) != 0) {
    int err = errno;
    close(fd);
    return fail("cannot listen", err);
  }
  sockaddr_storage got{};
  socklen_t got_len = sizeof(got);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&got), &got_len) != 0) {
    int err = errno;
    close(fd);
    return fail("cannot read the bound address", err);
  }

  unsigned flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
  if (address.family() == AF_INET6) flags |= MHD_USE_IPv6;
  mhd_ = MHD_start_daemon(flags, 0, nullptr, nullptr, &Access::OnRequest, this,
                          MHD_OPTION_EXTERNAL_LOGGER, &OnMhdLog, nullptr, MHD_OPTION_LISTEN_SOCKET,
                          fd, MHD_OPTION_CONNECTION_LIMIT, kMaxConnections,
                          MHD_OPTION_CONNECTION_TIMEOUT, kIdleTimeoutS, MHD_OPTION_END);
  if (mhd_ == nullptr) {
    close(fd);
    return Status::IoError("[metrics] listen = \"" + where +
                           "\": libmicrohttpd could not start its server on the socket; see "
                           "the log line before this one");
  }
  // From here MHD owns `fd` (MHD_stop_daemon closes it).
  const MHD_DaemonInfo* info = MHD_get_daemon_info(mhd_, MHD_DAEMON_INFO_EPOLL_FD);
  int rc = info == nullptr ? UV_EINVAL : uv_poll_init(loop_, poll_.get(), info->epoll_fd);
  if (rc == 0) {
    poll_.set_initialized();
    poll_.get()->data = this;
    rc = uv_poll_start(poll_.get(), UV_READABLE,
                       [](uv_poll_t* p, int, int) { static_cast<MetricsServer*>(p->data)->Run(); });
  }
  if (rc != 0) {
    Close();
    return Status::Internal(std::string("metrics endpoint: cannot watch libmicrohttpd's epoll "
                                        "descriptor: ") +
                            uv_strerror(rc));
  }
  Status st = InitTimer(loop_, timer_, this);
  if (!st.ok()) {
    Close();
    return st;
  }
  bound_ = FormatListenAddress(reinterpret_cast<const sockaddr*>(&got));
  Run();
  return Status::Ok();
}

void MetricsServer::Run() {
  if (mhd_ == nullptr) return;
  MHD_run(mhd_);
  MHD_UNSIGNED_LONG_LONG ms = 0;
  if (!timer_.initialized()) return;
  if (MHD_get_timeout(mhd_, &ms) == MHD_YES) {
    uv_timer_start(
        timer_.get(), [](uv_timer_t* t) { static_cast<MetricsServer*>(t->data)->Run(); },
        static_cast<uint64_t>(ms), 0);
  } else {
    uv_timer_stop(timer_.get());
  }
}

MHD_Result MetricsServer::Access::OnRequest(void* cls, MHD_Connection* connection, const char* url,
                                            const char* method, const char*, const char*, size_t*,
                                            void**) {
  auto* self = static_cast<MetricsServer*>(cls);
  const char* kText = "text/plain; charset=utf-8";
  bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0;
  if (!get && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
    return Answer(connection, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD are served\n", kText);
  }
  if (strcmp(url, "/metrics") != 0) {
    return Answer(connection, MHD_HTTP_NOT_FOUND, "not found; Prometheus metrics are at /metrics\n",
                  kText);
  }
  std::string body;
  try {
    body = self->render_();
  } catch (const std::exception& e) {
    LOG_ERROR("metrics endpoint: rendering the metrics failed: %s", e.what());
    return Answer(connection, MHD_HTTP_INTERNAL_SERVER_ERROR,
                  std::string("rendering the metrics failed: ") + e.what() + "\n", kText);
  }
  ++self->scrapes_;
  return Answer(connection, MHD_HTTP_OK, std::move(body), kPromContentType);
}

void MetricsServer::Close() {
  // The poll handle leaves libuv's epoll set at uv_close, before MHD closes
  // the descriptor it watches.
  poll_.Close();
  timer_.Close();
  if (mhd_ != nullptr) {
    MHD_stop_daemon(mhd_);
    mhd_ = nullptr;
  }
}

}  // namespace digestd
