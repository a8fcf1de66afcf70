#include "backend/ndjson_stream.h"

#include <algorithm>
#include <cstdint>
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

// Reads an optional counter; false when present with a type Ollama never sends.
bool ReadCounter(const json& j, const char* key, std::optional<int64_t>* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return true;
  if (it->is_number_integer()) {
    *out = it->get<int64_t>();
  } else if (it->is_number_unsigned()) {
    *out = static_cast<int64_t>(std::min<uint64_t>(it->get<uint64_t>(), INT64_MAX));
  } else if (it->is_number_float()) {
    double v = it->get<double>();
    if (!(v > -9.2e18 && v < 9.2e18)) return false;  // also refuses NaN
    *out = static_cast<int64_t>(v);
  } else {
    return false;
  }
  return true;
}

// Reads an optional string field; false when present with another type.
bool ReadString(const json& j, const char* key, std::string_view* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return true;
  if (!it->is_string()) return false;
  *out = it->get_ref<const std::string&>();
  return true;
}

}  // namespace

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

NdjsonStream::NdjsonStream(Format format, Limits limits) : format_(format), limits_(limits) {}

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
      std::string line = std::move(partial_);
      partial_.clear();
      Line(line);
    }
  }
  return !failed();
}

bool NdjsonStream::Finish() {
  if (!finished_) {
    finished_ = true;
    if (!failed() && !done_ && !partial_.empty()) {
      std::string line = std::move(partial_);
      partial_.clear();
      Line(line);
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
  json j;
  try {
    j = ParseJsonBounded(line);
  } catch (const JsonTooDeep&) {
    return malformed("a line nested too deeply");
  } catch (const json::exception&) {
    return malformed("a line that is not JSON");
  }
  if (!j.is_object()) return malformed("a line that is not a JSON object");

  if (auto err = j.find("error"); err != j.end()) {
    std::string message =
        Excerpt(err->is_string() ? err->get_ref<const std::string&>() : err->dump(), 2000);
    if (message.empty()) message = "Ollama reported an error with an empty message";
    Fail(Failure::kErrorLine, std::move(message));
    return;
  }

  auto done = j.find("done");
  if (done == j.end() || !done->is_boolean()) {
    return malformed("a line without a boolean \"done\"");
  }
  std::string_view model;
  if (!ReadString(j, "model", &model)) return malformed("a line whose \"model\" is not a string");
  if (!model.empty()) model_ = model;

  std::string_view text, thinking;
  if (format_ == Format::kGenerate) {
    if (!ReadString(j, "response", &text)) {
      return malformed("a line whose \"response\" is not a string");
    }
    if (!ReadString(j, "thinking", &thinking)) {
      return malformed("a line whose \"thinking\" is not a string");
    }
  } else {
    auto message = j.find("message");
    if (message != j.end() && !message->is_null()) {
      if (!message->is_object()) return malformed("a line whose \"message\" is not an object");
      if (!ReadString(*message, "content", &text)) {
        return malformed("a line whose \"message.content\" is not a string");
      }
      if (!ReadString(*message, "thinking", &thinking)) {
        return malformed("a line whose \"message.thinking\" is not a string");
      }
    }
  }
  if (!AppendText(&text_, text) || !AppendText(&thinking_, thinking)) return;

  if (!done->get<bool>()) return;
  std::string_view reason;
  if (!ReadString(j, "done_reason", &reason)) {
    return malformed("a final line whose \"done_reason\" is not a string");
  }
  GenerationMetrics m;
  if (!ReadCounter(j, "prompt_eval_count", &m.prompt_eval_count) ||
      !ReadCounter(j, "eval_count", &m.eval_count) ||
      !ReadCounter(j, "total_duration", &m.total_duration_ns) ||
      !ReadCounter(j, "load_duration", &m.load_duration_ns) ||
      !ReadCounter(j, "prompt_eval_duration", &m.prompt_eval_duration_ns) ||
      !ReadCounter(j, "eval_duration", &m.eval_duration_ns)) {
    return malformed("a final line with a counter that is not a number");
  }
  done_reason_ = reason;
  metrics_ = m;
  done_ = true;
  partial_.clear();
}

}  // namespace digestd
