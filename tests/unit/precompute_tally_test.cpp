// PrecomputeTally: outcomes, kinds, prefixes and the prefix bound.
#include "app/precompute_tally.h"

#include <gtest/gtest.h>

#include <string>

namespace digestd {
namespace {

using Outcome = PrecomputeTally::Outcome;

TEST(PrecomputeTally, OutcomeFollowsTerminalAndWaited) {
  EXPECT_EQ(PrecomputeTally::OutcomeOf(true, false), Outcome::kHit);
  EXPECT_EQ(PrecomputeTally::OutcomeOf(true, true), Outcome::kLate);
  EXPECT_EQ(PrecomputeTally::OutcomeOf(false, true), Outcome::kMiss);
  EXPECT_EQ(PrecomputeTally::OutcomeOf(false, false), Outcome::kMiss);
}

TEST(PrecomputeTally, PrefixIsThePartBeforeTheFirstColon) {
  EXPECT_EQ(PrecomputeTally::PrefixOf("game:abc:embed-a"), "game");
  EXPECT_EQ(PrecomputeTally::PrefixOf(":x"), "");
  EXPECT_EQ(PrecomputeTally::PrefixOf("plain"), "");
}

TEST(PrecomputeTally, CountsByKindAndPrefix) {
  PrecomputeTally t;
  t.Count("embed", "game:1", Outcome::kHit);
  t.Count("embed", "game:2", Outcome::kLate);
  t.Count("summarize", "book:7", Outcome::kMiss);
  EXPECT_EQ(t.total().hit, 1u);
  EXPECT_EQ(t.total().late, 1u);
  EXPECT_EQ(t.total().miss, 1u);
  EXPECT_EQ(t.by_kind().at("embed").late, 1u);
  EXPECT_EQ(t.by_prefix().at("game").hit, 1u);
  EXPECT_EQ(t.by_prefix().at("book").miss, 1u);
  nlohmann::json j = t.ToJson();
  EXPECT_EQ(j["by_kind"]["summarize"]["miss"], 1);
  EXPECT_EQ(j["hit"], 1);
}

TEST(PrecomputeTally, PrefixesAreBounded) {
  PrecomputeTally t;
  for (size_t i = 0; i < PrecomputeTally::kMaxPrefixes + 50; ++i) {
    t.Count("noop", "p" + std::to_string(i) + ":x", Outcome::kHit);
  }
  EXPECT_LE(t.by_prefix().size(), PrecomputeTally::kMaxPrefixes + 1);
  EXPECT_EQ(t.by_prefix().at(std::string(PrecomputeTally::kOtherPrefix)).hit, 50u);
  t.Count("noop", "p0:y", Outcome::kLate);  // a known prefix is still counted as itself
  EXPECT_EQ(t.by_prefix().at("p0").late, 1u);
  EXPECT_EQ(t.total().hit, PrecomputeTally::kMaxPrefixes + 50);
}

}  // namespace
}  // namespace digestd
