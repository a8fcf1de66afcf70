// Wall-clock time for timestamps that leave the process (status, job views,
// PostgreSQL rows). Durations inside the loop use uv_now / uv_hrtime.
#pragma once

#include <chrono>
#include <cstdint>

namespace digestd {

// Milliseconds since the Unix epoch, from the system clock.
inline int64_t UnixMillis() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace digestd
