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

}  // namespace digestd
