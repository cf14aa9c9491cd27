// Programs run with argument vectors only: never through a shell.
import { spawn } from 'node:child_process';

export interface RunResult {
  stdout: string;
  stderr: string;
}

export class ProgramFailed extends Error {
  constructor(readonly file: string, readonly code: number | null, readonly stderr: string) {
    super(`${file} exited with ${code ?? 'a signal'}: ${stderr.trim().split('\n').slice(-3).join(' | ').slice(0, 600)}`);
    this.name = 'ProgramFailed';
  }
}

export function runProgram(
  file: string,
  args: readonly string[],
  opts: { onStdout?: (chunk: string) => void; timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'], signal: opts.signal });
    let stdout = '';
    let stderr = '';
    const timer = opts.timeoutMs ? setTimeout(() => child.kill('SIGTERM'), opts.timeoutMs) : undefined;
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      if (opts.onStdout) opts.onStdout(d);
      else stdout += d;
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      stderr = (stderr + d).slice(-8192);
    });
    child.on('error', (err) => {
      if (timer) clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      if (timer) clearTimeout(timer);
      if (code === 0) resolve({ stdout, stderr });
      else reject(new ProgramFailed(file, code, stderr));
    });
  });
}
