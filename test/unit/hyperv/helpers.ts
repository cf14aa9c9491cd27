// Test doubles for the Hyper-V provider: a spawn that answers with recorded script outputs, and
// an ssh2 stand-in. PowerShell does not run here; what the scripts print is in ./fixtures.
import { EventEmitter } from 'node:events';
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { PassThrough } from 'node:stream';
import type { ChildProcess, SpawnOptions } from 'node:child_process';
import type { SftpSession, SshChannel, SshClient } from '../../../src/providers/hyperv/ssh-runner';

/**
 * The repository root: the first folder above this file (src or dist/...) holding package.json and
 * test/unit/hyperv; for a build outside the tree (outDir elsewhere), the same search from the cwd.
 */
export function repoRoot(): string {
  for (const start of [__dirname, process.cwd()]) {
    let dir = start;
    for (;;) {
      if (existsSync(path.join(dir, 'package.json')) && existsSync(path.join(dir, 'test', 'unit', 'hyperv', 'fixtures'))) return dir;
      const up = path.dirname(dir);
      if (up === dir) break;
      dir = up;
    }
  }
  throw new Error(`no repository root above ${__dirname} or ${process.cwd()}`);
}

export const FIXTURES = path.join(repoRoot(), 'test', 'unit', 'hyperv', 'fixtures');
export const SCRIPTS = path.join(repoRoot(), 'src', 'providers', 'hyperv', 'scripts');

export function fixture<T = any>(name: string): T {
  return JSON.parse(readFileSync(path.join(FIXTURES, name), 'utf8')) as T;
}

export function fixtureText(name: string): string {
  return readFileSync(path.join(FIXTURES, name), 'utf8');
}

/** What powershell.exe writes: optional WARNING lines, then the one-line JSON envelope. */
export function stdoutOf(envelope: unknown, warningLines: string[] = []): string {
  return `${warningLines.map((w) => `WARNING: ${w}\r\n`).join('')}\n${JSON.stringify(envelope)}\n`;
}

export interface Answer {
  stdout?: string;
  stderr?: string | Buffer;
  exitCode?: number | null;
  /** never answer (to test timeouts) */
  hang?: boolean;
  /** emit 'error' with this code instead of running */
  errorCode?: string;
}

export interface SpawnCall {
  command: string;
  args: string[];
  options: SpawnOptions;
  script: string;
  params: Record<string, unknown>;
}

/**
 * A spawn stand-in. `answer(script, params)` decides what the "process" prints; every call is
 * recorded with its exact argument vector and its decoded -ArgsJson.
 */
export class FakeSpawn {
  readonly calls: SpawnCall[] = [];
  active = 0;
  maxActive = 0;
  killed = 0;
  constructor(public answer: (script: string, params: Record<string, unknown>, call: SpawnCall) => Answer) {}

  /** answers by script name from fixture files: { 'get-state.ps1': 'get-state-running.json' } or Answer objects */
  static byScript(map: Record<string, string | Answer | (string | Answer)[]>): FakeSpawn {
    const queues = new Map(Object.entries(map).map(([k, v]) => [k, Array.isArray(v) ? [...v] : [v]]));
    return new FakeSpawn((script) => {
      const q = queues.get(script);
      if (!q || q.length === 0) throw new Error(`unexpected run of ${script}`);
      const next = q.length > 1 ? q.shift()! : q[0]!;
      if (typeof next === 'string') {
        const env = fixture(next) as { error?: unknown };
        return { stdout: stdoutOf(env), exitCode: env.error ? 1 : 0 };
      }
      return next;
    });
  }

  readonly spawn = (command: string, args: readonly string[], options: SpawnOptions): ChildProcess => {
    const fileAt = args.indexOf('-File');
    const argsAt = args.indexOf('-ArgsJson');
    const script = fileAt >= 0 ? path.basename(String(args[fileAt + 1]).replace(/\\/g, '/')) : '';
    const params =
      argsAt >= 0 ? (JSON.parse(Buffer.from(String(args[argsAt + 1]), 'base64').toString('utf8')) as Record<string, unknown>) : {};
    const call: SpawnCall = { command, args: [...args], options, script, params };
    this.calls.push(call);
    const answer = this.answer(script, params, call);
    const child = new EventEmitter() as ChildProcess & EventEmitter;
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    Object.assign(child, { stdout, stderr, stdin: null });
    this.active++;
    this.maxActive = Math.max(this.maxActive, this.active);
    let done = false;
    const end = (code: number | null) => {
      if (done) return;
      done = true;
      this.active--;
      child.emit('close', code, null);
    };
    (child as unknown as { kill: () => boolean }).kill = () => {
      this.killed++;
      setImmediate(() => end(null));
      return true;
    };
    setImmediate(() => {
      if (answer.errorCode) {
        const err = Object.assign(new Error(`spawn ${command} ${answer.errorCode}`), { code: answer.errorCode });
        done = true;
        this.active--;
        child.emit('error', err);
        return;
      }
      if (answer.hang) return;
      if (answer.stdout) stdout.write(answer.stdout);
      if (answer.stderr) stderr.write(answer.stderr);
      stdout.end();
      stderr.end();
      setImmediate(() => end(answer.exitCode === undefined ? 0 : answer.exitCode));
    });
    return child;
  };
}

// ---------------------------------------------------------------------------------------------
// ssh2 stand-in

export interface FakeSshOptions {
  home?: string;
  /** error to emit instead of 'ready' (like ssh2's client errors: message, level, code) */
  connectError?: Record<string, unknown>;
  /** host key presented to hostVerifier */
  hostKey?: Buffer;
  /** what each exec prints */
  exec?: (command: string) => Answer;
  /** files the SFTP server "has", for fastGet */
  remoteFiles?: Map<string, Buffer>;
}

export class FakeSsh {
  readonly configs: Record<string, unknown>[] = [];
  readonly commands: string[] = [];
  readonly written = new Map<string, Buffer>();
  readonly mkdirs: string[] = [];
  readonly unlinked: string[] = [];
  readonly rmdirs: string[] = [];
  readonly gets: { remote: string; local: string }[] = [];
  readonly opened: string[] = [];
  readonly handles: Buffer[] = [];
  readRequests = 0;
  ended = 0;
  clients = 0;
  constructor(readonly options: FakeSshOptions = {}) {}

  readonly factory = (): SshClient => {
    this.clients++;
    const fake = this;
    const client = new EventEmitter() as SshClient;
    client.connect = (config: Record<string, unknown>) => {
      fake.configs.push(config);
      setImmediate(() => {
        if (fake.options.connectError) {
          client.emit('error', Object.assign(new Error(String(fake.options.connectError.message)), fake.options.connectError));
          return;
        }
        const verifier = config.hostVerifier as ((key: Buffer) => boolean) | undefined;
        if (verifier && !verifier(fake.options.hostKey ?? Buffer.from('fake-host-key'))) {
          client.emit('error', Object.assign(new Error('Host denied (verification failed)'), { level: 'client-authentication' }));
          return;
        }
        client.emit('ready');
      });
      return client;
    };
    client.end = () => {
      fake.ended++;
      setImmediate(() => client.emit('close'));
      return client;
    };
    client.exec = (command: string, cb: (err: Error | undefined, channel: SshChannel) => void) => {
      fake.commands.push(command);
      const answer = fake.options.exec ? fake.options.exec(command) : { stdout: '', exitCode: 0 };
      const channel = new EventEmitter() as SshChannel;
      channel.stderr = new EventEmitter();
      channel.close = () => setImmediate(() => channel.emit('close'));
      setImmediate(() => {
        cb(undefined, channel);
        if (answer.hang) return;
        setImmediate(() => {
          if (answer.stdout) channel.emit('data', Buffer.from(answer.stdout));
          if (answer.stderr) channel.stderr.emit('data', Buffer.from(answer.stderr));
          channel.emit('exit', answer.exitCode ?? 0);
          channel.emit('close');
        });
      });
      return true;
    };
    client.sftp = (cb: (err: Error | undefined, sftp: SftpSession) => void) => {
      const sftp: SftpSession = {
        realpath: (_p, done) => setImmediate(() => done(undefined, fake.options.home ?? '/C:/Users/backup')),
        mkdir: (p, done) => {
          fake.mkdirs.push(p);
          setImmediate(() => done());
        },
        writeFile: (p, data, done) => {
          fake.written.set(p, data);
          setImmediate(() => done());
        },
        unlink: (p, done) => {
          fake.unlinked.push(p);
          setImmediate(() => done());
        },
        rmdir: (p, done) => {
          fake.rmdirs.push(p);
          setImmediate(() => done());
        },
        fastGet: (remote, local, opts, done) => {
          fake.gets.push({ remote, local });
          const data = fake.options.remoteFiles?.get(remote);
          if (!data) {
            setImmediate(() => done(Object.assign(new Error('No such file'), { code: 2 })));
            return;
          }
          const fs = require('node:fs') as typeof import('node:fs');
          fs.writeFileSync(local, data);
          const half = Math.floor(data.length / 2);
          opts.step?.(half, half, data.length);
          opts.step?.(data.length, data.length - half, data.length);
          setImmediate(() => done());
        },
        open: (remote, _flags, done) => {
          const data = fake.options.remoteFiles?.get(remote);
          fake.opened.push(remote);
          if (!data) {
            setImmediate(() => done(Object.assign(new Error('No such file'), { code: 2 }), Buffer.alloc(0)));
            return;
          }
          const handle = Buffer.from(String(fake.handles.length));
          fake.handles.push(data);
          setImmediate(() => done(undefined, handle));
        },
        fstat: (handle, done) => setImmediate(() => done(undefined, { size: fake.handles[Number(handle.toString())]!.length })),
        read: (handle, buffer, offset, length, position, done) => {
          const data = fake.handles[Number(handle.toString())]!;
          // like a real server, at most 32 KiB per answer
          const n = Math.max(0, Math.min(length, 32768, data.length - position));
          data.copy(buffer, offset, position, position + n);
          fake.readRequests++;
          setImmediate(() => done(undefined, n));
        },
        close: (_handle, done) => setImmediate(() => done()),
        end: () => undefined,
      };
      setImmediate(() => cb(undefined, sftp));
      return true;
    };
    return client;
  };
}

/** b64 of the JSON of `params`, as the runner writes -ArgsJson */
export function b64(params: Record<string, unknown>): string {
  return Buffer.from(JSON.stringify(params), 'utf8').toString('base64');
}
