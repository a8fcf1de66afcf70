#include "app/precompute_tally.h"

namespace digestd {

namespace {

void Add(PrecomputeTally::Counts& c, PrecomputeTally::Outcome o) {
  switch (o) {
    case PrecomputeTally::Outcome::kHit:
      ++c.hit;
      break;
    case PrecomputeTally::Outcome::kLate:
      ++c.late;
      break;
    case PrecomputeTally::Outcome::kMiss:
      ++c.miss;
      break;
  }
}

nlohmann::json CountsJson(const PrecomputeTally::Counts& c) {
  return {{"hit", c.hit}, {"late", c.late}, {"miss", c.miss}};
}

}  // namespace

std::string_view PrecomputeTally::PrefixOf(std::string_view name) {
  size_t colon = name.find(':');
  return colon == std::string_view::npos ? std::string_view() : name.substr(0, colon);
}

void PrecomputeTally::Count(std::string_view kind, std::string_view name, Outcome outcome) {
  Add(total_, outcome);
  auto k = by_kind_.find(kind);
  if (k == by_kind_.end()) k = by_kind_.emplace(std::string(kind), Counts{}).first;
  Add(k->second, outcome);
  std::string_view prefix = PrefixOf(name);
  auto p = by_prefix_.find(prefix);
  if (p == by_prefix_.end()) {
    if (by_prefix_.size() >= kMaxPrefixes) prefix = kOtherPrefix;
    p = by_prefix_.find(prefix);
    if (p == by_prefix_.end()) p = by_prefix_.emplace(std::string(prefix), Counts{}).first;
  }
  Add(p->second, outcome);
}

nlohmann::json PrecomputeTally::ToJson() const {
  nlohmann::json out = CountsJson(total_);
  nlohmann::json kinds = nlohmann::json::object();
  for (const auto& [k, c] : by_kind_) kinds[k] = CountsJson(c);
  nlohmann::json prefixes = nlohmann::json::object();
  for (const auto& [p, c] : by_prefix_) prefixes[p] = CountsJson(c);
  out["by_kind"] = std::move(kinds);
  out["by_prefix"] = std::move(prefixes);
  return out;
}

}  // namespace digestd
