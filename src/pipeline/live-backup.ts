// What one backup set has done to the VMs and not yet undone, with the watchdogs that undo it
// whatever the flow does next. Every side effect is journalled before it happens.
import type { StageName } from '../contract/schemas';
import type { Overlay } from '../contract/types';
import type { Journal } from '../journal/journal';
import type { HostProvider } from '../providers/provider';

export interface Timeouts {
  /** a frozen guest is thawed after this long (VSS holds writes at most 10 s) */
  freezeMs: number;
  /** a VM stopped for its saved state is resumed after this long */
  pauseMs: number;
  /** a backup set not finished within this long is aborted */
  sessionMs: number;
  /** a backup set on which no stage runs for this long (message lost, flow mis-wired) is aborted */
  idleMs: number;
  /** one guest-agent or QMP command */
  commandMs: number;
}

export type Logger = (level: 'info' | 'warn' | 'error', text: string) => void;

interface Frozen { since: number; timer: NodeJS.Timeout }
interface Saved { previousState: string; timer: NodeJS.Timeout }

export class LiveBackup {
  stage: StageName | 'busy' | 'ended';
  readonly startedAt = Date.now();
  readonly frozen = new Map<string, Frozen>();
  readonly saved = new Map<string, Saved>();
  readonly overlays = new Map<string, Overlay[]>();
  readonly staging = new Map<string, string>();
  /** VMs the freeze watchdog thawed: never application-consistent */
  readonly thawedByWatchdog = new Set<string>();
  vmIds: Set<string>;
  private sessionTimer: NodeJS.Timeout;
  private idleTimer: NodeJS.Timeout | undefined;
  /** set when a watchdog aborted the set; the next stage reports it */
  abortedBecause: string | undefined;
  private ending: Promise<void> | undefined;

  constructor(
    readonly backupId: string,
    vmIds: Iterable<string>,
    private readonly provider: HostProvider,
    private readonly journal: Journal,
    private readonly timeouts: Timeouts,
    private readonly log: Logger,
    private readonly onEnd: (live: LiveBackup) => void,
  ) {
    this.stage = 'enumerated';
    this.vmIds = new Set(vmIds);
    this.sessionTimer = setTimeout(() => void this.abort(`sessionTimeout (${timeouts.sessionMs} ms) passed`), timeouts.sessionMs);
    this.sessionTimer.unref();
    this.touch();
  }

  /** A stage finished: start counting idle time until the next one. */
  touch(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(
      () => void this.abort(`no stage ran for ${this.timeouts.idleMs} ms (message lost or flow not wired on?)`),
      this.timeouts.idleMs,
    );
    this.idleTimer.unref();
  }

  /** A stage is running: the idle watchdog must not fire under it. */
  busy(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
  }

  hasSideEffects(): boolean {
    return this.frozen.size + this.saved.size + this.overlays.size + this.staging.size > 0;
  }

  // --- freeze / thaw ---

  async freeze(vmId: string, run: () => Promise<number>): Promise<number> {
    this.journal.append({ backupId: this.backupId, vm: vmId, op: 'freeze', phase: 'intent' });
    const since = Date.now();
    // The watchdog is armed before the command: a freeze that hangs in the guest is thawed too.
    const timer = setTimeout(() => void this.watchdogThaw(vmId), this.timeouts.freezeMs);
    timer.unref();
    this.frozen.set(vmId, { since, timer });
    const count = await run();
    this.journal.append({ backupId: this.backupId, vm: vmId, op: 'freeze', phase: 'done' });
    return count;
  }

  private async watchdogThaw(vmId: string): Promise<void> {
    if (!this.frozen.has(vmId)) return;
    this.thawedByWatchdog.add(vmId);
    this.log('warn', `${vmId}: frozen for freezeTimeout (${this.timeouts.freezeMs} ms); thawing now`);
    await this.thaw(vmId).catch((err) => this.log('error', `${vmId}: watchdog thaw failed: ${(err as Error).message}`));
  }

  /** Thaw and report how long the guest was frozen (freeze sent -> thaw acknowledged). */
  async thaw(vmId: string): Promise<number | undefined> {
    const f = this.frozen.get(vmId);
    if (!f) return undefined;
    clearTimeout(f.timer);
    this.journal.append({ backupId: this.backupId, vm: vmId, op: 'thaw', phase: 'intent' });
    try {
      await this.provider.thaw(vmId, this.timeouts.commandMs);
    } catch (err) {
      // keep it listed as frozen and retry shortly: a frozen guest is the worst harm we can do
      f.timer = setTimeout(() => void this.thaw(vmId).catch(() => undefined), 1000);
      f.timer.unref();
      throw err;
    }
    this.frozen.delete(vmId);
    this.journal.append({ backupId: this.backupId, vm: vmId, op: 'thaw', phase: 'done' });
    return Date.now() - f.since;
  }

  // --- saved state / resume ---

  async save(vmId: string, previousState: string, run: () => Promise<void>): Promise<void> {
    this.journal.append({ backupId: this.backupId, vm: vmId, op: 'save', phase: 'intent', data: { previousState } });
    const timer = setTimeout(() => {
      this.log('warn', `${vmId}: stopped for pauseTimeout (${this.timeouts.pauseMs} ms); resuming now`);
      void this.resume(vmId).catch((err) => this.log('error', `${vmId}: watchdog resume failed: ${(err as Error).message}`));
    }, this.timeouts.pauseMs);
    timer.unref();
    this.saved.set(vmId, { previousState, timer });
    await run();
    this.journal.append({ backupId: this.backupId, vm: vmId, op: 'save', phase: 'done', data: { previousState } });
  }

  async resume(vmId: string): Promise<string | undefined> {
    const s = this.saved.get(vmId);
    if (!s) return undefined;
    clearTimeout(s.timer);
    this.journal.append({ backupId: this.backupId, vm: vmId, op: 'resume', phase: 'intent' });
    await this.provider.resume(vmId, s.previousState);
    this.saved.delete(vmId);
    this.journal.append({ backupId: this.backupId, vm: vmId, op: 'resume', phase: 'done' });
    return s.previousState;
  }

  // --- overlays ---

  async snapshot(vmId: string, planned: Overlay[], run: () => Promise<Overlay[]>): Promise<Overlay[]> {
    // Journal the planned overlay files first: if we die mid-transaction, recovery still finds them.
    this.journal.append({ backupId: this.backupId, vm: vmId, op: 'overlay', phase: 'intent', data: { overlays: planned } });
    this.overlays.set(vmId, planned);
    try {
      const made = await run();
      this.overlays.set(vmId, made);
      this.journal.append({ backupId: this.backupId, vm: vmId, op: 'overlay', phase: 'done', data: { overlays: made } });
      return made;
    } catch (err) {
      // A transaction is atomic: on error no overlay is active. Merge is safe when nothing is.
      throw err;
    }
  }

  async merge(vmId: string): Promise<boolean> {
    const overlays = this.overlays.get(vmId);
    if (!overlays) return false;
    this.journal.append({ backupId: this.backupId, vm: vmId, op: 'merge', phase: 'intent' });
    await this.provider.merge(vmId, overlays);
    this.overlays.delete(vmId);
    this.journal.append({ backupId: this.backupId, vm: vmId, op: 'merge', phase: 'done' });
    return true;
  }

  // --- staging directories ---

  noteStaging(vmId: string, dir: string): void {
    if (this.staging.get(vmId) === dir) return;
    this.journal.append({ backupId: this.backupId, vm: vmId, op: 'staging', phase: 'intent', data: { dir } });
    this.staging.set(vmId, dir);
  }

  notePublished(vmId: string): void {
    this.staging.delete(vmId);
    this.journal.append({ backupId: this.backupId, vm: vmId, op: 'publish', phase: 'done' });
  }

  async discard(vmId: string, remove: (dir: string) => Promise<void>): Promise<void> {
    const dir = this.staging.get(vmId);
    if (!dir) return;
    await remove(dir);
    this.staging.delete(vmId);
    this.journal.append({ backupId: this.backupId, vm: vmId, op: 'discard', phase: 'done' });
  }

  // --- the end ---

  /**
   * Undo every side effect still in place: thaw, resume, merge, discard (in that order: a frozen
   * guest hurts first). Every undo is tried even when others fail; errors are returned.
   */
  async undoAll(remove: (dir: string) => Promise<void>): Promise<string[]> {
    const errors: string[] = [];
    const attempt = async (what: string, fn: () => Promise<unknown>) => {
      try {
        await fn();
      } catch (err) {
        errors.push(`${what}: ${(err as Error).message}`);
      }
    };
    await Promise.all([...this.frozen.keys()].map((vm) => attempt(`${vm} thaw`, () => this.thaw(vm))));
    await Promise.all([...this.saved.keys()].map((vm) => attempt(`${vm} resume`, () => this.resume(vm))));
    await Promise.all([...this.overlays.keys()].map((vm) => attempt(`${vm} merge`, () => this.merge(vm))));
    await Promise.all([...this.staging.keys()].map((vm) => attempt(`${vm} discard`, () => this.discard(vm, remove))));
    return errors;
  }

  /** Undo everything and end the set. Used on failure, on timeouts and when the host node closes. */
  abort(why: string, remove?: (dir: string) => Promise<void>): Promise<void> {
    if (this.ending) return this.ending;
    this.abortedBecause ??= why;
    if (this.hasSideEffects()) this.log('warn', `backup ${this.backupId} aborted: ${why}; undoing its effects`);
    this.ending = (async () => {
      const errors = await this.undoAll(remove ?? defaultRemove);
      if (errors.length > 0) {
        this.log('error', `backup ${this.backupId}: could not undo: ${errors.join('; ')} (the journal keeps them for recovery)`);
      }
      this.finish(errors.length === 0);
    })();
    return this.ending;
  }

  /** The set is over; with `clean`, the journal records that nothing of it is pending. */
  finish(clean: boolean): void {
    clearTimeout(this.sessionTimer);
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.stage = 'ended';
    if (clean && !this.hasSideEffects()) this.journal.append({ backupId: this.backupId, op: 'end', phase: 'done' });
    this.onEnd(this);
  }
}

async function defaultRemove(dir: string): Promise<void> {
  const { rm } = await import('node:fs/promises');
  await rm(dir, { recursive: true, force: true });
}
