// digestctl: the command-line client of digestd's control socket.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "client/control_client.h"
#include "client/status_table.h"
#include "util/clock.h"

namespace {

using nlohmann::json;

constexpr int kExitError = 1;  // digestd answered with an error
constexpr int kExitUsage = 2;
constexpr int kExitUnreachable = 3;  // not running, or the socket is not accessible

void Usage(FILE* out) {
  std::fputs(
      "usage: digestctl [--socket PATH] [--json] COMMAND [ARGS]\n"
      "\n"
      "commands:\n"
      "  status                      queues, workers, jobs and latency (--json: raw)\n"
      "  watch [--interval 5s]       status, recent events and group progress, redrawn\n"
      "                              (as jobs change state, and at least every interval)\n"
      "  events [--key K] [--group G] [--prefix P] [--lane L]\n"
      "                              (job state changes as they happen, one per line)\n"
      "  follow KEY                  a job's text as it is written; exits with the job\n"
      "                              (0 done, 1 failed or cancelled)\n"
      "  ping                        check that digestd answers\n"
      "  submit KIND [--key K] [--group G] [--lane interactive|background]\n"
      "              [--input JSON | --input-file FILE] [--wait 5s] [--ttl 1h]\n"
      "  submit --batch FILE         one job object per line (or a JSON array)\n"
      "  result KEY [--wait 2s]      a job's state and result\n"
      "  result --group G [--wait 2s]\n"
      "  jobs [--status S] [--group G] [--kind K] [--lane L] [--prefix P] [--limit N] [--all]\n"
      "                              (jobs newest first, --limit a page (default 50))\n"
      "                              (--status: a state or a comma list; --all: every page)\n"
      "  cancel KEY | --group G\n"
      "  retry KEY | --group G [--lane interactive|background]\n"
      "                              (run failed or cancelled jobs again)\n"
      "  delete KEY | --group G      remove finished jobs\n"
      "  workers [--min N] [--max N] [--reserved N]\n"
      "  reload                      re-read the config file (like SIGHUP)\n"
      "  drain                       finish running work and stop\n"
      "\n"
      "submit --wait runs the job as interactive and prints the finished job, or its\n"
      "state when the time is up. --ttl: how long its result stays fresh; a submit of\n"
      "the key after that runs it again.\n"
      "The socket is --socket, else $DIGESTD_SOCKET, else /run/digestd/control.sock.\n"
      "Exit status: 0 ok, 1 digestd answered an error, 2 usage, 3 digestd unreachable.\n",
      out);
}

// An error answer on stderr ("digestctl: CODE: MESSAGE"); kExitError.
int PrintError(const json& answer) {
  auto err = answer.value("error", json::object());
  std::fprintf(stderr, "digestctl: %s: %s\n", err.value("code", "error").c_str(),
               err.value("message", "").c_str());
  return kExitError;
}

// `events` and `watch`: subscribes with `sub` and prints each event as it
// comes (events), or redraws status, the recent events and group progress
// whenever jobs change state, at most ten times a second and at least every
// `interval_ms` (watch). Runs until interrupted or digestd closes the
// connection (exit status 3 then).
int Follow(const std::string& path, const json& sub, bool raw_json, bool watch,
           int64_t interval_ms) {
  digestd::ControlClient events, status;
  for (auto* c : {&events, &status}) {
    if (!watch && c == &status) break;
    if (digestd::Status st = c->Connect(path); !st.ok()) {
      std::fprintf(stderr, "digestctl: %s\n", st.message().c_str());
      return kExitUnreachable;
    }
  }
  auto answer = events.Call(sub);
  if (!answer.ok()) {
    std::fprintf(stderr, "digestctl: %s\n", answer.status().message().c_str());
    return kExitUnreachable;
  }
  if (!answer->value("ok", false)) {
    return PrintError(*answer);
  }
  std::deque<std::string> recent;
  digestd::GroupProgress groups;
  auto draw = [&]() -> bool {
    auto st = status.Call({{"op", "status"}});
    if (!st.ok() || !st->value("ok", false)) {
      std::fprintf(stderr, "digestctl: %s\n",
                   st.ok() ? st->dump().c_str() : st.status().message().c_str());
      return false;
    }
    std::string screen = "\033[H\033[2J" + digestd::FormatStatus(*st);
    screen += "\nrecent events\n";
    for (const auto& line : recent) screen += "  " + line;
    std::string bars = groups.Format();
    if (!bars.empty()) screen += "\ngroups (jobs seen since watch began)\n" + bars;
    std::fputs(screen.c_str(), stdout);
    std::fflush(stdout);
    return true;
  };
  using Clock = std::chrono::steady_clock;
  using std::chrono::milliseconds;
  const auto kMinGap = milliseconds(100);
  auto last_draw = Clock::now() - kMinGap;
  auto next_draw = Clock::now();
  bool dirty = true;
  for (;;) {
    int wait_ms = 3600 * 1000;
    if (watch) {
      auto now = Clock::now();
      if (now >= next_draw || (dirty && now - last_draw >= kMinGap)) {
        if (!draw()) return kExitUnreachable;
        dirty = false;
        last_draw = now = Clock::now();
        next_draw = now + milliseconds(interval_ms);
      }
      auto until = dirty ? last_draw + kMinGap : next_draw;
      wait_ms = static_cast<int>(
          std::max<int64_t>(1, std::chrono::duration_cast<milliseconds>(until - now).count()));
    }
    auto line = events.TryReadLine(wait_ms);
    if (!line.ok()) {
      std::fprintf(stderr, "digestctl: %s\n", line.status().message().c_str());
      return kExitUnreachable;
    }
    if (!line->has_value()) continue;
    json e = json::parse(**line, nullptr, false);
    if (e.is_discarded()) continue;
    if (!watch) {
      std::fputs(raw_json ? (**line + "\n").c_str() : digestd::FormatEvent(e).c_str(), stdout);
      std::fflush(stdout);
      continue;
    }
    groups.Add(e);
    recent.push_back(digestd::FormatEvent(e));
    if (recent.size() > 8) recent.pop_front();
    dirty = true;
  }
}

// `follow KEY`: prints the job's text as it is written (from text events),
// then exits with the job: 0 done, 1 failed or cancelled (the error on
// stderr). A job already finished prints its result's text at once.
int FollowText(const std::string& path, const std::string& key) {
  digestd::ControlClient events, reader;
  for (auto* c : {&events, &reader}) {
    if (digestd::Status st = c->Connect(path); !st.ok()) {
      std::fprintf(stderr, "digestctl: %s\n", st.message().c_str());
      return kExitUnreachable;
    }
  }
  auto answer = events.Call({{"op", "subscribe"}, {"key", key}, {"partial", true}});
  if (!answer.ok() || !answer->value("ok", false)) {
    std::fprintf(stderr, "digestctl: %s\n",
                 answer.ok() ? answer->dump().c_str() : answer.status().message().c_str());
    return answer.ok() ? kExitError : kExitUnreachable;
  }
  size_t printed = 0;
  auto finish = [&](const json& job) {
    const std::string state = job.value("status", job.value("state", ""));
    if (state == "done") {
      std::string text = job.value("result", json::object()).value("text", "");
      if (text.size() > printed) std::fputs(text.substr(printed).c_str(), stdout);
      std::fputs("\n", stdout);
      return 0;
    }
    std::fprintf(stderr, "digestctl: job %s %s%s%s\n", key.c_str(), state.c_str(),
                 job.contains("error") ? ": " : "", job.value("error", "").c_str());
    return kExitError;
  };
  // Finished before the subscribe: nothing more will come.
  auto now = reader.Call({{"op", "result"}, {"key", key}});
  if (!now.ok()) {
    std::fprintf(stderr, "digestctl: %s\n", now.status().message().c_str());
    return kExitUnreachable;
  }
  if (!now->value("ok", false)) {
    return PrintError(*now);
  }
  const std::string state = now->value("status", "");
  if (state == "done" || state == "failed" || state == "cancelled") return finish(*now);
  for (;;) {
    auto line = events.ReadLine(24 * 3600 * 1000);
    if (!line.ok()) {
      std::fprintf(stderr, "digestctl: %s\n", line.status().message().c_str());
      return kExitUnreachable;
    }
    json e = json::parse(*line, nullptr, false);
    if (e.is_discarded()) continue;
    if (e.value("event", "") == "text") {
      const std::string text = e.value("text", "");
      if (text.size() < printed) {  // a new attempt starts again
        std::fputs("\n", stdout);
        printed = 0;
      }
      std::fputs(text.substr(printed).c_str(), stdout);
      std::fflush(stdout);
      printed = text.size();
    } else if (e.value("event", "") == "lost") {
      continue;  // the text events carry the whole text: the next one catches up
    } else {
      const std::string s = e.value("state", "");
      if (s == "done" || s == "failed" || s == "cancelled") {
        auto r = reader.Call({{"op", "result"}, {"key", key}});
        if (r.ok() && r->value("ok", false)) return finish(*r);
        return finish(e);
      }
    }
  }
}

// `jobs`: one page as a table (or the answer as JSON), or with `all` every
// page in turn, following "next" (as JSON: one object with every job).
int ListJobs(const std::string& path, json req, bool raw_json, bool all) {
  digestd::ControlClient client;
  if (digestd::Status st = client.Connect(path); !st.ok()) {
    std::fprintf(stderr, "digestctl: %s\n", st.message().c_str());
    return kExitUnreachable;
  }
  json every = json::array();
  bool first = true;
  for (;;) {
    auto answer = client.Call(req);
    if (!answer.ok()) {
      std::fprintf(stderr, "digestctl: %s\n", answer.status().message().c_str());
      return kExitUnreachable;
    }
    json& j = answer.value();
    if (!j.value("ok", false)) return PrintError(j);
    json jobs = j.value("jobs", json::array());
    if (raw_json && !all) {
      j.erase("ok");
      std::printf("%s\n", j.dump().c_str());
      return 0;
    }
    if (raw_json) {
      for (auto& job : jobs) every.push_back(std::move(job));
    } else if (!jobs.empty() || first) {
      std::fputs(digestd::FormatJobList(jobs, digestd::UnixMillis(), first).c_str(), stdout);
      first = false;
    }
    if (!all || !j.contains("next")) {
      if (!raw_json && j.contains("next")) {
        std::printf("(more: --all, or --limit above %lld)\n",
                    static_cast<long long>(req.value("limit", 50)));
      }
      break;
    }
    req["cursor"] = j["next"];
  }
  if (raw_json) std::printf("%s\n", json{{"jobs", std::move(every)}}.dump().c_str());
  std::fflush(stdout);
  return 0;
}

// "2s", "500ms", "1m", "1.5s", "2h", or plain milliseconds.
bool ParseDurationMs(const std::string& s, int64_t* out) {
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (end == s.c_str() || v < 0) return false;
  std::string unit(end);
  if (unit == "ms" || unit.empty()) {
    *out = static_cast<int64_t>(v);
  } else if (unit == "s") {
    *out = static_cast<int64_t>(v * 1000);
  } else if (unit == "m") {
    *out = static_cast<int64_t>(v * 60000);
  } else if (unit == "h") {
    *out = static_cast<int64_t>(v * 3600000);
  } else {
    return false;
  }
  return true;
}

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream buf;
  buf << in.rdbuf();
  *out = buf.str();
  return true;
}

struct Args {
  std::vector<std::string> items;
  size_t pos = 0;
  bool Has() const { return pos < items.size(); }
  std::string Next() { return items[pos++]; }
};

int Fail(const char* fmt, const std::string& what, int code = kExitUsage) {
  std::fprintf(stderr, "digestctl: ");
  std::fprintf(stderr, fmt, what.c_str());
  std::fprintf(stderr, "\n");
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  std::string socket_flag;
  bool raw_json = false;
  Args args;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--socket" && i + 1 < argc) {
      socket_flag = argv[++i];
    } else if (a.rfind("--socket=", 0) == 0) {
      socket_flag = a.substr(9);
    } else if (a == "--json") {
      raw_json = true;
    } else if (a == "--help" || a == "-h") {
      Usage(stdout);
      return 0;
    } else {
      args.items.push_back(a);
    }
  }
  if (!args.Has()) {
    Usage(stderr);
    return kExitUsage;
  }
  std::string cmd = args.Next();
  json req;
  int64_t wait_ms = 0;
  int64_t interval_ms = 5000;
  if (cmd == "events") {
    json sub = {{"op", "subscribe"}};
    while (args.Has()) {
      std::string a = args.Next();
      if ((a == "--key" || a == "--group" || a == "--prefix" || a == "--lane") && args.Has()) {
        sub[a.substr(2)] = args.Next();
      } else {
        return Fail("unexpected argument '%s'", a);
      }
    }
    return Follow(digestd::ResolveSocketPath(socket_flag), sub, raw_json, /*watch=*/false, 0);
  }
  if (cmd == "follow") {
    if (!args.Has()) return Fail("follow needs a KEY%s", "");
    std::string key = args.Next();
    if (args.Has()) return Fail("unexpected argument '%s'", args.Next());
    return FollowText(digestd::ResolveSocketPath(socket_flag), key);
  }
  if (cmd == "watch") {
    while (args.Has()) {
      std::string a = args.Next();
      if (a == "--interval" && args.Has()) {
        if (!ParseDurationMs(args.Next(), &interval_ms) || interval_ms < 100) {
          return Fail("--interval needs a duration of at least 100ms, such as 5s%s", "");
        }
      } else {
        return Fail("unexpected argument '%s'", a);
      }
    }
    return Follow(digestd::ResolveSocketPath(socket_flag), {{"op", "subscribe"}}, raw_json,
                  /*watch=*/true, interval_ms);
  }
  if (cmd == "jobs") {
    json list = {{"op", "jobs"}};
    bool all = false;
    while (args.Has()) {
      std::string a = args.Next();
      if (a == "--all") {
        all = true;
        continue;
      }
      if (!args.Has()) return Fail("unexpected argument '%s'", a);
      std::string v = args.Next();
      if (a == "--status") {
        json states = json::array();
        std::istringstream parts(v);
        std::string s;
        while (std::getline(parts, s, ',')) states.push_back(s);
        list["status"] = std::move(states);
      } else if (a == "--group" || a == "--kind" || a == "--lane") {
        list[a.substr(2)] = v;
      } else if (a == "--prefix") {
        list["key_prefix"] = v;
      } else if (a == "--limit") {
        char* end = nullptr;
        long n = std::strtol(v.c_str(), &end, 10);
        if (*end != '\0' || n < 1) return Fail("--limit needs a number of jobs, such as 50%s", "");
        list["limit"] = n;
      } else {
        return Fail("unexpected argument '%s'", a);
      }
    }
    return ListJobs(digestd::ResolveSocketPath(socket_flag), list, raw_json, all);
  }
  if (cmd == "status" || cmd == "ping" || cmd == "reload" || cmd == "drain") {
    req = {{"op", cmd}};
    if (args.Has()) return Fail("unexpected argument '%s'", args.Next());
  } else if (cmd == "submit") {
    req = {{"op", "submit"}};
    std::string batch;
    std::string batch_path;
    if (args.Has() && args.items[args.pos].rfind("--", 0) != 0) req["kind"] = args.Next();
    while (args.Has()) {
      std::string a = args.Next();
      if (!args.Has()) return Fail("%s needs a value", a);
      std::string v = args.Next();
      if (a == "--key" || a == "--group" || a == "--lane") {
        req[a.substr(2)] = v;
      } else if (a == "--wait") {
        if (!ParseDurationMs(v, &wait_ms)) return Fail("--wait needs a duration such as 5s%s", "");
        req["wait_ms"] = wait_ms;
      } else if (a == "--ttl") {
        int64_t ttl_ms = 0;
        if (!ParseDurationMs(v, &ttl_ms) || (ttl_ms % 1000) != 0) {
          return Fail("--ttl needs whole seconds such as 90s, 30m or 2h%s", "");
        }
        req["ttl_s"] = ttl_ms / 1000;
      } else if (a == "--input" || a == "--input-file") {
        std::string text = v;
        if (a == "--input-file" && !ReadFile(v, &text)) return Fail("cannot read %s", v);
        json input = json::parse(text, nullptr, false);
        if (input.is_discarded()) return Fail("%s is not valid JSON", a);
        req["input"] = std::move(input);
      } else if (a == "--batch") {
        if (!ReadFile(v, &batch)) return Fail("cannot read %s", v);
        batch_path = v;
      } else {
        return Fail("unknown submit option '%s'", a);
      }
    }
    if (!batch_path.empty()) {
      json all = json::parse(batch, nullptr, false);
      if (all.is_discarded()) {
        all = json::array();
        std::istringstream lines(batch);
        std::string line;
        while (std::getline(lines, line)) {
          if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
          json one = json::parse(line, nullptr, false);
          if (one.is_discarded()) return Fail("a line of the batch file is not JSON: %s", line);
          all.push_back(std::move(one));
        }
      }
      if (all.is_object()) all = json::array({std::move(all)});  // a file of one line
      if (!all.is_array() || all.empty()) {
        return Fail("%s holds no jobs: give one job object per line, or a JSON array of them",
                    batch_path);
      }
      req = {{"op", "submit"}, {"jobs", all}};
    } else if (!req.contains("kind")) {
      return Fail("submit needs a KIND (such as noop) or --batch FILE%s", "");
    }
  } else if (cmd == "result") {
    req = {{"op", "result"}};
    while (args.Has()) {
      std::string a = args.Next();
      if (a == "--wait" && args.Has()) {
        if (!ParseDurationMs(args.Next(), &wait_ms)) {
          return Fail("--wait needs a duration such as 2s or 500ms%s", "");
        }
        req["wait_ms"] = wait_ms;
      } else if (a == "--group" && args.Has()) {
        req["group"] = args.Next();
      } else if (a.rfind("--", 0) != 0 && !req.contains("key")) {
        req["key"] = a;
      } else {
        return Fail("unexpected argument '%s'", a);
      }
    }
    if (!req.contains("key") && !req.contains("group")) {
      return Fail("result needs a KEY or --group G%s", "");
    }
  } else if (cmd == "cancel" || cmd == "retry" || cmd == "delete") {
    req = {{"op", cmd}};
    while (args.Has()) {
      std::string a = args.Next();
      if (a == "--group" && args.Has()) {
        req["group"] = args.Next();
      } else if (a == "--lane" && cmd == "retry" && args.Has()) {
        req["lane"] = args.Next();
      } else if (a.rfind("--", 0) != 0 && !req.contains("key")) {
        req["key"] = a;
      } else {
        return Fail("unexpected argument '%s'", a);
      }
    }
    if (req.contains("key") == req.contains("group")) {
      return Fail("%s needs a KEY or --group G (one of them)", cmd);
    }
  } else if (cmd == "workers") {
    req = {{"op", "workers"}};
    while (args.Has()) {
      std::string a = args.Next();
      if ((a == "--min" || a == "--max" || a == "--reserved") && args.Has()) {
        std::string v = args.Next();
        char* end = nullptr;
        long n = std::strtol(v.c_str(), &end, 10);
        if (*end != '\0') return Fail("%s needs a number", a);
        req[a.substr(2)] = n;
      } else {
        return Fail("unexpected argument '%s'", a);
      }
    }
  } else {
    return Fail("unknown command '%s'; see digestctl --help", cmd);
  }

  std::string path = digestd::ResolveSocketPath(socket_flag);
  digestd::ControlClient client;
  if (digestd::Status st = client.Connect(path); !st.ok()) {
    std::fprintf(stderr, "digestctl: %s\n", st.message().c_str());
    return kExitUnreachable;
  }
  for (;;) {
    auto answer = client.Call(req, static_cast<int>(wait_ms) + 10000);
    if (!answer.ok()) {
      std::fprintf(stderr, "digestctl: %s\n", answer.status().message().c_str());
      return kExitUnreachable;
    }
    json& j = answer.value();
    if (!j.value("ok", false)) {
      if (raw_json) {
        std::printf("%s\n", j.dump().c_str());
      }
      return PrintError(j);
    }
    j.erase("ok");
    if (raw_json) {
      std::printf("%s\n", j.dump().c_str());
    } else if (cmd == "status") {
      std::fputs(digestd::FormatStatus(j).c_str(), stdout);
    } else if (cmd == "result" && j.contains("parts")) {
      std::printf("group %s: %s (%lld of %lld ready)\n", j.value("group", "").c_str(),
                  j.value("status", "").c_str(), j.value("ready", 0LL), j.value("total", 0LL));
      for (const auto& p : j["parts"]) std::fputs(digestd::FormatJob(p).c_str(), stdout);
    } else if (cmd == "result" || (cmd == "submit" && j.contains("attempts"))) {
      std::fputs(digestd::FormatJob(j).c_str(), stdout);
    } else {
      std::printf("%s\n", j.dump(2).c_str());
    }
    std::fflush(stdout);
    // A batch where no job was accepted is a failure even when digestd
    // answered "ok" (it does not today, but the count is what matters).
    if (cmd == "submit" && j.contains("accepted") && j.value("accepted", 0) == 0) {
      std::fprintf(stderr, "digestctl: no job of the batch was accepted\n");
      return kExitError;
    }
    return 0;
  }
}
