// Who may change state (control/peer_access.h): supplementary groups count
// (issue 10, point 4), and allow-lists a user namespace hides are refused.
#include "control/peer_access.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

namespace digestd {
namespace {

PeerCred Peer(uid_t uid, gid_t gid, std::vector<gid_t> groups = {}) {
  PeerCred p;
  p.known = true;
  p.pid = 1;
  p.uid = uid;
  p.gid = gid;
  p.groups = std::move(groups);
  return p;
}

constexpr uid_t kOwn = 998;  // digestd's own uid in these tests

TEST(PeerAccess, EmptyListsLeaveItToTheSocketsMode) {
  EXPECT_TRUE(PeerMayChangeState(Peer(1000, 1000), {}, {}, kOwn));
  EXPECT_TRUE(PeerMayChangeState(PeerCred{}, {}, {}, kOwn));
}

TEST(PeerAccess, ASupplementaryGroupInAllowGidsAdmits) {
  EXPECT_TRUE(PeerMayChangeState(Peer(1000, 1000, {27, 4242}), {}, {4242}, kOwn));
  EXPECT_FALSE(PeerMayChangeState(Peer(1000, 1000, {27, 4343}), {}, {4242}, kOwn));
  // The primary gid counts as before.
  EXPECT_TRUE(PeerMayChangeState(Peer(1000, 4242), {}, {4242}, kOwn));
  EXPECT_FALSE(PeerMayChangeState(Peer(1000, 1000), {}, {4242}, kOwn));
}

TEST(PeerAccess, UidsRootAndTheOwnUserAndUnknownPeers) {
  EXPECT_TRUE(PeerMayChangeState(Peer(1000, 1000), {1000}, {}, kOwn));
  EXPECT_FALSE(PeerMayChangeState(Peer(1001, 1000), {1000}, {}, kOwn));
  EXPECT_TRUE(PeerMayChangeState(Peer(0, 0), {1000}, {}, kOwn));
  EXPECT_TRUE(PeerMayChangeState(Peer(kOwn, kOwn), {1000}, {}, kOwn));
  PeerCred unknown;
  unknown.groups = {4242};
  EXPECT_FALSE(PeerMayChangeState(unknown, {}, {4242}, kOwn));
}

TEST(PeerAccess, ReadsThePeersSupplementaryGroupsFromTheKernel) {
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  std::vector<gid_t> mine(static_cast<size_t>(getgroups(0, nullptr)));
  ASSERT_EQ(getgroups(static_cast<int>(mine.size()), mine.data()), static_cast<int>(mine.size()));
  std::vector<gid_t> seen = ReadPeerGroups(fds[0]);
  std::sort(mine.begin(), mine.end());
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(seen, mine);
  close(fds[0]);
  close(fds[1]);
}

// The maps systemd writes for PrivateUsers=yes: root and the service's own
// user (and group) map to themselves, nobody else is mapped.
constexpr const char* kPrivateUsersMap =
    "         0          0          1\n"
    "       998        998          1\n";
constexpr const char* kHostMap = "         0          0 4294967295\n";

TEST(PeerAccess, AllowListsAUserNamespaceHidesAreRefused) {
  EXPECT_TRUE(CheckAllowListsMapped({1000}, {100}, kHostMap, kHostMap).ok());
  EXPECT_TRUE(CheckAllowListsMapped({}, {}, kPrivateUsersMap, kPrivateUsersMap).ok());
  // root and the service's own ids are mapped, so listing them is harmless.
  EXPECT_TRUE(CheckAllowListsMapped({0, 998}, {998}, kPrivateUsersMap, kPrivateUsersMap).ok());

  Status uid = CheckAllowListsMapped({1000}, {}, kPrivateUsersMap, kPrivateUsersMap);
  ASSERT_FALSE(uid.ok());
  EXPECT_EQ(uid.code(), Status::Code::kInvalidConfig);
  EXPECT_NE(uid.message().find("allow_uids lists uid 1000"), std::string::npos) << uid.message();
  EXPECT_NE(uid.message().find("PrivateUsers=no"), std::string::npos) << uid.message();

  // 65534, what every hidden peer looks like, would admit them all.
  Status gid = CheckAllowListsMapped({}, {65534}, kPrivateUsersMap, kPrivateUsersMap);
  ASSERT_FALSE(gid.ok());
  EXPECT_NE(gid.message().find("allow_gids lists gid 65534"), std::string::npos) << gid.message();

  // A map that shifts ids (a container's) shows a listed id as another one.
  EXPECT_FALSE(CheckAllowListsMapped({1000}, {}, "0 100000 65536\n", kHostMap).ok());
}

TEST(PeerAccess, ThisProcessSeesItsOwnAllowLists) {
  // The test runs outside a user namespace, or in one that maps its ids.
  EXPECT_TRUE(
      CheckAllowListsVisible({static_cast<int64_t>(geteuid())}, {static_cast<int64_t>(getegid())})
          .ok());
}

}  // namespace
}  // namespace digestd
