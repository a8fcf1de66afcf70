// Types for digestd-client (index.js). Field names of answers and events
// are the protocol's (docs/protocol.md in digestd's repository).

export declare const DEFAULT_SOCKET: '/run/digestd/control.sock';
/** Longest wait one request may carry, in milliseconds. */
export declare const MAX_WAIT_MS: 300000;
export declare const JOB_TERMINAL: readonly ['done', 'failed', 'cancelled'];
export declare const GROUP_TERMINAL: readonly ['completed', 'failed', 'partial'];

export type Lane = 'interactive' | 'background';
export type JobStatus = 'queued' | 'running' | 'done' | 'failed' | 'cancelled';
export type GroupStatus = 'pending' | 'in_progress' | 'completed' | 'failed' | 'partial';
export type ErrorCode =
  | 'bad_request' | 'unknown_op' | 'too_large' | 'not_found' | 'unavailable'
  | 'forbidden' | 'queue_full' | 'invalid_config' | 'internal' | 'conflict' | 'bad_state';

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export interface JsonObject { [key: string]: unknown }

// ---------------------------------------------------------------- errors

/** An error answer from digestd, or a failure to talk to it. */
export declare class DigestdError extends Error {
  constructor(message: string, code?: string, answer?: Answer | null);
  /** The protocol's error code ("bad_request", ...); "io_error" or "timeout" from the client. */
  readonly code: string;
  /** digestd's message: what was wrong and what to do. */
  readonly detail: string;
  /** The whole error answer (a batch that stored nothing has jobs, accepted, failed), or null. */
  readonly answer: Answer | null;
  static readonly code: string;
}
export declare class BadRequest extends DigestdError {}
export declare class UnknownOp extends DigestdError {}
export declare class TooLarge extends DigestdError {}
export declare class NotFound extends DigestdError {}
export declare class Unavailable extends DigestdError {}
export declare class Forbidden extends DigestdError {}
export declare class QueueFull extends DigestdError {}
export declare class InvalidConfig extends DigestdError {}
export declare class Internal extends DigestdError {}
/** A submit named an existing key with another kind or input: submit with replace, or use a new key. */
export declare class Conflict extends DigestdError {}
/** The job is not in a state the op applies to (retry of a job that did not fail, replacing a running job). */
export declare class BadState extends DigestdError {}
/** The socket could not be reached, or closed mid-request (code "io_error"). */
export declare class ConnectionFailed extends DigestdError {}
/** No answer within the client's timeoutMs (code "timeout"). */
export declare class Timeout extends DigestdError {}

export declare const ERRORS_BY_CODE: Readonly<Record<ErrorCode | 'io_error', typeof DigestdError>>;
export declare function errorFromAnswer(answer: Answer): DigestdError;

// ---------------------------------------------------------------- answers

/** An answer line; the fields beyond ok, id and error depend on the op. */
export interface Answer {
  [key: string]: unknown;
  ok: boolean;
  id?: string | number | null;
}

/** An answer with ok false (a DigestdError's answer). */
export interface ErrorAnswer extends Answer {
  ok: false;
  error: { code: string; message: string };
}

export interface Hello extends Answer {
  protocol: number;
  version: string;
  node_id: string;
  store: 'postgres' | 'memory';
  ops: string[];
  kinds: string[];
  features: string[];
}

export interface SubmitAnswer extends Answer {
  key: string;
  status: JobStatus | 'unknown';
  existing: boolean;
  /** True when a submit with replace ran the job again. */
  replaced?: boolean;
  /** True when the job's result had expired (ttl) and it runs again. */
  expired?: boolean;
}

export interface BatchEntry {
  key: string;
  status?: JobStatus;
  existing?: boolean;
  error?: { code: string; message: string };
}

export interface BatchAnswer extends Answer {
  jobs: BatchEntry[];
  accepted: number;
  failed: number;
}

export interface JobView {
  key: string;
  kind: string;
  lane: Lane;
  status: JobStatus;
  group?: string;
  attempts: number;
  max_attempts: number;
  submitted_at_ms: number;
  queued_ms: number;
  run_ms?: number;
  /** The kind's result: summary, text, embeddings, slept_ms, model, meta, ... */
  result?: { [key: string]: any };
  error?: string;
  /** The error of the run before a retry or replace, until the job ends again. */
  last_error?: string;
  preempted?: number;
  busy_retries?: number;
  node?: string;
  run_after_ms?: number;
}

export interface JobAnswer extends Answer, JobView {}

export interface GroupView extends Answer {
  group: string;
  status: GroupStatus;
  total: number;
  ready: number;
  parts: JobView[];
}

export interface CancelAnswer extends Answer {
  /** One job: its key, state and whether it was cancelled. */
  key?: string;
  status?: string;
  /** One job: whether it was cancelled; a group: how many were. */
  cancelled?: boolean | number;
  /** A group: the cancelled jobs still running until their workers stop. */
  running?: number;
  /** A group, with PostgreSQL: its jobs running on other daemons (not cancelled). */
  elsewhere?: number;
  group?: string;
  message?: string;
}

export interface RetryAnswer extends Answer {
  key?: string;
  status?: string;
  /** One job: whether it was queued again; a group: how many were. */
  retried: boolean | number;
  group?: string;
  /** A group: its jobs that were not failed or cancelled. */
  skipped?: number;
}

export interface DeleteAnswer extends Answer {
  deleted: number;
  skipped: number;
}

export interface JobsPage extends Answer {
  jobs: JobView[];
  /** The cursor of the next page; absent on the last one. */
  next?: string;
}

export interface WorkersAnswer extends Answer {
  limit: number;
  min: number;
  max: number;
  reserved: number;
}

export interface JobEvent {
  event: 'job';
  state: 'queued' | 'started' | 'retried' | 'preempted' | 'released' | 'done' | 'failed' | 'cancelled' | 'deleted';
  key: string;
  group?: string;
  kind: string;
  lane: Lane;
  attempt: number;
  at_ms: number;
  run_ms?: number;
  preempted?: number;
  error?: string;
}

export interface TextEvent {
  event: 'text';
  key: string;
  group?: string;
  kind: string;
  lane: Lane;
  attempt: number;
  at_ms: number;
  /** The whole text so far. */
  text: string;
}

export interface LostEvent {
  event: 'lost';
  count: number;
}

export type Event = JobEvent | TextEvent | LostEvent;

// ---------------------------------------------------------------- requests

export interface Job {
  kind: string;
  key?: string;
  group?: string;
  lane?: Lane;
  input?: { [key: string]: Json };
  replace?: boolean;
  /** Seconds the result stays fresh once done; a submit after that runs it again (0: never expires). */
  ttl_s?: number;
  /** Keys of earlier jobs of the same batch and group this one needs; it gets their results. */
  after?: string[];
}

export interface SubmitOptions {
  key?: string;
  group?: string;
  lane?: Lane;
  /** Sync mode: run as interactive and answer the job view once it ended (at most 300000). */
  waitMs?: number;
  /** Replace an existing job with this key (digestd versions that offer it). */
  replace?: boolean;
  /** Seconds the result stays fresh once done (feature "ttl"); 0: never expires. */
  ttlS?: number;
}

export interface BatchOptions {
  /** The group of the jobs that name none. */
  group?: string;
  /** The lane of the jobs that name none. */
  lane?: Lane;
}

export interface ResultOptions {
  key?: string;
  group?: string;
  /** Wait up to this long for a terminal state; longer than 300000 is sent as several waits. */
  waitMs?: number;
}

export type Target = string | { key: string; group?: undefined } | { group: string; key?: undefined };

export interface SubscribeOptions {
  key?: string;
  group?: string;
  prefix?: string;
  lane?: Lane;
  /** Also stream the text of summarize and generate jobs as it is written. */
  partial?: boolean;
  /** Reject next() with Timeout when no event came within this many milliseconds. */
  timeoutMs?: number;
}

export interface JobsFilter {
  status?: JobStatus | JobStatus[];
  group?: string;
  kind?: string;
  lane?: Lane;
  keyPrefix?: string;
  /** Only jobs submitted at most this many seconds ago. */
  maxAgeS?: number;
  /** Only jobs submitted at least this many seconds ago. */
  minAgeS?: number;
  limit?: number;
  cursor?: string;
}

export interface ClientOptions {
  /** The control socket; default $DIGESTD_SOCKET, else /run/digestd/control.sock. */
  socket?: string;
  /** Bound on each request in milliseconds, on top of the wait it asks for; null: none. Default 30000. */
  timeoutMs?: number | null;
}

export declare function socketPath(path?: string): string;
export declare function submitRequest(kind: string, input?: { [key: string]: Json } | null, opts?: SubmitOptions): JsonObject;
export declare function batchRequest(jobs: Job[], opts?: BatchOptions): JsonObject;
export declare function subscribeRequest(filters?: SubscribeOptions): JsonObject;
export declare function jobsRequest(filters?: JobsFilter): JsonObject;
export declare function isTerminal(view: JobView | GroupView): boolean;

// ---------------------------------------------------------------- client

/** An event stream on a connection of its own; leaving a for-await loop closes it. */
export declare class Subscription implements AsyncIterableIterator<Event> {
  readonly path: string;
  /** The subscribe answer ({ok, subscribed, max_unread_bytes}). */
  readonly answer: Answer & { subscribed: boolean; max_unread_bytes: number };
  readonly timeoutMs?: number;
  readonly closed: boolean;
  next(): Promise<IteratorResult<Event, undefined>>;
  return(): Promise<IteratorResult<Event, undefined>>;
  [Symbol.asyncIterator](): Subscription;
  close(): void;
}

/** Jobs that share a group name. */
export declare class Group {
  constructor(client: Client, name: string);
  readonly client: Client;
  readonly name: string;
  submit(kind: string, input?: { [key: string]: Json } | null, opts?: Omit<SubmitOptions, 'group'>): Promise<SubmitAnswer & Partial<JobView>>;
  submitMany(jobs: Job[], opts?: Omit<BatchOptions, 'group'>): Promise<BatchAnswer>;
  result(opts?: { waitMs?: number }): Promise<GroupView>;
  cancel(): Promise<CancelAnswer>;
  retry(opts?: { lane?: Lane }): Promise<RetryAnswer>;
  delete(): Promise<DeleteAnswer>;
  subscribe(opts?: Omit<SubscribeOptions, 'group'>): Promise<Subscription>;
}

/**
 * A digestd client over one kept-open connection; requests are pipelined
 * and answered in order. Error answers reject with their DigestdError class.
 */
export declare class Client {
  constructor(opts?: ClientOptions);
  readonly socketPath: string;
  timeoutMs: number | null;
  close(): void;
  sendRaw(request: JsonObject): Promise<Answer>;
  send(request: JsonObject): Promise<Answer>;
  request(op: string, fields?: JsonObject): Promise<Answer>;

  hello(): Promise<Hello>;
  ping(): Promise<boolean>;
  status(): Promise<Answer>;
  /** One job; with waitMs the answer is its job view. */
  submit(kind: string, input?: { [key: string]: Json } | null, opts?: SubmitOptions & { waitMs?: undefined }): Promise<SubmitAnswer>;
  submit(kind: string, input: { [key: string]: Json } | null | undefined, opts: SubmitOptions & { waitMs: number }): Promise<JobAnswer>;
  /** A batch in one round trip; rejects when none was stored, else check `failed`. */
  submitMany(jobs: Job[], opts?: BatchOptions): Promise<BatchAnswer>;
  result(key: string, opts?: { waitMs?: number }): Promise<JobAnswer>;
  result(opts: ResultOptions & { group: string }): Promise<GroupView>;
  result(opts: ResultOptions & { key: string }): Promise<JobAnswer>;
  group(name: string): Group;
  cancel(target: Target): Promise<CancelAnswer>;
  /** Queues a failed or cancelled job (or every one of a group) again, on lane (default background). */
  retry(target: string, opts?: { lane?: Lane }): Promise<RetryAnswer>;
  retry(target: ({ key: string; group?: undefined } | { group: string; key?: undefined }) & { lane?: Lane }): Promise<RetryAnswer>;
  delete(target: Target): Promise<DeleteAnswer>;
  /** One page of the job list. */
  jobs(filters?: JobsFilter): Promise<JobsPage>;
  /** Every listed job, page after page. */
  iterJobs(filters?: JobsFilter): AsyncGenerator<JobView, void, undefined>;
  workers(limits?: { min?: number; max?: number; reserved?: number }): Promise<WorkersAnswer>;
  reload(): Promise<Answer & { changed: string[]; needs_restart: string[] }>;
  drain(): Promise<Answer & { draining: boolean; queued: number; running: number }>;
  subscribe(opts?: SubscribeOptions): Promise<Subscription>;
}

/** A Client that has checked that digestd answers hello. */
export declare function connect(opts?: ClientOptions): Promise<Client>;
