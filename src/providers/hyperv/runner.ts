// The only thing that executes: a PowerShellRunner runs one shipped .ps1 file with its arguments
// and hands back the script's JSON result. No code is ever assembled from strings and no shell is
// spawned: the script is a file, the arguments are ONE Base64-encoded JSON value.
import { spawn as nodeSpawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { createReadStream, createWriteStream, existsSync, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Progress } from '../provider';
import { HyperVError } from './errors';
import { decodeStderr } from './oem';
import type { RandomAccessFile } from './vhdx';

/** The scripts the provider runs on the Hyper-V host. common.ps1 is dot-sourced by each of them. */
export const HOST_SCRIPTS = [
  'enumerate.ps1',
  'snapshot.ps1',
  'check-snapshot.ps1',
  'reference-point.ps1',
  'rct-changes.ps1',
  'checkpoint.ps1',
  'remove-checkpoint.ps1',
  'save-vm.ps1',
  'start-vm.ps1',
  'resume-vm.ps1',
  'suspend-vm.ps1',
  'get-state.ps1',
  'describe.ps1',
  'find-recovery-checkpoints.ps1',
] as const;
export type ScriptName = (typeof HOST_SCRIPTS)[number];
/** Every file a host needs: the scripts and the helpers they dot-source. */
export const SCRIPT_FILES: readonly string[] = ['common.ps1', ...HOST_SCRIPTS];

export type ScriptParam = string | number | boolean | null;
export type ScriptParams = Record<string, ScriptParam>;

/** The flags every run starts with; -File runs the file as a script, with no profile, no prompts. */
export const POWERSHELL_FLAGS: readonly string[] = ['-NoProfile', '-NonInteractive', '-ExecutionPolicy', 'Bypass'];

export interface RunOptions {
  timeoutMs?: number;
}

export interface PowerShellRunner {
  readonly mode: string;
  /** the host's OEM code page (enumerate.ps1 says it): powershell.exe's own errors on stderr are in it */
  oemCodePage?: number;
  /** Run one shipped script; resolves with its `result`, rejects with a HyperVError. */
  run(script: ScriptName, params: ScriptParams, options?: RunOptions): Promise<unknown>;
  /** Copy one file of the Hyper-V host to `localPath` (on this machine), streaming, with progress. */
  fetchFile(hostPath: string, localPath: string, onProgress?: (p: Progress) => void): Promise<{ bytes: number }>;
  /** Open one file of the Hyper-V host for random reads (the VHDX reader reads only what it needs). */
  openFile(hostPath: string): Promise<RandomAccessFile>;
  /** Drop connections and remove what the runner put on the host. */
  close(): Promise<void>;
}

/** `-ArgsJson` value: Base64 of the UTF-8 JSON. Its alphabet (A-Z a-z 0-9 + / =) means nothing to cmd or PowerShell. */
export function encodeArgs(params: ScriptParams): string {
  for (const [key, value] of Object.entries(params)) {
    if (!/^[A-Za-z][A-Za-z0-9]{0,63}$/.test(key))
      throw new HyperVError('invalid-argument', `script argument name "${key}" is not a plain name`);
    const t = typeof value;
    if (value !== null && t !== 'string' && t !== 'number' && t !== 'boolean') {
      throw new HyperVError('invalid-argument', `script argument ${key} must be a string, number, boolean or null`);
    }
  }
  return Buffer.from(JSON.stringify(params), 'utf8').toString('base64');
}

export function decodeArgs(b64: string): ScriptParams {
  return JSON.parse(Buffer.from(b64, 'base64').toString('utf8')) as ScriptParams;
}

/** The argument vector of one run (without the program itself). */
export function powershellArgs(scriptPath: string, params: ScriptParams): string[] {
  return [...POWERSHELL_FLAGS, '-File', scriptPath, '-ArgsJson', encodeArgs(params)];
}

export function isScriptName(name: string): name is ScriptName {
  return (HOST_SCRIPTS as readonly string[]).includes(name);
}

// ---------------------------------------------------------------------------------------------
// Reading what a script printed

export interface RawRun {
  stdout: string;
  stderr: string;
  exitCode: number | null;
}

interface ScriptEnvelope {
  result?: unknown;
  error?: { message?: unknown; category?: unknown; fullyQualifiedErrorId?: unknown; cmdlet?: unknown; exceptionType?: unknown };
  warnings?: unknown;
}

const MAX_TEXT = 2000;

/**
 * Turn one run into its result or a HyperVError. The envelope is the LAST stdout line that parses
 * as a JSON object with `result` or `error` (PowerShell may print WARNING: lines before it).
 */
export function interpretRun(script: string, run: RawRun): unknown {
  const envelope = findEnvelope(run.stdout);
  const stderr = readableStderr(run.stderr);
  if (!envelope) {
    const what = stderr || run.stdout.trim().slice(-MAX_TEXT) || 'no output';
    throw new HyperVError('spawn', `${script}: PowerShell gave no JSON answer (exit code ${String(run.exitCode)}): ${what}`, {
      script,
      exitCode: run.exitCode,
      ...(stderr ? { stderr } : {}),
    });
  }
  const warnings = Array.isArray(envelope.warnings) ? envelope.warnings.filter((w): w is string => typeof w === 'string') : [];
  if (envelope.error && typeof envelope.error === 'object') {
    const e = envelope.error;
    const str = (v: unknown) => (typeof v === 'string' && v.length > 0 ? v : undefined);
    const message = (str(e.message) ?? 'unknown PowerShell error').trim();
    const cmdlet = str(e.cmdlet);
    throw new HyperVError('script', `${script}: ${cmdlet ? `${cmdlet}: ` : ''}${message}`, {
      script,
      ...(str(e.category) ? { category: str(e.category) } : {}),
      ...(str(e.fullyQualifiedErrorId) ? { fullyQualifiedErrorId: str(e.fullyQualifiedErrorId) } : {}),
      ...(cmdlet ? { cmdlet } : {}),
      ...(str(e.exceptionType) ? { exceptionType: str(e.exceptionType) } : {}),
      exitCode: run.exitCode,
      warnings,
      ...(stderr ? { stderr } : {}),
    });
  }
  if (run.exitCode !== 0) {
    throw new HyperVError('protocol', `${script}: exit code ${String(run.exitCode)} with a result envelope${stderr ? `: ${stderr}` : ''}`, {
      script,
      exitCode: run.exitCode,
    });
  }
  if (!('result' in envelope)) throw new HyperVError('protocol', `${script}: answer has neither result nor error`, { script });
  return envelope.result;
}

function findEnvelope(stdout: string): ScriptEnvelope | undefined {
  const lines = stdout.split(/\r?\n/);
  for (let i = lines.length - 1; i >= 0; i--) {
    const line = lines[i]!.trim();
    if (!line.startsWith('{')) continue;
    try {
      const doc = JSON.parse(line) as unknown;
      if (doc && typeof doc === 'object' && !Array.isArray(doc) && ('result' in doc || 'error' in doc)) return doc as ScriptEnvelope;
    } catch {
      // not the envelope
    }
  }
  return undefined;
}

/** stderr of powershell.exe may be CLIXML ("#< CLIXML" + <S S="Error">...</S>); keep the text. */
export function readableStderr(stderr: string): string {
  let text = stderr.trim();
  if (text.startsWith('#< CLIXML')) {
    const parts = [...text.matchAll(/<S S="Error">([\s\S]*?)<\/S>/g)].map((m) => m[1]!);
    text = parts
      .join('')
      .replace(/_x([0-9A-Fa-f]{4})_/g, (_, hex: string) => String.fromCharCode(parseInt(hex, 16)))
      .replace(/&lt;/g, '<')
      .replace(/&gt;/g, '>')
      .replace(/&quot;/g, '"')
      .replace(/&apos;/g, "'")
      .replace(/&amp;/g, '&')
      .trim();
  }
  return text.length > MAX_TEXT ? `${text.slice(0, MAX_TEXT)}...` : text;
}

// ---------------------------------------------------------------------------------------------
// Limits shared by the runners

/** At most `n` PowerShell processes (or SSH channels) at once: each loads the Hyper-V module. */
export class Gate {
  private active = 0;
  private readonly waiting: (() => void)[] = [];
  constructor(private readonly n: number) {}

  async run<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active < this.n) this.active++;
    else await new Promise<void>((resolve) => this.waiting.push(resolve)); // the slot is handed over
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.active--;
    }
  }
}

/** Progress callbacks at most every `everyBytes` bytes or `everyMs`, and always at the end. */
export function throttledProgress(onProgress: ((p: Progress) => void) | undefined, everyBytes = 8 << 20, everyMs = 500) {
  let lastBytes = -1;
  let lastAt = 0;
  return (done: number, total: number, force = false) => {
    if (!onProgress) return;
    const now = Date.now();
    if (force || done === total || done - lastBytes >= everyBytes || now - lastAt >= everyMs) {
      lastBytes = done;
      lastAt = now;
      onProgress({ done, total });
    }
  };
}

/** Where the .ps1 files are: next to the compiled code, else in the source tree of the package. */
export function defaultScriptsDir(): string {
  const candidates = [path.join(__dirname, 'scripts')];
  let dir = __dirname;
  for (let i = 0; i < 8; i++) {
    if (existsSync(path.join(dir, 'package.json'))) {
      candidates.push(path.join(dir, 'src', 'providers', 'hyperv', 'scripts'));
      break;
    }
    const up = path.dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  return candidates.find((c) => existsSync(path.join(c, 'enumerate.ps1'))) ?? candidates[0]!;
}

// ---------------------------------------------------------------------------------------------
// Local: the Node-RED machine is the Hyper-V host

export type SpawnFn = (command: string, args: readonly string[], options: SpawnOptions) => ChildProcess;

export interface LocalRunnerOptions {
  /** default powershell.exe */
  powershell?: string;
  /** default: the scripts shipped with this package */
  scriptsDir?: string;
  /** default 10 minutes per script */
  timeoutMs?: number;
  /** PowerShell processes at once, default 4 */
  concurrency?: number;
  /** for tests: replaces child_process.spawn */
  spawn?: SpawnFn;
}

const MAX_STDOUT = 64 << 20;

export class LocalPowerShellRunner implements PowerShellRunner {
  readonly mode = 'local';
  oemCodePage: number | undefined;
  readonly powershell: string;
  readonly scriptsDir: string;
  private readonly timeoutMs: number;
  private readonly spawnFn: SpawnFn;
  private readonly gate: Gate;
  private closed = false;

  constructor(options: LocalRunnerOptions = {}) {
    this.powershell = options.powershell ?? 'powershell.exe';
    this.scriptsDir = options.scriptsDir ?? defaultScriptsDir();
    this.timeoutMs = options.timeoutMs ?? 600_000;
    this.spawnFn = options.spawn ?? (nodeSpawn as SpawnFn);
    this.gate = new Gate(options.concurrency ?? 4);
  }

  /** The exact argument vector of one run, as handed to spawn (program first). */
  argv(script: ScriptName, params: ScriptParams): string[] {
    return [this.powershell, ...powershellArgs(path.join(this.scriptsDir, script), params)];
  }

  run(script: ScriptName, params: ScriptParams, options: RunOptions = {}): Promise<unknown> {
    if (!isScriptName(script)) return Promise.reject(new HyperVError('invalid-argument', `unknown script ${String(script)}`));
    if (this.closed) return Promise.reject(new HyperVError('spawn', `${script}: the Hyper-V runner is closed`, { script }));
    const [program, ...args] = this.argv(script, params);
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    return this.gate.run(() => this.spawnAndRead(script, program!, args, timeoutMs)).then((raw) => interpretRun(script, raw));
  }

  private spawnAndRead(script: string, program: string, args: string[], timeoutMs: number): Promise<RawRun> {
    return new Promise<RawRun>((resolve, reject) => {
      let child: ChildProcess;
      try {
        child = this.spawnFn(program, args, { shell: false, windowsHide: true, stdio: ['ignore', 'pipe', 'pipe'] });
      } catch (err) {
        reject(new HyperVError('spawn', `${script}: cannot start ${program}: ${(err as Error).message}`, { script, cause: err }));
        return;
      }
      const out: Buffer[] = [];
      const errOut: Buffer[] = [];
      let outBytes = 0;
      let settled = false;
      const finish = (fn: () => void) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        fn();
      };
      const timer = setTimeout(() => {
        child.kill();
        finish(() =>
          reject(
            new HyperVError(
              'timeout',
              `${script}: no answer within ${timeoutMs} ms; powershell.exe was stopped (the Hyper-V operation it started may still complete)`,
              { script },
            ),
          ),
        );
      }, timeoutMs);
      timer.unref?.();
      child.stdout?.on('data', (chunk: Buffer) => {
        outBytes += chunk.length;
        if (outBytes <= MAX_STDOUT) out.push(chunk);
      });
      child.stderr?.on('data', (chunk: Buffer) => {
        if (errOut.reduce((n, b) => n + b.length, 0) < 1 << 20) errOut.push(chunk);
      });
      child.on('error', (err: NodeJS.ErrnoException) => {
        const hint = err.code === 'ENOENT' ? ` (${program} not found: local mode runs on the Hyper-V host itself)` : '';
        finish(() => reject(new HyperVError('spawn', `${script}: cannot start ${program}: ${err.message}${hint}`, { script, cause: err })));
      });
      child.on('close', (code: number | null) => {
        finish(() =>
          resolve({
            stdout: Buffer.concat(out).toString('utf8'),
            stderr: decodeStderr(Buffer.concat(errOut), this.oemCodePage),
            exitCode: code,
          }),
        );
      });
    });
  }

  async fetchFile(hostPath: string, localPath: string, onProgress?: (p: Progress) => void): Promise<{ bytes: number }> {
    const total = (await fs.stat(hostPath)).size;
    const report = throttledProgress(onProgress);
    let done = 0;
    report(0, total, true);
    const counter = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        done += chunk.length;
        report(done, total);
        cb(null, chunk);
      },
    });
    await pipeline(createReadStream(hostPath, { highWaterMark: 1 << 20 }), counter, createWriteStream(localPath, { flags: 'wx' }));
    report(done, Math.max(total, done), true);
    return { bytes: done };
  }

  openFile(hostPath: string): Promise<RandomAccessFile> {
    return openLocalFile(hostPath);
  }

  /**
   * New runs are refused; runs in flight are NOT killed: a script stopped half-way could leave a
   * VM's CheckpointType changed. Each still ends by its own timeout.
   */
  async close(): Promise<void> {
    this.closed = true;
  }
}

/** A local file for random reads (local mode: the Hyper-V host is this machine). */
export async function openLocalFile(file: string): Promise<RandomAccessFile> {
  const handle = await fs.open(file, 'r');
  const { size } = await handle.stat();
  return {
    size,
    async read(offset: number, length: number): Promise<Buffer> {
      const buf = Buffer.alloc(length);
      let got = 0;
      while (got < length) {
        const { bytesRead } = await handle.read(buf, got, length - got, offset + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      return got === length ? buf : buf.subarray(0, got);
    },
    close: () => handle.close(),
  };
}
