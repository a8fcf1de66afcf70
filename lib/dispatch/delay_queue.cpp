#include "dispatch/delay_queue.h"

namespace digestd {

DelayQueue::DelayQueue(uv_loop_t* loop, OnDue on_due) : loop_(loop), on_due_(std::move(on_due)) {
  if (uv_timer_init(loop_, timer_.get()) == 0) {
    timer_.set_initialized();
    timer_.get()->data = this;
  }
}

void DelayQueue::Add(JobPtr job, uint64_t delay_ms) {
  heap_.push(Item{uv_now(loop_) + delay_ms, seq_++, std::move(job)});
  Arm();
}

std::vector<JobPtr> DelayQueue::TakeAll() {
  std::vector<JobPtr> out;
  while (!heap_.empty()) {
    out.push_back(heap_.top().job);
    heap_.pop();
  }
  if (timer_.initialized()) uv_timer_stop(timer_.get());
  return out;
}

int64_t DelayQueue::NextDueInMs() const {
  if (heap_.empty()) return -1;
  uint64_t now = uv_now(loop_);
  return heap_.top().due_ms > now ? static_cast<int64_t>(heap_.top().due_ms - now) : 0;
}

void DelayQueue::Arm() {
  if (!timer_.initialized()) return;
  if (heap_.empty()) {
    uv_timer_stop(timer_.get());
    return;
  }
  uv_timer_start(timer_.get(), &DelayQueue::OnTimer, static_cast<uint64_t>(NextDueInMs()), 0);
}

void DelayQueue::OnTimer(uv_timer_t* timer) {
  auto* self = static_cast<DelayQueue*>(timer->data);
  uint64_t now = uv_now(self->loop_);
  while (!self->heap_.empty() && self->heap_.top().due_ms <= now) {
    JobPtr job = self->heap_.top().job;
    self->heap_.pop();
    self->on_due_(std::move(job));
  }
  self->Arm();
}

}  // namespace digestd
