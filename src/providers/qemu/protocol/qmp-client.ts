/**
 * QMP client: greeting + capabilities negotiation, command execution with
 * error mapping, and asynchronous events.
 *
 * Events: every QMP event is emitted as `'event'` (QmpEvent) and under its own
 * name (`'STOP'`, `'BLOCK_JOB_COMPLETED'`, ...). The client itself emits
 * `'close'` (cause?: Error) when the connection ends. QMP event names are
 * upper case, so they cannot collide with these.
 *
 * QEMU sends an event caused by a command *before* that command's reply
 * (e.g. `STOP` precedes the `return` of `stop`), so a waiter registered after
 * `await execute(...)` would miss it. Either start waiting first:
 *
 *     const stopped = client.waitEvent('STOP');
 *     await client.execute('stop');
 *     await stopped;
 *
 * or take a mark and wait for events after it (served from a small history):
 *
 *     const mark = client.eventMark();
 *     await client.execute('stop');
 *     await client.waitEvent('STOP', undefined, 5000, { since: mark });
 */
import { EventEmitter } from 'node:events';
import { QmpConnectionClosedError, QmpError, QmpNegotiationError, QmpTimeoutError } from './errors';
import { QmpEvent, QmpGreeting, QmpMessage, isGreeting } from './message';
import { ConnectionOptions, QmpConnection } from './protocol';

export const DEFAULT_QMP_TIMEOUT_MS = 30_000;

export interface QmpConnectOptions extends ConnectionOptions {
  /** Default per-command timeout (also bounds greeting + negotiation). Default 30 s. */
  timeoutMs?: number;
  /** How many recent events to keep for `waitEvent(..., { since })`. Default 256. */
  eventHistory?: number;
}

export interface QmpExecuteOptions {
  timeoutMs?: number;
}

export interface WaitEventOptions {
  /**
   * Also consider events already received after this mark (from
   * {@link QmpClient.eventMark}); lets callers wait for an event caused by a
   * command they already awaited.
   */
  since?: number;
}

const RESERVED_EVENT_NAMES = new Set(['event', 'close', 'error', 'newListener', 'removeListener']);

let clientCounter = 0;

export class QmpClient extends EventEmitter {
  private readonly conn: QmpConnection;
  private readonly defaultTimeoutMs: number;
  private readonly historySize: number;
  private readonly history: Array<{ seq: number; event: QmpEvent }> = [];
  private eventSeq = 0;
  private cmdSeq = 0;
  private readonly idPrefix: string;
  private greetingMsg?: QmpGreeting;
  /** Resolves (never rejects) once the connection is closed. */
  readonly closed: Promise<void>;
  readonly socketPath: string;

  private constructor(socketPath: string, conn: QmpConnection, opts: QmpConnectOptions) {
    super();
    this.socketPath = socketPath;
    this.conn = conn;
    this.defaultTimeoutMs = opts.timeoutMs ?? DEFAULT_QMP_TIMEOUT_MS;
    this.historySize = Math.max(0, opts.eventHistory ?? 256);
    this.idPrefix = `c${process.pid}.${++clientCounter}`;
    this.closed = conn.closed;
    conn.on('event', (ev: QmpEvent) => this.onEvent(ev));
    conn.on('close', (cause?: Error) => this.emit('close', cause));
  }

  /**
   * Connect to a QMP unix socket, read the greeting and negotiate
   * capabilities (none are enabled; in particular not `oob`).
   */
  static async connect(socketPath: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const conn = new QmpConnection(opts);
    const client = new QmpClient(socketPath, conn, opts);
    const timeoutMs = client.defaultTimeoutMs;

    // Listen before connecting: QEMU writes the greeting immediately.
    const greeting = new Promise<QmpGreeting>((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        reject(new QmpTimeoutError('QMP greeting', timeoutMs, 'waiting'));
      }, timeoutMs);
      const onMsg = (msg: QmpMessage) => {
        cleanup();
        if (isGreeting(msg)) resolve(msg);
        else reject(new QmpNegotiationError(`expected QMP greeting, got ${JSON.stringify(msg).slice(0, 200)}`));
      };
      const onClose = (cause?: Error) => {
        cleanup();
        reject(new QmpConnectionClosedError('connection closed before the QMP greeting', { cause }));
      };
      const cleanup = () => {
        clearTimeout(timer);
        conn.off('unsolicited', onMsg);
        conn.off('close', onClose);
      };
      conn.on('unsolicited', onMsg);
      conn.on('close', onClose);
    });
    greeting.catch(() => undefined); // observed below; avoid unhandled rejection if connect fails first

    try {
      await conn.connect(socketPath);
      client.greetingMsg = await greeting;
      await client.execute('qmp_capabilities', undefined, { timeoutMs });
    } catch (err) {
      await conn.close();
      if (err instanceof QmpError) {
        throw new QmpNegotiationError(`qmp_capabilities failed: ${err.message}`, { cause: err });
      }
      throw err;
    }
    return client;
  }

  /** The greeting sent by the server (`{"QMP": {"version", "capabilities"}}`). */
  get greeting(): QmpGreeting {
    if (!this.greetingMsg) throw new QmpNegotiationError('no greeting received');
    return this.greetingMsg;
  }

  get isClosed(): boolean {
    return this.conn.isClosed;
  }

  /**
   * Run a command. Resolves with its `return` value; rejects with QmpError on
   * an error reply, QmpTimeoutError, or QmpConnectionClosedError.
   */
  async execute<T = any>(command: string, args?: Record<string, unknown>, opts: QmpExecuteOptions = {}): Promise<T> {
    const id = `${this.idPrefix}.${++this.cmdSeq}`;
    const reply = await this.conn.request(
      { execute: command, arguments: args, id },
      { timeoutMs: opts.timeoutMs ?? this.defaultTimeoutMs },
    );
    if (!reply) throw new QmpNegotiationError(`${command}: no reply`);
    if ('error' in reply) {
      const e = reply.error ?? {};
      throw new QmpError(command, String(e.class ?? 'GenericError'), String(e.desc ?? JSON.stringify(e)));
    }
    return reply.return as T;
  }

  /** Current position in the event stream; see `waitEvent(..., { since })`. */
  eventMark(): number {
    return this.eventSeq;
  }

  /**
   * Wait for the next event called `name` (optionally matching `predicate`).
   * The listener is registered synchronously, so call this before issuing the
   * command that triggers the event. Rejects with QmpTimeoutError after
   * `timeoutMs` (default: the client's command timeout; 0 = no limit) and with
   * QmpConnectionClosedError if the connection closes first.
   */
  waitEvent(
    name: string,
    predicate?: (data: any) => boolean,
    timeoutMs: number = this.defaultTimeoutMs,
    opts: WaitEventOptions = {},
  ): Promise<QmpEvent> {
    const matches = (ev: QmpEvent): boolean => ev.event === name && (!predicate || predicate(ev.data));
    return new Promise<QmpEvent>((resolve, reject) => {
      if (opts.since !== undefined) {
        try {
          const hit = this.history.find((h) => h.seq > opts.since! && matches(h.event));
          if (hit) return resolve(hit.event);
        } catch (err) {
          return reject(err);
        }
      }
      if (this.conn.isClosed) {
        return reject(new QmpConnectionClosedError('connection is closed', { command: `event ${name}` }));
      }
      let timer: NodeJS.Timeout | undefined;
      const cleanup = () => {
        if (timer) clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
      };
      const onEvent = (ev: QmpEvent) => {
        let ok: boolean;
        try {
          ok = matches(ev);
        } catch (err) {
          cleanup();
          return reject(err);
        }
        if (ok) {
          cleanup();
          resolve(ev);
        }
      };
      const onClose = (cause?: Error) => {
        cleanup();
        reject(new QmpConnectionClosedError('connection closed', { cause, command: `event ${name}` }));
      };
      if (timeoutMs > 0 && Number.isFinite(timeoutMs)) {
        timer = setTimeout(() => {
          cleanup();
          reject(new QmpTimeoutError(`event ${name}`, timeoutMs, 'waiting'));
        }, timeoutMs);
      }
      this.on('event', onEvent);
      this.on('close', onClose);
    });
  }

  /** Close the connection; pending commands reject with QmpConnectionClosedError. */
  close(): Promise<void> {
    return this.conn.close();
  }

  private onEvent(ev: QmpEvent): void {
    const seq = ++this.eventSeq;
    if (this.historySize > 0) {
      this.history.push({ seq, event: ev });
      if (this.history.length > this.historySize) this.history.shift();
    }
    this.emit('event', ev);
    if (!RESERVED_EVENT_NAMES.has(ev.event)) this.emit(ev.event, ev);
  }
}
