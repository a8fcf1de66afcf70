// A client for digestd's control socket (docs/protocol.md in digestd's
// repository): one JSON object per line, answers in request order.
//
//   import { Client } from 'digestd-client';
//   const c = new Client();                 // $DIGESTD_SOCKET or /run/digestd/control.sock
//   await c.submit('summarize', { text }, { key: 'book:7/ch:3', group: 'book:7' });
//   const view = await c.result('book:7/ch:3', { waitMs: 30000 });
//   c.close();
//
// Error answers reject with the DigestdError subclass of their code.
import net from 'node:net';

export const DEFAULT_SOCKET = '/run/digestd/control.sock';
export const MAX_WAIT_MS = 300000;
export const JOB_TERMINAL = Object.freeze(['done', 'failed', 'cancelled']);
export const GROUP_TERMINAL = Object.freeze(['completed', 'failed', 'partial']);

// ---------------------------------------------------------------- errors

export class DigestdError extends Error {
  constructor(message, code, answer) {
    super(code ? `${code}: ${message}` : message);
    this.name = new.target.name;
    this.code = code ?? new.target.code ?? '';
    this.detail = message;
    this.answer = answer ?? null;
  }
}

function errorClass(name, code) {
  const cls = class extends DigestdError {};
  Object.defineProperty(cls, 'name', { value: name });
  cls.code = code;
  return cls;
}

export const BadRequest = errorClass('BadRequest', 'bad_request');
export const UnknownOp = errorClass('UnknownOp', 'unknown_op');
export const TooLarge = errorClass('TooLarge', 'too_large');
export const NotFound = errorClass('NotFound', 'not_found');
export const Unavailable = errorClass('Unavailable', 'unavailable');
export const Forbidden = errorClass('Forbidden', 'forbidden');
export const QueueFull = errorClass('QueueFull', 'queue_full');
export const InvalidConfig = errorClass('InvalidConfig', 'invalid_config');
export const Internal = errorClass('Internal', 'internal');
export const Conflict = errorClass('Conflict', 'conflict');
export const BadState = errorClass('BadState', 'bad_state');
/** The socket could not be reached or closed mid-request (raised by the client). */
export const ConnectionFailed = errorClass('ConnectionFailed', 'io_error');
/** No answer within the client's timeout (raised by the client). */
export const Timeout = errorClass('Timeout', 'timeout');

export const ERRORS_BY_CODE = Object.freeze(Object.fromEntries(
  [BadRequest, UnknownOp, TooLarge, NotFound, Unavailable, Forbidden, QueueFull,
    InvalidConfig, Internal, Conflict, BadState, ConnectionFailed].map((c) => [c.code, c])));

/** The error for an error answer ({ok: false, error: {code, message}}). */
export function errorFromAnswer(answer) {
  const err = answer && answer.error;
  if (!err || typeof err !== 'object') {
    return new DigestdError('digestd answered ok:false without an error object: ' +
      `${JSON.stringify(answer)}; this is a bug in digestd, report it`, '', answer);
  }
  const Cls = ERRORS_BY_CODE[err.code] ?? DigestdError;
  return new Cls(String(err.message ?? ''), String(err.code ?? ''), answer);
}

function check(answer) {
  if (answer && answer.ok === true) return answer;
  throw errorFromAnswer(answer);
}

// ---------------------------------------------------------------- requests

export function socketPath(path) {
  if (path) return path;
  const env = process.env.DIGESTD_SOCKET;
  return env ? env : DEFAULT_SOCKET;
}

function dropUndefined(fields) {
  const out = {};
  for (const [k, v] of Object.entries(fields ?? {})) {
    if (v !== undefined && v !== null) out[k] = v;
  }
  return out;
}

function checkWait(waitMs, what) {
  if (waitMs === undefined || waitMs === null) return undefined;
  if (!Number.isInteger(waitMs) || waitMs < 0) {
    throw new RangeError(`${what}: waitMs must be a whole number of milliseconds, 0 or more, not ${waitMs}`);
  }
  return waitMs;
}

function jobFields(kind, input, opts = {}) {
  if (typeof kind !== 'string' || kind === '') {
    throw new TypeError('kind must be a non-empty string such as "summarize"; hello() lists the kinds this digestd runs');
  }
  const fields = { kind };
  if (input !== undefined && input !== null) fields.input = input;
  Object.assign(fields, dropUndefined({ key: opts.key, group: opts.group, lane: opts.lane }));
  if (opts.replace) fields.replace = true;
  if (opts.ttlS !== undefined && opts.ttlS !== null) {
    if (!Number.isInteger(opts.ttlS) || opts.ttlS < 0) {
      throw new RangeError(`ttlS must be a whole number of seconds, 0 or more, not ${opts.ttlS}`);
    }
    fields.ttl_s = opts.ttlS;
  }
  return fields;
}

/** The request object of a single submit. */
export function submitRequest(kind, input, opts = {}) {
  const req = { op: 'submit', ...jobFields(kind, input, opts) };
  const waitMs = checkWait(opts.waitMs, 'submit');
  if (waitMs !== undefined) {
    if (waitMs > MAX_WAIT_MS) {
      throw new RangeError(`submit: waitMs is at most ${MAX_WAIT_MS}, not ${waitMs}; submit without a wait and call result() with one`);
    }
    req.wait_ms = waitMs;
  }
  return req;
}

/** The request object of a batch submit; group and lane apply to jobs that name none. */
export function batchRequest(jobs, opts = {}) {
  if (!Array.isArray(jobs) || jobs.length === 0) {
    throw new TypeError('submitMany needs a non-empty array of jobs');
  }
  return {
    op: 'submit',
    jobs: jobs.map((job, i) => {
      if (!job || typeof job !== 'object' || Array.isArray(job)) {
        throw new TypeError(`jobs[${i}] must be an object with at least "kind", not ${JSON.stringify(job)}`);
      }
      const j = { ...job };
      if (opts.group !== undefined && j.group === undefined) j.group = opts.group;
      if (opts.lane !== undefined && j.lane === undefined) j.lane = opts.lane;
      return j;
    }),
  };
}

function target(keyOrOpts, op) {
  const o = typeof keyOrOpts === 'string' ? { key: keyOrOpts } : (keyOrOpts ?? {});
  const hasKey = o.key !== undefined && o.key !== null;
  const hasGroup = o.group !== undefined && o.group !== null;
  if (hasKey === hasGroup) throw new TypeError(`${op} needs exactly one of key and group`);
  return hasKey ? { key: o.key } : { group: o.group };
}

export function isTerminal(view) {
  if (view && ('parts' in view || ('group' in view && 'total' in view))) {
    return GROUP_TERMINAL.includes(view.status);
  }
  return JOB_TERMINAL.includes(view && view.status);
}

export function subscribeRequest(filters = {}) {
  const req = { op: 'subscribe', ...dropUndefined({ key: filters.key, group: filters.group, prefix: filters.prefix, lane: filters.lane }) };
  if (filters.partial) req.partial = true;
  return req;
}

export function jobsRequest(filters = {}) {
  return {
    op: 'jobs',
    ...dropUndefined({
      status: filters.status, group: filters.group, kind: filters.kind, lane: filters.lane,
      key_prefix: filters.keyPrefix, max_age_s: filters.maxAgeS, min_age_s: filters.minAgeS,
      limit: filters.limit, cursor: filters.cursor,
    }),
  };
}

// ---------------------------------------------------------------- framing

function encode(request) {
  return JSON.stringify(request) + '\n';
}

function decode(line) {
  let value;
  try {
    value = JSON.parse(line);
  } catch (e) {
    throw new ConnectionFailed(`digestd sent a line that is not JSON (${e.message}): ${line.slice(0, 200)}; check that the socket path names digestd's control socket`);
  }
  if (!value || typeof value !== 'object' || Array.isArray(value)) {
    throw new ConnectionFailed(`digestd sent a line that is not a JSON object: ${line.slice(0, 200)}; check that the socket path names digestd's control socket`);
  }
  return value;
}

function openSocket(path) {
  return new Promise((resolve, reject) => {
    const sock = net.createConnection({ path });
    const onError = (e) => {
      sock.destroy();
      reject(new ConnectionFailed(`cannot connect to digestd at ${path}: ${e.code ?? e.message}; start digestd, or pass its control socket (the socket option or $DIGESTD_SOCKET)`));
    };
    sock.once('error', onError);
    sock.once('connect', () => {
      sock.removeListener('error', onError);
      sock.setEncoding('utf8');
      resolve(sock);
    });
  });
}

// Splits what a socket reads into lines; calls onLine for each, onEnd once.
function readLines(sock, onLine, onEnd, first = '') {
  let buf = '';
  let ended = false;
  const end = (err) => {
    if (ended) return;
    ended = true;
    onEnd(err);
  };
  const take = (chunk) => {
    buf += chunk;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      onLine(line.endsWith('\r') ? line.slice(0, -1) : line);
    }
  };
  sock.on('data', take);
  if (first) take(first);
  sock.on('error', (e) => end(e));
  sock.on('close', () => end(null));
}

class Connection {
  constructor(path, sock) {
    this.path = path;
    this.sock = sock;
    this.pending = [];
    this.dead = false;
    sock.unref();
    readLines(sock, (line) => this.onLine(line), (err) => this.onEnd(err));
  }

  onLine(line) {
    const p = this.pending.shift();
    if (this.pending.length === 0) this.sock.unref();
    if (!p) return;
    clearTimeout(p.timer);
    try {
      p.resolve(decode(line));
    } catch (e) {
      p.reject(e);
    }
  }

  onEnd(err) {
    this.dead = true;
    const why = err ? `: ${err.message}` : ' (it stopped, or it closes idle clients)';
    const pending = this.pending;
    this.pending = [];
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(new ConnectionFailed(`digestd at ${this.path} closed the connection before answering${why}; try again`));
    }
  }

  send(request, timeoutMs) {
    return new Promise((resolve, reject) => {
      const p = { resolve, reject, timer: null };
      if (timeoutMs !== undefined && timeoutMs !== null) {
        p.timer = setTimeout(() => {
          // The answers behind this one would be out of step: start afresh.
          this.close();
          reject(new Timeout(`digestd at ${this.path} did not answer ${JSON.stringify(request.op)} within ${timeoutMs} ms; raise the client's timeoutMs, or check \`digestctl status\``));
        }, timeoutMs);
      }
      this.pending.push(p);
      this.sock.ref();
      this.sock.write(encode(request));
    });
  }

  close() {
    this.dead = true;
    this.sock.destroy();
  }
}

// ---------------------------------------------------------------- subscription

/**
 * An event stream: `for await (const ev of sub)` yields one object per line.
 * It owns a connection of its own, which close() (or leaving the loop) closes.
 * The loop ends when digestd closes the connection (it stopped). With
 * timeoutMs, next() rejects with Timeout when no event came in time (the
 * stream stays usable).
 */
export class Subscription {
  constructor(path, sock, answer, timeoutMs, rest = '') {
    this.path = path;
    this.answer = answer;
    this.timeoutMs = timeoutMs;
    this.closed = false;
    this._sock = sock;
    this._queue = [];
    this._waiter = null;
    this._error = null;
    // The socket keeps the process alive only while someone waits in next().
    sock.unref();
    readLines(sock, (line) => this._push(line), (err) => this._end(err), rest);
  }

  _push(line) {
    let ev;
    try {
      ev = decode(line);
    } catch (e) {
      this._end(e);
      return;
    }
    if (this._waiter) {
      const w = this._waiter;
      this._waiter = null;
      w.resolve({ value: ev, done: false });
    } else {
      this._queue.push(ev);
    }
  }

  _end(err) {
    this.closed = true;
    if (err && !(err instanceof DigestdError) && err.code !== 'ECONNRESET') this._error = err;
    if (this._waiter) {
      const w = this._waiter;
      this._waiter = null;
      if (this._error) w.reject(this._error);
      else w.resolve({ value: undefined, done: true });
    }
  }

  /** The next event, or null once the stream ended. */
  async next() {
    if (this._queue.length > 0) return { value: this._queue.shift(), done: false };
    if (this.closed) {
      if (this._error) throw this._error;
      return { value: undefined, done: true };
    }
    return new Promise((resolve, reject) => {
      let timer = null;
      if (this.timeoutMs !== undefined && this.timeoutMs !== null) {
        timer = setTimeout(() => {
          this._waiter = null;
          this._sock.unref();
          reject(new Timeout(`no event from digestd at ${this.path} within ${this.timeoutMs} ms`));
        }, this.timeoutMs);
      }
      this._sock.ref();
      this._waiter = {
        resolve: (v) => { clearTimeout(timer); this._sock.unref(); resolve(v); },
        reject: (e) => { clearTimeout(timer); this._sock.unref(); reject(e); },
      };
    });
  }

  async return() {
    this.close();
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  close() {
    if (!this._sock.destroyed) this._sock.destroy();
    this._end(null);
  }
}

// ---------------------------------------------------------------- group

/** Jobs that share a group name: submit into it, read, wait for or cancel it. */
export class Group {
  constructor(client, name) {
    this.client = client;
    this.name = name;
  }

  submit(kind, input, opts = {}) {
    return this.client.submit(kind, input, { ...opts, group: this.name });
  }

  submitMany(jobs, opts = {}) {
    return this.client.submitMany(jobs, { ...opts, group: this.name });
  }

  result(opts = {}) {
    return this.client.result({ ...opts, group: this.name });
  }

  cancel() {
    return this.client.cancel({ group: this.name });
  }

  retry(opts = {}) {
    return this.client.retry({ group: this.name, lane: opts.lane });
  }

  delete() {
    return this.client.delete({ group: this.name });
  }

  subscribe(opts = {}) {
    return this.client.subscribe({ ...opts, group: this.name });
  }
}

// ---------------------------------------------------------------- client

/**
 * A digestd client over one kept-open connection; requests are pipelined and
 * answered in order. Every method returns a promise of the answer object
 * (ok true) and rejects with a DigestdError subclass for an error answer.
 */
export class Client {
  constructor(opts = {}) {
    this.socketPath = socketPath(opts.socket);
    this.timeoutMs = opts.timeoutMs === undefined ? 30000 : opts.timeoutMs;
    this._conn = null;
    this._connecting = null;
  }

  async _connection() {
    if (this._conn && !this._conn.dead) return this._conn;
    if (!this._connecting) {
      this._connecting = openSocket(this.socketPath).then((sock) => {
        this._conn = new Connection(this.socketPath, sock);
        return this._conn;
      }).finally(() => {
        this._connecting = null;
      });
    }
    return this._connecting;
  }

  /** Closes the connection; the next request opens a new one. */
  close() {
    if (this._conn) this._conn.close();
    this._conn = null;
  }

  /** Sends one request object and returns its answer as it came (ok true or false). */
  async sendRaw(request) {
    const conn = await this._connection();
    let timeout = this.timeoutMs;
    if (timeout !== null && Number.isInteger(request.wait_ms)) timeout += request.wait_ms;
    return conn.send(request, timeout);
  }

  /** Sends one request object; rejects on an error answer. */
  async send(request) {
    return check(await this.sendRaw(request));
  }

  /** Sends {op, ...fields} (undefined and null fields left out). */
  request(op, fields = {}) {
    return this.send({ op, ...dropUndefined(fields) });
  }

  hello() { return this.request('hello'); }

  async ping() { return (await this.request('ping')).pong === true; }

  status() { return this.request('status'); }

  submit(kind, input, opts = {}) {
    return this.send(submitRequest(kind, input, opts));
  }

  submitMany(jobs, opts = {}) {
    return this.send(batchRequest(jobs, opts));
  }

  async result(keyOrOpts, opts = {}) {
    const o = typeof keyOrOpts === 'string' ? { ...opts, key: keyOrOpts } : (keyOrOpts ?? {});
    const fields = target(o, 'result');
    const waitMs = checkWait(o.waitMs, 'result');
    if (!waitMs) return this.request('result', fields);
    const deadline = Date.now() + waitMs;
    for (;;) {
      const left = deadline - Date.now();
      const view = await this.request('result', { ...fields, wait_ms: Math.max(0, Math.min(left, MAX_WAIT_MS)) });
      if (left <= MAX_WAIT_MS || isTerminal(view)) return view;
    }
  }

  group(name) { return new Group(this, name); }

  cancel(keyOrOpts) { return this.request('cancel', target(keyOrOpts, 'cancel')); }

  retry(keyOrOpts, opts = {}) {
    const lane = typeof keyOrOpts === 'object' && keyOrOpts !== null ? keyOrOpts.lane : opts.lane;
    return this.request('retry', { ...target(keyOrOpts, 'retry'), lane });
  }

  delete(keyOrOpts) { return this.request('delete', target(keyOrOpts, 'delete')); }

  jobs(filters = {}) { return this.send(jobsRequest(filters)); }

  async* iterJobs(filters = {}) {
    let cursor = filters.cursor;
    for (;;) {
      const page = await this.jobs({ ...filters, cursor });
      for (const job of page.jobs ?? []) yield job;
      cursor = page.next;
      if (!cursor) return;
    }
  }

  workers(limits = {}) {
    return this.request('workers', { min: limits.min, max: limits.max, reserved: limits.reserved });
  }

  reload() { return this.request('reload'); }

  drain() { return this.request('drain'); }

  async subscribe(filters = {}) {
    const sock = await openSocket(this.socketPath);
    let rest = '';
    const answer = await new Promise((resolve, reject) => {
      let buf = '';
      const timer = this.timeoutMs === null ? null : setTimeout(() => {
        cleanup();
        sock.destroy();
        reject(new Timeout(`digestd at ${this.socketPath} did not answer subscribe within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      const onData = (chunk) => {
        buf += chunk;
        const nl = buf.indexOf('\n');
        if (nl < 0) return;
        cleanup();
        // Events that came with the answer are handed back to the stream.
        rest = buf.slice(nl + 1);
        sock.pause();
        try {
          resolve(check(decode(buf.slice(0, nl))));
        } catch (e) {
          sock.destroy();
          reject(e);
        }
      };
      const onEnd = () => {
        cleanup();
        reject(new ConnectionFailed(`digestd at ${this.socketPath} closed the connection before answering subscribe; try again`));
      };
      const cleanup = () => {
        clearTimeout(timer);
        sock.removeListener('data', onData);
        sock.removeListener('close', onEnd);
        sock.removeListener('error', onEnd);
      };
      sock.on('data', onData);
      sock.on('close', onEnd);
      sock.on('error', onEnd);
      sock.write(encode(subscribeRequest(filters)));
    });
    const sub = new Subscription(this.socketPath, sock, answer, filters.timeoutMs, rest);
    sock.resume();
    return sub;
  }
}

/** A Client that has checked that digestd answers hello. */
export async function connect(opts = {}) {
  const c = new Client(opts);
  try {
    await c.hello();
  } catch (e) {
    c.close();
    throw e;
  }
  return c;
}
