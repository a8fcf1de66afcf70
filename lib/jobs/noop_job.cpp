// noop: sleeps `sleep_ms` (capped by [jobs] noop_max_sleep_ms) and returns
// {"slept_ms": N}. It proves the machinery and measures the daemon's own
// overhead; the sleep wakes every few milliseconds to honour cancellation.
// A noop without a sleep runs on the loop thread (RunsOnLoop).
#include <algorithm>
#include <chrono>
#include <thread>

#include "jobs/job_kind.h"

namespace digestd {
namespace {

class NoopKind final : public JobKind {
 public:
  std::string_view name() const override { return "noop"; }

  Status Validate(const nlohmann::json& input, const Config& config) const override {
    if (!input.is_object()) {
      return Status::BadRequest("input must be an object, such as {\"sleep_ms\": 10}");
    }
    for (const auto& [k, v] : input.items()) {
      if (k != "sleep_ms") {
        return Status::BadRequest("input." + k + " is not a noop field; noop takes only sleep_ms");
      }
      if (!v.is_number_integer() || v.get<int64_t>() < 0) {
        return Status::BadRequest("input.sleep_ms must be a non-negative integer (milliseconds)");
      }
      if (v.get<int64_t>() > config.jobs.noop_max_sleep_ms) {
        return Status::BadRequest("input.sleep_ms = " + std::to_string(v.get<int64_t>()) +
                                  " is above [jobs] noop_max_sleep_ms = " +
                                  std::to_string(config.jobs.noop_max_sleep_ms));
      }
    }
    return Status::Ok();
  }

  // sleep_ms 0 (or absent) does nothing: no reason to wake a pool thread.
  bool RunsOnLoop(const nlohmann::json& input, const Config& /*config*/) const override {
    return input.value("sleep_ms", int64_t{0}) <= 0;
  }

  WorkOutcome Run(const WorkContext& ctx) const override {
    int64_t want = ctx.input->value("sleep_ms", int64_t{0});
    want = std::clamp<int64_t>(want, 0, ctx.config->jobs.noop_max_sleep_ms);
    auto start = std::chrono::steady_clock::now();
    auto end = start + std::chrono::milliseconds(want);
    while (std::chrono::steady_clock::now() < end) {
      if (ctx.cancelled()) return WorkOutcome::Cancelled("cancelled while sleeping");
      auto left = end - std::chrono::steady_clock::now();
      std::this_thread::sleep_for(
          std::min<std::chrono::steady_clock::duration>(left, std::chrono::milliseconds(5)));
    }
    return WorkOutcome::Done({{"slept_ms", want}});
  }
};

}  // namespace

DIGESTD_REGISTER_JOB_KIND(NoopKind);

}  // namespace digestd
