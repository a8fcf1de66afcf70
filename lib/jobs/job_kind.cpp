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

std::string JobKindRegistry::Names() const {
  std::string out;
  for (const auto& k : kinds_) {
    if (!out.empty()) out += ", ";
    out += k->name();
  }
  return out;
}

}  // namespace digestd
