import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { createHyperVProvider } from '../../../src/providers/hyperv';
import { HyperVError } from '../../../src/providers/hyperv/errors';
import { SCRIPT_FILES } from '../../../src/providers/hyperv/runner';
import {
  sftpToWindowsPath,
  SshPowerShellRunner,
  sshCommandLine,
  sshFingerprint,
  windowsToSftpPath,
} from '../../../src/providers/hyperv/ssh-runner';
import { b64, FakeSsh, fixture, SCRIPTS, stdoutOf } from './helpers';

const SQL = '4d1b2f0e-8a6c-4c57-9a1e-3f2b7c9d0e11';
const target = { host: 'hv01.corp.example', username: 'backup', password: 'pw' };

describe('hyperv ssh: command line and paths', () => {
  it('is a bare program, the fixed flags, one double-quoted script path, and Base64', () => {
    assert.equal(
      sshCommandLine('powershell.exe', 'C:\\vm-backup\\get-state.ps1', { VmId: SQL }),
      `powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File "C:\\vm-backup\\get-state.ps1" -ArgsJson ${b64({ VmId: SQL })}`,
    );
    assert.equal(
      sshCommandLine('powershell.exe', 'C:\\Users\\John Smith\\.vm-backup-0a1b2c3d\\enumerate.ps1', {}),
      'powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File "C:\\Users\\John Smith\\.vm-backup-0a1b2c3d\\enumerate.ps1" -ArgsJson e30=',
    );
  });

  it('a hostile value travels only inside the Base64', () => {
    const line = sshCommandLine('powershell.exe', 'C:\\vm-backup\\checkpoint.ps1', { SnapshotName: '" & calc & $(Remove-VM *) `' });
    assert.doesNotMatch(line.split('-ArgsJson ')[1]!, /[^A-Za-z0-9+/=]/);
  });

  it('refuses a program or a script path that cmd.exe or PowerShell would interpret', () => {
    for (const bad of [
      'C:\\a"b\\x.ps1',
      'C:\\100%\\x.ps1',
      'C:\\$env\\x.ps1',
      'C:\\a`b\\x.ps1',
      'C:\\a&b\\x.ps1',
      'C:\\a^b\\x.ps1',
      'relative\\x.ps1',
    ]) {
      assert.throws(
        () => sshCommandLine('powershell.exe', bad, {}),
        (e: HyperVError) => e.code === 'invalid-argument',
        bad,
      );
    }
    assert.throws(() => sshCommandLine('C:\\Program Files\\PowerShell\\7\\pwsh.exe', 'C:\\x\\a.ps1', {}), /without spaces/);
    assert.throws(() => sshCommandLine('powershell.exe & calc', 'C:\\x\\a.ps1', {}), /without spaces/);
  });

  it('converts between Windows and SFTP paths; an SMB path cannot be fetched over SFTP', () => {
    assert.equal(windowsToSftpPath('D:\\Hyper-V\\SQL01\\a b.vhdx'), '/D:/Hyper-V/SQL01/a b.vhdx');
    assert.equal(sftpToWindowsPath('/C:/Users/backup'), 'C:\\Users\\backup');
    assert.equal(sftpToWindowsPath('C:/Users/backup'), 'C:\\Users\\backup');
    assert.equal(sftpToWindowsPath('/C:'), 'C:\\');
    assert.throws(() => sftpToWindowsPath('/home/backup'), /not a Windows path/);
    assert.throws(
      () => windowsToSftpPath('\\\\fs01\\vms\\a.vhdx'),
      (e: HyperVError) => e.code === 'unsupported',
    );
    assert.throws(
      () => windowsToSftpPath('a.vhdx'),
      (e: HyperVError) => e.code === 'invalid-argument',
    );
  });

  it('host key fingerprints look like ssh-keygen -lf', () => {
    assert.match(sshFingerprint(Buffer.from('key')), /^SHA256:[A-Za-z0-9+/]{43}$/);
  });
});

describe('hyperv ssh: session', () => {
  it('uploads every script once to a fresh folder in the home, then runs each over exec', async () => {
    const fake = new FakeSsh({ exec: () => ({ stdout: stdoutOf(fixture('get-state-running.json')), exitCode: 0 }) });
    const runner = new SshPowerShellRunner({ ssh: target, clientFactory: fake.factory, scriptsDir: SCRIPTS });
    const r1 = (await runner.run('get-state.ps1', { VmId: SQL })) as { State: string };
    await runner.run('get-state.ps1', { VmId: SQL });
    assert.equal(r1.State, 'Running');
    assert.equal(fake.clients, 1);
    assert.equal(fake.mkdirs.length, 1);
    const dir = fake.mkdirs[0]!;
    assert.match(dir, /^\/C:\/Users\/backup\/\.vm-backup-[0-9a-f]{8}$/);
    assert.deepEqual([...fake.written.keys()].sort(), SCRIPT_FILES.map((f) => `${dir}/${f}`).sort());
    for (const f of SCRIPT_FILES)
      assert.deepEqual(fake.written.get(`${dir}/${f}`), readFileSync(path.join(SCRIPTS, f)), `${f} uploaded unchanged`);
    const winDir = `C:\\Users\\backup\\${dir.split('/').pop()}`;
    assert.deepEqual(fake.commands, [
      `powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File "${winDir}\\get-state.ps1" -ArgsJson ${b64({ VmId: SQL })}`,
      `powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File "${winDir}\\get-state.ps1" -ArgsJson ${b64({ VmId: SQL })}`,
    ]);
    assert.equal(await runner.commandLine('get-state.ps1', { VmId: SQL }), fake.commands[0]);
    const cfg = fake.configs[0]!;
    assert.equal(cfg.host, 'hv01.corp.example');
    assert.equal(cfg.port, 22);
    assert.equal(cfg.username, 'backup');
    assert.equal(cfg.password, 'pw');
    await runner.close();
    assert.deepEqual(fake.unlinked.sort(), SCRIPT_FILES.map((f) => `${dir}/${f}`).sort());
    assert.deepEqual(fake.rmdirs, [dir]);
    assert.equal(fake.ended, 1);
    await assert.rejects(runner.run('get-state.ps1', { VmId: SQL }), /closed/);
  });

  it('a fixed remoteScriptsDir gives a fixed command line and is left in place on close', async () => {
    const fake = new FakeSsh({ exec: () => ({ stdout: stdoutOf(fixture('get-state-paused.json')), exitCode: 0 }) });
    const runner = new SshPowerShellRunner({
      ssh: { ...target, port: 2222 },
      clientFactory: fake.factory,
      scriptsDir: SCRIPTS,
      remoteScriptsDir: 'C:\\vm-backup\\',
    });
    await runner.run('get-state.ps1', { VmId: SQL });
    assert.deepEqual(fake.commands, [
      `powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File "C:\\vm-backup\\get-state.ps1" -ArgsJson ${b64({ VmId: SQL })}`,
    ]);
    assert.equal(fake.configs[0]!.port, 2222);
    assert.ok(fake.written.has('/C:/vm-backup/enumerate.ps1'));
    await runner.close();
    assert.deepEqual(fake.unlinked, []);
    assert.deepEqual(fake.rmdirs, []);
  });

  it('a home folder with shell characters is refused with the way out', async () => {
    const fake = new FakeSsh({ home: '/C:/Users/a%b' });
    const runner = new SshPowerShellRunner({ ssh: target, clientFactory: fake.factory, scriptsDir: SCRIPTS });
    await assert.rejects(runner.run('get-state.ps1', { VmId: SQL }), /set remoteScriptsDir/);
    assert.equal(fake.commands.length, 0);
  });

  it('authentication failure (recorded ssh2 error) is a HyperVError naming the host and the likely cause', async () => {
    const fake = new FakeSsh({ connectError: fixture('ssh-auth-failure.json') });
    const runner = new SshPowerShellRunner({ ssh: target, clientFactory: fake.factory, scriptsDir: SCRIPTS });
    await assert.rejects(
      runner.run('enumerate.ps1', {}),
      (e: HyperVError) =>
        e.code === 'ssh' &&
        /^SSH to backup@hv01\.corp\.example:22 failed: All configured authentication methods failed \[client-authentication\]/.test(
          e.message,
        ) &&
        /administrator/.test(e.message),
    );
  });

  it('connection refused: hints at the OpenSSH server; the next run connects again', async () => {
    const fake = new FakeSsh({ connectError: fixture('ssh-connection-refused.json') });
    const runner = new SshPowerShellRunner({ ssh: target, clientFactory: fake.factory, scriptsDir: SCRIPTS });
    await assert.rejects(runner.run('enumerate.ps1', {}), /ECONNREFUSED.*OpenSSH Server/);
    await assert.rejects(runner.run('enumerate.ps1', {}), /ECONNREFUSED/);
    assert.equal(fake.clients, 2);
  });

  it('with hostFingerprint set, another host key is refused', async () => {
    const fake = new FakeSsh({ hostKey: Buffer.from('the real key') });
    const runner = new SshPowerShellRunner({
      ssh: { ...target, hostFingerprint: sshFingerprint(Buffer.from('another key')) },
      clientFactory: fake.factory,
      scriptsDir: SCRIPTS,
    });
    await assert.rejects(runner.run('enumerate.ps1', {}), /verification failed/);
    assert.equal(runner.seenFingerprint, sshFingerprint(Buffer.from('the real key')));
    const ok = new SshPowerShellRunner({
      ssh: { ...target, hostFingerprint: sshFingerprint(Buffer.from('the real key')) },
      clientFactory: new FakeSsh({
        hostKey: Buffer.from('the real key'),
        exec: () => ({ stdout: stdoutOf(fixture('get-state-running.json')) }),
      }).factory,
      scriptsDir: SCRIPTS,
    });
    await ok.run('get-state.ps1', { VmId: SQL });
  });

  it('a script error over SSH is the same HyperVError as locally', async () => {
    const fake = new FakeSsh({ exec: () => ({ stdout: stdoutOf(fixture('error-vm-not-found.json')), exitCode: 1 }) });
    const runner = new SshPowerShellRunner({ ssh: target, clientFactory: fake.factory, scriptsDir: SCRIPTS });
    await assert.rejects(
      runner.run('get-state.ps1', { VmId: SQL }),
      (e: HyperVError) => e.code === 'script' && e.cmdlet === 'Get-VM' && e.exitCode === 1,
    );
  });

  it('a channel that never answers times out', async () => {
    const fake = new FakeSsh({ exec: () => ({ hang: true }) });
    const runner = new SshPowerShellRunner({ ssh: target, clientFactory: fake.factory, scriptsDir: SCRIPTS });
    await assert.rejects(runner.run('enumerate.ps1', {}, { timeoutMs: 30 }), (e: HyperVError) => e.code === 'timeout');
  });

  it('fetches a disk over SFTP with progress; an SMB path is refused', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'hv-sftp-'));
    try {
      const data = Buffer.concat([Buffer.from('vhdxfile'), Buffer.alloc(1000, 3)]);
      const fake = new FakeSsh({ remoteFiles: new Map([['/D:/Hyper-V/SQL01/Virtual Hard Disks/SQL01-os.vhdx', data]]) });
      const runner = new SshPowerShellRunner({ ssh: target, clientFactory: fake.factory, scriptsDir: SCRIPTS });
      const progress: { done: number; total: number }[] = [];
      const local = path.join(dir, 'os.vhdx');
      const { bytes } = await runner.fetchFile('D:\\Hyper-V\\SQL01\\Virtual Hard Disks\\SQL01-os.vhdx', local, (p) => progress.push(p));
      assert.equal(bytes, data.length);
      assert.deepEqual(readFileSync(local), data);
      assert.deepEqual(progress.at(-1), { done: data.length, total: data.length });
      await assert.rejects(
        runner.fetchFile('D:\\missing.vhdx', path.join(dir, 'm')),
        (e: HyperVError) => e.code === 'ssh' && /No such file/.test(e.message),
      );
      await assert.rejects(runner.fetchFile('\\\\fs01\\vms\\a.vhdx', path.join(dir, 'x')), (e: HyperVError) => e.code === 'unsupported');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the provider in SSH mode runs through the same session', async () => {
    const fake = new FakeSsh({
      exec: (cmd) => ({ stdout: stdoutOf(fixture(cmd.includes('enumerate.ps1') ? 'enumerate-host.json' : 'get-state-running.json')) }),
    });
    const provider = createHyperVProvider({
      hostName: 'HV01',
      mode: 'ssh',
      ssh: target,
      sshClientFactory: fake.factory,
      scriptsDir: SCRIPTS,
    });
    assert.equal((await provider.enumerate()).length, 7);
    assert.equal(await provider.runState(SQL), 'running');
    assert.equal(fake.clients, 1);
    await provider.close();
    assert.equal(fake.ended, 1);
  });
});
