// Hostile clients and hostile configs against the real digestd binary
// (issue 10): who may change state when groups and user namespaces are
// involved (point 4), clients that hold connections open (point 5), client
// text that would forge log lines (point 7), and passwords in the conninfo
// (point 8). Tests that act as other users fork a child that drops to that
// uid and its groups; they need root and are skipped without it.
#include <fcntl.h>
#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "../support/daemon_harness.h"
#include "client/control_client.h"

namespace digestd {
namespace {

using nlohmann::json;
using testing::DaemonProcess;
using testing::ProcessOutput;
using testing::RunProcess;

constexpr uid_t kNobody = 65534;

// A forked child running as `uid` with primary group `gid` and supplementary
// `groups`, which runs `body` and reports one text through a pipe. The child
// waits for Release() before it exits (so whatever it holds open stays
// open), unless `hold` is false.
class ChildAs {
 public:
  ChildAs(uid_t uid, gid_t gid, std::vector<gid_t> groups, const std::function<std::string()>& body,
          bool hold = false) {
    int report[2], release[2];
    if (pipe2(report, O_CLOEXEC) != 0 || pipe2(release, O_CLOEXEC) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      close(report[0]);
      close(release[1]);
      std::string out;
      if (setgroups(groups.size(), groups.data()) != 0 || setgid(gid) != 0 || setuid(uid) != 0) {
        out = "could not become uid " + std::to_string(uid);
      } else {
        out = body();
      }
      out += '\0';
      ssize_t ignored = write(report[1], out.data(), out.size());
      (void)ignored;
      char c;
      if (hold) ignored = read(release[0], &c, 1);  // EOF once the parent releases us
      _exit(0);
    }
    close(report[1]);
    close(release[0]);
    report_fd_ = report[0];
    release_fd_ = release[1];
  }
  ~ChildAs() { Release(); }

  // What the child reported (waits for it).
  std::string Report() {
    if (!reported_) {
      reported_ = true;
      char buf[4096];
      ssize_t n;
      while ((n = read(report_fd_, buf, sizeof buf)) > 0) {
        report_.append(buf, static_cast<size_t>(n));
        if (report_.back() == '\0') break;
      }
      if (!report_.empty() && report_.back() == '\0') report_.pop_back();
    }
    return report_;
  }

  // Lets the child exit and reaps it.
  void Release() {
    if (pid_ <= 0) return;
    close(release_fd_);
    close(report_fd_);
    waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  pid_t pid_ = -1;
  int report_fd_ = -1;
  int release_fd_ = -1;
  bool reported_ = false;
  std::string report_;
};

// Sends `request` on a new connection and returns the answer line (or what
// went wrong). Usable in a forked child.
std::string CallLine(const std::string& socket_path, const json& request) {
  ControlClient client;
  Status st = client.Connect(socket_path);
  if (!st.ok()) return "connect: " + st.message();
  if (!(st = client.SendLine(request.dump())).ok()) return "send: " + st.message();
  auto line = client.ReadLine(10000);
  return line.ok() ? line.value() : "read: " + line.status().message();
}

// Opens connections to `socket_path` one by one, each asked for a ping,
// until one is turned away or `limit` are open. Returns how many were
// admitted and the refusal, as "N\nLINE". The connections stay open in
// `held`.
std::string HoldConnections(const std::string& socket_path, int limit,
                            std::vector<std::unique_ptr<ControlClient>>* held) {
  for (int i = 0; i < limit; ++i) {
    auto client = std::make_unique<ControlClient>();
    Status st = client->Connect(socket_path);
    if (!st.ok()) return std::to_string(held->size()) + "\nconnect: " + st.message();
    // A refused client may find the connection closed already: read anyway.
    (void)client->SendLine(R"({"op":"ping"})");
    auto line = client->ReadLine(10000);
    std::string text = line.ok() ? line.value() : "read: " + line.status().message();
    if (text.find("\"pong\":true") == std::string::npos) {
      return std::to_string(held->size()) + "\n" + text;
    }
    held->push_back(std::move(client));
  }
  return std::to_string(held->size()) + "\n(none refused)";
}

json ParseOrNull(const std::string& line) {
  return json::parse(line, nullptr, false);
}

// --- Point 4: supplementary groups and user namespaces --------------------

TEST(AbuseE2E, AllowGidsAdmitsAPeerThroughASupplementaryGroup) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run clients as other users";
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.config = "[control]\nmode = \"0666\"\nallow_gids = [4242]\n"}));
  ASSERT_EQ(chmod(daemon.dir().path().c_str(), 0755), 0);
  const std::string path = daemon.SocketPath();
  auto submit = [&](const std::string& key) {
    return [path, key] {
      return CallLine(path, {{"op", "submit"}, {"kind", "noop"}, {"key", key}});
    };
  };

  // Primary group nobody, supplementary group 4242 (listed): admitted.
  ChildAs member(kNobody, kNobody, {4242}, submit("member"));
  json admitted = ParseOrNull(member.Report());
  EXPECT_EQ(admitted["ok"], true) << member.Report();

  // Supplementary group 4343 (not listed): refused, and told why.
  ChildAs outsider(kNobody, kNobody, {4343}, submit("outsider"));
  json refused = ParseOrNull(outsider.Report());
  EXPECT_EQ(testing::ErrorCode(refused), "forbidden") << outsider.Report();
  EXPECT_NE(testing::ErrorMessage(refused).find("allow_gids"), std::string::npos);

  json status = daemon.Status();
  EXPECT_EQ(status["jobs"]["submitted"], 1) << status.dump();
  EXPECT_TRUE(daemon.Stop());
}

// systemd's PrivateUsers=yes puts the service in a user namespace that maps
// only root and the service's own user; `unshare --user --map-root-user`
// builds the same for a root service. There an allow-list entry for anyone
// else could never match, so digestd refuses it at --check-config and at
// start instead of refusing (or, with 65534, admitting) every client.
TEST(AbuseE2E, AllowListsThatAUserNamespaceHidesAreRefused) {
  std::string unshare = testing::FindProgram("unshare");
  if (unshare.empty()) GTEST_SKIP() << "needs unshare(1)";
  ProcessOutput probe = RunProcess({unshare, "--user", "--map-root-user", "true"});
  if (!probe.status || probe.status->ToString() != "exit 0") {
    GTEST_SKIP() << "user namespaces are not available here: " << probe.err;
  }
  testing::TempDir dir;
  const std::string listed = dir.File("listed.conf");
  ASSERT_TRUE(testing::WriteTextFile(listed,
                                     "[jobs]\nstore = \"memory\"\n[control]\n"
                                     "allow_uids = [12345]\n"));
  const std::string groups = dir.File("groups.conf");
  ASSERT_TRUE(testing::WriteTextFile(groups,
                                     "[jobs]\nstore = \"memory\"\n[control]\n"
                                     "allow_gids = [65534]\n"));
  const std::string open = dir.File("open.conf");
  ASSERT_TRUE(testing::WriteTextFile(open, "[jobs]\nstore = \"memory\"\n"));

  for (const auto& [path, key] :
       {std::pair{listed, "allow_uids"}, std::pair{groups, "allow_gids"}}) {
    ProcessOutput out = RunProcess(
        {unshare, "--user", "--map-root-user", DIGESTD_BIN, "--config", path, "--check-config"});
    ASSERT_TRUE(out.status.has_value());
    EXPECT_EQ(out.status->ToString(), "exit 1") << out.out << out.err;
    EXPECT_NE(out.err.find(key), std::string::npos) << out.err;
    EXPECT_NE(out.err.find("PrivateUsers"), std::string::npos) << out.err;
  }
  // Outside a namespace the same file is fine; inside, empty lists are too
  // (the socket's group decides).
  ProcessOutput host = RunProcess({DIGESTD_BIN, "--config", listed, "--check-config"});
  ASSERT_TRUE(host.status.has_value());
  EXPECT_EQ(host.status->ToString(), "exit 0") << host.err;
  ProcessOutput empty = RunProcess(
      {unshare, "--user", "--map-root-user", DIGESTD_BIN, "--config", open, "--check-config"});
  ASSERT_TRUE(empty.status.has_value());
  EXPECT_EQ(empty.status->ToString(), "exit 0") << empty.err;

  // Starting it the way systemd would is refused as well, before it listens.
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.config = "[control]\nallow_uids = [12345]\n",
                            .wrapper = {unshare, "--user", "--map-root-user"},
                            .wait_ready = false}));
  auto exit = daemon.WaitExit();
  ASSERT_TRUE(exit.has_value()) << "digestd kept running with allow-lists it cannot match";
  EXPECT_EQ(exit->ToString(), "exit 1");
  EXPECT_NE(daemon.StderrText().find("PrivateUsers"), std::string::npos) << daemon.StderrText();
  EXPECT_EQ(daemon.CountMessages("READY=1"), 0u);
}

// --- Point 5: clients that hold connections -------------------------------

// With the shipped limits: another user that opens connections until it is
// turned away gets max_clients_per_uid (256) of them and one clear refusal,
// and root's status still works while it holds them. (root and digestd's
// own user are not capped per uid: ProtocolE2E opens 1000 as root.)
TEST(AbuseE2E, OneUserHoldingItsConnectionCapCannotLockOthersOut) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run a client as another user";
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.config = "[control]\nmode = \"0666\"\n"}));
  ASSERT_EQ(chmod(daemon.dir().path().c_str(), 0755), 0);
  const std::string path = daemon.SocketPath();
  ChildAs hoarder(
      kNobody, kNobody, {},
      [path] {
        static std::vector<std::unique_ptr<ControlClient>> held;  // kept until the child exits
        return HoldConnections(path, 300, &held);
      },
      /*hold=*/true);
  std::string report = hoarder.Report();
  auto lines = testing::SplitLines(report);
  ASSERT_GE(lines.size(), 2u) << report;
  EXPECT_EQ(lines[0], "256") << report;
  json refused = ParseOrNull(lines[1]);
  EXPECT_EQ(testing::ErrorCode(refused), "unavailable") << lines[1];
  EXPECT_NE(testing::ErrorMessage(refused).find("max_clients_per_uid"), std::string::npos)
      << lines[1];
  json status = daemon.Status();
  EXPECT_GE(status["control"]["clients"].get<int>(), 256) << status.dump();
  hoarder.Release();
  EXPECT_TRUE(daemon.Stop());
}

TEST(AbuseE2E, RootGetsStatusWhileAnotherUserHoldsEverySlotItMay) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run a client as another user";
  DaemonProcess daemon;
  // Fewer slots than one user's cap: the other user fills every slot that
  // is not reserved for root and digestd's own user.
  ASSERT_TRUE(daemon.Start({.config = "[control]\nmode = \"0666\"\nmax_clients = 20\n"}));
  ASSERT_EQ(chmod(daemon.dir().path().c_str(), 0755), 0);
  const std::string path = daemon.SocketPath();
  ChildAs hoarder(
      kNobody, kNobody, {},
      [path] {
        static std::vector<std::unique_ptr<ControlClient>> held;  // kept until the child exits
        return HoldConnections(path, 100, &held);
      },
      /*hold=*/true);
  std::string report = hoarder.Report();
  auto lines = testing::SplitLines(report);
  ASSERT_GE(lines.size(), 2u) << report;
  EXPECT_EQ(lines[0], "16") << "20 slots less the 4 reserved: " << report;
  EXPECT_NE(testing::ErrorMessage(ParseOrNull(lines[1])).find("reserved_clients"),
            std::string::npos)
      << lines[1];
  // While it holds them, root (this test) still gets an answer.
  json status = daemon.Status();
  EXPECT_EQ(status["state"], "running") << status.dump();
  EXPECT_GE(status["control"]["rejected"].get<int>(), 1) << status.dump();
  hoarder.Release();
  EXPECT_TRUE(daemon.Stop());
}

// --- Point 7: control characters in client strings ------------------------

TEST(AbuseE2E, ControlCharactersInJobNamesAreRefusedNamingTheField) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start());
  const std::string forged = "x\n2026-01-01T00:00:00.000Z digestd[1] notice: FORGED";
  struct Case {
    json request;
    const char* field;
  };
  const Case cases[] = {
      {{{"op", "submit"}, {"kind", "noop"}, {"key", forged}}, "\"key\""},
      {{{"op", "submit"}, {"kind", "noop"}, {"key", "k1"}, {"group", "<0>g\r"}}, "\"group\""},
      {{{"op", "submit"}, {"kind", "noop"}, {"key", "k2"}, {"lane", "background\n"}}, "\"lane\""},
      {{{"op", "submit"}, {"kind", "noop\x1b[31m"}, {"key", "k3"}}, "\"kind\""},
      {{{"op", "submit"},
        {"jobs",
         {{{"kind", "noop"}, {"key", "ok"}}, {{"kind", "noop"}, {"key", std::string("a\0b", 3)}}}}},
       "jobs[1]: \"key\""},
      {{{"op", "submit"}, {"kind", "noop"}, {"key", "del\x7f"}}, "\"key\""},
  };
  for (const auto& c : cases) {
    auto answer = daemon.Call(c.request);
    ASSERT_TRUE(answer.ok()) << answer.status().ToString();
    EXPECT_EQ(testing::ErrorCode(answer.value()), "bad_request") << answer.value().dump();
    std::string message = testing::ErrorMessage(answer.value());
    EXPECT_NE(message.find(c.field), std::string::npos) << message;
    EXPECT_NE(message.find("control character"), std::string::npos) << message;
  }
  json status = daemon.Status();
  EXPECT_EQ(status["jobs"]["submitted"], 0) << status.dump();
  EXPECT_EQ(daemon.StderrText().find("FORGED"), std::string::npos) << daemon.StderrText();
  // Printable text, including non-ASCII, is still a fine key.
  daemon.SubmitNoop("book:7/ch:3 — «ü»", 0);
  EXPECT_TRUE(daemon.Stop());
}

// --- Point 8: passwords in [postgres] conninfo ----------------------------

constexpr const char* kSecret = "hunter2xyz";

TEST(AbuseE2E, PrintConfigNeverShowsTheConninfoPassword) {
  testing::TempDir dir;
  for (std::string info :
       {"host=/run/postgresql dbname=digestd password=hunter2xyz",
        "host=db password = 'hunter2xyz' user=me", "postgresql://me:hunter2xyz@db.example/digestd",
        "postgresql://me@db.example/digestd?password=hunter2xyz&sslmode=require"}) {
    std::string path = dir.File("print.conf");
    ASSERT_TRUE(testing::WriteTextFile(path, "[postgres]\nconninfo = " + json(info).dump() + "\n"));
    ProcessOutput out = RunProcess({DIGESTD_BIN, "--config", path, "--print-config"});
    ASSERT_TRUE(out.status.has_value());
    EXPECT_EQ(out.status->ToString(), "exit 0") << out.err;
    EXPECT_EQ(out.out.find(kSecret), std::string::npos) << out.out;
    EXPECT_NE(out.out.find("conninfo = "), std::string::npos) << out.out;
    EXPECT_NE(out.out.find("***"), std::string::npos) << out.out;
  }
}

// libpq cannot parse these; several of its messages quote the piece that
// broke, which can be the password or the whole URI.
const char* const kUnparseable[] = {
    "postgresql://me:hunter2xyz@[::1/digestd",   // unterminated IPv6 address
    "postgresql://me:hunter2xyz%zz@db/digestd",  // bad percent-escape in the password
    "postgresql://me@db/digestd?password=hunter2xyz%zz",
    "host=db password='hunter2xyz",  // unterminated quote
    "host=db password=hunter2xyz bogus=1",
};

TEST(AbuseE2E, CheckConfigRefusesAnUnparseableConninfoWithoutShowingThePassword) {
  testing::TempDir dir;
  for (std::string info : kUnparseable) {
    std::string path = dir.File("bad.conf");
    ASSERT_TRUE(testing::WriteTextFile(path, "[postgres]\nconninfo = " + json(info).dump() + "\n"));
    ProcessOutput out = RunProcess({DIGESTD_BIN, "--config", path, "--check-config"});
    ASSERT_TRUE(out.status.has_value());
    EXPECT_EQ(out.status->ToString(), "exit 1") << info << ": " << out.out;
    EXPECT_EQ(out.err.find(kSecret), std::string::npos) << out.err;
    EXPECT_EQ(out.err.find("hunter2"), std::string::npos) << out.err;
    EXPECT_NE(out.err.find("[postgres] conninfo does not parse"), std::string::npos) << out.err;
    EXPECT_NE(out.err.find(path), std::string::npos) << out.err;
  }
}

TEST(AbuseE2E, StartupRefusesAnUnparseableConninfoWithoutShowingThePassword) {
  for (std::string info : kUnparseable) {
    DaemonProcess daemon;
    ASSERT_TRUE(daemon.Start({.store = "postgres",
                              .config = "[postgres]\nconninfo = " + json(info).dump() + "\n",
                              .wait_ready = false}));
    auto exit = daemon.WaitExit();
    ASSERT_TRUE(exit.has_value()) << info << ": digestd kept running";
    EXPECT_EQ(exit->ToString(), "exit 1") << info;
    std::string err = daemon.StderrText();
    EXPECT_NE(err.find("conninfo does not parse"), std::string::npos) << err;
    EXPECT_EQ(err.find("hunter2"), std::string::npos) << err;
  }
}

}  // namespace
}  // namespace digestd
