// ControlServer on a real uv loop and a real Unix socket in a temp dir. The
// test thread runs the loop; clients run on a thread of their own with the
// blocking ControlClient, and wake the loop with a uv_async when done.
#include "control/control_server.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "../support/daemon_harness.h"
#include "../support/test_loop.h"
#include "client/control_client.h"
#include "util/uv_handle.h"

namespace digestd {
namespace {

using nlohmann::json;
using testing::kDeadline;
using testing::WaitFor;

// Reads one answer line and parses it; a JSON null when there is none.
json ReadAnswer(ControlClient& client, int timeout_ms = 10000) {
  auto line = client.ReadLine(timeout_ms);
  EXPECT_TRUE(line.ok()) << line.status().ToString();
  if (!line.ok()) return nullptr;
  json j = json::parse(line.value(), nullptr, false);
  EXPECT_TRUE(j.is_object()) << line.value();
  return j;
}

// True when the server has closed `client`'s connection (after any answers).
bool ClosedByServer(ControlClient& client) {
  auto line = client.ReadLine(10000);
  if (line.ok()) {
    ADD_FAILURE() << "expected the connection to be closed, got: " << line.value();
    return false;
  }
  // EOF, or ECONNRESET when the server left request bytes unread.
  return line.status().code() != Status::Code::kUnavailable ||
         line.status().message().find("closed") != std::string::npos;
}

class ControlServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // As Daemon::Run does: a write to a client that has left must fail with
    // EPIPE, not kill the process.
    signal(SIGPIPE, SIG_IGN);
    ASSERT_EQ(uv_async_init(loop_.get(), wake_.get(), [](uv_async_t*) {}), 0);
    wake_.set_initialized();
    socket_path_ = dir_.File("ctl.sock");
  }

  void TearDown() override {
    if (server_) {
      server_->CloseAll();
      EXPECT_TRUE(RunUntil([&] { return server_->clients() == 0; }));
      server_.reset();
    }
    wake_.Close();
    // loop_'s destructor runs the close callbacks and checks that nothing
    // was left open.
  }

  void Listen(ControlServer::Options options = {}) {
    server_ = std::make_unique<ControlServer>(
        loop_.get(), options,
        [this](Request req, const PeerCred& peer, ControlServer::Reply reply) {
          Handle(std::move(req), peer, std::move(reply));
        });
    Status st = server_->ListenPath(socket_path_, 0600);
    ASSERT_TRUE(st.ok()) << st.ToString();
  }

  // The test's ops: "result" is held and answered later (when a "ping"
  // arrives, just after the ping's own answer); "ping" answers at once;
  // anything else echoes the request body.
  void Handle(Request req, const PeerCred& peer, ControlServer::Reply reply) {
    last_peer_ = peer;
    if (req.op == "result") {
      held_.push_back({req.id, reply});
      ++handled_;
      return;
    }
    if (req.op == "ping") {
      reply.Send(OkLine(req.id, {{"pong", true}}));
      for (auto& h : held_) h.reply.Send(OkLine(h.id, {{"held", true}}));
      held_.clear();
    } else {
      reply.Send(OkLine(req.id, {{"echo", req.body}}));
    }
    ++handled_;
  }

  bool RunUntil(const std::function<bool()>& done, std::chrono::milliseconds timeout = kDeadline) {
    return loop_.RunUntil(done, timeout);
  }

  // Runs `client` on its own thread while this thread serves it.
  void RunClient(const std::function<void()>& client) {
    std::atomic<bool> done{false};
    std::thread thread([&] {
      client();
      done = true;
      uv_async_send(wake_.get());
    });
    bool finished = RunUntil([&] { return done.load(); }, kDeadline + kDeadline);
    thread.join();
    EXPECT_TRUE(finished) << "the client did not finish";
  }

  void Connect(ControlClient& client) {
    Status st = client.Connect(socket_path_);
    ASSERT_TRUE(st.ok()) << st.ToString();
  }

  struct Held {
    json id;
    ControlServer::Reply reply;
  };

  testing::TestLoop loop_;  // first: closed after everything that uses it
  testing::TempDir dir_;
  std::string socket_path_;
  UvHandle<uv_async_t> wake_;
  std::unique_ptr<ControlServer> server_;
  std::vector<Held> held_;       // loop thread only
  PeerCred last_peer_;           // loop thread only
  std::atomic<int> handled_{0};  // requests the handler saw; any thread reads
};

TEST_F(ControlServerTest, AnswersARequest) {
  Listen();
  RunClient([&] {
    ControlClient client;
    Connect(client);
    auto answer = client.Call({{"op", "ping"}, {"id", "a"}});
    ASSERT_TRUE(answer.ok()) << answer.status().ToString();
    EXPECT_EQ(answer.value()["ok"], true);
    EXPECT_EQ(answer.value()["pong"], true);
    EXPECT_EQ(answer.value()["id"], "a");
  });
  EXPECT_EQ(server_->accepted(), 1u);
  EXPECT_EQ(server_->requests(), 1u);
}

TEST_F(ControlServerTest, ReadsThePeersCredentials) {
  Listen();
  RunClient([&] {
    ControlClient client;
    Connect(client);
    ASSERT_TRUE(client.Call({{"op", "ping"}}).ok());
  });
  EXPECT_TRUE(last_peer_.known);
  EXPECT_EQ(last_peer_.uid, getuid());
  EXPECT_EQ(last_peer_.gid, getgid());
  EXPECT_EQ(last_peer_.pid, getpid());
}

TEST_F(ControlServerTest, AnswersInRequestOrderWhenAnEarlierRequestIsAnsweredLater) {
  Listen();
  RunClient([&] {
    ControlClient client;
    Connect(client);
    // Both in one write: the server answers the ping first and the held
    // result right after it, yet the result's answer must come first.
    ASSERT_TRUE(client.SendLine("{\"op\":\"result\",\"id\":1}\n{\"op\":\"ping\",\"id\":2}").ok());
    json first = ReadAnswer(client);
    json second = ReadAnswer(client);
    EXPECT_EQ(first["id"], 1);
    EXPECT_EQ(first["held"], true);
    EXPECT_EQ(second["id"], 2);
    EXPECT_EQ(second["pong"], true);
  });
}

TEST_F(ControlServerTest, ManyPipelinedRequestsAreAnsweredInOrder) {
  Listen();
  constexpr int kCount = 1000;  // beyond the server's unanswered-request cap
  RunClient([&] {
    ControlClient client;
    Connect(client);
    std::string burst;
    for (int i = 0; i < kCount; ++i) {
      if (i > 0) burst += "\n";
      burst += json{{"op", "status"}, {"id", i}, {"n", i}}.dump();
    }
    ASSERT_TRUE(client.SendLine(burst).ok());
    for (int i = 0; i < kCount; ++i) {
      json answer = ReadAnswer(client);
      ASSERT_EQ(answer["id"], i);
      ASSERT_EQ(answer["echo"]["n"], i);
    }
  });
  EXPECT_EQ(handled_.load(), kCount);
}

TEST_F(ControlServerTest, OversizedLineGetsTooLargeAndClose) {
  Listen({.max_line_bytes = 1024, .max_clients = 16, .idle_timeout_s = 0});
  RunClient([&] {
    ControlClient client;
    Connect(client);
    std::string big = R"({"op":"status","pad":")" + std::string(2000, 'x') + R"("})";
    ASSERT_TRUE(client.SendLine(big).ok());
    json answer = ReadAnswer(client);
    EXPECT_EQ(answer["ok"], false);
    EXPECT_EQ(answer["error"]["code"], "too_large");
    EXPECT_NE(testing::ErrorMessage(answer).find("max_line_bytes"), std::string::npos);
    EXPECT_TRUE(ClosedByServer(client));
    // Others are still served.
    ControlClient other;
    Connect(other);
    EXPECT_TRUE(other.Call({{"op", "ping"}}).ok());
  });
  EXPECT_EQ(handled_.load(), 1);  // only the ping reached the handler
}

TEST_F(ControlServerTest, OversizedLineWithoutNewlineAcrossReadsGetsTooLarge) {
  Listen({.max_line_bytes = 1024, .max_clients = 16, .idle_timeout_s = 0});
  RunClient([&] {
    ControlClient client;
    Connect(client);
    // Three separate reads of 400 bytes: no single read is too large, the
    // unfinished line is.
    std::string part(400, 'y');
    for (int i = 0; i < 3; ++i) {
      ASSERT_EQ(send(client.fd(), part.data(), part.size(), MSG_NOSIGNAL), 400);
      if (i < 2) {
        ASSERT_TRUE(WaitFor([&] { return testing::UnreadBytes(client.fd()) == 0; }));
      }
    }
    json answer = ReadAnswer(client);
    EXPECT_EQ(answer["error"]["code"], "too_large");
    EXPECT_TRUE(ClosedByServer(client));
  });
}

TEST_F(ControlServerTest, LineOfExactlyMaxBytesIsAccepted) {
  Listen({.max_line_bytes = 1024, .max_clients = 16, .idle_timeout_s = 0});
  RunClient([&] {
    ControlClient client;
    Connect(client);
    std::string head = R"({"op":"status","pad":")";
    std::string tail = R"("})";
    std::string line = head + std::string(1024 - head.size() - tail.size(), 'z') + tail;
    ASSERT_EQ(line.size(), 1024u);
    ASSERT_TRUE(client.SendLine(line).ok());
    json answer = ReadAnswer(client);
    EXPECT_EQ(answer["ok"], true);
  });
}

TEST_F(ControlServerTest, FragmentedLinesAreReassembled) {
  Listen();
  RunClient([&] {
    ControlClient client;
    Connect(client);
    std::string line = json{{"op", "submit"}, {"id", 5}, {"text", "caf\xc3\xa9"}}.dump() + "\n" +
                       json{{"op", "submit"}, {"id", 6}}.dump() + "\n";
    Status st = testing::SendByteByByte(client.fd(), line);
    ASSERT_TRUE(st.ok()) << st.ToString();
    json first = ReadAnswer(client);
    json second = ReadAnswer(client);
    EXPECT_EQ(first["id"], 5);
    EXPECT_EQ(first["echo"]["text"], "caf\xc3\xa9");
    EXPECT_EQ(second["id"], 6);
  });
  EXPECT_EQ(handled_.load(), 2);
}

TEST_F(ControlServerTest, CrLfLinesAreAccepted) {
  Listen();
  RunClient([&] {
    ControlClient client;
    Connect(client);
    ASSERT_TRUE(client.SendLine("{\"op\":\"ping\",\"id\":1}\r").ok());
    json answer = ReadAnswer(client);
    EXPECT_EQ(answer["ok"], true);
    EXPECT_EQ(answer["id"], 1);
  });
}

TEST_F(ControlServerTest, BadRequestLineIsAnsweredAndTheConnectionStays) {
  Listen();
  RunClient([&] {
    ControlClient client;
    Connect(client);
    ASSERT_TRUE(client.SendLine("this is not json").ok());
    json bad = ReadAnswer(client);
    EXPECT_EQ(bad["ok"], false);
    EXPECT_EQ(bad["error"]["code"], "bad_request");
    EXPECT_FALSE(testing::ErrorMessage(bad).empty());
    auto ping = client.Call({{"op", "ping"}});
    ASSERT_TRUE(ping.ok()) << ping.status().ToString();
    EXPECT_EQ(ping.value()["pong"], true);
  });
}

TEST_F(ControlServerTest, LastLineWithoutNewlineIsAnsweredAtEof) {
  Listen();
  RunClient([&] {
    ControlClient client;
    Connect(client);
    std::string line = R"({"op":"ping","id":"eof"})";
    ASSERT_EQ(send(client.fd(), line.data(), line.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(line.size()));
    ASSERT_EQ(shutdown(client.fd(), SHUT_WR), 0);
    json answer = ReadAnswer(client);
    EXPECT_EQ(answer["id"], "eof");
    EXPECT_TRUE(ClosedByServer(client));
  });
}

TEST_F(ControlServerTest, ClientThatLeavesBeforeReadingItsAnswerHurtsNoOne) {
  Listen();
  RunClient([&] {
    {
      // A held request: answered only after this client is gone.
      ControlClient leaver;
      Connect(leaver);
      ASSERT_TRUE(leaver.SendLine(R"({"op":"result","id":"lost"})").ok());
      ASSERT_TRUE(WaitFor([&] { return handled_.load() == 1; }));
    }
    {
      // Many answers the client never reads.
      ControlClient leaver;
      Connect(leaver);
      std::string burst;
      for (int i = 0; i < 200; ++i) burst += "{\"op\":\"status\",\"id\":1}\n";
      ASSERT_TRUE(leaver.SendLine(burst).ok());
    }
    // This ping also answers the first leaver's held request.
    ControlClient other;
    Connect(other);
    auto ping = other.Call({{"op", "ping"}});
    ASSERT_TRUE(ping.ok()) << ping.status().ToString();
    EXPECT_EQ(ping.value()["pong"], true);
  });
  EXPECT_TRUE(held_.empty());
  // Every connection is cleaned up once its client is gone.
  EXPECT_TRUE(RunUntil([&] { return server_->clients() == 0; })) << server_->clients();
}

TEST_F(ControlServerTest, ClientThatLeavesMidRequestHurtsNoOne) {
  Listen();
  RunClient([&] {
    {
      ControlClient leaver;
      Connect(leaver);
      std::string half = R"({"op":"pi)";
      ASSERT_EQ(send(leaver.fd(), half.data(), half.size(), MSG_NOSIGNAL),
                static_cast<ssize_t>(half.size()));
    }
    ControlClient other;
    Connect(other);
    auto ping = other.Call({{"op", "ping"}});
    ASSERT_TRUE(ping.ok()) << ping.status().ToString();
  });
  EXPECT_EQ(handled_.load(), 1);  // the half line never reached the handler
  EXPECT_TRUE(RunUntil([&] { return server_->clients() == 0; })) << server_->clients();
}

TEST_F(ControlServerTest, SilentClientDoesNotDelayOthers) {
  Listen();
  RunClient([&] {
    ControlClient silent;
    Connect(silent);  // connects and never says a word
    for (int i = 0; i < 3; ++i) {
      ControlClient other;
      Connect(other);
      auto ping = other.Call({{"op", "ping"}, {"id", i}});
      ASSERT_TRUE(ping.ok()) << ping.status().ToString();
      EXPECT_EQ(ping.value()["id"], i);
    }
  });
}

TEST_F(ControlServerTest, ClientsBeyondMaxClientsAreTurnedAway) {
  Listen({.max_line_bytes = 1 << 20, .max_clients = 2, .idle_timeout_s = 0});
  RunClient([&] {
    ControlClient a;
    Connect(a);
    ControlClient b;
    Connect(b);
    ASSERT_TRUE(a.Call({{"op", "ping"}}).ok());
    ASSERT_TRUE(b.Call({{"op", "ping"}}).ok());
    ControlClient c;
    Connect(c);
    json refused = ReadAnswer(c);
    EXPECT_EQ(refused["ok"], false);
    EXPECT_EQ(refused["error"]["code"], "unavailable");
    EXPECT_NE(testing::ErrorMessage(refused).find("max_clients"), std::string::npos);
    EXPECT_TRUE(ClosedByServer(c));
    // The two admitted clients are still served.
    EXPECT_TRUE(a.Call({{"op", "ping"}}).ok());
    // Once one leaves, a newcomer is admitted again.
    a.Close();
    EXPECT_TRUE(WaitFor([&] {
      ControlClient d;
      if (!d.Connect(socket_path_).ok()) return false;
      auto answer = d.Call({{"op", "ping"}});
      return answer.ok() && answer.value()["ok"] == true;
    }));
  });
  EXPECT_GE(server_->rejected(), 1u);
}

TEST(ControlServerLimits, OneUidIsCappedAndTheLastSlotsAreKeptForRootAndTheDaemon) {
  ControlServer::Options o;
  o.max_clients = 10;
  o.max_clients_per_uid = 3;
  o.reserved_clients = 2;
  auto refused = [&](size_t open, size_t mine, bool privileged) {
    return ControlServer::Refusal(o, open, mine, 1000, privileged);
  };
  // Another user: up to its cap, and never into the reserved slots.
  EXPECT_EQ(refused(0, 2, false), "");
  EXPECT_NE(refused(0, 3, false).find("max_clients_per_uid"), std::string::npos);
  EXPECT_NE(refused(0, 3, false).find("uid 1000 already has 3"), std::string::npos);
  EXPECT_EQ(refused(7, 0, false), "");
  EXPECT_NE(refused(8, 0, false).find("reserved_clients"), std::string::npos);
  // Root or the daemon's own user: the reserved slots, and no per-uid cap.
  EXPECT_EQ(refused(8, 0, true), "");
  EXPECT_EQ(refused(9, 9, true), "");
  // max_clients is the ceiling for everyone.
  EXPECT_NE(refused(10, 0, true).find("max_clients limit"), std::string::npos);
}

TEST_F(ControlServerTest, TheServersOwnUserIsNotCappedPerUidButByMaxClients) {
  // The test's uid is the server's own (or root): a per-uid cap of 2 does not
  // apply to it, the 5 slots of max_clients do, reserved ones included.
  Listen({.max_line_bytes = 1 << 20,
          .max_clients = 5,
          .idle_timeout_s = 0,
          .max_clients_per_uid = 2,
          .reserved_clients = 1});
  RunClient([&] {
    std::vector<std::unique_ptr<ControlClient>> held;
    for (int i = 0; i < 5; ++i) {
      held.push_back(std::make_unique<ControlClient>());
      Connect(*held.back());
      auto answer = held.back()->Call({{"op", "ping"}});
      ASSERT_TRUE(answer.ok()) << i << ": " << answer.status().ToString();
      EXPECT_EQ(answer.value()["ok"], true) << i << ": " << answer.value().dump();
    }
    ControlClient extra;
    Connect(extra);
    json refused = ReadAnswer(extra);
    EXPECT_EQ(refused["error"]["code"], "unavailable") << refused.dump();
    EXPECT_NE(testing::ErrorMessage(refused).find("max_clients limit"), std::string::npos);
    EXPECT_TRUE(ClosedByServer(extra));
    // A slot given back is free again.
    held.front()->Close();
    EXPECT_TRUE(WaitFor([&] {
      ControlClient again;
      if (!again.Connect(socket_path_).ok()) return false;
      auto answer = again.Call({{"op", "ping"}});
      return answer.ok() && answer.value()["ok"] == true;
    }));
  });
  EXPECT_GE(server_->rejected(), 1u);
}

TEST_F(ControlServerTest, StaleSocketFileIsReplaced) {
  // A socket file nobody listens on, as a killed daemon leaves behind.
  ASSERT_TRUE(testing::MakeStaleSocket(socket_path_)) << std::strerror(errno);
  ASSERT_TRUE(testing::PathExists(socket_path_));
  Listen();
  RunClient([&] {
    ControlClient client;
    Connect(client);
    EXPECT_TRUE(client.Call({{"op", "ping"}}).ok());
  });
}

TEST_F(ControlServerTest, LiveSocketIsNeverTaken) {
  Listen();
  ControlServer second(loop_.get(), {}, [](Request, const PeerCred&, ControlServer::Reply) {});
  Status st = second.ListenPath(socket_path_, 0600);
  EXPECT_EQ(st.code(), Status::Code::kUnavailable);
  EXPECT_NE(st.message().find(socket_path_), std::string::npos) << st.message();
  second.CloseAll();
  // The first server still owns and serves the path.
  RunClient([&] {
    ControlClient client;
    Connect(client);
    EXPECT_TRUE(client.Call({{"op", "ping"}}).ok());
  });
}

TEST_F(ControlServerTest, FileThatIsNotASocketIsNeverRemoved) {
  ASSERT_TRUE(testing::WriteTextFile(socket_path_, "precious"));
  ControlServer server(loop_.get(), {}, [](Request, const PeerCred&, ControlServer::Reply) {});
  Status st = server.ListenPath(socket_path_, 0600);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("not a socket"), std::string::npos) << st.message();
  EXPECT_EQ(testing::ReadTextFile(socket_path_), "precious");
  server.CloseAll();
}

TEST_F(ControlServerTest, MissingSocketDirectoryIsNamedAsMissing) {
  // What a fresh install without /run/digestd meets: libuv alone would say
  // "permission denied".
  std::string path = dir_.File("no-such-dir/ctl.sock");
  ControlServer server(loop_.get(), {}, [](Request, const PeerCred&, ControlServer::Reply) {});
  Status st = server.ListenPath(path, 0600);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find(dir_.File("no-such-dir") + " (for [control] socket " + path +
                              ") does not exist; create it (systemd's RuntimeDirectory= does) "
                              "or set [control] socket"),
            std::string::npos)
      << st.message();
  EXPECT_EQ(st.message().find("ermission denied"), std::string::npos) << st.message();
  server.CloseAll();
}

TEST_F(ControlServerTest, SocketDirectoryThatIsAFileIsNamed) {
  ASSERT_TRUE(testing::WriteTextFile(dir_.File("plain"), "x"));
  std::string path = dir_.File("plain/ctl.sock");
  ControlServer server(loop_.get(), {}, [](Request, const PeerCred&, ControlServer::Reply) {});
  Status st = server.ListenPath(path, 0600);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find(dir_.File("plain") + " (for [control] socket " + path +
                              ") is not a directory; set [control] socket"),
            std::string::npos)
      << st.message();
  server.CloseAll();
}

TEST_F(ControlServerTest, AFailedBindSaysWhatToCheck) {
  // /proc exists and is a directory, but nothing can be created in it (even
  // by root, as the tests may run).
  const std::string path = "/proc/digestd-test-ctl.sock";
  ControlServer server(loop_.get(), {}, [](Request, const PeerCred&, ControlServer::Reply) {});
  Status st = server.ListenPath(path, 0600);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("cannot bind the control socket " + path + ": "), std::string::npos)
      << st.message();
  EXPECT_NE(st.message().find("; check that /proc is writable by the daemon's user (the unit's "
                              "User=), or set [control] socket"),
            std::string::npos)
      << st.message();
  server.CloseAll();
}

TEST_F(ControlServerTest, SocketFileGetsTheConfiguredModeAndIsRemovedOnClose) {
  Listen();
  struct stat st {};
  ASSERT_EQ(stat(socket_path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  server_->CloseAll();
  EXPECT_FALSE(testing::PathExists(socket_path_));
}

}  // namespace
}  // namespace digestd
