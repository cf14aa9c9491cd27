// Programs started by a small helper process instead of by the process itself. Node.js starts a
// program by fork + exec, and a fork copies the page tables of the process that forks: from a
// Node-RED process of 200 MiB each spawn() holds its event loop ~13 ms (from one of 50 MiB:
// ~2 ms; `npm run bench` measures it). A backup of 100 VMs x 2 disks starts ~400 programs.
// The launcher is a child Node.js process of ~40 MiB that does the forking, off the event loop.
import { fork, type ChildProcess } from 'node:child_process';
import * as path from 'node:path';

export type LauncherRequest =
  { type: 'run'; id: number; file: string; args: string[] } | { type: 'kill'; id: number; signal: NodeJS.Signals };

export type LauncherReply =
  | { id: number; type: 'stdout'; data: string }
  | { id: number; type: 'stderr'; data: string }
  | { id: number; type: 'error'; message: string; code?: string }
  | { id: number; type: 'close'; code: number | null; signal: NodeJS.Signals | null };

/** What a started program reports; the same whether it was started here or by the launcher. */
export interface ProgramEvents {
  stdout(data: string): void;
  stderr(data: string): void;
  error(err: Error): void;
  close(code: number | null, signal: NodeJS.Signals | null): void;
}

export interface StartedProgram {
  kill(signal: NodeJS.Signals): void;
}

export class ProgramLauncher {
  private child: ChildProcess | undefined;
  private readonly pending = new Map<number, ProgramEvents>();
  private nextId = 1;

  constructor(private readonly script = path.join(__dirname, 'launcher-process.js')) {}

  /** Starts `file` through the launcher process (started, or started again, on demand). */
  start(file: string, args: readonly string[], events: ProgramEvents): StartedProgram {
    const child = this.process();
    const id = this.nextId++;
    this.pending.set(id, events);
    this.hold();
    child.send({ type: 'run', id, file, args: [...args] } satisfies LauncherRequest);
    return {
      kill: (signal) => {
        if (this.pending.has(id) && child.connected) child.send({ type: 'kill', id, signal } satisfies LauncherRequest);
      },
    };
  }

  /** The launcher's pid, while it runs (tests, diagnostics). */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  close(): void {
    this.child?.disconnect();
    this.child = undefined;
  }

  private process(): ChildProcess {
    if (this.child?.connected) return this.child;
    // no inherited node options (a profiler, a preload): the launcher runs nothing but itself
    const child = fork(this.script, [], { execArgv: [], stdio: ['ignore', 'ignore', 'inherit', 'ipc'], serialization: 'json' });
    child.on('message', (m: LauncherReply) => this.receive(m));
    const gone = (why: string) => {
      if (this.child === child) this.child = undefined;
      // whatever it was running: its result is unknown here
      for (const [id, events] of [...this.pending]) {
        this.pending.delete(id);
        events.error(new Error(`program launcher ${why} before the program ended; its result is unknown`));
      }
      this.hold();
    };
    child.on('exit', (code, signal) => gone(`exited (${signal ?? code})`));
    child.on('error', (err) => gone(`failed (${err.message})`));
    this.child = child;
    return child;
  }

  private receive(m: LauncherReply): void {
    const events = this.pending.get(m.id);
    if (!events) return;
    if (m.type === 'stdout') return events.stdout(m.data);
    if (m.type === 'stderr') return events.stderr(m.data);
    this.pending.delete(m.id);
    this.hold();
    if (m.type === 'error') events.error(Object.assign(new Error(m.message), m.code ? { code: m.code } : {}));
    else events.close(m.code, m.signal);
  }

  /** The launcher keeps this process alive only while a program of ours runs. */
  private hold(): void {
    const child = this.child;
    if (!child) return;
    const channel = child.channel as { ref(): void; unref(): void } | undefined;
    if (this.pending.size > 0) {
      child.ref();
      channel?.ref();
    } else {
      child.unref();
      channel?.unref();
    }
  }
}
