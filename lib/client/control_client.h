// ControlClient: a blocking client of the control socket, for digestctl,
// tests and benchmarks (never used inside the daemon's loop).
//
// Not thread-safe: one per thread. Owns its socket fd; closes it once.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "util/status.h"

namespace digestd {

// The socket path digestctl uses: `flag` if set, else $DIGESTD_SOCKET, else
// the default /run/digestd/control.sock.
std::string ResolveSocketPath(const std::string& flag);

class ControlClient {
 public:
  ControlClient() = default;
  ~ControlClient();
  ControlClient(const ControlClient&) = delete;
  ControlClient& operator=(const ControlClient&) = delete;

  // Connects to `path`. The error says whether the daemon is not running,
  // the socket is not accessible, or the path is wrong.
  [[nodiscard]] Status Connect(const std::string& path);
  // Sends one request line (a newline is added) and reads one response line.
  // `timeout_ms` bounds the wait for the answer.
  Result<nlohmann::json> Call(const nlohmann::json& request, int timeout_ms = 10000);
  // Lower level: raw line out, raw line back (without its newline).
  [[nodiscard]] Status SendLine(const std::string& line);
  Result<std::string> ReadLine(int timeout_ms);
  // ReadLine, with nullopt when no line came within `timeout_ms` (an error
  // only when the connection failed or closed).
  Result<std::optional<std::string>> TryReadLine(int timeout_ms);
  void Close();
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
  std::string buf_;  // bytes read past the last returned line
};

}  // namespace digestd
