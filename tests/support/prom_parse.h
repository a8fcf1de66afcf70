// A reader of Prometheus's text exposition format (0.0.4) for tests: it
// checks what a scraper relies on -- every sample belongs to a family
// declared by "# TYPE" before it, families are declared once, label values
// are properly quoted and escaped, values are numbers -- and returns the
// samples so a test can look figures up by name and labels.
//
// Header only; any thread.
#pragma once

#include <cstdlib>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace digestd::testing {

struct PromSample {
  std::string name;  // the sample's own name (with _bucket, _sum, _count)
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct PromScrape {
  std::map<std::string, std::string> types;  // family -> counter | gauge | histogram
  std::map<std::string, std::string> help;   // family -> HELP text, unescaped
  std::vector<PromSample> samples;
  std::string error;  // "" when the text is well-formed; else the first problem

  // The value of the sample `name` with exactly `labels`, if there is one.
  std::optional<double> Value(const std::string& name,
                              const std::map<std::string, std::string>& labels = {}) const {
    for (const auto& s : samples) {
      if (s.name == name && s.labels == labels) return s.value;
    }
    return std::nullopt;
  }
  // The sum over every sample named `name` whose labels include `match`.
  double Sum(const std::string& name, const std::map<std::string, std::string>& match = {}) const {
    double total = 0;
    for (const auto& s : samples) {
      if (s.name != name) continue;
      bool all = true;
      for (const auto& [k, v] : match) {
        auto it = s.labels.find(k);
        all &= it != s.labels.end() && it->second == v;
      }
      if (all) total += s.value;
    }
    return total;
  }
  // Every sample named `name`, in order.
  std::vector<PromSample> All(const std::string& name) const {
    std::vector<PromSample> out;
    for (const auto& s : samples) {
      if (s.name == name) out.push_back(s);
    }
    return out;
  }
};

namespace prom_detail {

inline bool NameChar(char c, bool first) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
         (!first && c >= '0' && c <= '9');
}

inline bool IsName(std::string_view s) {
  if (s.empty()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    if (!NameChar(s[i], i == 0)) return false;
  }
  return true;
}

// The family a sample name belongs to, given the families declared so far.
inline std::string FamilyOf(const std::string& name,
                            const std::map<std::string, std::string>& types) {
  if (types.count(name)) return name;
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    std::string_view sv(name);
    std::string_view suf(suffix);
    if (sv.size() > suf.size() && sv.substr(sv.size() - suf.size()) == suf) {
      std::string base(sv.substr(0, sv.size() - suf.size()));
      auto it = types.find(base);
      if (it != types.end() && it->second == "histogram") return base;
    }
  }
  return "";
}

}  // namespace prom_detail

inline PromScrape ParsePromText(std::string_view text) {
  using namespace prom_detail;
  PromScrape out;
  std::set<std::string> closed;  // families whose samples have ended
  std::string current;
  size_t line_no = 0;
  auto fail = [&](const std::string& why) {
    if (out.error.empty()) out.error = "line " + std::to_string(line_no) + ": " + why;
  };
  while (!text.empty() && out.error.empty()) {
    ++line_no;
    size_t nl = text.find('\n');
    if (nl == std::string_view::npos) {
      fail("the last line has no newline");
      break;
    }
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl + 1);
    if (line.empty()) continue;
    if (line[0] == '#') {
      bool type = line.rfind("# TYPE ", 0) == 0;
      bool help = line.rfind("# HELP ", 0) == 0;
      if (!type && !help) continue;  // a comment
      std::string_view rest = line.substr(7);
      size_t sp = rest.find(' ');
      std::string name(rest.substr(0, sp));
      std::string arg = sp == std::string_view::npos ? "" : std::string(rest.substr(sp + 1));
      if (!IsName(name)) fail("bad metric name \"" + name + "\"");
      if (type) {
        if (arg != "counter" && arg != "gauge" && arg != "histogram" && arg != "summary" &&
            arg != "untyped") {
          fail("unknown type \"" + arg + "\"");
        }
        if (out.types.count(name)) fail("family " + name + " declared twice");
        if (!current.empty() && current != name) closed.insert(current);
        current = name;
        out.types[name] = arg;
      } else {
        std::string unescaped;
        for (size_t i = 0; i < arg.size(); ++i) {
          if (arg[i] == '\\' && i + 1 < arg.size()) {
            char n = arg[++i];
            unescaped += n == 'n' ? '\n' : n;
          } else {
            unescaped += arg[i];
          }
        }
        out.help[name] = unescaped;
      }
      continue;
    }
    PromSample s;
    size_t i = 0;
    while (i < line.size() && NameChar(line[i], i == 0)) ++i;
    s.name = std::string(line.substr(0, i));
    if (s.name.empty()) {
      fail("a sample line without a name");
      break;
    }
    if (i < line.size() && line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        size_t start = i;
        while (i < line.size() && NameChar(line[i], i == start)) ++i;
        std::string key(line.substr(start, i - start));
        if (key.empty() || i + 1 >= line.size() || line[i] != '=' || line[i + 1] != '"') {
          fail("bad label in \"" + std::string(line) + "\"");
          break;
        }
        i += 2;
        std::string value;
        bool closed_quote = false;
        while (i < line.size()) {
          char c = line[i++];
          if (c == '"') {
            closed_quote = true;
            break;
          }
          if (c == '\\') {
            if (i >= line.size()) break;
            char n = line[i++];
            if (n == 'n') {
              value += '\n';
            } else if (n == '\\' || n == '"') {
              value += n;
            } else {
              fail("bad escape \\" + std::string(1, n) + " in a label value");
            }
          } else {
            value += c;
          }
        }
        if (!closed_quote) fail("unterminated label value");
        if (s.labels.count(key)) fail("label " + key + " given twice");
        s.labels[key] = value;
        if (i < line.size() && line[i] == ',') ++i;
      }
      if (i >= line.size() || line[i] != '}') {
        fail("no closing brace");
        break;
      }
      ++i;
    }
    if (i >= line.size() || line[i] != ' ') {
      fail("no space before the value");
      break;
    }
    std::string value(line.substr(i + 1));
    if (value == "+Inf") {
      s.value = std::numeric_limits<double>::infinity();
    } else if (value == "-Inf") {
      s.value = -std::numeric_limits<double>::infinity();
    } else if (value == "NaN") {
      s.value = std::numeric_limits<double>::quiet_NaN();
    } else {
      char* end = nullptr;
      s.value = std::strtod(value.c_str(), &end);
      if (value.empty() || end != value.c_str() + value.size()) fail("bad value \"" + value + "\"");
    }
    std::string family = FamilyOf(s.name, out.types);
    if (family.empty()) fail("sample " + s.name + " has no # TYPE line before it");
    if (closed.count(family)) fail("sample " + s.name + " after its family ended");
    if (family != current) fail("sample " + s.name + " outside its family's block");
    out.samples.push_back(std::move(s));
  }
  return out;
}

}  // namespace digestd::testing
