// What one backup set has done to the VMs and not yet undone, with the watchdogs that undo it
// whatever the flow does next. Every side effect is journalled before it happens.
import { msSince } from '../util/clock';
import type { StageName } from '../contract/schemas';
import type { PointInTimeView } from '../contract/types';
import type { Journal, TrackIntent } from '../journal/journal';
import type { HostProvider } from '../providers/provider';
import { removeStaging } from '../repository/repository';
import { performance } from 'node:perf_hooks';
import { GuardianTimeout, startGuardian, stopGuardian, type Guardian } from './guardian';
import { assertSetUnchanged, assertVmsUnchanged } from './unchanged';

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

/**
 * since: performance.now() (monotonic: a wall clock stepped back must not make frozenMs negative).
 * byGuardian: the guardian process froze it, holds its agent and enforces the cap; `timer` is then
 * only the check that the guardian itself still runs.
 */
interface Frozen {
  since: number;
  timer: NodeJS.Timeout;
  byGuardian: boolean;
}
interface Saved {
  previousState: string;
  timer: NodeJS.Timeout;
  since: number;
}

export class LiveBackup {
  stage: StageName | 'busy' | 'ended';
  readonly startedAt = Date.now();
  readonly frozen = new Map<string, Frozen>();
  readonly saved = new Map<string, Saved>();
  /** VM -> its point-in-time view, from the moment it is journalled until it is released (proven) */
  readonly views = new Map<string, PointInTimeView>();
  /** VM -> the change tracking this set started, until it is settled (see tracking.ts) */
  readonly tracks = new Map<string, { intent: TrackIntent; view: PointInTimeView }>();
  private readonly downtimes = new Map<string, number>();
  /** VMs whose backup of this set is published */
  readonly published = new Set<string>();
  readonly staging = new Map<string, string>();
  /** VMs the freeze watchdog thawed: never application-consistent */
  readonly thawedByWatchdog = new Set<string>();
  /** VM -> when its vCPUs stopped for its saved state, on the monotonic clock (downtimeMs) */
  readonly pausedSince = new Map<string, number>();
  vmIds: Set<string>;
  private sessionTimer: NodeJS.Timeout;
  private idleTimer: NodeJS.Timeout | undefined;
  /** set when a watchdog aborted the set; the next stage reports it */
  abortedBecause: string | undefined;
  private ending: Promise<void> | undefined;
  /** the stage running now, if any: an abort from outside waits for it (and cancels it) before undoing */
  private running: Promise<unknown> | undefined;
  private readonly controller = new AbortController();
  /** what this host itself produced for each VM at the last stage: the message may not change it */
  private readonly records = new Map<string, { stage: string; vm: Record<string, unknown> }>();
  /** the set-level fields this host produced (host, writer, policy, ...): the message may not change them */
  private readonly setRecord: Record<string, unknown> = {};
  /** the process that undoes this set's effects if Node-RED itself dies (see guardian.ts) */
  /** the process that owns the frozen guests' agents and undoes this set's effects if Node-RED itself dies (see guardian.ts) */
  private guardian: Guardian | undefined;
  private guarded = false;
  private endWritten = false;
  private released = false;
  /** undo retried in the background after it failed (the hypervisor busy or unreachable) */
  private retryTimer: NodeJS.Timeout | undefined;
  /** VM -> the timer of its next try to remove a staging directory that could not be removed */
  private readonly discardRetry = new Map<string, NodeJS.Timeout>();
  /** the guardian retries the undos this set could not finish; the host keeps the set meanwhile */
  private adopting = false;

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
    return this.frozen.size + this.saved.size + this.views.size + this.tracks.size + this.staging.size > 0;
  }

  /** What this set still has in place on the VMs and in the repository, in words (for the summary). */
  leftovers(): string[] {
    return [
      ...[...this.frozen.keys()].map((vm) => `${vm}: guest still frozen (thaw retried every second)`),
      ...[...this.saved.keys()].map((vm) => `${vm}: still stopped for its saved state`),
      ...[...this.views.keys()].map(
        (vm) =>
          `${vm}: its point-in-time view is still in place (taken out on a retry every 5 s; the guest runs unharmed on its own image)`,
      ),
      ...[...this.tracks.keys()].map(
        (vm) => `${vm}: change tracking not settled (retried; the next backup may copy more than changed, never less)`,
      ),
      ...[...this.staging].map(([vm, dir]) => `${vm}: unpublished partial backup ${dir} not removed`),
    ];
  }

  /** Fires when the set is aborted: long steps (copies) stop at once. */
  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** Throw if the set was aborted meanwhile (checked between steps and before publishing). */
  assertLive(): void {
    if (this.abortedBecause !== undefined || this.stage === 'ended') {
      throw new Error(`backup set ${this.backupId} was aborted: ${this.abortedBecause ?? 'ended'}`);
    }
  }

  /** Run one stage; an abort from a watchdog or a redeploy waits for it to settle before undoing. */
  runStage<T>(fn: () => Promise<T>): Promise<T> {
    const p = fn();
    this.running = p;
    const clear = () => {
      if (this.running === p) this.running = undefined;
    };
    p.then(clear, clear);
    return p;
  }

  /** A stage starts on this set: no watchdog of idleness fires under it. */
  begin(): void {
    this.stage = 'busy';
    this.busy();
  }

  /** A stage ended: the set is at `stage`, with the VMs as this host output them; idle time counts again. */
  end(stage: StageName, vms: readonly { id: string }[]): void {
    this.record(stage, vms);
    this.stage = stage;
    this.touch();
  }

  /** True while this set still has an effect in place on the VM (frozen, saved, a view, tracking to settle). */
  holds(vmId: string): boolean {
    return this.frozen.has(vmId) || this.saved.has(vmId) || this.views.has(vmId) || this.tracks.has(vmId) || this.staging.has(vmId);
  }

  /** How long the VM's vCPUs were stopped for its saved state, once it runs again (monotonic clock). */
  downtimeMs(vmId: string): number | undefined {
    return this.downtimes.get(vmId);
  }

  /** Remember the VMs as this host output them at `stage` (a deep copy). */
  private record(stage: string, vms: readonly { id: string }[]): void {
    this.records.clear();
    for (const vm of vms) this.records.set(vm.id, { stage, vm: JSON.parse(JSON.stringify(vm)) as Record<string, unknown> });
  }

  /**
   * The fields that steer side effects (which files and block nodes are touched, how the VM is
   * treated, what a backup is labelled) must be exactly what this host produced: a message edited
   * between stages (function node, replay of an old message) is refused, naming the field.
   */
  checkUnchanged(vms: readonly Record<string, unknown>[]): void {
    assertVmsUnchanged(this.records, vms);
  }

  /** Remember set-level fields as this host produced them (a deep copy); later stages check them. */
  recordSet(fields: Record<string, unknown>): void {
    for (const [k, v] of Object.entries(fields)) this.setRecord[k] = v === undefined ? undefined : JSON.parse(JSON.stringify(v));
  }

  /**
   * Every set-level field that steers a side effect or a path (the host's name names the
   * repository folder, the policy decides what is refused) must be what this host produced; a
   * guarded field the host never produced (a repository at a stage before copy) is refused too.
   */
  checkSetUnchanged(set: Record<string, unknown>): void {
    assertSetUnchanged(this.setRecord, set, this.backupId);
  }

  /**
   * Start the guardian now, ahead of the first side effect, and wait until it runs: a Node.js
   * process starting takes a core for ~100 ms, which must not be taken from a guest that is
   * freezing or a VM whose memory is being saved.
   */
  async guard(): Promise<void> {
    if (this.guarded) return;
    this.guarded = true;
    this.attach(startGuardian(this.provider, this.journal, this.backupId, this.timeouts.commandMs));
    await this.guardian?.ready;
  }

  private attach(guardian: Guardian | undefined): void {
    this.guardian = guardian;
    if (!guardian) return;
    guardian.on('thawed', (vmId: string, frozenMs: number, capped: boolean) => this.thawedByGuardian(vmId, frozenMs, capped));
    guardian.on('ended', () => this.adoptedDone());
    guardian.once('exit', () => {
      if (this.guardian !== guardian) return;
      this.guardian = undefined;
      // a later side effect starts a new one
      this.guarded = false;
      this.adoptionOver();
      // the guests it held frozen are ours again (its agent connections closed with it): thaw them
      for (const [vmId, f] of this.frozen) {
        if (!f.byGuardian) continue;
        f.byGuardian = false;
        this.log('warn', `${vmId}: the guardian process exited while the guest was frozen; thawing from Node-RED`);
        void this.thaw(vmId).catch((err) => this.log('error', `${vmId}: thaw failed: ${(err as Error).message}; retried`));
      }
    });
  }

  /** Journal the intent of a side effect, then make sure a guardian outlives us while it lasts. */
  private intent(entry: Parameters<Journal['append']>[0]): void {
    this.journal.append(entry);
    if (!this.guarded) {
      this.guarded = true;
      this.attach(startGuardian(this.provider, this.journal, this.backupId, this.timeouts.commandMs));
    }
  }

  /**
   * Journal an undo (or the end). Best effort: an undo is safe to repeat, so a journal that cannot
   * be written (disk full) must never stop a guest from being thawed or a VM from being resumed;
   * the effect's intent stays in the journal and recovery repeats the undo, harmlessly.
   */
  private note(entry: Parameters<Journal['append']>[0], durable = true): void {
    try {
      this.journal.append(entry, durable);
    } catch (err) {
      this.log('error', `${entry.vm ?? this.backupId}: ${entry.op} ${entry.phase} not journalled: ${(err as Error).message}`);
    }
  }

  // --- freeze / thaw ---

  /**
   * Freeze through the guardian when it runs (it holds the agent, arms the cap, thaws at the cap
   * whatever Node-RED does); `run` (the provider's own freeze) only when there is no guardian.
   */
  async freeze(vmId: string, run: () => Promise<number>): Promise<number> {
    this.intent({ backupId: this.backupId, vm: vmId, op: 'freeze', phase: 'intent' });
    const guardian = this.guardian?.alive ? this.guardian : undefined;
    // the agent serves one client: Node-RED's own connection (from enumerate) must be closed
    // before the guardian connects; done before the freeze, outside the frozen window
    if (guardian) await this.provider.releaseAgent?.(vmId);
    const since = performance.now();
    // The watchdog is armed before the command: a freeze that hangs in the guest is thawed too.
    // With a guardian it only checks, a little after the cap, that the guardian really thawed.
    const timer = guardian
      ? setTimeout(() => void this.checkGuardian(vmId), this.timeouts.freezeMs + GUARDIAN_CHECK_MS)
      : setTimeout(() => void this.watchdogThaw(vmId), this.timeouts.freezeMs);
    timer.unref();
    this.frozen.set(vmId, { since, timer, byGuardian: guardian !== undefined });
    const count = guardian ? await guardian.freeze(vmId, this.timeouts.freezeMs, this.timeouts.freezeMs) : await run();
    // not fsync'd: recovery acts on the (durable) intent; an fsync here would lengthen the frozen window
    this.journal.append({ backupId: this.backupId, vm: vmId, op: 'freeze', phase: 'done' }, false);
    return count;
  }

  /**
   * A guest the guardian froze is still listed frozen past the cap: the guardian should have thawed
   * it and told us. If it answers a ping it is alive (its thaw is slow or retried: it goes on); if
   * it does not (stopped, hung), it is killed, which closes its agent connection, and Node-RED
   * thaws the guest itself (the exit handler in attach()).
   */
  private async checkGuardian(vmId: string): Promise<void> {
    const f = this.frozen.get(vmId);
    const guardian = this.guardian;
    if (!f || !f.byGuardian || !guardian) return;
    try {
      await guardian.ping(GUARDIAN_PING_MS);
      f.timer = setTimeout(() => void this.checkGuardian(vmId), 1000);
      f.timer.unref();
    } catch (err) {
      if (!(err instanceof GuardianTimeout) && guardian.alive) return;
      this.log('warn', `${vmId}: frozen past freezeTimeout and the guardian process does not answer; killing it and thawing from Node-RED`);
      this.thawedByWatchdog.add(vmId);
      guardian.kill();
    }
  }

  /** The guardian thawed a guest on its own (the cap, or a thaw it retried after a failure). */
  private thawedByGuardian(vmId: string, frozenMs: number, capped: boolean): void {
    const f = this.frozen.get(vmId);
    if (!f) return;
    if (capped) {
      this.thawedByWatchdog.add(vmId);
      this.log('warn', `${vmId}: frozen for freezeTimeout (${this.timeouts.freezeMs} ms); the guardian thawed it`);
    }
    this.thawed(vmId, f, frozenMs);
  }

  private async watchdogThaw(vmId: string): Promise<void> {
    if (!this.frozen.has(vmId)) return;
    this.thawedByWatchdog.add(vmId);
    this.log('warn', `${vmId}: frozen for freezeTimeout (${this.timeouts.freezeMs} ms); thawing now`);
    await this.thaw(vmId).catch((err) => this.log('error', `${vmId}: watchdog thaw failed: ${(err as Error).message}`));
  }

  /**
   * Still frozen now, as the agent says (and not thawed by the cap meanwhile)? Asked right after
   * the snapshot: only a freeze that held until then gives an application-consistent backup.
   */
  async stillFrozen(vmId: string): Promise<boolean> {
    const f = this.frozen.get(vmId);
    try {
      if (f?.byGuardian && this.guardian?.alive) {
        const s = await this.guardian.status(vmId);
        return s.status === 'frozen' && !s.capped;
      }
      const probe = (this.provider as Partial<{ freezeStatus(id: string): Promise<string> }>).freezeStatus;
      if (!probe) return true;
      return (await probe.call(this.provider, vmId)) === 'frozen';
    } catch {
      return false;
    }
  }

  /** Thaw and report how long the guest was frozen (freeze sent -> thaw acknowledged, monotonic). */
  async thaw(vmId: string): Promise<number | undefined> {
    const f = this.frozen.get(vmId);
    if (!f) return undefined;
    // Thaw lines are not fsync'd: a thaw is safe to repeat (recovery thaws again if "done" is lost),
    // and an fsync on a busy disk would hold the guest frozen, and block every other guest's
    // watchdog, for as long as it takes.
    this.note({ backupId: this.backupId, vm: vmId, op: 'thaw', phase: 'intent' }, false);
    if (f.byGuardian && this.guardian?.alive) {
      // the guardian times the window itself; on failure it retries alone and reports "thawed"
      const r = await this.guardian.thaw(vmId);
      if (r.capped) this.thawedByWatchdog.add(vmId);
      if (!this.frozen.has(vmId)) return r.frozenMs; // its "thawed" event came first
      return this.thawed(vmId, f, r.frozenMs);
    }
    clearTimeout(f.timer);
    try {
      await this.provider.thaw(vmId, this.timeouts.commandMs);
    } catch (err) {
      // keep it listed as frozen and retry shortly: a frozen guest is the worst harm we can do
      f.timer = setTimeout(() => void this.thaw(vmId).catch(() => undefined), 1000);
      f.timer.unref();
      throw err;
    }
    return this.thawed(vmId, f, msSince(f.since));
  }

  private thawed(vmId: string, f: Frozen, frozenMs: number): number {
    clearTimeout(f.timer);
    this.frozen.delete(vmId);
    this.note({ backupId: this.backupId, vm: vmId, op: 'thaw', phase: 'done' }, false);
    this.endIfUndone();
    if (this.stage === 'ended' && this.frozen.size === 0 && !this.adopting) this.leaveHost();
    return Math.round(frozenMs * 10) / 10;
  }

  // --- saved state / resume ---

  /** `run` saves the state and answers when the vCPUs stopped (performance.now()), if it knows. */
  async save(vmId: string, previousState: string, run: () => Promise<number | undefined>): Promise<void> {
    this.intent({ backupId: this.backupId, vm: vmId, op: 'save', phase: 'intent', data: { previousState } });
    const timer = setTimeout(() => {
      this.log('warn', `${vmId}: stopped for pauseTimeout (${this.timeouts.pauseMs} ms); resuming now`);
      void this.resume(vmId).catch((err) => this.log('error', `${vmId}: watchdog resume failed: ${(err as Error).message}`));
    }, this.timeouts.pauseMs);
    timer.unref();
    const saved: Saved = { previousState, timer, since: performance.now() };
    this.saved.set(vmId, saved);
    saved.since = (await run()) ?? saved.since;
    this.journal.append({ backupId: this.backupId, vm: vmId, op: 'save', phase: 'done', data: { previousState } });
  }

  async resume(vmId: string): Promise<string | undefined> {
    const s = this.saved.get(vmId);
    if (!s) return undefined;
    clearTimeout(s.timer);
    this.note({ backupId: this.backupId, vm: vmId, op: 'resume', phase: 'intent' });
    await this.provider.resume(vmId, s.previousState);
    this.saved.delete(vmId);
    this.downtimes.set(vmId, msSince(s.since));
    this.note({ backupId: this.backupId, vm: vmId, op: 'resume', phase: 'done' });
    this.endIfUndone();
    return s.previousState;
  }

  // --- point-in-time view ---

  /**
   * Journal the view the provider planned, ahead of making any of it (before a guest is frozen):
   * whatever a crash leaves of it, recovery takes out by these names.
   */
  planView(vmId: string, view: PointInTimeView): void {
    this.intent({ backupId: this.backupId, vm: vmId, op: 'view', phase: 'intent', data: { view } });
    this.views.set(vmId, view);
  }

  /** The view as made (a provider may name things only now): the undo uses this record from here on. */
  viewMade(vmId: string, view: PointInTimeView): void {
    this.views.set(vmId, view);
    // not fsync'd: the planned record, durable already, is enough to undo it
    this.note({ backupId: this.backupId, vm: vmId, op: 'view', phase: 'intent', data: { view } }, false);
  }

  /** Take the view away; done only when the provider has proven it with the hypervisor. */
  async release(vmId: string): Promise<boolean> {
    const view = this.views.get(vmId);
    if (!view) return false;
    this.note({ backupId: this.backupId, vm: vmId, op: 'release', phase: 'intent' }, false);
    await this.provider.releaseView(vmId, view);
    this.views.delete(vmId);
    this.note({ backupId: this.backupId, vm: vmId, op: 'release', phase: 'done' });
    return true;
  }

  // --- change tracking ---

  async startTracking(vmId: string, intent: TrackIntent, view: PointInTimeView): Promise<void> {
    if (!this.provider.tracking || intent.records.length === 0) return;
    this.intent({ backupId: this.backupId, vm: vmId, op: 'track', phase: 'intent', data: { track: intent, view } });
    this.tracks.set(vmId, { intent, view });
    await this.provider.tracking.start(vmId, intent.records, view);
  }

  /**
   * Settle the tracking: published, the parent's records go (this backup's carry on); not
   * published, this backup's go (the parent's never stopped recording: no change is lost).
   */
  async settleTracking(vmId: string): Promise<void> {
    const t = this.tracks.get(vmId);
    if (!t || !this.provider.tracking) return;
    const remove = this.published.has(vmId) ? t.intent.since : t.intent.records;
    await this.provider.tracking.remove(vmId, remove, t.view);
    this.tracks.delete(vmId);
    this.note({ backupId: this.backupId, vm: vmId, op: 'untrack', phase: 'done' });
  }

  // --- staging directories ---

  noteStaging(vmId: string, dir: string, unpublished = false): void {
    if (this.staging.get(vmId) === dir) return;
    if (!unpublished) this.assertLive();
    this.intent({ backupId: this.backupId, vm: vmId, op: 'staging', phase: 'intent', data: { dir } });
    this.staging.set(vmId, dir);
  }

  /** About to rename the VM's staging directory to its final name (recovery takes a half-published set back). */
  notePublishing(vmId: string, dir: string): void {
    this.journal.append({ backupId: this.backupId, vm: vmId, op: 'publish', phase: 'intent', data: { dir } });
  }

  notePublished(vmId: string): void {
    this.staging.delete(vmId);
    this.published.add(vmId);
    this.journal.append({ backupId: this.backupId, vm: vmId, op: 'publish', phase: 'done' });
  }

  /** A published VM taken back (another VM of the set failed to publish): it is staging again. */
  unpublished(vmId: string, dir: string): void {
    this.published.delete(vmId);
    this.noteStaging(vmId, dir, true);
  }

  async discard(vmId: string): Promise<void> {
    const dir = this.staging.get(vmId);
    if (!dir) return;
    if (this.discardRetry.has(vmId)) clearTimeout(this.discardRetry.get(vmId));
    this.discardRetry.delete(vmId);
    try {
      await removeStaging(dir);
    } catch (err) {
      // A repository that cannot be written now (read-only, gone) may be again: retry every few
      // seconds until the directory is gone, then the set ends (its guardian goes). The caller
      // reports this failure meanwhile.
      const timer = setTimeout(
        () =>
          void this.discard(vmId).then(
            () => {
              this.log('info', `${vmId}: partial backup ${dir} removed on a later try`);
              this.endIfUndone();
            },
            () => undefined,
          ),
        DISCARD_RETRY_MS,
      );
      timer.unref();
      this.discardRetry.set(vmId, timer);
      throw err;
    }
    this.staging.delete(vmId);
    this.note({ backupId: this.backupId, vm: vmId, op: 'discard', phase: 'done' });
  }

  // --- the end ---

  /**
   * Undo every side effect still in place: thaw, resume, release, settle tracking, discard (in
   * that order: a frozen guest hurts first). Every undo is tried even when others fail; errors
   * are returned, and what failed is retried in the background until it succeeds.
   */
  async undoAll(): Promise<string[]> {
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
    await Promise.all([...this.views.keys()].map((vm) => attempt(`${vm} release of the point-in-time view`, () => this.release(vm))));
    await Promise.all([...this.tracks.keys()].map((vm) => attempt(`${vm} change tracking`, () => this.settleTracking(vm))));
    await Promise.all([...this.staging.keys()].map((vm) => attempt(`${vm} discard`, () => this.discard(vm))));
    if (errors.length > 0) this.retryLater();
    return errors;
  }

  /** A failed undo is tried again every few seconds until it succeeds; the set ends then. */
  private retryLater(): void {
    if (this.retryTimer) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      // the guardian took them over (it retries from the journal, here or if Node-RED goes away)
      if (this.adopting || this.endWritten) return;
      void this.undoAll().then((errors) => {
        if (errors.length === 0) {
          this.log('info', `backup ${this.backupId}: the undo that had failed succeeded on a retry; nothing of it is left`);
          this.endIfUndone();
          if (this.frozen.size === 0) this.leaveHost();
        }
      });
    }, 5000);
    this.retryTimer.unref();
  }

  /**
   * Undo everything and end the set. Used on failure, on timeouts and when the host node closes.
   * From outside a stage (watchdog, redeploy) a running stage is cancelled and waited for first,
   * so that nothing is undone under it (a merge under a running copy, a staging directory made
   * again after its discard). `fromStage`: called by the failing stage itself.
   */
  abort(why: string, fromStage = false): Promise<void> {
    // inside a running stage, an abort already under way is waiting for this very stage
    if (this.ending) return fromStage && this.running ? Promise.resolve() : this.ending;
    this.abortedBecause ??= why;
    this.controller.abort(new Error(why));
    const running = fromStage ? undefined : this.running;
    if (this.hasSideEffects() || running) this.log('warn', `backup ${this.backupId} aborted: ${why}; undoing its effects`);
    this.ending = (async () => {
      if (running) await running.catch(() => undefined);
      const errors = await this.undoAll();
      if (errors.length > 0) {
        this.log('error', `backup ${this.backupId}: could not undo: ${errors.join('; ')} (the journal keeps them for recovery)`);
      }
      this.finish(errors.length === 0);
    })();
    return this.ending;
  }

  /** An ended set with nothing left in place: journal "end" and let its guardian go. */
  private endIfUndone(): void {
    if (this.stage !== 'ended' || this.endWritten || this.hasSideEffects()) return;
    this.endWritten = true;
    this.note({ backupId: this.backupId, op: 'end', phase: 'done' });
    stopGuardian(this.guardian);
    this.guardian = undefined;
    // nothing is left for an adopting guardian either (a retried thaw here was the last undo)
    this.adopting = false;
  }

  /** The set is over; with `clean`, the journal records that nothing of it is pending. */
  finish(clean: boolean): void {
    clearTimeout(this.sessionTimer);
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.stage = 'ended';
    // Not clean: the journal keeps what is left, and the guardian adopts it: it retries those
    // undos, writes "end" when they are done and exits (it also undoes them if Node-RED goes away).
    // A later successful retry here (a thaw without guardian) ends the set too.
    if (clean) this.endIfUndone();
    else if (this.guardian?.alive && this.hasSideEffects()) {
      // kept by the host until its guardian is done, so that no new backup touches these VMs while
      // their undos are retried
      this.adopting = true;
      this.guardian.adopt().catch((err: Error) => {
        this.log(
          'warn',
          `backup ${this.backupId}: the guardian did not take the undos left (${err.message}); recovery at the next start does them`,
        );
        this.adoptionOver();
      });
    }
    // A guest whose thaw is still being retried (its agent stopped or busy) is still frozen by
    // this set: the host keeps the set until the thaw succeeds, so that no new backup freezes
    // that guest meanwhile and "no live set" really means nothing of ours is left in a guest.
    if (this.frozen.size === 0 && !this.adopting) this.leaveHost();
  }

  /** The guardian gave up or went away: recovery at the next start does the rest, as before. */
  private adoptionOver(): void {
    if (!this.adopting) return;
    this.adopting = false;
    if (this.frozen.size === 0) this.leaveHost();
  }

  /** The guardian finished every undo it adopted and wrote "end": nothing of the set is left. */
  private adoptedDone(): void {
    for (const f of this.frozen.values()) clearTimeout(f.timer);
    for (const s of this.saved.values()) clearTimeout(s.timer);
    this.frozen.clear();
    this.saved.clear();
    this.views.clear();
    this.tracks.clear();
    this.staging.clear();
    this.endWritten = true;
    this.guardian = undefined;
    this.adopting = false;
    this.log('info', `backup ${this.backupId}: the undos left were retried and done by its guardian; the set ended`);
    this.leaveHost();
  }

  /** Tell the host this set is gone (once). */
  private leaveHost(): void {
    if (this.released) return;
    this.released = true;
    this.onEnd(this);
  }
}

/** How often a staging directory that could not be removed is tried again. */
export const DISCARD_RETRY_MS = 3000;

/** After the cap, how long the guardian has to report its thaw before Node-RED checks on it. */
const GUARDIAN_CHECK_MS = 250;
/** A guardian that does not answer a ping within this is stalled (SIGSTOPped, hung). */
const GUARDIAN_PING_MS = 400;
