// The guardian: a small detached process per live backup set, outside Node-RED (its code is in
// guardian-process.ts). It owns the guest agent of every guest the set freezes: Node-RED asks it
// over an IPC channel to freeze, thaw and read the freeze status, and it thaws at freezeTimeout by
// its own timer, so a busy, stopped or dead Node-RED cannot keep a guest frozen past the cap. If
// Node-RED dies with the set's side effects in place, it undoes them at once from the journal:
// thaw, resume, release of the view, settle tracking, discard; then it writes "end" for the set. Recovery at the next start finds
// nothing left, or repeats what the guardian could not do (every undo is safe to repeat).
//
// Started by LiveBackup with process.execPath and an argument vector (no shell); SIGTERMed when
// the set ends. Only providers that describe themselves for it (guardianSpec) get one. It acts
// through the set's ledger (src/ledger): the same pending rule and undo functions as the live set
// and recovery; it sits below the pipeline and imports nothing of it.
import { spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import type { Journal } from '../journal/journal';
import type { HostProvider } from '../providers/provider';
import type { GuardianReply, GuardianRequest, GuardianSpec } from './protocol';

export type { GuardianReply, GuardianRequest, GuardianSpec } from './protocol';

type Req<O extends GuardianRequest['op']> = Omit<Extract<GuardianRequest, { op: O }>, 'id'>;

/**
 * Node-RED's end of one guardian. Events: "thawed" (vm, frozenMs, capped) when the guardian thawed
 * a guest on its own (the cap, or a thaw it retried), "ended" when it finished the undos it
 * adopted, "exit" when the process is gone.
 */
export class Guardian extends EventEmitter {
  /** resolves once the guardian runs (or could not start, or after 5 s): never rejects */
  readonly ready: Promise<void>;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; timer?: NodeJS.Timeout }>();
  private isReady = false;

  constructor(readonly child: ChildProcess) {
    super();
    // the guardian must never keep Node-RED from exiting: the channel holds the loop only while a
    // request waits for its answer
    child.unref();
    child.channel?.unref();
    this.ready = new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 5000);
      timer.unref();
      this.once('ready', () => {
        clearTimeout(timer);
        resolve();
      });
      child.once('exit', () => resolve());
    });
    child.on('message', (m: GuardianReply) => this.onMessage(m));
    child.on('error', () => undefined);
    child.once('exit', () => {
      for (const p of this.pending.values()) {
        if (p.timer) clearTimeout(p.timer);
        p.reject(new Error('the guardian process exited'));
      }
      this.pending.clear();
      this.emit('exit');
    });
  }

  /** Running and reachable over its channel. */
  get alive(): boolean {
    return this.isReady && this.child.connected && this.child.exitCode === null && this.child.signalCode === null;
  }

  private onMessage(m: GuardianReply): void {
    if ('id' in m) {
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (p.timer) clearTimeout(p.timer);
      if (this.pending.size === 0) this.child.channel?.unref();
      if (m.ok) p.resolve(m.value);
      else p.reject(new Error(m.error));
      return;
    }
    if (m.event === 'ready') {
      this.isReady = true;
      this.emit('ready');
    } else if (m.event === 'thawed') this.emit('thawed', m.vm, m.frozenMs, m.capped);
    else if (m.event === 'ended') this.emit('ended');
  }

  private request<O extends GuardianRequest['op']>(req: Req<O>, timeoutMs?: number): Promise<unknown> {
    if (!this.alive) return Promise.reject(new Error('the guardian process is not running'));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const entry: { resolve: (v: unknown) => void; reject: (e: Error) => void; timer?: NodeJS.Timeout } = { resolve, reject };
      if (timeoutMs !== undefined) {
        entry.timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new GuardianTimeout(`the guardian did not answer ${req.op} within ${timeoutMs} ms`));
        }, timeoutMs);
      }
      this.pending.set(id, entry);
      this.child.channel?.ref();
      try {
        this.child.send({ ...req, id } as GuardianRequest);
      } catch (err) {
        this.pending.delete(id);
        if (entry.timer) clearTimeout(entry.timer);
        reject(err as Error);
      }
    });
  }

  /** Answered by the guardian's event loop alone (no agent): tells a stalled guardian from a slow agent. */
  async ping(timeoutMs: number): Promise<void> {
    await this.request<'ping'>({ op: 'ping' }, timeoutMs);
  }

  /** The guardian arms its cap timer (capMs), then sends guest-fsfreeze-freeze. */
  async freeze(vm: string, capMs: number, timeoutMs: number): Promise<number> {
    return (await this.request<'freeze'>({ op: 'freeze', vm, capMs, timeoutMs })) as number;
  }

  /** frozenMs: freeze sent -> thaw acknowledged, on the guardian's monotonic clock; capped: the cap thawed it. */
  async thaw(vm: string): Promise<{ frozenMs: number; capped: boolean }> {
    return (await this.request<'thaw'>({ op: 'thaw', vm })) as { frozenMs: number; capped: boolean };
  }

  async status(vm: string): Promise<{ status: string; capped: boolean }> {
    return (await this.request<'status'>({ op: 'status', vm })) as { status: string; capped: boolean };
  }

  /** Hand the set's undos still pending in the journal to the guardian: it retries them, ends the set and exits. */
  async adopt(): Promise<void> {
    await this.request<'adopt'>({ op: 'adopt' }, 5000);
  }

  kill(): void {
    try {
      this.child.kill('SIGKILL');
    } catch {
      // gone already
    }
  }
}

export class GuardianTimeout extends Error {}

/** Start a guardian for one set; undefined when the provider cannot be guarded from outside. */
export function startGuardian(provider: HostProvider, journal: Journal, backupId: string, commandMs: number): Guardian | undefined {
  const spec = provider.guardianSpec?.();
  if (!spec) return undefined;
  const full: GuardianSpec = { journal: journal.file, backupId, parentPid: process.pid, provider: spec, commandMs, giveUpMs: 600_000 };
  try {
    const child = spawn(process.execPath, [__filename, JSON.stringify(full)], {
      detached: true,
      stdio: ['ignore', 'ignore', 'ignore', 'ipc'],
    });
    return new Guardian(child);
  } catch {
    return undefined; // the watchdogs and recovery at start still hold
  }
}

export function stopGuardian(guardian: Guardian | undefined): void {
  const child = guardian?.child;
  if (child && child.exitCode === null && child.signalCode === null) {
    try {
      child.kill('SIGTERM');
    } catch {
      // gone already
    }
  }
}

if (require.main === module) {
  // the process itself lives in its own file; this entry keeps the argument vector (and so the
  // way operators and the fault suite find a set's guardian) as it was
  (require('./guardian-process') as typeof import('./guardian-process'))
    .main(JSON.parse(process.argv[2] ?? '{}') as GuardianSpec)
    .catch(() => process.exit(1));
}
