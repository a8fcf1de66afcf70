// The similarity kind: its checks, and its figures against a reference the
// test computes its own way (angles from normalised vectors, a sorted null
// distribution).
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "config/config.h"
#include "jobs/job_kind.h"

namespace digestd {
namespace {

using json = nlohmann::json;

const JobKind& Similarity() {
  const JobKind* k = JobKindRegistry::Global().Find("similarity");
  EXPECT_NE(k, nullptr);
  return *k;
}

std::string Check(const json& input) {
  Status st = Similarity().Validate(input, Config());
  if (st.ok()) return "";
  EXPECT_EQ(st.code(), Status::Code::kBadRequest);
  return st.message();
}

WorkOutcome RunKind(const json& input, bool cancelled = false) {
  WorkContext ctx;
  ctx.input = std::make_shared<const json>(input);
  ctx.cancel = std::make_shared<std::atomic<bool>>(cancelled);
  ctx.progress = std::make_shared<std::atomic<uint64_t>>(0);
  ctx.config = std::make_shared<const Config>();
  return Similarity().Run(ctx);
}

std::vector<double> Unit(const std::vector<double>& v) {
  double n = 0;
  for (double x : v) n += x * x;
  n = std::sqrt(n);
  std::vector<double> out;
  for (double x : v) out.push_back(x / n);
  return out;
}

double Cos(const std::vector<double>& a, const std::vector<double>& b) {
  std::vector<double> ua = Unit(a), ub = Unit(b);
  double s = 0;
  for (size_t i = 0; i < ua.size(); ++i) s += ua[i] * ub[i];
  return s;
}

TEST(SimilarityKind, IsRegisteredAndRunsInThePool) {
  EXPECT_FALSE(Similarity().RunsOnLoop({{"a", {1}}, {"b", {1}}}, Config()));
  EXPECT_FALSE(Similarity().UsesBackend(Config()));
}

TEST(SimilarityKind, RefusesMalformedInputNamingTheField) {
  EXPECT_EQ(Check({{"a", {1, 0}}, {"b", {0, 1}}}), "");
  EXPECT_NE(Check(json::array()).find("input must be an object"), std::string::npos);
  EXPECT_NE(Check({{"a", {1, 0}}}).find("input.b is required"), std::string::npos);
  EXPECT_NE(Check({{"a", json::array()}, {"b", {1}}}).find("input.a must be a non-empty array"),
            std::string::npos);
  EXPECT_NE(Check({{"a", {1, 0}}, {"b", {1, 0, 0}}}).find("same embedding model"),
            std::string::npos);
  EXPECT_NE(Check({{"a", {1, 0}}, {"b", {1, 0}}, {"sample", {{1, 0}, {1}}}})
                .find("input.sample[1] has 1 numbers"),
            std::string::npos);
  EXPECT_NE(Check({{"a", {1}}, {"b", {1}}, {"c", 1}}).find("input.c is not a similarity field"),
            std::string::npos);
}

TEST(SimilarityKind, NumbersAreCheckedWhereTheyAreRead) {
  WorkOutcome o = RunKind({{"a", {1, "x"}}, {"b", {1, 0}}});
  EXPECT_EQ(o.kind, WorkOutcome::Kind::kFailed);
  EXPECT_NE(o.error.find("input.a[1] is not a finite number"), std::string::npos) << o.error;
  o = RunKind({{"a", {0, 0}}, {"b", {1, 0}}});
  EXPECT_EQ(o.kind, WorkOutcome::Kind::kFailed);
  EXPECT_NE(o.error.find("all zeros"), std::string::npos) << o.error;
}

TEST(SimilarityKind, MatchesAReferenceWithAndWithoutASample) {
  std::mt19937 rng(7);
  std::normal_distribution<double> g(0, 1);
  auto vec = [&](int dims) {
    std::vector<double> v(static_cast<size_t>(dims));
    for (double& x : v) x = g(rng);
    return v;
  };
  const int dims = 64;
  std::vector<double> a = vec(dims), b = a;
  for (double& x : b) x += 0.8 * g(rng);  // b near a
  std::vector<std::vector<double>> sample;
  for (int i = 0; i < 300; ++i) sample.push_back(vec(dims));

  WorkOutcome bare = RunKind({{"a", a}, {"b", b}});
  ASSERT_EQ(bare.kind, WorkOutcome::Kind::kDone) << bare.error;
  const double want = Cos(a, b);
  EXPECT_NEAR(bare.result["similarity"].get<double>(), want, 1e-12);
  EXPECT_EQ(bare.result["dims"], dims);
  EXPECT_FALSE(bare.result.contains("percentile"));

  WorkOutcome o = RunKind({{"a", a}, {"b", b}, {"sample", sample}});
  ASSERT_EQ(o.kind, WorkOutcome::Kind::kDone) << o.error;
  std::vector<double> null;
  for (const auto& s : sample) null.push_back(Cos(a, s));
  std::sort(null.begin(), null.end());
  const auto below = std::lower_bound(null.begin(), null.end(), want) - null.begin();
  const auto not_above = std::upper_bound(null.begin(), null.end(), want) - null.begin();
  const double percentile =
      100.0 * (static_cast<double>(below) + 0.5 * static_cast<double>(not_above - below)) /
      static_cast<double>(null.size());
  double mean = 0;
  for (double x : null) mean += x;
  mean /= static_cast<double>(null.size());
  double var = 0;
  for (double x : null) var += (x - mean) * (x - mean);
  const double sd = std::sqrt(var / static_cast<double>(null.size()));
  EXPECT_NEAR(o.result["percentile"].get<double>(), percentile, 1e-9);
  EXPECT_GT(o.result["percentile"].get<double>(), 90.0) << "b was built near a";
  EXPECT_EQ(o.result["rank"].get<int64_t>(),
            static_cast<int64_t>(null.end() - null.begin() - not_above) + 1);
  EXPECT_NEAR(o.result["null"]["mean"].get<double>(), mean, 1e-9);
  EXPECT_NEAR(o.result["null"]["sd"].get<double>(), sd, 1e-9);
  EXPECT_NEAR(o.result["z"].get<double>(), (want - mean) / sd, 1e-6);
  EXPECT_EQ(o.result["null"]["n"], 300);

  // A far `b` lands low in the same distribution.
  WorkOutcome far = RunKind({{"a", a}, {"b", vec(dims)}, {"sample", sample}});
  ASSERT_EQ(far.kind, WorkOutcome::Kind::kDone);
  EXPECT_LT(far.result["percentile"].get<double>(), o.result["percentile"].get<double>());
}

TEST(SimilarityKind, StopsWhenCancelled) {
  WorkOutcome o = RunKind({{"a", {1, 0}}, {"b", {0, 1}}, {"sample", {{1, 1}}}}, /*cancelled=*/true);
  EXPECT_EQ(o.kind, WorkOutcome::Kind::kCancelled);
}

TEST(SimilarityKind, TakesVectorsFromThePartsItNeeds) {
  // Part references pass the submit check; their sizes are checked at run.
  json refs = {{"a", {{"part", "e:a"}}},
               {"b", {{"part", "e:s"}, {"index", 1}}},
               {"sample", {{"part", "e:s"}}}};
  EXPECT_EQ(Check(refs), "");
  EXPECT_NE(Check({{"a", {{"part", "e:a"}, {"index", -1}}}, {"b", {1.0}}}), "");
  EXPECT_NE(Check({{"a", {{"part", "e:a"}, {"row", 0}}}, {"b", {1.0}}}), "");
  EXPECT_EQ(PartRefs(refs), (std::vector<std::string>{"e:a", "e:s"}));

  const std::vector<std::vector<double>> sample = {{1, 0, 0}, {0.6, 0.8, 0}, {0, 0, 1}};
  json in = refs;
  in[kAfterResults] = {{"e:a", {{"embeddings", {{0.9, 0.1, 0.2}}}}},
                       {"e:s", {{"embeddings", sample}}}};
  WorkOutcome out = RunKind(in);
  ASSERT_EQ(out.kind, WorkOutcome::Kind::kDone) << out.error;
  // The same job with the vectors given.
  json given = {{"a", {0.9, 0.1, 0.2}}, {"b", sample[1]}, {"sample", sample}};
  WorkOutcome ref = RunKind(given);
  ASSERT_EQ(ref.kind, WorkOutcome::Kind::kDone) << ref.error;
  EXPECT_EQ(out.result.dump(), ref.result.dump());
  EXPECT_NEAR(out.result["similarity"].get<double>(), Cos({0.9, 0.1, 0.2}, sample[1]), 1e-12);

  // A part whose result is not there, an index past its vectors, a result
  // without embeddings: failed with a message naming the part.
  json missing = refs;
  missing[kAfterResults] = {{"e:s", {{"embeddings", sample}}}};
  WorkOutcome m = RunKind(missing);
  EXPECT_EQ(m.kind, WorkOutcome::Kind::kFailed);
  EXPECT_NE(m.error.find("e:a"), std::string::npos) << m.error;
  json past = in;
  past["b"]["index"] = 3;
  WorkOutcome p = RunKind(past);
  EXPECT_EQ(p.kind, WorkOutcome::Kind::kFailed);
  EXPECT_NE(p.error.find("past the 3 vectors"), std::string::npos) << p.error;
  json text = in;
  text[kAfterResults]["e:a"] = {{"summary", "no vectors"}};
  WorkOutcome t = RunKind(text);
  EXPECT_EQ(t.kind, WorkOutcome::Kind::kFailed);
  EXPECT_NE(t.error.find("no \"embeddings\""), std::string::npos) << t.error;
}

}  // namespace
}  // namespace digestd
