// Logging: one module for the whole daemon. Lines go to stderr; when stderr is
// the journal stream systemd set up (JOURNAL_STREAM matches stderr), each line
// carries a "<N>" syslog priority prefix instead of a timestamp, so journald
// records the right level. The level is checked before anything is formatted.
//
// Every control character in a formatted message (U+0000-U+001F, U+007F) is
// written as an escape ("\n", "\r", "\t", "\x1b"), so text a client chose
// (a job key, a group, an error it provoked) can never end a line early and
// forge another one, or a journal "<N>" priority prefix, whatever the call
// site embeds. One message is one line.
//
// Thread-safe: a single write(2) per line, so lines from pool threads do not
// interleave. Never blocks on anything but that write.
#pragma once

#include <atomic>
#include <optional>
#include <string>
#include <string_view>

namespace digestd {

enum class LogLevel { kDebug = 0, kInfo = 1, kNotice = 2, kWarning = 3, kError = 4 };

// "debug" | "info" | "notice" | "warning" | "error"; nullopt for anything else.
std::optional<LogLevel> ParseLogLevel(std::string_view name);
std::string_view LogLevelName(LogLevel level);

namespace log_internal {
extern std::atomic<int> g_level;
void Write(LogLevel level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
}  // namespace log_internal

// `text` with its control characters escaped as the log writes them. Any
// thread.
std::string EscapeLogText(std::string_view text);

// Sets the minimum level written. Any thread.
void SetLogLevel(LogLevel level);
// Decides between journal prefixes and timestamps. Call once at start.
void InitLogging(std::string_view program);

inline bool LogEnabled(LogLevel level) {
  return static_cast<int>(level) >= log_internal::g_level.load(std::memory_order_relaxed);
}

}  // namespace digestd

#define DIGESTD_LOG(level, ...)                                                           \
  do {                                                                                    \
    if (::digestd::LogEnabled(level)) ::digestd::log_internal::Write(level, __VA_ARGS__); \
  } while (0)

#define LOG_DEBUG(...) DIGESTD_LOG(::digestd::LogLevel::kDebug, __VA_ARGS__)
#define LOG_INFO(...) DIGESTD_LOG(::digestd::LogLevel::kInfo, __VA_ARGS__)
#define LOG_NOTICE(...) DIGESTD_LOG(::digestd::LogLevel::kNotice, __VA_ARGS__)
#define LOG_WARN(...) DIGESTD_LOG(::digestd::LogLevel::kWarning, __VA_ARGS__)
#define LOG_ERROR(...) DIGESTD_LOG(::digestd::LogLevel::kError, __VA_ARGS__)
