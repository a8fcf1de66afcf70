#include "backend/extractive.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace digestd {
namespace {

std::vector<std::string> Split(std::string_view text) {
  std::vector<std::string> out;
  for (std::string_view s : SplitSentences(text)) out.emplace_back(s);
  return out;
}

using V = std::vector<std::string>;

TEST(SplitSentences, PlainSentences) {
  EXPECT_EQ(Split("One two. Three four! Five six? Seven"),
            (V{"One two.", "Three four!", "Five six?", "Seven"}));
}

TEST(SplitSentences, AbbreviationsDoNotEndASentence) {
  EXPECT_EQ(Split("Mr. Holmes met Dr. Watson at St. Bart's. They talked, e.g. about crime."),
            (V{"Mr. Holmes met Dr. Watson at St. Bart's.", "They talked, e.g. about crime."}));
  EXPECT_EQ(Split("Mrs. Hudson and Prof. Moriarty, etc. It was late."),
            (V{"Mrs. Hudson and Prof. Moriarty, etc.", "It was late."}));
}

TEST(SplitSentences, InitialsDoNotEndASentence) {
  EXPECT_EQ(Split("J. R. R. Tolkien wrote it. It was long."),
            (V{"J. R. R. Tolkien wrote it.", "It was long."}));
}

TEST(SplitSentences, ThePronounIEndsASentence) {
  EXPECT_EQ(Split("It was I. Nobody else came."), (V{"It was I.", "Nobody else came."}));
}

TEST(SplitSentences, QuotesStayWithTheirSentence) {
  EXPECT_EQ(Split("\"Run!\" she cried. He ran. \"Where?\" \"Home.\""),
            (V{"\"Run!\" she cried.", "He ran.", "\"Where?\"", "\"Home.\""}));
  EXPECT_EQ(
      Split("\xE2\x80\x9CStop!\xE2\x80\x9D he said. \xE2\x80\x9CNow.\xE2\x80\x9D Then silence."),
      (V{"\xE2\x80\x9CStop!\xE2\x80\x9D he said.", "\xE2\x80\x9CNow.\xE2\x80\x9D",
         "Then silence."}));
}

TEST(SplitSentences, Ellipses) {
  EXPECT_EQ(Split("He paused... then went on. Later... Nothing."),
            (V{"He paused... then went on.", "Later...", "Nothing."}));
  EXPECT_EQ(Split("Wait\xE2\x80\xA6 She left. Gone\xE2\x80\xA6"),
            (V{"Wait\xE2\x80\xA6", "She left.", "Gone\xE2\x80\xA6"}));
}

TEST(SplitSentences, NumbersAndDecimalsStayWhole) {
  EXPECT_EQ(Split("It cost 3.50 pounds. He paid."), (V{"It cost 3.50 pounds.", "He paid."}));
  EXPECT_EQ(Split("He was born in 1850. She was not."),
            (V{"He was born in 1850.", "She was not."}));
}

TEST(SplitSentences, ParagraphBreakEndsASentence) {
  EXPECT_EQ(Split("CHAPTER ONE\n\nThe door\nopened slowly. It creaked."),
            (V{"CHAPTER ONE", "The door\nopened slowly.", "It creaked."}));
}

TEST(SplitSentences, CjkFullStops) {
  EXPECT_EQ(Split("\xE4\xBB\x8A\xE5\xA4\xA9\xE3\x80\x82\xE6\x98\x8E\xE5\xA4\xA9\xEF\xBC\x81"),
            (V{"\xE4\xBB\x8A\xE5\xA4\xA9\xE3\x80\x82", "\xE6\x98\x8E\xE5\xA4\xA9\xEF\xBC\x81"}));
}

TEST(SplitSentences, EmptyAndBlank) {
  EXPECT_TRUE(Split("").empty());
  EXPECT_TRUE(Split("  \n\n \t ").empty());
}

TEST(CountWords, CountsRunsOfNonSpace) {
  EXPECT_EQ(CountWords(""), 0u);
  EXPECT_EQ(CountWords("  one\ttwo\n three  "), 3u);
}

TEST(ExtractiveSummary, TakesLeadingSentencesWithinTheLimit) {
  std::string text = "One two three. Four five six. Seven eight nine. Ten.";
  EXPECT_EQ(ExtractiveSummary(text, 6), "One two three. Four five six.");
  EXPECT_EQ(ExtractiveSummary(text, 8), "One two three. Four five six.");
  EXPECT_EQ(ExtractiveSummary(text, 100), text);
}

TEST(ExtractiveSummary, CollapsesWhitespace) {
  EXPECT_EQ(ExtractiveSummary("  One\n two.\n\n\tThree   four.  ", 10), "One two. Three four.");
}

TEST(ExtractiveSummary, LongFirstSentenceIsCutAtAWordBoundary) {
  EXPECT_EQ(ExtractiveSummary("One, two, three, four, five. Six.", 3),
            "One, two, three\xE2\x80\xA6");
}

TEST(ExtractiveSummary, NoSentenceBoundariesAtAll) {
  EXPECT_EQ(ExtractiveSummary("a b c d e f g h", 4), "a b c d\xE2\x80\xA6");
}

TEST(ExtractiveSummary, TextWithoutSpacesIsCutAtACharacterBoundary) {
  // 200 three-byte characters and no space: capped at 12 bytes a word.
  std::string text;
  for (int i = 0; i < 200; ++i) text += "\xE5\xAD\x97";
  std::string s = ExtractiveSummary(text, 2);  // 24 bytes: 8 characters
  EXPECT_EQ(s, text.substr(0, 24) + "\xE2\x80\xA6");
  std::string s2 = ExtractiveSummary(text, 1);  // 12 bytes: 4 characters
  EXPECT_EQ(s2, text.substr(0, 12) + "\xE2\x80\xA6");
}

TEST(ExtractiveSummary, NeverSplitsAUtf8Character) {
  std::string text = "\xC3\xA9t\xC3\xA9 " + std::string(40, 'x') + "\xC3\xA9" + "y";
  for (int words = 1; words < 5; ++words) {
    std::string s = ExtractiveSummary(text, words);
    // Every byte sequence in the output is complete UTF-8.
    for (size_t i = 0; i < s.size();) {
      unsigned char c = static_cast<unsigned char>(s[i]);
      size_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
      ASSERT_LE(i + n, s.size());
      for (size_t k = 1; k < n; ++k) ASSERT_EQ(static_cast<unsigned char>(s[i + k]) & 0xC0, 0x80);
      i += n;
    }
  }
}

TEST(ExtractiveSummary, EmptyText) {
  EXPECT_EQ(ExtractiveSummary("", 10), "");
  EXPECT_EQ(ExtractiveSummary(" \n ", 10), "");
}

TEST(ExtractiveSummary, ZeroOrNegativeLimitActsAsOneWord) {
  EXPECT_EQ(ExtractiveSummary("Hello. World.", 0), "Hello.");
  EXPECT_EQ(ExtractiveSummary("Hello there. World.", -3), "Hello\xE2\x80\xA6");
}

}  // namespace
}  // namespace digestd
