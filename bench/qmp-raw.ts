// A QMP client of a few lines, for the benchmark's own scripts: the "bare QMP script" that an
// incremental by the product is compared with must not run any of the product's code, so it
// does not use src/providers/qemu/protocol.ts either. One command at a time, events kept.
import * as net from 'node:net';

export interface RawEvent {
  event: string;
  data?: any;
  at: number;
}

export class RawQmp {
  readonly events: RawEvent[] = [];
  private buf = '';
  private waiting: { resolve: (v: any) => void; reject: (e: Error) => void } | undefined;
  private greeted: Promise<void>;
  private eventWaiters: { pred: (e: RawEvent) => boolean; resolve: (e: RawEvent) => void }[] = [];

  private constructor(private readonly sock: net.Socket) {
    let greet!: () => void;
    this.greeted = new Promise((r) => (greet = r));
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      this.buf += chunk;
      let i: number;
      while ((i = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, i).trim();
        this.buf = this.buf.slice(i + 1);
        if (!line) continue;
        const msg = JSON.parse(line);
        if (msg.QMP) greet();
        else if (msg.event) {
          const ev = { event: msg.event, data: msg.data, at: Date.now() };
          this.events.push(ev);
          this.eventWaiters = this.eventWaiters.filter((w) => (w.pred(ev) ? (w.resolve(ev), false) : true));
        } else if (this.waiting) {
          const w = this.waiting;
          this.waiting = undefined;
          if (msg.error) w.reject(new Error(`${msg.error.class}: ${msg.error.desc}`));
          else w.resolve(msg.return);
        }
      }
    });
    sock.on('close', () => this.waiting?.reject(new Error('QMP connection closed')));
  }

  static async connect(file: string): Promise<RawQmp> {
    const sock = net.connect(file);
    await new Promise<void>((resolve, reject) => sock.once('connect', resolve).once('error', reject));
    const c = new RawQmp(sock);
    await c.greeted;
    await c.execute('qmp_capabilities');
    return c;
  }

  execute<T = any>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.waiting) return Promise.reject(new Error('RawQmp: one command at a time'));
    return new Promise<T>((resolve, reject) => {
      this.waiting = { resolve, reject };
      this.sock.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + '\n');
    });
  }

  /** The first event from now on (or already seen after `since`) that matches. */
  waitEvent(pred: (e: RawEvent) => boolean, since: number): Promise<RawEvent> {
    const seen = this.events.slice(since).find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => this.eventWaiters.push({ pred, resolve }));
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.sock.once('close', () => resolve());
      this.sock.end();
      setTimeout(() => {
        this.sock.destroy();
        resolve();
      }, 1000).unref();
    });
  }
}
