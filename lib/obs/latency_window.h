// LatencyWindow: the most recent N latency samples, for p50/p95/p99 in
// `status`. Fixed memory; recording is O(1); Percentiles() sorts a copy.
// Loop thread only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace digestd {

struct Percentiles {
  size_t count = 0;  // samples in the window
  double p50_ms = 0, p95_ms = 0, p99_ms = 0, max_ms = 0;
};

class LatencyWindow {
 public:
  explicit LatencyWindow(size_t capacity = 4096) : samples_(capacity) {}
  void Record(uint64_t nanos);
  Percentiles Compute() const;
  uint64_t total() const { return total_; }

 private:
  std::vector<uint64_t> samples_;
  size_t next_ = 0;
  uint64_t total_ = 0;  // samples ever recorded
};

}  // namespace digestd
