#include "store/pg_conn.h"

#include <arpa/inet.h>
#include <netdb.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <random>

#include "obs/log.h"
#include "util/clock.h"

namespace digestd {

namespace {

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\r')) s.pop_back();
  return s;
}

// libpq error texts span lines ("connection to server ... failed: FATAL: ...\n");
// a log line and a status field want one.
std::string OneLine(std::string s) {
  s = Trim(std::move(s));
  for (char& c : s) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  return s;
}

bool IsAddressLiteral(const std::string& host) {
  unsigned char buf[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

// SQLSTATE classes whose errors go away by themselves: connection exceptions,
// transaction rollbacks (serialization, deadlock), insufficient resources,
// operator intervention (shutdown, cancel), lock not available, read-only
// transaction (a standby that is being promoted).
bool TransientSqlState(std::string_view s) {
  if (s.size() != 5) return false;
  std::string_view cls = s.substr(0, 2);
  return cls == "08" || cls == "40" || cls == "53" || cls == "57" || s == "55P03" || s == "25006";
}

// SQLSTATE classes caused by the data of the statement, which writing it
// again cannot fix: data exceptions (a NUL in text, invalid JSON), integrity
// violations, and program limits exceeded (54001: a value nested deeper than
// the server's stack allows; 54000: a value too large).
bool DataSqlState(std::string_view s) {
  if (s.size() != 5) return false;
  std::string_view cls = s.substr(0, 2);
  return cls == "22" || cls == "23" || cls == "54";
}

// How long a connection must have been up for a loss to reset the backoff.
constexpr uint64_t kStableMs = 5000;

void OnNotice(void* arg, const char* message) {
  const auto* label = static_cast<const std::string*>(arg);
  LOG_DEBUG("%s: server notice: %s", label->c_str(), OneLine(message).c_str());
}

}  // namespace

std::string_view PgResult::Text(int row, int col) const {
  if (!res_ || PQgetisnull(res_.get(), row, col)) return {};
  return std::string_view(PQgetvalue(res_.get(), row, col),
                          static_cast<size_t>(PQgetlength(res_.get(), row, col)));
}

int64_t PgResult::Int(int row, int col) const {
  std::string_view t = Text(row, col);
  int64_t v = 0;
  std::from_chars(t.data(), t.data() + t.size(), v);
  return v;
}

bool PgResult::Bool(int row, int col) const {
  std::string_view t = Text(row, col);
  return !t.empty() && (t[0] == 't' || t[0] == '1');
}

uint64_t PgResult::Affected() const {
  if (!res_) return 0;
  const char* t = PQcmdTuples(res_.get());
  uint64_t v = 0;
  if (t != nullptr) std::from_chars(t, t + std::strlen(t), v);
  return v;
}

namespace {

// Where the passwords are in a connection string, parsed or not: a URI's
// userinfo after the ':', "password=" query parameters, and key=value
// "password" pairs (quoted or not). Offsets into `s`, in order.
std::vector<std::pair<size_t, size_t>> PasswordSpans(std::string_view s) {
  std::string low(s);
  for (char& c : low) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::vector<std::pair<size_t, size_t>> spans;
  size_t scheme = low.rfind("postgresql://", 0) == 0 ? 13
                  : low.rfind("postgres://", 0) == 0 ? 11
                                                     : 0;
  if (scheme != 0) {
    // URI: scheme://user:secret@host/db?password=secret&...
    size_t auth_end = s.find_first_of("/?#", scheme);
    if (auth_end == std::string::npos) auth_end = s.size();
    size_t at = s.rfind('@', auth_end - 1);
    if (at != std::string::npos && at >= scheme) {
      size_t colon = s.find(':', scheme);
      if (colon != std::string::npos && colon < at) spans.emplace_back(colon + 1, at - colon - 1);
    }
    size_t q = s.find('?');
    while (q != std::string::npos && q < s.size()) {
      size_t name = q + 1;
      size_t eq = s.find('=', name);
      size_t next = s.find_first_of("&#", name);
      if (eq != std::string::npos && (next == std::string::npos || eq < next) &&
          low.compare(name, eq - name, "password") == 0) {
        size_t vend = next == std::string::npos ? s.size() : next;
        spans.emplace_back(eq + 1, vend - eq - 1);
      }
      q = next != std::string::npos && s[next] == '&' ? next : std::string::npos;
    }
    return spans;
  }
  // key=value pairs: password=secret, password = 'sec ret'
  size_t pos = 0;
  while ((pos = low.find("password", pos)) != std::string::npos) {
    bool word_start = pos == 0 || std::isspace(static_cast<unsigned char>(s[pos - 1])) != 0;
    size_t i = pos + 8;
    while (i < s.size() && s[i] == ' ') ++i;
    if (!word_start || i >= s.size() || s[i] != '=') {
      pos += 8;
      continue;
    }
    ++i;
    while (i < s.size() && s[i] == ' ') ++i;
    size_t vend = i;
    if (vend < s.size() && s[vend] == '\'') {
      ++vend;
      while (vend < s.size() && s[vend] != '\'') vend += s[vend] == '\\' ? 2 : 1;
      vend = std::min(vend + 1, s.size());
    } else {
      while (vend < s.size() && std::isspace(static_cast<unsigned char>(s[vend])) == 0) ++vend;
    }
    spans.emplace_back(i, vend - i);
    pos = vend;
  }
  return spans;
}

// Every occurrence of each secret in `text` replaced with "***".
std::string ScrubSecrets(std::string text, const std::vector<std::string>& secrets) {
  for (const auto& secret : secrets) {
    if (secret.size() < 2) continue;  // one character would blank the message
    size_t pos = 0;
    while ((pos = text.find(secret, pos)) != std::string::npos) {
      text.replace(pos, secret.size(), "***");
      pos += 3;
    }
  }
  return text;
}

}  // namespace

std::string PgConnectHint(std::string_view error) {
  auto has = [&](std::string_view what) { return error.find(what) != std::string_view::npos; };
  if (has("Peer authentication failed")) {
    return "; peer authentication admits only the system user of the same name as the role: "
           "run digestd as that user (the unit's User=, or sudo -u USER), or set user= in "
           "[postgres] conninfo to a role of that name";
  }
  if (has("password authentication failed") || has("no password supplied") ||
      has("authentication failed")) {
    return "; check the role's password (ALTER ROLE ... PASSWORD), the password in [postgres] "
           "conninfo or the daemon user's ~/.pgpass, and the auth method pg_hba.conf gives "
           "this host and user";
  }
  if (has("no pg_hba.conf entry")) {
    return "; add a line for this host, user and database to the server's pg_hba.conf and "
           "reload PostgreSQL";
  }
  if (has("role \"") && has("does not exist")) {
    return "; create the role (createuser), or set user= in [postgres] conninfo (without it "
           "the role is the name of the system user digestd runs as: run it as that user, such "
           "as sudo -u digestd)";
  }
  if (has("database \"") && has("does not exist")) {
    return "; create the database (createdb -O <role>) or set dbname= in [postgres] conninfo";
  }
  if (has("Connection refused") || has("No such file or directory")) {
    return "; check that PostgreSQL is running and host=/port= in [postgres] conninfo point at "
           "it";
  }
  return "";
}

std::string RedactConninfo(std::string_view conninfo) {
  std::string out;
  size_t from = 0;
  for (auto [pos, len] : PasswordSpans(conninfo)) {
    out.append(conninfo.substr(from, pos - from));
    out += "***";
    from = pos + len;
  }
  out.append(conninfo.substr(std::min(from, conninfo.size())));
  return out;
}

std::vector<std::string> ConninfoSecrets(std::string_view conninfo) {
  std::vector<std::string> out;
  for (auto [pos, len] : PasswordSpans(conninfo)) {
    std::string v(conninfo.substr(pos, len));
    if (v.size() >= 2 && v.front() == '\'' && v.back() == '\'') v = v.substr(1, v.size() - 2);
    if (!v.empty()) out.push_back(std::move(v));
  }
  return out;
}

std::string RedactConninfoMessage(std::string_view message, std::string_view conninfo) {
  std::vector<std::string> secrets = ConninfoSecrets(conninfo);
  std::string text(message);
  // libpq quotes the piece it stumbled on: the whole URI, or one token of it,
  // which may be all or part of a password ("invalid percent-encoded token").
  size_t pos = 0;
  while (pos < text.size()) {
    size_t open = text.find('"', pos);
    if (open == std::string::npos) break;
    size_t close = text.find('"', open + 1);
    if (close == std::string::npos) break;
    std::string piece = text.substr(open + 1, close - open - 1);
    std::string shown = RedactConninfo(piece);
    for (const auto& secret : secrets) {
      if (!piece.empty() && secret.find(piece) != std::string::npos) shown = "***";
    }
    text.replace(open + 1, piece.size(), shown);
    pos = open + shown.size() + 2;
  }
  return ScrubSecrets(std::move(text), secrets);
}

Status ValidateConninfo(std::string_view conninfo) {
  char* err = nullptr;
  std::string info(conninfo);
  PQconninfoOption* opts = PQconninfoParse(info.c_str(), &err);
  if (opts != nullptr) {
    PQconninfoFree(opts);
    return Status::Ok();
  }
  std::string why = OneLine(err != nullptr ? err : "out of memory");
  if (err != nullptr) PQfreemem(err);
  return Status::InvalidConfig(
      "[postgres] conninfo does not parse (" + RedactConninfoMessage(why, conninfo) +
      "); write a URI such as \"postgresql://digestd@db.example/digestd\" (percent-encode "
      "special characters, such as %40 for @ in a password) or key=value pairs such as "
      "\"host=/run/postgresql dbname=digestd\"; keep a password in ~/.pgpass or PGPASSFILE "
      "rather than in the config");
}

struct PgConn::Resolve {
  uv_getaddrinfo_t req{};
  PgConn* self = nullptr;  // null once nobody waits for the answer
};

PgConn::PgConn(uv_loop_t* loop, PgConnOptions options) : loop_(loop), options_(std::move(options)) {
  for (auto* t : {&retry_timer_, &deadline_timer_}) {
    int rc = uv_timer_init(loop_, t->get());
    if (rc != 0) {
      // Without its timers the connection could neither time out nor
      // reconnect: refuse to work rather than hang later.
      if (init_status_.ok()) {
        init_status_ = Status::Internal(options_.label + ": uv_timer_init failed (" +
                                        std::string(uv_strerror(rc)) +
                                        "); the connection cannot run; restart digestd");
      }
      continue;
    }
    t->set_initialized();
    t->get()->data = this;
  }
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(options_.conninfo.c_str(), &err);
  std::string host, hostaddr, port, dbname, user;
  if (opts == nullptr) {
    parse_error_ =
        "the connection string does not parse: " + OneLine(err != nullptr ? err : "out of memory") +
        "; fix [postgres] conninfo (a URI such as "
        "\"postgresql:///digestd?host=/run/postgresql\" or key=value pairs)";
    if (err != nullptr) PQfreemem(err);
    target_ = RedactConninfo(options_.conninfo);
    // libpq echoes pieces of a bad string; keep any password out of them.
    secrets_ = ConninfoSecrets(options_.conninfo);
    parse_error_ = RedactConninfoMessage(parse_error_, options_.conninfo);
    return;
  }
  bool has_app_name = false;
  for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o) {
    if (o->val == nullptr || o->val[0] == '\0') continue;
    std::string k = o->keyword, v = o->val;
    if (k == "password") secrets_.push_back(v);
    if (k == "host") host = v;
    if (k == "hostaddr") hostaddr = v;
    if (k == "port") port = v;
    if (k == "dbname") dbname = v;
    if (k == "user") user = v;
    if (k == "application_name" || k == "fallback_application_name") has_app_name = true;
    keys_.push_back(std::move(k));
    values_.push_back(std::move(v));
  }
  PQconninfoFree(opts);
  // The password as written too (percent-encoded in a URI), should libpq echo it.
  for (auto& secret : ConninfoSecrets(options_.conninfo)) secrets_.push_back(std::move(secret));
  if (!has_app_name) {
    keys_.push_back("fallback_application_name");
    values_.push_back("digestd");
  }
  auto env = [](const char* name) {
    const char* v = std::getenv(name);
    return std::string(v != nullptr ? v : "");
  };
  if (host.empty() && hostaddr.empty()) host = env("PGHOST");
  if (port.empty()) port = env("PGPORT");
  if (dbname.empty()) dbname = env("PGDATABASE");
  if (user.empty()) user = env("PGUSER");
  target_ = "host=" + (host.empty() ? (hostaddr.empty() ? "(libpq default)" : hostaddr) : host);
  if (!port.empty()) target_ += " port=" + port;
  if (!dbname.empty()) target_ += " dbname=" + dbname;
  if (!user.empty()) target_ += " user=" + user;
  // One host given by name: resolve it off the loop thread (see the header).
  if (hostaddr.empty() && !host.empty() && host.find(',') == std::string::npos && host[0] != '/' &&
      host[0] != '@' && !IsAddressLiteral(host)) {
    resolve_host_ = host;
    if (std::find(keys_.begin(), keys_.end(), "host") == keys_.end()) {
      keys_.push_back("host");  // it came from PGHOST; hostaddr needs it beside it
      values_.push_back(host);
    }
  } else if (hostaddr.empty() && host.find(',') != std::string::npos) {
    size_t start = 0;
    bool named = false;
    while (start <= host.size()) {
      size_t end = host.find(',', start);
      std::string h =
          host.substr(start, end == std::string::npos ? std::string::npos : end - start);
      if (!h.empty() && h[0] != '/' && h[0] != '@' && !IsAddressLiteral(h)) named = true;
      if (end == std::string::npos) break;
      start = end + 1;
    }
    if (named) {
      LOG_WARN(
          "%s: [postgres] conninfo lists several hosts by name; libpq looks them up itself, "
          "which blocks the event loop while DNS answers. Give hostaddr= to avoid it",
          options_.label.c_str());
    }
  }
}

PgConn::~PgConn() {
  Close();
  *alive_ = false;
}

void PgConn::Start() {
  if (phase_ != Phase::kIdle) return;
  if (!init_status_.ok()) {
    // Never connects; status shows why.
    last_error_ = init_status_.message();
    last_error_unix_ms_ = UnixMillis();
    return;
  }
  BeginAttempt();
}

void PgConn::BeginAttempt() {
  if (phase_ == Phase::kClosed) return;
  next_attempt_unix_ms_ = 0;
  if (!parse_error_.empty()) {
    phase_ = Phase::kConnecting;
    AttemptFailed(parse_error_);
    return;
  }
  if (resolve_host_.empty()) {
    StartConnect("");
    return;
  }
  phase_ = Phase::kResolving;
  auto owned = std::make_unique<Resolve>();
  owned->self = this;
  owned->req.data = owned.get();
  struct addrinfo hints {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  int rc = uv_getaddrinfo(
      loop_, &owned->req,
      [](uv_getaddrinfo_t* req, int status, struct addrinfo* res) {
        std::unique_ptr<Resolve> r(static_cast<Resolve*>(req->data));
        PgConn* self = r->self;
        if (self == nullptr) {
          uv_freeaddrinfo(res);
          return;
        }
        self->resolve_ = nullptr;
        if (status != 0 || res == nullptr) {
          uv_freeaddrinfo(res);
          self->AttemptFailed("could not look up host \"" + self->resolve_host_ +
                              "\": " + uv_strerror(status));
          return;
        }
        char buf[INET6_ADDRSTRLEN] = {0};
        if (res->ai_family == AF_INET6) {
          uv_ip6_name(reinterpret_cast<const sockaddr_in6*>(res->ai_addr), buf, sizeof buf);
        } else {
          uv_ip4_name(reinterpret_cast<const sockaddr_in*>(res->ai_addr), buf, sizeof buf);
        }
        uv_freeaddrinfo(res);
        self->StartConnect(buf);
      },
      resolve_host_.c_str(), nullptr, &hints);
  if (rc != 0) {
    AttemptFailed("could not look up host \"" + resolve_host_ + "\": " + uv_strerror(rc));
    return;
  }
  resolve_ = owned.release();
}

void PgConn::StartConnect(const std::string& hostaddr) {
  std::vector<const char*> keys, values;
  for (size_t i = 0; i < keys_.size(); ++i) {
    keys.push_back(keys_[i].c_str());
    values.push_back(values_[i].c_str());
  }
  if (!hostaddr.empty()) {
    keys.push_back("hostaddr");
    values.push_back(hostaddr.c_str());
  }
  keys.push_back(nullptr);
  values.push_back(nullptr);
  phase_ = Phase::kConnecting;
  conn_ = PQconnectStartParams(keys.data(), values.data(), 0);
  if (conn_ == nullptr) {
    AttemptFailed("out of memory starting a connection");
    return;
  }
  if (PQstatus(conn_) == CONNECTION_BAD) {
    AttemptFailed(PQerrorMessage(conn_));
    return;
  }
  PQsetNoticeProcessor(conn_, OnNotice, &options_.label);
  ArmTimer(deadline_timer_, static_cast<uint64_t>(options_.connect_timeout_ms),
           [](uv_timer_t* t) { static_cast<PgConn*>(t->data)->OnDeadline(); });
  // libpq's rule: before the first PQconnectPoll, wait as if it said WRITING.
  connect_wait_ = PGRES_POLLING_WRITING;
  Status st = WatchSocket(UV_WRITABLE);
  if (!st.ok()) AttemptFailed(st.message());
}

void PgConn::ConnectStep() {
  // PQconnectPoll may close this socket and open another (the next address
  // or host): stop watching it first, so libuv never watches a closed fd.
  if (poll_ && poll_->initialized()) uv_poll_stop(poll_->get());
  connect_wait_ = PQconnectPoll(conn_);
  switch (connect_wait_) {
    case PGRES_POLLING_OK:
      OnConnected();
      return;
    case PGRES_POLLING_FAILED:
      AttemptFailed(PQerrorMessage(conn_));
      return;
    case PGRES_POLLING_READING:
    case PGRES_POLLING_WRITING: {
      Status st = WatchSocket(connect_wait_ == PGRES_POLLING_READING ? UV_READABLE : UV_WRITABLE);
      if (!st.ok()) AttemptFailed(st.message());
      return;
    }
    default:
      AttemptFailed("unexpected state from PQconnectPoll");
      return;
  }
}

void PgConn::OnConnected() {
  uv_timer_stop(deadline_timer_.get());
  if (PQsetnonblocking(conn_, 1) != 0 || PQenterPipelineMode(conn_) != 1) {
    AttemptFailed("could not switch the connection to non-blocking pipeline mode: " +
                  std::string(PQerrorMessage(conn_)));
    return;
  }
  phase_ = Phase::kUp;
  up_since_ms_ = uv_now(loop_);
  ++connects_;
  next_attempt_unix_ms_ = 0;
  prepared_.clear();
  broken_.clear();
  want_write_ = false;
  last_progress_ms_ = uv_now(loop_);
  std::string host = PQhost(conn_) != nullptr ? PQhost(conn_) : "";
  target_ = "host=" + host + " port=" + (PQport(conn_) ? PQport(conn_) : "") +
            " dbname=" + (PQdb(conn_) ? PQdb(conn_) : "") +
            " user=" + (PQuser(conn_) ? PQuser(conn_) : "");
  Status st = WatchSocket(UV_READABLE);
  if (!st.ok()) {
    Lost(st.message());
    return;
  }
  LOG_NOTICE("%s: connected to %s (server %d)", options_.label.c_str(), target_.c_str(),
             PQserverVersion(conn_));
  Notify(true, Status::Ok());
}

void PgConn::AttemptFailed(const std::string& why) {
  if (phase_ == Phase::kClosed) return;
  TearDownSocket();
  phase_ = Phase::kWaiting;
  ++failures_;
  last_error_ = Redact(OneLine(why)) + PgConnectHint(why);
  last_error_unix_ms_ = UnixMillis();
  ScheduleRetry();
  LOG_WARN("%s: cannot connect to %s: %s; retrying in %lld ms", options_.label.c_str(),
           target_.c_str(), last_error_.c_str(),
           static_cast<long long>(next_attempt_unix_ms_ - last_error_unix_ms_));
}

void PgConn::Lost(const std::string& why) {
  if (phase_ == Phase::kClosed) return;
  if (phase_ != Phase::kUp) {
    AttemptFailed(why);
    return;
  }
  TearDownSocket();
  phase_ = Phase::kWaiting;
  ++disconnects_;
  // A connection that lived reconnects at once; one dropped right after it
  // was made (a server that accepts and then fails) keeps backing off.
  if (uv_now(loop_) - up_since_ms_ >= kStableMs) {
    failures_ = 0;
  } else {
    ++failures_;
  }
  last_error_ = Redact(OneLine(why));
  last_error_unix_ms_ = UnixMillis();
  ScheduleRetry();
  LOG_WARN("%s: lost the connection to %s: %s; reconnecting", options_.label.c_str(),
           target_.c_str(), last_error_.c_str());
  Status st = Status::Unavailable("PostgreSQL is unreachable (" + target_ + "): " + last_error_);
  auto alive = alive_;
  FailUnits(st);
  if (!*alive) return;
  Notify(false, st);
}

void PgConn::ScheduleRetry() {
  int shift = std::min(std::max(failures_ - 1, 0), 16);
  uint64_t delay = std::min<uint64_t>(static_cast<uint64_t>(options_.reconnect_max_ms),
                                      static_cast<uint64_t>(options_.reconnect_min_ms) << shift);
  // Half fixed, half random: daemons that lost the same server spread out.
  static thread_local std::minstd_rand rng(std::random_device{}());
  delay = delay / 2 + (delay > 1 ? rng() % (delay / 2 + 1) : 0);
  if (failures_ == 0) delay = 0;  // a connection that was up: try again at once
  next_attempt_unix_ms_ = UnixMillis() + static_cast<int64_t>(delay);
  ArmTimer(retry_timer_, delay,
           [](uv_timer_t* t) { static_cast<PgConn*>(t->data)->BeginAttempt(); });
}

void PgConn::TearDownSocket() {
  // The poll handle goes first: libpq's PQfinish closes the socket, and
  // libuv must not be watching a closed descriptor (whose number the next
  // open() may reuse).
  if (poll_) {
    poll_->Close();
    poll_.reset();
  }
  poll_fd_ = -1;
  poll_events_ = 0;
  want_write_ = false;
  if (conn_ != nullptr) {
    PQfinish(conn_);
    conn_ = nullptr;
  }
  if (deadline_timer_.initialized()) uv_timer_stop(deadline_timer_.get());
  prepared_.clear();
  broken_.clear();
}

void PgConn::Close() {
  if (phase_ == Phase::kClosed) return;
  bool was_up = phase_ == Phase::kUp;
  if (resolve_ != nullptr) {
    resolve_->self = nullptr;  // its callback frees it
    uv_cancel(reinterpret_cast<uv_req_t*>(&resolve_->req));
    resolve_ = nullptr;
  }
  TearDownSocket();
  phase_ = Phase::kClosed;
  next_attempt_unix_ms_ = 0;
  retry_timer_.Close();
  deadline_timer_.Close();
  Status st = Status::Unavailable("the PostgreSQL connection was closed (" + target_ + ")");
  auto alive = alive_;
  FailUnits(st);
  if (!*alive) return;
  if (was_up) Notify(false, st);
}

void PgConn::FailUnits(const Status& why) {
  std::deque<Unit> units;
  units.swap(units_);
  auto alive = alive_;
  for (auto& u : units) {
    u.done(why);
    if (!*alive) return;
  }
}

void PgConn::Notify(bool is_up, const Status& why) {
  auto observers = observers_;
  auto alive = alive_;
  for (auto& [id, fn] : observers) {
    bool still = std::any_of(observers_.begin(), observers_.end(),
                             [id = id](const auto& o) { return o.first == id; });
    if (!still) continue;
    fn(is_up, why);
    if (!*alive) return;
    if (is_up != up()) return;  // the state changed again inside the observer
  }
}

uint64_t PgConn::AddStateObserver(StateObserver observer) {
  uint64_t id = next_observer_++;
  observers_.emplace_back(id, std::move(observer));
  return id;
}

void PgConn::RemoveStateObserver(uint64_t id) {
  observers_.erase(std::remove_if(observers_.begin(), observers_.end(),
                                  [id](const auto& o) { return o.first == id; }),
                   observers_.end());
}

Status PgConn::WatchSocket(int events) {
  int fd = PQsocket(conn_);
  if (fd < 0) return Status::Unavailable("libpq reports no socket for the connection");
  if (!poll_ || fd != poll_fd_) {
    if (poll_) poll_->Close();
    poll_ = std::make_unique<UvHandle<uv_poll_t>>();
    int rc = uv_poll_init_socket(loop_, poll_->get(), fd);
    if (rc != 0) {
      poll_.reset();
      return Status::Internal(std::string("uv_poll_init_socket: ") + uv_strerror(rc));
    }
    poll_->set_initialized();
    poll_->get()->data = this;
    poll_fd_ = fd;
  }
  int rc = uv_poll_start(poll_->get(), events, [](uv_poll_t* h, int status, int ev) {
    static_cast<PgConn*>(h->data)->OnSocket(status, ev);
  });
  if (rc != 0) return Status::Internal(std::string("uv_poll_start: ") + uv_strerror(rc));
  poll_events_ = events;
  return Status::Ok();
}

void PgConn::OnSocket(int status, int events) {
  if (phase_ == Phase::kConnecting) {
    ConnectStep();
    return;
  }
  if (phase_ != Phase::kUp) return;
  auto alive = alive_;
  if (status < 0 || (events & (UV_READABLE | UV_DISCONNECT)) != 0) {
    if (PQconsumeInput(conn_) == 0) {
      Lost(PQerrorMessage(conn_));
      return;
    }
    ReadResults();
    if (!*alive || phase_ != Phase::kUp) return;
    DeliverNotifies();
    if (!*alive || phase_ != Phase::kUp) return;
  }
  if (want_write_) {
    Flush();
  } else if (status < 0) {
    // libuv stopped the watcher on the error; libpq saw no failure, so watch again.
    Status st = WatchSocket(UV_READABLE);
    if (!st.ok()) Lost(st.message());
  }
}

bool PgConn::CheckBad() {
  if (conn_ != nullptr && PQstatus(conn_) != CONNECTION_BAD) return false;
  Lost(conn_ != nullptr ? PQerrorMessage(conn_) : "no connection");
  return true;
}

void PgConn::ReadResults() {
  auto alive = alive_;
  while (phase_ == Phase::kUp && !units_.empty()) {
    if (CheckBad()) return;
    if (PQisBusy(conn_) != 0) break;
    PGresult* raw = PQgetResult(conn_);
    Unit& u = units_.front();
    if (raw == nullptr) {
      // The end of one command's results; a NULL before any result means
      // libpq has nothing complete yet.
      if (!u.cmd_has_result) break;
      u.cmd_has_result = false;
      ++u.next_cmd;
      continue;
    }
    PgResult res(raw);
    ExecStatusType st = PQresultStatus(raw);
    if (st == PGRES_PIPELINE_SYNC) {
      Unit done = std::move(units_.front());
      units_.pop_front();
      last_progress_ms_ = uv_now(loop_);
      ArmQueryTimer();
      if (done.error) {
        done.done(*done.error);
      } else {
        done.done(std::move(done.results));
      }
      if (!*alive) return;
      continue;
    }
    u.cmd_has_result = true;
    const Cmd* cmd = u.next_cmd < u.cmds.size() ? &u.cmds[u.next_cmd] : nullptr;
    bool is_prepare = cmd != nullptr && cmd->kind == CmdKind::kPrepare;
    if (st == PGRES_FATAL_ERROR || st == PGRES_PIPELINE_ABORTED) {
      // A prepare that failed or was skipped left nothing on the server.
      if (is_prepare) prepared_.erase(cmd->prepare_name);
      if (st == PGRES_FATAL_ERROR && !u.error) {
        const char* code = PQresultErrorField(raw, PG_DIAG_SQLSTATE);
        const char* primary = PQresultErrorField(raw, PG_DIAG_MESSAGE_PRIMARY);
        const char* detail = PQresultErrorField(raw, PG_DIAG_MESSAGE_DETAIL);
        std::string sqlstate = code != nullptr ? code : "";
        std::string msg =
            "PostgreSQL: " + OneLine(primary != nullptr ? primary : PQresultErrorMessage(raw));
        if (detail != nullptr) msg += " (" + OneLine(detail) + ")";
        if (!sqlstate.empty()) msg += " [SQLSTATE " + sqlstate + "]";
        msg = Redact(std::move(msg));
        if (TransientSqlState(sqlstate)) {
          u.error = Status::Unavailable(msg);
        } else if (DataSqlState(sqlstate)) {
          u.error = Status::BadRequest(msg);
        } else {
          u.error = Status::Internal(msg);
        }
      }
    } else if (!is_prepare) {
      u.results.push_back(std::move(res));
    }
  }
  CheckBad();
}

void PgConn::DeliverNotifies() {
  auto alive = alive_;
  while (phase_ == Phase::kUp) {
    PGnotify* n = PQnotifies(conn_);
    if (n == nullptr) break;
    std::string channel = n->relname != nullptr ? n->relname : "";
    std::string payload = n->extra != nullptr ? n->extra : "";
    PQfreemem(n);
    if (notify_) notify_(channel, payload);
    if (!*alive) return;
  }
}

size_t PgConn::units_in_flight() const {
  return static_cast<size_t>(
      std::count_if(units_.begin(), units_.end(), [](const Unit& u) { return !u.internal; }));
}

Status PgConn::Send(std::vector<PgStatement> statements, UnitCallback done) {
  if (phase_ != Phase::kUp) {
    std::string why = last_error_.empty() ? "not connected yet" : last_error_;
    return Status::Unavailable("PostgreSQL is unreachable (" + target_ + "): " + why);
  }
  if (statements.empty()) return Status::Internal("PgConn::Send: a unit needs a statement");
  Unit unit;
  unit.done = std::move(done);
  unit.sent_ms = uv_now(loop_);
  std::string failure;
  // New prepared statements go first, in a unit of their own (their own
  // Sync): inside the statements' unit, an earlier statement's failure
  // would skip the prepare while units sent after this one already count
  // on the name.
  Unit prep;
  prep.internal = true;
  prep.sent_ms = unit.sent_ms;
  for (const auto& s : statements) {
    if (s.name.empty() || prepared_.count(s.name) > 0) continue;
    if (PQsendPrepare(conn_, s.name.c_str(), s.sql.c_str(), static_cast<int>(s.params.size()),
                      nullptr) == 0) {
      failure = PQerrorMessage(conn_);
      break;
    }
    prepared_.insert(s.name);
    prep.cmds.push_back({CmdKind::kPrepare, s.name});
  }
  if (!prep.cmds.empty()) {
    if (failure.empty() && PQpipelineSync(conn_) == 0) failure = PQerrorMessage(conn_);
    prep.done = [label = options_.label](Result<std::vector<PgResult>> r) {
      if (!r.ok()) {
        LOG_ERROR("%s: preparing a statement failed: %s", label.c_str(),
                  r.status().message().c_str());
      }
    };
    if (units_.empty()) last_progress_ms_ = prep.sent_ms;
    units_.push_back(std::move(prep));
  }
  std::vector<const char*> values;
  for (const auto& s : statements) {
    if (!failure.empty()) break;
    values.clear();
    for (const auto& p : s.params) values.push_back(p ? p->c_str() : nullptr);
    int n = static_cast<int>(values.size());
    int ok;
    if (!s.name.empty()) {
      ok = PQsendQueryPrepared(conn_, s.name.c_str(), n, values.data(), nullptr, nullptr, 0);
    } else {
      ok = PQsendQueryParams(conn_, s.sql.c_str(), n, nullptr, values.data(), nullptr, nullptr, 0);
    }
    if (ok == 0) {
      failure = PQerrorMessage(conn_);
      break;
    }
    unit.cmds.push_back({CmdKind::kStatement, {}});
  }
  if (failure.empty() && PQpipelineSync(conn_) == 0) failure = PQerrorMessage(conn_);
  if (units_.empty()) last_progress_ms_ = unit.sent_ms;
  units_.push_back(std::move(unit));
  if (!failure.empty()) {
    // A half-sent unit cannot be taken back: drop the session, at the next
    // loop turn so `done` never runs inside Send().
    broken_ = "could not send a query: " + OneLine(failure);
  } else {
    int r = PQflush(conn_);
    if (r < 0) {
      broken_ = "could not send a query: " + OneLine(PQerrorMessage(conn_));
    } else {
      want_write_ = r == 1;
      int events = UV_READABLE | (want_write_ ? UV_WRITABLE : 0);
      if (events != poll_events_) {
        Status st = WatchSocket(events);
        if (!st.ok()) broken_ = st.message();
      }
    }
  }
  if (!broken_.empty()) {
    ArmTimer(deadline_timer_, 0,
             [](uv_timer_t* t) { static_cast<PgConn*>(t->data)->OnDeadline(); });
  } else {
    ArmQueryTimer();
  }
  return Status::Ok();
}

Status PgConn::Query(PgStatement statement, QueryCallback done) {
  std::vector<PgStatement> one;
  one.push_back(std::move(statement));
  return Send(std::move(one), [done = std::move(done)](Result<std::vector<PgResult>> r) {
    if (!r.ok()) {
      done(r.status());
    } else if (r->empty()) {
      done(PgResult());
    } else {
      done(std::move(r->front()));
    }
  });
}

void PgConn::Flush() {
  int r = PQflush(conn_);
  if (r < 0) {
    Lost("could not send to the server: " + std::string(PQerrorMessage(conn_)));
    return;
  }
  want_write_ = r == 1;
  int events = UV_READABLE | (want_write_ ? UV_WRITABLE : 0);
  if (events != poll_events_) {
    Status st = WatchSocket(events);
    if (!st.ok()) Lost(st.message());
  }
}

void PgConn::ArmQueryTimer() {
  if (!broken_.empty()) return;
  if (options_.query_timeout_ms <= 0 || units_.empty()) {
    if (phase_ == Phase::kUp) uv_timer_stop(deadline_timer_.get());
    return;
  }
  uint64_t now = uv_now(loop_);
  uint64_t due = last_progress_ms_ + static_cast<uint64_t>(options_.query_timeout_ms);
  ArmTimer(deadline_timer_, due > now ? due - now : 0,
           [](uv_timer_t* t) { static_cast<PgConn*>(t->data)->OnDeadline(); });
}

void PgConn::OnDeadline() {
  if (phase_ == Phase::kConnecting || phase_ == Phase::kResolving) {
    AttemptFailed("no connection after " + std::to_string(options_.connect_timeout_ms) +
                  " ms ([postgres] connect_timeout_s)");
    return;
  }
  if (phase_ != Phase::kUp) return;
  if (!broken_.empty()) {
    std::string why = broken_;
    Lost(why);
    return;
  }
  if (units_.empty() || options_.query_timeout_ms <= 0) return;
  uint64_t now = uv_now(loop_);
  if (now - last_progress_ms_ >= static_cast<uint64_t>(options_.query_timeout_ms)) {
    Lost("no answer from the server for " + std::to_string(options_.query_timeout_ms) +
         " ms ([postgres] query_timeout_s)");
    return;
  }
  ArmQueryTimer();
}

void PgConn::ArmTimer(UvHandle<uv_timer_t>& timer, uint64_t ms, uv_timer_cb cb) {
  if (!timer.initialized()) return;
  uv_timer_start(timer.get(), cb, ms, 0);
}

std::string PgConn::Redact(std::string text) const {
  return ScrubSecrets(std::move(text), secrets_);
}

PgConnState PgConn::state() const {
  PgConnState s;
  s.up = up();
  s.target = target_;
  s.last_error = last_error_;
  s.last_error_unix_ms = last_error_unix_ms_;
  s.next_attempt_unix_ms = next_attempt_unix_ms_;
  s.server_version = up() ? PQserverVersion(conn_) : 0;
  s.connects = connects_;
  s.disconnects = disconnects_;
  s.units_in_flight = units_in_flight();
  return s;
}

}  // namespace digestd
