// RingQueue<T>: a bounded FIFO over a fixed array. Capacity is set once;
// Push fails when the ring is full instead of growing, which is what keeps
// digestd's memory bounded whatever the backlog (docs/architecture.md,
// "Bounded memory").
//
// Not thread-safe: one owner, the loop thread. Elements are owned by the ring
// between Push and Pop.
#pragma once

#include <cassert>
#include <cstddef>
#include <memory>
#include <optional>
#include <utility>

namespace digestd {

template <typename T>
class RingQueue {
 public:
  // `capacity` must be > 0.
  explicit RingQueue(size_t capacity)
      : slots_(std::make_unique<std::optional<T>[]>(capacity)), capacity_(capacity) {
    assert(capacity > 0);
  }

  RingQueue(const RingQueue&) = delete;
  RingQueue& operator=(const RingQueue&) = delete;
  RingQueue(RingQueue&&) noexcept = default;
  RingQueue& operator=(RingQueue&&) noexcept = default;

  // Appends `value`. Returns false (and leaves `value` untouched) when full.
  [[nodiscard]] bool Push(T&& value) {
    if (size_ == capacity_) return false;
    slots_[(head_ + size_) % capacity_].emplace(std::move(value));
    ++size_;
    return true;
  }

  // Removes and returns the oldest element; nullopt when empty.
  std::optional<T> Pop() {
    if (size_ == 0) return std::nullopt;
    std::optional<T> out = std::move(slots_[head_]);
    slots_[head_].reset();
    head_ = (head_ + 1) % capacity_;
    --size_;
    return out;
  }

  // The oldest element, or nullptr when empty. Valid until the next Push/Pop.
  T* Front() { return size_ == 0 ? nullptr : &*slots_[head_]; }

  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }
  bool empty() const { return size_ == 0; }
  bool full() const { return size_ == capacity_; }

 private:
  std::unique_ptr<std::optional<T>[]> slots_;
  size_t capacity_;
  size_t head_ = 0;  // index of the oldest element
  size_t size_ = 0;
};

}  // namespace digestd
