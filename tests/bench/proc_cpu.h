// CPU time of processes, read from /proc, for the benchmarks that count
// digestd's and the PostgreSQL cluster's CPU per job (store_bench,
// durable_bench). Linux only; every reader answers 0 (or nullopt) when a
// file cannot be read, so a vanished process counts as nothing.
#pragma once

#include <optional>
#include <string>

namespace digestd::bench {

struct ProcStat {
  long ppid = 0;
  std::string comm;
  unsigned long long utime = 0, stime = 0, cutime = 0, cstime = 0;  // clock ticks
};

// /proc/<pid>/stat's fields that matter here.
std::optional<ProcStat> ReadStat(long pid);
// utime+stime of `pid` (all its threads), microseconds.
double ProcessCpuUs(long pid);
// This process's CPU time so far (getrusage), microseconds.
double SelfCpuUs();
// The cluster's CPU so far, microseconds: the postmaster's own and its reaped
// children's (cutime+cstime: backends and autovacuum workers that exited),
// plus its live children's. Without a postmaster pid (<= 0), every process
// named postgres.
double PostgresCpuUs(long postmaster);
// The postmaster's pid from a pg-throwaway directory; 0 when unknown.
long PostmasterPid(const std::string& pg_dir);

}  // namespace digestd::bench
