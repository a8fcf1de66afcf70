// The log writer (obs/log.h): one message is one line, whatever text a
// client managed to put into it (issue 10, point 7).
#include "obs/log.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

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

}  // namespace
}  // namespace digestd
