// PrecomputeTally: whether apps precompute early enough. Every `result` that
// waits (wait_ms > 0) is counted once, when it is answered:
//   hit   the job (every part of the group) was already terminal when asked;
//   late  it became terminal within the wait;
//   miss  the wait ran out first.
// A wait cut short by a shutdown, or answered with an error, is not counted.
// Counted per job kind (a group wait under "group") and per name prefix: the
// part of the group (or, for a job in no group, the key) before its first
// ':' ("game:abc:embed-a" -> "game"; no ':' -> "").
//
// Prefixes are client-chosen strings, so at most kMaxPrefixes are kept; the
// rest are counted under "(other)". Kinds are the registry's, so bounded.
//
// Loop thread only. Owned by the Daemon; stores hold a pointer (StoreEnv).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace digestd {

class PrecomputeTally {
 public:
  enum class Outcome { kHit, kLate, kMiss };
  struct Counts {
    uint64_t hit = 0;
    uint64_t late = 0;
    uint64_t miss = 0;
  };
  static constexpr size_t kMaxPrefixes = 100;
  static constexpr std::string_view kOtherPrefix = "(other)";

  // One answered wait for a job of `kind` named by `name` (its group, or
  // its key when in no group).
  void Count(std::string_view kind, std::string_view name, Outcome outcome);

  // A wait's outcome: `terminal` when answered; `waited` when it was not
  // answered at the first look.
  static Outcome OutcomeOf(bool terminal, bool waited) {
    return !terminal ? Outcome::kMiss : waited ? Outcome::kLate : Outcome::kHit;
  }

  // The part of `name` before its first ':' ("" when it has none).
  static std::string_view PrefixOf(std::string_view name);

  const Counts& total() const { return total_; }
  const std::map<std::string, Counts, std::less<>>& by_kind() const { return by_kind_; }
  const std::map<std::string, Counts, std::less<>>& by_prefix() const { return by_prefix_; }

  // {"hit","late","miss","by_kind":{kind:{hit,late,miss}},"by_prefix":{...}}
  nlohmann::json ToJson() const;

 private:
  Counts total_;
  std::map<std::string, Counts, std::less<>> by_kind_;
  std::map<std::string, Counts, std::less<>> by_prefix_;
};

}  // namespace digestd
