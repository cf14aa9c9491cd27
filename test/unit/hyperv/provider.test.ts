import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import type { ClassifiedVm } from '../../../src/contract/types';
import type { HyperVProvider } from '../../../src/providers/hyperv/provider';
import type { Overlay } from '../../../src/providers/hyperv/parse';
import type { Progress } from '../../../src/providers/provider';
import { createHyperVProvider, HyperVError, LocalPowerShellRunner } from '../../../src/providers/hyperv';
import { mapEnumeration } from '../../../src/providers/hyperv/parse';
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

const CHECKPOINT_PARAMS = (type: string) => ({ VmId: SQL, SnapshotName: `vmbackup-${BACKUP}`, CheckpointType: type, WaitSeconds: 300 });

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

describe('hyperv provider: snapshot', () => {
  it('child-vm-snapshot: a ProductionOnly checkpoint named vmbackup-<backupId>; one overlay per included disk', async () => {
    const { fake, provider } = setup({ 'checkpoint.ps1': 'checkpoint-production.json' });
    const overlays = await provider.snapshot(classified('SQL01', 'child-vm-snapshot'), BACKUP);
    assert.deepEqual(
      fake.calls.map((c) => c.args),
      [argv('checkpoint.ps1', CHECKPOINT_PARAMS('ProductionOnly'))],
    );
    assert.deepEqual(
      overlays.map((o) => [o.disk, o.base, o.baseFormat, o.overlayNode]),
      [
        ['SCSI0:0', OS_BASE, 'vhdx', CP],
        ['SCSI0:1', DATA_BASE, 'vhdx', CP],
      ],
    );
    assert.ok(overlays.every((o) => o.overlay.endsWith('_9C8B7A65-4321-4FED-8CBA-0123456789AB.avhdx')));
  });

  for (const method of ['checkpoint', 'saved-state', 'offline'] as const) {
    it(`${method}: a Standard checkpoint`, async () => {
      const { fake, provider } = setup({ 'checkpoint.ps1': 'checkpoint-production.json' });
      await provider.snapshot(classified('SQL01', method), BACKUP);
      assert.deepEqual(fake.calls[0]!.args, argv('checkpoint.ps1', CHECKPOINT_PARAMS('Standard')));
    });
  }

  it('the merge waits follow timeoutMs (half of it before a checkpoint, all but 30 s when removing one)', async () => {
    const { fake, provider } = setup(
      { 'checkpoint.ps1': 'checkpoint-production.json', 'remove-checkpoint.ps1': 'remove-checkpoint-merged.json' },
      120_000,
    );
    const overlays = await provider.snapshot(classified('SQL01', 'child-vm-snapshot'), BACKUP);
    await provider.merge(SQL, overlays);
    assert.deepEqual(
      fake.calls.map((c) => c.params.WaitSeconds),
      [60, 90],
    );
  });

  it('a guest that cannot quiesce fails the production checkpoint: HyperVError from Checkpoint-VM, nothing else run', async () => {
    const { fake, provider } = setup({ 'checkpoint.ps1': 'checkpoint-productiononly-failed.json' });
    await assert.rejects(
      provider.snapshot(classified('SQL01', 'child-vm-snapshot'), BACKUP),
      (e: HyperVError) =>
        e.code === 'script' && e.cmdlet === 'Checkpoint-VM' && /Production checkpoints cannot be created for 'SQL01'/.test(e.message),
    );
    assert.equal(fake.calls.length, 1);
  });

  it('a VM still merging an earlier checkpoint: the script gives up with a clear error', async () => {
    const { provider } = setup({ 'checkpoint.ps1': 'checkpoint-still-merging.json' });
    await assert.rejects(provider.snapshot(classified('SQL01', 'checkpoint'), BACKUP), /still merging disks/);
  });

  it('a checkpoint that left a disk on its parent is removed again at once (all or nothing)', async () => {
    const { fake, provider } = setup({
      'checkpoint.ps1': 'checkpoint-no-differencing.json',
      'remove-checkpoint.ps1': 'remove-checkpoint-merged.json',
    });
    await assert.rejects(
      provider.snapshot(classified('SQL01', 'child-vm-snapshot'), BACKUP),
      (e: HyperVError) => e.code === 'inconsistent',
    );
    assert.deepEqual(
      fake.calls.map((c) => c.args),
      [
        argv('checkpoint.ps1', CHECKPOINT_PARAMS('ProductionOnly')),
        argv('remove-checkpoint.ps1', { VmId: SQL, SnapshotName: `vmbackup-${BACKUP}`, WaitSeconds: 0 }),
      ],
    );
  });

  it('a CheckpointType that could not be restored fails the snapshot and names the fix', async () => {
    const { fake, provider } = setup({
      'checkpoint.ps1': 'checkpoint-restore-failed.json',
      'remove-checkpoint.ps1': 'remove-checkpoint-merged.json',
    });
    await assert.rejects(
      provider.snapshot(classified('SQL01', 'child-vm-snapshot'), BACKUP),
      /still ProductionOnly\. Set it back with Set-VM -CheckpointType/,
    );
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

  it('a VM with only excluded disks (pass-through) gets no checkpoint', async () => {
    const { fake, provider } = setup({});
    const vm = classified('FILESRV', 'checkpoint');
    const onlyPassThrough = { ...vm, disks: vm.disks.filter((d) => !d.included) };
    assert.deepEqual(await provider.snapshot(onlyPassThrough, BACKUP), []);
    assert.equal(fake.calls.length, 0);
  });
});

describe('hyperv provider: merge', () => {
  async function snapshotted() {
    const s = setup({
      'checkpoint.ps1': 'checkpoint-production.json',
      'remove-checkpoint.ps1': ['remove-checkpoint-merged.json', 'remove-checkpoint-already-removed.json'],
    });
    const overlays = await s.provider.snapshot(classified('SQL01', 'child-vm-snapshot'), BACKUP);
    return { ...s, overlays };
  }

  it('removes the checkpoint once by its Id (Remove-VMCheckpoint), whatever the number of disks', async () => {
    const { fake, provider, overlays } = await snapshotted();
    await provider.merge(SQL, overlays);
    assert.deepEqual(
      fake.calls.slice(1).map((c) => c.args),
      [argv('remove-checkpoint.ps1', { VmId: SQL, CheckpointId: CP, WaitSeconds: 570 })],
    );
  });

  it('is safe twice (already removed)', async () => {
    const { fake, provider, overlays } = await snapshotted();
    await provider.merge(SQL, overlays);
    await provider.merge(SQL, overlays);
    assert.equal(fake.calls.filter((c) => c.script === 'remove-checkpoint.ps1').length, 2);
  });

  it('a merge still running after the wait is not an error (Hyper-V finishes it by itself)', async () => {
    const { provider } = setup({ 'remove-checkpoint.ps1': 'remove-checkpoint-merge-pending.json' });
    const overlays: Overlay[] = [{ disk: 'SCSI0:0', base: OS_BASE, baseFormat: 'vhdx', overlay: 'D:\\x.avhdx', overlayNode: CP }];
    await provider.merge(SQL, overlays);
  });

  it('overlays that were only planned (snapshot failed, process died) are removed by checkpoint name', async () => {
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

  it('after a snapshot that timed out, merge still knows the checkpoint name', async () => {
    const { fake, provider } = setup({ 'checkpoint.ps1': { hang: true }, 'remove-checkpoint.ps1': 'remove-checkpoint-merged.json' }, 1000);
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

  it('saveState: Save-VM, a JSON reference to the .vmrs written to `file`, its size returned', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'hv-save-'));
    try {
      const { fake, provider } = setup({ 'save-vm.ps1': 'save-vm.json' });
      const file = path.join(dir, 'staging', 'state.vmstate');
      const { bytes } = await provider.saveState(classified('APP02', 'saved-state'), file);
      assert.equal(bytes, 4328521728);
      assert.deepEqual(fake.calls[0]!.args, argv('save-vm.ps1', { VmId: APP }));
      const ref = JSON.parse(readFileSync(file, 'utf8'));
      assert.equal(ref.format, 'vm-backup-hyperv-saved-state@1');
      assert.equal(ref.stateBefore, 'running');
      assert.equal(ref.state, 'saved');
      assert.deepEqual(ref.files, [
        { path: 'D:\\Hyper-V\\APP02\\Virtual Machines\\7E3C1A22-5B4D-4E8F-8C2A-1D9E0F3B4A22.vmrs', bytes: 4328521728 },
      ]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
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

describe('hyperv provider: exportDisk', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'hv-export-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  async function prepared(content: Buffer) {
    const s = setup({ 'enumerate.ps1': 'enumerate-host.json', 'checkpoint.ps1': 'checkpoint-production.json' });
    await s.provider.enumerate();
    const overlays = await s.provider.snapshot(classified('SQL01', 'child-vm-snapshot'), BACKUP);
    const local = path.join(dir, 'host-os.vhdx');
    writeFileSync(local, content);
    s.runner.files.set(OS_BASE, local);
    return { ...s, overlay: overlays[0]! };
  }

  it('copies the parent VHDX to dest with progress; format and virtual size reported', async () => {
    const content = Buffer.concat([Buffer.from('vhdxfile'), Buffer.alloc(2 * 1024 * 1024, 1)]);
    const { provider, overlay } = await prepared(content);
    const dest = path.join(dir, 'disk-SCSI0_0.vhdx');
    const progress: Progress[] = [];
    const out = await provider.exportOverlay(overlay, dest, (p) => progress.push(p));
    assert.deepEqual(out, { path: dest, bytes: content.length, format: 'vhdx', virtualSize: 127 * 2 ** 30 });
    assert.deepEqual(readFileSync(dest), content);
    assert.deepEqual(progress.at(-1), { done: content.length, total: content.length });
    assert.deepEqual(readdirSync(dir).sort(), ['disk-SCSI0_0.vhdx', 'host-os.vhdx']);
  });

  it('refuses a copy that is not a VHDX, leaving nothing at dest', async () => {
    const { provider, overlay } = await prepared(Buffer.from('MZ this is not a disk'));
    const dest = path.join(dir, 'disk.vhdx');
    await assert.rejects(
      provider.exportOverlay(overlay, dest),
      (e: HyperVError) => e.code === 'inconsistent' && /vhdxfile/.test(e.message),
    );
    assert.equal(existsSync(dest), false);
    assert.deepEqual(readdirSync(dir), ['host-os.vhdx']);
  });

  it('refuses to copy a file that is not the parent of a checkpoint it made', async () => {
    const { provider, overlay } = await prepared(Buffer.from('vhdxfile'));
    await assert.rejects(
      provider.exportOverlay({ ...overlay, base: 'C:\\Windows\\System32\\config\\SAM' }, path.join(dir, 'x')),
      (e: HyperVError) => e.code === 'invalid-argument' && /overlay\.base/.test(e.message),
    );
    await provider.merge(SQL, [overlay]).catch(() => undefined);
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
