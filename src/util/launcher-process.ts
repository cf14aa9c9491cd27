// The program launcher's own process (see launcher.ts): starts the programs its parent asks for,
// with their argument vectors and never a shell, and reports their output and exit over IPC.
// Small on purpose: forking from here costs ~2 ms, forking from a Node-RED process of 200 MiB
// ~13 ms of its event loop.
import { spawn, type ChildProcess } from 'node:child_process';
import type { LauncherReply, LauncherRequest } from './launcher';

const running = new Map<number, ChildProcess>();

function reply(message: LauncherReply): void {
  if (process.connected) process.send!(message);
}

function start(id: number, file: string, args: string[]): void {
  let child: ChildProcess;
  try {
    child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    reply({ id, type: 'error', message: e.message, ...(e.code ? { code: e.code } : {}) });
    return;
  }
  running.set(id, child);
  child.stdout!.setEncoding('utf8').on('data', (data: string) => reply({ id, type: 'stdout', data }));
  child.stderr!.setEncoding('utf8').on('data', (data: string) => reply({ id, type: 'stderr', data }));
  child.on('error', (err: NodeJS.ErrnoException) => {
    running.delete(id);
    reply({ id, type: 'error', message: err.message, ...(err.code ? { code: err.code } : {}) });
  });
  child.on('close', (code, signal) => {
    running.delete(id);
    reply({ id, type: 'close', code, signal });
  });
}

process.on('message', (m: LauncherRequest) => {
  if (m.type === 'run') start(m.id, m.file, m.args);
  else if (m.type === 'kill') running.get(m.id)?.kill(m.signal);
});

// The parent is gone: nobody waits for these programs any more. They are left to finish as they
// would have had the parent started them itself (its death does not kill its children either).
process.on('disconnect', () => process.exit(0));
