// RingQueue push+pop cost, with std::deque (bounded by a size check, as a
// ring replacement would have to be) measured in the same run for scale.
//
// Two access patterns, each at a few capacities:
//   steady  the queue is kept half full and each iteration pushes one
//           element and pops one, so head and tail wrap around the ring;
//           the loop thread's dispatcher mostly sees this.
//   burst   each iteration fills the queue to capacity and drains it,
//           reported per push+pop pair; a submit batch followed by dispatch.
// Payloads: int, and std::shared_ptr<Payload> (what the lanes really hold:
// a JobPtr), moved in and out of a preallocated pool so that allocation is
// not part of the figure.
//
// Figures only: nothing here is asserted.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "queue/ring_queue.h"

namespace {

struct Payload {
  uint64_t id = 0;
  char key[48] = {};
};
using Ptr = std::shared_ptr<Payload>;

// Produces the value pushed at step `i` and takes back the value popped.
template <typename T>
class Source;

template <>
class Source<int> {
 public:
  explicit Source(size_t) {}
  int Take(size_t i) { return static_cast<int>(i); }
  void Give(size_t, int&& v) { benchmark::DoNotOptimize(v); }
};

template <>
class Source<Ptr> {
 public:
  explicit Source(size_t n) : pool_(n) {
    for (size_t i = 0; i < n; ++i) pool_[i] = std::make_shared<Payload>(Payload{i, {}});
  }
  Ptr Take(size_t i) { return std::move(pool_[i % pool_.size()]); }
  void Give(size_t i, Ptr&& v) {
    benchmark::DoNotOptimize(v.get());
    pool_[i % pool_.size()] = std::move(v);
  }

 private:
  std::vector<Ptr> pool_;
};

// std::deque behind the same bounded interface as RingQueue.
template <typename T>
class BoundedDeque {
 public:
  explicit BoundedDeque(size_t capacity) : capacity_(capacity) {}
  [[nodiscard]] bool Push(T&& v) {
    if (q_.size() == capacity_) return false;
    q_.push_back(std::move(v));
    return true;
  }
  std::optional<T> Pop() {
    if (q_.empty()) return std::nullopt;
    std::optional<T> out(std::move(q_.front()));
    q_.pop_front();
    return out;
  }

 private:
  std::deque<T> q_;
  size_t capacity_;
};

// "per_push_pop" is the time of one push plus one pop, in seconds with an SI
// prefix (2.5n = 2.5 ns), whatever the pattern does per iteration.
void ReportPerOp(benchmark::State& state, uint64_t pairs) {
  state.counters["per_push_pop"] = benchmark::Counter(
      static_cast<double>(pairs), benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

template <typename Q, typename T>
void Steady(benchmark::State& state) {
  const size_t capacity = static_cast<size_t>(state.range(0));
  Q q(capacity);
  // Pool slot i is taken at step i and given back when popped, `half`
  // steps later, so the pool needs `half` + 1 slots.
  const size_t half = capacity / 2;
  Source<T> src(half + 1);
  size_t pushed = 0, popped = 0;
  for (; pushed < half; ++pushed) {
    if (!q.Push(src.Take(pushed))) state.SkipWithError("prefill failed");
  }
  for (auto _ : state) {
    if (!q.Push(src.Take(pushed++))) {
      state.SkipWithError("push failed");
      break;
    }
    auto v = q.Pop();
    src.Give(popped++, std::move(*v));
  }
  ReportPerOp(state, state.iterations());
}

template <typename Q, typename T>
void Burst(benchmark::State& state) {
  const size_t capacity = static_cast<size_t>(state.range(0));
  Q q(capacity);
  Source<T> src(capacity);
  for (auto _ : state) {
    for (size_t i = 0; i < capacity; ++i) {
      if (!q.Push(src.Take(i))) state.SkipWithError("push failed");
    }
    for (size_t i = 0; i < capacity; ++i) src.Give(i, std::move(*q.Pop()));
  }
  ReportPerOp(state, state.iterations() * capacity);
}

template <typename T>
void RegisterAll(const std::string& type) {
  const std::vector<int64_t> capacities = {16, 1024, 65536};
  auto reg = [&](const std::string& name, void (*fn)(benchmark::State&)) {
    auto* b = benchmark::RegisterBenchmark(name.c_str(), fn);
    for (int64_t c : capacities) b->Arg(c);
    b->ArgName("cap");
  };
  reg("RingQueue<" + type + ">/steady", Steady<digestd::RingQueue<T>, T>);
  reg("std::deque<" + type + ">/steady", Steady<BoundedDeque<T>, T>);
  reg("RingQueue<" + type + ">/burst", Burst<digestd::RingQueue<T>, T>);
  reg("std::deque<" + type + ">/burst", Burst<BoundedDeque<T>, T>);
}

}  // namespace

int main(int argc, char** argv) {
  RegisterAll<int>("int");
  RegisterAll<Ptr>("shared_ptr");
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
