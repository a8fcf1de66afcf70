#include "client/control_client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "util/json_parse.h"

namespace digestd {

std::string ResolveSocketPath(const std::string& flag) {
  if (!flag.empty()) return flag;
  if (const char* env = std::getenv("DIGESTD_SOCKET"); env != nullptr && *env != '\0') return env;
  return "/run/digestd/control.sock";
}

ControlClient::~ControlClient() {
  Close();
}

void ControlClient::Close() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  buf_.clear();
}

Status ControlClient::Connect(const std::string& path) {
  Close();
  if (path.size() >= sizeof(sockaddr_un::sun_path)) {
    return Status::BadRequest("socket path " + path + " is too long for a Unix socket");
  }
  fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd_ < 0) return Status::IoError(std::string("socket: ") + std::strerror(errno));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    Close();
    switch (err) {
      case ENOENT:
        return Status::Unavailable("digestd is not running (no socket at " + path +
                                   "); start it, or point --socket / DIGESTD_SOCKET at its "
                                   "socket");
      case ECONNREFUSED:
        return Status::Unavailable("digestd is not running (" + path +
                                   " refuses connections: a stale socket)");
      case EACCES:
      case EPERM:
        return Status::Forbidden("permission denied on " + path +
                                 "; run as a member of the socket's group or as root");
      default:
        return Status::IoError("cannot connect to " + path + ": " + std::strerror(err));
    }
  }
  return Status::Ok();
}

Status ControlClient::SendLine(const std::string& line) {
  if (fd_ < 0) return Status::Unavailable("not connected");
  std::string data = line;
  data += '\n';
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::IoError(std::string("cannot send to digestd: ") + std::strerror(errno));
    }
    off += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Result<std::string> ControlClient::ReadLine(int timeout_ms) {
  Result<std::optional<std::string>> r = TryReadLine(timeout_ms);
  if (!r.ok()) return r.status();
  if (!r->has_value()) {
    return Status::Unavailable("digestd did not answer within " + std::to_string(timeout_ms) +
                               " ms");
  }
  return std::move(**r);
}

Result<std::optional<std::string>> ControlClient::TryReadLine(int timeout_ms) {
  if (fd_ < 0) return Status::Unavailable("not connected");
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    size_t nl = buf_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      return std::optional<std::string>(std::move(line));
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now())
                    .count();
    if (left <= 0) return std::optional<std::string>();
    pollfd p{fd_, POLLIN, 0};
    int rc = ::poll(&p, 1, static_cast<int>(left));
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0) continue;
    char tmp[65536];
    ssize_t n = ::recv(fd_, tmp, sizeof(tmp), 0);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return Status::IoError(std::string("cannot read from digestd: ") + std::strerror(errno));
    }
    if (n == 0) return Status::Unavailable("digestd closed the connection");
    buf_.append(tmp, static_cast<size_t>(n));
  }
}

Result<nlohmann::json> ControlClient::Call(const nlohmann::json& request, int timeout_ms) {
  Status st = SendLine(request.dump());
  if (!st.ok()) return st;
  auto line = ReadLine(timeout_ms);
  if (!line.ok()) return line.status();
  auto j = TryParseJsonBounded(line.value());
  if (j.is_discarded() || !j.is_object()) {
    return Status::Internal("digestd sent an answer that is not a JSON object: " +
                            line.value().substr(0, 200));
  }
  return j;
}

}  // namespace digestd
