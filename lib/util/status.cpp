#include "util/status.h"

namespace digestd {

std::string_view Status::CodeName() const {
  switch (code_) {
    case Code::kOk:
      return "ok";
    case Code::kBadRequest:
      return "bad_request";
    case Code::kUnknownOp:
      return "unknown_op";
    case Code::kTooLarge:
      return "too_large";
    case Code::kNotFound:
      return "not_found";
    case Code::kUnavailable:
      return "unavailable";
    case Code::kForbidden:
      return "forbidden";
    case Code::kQueueFull:
      return "queue_full";
    case Code::kInvalidConfig:
      return "invalid_config";
    case Code::kConflict:
      return "conflict";
    case Code::kBadState:
      return "bad_state";
    case Code::kIoError:
      return "io_error";
    case Code::kInternal:
      return "internal";
  }
  return "internal";
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  std::string s(CodeName());
  s += ": ";
  s += message_;
  return s;
}

}  // namespace digestd
