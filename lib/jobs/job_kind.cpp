#include "jobs/job_kind.h"

#include <algorithm>

namespace digestd {

JobKindRegistry& JobKindRegistry::Global() {
  static JobKindRegistry registry;
  return registry;
}

void JobKindRegistry::Add(std::unique_ptr<JobKind> kind) {
  kinds_.push_back(std::move(kind));
}

const JobKind* JobKindRegistry::Find(std::string_view name) const {
  for (const auto& k : kinds_) {
    if (k->name() == name) return k.get();
  }
  return nullptr;
}

std::vector<std::string> JobKindRegistry::List() const {
  std::vector<std::string> out;
  for (const auto& k : kinds_) out.emplace_back(k->name());
  return out;
}

std::string JobKindRegistry::Names() const {
  std::string out;
  for (const auto& k : kinds_) {
    if (!out.empty()) out += ", ";
    out += k->name();
  }
  return out;
}

bool IsPartRef(const nlohmann::json& v) {
  if (!v.is_object()) return false;
  auto p = v.find("part");
  return p != v.end() && p->is_string();
}

std::vector<std::string> PartRefs(const nlohmann::json& input) {
  std::vector<std::string> out;
  auto add = [&out](const nlohmann::json& v) {
    if (!IsPartRef(v)) return;
    const std::string& k = v["part"].get_ref<const std::string&>();
    if (std::find(out.begin(), out.end(), k) == out.end()) out.push_back(k);
  };
  if (!input.is_object()) return out;
  for (const auto& [name, v] : input.items()) {
    if (name == kAfterResults) continue;
    add(v);
    if (v.is_array()) {
      for (const auto& e : v) add(e);
    }
  }
  return out;
}

}  // namespace digestd
