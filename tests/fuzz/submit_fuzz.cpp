// Fuzzes a whole submit request as the daemon checks it: the line through
// ParseRequestLine (lib/control/protocol.h), then, for "submit", CheckSubmit
// (lib/app/submit_spec.h), which runs every job's kind's Validate, and then
// what the daemon does with an accepted job before it is stored: the Spec*
// accessors, the input as it is written to PostgreSQL, and the kind's hooks.
// Each line is checked twice: under the default config ([backend] kind =
// "ollama") and under [backend] kind = "extractive", where the LLM-only kinds
// must refuse every job.
//
// The job kinds register themselves from their own source files, which are
// compiled into this target (tests/fuzz/CMakeLists.txt); Validate does no
// I/O. Checked, besides no crash, no exception and no sanitizer report:
//   - an accepted line nests no deeper than kMaxJsonDepth (a line nested
//     80,000 deep once crashed the daemon; inputs here are too short to
//     overflow the stack, so the bound itself is checked);
//   - a rejected submit is bad_request or too_large, says what was wrong,
//     and makes a valid error line;
//   - an accepted submit hands back one spec per job (the request itself for
//     a one-job submit), each of a registered kind, with a key and group of
//     at most kMaxKeyBytes; the Spec* accessors answer without throwing, and
//     the input serialises (it becomes a jsonb row); ttl_s is within its
//     bounds, "after" only in a batch with a group, and every part the input
//     names is listed in it;
//   - under the extractive backend only kinds that need no LLM are accepted,
//     and a summarize job's extractive result serialises;
//   - FinalFailureResult never throws and serialises, for any input of a
//     known kind, checked or not (its contract in lib/jobs/job_kind.h).
//
// An invariant that does not hold calls abort(), which libFuzzer reports as
// a crash with the input that caused it.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "app/submit_spec.h"
#include "config/config.h"
#include "control/protocol.h"
#include "jobs/job_kind.h"
#include "jobs/summarize_fallback.h"
#include "util/json_parse.h"

namespace {

using nlohmann::json;

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "submit_fuzz: invariant broken: %s\n", what);
    std::abort();
  }
}

// What goes to a client or into a row is serialised strictly (invalid UTF-8
// throws); a value that cannot be is a bug.
bool Serialises(const json& j) {
  try {
    (void)j.dump();
    return true;
  } catch (const json::exception& e) {
    std::fprintf(stderr, "submit_fuzz: dump() threw: %s\n", e.what());
    return false;
  }
}

// Nesting depth of `j` as lib/util/json_parse.h counts it, without recursing.
int Depth(const json& j) {
  int deepest = 0;
  std::vector<std::pair<const json*, int>> todo = {{&j, 0}};
  while (!todo.empty()) {
    auto [v, d] = todo.back();
    todo.pop_back();
    if (!v->is_structured()) continue;
    deepest = std::max(deepest, d + 1);
    for (const auto& child : *v) todo.emplace_back(&child, d + 1);
  }
  return deepest;
}

void CheckResponseLine(const std::string& line, bool ok) {
  Check(!line.empty() && line.back() == '\n' && line.find('\n') == line.size() - 1,
        "a response is one line");
  json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
  Check(j.is_object() && j.contains("ok") && j["ok"] == ok, "a response is an object with ok");
}

struct Setup {
  digestd::Config ollama;  // the defaults
  digestd::Config extractive;

  Setup() {
    auto parsed = digestd::ParseConfig("[backend]\nkind = \"extractive\"\n", "fuzz.conf");
    Check(parsed.ok(), "the extractive config parses");
    extractive = parsed.value();
    Check(ollama.backend.kind == "ollama" && extractive.backend.kind == "extractive",
          "the two backends differ");
    Check(!digestd::JobKindRegistry::Global().Names().empty(), "the job kinds are linked in");
  }
};

const Setup& TheSetup() {
  static const Setup setup;
  return setup;
}

// The fallback hook, for any job object of a known kind (it may be unchecked).
void CheckFallback(const json& spec, const digestd::Config& config) {
  if (!spec.is_object()) return;
  auto kind = spec.find("kind");
  if (kind == spec.end() || !kind->is_string()) return;
  const digestd::JobKind* k =
      digestd::JobKindRegistry::Global().Find(kind->get_ref<const std::string&>());
  if (k == nullptr) return;
  static const json kEmpty = json::object();
  auto input = spec.find("input");
  json stand_in = k->FinalFailureResult(input == spec.end() ? kEmpty : *input, config);
  Check(Serialises(stand_in), "FinalFailureResult serialises");
}

void CheckSubmitUnder(const digestd::Request& req, const digestd::Config& config) {
  std::vector<const json*> specs;
  bool single = false;
  digestd::Status st = digestd::CheckSubmit(req, config, &specs, &single);

  auto jobs = req.body.find("jobs");
  if (jobs == req.body.end()) {
    CheckFallback(req.body, config);
  } else if (jobs->is_array()) {
    for (const auto& spec : *jobs) CheckFallback(spec, config);
  }

  if (!st.ok()) {
    Check(st.code() == digestd::Status::Code::kBadRequest ||
              st.code() == digestd::Status::Code::kTooLarge,
          "a rejected submit is bad_request or too_large");
    Check(!st.message().empty(), "a rejection says what was wrong");
    CheckResponseLine(digestd::ErrorLine(req.id, st), false);
    return;
  }

  Check(single == (jobs == req.body.end()), "single is a submit without \"jobs\"");
  if (single) {
    Check(specs.size() == 1 && specs[0] == &req.body, "a one-job submit is its own spec");
  } else {
    Check(jobs->is_array() && specs.size() == jobs->size(), "a batch has one spec per job");
    Check(specs.size() <= static_cast<size_t>(config.jobs.max_batch),
          "a batch holds at most [jobs] max_batch jobs");
  }
  json answers = json::array();
  for (const json* spec : specs) {
    Check(spec != nullptr && spec->is_object(), "a spec is an object");
    // What the stores read from an accepted spec (lib/app/pg_store_jobs.cpp,
    // lib/app/memory_store.cpp); none of these may throw.
    std::string key = digestd::SpecKey(*spec);
    std::string group = digestd::SpecGroup(*spec);
    std::string kind = digestd::SpecKind(*spec);
    (void)digestd::SpecLane(*spec);
    (void)digestd::SpecReplace(*spec);
    const int64_t ttl = digestd::SpecTtlS(*spec, config);
    Check(ttl >= 0 && ttl <= digestd::kMaxTtlS, "ttl_s is within its bounds");
    const std::vector<std::string> after = digestd::SpecAfter(*spec);
    Check(after.size() <= digestd::kMaxAfter, "after names at most kMaxAfter jobs");
    Check(after.empty() || (!single && !digestd::SpecGroup(*spec).empty()),
          "after is only accepted in a batch, with a group");
    json input = digestd::SpecInput(*spec);
    // Every part the input names is listed in "after".
    for (const std::string& part : digestd::PartRefs(input)) {
      Check(std::find(after.begin(), after.end(), part) != after.end(),
            "an accepted input names only parts its after lists");
    }
    // The conflict check hashes every accepted input.
    (void)digestd::InputHash(kind, input);
    Check(key.size() <= digestd::kMaxKeyBytes && group.size() <= digestd::kMaxKeyBytes,
          "key and group are at most kMaxKeyBytes");
    const digestd::JobKind* k = digestd::JobKindRegistry::Global().Find(kind);
    Check(k != nullptr, "an accepted job has a registered kind");
    Check(Serialises(input), "an accepted input serialises");
    (void)k->RunsOnLoop(input, config);
    if (config.backend.kind == "extractive") {
      Check(kind != "generate" && kind != "embed",
            "the extractive backend refuses the kinds that need an LLM");
      if (kind == "summarize") {
        Check(Serialises(digestd::ExtractiveSummaryResult(input, config)),
              "an extractive summary serialises");
      }
    }
    answers.push_back({{"key", key}});
  }
  CheckResponseLine(digestd::OkLine(req.id, {{"jobs", answers}}), true);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Setup& setup = TheSetup();
  std::string_view line(reinterpret_cast<const char*>(data), size);
  digestd::ParsedLine parsed = digestd::ParseRequestLine(line);
  if (!parsed.status.ok()) {
    CheckResponseLine(digestd::ErrorLine(parsed.request.id, parsed.status), false);
    return 0;
  }
  const digestd::Request& req = parsed.request;
  Check(req.body.is_object(), "an accepted request is an object");
  // Every walk over the request (dump, copy, compare, jsonb) recurses once
  // per level: nothing deeper than the bound may get this far.
  Check(Depth(req.body) <= digestd::kMaxJsonDepth,
        "an accepted request nests at most kMaxJsonDepth");
  if (req.op != "submit") return 0;
  CheckSubmitUnder(req, setup.ollama);
  CheckSubmitUnder(req, setup.extractive);
  return 0;
}
