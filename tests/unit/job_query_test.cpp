#include "app/job_query.h"

#include <gtest/gtest.h>

namespace digestd {
namespace {

using nlohmann::json;

TEST(JobQuery, CursorRoundTripsAndRefusesAnythingElse) {
  JobsCursor c{4711};
  auto back = DecodeCursor(EncodeCursor(c));
  ASSERT_TRUE(back);
  EXPECT_EQ(back->id, c.id);
  for (const char* bad : {"", "c1.", "c1.x", "c1.-5", "c2.1", "c1.1 ", "c1.1.2", "4711"}) {
    EXPECT_FALSE(DecodeCursor(bad)) << bad;
  }
}

TEST(JobQuery, OrderIsNewestFirst) {
  EXPECT_TRUE(Before({9}, {8}));
  EXPECT_FALSE(Before({8}, {9}));
  EXPECT_FALSE(Before({8}, {8}));
}

TEST(JobQuery, ParsesEveryFilterWithDefaults) {
  auto q = ParseJobsQuery({{"op", "jobs"}});
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->limit, kJobsDefaultLimit);
  EXPECT_TRUE(q->states.empty());
  EXPECT_FALSE(q->after);

  q = ParseJobsQuery({{"status", {"failed", "cancelled"}},
                      {"group", "g"},
                      {"kind", "noop"},
                      {"lane", "interactive"},
                      {"key_prefix", "a/"},
                      {"max_age_s", 60},
                      {"min_age_s", 5},
                      {"limit", 500},
                      {"cursor", EncodeCursor({3})}});
  ASSERT_TRUE(q.ok()) << q.status().ToString();
  EXPECT_EQ(q->states, (std::vector<JobState>{JobState::kFailed, JobState::kCancelled}));
  EXPECT_EQ(q->lane, Lane::kInteractive);
  ASSERT_TRUE(q->after);
  EXPECT_EQ(q->after->id, 3u);
  EXPECT_TRUE(q->Matches(JobState::kFailed, "a/1", "g", "noop", Lane::kInteractive, 10000));
  EXPECT_FALSE(q->Matches(JobState::kDone, "a/1", "g", "noop", Lane::kInteractive, 10000));
  EXPECT_FALSE(q->Matches(JobState::kFailed, "b/1", "g", "noop", Lane::kInteractive, 10000));
  EXPECT_FALSE(q->Matches(JobState::kFailed, "a/1", "g", "noop", Lane::kInteractive, 61000));
  EXPECT_FALSE(q->Matches(JobState::kFailed, "a/1", "g", "noop", Lane::kInteractive, 4000));
}

TEST(JobQuery, RefusesBadFieldsNamingThem) {
  struct Case {
    json body;
    const char* mention;
  } cases[] = {
      {{{"limit", 0}}, "limit"},
      {{{"limit", 501}}, "limit"},
      {{{"status", "finished"}}, "status"},
      {{{"status", 3}}, "status"},
      {{{"lane", "fast"}}, "lane"},
      {{{"cursor", "nope"}}, "cursor"},
      {{{"min_age_s", 10}, {"max_age_s", 5}}, "min_age_s"},
  };
  for (const auto& c : cases) {
    auto q = ParseJobsQuery(c.body);
    ASSERT_FALSE(q.ok()) << c.body.dump();
    EXPECT_EQ(q.status().code(), Status::Code::kBadRequest);
    EXPECT_NE(q.status().message().find(c.mention), std::string::npos) << q.status().message();
  }
}

TEST(JobQuery, TargetNeedsExactlyOneOfKeyAndGroup) {
  EXPECT_TRUE(ParseJobTarget({{"key", "k"}}, "retry").ok());
  EXPECT_TRUE(ParseJobTarget({{"group", "g"}}, "retry").ok());
  EXPECT_FALSE(ParseJobTarget(json::object(), "retry").ok());
  auto both = ParseJobTarget({{"key", "k"}, {"group", "g"}}, "delete");
  ASSERT_FALSE(both.ok());
  EXPECT_NE(both.status().message().find("delete"), std::string::npos);
}

TEST(JobQuery, NotRetryableSaysWhatToDo) {
  Status done = NotRetryable("k", JobState::kDone);
  EXPECT_EQ(done.CodeName(), "bad_state");
  EXPECT_NE(done.message().find("replace"), std::string::npos);
  EXPECT_NE(NotRetryable("k", JobState::kRunning).message().find("running"), std::string::npos);
}

}  // namespace
}  // namespace digestd
