// UvHandle<H>: the single owner of one libuv handle. The handle lives on the
// heap so its address never moves; Close() is idempotent; the memory is freed
// only in the close callback (libuv's rule), so the loop must run once more
// after Close() before uv_loop_close() can succeed.
//
// Loop thread only. Not copyable.
#pragma once

#include <uv.h>

#include <memory>
#include <string>

#include "util/status.h"

namespace digestd {

template <typename H>
class UvHandle {
 public:
  UvHandle() : handle_(std::make_unique<H>()) {}
  ~UvHandle() { Close(); }
  UvHandle(const UvHandle&) = delete;
  UvHandle& operator=(const UvHandle&) = delete;

  // The raw handle, for uv_*_init and friends. Null after Close().
  H* get() const { return handle_.get(); }
  uv_handle_t* base() const { return reinterpret_cast<uv_handle_t*>(handle_.get()); }
  uv_stream_t* stream() const { return reinterpret_cast<uv_stream_t*>(handle_.get()); }

  // Marks the handle initialised: Close() only closes initialised handles.
  void set_initialized() { initialized_ = true; }
  bool initialized() const { return initialized_ && handle_ != nullptr; }

  // Closes the handle (once); its memory is freed in the close callback.
  void Close() {
    if (!handle_) return;
    if (!initialized_) {
      handle_.reset();
      return;
    }
    H* raw = handle_.release();
    if (uv_is_closing(reinterpret_cast<uv_handle_t*>(raw))) return;
    uv_close(reinterpret_cast<uv_handle_t*>(raw),
             [](uv_handle_t* h) { std::unique_ptr<H> owned(reinterpret_cast<H*>(h)); });
  }

 private:
  std::unique_ptr<H> handle_;
  bool initialized_ = false;
};

// Initialises `timer` on `loop` with `data` as its handle data. On failure
// the handle stays uninitialised (Close() frees it) and the Status says why.
[[nodiscard]] inline Status InitTimer(uv_loop_t* loop, UvHandle<uv_timer_t>& timer, void* data) {
  int rc = uv_timer_init(loop, timer.get());
  if (rc != 0) return Status::Internal(std::string("uv_timer_init: ") + uv_strerror(rc));
  timer.set_initialized();
  timer.get()->data = data;
  return Status::Ok();
}

}  // namespace digestd
