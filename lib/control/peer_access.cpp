#include "control/peer_access.h"

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <fstream>
#include <sstream>
#include <string>

namespace digestd {

namespace {

bool Listed(const std::vector<int64_t>& ids, int64_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

// True when `id` maps to itself through one of the lines of `map`.
bool MapsToItself(std::string_view map, int64_t id) {
  std::istringstream in{std::string(map)};
  int64_t inside = 0, outside = 0, count = 0;
  while (in >> inside >> outside >> count) {
    if (inside == outside && id >= inside && id - inside < count) return true;
  }
  return false;
}

std::string ReadSmallFile(const char* path) {
  std::ifstream in(path);
  if (!in) return "";
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

}  // namespace

std::vector<gid_t> ReadPeerGroups(int fd) {
#ifdef SO_PEERGROUPS
  std::vector<gid_t> groups(64);
  for (int tries = 0; tries < 4; ++tries) {
    socklen_t len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) == 0) {
      groups.resize(len / sizeof(gid_t));
      return groups;
    }
    // ERANGE: `len` now says how much room the list needs.
    if (errno != ERANGE || len <= groups.size() * sizeof(gid_t)) break;
    groups.resize(len / sizeof(gid_t));
  }
#else
  (void)fd;
#endif
  return {};
}

bool PeerMayChangeState(const PeerCred& peer, const std::vector<int64_t>& allow_uids,
                        const std::vector<int64_t>& allow_gids, uid_t own_uid) {
  if (allow_uids.empty() && allow_gids.empty()) return true;  // the socket's mode decides
  if (!peer.known) return false;
  if (peer.uid == 0 || peer.uid == own_uid) return true;
  if (Listed(allow_uids, static_cast<int64_t>(peer.uid))) return true;
  if (Listed(allow_gids, static_cast<int64_t>(peer.gid))) return true;
  return std::any_of(peer.groups.begin(), peer.groups.end(),
                     [&](gid_t g) { return Listed(allow_gids, static_cast<int64_t>(g)); });
}

Status CheckAllowListsMapped(const std::vector<int64_t>& allow_uids,
                             const std::vector<int64_t>& allow_gids, std::string_view uid_map,
                             std::string_view gid_map) {
  auto check = [](const std::vector<int64_t>& ids, std::string_view map, const char* key,
                  const char* what) {
    for (int64_t id : ids) {
      if (MapsToItself(map, id)) continue;
      return Status::InvalidConfig(
          std::string("[control] ") + key + " lists " + what + " " + std::to_string(id) +
          ", but digestd runs in a user namespace where that " + what +
          " is not mapped (systemd's PrivateUsers=yes, or unshare --user), so every such peer "
          "shows up as 65534 and the allow-lists can never admit it; set PrivateUsers=no in a "
          "drop-in (systemctl edit digestd) or run digestd outside the namespace, or empty "
          "allow_uids and allow_gids and let the socket's group decide who connects");
    }
    return Status::Ok();
  };
  Status st = check(allow_uids, uid_map, "allow_uids", "uid");
  if (st.ok()) st = check(allow_gids, gid_map, "allow_gids", "gid");
  return st;
}

Status CheckAllowListsVisible(const std::vector<int64_t>& allow_uids,
                              const std::vector<int64_t>& allow_gids) {
  if (allow_uids.empty() && allow_gids.empty()) return Status::Ok();
  std::string uid_map = ReadSmallFile("/proc/self/uid_map");
  std::string gid_map = ReadSmallFile("/proc/self/gid_map");
  if (uid_map.empty() || gid_map.empty()) return Status::Ok();
  return CheckAllowListsMapped(allow_uids, allow_gids, uid_map, gid_map);
}

}  // namespace digestd
