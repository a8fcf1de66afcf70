// Fuzzes the config loader with arbitrary text. A config file is untrusted
// input: ParseConfig must answer with a Config or an InvalidConfig status
// that names the file, never throw or crash. A config it accepts must
// survive the round trip through DumpConfig (what `digestd --print-config`
// prints) unchanged.
//
// An invariant that does not hold calls abort(), which libFuzzer reports as
// a crash with the input that caused it.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "config/config.h"

namespace {

constexpr std::string_view kOrigin = "fuzz.conf";

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "config_fuzz: invariant broken: %s\n", what);
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  auto parsed = digestd::ParseConfig(text, kOrigin);
  if (!parsed.ok()) {
    const digestd::Status& st = parsed.status();
    Check(st.code() == digestd::Status::Code::kInvalidConfig, "a bad config is invalid_config");
    Check(st.message().rfind(kOrigin, 0) == 0, "the error starts with the file name");
    return 0;
  }

  const digestd::Config& config = parsed.value();
  Check(config.workers.min <= config.workers.max, "[workers] min <= max");
  Check(config.workers.interactive_reserved < config.workers.max,
        "[workers] interactive_reserved < max");
  Check(config.queues.interactive > 0 && config.queues.background > 0, "capacities > 0");

  std::string dumped = digestd::DumpConfig(config);
  auto again = digestd::ParseConfig(dumped, "dumped.conf");
  if (!again.ok()) {
    std::fprintf(stderr, "%s\n--- dumped ---\n%s", again.status().message().c_str(),
                 dumped.c_str());
  }
  Check(again.ok(), "the dumped config parses");
  Check(digestd::DiffConfig(config, again.value(), true).empty() &&
            digestd::DiffConfig(config, again.value(), false).empty(),
        "the dumped config is the same config");
  return 0;
}
