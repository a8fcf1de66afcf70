#include "backend/ndjson_stream.h"

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <nlohmann/json.hpp>

#include "util/json_parse.h"

namespace digestd {

namespace {

using json = nlohmann::json;

// Length of the valid UTF-8 sequence at s[i], or 0 when it is invalid or cut.
size_t Utf8SequenceLength(std::string_view s, size_t i) {
  const auto b = static_cast<unsigned char>(s[i]);
  size_t n;
  uint32_t cp;
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) {
    n = 2;
    cp = b & 0x1F;
  } else if (b >= 0xE0 && b <= 0xEF) {
    n = 3;
    cp = b & 0x0F;
  } else if (b >= 0xF0 && b <= 0xF4) {
    n = 4;
    cp = b & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    const auto c = static_cast<unsigned char>(s[i + k]);
    if ((c & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (c & 0x3F);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
      (cp >= 0xD800 && cp <= 0xDFFF)) {
    return 0;
  }
  return n;
}

}  // namespace

// What one stream line said, as nlohmann's parser reports it
// (json::sax_parse): only the fields digestd uses are kept, and no DOM is
// built. One instance per NdjsonStream, reused for every line, so its
// string buffers keep their capacity. Duplicate keys behave as in a DOM
// parse: the last one wins. Nesting deeper than kMaxJsonDepth stops the
// parse, as ParseJsonBounded does.
class NdjsonStream::LineSax {
 public:
  enum class Type : uint8_t { kAbsent, kNull, kString, kBoolean, kNumber, kObject, kOther };

  struct Text {
    Type type = Type::kAbsent;
    std::string value;  // when kString
    void Reset() { type = Type::kAbsent; }
    // An optional string field: absent or null is "", another type is false.
    bool Read(std::string_view* out) const {
      if (type == Type::kString) *out = value;
      return type == Type::kString || type == Type::kAbsent || type == Type::kNull;
    }
  };

  struct Counter {
    Type type = Type::kAbsent;
    bool valid = true;  // false: a float out of int64's range, or NaN
    int64_t value = 0;
    void Reset() {
      type = Type::kAbsent;
      valid = true;
    }
    // An optional counter: absent or null stays empty; another type than a
    // number, or a number out of range, is false.
    bool Read(std::optional<int64_t>* out) const {
      if (type == Type::kAbsent || type == Type::kNull) return true;
      if (type != Type::kNumber || !valid) return false;
      *out = value;
      return true;
    }
  };

  enum class Outcome { kOk, kNotJson, kTooDeep };

  // Parses `line`; afterwards the accessors describe it.
  Outcome Parse(std::string_view line, NdjsonStream::Format format) {
    chat_ = format == NdjsonStream::Format::kChat;
    error.Reset();
    done = Type::kAbsent;
    done_value = false;
    model.Reset();
    text.Reset();
    thinking.Reset();
    message = Type::kAbsent;
    done_reason.Reset();
    for (Counter* c : {&prompt_eval_count, &eval_count, &total_duration, &load_duration,
                       &prompt_eval_duration, &eval_duration}) {
      c->Reset();
    }
    root_ = Type::kAbsent;
    depth_ = 0;
    in_message_ = false;
    pending_ = Slot::kNone;
    outcome_ = Outcome::kOk;
    if (!json::sax_parse(line, this) && outcome_ == Outcome::kOk) outcome_ = Outcome::kNotJson;
    return outcome_;
  }

  // The top-level value is an object.
  bool is_object() const { return root_ == Type::kObject; }

  Text error;  // its value only when a string
  Type done = Type::kAbsent;
  bool done_value = false;
  Text model;
  Text text;                     // response (generate) or message.content (chat)
  Text thinking;                 // thinking (generate) or message.thinking (chat)
  Type message = Type::kAbsent;  // chat only
  Text done_reason;
  Counter prompt_eval_count, eval_count, total_duration, load_duration, prompt_eval_duration,
      eval_duration;

  // nlohmann's SAX interface. Returning false stops the parse.
  bool null() { return Value(Type::kNull); }
  bool boolean(bool v) {
    if (pending_ == Slot::kDone) done_value = v;
    return Value(Type::kBoolean);
  }
  bool number_integer(json::number_integer_t v) {
    if (Counter* c = PendingCounter()) c->value = v;
    return Value(Type::kNumber);
  }
  bool number_unsigned(json::number_unsigned_t v) {
    if (Counter* c = PendingCounter()) {
      c->value = static_cast<int64_t>(std::min<uint64_t>(v, INT64_MAX));
    }
    return Value(Type::kNumber);
  }
  bool number_float(json::number_float_t v, const json::string_t&) {
    if (Counter* c = PendingCounter()) {
      c->valid = v > -9.2e18 && v < 9.2e18;  // also refuses NaN
      c->value = c->valid ? static_cast<int64_t>(v) : 0;
    }
    return Value(Type::kNumber);
  }
  bool string(json::string_t& v) {
    if (Text* t = PendingText()) t->value.assign(v);
    return Value(Type::kString);
  }
  bool binary(json::binary_t&) { return Value(Type::kOther); }
  bool start_object(std::size_t) {
    const bool message_value = pending_ == Slot::kMessage;
    if (!Value(Type::kObject) || !Enter()) return false;
    if (message_value) in_message_ = true;  // at depth 2 now; cleared back at depth 1
    return true;
  }
  bool end_object() {
    --depth_;
    if (depth_ <= 1) in_message_ = false;
    return true;
  }
  bool start_array(std::size_t) { return Value(Type::kOther) && Enter(); }
  bool end_array() {
    --depth_;
    return true;
  }
  bool key(json::string_t& k) {
    pending_ = Slot::kNone;
    if (depth_ == 1) {
      pending_ = TopLevelSlot(k);
      if (pending_ == Slot::kMessage) {  // a later "message" replaces the earlier one
        text.Reset();
        thinking.Reset();
      }
    } else if (depth_ == 2 && in_message_) {
      if (k == "content") pending_ = Slot::kText;
      if (k == "thinking") pending_ = Slot::kThinking;
    }
    return true;
  }
  template <class Exception>
  bool parse_error(std::size_t, const std::string&, const Exception&) {
    outcome_ = Outcome::kNotJson;
    return false;
  }

 private:
  enum class Slot {
    kNone,
    kError,
    kDone,
    kModel,
    kText,
    kThinking,
    kMessage,
    kDoneReason,
    kPromptEvalCount,
    kEvalCount,
    kTotalDuration,
    kLoadDuration,
    kPromptEvalDuration,
    kEvalDuration,
  };

  Slot TopLevelSlot(std::string_view k) const {
    if (k == "done") return Slot::kDone;
    if (k == "model") return Slot::kModel;
    if (k == "error") return Slot::kError;
    if (chat_) {
      if (k == "message") return Slot::kMessage;
    } else {
      if (k == "response") return Slot::kText;
      if (k == "thinking") return Slot::kThinking;
    }
    if (k == "done_reason") return Slot::kDoneReason;
    if (k == "prompt_eval_count") return Slot::kPromptEvalCount;
    if (k == "eval_count") return Slot::kEvalCount;
    if (k == "total_duration") return Slot::kTotalDuration;
    if (k == "load_duration") return Slot::kLoadDuration;
    if (k == "prompt_eval_duration") return Slot::kPromptEvalDuration;
    if (k == "eval_duration") return Slot::kEvalDuration;
    return Slot::kNone;
  }

  Text* PendingText() {
    switch (pending_) {
      case Slot::kError:
        return &error;
      case Slot::kModel:
        return &model;
      case Slot::kText:
        return &text;
      case Slot::kThinking:
        return &thinking;
      case Slot::kDoneReason:
        return &done_reason;
      default:
        return nullptr;
    }
  }

  Counter* PendingCounter() {
    switch (pending_) {
      case Slot::kPromptEvalCount:
        return &prompt_eval_count;
      case Slot::kEvalCount:
        return &eval_count;
      case Slot::kTotalDuration:
        return &total_duration;
      case Slot::kLoadDuration:
        return &load_duration;
      case Slot::kPromptEvalDuration:
        return &prompt_eval_duration;
      case Slot::kEvalDuration:
        return &eval_duration;
      default:
        return nullptr;
    }
  }

  // A value of `type` arrived: it belongs to the pending key, if any.
  bool Value(Type type) {
    if (depth_ == 0) root_ = type;
    if (Text* t = PendingText()) {
      t->type = type;
    } else if (Counter* c = PendingCounter()) {
      c->type = type;
      if (type != Type::kNumber) c->valid = true;
    } else if (pending_ == Slot::kDone) {
      done = type;
    } else if (pending_ == Slot::kMessage) {
      message = type;
    }
    pending_ = Slot::kNone;
    return true;
  }

  bool Enter() {
    if (++depth_ > kMaxJsonDepth) {
      outcome_ = Outcome::kTooDeep;
      return false;
    }
    return true;
  }

  bool chat_ = false;
  Type root_ = Type::kAbsent;
  int depth_ = 0;
  bool in_message_ = false;
  Slot pending_ = Slot::kNone;
  Outcome outcome_ = Outcome::kOk;
};

std::string Excerpt(std::string_view raw, size_t max_bytes) {
  std::string out;
  size_t i = 0;
  while (i < raw.size()) {
    size_t n = Utf8SequenceLength(raw, i);
    size_t add = n == 0 ? 3 : n;  // U+FFFD takes three bytes
    if (out.size() + add > max_bytes) {
      out += "\u2026";
      return out;
    }
    if (n == 0) {
      out += "\uFFFD";
      i += 1;
    } else if (n == 1) {
      const auto c = static_cast<unsigned char>(raw[i]);
      out += (c < 0x20 || c == 0x7F) ? ' ' : raw[i];
      i += 1;
    } else {
      out.append(raw.substr(i, n));
      i += n;
    }
  }
  return out;
}

NdjsonStream::NdjsonStream(Format format, Limits limits)
    : format_(format), limits_(limits), sax_(std::make_unique<LineSax>()) {}

NdjsonStream::~NdjsonStream() = default;
NdjsonStream::NdjsonStream(NdjsonStream&&) noexcept = default;
NdjsonStream& NdjsonStream::operator=(NdjsonStream&&) noexcept = default;

bool NdjsonStream::Feed(std::string_view bytes) {
  while (!bytes.empty() && !failed() && !done_) {
    size_t nl = bytes.find('\n');
    if (nl == std::string_view::npos) {
      if (partial_.size() + bytes.size() > limits_.max_line_bytes) {
        Fail(Failure::kTooLarge,
             "Ollama sent a line longer than " + std::to_string(limits_.max_line_bytes) + " bytes");
        break;
      }
      partial_.append(bytes);
      break;
    }
    std::string_view piece = bytes.substr(0, nl);
    bytes.remove_prefix(nl + 1);
    if (partial_.size() + piece.size() > limits_.max_line_bytes) {
      Fail(Failure::kTooLarge,
           "Ollama sent a line longer than " + std::to_string(limits_.max_line_bytes) + " bytes");
      break;
    }
    if (partial_.empty()) {
      Line(piece);  // the common case: the whole line arrived in this piece
    } else {
      partial_.append(piece);
      Line(partial_);
      partial_.clear();  // keeps its capacity for the next split line
    }
  }
  return !failed();
}

bool NdjsonStream::Finish() {
  if (!finished_) {
    finished_ = true;
    if (!failed() && !done_ && !partial_.empty()) {
      Line(partial_);
      partial_.clear();
    }
    if (!failed() && !done_) {
      Fail(Failure::kIncomplete, lines_ == 0
                                     ? "Ollama closed the stream before sending anything"
                                     : "Ollama closed the stream after " + std::to_string(lines_) +
                                           " lines without the final done line");
    }
  }
  return done_ && !failed();
}

void NdjsonStream::Fail(Failure failure, std::string message) {
  if (failed()) return;
  failure_ = failure;
  error_ = std::move(message);
}

bool NdjsonStream::AppendText(std::string* to, std::string_view piece) {
  if (text_.size() + thinking_.size() + piece.size() > limits_.max_text_bytes) {
    Fail(Failure::kTooLarge,
         "Ollama's answer grew beyond " + std::to_string(limits_.max_text_bytes) + " bytes");
    return false;
  }
  to->append(piece);
  return true;
}

void NdjsonStream::Line(std::string_view line) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  if (line.find_first_not_of(" \t\r") == std::string_view::npos) return;  // blank
  ++lines_;
  auto malformed = [&](std::string_view what) {
    Fail(Failure::kMalformed, "Ollama sent " + std::string(what) + ": " + Excerpt(line));
  };
  LineSax& j = *sax_;
  switch (j.Parse(line, format_)) {
    case LineSax::Outcome::kOk:
      break;
    case LineSax::Outcome::kTooDeep:
      return malformed("a line nested too deeply");
    case LineSax::Outcome::kNotJson:
      return malformed("a line that is not JSON");
  }
  if (!j.is_object()) return malformed("a line that is not a JSON object");

  if (j.error.type != LineSax::Type::kAbsent) {
    std::string message;
    if (j.error.type == LineSax::Type::kString) {
      message = Excerpt(j.error.value, 2000);
    } else {
      // Not Ollama's shape, and rare: quote the value as JSON text.
      json whole = TryParseJsonBounded(line);
      auto err = whole.is_object() ? whole.find("error") : whole.end();
      message = Excerpt(err != whole.end() ? err->dump() : std::string("null"), 2000);
    }
    if (message.empty()) message = "Ollama reported an error with an empty message";
    Fail(Failure::kErrorLine, std::move(message));
    return;
  }

  if (j.done != LineSax::Type::kBoolean) {
    return malformed("a line without a boolean \"done\"");
  }
  std::string_view model;
  if (!j.model.Read(&model)) return malformed("a line whose \"model\" is not a string");
  if (!model.empty()) model_ = model;

  std::string_view text, thinking;
  if (format_ == Format::kGenerate) {
    if (!j.text.Read(&text)) return malformed("a line whose \"response\" is not a string");
    if (!j.thinking.Read(&thinking)) {
      return malformed("a line whose \"thinking\" is not a string");
    }
  } else if (j.message != LineSax::Type::kAbsent && j.message != LineSax::Type::kNull) {
    if (j.message != LineSax::Type::kObject) {
      return malformed("a line whose \"message\" is not an object");
    }
    if (!j.text.Read(&text)) {
      return malformed("a line whose \"message.content\" is not a string");
    }
    if (!j.thinking.Read(&thinking)) {
      return malformed("a line whose \"message.thinking\" is not a string");
    }
  }
  if (!AppendText(&text_, text) || !AppendText(&thinking_, thinking)) return;

  if (!j.done_value) return;
  std::string_view reason;
  if (!j.done_reason.Read(&reason)) {
    return malformed("a final line whose \"done_reason\" is not a string");
  }
  GenerationMetrics m;
  if (!j.prompt_eval_count.Read(&m.prompt_eval_count) || !j.eval_count.Read(&m.eval_count) ||
      !j.total_duration.Read(&m.total_duration_ns) || !j.load_duration.Read(&m.load_duration_ns) ||
      !j.prompt_eval_duration.Read(&m.prompt_eval_duration_ns) ||
      !j.eval_duration.Read(&m.eval_duration_ns)) {
    return malformed("a final line with a counter that is not a number");
  }
  done_reason_ = reason;
  metrics_ = m;
  done_ = true;
  partial_.clear();
}

}  // namespace digestd
