// The log writer (obs/log.h): one message is one line, whatever text a
// client managed to put into it (issue 10, point 7).
#include "obs/log.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <vector>

#include <algorithm>
#include <functional>
#include <string>

#include "../support/daemon_harness.h"

namespace digestd {
namespace {

// Runs `body` with stderr sent to a file and returns what it wrote.
std::string CaptureStderr(const std::function<void()>& body) {
  testing::TempDir dir;
  std::string path = dir.File("stderr");
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  EXPECT_GE(fd, 0);
  int saved = dup(STDERR_FILENO);
  dup2(fd, STDERR_FILENO);
  body();
  dup2(saved, STDERR_FILENO);
  close(saved);
  close(fd);
  return testing::ReadTextFile(path);
}

TEST(Log, ClientTextCannotForgeALineOrAPriority) {
  const std::string key = "x\n2026-01-01T00:00:00.000Z digestd[1] notice: FORGED\n<0>panic\r";
  std::string out = CaptureStderr([&] { LOG_NOTICE("job %s finished", key.c_str()); });
  auto lines = testing::SplitLines(out);
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  ASSERT_EQ(lines.size(), 1u) << out;
  EXPECT_NE(lines[0].find("job x\\n2026-01-01T00:00:00.000Z digestd[1] notice: FORGED\\n<0>panic"
                          "\\r finished"),
            std::string::npos)
      << lines[0];
}

TEST(Log, EveryControlCharacterIsEscaped) {
  std::string all;
  for (int c = 0; c < 0x20; ++c) all += static_cast<char>(c);
  all += '\x7f';
  std::string escaped = EscapeLogText(all);
  for (char c : escaped) {
    auto u = static_cast<unsigned char>(c);
    EXPECT_TRUE(u >= 0x20 && u != 0x7f) << "raw control character " << int(u) << " in " << escaped;
  }
  EXPECT_EQ(EscapeLogText("a\tb\x1b[31mc\x7f"), "a\\tb\\x1b[31mc\\x7f");
  // Printable text, UTF-8 included, is left alone.
  EXPECT_EQ(EscapeLogText("book:7/ch:3 «ü» \\n"), "book:7/ch:3 «ü» \\n");
  // An embedded NUL does not cut the line short either.
  std::string out = CaptureStderr(
      [&] { LOG_NOTICE("before %s after", EscapeLogText(std::string("a\0b", 3)).c_str()); });
  EXPECT_NE(out.find("before a\\x00b after"), std::string::npos) << out;
}

TEST(Log, AVeryLongMessageStaysOneLine) {
  std::string big(10000, '\n');
  std::string out = CaptureStderr([&] { LOG_WARN("%s", big.c_str()); });
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out.size();
  EXPECT_EQ(out.back(), '\n');
}

TEST(Log, JournalFieldsOfAJobLine) {
  JobLogFields job{"book:7/ch:3", "summarize", "background", 2, 1234};
  EXPECT_EQ(JournalFields(LogLevel::kDebug, "digestd", "job book:7/ch:3 started", &job, "node-a"),
            (std::vector<std::string>{"MESSAGE=job book:7/ch:3 started", "PRIORITY=7",
                                      "SYSLOG_IDENTIFIER=digestd", "JOB_KEY=book:7/ch:3",
                                      "KIND=summarize", "LANE=background", "ATTEMPT=2",
                                      "BACKEND_MS=1234", "NODE=node-a"}));
  // Fields not known are left out; a line about no job carries none.
  JobLogFields partial{"k", "noop", "interactive", 1, -1};
  EXPECT_EQ(JournalFields(LogLevel::kWarning, "digestd", "m", &partial, ""),
            (std::vector<std::string>{"MESSAGE=m", "PRIORITY=4", "SYSLOG_IDENTIFIER=digestd",
                                      "JOB_KEY=k", "KIND=noop", "LANE=interactive", "ATTEMPT=1"}));
  EXPECT_EQ(JournalFields(LogLevel::kError, "digestd", "plain", nullptr, "node-a"),
            (std::vector<std::string>{"MESSAGE=plain", "PRIORITY=3", "SYSLOG_IDENTIFIER=digestd"}));
  // Control characters are escaped in every value, as on stderr.
  JobLogFields evil{"a\nMESSAGE=forged", "k", "", -1, -1};
  auto fields = JournalFields(LogLevel::kInfo, "digestd", "x\ny", &evil, "");
  EXPECT_EQ(fields[0], "MESSAGE=x\\ny");
  EXPECT_EQ(fields[3], "JOB_KEY=a\\nMESSAGE=forged");
}

TEST(Log, JournalOnlyWhenJournalStreamNamesStderr) {
  EXPECT_TRUE(IsJournalStream("8:1234", 8, 1234));
  EXPECT_FALSE(IsJournalStream(nullptr, 8, 1234));
  EXPECT_FALSE(IsJournalStream("", 8, 1234));
  EXPECT_FALSE(IsJournalStream("8:1235", 8, 1234));  // stderr was redirected since
  EXPECT_FALSE(IsJournalStream("9:1234", 8, 1234));
  EXPECT_FALSE(IsJournalStream("8:1234x", 8, 1234));
  EXPECT_FALSE(IsJournalStream("garbage", 8, 1234));
}

// What the fake journal received: one vector of fields per entry.
std::vector<std::vector<std::string>> g_sent;
int g_send_result = 0;

int FakeJournalSend(const struct iovec* iov, int n) {
  std::vector<std::string> entry;
  for (int i = 0; i < n; ++i) {
    entry.emplace_back(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
  }
  g_sent.push_back(std::move(entry));
  return g_send_result;
}

// Runs `body` with stderr sent to a file that JOURNAL_STREAM names (as
// systemd sets it up) and the fake journal in place; returns stderr's text.
std::string RunAsUnderSystemd(const std::function<void()>& body) {
  g_sent.clear();
  SetJournalSendForTesting(&FakeJournalSend);
  std::string out = CaptureStderr([&] {
    struct stat st {};
    ASSERT_EQ(fstat(STDERR_FILENO, &st), 0);
    std::string stream = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
    setenv("JOURNAL_STREAM", stream.c_str(), 1);
    InitLogging("digestd");
    EXPECT_TRUE(LoggingToJournal());
    body();
    unsetenv("JOURNAL_STREAM");
    InitLogging("digestd");
  });
  SetJournalSendForTesting(nullptr);
  EXPECT_FALSE(LoggingToJournal());
  return out;
}

TEST(Log, UnderSystemdJobLinesGoToTheJournalWithTheirFields) {
  g_send_result = 0;
  SetLogNode("node-a");
  std::string out = RunAsUnderSystemd([] {
    LOG_JOB(LogLevel::kNotice, (JobLogFields{"book:7/ch:3", "summarize", "background", 1, 42}),
            "job %s done", "book:7/ch:3");
    LOG_WARN("no job here");
  });
  SetLogNode("");
  EXPECT_EQ(out, "") << "nothing goes to stderr while the journal takes the entries";
  ASSERT_EQ(g_sent.size(), 2u);
  EXPECT_EQ(g_sent[0], (std::vector<std::string>{"MESSAGE=job book:7/ch:3 done", "PRIORITY=5",
                                                 "SYSLOG_IDENTIFIER=digestd", "JOB_KEY=book:7/ch:3",
                                                 "KIND=summarize", "LANE=background", "ATTEMPT=1",
                                                 "BACKEND_MS=42", "NODE=node-a"}));
  EXPECT_EQ(g_sent[1], (std::vector<std::string>{"MESSAGE=no job here", "PRIORITY=4",
                                                 "SYSLOG_IDENTIFIER=digestd"}));
}

TEST(Log, WhenTheJournalRefusesTheLineGoesToItsStreamWithAPriority) {
  g_send_result = -11;  // -EAGAIN
  std::string out = RunAsUnderSystemd([] { LOG_WARN("journald is busy"); });
  g_send_result = 0;
  EXPECT_EQ(g_sent.size(), 1u);
  EXPECT_EQ(out, "<4>journald is busy\n");
}

TEST(Log, OutsideSystemdNothingGoesToTheJournal) {
  g_sent.clear();
  SetJournalSendForTesting(&FakeJournalSend);
  unsetenv("JOURNAL_STREAM");
  InitLogging("digestd");
  std::string out = CaptureStderr([] {
    LOG_JOB(LogLevel::kError, (JobLogFields{"k", "noop", "background", 1, -1}), "job k failed");
  });
  SetJournalSendForTesting(nullptr);
  EXPECT_TRUE(g_sent.empty());
  EXPECT_NE(out.find(" digestd["), std::string::npos) << out;
  EXPECT_NE(out.find("] error: job k failed\n"), std::string::npos) << out;
}

}  // namespace
}  // namespace digestd
