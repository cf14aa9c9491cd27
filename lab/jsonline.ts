/**
 * Minimal JSON-lines client for the lab's QMP and guest-agent (QGA) unix
 * sockets. Self-contained on purpose: the product has its own clients in src/.
 *
 * QMP: greeting -> qmp_capabilities -> commands; asynchronous events are skipped.
 * QGA: no greeting; a guest-sync {id} handshake discards stale replies left
 *      over from earlier (timed out) connections.
 */
import * as net from 'node:net';

/* eslint-disable @typescript-eslint/no-explicit-any */
export type JsonObject = Record<string, any>;

export class JsonLineClient {
  private buf = '';
  private queue: JsonObject[] = [];
  private waiters: Array<{ resolve: (m: JsonObject) => void; reject: (e: Error) => void }> = [];
  private closedError: Error | undefined;

  private constructor(
    private readonly sock: net.Socket,
    readonly path: string,
  ) {
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => this.onData(chunk));
    sock.on('error', (e) => this.fail(e));
    sock.on('close', () => this.fail(new Error(`${path}: connection closed`)));
  }

  /** Connect to a unix socket, failing after `timeoutMs`. */
  static connect(path: string, timeoutMs = 5000): Promise<JsonLineClient> {
    return new Promise((resolve, reject) => {
      const sock = net.createConnection({ path });
      const timer = setTimeout(() => {
        sock.destroy();
        reject(new Error(`${path}: connect timeout after ${timeoutMs} ms`));
      }, timeoutMs);
      sock.once('connect', () => {
        clearTimeout(timer);
        sock.removeAllListeners('error');
        resolve(new JsonLineClient(sock, path));
      });
      sock.once('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      // 0xFF (guest-sync-delimited) arrives as U+FFFD after utf8 decoding: drop it.
      const line = this.buf
        .slice(0, nl)
        .replace(/[\uFFFD\u00FF\r]/g, '')
        .trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let msg: JsonObject;
      try {
        msg = JSON.parse(line) as JsonObject;
      } catch {
        continue; // garbage (e.g. a partial reply from before a reconnect)
      }
      const w = this.waiters.shift();
      if (w) w.resolve(msg);
      else this.queue.push(msg);
    }
  }

  private fail(e: Error): void {
    if (!this.closedError) this.closedError = e;
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w.reject(this.closedError);
  }

  send(obj: JsonObject): void {
    this.sock.write(JSON.stringify(obj) + '\n');
  }

  /** Next JSON message, or reject after `timeoutMs`. */
  next(timeoutMs: number): Promise<JsonObject> {
    const q = this.queue.shift();
    if (q) return Promise.resolve(q);
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise((resolve, reject) => {
      const entry = {
        resolve: (m: JsonObject) => {
          clearTimeout(timer);
          resolve(m);
        },
        reject: (e: Error) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      const timer = setTimeout(() => {
        const i = this.waiters.indexOf(entry);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new Error(`${this.path}: no reply within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiters.push(entry);
    });
  }

  /** Wait for the first message satisfying `pred` (others are dropped). */
  async nextMatching(pred: (m: JsonObject) => boolean, timeoutMs: number): Promise<JsonObject> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.path}: no matching reply within ${timeoutMs} ms`);
      const m = await this.next(left);
      if (pred(m)) return m;
    }
  }

  close(): void {
    this.sock.destroy();
  }
}

export class CommandError extends Error {
  constructor(
    readonly command: string,
    readonly error: JsonObject,
  ) {
    super(`${command}: ${error?.class ?? 'Error'}: ${error?.desc ?? JSON.stringify(error)}`);
  }
}

// ---------------------------------------------------------------------------
// QMP

export class QmpSession {
  private constructor(private readonly c: JsonLineClient) {}

  static async open(path: string, timeoutMs = 5000): Promise<QmpSession> {
    const c = await JsonLineClient.connect(path, timeoutMs);
    try {
      await c.nextMatching((m) => 'QMP' in m, timeoutMs);
      c.send({ execute: 'qmp_capabilities' });
      const r = await c.nextMatching((m) => 'return' in m || 'error' in m, timeoutMs);
      if ('error' in r) throw new CommandError('qmp_capabilities', r.error);
      return new QmpSession(c);
    } catch (e) {
      c.close();
      throw e;
    }
  }

  async execute(command: string, args?: JsonObject, timeoutMs = 10000): Promise<any> {
    const id = `lab-${Date.now()}-${Math.random().toString(36).slice(2, 8)}`;
    this.c.send(args ? { execute: command, arguments: args, id } : { execute: command, id });
    const r = await this.c.nextMatching((m) => m.id === id && ('return' in m || 'error' in m), timeoutMs);
    if ('error' in r) throw new CommandError(command, r.error);
    return r.return;
  }

  close(): void {
    this.c.close();
  }
}

/** One-shot QMP command. */
export async function qmpCommand(path: string, command: string, args?: JsonObject, timeoutMs = 10000): Promise<any> {
  const s = await QmpSession.open(path, timeoutMs);
  try {
    return await s.execute(command, args, timeoutMs);
  } finally {
    s.close();
  }
}

// ---------------------------------------------------------------------------
// QGA

let syncCounter = Math.floor(Math.random() * 1_000_000) * 1000;

export class QgaSession {
  private constructor(private readonly c: JsonLineClient) {}

  /**
   * Connect and perform the guest-sync handshake. Rejects if the agent does
   * not answer within `timeoutMs` (e.g. no agent running in the guest).
   */
  static async open(path: string, timeoutMs = 5000): Promise<QgaSession> {
    const c = await JsonLineClient.connect(path, timeoutMs);
    try {
      const id = ++syncCounter;
      c.send({ execute: 'guest-sync', arguments: { id } });
      await c.nextMatching((m) => m.return === id, timeoutMs);
      return new QgaSession(c);
    } catch (e) {
      c.close();
      throw e;
    }
  }

  async execute(command: string, args?: JsonObject, timeoutMs = 10000): Promise<any> {
    this.c.send(args ? { execute: command, arguments: args } : { execute: command });
    const r = await this.c.nextMatching((m) => 'return' in m || 'error' in m, timeoutMs);
    if ('error' in r) throw new CommandError(command, r.error);
    return r.return;
  }

  /** Send a command that produces no reply on success (guest-shutdown, ...). */
  sendNoReply(command: string, args?: JsonObject): void {
    this.c.send(args ? { execute: command, arguments: args } : { execute: command });
  }

  close(): void {
    this.c.close();
  }
}

/** One-shot QGA command (with guest-sync first). */
export async function qgaCommand(path: string, command: string, args?: JsonObject, timeoutMs = 10000): Promise<any> {
  const s = await QgaSession.open(path, timeoutMs);
  try {
    return await s.execute(command, args, timeoutMs);
  } finally {
    s.close();
  }
}

/** True if the agent answers guest-sync within `timeoutMs`. */
export async function qgaPing(path: string, timeoutMs = 3000): Promise<boolean> {
  try {
    const s = await QgaSession.open(path, timeoutMs);
    s.close();
    return true;
  } catch {
    return false;
  }
}
