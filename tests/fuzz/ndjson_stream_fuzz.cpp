// Fuzzes NdjsonStream, the parser of the body Ollama streams back from
// /api/generate and /api/chat (lib/backend/ndjson_stream.h). The body comes
// from the network, so any bytes, cut at any point, must end in text or a
// failure, never a crash; and the header's promises must hold however the
// body is cut into pieces.
//
// Input layout (so the seed corpus stays readable):
//   byte 0      the Format: 'g' (or any byte with bit 2 set) is generate,
//               'c' (bit 2 clear) is chat
//   byte 1      the Limits: even ('0') the defaults; odd, small limits taken
//               from its other bits, so kTooLarge is reachable
//   byte 2      n = byte & 7 piece sizes follow ('3': three)
//   n bytes     the sizes of the pieces Feed() gets, used in turn ('!' is
//               33 bytes); 0 feeds an empty piece; no sizes (or only zeros)
//               feeds the rest whole
//   the rest    the body
// A shorter input is a body with the default settings.
//
// Checked, besides no crash and no sanitizer report:
//   - Feed() returns !failed(); text() and thinking() only grow; once the
//     stream has failed, or seen its done line, nothing more changes, and a
//     stream is never both done and failed;
//   - the outcome (text, failure, error, done, counters) is the same as when
//     the whole body is fed at once, or a line at a time: piece boundaries
//     never matter;
//   - Finish() returns done() && !failed(), leaves the stream done or failed,
//     and is idempotent; a stream that saw done:true finishes true;
//   - error() is empty exactly when nothing failed; retryable() is kErrorLine
//     or kIncomplete; text, thinking and error stay within their limits and
//     are valid UTF-8 (they are stored as JSON);
//   - a stream that has not failed, given a well-formed done line, finishes
//     true with that line's text at the end, whatever follows that line.
//
// An invariant that does not hold calls abort(), which libFuzzer reports as
// a crash with the input that caused it.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "backend/ndjson_stream.h"

namespace {

using digestd::NdjsonStream;

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "ndjson_stream_fuzz: invariant broken: %s\n", what);
    std::abort();
  }
}

bool StartsWith(const std::string& s, const std::string& prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

bool ValidUtf8(const std::string& s) {
  try {
    (void)nlohmann::json(s).dump();  // strict: throws on invalid UTF-8
    return true;
  } catch (const nlohmann::json::exception&) {
    return false;
  }
}

// Everything a caller can observe.
struct Snapshot {
  std::string text, thinking, error, model, done_reason;
  NdjsonStream::Failure failure;
  bool done;
  size_t lines;
  digestd::GenerationMetrics metrics;

  explicit Snapshot(const NdjsonStream& s)
      : text(s.text()),
        thinking(s.thinking()),
        error(s.error()),
        model(s.model()),
        done_reason(s.done_reason()),
        failure(s.failure()),
        done(s.done()),
        lines(s.lines()),
        metrics(s.metrics()) {}

  bool operator==(const Snapshot& o) const {
    const auto& a = metrics;
    const auto& b = o.metrics;
    return text == o.text && thinking == o.thinking && error == o.error && model == o.model &&
           done_reason == o.done_reason && failure == o.failure && done == o.done &&
           lines == o.lines && a.prompt_eval_count == b.prompt_eval_count &&
           a.eval_count == b.eval_count && a.total_duration_ns == b.total_duration_ns &&
           a.load_duration_ns == b.load_duration_ns &&
           a.prompt_eval_duration_ns == b.prompt_eval_duration_ns &&
           a.eval_duration_ns == b.eval_duration_ns;
  }
};

void CheckState(const NdjsonStream& s, const NdjsonStream::Limits& limits) {
  Check(!(s.done() && s.failed()), "nothing fails after the done line");
  Check(s.error().empty() == !s.failed(), "error() is empty exactly when nothing failed");
  Check(s.retryable() == (s.failure() == NdjsonStream::Failure::kErrorLine ||
                          s.failure() == NdjsonStream::Failure::kIncomplete),
        "retryable() is kErrorLine or kIncomplete");
  Check(s.text().size() + s.thinking().size() <= limits.max_text_bytes,
        "text() plus thinking() stay within max_text_bytes");
  Check(s.error().size() <= 2000 + 3 || s.failure() != NdjsonStream::Failure::kErrorLine,
        "an error line's message is cut to 2000 bytes");
}

void CheckFinished(const NdjsonStream& s) {
  Check(s.done() || s.failed(), "after Finish() the stream is done or failed");
  Check(ValidUtf8(s.text()) && ValidUtf8(s.thinking()) && ValidUtf8(s.error()) &&
            ValidUtf8(s.model()) && ValidUtf8(s.done_reason()),
        "what the stream hands back is valid UTF-8");
}

// Feeds `piece`, checking what may change.
void FeedChecked(NdjsonStream* s, std::string_view piece, const NdjsonStream::Limits& limits) {
  Snapshot before(*s);
  bool ok = s->Feed(piece);
  Check(ok == !s->failed(), "Feed() returns !failed()");
  Snapshot after(*s);
  if (before.failure != NdjsonStream::Failure::kNone || before.done) {
    Check(after == before, "after a failure or the done line, Feed() changes nothing");
  }
  Check(StartsWith(after.text, before.text), "text() only grows");
  Check(StartsWith(after.thinking, before.thinking), "thinking() only grows");
  Check(after.lines >= before.lines, "lines() only grows");
  Check(!before.done || after.done, "done() stays true");
  CheckState(*s, limits);
}

bool FinishChecked(NdjsonStream* s, const NdjsonStream::Limits& limits) {
  Snapshot before(*s);
  bool ok = s->Finish();
  Check(ok == (s->done() && !s->failed()), "Finish() returns done() && !failed()");
  Check(!before.done || before.failure != NdjsonStream::Failure::kNone || ok,
        "a stream that saw its done line finishes true");
  if (before.failure != NdjsonStream::Failure::kNone) {
    Check(Snapshot(*s) == before, "after a failure, Finish() changes nothing");
  }
  Check(StartsWith(s->text(), before.text), "text() only grows at Finish()");
  CheckState(*s, limits);
  CheckFinished(*s);
  Snapshot once(*s);
  Check(s->Finish() == ok && Snapshot(*s) == once, "Finish() is idempotent");
  return ok;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  NdjsonStream::Format format = NdjsonStream::Format::kGenerate;
  NdjsonStream::Limits limits;
  std::vector<size_t> sizes;
  if (in.size() >= 3) {
    const auto b0 = static_cast<unsigned char>(in[0]);
    const auto b1 = static_cast<unsigned char>(in[1]);
    const auto b2 = static_cast<unsigned char>(in[2]);
    format = (b0 & 0x04) != 0 ? NdjsonStream::Format::kGenerate : NdjsonStream::Format::kChat;
    if ((b1 & 1) != 0) {
      limits.max_line_bytes = 32 * (((b1 >> 1) & 0x0F) + 1);  // 32 .. 512
      limits.max_text_bytes = 8 * (b1 >> 5) + 1;              // 1 .. 57
    }
    size_t n = b2 & 7;
    in.remove_prefix(3);
    for (size_t i = 0; i < n && !in.empty(); ++i) {
      sizes.push_back(static_cast<unsigned char>(in[0]));
      in.remove_prefix(1);
    }
  }
  const std::string_view body = in;

  // The body in pieces.
  NdjsonStream pieces(format, limits);
  std::string_view rest = body;
  bool progress = true;
  while (!rest.empty() && !sizes.empty() && progress) {
    progress = false;
    for (size_t s : sizes) {
      size_t take = std::min(s, rest.size());
      FeedChecked(&pieces, rest.substr(0, take), limits);
      rest.remove_prefix(take);
      progress = progress || take > 0;
      if (rest.empty()) break;
    }
  }
  if (!rest.empty()) FeedChecked(&pieces, rest, limits);
  Snapshot fed(pieces);
  bool finished = FinishChecked(&pieces, limits);

  // The same body at once: the outcome must not depend on the pieces.
  NdjsonStream whole(format, limits);
  FeedChecked(&whole, body, limits);
  Check(Snapshot(whole) == fed, "the state after feeding is the same, whole or in pieces");
  Check(FinishChecked(&whole, limits) == finished && Snapshot(whole) == Snapshot(pieces),
        "the outcome is the same, whole or in pieces");

  // The same body a line at a time: once a line has failed the stream or
  // ended it, no later line may change anything (FeedChecked).
  NdjsonStream by_line(format, limits);
  for (std::string_view left = body; !left.empty();) {
    size_t end = left.find('\n');
    end = end == std::string_view::npos ? left.size() : end + 1;
    FeedChecked(&by_line, left.substr(0, end), limits);
    left.remove_prefix(end);
  }
  Check(Snapshot(by_line) == fed, "the state after feeding is the same, whole or by line");

  // A stream that has not failed, given a well-formed done line, succeeds.
  NdjsonStream more(format, limits);
  FeedChecked(&more, body, limits);
  FeedChecked(&more, "\n", limits);  // ends a last line that had no newline
  if (!more.failed() && !more.done()) {
    const std::string last =
        format == NdjsonStream::Format::kGenerate
            ? "{\"model\":\"m\",\"response\":\"Z\",\"done\":true,\"done_reason\":\"stop\"}\n"
            : "{\"model\":\"m\",\"message\":{\"role\":\"assistant\",\"content\":\"Z\"},"
              "\"done\":true,\"done_reason\":\"stop\"}\n";
    FeedChecked(&more, last, limits);
    if (!more.failed()) {
      Check(more.done(), "a well-formed done line ends the stream");
      Check(!more.text().empty() && more.text().back() == 'Z', "the done line's text is appended");
      Check(more.done_reason() == "stop", "the done line's done_reason is kept");
      FeedChecked(&more, "not JSON\n{\"error\":\"late\"}\n", limits);  // ignored after done
      Check(FinishChecked(&more, limits), "a stream whose last line has done:true finishes true");
    }
  }
  return 0;
}
