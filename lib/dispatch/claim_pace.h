// ClaimPace: how many jobs a lane claims from the job table at a time. It
// measures the rate at which the lane's jobs start and sizes each claim to
// about a quarter of a second of that work (refill when an eighth is left),
// kept between [postgres] refill_low_water and claim_batch. Jobs of seconds
// (LLM calls) are then claimed refill_low_water at a time, so several
// daemons on one table share its backlog and a crash strands few claimed
// jobs; millisecond jobs are claimed up to claim_batch at once, which spreads
// the claim query's fixed cost over many rows.
//
// Threads: loop thread only. Plain value; the daemon owns one per lane.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace digestd {

struct ClaimSize {
  size_t low_water = 0;  // refill when the ring's depth is at most this
  size_t batch = 1;      // jobs one claim asks for (before the ring's room)
};

class ClaimPace {
 public:
  static constexpr uint64_t kWindowMs = 250;  // the rate's measuring window
  static constexpr double kAheadMs = 250;     // work a claim takes ahead

  void Started() { ++started_; }

  // Folds the jobs started since the last window into the rate, once a
  // window has passed. `now_ms`: a monotonic clock (uv_now).
  void Measure(uint64_t now_ms) {
    if (!marked_) {
      marked_ = true;
      mark_ms_ = now_ms;
      mark_started_ = started_;
      return;
    }
    uint64_t elapsed = now_ms - mark_ms_;
    if (elapsed < kWindowMs) return;
    double rate =
        static_cast<double>(started_ - mark_started_) * 1000.0 / static_cast<double>(elapsed);
    // After an idle stretch the new window alone counts.
    rate_ = elapsed > 4 * kWindowMs ? rate : 0.5 * rate_ + 0.5 * rate;
    mark_ms_ = now_ms;
    mark_started_ = started_;
  }

  double rate() const { return rate_; }  // jobs started per second

  ClaimSize Size(int claim_batch, int refill_low_water) const {
    size_t most = static_cast<size_t>(std::max(1, claim_batch));
    size_t floor = static_cast<size_t>(std::max(0, refill_low_water));
    double ahead = rate_ * kAheadMs / 1000.0;
    ClaimSize s;
    s.batch = std::max<size_t>(1, std::min(most, std::max(floor, static_cast<size_t>(ahead))));
    s.low_water = std::min(most, std::max(floor, static_cast<size_t>(ahead / 2)));
    return s;
  }

 private:
  uint64_t started_ = 0;
  uint64_t mark_started_ = 0;
  uint64_t mark_ms_ = 0;
  bool marked_ = false;
  double rate_ = 0;
};

}  // namespace digestd
