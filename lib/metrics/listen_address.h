// ListenAddress: the TCP address a listener binds, written "HOST:PORT" as in
// [metrics] listen: "127.0.0.1:9464", "0.0.0.0:9464", "[::1]:9464". The host
// must be a numeric IPv4 or IPv6 address (IPv6 in brackets): the loop thread
// never resolves names, and a numeric address says exactly which interface
// is exposed. Port 0 asks the kernel for a free port (tests); the port bound
// is then logged and shown by `status`.
//
// Plain functions, no I/O; any thread.
#pragma once

#include <sys/socket.h>

#include <string>
#include <string_view>

#include "util/status.h"

namespace digestd {

struct ListenAddress {
  sockaddr_storage addr{};  // AF_INET or AF_INET6, port set
  socklen_t len = 0;
  int family() const { return addr.ss_family; }
};

// What a valid address looks like, for messages.
extern const char* const kListenAddressExpected;

// Parses `text`; InvalidConfig naming what is wrong and what is expected.
[[nodiscard]] Status ParseListenAddress(std::string_view text, ListenAddress* out);
// What is wrong with `text` ("has no :PORT"), or "" when it parses.
std::string ListenAddressProblem(std::string_view text);

// "127.0.0.1:9464" or "[::1]:9464" for a bound address (getsockname's).
std::string FormatListenAddress(const sockaddr* addr);

}  // namespace digestd
