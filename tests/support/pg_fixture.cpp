#include "pg_fixture.h"

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

#include "store/migrations.h"

namespace digestd::testing {

namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? v : "";
}

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

std::string Script() {
  return std::string(DIGESTD_SOURCE_DIR) + "/scripts/pg-throwaway";
}

// Runs a shell command; its stdout in `out`, its stderr passes through to the
// test's output. Returns the exit status (-1 when it could not run).
int RunCommand(const std::string& cmd, std::string* out) {
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return -1;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) {
    if (out != nullptr) out->append(buf, n);
  }
  int rc = pclose(p);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

// "export K=V" lines, as pg-throwaway prints them.
std::map<std::string, std::string> ParseExports(const std::string& text) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("export ", 0) != 0) continue;
    size_t eq = line.find('=');
    if (eq == std::string::npos) continue;
    out[line.substr(7, eq - 7)] = line.substr(eq + 1);
  }
  return out;
}

std::string QuoteConn(const std::string& v) {
  std::string out = "'";
  for (char c : v) {
    if (c == '\'' || c == '\\') out += '\\';
    out += c;
  }
  return out + "'";
}

}  // namespace

std::unique_ptr<PgServer> PgServer::Launch(std::string* error) {
  std::string out;
  int rc = RunCommand(ShellQuote(Script()) + " start", &out);
  auto env = ParseExports(out);
  if (rc != 0 || env.count("PGHOST") == 0) {
    *error = "could not start a throwaway PostgreSQL cluster with scripts/pg-throwaway (exit " +
             std::to_string(rc) +
             "; its message is above). Install the postgresql package (scripts/setup), or set "
             "PGHOST/PGPORT/PGUSER to a server where this user may create databases";
    return nullptr;
  }
  std::unique_ptr<PgServer> s(new PgServer());
  s->host_ = env["PGHOST"];
  s->port_ = env["PGPORT"];
  s->user_ = env["PGUSER"];
  s->dir_ = env["DIGESTD_PG_DIR"];
  s->owned_ = true;
  return s;
}

PgServer* PgServer::Shared(std::string* error) {
  static std::unique_ptr<PgServer> shared;
  static std::string shared_error;
  static bool tried = false;
  if (tried) {
    *error = shared_error;
    return shared.get();
  }
  tried = true;
  auto probe = [](PgServer& s) { return s.Exec("postgres", "SELECT 1").ok(); };
  if (!Env("PGHOST").empty()) {
    std::unique_ptr<PgServer> s(new PgServer());
    s->host_ = Env("PGHOST");
    s->port_ = Env("PGPORT");
    s->user_ = Env("PGUSER");
    auto r = s->Exec("postgres", "SELECT 1");
    if (!r.ok()) {
      shared_error = "PGHOST is set (" + s->host_ +
                     ") but the server does not answer: " + r.status().message();
      *error = shared_error;
      return nullptr;
    }
    shared = std::move(s);
    return shared.get();
  }
  std::string env_file = Env("DIGESTD_PG_ENV_FILE");
  if (!env_file.empty()) {
    std::ifstream in(env_file);
    std::stringstream text;
    text << in.rdbuf();
    auto env = ParseExports(text.str());
    if (env.count("PGHOST") != 0) {
      std::unique_ptr<PgServer> s(new PgServer());
      s->host_ = env["PGHOST"];
      s->port_ = env["PGPORT"];
      s->user_ = env["PGUSER"];
      if (probe(*s)) {
        shared = std::move(s);
        return shared.get();
      }
    }
  }
  shared = Launch(&shared_error);
  if (shared && !probe(*shared)) {
    shared_error = "a throwaway cluster started but does not answer: " +
                   shared->Exec("postgres", "SELECT 1").status().message();
    shared.reset();
  }
  *error = shared_error;
  return shared.get();
}

std::unique_ptr<PgServer> PgServer::StartPrivate(std::string* error) {
  return Launch(error);
}

PgServer::~PgServer() {
  if (owned_ && !dir_.empty())
    RunCommand(ShellQuote(Script()) + " stop " + ShellQuote(dir_), nullptr);
}

std::string PgServer::Conninfo(const std::string& db) const {
  std::string c = "host=" + QuoteConn(host_) + " dbname=" + QuoteConn(db);
  if (!port_.empty()) c += " port=" + QuoteConn(port_);
  if (!user_.empty()) c += " user=" + QuoteConn(user_);
  return c;
}

Result<Rows> PgServer::Exec(const std::string& db, const std::string& sql) const {
  PgSession session(Conninfo(db) + " connect_timeout=10");
  return session.Exec(sql);
}

std::string PgServer::Scalar(const std::string& db, const std::string& sql) const {
  auto r = Exec(db, sql);
  if (!r.ok()) return "ERROR: " + r.status().message();
  if (r->empty() || r->front().empty()) return "";
  return r->front().front();
}

Result<std::string> PgServer::CreateDatabase() {
  static std::atomic<int> counter{0};
  std::string name = "dt_" + std::to_string(getpid()) + "_" + std::to_string(++counter) + "_" +
                     std::to_string(std::rand() % 100000);
  auto r = Exec("postgres", "CREATE DATABASE " + name);
  if (!r.ok()) return r.status();
  return name;
}

Status PgServer::DropDatabase(const std::string& name) {
  auto r = Exec("postgres", "DROP DATABASE IF EXISTS " + name + " WITH (FORCE)");
  return r.ok() ? Status::Ok() : r.status();
}

Status PgServer::Stop(const std::string& mode) {
  if (!controllable()) return Status::Internal("this test does not own the server");
  int rc = RunCommand(ShellQuote(Script()) + " ctl " + ShellQuote(dir_) + " stop " + mode, nullptr);
  return rc == 0 ? Status::Ok() : Status::Internal("pg_ctl stop failed");
}

Status PgServer::Start() {
  if (!controllable()) return Status::Internal("this test does not own the server");
  int rc = RunCommand(ShellQuote(Script()) + " ctl " + ShellQuote(dir_) + " start", nullptr);
  return rc == 0 ? Status::Ok() : Status::Internal("pg_ctl start failed");
}

PgServer* PgTest::server_ = nullptr;
std::string PgTest::db_;
std::string PgTest::error_;

void PgTest::SetUpTestSuite() {
  error_.clear();
  server_ = PgServer::Shared(&error_);
  if (server_ == nullptr) return;
  auto db = server_->CreateDatabase();
  if (!db.ok()) {
    error_ = "could not create a test database: " + db.status().message();
    server_ = nullptr;
    return;
  }
  db_ = *db;
}

void PgTest::TearDownTestSuite() {
  if (server_ != nullptr && !db_.empty()) (void)server_->DropDatabase(db_);
  db_.clear();
}

void PgTest::SetUp() {
  ASSERT_NE(server_, nullptr) << "no PostgreSQL for this test: " << error_;
}

Status MigrateNow(TestLoop& loop, PgConn& conn) {
  std::optional<Status> done;
  Status st = Migrate(conn, [&](Status s) { done = std::move(s); });
  if (!st.ok()) return st;
  if (!loop.RunUntil([&] { return done.has_value(); })) {
    return Status::Internal("Migrate never answered");
  }
  return *done;
}

::testing::AssertionResult ConnectAndMigrate(TestLoop& loop, PgConn& conn) {
  if (!conn.init_status().ok())
    return ::testing::AssertionFailure() << conn.init_status().ToString();
  conn.Start();
  if (!loop.RunUntil([&] { return conn.up(); })) {
    return ::testing::AssertionFailure()
           << "no connection to " << conn.Describe() << ": " << conn.state().last_error;
  }
  Status st = MigrateNow(loop, conn);
  if (!st.ok()) return ::testing::AssertionFailure() << st.ToString();
  return ::testing::AssertionSuccess();
}

}  // namespace digestd::testing
