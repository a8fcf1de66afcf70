#include "control/protocol.h"

#include <gtest/gtest.h>

#include <string>

namespace digestd {
namespace {

using nlohmann::json;

// Parses a response line (with its newline) back into JSON.
json ParseResponse(const std::string& line) {
  EXPECT_FALSE(line.empty());
  EXPECT_EQ(line.back(), '\n') << line;
  EXPECT_EQ(line.find('\n'), line.size() - 1) << "more than one line: " << line;
  json j = json::parse(line, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << line;
  return j;
}

void ExpectRejected(std::string_view line, Status::Code code, const std::string& mention) {
  ParsedLine p = ParseRequestLine(line);
  ASSERT_FALSE(p.status.ok()) << "accepted: " << line;
  EXPECT_EQ(p.status.code(), code) << p.status.ToString();
  EXPECT_FALSE(p.status.message().empty());
  EXPECT_NE(p.status.message().find(mention), std::string::npos)
      << "\"" << mention << "\" not in: " << p.status.message();
}

TEST(Protocol, ParsesAWellFormedRequest) {
  ParsedLine p = ParseRequestLine(R"({"op":"status","id":7})");
  ASSERT_TRUE(p.status.ok()) << p.status.ToString();
  EXPECT_EQ(p.request.op, "status");
  EXPECT_EQ(p.request.id, 7);
  EXPECT_EQ(p.request.body["op"], "status");
}

TEST(Protocol, RequestWithoutIdHasNullId) {
  ParsedLine p = ParseRequestLine(R"({"op":"ping"})");
  ASSERT_TRUE(p.status.ok());
  EXPECT_TRUE(p.request.id.is_null());
}

TEST(Protocol, NotJsonIsBadRequest) {
  ExpectRejected("hello there", Status::Code::kBadRequest, "not valid JSON");
  ExpectRejected("{\"op\":\"ping\"", Status::Code::kBadRequest, "not valid JSON");
  ExpectRejected("", Status::Code::kBadRequest, "JSON");
}

// A line of 80,000 nested objects once parsed fine and then overflowed the
// stack in the first walk over it (a size check that dumped the value).
TEST(Protocol, NestingDeeperThanTheBoundIsBadRequestBeforeAnythingWalksIt) {
  std::string deep;
  for (int i = 0; i < 80000; ++i) deep += "{\"a\":";
  deep += "1";
  deep += std::string(80000, '}');
  std::string line =
      R"({"op":"submit","kind":"generate","key":"x","input":{"prompt":"x","format":)" + deep + "}}";
  ExpectRejected(line, Status::Code::kBadRequest, "deeper than 64 levels");
  std::string arrays =
      R"({"op":"ping","pad":)" + std::string(200000, '[') + std::string(200000, ']') + "}";
  ExpectRejected(arrays, Status::Code::kBadRequest, "deeper than 64 levels");
}

TEST(Protocol, NestingUpToTheBoundIsAccepted) {
  // The request object is level 1; 63 more levels of "pad" make 64.
  std::string pad = std::string(63, '[') + std::string(63, ']');
  ParsedLine p = ParseRequestLine(R"({"op":"ping","pad":)" + pad + "}");
  EXPECT_TRUE(p.status.ok()) << p.status.ToString();
  std::string over = std::string(64, '[') + std::string(64, ']');
  ExpectRejected(R"({"op":"ping","pad":)" + over + "}", Status::Code::kBadRequest, "deeper");
}

TEST(Protocol, NotAnObjectIsBadRequest) {
  ExpectRejected("[1,2,3]", Status::Code::kBadRequest, "not an object");
  ExpectRejected("\"ping\"", Status::Code::kBadRequest, "not an object");
  ExpectRejected("42", Status::Code::kBadRequest, "not an object");
  ExpectRejected("null", Status::Code::kBadRequest, "not an object");
}

TEST(Protocol, MissingOpIsBadRequest) {
  ExpectRejected(R"({"id":1})", Status::Code::kBadRequest, "\"op\"");
  ExpectRejected("{}", Status::Code::kBadRequest, "\"op\"");
}

TEST(Protocol, OpThatIsNotAStringIsBadRequest) {
  ExpectRejected(R"({"op":5})", Status::Code::kBadRequest, "\"op\" must be a string");
  ExpectRejected(R"({"op":["ping"]})", Status::Code::kBadRequest, "\"op\" must be a string");
  ExpectRejected(R"({"op":null})", Status::Code::kBadRequest, "\"op\" must be a string");
}

TEST(Protocol, UnknownOpIsUnknownOpAndListsTheKnownOnes) {
  ExpectRejected(R"({"op":"explode"})", Status::Code::kUnknownOp, "explode");
  ExpectRejected(R"({"op":"explode"})", Status::Code::kUnknownOp, "status");
  // A huge op name is not echoed whole.
  std::string huge(10000, 'x');
  ParsedLine p = ParseRequestLine(R"({"op":")" + huge + R"("})");
  ASSERT_EQ(p.status.code(), Status::Code::kUnknownOp);
  EXPECT_LT(p.status.message().size(), 500u);
}

TEST(Protocol, IdOfTheWrongTypeIsBadRequest) {
  ExpectRejected(R"({"op":"ping","id":{"a":1}})", Status::Code::kBadRequest, "\"id\"");
  ExpectRejected(R"({"op":"ping","id":[1]})", Status::Code::kBadRequest, "\"id\"");
  ExpectRejected(R"({"op":"ping","id":true})", Status::Code::kBadRequest, "\"id\"");
  EXPECT_TRUE(ParseRequestLine(R"({"op":"ping","id":"abc"})").status.ok());
  EXPECT_TRUE(ParseRequestLine(R"({"op":"ping","id":1.5})").status.ok());
}

TEST(Protocol, InvalidUtf8IsBadRequestSayingSo) {
  ExpectRejected("{\"op\":\"ping\",\"id\":\"\xff\xfe\"}", Status::Code::kBadRequest, "UTF-8");
  ExpectRejected("{\"op\":\"\xc3\x28\"}", Status::Code::kBadRequest, "UTF-8");
  // An overlong encoding of '/' and a lone continuation byte.
  ExpectRejected("{\"op\":\"ping\",\"x\":\"\xc0\xaf\"}", Status::Code::kBadRequest, "UTF-8");
  ExpectRejected("{\"op\":\"ping\",\"x\":\"\x80\"}", Status::Code::kBadRequest, "UTF-8");
}

TEST(Protocol, NumberBeyondDoubleRangeIsBadRequest) {
  ExpectRejected(R"({"op":"ping","n":1e400})", Status::Code::kBadRequest, "number");
  ExpectRejected(R"({"op":"ping","id":-1e99999})", Status::Code::kBadRequest, "number");
}

TEST(Protocol, ValidUtf8IsAccepted) {
  ParsedLine p = ParseRequestLine("{\"op\":\"ping\",\"id\":\"caf\xc3\xa9 \xe2\x9c\x93\"}");
  ASSERT_TRUE(p.status.ok()) << p.status.ToString();
  EXPECT_EQ(p.request.id, "caf\xc3\xa9 \xe2\x9c\x93");
}

TEST(Protocol, CrlfLineEndingIsAccepted) {
  ParsedLine p = ParseRequestLine("{\"op\":\"ping\",\"id\":3}\r");
  ASSERT_TRUE(p.status.ok()) << p.status.ToString();
  EXPECT_EQ(p.request.op, "ping");
  EXPECT_EQ(p.request.id, 3);
}

TEST(Protocol, FieldsCannotReplaceOkOrId) {
  json line = ParseResponse(OkLine(json(7), {{"ok", "b1"}, {"id", "other"}, {"pong", true}}));
  EXPECT_EQ(line["ok"], true);
  EXPECT_EQ(line["id"], 7);
  EXPECT_EQ(line["pong"], true);
}

TEST(Protocol, IdIsEchoedInOkLine) {
  json ok = ParseResponse(OkLine(json("req-1"), {{"pong", true}}));
  EXPECT_EQ(ok["ok"], true);
  EXPECT_EQ(ok["id"], "req-1");
  EXPECT_EQ(ok["pong"], true);
  json numbered = ParseResponse(OkLine(json(42), nullptr));
  EXPECT_EQ(numbered["id"], 42);
  json none = ParseResponse(OkLine(nullptr, {{"pong", true}}));
  EXPECT_FALSE(none.contains("id"));
}

TEST(Protocol, IdIsEchoedInErrorLine) {
  json err = ParseResponse(ErrorLine(json(9), Status::NotFound("no job \"k\"")));
  EXPECT_EQ(err["ok"], false);
  EXPECT_EQ(err["id"], 9);
  EXPECT_EQ(err["error"]["code"], "not_found");
  EXPECT_EQ(err["error"]["message"], "no job \"k\"");
}

TEST(Protocol, ParseErrorsEchoTheIdWhenItWasReadable) {
  ParsedLine p = ParseRequestLine(R"({"op":"explode","id":"x1"})");
  ASSERT_FALSE(p.status.ok());
  json err = ParseResponse(ErrorLine(p.request.id, p.status));
  EXPECT_EQ(err["id"], "x1");
  EXPECT_EQ(err["error"]["code"], "unknown_op");
}

TEST(Protocol, ErrorLineNeverThrowsOnInvalidUtf8) {
  std::string line;
  ASSERT_NO_THROW(line = ErrorLine(json("id\xff"), Status::BadRequest("bad byte \xff\xfe here")));
  json err = ParseResponse(line);  // still valid JSON: the bad bytes are replaced
  EXPECT_EQ(err["error"]["code"], "bad_request");
  EXPECT_NE(err["error"]["message"].get<std::string>().find("bad byte"), std::string::npos);
  ASSERT_NO_THROW(line = OkLine(nullptr, {{"text", "\xc3\x28"}}));
  ParseResponse(line);
}

TEST(Protocol, CodeNamesAreStable) {
  EXPECT_EQ(Status::BadRequest("").CodeName(), "bad_request");
  EXPECT_EQ(Status::UnknownOp("").CodeName(), "unknown_op");
  EXPECT_EQ(Status::TooLarge("").CodeName(), "too_large");
  EXPECT_EQ(Status::NotFound("").CodeName(), "not_found");
  EXPECT_EQ(Status::Unavailable("").CodeName(), "unavailable");
  EXPECT_EQ(Status::Forbidden("").CodeName(), "forbidden");
  EXPECT_EQ(Status::QueueFull("").CodeName(), "queue_full");
  EXPECT_EQ(Status::Conflict("").CodeName(), "conflict");
  EXPECT_EQ(Status::BadState("").CodeName(), "bad_state");
}

TEST(Protocol, MutatingOpsAreTheOnesThatChangeState) {
  for (auto op : {"submit", "cancel", "workers", "reload", "drain", "retry", "delete"}) {
    EXPECT_TRUE(IsMutatingOp(op)) << op;
  }
  for (auto op : {"ping", "status", "result", "jobs"}) EXPECT_FALSE(IsMutatingOp(op)) << op;
}

TEST(Protocol, GetStringChecksTypeAndSize) {
  json body = {{"s", "abc"}, {"n", 5}, {"null", nullptr}};
  std::string out = "unchanged";
  EXPECT_TRUE(GetString(body, "missing", &out).ok());
  EXPECT_EQ(out, "unchanged");
  EXPECT_TRUE(GetString(body, "null", &out).ok());
  EXPECT_EQ(out, "unchanged");
  EXPECT_TRUE(GetString(body, "s", &out).ok());
  EXPECT_EQ(out, "abc");
  Status st = GetString(body, "n", &out);
  EXPECT_EQ(st.code(), Status::Code::kBadRequest);
  EXPECT_NE(st.message().find("\"n\""), std::string::npos) << st.message();
  st = GetString(body, "s", &out, 2);
  EXPECT_EQ(st.code(), Status::Code::kBadRequest);
}

TEST(Protocol, GetIntChecksTypeAndRange) {
  json body = {{"i", 5}, {"s", "x"}, {"f", 1.5}, {"big", 18446744073709551615ULL}};
  int64_t out = -1;
  EXPECT_TRUE(GetInt(body, "i", &out, 0, 10).ok());
  EXPECT_EQ(out, 5);
  EXPECT_EQ(GetInt(body, "s", &out, 0, 10).code(), Status::Code::kBadRequest);
  EXPECT_EQ(GetInt(body, "f", &out, 0, 10).code(), Status::Code::kBadRequest);
  EXPECT_EQ(GetInt(body, "i", &out, 6, 10).code(), Status::Code::kBadRequest);
  EXPECT_EQ(GetInt(body, "big", &out, 0, 10).code(), Status::Code::kBadRequest);
  EXPECT_EQ(out, 5);
}

}  // namespace
}  // namespace digestd
