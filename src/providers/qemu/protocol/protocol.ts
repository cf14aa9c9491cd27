/**
 * Protocol layer: one JSON-command connection over a unix socket.
 *
 * Shared by the QMP client and the guest-agent client. It owns the socket and
 * the {@link MessageDecoder}, and provides:
 *
 * - a FIFO of commands with exactly one in flight: the next command is only
 *   written once the previous one has resolved or rejected;
 * - a per-command timeout, measured from the moment `request()` is called (so
 *   it bounds queueing + execution; a command that expires while still queued
 *   is dropped without ever being written);
 * - rejection of every queued / in-flight command when the connection closes;
 * - events (`{"event": ...}` messages) emitted separately as `'event'`.
 *
 * Emitted events (never `'error'`, so an unobserved connection cannot crash
 * the process):
 * - `'event'` (QmpEvent): an asynchronous event from the server;
 * - `'unsolicited'` (QmpMessage): a non-event message while no command was in
 *   flight (e.g. the QMP greeting, or a late reply after a timeout);
 * - `'stale'` (QmpMessage): a reply that the in-flight command's `accept`
 *   filter refused (e.g. a reply carrying another command's id);
 * - `'delimiter'`: a 0xFF sentinel byte was received;
 * - `'invalid'` (QmpParseError): undecodable bytes from the peer;
 * - `'close'` (cause?: Error): the socket closed.
 */
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { QmpConnectError, QmpConnectionClosedError, QmpParseError, QmpTimeoutError } from './errors';
import {
  DEFAULT_MAX_MESSAGE_BYTES,
  MessageDecoder,
  QmpCommand,
  QmpMessage,
  isEvent,
  isResponse,
  serializeCommand,
  toEvent,
} from './message';

export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

export interface ConnectionOptions {
  /** Time allowed for the socket connect itself. Default 10 s. */
  connectTimeoutMs?: number;
  /** Largest single message accepted. Default 64 MiB. */
  maxMessageBytes?: number;
}

export interface RequestOptions {
  /** Time limit from the call to the reply. */
  timeoutMs: number;
  /** Name used in errors; defaults to the command name. */
  label?: string;
  /** Raw bytes written immediately before the command (e.g. a 0xFF sentinel). */
  prefix?: Uint8Array;
  /**
   * Decides whether a reply received while this command is in flight is its
   * answer. Refused replies are emitted as `'stale'` and the command keeps
   * waiting. Default: accept unless both the command and the reply carry an
   * `id` and they differ.
   */
  accept?: (reply: QmpMessage) => boolean;
  /**
   * The command produces no reply on success (QGA `guest-shutdown`,
   * `guest-suspend-*`): resolve with `undefined` once it has been written and
   * `replyGraceMs` has passed without a reply. A reply arriving within the
   * grace period is returned as usual (e.g. an error because the command is
   * disabled).
   */
  noReply?: boolean;
  /** See `noReply`. Default 0. */
  replyGraceMs?: number;
}

interface Pending {
  command: QmpCommand;
  label: string;
  opts: RequestOptions;
  resolve: (reply: QmpMessage | undefined) => void;
  reject: (err: Error) => void;
  timer?: NodeJS.Timeout;
  graceTimer?: NodeJS.Timeout;
  state: 'queued' | 'sent' | 'done';
}

function defaultAccept(command: QmpCommand): (reply: QmpMessage) => boolean {
  return (reply) => !(command.id !== undefined && reply.id !== undefined && reply.id !== command.id);
}

export class QmpConnection extends EventEmitter {
  private socket?: net.Socket;
  private readonly decoder: MessageDecoder;
  private readonly queue: Pending[] = [];
  private inFlight?: Pending;
  private closeCause?: Error;
  private closedByUs = false;
  private isClosedFlag = false;
  private resolveClosed!: () => void;
  /** Resolves (never rejects) once the socket is closed. */
  readonly closed: Promise<void>;
  socketPath?: string;

  constructor(private readonly options: ConnectionOptions = {}) {
    super();
    this.decoder = new MessageDecoder(options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES);
    this.closed = new Promise<void>((resolve) => {
      this.resolveClosed = resolve;
    });
  }

  get isClosed(): boolean {
    return this.isClosedFlag;
  }

  get isConnected(): boolean {
    return this.socket !== undefined && !this.isClosedFlag;
  }

  /** Number of commands queued or in flight. */
  get pendingCount(): number {
    return this.queue.length + (this.inFlight ? 1 : 0);
  }

  /** Bytes the decoder dropped (text outside objects, objects cut by 0xFF). */
  get discardedBytes(): number {
    return this.decoder.discardedBytes;
  }

  /**
   * Open the unix socket. Attach listeners (e.g. for the QMP greeting, which
   * QEMU sends immediately) before calling this.
   */
  connect(socketPath: string): Promise<void> {
    if (this.socket || this.isClosedFlag) {
      return Promise.reject(new QmpConnectError(socketPath, 'connection object already used'));
    }
    this.socketPath = socketPath;
    const timeoutMs = this.options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
    return new Promise<void>((resolve, reject) => {
      const socket = net.connect({ path: socketPath });
      this.socket = socket;
      let connected = false;
      const timer = setTimeout(() => {
        if (connected) return;
        const err = new QmpConnectError(socketPath, `timed out after ${timeoutMs} ms`, { code: 'ETIMEDOUT' });
        this.closeCause = err;
        reject(err);
        socket.destroy();
      }, timeoutMs);
      socket.once('connect', () => {
        connected = true;
        clearTimeout(timer);
        resolve();
      });
      socket.on('data', (chunk: Buffer) => this.onData(chunk));
      socket.on('error', (err: NodeJS.ErrnoException) => {
        if (!connected) {
          clearTimeout(timer);
          const cerr = new QmpConnectError(socketPath, err.message, { cause: err, code: err.code });
          this.closeCause = cerr;
          reject(cerr);
        } else if (!this.closeCause) {
          this.closeCause = err;
        }
      });
      socket.on('close', () => {
        clearTimeout(timer);
        if (!connected) reject(this.closeCause ?? new QmpConnectError(socketPath, 'socket closed while connecting'));
        this.onClose();
      });
    });
  }

  /**
   * Queue a command. Resolves with the raw reply message (which may be an
   * `{"error": ...}` reply; interpreting it is the caller's business), or with
   * `undefined` for a `noReply` command that got no reply.
   */
  request(command: QmpCommand, opts: RequestOptions): Promise<QmpMessage | undefined> {
    const label = opts.label ?? command.execute;
    if (this.isClosedFlag) {
      return Promise.reject(new QmpConnectionClosedError('connection is closed', { cause: this.closeCause, command: label }));
    }
    if (!this.socket) {
      return Promise.reject(new QmpConnectionClosedError('not connected', { command: label }));
    }
    return new Promise<QmpMessage | undefined>((resolve, reject) => {
      const p: Pending = { command, label, opts, resolve, reject, state: 'queued' };
      if (opts.timeoutMs > 0 && Number.isFinite(opts.timeoutMs)) {
        p.timer = setTimeout(() => this.onTimeout(p), opts.timeoutMs);
      }
      this.queue.push(p);
      this.pump();
    });
  }

  /** Close the socket; every pending command rejects with QmpConnectionClosedError. */
  close(): Promise<void> {
    if (!this.isClosedFlag) {
      this.closedByUs = true;
      if (this.socket) this.socket.destroy();
      else this.onClose();
    }
    return this.closed;
  }

  // -- internals ------------------------------------------------------------

  private pump(): void {
    if (this.inFlight || this.isClosedFlag || !this.socket) return;
    const p = this.queue.shift();
    if (!p) return;
    let payload: Buffer;
    try {
      payload = serializeCommand(p.command);
    } catch (err) {
      this.settle(p, undefined, err as Error);
      this.pump();
      return;
    }
    if (p.opts.prefix && p.opts.prefix.length) payload = Buffer.concat([p.opts.prefix, payload]);
    this.inFlight = p;
    p.state = 'sent';
    this.socket.write(payload, (err) => {
      if (err || p.state !== 'sent' || !p.opts.noReply) return; // errors surface via 'close'
      const grace = p.opts.replyGraceMs ?? 0;
      if (grace > 0) p.graceTimer = setTimeout(() => this.settle(p, undefined), grace);
      else this.settle(p, undefined);
    });
  }

  private settle(p: Pending, reply: QmpMessage | undefined, err?: Error): void {
    if (p.state === 'done') return;
    p.state = 'done';
    if (p.timer) clearTimeout(p.timer);
    if (p.graceTimer) clearTimeout(p.graceTimer);
    if (this.inFlight === p) this.inFlight = undefined;
    else {
      const idx = this.queue.indexOf(p);
      if (idx >= 0) this.queue.splice(idx, 1);
    }
    if (err) p.reject(err);
    else p.resolve(reply);
    // Write the next command only after this one's callbacks were scheduled.
    if (!this.isClosedFlag) queueMicrotask(() => this.pump());
  }

  private onTimeout(p: Pending): void {
    if (p.state === 'done') return;
    const phase = p.state === 'queued' ? 'queued' : 'sent';
    this.settle(p, undefined, new QmpTimeoutError(p.label, p.opts.timeoutMs, phase));
  }

  private onData(chunk: Buffer): void {
    for (const item of this.decoder.push(chunk)) {
      if (item.kind === 'delimiter') {
        this.emit('delimiter');
      } else if (item.kind === 'invalid') {
        this.emit('invalid', item.error);
      } else {
        this.onMessage(item.message);
      }
      if (this.isClosedFlag) return;
    }
  }

  private onMessage(msg: QmpMessage): void {
    if (isEvent(msg)) {
      this.emit('event', toEvent(msg));
      return;
    }
    const p = this.inFlight;
    if (isResponse(msg) && p && p.state === 'sent') {
      const accept = p.opts.accept ?? defaultAccept(p.command);
      let ok: boolean;
      try {
        ok = accept(msg);
      } catch (err) {
        this.settle(p, undefined, err as Error);
        return;
      }
      if (ok) this.settle(p, msg);
      else this.emit('stale', msg);
      return;
    }
    this.emit('unsolicited', msg);
  }

  private onClose(): void {
    if (this.isClosedFlag) return;
    this.isClosedFlag = true;
    const cause = this.closeCause;
    const why = this.closedByUs ? 'connection closed by client' : 'connection closed by peer';
    const pending = [...(this.inFlight ? [this.inFlight] : []), ...this.queue];
    this.inFlight = undefined;
    this.queue.length = 0;
    for (const p of pending) {
      p.state = 'done';
      if (p.timer) clearTimeout(p.timer);
      if (p.graceTimer) clearTimeout(p.graceTimer);
      p.reject(new QmpConnectionClosedError(why, { cause, command: p.label }));
    }
    if (this.decoder.midMessage) {
      this.emit('invalid', new QmpParseError('connection closed in the middle of a message', ''));
    }
    this.emit('close', cause);
    this.resolveClosed();
  }
}
