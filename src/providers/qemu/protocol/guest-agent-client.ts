/**
 * QEMU guest agent (QGA) client.
 *
 * QGA speaks the QMP wire format but has no greeting, no capabilities
 * negotiation and no events, and the channel (a virtio-serial port exposed by
 * QEMU as a unix-socket chardev server) is a plain byte pipe that outlives
 * clients: replies meant for an earlier client, or for a command that timed
 * out, may still be queued in it. The client therefore synchronizes before
 * use and after anything that may have put the stream out of step:
 *
 *   host -> agent: 0xFF  (resets the agent's JSON parser; the agent answers
 *                         with a JSON parse error, which is discarded)
 *   host -> agent: {"execute":"guest-sync-delimited","arguments":{"id":N}}
 *   agent -> host: ...stale replies... 0xFF {"return": N}
 *
 * Everything before the reply carrying our random id is discarded. The
 * 0xFF the agent sends in front of it also resets our decoder, dropping any
 * partial stale message.
 *
 * Re-sync happens automatically before the next command after: a command
 * timeout, a `noReply` command that got no reply, or a reply arriving while
 * no command was in flight.
 *
 * Commands are serialized at this level (one at a time, sync included), so a
 * late reply to a timed-out command can never be taken as the answer to the
 * next one.
 *
 * The QGA chardev serves one client at a time: while another client holds
 * it, a second connect() succeeds at the socket level but nothing answers,
 * so the sync times out with GuestAgentUnavailableError.
 */
import { randomInt } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { GuestAgentUnavailableError, QmpConnectionClosedError, QmpError, QmpTimeoutError } from './errors';
import { QmpMessage, isResponse } from './message';
import { ConnectionOptions, QmpConnection } from './protocol';

export const DEFAULT_QGA_TIMEOUT_MS = 30_000;
export const DEFAULT_QGA_SYNC_TIMEOUT_MS = 3_000;

export interface GuestAgentConnectOptions extends ConnectionOptions {
  /** Default per-command timeout. Default 30 s. */
  timeoutMs?: number;
  /** Time allowed for each guest-sync handshake. Default 3 s. */
  syncTimeoutMs?: number;
}

export interface GuestAgentExecuteOptions {
  /**
   * Time limit counted from the call (waiting behind earlier commands
   * included) to the reply; a re-sync needed first is bounded separately by
   * `syncTimeoutMs`.
   */
  timeoutMs?: number;
  /**
   * The command sends no reply on success (`guest-shutdown`,
   * `guest-suspend-disk|ram|hybrid`): resolve with `undefined` once written
   * (after `replyGraceMs`, if set, without a reply). The channel is re-synced
   * before the next command.
   */
  noReply?: boolean;
  /**
   * With `noReply`: wait this long for an error reply (e.g. the command is
   * disabled in the agent) before assuming success. Default 0.
   */
  replyGraceMs?: number;
}

const SENTINEL = Buffer.from([0xff]);

export class GuestAgentClient {
  private readonly conn: QmpConnection;
  private readonly defaultTimeoutMs: number;
  private readonly syncTimeoutMs: number;
  private needsSync = true;
  private tail: Promise<void> = Promise.resolve();
  private useDelimited = true;
  readonly socketPath: string;
  /** Resolves (never rejects) once the connection is closed. */
  readonly closed: Promise<void>;

  private constructor(socketPath: string, conn: QmpConnection, opts: GuestAgentConnectOptions) {
    this.socketPath = socketPath;
    this.conn = conn;
    this.closed = conn.closed;
    this.defaultTimeoutMs = opts.timeoutMs ?? DEFAULT_QGA_TIMEOUT_MS;
    this.syncTimeoutMs = opts.syncTimeoutMs ?? DEFAULT_QGA_SYNC_TIMEOUT_MS;
    // A reply while nothing is in flight means we are out of step.
    conn.on('unsolicited', (msg: QmpMessage) => {
      if (isResponse(msg)) this.needsSync = true;
    });
  }

  /**
   * Connect to the agent's unix socket and perform the guest-sync handshake.
   * Rejects with GuestAgentUnavailableError if the socket cannot be opened or
   * the agent does not answer within `syncTimeoutMs`.
   */
  static async connect(socketPath: string, opts: GuestAgentConnectOptions = {}): Promise<GuestAgentClient> {
    const conn = new QmpConnection(opts);
    try {
      await conn.connect(socketPath);
    } catch (err) {
      throw new GuestAgentUnavailableError(socketPath, (err as Error).message, { cause: err });
    }
    const client = new GuestAgentClient(socketPath, conn, opts);
    try {
      await client.sync();
    } catch (err) {
      await conn.close();
      if (err instanceof GuestAgentUnavailableError) throw err;
      throw new GuestAgentUnavailableError(socketPath, (err as Error).message, { cause: err });
    }
    return client;
  }

  get isClosed(): boolean {
    return this.conn.isClosed;
  }

  /** True when the next command will be preceded by a guest-sync handshake. */
  get outOfSync(): boolean {
    return this.needsSync;
  }

  /** Force a guest-sync handshake (normally automatic). */
  sync(): Promise<void> {
    return this.serialize(() => this.doSync());
  }

  /**
   * Run an agent command. Resolves with its `return` value (`undefined` for a
   * `noReply` command without reply). Rejects with QmpError (error reply),
   * QmpTimeoutError, GuestAgentUnavailableError (re-sync failed) or
   * QmpConnectionClosedError.
   */
  execute<T = any>(command: string, args?: Record<string, unknown>, opts: GuestAgentExecuteOptions = {}): Promise<T> {
    const timeoutMs = opts.timeoutMs ?? this.defaultTimeoutMs;
    const deadline = performance.now() + timeoutMs;
    return this.serialize(async () => {
      if (this.conn.isClosed) throw new QmpConnectionClosedError('connection is closed', { command });
      const remaining = deadline - performance.now();
      if (remaining <= 0) throw new QmpTimeoutError(command, timeoutMs, 'queued');
      if (this.needsSync) await this.doSync();
      let reply: QmpMessage | undefined;
      try {
        reply = await this.conn.request(
          { execute: command, arguments: args },
          { timeoutMs: remaining, noReply: opts.noReply, replyGraceMs: opts.replyGraceMs },
        );
      } catch (err) {
        if (err instanceof QmpTimeoutError) {
          this.needsSync = true;
          throw new QmpTimeoutError(command, timeoutMs, err.phase);
        }
        throw err;
      }
      if (reply === undefined) {
        // noReply: whether the agent still answers (e.g. failure) is unknown.
        this.needsSync = true;
        return undefined as T;
      }
      if ('error' in reply) {
        const e = reply.error ?? {};
        throw new QmpError(command, String(e.class ?? 'GenericError'), String(e.desc ?? JSON.stringify(e)));
      }
      return reply.return as T;
    });
  }

  /** Close the connection (frees the single-client agent channel for others). */
  close(): Promise<void> {
    return this.conn.close();
  }

  // -- internals ------------------------------------------------------------

  private serialize<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(fn);
    this.tail = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  private async doSync(): Promise<void> {
    this.needsSync = true;
    for (;;) {
      const id = randomInt(1, 2 ** 31); // 31-bit, as the agent's id is an int
      const command = this.useDelimited ? 'guest-sync-delimited' : 'guest-sync';
      let reply: QmpMessage | undefined;
      try {
        reply = await this.conn.request(
          { execute: command, arguments: { id } },
          {
            timeoutMs: this.syncTimeoutMs,
            prefix: SENTINEL,
            accept: (msg) =>
              msg.return === id ||
              (this.useDelimited && msg.error?.class === 'CommandNotFound' && /guest-sync-delimited/.test(String(msg.error?.desc))),
          },
        );
      } catch (err) {
        if (err instanceof QmpTimeoutError) {
          throw new GuestAgentUnavailableError(
            this.socketPath,
            `no answer to ${command} within ${this.syncTimeoutMs} ms (agent not running, guest not up, or channel held by another client)`,
            { cause: err },
          );
        }
        throw err;
      }
      if (reply && reply.return === id) {
        this.needsSync = false;
        return;
      }
      // Very old agent without guest-sync-delimited: fall back to guest-sync.
      this.useDelimited = false;
    }
  }
}
