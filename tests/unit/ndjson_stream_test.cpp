#include "backend/ndjson_stream.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>

namespace digestd {
namespace {

using Format = NdjsonStream::Format;
using Failure = NdjsonStream::Failure;

// A real /api/generate stream as Ollama writes it (Go escapes <, >, &),
// with multi-byte UTF-8 in the tokens.
const std::string kGenerateStream =
    "{\"model\":\"llama3.2\",\"created_at\":\"2023-08-04T08:52:19.385406455Z\","
    "\"response\":\"The\",\"done\":false}\n"
    "{\"model\":\"llama3.2\",\"created_at\":\"2023-08-04T08:52:19.385406455Z\","
    "\"response\":\" caf\xC3\xA9 \xE2\x80\x94 \xF0\x9F\x8D\xB5\",\"done\":false}\n"
    "{\"model\":\"llama3.2\",\"created_at\":\"2023-08-04T08:52:19.385406455Z\","
    "\"response\":\" \\u003cb\\u003e \\u0026\",\"done\":false}\n"
    "{\"model\":\"llama3.2\",\"created_at\":\"2023-08-04T19:22:45.499127Z\",\"response\":\"\","
    "\"done\":true,\"done_reason\":\"stop\",\"context\":[1,2,3],"
    "\"total_duration\":10706818083,\"load_duration\":6338219291,\"prompt_eval_count\":26,"
    "\"prompt_eval_duration\":130079000,\"eval_count\":259,\"eval_duration\":4232710000}\n";

const std::string kGenerateText = "The caf\xC3\xA9 \xE2\x80\x94 \xF0\x9F\x8D\xB5 <b> &";

const std::string kChatStream =
    "{\"model\":\"qwen3\",\"created_at\":\"t\",\"message\":{\"role\":\"assistant\",\"content\":"
    "\"\",\"thinking\":\"Hmm.\"},\"done\":false}\n"
    "{\"model\":\"qwen3\",\"created_at\":\"t\",\"message\":{\"role\":\"assistant\",\"content\":"
    "\"Hello\"},\"done\":false}\n"
    "{\"model\":\"qwen3\",\"created_at\":\"t\",\"message\":{\"role\":\"assistant\",\"content\":"
    "\"!\"},\"done\":false}\n"
    "{\"model\":\"qwen3\",\"created_at\":\"t\",\"message\":{\"role\":\"assistant\",\"content\":"
    "\"\"},\"done\":true,\"done_reason\":\"length\",\"total_duration\":5191566416,"
    "\"prompt_eval_count\":26,\"eval_count\":298}\n";

void ExpectGenerateResult(const NdjsonStream& s) {
  EXPECT_TRUE(s.done());
  EXPECT_FALSE(s.failed()) << s.error();
  EXPECT_EQ(s.text(), kGenerateText);
  EXPECT_EQ(s.model(), "llama3.2");
  EXPECT_EQ(s.done_reason(), "stop");
  EXPECT_EQ(s.metrics().prompt_eval_count, 26);
  EXPECT_EQ(s.metrics().eval_count, 259);
  EXPECT_EQ(s.metrics().total_duration_ns, 10706818083);
  EXPECT_EQ(s.metrics().load_duration_ns, 6338219291);
  EXPECT_EQ(s.metrics().prompt_eval_duration_ns, 130079000);
  EXPECT_EQ(s.metrics().eval_duration_ns, 4232710000);
  EXPECT_EQ(s.lines(), 4u);
}

TEST(NdjsonStream, ParsesAGenerateStreamInOnePiece) {
  NdjsonStream s(Format::kGenerate);
  EXPECT_TRUE(s.Feed(kGenerateStream));
  EXPECT_TRUE(s.Finish());
  ExpectGenerateResult(s);
}

TEST(NdjsonStream, SplitAtEveryBytePositionParsesTheSame) {
  for (size_t cut = 0; cut <= kGenerateStream.size(); ++cut) {
    NdjsonStream s(Format::kGenerate);
    EXPECT_TRUE(s.Feed(std::string_view(kGenerateStream).substr(0, cut)));
    EXPECT_TRUE(s.Feed(std::string_view(kGenerateStream).substr(cut)));
    EXPECT_TRUE(s.Finish()) << "cut at " << cut << ": " << s.error();
    ExpectGenerateResult(s);
  }
}

TEST(NdjsonStream, SplitIntoThreePiecesAtEveryPairOfPositionsParsesTheSame) {
  const std::string& in = kChatStream;
  for (size_t a = 0; a <= in.size(); a += 3) {
    for (size_t b = a; b <= in.size(); b += 5) {
      NdjsonStream s(Format::kChat);
      s.Feed(std::string_view(in).substr(0, a));
      s.Feed(std::string_view(in).substr(a, b - a));
      s.Feed(std::string_view(in).substr(b));
      ASSERT_TRUE(s.Finish()) << a << "," << b << ": " << s.error();
      ASSERT_EQ(s.text(), "Hello!");
    }
  }
}

TEST(NdjsonStream, OneByteAtATimeParsesTheSame) {
  NdjsonStream s(Format::kGenerate);
  for (char c : kGenerateStream) ASSERT_TRUE(s.Feed(std::string_view(&c, 1)));
  EXPECT_TRUE(s.Finish());
  ExpectGenerateResult(s);
}

TEST(NdjsonStream, MultiByteUtf8SplitInsideACharacter) {
  // "é" is C3 A9, "🍵" is F0 9F 8D B5: split inside each.
  std::string line = "{\"response\":\"\xC3\xA9\xF0\x9F\x8D\xB5\",\"done\":false}\n";
  size_t e = line.find('\xC3');
  size_t tea = line.find('\xF0');
  NdjsonStream s(Format::kGenerate);
  s.Feed(line.substr(0, e + 1));
  s.Feed(line.substr(e + 1, tea + 2 - (e + 1)));
  s.Feed(line.substr(tea + 2));
  s.Feed("{\"response\":\"\",\"done\":true}\n");
  EXPECT_TRUE(s.Finish()) << s.error();
  EXPECT_EQ(s.text(), "\xC3\xA9\xF0\x9F\x8D\xB5");
}

TEST(NdjsonStream, ChatCollectsContentAndThinkingSeparately) {
  NdjsonStream s(Format::kChat);
  s.Feed(kChatStream);
  ASSERT_TRUE(s.Finish()) << s.error();
  EXPECT_EQ(s.text(), "Hello!");
  EXPECT_EQ(s.thinking(), "Hmm.");
  EXPECT_EQ(s.done_reason(), "length");
  EXPECT_EQ(s.metrics().eval_count, 298);
  EXPECT_FALSE(s.metrics().load_duration_ns.has_value());  // omitted: zero
}

TEST(NdjsonStream, FinalLineTextIsAppended) {
  NdjsonStream s(Format::kGenerate);
  s.Feed("{\"response\":\"a\",\"done\":false}\n{\"response\":\"b\",\"done\":true}\n");
  EXPECT_TRUE(s.Finish());
  EXPECT_EQ(s.text(), "ab");
}

TEST(NdjsonStream, MidStreamErrorLineFailsRetryablyWithTheMessage) {
  NdjsonStream s(Format::kGenerate);
  EXPECT_TRUE(
      s.Feed("{\"model\":\"gemma4\",\"response\":\"I\",\"done\":false}\n"
             "{\"model\":\"gemma4\",\"response\":\"can\",\"done\":false}\n"));
  EXPECT_FALSE(s.Feed("{\"error\":\"an error was encountered while running the model\"}\n"));
  EXPECT_FALSE(s.Finish());
  EXPECT_EQ(s.failure(), Failure::kErrorLine);
  EXPECT_TRUE(s.retryable());
  EXPECT_EQ(s.error(), "an error was encountered while running the model");
  EXPECT_EQ(s.text(), "Ican");
}

TEST(NdjsonStream, ErrorLineWithoutNewlineAtEofIsStillAnError) {
  NdjsonStream s(Format::kChat);
  s.Feed("{\"error\":\"boom\"}");
  EXPECT_FALSE(s.Finish());
  EXPECT_EQ(s.failure(), Failure::kErrorLine);
  EXPECT_EQ(s.error(), "boom");
}

TEST(NdjsonStream, MissingDoneLineIsAnIncompleteRetryableFailure) {
  NdjsonStream s(Format::kGenerate);
  s.Feed("{\"response\":\"a\",\"done\":false}\n{\"response\":\"b\",\"done\":false}\n");
  EXPECT_FALSE(s.done());
  EXPECT_FALSE(s.Finish());
  EXPECT_EQ(s.failure(), Failure::kIncomplete);
  EXPECT_TRUE(s.retryable());
  EXPECT_NE(s.error().find("2 lines"), std::string::npos) << s.error();
}

TEST(NdjsonStream, EmptyBodyIsIncomplete) {
  NdjsonStream s(Format::kGenerate);
  EXPECT_FALSE(s.Finish());
  EXPECT_EQ(s.failure(), Failure::kIncomplete);
}

TEST(NdjsonStream, CutInsideTheLastLineIsMalformedNotSilentlyDropped) {
  std::string cut = kGenerateStream.substr(0, kGenerateStream.size() - 30);
  NdjsonStream s(Format::kGenerate);
  s.Feed(cut);
  EXPECT_FALSE(s.Finish());
  // The half line is not JSON: the body is not the documented shape.
  EXPECT_EQ(s.failure(), Failure::kMalformed);
}

TEST(NdjsonStream, NonJsonLineIsFatalAndKeepsTheRawText) {
  NdjsonStream s(Format::kGenerate);
  EXPECT_FALSE(s.Feed("<html><body>502 Bad Gateway</body></html>\n"));
  EXPECT_EQ(s.failure(), Failure::kMalformed);
  EXPECT_FALSE(s.retryable());
  EXPECT_NE(s.error().find("<html><body>502 Bad Gateway"), std::string::npos) << s.error();
}

TEST(NdjsonStream, WrongShapesAreMalformed) {
  const char* bad[] = {
      "[1,2,3]\n",
      "\"text\"\n",
      "{\"response\":\"a\"}\n",                  // no done
      "{\"response\":\"a\",\"done\":\"no\"}\n",  // done not boolean
      "{\"response\":7,\"done\":false}\n",       // response not a string
      "{\"response\":\"\",\"done\":true,\"eval_count\":\"many\"}\n",
      "{\"response\":\"\",\"done\":true,\"done_reason\":5}\n",
      "{\"response\":\"\xFF\xFE\",\"done\":false}\n",  // invalid UTF-8
  };
  for (const char* line : bad) {
    NdjsonStream s(Format::kGenerate);
    s.Feed(line);
    s.Finish();
    EXPECT_EQ(s.failure(), Failure::kMalformed) << line;
  }
  NdjsonStream chat(Format::kChat);
  chat.Feed("{\"message\":\"hello\",\"done\":false}\n");
  EXPECT_EQ(chat.failure(), Failure::kMalformed);
}

TEST(NdjsonStream, ExcerptOfAHugeMalformedLineIsShortAndPrintable) {
  std::string line(5000, 'x');
  line[10] = '\x01';
  line += "\n";
  NdjsonStream s(Format::kGenerate);
  s.Feed(line);
  EXPECT_EQ(s.failure(), Failure::kMalformed);
  EXPECT_LT(s.error().size(), 300u);
  EXPECT_EQ(s.error().find('\x01'), std::string::npos);
}

TEST(NdjsonStream, LineOverTheLimitIsTooLarge) {
  NdjsonStream::Limits limits;
  limits.max_line_bytes = 64;
  NdjsonStream s(Format::kGenerate, limits);
  EXPECT_FALSE(s.Feed("{\"response\":\"" + std::string(100, 'a')));  // no newline yet
  EXPECT_EQ(s.failure(), Failure::kTooLarge);
  EXPECT_FALSE(s.retryable());

  NdjsonStream s2(Format::kGenerate, limits);
  EXPECT_FALSE(s2.Feed("{\"response\":\"" + std::string(100, 'a') + "\",\"done\":false}\n"));
  EXPECT_EQ(s2.failure(), Failure::kTooLarge);
}

TEST(NdjsonStream, TextOverTheLimitIsTooLarge) {
  NdjsonStream::Limits limits;
  limits.max_text_bytes = 10;
  NdjsonStream s(Format::kGenerate, limits);
  for (int i = 0; i < 5; ++i) s.Feed("{\"response\":\"abc\",\"done\":false}\n");
  EXPECT_EQ(s.failure(), Failure::kTooLarge);
}

TEST(NdjsonStream, DeeplyNestedLineIsRefused) {
  std::string line = "{\"response\":\"\",\"done\":false,\"x\":" + std::string(10000, '[') +
                     std::string(10000, ']') + "}\n";
  NdjsonStream s(Format::kGenerate);
  s.Feed(line);
  EXPECT_EQ(s.failure(), Failure::kMalformed);
}

TEST(NdjsonStream, BlankLinesAndCrlfAreTolerated) {
  NdjsonStream s(Format::kGenerate);
  s.Feed("\n{\"response\":\"a\",\"done\":false}\r\n\r\n{\"response\":\"\",\"done\":true}\r\n");
  EXPECT_TRUE(s.Finish()) << s.error();
  EXPECT_EQ(s.text(), "a");
}

TEST(NdjsonStream, NonStreamedSingleObjectWithoutNewlineIsAccepted) {
  // Ollama's "load" reply to an empty prompt is one object, no newline.
  NdjsonStream s(Format::kGenerate);
  s.Feed(
      "{\"model\":\"llama3.2\",\"created_at\":\"t\",\"response\":\"\",\"done\":true,"
      "\"done_reason\":\"load\"}");
  EXPECT_FALSE(s.done());
  EXPECT_TRUE(s.Finish()) << s.error();
  EXPECT_EQ(s.done_reason(), "load");
}

TEST(NdjsonStream, BytesAfterTheDoneLineAreIgnored) {
  NdjsonStream s(Format::kGenerate);
  s.Feed("{\"response\":\"a\",\"done\":true}\nnot json at all\n");
  EXPECT_TRUE(s.Finish());
  EXPECT_EQ(s.text(), "a");
}

TEST(NdjsonStream, FailureIsStickyAndFinishIsIdempotent) {
  NdjsonStream s(Format::kGenerate);
  s.Feed("{\"error\":\"first\"}\n");
  s.Feed("{\"error\":\"second\"}\n{\"response\":\"\",\"done\":true}\n");
  EXPECT_FALSE(s.Finish());
  EXPECT_FALSE(s.Finish());
  EXPECT_EQ(s.error(), "first");
}

TEST(NdjsonStream, NonStringErrorIsKeptAsJsonText) {
  NdjsonStream s(Format::kGenerate);
  s.Feed("{\"error\":{\"message\":\"nested\"}}\n");
  EXPECT_EQ(s.failure(), Failure::kErrorLine);
  EXPECT_NE(s.error().find("nested"), std::string::npos);
}

TEST(NdjsonStream, FloatAndNullCountersAreAccepted) {
  NdjsonStream s(Format::kGenerate);
  s.Feed("{\"response\":\"\",\"done\":true,\"eval_count\":12.0,\"load_duration\":null}\n");
  EXPECT_TRUE(s.Finish()) << s.error();
  EXPECT_EQ(s.metrics().eval_count, 12);
  EXPECT_FALSE(s.metrics().load_duration_ns.has_value());
}

// Ollama leaves out zero-valued counters: each duration says whether it was
// sent, so an omitted one is not taken for 0, and a 0 that was sent stays 0.
TEST(NdjsonStream, EachDurationSaysWhetherItWasSent) {
  NdjsonStream chat(Format::kChat);
  chat.Feed(kChatStream);
  ASSERT_TRUE(chat.Finish()) << chat.error();
  EXPECT_EQ(chat.metrics().total_duration_ns, 5191566416);
  EXPECT_FALSE(chat.metrics().load_duration_ns.has_value());
  EXPECT_FALSE(chat.metrics().prompt_eval_duration_ns.has_value());
  EXPECT_FALSE(chat.metrics().eval_duration_ns.has_value());

  NdjsonStream zero(Format::kGenerate);
  zero.Feed(
      "{\"response\":\"\",\"done\":true,\"total_duration\":0,\"load_duration\":0,"
      "\"prompt_eval_duration\":0,\"eval_duration\":0}\n");
  ASSERT_TRUE(zero.Finish()) << zero.error();
  EXPECT_EQ(zero.metrics().total_duration_ns, 0);
  EXPECT_EQ(zero.metrics().load_duration_ns, 0);
  EXPECT_EQ(zero.metrics().prompt_eval_duration_ns, 0);
  EXPECT_EQ(zero.metrics().eval_duration_ns, 0);
}

// The line parser is reused from line to line: nothing a line said may leak
// into the next.
TEST(NdjsonStream, FieldsDoNotCarryOverFromTheLineBefore) {
  NdjsonStream s(Format::kChat);
  s.Feed(
      "{\"model\":\"a\",\"message\":{\"content\":\"x\",\"thinking\":\"t\"},\"done\":false,"
      "\"eval_count\":5,\"total_duration\":7}\n"
      "{\"done\":false}\n"
      "{\"message\":null,\"done\":false}\n"
      "{\"done\":true,\"done_reason\":\"stop\"}\n");
  ASSERT_TRUE(s.Finish()) << s.error();
  EXPECT_EQ(s.text(), "x");
  EXPECT_EQ(s.thinking(), "t");
  EXPECT_EQ(s.model(), "a");
  EXPECT_FALSE(s.metrics().eval_count.has_value());
  EXPECT_FALSE(s.metrics().total_duration_ns.has_value());

  NdjsonStream g(Format::kGenerate);
  g.Feed("{\"done\":false,\"done_reason\":7,\"eval_count\":\"x\"}\n{\"done\":true}\n");
  EXPECT_TRUE(g.Finish()) << g.error();  // only a final line's counters are checked
  EXPECT_EQ(g.done_reason(), "");
}

// As in a DOM parse, the last of duplicate keys wins, and a later "message"
// replaces the whole earlier one.
TEST(NdjsonStream, TheLastOfDuplicateKeysWins) {
  NdjsonStream g(Format::kGenerate);
  g.Feed("{\"response\":\"a\",\"response\":\"b\",\"done\":true,\"done\":false}\n");
  EXPECT_FALSE(g.done());
  EXPECT_EQ(g.text(), "b");

  NdjsonStream c(Format::kChat);
  c.Feed(
      "{\"message\":{\"content\":\"a\",\"thinking\":\"t\"},\"message\":{\"content\":\"b\"},"
      "\"done\":true}\n");
  EXPECT_TRUE(c.Finish()) << c.error();
  EXPECT_EQ(c.text(), "b");
  EXPECT_EQ(c.thinking(), "");

  NdjsonStream bad(Format::kGenerate);
  bad.Feed("{\"response\":\"a\",\"response\":1,\"done\":false}\n");
  EXPECT_EQ(bad.failure(), Failure::kMalformed);
}

// Only the top-level fields (and message's own) count: the same names deeper
// down are data.
TEST(NdjsonStream, NestedFieldsWithTheSameNamesAreIgnored) {
  NdjsonStream s(Format::kChat);
  s.Feed(
      "{\"x\":{\"done\":7,\"error\":\"no\",\"message\":{\"content\":1}},"
      "\"message\":{\"content\":\"ok\",\"tool_calls\":[{\"content\":5,\"thinking\":[]}]},"
      "\"context\":[{\"response\":3}],\"done\":true,\"eval_count\":2}\n");
  ASSERT_TRUE(s.Finish()) << s.error();
  EXPECT_EQ(s.text(), "ok");
  EXPECT_EQ(s.metrics().eval_count, 2);

  // message's own fields after a nested object still count.
  NdjsonStream after(Format::kChat);
  after.Feed(
      "{\"message\":{\"tool_calls\":[{\"function\":{\"content\":1}}],\"role\":\"assistant\","
      "\"content\":\"late\",\"thinking\":\"t\"},\"done\":true}\n");
  ASSERT_TRUE(after.Finish()) << after.error();
  EXPECT_EQ(after.text(), "late");
  EXPECT_EQ(after.thinking(), "t");
}

TEST(NdjsonStream, CountersBeyondInt64AreClampedNotWrapped) {
  NdjsonStream s(Format::kGenerate);
  s.Feed(
      "{\"done\":true,\"eval_count\":18446744073709551615,"
      "\"total_duration\":9223372036854775808,\"load_duration\":-5}\n");
  ASSERT_TRUE(s.Finish()) << s.error();
  EXPECT_EQ(s.metrics().eval_count, INT64_MAX);
  EXPECT_EQ(s.metrics().total_duration_ns, INT64_MAX);
  EXPECT_EQ(s.metrics().load_duration_ns, -5);

  NdjsonStream big(Format::kGenerate);
  big.Feed("{\"done\":true,\"eval_duration\":9.3e18}\n");
  EXPECT_EQ(big.failure(), Failure::kMalformed);
}

TEST(NdjsonStream, NullErrorIsAnErrorLine) {
  NdjsonStream s(Format::kGenerate);
  s.Feed("{\"error\":null,\"done\":true}\n");
  EXPECT_EQ(s.failure(), Failure::kErrorLine);
  EXPECT_EQ(s.error(), "null");
}

TEST(Excerpt, CutsAtACharacterBoundaryAndMarksTheCut) {
  std::string text =
      "ab\xC3\xA9"
      "cd";
  EXPECT_EQ(Excerpt(text, 100), text);
  std::string cut = Excerpt(text, 3);  // "é" would end at byte 4: cut before it
  EXPECT_EQ(cut, "ab\xE2\x80\xA6");
  EXPECT_EQ(Excerpt("a\xFF"
                    "b",
                    100),
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(Excerpt("a\nb\tc", 100), "a b c");
}

}  // namespace
}  // namespace digestd
