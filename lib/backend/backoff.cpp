#include "backend/backoff.h"

#include <algorithm>
#include <random>

namespace digestd {

int64_t BackoffCeilingMs(int retry, int64_t base_ms, int64_t cap_ms) {
  base_ms = std::max<int64_t>(base_ms, 0);
  cap_ms = std::max<int64_t>(cap_ms, 0);
  int64_t ceiling = std::min(base_ms, cap_ms);
  // Doubling stops at the cap, so the loop runs at most ~63 times and never
  // overflows however large `retry` grows.
  for (int i = 1; i < retry && ceiling < cap_ms; ++i) {
    ceiling = ceiling > cap_ms / 2 ? cap_ms : ceiling * 2;
  }
  return ceiling;
}

int64_t BackoffDelayMs(int retry, int64_t base_ms, int64_t cap_ms, const BackoffRng& rng) {
  const auto ceiling = static_cast<uint64_t>(BackoffCeilingMs(retry, base_ms, cap_ms));
  // Multiply-shift maps 64 random bits onto [0, ceiling] without the bias of
  // a modulo.
  const unsigned __int128 wide = static_cast<unsigned __int128>(rng()) * (ceiling + 1);
  return static_cast<int64_t>(wide >> 64);
}

int64_t BackoffDelayMs(int retry, int64_t base_ms, int64_t cap_ms) {
  thread_local std::mt19937_64 engine{std::random_device{}()};
  return BackoffDelayMs(retry, base_ms, cap_ms, [] { return engine(); });
}

}  // namespace digestd
