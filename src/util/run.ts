// Programs run with argument vectors only: never through a shell.
import { spawn } from 'node:child_process';
import { ProgramLauncher, type ProgramEvents, type StartedProgram } from './launcher';

export interface RunResult {
  stdout: string;
  stderr: string;
}

export class ProgramFailed extends Error {
  constructor(
    readonly file: string,
    readonly code: number | null,
    readonly stderr: string,
  ) {
    super(`${file} exited with ${code ?? 'a signal'}: ${stderr.trim().split('\n').slice(-3).join(' | ').slice(0, 600)}`);
    this.name = 'ProgramFailed';
  }
}

/** What a failed program said last (its last stderr line), else the error's own message. */
export function lastErrorLine(err: unknown): string {
  if (err instanceof ProgramFailed) return err.stderr.trim().split('\n').pop() || err.message;
  return err instanceof Error ? err.message : String(err);
}

let launcher: ProgramLauncher | undefined;

/**
 * Start programs through a small launcher process (see launcher.ts) rather than from this
 * process. The Node-RED nodes turn it on: their process is the large one.
 */
export function useProgramLauncher(on: boolean): void {
  if (on) launcher ??= new ProgramLauncher();
  else {
    launcher?.close();
    launcher = undefined;
  }
}

/** the launcher process's pid, when one runs */
export function programLauncherPid(): number | undefined {
  return launcher?.pid;
}

function startDirect(file: string, args: readonly string[], events: ProgramEvents): StartedProgram {
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.setEncoding('utf8').on('data', events.stdout);
  child.stderr.setEncoding('utf8').on('data', events.stderr);
  child.on('error', events.error);
  child.on('close', events.close);
  return { kill: (signal) => child.kill(signal) };
}

export function runProgram(
  file: string,
  args: readonly string[],
  opts: { onStdout?: (chunk: string) => void; timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    if (opts.signal?.aborted) {
      reject(abortError(file, opts.signal));
      return;
    }
    let stdout = '';
    let stderr = '';
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    let again: NodeJS.Timeout | undefined;
    const finish = (fn: () => void) => {
      if (settled) return;
      settled = true;
      if (timer) clearTimeout(timer);
      if (again) clearInterval(again);
      opts.signal?.removeEventListener('abort', stop);
      fn();
    };
    const events: ProgramEvents = {
      stdout: (d) => {
        if (opts.onStdout) opts.onStdout(d);
        else stdout += d;
      },
      stderr: (d) => {
        stderr = (stderr + d).slice(-8192);
      },
      error: (err) => finish(() => reject(err)),
      close: (code) =>
        finish(() => {
          if (opts.signal?.aborted) reject(abortError(file, opts.signal));
          else if (code === 0) resolve({ stdout, stderr });
          else reject(new ProgramFailed(file, code, stderr));
        }),
    };
    let started: StartedProgram;
    try {
      started = launcher ? launcher.start(file, args, events) : startDirect(file, args, events);
    } catch (err) {
      finish(() => reject(err));
      return;
    }
    // A SIGTERM can be lost: one sent to qemu-nbd while it still starts (its socket already
    // there) is taken by its handler and then forgotten as it enters its main loop (measured: 10
    // of 60 qemu-nbd stopped the moment their socket appeared went on waiting for a client, and
    // a failed copy waited 10 s for it). So the signal is sent again every 200 ms until it is gone.
    if (opts.timeoutMs) timer = setTimeout(stop, opts.timeoutMs);
    opts.signal?.addEventListener('abort', stop, { once: true });
    function stop(): void {
      if (again || settled) return;
      started.kill('SIGTERM');
      again = setInterval(() => started.kill('SIGTERM'), 200);
      again.unref(); // the program's own pipes keep this process up while it runs
    }
  });
}

function abortError(file: string, signal: AbortSignal): Error {
  return Object.assign(new Error(`${file} was stopped: ${String(signal.reason ?? 'aborted')}`), { name: 'AbortError', code: 'ABORT_ERR' });
}
