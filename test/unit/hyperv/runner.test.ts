import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { HyperVError } from '../../../src/providers/hyperv/errors';
import {
  decodeArgs,
  encodeArgs,
  interpretRun,
  LocalPowerShellRunner,
  powershellArgs,
  readableStderr,
  type ScriptName,
} from '../../../src/providers/hyperv/runner';
import { b64, FakeSpawn, fixture, fixtureText, stdoutOf } from './helpers';

const VM = '4d1b2f0e-8a6c-4c57-9a1e-3f2b7c9d0e11';

describe('hyperv runner: arguments', () => {
  it('encodes the parameters as Base64 of UTF-8 JSON, alphabet A-Z a-z 0-9 + / =', () => {
    const params = {
      VmId: VM,
      SnapshotName: 'vmbackup-20240315T021500Z-a1b2c3',
      WaitSeconds: 570,
      AllowRecoveryType: true,
      Note: 'B\u00fcro "x" & \'y\' $(calc) ; `n -Force',
    };
    const enc = encodeArgs(params);
    assert.match(enc, /^[A-Za-z0-9+/]+={0,2}$/);
    assert.deepEqual(decodeArgs(enc), params);
    assert.equal(encodeArgs({}), 'e30=');
  });

  it('refuses names that are not plain words and values that are not scalars', () => {
    assert.throws(() => encodeArgs({ 'Vm Id': 'x' }), /not a plain name/);
    assert.throws(() => encodeArgs({ '-Force': 'x' }), /not a plain name/);
    assert.throws(() => encodeArgs({ A: { b: 1 } as unknown as string }), /string, number, boolean or null/);
  });

  it('builds the argument vector: fixed flags, -File <script>, -ArgsJson <base64>', () => {
    assert.deepEqual(powershellArgs('C:\\vm-backup\\scripts\\get-state.ps1', { VmId: VM }), [
      '-NoProfile',
      '-NonInteractive',
      '-ExecutionPolicy',
      'Bypass',
      '-File',
      'C:\\vm-backup\\scripts\\get-state.ps1',
      '-ArgsJson',
      b64({ VmId: VM }),
    ]);
  });
});

describe('hyperv runner: reading a script answer', () => {
  it('takes the last JSON envelope line, after WARNING lines', () => {
    const env = fixture('get-state-running.json');
    const result = interpretRun('get-state.ps1', {
      stdout: stdoutOf(env, ['The operation may take a while.']),
      stderr: '',
      exitCode: 0,
    }) as { State: string };
    assert.equal(result.State, 'Running');
  });

  it('turns the error envelope into a HyperVError carrying the cmdlet, category and id', () => {
    const env = fixture('checkpoint-productiononly-failed.json');
    try {
      interpretRun('checkpoint.ps1', { stdout: stdoutOf(env), stderr: '', exitCode: 1 });
      assert.fail('no error');
    } catch (err) {
      assert.ok(err instanceof HyperVError);
      assert.equal(err.code, 'script');
      assert.equal(err.cmdlet, 'Checkpoint-VM');
      assert.equal(err.category, 'NotSpecified');
      assert.equal(err.fullyQualifiedErrorId, 'OperationFailed,Microsoft.HyperV.PowerShell.Commands.CheckpointVM');
      assert.equal(err.exceptionType, 'Microsoft.HyperV.PowerShell.VirtualizationException');
      assert.equal(err.exitCode, 1);
      assert.match(err.message, /^checkpoint\.ps1: Checkpoint-VM: Checkpoint operation failed for 'SQL01'\./);
      assert.match(err.message, /Production checkpoints cannot be created for 'SQL01'/);
    }
  });

  it('reports a missing Hyper-V module as such', () => {
    assert.throws(
      () => interpretRun('enumerate.ps1', { stdout: stdoutOf(fixture('error-module-missing.json')), stderr: '', exitCode: 1 }),
      (err: HyperVError) =>
        err.code === 'script' &&
        err.fullyQualifiedErrorId === 'CommandNotFoundException' &&
        /Hyper-V\\Get-VM' is not recognized/.test(err.message),
    );
  });

  it('no JSON at all: the stderr text (execution policy) is the message', () => {
    assert.throws(
      () => interpretRun('enumerate.ps1', { stdout: '', stderr: fixtureText('stderr-execution-policy.txt'), exitCode: 1 }),
      (err: HyperVError) => err.code === 'spawn' && /running scripts is disabled on this system/.test(err.message) && err.exitCode === 1,
    );
  });

  it('decodes CLIXML on stderr', () => {
    const text = readableStderr(fixtureText('stderr-clixml.txt'));
    assert.match(
      text,
      /^At C:\\vm-backup\\enumerate\.ps1:12 char:5\r\n\+ \$a = Read-VmbArgs \$ArgsJson && x\r\nThe token '&&' is not a valid/,
    );
  });

  it('a result envelope with a failing exit code, or an envelope without result, is a protocol error', () => {
    assert.throws(
      () => interpretRun('get-state.ps1', { stdout: stdoutOf(fixture('get-state-running.json')), stderr: '', exitCode: 3 }),
      (e: HyperVError) => e.code === 'protocol',
    );
    assert.throws(
      () => interpretRun('get-state.ps1', { stdout: '{"error":"x"}\n{"warnings":[]}', stderr: '', exitCode: 0 }),
      (e: HyperVError) => e.code === 'protocol' && /neither result nor error/.test(e.message),
    );
    assert.throws(
      () => interpretRun('get-state.ps1', { stdout: '{"warnings":[]}', stderr: '', exitCode: 0 }),
      (e: HyperVError) => e.code === 'spawn',
    );
  });
});

describe('hyperv runner: local powershell.exe', () => {
  it('spawns powershell.exe with the exact argument vector, no shell, hidden window', async () => {
    const fake = FakeSpawn.byScript({ 'get-state.ps1': 'get-state-running.json' });
    const runner = new LocalPowerShellRunner({ scriptsDir: '/opt/vm-backup/scripts', spawn: fake.spawn });
    const result = (await runner.run('get-state.ps1', { VmId: VM })) as { State: string };
    assert.equal(result.State, 'Running');
    assert.equal(fake.calls.length, 1);
    const call = fake.calls[0]!;
    assert.equal(call.command, 'powershell.exe');
    assert.deepEqual(call.args, [
      '-NoProfile',
      '-NonInteractive',
      '-ExecutionPolicy',
      'Bypass',
      '-File',
      path.join('/opt/vm-backup/scripts', 'get-state.ps1'),
      '-ArgsJson',
      b64({ VmId: VM }),
    ]);
    assert.equal(call.options.shell, false);
    assert.equal(call.options.windowsHide, true);
    assert.deepEqual(runner.argv('get-state.ps1', { VmId: VM }), [call.command, ...call.args]);
  });

  it('honours the powershell option (e.g. a full path)', async () => {
    const fake = FakeSpawn.byScript({ 'get-state.ps1': 'get-state-running.json' });
    const runner = new LocalPowerShellRunner({
      powershell: 'C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe',
      scriptsDir: '/s',
      spawn: fake.spawn,
    });
    await runner.run('get-state.ps1', { VmId: VM });
    assert.equal(fake.calls[0]!.command, 'C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe');
  });

  it('refuses scripts that are not shipped', async () => {
    const fake = FakeSpawn.byScript({});
    const runner = new LocalPowerShellRunner({ scriptsDir: '/s', spawn: fake.spawn });
    await assert.rejects(runner.run('../../evil.ps1' as ScriptName, {}), /unknown script/);
    assert.equal(fake.calls.length, 0);
  });

  it('stops powershell.exe at the timeout', async () => {
    const fake = FakeSpawn.byScript({ 'enumerate.ps1': { hang: true } });
    const runner = new LocalPowerShellRunner({ scriptsDir: '/s', spawn: fake.spawn });
    await assert.rejects(
      runner.run('enumerate.ps1', {}, { timeoutMs: 30 }),
      (e: HyperVError) => e.code === 'timeout' && /within 30 ms/.test(e.message),
    );
    assert.equal(fake.killed, 1);
  });

  it('explains a missing powershell.exe (local mode off the Hyper-V host)', async () => {
    const fake = FakeSpawn.byScript({ 'enumerate.ps1': { errorCode: 'ENOENT' } });
    const runner = new LocalPowerShellRunner({ scriptsDir: '/s', spawn: fake.spawn });
    await assert.rejects(
      runner.run('enumerate.ps1', {}),
      (e: HyperVError) => e.code === 'spawn' && /runs on the Hyper-V host itself/.test(e.message),
    );
  });

  it('runs at most `concurrency` PowerShell processes at once', async () => {
    const fake = FakeSpawn.byScript({ 'get-state.ps1': 'get-state-running.json' });
    const runner = new LocalPowerShellRunner({ scriptsDir: '/s', spawn: fake.spawn, concurrency: 2 });
    await Promise.all(Array.from({ length: 7 }, () => runner.run('get-state.ps1', { VmId: VM })));
    assert.equal(fake.calls.length, 7);
    assert.equal(fake.maxActive, 2);
  });

  it('refuses new runs once closed', async () => {
    const fake = FakeSpawn.byScript({ 'get-state.ps1': 'get-state-running.json' });
    const runner = new LocalPowerShellRunner({ scriptsDir: '/s', spawn: fake.spawn });
    await runner.close();
    await assert.rejects(runner.run('get-state.ps1', { VmId: VM }), /closed/);
  });

  it('copies a host file locally, streaming, with progress, never over an existing file', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'hv-copy-'));
    try {
      const src = path.join(dir, 'disk.vhdx');
      const data = Buffer.alloc(3 * 1024 * 1024 + 17, 7);
      writeFileSync(src, data);
      const progress: { done: number; total: number }[] = [];
      const runner = new LocalPowerShellRunner({ scriptsDir: '/s', spawn: FakeSpawn.byScript({}).spawn });
      const dest = path.join(dir, 'copy.vhdx');
      const { bytes } = await runner.fetchFile(src, dest, (p) => progress.push(p));
      assert.equal(bytes, data.length);
      assert.deepEqual(readFileSync(dest), data);
      assert.deepEqual(progress[0], { done: 0, total: data.length });
      assert.deepEqual(progress.at(-1), { done: data.length, total: data.length });
      await assert.rejects(runner.fetchFile(src, dest), /EEXIST/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
