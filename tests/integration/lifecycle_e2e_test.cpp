// The daemon's life, against the real binary: status fields, worker limits
// at runtime, SIGHUP reload, poison-pill shutdown under load, the grace
// period, a forced second SIGTERM, socket ownership at start, the command
// line of digestd and digestctl.
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <regex>
#include <string>
#include <thread>

#include "../support/daemon_harness.h"
#include "client/control_client.h"

namespace digestd {
namespace {

using nlohmann::json;
using testing::DaemonOptions;
using testing::DaemonProcess;
using testing::ProcessOutput;
using testing::RunProcess;
using testing::SplitLines;
using testing::WaitFor;
using testing::WorkersConfig;
using namespace std::chrono_literals;

// The counts in the daemon's last "shutdown complete: N done, F failed, C
// cancelled" line; nullopt when there is none.
struct Final {
  int done, failed, cancelled;
};
std::optional<Final> ShutdownSummary(const std::string& log) {
  static const std::regex re(R"(shutdown complete: (\d+) done, (\d+) failed, (\d+) cancelled)");
  std::optional<Final> out;
  for (const auto& line : SplitLines(log)) {
    std::smatch m;
    if (std::regex_search(line, m, re)) {
      out = Final{std::stoi(m[1]), std::stoi(m[2]), std::stoi(m[3])};
    }
  }
  return out;
}

// Every test that starts a daemon runs on both stores, PostgreSQL first.
class LifecycleE2E : public ::testing::TestWithParam<const char*> {
 protected:
  bool Pg() const { return std::string(GetParam()) == "postgres"; }
  // With PostgreSQL a shutdown hands jobs that did not finish back to the
  // table (nothing is cancelled): a second daemon on the same database must
  // then finish every one of `keys`.
  void ExpectTheNextDaemonFinishes(const DaemonProcess& first,
                                   const std::vector<std::string>& keys) {
    DaemonProcess next;
    ASSERT_TRUE(next.Start({.store = "postgres",
                            .config = WorkersConfig(4, 4) + "[postgres]\nconninfo = " +
                                      json(first.PgConninfo()).dump() + "\n"}));
    for (const auto& key : keys) {
      json r = next.CallOk({{"op", "result"}, {"key", key}, {"wait_ms", 20000}});
      EXPECT_EQ(r["status"], "done") << r.dump();
    }
    EXPECT_TRUE(next.Stop());
  }
};
INSTANTIATE_TEST_SUITE_P(Stores, LifecycleE2E, ::testing::ValuesIn(testing::kStores),
                         testing::StoreName);

TEST_P(LifecycleE2E, StatusReportsEveryField) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.store = GetParam(), .config = WorkersConfig(2, 6, 1) + R"([queues]
interactive = 7
background = 9
[daemon]
node_id = "status-node"
)"}));
  daemon.SubmitNoop("one", 0);
  json result = daemon.CallOk({{"op", "result"}, {"key", "one"}, {"wait_ms", 10000}});
  ASSERT_EQ(result["status"], "done") << result.dump();

  json s = daemon.Status();
  EXPECT_EQ(s["version"], DIGESTD_VERSION);
  EXPECT_EQ(s["pid"], daemon.Pid());
  ASSERT_TRUE(s["uptime_s"].is_number()) << s.dump();
  EXPECT_GE(s["uptime_s"].get<double>(), 0.0);
  EXPECT_EQ(s["node_id"], "status-node");
  EXPECT_EQ(s["state"], "running");

  json w = s["workers"];
  EXPECT_EQ(w["limit"], 6) << s.dump();
  EXPECT_EQ(w["min"], 2);
  EXPECT_EQ(w["max"], 6);
  EXPECT_EQ(w["busy"], 0);
  EXPECT_EQ(w["reserved"], 1);

  json q = s["queues"];
  EXPECT_EQ(q["interactive"]["depth"], 0) << s.dump();
  EXPECT_EQ(q["interactive"]["capacity"], 7);
  EXPECT_EQ(q["background"]["depth"], 0);
  EXPECT_EQ(q["background"]["capacity"], 9);

  json j = s["jobs"];
  EXPECT_EQ(j["submitted"], 1) << s.dump();
  EXPECT_EQ(j["running"], 0);
  EXPECT_EQ(j["done"], 1);
  EXPECT_EQ(j["failed"], 0);
  EXPECT_EQ(j["cancelled"], 0);

  json l = s["latency"];
  for (const char* p : {"p50_ms", "p95_ms", "p99_ms"}) {
    ASSERT_TRUE(l.contains(p) && l[p].is_number()) << p << " in " << s.dump();
    EXPECT_GE(l[p].get<double>(), 0.0);
  }
  EXPECT_LE(l["p50_ms"].get<double>(), l["p99_ms"].get<double>());
  EXPECT_EQ(l["count"], 1);
  EXPECT_TRUE(daemon.Stop());
}

TEST_P(LifecycleE2E, StatusShowsDepthAndBusyUnderLoad) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.store = GetParam(), .config = WorkersConfig(1, 2)}));
  for (int i = 0; i < 5; ++i) daemon.SubmitNoop("long" + std::to_string(i), 60000);
  // With PostgreSQL the queued three reach the ring through a claim.
  ASSERT_TRUE(WaitFor([&] {
    json st = daemon.Status();
    return st["workers"]["busy"] == 2 && st["queues"]["background"]["depth"] == 3;
  })) << daemon.Status().dump();
  json s = daemon.Status();
  EXPECT_EQ(s["jobs"]["running"], 2);
  EXPECT_EQ(s["jobs"]["submitted"], 5);
  for (int i = 0; i < 5; ++i)
    daemon.CallOk({{"op", "cancel"}, {"key", "long" + std::to_string(i)}});
  EXPECT_TRUE(daemon.Stop());
}

TEST_P(LifecycleE2E, WorkersOpChangesTheLimit) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.store = GetParam(), .config = WorkersConfig(1, 1)}));
  daemon.SubmitNoop("a", 60000);
  daemon.SubmitNoop("b", 60000);
  daemon.SubmitNoop("c", 60000);
  ASSERT_TRUE(WaitFor([&] {
    json st = daemon.Status();
    return st["workers"]["busy"] == 1 && st["queues"]["background"]["depth"] == 2;
  })) << daemon.Status().dump();

  json answer = daemon.CallOk({{"op", "workers"}, {"min", 2}, {"max", 3}});
  EXPECT_EQ(answer["limit"], 3) << answer.dump();
  EXPECT_EQ(answer["min"], 2);
  EXPECT_EQ(answer["max"], 3);
  // The raised limit takes effect at once: the queued jobs start.
  ASSERT_TRUE(WaitFor([&] { return daemon.Status()["workers"]["busy"] == 3; }))
      << daemon.Status().dump();
  json s = daemon.Status();
  EXPECT_EQ(s["workers"]["limit"], 3);
  EXPECT_EQ(s["queues"]["background"]["depth"], 0);

  // Bounds the pool cannot serve, or that contradict each other, are refused.
  auto too_big = daemon.Call({{"op", "workers"}, {"max", 500}});
  ASSERT_TRUE(too_big.ok());
  EXPECT_EQ(too_big.value()["error"]["code"], "bad_request") << too_big.value().dump();
  EXPECT_NE(testing::ErrorMessage(too_big.value()).find("thread pool"), std::string::npos);
  auto crossed = daemon.Call({{"op", "workers"}, {"min", 3}, {"max", 2}});
  ASSERT_TRUE(crossed.ok());
  EXPECT_EQ(crossed.value()["error"]["code"], "bad_request");
  EXPECT_EQ(daemon.Status()["workers"]["limit"], 3);

  daemon.CallOk({{"op", "cancel"}, {"key", "a"}});
  daemon.CallOk({{"op", "cancel"}, {"key", "b"}});
  daemon.CallOk({{"op", "cancel"}, {"key", "c"}});
  EXPECT_TRUE(daemon.Stop());
}

// conf/digestd.conf's note on raising [workers] max says what the daemon
// does: up to the start value plus the pool's headroom, no further.
TEST_P(LifecycleE2E, RaisingWorkersMaxFollowsTheConfFilesNote) {
  std::string conf = testing::ReadTextFile(std::string(DIGESTD_SOURCE_DIR) + "/conf/digestd.conf");
  ASSERT_NE(conf, "");
  EXPECT_NE(
      conf.find("# the thread pool size (the start value plus 4, which uses up the headroom);"),
      std::string::npos);
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.store = GetParam(), .config = WorkersConfig(1, 4)}));
  // Up to the start value plus 4, over the socket and by reload.
  EXPECT_EQ(daemon.CallOk({{"op", "workers"}, {"max", 8}})["max"], 8);
  auto above = daemon.Call({{"op", "workers"}, {"max", 9}});
  ASSERT_TRUE(above.ok());
  EXPECT_EQ(above.value()["error"]["code"], "bad_request") << above.value().dump();
  EXPECT_NE(testing::ErrorMessage(above.value()).find("restart"), std::string::npos);
  ASSERT_TRUE(daemon.WriteConfig(WorkersConfig(1, 9)));
  auto reload_above = daemon.Call({{"op", "reload"}});
  ASSERT_TRUE(reload_above.ok());
  EXPECT_EQ(reload_above.value()["ok"], false) << reload_above.value().dump();
  EXPECT_NE(testing::ErrorMessage(reload_above.value()).find("restart"), std::string::npos);
  ASSERT_TRUE(daemon.WriteConfig(WorkersConfig(1, 8)));
  daemon.CallOk({{"op", "reload"}});
  EXPECT_EQ(daemon.Status()["workers"]["max"], 8);
  EXPECT_TRUE(daemon.Stop());
}

// The backlog counts in status are read again when work finishes, not only
// every backlog_interval_ms (ten minutes here).
TEST_P(LifecycleE2E, BacklogIsRefreshedWhenWorkFinishes) {
  if (!Pg()) GTEST_SKIP() << "the backlog is PostgreSQL's";
  DaemonProcess daemon;
  ASSERT_TRUE(
      daemon.Start({.store = GetParam(),
                    .config = WorkersConfig(1, 1) + "[postgres]\nbacklog_interval_ms = 600000\n"}));
  ASSERT_TRUE(WaitFor([&] { return daemon.Status()["db"]["backlog"]["as_of_unix_ms"] > 0; }));
  daemon.SubmitNoop("short", 20);
  daemon.SubmitNoop("long", 60000);
  EXPECT_EQ(daemon.CallOk({{"op", "result"}, {"key", "short"}, {"wait_ms", 10000}})["status"],
            "done");
  // The count made after "short" finished sees "long" (claimed or not yet).
  ASSERT_TRUE(WaitFor([&] {
    json bg = daemon.Status()["db"]["backlog"]["background"];
    return bg["running"].get<int>() + bg["queued"].get<int>() == 1;
  })) << daemon.Status()["db"].dump();
  daemon.CallOk({{"op", "cancel"}, {"key", "long"}});
  ASSERT_TRUE(WaitFor([&] {
    return daemon.Status()["db"]["backlog"]["background"]["running"] == 0;
  })) << daemon.Status()["db"].dump();
  EXPECT_TRUE(daemon.Stop());
}

// A job cancelled before it ran spent no attempt and has no run time; one
// cancelled while running has both.
TEST_P(LifecycleE2E, JobCancelledBeforeItRanHasNoAttemptAndNoRunTime) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.store = GetParam(), .config = WorkersConfig(1, 1)}));
  daemon.SubmitNoop("long", 60000);
  ASSERT_TRUE(WaitFor([&] {
    json l = daemon.CallOk({{"op", "result"}, {"key", "long"}});
    return l["status"] == "running" && l.contains("run_ms");
  }));
  daemon.SubmitNoop("waiting", 10);  // behind "long" on the only worker
  daemon.CallOk({{"op", "cancel"}, {"key", "waiting"}});
  json w = daemon.CallOk({{"op", "result"}, {"key", "waiting"}, {"wait_ms", 10000}});
  EXPECT_EQ(w["status"], "cancelled") << w.dump();
  EXPECT_EQ(w["attempts"], 0) << w.dump();
  EXPECT_FALSE(w.contains("run_ms")) << w.dump();
  ProcessOutput shown =
      RunProcess({DIGESTCTL_BIN, "--socket", daemon.SocketPath(), "result", "waiting"});
  ASSERT_TRUE(shown.status.has_value());
  EXPECT_NE(shown.out.find("attempts 0"), std::string::npos) << shown.out;
  EXPECT_EQ(shown.out.find("ran "), std::string::npos) << shown.out;

  daemon.CallOk({{"op", "cancel"}, {"key", "long"}});
  json l = daemon.CallOk({{"op", "result"}, {"key", "long"}, {"wait_ms", 10000}});
  EXPECT_EQ(l["status"], "cancelled") << l.dump();
  EXPECT_EQ(l["attempts"], 1) << l.dump();
  EXPECT_TRUE(l.contains("run_ms")) << l.dump();
  EXPECT_TRUE(daemon.Stop());
}

TEST_P(LifecycleE2E, SighupReloadChangesWorkersAndLogsWhatChanged) {
  DaemonProcess daemon;
  ASSERT_TRUE(
      daemon.Start({.store = GetParam(),
                    .config = "[workers]\nmin = 2\nmax = 8\n[queues]\ninteractive = 50\n"}));
  EXPECT_EQ(daemon.Status()["workers"]["max"], 8);
  ASSERT_TRUE(daemon.WriteConfig("[workers]\nmin = 1\nmax = 4\n[queues]\ninteractive = 60\n"));
  daemon.Signal(SIGHUP);
  ASSERT_TRUE(WaitFor([&] { return daemon.Status()["workers"]["max"] == 4; }))
      << daemon.StderrText();
  json s = daemon.Status();
  EXPECT_EQ(s["workers"]["min"], 1);
  EXPECT_EQ(s["workers"]["limit"], 4);
  EXPECT_EQ(s["reloads"], 1);
  // Queue capacities need a restart: unchanged, and the log says so.
  EXPECT_EQ(s["queues"]["interactive"]["capacity"], 50);
  EXPECT_NE(daemon.WaitForLog("reload: [workers] max: 8 -> 4"), "") << daemon.StderrText();
  EXPECT_NE(daemon.WaitForLog("reload: [workers] min: 2 -> 1"), "") << daemon.StderrText();
  EXPECT_NE(daemon.WaitForLog("reload: SIGHUP received"), "") << daemon.StderrText();
  std::string restart = daemon.WaitForLog("[queues] interactive: 50 -> 60");
  EXPECT_NE(restart.find("restart"), std::string::npos) << daemon.StderrText();
  EXPECT_TRUE(daemon.Stop());
}

TEST_P(LifecycleE2E, ReloadOpReportsWhatChanged) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.store = GetParam(), .config = "[workers]\nmax = 8\n"}));
  ASSERT_TRUE(daemon.WriteConfig("[workers]\nmax = 5\n"));
  json answer = daemon.CallOk({{"op", "reload"}});
  ASSERT_TRUE(answer["changed"].is_array()) << answer.dump();
  EXPECT_EQ(answer["changed"], json::array({"[workers] max: 8 -> 5"})) << answer.dump();
  EXPECT_EQ(daemon.Status()["workers"]["max"], 5);
  // Logged as a SIGHUP reload is: the trigger, then what changed.
  EXPECT_NE(daemon.WaitForLog("reload: requested over the control socket"), "")
      << daemon.StderrText();
  EXPECT_NE(daemon.WaitForLog("reload: [workers] max: 8 -> 5"), "") << daemon.StderrText();
  EXPECT_TRUE(daemon.Stop());
}

TEST_P(LifecycleE2E, ReloadWithABrokenConfigKeepsRunningAndReportsTheError) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.store = GetParam(), .config = "[workers]\nmax = 8\n"}));
  ASSERT_TRUE(daemon.WriteConfigRaw("[workers]\nmax = = 3\n"));
  daemon.Signal(SIGHUP);
  std::string logged = daemon.WaitForLog("reload failed");
  ASSERT_NE(logged, "") << daemon.StderrText();
  EXPECT_NE(logged.find(daemon.ConfigPath() + ":2:"), std::string::npos) << logged;
  EXPECT_NE(logged.find("max"), std::string::npos) << logged;
  EXPECT_TRUE(daemon.Running());
  EXPECT_EQ(daemon.Status()["workers"]["max"], 8);

  // The reload op answers with the same error.
  ASSERT_TRUE(daemon.WriteConfigRaw("[workers]\nmax = 8\nfrobnicate = 1\n"));
  auto answer = daemon.Call({{"op", "reload"}});
  ASSERT_TRUE(answer.ok());
  EXPECT_EQ(answer.value()["ok"], false) << answer.value().dump();
  EXPECT_EQ(answer.value()["error"]["code"], "invalid_config");
  std::string message = testing::ErrorMessage(answer.value());
  EXPECT_NE(message.find(daemon.ConfigPath() + ":3:"), std::string::npos) << message;
  EXPECT_NE(message.find("frobnicate"), std::string::npos) << message;
  // The failure is logged as a failed SIGHUP reload is.
  std::string op_logged = daemon.WaitForLog("frobnicate");
  EXPECT_NE(op_logged.find("reload failed, keeping the running config"), std::string::npos)
      << daemon.StderrText();
  EXPECT_EQ(daemon.Status()["workers"]["max"], 8);
  EXPECT_TRUE(daemon.Stop());
}

TEST_P(LifecycleE2E, ShutdownUnderLoadFinishesEveryAcknowledgedJob) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.store = GetParam(), .config = WorkersConfig(4, 4)}));
  std::vector<std::string> keys;
  for (int i = 0; i < 20; ++i) {
    keys.push_back("load" + std::to_string(i));
    daemon.SubmitNoop(keys.back(), 200);
  }
  daemon.Signal(SIGTERM);
  auto exit = daemon.WaitExit();
  ASSERT_TRUE(exit.has_value()) << "no exit within the deadline\n" << daemon.StderrText();
  EXPECT_EQ(exit->ToString(), "exit 0") << daemon.StderrText();
  auto summary = ShutdownSummary(daemon.StderrText());
  ASSERT_TRUE(summary.has_value()) << daemon.StderrText();
  // Memory: every acknowledged job runs before the exit. PostgreSQL: the
  // running ones finish, the rest go back to the table for the next start.
  if (!Pg()) {
    EXPECT_EQ(summary->done, 20) << daemon.StderrText();
  }
  EXPECT_EQ(summary->failed, 0);
  EXPECT_EQ(summary->cancelled, 0);
  EXPECT_GE(daemon.CountMessages("STOPPING=1"), 1u);
  // The socket file is gone with the daemon.
  EXPECT_FALSE(testing::PathExists(daemon.SocketPath()));
  if (Pg()) ExpectTheNextDaemonFinishes(daemon, keys);
}

TEST_P(LifecycleE2E, SubmitsAfterSigtermGetUnavailable) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.store = GetParam(), .config = WorkersConfig(2, 2)}));
  // A long job keeps the drain open until the test has asked what it wants.
  daemon.SubmitNoop("holder", 60000);
  daemon.SubmitNoop("quick", 100);
  // Both have started (with PostgreSQL, jobs a claim brings in after the
  // signal go straight back to the table).
  ASSERT_TRUE(WaitFor([&] {
    json s = daemon.Status();
    return s["jobs"]["running"].get<int>() + s["jobs"]["done"].get<int>() >= 2;
  }));
  ControlClient client;  // connected before the signal; the listener stays open while draining
  ASSERT_TRUE(client.Connect(daemon.SocketPath()).ok());
  daemon.Signal(SIGTERM);
  ASSERT_TRUE(daemon.WaitForMessage("STOPPING=1"));

  auto late = client.Call({{"op", "submit"}, {"kind", "noop"}, {"key", "late"}, {"id", 9}});
  ASSERT_TRUE(late.ok()) << late.status().ToString();
  EXPECT_EQ(late.value()["ok"], false) << late.value().dump();
  EXPECT_EQ(late.value()["id"], 9);
  EXPECT_EQ(late.value()["error"]["code"], "unavailable");
  EXPECT_FALSE(testing::ErrorMessage(late.value()).empty());
  auto batch = client.Call({{"op", "submit"}, {"jobs", {{{"kind", "noop"}}}}});
  ASSERT_TRUE(batch.ok());
  EXPECT_EQ(batch.value()["error"]["code"], "unavailable");
  auto status = client.Call({{"op", "status"}});
  ASSERT_TRUE(status.ok());
  EXPECT_EQ(status.value()["state"], "draining");

  auto cancel = client.Call({{"op", "cancel"}, {"key", "holder"}});
  ASSERT_TRUE(cancel.ok());
  EXPECT_EQ(cancel.value()["cancelled"], true) << cancel.value().dump();
  auto exit = daemon.WaitExit();
  ASSERT_TRUE(exit.has_value()) << daemon.StderrText();
  EXPECT_EQ(exit->ToString(), "exit 0") << daemon.StderrText();
  auto summary = ShutdownSummary(daemon.StderrText());
  ASSERT_TRUE(summary.has_value()) << daemon.StderrText();
  EXPECT_EQ(summary->done, 1);  // "quick"; "late" was never accepted
  // The cancelled holder: its cancelled row is in the table with PostgreSQL.
  if (!Pg()) {
    EXPECT_EQ(summary->cancelled, 1);
  }
}

TEST_P(LifecycleE2E, DrainOpFinishesQueuedWorkAndExits) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.store = GetParam(), .config = WorkersConfig(1, 1)}));
  std::vector<std::string> keys = {"d0", "d1", "d2"};
  for (const auto& key : keys) daemon.SubmitNoop(key, 50);
  // One has started (with PostgreSQL, a claim that is still in flight when
  // the drain comes brings jobs that go straight back to the table).
  ASSERT_TRUE(WaitFor([&] {
    json s = daemon.Status();
    return s["jobs"]["running"].get<int>() + s["jobs"]["done"].get<int>() >= 1;
  }));
  json answer = daemon.CallOk({{"op", "drain"}});
  EXPECT_EQ(answer["draining"], true);
  auto exit = daemon.WaitExit();
  ASSERT_TRUE(exit.has_value()) << daemon.StderrText();
  EXPECT_EQ(exit->ToString(), "exit 0") << daemon.StderrText();
  auto summary = ShutdownSummary(daemon.StderrText());
  ASSERT_TRUE(summary.has_value()) << daemon.StderrText();
  if (Pg()) {
    EXPECT_GE(summary->done, 1);  // the running one; the rest go back to the table
    ExpectTheNextDaemonFinishes(daemon, keys);
  } else {
    EXPECT_EQ(summary->done, 3);
  }
}

TEST_P(LifecycleE2E, ShortGraceCancelsRunningJobsAndStillExitsZero) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.store = GetParam(), .config = WorkersConfig(2, 2) + R"([daemon]
shutdown_grace_s = 1
)"}));
  for (int i = 0; i < 5; ++i) daemon.SubmitNoop("long" + std::to_string(i), 60000);
  ASSERT_TRUE(WaitFor([&] { return daemon.Status()["workers"]["busy"] == 2; }));
  daemon.Signal(SIGTERM);
  auto exit = daemon.WaitExit();
  ASSERT_TRUE(exit.has_value()) << "still running long after the 1 s grace\n"
                                << daemon.StderrText();
  EXPECT_EQ(exit->ToString(), "exit 0") << daemon.StderrText();
  EXPECT_NE(daemon.WaitForLog("shutdown_grace_s passed"), "") << daemon.StderrText();
  auto summary = ShutdownSummary(daemon.StderrText());
  ASSERT_TRUE(summary.has_value()) << daemon.StderrText();
  EXPECT_EQ(summary->done, 0);
  if (Pg()) {
    // Aborted and released jobs go back to the table, not to cancelled.
    EXPECT_EQ(summary->cancelled, 0);
    EXPECT_NE(daemon.WaitForLog("they go back to the queue"), "") << daemon.StderrText();
  } else {
    EXPECT_EQ(summary->cancelled, 5) << "2 running aborted + 3 queued released";
  }
}

TEST_P(LifecycleE2E, SecondSigtermForcesAFastExit) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.store = GetParam(), .config = WorkersConfig(2, 2) + R"([daemon]
shutdown_grace_s = 3600
)"}));
  daemon.SubmitNoop("long1", 60000);
  daemon.SubmitNoop("long2", 60000);
  ASSERT_TRUE(WaitFor([&] { return daemon.Status()["workers"]["busy"] == 2; }));
  daemon.Signal(SIGTERM);
  ASSERT_TRUE(daemon.WaitForMessage("STOPPING=1"));
  EXPECT_TRUE(daemon.Running()) << "the first SIGTERM waits for running jobs";
  daemon.Signal(SIGTERM);
  // The deadline is far below both the grace (1 h) and the jobs (60 s).
  auto exit = daemon.WaitExit();
  ASSERT_TRUE(exit.has_value()) << "the second SIGTERM did not stop it\n" << daemon.StderrText();
  EXPECT_EQ(exit->ToString(), "exit 0") << daemon.StderrText();
  auto summary = ShutdownSummary(daemon.StderrText());
  ASSERT_TRUE(summary.has_value()) << daemon.StderrText();
  if (Pg()) {
    // The two running jobs are aborted and handed back to the table.
    EXPECT_NE(daemon.WaitForLog("aborting 2 running jobs; they go back to the queue"), "")
        << daemon.StderrText();
    EXPECT_EQ(summary->cancelled, 0);
  } else {
    EXPECT_NE(daemon.WaitForLog("stopping now"), "") << daemon.StderrText();
    EXPECT_EQ(summary->cancelled, 2);
  }
}

TEST_P(LifecycleE2E, StaleSocketFileIsReplaced) {
  DaemonProcess daemon;
  std::string path = daemon.dir().File("ctl.sock");
  ASSERT_TRUE(testing::MakeStaleSocket(path)) << std::strerror(errno);
  ASSERT_TRUE(testing::PathExists(path));
  ASSERT_TRUE(daemon.Start({.store = GetParam(), .socket_path = path}));
  auto ping = daemon.Call({{"op", "ping"}});
  ASSERT_TRUE(ping.ok()) << ping.status().ToString();
  EXPECT_EQ(ping.value()["pong"], true);
  EXPECT_NE(daemon.WaitForLog("stale"), "") << daemon.StderrText();
  EXPECT_TRUE(daemon.Stop());
}

TEST_P(LifecycleE2E, SecondDaemonOnALiveSocketRefusesToStart) {
  DaemonProcess first;
  ASSERT_TRUE(first.Start({.store = GetParam()}));
  DaemonProcess second;
  ASSERT_TRUE(
      second.Start({.store = GetParam(), .socket_path = first.SocketPath(), .wait_ready = false}));
  auto exit = second.WaitExit();
  ASSERT_TRUE(exit.has_value()) << second.StderrText();
  EXPECT_EQ(exit->ToString(), "exit 1") << second.StderrText();
  std::string err = second.StderrText();
  EXPECT_NE(err.find(first.SocketPath()), std::string::npos) << err;
  EXPECT_NE(err.find("already"), std::string::npos) << err;
  EXPECT_EQ(second.CountMessages("READY=1"), 0u);
  // The first daemon keeps its socket and goes on serving.
  EXPECT_TRUE(testing::PathExists(first.SocketPath()));
  auto ping = first.Call({{"op", "ping"}});
  ASSERT_TRUE(ping.ok()) << ping.status().ToString();
  EXPECT_EQ(ping.value()["pong"], true);
  EXPECT_TRUE(first.Stop());
}

TEST(LifecycleE2EOffline, CheckConfigExitsZeroForAGoodFile) {
  testing::TempDir dir;
  std::string path = dir.File("good.conf");
  ASSERT_TRUE(testing::WriteTextFile(path, "[workers]\nmin = 2\nmax = 4\n"));
  ProcessOutput out = RunProcess({DIGESTD_BIN, "--config", path, "--check-config"});
  ASSERT_TRUE(out.status.has_value());
  EXPECT_EQ(out.status->ToString(), "exit 0") << out.err;
  EXPECT_NE(out.out.find("ok"), std::string::npos) << out.out;
}

TEST(LifecycleE2EOffline, CheckConfigExitsOneWithAOneLineError) {
  testing::TempDir dir;
  struct Case {
    const char* text;
    const char* where;
    const char* key;
  };
  const Case cases[] = {
      {"[workers]\nmin = 2\nmaxx = 4\n", ":3:", "maxx"},      // unknown key
      {"[workers]\nmin = \"two\"\n", ":2:", "min"},           // wrong type
      {"[queues]\n\nbackground = 0\n", ":3:", "background"},  // out of range
      {"[workers]\nmin = 2\nmax = = 4\n", ":3:", "max"},      // syntax error
      {"[wrokers]\nmin = 2\n", ":1:", "wrokers"},             // unknown section
      {"[workers]\nmin = 9\nmax = 3\n", ":2:", "min"},        // min > max
      // A write ring no larger than max: the daemon could not start.
      {"[workers]\nmax = 8\n[queues]\nwrite = 8\n", ":4:", "[queues] write"},
  };
  int n = 0;
  for (const auto& c : cases) {
    std::string path = dir.File("bad" + std::to_string(n++) + ".conf");
    ASSERT_TRUE(testing::WriteTextFile(path, c.text));
    ProcessOutput out = RunProcess({DIGESTD_BIN, "--config", path, "--check-config"});
    ASSERT_TRUE(out.status.has_value());
    EXPECT_EQ(out.status->ToString(), "exit 1") << c.text;
    auto lines = SplitLines(out.err);
    if (!lines.empty() && lines.back().empty()) lines.pop_back();
    ASSERT_EQ(lines.size(), 1u) << "not one line:\n" << out.err;
    EXPECT_NE(lines[0].find(path + c.where), std::string::npos) << lines[0];
    EXPECT_NE(lines[0].find(c.key), std::string::npos) << lines[0];
  }
  ProcessOutput missing =
      RunProcess({DIGESTD_BIN, "--config", dir.File("absent.conf"), "--check-config"});
  ASSERT_TRUE(missing.status.has_value());
  EXPECT_EQ(missing.status->ToString(), "exit 1");
  EXPECT_NE(missing.err.find("absent.conf"), std::string::npos) << missing.err;
}

TEST(LifecycleE2EOffline, VersionAndHelp) {
  ProcessOutput version = RunProcess({DIGESTD_BIN, "--version"});
  ASSERT_TRUE(version.status.has_value());
  EXPECT_EQ(version.status->ToString(), "exit 0");
  EXPECT_EQ(version.out, std::string("digestd ") + DIGESTD_VERSION + "\n");
  ProcessOutput help = RunProcess({DIGESTD_BIN, "--help"});
  ASSERT_TRUE(help.status.has_value());
  EXPECT_EQ(help.status->ToString(), "exit 0");
  EXPECT_NE(help.out.find("--check-config"), std::string::npos) << help.out;
  ProcessOutput bad = RunProcess({DIGESTD_BIN, "--frobnicate"});
  ASSERT_TRUE(bad.status.has_value());
  EXPECT_EQ(bad.status->ToString(), "exit 2");
  EXPECT_NE(bad.err.find("--frobnicate"), std::string::npos) << bad.err;
}

TEST_P(LifecycleE2E, DigestctlStatusPrintsATableAndJson) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.store = GetParam(), .config = "[daemon]\nnode_id = \"ctl-node\"\n"}));
  ProcessOutput table = RunProcess({DIGESTCTL_BIN, "--socket", daemon.SocketPath(), "status"});
  ASSERT_TRUE(table.status.has_value());
  EXPECT_EQ(table.status->ToString(), "exit 0") << table.err;
  for (const char* word :
       {"ctl-node", "workers", "interactive", "background", "jobs", "latency", "capacity"}) {
    EXPECT_NE(table.out.find(word), std::string::npos) << word << " not in:\n" << table.out;
  }
  EXPECT_NE(table.out.find("pid " + std::to_string(daemon.Pid())), std::string::npos) << table.out;

  ProcessOutput raw =
      RunProcess({DIGESTCTL_BIN, "--socket", daemon.SocketPath(), "--json", "status"});
  ASSERT_TRUE(raw.status.has_value());
  EXPECT_EQ(raw.status->ToString(), "exit 0") << raw.err;
  json j = json::parse(raw.out, nullptr, false);
  ASSERT_TRUE(j.is_object()) << raw.out;
  EXPECT_EQ(j["pid"], daemon.Pid());
  EXPECT_EQ(j["node_id"], "ctl-node");
  EXPECT_TRUE(j.contains("workers"));

  // The socket can also come from DIGESTD_SOCKET.
  ProcessOutput by_env = RunProcess({DIGESTCTL_BIN, "ping"}, testing::kDeadline,
                                    {"DIGESTD_SOCKET=" + daemon.SocketPath()});
  ASSERT_TRUE(by_env.status.has_value());
  EXPECT_EQ(by_env.status->ToString(), "exit 0") << by_env.err;
  EXPECT_TRUE(daemon.Stop());
}

TEST(LifecycleE2EOffline, DigestctlUsageErrorsExitTwoBeforeConnecting) {
  testing::TempDir dir;
  std::string nothing = dir.File("none.sock");
  ProcessOutput no_key = RunProcess({DIGESTCTL_BIN, "--socket", nothing, "result"});
  ASSERT_TRUE(no_key.status.has_value());
  EXPECT_EQ(no_key.status->ToString(), "exit 2") << no_key.err;
  EXPECT_NE(no_key.err.find("KEY"), std::string::npos) << no_key.err;
  ProcessOutput wait_only =
      RunProcess({DIGESTCTL_BIN, "--socket", nothing, "result", "--wait", "1s"});
  ASSERT_TRUE(wait_only.status.has_value());
  EXPECT_EQ(wait_only.status->ToString(), "exit 2") << wait_only.err;

  std::string empty = dir.File("empty.ndjson");
  ASSERT_TRUE(testing::WriteTextFile(empty, "\n  \n"));
  ProcessOutput no_jobs =
      RunProcess({DIGESTCTL_BIN, "--socket", nothing, "submit", "--batch", empty});
  ASSERT_TRUE(no_jobs.status.has_value());
  EXPECT_EQ(no_jobs.status->ToString(), "exit 2") << no_jobs.err;
  EXPECT_NE(no_jobs.err.find("no jobs"), std::string::npos) << no_jobs.err;
}

TEST_P(LifecycleE2E, DigestctlSubmitBatchExitsNonZeroWhenNothingWasAccepted) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.store = GetParam()}));
  std::string bad = daemon.dir().File("bad.ndjson");
  ASSERT_TRUE(testing::WriteTextFile(bad,
                                     "{\"kind\":\"frobnicate\",\"key\":\"x1\"}\n"
                                     "{\"kind\":\"frobnicate\",\"key\":\"x2\"}\n"));
  ProcessOutput none =
      RunProcess({DIGESTCTL_BIN, "--socket", daemon.SocketPath(), "submit", "--batch", bad});
  ASSERT_TRUE(none.status.has_value());
  EXPECT_EQ(none.status->ToString(), "exit 1") << none.out << none.err;

  std::string good = daemon.dir().File("good.ndjson");
  ASSERT_TRUE(testing::WriteTextFile(good, "{\"kind\":\"noop\",\"key\":\"g1\"}\n"));
  ProcessOutput one =
      RunProcess({DIGESTCTL_BIN, "--socket", daemon.SocketPath(), "submit", "--batch", good});
  ASSERT_TRUE(one.status.has_value());
  EXPECT_EQ(one.status->ToString(), "exit 0") << one.out << one.err;
  EXPECT_EQ(daemon.CallOk({{"op", "result"}, {"key", "g1"}, {"wait_ms", 10000}})["status"], "done");
  EXPECT_TRUE(daemon.Stop());
}

// digestctl events prints each state change as it happens, and digestctl
// watch redraws with the group's progress, both from `subscribe` (no
// polling); both end with exit 3 when digestd goes away.
TEST_P(LifecycleE2E, DigestctlEventsAndWatchFollowJobsAsTheyChange) {
  DaemonProcess daemon;
  ASSERT_TRUE(daemon.Start({.store = GetParam()}));
  ProcessOutput events, watch;
  std::thread t1([&] {
    events = RunProcess(
        {DIGESTCTL_BIN, "--socket", daemon.SocketPath(), "events", "--prefix", "ev:"}, 60s);
  });
  std::thread t2([&] {
    watch = RunProcess(
        {DIGESTCTL_BIN, "--socket", daemon.SocketPath(), "watch", "--interval", "10s"}, 60s);
  });
  ASSERT_TRUE(WaitFor([&] { return daemon.Status()["events"].value("subscribers", 0) == 2; }, 10s));
  for (const char* key : {"ev:1", "ev:2"}) {
    daemon.CallOk({{"op", "submit"},
                   {"kind", "noop"},
                   {"key", key},
                   {"group", "g1"},
                   {"input", {{"sleep_ms", 50}}}});
  }
  daemon.SubmitNoop("other", 1);
  EXPECT_EQ(daemon.CallOk({{"op", "result"}, {"group", "g1"}, {"wait_ms", 10000}})["status"],
            "completed");
  std::this_thread::sleep_for(500ms);  // watch's redraw after the last event
  EXPECT_TRUE(daemon.Stop());
  t1.join();
  t2.join();
  ASSERT_TRUE(events.status.has_value());
  EXPECT_EQ(events.status->ToString(), "exit 3") << events.err;
  EXPECT_NE(events.err.find("closed the connection"), std::string::npos) << events.err;
  for (const char* want : {"queued", "started", "done"}) {
    for (const char* key : {"ev:1", "ev:2"}) {
      bool found = false;
      for (const auto& line : SplitLines(events.out)) {
        if (line.find(want) != std::string::npos && line.find(key) != std::string::npos)
          found = true;
      }
      EXPECT_TRUE(found) << want << " " << key << " in:\n" << events.out;
    }
  }
  EXPECT_EQ(events.out.find("other"), std::string::npos) << events.out;
  ASSERT_TRUE(watch.status.has_value());
  EXPECT_EQ(watch.status->ToString(), "exit 3") << watch.err;
  // The last screen: the group at 2 of 2.
  size_t last = watch.out.rfind("groups (jobs seen since watch began)");
  ASSERT_NE(last, std::string::npos) << watch.out.substr(0, 2000);
  std::string tail = watch.out.substr(last);
  EXPECT_NE(tail.find("g1"), std::string::npos) << tail;
  EXPECT_NE(tail.find("2/2"), std::string::npos) << tail;
}

TEST(LifecycleE2EOffline, DigestctlExitsThreeWithAOneLineReasonWhenNoDaemonRuns) {
  testing::TempDir dir;
  std::string nothing = dir.File("none.sock");
  std::string stale = dir.File("stale.sock");
  ASSERT_TRUE(testing::MakeStaleSocket(stale)) << std::strerror(errno);
  for (const std::string& path : {nothing, stale}) {
    for (const char* cmd : {"status", "ping"}) {
      ProcessOutput out = RunProcess({DIGESTCTL_BIN, "--socket", path, cmd});
      ASSERT_TRUE(out.status.has_value());
      EXPECT_EQ(out.status->ToString(), "exit 3") << path << " " << cmd << ": " << out.err;
      auto lines = SplitLines(out.err);
      if (!lines.empty() && lines.back().empty()) lines.pop_back();
      ASSERT_EQ(lines.size(), 1u) << out.err;
      EXPECT_EQ(lines[0].rfind("digestctl: ", 0), 0u) << lines[0];
      EXPECT_NE(lines[0].find("not running"), std::string::npos) << lines[0];
      EXPECT_NE(lines[0].find(path), std::string::npos) << lines[0];
      EXPECT_TRUE(out.out.empty()) << out.out;
    }
  }
}

}  // namespace
}  // namespace digestd
