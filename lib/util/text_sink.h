// TextSink: the text a running job produces (an LLM answer as it streams),
// handed from the job's pool thread to the loop. The worker appends; the
// loop takes the whole text so far whenever it changed. Each Append wakes
// the loop through `wake`, an async handle the loop owns and keeps open as
// long as any sink exists (libuv coalesces the wake-ups).
//
// Thread-safe: one writer (the job's pool thread) and the loop thread.
#pragma once

#include <uv.h>

#include <mutex>
#include <optional>
#include <string>
#include <string_view>

namespace digestd {

class TextSink {
 public:
  explicit TextSink(uv_async_t* wake) : wake_(wake) {}
  TextSink(const TextSink&) = delete;
  TextSink& operator=(const TextSink&) = delete;

  // Pool thread.
  void Append(std::string_view text) {
    if (text.empty()) return;
    {
      std::lock_guard l(mu_);
      text_.append(text);
      changed_ = true;
    }
    uv_async_send(wake_);
  }
  // Loop thread: the text so far, when it changed since the last call.
  std::optional<std::string> TakeIfChanged() {
    std::lock_guard l(mu_);
    if (!changed_) return std::nullopt;
    changed_ = false;
    return text_;
  }

 private:
  uv_async_t* wake_;
  std::mutex mu_;
  std::string text_;  // guarded by mu_
  bool changed_ = false;
};

}  // namespace digestd
