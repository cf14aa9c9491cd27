import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { promises as fs } from 'node:fs';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import type { ClassifiedVm } from '../../../src/contract/types';
import type { HyperVProvider } from '../../../src/providers/hyperv/provider';
import type { Overlay } from '../../../src/providers/hyperv/parse';
import type { Progress } from '../../../src/providers/provider';
import { createHyperVProvider, HyperVError, LocalPowerShellRunner } from '../../../src/providers/hyperv';
import { mapEnumeration } from '../../../src/providers/hyperv/parse';
import { extractVmFiles } from '../../../src/providers/hyperv/vm-files';
import { b64, FakeSpawn, fixture, stdoutOf, type Answer } from './helpers';

const SCRIPTS_DIR = '/opt/vm-backup/scripts';
const SQL = '4d1b2f0e-8a6c-4c57-9a1e-3f2b7c9d0e11';
const APP = '7e3c1a22-5b4d-4e8f-8c2a-1d9e0f3b4a22';
const BACKUP = '20240315T021500Z-a1b2c3';
const CP = '9c8b7a65-4321-4fed-8cba-0123456789ab';
const OS_BASE = 'D:\\Hyper-V\\SQL01\\Virtual Hard Disks\\SQL01-os.vhdx';
const DATA_BASE = 'D:\\Hyper-V\\SQL01\\Virtual Hard Disks\\SQL01-data.vhdx';

/** The exact vector powershell.exe receives for one script run. */
function argv(script: string, params: Record<string, unknown>): string[] {
  return ['-NoProfile', '-NonInteractive', '-ExecutionPolicy', 'Bypass', '-File', path.join(SCRIPTS_DIR, script), '-ArgsJson', b64(params)];
}

/** A local runner whose host files are local test files. */
class TestRunner extends LocalPowerShellRunner {
  readonly files = new Map<string, string>();
  override openFile(hostPath: string) {
    const local = this.files.get(hostPath);
    if (!local) return Promise.reject(new Error(`ENOENT: ${hostPath}`));
    return super.openFile(local);
  }
  override fetchFile(hostPath: string, localPath: string, onProgress?: (p: Progress) => void) {
    const local = this.files.get(hostPath);
    if (!local) return Promise.reject(new Error(`ENOENT: ${hostPath}`));
    return super.fetchFile(local, localPath, onProgress);
  }
}

function setup(answers: Record<string, string | Answer | (string | Answer)[]>, timeoutMs?: number) {
  const fake = FakeSpawn.byScript(answers);
  const runner = new TestRunner({ scriptsDir: SCRIPTS_DIR, spawn: fake.spawn });
  const provider = createHyperVProvider({ hostName: 'HV01', mode: 'local', runner, ...(timeoutMs ? { timeoutMs } : {}) }) as HyperVProvider;
  return { fake, runner, provider };
}

function classified(name: string, method: ClassifiedVm['method']): ClassifiedVm {
  const vm = mapEnumeration(fixture('enumerate-host.json').result).find((v) => v.name === name)!;
  return { ...vm, method, consistency: method === 'child-vm-snapshot' ? 'application' : 'crash', reasons: [], warnings: [] };
}

describe('hyperv provider: identity and no-op quiesce', () => {
  it('is a hyperv provider whose snapshots quiesce by themselves; freeze and thaw run nothing', async () => {
    const { fake, provider } = setup({});
    assert.equal(provider.kind, 'hyperv');
    assert.equal(provider.quiesce, 'view');
    assert.match(provider.writerName, /Hyper-V/);
    assert.deepEqual(await provider.freeze(classified('SQL01', 'child-vm-snapshot'), 10_000), { frozenFilesystems: 0 });
    assert.equal(await provider.thaw(SQL, 10_000), 0);
    assert.equal(fake.calls.length, 0);
  });
});

describe('hyperv provider: enumerate', () => {
  it('runs enumerate.ps1 with empty arguments and maps every VM', async () => {
    const { fake, provider } = setup({ 'enumerate.ps1': 'enumerate-host.json' });
    const vms = await provider.enumerate();
    assert.equal(vms.length, 7);
    assert.deepEqual(
      fake.calls.map((c) => c.args),
      [argv('enumerate.ps1', {})],
    );
    assert.equal(fake.calls[0]!.args.at(-1), 'e30=');
  });

  it('PowerShell warnings before the JSON do not disturb it', async () => {
    const env = fixture('enumerate-host.json');
    const { provider } = setup({ 'enumerate.ps1': { stdout: stdoutOf(env, ['Some VMs are in a critical state.']), exitCode: 0 } });
    assert.equal((await provider.enumerate()).length, 7);
  });

  it('a PowerShell failure is a HyperVError with the cmdlet message', async () => {
    const { provider } = setup({ 'enumerate.ps1': 'error-module-missing.json' });
    await assert.rejects(
      provider.enumerate(),
      (e: HyperVError) => e instanceof HyperVError && e.code === 'script' && /not recognized/.test(e.message),
    );
  });
});

const SID = '3f6e1c2a-9b84-4d7e-a5c1-7e2d0b9f4a63';
const SNAPSHOT_PARAMS = (level: string) => ({
  VmId: SQL,
  SnapshotName: `vmbackup-${BACKUP}`,
  ConsistencyLevel: level,
  WaitSeconds: 300,
  JobSeconds: 570,
});

describe('hyperv provider: the backup snapshot (WMI recovery snapshot, Windows Server 2016+)', () => {
  it('child-vm-snapshot: snapshot.ps1 with ConsistencyLevel Application; one overlay per included disk', async () => {
    const { fake, provider } = setup({ 'snapshot.ps1': 'snapshot-recovery.json' });
    const overlays = await provider.snapshot(classified('SQL01', 'child-vm-snapshot'), BACKUP);
    assert.deepEqual(
      fake.calls.map((c) => c.args),
      [argv('snapshot.ps1', SNAPSHOT_PARAMS('Application'))],
    );
    assert.deepEqual(
      overlays.map((o) => [o.disk, o.base, o.baseFormat, o.overlayNode]),
      [
        ['SCSI0:0', OS_BASE, 'vhdx', SID],
        ['SCSI0:1', DATA_BASE, 'vhdx', SID],
      ],
    );
    // Hyper-V names each .avhdx <disk>_<new GUID>: never our snapshot id
    assert.ok(overlays.every((o) => /_[0-9A-F-]{36}\.avhdx$/.test(o.overlay) && !o.overlay.toLowerCase().includes(SID)));
  });

  for (const method of ['checkpoint', 'saved-state', 'offline'] as const) {
    it(`${method}: a crash-consistent recovery snapshot (no memory written, no VM setting changed)`, async () => {
      const { fake, provider } = setup({ 'snapshot.ps1': 'snapshot-recovery.json' });
      await provider.snapshot(classified('SQL01', method), BACKUP);
      assert.deepEqual(fake.calls[0]!.args, argv('snapshot.ps1', SNAPSHOT_PARAMS('Crash')));
    });
  }

  it('Windows Server 2012 R2 (no recovery snapshots): a Standard checkpoint for crash-consistent methods; child-vm-snapshot refused', async () => {
    const env = fixture('enumerate-host.json');
    env.result.Host.RecoverySnapshots = false;
    const { fake, provider } = setup({
      'enumerate.ps1': { stdout: stdoutOf(env), exitCode: 0 },
      'checkpoint.ps1': 'checkpoint-production.json',
    });
    const vms = await provider.enumerate();
    const sql = vms.find((v) => v.name === 'SQL01')!;
    assert.equal(sql.agent.responding, false, 'the classification is told the guest cannot take part');
    assert.match(sql.agent.error!, /2012 R2/);
    assert.equal(sql.disks[0]!.tracking, undefined, 'no RCT before 2016');
    await assert.rejects(provider.snapshot(classified('SQL01', 'child-vm-snapshot'), BACKUP), /2012 R2/);
    await provider.snapshot(classified('SQL01', 'checkpoint'), BACKUP);
    assert.deepEqual(fake.calls.at(-1)!.params, {
      VmId: SQL,
      SnapshotName: `vmbackup-${BACKUP}`,
      CheckpointType: 'Standard',
      WaitSeconds: 300,
    });
  });

  it('the waits follow timeoutMs (half of it before a snapshot, all but 30 s for a job or a merge)', async () => {
    const { fake, provider } = setup(
      { 'snapshot.ps1': 'snapshot-recovery.json', 'remove-checkpoint.ps1': 'remove-checkpoint-merged.json' },
      120_000,
    );
    const overlays = await provider.snapshot(classified('SQL01', 'child-vm-snapshot'), BACKUP);
    await provider.merge(SQL, overlays, true);
    assert.deepEqual(
      fake.calls.map((c) => [c.params.WaitSeconds, c.params.JobSeconds]),
      [
        [60, 90],
        [90, undefined],
      ],
    );
  });

  it('a guest that cannot quiesce fails the snapshot (German host: the job error code is what counts), nothing else run', async () => {
    const { fake, provider } = setup({ 'snapshot.ps1': 'snapshot-app-consistent-failed-de.json' });
    await assert.rejects(
      provider.snapshot(classified('SQL01', 'child-vm-snapshot'), BACKUP),
      (e: HyperVError) =>
        e.code === 'script' && /job ended in state 10 with error code 32768/.test(e.message) && /Prüfpunkts/.test(e.message),
    );
    assert.equal(fake.calls.length, 1);
  });

  it('configuration 5.0: classified crash-consistent, and if the host still refuses the snapshot, its code is in the error', async () => {
    const { provider } = setup({ 'enumerate.ps1': 'enumerate-host.json', 'snapshot.ps1': 'snapshot-config-5.json' });
    const legacy = (await provider.enumerate()).find((v) => v.name === 'LEGACY2008')!;
    assert.equal(legacy.agent.responding, false);
    await assert.rejects(
      provider.snapshot({ ...legacy, method: 'checkpoint', consistency: 'crash', reasons: [], warnings: [] }, BACKUP),
      (e: HyperVError) => e.code === 'script' && /CreateSnapshot returned 32775/.test(e.message),
    );
  });

  it('a VM owned by another cluster node: the snapshot is refused naming the node', async () => {
    const { provider } = setup({ 'snapshot.ps1': 'snapshot-moved.json' });
    await assert.rejects(provider.snapshot(classified('LNX01', 'checkpoint'), BACKUP), /moved to cluster node HV02/);
  });

  it('a VM still merging an earlier checkpoint: the script gives up with a clear error', async () => {
    const { provider } = setup({ 'snapshot.ps1': 'checkpoint-still-merging.json' });
    await assert.rejects(provider.snapshot(classified('SQL01', 'checkpoint'), BACKUP), /still merging disks/);
  });

  it('a snapshot that left a disk on its parent is removed again at once (all or nothing)', async () => {
    const env = fixture('snapshot-recovery.json');
    env.result.After[1].Path = DATA_BASE;
    const { fake, provider } = setup({
      'snapshot.ps1': { stdout: stdoutOf(env), exitCode: 0 },
      'remove-checkpoint.ps1': 'remove-checkpoint-merged.json',
    });
    await assert.rejects(
      provider.snapshot(classified('SQL01', 'child-vm-snapshot'), BACKUP),
      (e: HyperVError) => e.code === 'inconsistent' && /SCSI0:1 still writes to/.test(e.message),
    );
    assert.deepEqual(
      fake.calls.map((c) => c.args),
      [
        argv('snapshot.ps1', SNAPSHOT_PARAMS('Application')),
        argv('remove-checkpoint.ps1', { VmId: SQL, CheckpointId: SID, AllowRecoveryType: true, WaitSeconds: 0 }),
      ],
    );
  });

  it('a snapshot that is not of the recovery type is refused and removed', async () => {
    const env = fixture('snapshot-recovery.json');
    env.result.SnapshotType = 'Microsoft:Hyper-V:Snapshot:Realized';
    const { fake, provider } = setup({
      'snapshot.ps1': { stdout: stdoutOf(env), exitCode: 0 },
      'remove-checkpoint.ps1': 'remove-checkpoint-merged.json',
    });
    await assert.rejects(provider.snapshot(classified('SQL01', 'checkpoint'), BACKUP), /not a recovery snapshot/);
    assert.equal(fake.calls[1]!.script, 'remove-checkpoint.ps1');
  });

  it('refuses, before running anything: a differencing disk, a bad backup id, a bad VM id', async () => {
    const { fake, provider } = setup({});
    await assert.rejects(
      provider.snapshot(classified('WEB03', 'child-vm-snapshot'), BACKUP),
      (e: HyperVError) => e.code === 'unsupported' && /differencing disk/.test(e.message),
    );
    await assert.rejects(
      provider.snapshot(classified('SQL01', 'child-vm-snapshot'), 'x; Remove-VM'),
      (e: HyperVError) => e.code === 'invalid-argument',
    );
    await assert.rejects(provider.snapshot({ ...classified('SQL01', 'checkpoint'), id: 'SQL01' }, BACKUP), /not a Hyper-V VM id/);
    assert.equal(fake.calls.length, 0);
  });

  it('a VM with only excluded disks (pass-through) gets no snapshot', async () => {
    const { fake, provider } = setup({});
    const vm = classified('FILESRV', 'checkpoint');
    const onlyPassThrough = { ...vm, disks: vm.disks.filter((d) => !d.included) };
    assert.deepEqual(await provider.snapshot(onlyPassThrough, BACKUP), []);
    assert.equal(fake.calls.length, 0);
  });
});

describe('hyperv provider: removing the snapshot', () => {
  async function snapshotted() {
    const s = setup({
      'snapshot.ps1': 'snapshot-recovery.json',
      'remove-checkpoint.ps1': ['remove-checkpoint-merged.json', 'remove-checkpoint-already-removed.json'],
    });
    const overlays = await s.provider.snapshot(classified('SQL01', 'checkpoint'), BACKUP);
    return { ...s, overlays };
  }

  it('removes our recovery snapshot once by its exact Id, whatever the number of disks', async () => {
    const { fake, provider, overlays } = await snapshotted();
    await provider.merge(SQL, overlays, true);
    assert.deepEqual(
      fake.calls.slice(1).map((c) => c.args),
      [argv('remove-checkpoint.ps1', { VmId: SQL, CheckpointId: SID, WaitSeconds: 570, AllowRecoveryType: true })],
    );
  });

  it('is safe twice (already removed)', async () => {
    const { fake, provider, overlays } = await snapshotted();
    await provider.merge(SQL, overlays, true);
    await provider.merge(SQL, overlays, true);
    assert.equal(fake.calls.filter((c) => c.script === 'remove-checkpoint.ps1').length, 2);
  });

  it('a merge still running after the wait is not an error (Hyper-V finishes it by itself)', async () => {
    const { provider } = setup({ 'remove-checkpoint.ps1': 'remove-checkpoint-merge-pending.json' });
    const overlays: Overlay[] = [{ disk: 'SCSI0:0', base: OS_BASE, baseFormat: 'vhdx', overlay: 'D:\\x.avhdx', overlayNode: CP }];
    await provider.merge(SQL, overlays);
  });

  it('a VM that moved to another node meanwhile: the removal throws (never "already removed")', async () => {
    const { provider, overlays } = await snapshotted();
    const moved = setup({ 'remove-checkpoint.ps1': 'snapshot-moved.json' });
    await assert.rejects(moved.provider.merge(SQL, overlays, true), /moved to cluster node HV02/);
    void provider;
  });

  it('overlays that were only planned (snapshot failed, process died) are removed by snapshot name', async () => {
    const { fake, provider } = setup({ 'remove-checkpoint.ps1': 'remove-checkpoint-already-removed.json' });
    const planned: Overlay[] = [
      {
        disk: 'SCSI0:0',
        base: OS_BASE,
        baseFormat: 'vhdx',
        overlay: `D:\\Hyper-V\\SQL01/SQL01-os.vhdx.vmbackup-${BACKUP}.qcow2`,
        overlayNode: 'vmb-a1b2c3-SCSI0_0',
      },
    ];
    await provider.merge(SQL, planned);
    assert.deepEqual(
      fake.calls.map((c) => c.args),
      [argv('remove-checkpoint.ps1', { VmId: SQL, SnapshotName: `vmbackup-${BACKUP}`, WaitSeconds: 570 })],
    );
  });

  it('after a snapshot that timed out, merge still knows the snapshot name', async () => {
    const { fake, provider } = setup({ 'snapshot.ps1': { hang: true }, 'remove-checkpoint.ps1': 'remove-checkpoint-merged.json' }, 1000);
    await assert.rejects(provider.snapshot(classified('SQL01', 'checkpoint'), BACKUP), (e: HyperVError) => e.code === 'timeout');
    await provider.merge(SQL, []);
    assert.deepEqual(fake.calls[1]!.params, { VmId: SQL, SnapshotName: `vmbackup-${BACKUP}`, WaitSeconds: 0 });
  });

  it('nothing to merge: nothing run', async () => {
    const { fake, provider } = setup({});
    await provider.merge(SQL, []);
    assert.equal(fake.calls.length, 0);
  });

  it('a refusal of the script (not our checkpoint) propagates', async () => {
    const { provider } = setup({ 'remove-checkpoint.ps1': 'remove-checkpoint-refused.json' });
    await assert.rejects(
      provider.merge(SQL, [
        { disk: 'SCSI0:0', base: OS_BASE, baseFormat: 'vhdx', overlay: 'x', overlayNode: '11111111-aaaa-4bbb-8ccc-dddddddddddd' },
      ]),
      /not a vmbackup-\* checkpoint/,
    );
  });
});

describe('hyperv provider: run state, save, resume', () => {
  const states = [
    ['Running', 'running'],
    ['Paused', 'paused'],
    ['Saved', 'saved'],
    ['Off', 'off'],
    ['RunningCritical', 'running-critical'],
  ] as const;
  for (const [raw, mapped] of states) {
    it(`runState: ${raw} -> ${mapped}`, async () => {
      const { fake, provider } = setup({ 'get-state.ps1': `get-state-${raw.toLowerCase()}.json` });
      assert.equal(await provider.runState(SQL), mapped);
      assert.deepEqual(fake.calls[0]!.args, argv('get-state.ps1', { VmId: SQL }));
    });
  }

  it('runState of a VM that is gone: HyperVError from Get-VM', async () => {
    const { provider } = setup({ 'get-state.ps1': 'error-vm-not-found.json' });
    await assert.rejects(
      provider.runState(SQL),
      (e: HyperVError) => e.cmdlet === 'Get-VM' && /unable to find a virtual machine/.test(e.message),
    );
  });

  it('saveState: Save-VM, then the .vmrs (memory and device state) itself copied into `file`', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'hv-save-'));
    try {
      const { fake, provider, runner } = setup({ 'save-vm.ps1': 'save-vm.json' });
      const vmrs = path.join(dir, 'host.vmrs');
      writeFileSync(vmrs, Buffer.alloc(300_000, 7));
      runner.files.set('D:\\Hyper-V\\APP02\\Virtual Machines\\7E3C1A22-5B4D-4E8F-8C2A-1D9E0F3B4A22.vmrs', vmrs);
      const file = path.join(dir, 'staging', 'state.vmstate');
      const { bytes } = await provider.saveState(classified('APP02', 'saved-state'), file);
      assert.equal(bytes, 300_000);
      assert.deepEqual(fake.calls[0]!.args, argv('save-vm.ps1', { VmId: APP }));
      assert.deepEqual(readFileSync(file), readFileSync(vmrs), 'the saved state itself, not a reference to it');
      assert.deepEqual(readdirSync(path.join(dir, 'staging')), ['state.vmstate']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('saveState of a VM enumerate found at configuration 5.0: refused before Save-VM runs', async () => {
    const { fake, provider } = setup({ 'enumerate.ps1': 'enumerate-host.json' });
    await provider.enumerate();
    await assert.rejects(provider.saveState(classified('LEGACY2008', 'saved-state'), '/tmp/never'), /configuration version 5\.0/);
    assert.deepEqual(
      fake.calls.map((c) => c.script),
      ['enumerate.ps1'],
    );
  });

  it('saveState of a configuration 5.0 VM (.bin/.vsv, no .vmrs): refused, saying it stays saved until resumed', async () => {
    const env = fixture('save-vm.json');
    env.result.Files = [{ Path: 'E:\\VMs\\LEGACY2008\\Virtual Machines\\A1B2\\A1B2.vsv', Length: 1000 }];
    const { provider } = setup({ 'save-vm.ps1': { stdout: stdoutOf(env), exitCode: 0 } });
    await assert.rejects(
      provider.saveState(classified('APP02', 'saved-state'), '/tmp/never'),
      (e: HyperVError) => e.code === 'unsupported' && /5\.0/.test(e.message),
    );
  });

  it('resume to running from saved: Start-VM', async () => {
    const { fake, provider } = setup({ 'get-state.ps1': 'get-state-saved.json', 'start-vm.ps1': 'start-vm.json' });
    await provider.resume(APP, 'running');
    assert.deepEqual(
      fake.calls.map((c) => c.args),
      [argv('get-state.ps1', { VmId: APP }), argv('start-vm.ps1', { VmId: APP })],
    );
  });

  it('resume to running from paused: Resume-VM', async () => {
    const { fake, provider } = setup({ 'get-state.ps1': 'get-state-paused.json', 'resume-vm.ps1': 'resume-vm.json' });
    await provider.resume(APP, 'running');
    assert.deepEqual(
      fake.calls.map((c) => c.script),
      ['get-state.ps1', 'resume-vm.ps1'],
    );
  });

  it('resume to paused from running: Suspend-VM; from saved: Start-VM then Suspend-VM', async () => {
    const a = setup({ 'get-state.ps1': 'get-state-running.json', 'suspend-vm.ps1': 'suspend-vm.json' });
    await a.provider.resume(APP, 'paused');
    assert.deepEqual(
      a.fake.calls.map((c) => c.script),
      ['get-state.ps1', 'suspend-vm.ps1'],
    );
    const b = setup({ 'get-state.ps1': 'get-state-saved.json', 'start-vm.ps1': 'start-vm.json', 'suspend-vm.ps1': 'suspend-vm.json' });
    await b.provider.resume(APP, 'Paused');
    assert.deepEqual(
      b.fake.calls.map((c) => c.script),
      ['get-state.ps1', 'start-vm.ps1', 'suspend-vm.ps1'],
    );
  });

  it('safe twice: already running means nothing to do; off or saved before means nothing at all', async () => {
    const a = setup({ 'get-state.ps1': 'get-state-running.json' });
    await a.provider.resume(APP, 'running');
    await a.provider.resume(APP, 'running');
    assert.deepEqual(
      a.fake.calls.map((c) => c.script),
      ['get-state.ps1', 'get-state.ps1'],
    );
    const b = setup({});
    await b.provider.resume(APP, 'off');
    await b.provider.resume(APP, 'saved');
    assert.equal(b.fake.calls.length, 0);
  });

  it('a VM that does not reach the state is an error', async () => {
    const { provider } = setup({ 'get-state.ps1': 'get-state-runningcritical.json' });
    await assert.rejects(provider.resume(APP, 'running'), /is running-critical, could not return it to running/);
  });
});

describe('hyperv provider: describe', () => {
  it('returns the VM configuration as JSON', async () => {
    const { fake, provider } = setup({ 'describe.ps1': 'describe.json' });
    const d = await provider.describe(SQL);
    assert.deepEqual(fake.calls[0]!.args, argv('describe.ps1', { VmId: SQL }));
    assert.equal(d.provider, 'hyperv');
    assert.equal(d.vmId, SQL);
    assert.equal((d.VM as { Name: string }).Name, 'SQL01');
    assert.equal((d.Processor as { Count: number }).Count, 4);
    assert.equal((d.NetworkAdapters as unknown[]).length, 1);
    assert.deepEqual(JSON.parse(JSON.stringify(d)), d, 'serialisable');
  });
});

describe('hyperv provider: the whole VM, copy, RCT (fixtures + real VHDX files made by qemu-img)', function () {
  this.timeout(60_000);
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'hv-export-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const MiB = 1 << 20;
  const img = (...a: string[]) => execFileSync('qemu-img', a, { stdio: 'pipe' }).toString();
  const io = (f: string, ...c: string[]) => execFileSync('qemu-io', ['-f', 'vhdx', ...c.flatMap((x) => ['-c', x]), f], { stdio: 'pipe' });

  /** SQL01 enumerated and snapshotted; its OS disk's parent is a real 8 MiB VHDX here. */
  async function prepared(
    answers: Record<string, string | Answer | (string | Answer)[]>,
    method: ClassifiedVm['method'] = 'child-vm-snapshot',
  ) {
    const s = setup({ 'enumerate.ps1': 'enumerate-host.json', 'snapshot.ps1': 'snapshot-recovery.json', ...answers });
    const vms = await s.provider.enumerate();
    const vm = { ...classified('SQL01', method), disks: vms.find((v) => v.name === 'SQL01')!.disks };
    const host = path.join(dir, 'host-os.vhdx');
    img('create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', host, '8M');
    io(host, 'write -P 0x61 0 3M', 'write -P 0x62 6M 2M');
    s.runner.files.set(OS_BASE, host);
    const view = s.provider.planView(vm, BACKUP);
    const chain = [{ disk: 'SCSI0:0', mode: 'full', reason: 'first-backup', detail: '', depth: 0, record: `vmbackup-${BACKUP}` }] as never;
    const made = (await s.provider.makeView(vm, view, { frozen: false, chain })).view;
    return { ...s, vm, view: made, host };
  }

  it('enumerate: RCT records from our map and the live reference points; a record whose RCT no longer holds is inconsistent', async () => {
    const { provider } = setup({ 'enumerate.ps1': 'enumerate-host.json' });
    const vms = await provider.enumerate();
    const sql = vms.find((v) => v.name === 'SQL01')!;
    // the map's older entry has no live reference point; another product's reference point is not ours
    assert.deepEqual(sql.disks[0]!.tracking, {
      persistent: true,
      records: [{ name: 'vmbackup-20240314T021500Z-z9y8x7', recording: true, persistent: true, inconsistent: false, granularity: 0 }],
    });
    const app = vms.find((v) => v.name === 'APP02')!;
    assert.equal(app.disks[0]!.tracking!.records[0]!.inconsistent, true, 'RCT reset: the next copy is a full, reason bitmap-inconsistent');
    assert.ok(app.warnings!.some((w) => /no longer holds/.test(w)));
    const legacy = vms.find((v) => v.name === 'LEGACY2008')!;
    assert.equal(legacy.disks[0]!.tracking, undefined, 'configuration 5.0 and a .vhd: no RCT');
    assert.equal(legacy.agent.responding, false);
    assert.match(legacy.agent.error!, /configuration version 5\.0.*6\.2/);
    const lnx = vms.find((v) => v.name === 'LNX01')!;
    const quorum = lnx.disks.find((d) => d.file.endsWith('quorum.vhdx'))!;
    assert.deepEqual([quorum.included, quorum.excludedReason, quorum.driver], [false, 'hyperv-shared-vhdx', 'shared-vhdx']);
    assert.ok(lnx.warnings!.some((w) => /shared VHDX/.test(w)));
    const dc = vms.find((v) => v.name === 'Büro-DC')!;
    assert.equal(dc.agent.responding, false, 'a German "Keine Verbindung" is read by its enum name NoContact');
    // the view's location is the disks' own folder: .avhdx files are made beside their parents
    assert.equal(sql.snapshotLocation.path, 'D:\\Hyper-V\\SQL01\\Virtual Hard Disks');
    assert.equal(sql.snapshotLocation.volumeId, sql.disks[0]!.volumeId);
  });

  it('a full: only the allocated blocks of the snapshot parent, as a qcow2 equal to it; checked at its end', async () => {
    const { provider, view, fake, host } = await prepared({ 'check-snapshot.ps1': 'check-snapshot-ok.json' });
    const dest = path.join(dir, 'disk-SCSI0_0.qcow2');
    const progress: Progress[] = [];
    const out = await provider.exportDisk(view, 'SCSI0:0', dest, (p) => progress.push(p), { copy: { mode: 'full' } });
    assert.deepEqual([out.format, out.virtualSize, out.bytesRead], ['qcow2', 8 * MiB, 5 * MiB]);
    img('compare', '-f', 'vhdx', '-F', 'qcow2', host, dest);
    assert.deepEqual(progress.at(-1), { done: 5 * MiB, total: 5 * MiB });
    assert.deepEqual(fake.calls.at(-1)!.params, { VmId: SQL, SnapshotId: SID, Paths: OS_BASE });
  });

  it('the snapshot removed during the copy (its merge wrote into the file being read): the copy is discarded', async () => {
    const { provider, view } = await prepared({ 'check-snapshot.ps1': 'check-snapshot-gone.json' });
    const dest = path.join(dir, 'disk.qcow2');
    await assert.rejects(
      provider.exportDisk(view, 'SCSI0:0', dest),
      (e: HyperVError) => e.code === 'inconsistent' && /removed during the copy/.test(e.message),
    );
    assert.equal(existsSync(dest), false);
  });

  it('the end check answered by another cluster node (the VM moved during the copy): the copy is discarded', async () => {
    const env = fixture('check-snapshot-ok.json');
    env.result.Host = 'HV02';
    const { provider, view } = await prepared({ 'check-snapshot.ps1': { stdout: stdoutOf(env), exitCode: 0 } });
    await assert.rejects(provider.exportDisk(view, 'SCSI0:0', path.join(dir, 'disk.qcow2')), /made on HV01, but HV02 answered/);
    assert.equal(existsSync(path.join(dir, 'disk.qcow2')), false);
  });

  it('the parent written during the copy (time of last write moved): the copy is discarded', async () => {
    const { provider, view } = await prepared({ 'check-snapshot.ps1': 'check-snapshot-changed.json' });
    await assert.rejects(provider.exportDisk(view, 'SCSI0:0', path.join(dir, 'disk.qcow2')), /changed during the copy/);
  });

  it('the VHDX header rewritten during the copy: discarded before even asking the host', async () => {
    const { provider, view, host, fake } = await prepared({ 'check-snapshot.ps1': 'check-snapshot-ok.json' });
    const runner = (
      provider as unknown as { runner: { openFile: (p: string) => Promise<import('../../../src/providers/hyperv/vhdx').RandomAccessFile> } }
    ).runner;
    const open = runner.openFile.bind(runner);
    runner.openFile = async (p: string) => {
      const f = await open(p);
      let reads = 0;
      return {
        ...f,
        size: f.size,
        read: async (o: number, l: number) => {
          // after the header, the BAT and the data: the file is written under us
          if (++reads === 6) io(host, 'write -P 0x77 4M 4k');
          return f.read(o, l);
        },
        close: () => f.close(),
      };
    };
    await assert.rejects(provider.exportDisk(view, 'SCSI0:0', path.join(dir, 'disk.qcow2')), /written while it was copied/);
    assert.equal(fake.calls.filter((c) => c.script === 'check-snapshot.ps1').length, 0);
  });

  it("an incremental: GetVirtualDiskChanges against the parent backup's RCT id; only those ranges, over the relative backing file", async () => {
    const { provider, view, fake, host } = await prepared({
      'check-snapshot.ps1': 'check-snapshot-ok.json',
      'rct-changes.ps1': 'rct-changes.json',
    });
    await fs.mkdir(path.join(dir, 'b1'));
    await fs.mkdir(path.join(dir, 'b2'));
    // the parent backup: the disk as it was
    const before = path.join(dir, 'before.vhdx');
    img('create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', before, '8M');
    io(before, 'write -P 0x61 0 3M');
    img('convert', '-q', '-f', 'vhdx', '-O', 'qcow2', before, path.join(dir, 'b1', 'disk-SCSI0_0.qcow2'));
    // since then (the RCT answer, fixture): 0-1M, 2-3M, 6-8M changed; the host file has 6-8M new
    const dest = path.join(dir, 'b2', 'disk-SCSI0_0.qcow2');
    const out = await provider.exportDisk(view, 'SCSI0:0', dest, undefined, {
      copy: { mode: 'incremental', backing: '../b1/disk-SCSI0_0.qcow2', since: 'vmbackup-20240314T021500Z-z9y8x7' },
    });
    const rct = fake.calls.find((c) => c.script === 'rct-changes.ps1')!;
    const osRct = fixture('enumerate-host.json').result.Vms.find((v: { VM: { Name: string } }) => v.VM.Name === 'SQL01').ReferencePoints[0]
      .ResilientChangeTrackingIdentifiers[0];
    assert.deepEqual(rct.params, { Path: OS_BASE, LimitId: osRct, Size: 8 * MiB, JobSeconds: 570 });
    assert.deepEqual([out.bytesChanged, out.bytesRead], [4 * MiB, 4 * MiB]);
    assert.equal(JSON.parse(img('info', '--output=json', dest))['backing-filename'], '../b1/disk-SCSI0_0.qcow2');
    img('compare', '-f', 'vhdx', '-F', 'qcow2', host, dest);
  });

  it('an incremental from a record this process does not know is refused before anything is read', async () => {
    const { provider, view } = await prepared({});
    await assert.rejects(
      provider.exportDisk(view, 'SCSI0:0', path.join(dir, 'x.qcow2'), undefined, {
        copy: { mode: 'incremental', backing: '../b1/x.qcow2', since: 'vmbackup-20200101T000000Z-aaaaaa' },
      }),
      /no reference point vmbackup-20200101T000000Z-aaaaaa/,
    );
  });

  it("release: the snapshot becomes this backup's reference point (ConvertToReferencePoint), named in our map", async () => {
    const { provider, view, fake } = await prepared({ 'reference-point.ps1': 'reference-point-convert.json' });
    await provider.releaseView(SQL, view);
    assert.deepEqual(
      fake.calls.at(-1)!.args,
      argv('reference-point.ps1', { Action: 'convert', VmId: SQL, SnapshotId: SID, RecordName: `vmbackup-${BACKUP}`, JobSeconds: 570 }),
    );
  });

  it('a VM without RCT (configuration 5.0, VHD, 2012 R2) or a backup that starts no record: release removes the snapshot', async () => {
    const s = setup({
      'enumerate.ps1': 'enumerate-host.json',
      'snapshot.ps1': 'snapshot-recovery.json',
      'remove-checkpoint.ps1': 'remove-checkpoint-merged.json',
    });
    await s.provider.enumerate();
    const vm = classified('SQL01', 'checkpoint');
    const made = (await s.provider.makeView(vm, s.provider.planView(vm, BACKUP), { frozen: false, chain: [] })).view;
    await s.provider.releaseView(SQL, made);
    assert.deepEqual(s.fake.calls.at(-1)!.params, { VmId: SQL, CheckpointId: SID, WaitSeconds: 570, AllowRecoveryType: true });
  });

  it("tracking.remove destroys exactly the named records (own on failure, the parent's after publish) and nothing else", async () => {
    const { provider, fake } = setup({ 'reference-point.ps1': 'reference-point-destroy.json' });
    await provider.tracking.remove(SQL, [
      { disk: 'SCSI0:0', name: `vmbackup-${BACKUP}` },
      { disk: 'SCSI0:1', name: `vmbackup-${BACKUP}` },
      { disk: 'SCSI0:1', name: 'not-ours' },
    ]);
    assert.deepEqual(
      fake.calls.map((c) => c.params),
      [{ Action: 'destroy', VmId: SQL, RecordNames: `vmbackup-${BACKUP}`, JobSeconds: 570 }],
    );
  });

  it("describe: the snapshot's .vmcx, .vmrs and .vmgs travel in definition.json, and a restore writes them back checked", async () => {
    const { provider, runner } = await prepared({ 'describe.ps1': 'describe.json' });
    const names = [
      '3F6E1C2A-9B84-4D7E-A5C1-7E2D0B9F4A63.vmcx',
      '3F6E1C2A-9B84-4D7E-A5C1-7E2D0B9F4A63.vmrs',
      '3F6E1C2A-9B84-4D7E-A5C1-7E2D0B9F4A63.vmgs',
    ];
    for (const [i, n] of names.entries()) {
      const local = path.join(dir, n);
      writeFileSync(local, Buffer.alloc(1000 + i, i + 1));
      runner.files.set(`D:\\Hyper-V\\SQL01\\Snapshots\\${n}`, local);
    }
    const d = JSON.parse(JSON.stringify(await provider.describe(SQL)));
    assert.deepEqual(
      d.vmFiles.map((f: { name: string; role: string; bytes: number }) => [f.name, f.role, f.bytes]),
      [
        [names[0], 'configuration', 1000],
        [names[1], 'runtime-state', 1001],
        [names[2], 'guest-state', 1002],
      ],
    );
    assert.deepEqual(d.snapshot, { id: SID, type: 'recovery', host: 'HV01' });
    const out = path.join(dir, 'restore');
    await fs.mkdir(out);
    const written = await extractVmFiles(d, out);
    assert.deepEqual(
      written.map((w) => readFileSync(w)),
      names.map((n) => readFileSync(path.join(dir, n))),
    );
    d.vmFiles[2].base64 = Buffer.from('tampered').toString('base64');
    await assert.rejects(extractVmFiles(d, path.join(dir, 'restore2')), /does not match/);
    d.vmFiles[0].name = '..\\..\\evil.vmcx';
    await assert.rejects(extractVmFiles(d, out), /not a configuration/);
  });

  it('refuses to copy a file that is not the parent of a snapshot it made', async () => {
    const { provider, view } = await prepared({});
    const forged = {
      ...view,
      ref: {
        ...view.ref,
        overlays: [{ disk: 'SCSI0:0', base: 'C:\\Windows\\System32\\config\\SAM', baseFormat: 'vhdx', overlay: 'x', overlayNode: SID }],
      },
    };
    await assert.rejects(
      provider.exportDisk(forged, 'SCSI0:0', path.join(dir, 'x')),
      (e: HyperVError) => e.code === 'invalid-argument' && /overlay\.base/.test(e.message),
    );
  });
});

describe('hyperv provider: options', () => {
  it('SSH mode needs ssh settings; the mode must be local or ssh; the timeout must be sane', () => {
    assert.throws(() => createHyperVProvider({ hostName: 'h', mode: 'ssh' }), /hyperv\.ssh/);
    assert.throws(() => createHyperVProvider({ hostName: 'h', mode: 'nfs' as 'ssh' }), /not local or ssh/);
    assert.throws(() => createHyperVProvider({ hostName: 'h', mode: 'local', timeoutMs: 5 }), /timeoutMs/);
    assert.throws(
      () => createHyperVProvider({ hostName: 'h', mode: 'ssh', ssh: { host: 'hv', username: 'u' } }),
      /password or ssh\.privateKey/,
    );
  });

  it('local mode starts nothing until asked', () => {
    const p = createHyperVProvider({ hostName: 'h', mode: 'local' });
    assert.equal(p.kind, 'hyperv');
  });
});
