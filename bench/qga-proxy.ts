// A byte-for-byte proxy in front of a VM's guest-agent socket that timestamps, on the wire,
// when guest-fsfreeze-freeze and guest-fsfreeze-thaw pass towards the guest and when their
// replies come back. It measures the freeze window as the agent channel sees it, independently
// of the product's own clock readings (snapshot.frozenMs) and of its journal.
import { promises as fs } from 'node:fs';
import * as net from 'node:net';
import { nowMs } from './util';

export interface WireFreeze {
  freezeSent: number;
  freezeReplied?: number;
  thawSent?: number;
  thawReplied?: number;
}

export class QgaProxy {
  readonly freezes: WireFreeze[] = [];
  private server?: net.Server;
  private readonly sockets = new Set<net.Socket>();
  connections = 0;

  constructor(
    readonly listenPath: string,
    readonly targetPath: string,
  ) {}

  async start(): Promise<void> {
    await fs.rm(this.listenPath, { force: true });
    this.server = net.createServer((client) => this.onClient(client));
    await new Promise<void>((resolve, reject) => this.server!.listen(this.listenPath, resolve).once('error', reject));
  }

  private onClient(client: net.Socket): void {
    this.connections++;
    const agent = net.connect(this.targetPath);
    this.sockets.add(client);
    this.sockets.add(agent);
    client.setNoDelay?.(true);
    let awaiting: 'freeze' | 'thaw' | undefined;
    client.on('data', (chunk: Buffer) => {
      const text = chunk.toString('latin1');
      const t = nowMs();
      agent.write(chunk);
      if (text.includes('"guest-fsfreeze-freeze"')) {
        this.freezes.push({ freezeSent: t });
        awaiting = 'freeze';
      } else if (text.includes('"guest-fsfreeze-thaw"')) {
        const f = this.freezes[this.freezes.length - 1];
        if (f && f.thawSent === undefined) f.thawSent = t;
        awaiting = 'thaw';
      }
    });
    agent.on('data', (chunk: Buffer) => {
      const t = nowMs();
      client.write(chunk);
      if (awaiting && chunk.toString('latin1').includes('"return"')) {
        const f = this.freezes[this.freezes.length - 1];
        if (f && awaiting === 'freeze' && f.freezeReplied === undefined) f.freezeReplied = t;
        if (f && awaiting === 'thaw' && f.thawReplied === undefined) f.thawReplied = t;
        awaiting = undefined;
      }
    });
    const end = () => {
      client.destroy();
      agent.destroy();
      this.sockets.delete(client);
      this.sockets.delete(agent);
    };
    client.on('close', end).on('error', end);
    agent.on('close', end).on('error', end);
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    await fs.rm(this.listenPath, { force: true });
  }
}
