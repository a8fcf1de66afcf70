// Backoff: how long a job waits before its next attempt after a retryable
// failure. Exponential with "full jitter" (AWS Architecture Blog, "Exponential
// Backoff And Jitter"): the n-th retry waits a uniformly random time in
// [0, min(cap, base * 2^(n-1))]. Full jitter spreads a crowd of jobs that
// failed together (an Ollama restart, a burst of 503s) over the whole window
// instead of sending them back in lock-step.
//
// Pure functions; the randomness is injected so tests can pin it. Any thread.
#pragma once

#include <cstdint>
#include <functional>

namespace digestd {

// Returns uniformly distributed 64-bit values (std::mt19937_64 fits:
// `[&] { return rng(); }`).
using BackoffRng = std::function<uint64_t()>;

// The upper end of the n-th retry's window: min(cap_ms, base_ms * 2^(retry-1)),
// computed without overflow. `retry` counts from 1 (the first retry after the
// first failure); values below 1 are treated as 1. base_ms and cap_ms below 0
// are treated as 0.
int64_t BackoffCeilingMs(int retry, int64_t base_ms, int64_t cap_ms);

// A delay drawn uniformly from [0, BackoffCeilingMs(retry, base_ms, cap_ms)]
// with `rng`.
int64_t BackoffDelayMs(int retry, int64_t base_ms, int64_t cap_ms, const BackoffRng& rng);

// The same with a per-thread std::mt19937_64 seeded from std::random_device.
int64_t BackoffDelayMs(int retry, int64_t base_ms, int64_t cap_ms);

}  // namespace digestd
