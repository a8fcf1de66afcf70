#include "proc_cpu.h"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

namespace digestd::bench {

namespace {

double TicksToUs(unsigned long long ticks) {
  return static_cast<double>(ticks) * 1e6 / static_cast<double>(sysconf(_SC_CLK_TCK));
}

}  // namespace

std::optional<ProcStat> ReadStat(long pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  if (!std::getline(in, text)) return std::nullopt;
  size_t open = text.find('('), close = text.rfind(')');
  if (open == std::string::npos || close == std::string::npos) return std::nullopt;
  ProcStat s;
  s.comm = text.substr(open + 1, close - open - 1);
  std::istringstream rest(text.substr(close + 2));
  // Fields 3.. of proc(5): state ppid pgrp session tty_nr tpgid flags minflt
  // cminflt majflt cmajflt utime stime cutime cstime.
  std::string state;
  long skip = 0;
  rest >> state >> s.ppid;
  for (int i = 0; i < 9; ++i) rest >> skip;
  rest >> s.utime >> s.stime >> s.cutime >> s.cstime;
  if (!rest) return std::nullopt;
  return s;
}

double ProcessCpuUs(long pid) {
  auto s = ReadStat(pid);
  return s ? TicksToUs(s->utime + s->stime) : 0;
}

double SelfCpuUs() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto us = [](const timeval& tv) { return static_cast<double>(tv.tv_sec) * 1e6 + tv.tv_usec; };
  return us(ru.ru_utime) + us(ru.ru_stime);
}

double PostgresCpuUs(long postmaster) {
  unsigned long long ticks = 0;
  DIR* d = opendir("/proc");
  if (d == nullptr) return 0;
  while (dirent* e = readdir(d)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0') continue;
    auto s = ReadStat(pid);
    if (!s) continue;
    if (postmaster > 0) {
      if (pid == postmaster) {
        ticks += s->utime + s->stime + s->cutime + s->cstime;
      } else if (s->ppid == postmaster) {
        ticks += s->utime + s->stime;
      }
    } else if (s->comm == "postgres") {
      ticks += s->utime + s->stime;
    }
  }
  closedir(d);
  return TicksToUs(ticks);
}

long PostmasterPid(const std::string& pg_dir) {
  if (pg_dir.empty()) return 0;
  std::ifstream in(pg_dir + "/data/postmaster.pid");
  long pid = 0;
  return in >> pid ? pid : 0;
}

}  // namespace digestd::bench
