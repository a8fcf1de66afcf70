// Who may use the ops that change state: the [control] allow_uids and
// allow_gids lists, judged from the peer's credentials as the kernel recorded
// them when it connected (docs/protocol.md, "Who may do what").
//
// Supplementary groups come from SO_PEERGROUPS, read once at accept beside
// SO_PEERCRED, and not from /proc/<pid>/status or getgrouplist(3):
// - /proc/<pid>/status names whatever process has that pid by the time we
//   look (the client may have exited and the pid been reused), and the
//   shipped unit's ProtectProc=invisible hides other users' processes from
//   digestd, so it would fail exactly where it matters;
// - getgrouplist(3) asks the group database through NSS (files, LDAP, sssd),
//   which may block the loop thread, and it answers what the user database
//   says, not what the connecting process holds (a process that dropped its
//   groups, or gained one with newgrp or sg, would be judged wrongly).
// SO_PEERGROUPS (Linux 4.13) is the kernel's own copy of the groups the
// client held at connect(), like SO_PEERCRED: no I/O, no race. Where the
// kernel does not have it, the groups are empty and only the primary gid
// counts, which fails closed.
//
// User namespaces: a daemon inside one (systemd's PrivateUsers=yes, or
// `unshare --user`) sees every peer whose ids are not mapped into it as
// uid/gid 65534, so an allow-list entry for an ordinary user could never
// match, and 65534 would match everyone. CheckAllowListsVisible refuses such
// a setup at start and at --check-config instead of failing every client.
//
// Pure functions, any thread, except CheckAllowListsVisible (reads two
// small /proc files; call it at start, before the loop runs).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string_view>
#include <vector>

#include "control/control_server.h"
#include "util/status.h"

namespace digestd {

// The peer's supplementary groups on the connected Unix socket `fd`
// (SO_PEERGROUPS); empty when the kernel does not say.
std::vector<gid_t> ReadPeerGroups(int fd);

// True when `peer` may use the state-changing ops: both lists empty (the
// socket's mode decides), or known credentials with the uid root or
// `own_uid`, the uid in `allow_uids`, or the primary gid or any
// supplementary group in `allow_gids`.
bool PeerMayChangeState(const PeerCred& peer, const std::vector<int64_t>& allow_uids,
                        const std::vector<int64_t>& allow_gids, uid_t own_uid);

// Checks that every id in the allow-lists would be seen as itself in a peer's
// credentials, given this process's /proc/self/uid_map and gid_map texts
// (lines "inside outside count"). An error names the first id that is not,
// and what to do.
Status CheckAllowListsMapped(const std::vector<int64_t>& allow_uids,
                             const std::vector<int64_t>& allow_gids, std::string_view uid_map,
                             std::string_view gid_map);

// CheckAllowListsMapped with this process's own maps. Ok when both lists are
// empty or the maps cannot be read (no user namespaces in this kernel).
Status CheckAllowListsVisible(const std::vector<int64_t>& allow_uids,
                              const std::vector<int64_t>& allow_gids);

}  // namespace digestd
