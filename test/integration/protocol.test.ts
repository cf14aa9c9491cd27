/**
 * Integration tests of the QMP / QGA clients against real QEMU binaries:
 * qemu-system-x86_64 (TCG only; no guest OS needed) and the host's own
 * qemu-ga listening on a private unix socket.
 *
 * Safety: qemu-ga runs on the HOST here. It is started with every
 * freeze / shutdown / suspend RPC blocked, and no test calls them.
 */
import assert from 'node:assert/strict';
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import {
  GuestAgentClient,
  GuestAgentUnavailableError,
  QmpClient,
  QmpConnectionClosedError,
  QmpError,
  QmpEvent,
} from '../../src/providers/qemu/protocol';

const QEMU = 'qemu-system-x86_64';
const QEMU_IMG = 'qemu-img';
const QEMU_GA = 'qemu-ga';

const BLOCKED_RPCS = [
  'guest-fsfreeze-freeze',
  'guest-fsfreeze-freeze-list',
  'guest-fsfreeze-thaw',
  'guest-shutdown',
  'guest-suspend-disk',
  'guest-suspend-ram',
  'guest-suspend-hybrid',
  // harmless, blocked only to observe how a disabled command answers
  'guest-get-timezone',
];

function which(bin: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    const p = path.join(dir, bin);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return undefined;
}

interface Proc {
  child: ChildProcess;
  stderr: string[];
  exited: Promise<void>;
}

function start(bin: string, args: string[]): Proc {
  const child = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  const stderr: string[] = [];
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => stderr.push(d));
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
  child.on('error', () => undefined);
  return { child, stderr, exited };
}

async function stop(p: Proc | undefined): Promise<void> {
  if (!p) return;
  if (p.child.exitCode === null && p.child.signalCode === null) {
    p.child.kill('SIGCONT');
    p.child.kill('SIGKILL');
  }
  await p.exited;
}

function run(bin: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = start(bin, args);
    p.child.once('exit', (code) =>
      code === 0 ? resolve() : reject(new Error(`${bin} ${args.join(' ')} exited ${code}: ${p.stderr.join('')}`)),
    );
    p.child.once('error', reject);
  });
}

async function waitForSocket(file: string, proc: Proc, timeoutMs = 15000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!fs.existsSync(file)) {
    if (proc.child.exitCode !== null) throw new Error(`process exited early: ${proc.stderr.join('')}`);
    if (Date.now() > end) throw new Error(`socket ${file} did not appear: ${proc.stderr.join('')}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('integration: QEMU protocol clients', function () {
  this.timeout(60000);
  let dir: string;

  before(function () {
    if (!which(QEMU) || !which(QEMU_IMG) || !which(QEMU_GA)) this.skip();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'qemu-proto-'));
  });

  after(() => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  describe('QmpClient against qemu-system-x86_64 -machine none', () => {
    let qemu: Proc | undefined;
    let client: QmpClient | undefined;
    let qmpPath: string;

    before(async () => {
      qmpPath = path.join(dir, 'q.qmp');
      qemu = start(QEMU, [
        '-accel',
        'tcg',
        '-machine',
        'none',
        '-nodefaults',
        '-display',
        'none',
        '-qmp',
        `unix:${qmpPath},server=on,wait=off`,
      ]);
      await waitForSocket(qmpPath, qemu);
      client = await QmpClient.connect(qmpPath, { timeoutMs: 20000 });
    });

    after(async () => {
      await client?.close();
      await stop(qemu);
    });

    it('negotiated; greeting carries the QEMU version', async () => {
      const v = client!.greeting.QMP.version.qemu;
      assert.ok(v.major >= 5, JSON.stringify(v));
      assert.ok(Array.isArray(client!.greeting.QMP.capabilities));
    });

    it('query-status and query-version', async () => {
      const status = await client!.execute('query-status');
      assert.equal(status.status, 'running');
      assert.equal(status.running, true);
      const version = await client!.execute('query-version');
      assert.deepEqual(version.qemu, client!.greeting.QMP.version.qemu);
    });

    it('an unknown command rejects with QmpError CommandNotFound', async () => {
      await assert.rejects(client!.execute('no-such-command'), (err: unknown) => {
        assert.ok(err instanceof QmpError);
        assert.equal(err.errorClass, 'CommandNotFound');
        assert.equal(err.command, 'no-such-command');
        assert.match(err.desc, /no-such-command/);
        return true;
      });
      await assert.rejects(client!.execute('blockdev-del', { 'node-name': 'nope' }), (err: unknown) => {
        assert.ok(err instanceof QmpError);
        assert.equal(err.errorClass, 'GenericError');
        return true;
      });
    });

    it('stop / cont produce STOP / RESUME events (emitted before the command reply)', async () => {
      const seen: string[] = [];
      const onEvent = (e: QmpEvent) => seen.push(e.event);
      client!.on('event', onEvent);
      const stopped = client!.waitEvent('STOP', undefined, 10000);
      await client!.execute('stop');
      const ev = await stopped;
      assert.equal(ev.event, 'STOP');
      assert.ok(ev.timestamp.seconds > 0);
      assert.equal((await client!.execute('query-status')).status, 'paused');

      const mark = client!.eventMark();
      await client!.execute('cont');
      // RESUME arrived before the reply of cont: found via the history mark
      const resumed = await client!.waitEvent('RESUME', undefined, 10000, { since: mark });
      assert.equal(resumed.event, 'RESUME');
      assert.equal((await client!.execute('query-status')).status, 'running');
      client!.off('event', onEvent);
      assert.deepEqual(seen, ['STOP', 'RESUME']);
    });

    it('blockdev-add (null-co and a qcow2 made with qemu-img) and query-named-block-nodes', async () => {
      const img = path.join(dir, 'disk.qcow2');
      await run(QEMU_IMG, ['create', '-q', '-f', 'qcow2', img, '16M']);
      await client!.execute('blockdev-add', { driver: 'null-co', 'node-name': 'null0', size: 1048576 });
      await client!.execute('blockdev-add', {
        driver: 'qcow2',
        'node-name': 'disk0',
        file: { driver: 'file', filename: img, 'node-name': 'disk0-file' },
      });
      const nodes: Array<{ 'node-name': string; drv: string; image: { 'virtual-size': number } }> = await client!.execute(
        'query-named-block-nodes',
        { flat: true },
      );
      const byName = new Map(nodes.map((n) => [n['node-name'], n]));
      assert.equal(byName.get('null0')?.drv, 'null-co');
      assert.equal(byName.get('disk0')?.drv, 'qcow2');
      assert.equal(byName.get('disk0')?.image['virtual-size'], 16 * 1024 * 1024);
      assert.equal(byName.get('disk0-file')?.drv, 'file');
      await client!.execute('blockdev-del', { 'node-name': 'disk0' });
      await client!.execute('blockdev-del', { 'node-name': 'null0' });
      const after: Array<{ 'node-name': string }> = await client!.execute('query-named-block-nodes');
      assert.equal(after.length, 0);
    });

    it('many concurrent commands are answered in order, one at a time', async () => {
      const results = await Promise.all(
        Array.from({ length: 20 }, (_, i) => (i % 2 ? client!.execute('query-status') : client!.execute('query-version'))),
      );
      results.forEach((r, i) => assert.ok(i % 2 ? 'status' in r : 'qemu' in r));
    });

    it('when QEMU dies, pending commands and event waiters reject with QmpConnectionClosedError', async () => {
      qemu!.child.kill('SIGSTOP'); // freeze QEMU so the command stays pending
      const pending = client!.execute('query-status');
      const queued = client!.execute('query-version');
      const waiter = client!.waitEvent('SHUTDOWN', undefined, 0);
      await new Promise((r) => setTimeout(r, 200));
      qemu!.child.kill('SIGKILL');
      await assert.rejects(pending, (err: unknown) => {
        assert.ok(err instanceof QmpConnectionClosedError);
        assert.match(err.message, /query-status: connection closed by peer/);
        return true;
      });
      await assert.rejects(queued, QmpConnectionClosedError);
      await assert.rejects(waiter, QmpConnectionClosedError);
      await client!.closed;
      assert.equal(client!.isClosed, true);
      await assert.rejects(client!.execute('query-status'), QmpConnectionClosedError);
    });
  });

  describe('QmpClient: quit', () => {
    let qemu: Proc | undefined;
    after(() => stop(qemu));

    it('quit answers, emits SHUTDOWN (before the reply), then QEMU closes the socket', async () => {
      const qmpPath = path.join(dir, 'quit.qmp');
      qemu = start(QEMU, [
        '-accel',
        'tcg',
        '-machine',
        'none',
        '-nodefaults',
        '-display',
        'none',
        '-qmp',
        `unix:${qmpPath},server=on,wait=off`,
      ]);
      await waitForSocket(qmpPath, qemu);
      const client = await QmpClient.connect(qmpPath);
      const shutdown = client.waitEvent('SHUTDOWN', undefined, 10000);
      await client.execute('quit');
      const ev = await shutdown;
      assert.equal(ev.data.reason, 'host-qmp-quit');
      await client.closed;
      await qemu.exited;
    });
  });

  describe('GuestAgentClient against the host qemu-ga (unix-listen)', () => {
    let ga: Proc | undefined;
    let gaPath: string;

    before(async () => {
      gaPath = path.join(dir, 'ga.sock');
      const stateDir = path.join(dir, 'ga-state');
      fs.mkdirSync(stateDir);
      ga = start(QEMU_GA, [
        '-m',
        'unix-listen',
        '-p',
        gaPath,
        '-t',
        stateDir,
        '-f',
        path.join(dir, 'qemu-ga.pid'),
        '-b',
        BLOCKED_RPCS.join(','),
      ]);
      await waitForSocket(gaPath, ga);
    });

    after(() => stop(ga));

    it('connect performs the guest-sync handshake; guest-ping and guest-info work', async () => {
      const client = await GuestAgentClient.connect(gaPath);
      try {
        assert.equal(client.outOfSync, false);
        assert.deepEqual(await client.execute('guest-ping'), {});
        const info: { version: string; supported_commands: Array<{ name: string; enabled: boolean }> } = await client.execute('guest-info');
        assert.match(info.version, /^\d+\.\d+/);
        const enabled = new Map(info.supported_commands.map((c) => [c.name, c.enabled]));
        assert.equal(enabled.get('guest-ping'), true);
        for (const rpc of BLOCKED_RPCS) assert.equal(enabled.get(rpc), false, `${rpc} must be disabled`);
      } finally {
        await client.close();
      }
    });

    it('a disabled command answers CommandNotFound "... has been disabled"', async () => {
      const client = await GuestAgentClient.connect(gaPath);
      try {
        await assert.rejects(client.execute('guest-get-timezone'), (err: unknown) => {
          assert.ok(err instanceof QmpError);
          assert.equal(err.errorClass, 'CommandNotFound');
          assert.match(err.desc, /has been disabled/);
          return true;
        });
        assert.equal(client.outOfSync, false);
        assert.deepEqual(await client.execute('guest-ping'), {});
      } finally {
        await client.close();
      }
    });

    it('serves one client at a time: a second client gets GuestAgentUnavailableError until the first closes', async () => {
      const first = await GuestAgentClient.connect(gaPath);
      try {
        await assert.rejects(GuestAgentClient.connect(gaPath, { syncTimeoutMs: 500 }), GuestAgentUnavailableError);
        assert.deepEqual(await first.execute('guest-ping'), {});
      } finally {
        await first.close();
      }
      const third = await GuestAgentClient.connect(gaPath);
      try {
        assert.deepEqual(await third.execute('guest-ping'), {});
      } finally {
        await third.close();
      }
    });

    it('an explicit re-sync mid-session works', async () => {
      const client = await GuestAgentClient.connect(gaPath);
      try {
        await client.sync();
        await client.sync();
        assert.deepEqual(await client.execute('guest-ping'), {});
      } finally {
        await client.close();
      }
    });
  });

  describe('GuestAgentClient against a QEMU agent channel with no agent in the guest', () => {
    let qemu: Proc | undefined;
    after(() => stop(qemu));

    it('rejects with GuestAgentUnavailableError after syncTimeoutMs', async () => {
      const qgaPath = path.join(dir, 'vm-qga.sock');
      qemu = start(QEMU, [
        '-accel',
        'tcg',
        '-machine',
        'pc',
        '-m',
        '32',
        '-nodefaults',
        '-display',
        'none',
        '-chardev',
        `socket,id=qga0,path=${qgaPath},server=on,wait=off`,
        '-device',
        'virtio-serial',
        '-device',
        'virtserialport,chardev=qga0,name=org.qemu.guest_agent.0',
      ]);
      await waitForSocket(qgaPath, qemu);
      const t0 = Date.now();
      await assert.rejects(GuestAgentClient.connect(qgaPath, { syncTimeoutMs: 700 }), GuestAgentUnavailableError);
      assert.ok(Date.now() - t0 >= 650);
    });
  });
});
