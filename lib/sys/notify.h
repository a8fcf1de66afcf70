// Notifier: the daemon's side of systemd's Type=notify protocol (READY=1,
// STATUS=, WATCHDOG=1, RELOADING=1, STOPPING=1) and socket activation.
// Without NOTIFY_SOCKET every call is a cheap no-op, so it runs the same
// under systemd, a shell, or a test harness that owns the datagram socket.
//
// Loop thread only (the watchdog timer lives on the loop).
#pragma once

#include <uv.h>

#include <cstdint>
#include <string>

#include "util/uv_handle.h"

namespace digestd {

class Notifier {
 public:
  explicit Notifier(uv_loop_t* loop) : loop_(loop) {}

  void Ready();
  // Sends STATUS=`line` when it differs from the last one sent.
  void Status(const std::string& line);
  // RELOADING=1 with MONOTONIC_USEC, as systemd 253+ requires; 252 accepts it.
  void Reloading();
  void Stopping();

  // Starts a loop timer that sends WATCHDOG=1 at half of WATCHDOG_USEC, when
  // systemd (or a harness) asked for it. Returns the interval in ms, 0 if off.
  uint64_t StartWatchdog();
  void Close() { watchdog_.Close(); }

 private:
  uv_loop_t* loop_;
  UvHandle<uv_timer_t> watchdog_;
  std::string last_status_;
};

// The control socket handed over by systemd (LISTEN_FDS), or -1. When several
// fds are passed, the one named "control" (FileDescriptorName=) or else the
// first Unix stream listener is used. Clears the LISTEN_* variables.
int TakeActivatedSocket(std::string* error);

}  // namespace digestd
