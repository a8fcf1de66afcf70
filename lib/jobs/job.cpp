#include "jobs/job.h"

namespace digestd {

std::string_view LaneName(Lane lane) {
  return lane == Lane::kInteractive ? "interactive" : "background";
}

std::optional<Lane> ParseLane(std::string_view name) {
  if (name == "interactive") return Lane::kInteractive;
  if (name == "background") return Lane::kBackground;
  return std::nullopt;
}

std::string_view JobStateName(JobState state) {
  switch (state) {
    case JobState::kQueued:
      return "queued";
    case JobState::kRunning:
      return "running";
    case JobState::kDone:
      return "done";
    case JobState::kFailed:
      return "failed";
    case JobState::kCancelled:
      return "cancelled";
  }
  return "queued";
}

uint64_t InputHash(std::string_view kind, const nlohmann::json& input) {
  uint64_t h = 14695981039346656037ull;  // FNV-1a offset basis
  auto mix = [&h](std::string_view bytes) {
    for (unsigned char c : bytes) {
      h ^= c;
      h *= 1099511628211ull;  // FNV prime
    }
  };
  mix(kind);
  mix(std::string_view("\0", 1));
  mix(input.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  return h;
}

}  // namespace digestd
