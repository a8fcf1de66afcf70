// Checks that need no digestd: errors by code, request building, the socket path.
import test from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as dc from '../index.js';

const CODES = {
  bad_request: dc.BadRequest, unknown_op: dc.UnknownOp, too_large: dc.TooLarge,
  not_found: dc.NotFound, unavailable: dc.Unavailable, forbidden: dc.Forbidden,
  queue_full: dc.QueueFull, invalid_config: dc.InvalidConfig, internal: dc.Internal,
  conflict: dc.Conflict, bad_state: dc.BadState,
};

test('every error code has its class', () => {
  for (const [code, Cls] of Object.entries(CODES)) {
    const answer = { ok: false, id: 1, error: { code, message: 'what; do this' } };
    const err = dc.errorFromAnswer(answer);
    assert.equal(err.constructor, Cls, code);
    assert.ok(err instanceof dc.DigestdError);
    assert.ok(err instanceof Error);
    assert.equal(err.code, code);
    assert.equal(err.detail, 'what; do this');
    assert.equal(err.message, `${code}: what; do this`);
    assert.equal(err.name, Cls.name);
    assert.equal(err.answer, answer);
  }
});

test('the error codes of docs/protocol.md all have a class', (t) => {
  const docs = fileURLToPath(new URL('../../../docs/protocol.md', import.meta.url));
  if (!existsSync(docs)) {
    t.skip('docs/protocol.md is not beside this checkout');
    return;
  }
  const table = readFileSync(docs, 'utf8').split('## Error codes')[1];
  const codes = table.split('\n').filter((l) => l.startsWith('| `')).map((l) => l.split('`')[1]);
  assert.ok(codes.length > 0);
  for (const code of codes) assert.ok(dc.ERRORS_BY_CODE[code], `${code} has no error class`);
});

test('an unknown code is the base class', () => {
  const err = dc.errorFromAnswer({ ok: false, error: { code: 'brand_new', message: 'm' } });
  assert.equal(err.constructor, dc.DigestdError);
  assert.equal(err.code, 'brand_new');
  assert.match(dc.errorFromAnswer({ ok: false }).message, /without an error object/);
});

test('submit requests', () => {
  assert.deepEqual(
    dc.submitRequest('summarize', { text: 't' }, { key: 'k', group: 'g', lane: 'interactive', waitMs: 1500, replace: true }),
    { op: 'submit', kind: 'summarize', input: { text: 't' }, key: 'k', group: 'g', lane: 'interactive', replace: true, wait_ms: 1500 });
  assert.deepEqual(dc.submitRequest('noop'), { op: 'submit', kind: 'noop' });
  assert.deepEqual(dc.submitRequest('noop', {}, { ttlS: 60 }), { op: 'submit', kind: 'noop', input: {}, ttl_s: 60 });
  assert.throws(() => dc.submitRequest('noop', {}, { ttlS: -1 }), RangeError);
  assert.throws(() => dc.submitRequest('noop', {}, { waitMs: 300001 }), /at most 300000/);
  assert.throws(() => dc.submitRequest('noop', {}, { waitMs: -1 }), RangeError);
  assert.throws(() => dc.submitRequest(''), /kind/);
});

test('batch requests take the group and lane', () => {
  const req = dc.batchRequest([{ kind: 'noop' }, { kind: 'noop', group: 'other' }], { group: 'g', lane: 'background' });
  assert.deepEqual(req.jobs, [{ kind: 'noop', group: 'g', lane: 'background' }, { kind: 'noop', group: 'other', lane: 'background' }]);
  assert.throws(() => dc.batchRequest([]), /non-empty/);
  assert.throws(() => dc.batchRequest(['noop']), /jobs\[0\]/);
});

test('jobs and subscribe requests', () => {
  assert.deepEqual(dc.jobsRequest({ status: 'done', keyPrefix: 'a:', minAgeS: 60, limit: 10, cursor: 'c' }),
    { op: 'jobs', status: 'done', key_prefix: 'a:', min_age_s: 60, limit: 10, cursor: 'c' });
  assert.deepEqual(dc.jobsRequest({ status: ['failed', 'cancelled'], group: 'g', maxAgeS: 3600 }),
    { op: 'jobs', status: ['failed', 'cancelled'], group: 'g', max_age_s: 3600 });
  assert.deepEqual(dc.subscribeRequest({ group: 'g', partial: true }), { op: 'subscribe', group: 'g', partial: true });
});

test('terminal states', () => {
  assert.equal(dc.isTerminal({ key: 'k', status: 'done' }), true);
  assert.equal(dc.isTerminal({ key: 'k', group: 'g', status: 'running' }), false);
  assert.equal(dc.isTerminal({ group: 'g', total: 1, status: 'partial', parts: [] }), true);
  assert.equal(dc.isTerminal({ group: 'g', total: 1, status: 'in_progress', parts: [] }), false);
});

test('the socket path', () => {
  const saved = process.env.DIGESTD_SOCKET;
  try {
    process.env.DIGESTD_SOCKET = '/tmp/x.sock';
    assert.equal(dc.socketPath(), '/tmp/x.sock');
    assert.equal(dc.socketPath('/a.sock'), '/a.sock');
    delete process.env.DIGESTD_SOCKET;
    assert.equal(dc.socketPath(), '/run/digestd/control.sock');
    assert.equal(new dc.Client().socketPath, dc.DEFAULT_SOCKET);
  } finally {
    if (saved === undefined) delete process.env.DIGESTD_SOCKET;
    else process.env.DIGESTD_SOCKET = saved;
  }
});

test('a missing socket is a ConnectionFailed naming it', async () => {
  const c = new dc.Client({ socket: '/nonexistent/digestd.sock' });
  await assert.rejects(c.ping(), (e) => e instanceof dc.ConnectionFailed && e.code === 'io_error' &&
    e.message.includes('/nonexistent/digestd.sock') && e.message.includes('DIGESTD_SOCKET'));
  await assert.rejects(c.subscribe(), dc.ConnectionFailed);
  c.close();
});

test('index.d.ts declares exactly what index.js exports', async () => {
  const dts = readFileSync(fileURLToPath(new URL('../index.d.ts', import.meta.url)), 'utf8');
  const declared = [...dts.matchAll(/^export declare (?:const|class|function) (\w+)/gm)].map((m) => m[1]);
  assert.deepEqual([...new Set(declared)].sort(), Object.keys(dc).sort());
});

// A stand-in server on a private socket: answers each request line with
// whatever `respond` returns, written in awkward pieces.
async function withFakeServer(respond, fn) {
  const { mkdtempSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const net = (await import('node:net')).default;
  const dir = mkdtempSync(join(tmpdir(), 'digestd-fake-'));
  const path = join(dir, 's.sock');
  const pause = () => new Promise((resolve) => { setTimeout(resolve, 5); });
  const sockets = new Set();
  const server = net.createServer((sock) => {
    sockets.add(sock);
    let buf = '';
    let writing = Promise.resolve();
    sock.on('data', (chunk) => {
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const out = Buffer.from(respond(JSON.parse(buf.slice(0, nl))), 'utf8');
        buf = buf.slice(nl + 1);
        // One byte, then the rest split inside a multi-byte character.
        const cut = out.indexOf(0xc3) > 0 ? out.indexOf(0xc3) + 1 : 2;
        writing = writing.then(async () => {
          for (const piece of [out.subarray(0, 1), out.subarray(1, cut), out.subarray(cut)]) {
            if (!sock.destroyed) sock.write(piece);
            await pause();
          }
        });
      }
    });
    sock.on('error', () => {});
  });
  await new Promise((resolve) => server.listen(path, resolve));
  try {
    await fn(path);
  } finally {
    for (const sock of sockets) sock.destroy();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

test('framing: answers in pieces, multi-byte text split, events with the subscribe answer', async () => {
  await withFakeServer((req) => {
    if (req.op === 'subscribe') {
      return '{"ok":true,"subscribed":true,"max_unread_bytes":1}\n' +
        '{"event":"text","key":"k","text":"café"}\r\n{"event":"job","state":"done","key":"k"}\n';
    }
    if (req.op === 'result') return '{"ok":false,"error":{"code":"not_found","message":"no job k; submit it first"}}\n';
    return `{"ok":true,"echo":${JSON.stringify(req)},"text":"naïve résumé"}\n`;
  }, async (path) => {
    const c = new dc.Client({ socket: path, timeoutMs: 2000 });
    try {
      await framing(c);
    } finally {
      c.close();
    }
  });
});

async function framing(c) {
  const [a, b] = await Promise.all([c.request('one', { x: 'é' }), c.request('two')]);
  assert.deepEqual(a.echo, { op: 'one', x: 'é' });
  assert.equal(a.text, 'naïve résumé');
  assert.equal(b.echo.op, 'two');
  await assert.rejects(c.result('k'), (e) => e instanceof dc.NotFound && e.detail === 'no job k; submit it first');
  const sub = await c.subscribe({ key: 'k', timeoutMs: 2000 });
  const got = [];
  for await (const ev of sub) {
    got.push(ev);
    if (ev.state === 'done') break;
  }
  assert.deepEqual(got, [{ event: 'text', key: 'k', text: 'café' }, { event: 'job', state: 'done', key: 'k' }]);
}

test('a request without an answer times out, and the next one starts afresh', async () => {
  let n = 0;
  await withFakeServer(() => (++n === 1 ? '' : '{"ok":true,"pong":true}\n'), async (path) => {
    const c = new dc.Client({ socket: path, timeoutMs: 200 });
    try {
      await assert.rejects(c.ping(), (e) => e instanceof dc.Timeout && e.message.includes('"ping"'));
      assert.equal(await c.ping(), true);
    } finally {
      c.close();
    }
  });
});

test('an idle client or subscription does not keep the process alive', async () => {
  const { spawn } = await import('node:child_process');
  const index = fileURLToPath(new URL('../index.js', import.meta.url));
  const respond = (req) => (req.op === 'subscribe'
    ? '{"ok":true,"subscribed":true,"max_unread_bytes":1}\n{"event":"job","state":"done","key":"k"}\n'
    : '{"ok":true,"pong":true}\n');
  await withFakeServer(respond, async (path) => {
    const script = `import { Client } from ${JSON.stringify(index)};
      const c = new Client({ socket: ${JSON.stringify(path)} });
      const sub = await c.subscribe();
      console.log(await c.ping(), (await sub.next()).value.event);`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => { out += d; });
    const code = await new Promise((resolve) => {
      const timer = setTimeout(() => { child.kill(); resolve('still running after 10 s'); }, 10000);
      child.on('exit', (c) => { clearTimeout(timer); resolve(c); });
    });
    assert.equal(code, 0);
    assert.equal(out.trim(), 'true job');
  });
});
