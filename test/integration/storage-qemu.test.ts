// The disks real hosts have, on real QEMU (bare VMs: real QMP, real block graph, real bitmaps,
// real qemu-nbd, qemu-img, nbdkit and tgtd): a disk on a loop device (the host_device driver of
// LVM, LVM-thin and ZFS volumes; this kernel has no device-mapper, so LVM itself cannot run here),
// a disk served by qemu-nbd over NBD, a disk on an iSCSI target (Debian's userspace tgtd, QEMU's
// libiscsi driver), a linked clone on its template, a VM running on the user's own external
// snapshot, compressed copies. Each is backed up full, then incremental, with Verify on; each
// point is flattened (qemu-img convert of the backup's qcow2 chain) and compared byte for byte
// with what the disk held at its moment (a reference file that got the same writes up to then);
// a guest write after the moment is in the next point, not this one. The template and the user's
// snapshot base are never written. A client polling like pvestatd is answered throughout a slow copy.
import { strict as assert } from 'node:assert';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { BackupHost, DEFAULT_TIMEOUTS } from '../../src/pipeline/backup-host';
import { Journal } from '../../src/journal/journal';
import { QemuProvider } from '../../src/providers/qemu/qemu-provider';
import { QmpClient } from '../../src/providers/qemu/protocol';
import { summarize } from '../../src/summary';
import { runProgram } from '../../src/util/run';
import type { CopiedSet } from '../../src/contract/types';
import { bareVmArgs, startBareHost, waitForSocket, type BareHost, withQmp } from '../support/bare-vms';
import { assertGraphClean } from '../support/graph';
import { pvestatd } from '../support/pvestatd';

const SIZE = 32 << 20;
const MiB = 1 << 20;
/** tgtd: this suite's portal and control port (the libvirt suite uses 3261) */
const ISCSI_PORT = 3260;
const IQN = 'iqn.2026-12.invalid.vmbackup:storage-qemu';

const sha = async (file: string) =>
  createHash('sha256')
    .update(await fs.readFile(file))
    .digest('hex');

interface TestVm {
  id: string;
  /** what QEMU opens */
  drive: { file: string; format: string };
  /** gets every write the guest makes, in order: the disk's content at any moment */
  reference: string;
  child?: ChildProcess;
}

describe('the disks real hosts have: block devices, NBD, iSCSI, linked clones, external snapshots, compression', function () {
  this.timeout(600_000);
  let bare: BareHost;
  const cleanups: (() => Promise<unknown>)[] = [];
  const vms = new Map<string, TestVm>();

  const sock = (id: string) => path.join(bare.socketDir, `${id}.qmp`);
  const qemuIo = (file: string, format: string, cmd: string) => runProgram('qemu-io', ['-f', format, '-c', cmd, file]);

  /** A guest write: through the VM's own device path (our filter sees it while a view is in place), and into the reference. */
  async function write(vm: TestVm, pattern: number, offset: number, len: number): Promise<void> {
    const said = await withQmp(bare, vm.id, (c) =>
      c.execute<string>('human-monitor-command', { 'command-line': `qemu-io drive-virtio0 "write -P ${pattern} ${offset} ${len}"` }),
    );
    // HMP's qemu-io answers "" when the write was done, else why not
    assert.equal(said.trim(), '', `${vm.id}: guest write at ${offset}`);
    await qemuIo(vm.reference, 'raw', `write -P ${pattern} ${offset} ${len}`);
  }

  async function startVm(vm: TestVm): Promise<void> {
    await fs.rm(sock(vm.id), { force: true });
    vm.child = spawn('qemu-system-x86_64', bareVmArgs(vm.id, sock(vm.id), [vm.drive]), { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    vm.child.stderr!.setEncoding('utf8').on('data', (d) => (stderr += d));
    bare.vms.set(vm.id, vm.child);
    await waitForSocket(sock(vm.id)).catch((err: Error) => {
      throw new Error(`${vm.id}: QEMU did not start: ${stderr || err.message}`);
    });
  }

  async function stopVm(vm: TestVm): Promise<void> {
    const child = vm.child!;
    await withQmp(bare, vm.id, (c) => c.execute('quit')).catch(() => undefined);
    if (child.exitCode === null) await new Promise((r) => child.once('exit', r));
  }

  /** A VM whose disk QEMU opens as `drive`, initialised (as the reference) with a pattern in its first 4 MiB. */
  async function addVm(id: string, drive: TestVm['drive'], init: (reference: string) => Promise<unknown>): Promise<TestVm> {
    const vm: TestVm = { id, drive, reference: path.join(bare.dir, `${id}.reference.raw`) };
    await runProgram('truncate', ['-s', String(SIZE), vm.reference]);
    await init(vm.reference);
    await startVm(vm);
    vms.set(id, vm);
    return vm;
  }

  function newHost(provider: QemuProvider) {
    return new BackupHost(provider, new Journal(path.join(bare.dir, `journal-${Math.random().toString(36).slice(2)}.jsonl`)), {
      hostName: 'bare',
      repositoryRoot: bare.repository,
      timeouts: { ...DEFAULT_TIMEOUTS, idleMs: 120_000 },
    });
  }

  /**
   * One backup of every VM; `between` runs after the moment, before the copy (its writes are not
   * in this point). Returns the set and, per VM, the reference as it was at the moment.
   */
  async function backup(
    host: BackupHost,
    opts: { compress?: boolean; between?: () => Promise<void> } = {},
  ): Promise<{ set: CopiedSet; moment: Map<string, string> }> {
    const e = await host.enumerate();
    const c = host.classify(e, 'checkpoint');
    const p = await host.prepare(c);
    const s = await host.snapshot(p);
    const moment = new Map<string, string>();
    for (const vm of vms.values()) {
      const copy = `${vm.reference}.${s.backupId}`;
      await fs.copyFile(vm.reference, copy);
      moment.set(vm.id, copy);
    }
    await opts.between?.();
    const ps = await host.postSnapshot(s);
    const set = await host.copy(ps, { concurrency: 2, compress: opts.compress ?? false, verify: true });
    return { set, moment };
  }

  /** The backup's disk of `vm`: manifest chain entry, and its flattened content equal to the moment's. */
  async function assertPoint(set: CopiedSet, vmId: string, expected: string) {
    const vm = set.vms.find((v) => v.id === vmId)!;
    const dir = path.join(bare.repository, vm.copy.path);
    const manifest = JSON.parse(await fs.readFile(path.join(dir, 'manifest.json'), 'utf8'));
    assert.deepEqual(manifest.excludedDisks, [], `${vmId}: no disk left out`);
    const file = manifest.files.find((f: { kind: string }) => f.kind === 'disk');
    assert.ok(file, `${vmId}: its disk is in the backup`);
    const flat = path.join(bare.dir, `flat-${vmId}-${set.backupId}.raw`);
    await runProgram('qemu-img', ['convert', '-O', 'raw', path.join(dir, file.name), flat]);
    assert.equal(await sha(flat), await sha(expected), `${vmId}: point ${set.backupId} flattens to what the disk held at its moment`);
    await fs.rm(flat);
    return { file: path.join(dir, file.name), chain: file.chain as { mode: string; reason: string; depth: number } };
  }

  before(async function () {
    bare = await startBareHost([]);
  });

  after(async () => {
    for (const vm of vms.values()) if (vm.child && vm.child.exitCode === null) await stopVm(vm).catch(() => undefined);
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    await bare?.stop();
    await fs.rm('/var/tmp/vm-backup-fleece', { recursive: true, force: true });
  });

  it('sets up the disks: a loop device, a qemu-nbd export, an iSCSI LUN (tgtd), a linked clone, an external snapshot', async () => {
    // loop device: raw on host_device, as /dev/pve/vm-100-disk-0 on LVM-thin or /dev/zvol/... on ZFS
    const loopFile = path.join(bare.imageDir, 'loop.img');
    await runProgram('truncate', ['-s', String(SIZE), loopFile]);
    const loop = (await runProgram('losetup', ['--find', '--show', loopFile])).stdout.trim();
    cleanups.push(() => runProgram('losetup', ['-d', loop]));
    await addVm('blk', { file: loop, format: 'raw' }, async (ref) => {
      await qemuIo(loop, 'raw', 'write -P 0x11 0 4M');
      await qemuIo(ref, 'raw', 'write -P 0x11 0 4M');
    });

    // NBD: qemu-nbd exports a qcow2 file's bytes; QEMU opens the export as qcow2 (qcow2 on network
    // storage). An export does not grow: the qcow2 is preallocated, with room behind it for its
    // bitmaps (QEMU writes them at close), as a qcow2 on a LUN or a volume has.
    const nbdImage = path.join(bare.imageDir, 'nbd.qcow2');
    await runProgram('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'preallocation=metadata', nbdImage, String(SIZE)]);
    await runProgram('truncate', ['-s', String(2 * SIZE), nbdImage]);
    await qemuIo(nbdImage, 'qcow2', 'write -P 0x22 0 4M');
    const nbdSock = path.join(bare.dir, 'nbd.sock');
    const nbd = spawn('qemu-nbd', ['--format=raw', '--persistent', '--shared=4', `--socket=${nbdSock}`, nbdImage], { stdio: 'ignore' });
    cleanups.push(async () => nbd.kill());
    await waitForSocket(nbdSock);
    await addVm('nbd', { file: `nbd+unix:///?socket=${nbdSock}`, format: 'qcow2' }, (ref) => qemuIo(ref, 'raw', 'write -P 0x22 0 4M'));

    // iSCSI: tgtd, a target whose LUN 1 is a raw file; QEMU's libiscsi driver (qemu-block-extra)
    const lun = path.join(bare.imageDir, 'lun.raw');
    await runProgram('truncate', ['-s', String(SIZE), lun]);
    await qemuIo(lun, 'raw', 'write -P 0x33 0 4M');
    const tgtd = spawn('tgtd', ['-f', '-C', String(ISCSI_PORT), '--iscsi', `portal=127.0.0.1:${ISCSI_PORT}`], { stdio: 'ignore' });
    cleanups.push(async () => {
      // tgtd ends only once its targets are gone and the system is deleted (it ignores SIGTERM while it serves)
      const adm = (...a: string[]) => runProgram('tgtadm', ['-C', String(ISCSI_PORT), ...a]).catch(() => undefined);
      await adm('--lld', 'iscsi', '--op', 'delete', '--mode', 'target', '--tid', '1', '--force');
      await adm('--op', 'delete', '--mode', 'system');
      await new Promise((r) => setTimeout(r, 200));
      if (tgtd.exitCode === null) tgtd.kill('SIGKILL');
    });
    const tgtadm = (...args: string[]) => runProgram('tgtadm', ['-C', String(ISCSI_PORT), '--lld', 'iscsi', ...args]);
    for (let i = 0; ; i++) {
      const ok = await tgtadm('--op', 'show', '--mode', 'target').then(
        () => true,
        () => false,
      );
      if (ok) break;
      if (i > 100) throw new Error('tgtd did not start');
      await new Promise((r) => setTimeout(r, 50));
    }
    await tgtadm('--op', 'new', '--mode', 'target', '--tid', '1', '-T', IQN);
    await tgtadm('--op', 'new', '--mode', 'logicalunit', '--tid', '1', '--lun', '1', '-b', lun);
    await tgtadm('--op', 'bind', '--mode', 'target', '--tid', '1', '-I', 'ALL');
    await addVm('isc', { file: `iscsi://127.0.0.1:${ISCSI_PORT}/${IQN}/1`, format: 'raw' }, (ref) =>
      qemuIo(ref, 'raw', 'write -P 0x33 0 4M'),
    );

    // a linked clone: a qcow2 whose backing file is the template (Proxmox's linked clones, virt-manager's)
    const template = path.join(bare.imageDir, 'template.qcow2');
    await runProgram('qemu-img', ['create', '-q', '-f', 'qcow2', template, String(SIZE)]);
    await qemuIo(template, 'qcow2', 'write -P 0x44 0 8M');
    const clone = path.join(bare.imageDir, 'clone.qcow2');
    await runProgram('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', template, '-F', 'qcow2', clone]);
    await qemuIo(clone, 'qcow2', 'write -P 0x45 1M 1M');
    await addVm('lnk', { file: clone, format: 'qcow2' }, async (ref) => {
      await qemuIo(ref, 'raw', 'write -P 0x44 0 8M');
      await qemuIo(ref, 'raw', 'write -P 0x45 1M 1M');
    });

    // the user's own external snapshot, taken while the VM runs: the VM goes on in the overlay
    const base = path.join(bare.imageDir, 'snapbase.qcow2');
    await runProgram('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(SIZE)]);
    await qemuIo(base, 'qcow2', 'write -P 0x55 0 4M');
    const snap = await addVm('snp', { file: base, format: 'qcow2' }, (ref) => qemuIo(ref, 'raw', 'write -P 0x55 0 4M'));
    const overlay = path.join(bare.imageDir, 'snapbase.user-snap1.qcow2');
    await withQmp(bare, 'snp', (c) =>
      c.execute('blockdev-snapshot-sync', { device: 'drive-virtio0', 'snapshot-file': overlay, format: 'qcow2' }),
    );
    await write(snap, 0x56, 2 * MiB, MiB);
    assert.ok(existsSync(overlay));
  });

  it('full, then incremental (compressed), each point flattening to the disk at its moment; the template and the snapshot base never written', async () => {
    const template = path.join(bare.imageDir, 'template.qcow2');
    const base = path.join(bare.imageDir, 'snapbase.qcow2');
    const untouched = { template: await sha(template), base: await sha(base) };
    const provider = new QemuProvider({ socketDir: bare.socketDir });
    const host = newHost(provider);
    try {
      const first = await backup(host, {
        // after the moment: not in the first point, in the second
        between: async () => {
          for (const [i, vm] of [...vms.values()].entries()) await write(vm, 0x60 + i, 6 * MiB, 512 * 1024);
        },
      });
      const s1 = summarize(first.set);
      assert.equal(s1.ok, true, s1.text);
      assert.deepEqual(s1.excluded, []);
      for (const vm of first.set.vms) {
        const d = vm.disks[0];
        assert.equal(d.included, true, `${vm.id}: ${d.driver} ${d.file} backed up`);
      }
      const drivers = Object.fromEntries(first.set.vms.map((v) => [v.id, v.disks[0].driver]));
      assert.deepEqual(drivers, { blk: 'host_device', isc: 'iscsi', lnk: 'file', nbd: 'nbd', snp: 'file' });
      const fleece = first.set.vms.find((v) => v.id === 'blk')!.snapshotLocation;
      assert.equal(fleece.path, '/var/tmp/vm-backup-fleece', 'a VM on a block device fleeces on a local directory, not beside /dev');
      for (const vm of vms.values()) {
        const p = await assertPoint(first.set, vm.id, first.moment.get(vm.id)!);
        assert.equal(p.chain.mode, 'full');
      }

      for (const vm of vms.values()) await write(vm, 0x70, 10 * MiB, MiB);
      const second = await backup(host, { compress: true });
      assert.equal(summarize(second.set).ok, true);
      const persistent: Record<string, boolean> = {};
      for (const vm of vms.values()) {
        const p = await assertPoint(second.set, vm.id, second.moment.get(vm.id)!);
        assert.equal(p.chain.mode, 'incremental', `${vm.id}: incremental (${p.chain.reason})`);
        const check = JSON.parse((await runProgram('qemu-img', ['check', '--output=json', p.file])).stdout);
        assert.ok(check['compressed-clusters'] > 0, `${vm.id}: the compressed incremental holds compressed clusters`);
        const info = JSON.parse((await runProgram('qemu-img', ['info', '--output=json', p.file])).stdout);
        assert.equal(info['format-specific'].data['compression-type'], 'zstd');
        persistent[vm.id] = second.set.vms.find((v) => v.id === vm.id)!.disks[0].tracking!.persistent;
      }
      // raw block devices and network drives: transient bitmaps; qcow2 on any storage (here over NBD): persistent
      assert.deepEqual(persistent, { blk: false, nbd: true, isc: false, lnk: true, snp: true });

      assert.deepEqual(
        { template: await sha(template), base: await sha(base) },
        untouched,
        'the template and the snapshot base are never written',
      );
      assert.ok(existsSync(path.join(bare.imageDir, 'snapbase.user-snap1.qcow2')), "the user's snapshot file stays");
      for (const vm of vms.values()) await assertGraphClean(sock(vm.id), vm.id);
    } finally {
      await provider.close();
    }
  });

  it('after QEMU restarts: a transient bitmap is gone (a full, reason transient-bitmap-lost), a persistent one carries on', async () => {
    const provider = new QemuProvider({ socketDir: bare.socketDir });
    const host = newHost(provider);
    try {
      for (const id of ['blk', 'nbd']) {
        const vm = vms.get(id)!;
        await stopVm(vm);
        await startVm(vm);
      }
      const { set, moment } = await backup(host);
      const modes: Record<string, string> = {};
      for (const id of ['blk', 'nbd']) modes[id] = `${(await assertPoint(set, id, moment.get(id)!)).chain.reason}`;
      assert.deepEqual(modes, { blk: 'transient-bitmap-lost', nbd: 'incremental' });
    } finally {
      await provider.close();
    }
  });

  it('a VM on a block device that is shut off, on plain QEMU: reported, not copied (no lock QEMU honours keeps it off the device)', async () => {
    const vm = vms.get('blk')!;
    await stopVm(vm);
    vms.delete('blk');
    await fs.rm(sock('blk'), { force: true });
    const loop = vm.drive.file;
    // measured: a process holding the device open (qemu-nbd, as for an image file's lock) does not keep a QEMU off it
    const holdSock = path.join(bare.dir, 'hold.sock');
    const holder = spawn('qemu-nbd', ['--read-only', '--persistent', '--format=raw', `--socket=${holdSock}`, loop], { stdio: 'ignore' });
    const tryQmp = path.join(bare.dir, 'try.qmp');
    let tried: ChildProcess | undefined;
    try {
      await waitForSocket(holdSock);
      tried = spawn('qemu-system-x86_64', bareVmArgs('try', tryQmp, [{ file: loop, format: 'raw' }], ['-S']), { stdio: 'ignore' });
      const exited = new Promise((r) => tried!.once('exit', () => r('exited')));
      const first = await Promise.race([waitForSocket(tryQmp, 10_000).then(() => 'up'), exited]);
      if (first === 'up') {
        // up, and its drive opened (a QEMU refused a lock exits right after making its socket)
        const status = await QmpClient.connect(tryQmp).then(
          async (c) => {
            const st = await c.execute<{ status: string }>('query-status');
            await c.close();
            return st.status;
          },
          () => 'gone',
        );
        assert.equal(status, 'prelaunch', 'QEMU 7.2 starts on a block device another process holds: no image lock there');
      } else assert.fail('QEMU refused the device: the image lock would hold after all');
    } finally {
      tried?.kill('SIGKILL');
      holder.kill();
    }

    await fs.writeFile(path.join(bare.socketDir, 'blk.vm.json'), JSON.stringify({ disks: [{ id: 'virtio0', file: loop, format: 'raw' }] }));
    const provider = new QemuProvider({ socketDir: bare.socketDir });
    const host = newHost(provider);
    try {
      const e = await host.enumerate();
      const off = e.vms.find((v) => v.id === 'blk')!;
      assert.equal(off.state, 'off');
      assert.deepEqual(
        [off.disks[0].driver, off.disks[0].included, off.disks[0].excludedBy],
        ['host_device', false, 'product'],
        'on Proxmox (qm lock backup) it is copied; here it is named, never silently skipped',
      );
      const c = host.classify({ ...e, vms: [off] }, 'checkpoint');
      const ps = await host.postSnapshot(await host.snapshot(await host.prepare(c)));
      const set = await host.copy(ps, { concurrency: 1, compress: false, verify: true });
      const s = summarize(set);
      assert.equal(s.ok, false);
      assert.match(s.text, /disks NOT backed up .*blk\/virtio0 \(by product: a block device of a VM that is shut off/);
    } finally {
      await provider.close();
      await fs.rm(path.join(bare.socketDir, 'blk.vm.json'), { force: true });
    }
  });

  it('a client polling like pvestatd (every 500 ms, 1 s limit) is answered throughout a whole backup with a slow copy', async () => {
    // the disk is served by nbdkit at 64 Mbit/s (8 MiB/s): the copy of its 48 MiB of data takes seconds
    const file = path.join(bare.imageDir, 'slow.raw');
    await runProgram('truncate', ['-s', String(64 * MiB), file]);
    await qemuIo(file, 'raw', 'write -P 0x5a 0 48M');
    const nbdSock = path.join(bare.dir, 'slow.sock');
    const server = spawn('nbdkit', ['--foreground', '-U', nbdSock, '--filter=rate', 'file', file, 'rate=64M'], { stdio: 'ignore' });
    const vm: TestVm = { id: 'slow', drive: { file: `nbd+unix:///?socket=${nbdSock}`, format: 'raw' }, reference: file };
    const provider = new QemuProvider({ socketDir: bare.socketDir });
    const host = newHost(provider);
    try {
      await waitForSocket(nbdSock);
      await startVm(vm);
      let copyStarted = 0;
      const run = (async () => {
        const e = await host.enumerate();
        const c = host.classify({ ...e, vms: e.vms.filter((v) => v.id === 'slow') }, 'checkpoint');
        const ps = await host.postSnapshot(await host.snapshot(await host.prepare(c)));
        copyStarted = performance.now();
        const set = await host.copy(ps, { concurrency: 1, compress: false, verify: false });
        return { set, copyMs: performance.now() - copyStarted };
      })();
      const polls = await pvestatd(sock('slow'), run, 500, 1000);
      const { set, copyMs } = await run;
      assert.equal(summarize(set).ok, true);
      assert.ok(copyMs > 3000, `the copy took ${copyMs.toFixed(0)} ms`);
      assert.ok(polls.polls >= copyMs / 1500, `${polls.polls} polls during a ${copyMs.toFixed(0)} ms copy`);
      assert.deepEqual(polls.errors, [], 'every poll answered within 1 s');
      assert.equal(polls.answered, polls.polls);
      console.log(
        `      pvestatd-like client: ${polls.answered}/${polls.polls} answered, slowest ${polls.slowestMs.toFixed(1)} ms; copy ${copyMs.toFixed(0)} ms`,
      );
      await assertGraphClean(sock('slow'), 'slow');
    } finally {
      await provider.close();
      await stopVm(vm).catch(() => undefined);
      server.kill();
    }
  });

  it('Verify reads every block of a chained disk: a copy that differs from the view is refused', async () => {
    // the check must be able to fail: the same provider call on a copy with one cluster changed
    const provider = new QemuProvider({ socketDir: bare.socketDir });
    const host = newHost(provider);
    try {
      const e = await host.enumerate();
      const c = host.classify({ ...e, vms: e.vms.filter((v) => v.id === 'lnk') }, 'checkpoint');
      const p = await host.prepare(c);
      const s = await host.snapshot(p);
      const view = s.vms[0].snapshot.view;
      const copy = path.join(bare.dir, 'lnk-check.qcow2');
      await provider.exportDisk(view, 'drive-virtio0', copy);
      await provider.verifyDisk(view, 'drive-virtio0', copy);
      // a cluster that lives in the template (the view reports it a hole) changed in the copy
      await qemuIo(copy, 'qcow2', 'write -P 0x99 3M 64k');
      await assert.rejects(provider.verifyDisk(view, 'drive-virtio0', copy), /content differs/);
      await host.closeAll('test done'); // undoes the view
      await fs.rm(copy, { force: true });
      await assertGraphClean(sock('lnk'), 'lnk');
    } finally {
      await provider.close();
    }
  });
});
