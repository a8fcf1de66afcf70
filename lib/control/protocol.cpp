#include "control/protocol.h"

#include <algorithm>

#include "util/json_parse.h"

namespace digestd {

namespace {

std::string Dump(const nlohmann::json& j) {
  // Replace, never throw: an id or message may carry bytes that are not UTF-8.
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

const std::vector<std::string_view>& KnownOps() {
  static const std::vector<std::string_view> ops = {
      "hello", "ping",   "status",  "submit", "result", "jobs",     "cancel",
      "retry", "delete", "workers", "reload", "drain",  "subscribe"};
  return ops;
}

bool IsMutatingOp(std::string_view op) {
  return op == "submit" || op == "cancel" || op == "retry" || op == "delete" || op == "workers" ||
         op == "reload" || op == "drain";
}

ParsedLine ParseRequestLine(std::string_view line) {
  ParsedLine out;
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  nlohmann::json j;
  try {
    j = ParseJsonBounded(line);
  } catch (const JsonTooDeep& e) {
    out.status = Status::BadRequest(
        "the request nests objects and arrays deeper than " + std::to_string(e.max_depth()) +
        " levels; flatten it (input.format schemas and options rarely need more than 10)");
    return out;
  } catch (const nlohmann::json::exception& e) {
    // parse_error for bad syntax or UTF-8, out_of_range for a number such as
    // 1e400: both are the client's mistake, never the daemon's end.
    std::string why = e.what();
    auto pos = why.find("] ");
    if (pos != std::string::npos) why = why.substr(pos + 2);
    if (why.find("UTF-8") != std::string::npos) {
      out.status = Status::BadRequest("the request is not valid UTF-8 (" + why +
                                      "); send UTF-8 encoded JSON");
    } else if (e.id >= 400 && e.id < 500) {
      out.status = Status::BadRequest("the request holds a number JSON cannot represent (" + why +
                                      "); send numbers within 64-bit range");
    } else {
      out.status = Status::BadRequest("the request is not valid JSON (" + why +
                                      "); send one JSON object per line");
    }
    return out;
  }
  if (!j.is_object()) {
    out.status = Status::BadRequest(std::string("the request is a JSON ") + j.type_name() +
                                    ", not an object; send {\"op\":\"ping\"} style objects");
    return out;
  }
  if (auto it = j.find("id"); it != j.end()) {
    if (it->is_string() || it->is_number() || it->is_null()) {
      out.request.id = *it;
    } else {
      out.status = Status::BadRequest("\"id\" must be a string or a number");
      return out;
    }
  }
  auto op = j.find("op");
  if (op == j.end()) {
    out.status = Status::BadRequest(
        "the request has no \"op\"; known ops: ping, status, "
        "submit, result, cancel, workers, reload, drain");
    return out;
  }
  if (!op->is_string()) {
    out.status = Status::BadRequest("\"op\" must be a string, such as \"status\"");
    return out;
  }
  out.request.op = op->get<std::string>();
  const auto& ops = KnownOps();
  if (std::find(ops.begin(), ops.end(), out.request.op) == ops.end()) {
    std::string known;
    for (auto o : ops) known += (known.empty() ? "" : ", ") + std::string(o);
    std::string shown =
        out.request.op.size() > 64 ? out.request.op.substr(0, 64) + "..." : out.request.op;
    out.status = Status::UnknownOp("unknown op " + Dump(shown) + "; known ops: " + known);
    return out;
  }
  out.request.body = std::move(j);
  return out;
}

std::string OkLine(const nlohmann::json& id, nlohmann::json fields) {
  nlohmann::json out = nlohmann::json::object();
  out["ok"] = true;
  if (!id.is_null()) out["id"] = id;
  if (fields.is_object()) {
    // "ok" and "id" belong to the framing: a field may never replace them.
    for (auto& [k, v] : fields.items()) {
      if (k != "ok" && k != "id") out[k] = std::move(v);
    }
  }
  std::string line = Dump(out);
  line += '\n';
  return line;
}

std::string ErrorLine(const nlohmann::json& id, const Status& status) {
  return ErrorLine(id, status, nullptr);
}

std::string ErrorLine(const nlohmann::json& id, const Status& status, nlohmann::json fields) {
  nlohmann::json out = nlohmann::json::object();
  out["ok"] = false;
  if (!id.is_null()) out["id"] = id;
  out["error"] = {{"code", std::string(status.CodeName())}, {"message", status.message()}};
  if (fields.is_object()) {
    for (auto& [k, v] : fields.items()) {
      if (k != "ok" && k != "id" && k != "error") out[k] = std::move(v);
    }
  }
  std::string line = Dump(out);
  line += '\n';
  return line;
}

Status GetString(const nlohmann::json& obj, const char* field, std::string* out, size_t max_bytes) {
  auto it = obj.find(field);
  if (it == obj.end() || it->is_null()) return Status::Ok();
  if (!it->is_string()) {
    return Status::BadRequest(std::string("\"") + field + "\" must be a string, not " +
                              it->type_name());
  }
  const auto& s = it->get_ref<const std::string&>();
  if (s.size() > max_bytes) {
    return Status::BadRequest(std::string("\"") + field + "\" is " + std::to_string(s.size()) +
                              " bytes; at most " + std::to_string(max_bytes) + " are allowed");
  }
  *out = s;
  return Status::Ok();
}

Status GetInt(const nlohmann::json& obj, const char* field, int64_t* out, int64_t min,
              int64_t max) {
  auto it = obj.find(field);
  if (it == obj.end() || it->is_null()) return Status::Ok();
  if (!it->is_number_integer()) {
    return Status::BadRequest(std::string("\"") + field + "\" must be an integer, not " +
                              it->type_name());
  }
  int64_t v =
      it->is_number_unsigned() && it->get<uint64_t>() > INT64_MAX ? INT64_MAX : it->get<int64_t>();
  if (v < min || v > max) {
    return Status::BadRequest(std::string("\"") + field + "\" = " + std::to_string(v) +
                              " is out of range " + std::to_string(min) + ".." +
                              std::to_string(max));
  }
  *out = v;
  return Status::Ok();
}

}  // namespace digestd
