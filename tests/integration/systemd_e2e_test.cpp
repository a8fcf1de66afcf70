// digestd's side of systemd, without systemd: the test owns the
// NOTIFY_SOCKET datagram socket and reads what the daemon sends (READY,
// STATUS, WATCHDOG, RELOADING, STOPPING), and hands it a listening socket the
// way socket activation does, both through the real systemd-socket-activate
// and by passing fd 3 itself. None of this needs systemd as PID 1:
// sd_notify only writes to NOTIFY_SOCKET, and systemd-socket-activate execs
// its program in place (so LISTEN_PID matches) on the first connection,
// passing on only the environment variables named with -E.
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "../support/daemon_harness.h"
#include "client/control_client.h"

namespace digestd {
namespace {

using nlohmann::json;
using testing::DaemonOptions;
using testing::DaemonProcess;
using testing::WaitFor;
using testing::WorkersConfig;

TEST(SystemdE2E, ReadyAndStatusComeFromTheMainPid) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.pass_cred = true}));
  auto status_at = daemon.WaitForMessage("STATUS=");
  ASSERT_TRUE(status_at.has_value()) << ::testing::PrintToString(daemon.Messages());
  auto messages = daemon.NotifyMessages();
  std::string status = messages[*status_at].line;
  EXPECT_NE(status.find("busy"), std::string::npos) << status;
  EXPECT_NE(status.find("interactive"), std::string::npos) << status;
  EXPECT_NE(status.find("background"), std::string::npos) << status;
  // NotifyAccess=main: every message must come from the daemon itself.
  for (const auto& m : messages) EXPECT_EQ(m.sender, daemon.Pid()) << m.line;
  EXPECT_EQ(daemon.CountMessages("READY=1"), 1u);
  // READY=1 only once the socket answers.
  auto ping = daemon.Call({{"op", "ping"}});
  ASSERT_TRUE(ping.ok()) << ping.status().ToString();
  EXPECT_TRUE(daemon.Stop());
}

TEST(SystemdE2E, StatusLineIsRefreshedWhenTheQueuesChange) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.config = WorkersConfig(1, 1) + R"([daemon]
status_interval_ms = 100
)"}));
  for (const char* key : {"a", "b", "c"}) daemon.SubmitNoop(key, 60000);
  // One line naming the busy workers and each lane's depth, refreshed as
  // the queues change.
  EXPECT_TRUE(WaitFor([&] {
    for (const auto& m : daemon.Messages()) {
      if (m.rfind("STATUS=", 0) == 0 && m.find("busy 1/1") != std::string::npos &&
          m.find("background 2/200") != std::string::npos &&
          m.find("interactive 0/200") != std::string::npos) {
        return true;
      }
    }
    return false;
  })) << ::testing::PrintToString(daemon.Messages());
  for (const char* key : {"a", "b", "c"}) daemon.CallOk({{"op", "cancel"}, {"key", key}});
  EXPECT_TRUE(daemon.Stop());
}

TEST(SystemdE2E, WatchdogPingsWhenWatchdogUsecIsSet) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.watchdog_usec = 200000, .pass_cred = true}));
  // 200 ms asks for a ping every 100 ms; wait (with a generous bound) for a few.
  EXPECT_TRUE(WaitFor([&] { return daemon.CountMessages("WATCHDOG=1") >= 5; }))
      << ::testing::PrintToString(daemon.Messages());
  for (const auto& m : daemon.NotifyMessages()) EXPECT_EQ(m.sender, daemon.Pid()) << m.line;
  EXPECT_TRUE(daemon.Stop());
}

TEST(SystemdE2E, NoWatchdogPingsWithoutWatchdogUsec) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start());
  ASSERT_TRUE(daemon.Call({{"op", "status"}}).ok());
  ASSERT_TRUE(daemon.Stop());
  // Datagrams arrive in order: once STOPPING=1 is in, anything sent before is too.
  ASSERT_TRUE(daemon.WaitForMessage("STOPPING=1"));
  EXPECT_EQ(daemon.CountMessages("WATCHDOG=1"), 0u) << ::testing::PrintToString(daemon.Messages());
}

TEST(SystemdE2E, ReloadIsWrappedInReloadingAndReady) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.config = "[workers]\nmax = 8\n"}));
  auto ready = daemon.WaitForMessage("READY=1");
  ASSERT_TRUE(ready.has_value());
  ASSERT_TRUE(daemon.WriteConfig("[workers]\nmax = 6\n"));
  daemon.Signal(SIGHUP);
  auto reloading = daemon.WaitForMessage("RELOADING=1", testing::kDeadline, *ready + 1);
  ASSERT_TRUE(reloading.has_value()) << ::testing::PrintToString(daemon.Messages());
  // systemd 253+ wants MONOTONIC_USEC with it, in the same datagram.
  auto messages = daemon.Messages();
  ASSERT_GT(messages.size(), *reloading + 1);
  EXPECT_EQ(messages[*reloading + 1].rfind("MONOTONIC_USEC=", 0), 0u) << messages[*reloading + 1];
  auto ready_again = daemon.WaitForMessage("READY=1", testing::kDeadline, *reloading + 1);
  ASSERT_TRUE(ready_again.has_value()) << ::testing::PrintToString(daemon.Messages());
  auto status = daemon.Call({{"op", "status"}});
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(status.value()["workers"]["max"], 6);

  // A reload that fails is wrapped the same way: systemd must not wait forever.
  ASSERT_TRUE(daemon.WriteConfigRaw("[workers\n"));
  daemon.Signal(SIGHUP);
  auto failed_reload = daemon.WaitForMessage("RELOADING=1", testing::kDeadline, *ready_again + 1);
  ASSERT_TRUE(failed_reload.has_value());
  EXPECT_TRUE(daemon.WaitForMessage("READY=1", testing::kDeadline, *failed_reload + 1));
  EXPECT_TRUE(daemon.Running());
  EXPECT_TRUE(daemon.Stop());
}

TEST(SystemdE2E, StoppingIsSentAtShutdown) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.pass_cred = true}));
  EXPECT_EQ(daemon.CountMessages("STOPPING=1"), 0u);
  daemon.Signal(SIGTERM);
  auto stopping = daemon.WaitForMessage("STOPPING=1");
  ASSERT_TRUE(stopping.has_value()) << ::testing::PrintToString(daemon.Messages());
  auto exit = daemon.WaitExit();
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->ToString(), "exit 0") << daemon.StderrText();
  EXPECT_TRUE(daemon.WaitForMessage("STATUS=stopped", testing::kDeadline, *stopping));
  auto messages = daemon.NotifyMessages();
  EXPECT_EQ(messages[*stopping].sender, daemon.Pid());
}

TEST(SystemdE2E, SocketActivationThroughSystemdSocketActivate) {
  ASSERT_NE(testing::FindProgram("systemd-socket-activate"), "")
      << "systemd-socket-activate is not installed (package systemd)";
  DaemonProcess daemon;
  std::string activation = daemon.dir().File("act.sock");
  // It drops the environment: NOTIFY_SOCKET must be passed on with -E.
  ASSERT_TRUE(daemon.Start({.wrapper = {"systemd-socket-activate", "-l", activation,
                                        "--fdname=control", "-E", "NOTIFY_SOCKET"},
                            .wait_ready = false}));
  // It execs digestd only on the first connection, so connect to trigger it.
  ControlClient client;
  ASSERT_TRUE(WaitFor([&] { return client.Connect(activation).ok(); })) << daemon.StderrText();
  auto pong = client.Call({{"op", "ping"}, {"id", "activated"}});
  ASSERT_TRUE(pong.ok()) << pong.status().ToString() << "\n" << daemon.StderrText();
  EXPECT_EQ(pong.value()["pong"], true);
  EXPECT_EQ(pong.value()["id"], "activated");
  ASSERT_TRUE(daemon.WaitForMessage("READY=1")) << daemon.StderrText();

  // digestd serves on the socket it was given and never creates its own.
  EXPECT_FALSE(testing::PathExists(daemon.SocketPath()));
  auto status = testing::CallOnce(activation, {{"op", "status"}});
  ASSERT_TRUE(status.ok()) << status.status().ToString();
  EXPECT_EQ(status.value()["pid"], daemon.Pid()) << "exec'd in place, so LISTEN_PID matched";
  EXPECT_NE(daemon.StderrText().find("from systemd"), std::string::npos) << daemon.StderrText();
  client.Close();
  EXPECT_TRUE(daemon.Stop());
}

TEST(SystemdE2E, SocketActivationWithAnInheritedFd) {
  DaemonProcess daemon;
  std::string activation = daemon.dir().File("act.sock");
  int fd = testing::BindUnixSocket(activation, /*listen=*/true);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  ASSERT_TRUE(daemon.Start({.listen_fd = fd, .listen_fdnames = "control"}));
  close(fd);  // the daemon has its own copy as fd 3

  auto pong = testing::CallOnce(activation, {{"op", "ping"}});
  ASSERT_TRUE(pong.ok()) << pong.status().ToString() << "\n" << daemon.StderrText();
  EXPECT_EQ(pong.value()["pong"], true);
  EXPECT_FALSE(testing::PathExists(daemon.SocketPath()));
  // Work flows through it like through a socket of its own.
  auto submitted =
      testing::CallOnce(activation, {{"op", "submit"}, {"kind", "noop"}, {"key", "k"}});
  ASSERT_TRUE(submitted.ok());
  EXPECT_EQ(submitted.value()["ok"], true) << submitted.value().dump();
  auto result = testing::CallOnce(activation, {{"op", "result"}, {"key", "k"}, {"wait_ms", 10000}});
  ASSERT_TRUE(result.ok());
  EXPECT_EQ(result.value()["status"], "done") << result.value().dump();
  EXPECT_TRUE(daemon.Stop());
  // The socket file belongs to whoever bound it: digestd leaves it alone.
  EXPECT_TRUE(testing::PathExists(activation));
}

}  // namespace
}  // namespace digestd
