// Remote: the Hyper-V host runs Windows' OpenSSH server; Node-RED runs elsewhere.
//
// Why the scripts are uploaded (SFTP, once per session, to a fresh folder in the SSH user's home)
// rather than sent as -EncodedCommand: Windows OpenSSH runs an exec request through cmd.exe (or the
// configured DefaultShell), whose command line holds at most 8191 characters; enumerate.ps1 as
// UTF-16 Base64 is far longer. Uploading keeps every script byte-for-byte the reviewed file, and the
// command line is then made only of fixed flags, a path we chose and checked, and Base64.
import { createHash, randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Progress } from '../provider';
import { HyperVError } from './errors';
import { decodeStderr } from './oem';
import type { RandomAccessFile } from './vhdx';
import {
  defaultScriptsDir,
  encodeArgs,
  Gate,
  interpretRun,
  isScriptName,
  POWERSHELL_FLAGS,
  SCRIPT_FILES,
  throttledProgress,
  type PowerShellRunner,
  type RawRun,
  type RunOptions,
  type ScriptName,
  type ScriptParams,
} from './runner';

// the one SSH options type (the host node's SSH fields), shared with the host settings
import type { SshTarget } from '../ssh-target';
export type { SshTarget };

// The parts of ssh2 used here, typed structurally so that tests can stand in for it.
export interface SshChannel extends EventEmitter {
  stderr: EventEmitter;
  close(): void;
}
export interface SftpSession {
  realpath(p: string, cb: (err: Error | undefined | null, absPath: string) => void): void;
  mkdir(p: string, cb: (err?: Error | null) => void): void;
  writeFile(p: string, data: Buffer, cb: (err?: Error | null) => void): void;
  unlink(p: string, cb: (err?: Error | null) => void): void;
  rmdir(p: string, cb: (err?: Error | null) => void): void;
  fastGet(
    remotePath: string,
    localPath: string,
    opts: { concurrency?: number; chunkSize?: number; step?: (transferred: number, chunk: number, total: number) => void },
    cb: (err?: Error | null) => void,
  ): void;
  open(p: string, flags: string, cb: (err: Error | undefined | null, handle: Buffer) => void): void;
  read(
    handle: Buffer,
    buffer: Buffer,
    offset: number,
    length: number,
    position: number,
    cb: (err: Error | undefined | null, bytesRead: number) => void,
  ): void;
  fstat(handle: Buffer, cb: (err: Error | undefined | null, stats: { size?: number }) => void): void;
  close(handle: Buffer, cb: (err?: Error | null) => void): void;
  end(): void;
}
export interface SshClient extends EventEmitter {
  connect(config: Record<string, unknown>): unknown;
  exec(command: string, cb: (err: Error | undefined | null, channel: SshChannel) => void): unknown;
  sftp(cb: (err: Error | undefined | null, sftp: SftpSession) => void): unknown;
  end(): unknown;
}
export type SshClientFactory = () => SshClient;

export interface SshRunnerOptions {
  ssh: SshTarget;
  powershell?: string;
  scriptsDir?: string;
  /** Windows folder for the uploaded scripts, instead of a fresh one in the SSH user's home */
  remoteScriptsDir?: string;
  timeoutMs?: number;
  /** SSH channels at once (Windows sshd allows 10 sessions per connection), default 4 */
  concurrency?: number;
  readyTimeoutMs?: number;
  /** for tests: replaces `new (require('ssh2').Client)()` */
  clientFactory?: SshClientFactory;
}

interface Session {
  client: SshClient;
  sftp: SftpSession;
  /** the folder as SFTP names it: /C:/Users/backup/.vm-backup-1a2b3c4d */
  sftpDir: string;
  /** the same folder as Windows names it: C:\Users\backup\.vm-backup-1a2b3c4d */
  winDir: string;
  created: boolean;
  uploaded: string[];
}

/** Characters that mean something to cmd.exe or PowerShell inside double quotes, and controls. */
// eslint-disable-next-line no-control-regex -- matching the control characters is this pattern's purpose
const UNSAFE_IN_QUOTES = /["%$`!^&|<>'\r\n\t;\u0000-\u001f]/;

/** Windows path -> the SFTP path Windows OpenSSH understands: C:\VMs\a.vhdx -> /C:/VMs/a.vhdx */
export function windowsToSftpPath(winPath: string): string {
  if (/^[A-Za-z]:[\\/]/.test(winPath)) return `/${winPath.replace(/\\/g, '/')}`;
  if (winPath.startsWith('\\\\')) {
    throw new HyperVError(
      'unsupported',
      `${winPath} is on an SMB share: copying it over SSH/SFTP is not supported (back up that share's host, or run Node-RED on the Hyper-V host)`,
    );
  }
  throw new HyperVError('invalid-argument', `${winPath} is not an absolute Windows path`);
}

/** /C:/Users/backup -> C:\Users\backup */
export function sftpToWindowsPath(sftpPath: string): string {
  const m = /^\/?([A-Za-z]:)(\/.*)?$/.exec(sftpPath);
  if (!m)
    throw new HyperVError('ssh', `the SSH server's home folder "${sftpPath}" is not a Windows path: is this a Windows OpenSSH server?`);
  return `${m[1]}${(m[2] ?? '/').replace(/\//g, '\\')}`;
}

/**
 * The one command line sent over SSH. cmd.exe (Windows OpenSSH's default shell) and PowerShell (if
 * configured as DefaultShell) read it the same way: a bare program name, fixed flags, one
 * double-quoted path without any character either shell interprets, and Base64.
 */
export function sshCommandLine(powershell: string, scriptPath: string, params: ScriptParams): string {
  if (!/^[A-Za-z0-9_.:\\-]+$/.test(powershell)) {
    throw new HyperVError(
      'invalid-argument',
      `powershell "${powershell}" must be a program name or path without spaces or shell characters for SSH mode`,
    );
  }
  if (!/^[A-Za-z]:\\/.test(scriptPath) || UNSAFE_IN_QUOTES.test(scriptPath)) {
    throw new HyperVError(
      'invalid-argument',
      `remote script path "${scriptPath}" contains characters that cmd.exe or PowerShell would interpret; set remoteScriptsDir to a plain folder such as C:\\vm-backup`,
    );
  }
  return [powershell, ...POWERSHELL_FLAGS, '-File', `"${scriptPath}"`, '-ArgsJson', encodeArgs(params)].join(' ');
}

export function sshFingerprint(key: Buffer): string {
  return `SHA256:${createHash('sha256').update(key).digest('base64').replace(/=+$/, '')}`;
}

function sshError(target: SshTarget, err: unknown): HyperVError {
  if (err instanceof HyperVError) return err;
  const e = err as { message?: string; level?: string; code?: string };
  const where = `${target.username}@${target.host}:${target.port ?? 22}`;
  const hint =
    e.level === 'client-authentication'
      ? ' (check the user name and password or key; the user must be an administrator of the Hyper-V host)'
      : e.code === 'ECONNREFUSED'
        ? ' (is the OpenSSH Server feature installed and sshd running?)'
        : '';
  return new HyperVError('ssh', `SSH to ${where} failed: ${e.message ?? String(err)}${e.level ? ` [${e.level}]` : ''}${hint}`, {
    cause: err,
  });
}

function loadSsh2(): SshClientFactory {
  try {
    // loaded on demand: local mode and the unit tests never need ssh2
    const { Client } = require('ssh2') as { Client: new () => SshClient };
    return () => new Client();
  } catch (err) {
    throw new HyperVError('ssh', `SSH mode needs the ssh2 package (npm install ssh2): ${(err as Error).message}`, { cause: err });
  }
}

const cb2p = <T>(fn: (cb: (err: Error | undefined | null, value: T) => void) => void): Promise<T> =>
  new Promise<T>((resolve, reject) => fn((err, value) => (err ? reject(err) : resolve(value))));

export class SshPowerShellRunner implements PowerShellRunner {
  readonly mode = 'ssh';
  oemCodePage: number | undefined;
  readonly powershell: string;
  /** the host key fingerprint seen at the last connection ("SHA256:...") */
  seenFingerprint: string | undefined;
  private readonly scriptsDir: string;
  private readonly timeoutMs: number;
  private readonly gate: Gate;
  private session: Promise<Session> | undefined;
  private closed = false;
  private readonly inFlight = new Set<Promise<unknown>>();

  constructor(private readonly options: SshRunnerOptions) {
    if (!options.ssh?.host || !options.ssh.username)
      throw new HyperVError('invalid-argument', 'ssh.host and ssh.username are required in SSH mode');
    if (!options.ssh.password && !options.ssh.privateKey)
      throw new HyperVError('invalid-argument', 'ssh.password or ssh.privateKey is required in SSH mode');
    this.powershell = options.powershell ?? 'powershell.exe';
    this.scriptsDir = options.scriptsDir ?? defaultScriptsDir();
    this.timeoutMs = options.timeoutMs ?? 600_000;
    this.gate = new Gate(options.concurrency ?? 4);
  }

  /** The exact command line of one run once connected (scripts folder known). */
  async commandLine(script: ScriptName, params: ScriptParams): Promise<string> {
    const s = await this.ensureSession();
    return sshCommandLine(this.powershell, `${s.winDir}\\${script}`, params);
  }

  async run(script: ScriptName, params: ScriptParams, options: RunOptions = {}): Promise<unknown> {
    if (!isScriptName(script)) throw new HyperVError('invalid-argument', `unknown script ${String(script)}`);
    if (this.closed) throw new HyperVError('ssh', `${script}: the Hyper-V SSH runner is closed`, { script });
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    const running = this.gate.run(async () => {
      const s = await this.ensureSession();
      const command = sshCommandLine(this.powershell, `${s.winDir}\\${script}`, params);
      return this.exec(s, script, command, timeoutMs);
    });
    this.inFlight.add(running);
    try {
      return interpretRun(script, await running);
    } finally {
      this.inFlight.delete(running);
    }
  }

  private exec(s: Session, script: string, command: string, timeoutMs: number): Promise<RawRun> {
    return new Promise<RawRun>((resolve, reject) => {
      const onChannel = (err: Error | undefined | null, channel: SshChannel) => {
        if (err) {
          reject(sshError(this.options.ssh, err));
          return;
        }
        const out: Buffer[] = [];
        const errOut: Buffer[] = [];
        let exitCode: number | null = null;
        let settled = false;
        const timer = setTimeout(() => {
          if (settled) return;
          settled = true;
          channel.close();
          reject(
            new HyperVError(
              'timeout',
              `${script}: no answer over SSH within ${timeoutMs} ms; the channel was closed (Windows OpenSSH may leave powershell.exe running to its end)`,
              { script },
            ),
          );
        }, timeoutMs);
        timer.unref?.();
        channel.on('data', (chunk: Buffer) => out.push(chunk));
        channel.stderr.on('data', (chunk: Buffer) => errOut.push(chunk));
        channel.on('exit', (code: unknown) => {
          exitCode = typeof code === 'number' ? code : null;
        });
        channel.on('close', () => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          resolve({ stdout: Buffer.concat(out).toString('utf8'), stderr: decodeStderr(Buffer.concat(errOut), this.oemCodePage), exitCode });
        });
      };
      try {
        s.client.exec(command, onChannel);
      } catch (err) {
        // ssh2 throws when the connection is already gone; the next run reconnects
        this.session = undefined;
        reject(sshError(this.options.ssh, err));
      }
    });
  }

  async fetchFile(hostPath: string, localPath: string, onProgress?: (p: Progress) => void): Promise<{ bytes: number }> {
    const remote = windowsToSftpPath(hostPath);
    const s = await this.ensureSession();
    const report = throttledProgress(onProgress);
    let bytes = 0;
    let size = 0;
    report(0, 0, true);
    await new Promise<void>((resolve, reject) => {
      s.sftp.fastGet(
        remote,
        localPath,
        {
          concurrency: 64,
          chunkSize: 32768,
          step: (transferred, _chunk, total) => {
            bytes = transferred;
            size = total;
            report(transferred, total);
          },
        },
        (err) => (err ? reject(new HyperVError('ssh', `copying ${hostPath} over SFTP failed: ${err.message}`, { cause: err })) : resolve()),
      );
    });
    report(bytes, Math.max(size, bytes), true);
    return { bytes };
  }

  /**
   * One host file for random reads over SFTP. A read is split into pieces of 256 KiB, up to 16 in
   * flight (one SFTP request each; a server may answer a request with fewer bytes: asked again).
   */
  async openFile(hostPath: string): Promise<RandomAccessFile> {
    const remote = windowsToSftpPath(hostPath);
    const s = await this.ensureSession();
    const fail = (what: string, err: Error) =>
      new HyperVError('ssh', `${what} ${hostPath} over SFTP failed: ${err.message}`, { cause: err });
    const handle = await cb2p<Buffer>((cb) => s.sftp.open(remote, 'r', cb)).catch((err: Error) => {
      throw fail('opening', err);
    });
    const stats = await cb2p<{ size?: number }>((cb) => s.sftp.fstat(handle, cb)).catch((err: Error) => {
      throw fail('reading the size of', err);
    });
    const readPiece = async (buf: Buffer, at: number, position: number, length: number): Promise<number> => {
      let got = 0;
      while (got < length) {
        const n = await cb2p<number>((cb) => s.sftp.read(handle, buf, at + got, length - got, position + got, cb)).catch((err: Error) => {
          throw fail('reading', err);
        });
        if (!n) break;
        got += n;
      }
      return got;
    };
    return {
      size: stats.size ?? 0,
      async read(offset: number, length: number): Promise<Buffer> {
        const buf = Buffer.alloc(length);
        const piece = 256 << 10;
        const starts: number[] = [];
        for (let at = 0; at < length; at += piece) starts.push(at);
        const got = new Map<number, number>();
        let next = 0;
        await Promise.all(
          Array.from({ length: Math.min(16, starts.length) }, async () => {
            while (next < starts.length) {
              const at = starts[next++]!;
              got.set(at, await readPiece(buf, at, offset + at, Math.min(piece, length - at)));
            }
          }),
        );
        // a short piece is the end of the file: what follows it is not data
        for (const at of starts) if (got.get(at)! < Math.min(piece, length - at)) return buf.subarray(0, at + got.get(at)!);
        return buf;
      },
      close: () => cb2p<void>((cb) => s.sftp.close(handle, (err) => cb(err, undefined))),
    };
  }

  private ensureSession(): Promise<Session> {
    if (!this.session) {
      const attempt = this.connect();
      this.session = attempt;
      attempt.catch(() => {
        if (this.session === attempt) this.session = undefined;
      });
    }
    return this.session;
  }

  private async connect(): Promise<Session> {
    const target = this.options.ssh;
    const factory = this.options.clientFactory ?? loadSsh2();
    const client = factory();
    await new Promise<void>((resolve, reject) => {
      const onError = (err: unknown) => {
        client.removeListener('ready', onReady);
        client.on('error', () => undefined); // ssh2 may emit more than one error while failing
        reject(sshError(target, err));
      };
      const onReady = () => {
        client.removeListener('error', onError);
        resolve();
      };
      client.once('ready', onReady);
      client.once('error', onError);
      client.connect({
        host: target.host,
        port: target.port ?? 22,
        username: target.username,
        ...(target.password !== undefined ? { password: target.password } : {}),
        ...(target.privateKey !== undefined ? { privateKey: target.privateKey } : {}),
        ...(target.passphrase !== undefined ? { passphrase: target.passphrase } : {}),
        readyTimeout: this.options.readyTimeoutMs ?? 20_000,
        hostVerifier: (key: Buffer) => {
          this.seenFingerprint = sshFingerprint(key);
          return !target.hostFingerprint || target.hostFingerprint.replace(/=+$/, '') === this.seenFingerprint;
        },
      });
    });
    // A dropped connection is re-opened (with a new scripts folder) by the next run.
    const forget = () => {
      this.session = undefined;
    };
    client.on('close', forget);
    client.on('error', forget);
    try {
      const sftp = await cb2p<SftpSession>((cb) => client.sftp(cb));
      let sftpDir: string;
      let created = false;
      if (this.options.remoteScriptsDir) {
        sftpDir = windowsToSftpPath(this.options.remoteScriptsDir.replace(/[\\/]+$/, ''));
        await cb2p<void>((cb) => sftp.mkdir(sftpDir, (err) => cb(err, undefined))).catch(() => undefined);
      } else {
        const home = (await cb2p<string>((cb) => sftp.realpath('.', cb))).replace(/\/+$/, '');
        sftpDir = `${home}/.vm-backup-${randomBytes(4).toString('hex')}`;
        await cb2p<void>((cb) => sftp.mkdir(sftpDir, (err) => cb(err, undefined)));
        created = true;
      }
      const winDir = sftpToWindowsPath(sftpDir);
      if (UNSAFE_IN_QUOTES.test(winDir)) {
        throw new HyperVError(
          'invalid-argument',
          `the remote scripts folder "${winDir}" contains characters that cmd.exe or PowerShell would interpret; set remoteScriptsDir to a plain folder such as C:\\vm-backup`,
        );
      }
      const session: Session = { client, sftp, sftpDir, winDir, created, uploaded: [] };
      for (const name of SCRIPT_FILES) {
        const data = await fs.readFile(path.join(this.scriptsDir, name));
        await cb2p<void>((cb) => sftp.writeFile(`${sftpDir}/${name}`, data, (err) => cb(err, undefined)));
        session.uploaded.push(name);
      }
      return session;
    } catch (err) {
      client.end();
      throw sshError(target, err);
    }
  }

  /** Remove the uploaded scripts (best effort) and end the connection. Nothing about the VMs changes. */
  async close(): Promise<void> {
    this.closed = true;
    // Runs in flight finish first: closing the channel under checkpoint.ps1 could stop it before it
    // restores the VM's CheckpointType. Each run is bounded by its own timeout.
    await Promise.allSettled([...this.inFlight]);
    const pending = this.session;
    this.session = undefined;
    if (!pending) return;
    let s: Session;
    try {
      s = await pending;
    } catch {
      return;
    }
    const quiet = (fn: (cb: (err?: Error | null) => void) => void) => new Promise<void>((resolve) => fn(() => resolve()));
    if (!this.options.remoteScriptsDir) {
      for (const name of s.uploaded) await quiet((cb) => s.sftp.unlink(`${s.sftpDir}/${name}`, cb));
      if (s.created) await quiet((cb) => s.sftp.rmdir(s.sftpDir, cb));
    }
    s.sftp.end();
    s.client.end();
  }
}
