// Status and Result<T>: the error type every fallible call in digestd returns.
// A Status carries a stable code (the protocol's error codes are derived from
// it) and a message that says what was wrong and what to do.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace digestd {

class [[nodiscard]] Status {
 public:
  enum class Code {
    kOk,
    kBadRequest,
    kUnknownOp,
    kTooLarge,
    kNotFound,
    kUnavailable,
    kForbidden,
    kQueueFull,
    kInvalidConfig,
    kConflict,  // a submit's key names a job with another kind or input
    kBadState,  // the job is not in a state the op applies to
    kIoError,
    kInternal,
  };

  Status() = default;

  static Status Ok() { return Status(); }
  static Status BadRequest(std::string msg) { return Status(Code::kBadRequest, std::move(msg)); }
  static Status UnknownOp(std::string msg) { return Status(Code::kUnknownOp, std::move(msg)); }
  static Status TooLarge(std::string msg) { return Status(Code::kTooLarge, std::move(msg)); }
  static Status NotFound(std::string msg) { return Status(Code::kNotFound, std::move(msg)); }
  static Status Unavailable(std::string msg) { return Status(Code::kUnavailable, std::move(msg)); }
  static Status Forbidden(std::string msg) { return Status(Code::kForbidden, std::move(msg)); }
  static Status QueueFull(std::string msg) { return Status(Code::kQueueFull, std::move(msg)); }
  static Status InvalidConfig(std::string msg) {
    return Status(Code::kInvalidConfig, std::move(msg));
  }
  static Status Conflict(std::string msg) { return Status(Code::kConflict, std::move(msg)); }
  static Status BadState(std::string msg) { return Status(Code::kBadState, std::move(msg)); }
  static Status IoError(std::string msg) { return Status(Code::kIoError, std::move(msg)); }
  static Status Internal(std::string msg) { return Status(Code::kInternal, std::move(msg)); }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }

  // The stable protocol error code: "bad_request", "queue_full", ...
  std::string_view CodeName() const;
  // "queue_full: the background lane is full (200 jobs); ..." for logs.
  std::string ToString() const;

 private:
  Status(Code code, std::string msg) : code_(code), message_(std::move(msg)) {}

  Code code_ = Code::kOk;
  std::string message_;
};

// A value or the Status explaining why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}          // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {}  // NOLINT: implicit by design

  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() { return *value_; }

 private:
  std::optional<T> value_;
  Status status_;
};

}  // namespace digestd
