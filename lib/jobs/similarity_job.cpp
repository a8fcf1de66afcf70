// similarity: the cosine similarity of two embedding vectors `a` and `b`,
// and, when a `sample` of vectors is given, where that similarity falls in
// the null distribution: the similarities of `a` to each sample vector (how
// close `a` is to words picked at random). A word game asks "is the guess
// closer to the answer than most words are?": `percentile` answers it.
//
//   input:  {"a": [..], "b": [..], "sample": [[..], ..]?}
//           In a batch with "after", any vector may instead name a part of
//           the batch: {"part": KEY, "index": i} is vector i (default 0) of
//           that embed job's "embeddings", and "sample": {"part": KEY} is
//           every vector of it, so the vectors never pass through the app.
//   result: {"similarity", "dims", and with a sample: "percentile" (0-100,
//            ties count half), "rank" (1 + sample vectors closer to `a` than
//            `b` is), "z", "null": {"n", "mean", "sd"}}
//
// CPU work: it runs on a pool thread (never the loop), checking for a cancel
// between sample vectors. Validate checks only the shape (arrays and their
// lengths, O(sample size)); the numbers are checked where they are read.
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "jobs/job_kind.h"

namespace digestd {
namespace {

// The most sample vectors one job takes: a null distribution needs a few
// hundred; far more only makes the request line longer.
constexpr size_t kMaxSample = 100000;
constexpr size_t kMaxDims = 65536;

// A part reference in place of a vector: {"part": KEY, "index": i}.
Status CheckVectorRef(const nlohmann::json& v, const std::string& name, bool whole) {
  for (const auto& [k, x] : v.items()) {
    if (k == "part") continue;
    if (k == "index" && !whole) {
      if (!x.is_number_integer() || x.get<int64_t>() < 0) {
        return Status::BadRequest(name +
                                  ".index must be an integer from 0 (which vector of the "
                                  "part's embeddings)");
      }
      continue;
    }
    return Status::BadRequest(name + "." + k + " is not a part reference field; use " +
                              (whole ? "part" : "part and index"));
  }
  return Status::Ok();
}

Status CheckVectorShape(const nlohmann::json& v, const std::string& name) {
  if (IsPartRef(v)) return CheckVectorRef(v, name, false);
  if (!v.is_array() || v.empty()) {
    return Status::BadRequest(name + " must be a non-empty array of numbers (an embedding vector)");
  }
  if (v.size() > kMaxDims) {
    return Status::BadRequest(name + " has " + std::to_string(v.size()) + " numbers; at most " +
                              std::to_string(kMaxDims));
  }
  return Status::Ok();
}

// Reads `v` into `out`; false (with `error` naming it) when an element is
// not a finite number.
bool ReadVector(const nlohmann::json& v, const std::string& name, std::vector<double>* out,
                std::string* error) {
  out->clear();
  out->reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const nlohmann::json& x = v[i];
    if (!x.is_number() || !std::isfinite(x.get<double>())) {
      *error = name + "[" + std::to_string(i) + "] is not a finite number";
      return false;
    }
    out->push_back(x.get<double>());
  }
  return true;
}

double Norm(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return std::sqrt(s);
}

double Dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// The "embeddings" of part `key`'s result, from the input's after_results;
// null with `error` set when the part gave none.
const nlohmann::json* Embeddings(const nlohmann::json& in, const std::string& key,
                                 const std::string& name, std::string* error) {
  auto results = in.find(kAfterResults);
  if (results == in.end() || !results->is_object() || !results->contains(key)) {
    *error = name + " names part \"" + key +
             "\", whose result this job did not get; list the part in \"after\"";
    return nullptr;
  }
  const nlohmann::json& r = (*results)[key];
  auto e = r.is_object() ? r.find("embeddings") : r.end();
  if (!r.is_object() || e == r.end() || !e->is_array() || e->empty()) {
    *error =
        name + " names part \"" + key + "\", whose result has no \"embeddings\"; name an embed job";
    return nullptr;
  }
  return &*e;
}

// `v` itself, or the vector a part reference names.
const nlohmann::json* Resolve(const nlohmann::json& in, const nlohmann::json& v,
                              const std::string& name, std::string* error) {
  if (!IsPartRef(v)) return &v;
  const nlohmann::json* e = Embeddings(in, v["part"].get<std::string>(), name, error);
  if (e == nullptr) return nullptr;
  size_t index = 0;
  if (auto i = v.find("index"); i != v.end() && i->is_number_integer() && i->get<int64_t>() >= 0) {
    index = static_cast<size_t>(i->get<int64_t>());
  }
  if (index >= e->size()) {
    *error = name + ".index " + std::to_string(index) + " is past the " +
             std::to_string(e->size()) + " vectors of part \"" + v["part"].get<std::string>() +
             "\"";
    return nullptr;
  }
  return &(*e)[index];
}

class SimilarityKind final : public JobKind {
 public:
  std::string_view name() const override { return "similarity"; }

  Status Validate(const nlohmann::json& input, const Config& /*config*/) const override {
    if (!input.is_object()) {
      return Status::BadRequest(
          "input must be an object, such as {\"a\": [0.1, 0.2], \"b\": [0.2, 0.1]}");
    }
    for (const auto& [k, v] : input.items()) {
      if (k != "a" && k != "b" && k != "sample" && k != kAfterResults) {
        return Status::BadRequest("input." + k +
                                  " is not a similarity field; similarity takes a, b and sample");
      }
    }
    for (const char* k : {"a", "b"}) {
      auto it = input.find(k);
      if (it == input.end()) {
        return Status::BadRequest(std::string("input.") + k +
                                  " is required: an embedding vector (an array of numbers)");
      }
      if (Status st = CheckVectorShape(*it, std::string("input.") + k); !st.ok()) return st;
    }
    // Sizes of vectors taken from parts are checked when the job runs.
    const bool refs = IsPartRef(input["a"]) || IsPartRef(input["b"]);
    const size_t dims = IsPartRef(input["a"]) ? 0 : input["a"].size();
    if (!refs && input["b"].size() != dims) {
      return Status::BadRequest("input.a has " + std::to_string(dims) + " numbers and input.b " +
                                std::to_string(input["b"].size()) +
                                "; both must come from the same embedding model");
    }
    auto sample = input.find("sample");
    if (sample != input.end() && IsPartRef(*sample)) {
      return CheckVectorRef(*sample, "input.sample", true);
    }
    if (sample != input.end()) {
      if (!sample->is_array() || sample->empty()) {
        return Status::BadRequest("input.sample must be a non-empty array of embedding vectors");
      }
      if (sample->size() > kMaxSample) {
        return Status::BadRequest("input.sample has " + std::to_string(sample->size()) +
                                  " vectors; at most " + std::to_string(kMaxSample));
      }
      for (size_t i = 0; i < sample->size(); ++i) {
        const std::string name = "input.sample[" + std::to_string(i) + "]";
        if (Status st = CheckVectorShape((*sample)[i], name); !st.ok()) return st;
        if (dims != 0 && !IsPartRef((*sample)[i]) && (*sample)[i].size() != dims) {
          return Status::BadRequest(name + " has " + std::to_string((*sample)[i].size()) +
                                    " numbers, input.a " + std::to_string(dims) +
                                    "; all must come from the same embedding model");
        }
      }
    }
    return Status::Ok();
  }

  WorkOutcome Run(const WorkContext& ctx) const override {
    const nlohmann::json& in = *ctx.input;
    std::vector<double> a, b, s;
    std::string error;
    const nlohmann::json* va = Resolve(in, in["a"], "input.a", &error);
    const nlohmann::json* vb = va ? Resolve(in, in["b"], "input.b", &error) : nullptr;
    if (vb == nullptr) return WorkOutcome::Failed(error);
    if (!ReadVector(*va, "input.a", &a, &error) || !ReadVector(*vb, "input.b", &b, &error)) {
      return WorkOutcome::Failed(error + "; send embedding vectors of numbers");
    }
    if (a.size() != b.size()) {
      return WorkOutcome::Failed("input.a has " + std::to_string(a.size()) +
                                 " numbers and input.b " + std::to_string(b.size()) +
                                 "; both must come from the same embedding model");
    }
    const double na = Norm(a), nb = Norm(b);
    if (na == 0 || nb == 0) {
      return WorkOutcome::Failed(
          std::string("input.") + (na == 0 ? "a" : "b") +
          " is all zeros: a cosine similarity needs a vector with a direction");
    }
    const double sim = Dot(a, b) / (na * nb);
    nlohmann::json result = {{"similarity", sim}, {"dims", a.size()}};
    auto given = in.find("sample");
    if (given == in.end()) return WorkOutcome::Done(std::move(result));
    // {"part": KEY}: every vector of that part.
    const nlohmann::json* sample = &*given;
    if (IsPartRef(*given)) {
      sample = Embeddings(in, (*given)["part"].get<std::string>(), "input.sample", &error);
      if (sample == nullptr) return WorkOutcome::Failed(error);
    }

    double below = 0, sum = 0, sum_sq = 0;
    size_t n = 0, closer = 0;
    for (size_t i = 0; i < sample->size(); ++i) {
      if (ctx.cancelled()) return WorkOutcome::Cancelled("cancelled while comparing the sample");
      const std::string name = "input.sample[" + std::to_string(i) + "]";
      const nlohmann::json* v = Resolve(in, (*sample)[i], name, &error);
      if (v == nullptr) return WorkOutcome::Failed(error);
      if (!ReadVector(*v, name, &s, &error)) {
        return WorkOutcome::Failed(error + "; send embedding vectors of numbers");
      }
      if (s.size() != a.size()) {
        return WorkOutcome::Failed(name + " has " + std::to_string(s.size()) +
                                   " numbers, input.a " + std::to_string(a.size()) +
                                   "; all must come from the same embedding model");
      }
      const double ns = Norm(s);
      if (ns == 0) continue;  // no direction: not part of the distribution
      const double x = Dot(a, s) / (na * ns);
      if (x < sim) {
        below += 1;
      } else if (x == sim) {
        below += 0.5;
      } else {
        ++closer;
      }
      sum += x;
      sum_sq += x * x;
      ++n;
    }
    if (n == 0) {
      return WorkOutcome::Failed(
          "every vector of input.sample is all zeros: nothing to compare the pair with");
    }
    const double mean = sum / static_cast<double>(n);
    const double var = std::max(0.0, sum_sq / static_cast<double>(n) - mean * mean);
    const double sd = std::sqrt(var);
    result["percentile"] = 100.0 * below / static_cast<double>(n);
    result["rank"] = closer + 1;
    result["z"] = sd > 0 ? (sim - mean) / sd : 0.0;
    result["null"] = {{"n", n}, {"mean", mean}, {"sd", sd}};
    return WorkOutcome::Done(std::move(result));
  }
};

}  // namespace

DIGESTD_REGISTER_JOB_KIND(SimilarityKind);

}  // namespace digestd
