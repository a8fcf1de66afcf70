#include "dispatch/model_capacity.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <utility>

namespace digestd {
namespace {

double Ms(int64_t ns) {
  return static_cast<double>(ns) / 1e6;
}

std::string FormatMs(double ms) {
  char buf[32];
  if (ms >= 10'000) {
    std::snprintf(buf, sizeof(buf), "%.1f s", ms / 1000);
  } else {
    std::snprintf(buf, sizeof(buf), "%.0f ms", ms);
  }
  return buf;
}

double Smooth(double old_value, double sample, bool first) {
  return first ? sample : old_value + ModelCapacity::kSmoothing * (sample - old_value);
}

}  // namespace

ModelCapacity::ModelCapacity(int max, int initial, int64_t now_ms)
    : max_(std::max(1, max)), limit_(std::clamp(initial, 1, max_)), changed_at_ms_(now_ms) {
  reason_ = "starting at " + std::to_string(limit_) + "; learning what the server takes";
}

void ModelCapacity::SetBounds(int max, int64_t now_ms) {
  max_ = std::max(1, max);
  if (pinned_) {
    Change(std::min(*pinned_, max_),
           "pinned by [backend] parallel = " + std::to_string(*pinned_) +
               (*pinned_ > max_ ? ", bounded by [workers] max = " + std::to_string(max_) : ""),
           now_ms);
  } else if (limit_ > max_) {
    Change(max_, "bounded by [workers] max = " + std::to_string(max_), now_ms);
  }
}

void ModelCapacity::Pin(int n, int64_t now_ms) {
  pinned_ = std::max(1, n);
  const int limit = std::min(*pinned_, max_);
  std::string why = "pinned by [backend] parallel = " + std::to_string(*pinned_);
  if (*pinned_ > max_) why += ", bounded by [workers] max = " + std::to_string(max_);
  if (limit != limit_) {
    Change(limit, std::move(why), now_ms);
  } else {
    reason_ = std::move(why);
    changed_at_ms_ = now_ms;
  }
}

void ModelCapacity::Unpin(int64_t now_ms) {
  if (!pinned_) return;
  pinned_.reset();
  reason_ = "learning from " + std::to_string(limit_) + " ([backend] parallel = \"auto\")";
  changed_at_ms_ = now_ms;
  good_ = 0;
}

CapacityTicket ModelCapacity::OnStart() {
  ++in_flight_;
  // Levels only grow at starts, so the most in flight since a ticket's
  // start is the highest level of the starts from it on: kept as a stack
  // of (seq, level) with levels falling, at most one entry per level.
  while (!peaks_.empty() && peaks_.back().second <= in_flight_) peaks_.pop_back();
  peaks_.emplace_back(next_seq_, in_flight_);
  return CapacityTicket{next_seq_++, in_flight_};
}

int ModelCapacity::PeakSince(const CapacityTicket& ticket) const {
  auto it = std::lower_bound(
      peaks_.begin(), peaks_.end(), ticket.seq,
      [](const std::pair<uint64_t, int>& p, uint64_t seq) { return p.first < seq; });
  return it == peaks_.end() ? ticket.level : std::max(ticket.level, it->second);
}

void ModelCapacity::OnFinish(const CapacityTicket& ticket, const CapacitySample& sample,
                             int64_t now_ms) {
  if (in_flight_ > 0) --in_flight_;
  switch (sample.outcome) {
    case CapacityOutcome::kBusy:
    case CapacityOutcome::kTimeout:
      OnOverload(ticket, sample.outcome, now_ms);
      return;
    case CapacityOutcome::kError:
    case CapacityOutcome::kCancelled:
      return;
    case CapacityOutcome::kOk:
      break;
  }
  const Reading r = Read(ticket, sample);
  if (!r.usable) return;
  ++samples_;
  const bool first = signal_ == Signal::kNone;
  wait_ms_ = Smooth(wait_ms_, r.wait_ms, first);
  service_ms_ = Smooth(service_ms_, r.service_ms, first);
  signal_ = r.signal;
  // The level's latency is recorded after the judgement: a sample is never
  // its own reference.
  RecordLatency(ticket.level, r.latency_ms);
  if (pinned_) return;
  if (r.queued) {
    OnQueued(ticket, r, now_ms);
  } else {
    OnGood(ticket, now_ms);
  }
}

ModelCapacity::Reading ModelCapacity::Read(const CapacityTicket& ticket,
                                           const CapacitySample& s) const {
  Reading r;
  const int64_t load = s.load_ns.value_or(0);
  if (load > kColdLoadNs) return r;  // a cold model: not queueing, not representative
  if (s.total_ns && (s.prompt_eval_ns || s.eval_ns)) {
    const int64_t service = s.prompt_eval_ns.value_or(0) + s.eval_ns.value_or(0);
    const int64_t wait = std::max<int64_t>(0, *s.total_ns - load - service);
    r.usable = true;
    r.signal = Signal::kServerWait;
    r.wait_ms = Ms(wait);
    r.service_ms = Ms(service);
    r.latency_ms = Ms(*s.total_ns - load);
    r.queued = wait > std::max<int64_t>(kWaitFloorNs, static_cast<int64_t>(kWaitShare * service));
    return r;
  }
  const int64_t at_server = s.total_ns ? *s.total_ns - load : s.latency_ns;
  if (at_server <= 0) return r;
  r.usable = true;
  r.signal = Signal::kLatency;
  r.latency_ms = Ms(at_server);
  r.best_ms = BestBelow(ticket.level);
  if (r.best_ms > 0) {
    r.queued = r.latency_ms > kLatencyGrowth * r.best_ms;
    r.wait_ms = std::max(0.0, r.latency_ms - r.best_ms);
    r.service_ms = r.best_ms;
  } else {
    r.service_ms = r.latency_ms;  // nothing to compare with yet: no wait seen
  }
  return r;
}

double ModelCapacity::BestBelow(int level) const {
  double best = 0;
  for (int l = 1; l < level && l < static_cast<int>(levels_.size()); ++l) {
    const double b = levels_[static_cast<size_t>(l)].best_ms;
    if (b > 0 && (best == 0 || b < best)) best = b;
  }
  return best;
}

void ModelCapacity::RecordLatency(int level, double latency_ms) {
  if (level < 1) return;
  if (static_cast<int>(levels_.size()) <= level) levels_.resize(static_cast<size_t>(level) + 1);
  Level& l = levels_[static_cast<size_t>(level)];
  l.latency_ms = Smooth(l.latency_ms, latency_ms, l.samples == 0);
  ++l.samples;
  if (l.samples < kMinLevelSamples) return;
  l.best_ms = l.best_ms == 0
                  ? l.latency_ms
                  : std::min(l.latency_ms, l.best_ms + kBestForget * (l.latency_ms - l.best_ms));
}

ModelCapacity::Cut ModelCapacity::CutFor(const CapacityTicket& ticket, const Reading& r) const {
  Cut c;
  // The most in flight while it was: a request sent beside it may have
  // reached the server first, so its own level may fit; that many did not.
  c.level = std::max(1, PeakSince(ticket));
  c.target = c.level - 1;
  const double service = service_ms_ > 0 ? service_ms_ : r.service_ms;
  if (service > 0 && r.wait_ms > kSevereWait * service) {
    // Rounded up: in a FIFO the last of `level` requests waits the most, so
    // one sample's estimate runs low (7 in flight on 2 slots: the 7th waits
    // 3 rounds, 7 / 4 = 1.75), never more than one below the capacity.
    const int little =
        static_cast<int>(std::ceil(c.level * service / (r.wait_ms + service) - 1e-9));
    if (little < c.target) {
      c.target = little;
      c.estimated = true;
    }
  }
  c.target = std::max(1, c.target);
  if (r.signal == Signal::kServerWait) {
    c.why = std::to_string(c.level) + " in flight waited " + FormatMs(r.wait_ms) +
            " at the server (service " + FormatMs(r.service_ms) + ")";
  } else {
    char growth[16];
    std::snprintf(growth, sizeof(growth), "%.1f", kLatencyGrowth);
    c.why = "latency " + FormatMs(r.latency_ms) + " with " + std::to_string(c.level) +
            " in flight is over " + growth + " x " + FormatMs(r.best_ms) + " seen with fewer";
  }
  return c;
}

void ModelCapacity::OnQueued(const CapacityTicket& ticket, const Reading& r, int64_t now_ms) {
  Cut c = CutFor(ticket, r);
  // A cut below the level the server has served needs a second queued
  // sample: one request can wait for reasons other than too many in flight
  // (a request started beside it reached the server first and took the
  // slot, or a thread of the server was descheduled). A second queued
  // sample confirms it, and the cut goes to the higher of the two targets;
  // a good sample from a request started after the first clears it.
  if (!pinned_ && c.target < proven()) {
    if (!suspect_) {
      suspect_ = c;
      suspect_seq_ = next_seq_;
      if (proven() >= limit_) return;  // nothing to cut until it is confirmed
      c.target = proven();             // the unproven step above: at once, as a failed probe
      c.estimated = false;
    } else {
      if (suspect_->target > c.target) c = *suspect_;
      suspect_.reset();
    }
  }
  const int level = c.level;
  // A severe wait says the capacity is about `target`: one more is a probe,
  // held off like one, not a plain raise.
  if (c.estimated && (ceiling_ == 0 || c.target + 1 < ceiling_)) {
    ceiling_ = c.target + 1;
    probe_failures_ = 1;
  }
  // The ceiling: the lowest level seen queueing. A new failure of the level
  // being probed (the limit still at it) doubles the hold-off; samples
  // still in flight from the same probe (the limit already below) do not.
  if (ceiling_ == 0 || level < ceiling_) {
    ceiling_ = level;
    probe_failures_ = 1;
  } else if (level == ceiling_ && limit_ >= level) {
    ++probe_failures_;
  }
  if (c.target >= limit_) return;
  c.why += c.estimated ? ": " + std::to_string(c.target) + ", the capacity that wait implies"
                       : ": " + std::to_string(c.target);
  Change(c.target, std::move(c.why), now_ms);
}

void ModelCapacity::OnGood(const CapacityTicket& ticket, int64_t now_ms) {
  // Served without waiting, started after a lone queued sample: that one
  // was not the server's capacity.
  if (suspect_ && ticket.seq >= suspect_seq_) suspect_.reset();
  if (ticket.level < limit_) return;  // the limit was not filled: no evidence for more
  // Started before the limit last changed: it says nothing about the new
  // limit (after a cut, requests that were already running do not wait,
  // yet the server may be full of others waiting).
  if (ticket.seq < change_seq_) return;
  ++good_;
  if (good_ >= RaiseWindow()) unproven_ = false;
  if (limit_ >= max_) return;
  if (ceiling_ != 0 && limit_ >= ceiling_) {
    // A full window at the level that once queued: it serves now.
    if (good_ < RaiseWindow()) return;
    ceiling_ = 0;
    probe_failures_ = 0;
  }
  const bool probe = ceiling_ != 0 && limit_ + 1 >= ceiling_;
  if (good_ < (probe ? ProbeHoldoff() : RaiseWindow())) return;
  Change(limit_ + 1,
         "no queueing with " + std::to_string(limit_) + " in flight: trying " +
             std::to_string(limit_ + 1) + (probe ? " again" : ""),
         now_ms);
}

void ModelCapacity::OnOverload(const CapacityTicket& ticket, CapacityOutcome outcome,
                               int64_t now_ms) {
  if (pinned_ || ticket.seq < overload_cut_seq_) return;
  const int target = std::max(1, static_cast<int>(std::floor(limit_ * kBusyCut)));
  if (target >= limit_) return;
  overload_cut_seq_ = next_seq_;
  Change(target,
         std::string(outcome == CapacityOutcome::kBusy ? "the server answered busy (429/503)"
                                                       : "a request timed out") +
             ": halved from " + std::to_string(limit_) + " to " + std::to_string(target),
         now_ms);
}

int ModelCapacity::RaiseWindow() const {
  return std::max(kMinRaiseSamples, kRaiseRounds * limit_);
}

int ModelCapacity::ProbeHoldoff() const {
  int rounds = kProbeHoldoffRounds;
  for (int i = 1; i < probe_failures_ && rounds < kMaxProbeHoldoffRounds; ++i) rounds *= 2;
  return std::min(rounds, kMaxProbeHoldoffRounds) * limit_;
}

void ModelCapacity::Change(int limit, std::string why, int64_t now_ms) {
  limit = std::clamp(limit, 1, max_);
  if (limit == limit_) return;
  const bool raise = limit > limit_;
  unproven_ = raise && !pinned_;  // a learned raise, not a user's number
  limit_ = limit;
  reason_ = std::move(why);
  changed_at_ms_ = now_ms;
  good_ = 0;
  change_seq_ = next_seq_;
  if (raise) suspect_.reset();
}

nlohmann::json ModelCapacity::ToJson(int64_t now_ms) const {
  auto round1 = [](double v) { return std::round(v * 10) / 10; };
  nlohmann::json j = {
      {"mode", pinned_ ? "pinned" : "auto"},
      {"limit", limit_},
      {"max", max_},
      {"in_flight", in_flight_},
      {"reason", reason_},
      {"changed_ms_ago", std::max<int64_t>(0, now_ms - changed_at_ms_)},
      {"server_wait_ms", round1(wait_ms_)},
      {"service_ms", round1(service_ms_)},
      {"signal", signal_ == Signal::kServerWait ? "server_wait"
                 : signal_ == Signal::kLatency  ? "latency"
                                                : "none"},
      {"samples", samples_},
  };
  if (ceiling_ != 0) j["probe_ceiling"] = ceiling_;
  return j;
}

}  // namespace digestd
