// Config: every setting digestd reads from its TOML file, with defaults.
//
// One table (ConfigKeys()) drives parsing, defaults, ranges and which keys a
// reload may change, as Redis's static_configs[] does; conf/digestd.conf
// documents every key in that table, and a test keeps the two in step.
// Unknown sections and keys are errors: a typo must never fall back to a
// default silently.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "util/status.h"

namespace digestd {

struct Config {
  struct Workers {
    int min = 3;                   // lowest worker limit `workers` may set
    int max = 16;                  // highest worker limit; sizes the thread pool
    int interactive_reserved = 1;  // slots background work may never take
    bool preempt = true;           // abort background LLM work for interactive jobs
    int max_preemptions = 3;       // a job preempted this often is not preempted again
  } workers;
  struct Queues {
    int interactive = 200;  // ring capacity of the interactive lane
    int background = 200;   // ring capacity of the background lane
    int write = 500;        // capacity of the write ring (lib/store/batch_writer.h)
  } queues;
  struct Control {
    std::string socket = "/run/digestd/control.sock";
    unsigned mode = 0660;
    int64_t max_line_bytes = 1048576;
    int max_clients = 1024;
    int max_clients_per_uid = 256;  // connections one peer uid may hold (not root's)
    int reserved_clients = 4;       // of max_clients, kept for root and digestd's user
    int idle_timeout_s = 300;
    std::vector<int64_t> allow_uids;
    std::vector<int64_t> allow_gids;
  } control;
  struct Daemon {
    std::string node_id;  // empty: the host name
    int shutdown_grace_s = 30;
    int status_interval_ms = 1000;
  } daemon;
  struct Jobs {
    std::string store = "postgres";  // "postgres": durable; "memory": lost at exit
    int noop_max_sleep_ms = 60000;
    int retain_finished = 10000;
    int max_batch = 1000;
  } jobs;
  struct Log {
    std::string level = "info";
  } log;
  // Results as a cache (docs/protocol.md, "Precompute").
  struct Precompute {
    // Seconds a done job's result stays fresh when its submit gives no
    // ttl_s: a submit of the key after that runs it again. 0: never expires.
    int default_ttl_s = 0;
  } precompute;
  // The Prometheus endpoint (lib/metrics/metrics_server.h).
  struct Metrics {
    std::string listen;  // "HOST:PORT" to serve /metrics on; empty: off
  } metrics;
  // The LLM backend (lib/backend/). Jobs read these from their snapshot.
  struct Backend {
    std::string kind = "ollama";  // "ollama" | "extractive" (built in, no LLM)
    std::string url = "http://127.0.0.1:11434";
    std::string model = "llama3.2";                // summarize and generate
    std::string embed_model = "nomic-embed-text";  // embed
    int num_ctx = 8192;                // options.num_ctx on every request; 0: never sent
    std::string keep_alive = "30m";    // Go duration sent as keep_alive; "": not sent
    int connect_timeout_ms = 2000;     // TCP connect
    int first_byte_timeout_s = 300;    // request sent -> first byte (covers a cold load)
    int idle_timeout_s = 60;           // longest silence between bytes once streaming
    int request_timeout_s = 900;       // whole request, first byte to last
    int max_attempts = 3;              // attempts per job, busy answers not counted
    int backoff_base_ms = 500;         // first retry waits up to this long
    int backoff_max_ms = 30000;        // no retry waits longer
    int breaker_failures = 5;          // consecutive retryable failures that open it
    int breaker_open_s = 30;           // how long it stays open before one probe
    int64_t max_input_bytes = 262144;  // largest text (each field) a job may carry
    int max_embed_texts = 256;         // most texts in one embed job
    // Requests in flight to one generation model at most: 0 ("auto") learns
    // each model's capacity (dispatch/model_capacity.h); N pins it.
    int parallel = 0;
  } backend;
  // The summarize job kind.
  struct Summarize {
    int max_words = 120;                  // when the job gives no max_words
    std::string fallback = "extractive";  // "extractive" | "placeholder" | "none"
    std::string placeholder_text = "No summary is available for this chapter yet.";
    std::string system_prompt =
        "You summarise chapters of a story for a reader who wants to remember what "
        "happened. Write plain prose in the language of the chapter, past tense, third "
        "person. Name the characters involved and say what they do and what changes. Use "
        "the story so far only to understand who is who; summarise only the new chapter. "
        "Answer with the summary alone: no heading, no preamble, no list.";
    int num_predict = 512;  // options.num_predict: tokens a summary may take at most
  } summarize;

  // The batching writer (lib/store/batch_writer.h).
  struct Writer {
    int batch_rows = 50;       // most rows in one transaction
    int batch_ms = 500;        // longest a result row waits for its batch to fill
    int max_batch_rows = 500;  // most rows a batch takes when more are waiting
  } writer;
  // PostgreSQL (lib/store/).
  struct Postgres {
    std::string conninfo = "postgresql:///digestd?host=/run/postgresql";
    int lease_s = 60;                // a claimed job's lease; renewed every lease_s / 3
    int retention_s = 604800;        // finished jobs older than this are deleted; 0: never
    int retention_batch = 1000;      // most rows one retention delete removes
    int retention_interval_s = 60;   // how often the retention task runs
    int recover_interval_s = 15;     // how often expired leases are returned to the queue
    int claim_batch = 200;           // most jobs one claim query takes
    int refill_low_water = 50;       // a lane's ring is refilled when its depth falls to this
    int connect_timeout_s = 10;      // a connection attempt that takes longer fails
    int query_timeout_s = 60;        // no answer for this long drops the connection; 0: never
    int reconnect_max_ms = 30000;    // longest wait between reconnect attempts
    int ready_timeout_s = 30;        // READY=1 waits this long for the first connection
    int backlog_interval_ms = 2000;  // how often the backlog counts in status are refreshed
  } postgres;

  // The file this was loaded from; empty for built-in defaults.
  std::string source;
};

// One key of the table. `reloadable` keys take effect on SIGHUP / `reload`.
struct ConfigKeySpec {
  std::string_view section;
  std::string_view name;
  bool reloadable;
};

// Every key digestd knows, in file order.
const std::vector<ConfigKeySpec>& ConfigKeys();

// Parses TOML text. `origin` names the file in messages ("digestd.conf").
// Errors read "digestd.conf:14: [workers] min = 20 is larger than max = 16".
// Besides each key's own type and range, the rules that tie keys together
// are checked, so a config that passes (`digestd --check-config`) can start:
//   [workers] min <= max; interactive_reserved < max;
//   [backend] backoff_base_ms <= backoff_max_ms,
//             first_byte_timeout_s <= request_timeout_s;
//   [summarize] num_predict >= max_words;
//   with [jobs] store = "postgres": [queues] write > [workers] max (every
//   running job keeps a write-ring slot for its result).
Result<Config> ParseConfig(std::string_view text, std::string_view origin);

// Reads and parses `path`.
Result<Config> LoadConfigFile(const std::string& path);

// The value of one key as it would be written in the file ("16", "\"info\"").
std::string ConfigValueString(const Config& config, std::string_view section,
                              std::string_view name);

// Differences between two configs, one line per changed key:
// "[workers] max: 16 -> 8". Only reloadable keys when `reloadable` is true,
// only the others when false.
std::vector<std::string> DiffConfig(const Config& before, const Config& after, bool reloadable);

// `running` with every reloadable key taken from `fresh`; keys that need a
// restart keep their running values.
Config MergeReloadable(const Config& running, const Config& fresh);

// What a reload applies: MergeReloadable(running, fresh), refused when the
// result breaks a rule of ParseConfig. `fresh` passed those rules on its own,
// but its keys that need a restart are replaced by the running values, which
// its reloadable keys may not fit: a [workers] max raised to the running
// [queues] write or past it. Errors name `origin` (the file re-read) and say
// what to change; on error nothing should be applied.
Result<Config> MergeForReload(const Config& running, const Config& fresh, std::string_view origin);

// The whole config as a TOML document (`digestd --print-config`).
std::string DumpConfig(const Config& config);

}  // namespace digestd
