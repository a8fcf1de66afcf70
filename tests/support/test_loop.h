// TestLoop: a libuv loop for one test, closed at the end of it. The
// destructor runs the loop until its close callbacks have run and expects
// uv_loop_close() to succeed: a handle or request left open fails the test
// (libuv's MAKE_VALGRIND_HAPPY), and each one left is named.
//
// Threads: the test's thread, which is the loop's thread.
#pragma once

#include <gtest/gtest.h>
#include <uv.h>

#include <chrono>
#include <functional>

#include "wait.h"

namespace digestd::testing {

class TestLoop {
 public:
  TestLoop() { EXPECT_EQ(uv_loop_init(&loop_), 0); }
  ~TestLoop() {
    // Let close callbacks run (UvHandle frees memory in them).
    for (int i = 0; i < 100 && uv_loop_alive(&loop_) != 0; ++i) uv_run(&loop_, UV_RUN_NOWAIT);
    int rc = uv_loop_close(&loop_);
    EXPECT_EQ(rc, 0) << "a handle or request was left open on the loop";
    if (rc != 0) {
      uv_walk(
          &loop_,
          [](uv_handle_t* h, void*) {
            ADD_FAILURE() << "open handle: " << uv_handle_type_name(uv_handle_get_type(h));
            if (uv_is_closing(h) == 0) uv_close(h, nullptr);
          },
          nullptr);
      uv_run(&loop_, UV_RUN_NOWAIT);
      uv_loop_close(&loop_);
    }
  }
  TestLoop(const TestLoop&) = delete;
  TestLoop& operator=(const TestLoop&) = delete;

  uv_loop_t* get() { return &loop_; }
  // testing::RunUntil on this loop. The default deadline is kDeadline's
  // double: it also covers a PostgreSQL server slow to accept a first
  // connection.
  bool RunUntil(const std::function<bool()>& condition,
                std::chrono::milliseconds timeout = 2 * kDeadline) {
    return testing::RunUntil(&loop_, condition, timeout);
  }
  // testing::RunTurns on this loop: what is ready now, never a wait.
  void RunTurns(int turns = 3) { testing::RunTurns(&loop_, turns); }

 private:
  uv_loop_t loop_{};
};

}  // namespace digestd::testing
