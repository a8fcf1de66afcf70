// The real digestd with [jobs] store = "postgres" against a real PostgreSQL:
// durable acceptance, duplicates, NOTIFY, result waits, a 100,000-job
// backlog in bounded memory, shutdown under load, two daemons on one
// database, lease expiry and the lease guard, a database that is down at
// start, restarted mid-run or whose backend stalls before a commit, and a
// kill -9 loop. Every check reads the table itself, never the daemon's word.
#include <libpq-fe.h>
#include <signal.h>
#include <sys/select.h>
#include <unistd.h>

#include <atomic>
#include <random>
#include <set>
#include <string>
#include <thread>

#include "../support/daemon_harness.h"
#include "../support/pg_fixture.h"

namespace digestd {
namespace {

using nlohmann::json;
using testing::DaemonOptions;
using testing::DaemonProcess;
using testing::PgServer;
using testing::WaitFor;
using namespace std::chrono_literals;

struct Knobs {
  std::string node_id = "n1";
  int workers_max = 4;
  int lease_s = 60;
  int recover_interval_s = 15;
  int batch_ms = 20;
  int grace_s = 10;
  int ready_timeout_s = 10;
  int max_attempts = 3;
  int interactive_reserved = 1;
  std::string extra;  // more TOML, appended
};

std::string ConfigFor(const std::string& conninfo, const Knobs& k) {
  return "[jobs]\nstore = \"postgres\"\nmax_batch = 5000\n"
         "[daemon]\nnode_id = \"" +
         k.node_id + "\"\nshutdown_grace_s = " + std::to_string(k.grace_s) +
         "\n[workers]\nmin = 1\nmax = " + std::to_string(k.workers_max) +
         "\ninteractive_reserved = " + std::to_string(k.interactive_reserved) +
         "\n[backend]\nkind = \"extractive\"\nmax_attempts = " + std::to_string(k.max_attempts) +
         "\n"
         "[writer]\nbatch_ms = " +
         std::to_string(k.batch_ms) + "\n[postgres]\nconninfo = " + json(conninfo).dump() +
         "\nlease_s = " + std::to_string(k.lease_s) +
         "\nrecover_interval_s = " + std::to_string(k.recover_interval_s) +
         "\nready_timeout_s = " + std::to_string(k.ready_timeout_s) +
         "\nreconnect_max_ms = 500\nbacklog_interval_ms = 200\n" + k.extra;
}

json Call(const DaemonProcess& d, const json& request, int timeout_ms = 20000) {
  auto answer = d.Call(request, timeout_ms);
  EXPECT_TRUE(answer.ok()) << request.dump().substr(0, 200) << ": " << answer.status().ToString();
  return answer.ok() ? answer.value() : json();
}

json Noop(const std::string& key, int sleep_ms, const std::string& group = "") {
  json j = {{"kind", "noop"}, {"key", key}, {"input", {{"sleep_ms", sleep_ms}}}};
  if (!group.empty()) j["group"] = group;
  return j;
}

// Submits `keys` in batches; returns the keys the daemon acknowledged.
std::vector<std::string> SubmitAll(const DaemonProcess& d, const std::vector<std::string>& keys,
                                   int sleep_ms, size_t batch = 500) {
  std::vector<std::string> acked;
  for (size_t i = 0; i < keys.size(); i += batch) {
    json jobs = json::array();
    for (size_t j = i; j < std::min(keys.size(), i + batch); ++j)
      jobs.push_back(Noop(keys[j], sleep_ms));
    json answer = Call(d, {{"op", "submit"}, {"jobs", jobs}});
    if (answer.value("ok", false) != true) continue;
    for (const auto& a : answer["jobs"]) {
      if (!a.contains("error")) acked.push_back(a["key"]);
    }
  }
  return acked;
}

std::vector<std::string> Keys(const std::string& prefix, int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back(prefix + std::to_string(i));
  return out;
}

class DurableE2E : public testing::PgTest {
 protected:
  std::string Count(const std::string& where) {
    return Scalar("SELECT count(*) FROM digestd.jobs WHERE " + where);
  }
  // Waits until `where` matches `n` rows.
  bool WaitCount(const std::string& where, int n, std::chrono::milliseconds t = 60s) {
    return WaitFor([&] { return Count(where) == std::to_string(n); }, t);
  }
  ::testing::AssertionResult Start(DaemonProcess& d, const Knobs& k = {}) {
    DaemonOptions o;
    o.config = ConfigFor(conninfo(), k);
    return d.Start(o, 30s);
  }
  // Empties the job table (there is none before a daemon has migrated:
  // ctest runs each test in a process, and a suite, of its own).
  void Clear() {
    ASSERT_TRUE(server()
                    ->Exec(db(),
                           "DO $$ BEGIN IF to_regclass('digestd.jobs') IS NOT NULL THEN "
                           "TRUNCATE digestd.jobs; END IF; END $$")
                    .ok());
  }
};

TEST_F(DurableE2E, AckedSubmitIsAlreadyCommittedAndRunsToDone) {
  DaemonProcess d;
  ASSERT_TRUE(Start(d));
  Clear();
  json a =
      Call(d, {{"op", "submit"}, {"kind", "noop"}, {"key", "k1"}, {"input", {{"sleep_ms", 50}}}});
  ASSERT_EQ(a["ok"], true) << a.dump();
  EXPECT_EQ(a["existing"], false);
  // Read on another connection right after the ack: only a committed row shows.
  EXPECT_EQ(Count("key = 'k1'"), "1");
  json r = Call(d, {{"op", "result"}, {"key", "k1"}, {"wait_ms", 10000}});
  ASSERT_EQ(r["ok"], true) << r.dump();
  EXPECT_EQ(r["status"], "done") << r.dump();
  EXPECT_EQ(r["result"]["slept_ms"], 50);
  EXPECT_EQ(Scalar("SELECT status || ' ' || attempts || ' ' || (result->>'slept_ms') || ' ' || "
                   "lease_owner FROM digestd.jobs WHERE key = 'k1'"),
            "done 1 50 n1");
  json s = Call(d, {{"op", "status"}});
  EXPECT_EQ(s["db"]["state"], "up") << s["db"].dump();
  EXPECT_GE(s["db"]["writer"]["batches"].get<int>(), 2);
  EXPECT_TRUE(d.Stop());
}

TEST_F(DurableE2E, IdleDaemonInsertsASubmitAlreadyClaimedAndABusyOneQueuesIt) {
  DaemonProcess d;
  Knobs k;
  k.workers_max = 2;
  ASSERT_TRUE(Start(d, k));
  Clear();
  // Once a claim has found the lane empty, a submit is created running
  // under this node: the answer (read in the same transaction) says so.
  int n = 0;
  json a;
  ASSERT_TRUE(WaitFor([&] {
    a = Call(d, {{"op", "submit"}, {"kind", "noop"}, {"key", "idle" + std::to_string(n++)}});
    return a.value("status", "") == "running";
  })) << a.dump();
  std::string key = a["key"];
  EXPECT_TRUE(WaitFor([&] {
    return Count("key = '" + key +
                 "' AND status = 'done' AND attempts = 1 AND lease_owner = 'n1'") == "1";
  }));
  // A backlog in the table: new submits queue behind it instead of jumping it.
  ASSERT_TRUE(server()
                  ->Exec(db(),
                         "INSERT INTO digestd.jobs (key, kind, input) SELECT 'old' || g, "
                         "'noop', '{\"sleep_ms\": 200}' FROM generate_series(1, 300) g")
                  .ok());
  ASSERT_TRUE(
      WaitFor([&] { return std::stoi(Count("key LIKE 'old%' AND status <> 'queued'")) > 0; }));
  json b = Call(d, {{"op", "submit"}, {"kind", "noop"}, {"key", "behind"}});
  EXPECT_EQ(b["status"], "queued") << b.dump();
  d.Signal(SIGKILL);
}

TEST_F(DurableE2E, DuplicateKeyReturnsTheExistingJobAndCreatesNothing) {
  DaemonProcess d;
  ASSERT_TRUE(Start(d));
  Clear();
  // The same kind and input each time (another input would be a conflict).
  json first =
      Call(d, {{"op", "submit"}, {"kind", "noop"}, {"key", "dup"}, {"input", {{"sleep_ms", 0}}}});
  ASSERT_EQ(first["existing"], false) << first.dump();
  json again =
      Call(d, {{"op", "submit"}, {"kind", "noop"}, {"key", "dup"}, {"input", {{"sleep_ms", 0}}}});
  ASSERT_EQ(again["ok"], true) << again.dump();
  EXPECT_EQ(again["existing"], true) << again.dump();
  json batch =
      Call(d, {{"op", "submit"}, {"jobs", {Noop("dup", 0), Noop("fresh", 0), Noop("fresh", 0)}}});
  ASSERT_EQ(batch["ok"], true) << batch.dump();
  EXPECT_EQ(batch["jobs"][0]["existing"], true);
  EXPECT_EQ(batch["jobs"][1]["existing"], false);
  EXPECT_EQ(batch["jobs"][2]["existing"], true);
  EXPECT_EQ(Count("key IN ('dup', 'fresh')"), "2");
  // Finished here, so the next test's daemon neither runs them nor tells
  // their keys to its listener.
  for (const char* key : {"dup", "fresh"}) {
    json done = Call(d, {{"op", "result"}, {"key", key}, {"wait_ms", 10000}});
    EXPECT_EQ(done["status"], "done") << done.dump();
  }
  EXPECT_TRUE(d.Stop());
}

TEST_F(DurableE2E, ListeningClientHearsTheFinishedKey) {
  DaemonProcess d;
  ASSERT_TRUE(Start(d));
  PGconn* listener = PQconnectdb(conninfo().c_str());
  ASSERT_EQ(PQstatus(listener), CONNECTION_OK) << PQerrorMessage(listener);
  PQclear(PQexec(listener, "LISTEN digestd_done"));
  json a = Call(d, {{"op", "submit"}, {"kind", "noop"}, {"key", "heard:1"}});
  ASSERT_EQ(a["ok"], true);
  std::string payload;
  auto deadline = std::chrono::steady_clock::now() + 20s;
  while (payload.find("heard:1") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline) {
    int fd = PQsocket(listener);
    fd_set in;
    FD_ZERO(&in);
    FD_SET(fd, &in);
    timeval tv{0, 200000};
    select(fd + 1, &in, nullptr, nullptr, &tv);
    PQconsumeInput(listener);
    while (PGnotify* n = PQnotifies(listener)) {
      payload += n->extra;
      PQfreemem(n);
    }
  }
  PQfinish(listener);
  EXPECT_NE(payload.find("\"heard:1\""), std::string::npos) << payload;
  EXPECT_TRUE(json::parse(payload, nullptr, false).is_array()) << payload;
  EXPECT_TRUE(d.Stop());
}

TEST_F(DurableE2E, ResultWaitsWakeOnCommitAndGroupsCollectTheirParts) {
  DaemonProcess d;
  Knobs k;
  k.batch_ms = 200;
  ASSERT_TRUE(Start(d, k));
  json a = Call(d, {{"op", "submit"}, {"jobs", {Noop("g:1", 300, "g"), Noop("g:2", 50, "g")}}});
  ASSERT_EQ(a["accepted"], 2) << a.dump();
  json early = Call(d, {{"op", "result"}, {"group", "g"}});
  ASSERT_EQ(early["ok"], true) << early.dump();
  EXPECT_NE(early["status"], "completed");
  auto t0 = std::chrono::steady_clock::now();
  json r = Call(d, {{"op", "result"}, {"group", "g"}, {"wait_ms", 20000}});
  double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_EQ(r["ok"], true) << r.dump();
  EXPECT_EQ(r["status"], "completed") << r.dump();
  EXPECT_EQ(r["ready"], 2);
  EXPECT_LT(waited, 15.0) << "the wait ended by its deadline, not by the commit";
  json missing = Call(d, {{"op", "result"}, {"key", "never"}, {"wait_ms", 100}});
  EXPECT_EQ(testing::ErrorCode(missing), "not_found") << missing.dump();
  EXPECT_TRUE(d.Stop());
}

int64_t RssKb(pid_t pid) {
  std::string text = testing::ReadTextFile("/proc/" + std::to_string(pid) + "/status");
  auto at = text.find("VmRSS:");
  return at == std::string::npos ? -1 : std::stoll(text.substr(at + 6));
}

TEST_F(DurableE2E, HundredThousandJobBacklogStaysInTheTableNotInMemory) {
  DaemonProcess d;
  Knobs k;
  k.workers_max = 2;
  k.grace_s = 1;
  ASSERT_TRUE(Start(d, k));
  Clear();
  ASSERT_TRUE(server()
                  ->Exec(db(),
                         "INSERT INTO digestd.jobs (key, kind, lane, input) SELECT "
                         "'one', 'noop', 1, '{\"sleep_ms\": 60000}'")
                  .ok());
  ASSERT_TRUE(WaitCount("status = 'running'", 1, 20s));
  int64_t before = RssKb(d.Pid());
  ASSERT_TRUE(server()
                  ->Exec(db(),
                         "INSERT INTO digestd.jobs (key, kind, lane, input) SELECT "
                         "'b:' || g, 'noop', 1, '{\"sleep_ms\": 60000}' FROM "
                         "generate_series(1, 100000) g")
                  .ok());
  // The background ring is refilled up to its low-water mark plus a claim
  // batch, never beyond its capacity; the rest waits in the table.
  json s;
  ASSERT_TRUE(WaitFor(
      [&] {
        s = Call(d, {{"op", "status"}});
        return s["queues"]["background"]["depth"].get<int>() >= 50 &&
               s["db"]["backlog"]["background"]["queued"].get<int64_t>() > 99000;
      },
      30s))
      << s.dump();
  std::this_thread::sleep_for(1s);  // several refill polls later: still bounded
  s = Call(d, {{"op", "status"}});
  EXPECT_LE(s["queues"]["background"]["depth"], s["queues"]["background"]["capacity"]);
  int64_t after = RssKb(d.Pid());
  int64_t held = s["db"]["leases"]["held"];
  std::printf("RSS %lld kB with 1 job, %lld kB with 100,001 (%lld held, ring %d)\n",
              static_cast<long long>(before), static_cast<long long>(after),
              static_cast<long long>(held), s["queues"]["background"]["capacity"].get<int>());
  EXPECT_LE(held, 200 + 2);
  EXPECT_LT(after - before, 24 * 1024) << "RSS grew with the backlog";
  // Stopping releases every claim: nothing stays running under this node.
  EXPECT_TRUE(d.Stop(30s));
  EXPECT_EQ(Count("status = 'running'"), "0");
  EXPECT_EQ(Count("status = 'queued'"), "100001");
}

// Every job start looks at both lanes' refill; a lane whose last claim came
// back empty is not claimed from again until work for it arrives (or the
// 500 ms poll), so a busy background lane does not keep sending empty claims
// for the idle interactive one.
TEST_F(DurableE2E, AnEmptyLaneIsNotClaimedFromAtEveryJobStart) {
  Clear();
  DaemonProcess d;
  Knobs k;
  k.workers_max = 8;
  ASSERT_TRUE(Start(d, k));
  auto keys = Keys("pace:", 400);
  auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(SubmitAll(d, keys, /*sleep_ms=*/10, 400).size(), 400u);
  ASSERT_TRUE(WaitCount("status = 'done' AND key LIKE 'pace:%'", 400));
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // Each 500 ms refill poll may find both lanes empty.
  int64_t polls = 2 * (static_cast<int64_t>(secs / 0.5) + 2);
  json s = Call(d, {{"op", "status"}});
  const json& claims = s["db"]["claims"];
  std::printf("%s\n", claims.dump().c_str());
  // (The submits that found the lane empty were created claimed.)
  EXPECT_GT(claims["jobs"].get<int64_t>(), 0) << claims.dump();
  EXPECT_LE(claims["jobs"].get<int64_t>(), 400) << claims.dump();
  // 400 starts (each looks at both lanes): the claims that took jobs, the
  // polls, and a few that found a lane empty -- not one per start.
  EXPECT_LE(claims["empty"].get<int64_t>(), polls + 4) << claims.dump() << " in " << secs << " s";
  EXPECT_LE(claims["sent"].get<int64_t>(), polls + 40) << claims.dump();
  EXPECT_GT(claims["background"]["start_rate_per_s"].get<double>(), 0) << claims.dump();
  // digestctl status shows the db block with the claims line.
  testing::ProcessOutput table =
      testing::RunProcess({DIGESTCTL_BIN, "--socket", d.SocketPath(), "status"});
  ASSERT_TRUE(table.status.has_value());
  for (const char* word : {"db ", "writer", "backlog", "claims", "sent", "empty"}) {
    EXPECT_NE(table.out.find(word), std::string::npos) << word << " not in:\n" << table.out;
  }
  EXPECT_TRUE(d.Stop());
}

TEST_F(DurableE2E, ShutdownUnderLoadReleasesUnstartedJobsAndLosesNothing) {
  Clear();
  auto keys = Keys("sd:", 400);
  {
    DaemonProcess d;
    ASSERT_TRUE(Start(d));
    ASSERT_EQ(SubmitAll(d, keys, 100).size(), keys.size());
    ASSERT_TRUE(WaitFor([&] { return std::stoi(Count("status = 'done'")) >= 8; }));
    EXPECT_TRUE(d.Stop(30s));
  }
  EXPECT_EQ(Count("status = 'running'"), "0");
  int queued = std::stoi(Count("status = 'queued'"));
  EXPECT_GT(queued, 0);
  EXPECT_EQ(Count("status = 'queued' AND attempts > 0"), "0") << "a release spent an attempt";
  EXPECT_EQ(std::to_string(queued + std::stoi(Count("status = 'done'"))), "400");
  DaemonProcess again;
  Knobs k;
  k.workers_max = 16;
  ASSERT_TRUE(Start(again, k));
  EXPECT_TRUE(WaitCount("status = 'done'", 400));
  EXPECT_EQ(Count("attempts <> 1"), "0");
  EXPECT_TRUE(again.Stop());
}

// A job another daemon runs is that daemon's: a group cancel here counts it
// as running elsewhere and names the node, a replacing submit is refused,
// and `jobs` and `retry` read the shared table.
TEST_F(DurableE2E, ManagementOpsSeeJobsThatAnotherDaemonRuns) {
  Clear();
  DaemonProcess a, b;
  Knobs ka, kb;
  ka.node_id = "runner";
  kb.node_id = "asker";
  ASSERT_TRUE(Start(a, ka));
  ASSERT_TRUE(Start(b, kb));
  Call(a, {{"op", "submit"},
           {"kind", "noop"},
           {"key", "far"},
           {"group", "fg"},
           {"input", {{"sleep_ms", 60000}}}});
  ASSERT_TRUE(WaitFor([&] {
    return Call(b, {{"op", "result"}, {"key", "far"}}).value("status", "") == "running";
  }));
  json replace = Call(b, {{"op", "submit"},
                          {"kind", "noop"},
                          {"key", "far"},
                          {"replace", true},
                          {"input", {{"sleep_ms", 1}}}});
  EXPECT_EQ(replace["error"].value("code", ""), "bad_state") << replace.dump();
  EXPECT_NE(replace["error"].value("message", "").find("runner"), std::string::npos)
      << replace.dump();
  json listed = Call(b, {{"op", "jobs"}, {"status", "running"}});
  ASSERT_EQ(listed["jobs"].size(), 1u) << listed.dump();
  EXPECT_EQ(listed["jobs"][0].value("node", ""), "runner") << listed.dump();

  json cancel = Call(b, {{"op", "cancel"}, {"group", "fg"}});
  EXPECT_EQ(cancel.value("cancelled", -1), 0) << cancel.dump();
  EXPECT_EQ(cancel.value("elsewhere", -1), 1) << cancel.dump();
  EXPECT_NE(cancel.value("message", "").find("runner"), std::string::npos) << cancel.dump();
  json there = Call(a, {{"op", "cancel"}, {"group", "fg"}});
  EXPECT_EQ(there.value("running", -1), 1) << there.dump();
  json ended = Call(b, {{"op", "result"}, {"key", "far"}, {"wait_ms", 10000}});
  EXPECT_EQ(ended.value("status", ""), "cancelled") << ended.dump();
  json retried = Call(b, {{"op", "retry"}, {"group", "fg"}});
  EXPECT_EQ(retried.value("retried", -1), 1) << retried.dump();
  // It runs (or waits) again, on either daemon: cancelled on both before
  // they stop, so neither waits out its shutdown grace for it.
  ASSERT_TRUE(WaitFor([&] {
    Call(a, {{"op", "cancel"}, {"group", "fg"}});
    Call(b, {{"op", "cancel"}, {"group", "fg"}});
    return Call(b, {{"op", "result"}, {"key", "far"}}).value("status", "") == "cancelled";
  }));
  EXPECT_TRUE(a.Stop());
  EXPECT_TRUE(b.Stop());
}

TEST_F(DurableE2E, TwoDaemonsShareOneDatabaseAndEachJobEndsOnce) {
  Clear();
  DaemonProcess a, b;
  Knobs ka, kb;
  ka.node_id = "node-a";
  kb.node_id = "node-b";
  ASSERT_TRUE(Start(a, ka));
  ASSERT_TRUE(Start(b, kb));
  auto ka_keys = Keys("two:a", 600);
  auto kb_keys = Keys("two:b", 600);
  std::vector<std::string> acked_a, acked_b;
  std::thread ta([&] { acked_a = SubmitAll(a, ka_keys, 5, 100); });
  std::thread tb([&] { acked_b = SubmitAll(b, kb_keys, 5, 100); });
  ta.join();
  tb.join();
  EXPECT_EQ(acked_a.size(), 600u);
  EXPECT_EQ(acked_b.size(), 600u);
  // The same keys through the other daemon: nothing new.
  json dup = Call(b, {{"op", "submit"}, {"jobs", {Noop("two:a1", 5), Noop("two:a2", 5)}}});
  EXPECT_EQ(dup["jobs"][0]["existing"], true) << dup.dump();
  EXPECT_TRUE(WaitCount("status = 'done'", 1200));
  EXPECT_EQ(Count("true"), "1200");
  EXPECT_EQ(Count("attempts <> 1"), "0");
  int by_a = std::stoi(Count("lease_owner = 'node-a'"));
  int by_b = std::stoi(Count("lease_owner = 'node-b'"));
  std::printf("node-a ran %d jobs, node-b ran %d\n", by_a, by_b);
  EXPECT_GT(by_a, 0);
  EXPECT_GT(by_b, 0);
  EXPECT_EQ(by_a + by_b, 1200);
  EXPECT_TRUE(a.Stop());
  EXPECT_TRUE(b.Stop());
}

TEST_F(DurableE2E, ExpiredLeaseIsRecoveredElsewhereAndTheLateResultIsIgnored) {
  Clear();
  DaemonProcess a, b;
  Knobs ka, kb;
  ka.node_id = "stalled";
  ka.lease_s = 5;
  kb.node_id = "rescuer";
  kb.lease_s = 5;
  kb.recover_interval_s = 1;
  ASSERT_TRUE(Start(a, ka));
  json sub = Call(
      a, {{"op", "submit"}, {"kind", "noop"}, {"key", "slow"}, {"input", {{"sleep_ms", 2500}}}});
  ASSERT_EQ(sub["ok"], true);
  // Started, and its start recorded: the stalled attempt counts.
  ASSERT_TRUE(WaitCount(
      "key = 'slow' AND status = 'running' AND lease_owner = 'stalled' AND started_at IS NOT NULL",
      1));
  a.Signal(SIGSTOP);  // a hung node: no renewals, no result
  ASSERT_TRUE(Start(b, kb));
  EXPECT_TRUE(WaitCount("key = 'slow' AND status = 'done' AND lease_owner = 'rescuer'", 1, 30s))
      << Scalar("SELECT status || ' ' || coalesce(lease_owner, '') FROM digestd.jobs");
  EXPECT_EQ(Scalar("SELECT attempts FROM digestd.jobs WHERE key = 'slow'"), "2");
  std::string rescued = Scalar("SELECT lease_token FROM digestd.jobs WHERE key = 'slow'");
  a.Signal(SIGCONT);
  // The stalled node finds its lease gone and stores nothing.
  EXPECT_FALSE(a.WaitForLog("lease", 20s).empty()) << a.StderrText();
  EXPECT_EQ(Scalar("SELECT lease_owner || ' ' || lease_token FROM digestd.jobs WHERE key = 'slow'"),
            "rescuer " + rescued);
  EXPECT_TRUE(a.Stop());
  EXPECT_TRUE(b.Stop());
}

// ------------------------------------------------------- outages (own cluster)

class DurableOutage : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string err;
    server_ = PgServer::StartPrivate(&err);
    ASSERT_TRUE(server_) << err;
    auto created = server_->CreateDatabase();
    ASSERT_TRUE(created.ok()) << created.status().ToString();
    db_ = created.value();
  }
  std::string Count(const std::string& where) {
    return server_->Scalar(db_, "SELECT count(*) FROM digestd.jobs WHERE " + where);
  }
  ::testing::AssertionResult Start(DaemonProcess& d, const Knobs& k = {}) {
    DaemonOptions o;
    o.config = ConfigFor(server_->Conninfo(db_), k);
    return d.Start(o, 30s);
  }
  std::unique_ptr<PgServer> server_;
  std::string db_;
};

TEST_F(DurableOutage, SubmitWhoseCommitNeverCameIsAnsweredUnavailable) {
  DaemonProcess d;
  ASSERT_TRUE(Start(d));
  // digestd's sessions (the writer's and the one for claims); stalling
  // them all stalls the writer's commit whichever it is.
  auto pids = server_->Exec(
      db_,
      "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> "
      "pg_backend_pid() AND backend_type = 'client backend'");
  ASSERT_TRUE(pids.ok()) << pids.status().ToString();
  ASSERT_FALSE(pids->empty());
  for (const auto& row : *pids) ASSERT_EQ(kill(std::atoi(row[0].c_str()), SIGSTOP), 0);
  std::atomic<bool> answered{false};
  json answer;
  std::thread client([&] {
    answer = Call(d, {{"op", "submit"}, {"kind", "noop"}, {"key", "limbo"}}, 30000);
    answered = true;
  });
  std::this_thread::sleep_for(500ms);
  EXPECT_FALSE(answered.load()) << "acknowledged without a commit: " << answer.dump();
  for (const auto& row : *pids) {
    kill(std::atoi(row[0].c_str()), SIGKILL);  // the server crashes before the commit
  }
  client.join();
  EXPECT_EQ(testing::ErrorCode(answer), "unavailable") << answer.dump();
  // Back after the crash recovery: the key was never stored, and submits work again.
  json again;
  ASSERT_TRUE(WaitFor(
      [&] {
        again = Call(d, {{"op", "submit"}, {"kind", "noop"}, {"key", "limbo"}});
        return again.value("ok", false);
      },
      30s))
      << again.dump();
  EXPECT_EQ(again["existing"], false);
  EXPECT_TRUE(d.Stop());
}

TEST_F(DurableOutage, StartsWithoutTheDatabaseSaysSoAndRecovers) {
  ASSERT_TRUE(server_->Stop().ok());
  DaemonProcess d;
  Knobs k;
  k.ready_timeout_s = 1;
  ASSERT_TRUE(Start(d, k));  // READY=1 after ready_timeout_s
  EXPECT_TRUE(d.WaitForMessage("STATUS=waiting for PostgreSQL", 5s))
      << testing::ReadTextFile(d.StderrPath());
  json s = Call(d, {{"op", "status"}});
  EXPECT_EQ(s["db"]["state"], "down") << s.dump();
  EXPECT_FALSE(s["db"].value("last_error", "").empty());
  EXPECT_GT(s["db"].value("next_attempt_unix_ms", 0LL), 0);
  json refused = Call(d, {{"op", "submit"}, {"kind", "noop"}, {"key", "early"}});
  EXPECT_EQ(testing::ErrorCode(refused), "unavailable") << refused.dump();
  ASSERT_TRUE(server_->Start().ok());
  ASSERT_TRUE(WaitFor([&] { return Call(d, {{"op", "status"}})["db"]["state"] == "up"; }, 30s));
  json ok = Call(d, {{"op", "submit"}, {"kind", "noop"}, {"key", "early"}});
  EXPECT_EQ(ok["existing"], false) << ok.dump();
  EXPECT_TRUE(WaitFor([&] { return Count("key = 'early' AND status = 'done'") == "1"; }));
  EXPECT_TRUE(d.Stop());
}

TEST_F(DurableOutage, PostgresRestartMidRunLosesNothing) {
  DaemonProcess d;
  ASSERT_TRUE(Start(d));
  auto keys = Keys("pr:", 800);
  ASSERT_EQ(SubmitAll(d, keys, 20).size(), keys.size());
  ASSERT_TRUE(WaitFor([&] { return std::stoi(Count("status = 'done'")) >= 20; }));
  ASSERT_TRUE(server_->Stop("fast").ok());
  ASSERT_TRUE(WaitFor([&] { return Call(d, {{"op", "status"}})["db"]["state"] == "down"; }));
  json refused = Call(d, {{"op", "submit"}, {"kind", "noop"}, {"key", "pr:late"}});
  EXPECT_EQ(testing::ErrorCode(refused), "unavailable") << refused.dump();
  std::this_thread::sleep_for(1s);  // results pile up in the write ring meanwhile
  ASSERT_TRUE(server_->Start().ok());
  EXPECT_TRUE(WaitFor([&] { return Count("status = 'done'") == "800"; }, 60s))
      << Count("status = 'done'") << " done\n"
      << d.StderrText();
  EXPECT_EQ(Count("true"), "800");
  json s = Call(d, {{"op", "status"}});
  EXPECT_GE(s["db"]["disconnects"].get<int>(), 1);
  EXPECT_TRUE(d.Stop());
}

// SIGTERM while PostgreSQL is unreachable and no result waits to be
// written: nothing is worth the shutdown grace (a minute here), so digestd
// stops at once, saying why, with exit 0.
TEST_F(DurableOutage, SigtermWithTheDatabaseDownAndNoResultsStopsAtOnce) {
  Knobs k;
  k.grace_s = 60;
  DaemonProcess d;
  ASSERT_TRUE(Start(d, k));
  auto keys = Keys("down:", 20);
  ASSERT_EQ(SubmitAll(d, keys, 1).size(), keys.size());
  ASSERT_TRUE(WaitFor([&] { return Count("status = 'done'") == "20"; }));
  ASSERT_TRUE(server_->Stop("fast").ok());
  ASSERT_TRUE(WaitFor([&] { return Call(d, {{"op", "status"}})["db"]["state"] == "down"; }));
  d.Signal(SIGTERM);
  auto status = d.WaitExit(20s);  // a third of the grace
  ASSERT_TRUE(status) << "still waiting for PostgreSQL with nothing to write\n" << d.StderrText();
  EXPECT_TRUE(status->exited() && status->code() == 0) << status->ToString();
  EXPECT_NE(d.StderrText().find("no result waits to be written"), std::string::npos)
      << d.StderrText();
}

// ------------------------------------------------------------------ kill -9

TEST_F(DurableE2E, KillNineAtRandomMomentsLosesNothingAndDoublesNothing) {
  Clear();
  const int kJobs = 2000;
  auto keys = Keys("crash:", kJobs);
  std::set<std::string> acked;
  std::mt19937 rng(20261201);
  Knobs k;
  k.node_id = "crashy";
  k.workers_max = 8;
  k.lease_s = 5;
  k.recover_interval_s = 1;
  int recovered_logs = 0;
  for (int round = 0; round < 10; ++round) {
    DaemonProcess d;
    ASSERT_TRUE(Start(d, k)) << "round " << round;
    std::atomic<bool> stop{false};
    std::vector<std::string> got;
    std::thread submitter([&] {
      // Submits what is not acknowledged yet, in batches, until killed.
      std::vector<std::string> todo;
      for (const auto& key : keys) {
        if (!acked.count(key)) todo.push_back(key);
      }
      for (size_t i = 0; i < todo.size() && !stop; i += 100) {
        json jobs = json::array();
        for (size_t j = i; j < std::min(todo.size(), i + 100); ++j)
          jobs.push_back(Noop(todo[j], 10));
        auto answer = d.Call({{"op", "submit"}, {"jobs", jobs}}, 20000);
        if (!answer.ok() || answer.value().value("ok", false) != true) break;
        for (const auto& a : answer.value()["jobs"]) {
          if (!a.contains("error")) got.push_back(a["key"]);
        }
      }
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(100 + rng() % 600));
    d.Signal(SIGKILL);
    stop = true;
    submitter.join();
    auto status = d.WaitExit(10s);
    ASSERT_TRUE(status && status->signaled()) << (status ? status->ToString() : "still running");
    acked.insert(got.begin(), got.end());
    if (d.StderrText().find("held before it restarted") != std::string::npos) ++recovered_logs;
  }
  // Every acknowledged key is in the table, exactly once.
  for (const auto& key : acked) {
    ASSERT_EQ(Count("key = '" + key + "'"), "1") << key;
  }
  // The last start finishes everything (and submits what was never acknowledged).
  DaemonProcess d;
  ASSERT_TRUE(Start(d, k));
  std::vector<std::string> rest;
  for (const auto& key : keys) {
    if (!acked.count(key)) rest.push_back(key);
  }
  if (!rest.empty()) {
    EXPECT_EQ(SubmitAll(d, rest, 10).size(), rest.size());
  }
  EXPECT_TRUE(WaitCount("status IN ('done', 'failed', 'cancelled')", kJobs, 120s))
      << Count("status IN ('done', 'failed', 'cancelled')") << " terminal";
  EXPECT_EQ(Count("true"), std::to_string(kJobs));
  EXPECT_EQ(Scalar("SELECT count(DISTINCT key) FROM digestd.jobs"), std::to_string(kJobs));
  EXPECT_EQ(Count("status = 'done' AND result IS NULL"), "0");
  EXPECT_EQ(Count("status = 'failed' AND error NOT LIKE '%crashed%'"), "0");
  EXPECT_EQ(Count("attempts < 1 OR attempts > max_attempts"), "0");
  int rerun = std::stoi(Count("attempts > 1"));
  std::printf(
      "%zu acknowledged before a kill, %d ran more than once, %s failed after crashes, "
      "%d restarts recovered their own jobs\n",
      acked.size(), rerun, Count("status = 'failed'").c_str(), recovered_logs);
  EXPECT_GT(rerun + recovered_logs, 0) << "no kill ever hit a running job: the test proved nothing";
  EXPECT_TRUE(d.Stop());
}

// ------------------------------------------------- attempts and kill -9

// A job spends an attempt when it starts, not when it is claimed. One
// background slot runs a job that never ends while a full ring of claimed
// jobs waits behind it; every round kills the daemon once the running job's
// start is recorded. The running job uses up its attempts and ends failed
// ("worker crashed"); the jobs that only waited in the ring, claimed again
// after every kill, never fail and finish with one attempt each.
TEST_F(DurableE2E, KillNineSpendsAttemptsOnlyOfJobsThatStarted) {
  Clear();
  Knobs k;
  k.node_id = "crashy";
  k.workers_max = 1;  // one slot: the never-ending job holds it
  k.interactive_reserved = 0;
  k.max_attempts = 2;
  k.extra = "refill_low_water = 16\nclaim_batch = 32\n[queues]\nbackground = 32\n";
  const int kWaiting = 12;
  for (int round = 1; round <= 2; ++round) {
    DaemonProcess d;
    ASSERT_TRUE(Start(d, k)) << "round " << round;
    if (round == 1) {
      json a = Call(d, {{"op", "submit"}, {"jobs", json::array({Noop("poison", 60000)})}});
      ASSERT_EQ(a.value("ok", false), true) << a.dump();
      ASSERT_TRUE(WaitCount("key = 'poison' AND started_at IS NOT NULL", 1)) << d.StderrText();
      EXPECT_EQ(SubmitAll(d, Keys("waiting:", kWaiting), 1).size(), static_cast<size_t>(kWaiting));
    }
    // The never-ending job has started (its start is recorded: attempt
    // `round`), and the others wait behind it, claimed or in the table.
    ASSERT_TRUE(WaitCount(
        "key = 'poison' AND attempts = " + std::to_string(round) + " AND started_at IS NOT NULL",
        1))
        << "round " << round << "\n"
        << d.StderrText();
    // After a restart the first claim takes the whole backlog into the ring.
    if (round >= 2) {
      ASSERT_TRUE(WaitCount("key LIKE 'waiting:%' AND status = 'running'", kWaiting))
          << "round " << round << ": "
          << Scalar(
                 "SELECT string_agg(key || ' ' || status || ' ' || attempts, ', ') FROM "
                 "digestd.jobs")
          << "\n"
          << d.StderrText();
    }
    EXPECT_EQ(Count("key LIKE 'waiting:%' AND (attempts > 0 OR started_at IS NOT NULL)"), "0")
        << "round " << round << ": a claim that never started spent an attempt: "
        << Scalar(
               "SELECT string_agg(key || ' ' || status || ' ' || attempts || ' lane ' || lane || "
               "' ' || coalesce(started_at::text, '-') || ' ' || coalesce(finished_at::text, "
               "'-'), E'\\n' ORDER BY id) FROM digestd.jobs")
        << "\n"
        << d.StderrText();
    d.Signal(SIGKILL);
    auto status = d.WaitExit(10s);
    ASSERT_TRUE(status && status->signaled());
  }
  // The restart's recovery fails the job that was running at both kills;
  // the ones that waited run now.
  DaemonProcess d;
  ASSERT_TRUE(Start(d, k));
  EXPECT_TRUE(WaitCount("key = 'poison' AND status = 'failed'", 1)) << d.StderrText();
  EXPECT_NE(Scalar("SELECT error FROM digestd.jobs WHERE key = 'poison'").find("worker crashed"),
            std::string::npos);
  EXPECT_TRUE(WaitCount("key LIKE 'waiting:%' AND status = 'done' AND attempts = 1", kWaiting))
      << Scalar(
             "SELECT string_agg(key || ' ' || status || ' ' || attempts, ', ') FROM "
             "digestd.jobs");
  EXPECT_EQ(Count("status = 'failed'"), "1");
  EXPECT_TRUE(d.Stop());
}

// A claim lost before its start was recorded spends no attempt, so the next
// start of that job is recorded before it runs: a job that kills its worker
// at once still uses up its attempts. With a writer window of a minute, only
// that urgent start mark can reach the table while the job runs.
TEST_F(DurableE2E, AJobLostBeforeItsStartWasRecordedIsRecordedBeforeItRunsAgain) {
  Knobs k;
  k.node_id = "crashy";
  k.max_attempts = 2;
  k.batch_ms = 60000;
  {
    DaemonProcess d;  // migrates the schema
    ASSERT_TRUE(Start(d, k));
    EXPECT_TRUE(d.Stop());
  }
  Clear();
  // As RecoverExpired leaves a job whose claim was lost unstarted.
  ASSERT_TRUE(server()
                  ->Exec(db(),
                         "INSERT INTO digestd.jobs (key, kind, lane, input, max_attempts, "
                         "lost_unstarted) VALUES ('poison', 'noop', 1, '{\"sleep_ms\": "
                         "60000}', 2, 1)")
                  .ok());
  for (int round = 1; round <= 2; ++round) {
    DaemonProcess d;
    ASSERT_TRUE(Start(d, k)) << "round " << round;
    ASSERT_TRUE(WaitCount("key = 'poison' AND attempts = " + std::to_string(round) +
                              " AND started_at IS NOT NULL AND status = 'running'",
                          1, 20s))
        << "round " << round << ": the start was not recorded before the job ran\n"
        << d.StderrText();
    d.Signal(SIGKILL);
    auto status = d.WaitExit(10s);
    ASSERT_TRUE(status && status->signaled());
  }
  DaemonProcess d;
  ASSERT_TRUE(Start(d, k));
  EXPECT_TRUE(WaitCount("key = 'poison' AND status = 'failed' AND attempts = 2", 1))
      << d.StderrText();
  EXPECT_TRUE(d.Stop());
}

}  // namespace
}  // namespace digestd
