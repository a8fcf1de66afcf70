#include "obs/log.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>

namespace digestd {

namespace log_internal {
std::atomic<int> g_level{static_cast<int>(LogLevel::kInfo)};
}  // namespace log_internal

namespace {

bool g_journal = false;
char g_program[32] = "digestd";

// JOURNAL_STREAM is "device:inode" of the stream systemd connected; it is
// only ours if stderr is still that stream (systemd.exec(5)).
bool StderrIsJournal() {
  const char* env = std::getenv("JOURNAL_STREAM");
  if (env == nullptr) return false;
  unsigned long long dev = 0, ino = 0;
  if (std::sscanf(env, "%llu:%llu", &dev, &ino) != 2) return false;
  struct stat st {};
  if (fstat(STDERR_FILENO, &st) != 0) return false;
  return st.st_dev == dev && st.st_ino == ino;
}

int SyslogPriority(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return 7;
    case LogLevel::kInfo:
      return 6;
    case LogLevel::kNotice:
      return 5;
    case LogLevel::kWarning:
      return 4;
    case LogLevel::kError:
      return 3;
  }
  return 6;
}

}  // namespace

std::optional<LogLevel> ParseLogLevel(std::string_view name) {
  if (name == "debug") return LogLevel::kDebug;
  if (name == "info") return LogLevel::kInfo;
  if (name == "notice") return LogLevel::kNotice;
  if (name == "warning") return LogLevel::kWarning;
  if (name == "error") return LogLevel::kError;
  return std::nullopt;
}

std::string_view LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kNotice:
      return "notice";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

void SetLogLevel(LogLevel level) {
  log_internal::g_level.store(static_cast<int>(level), std::memory_order_relaxed);
}

void InitLogging(std::string_view program) {
  g_journal = StderrIsJournal();
  size_t n = std::min(program.size(), sizeof(g_program) - 1);
  std::memcpy(g_program, program.data(), n);
  g_program[n] = '\0';
}

namespace log_internal {

void Write(LogLevel level, const char* fmt, ...) {
  char buf[4096];
  int off = 0;
  if (g_journal) {
    off = std::snprintf(buf, sizeof(buf), "<%d>", SyslogPriority(level));
  } else {
    struct timespec ts {};
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm {};
    gmtime_r(&ts.tv_sec, &tm);
    off = static_cast<int>(std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm));
    off += std::snprintf(buf + off, sizeof(buf) - off, ".%03ldZ %s[%d] %s: ", ts.tv_nsec / 1000000,
                         g_program, static_cast<int>(getpid()), LogLevelName(level).data());
  }
  va_list ap;
  va_start(ap, fmt);
  int n = std::vsnprintf(buf + off, sizeof(buf) - off - 1, fmt, ap);
  va_end(ap);
  size_t len = static_cast<size_t>(off) + (n < 0 ? 0 : static_cast<size_t>(n));
  if (len > sizeof(buf) - 2) len = sizeof(buf) - 2;
  buf[len++] = '\n';
  ssize_t ignored = ::write(STDERR_FILENO, buf, len);
  (void)ignored;
}

}  // namespace log_internal
}  // namespace digestd
