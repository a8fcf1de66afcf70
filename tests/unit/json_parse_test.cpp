#include "util/json_parse.h"

#include <gtest/gtest.h>

#include <string>

namespace digestd {
namespace {

using nlohmann::json;

std::string Nested(int depth) {
  return std::string(depth, '[') + std::string(depth, ']');
}

TEST(JsonParse, ValuesWithinTheBoundParseAsNlohmannDoes) {
  EXPECT_EQ(ParseJsonBounded(R"({"a":[1,2,{"b":null}],"c":"d"})"),
            json::parse(R"({"a":[1,2,{"b":null}],"c":"d"})"));
  EXPECT_EQ(ParseJsonBounded(Nested(kMaxJsonDepth)), json::parse(Nested(kMaxJsonDepth)));
  EXPECT_EQ(ParseJsonBounded("17"), json(17));
}

TEST(JsonParse, OneLevelPastTheBoundThrowsTooDeep) {
  EXPECT_THROW(ParseJsonBounded(Nested(kMaxJsonDepth + 1)), JsonTooDeep);
  EXPECT_THROW(ParseJsonBounded(Nested(3), 2), JsonTooDeep);
  EXPECT_NO_THROW(ParseJsonBounded(Nested(2), 2));
  try {
    ParseJsonBounded(Nested(500000));
    ADD_FAILURE() << "no exception";
  } catch (const JsonTooDeep& e) {
    EXPECT_EQ(e.max_depth(), kMaxJsonDepth);
    EXPECT_NE(std::string(e.what()).find("deeper than 64 levels"), std::string::npos);
  }
}

TEST(JsonParse, SyntaxAndRangeErrorsKeepNlohmannsExceptions) {
  EXPECT_THROW(ParseJsonBounded("{\"a\":"), json::parse_error);
  EXPECT_THROW(ParseJsonBounded("[1] x"), json::parse_error);
  EXPECT_THROW(ParseJsonBounded("1e400"), json::out_of_range);
}

TEST(JsonParse, TryFormDiscardsEveryFailure) {
  EXPECT_TRUE(TryParseJsonBounded(Nested(kMaxJsonDepth + 1)).is_discarded());
  EXPECT_TRUE(TryParseJsonBounded("{").is_discarded());
  EXPECT_TRUE(TryParseJsonBounded("1e400").is_discarded());
  EXPECT_EQ(TryParseJsonBounded(R"(["x"])"), json::array({"x"}));
}

}  // namespace
}  // namespace digestd
