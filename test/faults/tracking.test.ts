// Fault cases for change tracking and the point-in-time view, on real QEMU (bare VMs): a crash
// between the start of a backup's tracking record and its publish, a crash after the publish
// before the parent's record went, QEMU killed with the view in place. After each: QEMU shows no
// node of ours, no fleecing image is left, the disk holds exactly the record the newest published
// backup started, and the next backup holds every change (incremental) or says why it is a full.
import { strict as assert } from 'node:assert';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { BackupHost, DEFAULT_TIMEOUTS } from '../../src/pipeline/backup-host';
import { Journal } from '../../src/journal/journal';
import { pendingUndos } from '../../src/ledger/pending';
import { QemuProvider } from '../../src/providers/qemu/qemu-provider';
import { QmpClient } from '../../src/providers/qemu/protocol';
import { recover } from '../../src/recovery';
import { runProgram } from '../../src/util/run';
import { overlaysUnder, startBareHost, startBareVm, type BareHost } from '../support/bare-vms';
import { faultCase } from './support/table';
import type { CopiedSet, PostSnapshotSet } from '../../src/contract/types';

const GROUP = 'change tracking and the point-in-time view';

describe('fault injection: change tracking and the point-in-time view (bare QEMU VMs)', function () {
  this.timeout(300_000);
  let bare: BareHost;
  let n = 0;

  before(async () => {
    bare = await startBareHost(['trk']);
  });
  after(async () => {
    await bare?.stop();
  });

  const qmp = async <T>(fn: (c: QmpClient) => Promise<T>): Promise<T> => {
    const c = await QmpClient.connect(path.join(bare.socketDir, 'trk.qmp'));
    try {
      return await fn(c);
    } finally {
      await c.close();
    }
  };
  const write = (pattern: number, offset: string) =>
    qmp((c) => c.execute('human-monitor-command', { 'command-line': `qemu-io drive-virtio0 "write -P ${pattern} ${offset} 64k"` }));

  function newHost(journal: Journal, provider = new QemuProvider({ socketDir: bare.socketDir }), repositoryRoot = bare.repository) {
    // idle and session watchdogs far away: a "crashed" host must not undo anything by itself
    return new BackupHost(provider, journal, {
      hostName: 'bare',
      repositoryRoot,
      timeouts: { ...DEFAULT_TIMEOUTS, idleMs: 3600_000 },
    });
  }
  const journalFile = () => path.join(bare.dir, `journal-${++n}.jsonl`);
  const upToCopy = async (host: BackupHost): Promise<PostSnapshotSet> =>
    host.postSnapshot(await host.snapshot(await host.prepare(host.classify(await host.enumerate(), 'checkpoint'))));
  const full = async (host: BackupHost): Promise<CopiedSet> => host.copy(await upToCopy(host), { concurrency: 1, compress: false });

  /** QEMU's own account after the case, and the records on the disk. */
  async function invariants(): Promise<string[]> {
    const { nodes, roots } = await qmp(async (c) => ({
      nodes: await c.execute<{ 'node-name': string; 'dirty-bitmaps'?: { name?: string }[] }[]>('query-named-block-nodes', { flat: true }),
      roots: await c.execute<{ inserted?: { drv: string } }[]>('query-block'),
    }));
    assert.deepEqual(
      nodes.map((x) => x['node-name']).filter((x) => x.startsWith('vmb-')),
      [],
      'QEMU shows nodes of ours',
    );
    assert.ok(
      roots.every((r) => r.inserted?.drv === 'qcow2'),
      'a device is not on its own image',
    );
    assert.deepEqual(
      (await overlaysUnder(bare.imageDir)).filter((f) => f.includes('.fleece.')),
      [],
      'a fleecing image is left',
    );
    return nodes.flatMap((x) => (x['dirty-bitmaps'] ?? []).map((b) => b.name ?? '')).filter((x) => x.startsWith('vmbackup-'));
  }

  async function diskChain(set: CopiedSet) {
    const root = set.repository ?? bare.repository;
    const m = JSON.parse(await fs.readFile(path.join(root, set.vms[0].copy.path, 'manifest.json'), 'utf8'));
    const d = m.files.find((f: { kind: string }) => f.kind === 'disk');
    return { chain: d.chain, file: path.join(root, set.vms[0].copy.path, d.name) };
  }

  /** The records of ours on the disk whose name says they are of backup `backupId` (any chain). */
  const chainOf = (name: string) => /^vmbackup-([0-9a-f]{8})-/.exec(name)?.[1] ?? 'old-style';

  async function holds(file: string, pattern: number, offset: string): Promise<boolean> {
    const out = path.join(bare.dir, `flat-${++n}.raw`);
    await runProgram('qemu-img', ['convert', '-O', 'raw', file, out]);
    const r = await runProgram('qemu-io', ['-r', '-f', 'raw', '-c', `read -P ${pattern} ${offset} 64k`, out]);
    await fs.rm(out, { force: true });
    return r.stdout.includes('read ');
  }

  it('crash between the start of tracking and the publish: recovery drops the new record, the next backup has every change', async () => {
    await faultCase(
      GROUP,
      'Node-RED gone after the view and the new tracking record were made, before the publish; recovery at the next start',
      "recovery takes the view out (QEMU shows none of our nodes) and removes the unpublished backup's record; the parent's stays; the next backup is incremental and holds the change",
      async () => {
        const j0 = new Journal(journalFile());
        const h0 = newHost(j0);
        const parent = await full(h0);
        await write(0x21, '1M');
        const j = new Journal(journalFile());
        const crashed = newHost(j);
        await upToCopy(crashed); // ... and the process is gone: nothing of it runs any more
        const before = await qmp(
          async (c) =>
            (await c.execute<{ 'node-name': string }[]>('query-named-block-nodes', { flat: true })).filter((x) =>
              x['node-name'].startsWith('vmb-'),
            ).length,
        );
        assert.ok(before > 0, 'the view was in place at the crash');
        const actions = await recover(new Journal(j.file), new QemuProvider({ socketDir: bare.socketDir }), crashed.repository, 10_000);
        const kinds = actions.map((a) => `${a.kind}${a.ok ? '' : ' FAILED'}`);
        assert.ok(kinds.includes('release') && kinds.includes('untrack'), kinds.join(', '));
        const records = await invariants();
        assert.deepEqual(records, [(await diskChain(parent)).chain.bitmap.name], "only the published parent's record is left");
        const next = await full(newHost(new Journal(journalFile())));
        const c = await diskChain(next);
        assert.equal(c.chain.mode, 'incremental');
        assert.ok(await holds(c.file, 0x21, '1M'), 'the change made before the crashed backup is in the next one');
        return `recovery: ${kinds.join(', ')}; QEMU: no node of ours, one record (the parent's); next backup incremental (depth ${c.chain.depth}) holding the change`;
      },
    );
  });

  it("crash after the publish, before the parent's record went: recovery removes the parent's record", async () => {
    await faultCase(
      GROUP,
      "the parent's tracking record cannot be removed after the publish (QEMU refuses), then the host is gone; recovery at the next start",
      "the backup stays published; the set's guardian (waited for by recovery) or recovery removes the parent's record, the new one carries on; the next backup is incremental on the published one",
      async () => {
        const stuck = new QemuProvider({ socketDir: bare.socketDir });
        (stuck as { tracking: QemuProvider['tracking'] }).tracking = {
          start: stuck.tracking.start,
          list: stuck.tracking.list,
          remove: async () => {
            throw new Error('QMP refused (injected)');
          },
        };
        const j = new Journal(journalFile());
        const h = newHost(j, stuck);
        const err = await full(h).then(
          () => undefined,
          (e: Error) => e,
        );
        assert.ok(err && /published, but/.test(err.message), `the copy says what happened: ${err?.message}`);
        // the newest by completion (two backups within one second sort by their random suffix)
        const vmDir = path.join(bare.repository, 'bare', 'trk');
        const published = await Promise.all(
          (await fs.readdir(vmDir))
            .filter((x) => !x.startsWith('.'))
            .map(async (id) => ({
              id,
              at: Date.parse(JSON.parse(await fs.readFile(path.join(vmDir, id, 'manifest.json'), 'utf8')).completedAt),
            })),
        );
        const newest = published.sort((a, b) => a.at - b.at).at(-1)!.id;
        assert.equal(pendingUndos(j.read()).filter((u) => u.kind === 'untrack').length, 1);
        const actions = await recover(new Journal(j.file), new QemuProvider({ socketDir: bare.socketDir }), h.repository, 10_000);
        // the set's guardian took the undo over when the host gave up on it: recovery waits for it
        // (never racing it on QMP) and reports what it did; without it, recovery does the undo itself
        assert.ok(
          actions.some((a) => (a.kind === 'untrack' || a.kind === 'guardian') && a.ok),
          JSON.stringify(actions),
        );
        const records = await invariants();
        assert.deepEqual(
          records.filter((r) => chainOf(r) === h.target),
          [`vmbackup-${h.target}-${newest}`],
          "the published backup's record is the one left of its chain",
        );
        await write(0x31, '2M');
        const next = await diskChain(await full(newHost(new Journal(journalFile()))));
        assert.equal(next.chain.mode, 'incremental');
        assert.equal(next.chain.parent, newest);
        assert.ok(await holds(next.file, 0x31, '2M'));
        const by = actions.some((a) => a.kind === 'guardian') ? "the set's guardian (recovery waited for it)" : 'recovery';
        return `copy failed loudly ("published, but ..."); ${by} removed the parent's record; next backup incremental on ${newest}`;
      },
    );
  });

  it('QEMU killed with the view in place: the backup fails, nothing is left, the next backup is a full with its reason', async () => {
    await faultCase(
      GROUP,
      'QEMU SIGKILLed after the view was made and tracking started, before the copy',
      'the copy fails naming the VM; the fleecing image is removed; after QEMU starts again nothing of ours is in its graph and the next backup is a full whose reason names the lost record',
      async () => {
        const h = newHost(new Journal(journalFile()));
        const set = await upToCopy(h);
        const child = bare.vms.get('trk')!;
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGKILL');
        await exited;
        const err = await h.copy(set, { concurrency: 1, compress: false }).then(
          () => undefined,
          (e: Error) => e,
        );
        assert.ok(err, 'the copy failed');
        await startBareVm(bare, 'trk');
        await invariants();
        const next = await diskChain(await full(newHost(new Journal(journalFile()))));
        assert.equal(next.chain.mode, 'full');
        assert.ok(['bitmap-inconsistent', 'bitmap-missing'].includes(next.chain.reason), next.chain.reason);
        return `copy failed: "${err!.message.slice(0, 90)}"; next backup full (${next.chain.reason})`;
      },
    );
  });

  it('the fleecing image deleted by someone during the copy: the backup is still right, nothing is left', async () => {
    await faultCase(
      GROUP,
      'the fleecing image file deleted (rm) while the copy reads the view',
      'QEMU keeps the open file: the copy completes and holds the disk as at its moment; the view is taken out; nothing of ours left',
      async () => {
        const h = newHost(new Journal(journalFile()));
        await write(0x41, '3M');
        const set = await upToCopy(h);
        await write(0x42, '3M'); // after the moment: copied into the fleecing image first
        const fleece = (set.vms[0].snapshot.view.ref as { disks: { fleece: string }[] }).disks[0].fleece;
        await fs.rm(fleece);
        const done = await h.copy(set, { concurrency: 1, compress: false });
        const d = await diskChain(done);
        assert.ok(await holds(d.file, 0x41, '3M'), 'the copy holds the disk at its moment');
        await invariants();
        return `published (${d.chain.mode}); copy holds the moment's data; QEMU: no node of ours`;
      },
    );
  });

  it("the fleecing image's file system full during the copy: the guest write goes on, the backup fails", async () => {
    await faultCase(
      GROUP,
      "the fleecing image on a tmpfs (the host's fleeceDir) with room at the check, filled by something else after it down to 1 MiB, then the guest's writes during the copy",
      'guest writes succeed and the VM keeps running (never paused on an I/O error); the view breaks, the copy fails naming it, nothing is published; nothing of ours left',
      async () => {
        const small = path.join(bare.dir, 'small-fleece');
        await fs.mkdir(small, { recursive: true });
        // room for the rule's reserve (the whole 16 MiB disk) when the view is made
        await runProgram('mount', ['-t', 'tmpfs', '-o', 'size=20m,mode=0755', 'tmpfs', small]);
        try {
          const provider = new QemuProvider({ socketDir: bare.socketDir, fleeceDir: small });
          const h = newHost(new Journal(journalFile()), provider);
          const at = (i: number) => `${8192 + i * 64}k`;
          for (let i = 0; i < 64; i++) await write(0x50, at(i)); // data the view must keep
          const set = await upToCopy(h);
          // something else takes the space after the check: 1 MiB stays free
          const st = await fs.statfs(small);
          await fs.writeFile(path.join(small, 'ballast'), Buffer.alloc(Math.max(0, st.bavail * st.bsize - (1 << 20))));
          // 4 MiB of guest writes after the moment: the old data they replace cannot fit in 1 MiB
          for (let i = 0; i < 64; i++) await write(0x51, at(i));
          const status = await qmp((c) => c.execute<{ status: string }>('query-status'));
          assert.equal(status.status, 'running', 'the VM never paused');
          const err = await h.copy(set, { concurrency: 1, compress: false }).then(
            () => undefined,
            (e: Error) => e,
          );
          assert.ok(err, 'the backup failed');
          assert.match(err!.message, /the view broke: its fleecing image/, `the failure says why: ${err!.message}`);
          await invariants();
          const flat = path.join(bare.dir, `flat-${++n}.raw`);
          const img = path.join(bare.imageDir, 'trk-disk0.qcow2');
          await runProgram('qemu-img', ['convert', '-U', '-O', 'raw', img, flat]);
          const r = await runProgram('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x51 8M 4M', flat]);
          await fs.rm(flat, { force: true });
          assert.ok(r.stdout.includes('read '), "every guest write landed on the VM's disk");
          return `VM running throughout; guest writes all on its disk; copy failed: "${err!.message.slice(0, 100)}"`;
        } finally {
          await runProgram('umount', [small]).catch(() => undefined);
        }
      },
    );
  });

  it('two host nodes with their own repositories back up the same VM: each chain keeps its own record', async () => {
    await faultCase(
      GROUP,
      'two host nodes whose socket directories overlap (the same VM), each with its own repository, back up in turns',
      "each chain's record is named for its repository; neither removes the other's; every backup after the first of each chain is incremental and holds the change; one record per chain on the disk",
      async () => {
        const roots = [path.join(bare.dir, 'repo-local'), path.join(bare.dir, 'repo-offsite')];
        const hosts = roots.map((root) => newHost(new Journal(journalFile()), new QemuProvider({ socketDir: bare.socketDir }), root));
        const firsts = [await full(hosts[0]), await full(hosts[1])];
        await write(0x61, '4M');
        const seconds = [await full(hosts[0]), await full(hosts[1])];
        const notes: string[] = [];
        for (const i of [0, 1]) {
          const d = await diskChain(seconds[i]);
          assert.equal(d.chain.mode, 'incremental', `chain ${i}: ${d.chain.reason}: ${d.chain.detail}`);
          assert.equal(d.chain.parent, firsts[i].backupId);
          assert.ok(await holds(d.file, 0x61, '4M'), `chain ${i}: the incremental holds the change`);
          notes.push(`${path.basename(roots[i])}: incremental on ${d.chain.parent} by ${d.chain.bitmap.name}`);
        }
        const records = await invariants();
        for (const i of [0, 1]) {
          const mine = records.filter((r) => chainOf(r) === chainOf(`vmbackup-${hosts[i].target}-x`));
          assert.deepEqual(mine, [`vmbackup-${hosts[i].target}-${seconds[i].backupId}`], `chain ${i}: one record, the newest's`);
        }
        return `${notes.join('; ')}; records on the disk: ${records.join(', ')}`;
      },
    );
  });

  it('two sets queued on one host: the second, enumerated before the first published, stacks on it', async () => {
    await faultCase(
      GROUP,
      'set B enumerated and classified, then set A runs whole and publishes, then B prepares and copies',
      "B is planned from the records on the disk at its prepare: an incremental on A (not a full 'bitmap-missing'), holding every change; one record of the chain left",
      async () => {
        const h = newHost(new Journal(journalFile()));
        await full(h);
        const queued = h.classify(await h.enumerate(), 'checkpoint');
        await write(0x71, '5M');
        const a = await full(h);
        await write(0x72, '6M');
        const b = await h.copy(await h.postSnapshot(await h.snapshot(await h.prepare(queued))), { concurrency: 1, compress: false });
        const d = await diskChain(b);
        assert.equal(d.chain.mode, 'incremental', `${d.chain.reason}: ${d.chain.detail}`);
        assert.equal(d.chain.parent, a.backupId);
        assert.ok(await holds(d.file, 0x72, '6M'), 'B holds the change made after A');
        const records = (await invariants()).filter((r) => chainOf(r) === h.target);
        assert.deepEqual(records, [`vmbackup-${h.target}-${b.backupId}`]);
        return `B incremental on A (${a.backupId}); one record of the chain: ${records.join(', ')}`;
      },
    );
  });

  it('a chain whose parent record has the old name (vmbackup-<backupId>) goes on incrementally', async () => {
    await faultCase(
      GROUP,
      "the newest backup's record and manifest use the name from before chains were named (vmbackup-<backupId>)",
      'the next backup reads by the old-style record (incremental, holds the change) and, once published, removes it: one record of the chain, named for it',
      async () => {
        const h = newHost(new Journal(journalFile()));
        const p = await full(h);
        const pd = await diskChain(p);
        const oldName = `vmbackup-${p.backupId}`;
        await qmp(async (c) => {
          const nodes = await c.execute<{ 'node-name': string; 'dirty-bitmaps'?: { name?: string }[] }[]>('query-named-block-nodes', {
            flat: true,
          });
          const node = nodes.find((x) => (x['dirty-bitmaps'] ?? []).some((b) => b.name === pd.chain.bitmap.name))!['node-name'];
          await c.execute('block-dirty-bitmap-add', { node, name: oldName, persistent: true, granularity: 65536 });
          await c.execute('block-dirty-bitmap-merge', { node, target: oldName, bitmaps: [pd.chain.bitmap.name] });
          await c.execute('block-dirty-bitmap-remove', { node, name: pd.chain.bitmap.name });
        });
        const manifest = path.join(p.repository ?? bare.repository, p.vms[0].copy.path, 'manifest.json');
        await fs.writeFile(manifest, (await fs.readFile(manifest, 'utf8')).split(pd.chain.bitmap.name).join(oldName));
        await write(0x81, '7M');
        const next = await full(h);
        const d = await diskChain(next);
        assert.equal(d.chain.mode, 'incremental', `${d.chain.reason}: ${d.chain.detail}`);
        assert.equal(d.chain.parent, p.backupId);
        assert.ok(await holds(d.file, 0x81, '7M'), 'the incremental holds the change');
        const records = await invariants();
        assert.ok(!records.includes(oldName), `the old-style record is removed: ${records.join(', ')}`);
        assert.deepEqual(
          records.filter((r) => chainOf(r) === h.target),
          [`vmbackup-${h.target}-${next.backupId}`],
        );
        return `incremental on ${p.backupId} by ${oldName}; after the publish: ${records.join(', ')}`;
      },
    );
  });

  it('a VM started with -blockdev and long device ids, two disks (as libvirt starts them): backed up, names never collide', async () => {
    await faultCase(
      GROUP,
      'a VM with -blockdev nodes named libvirt-N-format and two devices whose ids are 40+ characters long',
      'both disks in one view with distinct node names (made from the backup id and the disk index); published; QEMU shows nothing of ours after',
      async () => {
        const { spawn } = await import('node:child_process');
        const id = 'lv';
        const sock = path.join(bare.socketDir, `${id}.qmp`);
        const args = [
          '-accel',
          'tcg',
          '-machine',
          'pc',
          '-m',
          '32',
          '-nodefaults',
          '-display',
          'none',
          '-qmp',
          `unix:${sock},server=on,wait=off`,
        ];
        for (const i of [1, 2]) {
          const file = path.join(bare.imageDir, `${id}-${i}.qcow2`);
          await runProgram('qemu-img', ['create', '-q', '-f', 'qcow2', file, '16M']);
          args.push('-blockdev', JSON.stringify({ driver: 'file', filename: file, 'node-name': `libvirt-${i}-storage` }));
          args.push('-blockdev', JSON.stringify({ driver: 'qcow2', file: `libvirt-${i}-storage`, 'node-name': `libvirt-${i}-format` }));
          args.push('-device', `virtio-blk-pci,drive=libvirt-${i}-format,id=ua-a-very-long-device-alias-for-disk-number-${i}`);
        }
        const child = spawn('qemu-system-x86_64', args, { stdio: 'ignore' });
        try {
          const { waitForSocket } = await import('../support/bare-vms.js');
          await waitForSocket(sock);
          const provider = new QemuProvider({ socketDir: bare.socketDir });
          const h = newHost(new Journal(journalFile()), provider);
          const e = await h.enumerate();
          const vm = e.vms.find((v) => v.id === id)!;
          assert.equal(vm.disks.filter((d) => d.included).length, 2);
          const set = await h.postSnapshot(await h.snapshot(await h.prepare(h.classify({ ...e, vms: [vm] }, 'checkpoint'))));
          const done = await h.copy(set, { concurrency: 1, compress: false });
          const m = JSON.parse(await fs.readFile(path.join(bare.repository, done.vms[0].copy.path, 'manifest.json'), 'utf8'));
          assert.equal(m.files.filter((f: { kind: string }) => f.kind === 'disk').length, 2);
          const c = await QmpClient.connect(sock);
          try {
            const nodes = await c.execute<{ 'node-name': string }[]>('query-named-block-nodes', { flat: true });
            assert.deepEqual(
              nodes.map((x) => x['node-name']).filter((x) => x.startsWith('vmb-')),
              [],
            );
            const roots = await c.execute<{ inserted?: { 'node-name': string } }[]>('query-block');
            assert.deepEqual(roots.map((r) => r.inserted?.['node-name']).sort(), ['libvirt-1-format', 'libvirt-2-format']);
          } finally {
            await c.close();
          }
          await provider.close();
          return 'published with both disks; devices back on libvirt-1-format and libvirt-2-format; no node of ours';
        } finally {
          child.kill('SIGTERM');
          await fs.rm(sock, { force: true });
        }
      },
    );
  });
});
