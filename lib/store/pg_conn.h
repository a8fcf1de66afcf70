// PgConn: one PostgreSQL connection driven asynchronously on the libuv loop
// thread. libpq's non-blocking API only: PQconnectStartParams/PQconnectPoll
// to connect, then the connection stays in pipeline mode and every request
// is a *unit* -- one or more parameterised statements followed by one
// PQpipelineSync -- whose results are read when a uv_poll on PQsocket says
// the socket is readable, and whose output is flushed with PQflush when it
// says writable. No call on the loop thread ever blocks on the server.
//
// Units and transactions. Statements of one unit run in one implicit
// transaction: they commit together at the unit's Sync, or, when one fails,
// the whole unit is rolled back and the statements after the failing one are
// skipped. So a unit needs no BEGIN/COMMIT (and should not contain them: an
// error inside an explicit block would leave the session in an aborted
// transaction). Many units may be in flight at once; their callbacks run in
// the order they were sent (FIFO).
//
// Prepared statements. A statement with a non-empty `name` is prepared
// (PQsendPrepare) the first time it is used on a session, in a unit of its
// own sent just ahead (so a failure in the unit that uses it cannot skip the
// prepare that later units count on), and executed by name from then on;
// after a reconnect it is prepared again. Statements without a name use PQsendQueryParams.
//
// Failures. A server error fails the unit it belongs to; the connection
// stays up. A lost connection (or Close()) fails every unit in flight with
// Unavailable, each callback exactly once, then the connection is reopened
// with exponential backoff (Start() until Close()). While the connection is
// not up, Send() refuses new units with Unavailable and, as libuv does when a
// call that takes a callback fails, never invokes that callback.
//
// Secrets. The conninfo may carry a password; no message this class builds
// (logs, last_error, Describe()) contains it.
//
// DNS. libpq resolves host names inside PQconnectPoll, blocking. When the
// conninfo names exactly one host by name (not an address or a socket
// directory) and gives no hostaddr, PgConn resolves it first with
// uv_getaddrinfo on the thread pool and passes the address as hostaddr, so
// the loop never waits on DNS. With several host names, libpq resolves them
// itself (logged once as a warning).
//
// Threads: loop thread only, including every callback. Lifetimes: `loop`
// must outlive the PgConn; after Close() (or destruction) the loop must run
// once more so the poll and timer handles are freed (uv_handle.h).
#pragma once

#include <libpq-fe.h>
#include <uv.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "util/status.h"
#include "util/uv_handle.h"

namespace digestd {

// One PGresult, owned (PQclear on destruction). Movable, not copyable.
class PgResult {
 public:
  PgResult() = default;
  explicit PgResult(PGresult* res) : res_(res) {}
  PgResult(PgResult&&) noexcept = default;
  PgResult& operator=(PgResult&&) noexcept = default;

  PGresult* get() const { return res_.get(); }
  int rows() const { return res_ ? PQntuples(res_.get()) : 0; }
  int cols() const { return res_ ? PQnfields(res_.get()) : 0; }
  bool IsNull(int row, int col) const { return PQgetisnull(res_.get(), row, col) != 0; }
  // The text of a field; "" for NULL. Valid while this PgResult lives.
  std::string_view Text(int row, int col) const;
  // Integer and boolean fields (text format); 0 / false for NULL.
  int64_t Int(int row, int col) const;
  bool Bool(int row, int col) const;
  // Rows a command touched (PQcmdTuples); 0 when it reports none.
  uint64_t Affected() const;

 private:
  struct Clear {
    void operator()(PGresult* r) const { PQclear(r); }
  };
  std::unique_ptr<PGresult, Clear> res_;
};

// One statement of a unit. Parameters are sent as text ($1, $2, ...);
// nullopt is SQL NULL. A text parameter cannot carry a NUL byte (libpq
// passes C strings): the text ends at the first one.
struct PgStatement {
  std::string sql;
  std::vector<std::optional<std::string>> params;
  std::string name;  // non-empty: prepared once per session under this name
};

struct PgConnOptions {
  std::string conninfo;
  std::string label = "postgres";  // names the connection in log lines
  int connect_timeout_ms = 10000;  // an attempt that takes longer fails
  int reconnect_min_ms = 200;      // first wait after a failure
  int reconnect_max_ms = 30000;    // the backoff doubles up to this
  int query_timeout_ms = 0;        // no answer to the oldest unit for this long
                                   // drops the connection; 0: never
};

// What `status` shows about a connection.
struct PgConnState {
  bool up = false;
  std::string target;      // Describe(): "host=/run/postgresql dbname=digestd user=..."
  std::string last_error;  // why the last attempt failed or the connection dropped; ""
  int64_t last_error_unix_ms = 0;
  int64_t next_attempt_unix_ms = 0;  // when the next connect attempt starts; 0: none planned
  int server_version = 0;            // PQserverVersion while up (150004 for 15.4)
  uint64_t connects = 0;             // successful connections
  uint64_t disconnects = 0;          // connections lost after being up
  size_t units_in_flight = 0;
};

class PgConn {
 public:
  // Runs once per unit: the results of its statements in order (a prepare
  // adds none), or the error. Status codes: Unavailable when the connection
  // was lost or closed before the unit's outcome was known (it may or may
  // not have committed), or when the server reported a transient error
  // (SQLSTATE classes 08, 40, 53, 57, 55P03, 25006: retry later);
  // BadRequest when the server rejected the data (classes 22 and 23:
  // invalid input, constraint violation); Internal for anything else (a
  // schema or SQL problem). Messages carry the SQLSTATE.
  using UnitCallback = std::function<void(Result<std::vector<PgResult>>)>;
  using QueryCallback = std::function<void(Result<PgResult>)>;
  // Called on every change between up and down; `why` says why it went down.
  using StateObserver = std::function<void(bool up, const Status& why)>;
  // LISTEN notifications: channel and payload.
  using NotifyHandler = std::function<void(const std::string& channel, const std::string& payload)>;

  // Check init_status() before use.
  PgConn(uv_loop_t* loop, PgConnOptions options);
  // Closes (see Close()).
  ~PgConn();
  PgConn(const PgConn&) = delete;
  PgConn& operator=(const PgConn&) = delete;

  // Ok, or why the constructor could not set the connection up (a libuv
  // timer failed to initialise; Internal, naming the label). Check it right
  // after construction and treat a failure as fatal at start: such a
  // connection never connects (Start() only records the error for state()),
  // so Send() answers Unavailable for good. The object stays safe to Close()
  // and destroy.
  [[nodiscard]] const Status& init_status() const { return init_status_; }

  // Starts connecting; from then on the connection is kept open, reconnecting
  // with backoff, until Close(). Idempotent.
  void Start();

  // Stops for good: closes the connection and the handles, and fails every
  // unit in flight with Unavailable (their callbacks run inside this call).
  // Idempotent; Start() does nothing afterwards.
  void Close();

  // Sends `statements` as one unit. Unavailable (and `done` is never called)
  // when the connection is not up; InvalidConfig-free: any other failure to
  // queue the unit drops the connection and reports Unavailable through
  // `done`. `statements` must not be empty.
  [[nodiscard]] Status Send(std::vector<PgStatement> statements, UnitCallback done);
  // One statement as a unit; `done` gets its result.
  [[nodiscard]] Status Query(PgStatement statement, QueryCallback done);

  // Observers of up/down changes; the returned id removes one. An observer
  // may call Send() (the connection is up when it hears `true`).
  uint64_t AddStateObserver(StateObserver observer);
  void RemoveStateObserver(uint64_t id);
  // Receives notifications of channels this session LISTENs to (re-issue
  // LISTEN from an observer after a reconnect). Empty: dropped.
  void SetNotifyHandler(NotifyHandler handler) { notify_ = std::move(handler); }

  bool up() const { return phase_ == Phase::kUp; }
  bool closed() const { return phase_ == Phase::kClosed; }
  // Units sent by callers and not yet answered (internal prepares not counted).
  size_t units_in_flight() const;
  PgConnState state() const;
  // The connection target without secrets, for messages.
  const std::string& Describe() const { return target_; }

 private:
  enum class Phase { kIdle, kResolving, kConnecting, kUp, kWaiting, kClosed };
  enum class CmdKind : uint8_t { kPrepare, kStatement };
  struct Cmd {
    CmdKind kind;
    std::string prepare_name;  // kPrepare: the statement it prepares
  };
  struct Unit {
    std::vector<Cmd> cmds;  // every command sent, prepares included
    bool internal = false;  // prepares sent ahead of a caller's unit
    size_t next_cmd = 0;    // the command whose results come next
    bool cmd_has_result = false;
    std::vector<PgResult> results;
    std::optional<Status> error;  // the first failure in the unit
    UnitCallback done;
    uint64_t sent_ms = 0;  // uv_now
  };
  struct Resolve;

  void BeginAttempt();
  void StartConnect(const std::string& hostaddr);
  void ConnectStep();
  void OnConnected();
  void AttemptFailed(const std::string& why);
  void Lost(const std::string& why);
  void ScheduleRetry();
  void TearDownSocket();
  void FailUnits(const Status& why);
  void Notify(bool up, const Status& why);
  Status WatchSocket(int events);
  void OnSocket(int status, int events);
  void Flush();
  void ReadResults();
  void DeliverNotifies();
  bool CheckBad();
  void ArmQueryTimer();
  void OnDeadline();
  void ArmTimer(UvHandle<uv_timer_t>& timer, uint64_t ms, uv_timer_cb cb);
  std::string Redact(std::string text) const;

  uv_loop_t* loop_;
  PgConnOptions options_;
  // conninfo parsed once; keywords and values for PQconnectStartParams.
  std::vector<std::string> keys_;
  std::vector<std::string> values_;
  std::string parse_error_;           // set when the conninfo does not parse
  std::string resolve_host_;          // the one host name to resolve first; ""
  std::vector<std::string> secrets_;  // the password(s), scrubbed from messages
  std::string target_;
  Status init_status_;  // set by the constructor only

  Phase phase_ = Phase::kIdle;
  PGconn* conn_ = nullptr;
  int poll_fd_ = -1;
  std::unique_ptr<UvHandle<uv_poll_t>> poll_;
  int poll_events_ = 0;
  PostgresPollingStatusType connect_wait_ = PGRES_POLLING_WRITING;
  UvHandle<uv_timer_t> retry_timer_;     // next connect attempt
  UvHandle<uv_timer_t> deadline_timer_;  // connect timeout, then query timeout
  Resolve* resolve_ = nullptr;           // a lookup in progress; owned by its callback
  std::deque<Unit> units_;               // sent, results pending; oldest first
  std::set<std::string> prepared_;       // statement names prepared on this session
  bool want_write_ = false;
  std::string broken_;             // why the session must be dropped (at the next turn)
  uint64_t last_progress_ms_ = 0;  // uv_now when a unit last completed or was sent
  int failures_ = 0;               // consecutive failed attempts, for the backoff
  uint64_t up_since_ms_ = 0;       // uv_now when the connection came up
  std::string last_error_;
  int64_t last_error_unix_ms_ = 0;
  int64_t next_attempt_unix_ms_ = 0;
  uint64_t connects_ = 0;
  uint64_t disconnects_ = 0;
  uint64_t next_observer_ = 1;
  std::vector<std::pair<uint64_t, StateObserver>> observers_;
  NotifyHandler notify_;
  bool warned_dns_ = false;
  // Cleared by the destructor; a callback that may have destroyed `this`
  // checks it before touching members again.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// What to do about a failed connection attempt, from libpq's message `error`
// (libpq gives no SQLSTATE for a connection that was refused): for an
// authentication failure (SQLSTATE 28P01/28000), a missing role or database,
// or a refused connection, a "; ..." clause to append; "" when there is no
// better advice than the message. Any thread.
std::string PgConnectHint(std::string_view error);

// `conninfo` with every password replaced by "***", for messages about a
// connection string that did not parse (so cannot be described), and for
// `digestd --print-config`. Works on strings libpq cannot parse too.
std::string RedactConninfo(std::string_view conninfo);

// The passwords written in `conninfo` (as written: percent-encoded in a URI),
// found the way RedactConninfo finds them.
std::vector<std::string> ConninfoSecrets(std::string_view conninfo);

// `message` (about `conninfo`, such as libpq's parse error) with the
// passwords in `conninfo` removed: every quoted piece that is a URI is
// redacted, every quoted piece that is part of a password becomes "***", and
// any other occurrence of a password too.
std::string RedactConninfoMessage(std::string_view message, std::string_view conninfo);

// Ok when libpq can parse `conninfo` (PQconninfoParse); otherwise an
// InvalidConfig that says what is wrong and how to write it, without the
// password. `digestd --check-config` and startup refuse such a string.
[[nodiscard]] Status ValidateConninfo(std::string_view conninfo);

}  // namespace digestd
