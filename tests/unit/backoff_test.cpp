#include "backend/backoff.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>

namespace digestd {
namespace {

TEST(Backoff, CeilingDoublesFromBaseUpToTheCap) {
  EXPECT_EQ(BackoffCeilingMs(1, 500, 30000), 500);
  EXPECT_EQ(BackoffCeilingMs(2, 500, 30000), 1000);
  EXPECT_EQ(BackoffCeilingMs(3, 500, 30000), 2000);
  EXPECT_EQ(BackoffCeilingMs(6, 500, 30000), 16000);
  EXPECT_EQ(BackoffCeilingMs(7, 500, 30000), 30000);
  EXPECT_EQ(BackoffCeilingMs(1000000, 500, 30000), 30000);
}

TEST(Backoff, CeilingNeverOverflows) {
  EXPECT_EQ(BackoffCeilingMs(200, INT64_MAX / 3, INT64_MAX), INT64_MAX);
  EXPECT_EQ(BackoffCeilingMs(63, 1, INT64_MAX), INT64_C(1) << 62);
  EXPECT_EQ(BackoffCeilingMs(64, 1, INT64_MAX), INT64_MAX);
}

TEST(Backoff, OddInputsAreClamped) {
  EXPECT_EQ(BackoffCeilingMs(0, 500, 30000), 500);
  EXPECT_EQ(BackoffCeilingMs(-5, 500, 30000), 500);
  EXPECT_EQ(BackoffCeilingMs(3, 50000, 30000), 30000);  // base above cap
  EXPECT_EQ(BackoffCeilingMs(3, -1, 30000), 0);
  EXPECT_EQ(BackoffDelayMs(3, 0, 0, [] { return ~uint64_t{0}; }), 0);
}

TEST(Backoff, FullJitterSpansZeroToTheCeiling) {
  EXPECT_EQ(BackoffDelayMs(3, 500, 30000, [] { return uint64_t{0}; }), 0);
  EXPECT_EQ(BackoffDelayMs(3, 500, 30000, [] { return ~uint64_t{0}; }), 2000);
  EXPECT_EQ(BackoffDelayMs(3, 500, 30000, [] { return uint64_t{1} << 63; }), 1000);
}

TEST(Backoff, DrawsAreUniformOverTheWindow) {
  std::mt19937_64 rng(42);
  const int kDraws = 40000;
  int buckets[4] = {0, 0, 0, 0};
  int64_t max_seen = 0;
  for (int i = 0; i < kDraws; ++i) {
    int64_t d = BackoffDelayMs(4, 100, 100000, [&] { return rng(); });  // [0, 800]
    ASSERT_GE(d, 0);
    ASSERT_LE(d, 800);
    max_seen = std::max(max_seen, d);
    ++buckets[std::min<int64_t>(d / 200, 3)];
  }
  for (int b : buckets) EXPECT_NEAR(b, kDraws / 4, kDraws / 40);
  EXPECT_GE(max_seen, 790);
}

TEST(Backoff, DefaultRngStaysInTheWindow) {
  for (int i = 0; i < 1000; ++i) {
    int64_t d = BackoffDelayMs(2, 10, 1000);
    ASSERT_GE(d, 0);
    ASSERT_LE(d, 20);
  }
}

}  // namespace
}  // namespace digestd
