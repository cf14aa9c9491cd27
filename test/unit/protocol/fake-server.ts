/**
 * Test double: a scriptable unix-socket server speaking the QMP wire format.
 * Not a test file itself (no `.test.` in the name).
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { MessageDecoder, QmpMessage } from '../../../src/providers/qemu/protocol/message';

export type Reply = QmpMessage | string | Buffer;

export interface FakeServerOptions {
  /** Called for each connection before anything else (e.g. send a greeting). */
  onConnect?: (peer: FakePeer) => void;
  /** Called for each decoded message the client sent. */
  onMessage?: (msg: QmpMessage, peer: FakePeer) => void;
  /** Called when the peer sends a 0xFF byte. */
  onDelimiter?: (peer: FakePeer) => void;
}

export class FakePeer {
  readonly received: QmpMessage[] = [];
  readonly raw: Buffer[] = [];
  constructor(readonly socket: net.Socket) {}

  send(...items: Reply[]): void {
    for (const item of items) {
      if (Buffer.isBuffer(item)) this.socket.write(item);
      else if (typeof item === 'string') this.socket.write(item);
      else this.socket.write(`${JSON.stringify(item)}\r\n`);
    }
  }

  /** Write a buffer one byte per write, with a pause between writes. */
  async trickle(data: Buffer | string, pauseMs = 1): Promise<void> {
    const buf = Buffer.isBuffer(data) ? data : Buffer.from(data);
    for (let i = 0; i < buf.length; i++) {
      this.socket.write(buf.subarray(i, i + 1));
      await sleep(pauseMs);
    }
  }

  get rawBytes(): Buffer {
    return Buffer.concat(this.raw);
  }
}

export class FakeServer {
  readonly peers: FakePeer[] = [];
  private readonly server: net.Server;
  private readonly dir: string;
  readonly path: string;

  private constructor(private readonly opts: FakeServerOptions) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qmp-fake-'));
    this.path = path.join(this.dir, 'sock');
    this.server = net.createServer((socket) => this.onConnection(socket));
  }

  static async start(opts: FakeServerOptions = {}): Promise<FakeServer> {
    const s = new FakeServer(opts);
    await new Promise<void>((resolve, reject) => {
      s.server.once('error', reject);
      s.server.listen(s.path, () => resolve());
    });
    return s;
  }

  get peer(): FakePeer {
    const p = this.peers[this.peers.length - 1];
    if (!p) throw new Error('no client connected');
    return p;
  }

  /** All messages received over every connection. */
  get received(): QmpMessage[] {
    return this.peers.flatMap((p) => p.received);
  }

  async waitFor(cond: () => boolean, timeoutMs = 2000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!cond()) {
      if (Date.now() > end) throw new Error('waitFor: condition not met');
      await sleep(2);
    }
  }

  async close(): Promise<void> {
    for (const p of this.peers) p.socket.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    fs.rmSync(this.dir, { recursive: true, force: true });
  }

  private onConnection(socket: net.Socket): void {
    const peer = new FakePeer(socket);
    this.peers.push(peer);
    const decoder = new MessageDecoder();
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => {
      peer.raw.push(chunk);
      for (const item of decoder.push(chunk)) {
        if (item.kind === 'message') {
          peer.received.push(item.message);
          this.opts.onMessage?.(item.message, peer);
        } else if (item.kind === 'delimiter') {
          this.opts.onDelimiter?.(peer);
        }
      }
    });
    this.opts.onConnect?.(peer);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export const GREETING = {
  QMP: {
    version: { qemu: { major: 7, minor: 2, micro: 22 }, package: 'fake' },
    capabilities: ['oob'],
  },
};
