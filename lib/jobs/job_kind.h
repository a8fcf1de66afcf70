// JobKind: what one kind of job ("noop", "summarize", ...) does, and the
// registry that finds a kind by name. Adding a kind is one file: define a
// JobKind subclass and register it with DIGESTD_REGISTER_JOB_KIND.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "jobs/job.h"
#include "util/status.h"

namespace digestd {

// The backend model a job's requests go to: the key of its per-model limit
// (dispatch/model_capacity.h). Embedding models are separate runners in
// Ollama, with a capacity of their own.
struct BackendModel {
  std::string name;
  bool embedding = false;
};

// Parts: a job submitted with "after" (docs/protocol.md, "Parts that need
// other parts") starts once the jobs it names are done, with their results
// added to its input under this member: {"after_results": {KEY: result}}.
inline constexpr const char* kAfterResults = "after_results";

// A part reference: an object {"part": KEY, ...} that a kind takes in place
// of a value it reads from that part's result once it is there.
bool IsPartRef(const nlohmann::json& v);
// The keys the part references of `input` name: its members' values and the
// elements of its array members (two levels), in order, without repeats.
std::vector<std::string> PartRefs(const nlohmann::json& input);

class JobKind {
 public:
  virtual ~JobKind() = default;
  virtual std::string_view name() const = 0;
  // Checks a submitted job's input. Loop thread. Must not block.
  // Returns BadRequest naming the offending field.
  virtual Status Validate(const nlohmann::json& input, const Config& config) const = 0;
  // Runs the job. Pool thread: touches only `ctx`; watches ctx.cancelled().
  virtual WorkOutcome Run(const WorkContext& ctx) const = 0;
  // Whether this job's Run() returns at once without blocking (no sleep, no
  // I/O): the dispatcher then runs it on the loop thread, in its worker slot's
  // turn, instead of handing it to a pool thread and back (two thread
  // wake-ups, which cost more than such a job's work). Loop thread.
  virtual bool RunsOnLoop(const nlohmann::json& /*input*/, const Config& /*config*/) const {
    return false;
  }
  // Whether jobs of this kind call the LLM backend under `config`, so the
  // circuit breaker holds them back while the backend is down.
  virtual bool UsesBackend(const Config& /*config*/) const { return false; }
  // The model a job of this kind with `input` sends its requests to under
  // `config`; nullopt when it uses no backend. Loop thread. Must not block,
  // must not throw, for any validated `input`.
  virtual std::optional<BackendModel> ModelOf(const nlohmann::json& /*input*/,
                                              const Config& /*config*/) const {
    return std::nullopt;
  }
  // The result stored instead of a failure when a job of this kind fails for
  // good (a fatal error, or its last attempt spent); null: store the failure.
  // The caller keeps the failure's text beside it, so `result` says why the
  // job holds a stand-in. Loop thread. Must not block, must not throw, for
  // any `input` (it may be unvalidated).
  virtual nlohmann::json FinalFailureResult(const nlohmann::json& /*input*/,
                                            const Config& /*config*/) const {
    return nullptr;
  }
};

// The kinds compiled into this binary. Populated before main() runs by
// registration objects; read-only afterwards, so any thread may read it.
class JobKindRegistry {
 public:
  static JobKindRegistry& Global();
  void Add(std::unique_ptr<JobKind> kind);
  // nullptr for an unknown kind. The pointer lives as long as the process.
  const JobKind* Find(std::string_view name) const;
  // "noop, summarize" — for error messages.
  std::string Names() const;
  // The same names, in registration order.
  std::vector<std::string> List() const;

 private:
  std::vector<std::unique_ptr<JobKind>> kinds_;
};

template <typename T>
struct JobKindRegistration {
  JobKindRegistration() { JobKindRegistry::Global().Add(std::make_unique<T>()); }
};

}  // namespace digestd

#define DIGESTD_REGISTER_JOB_KIND(T) \
  static const ::digestd::JobKindRegistration<T> digestd_register_##T {}
