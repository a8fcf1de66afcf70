#include "obs/latency_window.h"

#include <algorithm>

namespace digestd {

void LatencyWindow::Record(uint64_t nanos) {
  samples_[next_] = nanos;
  next_ = (next_ + 1) % samples_.size();
  ++total_;
}

Percentiles LatencyWindow::Compute() const {
  Percentiles p;
  size_t n = std::min<uint64_t>(total_, samples_.size());
  if (n == 0) return p;
  std::vector<uint64_t> v(samples_.begin(), samples_.begin() + n);
  std::sort(v.begin(), v.end());
  auto at = [&](double q) {
    size_t idx = static_cast<size_t>(q * static_cast<double>(n - 1) + 0.5);
    return static_cast<double>(v[std::min(idx, n - 1)]) / 1e6;
  };
  p.count = n;
  p.p50_ms = at(0.50);
  p.p95_ms = at(0.95);
  p.p99_ms = at(0.99);
  p.max_ms = static_cast<double>(v.back()) / 1e6;
  return p;
}

}  // namespace digestd
