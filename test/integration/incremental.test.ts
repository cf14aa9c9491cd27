// Incremental backups on real QEMU (bare VMs: real QMP, real block graph, real dirty bitmaps,
// real qemu-nbd and qemu-img): a full, then incrementals that hold only what changed, each point
// flattened and compared with what the disk held at its moment; after every backup QEMU shows
// nothing of ours in the VM but the tracking bitmap; a failed backup never loses a change.
import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { BackupHost, DEFAULT_TIMEOUTS } from '../../src/pipeline/backup-host';
import { Journal } from '../../src/journal/journal';
import { QemuProvider } from '../../src/providers/qemu/qemu-provider';
import { QmpClient } from '../../src/providers/qemu/protocol';
import { runProgram } from '../../src/util/run';
import { spawn } from 'node:child_process';
import { makeImage, startBareHost, startBareVm, waitForSocket, type BareHost, withQmp, bareVmArgs } from '../support/bare-vms';
import type { CopiedSet } from '../../src/contract/types';
import type { ChainPolicy } from '../../src/chain';

describe('incremental backups (bare QEMU VMs, copy-before-write view, dirty bitmaps)', function () {
  this.timeout(240_000);
  let bare: BareHost;
  let host: BackupHost;
  let provider: QemuProvider;

  const qmp = <T>(vm: string, fn: (c: QmpClient) => Promise<T>): Promise<T> => withQmp(bare, vm, fn);
  /** a guest write, through the VM's own device path (it goes through our filter while a view is in place) */
  const write = (vm: string, pattern: number, offset: string, len: string) =>
    qmp(vm, (c) => c.execute('human-monitor-command', { 'command-line': `qemu-io drive-virtio0 "write -P ${pattern} ${offset} ${len}"` }));

  async function backup(
    policy?: ChainPolicy,
    between?: () => Promise<void>,
    fallback: 'checkpoint' | 'saved-state' = 'checkpoint',
  ): Promise<CopiedSet> {
    const e = await host.enumerate();
    const c = host.classify(e, fallback);
    const p = await host.prepare(c);
    const s = await host.snapshot(p);
    await between?.();
    const ps = await host.postSnapshot(s);
    return host.copy(ps, { concurrency: 2, compress: false, verify: true, ...(policy ? { chain: policy } : {}) });
  }

  /** QEMU's own account: the device on its image, no node of ours, only our bitmaps on the disk. */
  async function assertNothingOursLeft(vm: string): Promise<string[]> {
    return qmp(vm, async (c) => {
      const nodes = await c.execute<{ 'node-name': string; 'dirty-bitmaps'?: { name?: string }[] }[]>('query-named-block-nodes', {
        flat: true,
      });
      assert.deepEqual(
        nodes.map((n) => n['node-name']).filter((n) => n.startsWith('vmb-')),
        [],
        'no node of ours in the graph',
      );
      const roots = await c.execute<{ inserted?: { drv: string } }[]>('query-block');
      assert.ok(
        roots.every((r) => r.inserted?.drv === 'qcow2'),
        'every device on its own qcow2 image',
      );
      return nodes.flatMap((n) => (n['dirty-bitmaps'] ?? []).map((b) => b.name ?? '')).filter((n) => n.startsWith('vmbackup-'));
    });
  }

  async function flatten(file: string, out: string): Promise<void> {
    await runProgram('qemu-img', ['convert', '-O', 'raw', file, out]);
  }

  before(async () => {
    bare = await startBareHost(['inc1']);
    provider = new QemuProvider({ socketDir: bare.socketDir });
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

  it('a full, then incrementals holding only the changed clusters; every point flattens to the disk at its moment', async () => {
    await write('inc1', 0x11, '0', '4M');
    const full = await backup();
    const f0 = full.vms[0];
    const dir0 = path.join(bare.repository, f0.copy.path);
    const m0 = JSON.parse(await fs.readFile(path.join(dir0, 'manifest.json'), 'utf8'));
    const d0 = m0.files.find((f: any) => f.kind === 'disk');
    assert.equal(d0.chain.mode, 'full');
    assert.equal(d0.chain.reason, 'first-backup');
    assert.deepEqual(await assertNothingOursLeft('inc1'), [d0.chain.bitmap.name], 'only the new tracking record is left');

    // changes between backups, and one during the second backup's copy (after its moment)
    await write('inc1', 0x22, '1M', '64k');
    await write('inc1', 0x33, '3M', '128k');
    const inc1 = await backup(undefined, () => write('inc1', 0x44, '2M', '64k').then(() => undefined));
    const dir1 = path.join(bare.repository, inc1.vms[0].copy.path);
    const m1 = JSON.parse(await fs.readFile(path.join(dir1, 'manifest.json'), 'utf8'));
    const d1 = m1.files.find((f: any) => f.kind === 'disk');
    assert.equal(d1.chain.mode, 'incremental', JSON.stringify(d1.chain));
    assert.equal(d1.chain.parent, full.backupId);
    assert.equal(d1.chain.depth, 1);
    assert.equal(d1.chain.backing, `../${full.backupId}/${d0.name}`);
    // the three clusters written before the moment, and (the parent's record records until this
    // backup is published: a superset, never less) the one written during the copy
    assert.ok(d1.chain.bytesChanged >= 3 * 65536 && d1.chain.bytesChanged <= 4 * 65536, `changed ${d1.chain.bytesChanged}`);
    const info = JSON.parse((await runProgram('qemu-img', ['info', '--output=json', '--backing-chain', path.join(dir1, d1.name)])).stdout);
    assert.equal(info.length, 2, 'a chain of two images');
    assert.equal(info[0]['backing-filename'], d1.chain.backing, 'the backing file is the relative path in the manifest');
    assert.ok(d1.bytes < 1024 * 1024, `the incremental holds only the changed clusters (${d1.bytes} bytes)`);
    // pulled in-process: the stream writer puts the L1 table right after the header (an image made
    // empty and filled by a qemu-nbd has it in cluster 3), and the file passes qemu-img check
    const head = Buffer.alloc(48);
    const fh = await fs.open(path.join(dir1, d1.name), 'r');
    await fh.read(head, 0, 48, 0).finally(() => fh.close());
    assert.equal(head.readBigUInt64BE(40), 65536n, 'the incremental was written by the in-process pull');
    await runProgram('qemu-img', ['check', '-q', path.join(dir1, d1.name)]);

    // point 2 (the incremental) holds the writes before its moment, not the one after it
    const flat1 = path.join(bare.dir, 'flat1.raw');
    await flatten(path.join(dir1, d1.name), flat1);
    const check = async (file: string, pattern: number, offset: string, len: string) =>
      (await runProgram('qemu-io', ['-r', '-f', 'raw', '-c', `read -P ${pattern} ${offset} ${len}`, file])).stdout.includes('read ');
    assert.ok(await check(flat1, 0x22, '1M', '64k'));
    assert.ok(await check(flat1, 0x33, '3M', '128k'));
    assert.ok(await check(flat1, 0x11, '2M', '64k'), 'the write after the moment is not in this point');
    // point 1 (the full) still reads as it was
    const flat0 = path.join(bare.dir, 'flat0.raw');
    await flatten(path.join(dir0, d0.name), flat0);
    assert.ok(await check(flat0, 0x11, '1M', '64k'));

    // the write that landed during the copy is in the next incremental
    const inc2 = await backup();
    const dir2 = path.join(bare.repository, inc2.vms[0].copy.path);
    const m2 = JSON.parse(await fs.readFile(path.join(dir2, 'manifest.json'), 'utf8'));
    const d2 = m2.files.find((f: any) => f.kind === 'disk');
    assert.equal(d2.chain.depth, 2);
    const flat2 = path.join(bare.dir, 'flat2.raw');
    await flatten(path.join(dir2, d2.name), flat2);
    assert.ok(await check(flat2, 0x44, '2M', '64k'));
    assert.ok(await check(flat2, 0x22, '1M', '64k'));
    assert.deepEqual(await assertNothingOursLeft('inc1'), [d2.chain.bitmap.name]);
  });

  it('a backup that fails after its moment gives its changes back: the next one still has them', async () => {
    await write('inc1', 0x55, '5M', '64k');
    const e = await host.enumerate();
    const p = await host.prepare(host.classify(e, 'checkpoint'));
    const s = await host.snapshot(p);
    const ps = await host.postSnapshot(s);
    // the copy cannot write (the host's folder in the repository replaced by a file): the set fails
    const hostDir = path.join(bare.repository, 'bare');
    await fs.rename(hostDir, `${hostDir}.aside`);
    await fs.writeFile(hostDir, 'not a directory');
    await assert.rejects(host.copy(ps, { concurrency: 1, compress: false }));
    await fs.rm(hostDir);
    await fs.rename(`${hostDir}.aside`, hostDir);
    const left = await assertNothingOursLeft('inc1');
    assert.equal(left.length, 1, `one tracking record left (${left.join(', ')})`);
    assert.ok(!left[0].endsWith(ps.backupId), "the failed backup's own record is gone, its parent's stays");
    // and the next backup still holds the change made before the failed one
    const next = await backup();
    const m = JSON.parse(await fs.readFile(path.join(bare.repository, next.vms[0].copy.path, 'manifest.json'), 'utf8'));
    const d = m.files.find((f: any) => f.kind === 'disk');
    assert.equal(d.chain.mode, 'incremental');
    const flat = path.join(bare.dir, 'flat3.raw');
    await flatten(path.join(bare.repository, next.vms[0].copy.path, d.name), flat);
    assert.ok((await runProgram('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x55 5M 64k', flat])).stdout.includes('read '));
  });

  it('policy full and fullEvery give a full with the named reason', async () => {
    const full = await backup({ mode: 'full' });
    const m = JSON.parse(await fs.readFile(path.join(bare.repository, full.vms[0].copy.path, 'manifest.json'), 'utf8'));
    const d = m.files.find((f: any) => f.kind === 'disk');
    assert.equal(d.chain.mode, 'full');
    assert.ok(['policy-full', 'first-backup', 'parent-missing', 'new-disk'].includes(d.chain.reason), d.chain.reason);
    const next = await backup({ mode: 'incremental', fullEvery: { kind: 'count', count: 1 } });
    const m2 = JSON.parse(await fs.readFile(path.join(bare.repository, next.vms[0].copy.path, 'manifest.json'), 'utf8'));
    const d2 = m2.files.find((f: any) => f.kind === 'disk');
    assert.equal(d2.chain.mode, 'full');
    assert.equal(d2.chain.reason, 'policy-full-every');
    // prepare drafted an incremental (it does not know the copy node's policy); the copy's output
    // says the plan it followed, as the manifest does
    assert.equal(next.vms[0].prepare.chainDraft?.[0].mode, 'incremental');
    assert.deepEqual(
      next.vms[0].copy.chain?.map((c) => [c.disk, c.mode, c.reason]),
      [[d2.disk, 'full', 'policy-full-every']],
    );
  });

  const diskOf = async (set: CopiedSet, vm: string) => {
    const v = set.vms.find((x) => x.id === vm)!;
    const m = JSON.parse(await fs.readFile(path.join(bare.repository, v.copy.path, 'manifest.json'), 'utf8'));
    return { dir: path.join(bare.repository, v.copy.path), disk: m.files.find((f: any) => f.kind === 'disk'), manifest: m };
  };
  const only = async (vm: string) => {
    // one VM at a time: the others are not started in these cases
    for (const id of [...bare.vms.keys()])
      if (id !== vm) {
        bare.vms.get(id)!.kill('SIGKILL');
        bare.vms.delete(id);
        await fs.rm(path.join(bare.socketDir, `${id}.qmp`), { force: true });
      }
  };

  it('tracking outlives a clean QEMU restart; after QEMU is killed the next backup is a full with the reason', async () => {
    const before = await diskOf(await backup(), 'inc1');
    assert.equal(before.disk.chain.mode, 'incremental');
    const restart = async (how: 'quit' | 'kill') => {
      const child = bare.vms.get('inc1')!;
      const exited = new Promise((r) => child.once('exit', r));
      if (how === 'quit') await qmp('inc1', (c) => c.execute('quit').catch(() => undefined));
      else child.kill('SIGKILL');
      await exited;
      await startBareVm(bare, 'inc1');
    };
    // a clean stop writes the persistent record into the image: the chain goes on
    await restart('quit');
    await write('inc1', 0x77, '7M', '64k');
    const kept = await diskOf(await backup(), 'inc1');
    assert.equal(kept.disk.chain.mode, 'incremental', kept.disk.chain.detail);
    // the record now loaded from the image is marked in use there: a kill leaves it inconsistent
    await restart('quit');
    // QEMU has the record loaded (and marked in use in the image) once it lists it; a guest write lands
    assert.equal((await assertNothingOursLeft('inc1')).length, 1);
    await write('inc1', 0x78, '7M', '64k');
    await restart('kill');
    const after = await diskOf(await backup(), 'inc1');
    assert.equal(after.disk.chain.mode, 'full');
    assert.equal(after.disk.chain.reason, 'bitmap-inconsistent', after.disk.chain.detail);
    assert.deepEqual(await assertNothingOursLeft('inc1'), [after.disk.chain.bitmap.name], 'the stale record is gone, the new one stays');
    const next = await diskOf(await backup(), 'inc1');
    assert.equal(next.disk.chain.mode, 'incremental');
  });

  it('saved state: the VM is stopped, saved, its view made while stopped, resumed; tracking survives the migration', async () => {
    const first = await backup(undefined, undefined, 'saved-state');
    const v = first.vms.find((x) => x.id === 'inc1')!;
    assert.equal(v.method, 'saved-state');
    assert.equal(v.postSnapshot.returnedTo, 'running');
    await write('inc1', 0x66, '6M', '64k');
    const second = await diskOf(await backup(undefined, undefined, 'saved-state'), 'inc1');
    assert.equal(second.disk.chain.mode, 'incremental', second.disk.chain.detail);
    assert.ok(second.manifest.files.some((f: any) => f.kind === 'saved-state'));
    const flat = path.join(bare.dir, 'flat-saved.raw');
    await flatten(path.join(second.dir, second.disk.name), flat);
    assert.ok((await runProgram('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x66 6M 64k', flat])).stdout.includes('read '));
    assert.equal(await qmp('inc1', async (c) => (await c.execute<{ status: string }>('query-status')).status), 'running');
    await assertNothingOursLeft('inc1');
  });

  it("a full is pulled from QEMU's NBD export, its server gone with the view; pushed when QEMU serves NBD for someone else, whose server is left alone", async () => {
    const viewOf = async () => {
      const ps = await host.postSnapshot(await host.snapshot(await host.prepare(host.classify(await host.enumerate(), 'checkpoint'))));
      const vm = ps.vms.find((v) => v.id === 'inc1')!;
      return { ps, view: vm.snapshot.view, disk: vm.snapshot.view.disks[0].disk };
    };
    const startServer = (sock: string) =>
      qmp('inc1', (c) => c.execute('nbd-server-start', { addr: { type: 'unix', data: { path: sock } } }));
    // someone else's NBD server (Proxmox starts one for a migration with local disks)
    const userSock = path.join(bare.dir, 'users-nbd.sock');
    await startServer(userSock);
    const a = await viewOf();
    const pushedFile = path.join(bare.dir, 'pushed.qcow2');
    try {
      const pushed = await provider.exportDisk(a.view, a.disk, pushedFile, undefined, { copy: { mode: 'full' } });
      assert.equal(pushed.via, 'push');
      assert.equal(pushed.pushReason, 'nbd-server-busy');
      await assert.rejects(provider.verifyDisk(a.view, a.disk, pushed.path), /verification not possible/);
    } finally {
      await host.copy(a.ps, { concurrency: 1, compress: false, verify: false });
    }
    // the user's server still runs: a second start is refused by QEMU
    await assert.rejects(startServer(`${userSock}2`), /already running/i);
    await qmp('inc1', (c) => c.execute('nbd-server-stop'));

    const b = await viewOf();
    try {
      const pulled = await provider.exportDisk(b.view, b.disk, path.join(bare.dir, 'pulled.qcow2'), undefined, { copy: { mode: 'full' } });
      assert.equal(pulled.via, 'pull');
      await provider.verifyDisk(b.view, b.disk, pulled.path);
      // nothing was written in between: both copies hold the same disk
      await runProgram('qemu-img', ['compare', '-q', pulled.path, pushedFile]);
    } finally {
      await host.copy(b.ps, { concurrency: 1, compress: false, verify: true });
    }
    // released with the view: no export, no server of ours
    assert.deepEqual(await qmp('inc1', (c) => c.execute('query-block-exports')), []);
    await startServer(userSock);
    await qmp('inc1', (c) => c.execute('nbd-server-stop'));
    assert.deepEqual((await assertNothingOursLeft('inc1')).length, 1);
  });

  it('a raw disk: transient tracking, incremental while its QEMU lives, a full with the reason after a restart', async () => {
    const raw = path.join(bare.imageDir, 'raw1-disk0.qcow2'); // the name bare-vms uses; the format is raw
    await makeImage(raw, '16M', 'raw');
    const child = await startRaw('raw1', raw);
    try {
      await only('raw1');
      const a = await diskOf(await backup(), 'raw1');
      assert.equal(a.disk.chain.mode, 'full');
      assert.match(a.disk.chain.detail, /transient/);
      assert.equal(a.disk.chain.bitmap.persistent, false);
      const b = await diskOf(await backup(), 'raw1');
      assert.equal(b.disk.chain.mode, 'incremental');
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
      const again = await startRaw('raw1', raw);
      const c = await diskOf(await backup(), 'raw1');
      assert.equal(c.disk.chain.mode, 'full');
      assert.equal(c.disk.chain.reason, 'transient-bitmap-lost');
      again.kill('SIGTERM');
    } finally {
      child.kill('SIGTERM');
    }
  });

  async function startRaw(id: string, file: string) {
    const sock = path.join(bare.socketDir, `${id}.qmp`);
    await fs.rm(sock, { force: true });
    const child = spawn('qemu-system-x86_64', bareVmArgs(id, sock, [{ file, format: 'raw' }]), { stdio: 'ignore' });
    await waitForSocket(sock);
    return child;
  }
});
