/**
 * Message layer: framing of the QMP / QGA byte stream.
 *
 * Both protocols exchange JSON objects. QEMU ends each one with "\r\n", the
 * guest agent with "\n", and the agent additionally emits a 0xFF sentinel byte
 * in front of the reply to `guest-sync-delimited`. This decoder therefore does
 * not rely on line ends: it scans bytes, tracking string / escape state and
 * brace depth, and cuts a message when the top-level object closes.
 *
 * Scanning happens on raw bytes: every structural JSON character is ASCII and
 * every byte of a multi-byte UTF-8 sequence is >= 0x80, so a sequence split
 * across chunks can never be mistaken for structure. Bytes are only decoded
 * (strictly, as UTF-8) once an object is complete.
 *
 * 0xFF can never occur in valid UTF-8, so it is treated as a hard reset
 * wherever it appears: a partially received object is discarded (this is what
 * the sentinel is for: everything before it is stale).
 */
import { QmpParseError } from './errors';

/** Any JSON object received from the peer. */
export type QmpMessage = Record<string, any>;

/** A command as written to the peer. */
export interface QmpCommand {
  execute: string;
  arguments?: Record<string, unknown>;
  id?: string | number;
}

export interface QmpTimestamp {
  seconds: number;
  microseconds: number;
}

/** An asynchronous event (`{"event", "data", "timestamp"}`). */
export interface QmpEvent {
  event: string;
  /** Event payload; `{}` when the server sent none. */
  data: any;
  timestamp: QmpTimestamp;
}

/** The greeting QEMU sends on connect: `{"QMP": {"version", "capabilities"}}`. */
export interface QmpGreeting {
  QMP: {
    version: {
      qemu: { major: number; minor: number; micro: number };
      package: string;
    };
    capabilities: string[];
  };
}

export type DecodedItem =
  | { kind: 'message'; message: QmpMessage }
  /** A 0xFF sentinel byte was seen (any partial object before it was dropped). */
  | { kind: 'delimiter' }
  /** A complete top-level object that is not valid UTF-8 / JSON. */
  | { kind: 'invalid'; error: QmpParseError };

const OPEN_BRACE = 0x7b; // {
const CLOSE_BRACE = 0x7d; // }
const OPEN_BRACKET = 0x5b; // [
const CLOSE_BRACKET = 0x5d; // ]
const QUOTE = 0x22; // "
const BACKSLASH = 0x5c; // \
const SENTINEL = 0xff;

function isWhitespace(b: number): boolean {
  return b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;
}

export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

/**
 * Incremental decoder: feed it chunks as they arrive, get back complete
 * messages. Bytes outside any object (line ends, stray text left in the
 * channel by an earlier client) are skipped and counted in
 * {@link discardedBytes}.
 */
export class MessageDecoder {
  private parts: Buffer[] = [];
  private partBytes = 0;
  private depth = 0;
  private inString = false;
  private escaped = false;
  private readonly utf8 = new TextDecoder('utf-8', { fatal: true });
  /** Bytes dropped so far: text outside objects and objects cut short by 0xFF. */
  discardedBytes = 0;

  constructor(private readonly maxMessageBytes: number = DEFAULT_MAX_MESSAGE_BYTES) {}

  /** True while part of an object has been received but not its end. */
  get midMessage(): boolean {
    return this.depth > 0;
  }

  /** Forget any partially received object. */
  reset(): void {
    this.discardedBytes += this.partBytes;
    this.parts = [];
    this.partBytes = 0;
    this.depth = 0;
    this.inString = false;
    this.escaped = false;
  }

  push(chunk: Uint8Array | string): DecodedItem[] {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const out: DecodedItem[] = [];
    let start = this.depth > 0 ? 0 : -1;

    for (let i = 0; i < buf.length; i++) {
      const b = buf[i];
      if (b === SENTINEL) {
        if (this.depth > 0) {
          this.discardedBytes += i - start;
          this.reset();
        }
        start = -1;
        out.push({ kind: 'delimiter' });
        continue;
      }
      if (this.depth === 0) {
        if (b === OPEN_BRACE) {
          this.depth = 1;
          this.inString = false;
          this.escaped = false;
          start = i;
        } else if (!isWhitespace(b)) {
          this.discardedBytes++;
        }
        continue;
      }
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (b === BACKSLASH) this.escaped = true;
        else if (b === QUOTE) this.inString = false;
        continue;
      }
      if (b === QUOTE) this.inString = true;
      else if (b === OPEN_BRACE || b === OPEN_BRACKET) this.depth++;
      else if (b === CLOSE_BRACE || b === CLOSE_BRACKET) {
        this.depth--;
        if (this.depth === 0) {
          out.push(this.complete(buf.subarray(start, i + 1)));
          start = -1;
        }
      }
    }

    if (this.depth > 0 && start >= 0) {
      // Copy: the caller may reuse its buffer.
      const rest = Buffer.from(buf.subarray(start));
      this.parts.push(rest);
      this.partBytes += rest.length;
      if (this.partBytes > this.maxMessageBytes) {
        const size = this.partBytes;
        this.reset();
        out.push({
          kind: 'invalid',
          error: new QmpParseError(`message exceeds ${this.maxMessageBytes} bytes (${size} received); dropped`, ''),
        });
      }
    }
    return out;
  }

  private complete(tail: Buffer): DecodedItem {
    const bytes = this.parts.length ? Buffer.concat([...this.parts, tail]) : tail;
    this.parts = [];
    this.partBytes = 0;
    let text: string;
    try {
      text = this.utf8.decode(bytes);
    } catch (err) {
      return { kind: 'invalid', error: new QmpParseError('message is not valid UTF-8', bytes.toString('latin1'), { cause: err }) };
    }
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (err) {
      return { kind: 'invalid', error: new QmpParseError(`malformed JSON: ${(err as Error).message}`, text, { cause: err }) };
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      return { kind: 'invalid', error: new QmpParseError('message is not a JSON object', text) };
    }
    return { kind: 'message', message: value as QmpMessage };
  }
}

/** Serialize a command as one line of JSON (UTF-8, terminated by "\n"). */
export function serializeCommand(cmd: QmpCommand): Buffer {
  if (typeof cmd.execute !== 'string' || cmd.execute.length === 0) {
    throw new TypeError('command name (execute) must be a non-empty string');
  }
  const msg: Record<string, unknown> = { execute: cmd.execute };
  if (cmd.arguments !== undefined) {
    const args = cmd.arguments;
    if (args === null || typeof args !== 'object' || Array.isArray(args)) {
      throw new TypeError(`${cmd.execute}: arguments must be a JSON object`);
    }
    msg.arguments = args;
  }
  if (cmd.id !== undefined) msg.id = cmd.id;
  // JSON.stringify escapes control characters (including newlines) inside
  // strings, so the result is always a single line.
  return Buffer.from(`${JSON.stringify(msg)}\n`, 'utf8');
}

export function isEvent(msg: QmpMessage): boolean {
  return typeof msg.event === 'string';
}

/** A reply to a command: has `return` or `error`. */
export function isResponse(msg: QmpMessage): boolean {
  return !isEvent(msg) && ('return' in msg || 'error' in msg);
}

export function isGreeting(msg: QmpMessage): msg is QmpGreeting {
  return msg.QMP !== null && typeof msg.QMP === 'object';
}

/** Normalize an event message into a {@link QmpEvent}. */
export function toEvent(msg: QmpMessage): QmpEvent {
  const ts = msg.timestamp && typeof msg.timestamp === 'object' ? msg.timestamp : {};
  return {
    event: msg.event,
    data: msg.data ?? {},
    timestamp: {
      seconds: typeof ts.seconds === 'number' ? ts.seconds : 0,
      microseconds: typeof ts.microseconds === 'number' ? ts.microseconds : 0,
    },
  };
}
