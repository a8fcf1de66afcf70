#include "metrics/prom_text.h"

#include <charconv>
#include <cmath>

namespace digestd {

namespace {

const char* TypeName(PromText::Type type) {
  switch (type) {
    case PromText::Type::kCounter:
      return "counter";
    case PromText::Type::kGauge:
      return "gauge";
    case PromText::Type::kHistogram:
      return "histogram";
  }
  return "untyped";
}

}  // namespace

std::string EscapeLabelValue(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char ch : value) {
    switch (ch) {
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += ch;
    }
  }
  return out;
}

std::string EscapeHelp(std::string_view help) {
  std::string out;
  out.reserve(help.size());
  for (char ch : help) {
    if (ch == '\\') {
      out += "\\\\";
    } else if (ch == '\n') {
      out += "\\n";
    } else {
      out += ch;
    }
  }
  return out;
}

std::string FormatPromValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buf[64];
  // Integers (every count) as integers, "1000000" rather than "1e+06".
  if (value == std::floor(value) && std::fabs(value) < 9007199254740992.0) {
    auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), static_cast<int64_t>(value));
    if (ec == std::errc()) return std::string(buf, end);
  }
  // Shortest text that reads back as the same double: counts stay integers
  // ("12", not "12.000000"), and nothing is lost to rounding.
  auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), value);
  if (ec != std::errc()) return "NaN";
  return std::string(buf, end);
}

void PromText::Family(std::string_view name, Type type, std::string_view help) {
  family_ = std::string(name);
  out_ += "# HELP ";
  out_ += name;
  out_ += ' ';
  out_ += EscapeHelp(help);
  out_ += "\n# TYPE ";
  out_ += name;
  out_ += ' ';
  out_ += TypeName(type);
  out_ += '\n';
}

void PromText::Line(std::string_view name, const PromLabels& labels, const std::string* le,
                    double value) {
  out_ += name;
  if (!labels.empty() || le != nullptr) {
    out_ += '{';
    bool first = true;
    for (const auto& [k, v] : labels) {
      if (!first) out_ += ',';
      first = false;
      out_ += k;
      out_ += "=\"";
      out_ += EscapeLabelValue(v);
      out_ += '"';
    }
    if (le != nullptr) {
      if (!first) out_ += ',';
      out_ += "le=\"";
      out_ += *le;
      out_ += '"';
    }
    out_ += '}';
  }
  out_ += ' ';
  out_ += FormatPromValue(value);
  out_ += '\n';
}

void PromText::Sample(const PromLabels& labels, double value) {
  Line(family_, labels, nullptr, value);
}

void PromText::HistogramSamples(const PromLabels& labels, const Histogram& histogram) {
  const std::string bucket = family_ + "_bucket";
  const auto& bounds = histogram.bounds();
  const auto& counts = histogram.counts();
  uint64_t cumulative = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    cumulative += counts[i];
    std::string le = i < bounds.size() ? FormatPromValue(bounds[i]) : "+Inf";
    Line(bucket, labels, &le, static_cast<double>(cumulative));
  }
  Line(family_ + "_sum", labels, nullptr, histogram.sum());
  Line(family_ + "_count", labels, nullptr, static_cast<double>(histogram.count()));
}

}  // namespace digestd
