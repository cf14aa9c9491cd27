// Stopped VMs on a plain QEMU host (bare VMs: real QEMU, real QMP, real qemu-img and qemu-nbd,
// real image locks): a VM written to and shut down cleanly (QMP quit) is known only by its
// inventory file <id>.vm.json; beside it runs another VM. Enumerate lists both, the stopped one
// off; one backup through BackupHost copies both; the stopped one's copy equals its image; a QEMU
// started on that image while it is being backed up is refused by the image lock; afterwards no
// QEMU runs for it and one starts on it fine. A bad inventory file is listed unreachable, with
// its file and field, and a host where no defined VM can be reached is never "ok".
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { BackupHost, DEFAULT_TIMEOUTS } from '../../src/pipeline/backup-host';
import { Journal } from '../../src/journal/journal';
import { QemuProvider } from '../../src/providers/qemu/qemu-provider';
import { QmpClient } from '../../src/providers/qemu/protocol';
import { holdersOf, LOCK_DIR } from '../../src/providers/offline-image';
import { summarize } from '../../src/summary';
import { runProgram } from '../../src/util/run';
import { bareVmArgs, startBareHost, waitForSocket, type BareHost, withQmp } from '../support/bare-vms';

const LAB = process.env.VMBACKUP_LAB_DIR ?? '/tmp/vm-backup-lab';

/** pids whose command line names `file` (a QEMU on that image) */
async function processesNaming(file: string): Promise<number[]> {
  const out: number[] = [];
  for (const e of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    const argv = await fs.readFile(`/proc/${e}/cmdline`, 'utf8').catch(() => '');
    if (argv.split('\0').some((a) => a.includes(file))) out.push(Number(e));
  }
  return out;
}

/** Start a QEMU on the image as a user would; resolves with its exit code and stderr (it is quit at once when it starts). */
async function tryStart(image: string, qmpSock: string): Promise<{ started: boolean; stderr: string }> {
  // -S: the guest never runs; what counts is whether QEMU gets the image's write lock
  const child = spawn('qemu-system-x86_64', bareVmArgs('try', qmpSock, [{ file: image }], ['-S']), { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const up = waitForSocket(qmpSock, 20_000).then(
    () => true,
    () => false,
  );
  const first = await Promise.race([exited.then(() => 'exit' as const), up.then((ok) => (ok ? ('up' as const) : ('exit' as const)))]);
  if (first === 'exit') {
    await exited;
    return { started: false, stderr };
  }
  // QEMU listens on its QMP socket before it opens its drives: a QEMU refused the image lock may
  // have made the socket and exited meanwhile (the connection is then reset): that is "not started"
  const c = await QmpClient.connect(qmpSock).catch(async (err: Error) => {
    const code = await Promise.race([exited, new Promise<'running'>((r) => setTimeout(() => r('running'), 10_000))]);
    if (code === 'running') throw err;
    return undefined;
  });
  if (c === undefined) return { started: false, stderr };
  const status = await c.execute<{ status: string }>('query-status');
  await c.execute('quit').catch(() => undefined);
  await c.close();
  await exited;
  return { started: status.status === 'prelaunch' || status.status === 'paused' || status.status === 'running', stderr };
}

describe('stopped VMs on plain QEMU: inventory, offline backup under the image lock', function () {
  this.timeout(300_000);
  let bare: BareHost;
  let host: BackupHost;
  let provider: QemuProvider;
  let offImage: string;

  const qmp = <T>(vm: string, fn: (c: QmpClient) => Promise<T>): Promise<T> => withQmp(bare, vm, fn);

  before(async () => {
    await fs.mkdir(LAB, { recursive: true });
    bare = await startBareHost(['run1', 'off1'], { dir: await fs.mkdtemp(path.join(LAB, 'stopped-')) });
    offImage = path.join(bare.imageDir, 'off1-disk0.qcow2');
    // the guest writes, then QEMU is quit cleanly (the image is closed and consistent)
    await qmp('off1', (c) => c.execute('human-monitor-command', { 'command-line': 'qemu-io drive-virtio0 "write -P 0x5a 1M 3M"' }));
    const off = bare.vms.get('off1')!;
    const gone = new Promise((r) => off.once('exit', r));
    await qmp('off1', (c) => c.execute('quit').catch(() => undefined));
    await gone;
    await fs.writeFile(
      path.join(bare.socketDir, 'off1.vm.json'),
      JSON.stringify({ name: 'office', disks: [{ id: 'virtio0', file: offImage, format: 'qcow2' }] }),
    );
    provider = new QemuProvider({ socketDir: bare.socketDir, qm: '' });
    host = new BackupHost(provider, new Journal(path.join(bare.dir, 'journal.jsonl')), {
      hostName: 'bare',
      repositoryRoot: bare.repository,
      timeouts: { ...DEFAULT_TIMEOUTS, idleMs: 60_000 },
    });
  });
  after(async () => {
    await provider?.close();
    await bare?.stop();
  });

  it('enumerate lists the running VM by QMP and the stopped one off, with its disks from the inventory', async () => {
    const e = await host.enumerate();
    const byId = new Map(e.vms.map((v) => [v.id, v]));
    assert.deepEqual([...byId.keys()].sort(), ['off1', 'run1']);
    assert.notEqual(byId.get('run1')!.state, 'off');
    const off = byId.get('off1')!;
    assert.equal(off.state, 'off');
    assert.equal(off.name, 'office');
    assert.equal(off.unreachable, undefined);
    assert.deepEqual(
      off.disks.map((d) => [d.id, d.file, d.format, d.included]),
      [['virtio0', offImage, 'qcow2', true]],
    );
    assert.equal(off.disks[0].virtualSize, 16 * 1024 * 1024);
    const c = host.classify(e, 'checkpoint');
    const offC = c.vms.find((v) => v.id === 'off1')!;
    assert.equal(offC.method, 'offline');
    assert.equal(offC.consistency, 'offline');
    assert.match(offC.reasons.find((r) => r.rule === 'vm-running')!.detail, /off, not running/);
    // nothing was started by enumerate or classify
    assert.deepEqual(await processesNaming(offImage), []);
    await host.closeAll('test: set not used');
  });

  it('backs up both; the stopped image is locked against a QEMU start meanwhile; equal copy; afterwards still off and starts fine', async () => {
    const e = await host.enumerate();
    const c = host.classify(e, 'checkpoint');
    const p = await host.prepare(c);
    // prepare took the lock: a QEMU started on the image now is refused, and nothing else changed
    const during = await tryStart(offImage, path.join(bare.dir, 'try1.qmp'));
    assert.equal(during.started, false, 'a QEMU must not start on an image being backed up offline');
    assert.match(during.stderr, /Failed to get "write" lock/);
    const s = await host.snapshot(p);
    const ps = await host.postSnapshot(s);
    assert.equal(ps.vms.find((v) => v.id === 'off1')!.postSnapshot.returnedTo, 'off');
    const copying = host.copy(ps, { concurrency: 2, compress: false, verify: true });
    const whileCopying = await tryStart(offImage, path.join(bare.dir, 'try2.qmp'));
    const copied = await copying;
    assert.equal(whileCopying.started, false, 'refused during the copy too');
    assert.match(whileCopying.stderr, /lock/);
    assert.deepEqual(copied.vms.map((v) => v.id).sort(), ['off1', 'run1']);
    assert.equal(summarize(copied).ok, true);

    const offVm = copied.vms.find((v) => v.id === 'off1')!;
    const dir = path.join(bare.repository, offVm.copy.path);
    const manifest = JSON.parse(await fs.readFile(path.join(dir, 'manifest.json'), 'utf8'));
    assert.equal(manifest.method, 'offline');
    assert.equal(manifest.consistency, 'offline');
    const disk = manifest.files.find((f: any) => f.kind === 'disk');
    assert.equal(disk.chain.mode, 'full');
    assert.equal(disk.chain.reason, 'offline');
    assert.equal(disk.chain.bitmap, undefined, 'no change tracking claimed for an offline copy');
    const def = JSON.parse(await fs.readFile(path.join(dir, 'definition.json'), 'utf8'));
    assert.equal(def.inventory.source, path.join(bare.socketDir, 'off1.vm.json'));
    // the copy holds what the image holds (qemu-img compare exits 0 only when identical)
    await runProgram('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', offImage, path.join(dir, disk.name)]);
    const { stdout } = await runProgram('qemu-io', ['-r', '-f', 'qcow2', '-c', 'read -P 0x5a 1M 3M', path.join(dir, 'disk-virtio0.qcow2')]);
    assert.doesNotMatch(stdout, /Pattern verification failed/);

    // still shut off: no process names its image, no lock holder of ours is left
    assert.deepEqual(await processesNaming(offImage), []);
    for (const f of await fs.readdir(LOCK_DIR).catch(() => [] as string[]))
      assert.deepEqual(await holdersOf(path.join(LOCK_DIR, f), offImage), []);
    assert.equal(await provider.runState('off1'), 'off');
    // and it starts fine on its image now
    const after = await tryStart(offImage, path.join(bare.dir, 'try3.qmp'));
    assert.equal(after.started, true, `QEMU starts on the image after the backup: ${after.stderr}`);
  });

  it('a lock holder left by a Node-RED that died is ended from the journalled plan alone (what recovery and the guardian call)', async () => {
    const e = await host.enumerate();
    const c = host.classify(e, 'checkpoint');
    const off = c.vms.find((v) => v.id === 'off1')!;
    const view = provider.planView(off, `20261201T130000Z-${Math.random().toString(36).slice(2, 8).padEnd(6, '0')}`);
    const sockets = (view.ref.disks as { lock: string }[]).map((d) => d.lock);
    // the holder a Node-RED that died left behind: not a child this process has a handle on
    await fs.mkdir(LOCK_DIR, { recursive: true, mode: 0o700 });
    const orphan = spawn('qemu-nbd', ['--read-only', '--persistent', '--format=qcow2', `--socket=${sockets[0]}`, offImage], {
      stdio: 'ignore',
      detached: true,
    });
    orphan.unref();
    const orphanGone = new Promise((r) => orphan.once('exit', r));
    try {
      await waitForSocket(sockets[0]);
      assert.deepEqual(await holdersOf(sockets[0], offImage), [orphan.pid], 'the lock holder runs');
      assert.equal((await tryStart(offImage, path.join(bare.dir, 'try4.qmp'))).started, false);
      // a provider that knows nothing of it (a restarted Node-RED) is given the plan as journalled
      const fresh = new QemuProvider({ socketDir: bare.socketDir, qm: '' });
      await fresh.releaseView('off1', JSON.parse(JSON.stringify(view)));
      await fresh.close();
      await orphanGone;
      assert.deepEqual(await holdersOf(sockets[0], offImage), []);
      assert.equal((await tryStart(offImage, path.join(bare.dir, 'try5.qmp'))).started, true);
      await provider.releaseView('off1', view); // safe to repeat
    } finally {
      // whatever failed above, the test leaves no holder of its own behind
      if (orphan.exitCode === null && orphan.signalCode === null) orphan.kill('SIGKILL');
    }
    await host.closeAll('test: set not used');
  });

  it('a bad inventory file is listed unreachable with its file and field, not dropped; none reachable is never ok', async () => {
    const badFile = path.join(bare.socketDir, 'bad1.vm.json');
    await fs.writeFile(badFile, JSON.stringify({ disks: [{ id: 'virtio0', file: offImage, format: 'vmdk' }] }));
    try {
      const e = await host.enumerate();
      const bad = e.vms.find((v) => v.id === 'bad1');
      assert.ok(bad, 'the VM of a bad inventory file is listed');
      assert.equal(bad.state, 'unreachable');
      assert.match(bad.unreachable!.reason, new RegExp(`${badFile.replace(/[.]/g, '\\.')}: /disks/0/format`));
      assert.throws(() => host.classify(e, 'checkpoint'), /cannot be reached/);
      const reported = host.classify(await host.enumerate(), 'checkpoint', 'report');
      assert.deepEqual(
        reported.skipped?.map((s) => s.vm),
        ['bad1'],
      );
      assert.equal(summarize(reported).ok, false);
      await host.closeAll('test: set not used');

      // a host whose only VM is the bad one: nothing reachable is a failure, not "0 VMs, ok"
      const lone = path.join(bare.dir, 'lone');
      await fs.mkdir(lone);
      await fs.copyFile(badFile, path.join(lone, 'bad1.vm.json'));
      const p2 = new QemuProvider({ socketDir: lone, qm: '' });
      const h2 = new BackupHost(p2, new Journal(path.join(bare.dir, 'journal2.jsonl')), {
        hostName: 'lone',
        repositoryRoot: bare.repository,
        timeouts: DEFAULT_TIMEOUTS,
      });
      const e2 = await h2.enumerate();
      assert.equal(e2.vms.length, 1);
      assert.throws(() => h2.classify(e2, 'checkpoint', 'report'), /none of the 1 VM\(s\) defined/);
      await h2.closeAll('test');
      await p2.close();
    } finally {
      await fs.rm(badFile, { force: true });
    }
  });
});
