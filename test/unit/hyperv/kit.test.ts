// The conformance kit (src/providers/hyperv/scripts/kit/vmb-kit.ps1): its step table, and its dry
// run here (kit.ts with DryRunner: nothing executed, each script answered from the recorded
// fixtures, whose outputs the provider's parser then reads). What this proves: the table runs
// every operation the provider uses (the exceptions named), in an order whose templates resolve
// against outputs shaped like a host's, read-only unless a test VM is named, cleaning up after a
// failure, writing files in the shape the tests load. What it cannot prove: that the PowerShell
// code of vmb-kit.ps1 itself runs (no PowerShell here); that is checked only statically.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { HOST_SCRIPTS, POWERSHELL_FLAGS } from '../../../src/providers/hyperv';
import { answerFileFor } from '../../../src/providers/hyperv/kit/answers';
import { DryRunner, readKitSteps, runKit } from '../../../src/providers/hyperv/kit/kit';
import { mapEnumeration } from '../../../src/providers/hyperv/parse';
import { FIXTURES, SCRIPTS, repoRoot } from './helpers';

const KIT = path.join(SCRIPTS, 'kit', 'vmb-kit.ps1');
const text = readFileSync(KIT, 'utf8');
const steps = readKitSteps(text);
const CHANGING = new Set([
  'snapshot.ps1',
  'reference-point.ps1',
  'remove-checkpoint.ps1',
  'save-vm.ps1',
  'start-vm.ps1',
  'checkpoint.ps1',
  'resume-vm.ps1',
  'suspend-vm.ps1',
]);
/** what the kit does not run, and why (also said in docs/hyperv.md) */
const NOT_RUN = ['checkpoint.ps1' /* Windows Server 2012 R2 only */, 'resume-vm.ps1', 'suspend-vm.ps1' /* a paused VM's return */];
const STAMP = '20240315T021500Z';

const dry = (answers = FIXTURES) => new DryRunner((script, params) => answerFileFor(answers, script, params));

describe('hyperv conformance kit', () => {
  let out: string;
  beforeEach(() => {
    out = mkdtempSync(path.join(tmpdir(), 'hv-kit-'));
  });
  afterEach(() => rmSync(out, { recursive: true, force: true }));

  it('its table runs every script the provider uses but the named exceptions; the changing ones only for a test VM', () => {
    const used = new Set(steps.map((s) => s.script));
    assert.deepEqual(
      HOST_SCRIPTS.filter((s) => !used.has(s)),
      NOT_RUN,
    );
    for (const s of steps) if (CHANGING.has(s.script)) assert.equal(s.changes, true, `${s.id} changes the VM but is not marked so`);
  });

  it('read-only (the default): enumerate, recovery checkpoints, state and definition of every VM; nothing that changes anything', async () => {
    const runner = dry();
    const runs = await runKit({ runner, steps, outDir: out, stamp: STAMP });
    assert.ok(runs.every((r) => r.ok));
    assert.ok(!runner.calls.some((c) => CHANGING.has(c.script)));
    assert.deepEqual(
      [...new Set(runner.calls.map((c) => c.script))],
      ['enumerate.ps1', 'find-recovery-checkpoints.ps1', 'get-state.ps1', 'describe.ps1'],
    );
    assert.equal(runner.calls.filter((c) => c.script === 'describe.ps1').length, 7, 'one per VM');
    // what it wrote is what the provider's parser reads
    const written = JSON.parse(readFileSync(path.join(out, 'enumerate.json'), 'utf8'));
    assert.equal(mapEnumeration(written.result).length, 7);
    assert.ok(readdirSync(out).includes('describe-B_ro-DC.json'), 'a VM name with non-ASCII characters makes a plain file name');
    assert.deepEqual(JSON.parse(readFileSync(path.join(out, 'steps.json'), 'utf8')).length, runs.length);
  });

  it('a test VM: snapshots, the end check, reference points, RCT changes per disk, removal, save and start, all cleaned up', async () => {
    const runner = dry();
    const runs = await runKit({ runner, steps, testVm: 'SQL01', allowDowntime: true, outDir: out, stamp: STAMP });
    assert.ok(
      runs.every((r) => r.ok),
      JSON.stringify(runs.filter((r) => !r.ok)),
    );
    const SQL = '4d1b2f0e-8a6c-4c57-9a1e-3f2b7c9d0e11';
    const byId = new Map(runs.map((r) => [r.id, r.args]));
    assert.deepEqual(byId.get('snapshot-crash'), {
      VmId: SQL,
      SnapshotName: `vmbackup-${STAMP}-kit001`,
      ConsistencyLevel: 'Crash',
      WaitSeconds: 120,
      JobSeconds: 600,
    });
    assert.deepEqual(byId.get('check-snapshot'), {
      VmId: SQL,
      SnapshotId: '3f6e1c2a-9b84-4d7e-a5c1-7e2d0b9f4a63',
      Paths: 'D:\\Hyper-V\\SQL01\\Virtual Hard Disks\\SQL01-os.vhdx|D:\\Hyper-V\\SQL01\\Virtual Hard Disks\\SQL01-data.vhdx',
    });
    assert.deepEqual(
      runs.filter((r) => r.script === 'rct-changes.ps1').map((r) => [r.id, r.args.Path, r.args.RecordName]),
      [
        ['rct-changes-0', 'D:\\Hyper-V\\SQL01\\Virtual Hard Disks\\SQL01-os.vhdx', `vmbackup-${STAMP}-kit001`],
        ['rct-changes-1', 'D:\\Hyper-V\\SQL01\\Virtual Hard Disks\\SQL01-data.vhdx', `vmbackup-${STAMP}-kit001`],
      ],
    );
    assert.equal(byId.get('reference-point-destroy')!.RecordNames, `vmbackup-${STAMP}-kit001|vmbackup-${STAMP}-kit002`);
    const used = new Set(runner.calls.map((c) => c.script));
    assert.deepEqual(
      HOST_SCRIPTS.filter((s) => !used.has(s)),
      NOT_RUN,
    );
    // without -AllowDowntime: no Save-VM
    const quiet = dry();
    await runKit({ runner: quiet, steps, testVm: 'SQL01', stamp: STAMP });
    assert.ok(!quiet.calls.some((c) => c.script === 'save-vm.ps1'));
  });

  it('a failing snapshot: the remaining steps are skipped, the snapshot is removed by name, the reference points destroyed', async () => {
    const failing = new DryRunner((script, params) =>
      script === 'snapshot.ps1' ? path.join(FIXTURES, 'snapshot-app-consistent-failed-de.json') : answerFileFor(FIXTURES, script, params),
    );
    const runs = await runKit({ runner: failing, steps, testVm: 'SQL01', stamp: STAMP });
    assert.deepEqual(
      runs.filter((r) => !/^(get-state|describe)-/.test(r.id)).map((r) => [r.id, r.ok]),
      [
        ['enumerate', true],
        ['find-recovery-checkpoints', true],
        ['snapshot-crash', false],
        [`cleanup-vmbackup-${STAMP}-kit001`, true],
        ['reference-point-destroy', true],
        ['find-recovery-checkpoints-after', true],
      ],
    );
    assert.match(runs.find((r) => r.id === 'snapshot-crash')!.error!, /error code 32768/);
    assert.deepEqual(failing.calls.find((c) => c.script === 'remove-checkpoint.ps1')!.params, {
      VmId: '4d1b2f0e-8a6c-4c57-9a1e-3f2b7c9d0e11',
      SnapshotName: `vmbackup-${STAMP}-kit001`,
      WaitSeconds: 120,
    });
  });

  it('a step failing after its snapshot answered: that snapshot is removed by its exact Id', async () => {
    const failing = new DryRunner((script, params) =>
      script === 'check-snapshot.ps1' ? path.join(FIXTURES, 'snapshot-moved.json') : answerFileFor(FIXTURES, script, params),
    );
    await runKit({ runner: failing, steps, testVm: 'SQL01', stamp: STAMP });
    assert.deepEqual(failing.calls.find((c) => c.script === 'remove-checkpoint.ps1')!.params, {
      VmId: '4d1b2f0e-8a6c-4c57-9a1e-3f2b7c9d0e11',
      CheckpointId: '3f6e1c2a-9b84-4d7e-a5c1-7e2d0b9f4a63',
      AllowRecoveryType: true,
      WaitSeconds: 120,
    });
  });

  it('a test VM that is not on the host is refused before anything changes', async () => {
    const runner = dry();
    const runs = await runKit({ runner, steps, testVm: 'NOPE', stamp: STAMP });
    assert.deepEqual(
      [...new Set(runner.calls.map((c) => c.script))],
      ['enumerate.ps1', 'find-recovery-checkpoints.ps1', 'get-state.ps1', 'describe.ps1'],
    );
    assert.ok(
      runs.every((r) => r.ok),
      "the refusal is the kit's own, before any changing step ran",
    );
  });

  it("vmb-kit.ps1: the provider's own flags, -File and -ArgsJson; changes only with -AllowChanges, downtime only with -AllowDowntime", () => {
    assert.ok(text.includes(`& powershell.exe ${POWERSHELL_FLAGS.join(' ')} -File (Join-Path $ScriptsDir $Step.script) -ArgsJson $b64`));
    assert.match(text, /if \(\$TestVm -and -not \$AllowChanges\) \{ throw/);
    assert.match(text, /if \(\$step\.changes -and -not \$TestVm\) \{ continue \}/);
    assert.match(text, /if \(\$step\.downtime -and -not \$AllowDowntime\) \{ continue \}/);
    assert.match(text, /if \(\$DryRun\) \{ return \$null \}/, 'the dry run returns before starting anything');
    assert.doesNotMatch(text, /Invoke-Expression|\biex\b|Remove-Item -Recurse/i);
  });

  it('the dry run from the command line: every step printed with its arguments, the changing ones marked; nothing executed', () => {
    const cli = path.join(repoRoot(), 'dist', 'src', 'providers', 'hyperv', 'kit', 'cli.js');
    const stdout = execFileSync(process.execPath, [cli, '--answers', FIXTURES, '--test-vm', 'SQL01', '--out', out], { encoding: 'utf8' });
    assert.match(stdout, /^snapshot-crash\s+snapshot\.ps1\s+\{"VmId":"4d1b2f0e-8a6c-4c57-9a1e-3f2b7c9d0e11".*\(changes the test VM\)$/m);
    assert.match(stdout, /steps, 0 failed; written to .* \(dry run: nothing was executed\)/);
    assert.ok(readdirSync(out).includes('reference-point-convert-2.json'));
  });
});
