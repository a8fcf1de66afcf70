#include "queue/ring_queue.h"

#include <gtest/gtest.h>

#include <deque>
#include <memory>
#include <string>

namespace digestd {
namespace {

TEST(RingQueue, NewRingIsEmpty) {
  RingQueue<int> ring(4);
  EXPECT_TRUE(ring.empty());
  EXPECT_FALSE(ring.full());
  EXPECT_EQ(ring.size(), 0u);
  EXPECT_EQ(ring.capacity(), 4u);
  EXPECT_EQ(ring.Front(), nullptr);
  EXPECT_FALSE(ring.Pop().has_value());
}

TEST(RingQueue, PopsInPushOrder) {
  RingQueue<int> ring(4);
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(ring.Push(int{i}));
  ASSERT_NE(ring.Front(), nullptr);
  EXPECT_EQ(*ring.Front(), 1);
  EXPECT_EQ(ring.Pop(), 1);
  EXPECT_EQ(ring.Pop(), 2);
  EXPECT_EQ(ring.Pop(), 3);
  EXPECT_FALSE(ring.Pop().has_value());
  EXPECT_TRUE(ring.empty());
}

TEST(RingQueue, PushFailsWhenFullAndNeverGrows) {
  RingQueue<int> ring(3);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(ring.Push(int{i}));
  EXPECT_TRUE(ring.full());
  EXPECT_FALSE(ring.Push(99));
  EXPECT_FALSE(ring.Push(100));
  EXPECT_EQ(ring.size(), 3u);
  EXPECT_EQ(ring.capacity(), 3u);
  // The rejected values were not stored anywhere: the ring still holds 0..2.
  EXPECT_EQ(ring.Pop(), 0);
  EXPECT_EQ(ring.Pop(), 1);
  EXPECT_EQ(ring.Pop(), 2);
  EXPECT_TRUE(ring.empty());
}

TEST(RingQueue, RoomFreedByPopIsReusable) {
  RingQueue<int> ring(2);
  ASSERT_TRUE(ring.Push(1));
  ASSERT_TRUE(ring.Push(2));
  ASSERT_FALSE(ring.Push(3));
  EXPECT_EQ(ring.Pop(), 1);
  EXPECT_TRUE(ring.Push(3));
  EXPECT_FALSE(ring.Push(4));
  EXPECT_EQ(ring.Pop(), 2);
  EXPECT_EQ(ring.Pop(), 3);
}

TEST(RingQueue, CapacityOne) {
  RingQueue<std::string> ring(1);
  EXPECT_TRUE(ring.empty());
  for (int i = 0; i < 10; ++i) {
    ASSERT_TRUE(ring.Push("item" + std::to_string(i)));
    EXPECT_TRUE(ring.full());
    EXPECT_FALSE(ring.Push("overflow"));
    ASSERT_NE(ring.Front(), nullptr);
    EXPECT_EQ(*ring.Front(), "item" + std::to_string(i));
    EXPECT_EQ(ring.Pop(), "item" + std::to_string(i));
    EXPECT_TRUE(ring.empty());
    EXPECT_FALSE(ring.Pop().has_value());
  }
}

// Many laps around a small ring at every fill level, checked against a deque.
TEST(RingQueue, WrapsAroundManyTimesInOrder) {
  constexpr size_t kCapacity = 5;
  RingQueue<int> ring(kCapacity);
  std::deque<int> model;
  int next = 0;
  for (int round = 0; round < 2000; ++round) {
    // Fill to a level that changes every round, then drain to another.
    size_t fill_to = static_cast<size_t>(round % (kCapacity + 1));
    while (model.size() < fill_to) {
      ASSERT_TRUE(ring.Push(int{next}));
      model.push_back(next++);
    }
    if (model.size() == kCapacity) {
      ASSERT_FALSE(ring.Push(-1));
    }
    size_t drain_to = static_cast<size_t>((round * 7) % (fill_to + 1));
    while (model.size() > drain_to) {
      auto got = ring.Pop();
      ASSERT_TRUE(got.has_value());
      ASSERT_EQ(*got, model.front());
      model.pop_front();
    }
    ASSERT_EQ(ring.size(), model.size());
    ASSERT_EQ(ring.empty(), model.empty());
    ASSERT_EQ(ring.full(), model.size() == kCapacity);
    if (!model.empty()) {
      ASSERT_EQ(*ring.Front(), model.front());
    }
  }
  EXPECT_GT(next, static_cast<int>(kCapacity) * 100);  // really went round many times
}

TEST(RingQueue, HoldsMoveOnlyTypes) {
  RingQueue<std::unique_ptr<int>> ring(2);
  ASSERT_TRUE(ring.Push(std::make_unique<int>(1)));
  ASSERT_TRUE(ring.Push(std::make_unique<int>(2)));
  auto rejected = std::make_unique<int>(3);
  EXPECT_FALSE(ring.Push(std::move(rejected)));
  // A failed Push leaves its argument untouched, so the caller still owns it.
  ASSERT_NE(rejected, nullptr);
  EXPECT_EQ(*rejected, 3);
  EXPECT_EQ(**ring.Front(), 1);
  auto first = ring.Pop();
  ASSERT_TRUE(first.has_value());
  ASSERT_NE(*first, nullptr);
  EXPECT_EQ(**first, 1);
  EXPECT_TRUE(ring.Push(std::move(rejected)));
  EXPECT_EQ(**ring.Pop(), 2);
  EXPECT_EQ(**ring.Pop(), 3);
}

TEST(RingQueue, PopReleasesTheElement) {
  auto shared = std::make_shared<int>(7);
  RingQueue<std::shared_ptr<int>> ring(3);
  ASSERT_TRUE(ring.Push(std::shared_ptr<int>(shared)));
  EXPECT_EQ(shared.use_count(), 2);
  {
    auto out = ring.Pop();
    ASSERT_TRUE(out.has_value());
    EXPECT_EQ(shared.use_count(), 2);  // now held by `out`, not by the ring
  }
  EXPECT_EQ(shared.use_count(), 1);
}

TEST(RingQueue, DestroysWhatItStillHolds) {
  auto shared = std::make_shared<int>(7);
  {
    RingQueue<std::shared_ptr<int>> ring(3);
    ASSERT_TRUE(ring.Push(std::shared_ptr<int>(shared)));
    ASSERT_TRUE(ring.Push(std::shared_ptr<int>(shared)));
    EXPECT_EQ(shared.use_count(), 3);
  }
  EXPECT_EQ(shared.use_count(), 1);
}

TEST(RingQueue, MovedRingKeepsItsContents) {
  RingQueue<int> a(2);
  ASSERT_TRUE(a.Push(1));
  RingQueue<int> b(std::move(a));
  EXPECT_EQ(b.size(), 1u);
  EXPECT_EQ(b.Pop(), 1);
}

}  // namespace
}  // namespace digestd
