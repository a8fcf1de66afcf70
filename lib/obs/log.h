// Logging: one module for the whole daemon. Lines go to stderr with a
// timestamp. When stderr is the journal stream systemd set up
// (JOURNAL_STREAM matches stderr's device:inode, systemd.exec(5)), each entry
// is sent to journald natively (sd_journal_sendv, one datagram, never waits
// on the loop) with PRIORITY and SYSLOG_IDENTIFIER, and job lines (LOG_JOB)
// carry the fields JOB_KEY, KIND, LANE, ATTEMPT, BACKEND_MS and NODE, so
// `journalctl -u digestd JOB_KEY=book:7/ch:3` finds a job's history. If a send
// fails, the entry goes to stderr with a "<N>" syslog priority prefix, as
// journald reads it from the stream. The level is checked before anything is
// formatted.
//
// Every control character in a formatted message (U+0000-U+001F, U+007F) is
// written as an escape ("\n", "\r", "\t", "\x1b"), so text a client chose
// (a job key, a group, an error it provoked) can never end a line early and
// forge another one, or a journal "<N>" priority prefix, whatever the call
// site embeds. One message is one line.
//
// Thread-safe: a single write(2), or a single journal datagram, per line, so
// lines from pool threads do not interleave. Never blocks on anything but
// that write or send.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace digestd {

enum class LogLevel { kDebug = 0, kInfo = 1, kNotice = 2, kWarning = 3, kError = 4 };

// "debug" | "info" | "notice" | "warning" | "error"; nullopt for anything else.
std::optional<LogLevel> ParseLogLevel(std::string_view name);
std::string_view LogLevelName(LogLevel level);

// The structured fields of a job line. Views: what they point at must
// outlive the LOG_JOB call. Empty strings and negative numbers are left out.
struct JobLogFields {
  std::string_view key;     // JOB_KEY
  std::string_view kind;    // KIND
  std::string_view lane;    // LANE
  int attempt = -1;         // ATTEMPT
  int64_t backend_ms = -1;  // BACKEND_MS: time spent talking to the backend
};

namespace log_internal {
extern std::atomic<int> g_level;
void Write(LogLevel level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void WriteJob(LogLevel level, const JobLogFields& job, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
}  // namespace log_internal

// The journal entry for one line, as "NAME=value" strings: MESSAGE, PRIORITY
// (syslog level), SYSLOG_IDENTIFIER (`program`), then, when `job` is given,
// its fields and NODE (`node`, when not empty). Every value has its control
// characters escaped, as on stderr. Pure; any thread.
std::vector<std::string> JournalFields(LogLevel level, std::string_view program,
                                       std::string_view message, const JobLogFields* job,
                                       std::string_view node);

// True when `journal_stream` (JOURNAL_STREAM's value, "device:inode"; may be
// null) names the file with st_dev `dev` and st_ino `ino`: the test that
// decides whether stderr is the journal. Pure; any thread.
bool IsJournalStream(const char* journal_stream, uint64_t dev, uint64_t ino);

// True when InitLogging found stderr to be the journal. Any thread.
bool LoggingToJournal();

// Sets NODE for job lines (the daemon's node id). Call before other threads
// log (at start); the id is cut at 63 bytes.
void SetLogNode(std::string_view node);

// Replaces sd_journal_sendv for tests (nullptr restores it): a function that
// takes one entry's fields and returns 0, or a negative errno on failure.
using JournalSendFn = int (*)(const struct iovec* iov, int n);
void SetJournalSendForTesting(JournalSendFn send);

// `text` with its control characters escaped as the log writes them. Any
// thread.
std::string EscapeLogText(std::string_view text);

// Sets the minimum level written. Any thread.
void SetLogLevel(LogLevel level);
// Decides between the journal and timestamped stderr lines (IsJournalStream
// on JOURNAL_STREAM and stderr). Call at start, before other threads log.
void InitLogging(std::string_view program);

inline bool LogEnabled(LogLevel level) {
  return static_cast<int>(level) >= log_internal::g_level.load(std::memory_order_relaxed);
}

}  // namespace digestd

#define DIGESTD_LOG(level, ...)                                                           \
  do {                                                                                    \
    if (::digestd::LogEnabled(level)) ::digestd::log_internal::Write(level, __VA_ARGS__); \
  } while (0)

// A line about one job, with its structured fields in the journal.
#define LOG_JOB(level, fields, ...)                                  \
  do {                                                               \
    if (::digestd::LogEnabled(level))                                \
      ::digestd::log_internal::WriteJob(level, fields, __VA_ARGS__); \
  } while (0)

#define LOG_DEBUG(...) DIGESTD_LOG(::digestd::LogLevel::kDebug, __VA_ARGS__)
#define LOG_INFO(...) DIGESTD_LOG(::digestd::LogLevel::kInfo, __VA_ARGS__)
#define LOG_NOTICE(...) DIGESTD_LOG(::digestd::LogLevel::kNotice, __VA_ARGS__)
#define LOG_WARN(...) DIGESTD_LOG(::digestd::LogLevel::kWarning, __VA_ARGS__)
#define LOG_ERROR(...) DIGESTD_LOG(::digestd::LogLevel::kError, __VA_ARGS__)
