#include "obs/log.h"

#include <sys/stat.h>
#include <systemd/sd-journal.h>
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

std::atomic<bool> g_journal{false};
char g_program[32] = "digestd";
char g_node[64] = "";
std::atomic<JournalSendFn> g_send{nullptr};  // nullptr: sd_journal_sendv

int SystemJournalSend(const struct iovec* iov, int n) {
  return sd_journal_sendv(iov, n);
}

bool StderrIsJournal() {
  struct stat st {};
  if (fstat(STDERR_FILENO, &st) != 0) return false;
  return IsJournalStream(std::getenv("JOURNAL_STREAM"), st.st_dev, st.st_ino);
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

bool IsJournalStream(const char* journal_stream, uint64_t dev, uint64_t ino) {
  // JOURNAL_STREAM is "device:inode" of the stream systemd connected; it is
  // only ours if stderr is still that stream (systemd.exec(5)).
  if (journal_stream == nullptr) return false;
  unsigned long long env_dev = 0, env_ino = 0;
  char extra = 0;
  if (std::sscanf(journal_stream, "%llu:%llu%c", &env_dev, &env_ino, &extra) != 2) return false;
  return env_dev == dev && env_ino == ino;
}

std::vector<std::string> JournalFields(LogLevel level, std::string_view program,
                                       std::string_view message, const JobLogFields* job,
                                       std::string_view node) {
  std::vector<std::string> out;
  out.push_back("MESSAGE=" + EscapeLogText(message));
  out.push_back("PRIORITY=" + std::to_string(SyslogPriority(level)));
  out.push_back("SYSLOG_IDENTIFIER=" + EscapeLogText(program));
  if (job == nullptr) return out;
  auto text = [&](const char* name, std::string_view value) {
    if (!value.empty()) out.push_back(std::string(name) + "=" + EscapeLogText(value));
  };
  text("JOB_KEY", job->key);
  text("KIND", job->kind);
  text("LANE", job->lane);
  if (job->attempt >= 0) out.push_back("ATTEMPT=" + std::to_string(job->attempt));
  if (job->backend_ms >= 0) out.push_back("BACKEND_MS=" + std::to_string(job->backend_ms));
  text("NODE", node);
  return out;
}

bool LoggingToJournal() {
  return g_journal.load(std::memory_order_relaxed);
}

void SetLogNode(std::string_view node) {
  size_t n = std::min(node.size(), sizeof(g_node) - 1);
  std::memcpy(g_node, node.data(), n);
  g_node[n] = '\0';
}

void SetJournalSendForTesting(JournalSendFn send) {
  g_send.store(send);
}

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
  g_journal.store(StderrIsJournal(), std::memory_order_relaxed);
  size_t n = std::min(program.size(), sizeof(g_program) - 1);
  std::memcpy(g_program, program.data(), n);
  g_program[n] = '\0';
}

namespace {

// The line on stderr: with a "<N>" priority prefix when stderr is the
// journal's stream (a native send failed), else with a timestamp.
void WriteStderr(LogLevel level, std::string_view msg) {
  char buf[4096];
  int off = 0;
  if (g_journal.load(std::memory_order_relaxed)) {
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
  size_t len = static_cast<size_t>(off);
  AppendEscaped(msg, buf, sizeof(buf) - 1, &len);
  buf[len++] = '\n';
  ssize_t ignored = ::write(STDERR_FILENO, buf, len);
  (void)ignored;
}

void Emit(LogLevel level, const JobLogFields* job, const char* fmt, va_list ap) {
  char msg[4096];
  int n = std::vsnprintf(msg, sizeof(msg), fmt, ap);
  std::string_view text(msg, n < 0 ? 0 : std::min<size_t>(n, sizeof(msg) - 1));
  if (g_journal.load(std::memory_order_relaxed)) {
    std::vector<std::string> fields = JournalFields(level, g_program, text, job, g_node);
    std::vector<struct iovec> iov(fields.size());
    for (size_t i = 0; i < fields.size(); ++i) {
      iov[i].iov_base = fields[i].data();
      iov[i].iov_len = fields[i].size();
    }
    JournalSendFn send = g_send.load();
    if (send == nullptr) send = &SystemJournalSend;
    if (send(iov.data(), static_cast<int>(iov.size())) >= 0) return;
  }
  WriteStderr(level, text);
}

}  // namespace

namespace log_internal {

void Write(LogLevel level, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  Emit(level, nullptr, fmt, ap);
  va_end(ap);
}

void WriteJob(LogLevel level, const JobLogFields& job, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  Emit(level, &job, fmt, ap);
  va_end(ap);
}

}  // namespace log_internal
}  // namespace digestd
