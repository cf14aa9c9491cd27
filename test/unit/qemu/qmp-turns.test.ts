// Proxmox's own tools beside a backup, against the socket behaviour measured on QEMU 7.2 here
// (test/integration/storage-qemu.test.ts measures it again on a real QEMU): QEMU serves ONE QMP
// client at a time; a second client's connect() succeeds at once (the kernel's backlog) but its
// greeting comes only when the first client hangs up. `qm status`, `qm monitor` and pvestatd
// connect per command to /var/run/qemu-server/<vmid>.qmp and give up after a timeout (pvestatd
// polls query-status every few seconds). The fake QEMU below keeps exactly that rule.
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { exchangesOf, MessageDecoder, QmpClient } from '../../../src/providers/qemu/protocol';
import { followJob } from '../../../src/providers/qemu/job';
import type { ViewDisk } from '../../../src/providers/qemu/view';
import { GREETING } from '../protocol/fake-server';
import { pvestatd, qmStatus } from '../../support/pvestatd';

/** A QMP server that, like QEMU, talks to one client at a time; a backup job that runs `jobMs`. */
class OneClientQemu {
  readonly dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vmb-qm-'));
  readonly path = path.join(this.dir, 'qmp');
  private readonly server = net.createServer((s) => this.queue(s));
  private busy = false;
  private readonly waiting: net.Socket[] = [];
  private jobStart = 0;
  dismissed = false;

  constructor(private readonly jobMs: number) {}

  listen(): Promise<void> {
    return new Promise((r) => this.server.listen(this.path, () => r()));
  }

  startJob(): void {
    this.jobStart = Date.now();
  }

  private queue(s: net.Socket): void {
    s.on('error', () => undefined);
    this.waiting.push(s);
    this.next();
  }

  private next(): void {
    if (this.busy) return;
    const s = this.waiting.shift();
    if (!s) return;
    if (s.destroyed) return this.next();
    this.busy = true;
    const decoder = new MessageDecoder();
    s.write(`${JSON.stringify(GREETING)}\r\n`);
    s.on('data', (chunk) => {
      for (const item of decoder.push(chunk)) {
        if (item.kind !== 'message') continue;
        const m = item.message as { execute: string; id?: unknown; arguments?: { id?: string } };
        s.write(`${JSON.stringify({ return: this.answer(m.execute, m.arguments), id: m.id })}\r\n`);
      }
    });
    s.once('close', () => {
      this.busy = false;
      this.next();
    });
  }

  private answer(command: string, args?: { id?: string }): unknown {
    if (command === 'query-status') return { status: 'running', running: true };
    if (command === 'job-dismiss') {
      this.dismissed = args?.id === 'vmb-x-0-j';
      return {};
    }
    if (command === 'query-jobs') {
      if (this.dismissed) return [];
      const done = Math.min(1, (Date.now() - this.jobStart) / this.jobMs);
      const total = 1 << 30;
      return [
        {
          id: 'vmb-x-0-j',
          type: 'backup',
          status: done >= 1 ? 'concluded' : 'running',
          'current-progress': Math.round(done * total),
          'total-progress': total,
        },
      ];
    }
    return {};
  }

  async close(): Promise<void> {
    for (const s of this.waiting) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

const disk = { disk: 'drive-scsi0', jobId: 'vmb-x-0-j', fleece: '/f' } as ViewDisk;

describe('QMP beside the host tools (Proxmox qm/pvestatd): one short exchange at a time', function () {
  this.timeout(10_000);
  let qemu: OneClientQemu;
  beforeEach(async () => {
    qemu = new OneClientQemu(3000);
    await qemu.listen();
  });
  afterEach(() => qemu.close());

  it('the socket behaviour: a client holding the monitor makes `qm status` time out (the old copy held it for the whole job)', async () => {
    const holder = await QmpClient.connect(qemu.path);
    try {
      await assert.rejects(qmStatus(qemu.path, 1000), /timed out|timeout/i);
    } finally {
      await holder.close();
    }
    assert.ok((await qmStatus(qemu.path, 1000)) < 1000, 'answered once the holder hung up');
  });

  it('a copy followed by short exchanges: every pvestatd poll (every 200 ms, 1 s limit) is answered during a 3 s job', async () => {
    qemu.startJob();
    const progress: number[] = [];
    const copy = followJob(exchangesOf(qemu.path), disk, { onProgress: (d) => progress.push(d) });
    const polls = await pvestatd(qemu.path, copy, 200, 1000);
    assert.equal(await copy, 1 << 30, 'the job read the whole disk');
    assert.ok(qemu.dismissed, 'the concluded job was dismissed');
    assert.ok(polls.polls >= 10, `polled ${polls.polls} times`);
    assert.deepEqual(polls.errors, []);
    assert.equal(polls.answered, polls.polls);
    assert.ok(polls.slowestMs < 500, `slowest answer ${polls.slowestMs.toFixed(0)} ms`);
    assert.ok(progress.length >= 3 && progress[progress.length - 1] === 1 << 30, 'progress reported along the way');
  });

  it('an abort cancels the job at once, in one exchange', async () => {
    qemu.startJob();
    const stop = new AbortController();
    const copy = followJob(exchangesOf(qemu.path), disk, { signal: stop.signal });
    setTimeout(() => stop.abort(new Error('set aborted')), 300);
    const t0 = Date.now();
    await assert.rejects(copy, /set aborted/);
    assert.ok(Date.now() - t0 < 1500);
  });
});
