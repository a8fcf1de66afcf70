#include "fake_settings.h"

#include <limits>
#include <utility>

namespace digestd::testing {
namespace {

using nlohmann::json;

constexpr int64_t kMaxDelayMs = 24LL * 3600 * 1000;
constexpr int kMaxTokens = 1 << 20;
constexpr int kMaxDims = 1 << 16;

// Reads an integer field into *out if `key` is present. Returns "" or an error.
template <typename T>
std::string ReadInt(const json& patch, const char* key, int64_t lo, int64_t hi, T* out) {
  auto it = patch.find(key);
  if (it == patch.end()) return "";
  if (!it->is_number_integer()) return std::string(key) + " must be an integer";
  int64_t v = it->get<int64_t>();
  if (v < lo || v > hi) {
    return std::string(key) + " must be between " + std::to_string(lo) + " and " +
           std::to_string(hi);
  }
  *out = static_cast<T>(v);
  return "";
}

// Like ReadInt, but null or a negative value disables the fault (-1).
std::string ReadOptionalCount(const json& patch, const char* key, int* out) {
  auto it = patch.find(key);
  if (it == patch.end()) return "";
  if (it->is_null()) {
    *out = -1;
    return "";
  }
  if (!it->is_number_integer()) return std::string(key) + " must be an integer or null";
  int64_t v = it->get<int64_t>();
  *out = v < 0 ? -1 : static_cast<int>(std::min<int64_t>(v, kMaxTokens));
  return "";
}

std::string ReadFailures(const json& value, std::deque<FailSpec>* out) {
  if (!value.is_array()) return "fail_next must be an array";
  std::deque<FailSpec> list;
  for (const json& item : value) {
    if (!item.is_object()) return "fail_next entries must be objects";
    FailSpec f;
    for (const auto& [k, v] : item.items()) {
      if (k == "status") {
        if (!v.is_number_integer() || v.get<int64_t>() < 100 || v.get<int64_t>() > 599) {
          return "fail_next.status must be an integer in 100..599";
        }
        f.status = v.get<int>();
      } else if (k == "body") {
        f.body = v.is_string() ? v.get<std::string>() : v.dump();
      } else if (k == "content_type" || k == "path") {
        if (!v.is_string()) return "fail_next." + k + " must be a string";
        (k == "path" ? f.path : f.content_type) = v.get<std::string>();
      } else {
        return "unknown fail_next field \"" + k + "\"";
      }
    }
    list.push_back(std::move(f));
  }
  *out = std::move(list);
  return "";
}

std::string ReadSlotsByModel(const json& value, std::map<std::string, int>* out) {
  std::map<std::string, int> slots;
  if (!value.is_null() && !value.is_object()) {
    return "parallel_by_model must be an object of model name to slots, or null";
  }
  if (value.is_object()) {
    for (const auto& [model, v] : value.items()) {
      if (model.empty()) return "parallel_by_model: model names must not be empty";
      if (!v.is_number_integer() || v.get<int64_t>() < 1 || v.get<int64_t>() > 4096) {
        return "parallel_by_model." + model + " must be an integer between 1 and 4096";
      }
      slots[model] = v.get<int>();
    }
  }
  *out = std::move(slots);
  return "";
}

uint64_t NextRandom(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

bool IsInferencePath(std::string_view path) {
  return path == "/api/generate" || path == "/api/chat" || path == "/api/embed" ||
         path == "/api/embeddings";
}

}  // namespace

std::string MergeSettings(const json& patch, Settings* s) {
  if (!patch.is_object()) return "settings must be a JSON object";
  Settings n = *s;
  std::string err;
  for (const auto& [key, value] : patch.items()) {
    if (key == "token_ms" || key == "latency_ms" || key == "load_ms" || key == "stall_ms" ||
        key == "first_byte_stall_ms") {
      int64_t* field = key == "token_ms"     ? &n.token_ms
                       : key == "latency_ms" ? &n.latency_ms
                       : key == "load_ms"    ? &n.load_ms
                       : key == "stall_ms"   ? &n.stall_ms
                                             : &n.first_byte_stall_ms;
      err = ReadInt(patch, key.c_str(), 0, kMaxDelayMs, field);
    } else if (key == "keep_alive_ms") {
      err = ReadInt(patch, "keep_alive_ms", -1, kMaxDelayMs, &n.keep_alive_ms);
    } else if (key == "tokens") {
      err = ReadInt(patch, "tokens", 0, kMaxTokens, &n.tokens);
    } else if (key == "parallel") {
      err = ReadInt(patch, "parallel", 1, 4096, &n.parallel);
    } else if (key == "embed_parallel") {
      err = ReadInt(patch, "embed_parallel", 1, 4096, &n.embed_parallel);
    } else if (key == "parallel_by_model") {
      err = ReadSlotsByModel(value, &n.parallel_by_model);
    } else if (key == "max_queue") {
      err = ReadInt(patch, "max_queue", 0, 1 << 20, &n.max_queue);
    } else if (key == "embed_dims") {
      err = ReadInt(patch, "embed_dims", 1, kMaxDims, &n.embed_dims);
    } else if (key == "seed") {
      if (!value.is_number_integer())
        err = "seed must be an integer";
      else
        n.seed = value.get<uint64_t>();
    } else if (key == "error_rate") {
      if (!value.is_number() || value.get<double>() < 0 || value.get<double>() > 1) {
        err = "error_rate must be a number in [0, 1]";
      } else {
        n.error_rate = value.get<double>();
      }
    } else if (key == "fail_next") {
      err = ReadFailures(value, &n.fail_next);
    } else if (key == "midstream_error_after") {
      err = ReadOptionalCount(patch, "midstream_error_after", &n.midstream_error_after);
    } else if (key == "cut_after") {
      err = ReadOptionalCount(patch, "cut_after", &n.cut_after);
    } else if (key == "split_utf8") {
      if (!value.is_boolean())
        err = "split_utf8 must be a boolean";
      else
        n.split_utf8 = value.get<bool>();
    } else if (key == "models") {
      std::vector<std::string> models;
      if (!value.is_array()) err = "models must be an array of strings";
      for (const json& m : value.is_array() ? value : json::array()) {
        if (!m.is_string() || m.get<std::string>().empty()) {
          err = "models must be an array of non-empty strings";
          break;
        }
        models.push_back(m.get<std::string>());
      }
      if (err.empty()) n.models = std::move(models);
    } else {
      err = "unknown setting \"" + key + "\"";
    }
    if (!err.empty()) return err;
  }
  *s = std::move(n);
  return "";
}

json SettingsToJson(const Settings& s) {
  json fails = json::array();
  for (const FailSpec& f : s.fail_next) {
    fails.push_back({{"status", f.status},
                     {"body", f.body},
                     {"content_type", f.content_type},
                     {"path", f.path}});
  }
  auto optional_count = [](int v) { return v < 0 ? json(nullptr) : json(v); };
  return {{"models", s.models},
          {"parallel", s.parallel},
          {"embed_parallel", s.embed_parallel},
          {"parallel_by_model", s.parallel_by_model},
          {"max_queue", s.max_queue},
          {"tokens", s.tokens},
          {"embed_dims", s.embed_dims},
          {"token_ms", s.token_ms},
          {"latency_ms", s.latency_ms},
          {"load_ms", s.load_ms},
          {"keep_alive_ms", s.keep_alive_ms},
          {"error_rate", s.error_rate},
          {"seed", s.seed},
          {"fail_next", fails},
          {"midstream_error_after", optional_count(s.midstream_error_after)},
          {"cut_after", optional_count(s.cut_after)},
          {"stall_ms", s.stall_ms},
          {"first_byte_stall_ms", s.first_byte_stall_ms},
          {"split_utf8", s.split_utf8}};
}

SettingsStore::SettingsStore(Settings initial)
    : initial_(initial), current_(std::move(initial)), rng_state_(current_.seed) {}

Settings SettingsStore::Get() const {
  std::lock_guard l(mu_);
  return current_;
}

void SettingsStore::Set(Settings s) {
  std::lock_guard l(mu_);
  current_ = std::move(s);
  rng_state_ = current_.seed;
}

std::string SettingsStore::Merge(const json& patch) {
  std::lock_guard l(mu_);
  std::string err = MergeSettings(patch, &current_);
  if (err.empty() && patch.contains("seed")) rng_state_ = current_.seed;
  return err;
}

void SettingsStore::Reset() {
  Set(initial_);
}

std::optional<FailSpec> SettingsStore::TakeFailure(std::string_view path) {
  std::lock_guard l(mu_);
  for (auto it = current_.fail_next.begin(); it != current_.fail_next.end(); ++it) {
    if (it->path.empty() ? IsInferencePath(path) : it->path == path) {
      FailSpec f = std::move(*it);
      current_.fail_next.erase(it);
      return f;
    }
  }
  return std::nullopt;
}

bool SettingsStore::DrawError() {
  std::lock_guard l(mu_);
  if (current_.error_rate <= 0) return false;
  const double u = static_cast<double>(NextRandom(&rng_state_) >> 11) * 0x1.0p-53;
  return u < current_.error_rate;
}

}  // namespace digestd::testing
