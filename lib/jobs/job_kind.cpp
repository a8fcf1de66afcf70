#include "jobs/job_kind.h"

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

}  // namespace digestd
