// PgConn against a real PostgreSQL: async connect, pipelined units, errors,
// notifications, connection loss and reconnect, secrets kept out of messages.
#include "store/pg_conn.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "../support/pg_fixture.h"

namespace digestd {
namespace {

using testing::Await;
using testing::PgServer;
using testing::TestLoop;

class PgConnTest : public testing::PgTest {};

using QueryResult = Result<PgResult>;
using UnitResult = Result<std::vector<PgResult>>;

PgStatement Sql(std::string sql, std::vector<std::optional<std::string>> params = {},
                std::string name = {}) {
  return PgStatement{std::move(sql), std::move(params), std::move(name)};
}

TEST_F(PgConnTest, ConnectsAndRunsAParameterisedQuery) {
  TestLoop loop;
  PgConn conn(loop.get(), {conninfo()});
  ASSERT_TRUE(conn.init_status().ok()) << conn.init_status().ToString();
  conn.Start();
  ASSERT_TRUE(loop.RunUntil([&] { return conn.up(); })) << conn.state().last_error;
  EXPECT_GT(conn.state().server_version, 100000);
  EXPECT_EQ(conn.state().connects, 1u);

  auto r = Await<QueryResult>(loop, [&](auto cb) {
    return conn.Query(Sql("SELECT $1::int + 1, $2::text IS NULL, $3::text",
                          {"41", std::nullopt, "it's \"quoted\""}),
                      cb);
  });
  ASSERT_TRUE(r && r->ok()) << r->status().ToString();
  ASSERT_EQ((*r)->rows(), 1);
  EXPECT_EQ((*r)->Int(0, 0), 42);
  EXPECT_TRUE((*r)->Bool(0, 1));
  EXPECT_EQ((*r)->Text(0, 2), "it's \"quoted\"");
  conn.Close();
}

TEST_F(PgConnTest, PipelinedUnitsAnswerInOrder) {
  TestLoop loop;
  PgConn conn(loop.get(), {conninfo()});
  conn.Start();
  ASSERT_TRUE(loop.RunUntil([&] { return conn.up(); }));
  std::vector<int64_t> seen;
  constexpr int kUnits = 300;
  for (int i = 0; i < kUnits; ++i) {
    // Named: prepared once, in the first unit's pipeline, then reused.
    ASSERT_TRUE(conn.Query(Sql("SELECT $1::bigint", {std::to_string(i)}, "echo"),
                           [&](QueryResult r) {
                             ASSERT_TRUE(r.ok()) << r.status().ToString();
                             seen.push_back(r->Int(0, 0));
                           })
                    .ok());
  }
  EXPECT_EQ(conn.units_in_flight(), static_cast<size_t>(kUnits));
  ASSERT_TRUE(loop.RunUntil([&] { return seen.size() == kUnits; }));
  for (int i = 0; i < kUnits; ++i) EXPECT_EQ(seen[static_cast<size_t>(i)], i);
  conn.Close();
}

// A unit fails before its first use of a named statement; the unit sent
// right behind it (before any answer) uses the same name and must find it
// prepared.
TEST_F(PgConnTest, AFailureBeforeAFirstUseDoesNotUnprepareItForTheNextUnit) {
  TestLoop loop;
  PgConn conn(loop.get(), {conninfo()});
  conn.Start();
  ASSERT_TRUE(loop.RunUntil([&] { return conn.up(); }));
  std::vector<PgStatement> first;
  first.push_back(Sql("SELECT 1 / 0", {}));
  first.push_back(Sql("SELECT $1::bigint * 2", {"1"}, "double"));
  std::optional<Status> first_status;
  ASSERT_TRUE(conn.Send(std::move(first),
                        [&](Result<std::vector<PgResult>> r) { first_status = r.status(); })
                  .ok());
  std::optional<int64_t> second;
  std::string second_error;
  ASSERT_TRUE(conn.Query(Sql("SELECT $1::bigint * 2", {"21"}, "double"),
                         [&](QueryResult r) {
                           if (r.ok()) {
                             second = r->Int(0, 0);
                           } else {
                             second_error = r.status().ToString();
                             second = -1;
                           }
                         })
                  .ok());
  EXPECT_EQ(conn.units_in_flight(), 2u);
  ASSERT_TRUE(loop.RunUntil([&] { return first_status && second; }));
  EXPECT_FALSE(first_status->ok());
  EXPECT_EQ(*second, 42) << second_error;
  conn.Close();
}

TEST_F(PgConnTest, UnitIsOneTransactionAndAFailureRollsBackOnlyItsUnit) {
  TestLoop loop;
  PgConn conn(loop.get(), {conninfo()});
  conn.Start();
  ASSERT_TRUE(loop.RunUntil([&] { return conn.up(); }));
  auto made = Await<QueryResult>(loop, [&](auto cb) {
    return conn.Query(Sql("CREATE TABLE unit_tx (v int PRIMARY KEY)"), cb);
  });
  ASSERT_TRUE(made && made->ok()) << made->status().ToString();

  std::optional<UnitResult> failed;
  std::optional<UnitResult> after;
  std::vector<PgStatement> bad;
  bad.push_back(Sql("INSERT INTO unit_tx VALUES (1)"));
  bad.push_back(Sql("SELECT 1 / $1::int", {"0"}));  // division_by_zero, class 22
  bad.push_back(Sql("INSERT INTO unit_tx VALUES (2)"));
  ASSERT_TRUE(conn.Send(std::move(bad), [&](UnitResult r) { failed.emplace(std::move(r)); }).ok());
  // Sent before the first one failed: the session must not be left in an
  // aborted transaction.
  std::vector<PgStatement> good;
  good.push_back(Sql("INSERT INTO unit_tx VALUES (3)"));
  good.push_back(Sql("SELECT count(*) FROM unit_tx"));
  ASSERT_TRUE(conn.Send(std::move(good), [&](UnitResult r) { after.emplace(std::move(r)); }).ok());
  ASSERT_TRUE(loop.RunUntil([&] { return failed && after; }));

  ASSERT_FALSE(failed->ok());
  EXPECT_EQ(failed->status().code(), Status::Code::kBadRequest);
  EXPECT_NE(failed->status().message().find("SQLSTATE 22012"), std::string::npos)
      << failed->status().message();
  ASSERT_TRUE(after->ok()) << after->status().ToString();
  ASSERT_EQ((*after)->size(), 2u);
  EXPECT_EQ((**after)[1].Int(0, 0), 1) << "row 1 of the failed unit must have been rolled back";
  EXPECT_EQ(Scalar("SELECT string_agg(v::text, ',') FROM unit_tx"), "3");
  conn.Close();
}

TEST_F(PgConnTest, ServerErrorsMapToStatusCodes) {
  TestLoop loop;
  PgConn conn(loop.get(), {conninfo()});
  conn.Start();
  ASSERT_TRUE(loop.RunUntil([&] { return conn.up(); }));
  auto syntax = Await<QueryResult>(loop, [&](auto cb) { return conn.Query(Sql("SELEC 1"), cb); });
  ASSERT_TRUE(syntax && !syntax->ok());
  EXPECT_EQ(syntax->status().code(), Status::Code::kInternal);
  EXPECT_NE(syntax->status().message().find("42601"), std::string::npos);

  // A prepared statement that fails to prepare is prepared again next time.
  auto bad_prep = Await<QueryResult>(
      loop, [&](auto cb) { return conn.Query(Sql("SELECT * FROM no_such_table", {}, "np"), cb); });
  ASSERT_TRUE(bad_prep && !bad_prep->ok());
  Scalar("CREATE TABLE no_such_table (x int)");
  auto good_prep = Await<QueryResult>(
      loop, [&](auto cb) { return conn.Query(Sql("SELECT * FROM no_such_table", {}, "np"), cb); });
  ASSERT_TRUE(good_prep && good_prep->ok()) << good_prep->status().ToString();
  conn.Close();
}

TEST_F(PgConnTest, NotificationsReachTheHandler) {
  TestLoop loop;
  PgConn listener(loop.get(), {conninfo()});
  PgConn sender(loop.get(), {conninfo()});
  std::vector<std::pair<std::string, std::string>> got;
  listener.SetNotifyHandler(
      [&](const std::string& ch, const std::string& payload) { got.emplace_back(ch, payload); });
  listener.Start();
  sender.Start();
  ASSERT_TRUE(loop.RunUntil([&] { return listener.up() && sender.up(); }));
  auto l =
      Await<QueryResult>(loop, [&](auto cb) { return listener.Query(Sql("LISTEN t_chan"), cb); });
  ASSERT_TRUE(l && l->ok());
  auto n = Await<QueryResult>(loop, [&](auto cb) {
    return sender.Query(Sql("SELECT pg_notify('t_chan', $1)", {"hello"}), cb);
  });
  ASSERT_TRUE(n && n->ok());
  ASSERT_TRUE(loop.RunUntil([&] { return !got.empty(); }));
  EXPECT_EQ(got[0].first, "t_chan");
  EXPECT_EQ(got[0].second, "hello");
  listener.Close();
  sender.Close();
}

TEST_F(PgConnTest, ResolvesAHostNameOffTheLoopAndConnectsOverTcp) {
  TestLoop loop;
  PgConn conn(loop.get(), {"host=localhost port=" + server()->port() + " dbname=" + db() +
                           " user=postgres sslmode=disable"});
  conn.Start();
  ASSERT_TRUE(loop.RunUntil([&] { return conn.up(); })) << conn.state().last_error;
  auto r = Await<QueryResult>(
      loop, [&](auto cb) { return conn.Query(Sql("SELECT inet_server_addr() IS NOT NULL"), cb); });
  ASSERT_TRUE(r && r->ok());
  EXPECT_TRUE((*r)->Bool(0, 0)) << "expected a TCP connection";
  conn.Close();
}

TEST_F(PgConnTest, DownConnectionRefusesWorkAndSaysWhyAndWhen) {
  TestLoop loop;
  PgConnOptions o;
  o.conninfo = "host=/nonexistent-dir port=5999 dbname=x user=u";
  o.reconnect_min_ms = 100;
  o.reconnect_max_ms = 400;
  PgConn conn(loop.get(), o);
  int observed = 0;
  conn.AddStateObserver([&](bool, const Status&) { ++observed; });
  conn.Start();
  ASSERT_TRUE(loop.RunUntil([&] { return !conn.state().last_error.empty(); }));
  PgConnState s = conn.state();
  EXPECT_FALSE(s.up);
  EXPECT_NE(s.last_error.find("nonexistent-dir"), std::string::npos) << s.last_error;
  EXPECT_NE(s.last_error.find("; check that PostgreSQL is running and host=/port= in [postgres] "
                              "conninfo point at it"),
            std::string::npos)
      << s.last_error;
  EXPECT_GT(s.next_attempt_unix_ms, 0);
  bool called = false;
  Status st = conn.Query(Sql("SELECT 1"), [&](QueryResult) { called = true; });
  EXPECT_EQ(st.code(), Status::Code::kUnavailable);
  // Attempts go on with backoff.
  int64_t first = conn.state().last_error_unix_ms;
  ASSERT_TRUE(loop.RunUntil([&] { return conn.state().last_error_unix_ms != first; }));
  conn.Close();
  loop.RunTurns();
  EXPECT_FALSE(called) << "a refused call must never call its callback";
  EXPECT_EQ(observed, 0) << "never up, so never a change";
}

TEST(PgConnectHint, SaysWhatToDoForTheFailuresAUserMeets) {
  // libpq's texts for SQLSTATE 28P01 and 28000, and the usual set-up slips.
  EXPECT_NE(PgConnectHint("connection to server at \"db\" (10.0.0.2), port 5432 failed: FATAL:  "
                          "password authentication failed for user \"digestd\"")
                .find("check the role's password (ALTER ROLE ... PASSWORD), the password in "
                      "[postgres] conninfo or the daemon user's ~/.pgpass, and the auth method "
                      "pg_hba.conf gives this host and user"),
            std::string::npos);
  EXPECT_NE(PgConnectHint("fe_sendauth: no password supplied").find("~/.pgpass"),
            std::string::npos);
  EXPECT_NE(PgConnectHint("FATAL:  no pg_hba.conf entry for host \"10.0.0.3\", user \"digestd\", "
                          "database \"digestd\", no encryption")
                .find("add a line for this host, user and database to the server's pg_hba.conf"),
            std::string::npos);
  EXPECT_NE(PgConnectHint("FATAL:  role \"digestd\" does not exist").find("createuser"),
            std::string::npos);
  EXPECT_NE(PgConnectHint("FATAL:  database \"digestd\" does not exist").find("createdb"),
            std::string::npos);
  // Peer authentication is not a password problem: it names the user to run as.
  std::string peer = PgConnectHint("FATAL:  Peer authentication failed for user \"digestd\"");
  EXPECT_NE(peer.find("run digestd as that user"), std::string::npos) << peer;
  EXPECT_EQ(peer.find("password"), std::string::npos) << peer;
  EXPECT_NE(PgConnectHint("FATAL:  role \"root\" does not exist").find("sudo -u digestd"),
            std::string::npos);
  EXPECT_EQ(PgConnectHint("something nobody foresaw"), "");
}

TEST_F(PgConnTest, PasswordsNeverAppearInMessages) {
  TestLoop loop;
  for (std::string info : {"host=/nonexistent-dir port=5999 user=u password=hunter2xyz dbname=x",
                           "postgresql://u:hunter2xyz@/x?host=/nonexistent-dir&port=5999",
                           "postgresql:///x?host=/nonexistent-dir&password=hunter2xyz",
                           "host=/nonexistent-dir password='hunter2xyz' bogus_option=1"}) {
    PgConn conn(loop.get(), {info});
    conn.Start();
    ASSERT_TRUE(loop.RunUntil([&] { return !conn.state().last_error.empty(); })) << info;
    PgConnState s = conn.state();
    EXPECT_EQ(s.last_error.find("hunter2"), std::string::npos) << s.last_error;
    EXPECT_EQ(s.target.find("hunter2"), std::string::npos) << s.target;
    EXPECT_EQ(conn.Describe().find("hunter2"), std::string::npos);
    conn.Close();
  }
  EXPECT_EQ(RedactConninfo("postgresql://me:s3cret@db/x?password=s3cret"),
            "postgresql://me:***@db/x?password=***");
  EXPECT_EQ(RedactConninfo("host=db password = 'a b' user=me"), "host=db password = *** user=me");
}

// libpq's parse errors quote the piece that broke: the whole URI, or a
// token that is (part of) the password. None of it may reach a message.
TEST(PgConnSecrets, UnparseableConninfoNeverShowsItsPassword) {
  TestLoop loop;
  for (std::string info :
       {"postgresql://me:hunter2xyz@[::1/x",
        "postgresql://me:hunter2xyz%zz@/x?host=/nonexistent-dir", "postgresql://me:hunter2%@/x",
        "postgresql:///x?host=/nonexistent-dir&password=hunter2xyz%zz",
        "host=/nonexistent-dir password='hunter2xyz"}) {
    PgConn conn(loop.get(), {info});
    conn.Start();
    ASSERT_TRUE(loop.RunUntil([&] { return !conn.state().last_error.empty(); })) << info;
    PgConnState s = conn.state();
    EXPECT_EQ(s.last_error.find("hunter2"), std::string::npos) << s.last_error;
    EXPECT_NE(s.last_error.find("does not parse"), std::string::npos) << s.last_error;
    EXPECT_EQ(s.target.find("hunter2"), std::string::npos) << s.target;
    EXPECT_EQ(conn.Describe().find("hunter2"), std::string::npos);
    conn.Close();

    Status st = ValidateConninfo(info);
    ASSERT_FALSE(st.ok()) << info;
    EXPECT_EQ(st.code(), Status::Code::kInvalidConfig);
    EXPECT_EQ(st.message().find("hunter2"), std::string::npos) << st.message();
    EXPECT_NE(st.message().find("[postgres] conninfo does not parse"), std::string::npos);
    EXPECT_NE(st.message().find(".pgpass"), std::string::npos) << st.message();
  }
  // What libpq said is kept where it holds no secret.
  Status st = ValidateConninfo("postgresql://me@db/x?frobnicate=1");
  EXPECT_NE(st.message().find("invalid URI query parameter: \"frobnicate\""), std::string::npos)
      << st.message();
  EXPECT_TRUE(ValidateConninfo("postgresql://me:s3cret@db/x?sslmode=require").ok());
  EXPECT_TRUE(ValidateConninfo("host=/run/postgresql dbname=digestd password='a b'").ok());
}

TEST(PgConnSecrets, RedactsPasswordsInMessagesAboutAConninfo) {
  const std::string uri = "postgresql://me:s3cret@[::1/x";
  EXPECT_EQ(RedactConninfoMessage("end of string in URI: \"" + uri + "\"", uri),
            "end of string in URI: \"postgresql://me:***@[::1/x\"");
  EXPECT_EQ(RedactConninfoMessage("invalid percent-encoded token: \"s3%zz\"",
                                  "postgresql://me:s3%zz@db/x"),
            "invalid percent-encoded token: \"***\"");
  EXPECT_EQ(RedactConninfoMessage("bad s3cret here", "host=db password=s3cret"), "bad *** here");
  EXPECT_EQ(ConninfoSecrets("host=db password='a b' user=me"), std::vector<std::string>{"a b"});
  EXPECT_EQ(ConninfoSecrets("postgresql://me:pw@db/x?password=two"),
            (std::vector<std::string>{"pw", "two"}));
  EXPECT_TRUE(ConninfoSecrets("postgresql://me@db:5432/x").empty());
}

TEST_F(PgConnTest, ConnectAttemptThatHangsTimesOut) {
  // A listening socket that never accepts: the TCP handshake completes in
  // the kernel, the startup packet is never answered.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(fd, 8), 0);
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  TestLoop loop;
  PgConnOptions o;
  o.conninfo = "host=127.0.0.1 port=" + std::to_string(ntohs(addr.sin_port)) +
               " dbname=x user=u sslmode=disable";
  o.connect_timeout_ms = 300;
  PgConn conn(loop.get(), o);
  conn.Start();
  ASSERT_TRUE(loop.RunUntil([&] { return !conn.state().last_error.empty(); }));
  EXPECT_NE(conn.state().last_error.find("no connection after 300 ms"), std::string::npos)
      << conn.state().last_error;
  conn.Close();
  close(fd);
}

TEST_F(PgConnTest, CloseFailsPendingUnitsOnceAndIsIdempotent) {
  TestLoop loop;
  PgConn conn(loop.get(), {conninfo()});
  conn.Start();
  ASSERT_TRUE(loop.RunUntil([&] { return conn.up(); }));
  int calls = 0;
  Status seen;
  ASSERT_TRUE(conn.Query(Sql("SELECT pg_sleep(5)"),
                         [&](QueryResult r) {
                           ++calls;
                           seen = r.status();
                         })
                  .ok());
  conn.Close();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(seen.code(), Status::Code::kUnavailable);
  conn.Close();
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(conn.closed());
  conn.Start();  // does nothing after Close
  EXPECT_FALSE(conn.up());
}

TEST_F(PgConnTest, StalledQueryDropsTheConnectionAfterQueryTimeout) {
  TestLoop loop;
  PgConnOptions o;
  o.conninfo = conninfo();
  o.query_timeout_ms = 300;
  PgConn conn(loop.get(), o);
  conn.Start();
  ASSERT_TRUE(loop.RunUntil([&] { return conn.up(); }));
  auto r =
      Await<QueryResult>(loop, [&](auto cb) { return conn.Query(Sql("SELECT pg_sleep(3)"), cb); });
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status().code(), Status::Code::kUnavailable);
  EXPECT_NE(conn.state().last_error.find("no answer"), std::string::npos)
      << conn.state().last_error;
  ASSERT_TRUE(loop.RunUntil([&] { return conn.up(); })) << "reconnects";
  EXPECT_EQ(conn.state().connects, 2u);
  conn.Close();
}

TEST(PgConnOutage, ServerStopFailsPendingUnitsOnceThenReconnects) {
  std::string error;
  auto pg = PgServer::StartPrivate(&error);
  ASSERT_TRUE(pg) << error;
  TestLoop loop;
  PgConnOptions o;
  o.conninfo = pg->Conninfo("digestd");
  o.reconnect_min_ms = 50;
  o.reconnect_max_ms = 200;
  PgConn conn(loop.get(), o);
  std::vector<bool> changes;
  conn.AddStateObserver([&](bool up, const Status&) { changes.push_back(up); });
  conn.Start();
  ASSERT_TRUE(loop.RunUntil([&] { return conn.up(); }));
  auto before = Await<QueryResult>(
      loop, [&](auto cb) { return conn.Query(Sql("SELECT $1::int", {"7"}, "seven"), cb); });
  ASSERT_TRUE(before && before->ok());

  int calls = 0;
  Status seen;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(conn.Query(Sql("SELECT pg_sleep(30)"),
                           [&](QueryResult r) {
                             ++calls;
                             seen = r.status();
                           })
                    .ok());
  }
  // The first query runs on the server (the others wait behind it).
  ASSERT_TRUE(loop.RunUntil([&] {
    return pg->Scalar("digestd",
                      "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "
                      "query LIKE '%pg_sleep(30)%' AND pid <> pg_backend_pid()") == "1";
  }));
  ASSERT_TRUE(pg->Stop("fast").ok());
  ASSERT_TRUE(loop.RunUntil([&] { return calls == 3; }));
  EXPECT_EQ(seen.code(), Status::Code::kUnavailable) << seen.ToString();
  EXPECT_FALSE(conn.up());
  EXPECT_EQ(conn.state().disconnects, 1u);
  EXPECT_FALSE(conn.state().last_error.empty());
  ASSERT_EQ(changes, (std::vector<bool>{true, false}));
  // While down, attempts fail and back off.
  ASSERT_TRUE(loop.RunUntil([&] { return conn.state().next_attempt_unix_ms > 0; }));

  ASSERT_TRUE(pg->Start().ok());
  ASSERT_TRUE(loop.RunUntil([&] { return conn.up(); })) << conn.state().last_error;
  EXPECT_EQ(changes.back(), true);
  // The named statement is prepared again on the new session.
  auto after = Await<QueryResult>(
      loop, [&](auto cb) { return conn.Query(Sql("SELECT $1::int", {"8"}, "seven"), cb); });
  ASSERT_TRUE(after && after->ok()) << after->status().ToString();
  EXPECT_EQ((*after)->Int(0, 0), 8);
  EXPECT_EQ(calls, 3) << "each pending callback ran exactly once";
  conn.Close();
}

}  // namespace
}  // namespace digestd
