// Submit-time checks of the LLM job kinds, the summary fallback and the
// built-in extractive backend. No server needed (see ollama_client_test.cpp
// for the kinds run against the fake Ollama).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "config/config.h"
#include "jobs/job_kind.h"
#include "jobs/summarize_fallback.h"

namespace digestd {
namespace {

using json = nlohmann::json;

const JobKind& Kind(const char* name) {
  const JobKind* k = JobKindRegistry::Global().Find(name);
  EXPECT_NE(k, nullptr) << name;
  return *k;
}

// The message of Validate's error, or "" when the input is accepted.
std::string Check(const char* kind, const json& input, const Config& config = Config()) {
  Status st = Kind(kind).Validate(input, config);
  if (st.ok()) return "";
  EXPECT_EQ(st.code(), Status::Code::kBadRequest);
  return st.message();
}

MATCHER_P(Mentions, text, "") {
  return arg.find(text) != std::string::npos;
}

TEST(LlmJobKinds, AreRegistered) {
  for (const char* name : {"summarize", "generate", "embed"}) {
    EXPECT_NE(JobKindRegistry::Global().Find(name), nullptr) << name;
  }
}

// A noop without a sleep has nothing to hand to a pool thread; with one it
// would block the loop.
TEST(NoopKind, RunsOnTheLoopOnlyWithoutASleep) {
  const Config config;
  EXPECT_TRUE(Kind("noop").RunsOnLoop(json::object(), config));
  EXPECT_TRUE(Kind("noop").RunsOnLoop({{"sleep_ms", 0}}, config));
  EXPECT_FALSE(Kind("noop").RunsOnLoop({{"sleep_ms", 1}}, config));
  EXPECT_FALSE(Kind("summarize").RunsOnLoop({{"text", "Once."}}, config));
}

TEST(SummarizeValidate, AcceptsTheDocumentedFields) {
  EXPECT_EQ(Check("summarize", {{"text", "Once."}}), "");
  EXPECT_EQ(Check("summarize", {{"text", "Once."},
                                {"title", "Ch 1"},
                                {"context", "Before."},
                                {"max_words", 50},
                                {"model", "qwen3:8b"}}),
            "");
  EXPECT_EQ(Check("summarize", {{"text", "Once."}, {"title", nullptr}}), "");
}

TEST(SummarizeValidate, NamesTheBadField) {
  EXPECT_THAT(Check("summarize", json::array()), Mentions("input must be an object"));
  EXPECT_THAT(Check("summarize", json::object()), Mentions("input.text is required"));
  EXPECT_THAT(Check("summarize", {{"text", 5}}), Mentions("input.text must be a string"));
  EXPECT_THAT(Check("summarize", {{"text", "  \n"}}), Mentions("input.text must not be empty"));
  EXPECT_THAT(Check("summarize", {{"text", "a"}, {"title", 1}}),
              Mentions("input.title must be a string"));
  EXPECT_THAT(Check("summarize", {{"text", "a"}, {"context", true}}),
              Mentions("input.context must be a string"));
  EXPECT_THAT(Check("summarize", {{"text", "a"}, {"max_words", 0}}), Mentions("input.max_words"));
  EXPECT_THAT(Check("summarize", {{"text", "a"}, {"max_words", 1001}}),
              Mentions("input.max_words"));
  EXPECT_THAT(Check("summarize", {{"text", "a"}, {"max_words", "ten"}}),
              Mentions("input.max_words"));
  EXPECT_THAT(Check("summarize", {{"text", "a"}, {"model", ""}}), Mentions("input.model"));
  EXPECT_THAT(Check("summarize", {{"text", "a"}, {"model", "two words"}}), Mentions("input.model"));
  EXPECT_THAT(Check("summarize", {{"text", "a"}, {"prompt", "x"}}),
              Mentions("input.prompt is not a field"));
}

TEST(SummarizeValidate, TextOverMaxInputBytesIsRefused) {
  Config config;
  config.backend.max_input_bytes = 2048;
  EXPECT_EQ(Check("summarize", {{"text", std::string(2048, 'a')}}, config), "");
  std::string msg = Check("summarize", {{"text", std::string(2049, 'a')}}, config);
  EXPECT_THAT(msg, Mentions("input.text is 2049 bytes"));
  EXPECT_THAT(msg, Mentions("[backend] max_input_bytes"));
  EXPECT_THAT(Check("summarize", {{"text", "a"}, {"context", std::string(3000, 'c')}}, config),
              Mentions("input.context is 3000 bytes"));
}

TEST(GenerateValidate, AcceptsTheDocumentedFields) {
  EXPECT_EQ(Check("generate", {{"prompt", "Hi"}}), "");
  EXPECT_EQ(Check("generate",
                  {{"prompt", "Hi"},
                   {"system", "Be brief."},
                   {"model", "llama3.2"},
                   {"options",
                    {{"temperature", 0.2}, {"num_predict", 64}, {"seed", 7}, {"stop", {"\n\n"}}}},
                   {"format", {{"type", "object"}}},
                   {"think", "low"}}),
            "");
  EXPECT_EQ(Check("generate", {{"prompt", "Hi"}, {"format", "json"}, {"think", true}}), "");
}

TEST(GenerateValidate, NamesTheBadField) {
  EXPECT_THAT(Check("generate", json::object()), Mentions("input.prompt is required"));
  EXPECT_THAT(Check("generate", {{"prompt", ""}}), Mentions("input.prompt must not be empty"));
  EXPECT_THAT(Check("generate", {{"prompt", "x"}, {"system", 3}}),
              Mentions("input.system must be a string"));
  EXPECT_THAT(Check("generate", {{"prompt", "x"}, {"options", "hot"}}),
              Mentions("input.options must be an object"));
  EXPECT_THAT(Check("generate", {{"prompt", "x"}, {"options", {{"temperature", "hot"}}}}),
              Mentions("input.options.temperature must be a number"));
  EXPECT_THAT(Check("generate", {{"prompt", "x"}, {"options", {{"num_predict", 1.5}}}}),
              Mentions("input.options.num_predict must be an integer"));
  EXPECT_THAT(Check("generate", {{"prompt", "x"}, {"options", {{"stop", "x"}}}}),
              Mentions("input.options.stop"));
  EXPECT_THAT(Check("generate", {{"prompt", "x"}, {"options", {{"max_tokens", 5}}}}),
              Mentions("input.options.max_tokens is not an option"));
  EXPECT_THAT(Check("generate", {{"prompt", "x"}, {"format", "yaml"}}), Mentions("input.format"));
  EXPECT_THAT(Check("generate", {{"prompt", "x"}, {"think", "very"}}), Mentions("input.think"));
  EXPECT_THAT(Check("generate", {{"prompt", "x"}, {"messages", json::array()}}),
              Mentions("input.messages is not a field"));
}

TEST(GenerateValidate, OptionsThatForceAModelReloadAreRefused) {
  for (const char* key :
       {"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread"}) {
    EXPECT_THAT(Check("generate", {{"prompt", "x"}, {"options", {{key, 4096}}}}),
                Mentions("reload the model"))
        << key;
  }
}

TEST(EmbedValidate, AcceptsTexts) {
  EXPECT_EQ(Check("embed", {{"texts", {"a", "b"}}}), "");
  EXPECT_EQ(Check("embed", {{"texts", {"a"}}, {"model", "all-minilm"}}), "");
}

TEST(EmbedValidate, NamesTheBadField) {
  EXPECT_THAT(Check("embed", json::object()), Mentions("input.texts is required"));
  EXPECT_THAT(Check("embed", {{"texts", "a"}}), Mentions("input.texts must be an array"));
  EXPECT_THAT(Check("embed", {{"texts", json::array()}}), Mentions("at least one"));
  EXPECT_THAT(Check("embed", {{"texts", {"a", 2}}}), Mentions("input.texts[1] must be a string"));
  EXPECT_THAT(Check("embed", {{"texts", {"a", " "}}}),
              Mentions("input.texts[1] must not be empty"));
  EXPECT_THAT(Check("embed", {{"texts", {"a"}}, {"text", "b"}}), Mentions("input.text is not"));
}

TEST(EmbedValidate, TooManyOrTooLargeTextsAreRefused) {
  Config config;
  config.backend.max_embed_texts = 3;
  config.backend.max_input_bytes = 1024;
  EXPECT_EQ(Check("embed", {{"texts", {"a", "b", "c"}}}, config), "");
  std::string many = Check("embed", {{"texts", {"a", "b", "c", "d"}}}, config);
  EXPECT_THAT(many, Mentions("input.texts holds 4 texts"));
  EXPECT_THAT(many, Mentions("[backend] max_embed_texts"));
  EXPECT_THAT(Check("embed", {{"texts", {std::string(600, 'a'), std::string(600, 'b')}}}, config),
              Mentions("[backend] max_input_bytes"));
}

TEST(ExtractiveBackend, RefusesGenerateAndEmbedAtSubmit) {
  Config config;
  config.backend.kind = "extractive";
  EXPECT_THAT(Check("generate", {{"prompt", "x"}}, config), Mentions("extractive"));
  EXPECT_THAT(Check("embed", {{"texts", {"x"}}}, config), Mentions("extractive"));
  EXPECT_EQ(Check("summarize", {{"text", "x"}}, config), "");
}

WorkOutcome RunWith(const char* kind, const json& input, const Config& config) {
  WorkContext ctx;
  ctx.key = "k";
  ctx.input = std::make_shared<const json>(input);
  ctx.cancel = std::make_shared<std::atomic<bool>>(false);
  ctx.config = std::make_shared<const Config>(config);
  return Kind(kind).Run(ctx);
}

TEST(ExtractiveBackend, SummarizesWithLeadingSentences) {
  Config config;
  config.backend.kind = "extractive";
  WorkOutcome out = RunWith(
      "summarize",
      {{"text", "Mr. Brown woke early. He fed the cat. Then he left."}, {"max_words", 8}}, config);
  ASSERT_EQ(out.kind, WorkOutcome::Kind::kDone) << out.error;
  EXPECT_EQ(out.result["summary"], "Mr. Brown woke early. He fed the cat.");
  EXPECT_EQ(out.result["model"], "extractive");
  EXPECT_EQ(out.result["fallback"], false);
  EXPECT_EQ(out.backend_ns, 0u);
}

TEST(SummaryFallback, ExtractiveUsesTheJobsMaxWords) {
  Config config;
  config.summarize.fallback = "extractive";
  json r = SummaryFallback({{"text", "One two. Three four. Five six."}, {"max_words", 4}}, config);
  EXPECT_EQ(r["summary"], "One two. Three four.");
  EXPECT_EQ(r["fallback"], true);
  EXPECT_EQ(r["model"], "extractive");
}

TEST(SummaryFallback, ExtractiveUsesConfigMaxWordsByDefault) {
  Config config;
  config.summarize.max_words = 2;
  json r = SummaryFallback({{"text", "One two. Three four."}}, config);
  EXPECT_EQ(r["summary"], "One two.");
}

TEST(SummaryFallback, PlaceholderAndNone) {
  Config config;
  config.summarize.fallback = "placeholder";
  config.summarize.placeholder_text = "Coming soon.";
  json r = SummaryFallback({{"text", "Whatever."}}, config);
  EXPECT_EQ(r["summary"], "Coming soon.");
  EXPECT_EQ(r["fallback"], true);
  config.summarize.fallback = "none";
  EXPECT_TRUE(SummaryFallback({{"text", "Whatever."}}, config).is_null());
}

TEST(SummaryFallback, SurvivesInputItNeverValidated) {
  Config config;
  config.summarize.placeholder_text = "n/a";
  EXPECT_EQ(SummaryFallback(json::array(), config)["summary"], "n/a");
  EXPECT_EQ(SummaryFallback({{"text", 7}, {"max_words", "x"}}, config)["summary"], "n/a");
}

TEST(FinalFailureResult, SummarizeStoresTheConfiguredFallback) {
  const JobKind& summarize = Kind("summarize");
  Config config;
  const json input = {{"text", "One two. Three four. Five six."}, {"max_words", 4}};
  for (const char* fallback : {"extractive", "placeholder", "none"}) {
    config.summarize.fallback = fallback;
    EXPECT_EQ(summarize.FinalFailureResult(input, config), SummaryFallback(input, config))
        << fallback;
  }
  config.summarize.fallback = "extractive";
  json r = summarize.FinalFailureResult(input, config);
  EXPECT_EQ(r["summary"], "One two. Three four.");
  EXPECT_EQ(r["fallback"], true);
  config.summarize.fallback = "none";
  EXPECT_TRUE(summarize.FinalFailureResult(input, config).is_null());
  // Input that never passed Validate still gets a stand-in, never a throw.
  config.summarize.fallback = "placeholder";
  config.summarize.placeholder_text = "n/a";
  EXPECT_EQ(summarize.FinalFailureResult(json::array(), config)["summary"], "n/a");
}

TEST(FinalFailureResult, OtherKindsStoreTheFailure) {
  Config config;
  config.summarize.fallback = "placeholder";  // a summarize setting: no other kind uses it
  for (const char* name : {"generate", "embed", "noop"}) {
    EXPECT_TRUE(Kind(name).FinalFailureResult({{"text", "x"}}, config).is_null()) << name;
  }
}

TEST(BackendConfig, KeysParseAndAreChecked) {
  auto ok = ParseConfig(
      "[backend]\nkind = \"extractive\"\nurl = \"http://gpu.local:11434\"\nnum_ctx = 0\n"
      "keep_alive = \"1h30m\"\nbackoff_base_ms = 100\nbackoff_max_ms = 100\n"
      "[summarize]\nfallback = \"placeholder\"\nmax_words = 50\nnum_predict = 100\n",
      "t.conf");
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  EXPECT_EQ(ok->backend.kind, "extractive");
  EXPECT_EQ(ok->backend.keep_alive, "1h30m");
  EXPECT_EQ(ok->summarize.fallback, "placeholder");

  auto bad = [](const std::string& text) {
    auto r = ParseConfig(text, "t.conf");
    return r.ok() ? std::string() : r.status().message();
  };
  EXPECT_THAT(bad("[backend]\nkind = \"openai\"\n"), Mentions("[backend] kind"));
  EXPECT_THAT(bad("[backend]\nurl = \"127.0.0.1:11434\"\n"), Mentions("[backend] url"));
  EXPECT_THAT(bad("[backend]\nkeep_alive = \"3600\"\n"), Mentions("[backend] keep_alive"));
  EXPECT_THAT(bad("[backend]\nbackoff_base_ms = 5000\nbackoff_max_ms = 1000\n"),
              Mentions("backoff_base_ms = 5000 is larger than backoff_max_ms"));
  EXPECT_THAT(bad("[backend]\nfirst_byte_timeout_s = 600\nrequest_timeout_s = 60\n"),
              Mentions("first_byte_timeout_s = 600"));
  EXPECT_THAT(bad("[summarize]\nfallback = \"blank\"\n"), Mentions("[summarize] fallback"));
  EXPECT_THAT(bad("[summarize]\nmax_words = 300\nnum_predict = 200\n"),
              Mentions("num_predict = 200 is smaller than max_words = 300"));
  EXPECT_THAT(bad("[backend]\nmax_attempts = 0\n"), Mentions("[backend] max_attempts"));
}

TEST(BackendConfig, TimeoutsAttemptsBackoffAndBreakerAreReloadable) {
  for (const auto& k : ConfigKeys()) {
    if (k.section != "backend") continue;
    bool want = k.name != "kind" && k.name != "url" && k.name != "num_ctx";
    EXPECT_EQ(k.reloadable, want) << k.name;
  }
}

}  // namespace
}  // namespace digestd
