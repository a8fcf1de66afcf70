// DelayQueue: jobs waiting out a retry backoff. Each is handed back through
// `on_due` once its time has come; one loop timer serves them all, armed for
// the earliest. The job stays `queued` (with its last error) meanwhile.
//
// Loop thread only. Holds JobPtr references until they are due or taken;
// Close() before the loop is closed.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <queue>
#include <vector>

#include "jobs/job.h"
#include "util/uv_handle.h"

namespace digestd {

class DelayQueue {
 public:
  using OnDue = std::function<void(JobPtr)>;

  // `loop` must outlive this. `on_due` may call Add() again.
  DelayQueue(uv_loop_t* loop, OnDue on_due);
  DelayQueue(const DelayQueue&) = delete;
  DelayQueue& operator=(const DelayQueue&) = delete;

  // Hands `job` to on_due after `delay_ms`.
  void Add(JobPtr job, uint64_t delay_ms);
  // Removes and returns every waiting job (shutdown).
  std::vector<JobPtr> TakeAll();
  size_t size() const { return heap_.size(); }
  // Milliseconds until the next job is due; -1 when empty.
  int64_t NextDueInMs() const;
  void Close() { timer_.Close(); }

 private:
  struct Item {
    uint64_t due_ms;  // uv_now() time
    uint64_t seq;     // keeps equal due times in FIFO order
    JobPtr job;
    bool operator>(const Item& o) const {
      return due_ms != o.due_ms ? due_ms > o.due_ms : seq > o.seq;
    }
  };
  void Arm();
  static void OnTimer(uv_timer_t* timer);

  uv_loop_t* loop_;
  OnDue on_due_;
  UvHandle<uv_timer_t> timer_;
  std::priority_queue<Item, std::vector<Item>, std::greater<Item>> heap_;
  uint64_t seq_ = 0;
};

}  // namespace digestd
