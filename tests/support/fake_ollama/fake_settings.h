// Settings of the fake Ollama server and the thread-safe store that holds
// them. Settings change at runtime (tests call FakeOllama::MergeSettings or
// POST /_fake/settings); each request takes a snapshot when it starts, so a
// change affects requests that start afterwards, except the capacities
// (`parallel`, `embed_parallel`, `parallel_by_model`) and `max_queue`, which
// the scheduler applies at once, also to requests already waiting
// (fake_scheduler.h).
#ifndef DIGESTD_TESTS_SUPPORT_FAKE_OLLAMA_FAKE_SETTINGS_H_
#define DIGESTD_TESTS_SUPPORT_FAKE_OLLAMA_FAKE_SETTINGS_H_

#include <cstdint>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace digestd::testing {

// One canned failure, answered instead of the real reply.
struct FailSpec {
  int status = 500;
  std::string body;          // sent verbatim; need not be JSON
  std::string content_type;  // empty: JSON type if `body` parses as JSON, else text/plain
  std::string path;          // empty: the next inference request (generate/chat/embed/embeddings);
                             // else only a request to exactly this path
};

struct Settings {
  // Known models; names without a tag also match "<name>:latest". Models
  // whose name contains "embed" are embedding-only (generate/chat → 400).
  std::vector<std::string> models = {"llama3.2", "nomic-embed-text"};
  int parallel = 1;        // slots of each generation model (OLLAMA_NUM_PARALLEL)
  int embed_parallel = 1;  // slots of each embedding model (always 1 in Ollama)
  std::map<std::string, int> parallel_by_model;  // slots of one model, overriding both
  int max_queue = 512;                           // waiting requests (all models) before 503
  int tokens = 8;          // tokens per generation (options.num_predict lowers it)
  int embed_dims = 8;      // embedding length
  int64_t token_ms = 0;    // delay before each streamed token
  int64_t latency_ms = 0;  // delay before the first byte (prompt evaluation)
  int64_t load_ms = 0;     // model load time (first use, after expiry, num_ctx change)
  int64_t keep_alive_ms = 5 * 60 * 1000;  // when a request has no keep_alive; -1 forever
  double error_rate = 0;                  // probability of a 500 runner crash before the first byte
  uint64_t seed = 1;                      // seed of the error_rate PRNG (reseeded when set)
  std::deque<FailSpec> fail_next;         // FIFO of canned failures for the next requests
  int midstream_error_after = -1;   // N >= 1: N chunks, then an {"error":…} line; 0: 500 at once
  int cut_after = -1;               // N >= 1: N chunks, then the connection drops; 0: at once
  int64_t stall_ms = 0;             // silence after the first chunk
  int64_t first_byte_stall_ms = 0;  // extra silence before the first byte
  bool split_utf8 = false;          // send each line containing non-ASCII text in two writes,
                                    // split inside a multi-byte UTF-8 character
};

// Applies the fields present in `patch` (a JSON object using the field names
// above; fail_next is an array of {"status","body","content_type","path"},
// where a non-string body is sent as its JSON text; null disables
// midstream_error_after / cut_after; parallel_by_model is an object of
// model name → slots that replaces the previous one, null clears it) to `*s`. Returns "" on
// success, else what was wrong, leaving `*s` untouched. Unknown keys are errors.
[[nodiscard]] std::string MergeSettings(const nlohmann::json& patch, Settings* s);

nlohmann::json SettingsToJson(const Settings& s);

// Holds the current settings plus the PRNG behind error_rate. All methods
// are thread-safe.
class SettingsStore {
 public:
  explicit SettingsStore(Settings initial);
  SettingsStore(const SettingsStore&) = delete;
  SettingsStore& operator=(const SettingsStore&) = delete;

  Settings Get() const;
  // Replaces everything and reseeds the PRNG.
  void Set(Settings s);
  // MergeSettings on the current value; reseeds when the patch has "seed".
  [[nodiscard]] std::string Merge(const nlohmann::json& patch);
  // Back to the settings given to the constructor.
  void Reset();

  // Pops the first canned failure that applies to `path`, if any.
  std::optional<FailSpec> TakeFailure(std::string_view path);
  // Returns true with probability error_rate (deterministic sequence).
  bool DrawError();

 private:
  mutable std::mutex mu_;
  const Settings initial_;
  Settings current_;    // guarded by mu_
  uint64_t rng_state_;  // guarded by mu_
};

}  // namespace digestd::testing

#endif  // DIGESTD_TESTS_SUPPORT_FAKE_OLLAMA_FAKE_SETTINGS_H_
