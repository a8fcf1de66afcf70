// One measured run of a Node.js job queue for tests/bench/peers/peers.mjs:
// graphile-worker or pg-boss processing N no-op jobs against the database
// in libpq's PG* variables, by one of two methods:
//
//   backlog  N jobs are enqueued in bulk before the clock starts; the clock
//            runs from starting the worker until every job is complete.
//   e2e      the worker is started (and idle, its queue empty) before the
//            clock starts, as durable_bench's digestd is; then this process
//            enqueues the N jobs in batches of --batch from --clients
//            concurrent callers while the worker runs; the clock stops when
//            every job is complete.
//
// The protocol with peers.mjs, one line each on stdout: after the set-up
// (schema installed afresh, backlog enqueued, CHECKPOINT) it prints
// {"ready":true,"pid":...,"observer_pid":...} and waits for a line on stdin;
// that line starts the clock. When every job is complete (the worker's
// handler saw N jobs, then the observer's query confirms none is left
// unfinished in the table) it prints {"done":true,"jobs":N,"seconds":S} and
// waits for stdin to close before stopping the worker and exiting, so the
// caller reads the CPU of this process and of the cluster at the end of the
// run, before the shutdown. observer_pid is the server pid of the
// connection that confirms the end; the caller leaves its CPU out, as
// durable_bench leaves out its LISTEN connection's.
//
//   node runner.mjs --modules DIR --system graphile-worker|pg-boss
//                   --method backlog|e2e [--jobs N] [--batch N] [--clients N]
//
// DIR is where npm installed the two packages (its node_modules' parent).
//
// The tuning (printed by peers.mjs):
//   graphile-worker 0.17: concurrentJobs 16, localQueue.size 100,
//     completeJobBatchDelay 0 (completions batched per tick), maxPoolSize
//     18, no per-job log line; the backlog by graphile_worker.add_jobs in
//     batches.
//   pg-boss 10: 4 workers on the queue, each fetching batchSize 100 and
//     completing the batch with one statement; a worker whose fetch came
//     back full is woken at once (notifyWorker) instead of waiting for its
//     0.5 s polling interval; no maintenance or scheduling during the run;
//     the backlog by boss.insert in batches.
import { createRequire } from "node:module";
import readline from "node:readline";
import { parseArgs } from "node:util";

const { values: args } = parseArgs({
  options: {
    modules: { type: "string" },
    system: { type: "string" },
    method: { type: "string" },
    jobs: { type: "string", default: "20000" },
    batch: { type: "string", default: "500" },
    clients: { type: "string", default: "4" },
  },
});
const jobs = Number(args.jobs);
const batch = Number(args.batch);
const clients = Number(args.clients);
if (!args.modules || !["graphile-worker", "pg-boss"].includes(args.system) ||
    !["backlog", "e2e"].includes(args.method) || !(jobs > 0) || !(batch > 0) || !(clients > 0)) {
  console.error("usage: node runner.mjs --modules DIR --system graphile-worker|pg-boss --method backlog|e2e " +
                "[--jobs N] [--batch N] [--clients N]");
  process.exit(2);
}

const require = createRequire(`${args.modules}/package.json`);
const pg = require("pg");
const connectionString = `postgres://${process.env.PGUSER}@/${process.env.PGDATABASE}` +
  `?host=${encodeURIComponent(process.env.PGHOST)}&port=${process.env.PGPORT}`;

const stdin = readline.createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();
async function nextLine() {
  const { value, done } = await lines.next();
  return done ? null : value;
}
function say(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

// Runs `make(start)` for the batches [0, n) from `clients` callers at once.
async function inBatches(n, size, callers, make) {
  let next = 0;
  const batches = Math.ceil(n / size);
  async function caller() {
    for (;;) {
      const b = next++;
      if (b >= batches) return;
      await make(b * size, Math.min(size, n - b * size));
    }
  }
  await Promise.all(Array.from({ length: callers }, caller));
}

// Polls `countLeft` every 5 ms until it answers 0 (or 30 s pass).
async function confirmEmpty(countLeft) {
  const deadline = Date.now() + 30000;
  for (;;) {
    if ((await countLeft()) === 0) return;
    if (Date.now() > deadline) throw new Error("jobs left unfinished 30 s after the last ran");
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function graphile() {
  const gw = require("graphile-worker");
  const logger = new gw.Logger(() => (level, message) => {
    if (level === "error" || level === "warning") console.error(message);
  });
  const schema = "graphile_worker";
  const admin = new pg.Client({ connectionString });
  await admin.connect();
  await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  await gw.runMigrations({ connectionString, logger });
  const observerPid = (await admin.query("SELECT pg_backend_pid() AS p")).rows[0].p;
  const utils = await gw.makeWorkerUtils({ connectionString, logger });
  const specs = (from, n) =>
    Array.from({ length: n }, (_, i) => ({ identifier: "noop", payload: { i: from + i } }));
  if (args.method === "backlog") {
    await inBatches(jobs, 1000, 1, (from, n) => utils.addJobs(specs(from, n)));
  }
  let ran = 0;
  let allRan;
  const ranAll = new Promise((r) => (allRan = r));
  const start = () => gw.run({
    connectionString,
    logger,
    concurrency: 16,
    maxPoolSize: 18,
    noHandleSignals: true,
    pollInterval: 1000,
    taskList: {
      noop: async () => {
        if (++ran === jobs) allRan();
      },
    },
    preset: { worker: { localQueue: { size: 100 }, completeJobBatchDelay: 0 } },
  });
  let runner = args.method === "e2e" ? await start() : null;
  await admin.query("CHECKPOINT");
  say({ ready: true, pid: process.pid, observer_pid: observerPid });
  if ((await nextLine()) === null) process.exit(1);

  const t0 = process.hrtime.bigint();
  if (args.method === "backlog") {
    runner = await start();
  } else {
    await inBatches(jobs, batch, clients, (from, n) => utils.addJobs(specs(from, n)));
  }
  await ranAll;
  await confirmEmpty(async () =>
    Number((await admin.query(`SELECT count(*) AS n FROM ${schema}._private_jobs`)).rows[0].n));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  say({ done: true, jobs: ran, seconds });
  await nextLine();
  await runner.stop();
  await utils.release();
  await admin.end();
}

async function pgBoss() {
  const PgBoss = require("pg-boss");
  const schema = "pgboss";
  const queue = "noop";
  const admin = new pg.Client({ connectionString });
  await admin.connect();
  await admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  const boss = new PgBoss({
    connectionString,
    schema,
    max: 10,
    supervise: false,
    schedule: false,
  });
  boss.on("error", (e) => console.error(`pg-boss: ${e.message}`));
  await boss.start();
  await boss.createQueue(queue);
  const observerPid = (await admin.query("SELECT pg_backend_pid() AS p")).rows[0].p;
  const insert = (from, n) =>
    boss.insert(Array.from({ length: n }, (_, i) => ({ name: queue, data: { i: from + i } })));
  if (args.method === "backlog") await inBatches(jobs, 1000, 1, insert);
  const batchSize = 100;
  let ran = 0;
  let allRan;
  const ranAll = new Promise((r) => (allRan = r));
  const start = async () => {
    for (let w = 0; w < 4; ++w) {
      let id = null;
      id = await boss.work(queue, { batchSize, pollingIntervalSeconds: 0.5 }, async (got) => {
        ran += got.length;
        if (ran >= jobs) allRan();
        if (got.length === batchSize && id !== null) boss.notifyWorker(id);
      });
    }
  };
  if (args.method === "e2e") await start();
  await admin.query("CHECKPOINT");
  say({ ready: true, pid: process.pid, observer_pid: observerPid });
  if ((await nextLine()) === null) process.exit(1);

  const t0 = process.hrtime.bigint();
  if (args.method === "backlog") await start();
  else await inBatches(jobs, batch, clients, insert);
  await ranAll;
  await confirmEmpty(async () =>
    Number((await admin.query(
      `SELECT count(*) AS n FROM ${schema}.job WHERE name = $1 AND state <> 'completed'`,
      [queue])).rows[0].n));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  say({ done: true, jobs: ran, seconds });
  await nextLine();
  await boss.stop({ graceful: false, wait: true });
  await admin.end();
}

try {
  await (args.system === "graphile-worker" ? graphile() : pgBoss());
  process.exit(0);
} catch (e) {
  console.error(`runner (${args.system}, ${args.method}): ${e.stack || e}`);
  process.exit(1);
}
