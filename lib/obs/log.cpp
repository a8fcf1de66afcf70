#include "obs/log.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
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

// Appends `text` to `out` (capacity `cap`, `*len` used), writing every
// control character as an escape, and stops before an escape would not fit.
void AppendEscaped(std::string_view text, char* out, size_t cap, size_t* len) {
  static const char kHex[] = "0123456789abcdef";
  for (char ch : text) {
    auto c = static_cast<unsigned char>(ch);
    char esc[4];
    size_t n = 1;
    esc[0] = ch;
    if (c < 0x20 || c == 0x7f) {
      esc[0] = '\\';
      n = 2;
      if (c == '\n') {
        esc[1] = 'n';
      } else if (c == '\r') {
        esc[1] = 'r';
      } else if (c == '\t') {
        esc[1] = 't';
      } else {
        esc[1] = 'x';
        esc[2] = kHex[c >> 4];
        esc[3] = kHex[c & 15];
        n = 4;
      }
    }
    if (*len + n > cap) return;
    std::memcpy(out + *len, esc, n);
    *len += n;
  }
}

}  // namespace

std::string EscapeLogText(std::string_view text) {
  std::string out(text.size() * 4, '\0');
  size_t len = 0;
  AppendEscaped(text, out.data(), out.size(), &len);
  out.resize(len);
  return out;
}

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
  char msg[4096];
  va_list ap;
  va_start(ap, fmt);
  int n = std::vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  size_t len = static_cast<size_t>(off);
  AppendEscaped(std::string_view(msg, n < 0 ? 0 : std::min<size_t>(n, sizeof(msg) - 1)), buf,
                sizeof(buf) - 1, &len);
  buf[len++] = '\n';
  ssize_t ignored = ::write(STDERR_FILENO, buf, len);
  (void)ignored;
}

}  // namespace log_internal
}  // namespace digestd
