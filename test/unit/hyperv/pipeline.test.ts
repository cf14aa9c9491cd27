// The whole pipeline (src/pipeline, unchanged) over the Hyper-V provider: enumerate, classify,
// prepare, snapshot, post-snapshot, copy, publish, settle the change tracking. The Hyper-V host
// is a stand-in that answers the provider's scripts from a small model (its VM, its snapshot,
// its reference points, the writes made since each) the way the fixtures say a host does; the
// disk is a real VHDX file written by qemu-io. What is checked is ours: a full, then an
// incremental of exactly the ranges RCT named, in the chain format the repository's verify and
// restore read; the reference points created and destroyed exactly as the issue asks (a
// published backup destroys its parent's, a failed one its own, never the parent's).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { promises as fs, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Journal } from '../../../src/journal/journal';
import { BackupHost, DEFAULT_TIMEOUTS } from '../../../src/pipeline/backup-host';
import { chainTarget, recordName } from '../../../src/pipeline/chain-plan';
import { createHyperVProvider, LocalPowerShellRunner } from '../../../src/providers/hyperv';
import type { HyperVProvider } from '../../../src/providers/hyperv/provider';
import { verifyBackup } from '../../../src/verify';
import { FakeSpawn, fixture, stdoutOf, type Answer } from './helpers';

const SQL = '4d1b2f0e-8a6c-4c57-9a1e-3f2b7c9d0e11';
const OS_BASE = 'D:\\Hyper-V\\SQL01\\Virtual Hard Disks\\SQL01-os.vhdx';
const MiB = 1 << 20;

/** A Hyper-V host in miniature: one VM with one VHDX disk (a real file here). */
class MiniHost {
  seq = 0;
  readonly writes: { seq: number; offset: number; length: number }[] = [];
  snapshot: { id: string; seq: number } | undefined;
  readonly points: { instanceId: string; name: string; seq: number }[] = [];
  readonly destroyed: string[] = [];
  snapshotGoneAtCheck = false;
  /** false: every RCT id reads as no longer valid (a storage move reset RCT) */
  rctValid = true;
  constructor(readonly disk: string) {}

  write(pattern: number, offset: number, length: number): void {
    execFileSync('qemu-io', ['-f', 'vhdx', '-c', `write -P ${pattern} ${offset} ${length}`, this.disk], { stdio: 'ignore' });
    this.writes.push({ seq: ++this.seq, offset, length });
  }

  private stamp() {
    return { Path: OS_BASE, Length: statSync(this.disk).size, LastWriteTimeUtc: '2024-03-15T02:15:03.5510000Z' };
  }

  answer = (script: string, p: Record<string, unknown>): Answer => {
    const ok = (result: unknown) => ({ stdout: stdoutOf({ result, warnings: [] }), exitCode: 0 });
    const base = fixture('enumerate-host.json').result;
    const sql = base.Vms.find((v: { VM: { Name: string } }) => v.VM.Name === 'SQL01');
    const drive = sql.HardDrives[0];
    switch (script) {
      case 'enumerate.ps1': {
        const rp = this.points.map((x) => ({
          InstanceID: x.instanceId,
          ReferencePointType: 2,
          ConsistencyLevel: 1,
          VirtualDiskIdentifiers: [drive.Id.replace(/\\D$/, '\\L')],
          ResilientChangeTrackingIdentifiers: [`rctX:seq:${x.seq}`],
        }));
        const vm = {
          ...sql,
          HardDrives: [drive],
          Vhds: [{ ...sql.Vhds[0], Size: 8 * MiB }],
          ReferencePoints: rp,
          ReferencePointMap: this.points.map((x) => ({ Name: x.name, InstanceID: x.instanceId, CreatedAt: '', Host: 'HV01' })),
          RctProbes: this.points.map((x) => ({
            Name: x.name,
            VirtualDiskIdentifier: rp[0]!.VirtualDiskIdentifiers[0],
            Valid: this.rctValid,
            Error: this.rctValid ? null : 'GetVirtualDiskChanges job ended in state 10 with error code 32773',
          })),
        };
        return ok({ ...base, Vms: [vm] });
      }
      case 'snapshot.ps1': {
        this.snapshot = { id: randomUUID(), seq: this.seq };
        const after = { ...drive, Path: OS_BASE.replace('.vhdx', `_${randomUUID().toUpperCase()}.avhdx`) };
        return ok({
          Checkpoint: {
            Id: this.snapshot.id,
            Name: p.SnapshotName,
            VMId: SQL,
            VMName: 'SQL01',
            SnapshotType: 'Recovery',
            HardDrives: [drive],
          },
          SnapshotType: 'Microsoft:Hyper-V:Snapshot:Recovery',
          ConsistencyLevel: p.ConsistencyLevel,
          Before: [drive],
          After: [after],
          AfterVhds: [{ Path: after.Path, VhdFormat: 'VHDX', VhdType: 'Differencing', ParentPath: OS_BASE }],
          Parents: [this.stamp()],
          ConfigFiles: [],
          Host: 'HV01',
        });
      }
      case 'check-snapshot.ps1':
        return ok({ VmFound: true, SnapshotFound: !this.snapshotGoneAtCheck && !!this.snapshot, Host: 'HV01', Parents: [this.stamp()] });
      case 'rct-changes.ps1': {
        const since = Number(/^rctX:seq:(\d+)$/.exec(String(p.LimitId))?.[1]);
        const ranges = this.writes.filter((w) => w.seq > since && w.seq <= this.snapshot!.seq);
        return ok({ ChangedByteOffsets: ranges.map((r) => r.offset), ChangedByteLengths: ranges.map((r) => r.length) });
      }
      case 'reference-point.ps1': {
        if (p.Action === 'convert') {
          this.points.push({ instanceId: `Microsoft:${SQL}:${randomUUID()}`, name: String(p.RecordName), seq: this.snapshot!.seq });
          this.snapshot = undefined;
          return ok({ RecordName: p.RecordName, SnapshotGone: true });
        }
        const names = String(p.RecordNames).split('|');
        this.destroyed.push(...names);
        for (const n of names) {
          const i = this.points.findIndex((x) => x.name === n);
          if (i >= 0) this.points.splice(i, 1);
        }
        return ok({ Destroyed: names, NotFound: [] });
      }
      case 'remove-checkpoint.ps1':
        this.snapshot = undefined;
        return ok({ VmFound: true, Removed: [], AlreadyRemoved: false, MergePending: false, WaitedMs: 0 });
      case 'get-state.ps1':
        return { stdout: stdoutOf(fixture('get-state-running.json')), exitCode: 0 };
      case 'describe.ps1':
        return { stdout: stdoutOf(fixture('describe.json')), exitCode: 0 };
      default:
        throw new Error(`unexpected ${script}`);
    }
  };
}

class FileRunner extends LocalPowerShellRunner {
  constructor(
    private readonly local: string,
    spawn: FakeSpawn,
  ) {
    super({ scriptsDir: '/opt/s', spawn: spawn.spawn });
  }
  override openFile(hostPath: string) {
    assert.equal(hostPath, OS_BASE);
    return super.openFile(this.local);
  }
}

describe('hyperv: the whole pipeline over the provider (a miniature host, a real VHDX)', function () {
  this.timeout(60_000);
  let dir: string;
  let world: MiniHost;
  let host: BackupHost;
  let provider: HyperVProvider;
  let fake: FakeSpawn;

  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'hv-pipe-'));
    const disk = path.join(dir, 'host-os.vhdx');
    execFileSync('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', disk, '8M']);
    world = new MiniHost(disk);
    fake = new FakeSpawn((script, params) => world.answer(script, params));
    provider = createHyperVProvider({ hostName: 'HV01', mode: 'local', runner: new FileRunner(disk, fake) }) as HyperVProvider;
    host = new BackupHost(provider, new Journal(path.join(dir, 'journal.jsonl')), {
      hostName: 'HV01',
      repositoryRoot: path.join(dir, 'repo'),
      timeouts: { ...DEFAULT_TIMEOUTS, idleMs: 60_000 },
    });
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));
  /** the reference point a backup of this host node's chain makes */
  const rec = (backupId: string) => recordName(chainTarget(path.join(dir, 'repo'), 'HV01'), backupId);

  async function backup() {
    const e = await host.enumerate();
    const c = host.classify(e, 'checkpoint');
    const ps = await host.postSnapshot(await host.snapshot(await host.prepare(c)));
    return host.copy(ps, { concurrency: 1, compress: false });
  }
  const diskOf = async (set: { vms: { copy: { path: string } }[] }) => {
    const d = path.join(dir, 'repo', set.vms[0]!.copy.path);
    const m = JSON.parse(await fs.readFile(path.join(d, 'manifest.json'), 'utf8'));
    return { dir: d, m, file: m.files.find((f: { kind: string }) => f.kind === 'disk') };
  };

  it('a full, then an incremental of exactly the RCT ranges; both verify and restore to the disk at their moment; tracking settled', async () => {
    await fs.mkdir(path.join(dir, 'repo'), { recursive: true });
    world.write(0x11, 0, 3 * MiB);
    const full = await backup();
    const f = await diskOf(full);
    assert.deepEqual(
      [f.file.name, f.file.format, f.file.chain.mode, f.file.chain.reason],
      ['disk-SCSI0_0.qcow2', 'qcow2', 'full', 'first-backup'],
    );
    assert.equal(f.m.method, 'child-vm-snapshot');
    assert.deepEqual(
      world.points.map((p) => p.name),
      [rec(full.backupId)],
      "the snapshot became this backup's reference point",
    );
    const flatFull = path.join(dir, 'full.raw');
    execFileSync('qemu-img', ['convert', '-O', 'raw', path.join(f.dir, f.file.name), flatFull]);
    const atFull = path.join(dir, 'at-full.raw');
    execFileSync('qemu-img', ['convert', '-f', 'vhdx', '-O', 'raw', world.disk, atFull]);

    world.write(0x22, 1 * MiB, 64 << 10);
    world.write(0x33, 5 * MiB, 1 * MiB);
    const inc = await backup();
    const i = await diskOf(inc);
    assert.deepEqual([i.file.chain.mode, i.file.chain.parent, i.file.chain.depth], ['incremental', full.backupId, 1]);
    assert.equal(i.file.chain.backing, `../${full.backupId}/disk-SCSI0_0.qcow2`);
    assert.equal(i.file.chain.bytesChanged, (64 << 10) + MiB, 'exactly the ranges GetVirtualDiskChanges named');
    const rct = fake.calls.find((c) => c.script === 'rct-changes.ps1')!;
    assert.equal(rct.params.LimitId, `rctX:seq:1`, "asked since the parent backup's reference point");
    execFileSync('qemu-img', ['compare', '-f', 'vhdx', '-F', 'qcow2', world.disk, path.join(i.dir, i.file.name)]);
    execFileSync('qemu-img', ['compare', '-f', 'raw', '-F', 'qcow2', atFull, path.join(f.dir, f.file.name)]);
    // published: the parent's reference point is destroyed, this backup's kept
    assert.deepEqual(world.destroyed, [rec(full.backupId)]);
    assert.deepEqual(
      world.points.map((p) => p.name),
      [rec(inc.backupId)],
    );
    // the repository's own verify reads both, the chain included
    for (const d of [f.dir, i.dir]) {
      const report = await verifyBackup(d);
      assert.equal(report.ok, true, JSON.stringify(report.problems));
    }
  });

  it("a backup whose snapshot vanished during the copy is not published and destroys its own reference point, never its parent's", async () => {
    await fs.mkdir(path.join(dir, 'repo'), { recursive: true });
    world.write(0x11, 0, MiB);
    const full = await backup();
    world.write(0x44, 2 * MiB, MiB);
    world.snapshotGoneAtCheck = true;
    await assert.rejects(backup(), /removed during the copy/);
    const parent = rec(full.backupId);
    assert.ok(!world.destroyed.includes(parent), "the parent's reference point stays");
    assert.equal(world.destroyed.length, 1, "the failed backup's own reference point, made at release, is destroyed");
    assert.match(world.destroyed[0]!, /^vmbackup-/);
    assert.equal(world.snapshot, undefined, 'no snapshot is left on the VM');
    assert.deepEqual(
      world.points.map((p) => p.name),
      [parent],
    );
    // the next backup is again an incremental on the same parent
    world.snapshotGoneAtCheck = false;
    const next = await backup();
    const n = await diskOf(next);
    assert.deepEqual([n.file.chain.mode, n.file.chain.parent], ['incremental', full.backupId]);
    execFileSync('qemu-img', ['compare', '-f', 'vhdx', '-F', 'qcow2', world.disk, path.join(n.dir, n.file.name)]);
  });

  it('RCT reset (the probe fails): a full, reason bitmap-inconsistent; the reference point gone: a full, reason bitmap-missing', async () => {
    await fs.mkdir(path.join(dir, 'repo'), { recursive: true });
    world.write(0x11, 0, MiB);
    await backup();
    world.rctValid = false;
    world.write(0x22, MiB, MiB);
    const reset = await diskOf(await backup());
    assert.deepEqual([reset.file.chain.mode, reset.file.chain.reason], ['full', 'bitmap-inconsistent'], JSON.stringify(reset.file.chain));
    world.rctValid = true;
    world.points.length = 0; // another tool destroyed it
    const gone = await diskOf(await backup());
    assert.deepEqual([gone.file.chain.mode, gone.file.chain.reason], ['full', 'bitmap-missing']);
    execFileSync('qemu-img', ['compare', '-f', 'vhdx', '-F', 'qcow2', world.disk, path.join(gone.dir, gone.file.name)]);
  });
});
