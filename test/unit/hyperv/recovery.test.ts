import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { openHost } from '../../../src/host/open-host';
import type { HostConfig } from '../../../src/host/settings';
import { createProvider } from '../../../src/providers';
import {
  createHyperVProvider,
  findRecoveryCheckpoints,
  HyperVProvider,
  LocalPowerShellRunner,
  removeLeftoverCheckpoints,
} from '../../../src/providers/hyperv';
import { b64, FakeSpawn, fixture, stdoutOf } from './helpers';

const SCRIPTS_DIR = '/opt/vm-backup/scripts';
const WEB = '0badf00d-3333-4ccc-addd-2e2f30313255';
const SQL = '4d1b2f0e-8a6c-4c57-9a1e-3f2b7c9d0e11';
const argv = (script: string, params: Record<string, unknown>) => [
  '-NoProfile',
  '-NonInteractive',
  '-ExecutionPolicy',
  'Bypass',
  '-File',
  path.join(SCRIPTS_DIR, script),
  '-ArgsJson',
  b64(params),
];

function runnerWith(removeAnswer: (params: Record<string, unknown>) => string = () => 'remove-checkpoint-merged.json') {
  const fake = new FakeSpawn((script, params) => {
    const name = script === 'find-recovery-checkpoints.ps1' ? 'find-recovery-checkpoints.json' : removeAnswer(params);
    const env = fixture(name) as { error?: unknown };
    return { stdout: stdoutOf(env), exitCode: env.error ? 1 : 0 };
  });
  return { fake, runner: new LocalPowerShellRunner({ scriptsDir: SCRIPTS_DIR, spawn: fake.spawn }) };
}

describe('hyperv recovery: leftover checkpoints', () => {
  it('finds vmbackup-* and Recovery checkpoints on every VM (read-only)', async () => {
    const { fake, runner } = runnerWith();
    const found = await findRecoveryCheckpoints(runner);
    assert.deepEqual(
      fake.calls.map((c) => c.args),
      [argv('find-recovery-checkpoints.ps1', {})],
    );
    assert.deepEqual(
      found.map((c) => [c.vmName, c.name, c.kind]),
      [
        ['WEB03', 'vmbackup-20240301T020000Z-k3j9x2', 'vmbackup'],
        ['SQL01', 'SQL01 - Backup - (03/14/2024 - 22:00:12)', 'recovery'],
        ['SQL01', 'vmbackup-20240315T021500Z-a1b2c3', 'vmbackup'],
      ],
    );
    assert.equal(found[1]!.creationTime, '2024-03-14T22:00:12.000Z', 'a \\/Date()\\/ value');
    assert.equal(found[0]!.creationTime, '2024-03-01T02:00:07.512Z');
  });

  it('one VM only', async () => {
    const { fake, runner } = runnerWith();
    await findRecoveryCheckpoints(runner, { vmId: SQL });
    assert.deepEqual(fake.calls[0]!.args, argv('find-recovery-checkpoints.ps1', { VmId: SQL }));
    await assert.rejects(findRecoveryCheckpoints(runner, { vmId: 'SQL01' }), /not a GUID/);
  });

  it('removes ours with Remove-VMCheckpoint by Id; leaves Recovery checkpoints unless asked', async () => {
    const { fake, runner } = runnerWith();
    const result = await removeLeftoverCheckpoints(runner);
    assert.deepEqual(
      fake.calls.slice(1).map((c) => c.args),
      [
        argv('remove-checkpoint.ps1', { VmId: WEB, CheckpointId: '22222222-aaaa-4bbb-8ccc-eeeeeeeeeeee', WaitSeconds: 0 }),
        argv('remove-checkpoint.ps1', { VmId: SQL, CheckpointId: '44444444-aaaa-4bbb-8ccc-000000000000', WaitSeconds: 0 }),
      ],
    );
    assert.deepEqual(
      result.removed.map((c) => c.id),
      ['22222222-aaaa-4bbb-8ccc-eeeeeeeeeeee', '44444444-aaaa-4bbb-8ccc-000000000000'],
    );
    assert.deepEqual(
      result.skipped.map((c) => c.kind),
      ['recovery'],
    );
    assert.deepEqual(result.errors, []);
  });

  it('includeRecoveryType also removes Recovery checkpoints (the script allows it only when told)', async () => {
    const { fake, runner } = runnerWith();
    const result = await removeLeftoverCheckpoints(runner, { includeRecoveryType: true, waitSeconds: 60 });
    assert.equal(result.removed.length, 3);
    assert.deepEqual(fake.calls[2]!.params, {
      VmId: SQL,
      CheckpointId: '33333333-aaaa-4bbb-8ccc-ffffffffffff',
      WaitSeconds: 60,
      AllowRecoveryType: true,
    });
  });

  it('skips excluded ids, and one failure does not stop the others', async () => {
    const { runner } = runnerWith((p) => (p.VmId === WEB ? 'remove-checkpoint-refused.json' : 'remove-checkpoint-merged.json'));
    const result = await removeLeftoverCheckpoints(runner, { exclude: ['44444444-AAAA-4bbb-8ccc-000000000000'] });
    assert.deepEqual(result.removed, []);
    assert.deepEqual(
      result.skipped.map((c) => c.id),
      ['33333333-aaaa-4bbb-8ccc-ffffffffffff', '44444444-aaaa-4bbb-8ccc-000000000000'],
    );
    assert.equal(result.errors.length, 1);
    assert.match(result.errors[0]!.message, /not a vmbackup-\* checkpoint/);
  });
});

describe('hyperv recovery: through the provider', () => {
  it('HyperVProvider.removeLeftoverCheckpoints uses its own runner', async () => {
    const { fake, runner } = runnerWith();
    const provider = createHyperVProvider({ hostName: 'HV01', mode: 'local', runner });
    assert.ok(provider instanceof HyperVProvider);
    const result = await provider.removeLeftoverCheckpoints();
    assert.equal(result.removed.length, 2);
    assert.equal(fake.calls.length, 3);
  });
});

describe('hyperv recovery at start: openHost removes the leftover checkpoints', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'vmb-hv-open-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('two vmbackup-* checkpoints no journal names are removed by id, listed as leftover actions and in the report', async () => {
    const { fake, runner } = runnerWith();
    const config: HostConfig = { provider: 'hyperv', hostName: 'hv', hvMode: 'local', repository: path.join(dir, 'repo') };
    // the registry itself builds the provider from the settings; only the transport is the fake
    const opened = await openHost(config, {}, dir, undefined, undefined, (pc) =>
      createProvider({ ...pc, hyperv: { ...pc.hyperv!, runner } }),
    );
    try {
      assert.deepEqual(
        fake.calls.map((c) => c.script),
        ['find-recovery-checkpoints.ps1', 'remove-checkpoint.ps1', 'remove-checkpoint.ps1'],
      );
      assert.deepEqual(
        fake.calls.slice(1).map((c) => [c.params.VmId, c.params.CheckpointId]),
        [
          [WEB, '22222222-aaaa-4bbb-8ccc-eeeeeeeeeeee'],
          [SQL, '44444444-aaaa-4bbb-8ccc-000000000000'],
        ],
        'Remove-VMCheckpoint by the ids of ours; the Recovery checkpoint is left alone',
      );
      const leftovers = opened.actions.filter((a) => a.kind === 'leftover');
      assert.deepEqual(
        leftovers.map((a) => [a.ok, a.detail]),
        [
          [true, 'removed leftover checkpoint vmbackup-20240301T020000Z-k3j9x2 of VM WEB03'],
          [true, 'removed leftover checkpoint vmbackup-20240315T021500Z-a1b2c3 of VM SQL01'],
        ],
      );
      assert.ok(opened.report, 'recovery did something, so there is a report');
      assert.equal(opened.report.ok, true);
      assert.match(
        opened.report.text,
        /^recovery on host hv after an interrupted backup: .*removed leftover checkpoint vmbackup-20240301T020000Z-k3j9x2 of VM WEB03; removed leftover checkpoint vmbackup-20240315T021500Z-a1b2c3 of VM SQL01/,
      );
    } finally {
      await opened.host.provider.close();
      opened.host.journal.close();
    }
  });
});
