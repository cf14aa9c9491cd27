import { execFileSync } from 'node:child_process';
// The SSH runner against a real ssh2 server on the loopback interface: the real ssh2 client does
// the exec channels, exit codes, SFTP upload and fastGet. The "Windows host" is a temp folder
// whose SFTP paths look like Windows OpenSSH's (/C:/Users/backup); exec answers with fixtures.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { createHyperVProvider, HyperVError } from '../../../src/providers/hyperv';
import { SCRIPT_FILES } from '../../../src/providers/hyperv/runner';
import { SshPowerShellRunner, sshFingerprint } from '../../../src/providers/hyperv/ssh-runner';
import type { ClassifiedVm } from '../../../src/contract/types';
import { fixture, SCRIPTS, stdoutOf } from './helpers';

const ssh2 = require('ssh2') as any;
const { STATUS_CODE, OPEN_MODE } = ssh2.utils.sftp;

const SQL = '4d1b2f0e-8a6c-4c57-9a1e-3f2b7c9d0e11';
const OS_BASE = 'D:\\Hyper-V\\SQL01\\Virtual Hard Disks\\SQL01-os.vhdx';

interface Host {
  port: number;
  root: string;
  fingerprint: string;
  commands: string[];
  answer: (script: string, params: Record<string, unknown>) => { stdout: string; stderr?: string; code: number };
  close(): Promise<void>;
}

/** /C:/Users/backup/x -> <root>/C/Users/backup/x */
const local = (root: string, sftpPath: string) => {
  const m = /^\/([A-Za-z]):(\/.*)?$/.exec(sftpPath);
  if (!m) throw new Error(`not a Windows SFTP path: ${sftpPath}`);
  return path.join(root, m[1]!.toUpperCase(), ...(m[2] ?? '/').split('/').filter(Boolean));
};

/**
 * A host key for the test server. ssh2's generateKeyPairSync('ed25519') now and then writes a key
 * its own parseKey calls "Malformed OpenSSH private key" (11 of 3,000 here, ssh2 1.17): such a key
 * is made again, as ssh-keygen would never have given it.
 */
function hostKey(): { key: { private: string }; publicBlob: Buffer } {
  for (let i = 0; ; i++) {
    const key = ssh2.utils.generateKeyPairSync('ed25519');
    const parsed = ssh2.utils.parseKey(key.private);
    if (!(parsed instanceof Error)) return { key, publicBlob: parsed.getPublicSSH() };
    if (i === 9) throw parsed;
  }
}

async function startHost(): Promise<Host> {
  const root = fs.mkdtempSync(path.join(tmpdir(), 'hv-sshd-'));
  fs.mkdirSync(path.join(root, 'C', 'Users', 'backup'), { recursive: true });
  const { key, publicBlob } = hostKey();
  const host: Partial<Host> = { root, fingerprint: sshFingerprint(publicBlob), commands: [] };
  const server = new ssh2.Server({ hostKeys: [key.private] }, (client: any) => {
    client.on('authentication', (ctx: any) => {
      if (ctx.method === 'password' && ctx.username === 'backup' && ctx.password === 'pw') ctx.accept();
      else ctx.reject(['password']);
    });
    client.on('error', () => undefined);
    client.on('ready', () => {
      client.on('session', (acceptSession: any) => {
        const session = acceptSession();
        session.on('exec', (accept: any, _reject: any, info: { command: string }) => {
          const stream = accept();
          host.commands!.push(info.command);
          const m = /-File "([^"]+)" -ArgsJson ([A-Za-z0-9+/=]+)$/.exec(info.command);
          const script = m ? m[1]!.split('\\').pop()! : '';
          const params = m ? JSON.parse(Buffer.from(m[2]!, 'base64').toString('utf8')) : {};
          const out = host.answer!(script, params);
          stream.write(out.stdout);
          if (out.stderr) stream.stderr.write(out.stderr);
          stream.exit(out.code);
          stream.end();
        });
        session.on('sftp', (acceptSftp: any) => {
          const sftp = acceptSftp();
          const handles = new Map<string, number>();
          let next = 0;
          const fail = (reqid: number, err: NodeJS.ErrnoException) =>
            sftp.status(reqid, err.code === 'ENOENT' ? STATUS_CODE.NO_SUCH_FILE : STATUS_CODE.FAILURE, err.message);
          const attrs = (st: fs.Stats) => ({
            mode: st.mode,
            uid: 0,
            gid: 0,
            size: st.size,
            atime: st.atimeMs / 1000,
            mtime: st.mtimeMs / 1000,
          });
          sftp.on('REALPATH', (reqid: number) => sftp.name(reqid, [{ filename: '/C:/Users/backup', longname: 'backup', attrs: {} }]));
          sftp.on('MKDIR', (reqid: number, p: string) => {
            try {
              fs.mkdirSync(local(root, p));
              sftp.status(reqid, STATUS_CODE.OK);
            } catch (e) {
              fail(reqid, e as NodeJS.ErrnoException);
            }
          });
          sftp.on('OPEN', (reqid: number, p: string, flags: number) => {
            try {
              const fd = fs.openSync(local(root, p), flags & OPEN_MODE.WRITE ? 'w' : 'r');
              const h = Buffer.alloc(4);
              h.writeUInt32BE(next++);
              handles.set(h.toString('hex'), fd);
              sftp.handle(reqid, h);
            } catch (e) {
              fail(reqid, e as NodeJS.ErrnoException);
            }
          });
          sftp.on('WRITE', (reqid: number, h: Buffer, offset: number, data: Buffer) => {
            fs.writeSync(handles.get(h.toString('hex'))!, data, 0, data.length, offset);
            sftp.status(reqid, STATUS_CODE.OK);
          });
          sftp.on('READ', (reqid: number, h: Buffer, offset: number, length: number) => {
            const buf = Buffer.alloc(length);
            const n = fs.readSync(handles.get(h.toString('hex'))!, buf, 0, length, offset);
            if (n === 0) sftp.status(reqid, STATUS_CODE.EOF);
            else sftp.data(reqid, buf.subarray(0, n));
          });
          sftp.on('FSTAT', (reqid: number, h: Buffer) => sftp.attrs(reqid, attrs(fs.fstatSync(handles.get(h.toString('hex'))!))));
          sftp.on('STAT', (reqid: number, p: string) => {
            try {
              sftp.attrs(reqid, attrs(fs.statSync(local(root, p))));
            } catch (e) {
              fail(reqid, e as NodeJS.ErrnoException);
            }
          });
          sftp.on('CLOSE', (reqid: number, h: Buffer) => {
            const key = h.toString('hex');
            fs.closeSync(handles.get(key)!);
            handles.delete(key);
            sftp.status(reqid, STATUS_CODE.OK);
          });
          sftp.on('REMOVE', (reqid: number, p: string) => {
            try {
              fs.unlinkSync(local(root, p));
              sftp.status(reqid, STATUS_CODE.OK);
            } catch (e) {
              fail(reqid, e as NodeJS.ErrnoException);
            }
          });
          sftp.on('RMDIR', (reqid: number, p: string) => {
            try {
              fs.rmdirSync(local(root, p));
              sftp.status(reqid, STATUS_CODE.OK);
            } catch (e) {
              fail(reqid, e as NodeJS.ErrnoException);
            }
          });
        });
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  host.port = (server.address() as AddressInfo).port;
  host.close = () =>
    new Promise<void>((resolve) => {
      server.close(() => resolve());
      fs.rmSync(root, { recursive: true, force: true });
    });
  return host as Host;
}

function byFixture(map: Record<string, string>) {
  return (script: string) => {
    const name = map[script];
    if (!name) return { stdout: '', stderr: `unexpected ${script}`, code: 1 };
    const env = fixture(name) as { error?: unknown };
    return { stdout: stdoutOf(env, ['a warning PowerShell printed']), code: env.error ? 1 : 0 };
  };
}

describe('hyperv ssh: against an ssh2 server on the loopback', function () {
  this.timeout(20_000);
  let host: Host;
  beforeEach(async () => {
    host = await startHost();
  });
  afterEach(async () => {
    await host.close();
  });

  it('enumerate, snapshot, copy the parent disk (SFTP random reads of a real VHDX), release, close: over one SSH session', async () => {
    host.answer = byFixture({
      'enumerate.ps1': 'enumerate-host.json',
      'snapshot.ps1': 'snapshot-recovery.json',
      'check-snapshot.ps1': 'check-snapshot-ok.json',
      'remove-checkpoint.ps1': 'remove-checkpoint-merged.json',
    });
    const diskPath = path.join(host.root, 'D', 'Hyper-V', 'SQL01', 'Virtual Hard Disks', 'SQL01-os.vhdx');
    fs.mkdirSync(path.dirname(diskPath), { recursive: true });
    execFileSync('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', diskPath, '8M']);
    execFileSync('qemu-io', ['-f', 'vhdx', '-c', 'write -P 0x5a 1M 2M', '-c', 'write -P 0x5b 7M 1M', diskPath], { stdio: 'ignore' });

    const provider = createHyperVProvider({
      hostName: 'HV01',
      mode: 'ssh',
      scriptsDir: SCRIPTS,
      ssh: { host: '127.0.0.1', port: host.port, username: 'backup', password: 'pw', hostFingerprint: host.fingerprint },
    });
    const vms = await provider.enumerate();
    assert.equal(vms.length, 7);

    const uploaded = fs.readdirSync(path.join(host.root, 'C', 'Users', 'backup'));
    assert.equal(uploaded.length, 1);
    assert.match(uploaded[0]!, /^\.vm-backup-[0-9a-f]{8}$/);
    const dir = path.join(host.root, 'C', 'Users', 'backup', uploaded[0]!);
    for (const f of SCRIPT_FILES) assert.deepEqual(fs.readFileSync(path.join(dir, f)), fs.readFileSync(path.join(SCRIPTS, f)));
    assert.equal(
      host.commands[0],
      `powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File "C:\\Users\\backup\\${uploaded[0]}\\enumerate.ps1" -ArgsJson e30=`,
    );

    const vm = vms.find((v) => v.name === 'SQL01')!;
    const cvm: ClassifiedVm = { ...vm, method: 'child-vm-snapshot', consistency: 'application', reasons: [], warnings: [] };
    const { view } = await provider.makeView(cvm, provider.planView(cvm, '20240315T021500Z-a1b2c3'), { frozen: false });
    const overlays = view.ref.overlays as { base: string; disk: string }[];
    assert.equal(overlays[0]!.base, OS_BASE);

    const out = fs.mkdtempSync(path.join(tmpdir(), 'hv-sshcopy-'));
    try {
      const progress: { done: number; total: number }[] = [];
      const exported = await provider.exportDisk(view, overlays[0]!.disk, path.join(out, 'disk-SCSI0_0.qcow2'), (p) => progress.push(p));
      assert.deepEqual([exported.format, exported.virtualSize, exported.bytesRead], ['qcow2', 8 << 20, 3 << 20]);
      execFileSync('qemu-img', ['compare', '-f', 'vhdx', '-F', 'qcow2', diskPath, exported.path], { stdio: 'pipe' });
      assert.deepEqual(progress.at(-1), { done: 3 << 20, total: 3 << 20 });
      assert.deepEqual(fs.readdirSync(out), ['disk-SCSI0_0.qcow2']);
    } finally {
      fs.rmSync(out, { recursive: true, force: true });
    }
    assert.match(host.commands.at(-1)!, /check-snapshot\.ps1" -ArgsJson /);

    await provider.releaseView(SQL, view);
    assert.match(host.commands.at(-1)!, /remove-checkpoint\.ps1" -ArgsJson /);
    await provider.close();
    assert.equal(fs.existsSync(dir), false, 'uploaded scripts removed on close');
  });

  it('a script error arrives with its exit code and cmdlet', async () => {
    host.answer = byFixture({ 'get-state.ps1': 'error-vm-not-found.json' });
    const runner = new SshPowerShellRunner({
      ssh: { host: '127.0.0.1', port: host.port, username: 'backup', password: 'pw' },
      scriptsDir: SCRIPTS,
    });
    try {
      await assert.rejects(
        runner.run('get-state.ps1', { VmId: SQL }),
        (e: HyperVError) => e.code === 'script' && e.exitCode === 1 && e.cmdlet === 'Get-VM',
      );
      assert.equal(runner.seenFingerprint, host.fingerprint);
    } finally {
      await runner.close();
    }
  });

  it('refuses a host whose key does not match hostFingerprint, and a wrong password', async () => {
    host.answer = byFixture({});
    const wrongKey = new SshPowerShellRunner({
      ssh: {
        host: '127.0.0.1',
        port: host.port,
        username: 'backup',
        password: 'pw',
        hostFingerprint: 'SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA',
      },
      scriptsDir: SCRIPTS,
    });
    await assert.rejects(wrongKey.run('enumerate.ps1', {}), (e: HyperVError) => e.code === 'ssh');
    await wrongKey.close();
    const wrongPassword = new SshPowerShellRunner({
      ssh: { host: '127.0.0.1', port: host.port, username: 'backup', password: 'nope' },
      scriptsDir: SCRIPTS,
    });
    await assert.rejects(
      wrongPassword.run('enumerate.ps1', {}),
      (e: HyperVError) => e.code === 'ssh' && /authentication methods failed/.test(e.message),
    );
    await wrongPassword.close();
    assert.equal(host.commands.length, 0);
  });
});
