#include "config/config.h"

#include <toml++/toml.h>
#include <algorithm>
#include <fstream>
#include <functional>
#include <sstream>

#include "metrics/listen_address.h"
#include "obs/log.h"

namespace digestd {

namespace {

enum class Kind { kInt, kString, kMode, kIdList, kBool, kAutoInt };

struct KeyDef {
  ConfigKeySpec spec;
  Kind kind;
  int64_t min = 0;
  int64_t max = 0;
  // kInt
  std::function<void(Config&, int64_t)> set_int;
  std::function<int64_t(const Config&)> get_int;
  // kString / kMode; `check` returns an empty string when `value` is allowed,
  // else what is allowed.
  std::function<void(Config&, std::string)> set_str;
  std::function<std::string(const Config&)> get_str;
  std::function<std::string(const std::string&)> check;
  // kIdList
  std::vector<int64_t> Config::Control::*ids = nullptr;
};

#define INT_KEY(sec, key, field, lo, hi, reload)                                                  \
  KeyDef {                                                                                        \
    {sec, #key, reload}, Kind::kInt, lo, hi,                                                      \
        [](Config& c, int64_t v) { c.field = static_cast<decltype(c.field)>(v); },                \
        [](const Config& c) { return static_cast<int64_t>(c.field); }, nullptr, nullptr, nullptr, \
        nullptr                                                                                   \
  }

// An integer in [lo, hi], or the string "auto" (stored as 0).
#define AUTO_INT_KEY(sec, key, field, lo, hi, reload)                                             \
  KeyDef {                                                                                        \
    {sec, #key, reload}, Kind::kAutoInt, lo, hi,                                                  \
        [](Config& c, int64_t v) { c.field = static_cast<decltype(c.field)>(v); },                \
        [](const Config& c) { return static_cast<int64_t>(c.field); }, nullptr, nullptr, nullptr, \
        nullptr                                                                                   \
  }

#define BOOL_KEY(sec, key, field, reload)                                                        \
  KeyDef {                                                                                       \
    {sec, #key, reload}, Kind::kBool, 0, 1, [](Config& c, int64_t v) { c.field = v != 0; },      \
        [](const Config& c) { return static_cast<int64_t>(c.field ? 1 : 0); }, nullptr, nullptr, \
        nullptr, nullptr                                                                         \
  }

#define STR_KEY(sec, key, field, reload, checker)                 \
  KeyDef {                                                        \
    {sec, #key, reload}, Kind::kString, 0, 0, nullptr, nullptr,   \
        [](Config& c, std::string v) { c.field = std::move(v); }, \
        [](const Config& c) { return c.field; }, checker, nullptr \
  }

std::string CheckLevel(const std::string& v) {
  return ParseLogLevel(v) ? "" : "one of \"debug\", \"info\", \"notice\", \"warning\", \"error\"";
}

std::string CheckSocketPath(const std::string& v) {
  if (v.empty()) return "a non-empty path";
  if (v.size() >= 108) return "a path shorter than 108 bytes (the Unix socket limit)";
  if (v[0] != '/') return "an absolute path";
  return "";
}

std::string CheckNodeId(const std::string& v) {
  if (v.size() > 64) return "at most 64 characters, or \"\" for the host name";
  for (char ch : v) {
    if (!(isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' || ch == '.'))
      return "letters, digits, '-', '_' and '.' only, or \"\" for the host name";
  }
  return "";
}

// Empty turns the endpoint off; anything else must be a numeric HOST:PORT
// (checked here, so --check-config refuses it; binding is tried at start).
std::string CheckMetricsListen(const std::string& v) {
  if (v.empty()) return "";
  std::string why = ListenAddressProblem(v);
  return why.empty() ? "" : std::string(kListenAddressExpected) + " (this value " + why + ")";
}

std::string CheckBackendKind(const std::string& v) {
  return v == "ollama" || v == "extractive" ? "" : "\"ollama\" or \"extractive\"";
}

std::string CheckUrl(const std::string& v) {
  const char* kWant = "an http:// or https:// URL such as \"http://127.0.0.1:11434\"";
  if (v.rfind("http://", 0) != 0 && v.rfind("https://", 0) != 0) return kWant;
  size_t host = v.find("://") + 3;
  if (host >= v.size() || v[host] == '/') return kWant;
  for (char ch : v) {
    if (static_cast<unsigned char>(ch) <= ' ' || ch == 0x7f)
      return kWant + std::string(" without spaces");
  }
  if (v.size() > 1024) return "a URL shorter than 1024 bytes";
  return "";
}

std::string CheckModel(const std::string& v) {
  if (v.empty() || v.size() > 256) return "a model name such as \"llama3.2\" or \"qwen3:8b\"";
  for (char ch : v) {
    if (static_cast<unsigned char>(ch) <= ' ' || ch == '"' || ch == 0x7f)
      return "a model name without spaces, such as \"llama3.2\" or \"qwen3:8b\"";
  }
  return "";
}

// Ollama takes keep_alive as a Go duration with a unit ("30m", "1h30m", "-1m");
// a bare number in a string is refused with 400, so catch it here.
std::string CheckKeepAlive(const std::string& v) {
  const char* kWant =
      "a duration with a unit such as \"30m\", \"2h\" or \"-1m\" (negative: keep the "
      "model loaded forever), \"0\" to unload after each request, or \"\" to leave Ollama's "
      "own setting";
  if (v.empty() || v == "0" || v == "-0") return "";
  size_t i = v[0] == '-' || v[0] == '+' ? 1 : 0;
  if (i == v.size()) return kWant;
  while (i < v.size()) {
    size_t digits = 0;
    while (i < v.size() && (isdigit(static_cast<unsigned char>(v[i])) || v[i] == '.')) {
      ++i;
      ++digits;
    }
    if (digits == 0) return kWant;
    size_t unit = i;
    while (i < v.size() && !isdigit(static_cast<unsigned char>(v[i])) && v[i] != '.') ++i;
    std::string u = v.substr(unit, i - unit);
    if (u != "ns" && u != "us" && u != "\u00b5s" && u != "ms" && u != "s" && u != "m" && u != "h")
      return kWant;
  }
  return "";
}

std::string CheckStore(const std::string& v) {
  return v == "postgres" || v == "memory" ? "" : "\"postgres\" or \"memory\"";
}

std::string CheckFallback(const std::string& v) {
  return v == "extractive" || v == "placeholder" || v == "none"
             ? ""
             : "\"extractive\", \"placeholder\" or \"none\"";
}

std::string CheckPlaceholder(const std::string& v) {
  return v.size() <= 4096 ? "" : "a text of at most 4096 bytes";
}

std::string CheckSystemPrompt(const std::string& v) {
  if (v.empty()) return "a non-empty instruction for the model";
  return v.size() <= 65536 ? "" : "a text of at most 65536 bytes";
}

// Only emptiness is checked here: a rejected value is echoed in the error, and
// a conninfo may hold a password. libpq's own parse errors come at connect.
std::string CheckConninfo(const std::string& v) {
  if (v.empty() || v.find('\n') != std::string::npos) {
    return "a libpq connection URI such as \"postgresql:///digestd?host=/run/postgresql\" or "
           "key=value pairs such as \"host=/run/postgresql dbname=digestd\"";
  }
  return "";
}

const std::vector<KeyDef>& Defs() {
  static const std::vector<KeyDef> defs = {
      INT_KEY("workers", min, workers.min, 1, 1024, true),
      INT_KEY("workers", max, workers.max, 1, 1024, true),
      INT_KEY("workers", interactive_reserved, workers.interactive_reserved, 0, 1023, true),
      BOOL_KEY("workers", preempt, workers.preempt, true),
      INT_KEY("workers", max_preemptions, workers.max_preemptions, 0, 1000, true),
      INT_KEY("queues", interactive, queues.interactive, 1, 1000000, false),
      INT_KEY("queues", background, queues.background, 1, 1000000, false),
      INT_KEY("queues", write, queues.write, 1, 1000000, false),
      STR_KEY("control", socket, control.socket, false, CheckSocketPath),
      KeyDef{{"control", "mode", false},
             Kind::kMode,
             0,
             0777,
             nullptr,
             nullptr,
             [](Config& c, std::string v) {
               c.control.mode = static_cast<unsigned>(std::stoul(v, nullptr, 8));
             },
             [](const Config& c) {
               char buf[8];
               std::snprintf(buf, sizeof buf, "%04o", c.control.mode);
               return std::string(buf);
             },
             [](const std::string& v) -> std::string {
               if (v.empty() || v.size() > 4 || v.find_first_not_of("01234567") != v.npos)
                 return "an octal file mode in quotes, such as \"0660\"";
               return "";
             },
             nullptr},
      INT_KEY("control", max_line_bytes, control.max_line_bytes, 1024, 64 * 1024 * 1024, true),
      INT_KEY("control", max_clients, control.max_clients, 1, 100000, true),
      INT_KEY("control", max_clients_per_uid, control.max_clients_per_uid, 1, 100000, true),
      INT_KEY("control", reserved_clients, control.reserved_clients, 0, 1000, true),
      INT_KEY("control", idle_timeout_s, control.idle_timeout_s, 0, 86400, true),
      KeyDef{{"control", "allow_uids", true},
             Kind::kIdList,
             0,
             4294967294LL,
             nullptr,
             nullptr,
             nullptr,
             nullptr,
             nullptr,
             &Config::Control::allow_uids},
      KeyDef{{"control", "allow_gids", true},
             Kind::kIdList,
             0,
             4294967294LL,
             nullptr,
             nullptr,
             nullptr,
             nullptr,
             nullptr,
             &Config::Control::allow_gids},
      STR_KEY("daemon", node_id, daemon.node_id, false, CheckNodeId),
      INT_KEY("daemon", shutdown_grace_s, daemon.shutdown_grace_s, 0, 3600, true),
      INT_KEY("daemon", status_interval_ms, daemon.status_interval_ms, 100, 60000, true),
      STR_KEY("jobs", store, jobs.store, false, CheckStore),
      INT_KEY("jobs", noop_max_sleep_ms, jobs.noop_max_sleep_ms, 0, 3600000, true),
      INT_KEY("jobs", retain_finished, jobs.retain_finished, 0, 10000000, true),
      INT_KEY("jobs", max_batch, jobs.max_batch, 1, 100000, true),
      STR_KEY("log", level, log.level, true, CheckLevel),
      INT_KEY("precompute", default_ttl_s, precompute.default_ttl_s, 0, 315360000, true),
      STR_KEY("metrics", listen, metrics.listen, false, CheckMetricsListen),
      STR_KEY("backend", kind, backend.kind, false, CheckBackendKind),
      STR_KEY("backend", url, backend.url, false, CheckUrl),
      STR_KEY("backend", model, backend.model, true, CheckModel),
      STR_KEY("backend", embed_model, backend.embed_model, true, CheckModel),
      INT_KEY("backend", num_ctx, backend.num_ctx, 0, 1048576, false),
      STR_KEY("backend", keep_alive, backend.keep_alive, true, CheckKeepAlive),
      INT_KEY("backend", connect_timeout_ms, backend.connect_timeout_ms, 100, 600000, true),
      INT_KEY("backend", first_byte_timeout_s, backend.first_byte_timeout_s, 1, 86400, true),
      INT_KEY("backend", idle_timeout_s, backend.idle_timeout_s, 1, 86400, true),
      INT_KEY("backend", request_timeout_s, backend.request_timeout_s, 1, 604800, true),
      INT_KEY("backend", max_attempts, backend.max_attempts, 1, 100, true),
      INT_KEY("backend", backoff_base_ms, backend.backoff_base_ms, 1, 3600000, true),
      INT_KEY("backend", backoff_max_ms, backend.backoff_max_ms, 1, 86400000, true),
      INT_KEY("backend", breaker_failures, backend.breaker_failures, 1, 10000, true),
      INT_KEY("backend", breaker_open_s, backend.breaker_open_s, 1, 86400, true),
      INT_KEY("backend", max_input_bytes, backend.max_input_bytes, 1024, 64 * 1024 * 1024, true),
      INT_KEY("backend", max_embed_texts, backend.max_embed_texts, 1, 100000, true),
      AUTO_INT_KEY("backend", parallel, backend.parallel, 1, 1024, true),
      INT_KEY("summarize", max_words, summarize.max_words, 1, 1000, true),
      STR_KEY("summarize", fallback, summarize.fallback, true, CheckFallback),
      STR_KEY("summarize", placeholder_text, summarize.placeholder_text, true, CheckPlaceholder),
      STR_KEY("summarize", system_prompt, summarize.system_prompt, true, CheckSystemPrompt),
      INT_KEY("summarize", num_predict, summarize.num_predict, 16, 131072, true),
      INT_KEY("writer", batch_rows, writer.batch_rows, 1, 10000, true),
      INT_KEY("writer", max_batch_rows, writer.max_batch_rows, 1, 10000, true),
      INT_KEY("writer", batch_ms, writer.batch_ms, 0, 60000, true),
      STR_KEY("postgres", conninfo, postgres.conninfo, false, CheckConninfo),
      INT_KEY("postgres", lease_s, postgres.lease_s, 5, 86400, false),
      INT_KEY("postgres", retention_s, postgres.retention_s, 0, 315360000, true),
      INT_KEY("postgres", retention_batch, postgres.retention_batch, 1, 100000, true),
      INT_KEY("postgres", retention_interval_s, postgres.retention_interval_s, 1, 86400, true),
      INT_KEY("postgres", recover_interval_s, postgres.recover_interval_s, 1, 3600, true),
      INT_KEY("postgres", claim_batch, postgres.claim_batch, 1, 10000, true),
      INT_KEY("postgres", refill_low_water, postgres.refill_low_water, 0, 1000000, true),
      INT_KEY("postgres", connect_timeout_s, postgres.connect_timeout_s, 1, 600, false),
      INT_KEY("postgres", query_timeout_s, postgres.query_timeout_s, 0, 86400, false),
      INT_KEY("postgres", reconnect_max_ms, postgres.reconnect_max_ms, 100, 600000, false),
      INT_KEY("postgres", ready_timeout_s, postgres.ready_timeout_s, 0, 3600, false),
      INT_KEY("postgres", backlog_interval_ms, postgres.backlog_interval_ms, 100, 600000, true),
  };
  return defs;
}

const KeyDef* FindDef(std::string_view section, std::string_view name) {
  for (const auto& d : Defs()) {
    if (d.spec.section == section && d.spec.name == name) return &d;
  }
  return nullptr;
}

bool KnownSection(std::string_view section) {
  for (const auto& d : Defs()) {
    if (d.spec.section == section) return true;
  }
  return false;
}

std::string Where(std::string_view origin, const toml::node& node) {
  std::ostringstream out;
  out << origin << ":" << node.source().begin.line;
  return out.str();
}

std::string KnownKeysOf(std::string_view section) {
  std::string out;
  for (const auto& d : Defs()) {
    if (d.spec.section != section) continue;
    if (!out.empty()) out += ", ";
    out += d.spec.name;
  }
  return out;
}

std::string KnownSections() {
  std::string out;
  std::string_view last;
  for (const auto& d : Defs()) {
    if (d.spec.section == last) continue;
    last = d.spec.section;
    if (!out.empty()) out += ", ";
    out += "[" + std::string(last) + "]";
  }
  return out;
}

Status ApplyKey(Config& config, const KeyDef& def, const toml::node& node,
                std::string_view origin) {
  std::string where = Where(origin, node) + ": [" + std::string(def.spec.section) + "] " +
                      std::string(def.spec.name);
  switch (def.kind) {
    case Kind::kInt: {
      if (!node.is_integer()) {
        return Status::InvalidConfig(where + " must be an integer between " +
                                     std::to_string(def.min) + " and " + std::to_string(def.max));
      }
      const int64_t v = node.value_or<int64_t>(0);
      if (v < def.min || v > def.max) {
        return Status::InvalidConfig(where + " = " + std::to_string(v) +
                                     " is out of range: allowed " + std::to_string(def.min) +
                                     " to " + std::to_string(def.max));
      }
      def.set_int(config, v);
      return Status::Ok();
    }
    case Kind::kBool: {
      if (!node.is_boolean()) {
        return Status::InvalidConfig(where + " must be true or false (without quotes)");
      }
      def.set_int(config, node.value_or(false) ? 1 : 0);
      return Status::Ok();
    }
    case Kind::kAutoInt: {
      if (node.is_string() && *node.value<std::string>() == "auto") {
        def.set_int(config, 0);
        return Status::Ok();
      }
      const int64_t v = node.is_integer() ? node.value_or<int64_t>(0) : int64_t{0};
      if (!node.is_integer() || v < def.min || v > def.max) {
        return Status::InvalidConfig(where + " must be \"auto\" or an integer between " +
                                     std::to_string(def.min) + " and " + std::to_string(def.max));
      }
      def.set_int(config, v);
      return Status::Ok();
    }
    case Kind::kString:
    case Kind::kMode: {
      if (!node.is_string()) {
        std::string allowed = def.check("");
        return Status::InvalidConfig(where + " must be a string in quotes" +
                                     (allowed.empty() ? "" : " (" + allowed + ")"));
      }
      std::string v = *node.value<std::string>();
      std::string allowed = def.check(v);
      if (!allowed.empty()) {
        return Status::InvalidConfig(where + " = \"" + v + "\" is not allowed: use " + allowed);
      }
      def.set_str(config, std::move(v));
      return Status::Ok();
    }
    case Kind::kIdList: {
      const toml::array* arr = node.as_array();
      if (arr == nullptr) {
        return Status::InvalidConfig(where + " must be an array of numeric ids, such as [0, 1000]");
      }
      std::vector<int64_t> ids;
      for (const auto& el : *arr) {
        auto v = el.is_integer() ? el.value<int64_t>() : std::nullopt;
        if (!el.is_integer() || !v || *v < def.min || *v > def.max) {
          return Status::InvalidConfig(where +
                                       " must hold numeric ids between 0 and 4294967294 only");
        }
        ids.push_back(*v);
      }
      config.control.*(def.ids) = std::move(ids);
      return Status::Ok();
    }
  }
  return Status::Internal("unknown key kind");
}

// For a syntax error on line `line` (1-based) of `text`: " in [section] key"
// when that line assigns a key, else " near \"the line\"", so the message
// names the key even when toml++ cannot.
std::string SyntaxErrorContext(std::string_view text, size_t line) {
  std::string_view section;
  std::string_view here;
  for (size_t n = 1; n <= line && !text.empty(); ++n) {
    size_t nl = text.find('\n');
    std::string_view current = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    while (!current.empty() && (current.back() == '\r' || current.back() == ' ')) {
      current.remove_suffix(1);
    }
    size_t start = current.find_first_not_of(" \t");
    current.remove_prefix(start == std::string_view::npos ? current.size() : start);
    if (n == line) {
      here = current;
    } else if (current.size() > 2 && current[0] == '[' && current[1] != '[') {
      size_t close = current.find(']');
      if (close != std::string_view::npos) section = current.substr(1, close - 1);
    }
  }
  size_t key_end =
      here.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-");
  size_t eq = key_end == std::string_view::npos ? key_end : here.find_first_not_of(" \t", key_end);
  if (key_end > 0 && eq != std::string_view::npos && here[eq] == '=') {
    std::string out = " in ";
    if (!section.empty()) out += "[" + std::string(section) + "] ";
    return out + std::string(here.substr(0, key_end));
  }
  if (here.empty()) return "";
  return " near \"" + std::string(here.substr(0, 80)) + "\"";
}

// "file:line" of a key (or of its section when the key is not in the file;
// just "file" when neither is, or when no file is at hand).
using WhereOf = std::function<std::string(std::string_view section, std::string_view key)>;

// Checks that involve more than one key. `reload`: `c` is a running config
// with a re-read file's reloadable keys merged in (MergeForReload), so a key
// that needs a restart holds its running value and the advice says so.
Status CrossCheck(const Config& c, const WhereOf& line_of, bool reload) {
  if (c.workers.min > c.workers.max) {
    return Status::InvalidConfig(line_of("workers", "min") +
                                 ": [workers] min = " + std::to_string(c.workers.min) +
                                 " is larger than max = " + std::to_string(c.workers.max));
  }
  if (c.workers.interactive_reserved >= c.workers.max) {
    return Status::InvalidConfig(
        line_of("workers", "interactive_reserved") +
        ": [workers] interactive_reserved = " + std::to_string(c.workers.interactive_reserved) +
        " must be smaller than max = " + std::to_string(c.workers.max) +
        ", or background work could never run");
  }
  if (c.control.reserved_clients >= c.control.max_clients) {
    return Status::InvalidConfig(
        line_of("control", "reserved_clients") +
        ": [control] reserved_clients = " + std::to_string(c.control.reserved_clients) +
        " must be smaller than max_clients = " + std::to_string(c.control.max_clients) +
        ", or only root and digestd's own user could ever connect");
  }
  if (c.backend.backoff_base_ms > c.backend.backoff_max_ms) {
    return Status::InvalidConfig(
        line_of("backend", "backoff_base_ms") +
        ": [backend] backoff_base_ms = " + std::to_string(c.backend.backoff_base_ms) +
        " is larger than backoff_max_ms = " + std::to_string(c.backend.backoff_max_ms));
  }
  if (c.backend.first_byte_timeout_s > c.backend.request_timeout_s) {
    return Status::InvalidConfig(
        line_of("backend", "first_byte_timeout_s") +
        ": [backend] first_byte_timeout_s = " + std::to_string(c.backend.first_byte_timeout_s) +
        " is larger than request_timeout_s = " + std::to_string(c.backend.request_timeout_s) +
        "; the whole request must be allowed at least as long as its first byte");
  }
  if (c.summarize.num_predict < c.summarize.max_words) {
    return Status::InvalidConfig(
        line_of("summarize", "num_predict") +
        ": [summarize] num_predict = " + std::to_string(c.summarize.num_predict) +
        " is smaller than max_words = " + std::to_string(c.summarize.max_words) +
        "; a word takes one or more tokens, so allow about twice max_words");
  }
  // With PostgreSQL, every running job keeps a write-ring slot for its
  // result (so a finished job can always queue it): the ring must hold more
  // rows than there can be running jobs, or digestd cannot start.
  if (c.jobs.store == "postgres" && c.queues.write <= c.workers.max) {
    const std::string why = ": every running job keeps a write-ring slot for its result";
    if (reload) {
      return Status::InvalidConfig(
          line_of("workers", "max") + ": [workers] max = " + std::to_string(c.workers.max) +
          " must be smaller than the running [queues] write = " + std::to_string(c.queues.write) +
          why + "; lower [workers] max, or raise [queues] write and restart digestd ([queues] " +
          "write needs a restart)");
    }
    return Status::InvalidConfig(
        line_of("queues", "write") + ": [queues] write = " + std::to_string(c.queues.write) +
        " must be larger than [workers] max = " + std::to_string(c.workers.max) + why +
        "; raise [queues] write");
  }
  return Status::Ok();
}

}  // namespace

const std::vector<ConfigKeySpec>& ConfigKeys() {
  static const std::vector<ConfigKeySpec> keys = [] {
    std::vector<ConfigKeySpec> out;
    for (const auto& d : Defs()) out.push_back(d.spec);
    return out;
  }();
  return keys;
}

Result<Config> ParseConfig(std::string_view text, std::string_view origin) {
  toml::table root;
  try {
    root = toml::parse(text, origin);
  } catch (const toml::parse_error& err) {
    std::ostringstream out;
    out << origin << ":" << err.source().begin.line << ": syntax error"
        << SyntaxErrorContext(text, err.source().begin.line) << ": " << err.description();
    std::string msg = out.str();
    std::replace(msg.begin(), msg.end(), '\n', ' ');  // one line, whatever toml++ says
    return Status::InvalidConfig(msg);
  }
  Config config;
  for (const auto& [section_key, section_node] : root) {
    std::string_view section = section_key.str();
    if (!KnownSection(section)) {
      return Status::InvalidConfig(Where(origin, section_node) + ": unknown section [" +
                                   std::string(section) + "]; known sections: " + KnownSections());
    }
    const toml::table* table = section_node.as_table();
    if (table == nullptr) {
      return Status::InvalidConfig(Where(origin, section_node) + ": " + std::string(section) +
                                   " must be a section ([" + std::string(section) +
                                   "]), not a value");
    }
    for (const auto& [key, node] : *table) {
      const KeyDef* def = FindDef(section, key.str());
      if (def == nullptr) {
        return Status::InvalidConfig(Where(origin, node) + ": unknown key [" +
                                     std::string(section) + "] " + std::string(key.str()) +
                                     "; keys of this section: " + KnownKeysOf(section));
      }
      Status st = ApplyKey(config, *def, node, origin);
      if (!st.ok()) return st;
    }
  }
  auto line_of = [&](std::string_view section, std::string_view key) {
    const toml::node* n = root.at_path(std::string(section) + "." + std::string(key)).node();
    // [queues] write left at its default: the rule broke where max was set.
    if (n == nullptr && section == "queues" && key == "write")
      n = root.at_path("workers.max").node();
    if (n == nullptr) n = root.at_path(section).node();
    return n ? Where(origin, *n) : std::string(origin);
  };
  Status st = CrossCheck(config, line_of, /*reload=*/false);
  if (!st.ok()) return st;
  config.source = std::string(origin);
  return config;
}

Result<Config> LoadConfigFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return Status::InvalidConfig(path + ": cannot read the config file (" +
                                 std::string(strerror(errno)) +
                                 "); check the path given to --config and its permissions");
  }
  std::ostringstream buf;
  buf << in.rdbuf();
  std::string text = buf.str();
  if (text.size() > 1024 * 1024) {
    return Status::InvalidConfig(path +
                                 ": the config file is larger than 1 MiB; is it the right file?");
  }
  auto result = ParseConfig(text, path);
  return result;
}

std::string ConfigValueString(const Config& config, std::string_view section,
                              std::string_view name) {
  const KeyDef* def = FindDef(section, name);
  if (def == nullptr) return "";
  switch (def->kind) {
    case Kind::kInt:
      return std::to_string(def->get_int(config));
    case Kind::kBool:
      return def->get_int(config) != 0 ? "true" : "false";
    case Kind::kAutoInt: {
      int64_t v = def->get_int(config);
      return v == 0 ? "\"auto\"" : std::to_string(v);
    }
    case Kind::kString:
    case Kind::kMode: {
      std::ostringstream os;
      os << toml::value<std::string>(def->get_str(config));  // quoted and escaped
      return os.str();
    }
    case Kind::kIdList: {
      std::string out = "[";
      for (int64_t id : config.control.*(def->ids)) {
        if (out.size() > 1) out += ", ";
        out += std::to_string(id);
      }
      return out + "]";
    }
  }
  return "";
}

std::vector<std::string> DiffConfig(const Config& before, const Config& after, bool reloadable) {
  std::vector<std::string> out;
  for (const auto& d : Defs()) {
    if (d.spec.reloadable != reloadable) continue;
    std::string a = ConfigValueString(before, d.spec.section, d.spec.name);
    std::string b = ConfigValueString(after, d.spec.section, d.spec.name);
    if (a != b) {
      out.push_back("[" + std::string(d.spec.section) + "] " + std::string(d.spec.name) + ": " + a +
                    " -> " + b);
    }
  }
  return out;
}

Config MergeReloadable(const Config& running, const Config& fresh) {
  Config out = running;
  for (const auto& d : Defs()) {
    if (!d.spec.reloadable) continue;
    switch (d.kind) {
      case Kind::kInt:
      case Kind::kBool:
      case Kind::kAutoInt:
        d.set_int(out, d.get_int(fresh));
        break;
      case Kind::kString:
      case Kind::kMode:
        d.set_str(out, d.get_str(fresh));
        break;
      case Kind::kIdList:
        out.control.*(d.ids) = fresh.control.*(d.ids);
        break;
    }
  }
  return out;
}

Result<Config> MergeForReload(const Config& running, const Config& fresh, std::string_view origin) {
  Config merged = MergeReloadable(running, fresh);
  // Line numbers would point into the re-read file, whose restart-only keys
  // are not the ones in force: name the file alone.
  auto line_of = [&](std::string_view, std::string_view) { return std::string(origin); };
  Status st = CrossCheck(merged, line_of, /*reload=*/true);
  if (!st.ok()) return st;
  return merged;
}

std::string DumpConfig(const Config& config) {
  std::string out;
  std::string_view section;
  for (const auto& d : Defs()) {
    if (d.spec.section != section) {
      section = d.spec.section;
      out += (out.empty() ? "[" : "\n[") + std::string(section) + "]\n";
    }
    out += std::string(d.spec.name) + " = " +
           ConfigValueString(config, d.spec.section, d.spec.name) + "\n";
  }
  return out;
}

}  // namespace digestd
