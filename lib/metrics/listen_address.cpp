#include "metrics/listen_address.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <charconv>
#include <cstring>

namespace digestd {

const char* const kListenAddressExpected =
    "HOST:PORT with a numeric address, such as \"127.0.0.1:9464\", \"0.0.0.0:9464\" or "
    "\"[::1]:9464\" (port 0 picks a free port), or \"\" to turn the endpoint off";

namespace {

// Parses `text` into `out`; returns what is wrong ("has no :PORT"), or "".
std::string Parse(std::string_view text, ListenAddress* out) {
  if (text.empty()) return "is empty";
  std::string host;
  std::string_view port;
  bool v6 = false;
  if (text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos) return "has no ']' after an IPv6 address";
    host = std::string(text.substr(1, close - 1));
    if (close + 1 >= text.size() || text[close + 1] != ':') return "has no :PORT";
    port = text.substr(close + 2);
    v6 = true;
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return "has no :PORT";
    host = std::string(text.substr(0, colon));
    if (host.find(':') != std::string::npos) return "holds an IPv6 address without brackets";
    port = text.substr(colon + 1);
  }
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || value > 65535) {
    return "has no port between 0 and 65535";
  }
  ListenAddress addr;
  if (v6) {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&addr.addr);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(static_cast<uint16_t>(value));
    if (inet_pton(AF_INET6, host.c_str(), &sin6->sin6_addr) != 1) {
      return "holds no numeric IPv6 address (host names are not looked up)";
    }
    addr.len = sizeof(sockaddr_in6);
  } else {
    auto* sin = reinterpret_cast<sockaddr_in*>(&addr.addr);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(static_cast<uint16_t>(value));
    if (inet_pton(AF_INET, host.c_str(), &sin->sin_addr) != 1) {
      return "holds no numeric IPv4 address (host names such as \"localhost\" are not looked "
             "up)";
    }
    addr.len = sizeof(sockaddr_in);
  }
  *out = addr;
  return "";
}

}  // namespace

std::string ListenAddressProblem(std::string_view text) {
  ListenAddress unused;
  return Parse(text, &unused);
}

Status ParseListenAddress(std::string_view text, ListenAddress* out) {
  std::string why = Parse(text, out);
  if (why.empty()) return Status::Ok();
  return Status::InvalidConfig("\"" + std::string(text) + "\" " + why + "; use " +
                               kListenAddressExpected);
}

std::string FormatListenAddress(const sockaddr* addr) {
  char host[INET6_ADDRSTRLEN] = {0};
  if (addr->sa_family == AF_INET6) {
    const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(addr);
    inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
    return "[" + std::string(host) + "]:" + std::to_string(ntohs(sin6->sin6_port));
  }
  const auto* sin = reinterpret_cast<const sockaddr_in*>(addr);
  inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
  return std::string(host) + ":" + std::to_string(ntohs(sin->sin_port));
}

}  // namespace digestd
