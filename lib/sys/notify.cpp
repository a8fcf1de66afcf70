#include "sys/notify.h"

#include <systemd/sd-daemon.h>

#include <cstring>

#include "obs/log.h"

namespace digestd {

void Notifier::Ready() {
  sd_notify(0, "READY=1");
}

void Notifier::Status(const std::string& line) {
  if (line == last_status_) return;
  last_status_ = line;
  std::string msg = "STATUS=" + line;
  sd_notify(0, msg.c_str());
}

void Notifier::Reloading() {
  struct timespec ts {};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  uint64_t usec = static_cast<uint64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
  sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu", static_cast<unsigned long long>(usec));
}

void Notifier::Stopping() {
  sd_notify(0, "STOPPING=1");
}

uint64_t Notifier::StartWatchdog() {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return 0;
  uint64_t every_ms = std::max<uint64_t>(usec / 2000, 1);
  if (uv_timer_init(loop_, watchdog_.get()) != 0) return 0;
  watchdog_.set_initialized();
  uv_timer_start(
      watchdog_.get(), [](uv_timer_t*) { sd_notify(0, "WATCHDOG=1"); }, 0, every_ms);
  uv_unref(watchdog_.base());
  return every_ms;
}

int TakeActivatedSocket(std::string* error) {
  char** names = nullptr;
  int n = sd_listen_fds_with_names(1, &names);
  if (n <= 0) {
    if (n < 0) *error = std::string("sd_listen_fds: ") + std::strerror(-n);
    return -1;
  }
  int chosen = -1;
  for (int i = 0; i < n; ++i) {
    int fd = SD_LISTEN_FDS_START + i;
    bool named = names != nullptr && names[i] != nullptr && std::strcmp(names[i], "control") == 0;
    if (named || (chosen < 0 && sd_is_socket_unix(fd, SOCK_STREAM, 1, nullptr, 0) > 0)) {
      chosen = fd;
      if (named) break;
    }
  }
  if (names != nullptr) {
    for (int i = 0; i < n; ++i) free(names[i]);
    free(names);
  }
  if (chosen < 0) {
    *error = "systemd passed " + std::to_string(n) +
             " sockets and none is a listening Unix stream socket; check digestd.socket";
  }
  return chosen;
}

}  // namespace digestd
