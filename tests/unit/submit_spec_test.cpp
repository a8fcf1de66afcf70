// The submit checks (app/submit_spec.h): names with control characters are
// refused, naming the field (issue 10, point 7).
#include "app/submit_spec.h"

#include <gtest/gtest.h>

#include "jobs/job_kind.h"

namespace digestd {
namespace {

using nlohmann::json;

// A kind of this test's own, so the checks run whatever kinds are linked in.
class SpecTestKind : public JobKind {
 public:
  std::string_view name() const override { return "spec_test"; }
  Status Validate(const json&, const Config&) const override { return Status::Ok(); }
  WorkOutcome Run(const WorkContext&) const override { return {}; }
};
DIGESTD_REGISTER_JOB_KIND(SpecTestKind);

Status Check(const json& spec) {
  return CheckJobSpec(spec, "submit", Config{});
}

TEST(SubmitSpec, ControlCharactersInNamesAreRefusedNamingTheField) {
  for (const char* field : {"key", "group"}) {
    for (std::string bad : {std::string("a\nb"), std::string("a\0b", 3), std::string("\x1b[2J"),
                            std::string("x\x7f"), std::string("tab\there"), std::string("\r")}) {
      json spec = {{"kind", "spec_test"}, {"key", "k"}};
      spec[field] = bad;
      Status st = Check(spec);
      ASSERT_FALSE(st.ok()) << field;
      EXPECT_EQ(st.code(), Status::Code::kBadRequest);
      EXPECT_NE(st.message().find(std::string("submit: \"") + field +
                                  "\" contains a control "
                                  "character"),
                std::string::npos)
          << st.message();
    }
  }
  Status lane = Check({{"kind", "spec_test"}, {"key", "k"}, {"lane", "background\n"}});
  EXPECT_NE(lane.message().find("\"lane\" contains a control character"), std::string::npos)
      << lane.message();
  Status kind = Check({{"kind", "spec_test\n"}, {"key", "k"}});
  EXPECT_NE(kind.message().find("\"kind\" contains a control character"), std::string::npos)
      << kind.message();
}

TEST(SubmitSpec, PrintableNamesArePassed) {
  EXPECT_TRUE(Check({{"kind", "spec_test"},
                     {"key", "book:7/ch:3 — «ü» ~!@#$%^&*()"},
                     {"group", "game:abc 123"},
                     {"lane", "interactive"}})
                  .ok());
  EXPECT_EQ(FirstControlChar("abc\x1f"), std::optional<size_t>(3));
  EXPECT_EQ(FirstControlChar("abc ~"), std::nullopt);
  // 0x80-0xff are UTF-8 bytes, not control characters.
  EXPECT_EQ(FirstControlChar("\xc3\xbc\xe2\x80\x94"), std::nullopt);
}

}  // namespace
}  // namespace digestd
