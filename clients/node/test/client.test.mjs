// The Node client against a running digestd: run when $DIGESTD_SOCKET names
// its control socket (clients/run-tests starts one with PostgreSQL and the
// fake Ollama and sets it), skipped, saying so, otherwise.
import test from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as dc from '../index.js';

const SOCKET = process.env.DIGESTD_SOCKET ?? '';
const MAX_BATCH = Number(process.env.DIGESTD_TEST_MAX_BATCH ?? 0);
const IDLE_TIMEOUT_S = Number(process.env.DIGESTD_TEST_IDLE_TIMEOUT_S ?? 0);
const skip = SOCKET ? false : 'no digestd to test against: $DIGESTD_SOCKET is not set (clients/run-tests starts one and sets it)';
const RUN = randomBytes(5).toString('hex');
const key = (name) => `nodetest:${RUN}:${name}`;
const CHAPTER = 'Marta Hale came to the lighthouse on Gull Rock in the first week of October. ' +
  'The old keeper had left a ledger on the kitchen table.';

let helloAnswer = null;
async function requireOp(t, op) {
  if (!helloAnswer) {
    const c = new dc.Client({ socket: SOCKET });
    try { helloAnswer = await c.hello(); } finally { c.close(); }
  }
  if (helloAnswer.ops.includes(op)) return true;
  const reason = `this digestd does not offer op "${op}" (hello lists ${helloAnswer.ops.join(', ')}); the test runs once it does`;
  console.log(`skipped: ${t.name}: ${reason}`);
  t.skip(reason);
  return false;
}

async function requireFeature(t, feature) {
  if (!helloAnswer) {
    const c = new dc.Client({ socket: SOCKET });
    try { helloAnswer = await c.hello(); } finally { c.close(); }
  }
  if (helloAnswer.features.includes(feature)) return true;
  const reason = `this digestd does not have feature "${feature}" (hello lists ${helloAnswer.features.join(', ')}); the test runs once it does`;
  console.log(`skipped: ${t.name}: ${reason}`);
  t.skip(reason);
  return false;
}

// Runs fn with a fresh client and closes it afterwards.
function live(name, fn) {
  test(name, { skip }, async (t) => {
    const c = new dc.Client({ socket: SOCKET, timeoutMs: 30000 });
    try {
      await fn(c, t);
    } finally {
      c.close();
    }
  });
}

live('hello, ping and status', async (c) => {
  const h = await c.hello();
  assert.equal(h.protocol, 1);
  assert.equal(h.store, 'postgres');
  for (const op of ['hello', 'ping', 'status', 'submit', 'result', 'cancel', 'subscribe']) assert.ok(h.ops.includes(op), op);
  for (const kind of ['noop', 'summarize', 'embed', 'generate']) assert.ok(h.kinds.includes(kind), kind);
  assert.equal(await c.ping(), true);
  assert.ok('version' in await c.status());
});

live('submit is idempotent by key; without a key digestd makes one', async (c) => {
  const k = key('idem');
  const first = await c.submit('noop', {}, { key: k });
  assert.equal(first.key, k);
  assert.equal(first.existing, false);
  assert.equal((await c.submit('noop', {}, { key: k })).existing, true);
  assert.equal((await c.result(k, { waitMs: 10000 })).status, 'done');
  assert.match((await c.submit('noop')).key, /^auto:/);
});

live('submit with a wait answers the job view', async (c) => {
  const view = await c.submit('noop', { sleep_ms: 50 }, { key: key('sync'), waitMs: 10000 });
  assert.equal(view.status, 'done');
  assert.equal(view.lane, 'interactive');
  assert.equal(view.result.slept_ms, 50);
});

live('result waits, and a wait that runs out is an answer', async (c) => {
  const k = key('wait');
  await c.submit('noop', { sleep_ms: 300 }, { key: k });
  assert.ok(['queued', 'running'].includes((await c.result(k)).status));
  assert.equal((await c.result(k, { waitMs: 10000 })).status, 'done');
  const k2 = key('wait-out');
  await c.submit('noop', { sleep_ms: 3000 }, { key: k2 });
  assert.ok(['queued', 'running'].includes((await c.result(k2, { waitMs: 200 })).status));
  await c.cancel(k2);
});

live('summarize, embed and generate through the fake Ollama', async (c) => {
  const s = await c.submit('summarize', { title: 'Chapter 1', text: CHAPTER, max_words: 40 }, { key: key('sum'), waitMs: 30000 });
  assert.equal(s.status, 'done');
  assert.ok(s.result.summary);
  const e = await c.submit('embed', { texts: ['lighthouse', 'ledger'] }, { key: key('emb'), waitMs: 30000 });
  assert.equal(e.status, 'done');
  assert.equal(e.result.embeddings.length, 2);
  assert.equal(e.result.embeddings[0].length, e.result.dims);
  const g = await c.submit('generate', { prompt: 'Name a lighthouse.' }, { key: key('gen'), waitMs: 30000 });
  assert.equal(g.status, 'done');
  assert.ok(g.result.text);
});

live('submitMany into a group, read back with result and the group handle', async (c) => {
  const grp = key('batch');
  const jobs = [0, 1, 2, 3, 4].map((i) => ({ kind: 'noop', key: key(`batch-${i}`), input: { sleep_ms: 20 * i } }));
  const answer = await c.submitMany(jobs, { group: grp });
  assert.equal(answer.accepted, 5);
  assert.equal(answer.failed, 0);
  assert.deepEqual(answer.jobs.map((j) => j.key), jobs.map((j) => j.key));
  const view = await c.group(grp).result({ waitMs: 20000 });
  assert.equal(view.status, 'completed');
  assert.equal(view.total, 5);
  assert.equal(view.ready, 5);
  assert.deepEqual(view.parts.map((p) => p.key), jobs.map((j) => j.key));
  const g = c.group(key('handle'));
  await g.submit('noop', {}, { key: key('handle-1') });
  await g.submitMany([{ kind: 'noop' }]);
  const v2 = await c.result({ group: g.name, waitMs: 20000 });
  assert.equal(v2.status, 'completed');
  assert.equal(v2.total, 2);
});

live('a bad batch stores nothing; an oversized one is too_large', async (c) => {
  await assert.rejects(c.submitMany([{ kind: 'noop', key: key('bad-0') }, { kind: 'no_such_kind' }]),
    (e) => e instanceof dc.BadRequest && e.detail.includes('jobs[1]'));
  await assert.rejects(c.result(key('bad-0')), dc.NotFound);
  assert.ok(MAX_BATCH > 0, '$DIGESTD_TEST_MAX_BATCH (the daemon\'s [jobs] max_batch) must be set');
  await assert.rejects(c.submitMany(Array.from({ length: MAX_BATCH + 1 }, () => ({ kind: 'noop' }))), dc.TooLarge);
});

live('error answers reject with their class; the connection stays usable', async (c) => {
  await assert.rejects(c.submit('no_such_kind'), (e) => e instanceof dc.BadRequest && e.detail.includes('summarize'));
  await assert.rejects(c.submit('summarize', { text: 7 }), dc.BadRequest);
  await assert.rejects(c.result(key('never')), (e) => e instanceof dc.NotFound && e.answer.ok === false);
  await assert.rejects(c.result({ group: key('no-group') }), dc.NotFound);
  await assert.rejects(c.request('no_such_op'), dc.UnknownOp);
  await assert.rejects(c.cancel(key('never')), dc.NotFound);
  assert.equal(await c.ping(), true);
});

live('pipelined requests get their own answers', async (c) => {
  const keys = Array.from({ length: 20 }, (_, i) => key(`pipe-${i}`));
  const answers = await Promise.all(keys.map((k) => c.submit('noop', {}, { key: k })));
  assert.deepEqual(answers.map((a) => a.key), keys);
  const mixed = await Promise.allSettled([c.ping(), c.result(key('missing')), c.ping()]);
  assert.equal(mixed[0].value, true);
  assert.ok(mixed[1].reason instanceof dc.NotFound);
  assert.equal(mixed[2].value, true);
  const views = await Promise.all(keys.map((k) => c.result(k, { waitMs: 20000 })));
  assert.ok(views.every((v) => v.status === 'done'));
});

live('cancel', async (c) => {
  const k = key('cancel');
  await c.submit('noop', { sleep_ms: 8000 }, { key: k });
  assert.equal((await c.cancel(k)).cancelled, true);
  assert.equal((await c.result(k, { waitMs: 10000 })).status, 'cancelled');
  assert.equal((await c.cancel(k)).cancelled, false);
});

live('workers reads the limits; close and reconnect', async (c) => {
  const w = await c.workers();
  assert.ok(w.min <= w.max);
  c.close();
  assert.equal(await c.ping(), true);
  const c2 = await dc.connect({ socket: SOCKET });
  assert.equal(await c2.ping(), true);
  c2.close();
});

live('reconnects when digestd closed an idle connection', async (c) => {
  assert.ok(IDLE_TIMEOUT_S > 0, '$DIGESTD_TEST_IDLE_TIMEOUT_S (the daemon\'s [control] idle_timeout_s) must be set');
  assert.equal(await c.ping(), true);
  await new Promise((resolve) => { setTimeout(resolve, IDLE_TIMEOUT_S * 1000 + 1500); });
  assert.equal(c._conn.dead, true, 'digestd closed it');
  assert.equal(await c.ping(), true);
});

live('subscribe: job events and the summary as it is written', async (c) => {
  const grp = key('sub');
  const k = key('sub-1');
  const sub = await c.subscribe({ group: grp, partial: true, timeoutMs: 20000 });
  assert.equal(sub.answer.subscribed, true);
  await c.submit('summarize', { text: CHAPTER, max_words: 30 }, { key: k, group: grp });
  const states = [];
  const texts = [];
  for await (const ev of sub) {
    assert.equal(ev.key, k);
    assert.equal(ev.group, grp);
    if (ev.event === 'text') texts.push(ev.text);
    else {
      states.push(ev.state);
      if (['done', 'failed', 'cancelled'].includes(ev.state)) break;
    }
  }
  assert.equal(sub.closed, true, 'leaving the loop closes the stream');
  assert.equal(states[0], 'queued');
  assert.ok(states.includes('started'));
  assert.equal(states.at(-1), 'done');
  assert.ok(texts.length >= 2, 'the summary was sent as it grew');
  for (let i = 1; i < texts.length; i++) assert.ok(texts[i].startsWith(texts[i - 1]));
  const view = await c.result(k);
  assert.equal(texts.at(-1).trim(), view.result.summary.trim());
});

live('subscribe filters by prefix and key; a bad filter rejects', async (c) => {
  const prefix = `${key('pref')}/`;
  const byPrefix = await c.subscribe({ prefix, timeoutMs: 20000 });
  const byKey = await c.subscribe({ key: `${prefix}b`, timeoutMs: 20000 });
  await c.submit('noop', {}, { key: `${prefix}a` });
  await c.submit('noop', {}, { key: key('elsewhere') });
  await c.submit('noop', {}, { key: `${prefix}b` });
  const seen = new Set();
  for await (const ev of byPrefix) {
    assert.ok(ev.key.startsWith(prefix));
    if (ev.state === 'done') seen.add(ev.key);
    if (seen.size === 2) break;
  }
  assert.deepEqual([...seen].sort(), [`${prefix}a`, `${prefix}b`]);
  for await (const ev of byKey) {
    assert.equal(ev.key, `${prefix}b`);
    if (ev.state === 'done') break;
  }
  await assert.rejects(c.subscribe({ lane: 'sideways' }), dc.BadRequest);
});

live('a subscription times out when nothing happens', async (c) => {
  const sub = await c.subscribe({ key: key('quiet'), timeoutMs: 200 });
  await assert.rejects(sub.next(), dc.Timeout);
  sub.close();
  assert.deepEqual(await sub.next(), { value: undefined, done: true });
});

// Ops that arrive in a later digestd: each test runs once hello lists its op.

async function failedJob(c, name) {
  // The fake Ollama knows no such model: the job fails at once.
  const k = key(name);
  await c.submit('generate', { prompt: 'x', model: 'no-such-model' }, { key: k });
  assert.equal((await c.result(k, { waitMs: 20000 })).status, 'failed');
  return k;
}

live('jobs lists pages', async (c, t) => {
  if (!await requireOp(t, 'jobs')) return;
  const prefix = `${key('list')}/`;
  await c.submitMany([0, 1, 2, 3, 4].map((i) => ({ kind: 'noop', key: `${prefix}${i}` })));
  const page = await c.jobs({ keyPrefix: prefix, limit: 2 });
  assert.ok(page.jobs.length <= 2);
  assert.ok(page.next);
  const keys = [];
  for await (const j of c.iterJobs({ keyPrefix: prefix, limit: 2 })) keys.push(j.key);
  assert.deepEqual(keys.sort(), [0, 1, 2, 3, 4].map((i) => `${prefix}${i}`));
});

live('retry', async (c, t) => {
  if (!await requireOp(t, 'retry')) return;
  const k = await failedJob(c, 'retry');
  const events = await c.subscribe({ key: k, timeoutMs: 20000 });
  await c.retry(k);
  const states = [];
  for await (const ev of events) {
    states.push(ev.state);
    if (['done', 'failed', 'cancelled'].includes(ev.state)) break;
  }
  assert.equal(states[0], 'queued');
  assert.ok(states.includes('started'), 'the retried job ran again');
  assert.equal((await c.result(k)).status, 'failed');
  const done = await c.submit('noop', {}, { key: key('retry-done'), waitMs: 10000 });
  await assert.rejects(c.retry(done.key), dc.BadState);
});

live('conflict and replace', async (c, t) => {
  if (!await requireFeature(t, 'submit_conflict')) return;
  const k = key('replace');
  await c.submit('noop', { sleep_ms: 10 }, { key: k, waitMs: 10000 });
  await assert.rejects(c.submit('noop', { sleep_ms: 20 }, { key: k }),
    (e) => e instanceof dc.Conflict && e.detail.includes('replace'));
  const answer = await c.submit('noop', { sleep_ms: 20 }, { key: k, replace: true });
  assert.equal(answer.replaced, true);
  assert.equal((await c.result(k, { waitMs: 10000 })).result.slept_ms, 20);
});

live('ttl: an expired result runs again', async (c, t) => {
  if (!await requireFeature(t, 'ttl')) return;
  const k = key('ttl');
  await c.submit('noop', { sleep_ms: 10 }, { key: k, ttlS: 1, waitMs: 10000 });
  const fresh = await c.submit('noop', { sleep_ms: 10 }, { key: k, ttlS: 1 });
  assert.equal(fresh.existing, true);
  assert.equal(fresh.expired, undefined);
  await new Promise((r) => setTimeout(r, 1200));
  const again = await c.submit('noop', { sleep_ms: 10 }, { key: k, ttlS: 1 });
  assert.equal(again.expired, true);
  assert.equal((await c.result(k, { waitMs: 10000 })).status, 'done');
});

live('after: a part gets the results of the parts it needs', async (c, t) => {
  if (!await requireFeature(t, 'after')) return;
  const g = c.group(key('after'));
  await g.submitMany([
    { kind: 'similarity', key: `${g.name}:x`, input: { a: [1, 0], b: [0.6, 0.8] } },
    { kind: 'similarity', key: `${g.name}:y`, input: { a: [1, 0], b: [1, 0] } },
    { kind: 'noop', key: `${g.name}:z`, after: [`${g.name}:x`, `${g.name}:y`] },
  ]);
  const view = await g.result({ waitMs: 20000 });
  assert.equal(view.status, 'completed', JSON.stringify(view));
  await assert.rejects(c.submitMany([{ kind: 'noop', key: key('lone'), group: 'q', after: ['nothing'] }]),
    (e) => e instanceof dc.BadRequest && e.detail.includes('earlier job'));
});

live('delete', async (c, t) => {
  if (!await requireOp(t, 'delete')) return;
  const k = key('delete');
  await c.submit('noop', {}, { key: k, waitMs: 10000 });
  const answer = await c.delete(k);
  assert.deepEqual([answer.deleted, answer.skipped], [1, 0]);
  await assert.rejects(c.result(k), dc.NotFound);
});

live('cancel a group', async (c, t) => {
  if (!await requireFeature(t, 'cancel_group')) return;
  const g = c.group(key('cancel-group'));
  await g.submitMany([1, 2, 3].map(() => ({ kind: 'noop', input: { sleep_ms: 8000 } })));
  assert.equal((await g.cancel()).cancelled, 3);
  const view = await g.result({ waitMs: 20000 });
  assert.equal(view.status, 'failed');
  assert.ok(view.parts.every((p) => p.status === 'cancelled'));
});
