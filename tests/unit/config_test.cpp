#include "config/config.h"

#include <gtest/gtest.h>

#include <map>
#include <regex>
#include <set>
#include <string>

#include "../support/daemon_harness.h"

namespace digestd {
namespace {

using testing::ReadTextFile;
using testing::SplitLines;

constexpr const char* kOrigin = "digestd.conf";

// The error ParseConfig gives for `text`; fails the test if it parsed.
std::string ErrorOf(const std::string& text) {
  auto result = ParseConfig(text, kOrigin);
  EXPECT_FALSE(result.ok()) << "parsed, but should not have:\n" << text;
  if (result.ok()) return "";
  EXPECT_EQ(result.status().code(), Status::Code::kInvalidConfig);
  return result.status().message();
}

// One line, naming the file and line, and mentioning `name`.
void ExpectOneLineNaming(const std::string& message, const std::string& where,
                         const std::string& name) {
  EXPECT_EQ(message.find('\n'), std::string::npos) << "not one line: " << message;
  EXPECT_NE(message.find(where), std::string::npos) << "no \"" << where << "\" in: " << message;
  EXPECT_NE(message.find(name), std::string::npos) << "no \"" << name << "\" in: " << message;
}

TEST(Config, DefaultsAreValid) {
  auto empty = ParseConfig("", kOrigin);
  ASSERT_TRUE(empty.ok()) << empty.status().message();
  const Config defaults;
  EXPECT_EQ(empty->workers.min, defaults.workers.min);
  EXPECT_EQ(empty->workers.max, defaults.workers.max);
  EXPECT_LE(defaults.workers.min, defaults.workers.max);
  EXPECT_LT(defaults.workers.interactive_reserved, defaults.workers.max);
  EXPECT_GT(defaults.queues.interactive, 0);
  EXPECT_GT(defaults.queues.background, 0);
  EXPECT_EQ(defaults.control.socket, "/run/digestd/control.sock");
  EXPECT_EQ(defaults.control.mode, 0660u);
  // The built-in defaults, written out, parse back to themselves.
  std::string dumped = DumpConfig(defaults);
  auto again = ParseConfig(dumped, "dump");
  ASSERT_TRUE(again.ok()) << again.status().message() << "\n" << dumped;
  EXPECT_TRUE(DiffConfig(defaults, *again, true).empty());
  EXPECT_TRUE(DiffConfig(defaults, *again, false).empty());
}

TEST(Config, ReadsEveryKindOfValue) {
  auto c = ParseConfig(R"([workers]
min = 2
max = 8
interactive_reserved = 2
[queues]
interactive = 10
background = 20
[control]
socket = "/tmp/x.sock"
mode = "0600"
allow_uids = [0, 1000]
allow_gids = []
[log]
level = "debug"
)",
                       kOrigin);
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->workers.min, 2);
  EXPECT_EQ(c->workers.max, 8);
  EXPECT_EQ(c->workers.interactive_reserved, 2);
  EXPECT_EQ(c->queues.interactive, 10);
  EXPECT_EQ(c->queues.background, 20);
  EXPECT_EQ(c->control.socket, "/tmp/x.sock");
  EXPECT_EQ(c->control.mode, 0600u);
  EXPECT_EQ(c->control.allow_uids, (std::vector<int64_t>{0, 1000}));
  EXPECT_TRUE(c->control.allow_gids.empty());
  EXPECT_EQ(c->log.level, "debug");
  EXPECT_EQ(c->source, kOrigin);
}

TEST(Config, SyntaxErrorNamesFileLineAndKey) {
  std::string msg = ErrorOf("[workers]\nmin = 2\nmax = = 4\n");
  ExpectOneLineNaming(msg, "digestd.conf:3:", "max");
  EXPECT_NE(msg.find("syntax"), std::string::npos) << msg;
}

TEST(Config, UnterminatedStringNamesFileLineAndKey) {
  std::string msg = ErrorOf("[log]\n\nlevel = \"info\n");
  ExpectOneLineNaming(msg, "digestd.conf:3:", "level");
}

TEST(Config, WrongTypeNamesFileLineAndKey) {
  std::string msg = ErrorOf("[workers]\nmin = 2\nmax = \"eight\"\n");
  ExpectOneLineNaming(msg, "digestd.conf:3:", "max");
  EXPECT_NE(msg.find("integer"), std::string::npos) << msg;
}

TEST(Config, StringWhereNumberExpectedAndNumberWhereStringExpected) {
  ExpectOneLineNaming(ErrorOf("[log]\nlevel = 3\n"), "digestd.conf:2:", "level");
  ExpectOneLineNaming(ErrorOf("[control]\nmode = 0660\n"), "digestd.conf:2:", "mode");
  ExpectOneLineNaming(ErrorOf("[control]\nallow_uids = 5\n"), "digestd.conf:2:", "allow_uids");
  ExpectOneLineNaming(ErrorOf("[control]\nallow_uids = [\"root\"]\n"),
                      "digestd.conf:2:", "allow_uids");
}

TEST(Config, ConnectionCapsPerUidAndReservedSlots) {
  Config defaults;
  EXPECT_EQ(defaults.control.max_clients_per_uid, 256);
  EXPECT_EQ(defaults.control.reserved_clients, 4);
  auto c = ParseConfig(
      "[control]\nmax_clients = 50\nmax_clients_per_uid = 8\n"
      "reserved_clients = 2\n",
      "digestd.conf");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->control.max_clients_per_uid, 8);
  EXPECT_EQ(c->control.reserved_clients, 2);
  ExpectOneLineNaming(ErrorOf("[control]\nmax_clients = 4\nreserved_clients = 4\n"),
                      "digestd.conf:3:", "reserved_clients");
  ExpectOneLineNaming(ErrorOf("[control]\nmax_clients_per_uid = 0\n"),
                      "digestd.conf:2:", "max_clients_per_uid");
}

TEST(Config, OutOfRangeNamesFileLineKeyAndTheAllowedRange) {
  std::string msg = ErrorOf("[queues]\ninteractive = 0\n");
  ExpectOneLineNaming(msg, "digestd.conf:2:", "interactive");
  EXPECT_NE(msg.find("1 to 1000000"), std::string::npos) << msg;
  ExpectOneLineNaming(ErrorOf("[workers]\n\n\nmax = 100000\n"), "digestd.conf:4:", "max");
  ExpectOneLineNaming(ErrorOf("[control]\nmax_line_bytes = 10\n"),
                      "digestd.conf:2:", "max_line_bytes");
  ExpectOneLineNaming(ErrorOf("[control]\nmode = \"999\"\n"), "digestd.conf:2:", "mode");
  ExpectOneLineNaming(ErrorOf("[log]\nlevel = \"loud\"\n"), "digestd.conf:2:", "level");
  ExpectOneLineNaming(ErrorOf("[control]\nsocket = \"relative.sock\"\n"),
                      "digestd.conf:2:", "socket");
  ExpectOneLineNaming(ErrorOf("[control]\nallow_gids = [-1]\n"), "digestd.conf:2:", "allow_gids");
}

TEST(Config, UnknownKeyIsAnErrorNamingIt) {
  std::string msg = ErrorOf("[workers]\nmin = 2\nmaxx = 4\n");
  ExpectOneLineNaming(msg, "digestd.conf:3:", "maxx");
  EXPECT_NE(msg.find("unknown key"), std::string::npos) << msg;
  // It also says which keys the section has, so the typo is easy to fix.
  EXPECT_NE(msg.find("interactive_reserved"), std::string::npos) << msg;
}

TEST(Config, UnknownSectionIsAnErrorNamingIt) {
  std::string msg = ErrorOf("[workers]\nmin = 2\n\n[wrokers]\nmax = 4\n");
  ExpectOneLineNaming(msg, "digestd.conf:4:", "wrokers");
  EXPECT_NE(msg.find("unknown section"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[workers]"), std::string::npos) << msg;
}

TEST(Config, ValueWhereSectionExpectedIsAnError) {
  ExpectOneLineNaming(ErrorOf("workers = 3\n"), "digestd.conf:1:", "workers");
}

TEST(Config, MinAboveMaxIsAnError) {
  std::string msg = ErrorOf("[workers]\nmin = 9\nmax = 4\n");
  ExpectOneLineNaming(msg, "digestd.conf:2:", "min");
  EXPECT_NE(msg.find("max"), std::string::npos) << msg;
  // min above the default max counts too.
  ExpectOneLineNaming(ErrorOf("[workers]\nmin = 20\n"), "digestd.conf:2:", "min");
}

TEST(Config, ReservedAtOrAboveMaxIsAnError) {
  std::string msg = ErrorOf("[workers]\nmin = 1\nmax = 4\ninteractive_reserved = 4\n");
  ExpectOneLineNaming(msg, "digestd.conf:4:", "interactive_reserved");
  EXPECT_TRUE(ParseConfig("[workers]\nmin = 1\nmax = 4\ninteractive_reserved = 3\n", kOrigin).ok());
}

TEST(Config, WriteRingNotLargerThanMaxIsAnErrorWithPostgres) {
  // Every running job keeps a write-ring slot: write = max cannot start.
  std::string msg = ErrorOf("[workers]\nmax = 16\n[queues]\nwrite = 10\n");
  ExpectOneLineNaming(msg, "digestd.conf:4:", "[queues] write = 10");
  EXPECT_NE(msg.find("must be larger than [workers] max = 16"), std::string::npos) << msg;
  EXPECT_NE(msg.find("raise [queues] write"), std::string::npos) << msg;
  ExpectOneLineNaming(ErrorOf("[workers]\nmax = 16\n[queues]\nwrite = 16\n"),
                      "digestd.conf:4:", "[queues] write = 16");
  // Only max in the file: the message points at max.
  ExpectOneLineNaming(ErrorOf("[workers]\nmax = 600\n"), "digestd.conf:2:", "[queues] write = 500");
  ExpectOneLineNaming(ErrorOf("[jobs]\nstore = \"postgres\"\n[queues]\nwrite = 16\n"),
                      "digestd.conf:4:", "[workers] max = 16");

  auto one_more = ParseConfig("[workers]\nmax = 16\n[queues]\nwrite = 17\n", kOrigin);
  EXPECT_TRUE(one_more.ok()) << one_more.status().message();
}

TEST(Config, WriteRingIsNotCheckedWithTheMemoryStore) {
  // The memory store has no write ring.
  auto c = ParseConfig("[jobs]\nstore = \"memory\"\n[workers]\nmax = 16\n[queues]\nwrite = 1\n",
                       kOrigin);
  EXPECT_TRUE(c.ok()) << c.status().message();
}

TEST(Config, MergeForReloadRefusesAMaxTheRunningWriteRingCannotHold) {
  auto running = ParseConfig("[workers]\nmax = 16\n[queues]\nwrite = 18\n", "running");
  ASSERT_TRUE(running.ok()) << running.status().message();
  // Valid on its own (write = 100), but write needs a restart: 18 stays.
  auto fresh = ParseConfig("[workers]\nmax = 18\n[queues]\nwrite = 100\n", "digestd.conf");
  ASSERT_TRUE(fresh.ok()) << fresh.status().message();
  auto merged = MergeForReload(*running, *fresh, "digestd.conf");
  ASSERT_FALSE(merged.ok());
  EXPECT_EQ(merged.status().code(), Status::Code::kInvalidConfig);
  const std::string& msg = merged.status().message();
  ExpectOneLineNaming(msg, "digestd.conf:", "[workers] max = 18");
  EXPECT_NE(msg.find("running [queues] write = 18"), std::string::npos) << msg;
  EXPECT_NE(msg.find("restart"), std::string::npos) << msg;

  // A max the running ring holds is applied, and write keeps its running value.
  auto fits = ParseConfig("[workers]\nmax = 17\n[queues]\nwrite = 100\n", "digestd.conf");
  ASSERT_TRUE(fits.ok()) << fits.status().message();
  auto applied = MergeForReload(*running, *fits, "digestd.conf");
  ASSERT_TRUE(applied.ok()) << applied.status().message();
  EXPECT_EQ(applied->workers.max, 17);
  EXPECT_EQ(applied->queues.write, 18);
  EXPECT_TRUE(DiffConfig(MergeReloadable(*running, *fits), *applied, true).empty());
  EXPECT_TRUE(DiffConfig(MergeReloadable(*running, *fits), *applied, false).empty());
}

TEST(Config, MergeForReloadIgnoresTheWriteRingWithTheMemoryStore) {
  auto running =
      ParseConfig("[jobs]\nstore = \"memory\"\n[workers]\nmax = 4\n[queues]\nwrite = 4\n", "r");
  ASSERT_TRUE(running.ok()) << running.status().message();
  auto fresh =
      ParseConfig("[jobs]\nstore = \"memory\"\n[workers]\nmax = 8\n[queues]\nwrite = 4\n", "f");
  ASSERT_TRUE(fresh.ok()) << fresh.status().message();
  auto merged = MergeForReload(*running, *fresh, "f");
  ASSERT_TRUE(merged.ok()) << merged.status().message();
  EXPECT_EQ(merged->workers.max, 8);
}

TEST(Config, MetricsListenTakesANumericHostAndPort) {
  auto off = ParseConfig("", kOrigin);
  ASSERT_TRUE(off.ok());
  EXPECT_EQ(off.value().metrics.listen, "") << "off by default";
  for (const char* good : {"127.0.0.1:9464", "0.0.0.0:0", "[::1]:9464"}) {
    auto c = ParseConfig(std::string("[metrics]\nlisten = \"") + good + "\"\n", kOrigin);
    ASSERT_TRUE(c.ok()) << good << ": " << c.status().message();
    EXPECT_EQ(c.value().metrics.listen, good);
  }
}

TEST(Config, BadMetricsListenIsRefusedSayingWhatToWrite) {
  std::string msg = ErrorOf("[log]\nlevel = \"info\"\n[metrics]\nlisten = \"localhost:9464\"\n");
  ExpectOneLineNaming(msg, "digestd.conf:4", "[metrics] listen");
  EXPECT_NE(msg.find("127.0.0.1:9464"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not looked up"), std::string::npos) << msg;
  msg = ErrorOf("[metrics]\nlisten = \"9464\"\n");
  EXPECT_NE(msg.find("has no :PORT"), std::string::npos) << msg;
  msg = ErrorOf("[metrics]\nlisten = \"127.0.0.1:70000\"\n");
  EXPECT_NE(msg.find("between 0 and 65535"), std::string::npos) << msg;
}

TEST(Config, LoadConfigFileNamesAMissingFile) {
  auto result = LoadConfigFile("/nonexistent/digestd.conf");
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("/nonexistent/digestd.conf"), std::string::npos);
  EXPECT_EQ(result.status().message().find('\n'), std::string::npos);
}

TEST(Config, LoadConfigFileNamesThePathInErrors) {
  testing::TempDir dir;
  std::string path = dir.File("bad.conf");
  ASSERT_TRUE(testing::WriteTextFile(path, "[workers]\nmax = 0\n"));
  auto result = LoadConfigFile(path);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find(path + ":2:"), std::string::npos)
      << result.status().message();
}

TEST(Config, MergeReloadableKeepsNonReloadableKeys) {
  auto running = ParseConfig(R"([workers]
min = 2
max = 8
[queues]
interactive = 10
[control]
socket = "/tmp/a.sock"
max_line_bytes = 4096
[log]
level = "info"
)",
                             "running");
  auto fresh = ParseConfig(R"([workers]
min = 1
max = 4
[queues]
interactive = 99
[control]
socket = "/tmp/b.sock"
max_line_bytes = 8192
[log]
level = "debug"
)",
                           "fresh");
  ASSERT_TRUE(running.ok()) << running.status().message();
  ASSERT_TRUE(fresh.ok()) << fresh.status().message();
  Config merged = MergeReloadable(*running, *fresh);
  // Reloadable: taken from the fresh file.
  EXPECT_EQ(merged.workers.min, 1);
  EXPECT_EQ(merged.workers.max, 4);
  EXPECT_EQ(merged.control.max_line_bytes, 8192);
  EXPECT_EQ(merged.log.level, "debug");
  // Needs a restart: the running values stay.
  EXPECT_EQ(merged.queues.interactive, 10);
  EXPECT_EQ(merged.control.socket, "/tmp/a.sock");

  auto applied = DiffConfig(*running, *fresh, true);
  auto ignored = DiffConfig(*running, *fresh, false);
  EXPECT_NE(std::find(applied.begin(), applied.end(), "[workers] max: 8 -> 4"), applied.end());
  EXPECT_NE(std::find(ignored.begin(), ignored.end(), "[queues] interactive: 10 -> 99"),
            ignored.end());
  EXPECT_TRUE(DiffConfig(merged, *fresh, true).empty());
}

TEST(Config, EveryReloadableFlagIsConsistentWithMerge) {
  // Keys marked reloadable change through MergeReloadable; others never do.
  Config a;
  Config b;
  b.workers.min = 5;
  b.workers.max = 9;
  b.queues.background = 1;
  b.control.socket = "/tmp/other.sock";
  b.daemon.node_id = "other";
  b.log.level = "error";
  Config merged = MergeReloadable(a, b);
  for (const auto& key : ConfigKeys()) {
    std::string from_b = ConfigValueString(b, key.section, key.name);
    std::string from_a = ConfigValueString(a, key.section, key.name);
    std::string got = ConfigValueString(merged, key.section, key.name);
    EXPECT_EQ(got, key.reloadable ? from_b : from_a) << key.section << "." << key.name;
  }
}

// conf/digestd.conf documents every key of the table, and holds nothing else.
TEST(Config, ExampleFileAndKeyTableAgree) {
  const std::string path = DIGESTD_SOURCE_DIR "/conf/digestd.conf";
  std::string text = ReadTextFile(path);
  ASSERT_FALSE(text.empty()) << path << " is missing or empty";

  std::set<std::pair<std::string, std::string>> in_file;
  std::map<std::pair<std::string, std::string>, int> lines;
  const std::regex section_re(R"(^\s*\[([A-Za-z0-9_]+)\]\s*(#.*)?$)");
  const std::regex key_re(R"(^\s*([A-Za-z0-9_]+)\s*=)");
  std::string section;
  int n = 0;
  for (const auto& line : SplitLines(text)) {
    ++n;
    std::smatch m;
    if (std::regex_match(line, m, section_re)) {
      section = m[1];
    } else if (std::regex_search(line, m, key_re)) {
      in_file.insert({section, m[1]});
      lines[{section, m[1]}] = n;
    }
  }
  for (const auto& key : ConfigKeys()) {
    std::pair<std::string, std::string> k{std::string(key.section), std::string(key.name)};
    EXPECT_TRUE(in_file.count(k)) << "[" << key.section << "] " << key.name << " is not in " << path
                                  << " (expected a line \"" << key.name << " = ...\" inside ["
                                  << key.section << "])";
  }
  for (const auto& [sec, name] : in_file) {
    bool known = false;
    for (const auto& key : ConfigKeys()) known |= key.section == sec && key.name == name;
    EXPECT_TRUE(known) << path << ":" << lines[{sec, name}] << ": [" << sec << "] " << name
                       << " is not a key digestd knows";
  }
  // And the shipped file is itself a valid config.
  auto parsed = ParseConfig(text, path);
  EXPECT_TRUE(parsed.ok()) << parsed.status().message();
}

}  // namespace
}  // namespace digestd
