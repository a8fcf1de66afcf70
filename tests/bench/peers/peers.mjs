// tests/bench/peers: digestd, graphile-worker and pg-boss side by side on one
// PostgreSQL cluster, in interleaved rounds. scripts/bench --peers runs it
// inside `scripts/pg-throwaway run` (libpq's PG* variables and
// DIGESTD_PG_DIR name the cluster), after npm installed the two packages of
// package.json into a scratch directory (--modules).
//
// Each round runs every system once by each method, the systems in an order
// rotated by one each round (so none always runs first or last):
//
//   backlog  --jobs no-op jobs enqueued in bulk and checkpointed before the
//            clock starts; timed from starting the worker until the last job
//            is complete in the table.
//   e2e      the worker already running and idle (digestd started, the
//            others' workers started on an empty queue); timed from the
//            first enqueue (batches of 500 from 4 concurrent callers) until
//            the last job is complete in the table.
//
// digestd runs under durable_bench (--only backlog|e2e --json): a fresh
// digestd per run, submits over its control socket. graphile-worker and
// pg-boss run under runner.mjs (its header says how each is tuned), which
// enqueues from the worker's own process, so their worker CPU includes the
// enqueue; digestd's submitting clients are durable_bench's own threads,
// shown apart (client column).
//
// CPU per job: the worker process's utime+stime, and the cluster's: the
// postmaster's own and reaped children's time plus every live child's
// (backends including LISTEN sessions, autovacuum launcher and workers,
// walwriter, checkpointer, background writer), read from /proc before and
// after the timed part, as tests/bench/proc_cpu.cpp does for durable_bench.
// The backend of the connection that only watches for the end (LISTEN in
// durable_bench, a count(*) poll in runner.mjs) is left out.
//
// Prints the PostgreSQL settings, then per system and method the median
// jobs/s and CPU per job, and per round the paired ratios of digestd to each
// of the others (the same round, the same minutes of machine load), with
// their medians. Figures only: nothing is asserted.
//
//   node peers.mjs --modules DIR --digestd PATH --durable-bench PATH
//                  [--jobs N] [--rounds N] [--label TEXT]
import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const { values: args } = parseArgs({
  options: {
    modules: { type: "string" },
    digestd: { type: "string" },
    "durable-bench": { type: "string" },
    jobs: { type: "string", default: "20000" },
    rounds: { type: "string", default: "7" },
    label: { type: "string", default: "" },
  },
});
const jobs = Number(args.jobs);
const rounds = Number(args.rounds);
if (!args.modules || !args.digestd || !args["durable-bench"] || !(jobs > 0) || !(rounds > 0)) {
  console.error("usage: node peers.mjs --modules DIR --digestd PATH --durable-bench PATH " +
                "[--jobs N] [--rounds N] [--label TEXT]");
  process.exit(2);
}
for (const v of ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "DIGESTD_PG_DIR"]) {
  if (!process.env[v]) {
    console.error(`peers: ${v} is not set; run under scripts/pg-throwaway run (scripts/bench --peers does)`);
    process.exit(2);
  }
}
const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(`${args.modules}/package.json`);
const pg = require("pg");

function die(message) {
  console.error(`peers: ${message}`);
  process.exit(1);
}

// ---------------------------------------------------------------- CPU

const tick = 1e6 / 100;  // µs per clock tick (USER_HZ is 100 on Linux)

function stat(pid) {
  let text;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return null;
  }
  // Fields after "(comm) ": state ppid ... utime(14) stime cutime cstime.
  const f = text.slice(text.lastIndexOf(")") + 2).split(" ");
  return { ppid: Number(f[1]), utime: Number(f[11]), stime: Number(f[12]),
           cutime: Number(f[13]), cstime: Number(f[14]) };
}

function processUs(pid) {
  const s = stat(pid);
  return s ? (s.utime + s.stime) * tick : 0;
}

const postmaster = Number(
  fs.readFileSync(`${process.env.DIGESTD_PG_DIR}/data/postmaster.pid`, "utf8").split("\n")[0]);

function clusterUs() {
  let ticks = 0;
  for (const name of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    const s = stat(pid);
    if (!s) continue;
    if (pid === postmaster) ticks += s.utime + s.stime + s.cutime + s.cstime;
    else if (s.ppid === postmaster) ticks += s.utime + s.stime;
  }
  return ticks * tick;
}

// ------------------------------------------------------------- the runs

function lineReader(stream) {
  const it = readline.createInterface({ input: stream })[Symbol.asyncIterator]();
  return async () => {
    const { value, done } = await it.next();
    return done ? null : value;
  };
}

function exited(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve(child.exitCode);
    else child.on("exit", (code, signal) => resolve(signal ? signal : code));
  });
}

// digestd: durable_bench measures it and prints one JSON line.
async function runDigestd(method) {
  const child = spawn(args["durable-bench"], [
    "--digestd", args.digestd, "--only", method, "--json", "--jobs", String(jobs),
    "--pg-dir", process.env.DIGESTD_PG_DIR,
    "--conninfo", `host=${process.env.PGHOST} port=${process.env.PGPORT} ` +
      `user=${process.env.PGUSER} dbname=${process.env.PGDATABASE}`,
  ], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "", err = "";
  child.stdout.on("data", (d) => (out += d));
  child.stderr.on("data", (d) => (err += d));
  const code = await exited(child);
  const line = out.split("\n").find((l) => l.startsWith("{"));
  if (code !== 0 || !line) die(`durable_bench --only ${method} failed (${code}):\n${out}${err}`);
  const r = JSON.parse(line);
  if (r.stalled) die(`digestd stalled (${method}):\n${out}`);
  return { jobs: r.jobs, seconds: r.seconds, worker: r.worker_us, pg: r.pg_us,
           client: r.client_us };
}

// graphile-worker, pg-boss: runner.mjs, measured from here.
async function runNode(system, method) {
  const child = spawn(process.execPath, [
    path.join(here, "runner.mjs"), "--modules", args.modules, "--system", system,
    "--method", method, "--jobs", String(jobs),
  ], { stdio: ["pipe", "pipe", "pipe"] });
  let err = "";
  child.stderr.on("data", (d) => (err += d));
  const next = lineReader(child.stdout);
  const fail = async (what) => {
    child.stdin.end();
    await exited(child);
    die(`${system} ${method}: ${what}\n${err}`);
  };
  const readyLine = await next();
  if (!readyLine) return fail("no ready line");
  const ready = JSON.parse(readyLine);
  const w0 = processUs(ready.pid), o0 = processUs(ready.observer_pid), pg0 = clusterUs();
  child.stdin.write("go\n");
  const doneLine = await next();
  const pg1 = clusterUs(), w1 = processUs(ready.pid), o1 = processUs(ready.observer_pid);
  if (!doneLine) return fail("no done line");
  const done = JSON.parse(doneLine);
  child.stdin.end();
  const code = await exited(child);
  if (code !== 0) die(`${system} ${method}: exit ${code}\n${err}`);
  return { jobs: done.jobs, seconds: done.seconds, worker: w1 - w0, pg: pg1 - pg0 - (o1 - o0),
           client: null };
}

// ------------------------------------------------------------- figures

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const fmt = (x, d = 0) => x.toLocaleString("en-US", { minimumFractionDigits: d,
                                                       maximumFractionDigits: d });
const pad = (s, n) => String(s).padStart(n);
const padEnd = (s, n) => String(s).padEnd(n);

async function settings() {
  const c = new pg.Client({ connectionString: `postgres://${process.env.PGUSER}@/` +
    `${process.env.PGDATABASE}?host=${encodeURIComponent(process.env.PGHOST)}` +
    `&port=${process.env.PGPORT}` });
  await c.connect();
  const v = (await c.query("SHOW server_version")).rows[0].server_version;
  const s = (await c.query(
    `SELECT string_agg(name || '=' || current_setting(name), ' ' ORDER BY name) AS s
       FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes',
         'wal_level', 'shared_buffers', 'max_wal_size', 'checkpoint_timeout', 'autovacuum')`,
  )).rows[0].s;
  await c.end();
  return `PostgreSQL ${v}: ${s}`;
}

const systems = ["digestd", "graphile-worker", "pg-boss"];
const methods = ["backlog", "e2e"];

const header = await settings();
const durable = /fsync=on/.test(header) && /synchronous_commit=on/.test(header) &&
  /full_page_writes=on/.test(header);
console.log(`peers: ${jobs} no-op jobs per run, ${rounds} rounds, ${os.cpus().length} CPUs shared by all`);
console.log(header);
console.log(durable ? "durability: ON (PostgreSQL's durable defaults)"
                    : "durability: OFF -- these figures are NOT of durable work");
const versions = ["graphile-worker", "pg-boss"].map(
  (p) => `${p} ${require(`${p}/package.json`).version}`).join(", ");
console.log(`${versions}, Node.js ${process.version}; ${process.env.PEERS_DIGESTD_VERSION || "digestd " + args.digestd}`);
console.log("tuning: graphile-worker concurrency 16, localQueue.size 100, completeJobBatchDelay 0; " +
  "pg-boss 4 workers, batchSize 100, woken at once after a full batch (notifyWorker), polling 0.5 s; " +
  "digestd as durable_bench configures it");

const results = {};  // system -> method -> [per round]
for (const s of systems) results[s] = { backlog: [], e2e: [] };
for (let r = 0; r < rounds; ++r) {
  const order = systems.map((_, i) => systems[(i + r) % systems.length]);
  const line = [];
  for (const m of r % 2 ? [...methods].reverse() : methods) {
    for (const s of order) {
      const x = s === "digestd" ? await runDigestd(m) : await runNode(s, m);
      if (x.jobs < jobs) die(`${s} ${m}: ${x.jobs} of ${jobs} jobs done`);
      results[s][m].push(x);
      line.push(`${s} ${m} ${fmt(x.jobs / x.seconds)}/s`);
    }
  }
  console.log(`round ${r + 1}/${rounds}: ${line.join(", ")}`);
}

const per = (x) => ({ rate: x.jobs / x.seconds, worker: x.worker / x.jobs, pg: x.pg / x.jobs,
                      total: (x.worker + x.pg) / x.jobs,
                      client: x.client === null ? null : x.client / x.jobs });
const title = `${args.label ? args.label + ": " : ""}${durable ? "DURABLE" : "NOT DURABLE (fsync, synchronous_commit, full_page_writes off)"}, ` +
  `${jobs} no-op jobs, medians of ${rounds} interleaved rounds`;
console.log(`\n${title}`);
console.log(`${padEnd("system", 16)} ${padEnd("method", 8)} ${pad("jobs/s", 8)} ` +
  `${pad("worker us/job", 14)} ${pad("postgres us/job", 16)} ${pad("total us/job", 13)} ` +
  `${pad("client us/job", 14)}`);
for (const m of methods) {
  for (const s of systems) {
    const xs = results[s][m].map(per);
    const client = s === "digestd"
      ? fmt(median(xs.map((x) => x.client)), 1) : "(in worker)";
    console.log(`${padEnd(s, 16)} ${padEnd(m, 8)} ${pad(fmt(median(xs.map((x) => x.rate))), 8)} ` +
      `${pad(fmt(median(xs.map((x) => x.worker)), 1), 14)} ` +
      `${pad(fmt(median(xs.map((x) => x.pg)), 1), 16)} ` +
      `${pad(fmt(median(xs.map((x) => x.total)), 1), 13)} ${pad(client, 14)}`);
  }
}
console.log("\nPaired ratios, digestd / other, per round (jobs/s: higher is better for digestd; " +
  "total CPU per job: lower is)");
for (const m of methods) {
  for (const other of ["graphile-worker", "pg-boss"]) {
    const rate = [], cpu = [];
    for (let r = 0; r < rounds; ++r) {
      const d = per(results.digestd[m][r]), o = per(results[other][m][r]);
      rate.push(d.rate / o.rate);
      cpu.push(d.total / o.total);
    }
    const list = (xs) => xs.map((x) => x.toFixed(2)).join(" ");
    console.log(`  ${padEnd(m, 8)} digestd / ${padEnd(other, 16)} jobs/s ${list(rate)}  ` +
      `median ${median(rate).toFixed(2)}x`);
    console.log(`  ${padEnd("", 8)} ${padEnd("", 26)} CPU    ${list(cpu)}  ` +
      `median ${median(cpu).toFixed(2)}x`);
  }
}
