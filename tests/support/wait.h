// Waiting in tests and benchmarks without sleeping for a guessed time: poll a
// condition until it holds or a generous deadline passes (Redis's
// wait_for_condition), or run a libuv loop until it does. A deadline only
// bounds a wait for a state; it is never a timing claim, so no test built on
// these fails because a machine is slow.
//
// Header only, so every test executable, the fake Ollama's tests and the
// benchmarks use the same code without linking a support library.
//
// Threads: WaitFor may be called from any thread; `condition` runs on the
// caller's thread. RunUntil and RunTurns run `loop`, so only the thread that
// owns the loop may call them.
#pragma once

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>

namespace digestd::testing {

// The upper bound every wait in the tests uses. Generous: it only bounds a
// wait for a state, it is never a timing assertion.
inline constexpr std::chrono::milliseconds kDeadline{10000};

// How often a condition is checked while nothing else wakes the waiter.
inline constexpr std::chrono::milliseconds kPollInterval{2};

// Checks `condition` at once and then every `poll` until it returns true
// (true) or `timeout` has passed (false). For state that another thread or
// process changes: a daemon's answers, a pool thread's progress, a file.
inline bool WaitFor(const std::function<bool()>& condition,
                    std::chrono::milliseconds timeout = kDeadline,
                    std::chrono::milliseconds poll = kPollInterval) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (condition()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(poll);
  }
}

// Runs `loop` (UV_RUN_ONCE at a time) until `condition` returns true (true)
// or `timeout` has passed (false). `condition` is checked before the first
// turn and after every turn. A timer ticking every `poll` wakes the loop
// when nothing else does, so a condition that another thread changes is seen
// too, and so is the deadline; it is closed before RunUntil returns, and its
// close callback runs at the loop's next turn. Nothing runs on the loop after
// `condition` has been seen true, so the test observes exactly that state.
inline bool RunUntil(uv_loop_t* loop, const std::function<bool()>& condition,
                     std::chrono::milliseconds timeout = kDeadline,
                     std::chrono::milliseconds poll = kPollInterval) {
  if (condition()) return true;
  // The handle lives on the heap until its close callback, libuv's rule.
  auto tick = std::make_unique<uv_timer_t>();
  if (uv_timer_init(loop, tick.get()) != 0) return false;
  const auto every = static_cast<uint64_t>(poll.count() > 0 ? poll.count() : 1);
  uv_timer_start(
      tick.get(), [](uv_timer_t*) {}, every, every);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  bool ok = false;
  while (!(ok = condition()) && std::chrono::steady_clock::now() < deadline) {
    uv_run(loop, UV_RUN_ONCE);
  }
  uv_close(reinterpret_cast<uv_handle_t*>(tick.release()), [](uv_handle_t* h) {
    std::unique_ptr<uv_timer_t> owned(reinterpret_cast<uv_timer_t*>(h));
  });
  return ok;
}

// Runs what `loop` has ready now -- timers already due, I/O already
// readable, close callbacks -- for `turns` turns, never waiting for anything.
// For checking that something does NOT follow from what the test just did:
// whatever the code under test schedules for "the next turn of the loop"
// (a zero-delay timer, a uv_async it sent itself) has run when this returns,
// without the test waiting for a time window.
inline void RunTurns(uv_loop_t* loop, int turns = 3) {
  for (int i = 0; i < turns; ++i) uv_run(loop, UV_RUN_NOWAIT);
}

}  // namespace digestd::testing
