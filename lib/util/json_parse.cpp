#include "util/json_parse.h"

namespace digestd {

namespace {

using json = nlohmann::json;

// Forwards every event to nlohmann's own DOM builder, counting depth on the
// way; stops the parse (returns false) at the first level past the bound.
class BoundedSax {
 public:
  BoundedSax(json* out, int max_depth, bool allow_exceptions)
      : dom_(*out, allow_exceptions), max_depth_(max_depth) {}

  bool null() { return dom_.null(); }
  bool boolean(bool v) { return dom_.boolean(v); }
  bool number_integer(json::number_integer_t v) { return dom_.number_integer(v); }
  bool number_unsigned(json::number_unsigned_t v) { return dom_.number_unsigned(v); }
  bool number_float(json::number_float_t v, const json::string_t& s) {
    return dom_.number_float(v, s);
  }
  bool string(json::string_t& v) { return dom_.string(v); }
  bool binary(json::binary_t& v) { return dom_.binary(v); }
  bool start_object(std::size_t n) { return Enter() && dom_.start_object(n); }
  bool key(json::string_t& k) { return dom_.key(k); }
  bool end_object() {
    --depth_;
    return dom_.end_object();
  }
  bool start_array(std::size_t n) { return Enter() && dom_.start_array(n); }
  bool end_array() {
    --depth_;
    return dom_.end_array();
  }
  template <class Exception>
  bool parse_error(std::size_t pos, const std::string& token, const Exception& ex) {
    return dom_.parse_error(pos, token, ex);
  }

  bool too_deep() const { return too_deep_; }

 private:
  bool Enter() {
    if (++depth_ > max_depth_) {
      too_deep_ = true;
      return false;
    }
    return true;
  }

  nlohmann::detail::json_sax_dom_parser<json> dom_;
  int max_depth_;
  int depth_ = 0;
  bool too_deep_ = false;
};

}  // namespace

json ParseJsonBounded(std::string_view text, int max_depth) {
  json out;
  BoundedSax sax(&out, max_depth, /*allow_exceptions=*/true);
  if (!json::sax_parse(text, &sax) || sax.too_deep()) {
    // Without an exception, only the depth bound stops the parse.
    throw JsonTooDeep(max_depth);
  }
  return out;
}

json TryParseJsonBounded(std::string_view text, int max_depth) noexcept {
  try {
    json out;
    BoundedSax sax(&out, max_depth, /*allow_exceptions=*/false);
    if (!json::sax_parse(text, &sax) || sax.too_deep()) return json(json::value_t::discarded);
    return out;
  } catch (...) {
    // allocation failure; nothing else throws with exceptions off
    return json(json::value_t::discarded);
  }
}

}  // namespace digestd
