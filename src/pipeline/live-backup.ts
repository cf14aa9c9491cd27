// One backup set while it lives on its host: the stage it is at, the watchdogs that end it whatever
// the flow does next, and its effects on the VMs, each done through its ledger (src/ledger): what
// the set holds is the ledger's alone, derived from the journal lines it writes before and after
// every effect. Every ending (a stage failed, a watchdog, the host node closing) goes through one
// path, abort(): undo through the ledger, hand what is left to the guardian, report.
import { msSince } from '../util/clock';
import { settledWithin, withinMs } from '../util/deadline';
import type { StageName } from '../contract/schemas';
import type { PointInTimeView } from '../contract/types';
import type { Journal, TrackIntent } from '../journal/journal';
import { Ledger } from '../ledger/ledger';
import type { PendingUndo } from '../ledger/pending';
import type { UndoContext } from '../ledger/undo';
import type { HostProvider } from '../providers/provider';
import { performance } from 'node:perf_hooks';
import { GuardianTimeout, startGuardian, stopGuardian, type Guardian } from '../guardian/guardian';
import { OutputRecord } from './unchanged';

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

/** Who ended a set: a stage that failed (its node reports it), a watchdog, or the host node closing. */
export type EndedBy = 'stage' | 'watchdog' | 'close';

/** How a set ended, for the user: what failed where, what happened to the backups and to the VMs. */
export interface SetEnding {
  backupId: string;
  by: EndedBy;
  why: string;
  /** the step that was running, or that was due next when the set ended between steps */
  failedAt: string;
  /** the set as this host last output it (for the summary) */
  set: { backupId: string; stage: string; host?: unknown; createdAt?: unknown; vms: Record<string, unknown>[] };
  /** VMs whose backup of this set stayed published */
  published: string[];
  /** what the set still has in place, in words (empty: every VM is back as it was) */
  left: string[];
  /** the guardian process that took over what is left, if one did */
  guardianPid?: number;
}

/** The next step after a stage: the one an ending between steps is reported at. */
const NEXT_STEP: Record<string, string> = {
  enumerated: 'classify',
  classified: 'prepare',
  prepared: 'snapshot',
  snapshotted: 'post-snapshot',
  'post-snapshot': 'copy',
};

/** How long an ending waits for a running stage to let go (stop its copy) before it hands the set over. */
export const LET_GO_MS = 3000;
/** How long the host node's close lets the undos run before what is left goes to the guardian. */
export const CLOSE_UNDO_MS = 6000;

export class LiveBackup {
  stage: StageName | 'busy' | 'ended';
  readonly startedAt = Date.now();
  readonly ledger: Ledger;
  /** VMs the freeze watchdog (or the guardian's cap) thawed: never application-consistent */
  readonly thawedByWatchdog = new Set<string>();
  /** guests the guardian process froze: it holds their agent and thaws them */
  private readonly heldByGuardian = new Set<string>();
  /** the watchdog timer of each frozen or stopped VM (`freeze:<vm>`, `save:<vm>`) */
  private readonly watchdogs = new Map<string, NodeJS.Timeout>();
  private readonly downtimes = new Map<string, number>();
  vmIds: Set<string>;
  private sessionTimer: NodeJS.Timeout;
  private idleTimer: NodeJS.Timeout | undefined;
  /** set when the set was ended from outside its stage (watchdog, close); the next stage reports it */
  abortedBecause: string | undefined;
  private ending: Promise<void> | undefined;
  /** how the set ended, once it did */
  endedAs: SetEnding | undefined;
  /** the stage running now, if any: an ending from outside waits for it (and cancels it) before undoing */
  private running: Promise<unknown> | undefined;
  /** the step running now (prepare, snapshot, ...), for failedAt */
  private step: string | undefined;
  private readonly controller = new AbortController();
  /** what this host itself output for the set (VMs, set-level fields): the message may not change it */
  readonly output: OutputRecord;
  /** the process that owns the frozen guests' agents and undoes this set's effects if Node-RED itself dies (see guardian.ts) */
  private guardian: Guardian | undefined;
  private guarded = false;
  private released = false;
  /** the undos left are retried here (no guardian took them): one timer for the whole set */
  private retryTimer: NodeJS.Timeout | undefined;
  /** the guardian retries the undos this set could not finish; the host keeps the set meanwhile */
  private adopting = false;
  /** the guardian did not take (or gave up) the undos left: they are retried here */
  private guardianRefused = false;
  /** the host node is closing: nothing is retried here any more (its connections are going) */
  private closing = false;

  constructor(
    readonly backupId: string,
    vmIds: Iterable<string>,
    private readonly provider: HostProvider,
    journal: Journal,
    private readonly timeouts: Timeouts,
    private readonly log: Logger,
    /** the set is gone from the host (nothing of it left here, or its guardian finished) */
    private readonly onEnd: (live: LiveBackup) => void,
    /** the set ended: how, for the user (called once, when the first undo pass is over) */
    private readonly onEnding: (ending: SetEnding) => void = () => undefined,
  ) {
    this.stage = 'enumerated';
    this.vmIds = new Set(vmIds);
    this.ledger = new Ledger(journal, backupId, log);
    this.output = new OutputRecord(backupId);
    this.sessionTimer = setTimeout(
      () => void this.abort(`sessionTimeout (${timeouts.sessionMs} ms) passed`, { by: 'watchdog' }),
      timeouts.sessionMs,
    );
    this.sessionTimer.unref();
    this.touch();
  }

  /** A stage finished: start counting idle time until the next one. */
  touch(): void {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(
      () =>
        void this.abort(`idleTimeout: no stage ran for ${this.timeouts.idleMs} ms (message lost or flow not wired on?)`, {
          by: 'watchdog',
        }),
      this.timeouts.idleMs,
    );
    this.idleTimer.unref();
  }

  hasSideEffects(): boolean {
    return this.ledger.pending().length > 0;
  }

  /** What this set still has in place on the VMs and in the repository, in words (for the summary). */
  leftovers(): string[] {
    return this.ledger.describe();
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

  /** Run one stage; an ending from a watchdog or a redeploy waits for it to settle before undoing. */
  runStage<T>(fn: () => Promise<T>): Promise<T> {
    const p = fn();
    this.running = p;
    const clear = () => {
      if (this.running === p) this.running = undefined;
    };
    p.then(clear, clear);
    return p;
  }

  /** A stage (`step`: its node's name) starts on this set: no watchdog of idleness fires under it. */
  begin(step: string): void {
    this.stage = 'busy';
    this.step = step;
    this.ledger.step(step);
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
  }

  /** A stage ended: the set is at `stage`, with the VMs as this host output them; idle time counts again. */
  end(stage: StageName, vms: readonly { id: string }[]): void {
    this.output.recordVms(stage, vms);
    this.stage = stage;
    this.step = undefined;
    this.touch();
  }

  /** True while this set still has an effect in place on the VM (frozen, saved, a view, tracking to settle). */
  /** Anything of the set was journalled: it began prepare, so its ending is reported. */
  get touched(): boolean {
    return this.ledger.touched;
  }

  holds(vmId: string): boolean {
    return this.ledger.holds(vmId);
  }

  isFrozen(vmId: string): boolean {
    return this.ledger.has('thaw', vmId);
  }

  /** How long the VM's vCPUs were stopped for its saved state, once it runs again (monotonic clock). */
  downtimeMs(vmId: string): number | undefined {
    return this.downtimes.get(vmId);
  }

  // --- the guardian ---

  /**
   * Start the guardian now, ahead of the first side effect, and wait until it runs: a Node.js
   * process starting takes a core for ~100 ms, which must not be taken from a guest that is
   * freezing or a VM whose memory is being saved.
   */
  async guard(): Promise<void> {
    this.ensureGuardian();
    await this.guardian?.ready;
  }

  private ensureGuardian(): void {
    if (this.guarded) return;
    this.guarded = true;
    const guardian = startGuardian(this.provider, this.ledger.journal, this.backupId, this.timeouts.commandMs);
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
      for (const vmId of [...this.heldByGuardian]) {
        this.heldByGuardian.delete(vmId);
        if (!this.isFrozen(vmId)) continue;
        this.log('warn', `${vmId}: the guardian process exited while the guest was frozen; thawing from Node-RED`);
        void this.thaw(vmId).catch((err) => this.log('error', `${vmId}: thaw failed: ${(err as Error).message}; retried`));
      }
    });
  }

  /** Journal the intent of a side effect, then make sure a guardian outlives us while it lasts. */
  private intent(...args: Parameters<Ledger['intent']>): void {
    this.ledger.intent(...args);
    this.ensureGuardian();
  }

  private setWatchdog(key: string, ms: number, fire: () => void): void {
    this.clearWatchdog(key);
    const timer = setTimeout(fire, ms);
    timer.unref();
    this.watchdogs.set(key, timer);
  }

  private clearWatchdog(key: string): void {
    const t = this.watchdogs.get(key);
    if (t) clearTimeout(t);
    this.watchdogs.delete(key);
  }

  /** How an undo reaches the hypervisor from here: a guest the guardian froze is thawed through it. */
  private get undoContext(): UndoContext {
    return { commandMs: this.timeouts.commandMs, thaw: (vm) => this.thawNow(vm) };
  }

  // --- freeze / thaw ---

  /**
   * Freeze through the guardian when it runs (it holds the agent, arms the cap, thaws at the cap
   * whatever Node-RED does); `run` (the provider's own freeze) only when there is no guardian.
   */
  async freeze(vmId: string, run: () => Promise<number>): Promise<number> {
    this.intent('freeze', vmId);
    const guardian = this.guardian?.alive ? this.guardian : undefined;
    // the agent serves one client: Node-RED's own connection (from enumerate) must be closed
    // before the guardian connects; done before the freeze, outside the frozen window
    if (guardian) await this.provider.releaseAgent?.(vmId);
    // The watchdog is armed before the command: a freeze that hangs in the guest is thawed too.
    // With a guardian it only checks, a little after the cap, that the guardian really thawed.
    if (guardian) {
      this.heldByGuardian.add(vmId);
      this.setWatchdog(`freeze:${vmId}`, this.timeouts.freezeMs + GUARDIAN_CHECK_MS, () => void this.checkGuardian(vmId));
    } else this.setWatchdog(`freeze:${vmId}`, this.timeouts.freezeMs, () => void this.watchdogThaw(vmId));
    const count = guardian ? await guardian.freeze(vmId, this.timeouts.freezeMs, this.timeouts.freezeMs) : await run();
    // not fsync'd: recovery acts on the (durable) intent; an fsync here would lengthen the frozen window
    this.ledger.done('freeze', vmId, undefined, false);
    return count;
  }

  /**
   * A guest the guardian froze is still listed frozen past the cap: the guardian should have thawed
   * it and told us. If it answers a ping it is alive (its thaw is slow or retried: it goes on); if
   * it does not (stopped, hung), it is killed, which closes its agent connection, and Node-RED
   * thaws the guest itself (the exit handler in ensureGuardian()).
   */
  private async checkGuardian(vmId: string): Promise<void> {
    const guardian = this.guardian;
    if (!this.isFrozen(vmId) || !this.heldByGuardian.has(vmId) || !guardian) return;
    try {
      await guardian.ping(GUARDIAN_PING_MS);
      this.setWatchdog(`freeze:${vmId}`, 1000, () => void this.checkGuardian(vmId));
    } catch (err) {
      if (!(err instanceof GuardianTimeout) && guardian.alive) return;
      this.log('warn', `${vmId}: frozen past freezeTimeout and the guardian process does not answer; killing it and thawing from Node-RED`);
      this.thawedByWatchdog.add(vmId);
      guardian.kill();
    }
  }

  /** The guardian thawed a guest on its own (the cap, or a thaw it retried after a failure). */
  private thawedByGuardian(vmId: string, frozenMs: number, capped: boolean): void {
    if (!this.isFrozen(vmId)) return;
    if (capped) {
      this.thawedByWatchdog.add(vmId);
      this.log('warn', `${vmId}: frozen for freezeTimeout (${this.timeouts.freezeMs} ms); the guardian thawed it`);
    }
    this.heldByGuardian.delete(vmId);
    void this.thaw(vmId, frozenMs);
  }

  private async watchdogThaw(vmId: string): Promise<void> {
    if (!this.isFrozen(vmId)) return;
    this.thawedByWatchdog.add(vmId);
    this.log('warn', `${vmId}: frozen for freezeTimeout (${this.timeouts.freezeMs} ms); thawing now`);
    await this.thaw(vmId).catch((err) => this.log('error', `${vmId}: watchdog thaw failed: ${(err as Error).message}`));
  }

  /**
   * Still frozen now, as the agent says (and not thawed by the cap meanwhile)? Asked right after
   * the snapshot: only a freeze that held until then gives an application-consistent backup.
   */
  async stillFrozen(vmId: string): Promise<boolean> {
    try {
      if (this.heldByGuardian.has(vmId) && this.guardian?.alive) {
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

  /** how long each guest was frozen, once thawed (as the guardian measured it, or here) */
  private readonly frozenMsOf = new Map<string, number>();

  /** The thaw itself: through the guardian when it froze the guest, else this process's agent. */
  private async thawNow(vmId: string): Promise<void> {
    if (this.heldByGuardian.has(vmId) && this.guardian?.alive) {
      // the guardian times the window itself; on failure it retries alone and reports "thawed"
      const r = await this.guardian.thaw(vmId);
      if (r.capped) this.thawedByWatchdog.add(vmId);
      this.heldByGuardian.delete(vmId);
      this.frozenMsOf.set(vmId, r.frozenMs);
      return;
    }
    await this.provider.thaw(vmId, this.timeouts.commandMs);
  }

  /** Thaw and report how long the guest was frozen (freeze sent -> thaw acknowledged, monotonic). */
  async thaw(vmId: string, frozenMs?: number): Promise<number | undefined> {
    const u = this.ledger.pendingFor('thaw', vmId);
    // thawed already (the guardian's event came first): how long it was frozen
    if (!u) return this.frozenMsOf.get(vmId);
    const since = this.ledger.startedAt('freeze', vmId) ?? performance.now();
    this.clearWatchdog(`freeze:${vmId}`);
    if (frozenMs !== undefined) this.frozenMsOf.set(vmId, frozenMs);
    try {
      // thawed by the guardian already (frozenMs given): only the record is written
      await this.ledger.undo(
        u,
        this.provider,
        frozenMs !== undefined ? { ...this.undoContext, thaw: async () => undefined } : this.undoContext,
      );
    } catch (err) {
      // still frozen: retried shortly (a frozen guest is the worst harm we can do)
      this.setWatchdog(`freeze:${vmId}`, 1000, () => void this.thaw(vmId).catch(() => undefined));
      throw err;
    }
    const ms = Math.round((this.frozenMsOf.get(vmId) ?? msSince(since)) * 10) / 10;
    this.frozenMsOf.set(vmId, ms);
    this.settleIfEnded();
    return ms;
  }

  // --- saved state / resume ---

  /** `run` saves the state and answers when the vCPUs stopped (performance.now()), if it knows. */
  async save(vmId: string, previousState: string, run: () => Promise<number | undefined>): Promise<void> {
    this.intent('save', vmId, { previousState });
    this.setWatchdog(`save:${vmId}`, this.timeouts.pauseMs, () => {
      this.log('warn', `${vmId}: stopped for pauseTimeout (${this.timeouts.pauseMs} ms); resuming now`);
      void this.resume(vmId).catch((err) => this.log('error', `${vmId}: watchdog resume failed: ${(err as Error).message}`));
    });
    const stoppedAt = await run();
    if (stoppedAt !== undefined) this.pausedSince.set(vmId, stoppedAt);
    this.ledger.done('save', vmId, { previousState });
  }

  /** when each VM's vCPUs stopped for its saved state, as the provider measured it (monotonic) */
  private readonly pausedSince = new Map<string, number>();

  async resume(vmId: string): Promise<string | undefined> {
    const u = this.ledger.pendingFor('resume', vmId);
    if (!u) return undefined;
    this.clearWatchdog(`save:${vmId}`);
    const since = this.pausedSince.get(vmId) ?? this.ledger.startedAt('save', vmId) ?? performance.now();
    await this.ledger.undo(u, this.provider, this.undoContext);
    this.downtimes.set(vmId, msSince(since));
    this.settleIfEnded();
    return u.previousState;
  }

  // --- point-in-time view ---

  /**
   * Journal the view the provider planned, ahead of making any of it (before a guest is frozen):
   * whatever a crash leaves of it, recovery takes out by these names.
   */
  planView(vmId: string, view: PointInTimeView): void {
    this.intent('view', vmId, { view });
  }

  /** The view as made (a provider may name things only now): the undo uses this record from here on. */
  viewMade(vmId: string, view: PointInTimeView): void {
    // not fsync'd: the planned record, durable already, is enough to undo it
    this.ledger.intent('view', vmId, { view }, false);
  }

  /** Take the view away; done only when the provider has proven it with the hypervisor. */
  async release(vmId: string): Promise<boolean> {
    const u = this.ledger.pendingFor('release', vmId);
    if (!u) return false;
    await this.ledger.undo(u, this.provider, this.undoContext);
    return true;
  }

  // --- change tracking ---

  async startTracking(vmId: string, intent: TrackIntent, view: PointInTimeView): Promise<void> {
    if (!this.provider.tracking || intent.records.length === 0) return;
    this.intent('track', vmId, { track: intent, view });
    await this.provider.tracking.start(vmId, intent.records, view);
  }

  /**
   * Settle the tracking: published, the parent's records go (this backup's carry on); not
   * published, this backup's go (the parent's never stopped recording: no change is lost). Which
   * records go is the ledger's one rule (pending.ts).
   */
  async settleTracking(vmId: string): Promise<void> {
    const u = this.ledger.pendingFor('untrack', vmId);
    if (u) await this.ledger.undo(u, this.provider, this.undoContext);
  }

  // --- staging directories ---

  noteStaging(vmId: string, dir: string): void {
    if (this.ledger.pendingFor('discard', vmId)?.dir === dir) return;
    this.assertLive();
    this.intent('staging', vmId, { dir });
  }

  /** About to rename the VM's staging directory to its final name (recovery takes a half-published set back). */
  notePublishing(vmId: string, dir: string): void {
    this.ledger.publishing(vmId, dir);
  }

  notePublished(vmId: string): void {
    this.ledger.done('publish', vmId);
  }

  /** A published VM taken back (another VM of the set failed to publish): its staging directory is pending again. */
  unpublished(vmId: string): void {
    this.ledger.done('unpublish', vmId);
  }

  async discard(vmId: string): Promise<void> {
    const u = this.ledger.pendingFor('discard', vmId);
    if (u) await this.ledger.undo(u, this.provider, this.undoContext);
  }

  // --- the end ---

  /**
   * Undo every side effect still in place, through the ledger: thaw, resume, release, settle
   * tracking, discard (in that order: a frozen guest hurts first). Every undo is tried even when
   * others fail; errors are returned.
   */
  async undoAll(): Promise<string[]> {
    const errors: string[] = [];
    const pending = this.ledger.pending();
    for (const kind of ['thaw', 'resume', 'release', 'untrack', 'discard'] as const) {
      await Promise.all(
        pending
          .filter((u) => u.kind === kind)
          .map((u) => this.undoOne(u).catch((err: Error) => void errors.push(`${u.vm} ${UNDO_WORDS[kind]}: ${err.message}`))),
      );
    }
    return errors;
  }

  private undoOne(u: PendingUndo): Promise<unknown> {
    switch (u.kind) {
      case 'thaw':
        return this.thaw(u.vm);
      case 'resume':
        return this.resume(u.vm);
      default:
        return this.ledger.undo(u, this.provider, this.undoContext);
    }
  }

  /**
   * End the set: the one path for a stage that failed (`fromStage`), a watchdog and the host node
   * closing. From outside a stage, a running stage is cancelled and waited for first (at most
   * `letGoMs`), so that nothing is undone under it; a stage that does not let go has its set
   * handed to the guardian, which undoes it from the journal. Then every undo through the ledger;
   * what is left goes to the guardian (or is retried here without one); then the ending is
   * reported (onEnding). `undoMs` bounds the undo pass (the host node's close has a deadline).
   */
  abort(why: string, o: { by?: EndedBy; fromStage?: boolean; letGoMs?: number; undoMs?: number } = {}): Promise<void> {
    const fromStage = o.fromStage ?? o.by === 'stage';
    // inside a running stage, an ending already under way is waiting for this very stage
    if (this.ending) return fromStage && this.running ? Promise.resolve() : this.ending;
    const by = o.by ?? (fromStage ? 'stage' : 'watchdog');
    if (this.stage === 'ended') {
      // completed, with undos still retried: one more pass (bounded), nothing new to report; a
      // closing host stops its own retries then (the guardian, or the next host node's recovery,
      // goes on from the journal: two clients of one QMP socket would only fail each other)
      if (by === 'close') this.closing = true;
      if (this.retryTimer && this.closing) clearTimeout(this.retryTimer);
      this.ending = withinMs(this.undoAll(), o.undoMs, []).then(() => this.settle());
      return this.ending;
    }
    this.abortedBecause ??= why;
    const failedAt = this.step ?? NEXT_STEP[this.stage] ?? this.stage;
    this.controller.abort(new Error(why));
    const running = fromStage ? undefined : this.running;
    if (this.hasSideEffects() || running) this.log('warn', `backup ${this.backupId} ended: ${why}; undoing its effects`);
    this.ending = (async () => {
      let handedOver = false;
      if (running) {
        const letGo = await settledWithin(running, o.letGoMs ?? LET_GO_MS);
        if (!letGo) {
          handedOver = true;
          this.log('warn', `backup ${this.backupId}: its ${failedAt} did not stop within ${o.letGoMs ?? LET_GO_MS} ms of the ending`);
        }
      }
      this.stopTimers();
      this.stage = 'ended';
      // nothing new starts on this set from here on (a late step of a stage that did not let go)
      this.ledger.close(why);
      if (by === 'close') this.closing = true;
      let errors = ['the running step did not stop in time'];
      if (!handedOver) errors = await withinMs(this.undoAll(), o.undoMs, ['the undo did not finish in time']);
      else if (!this.guardian?.alive && by !== 'close') {
        // no guardian to hand it to: wait for the step, then undo here (a closing host cannot wait:
        // the journal keeps the set for the next host node's recovery)
        await running?.catch(() => undefined);
        errors = await this.undoAll();
      }
      if (errors.length > 0) {
        this.log('error', `backup ${this.backupId}: could not undo: ${errors.join('; ')} (the journal keeps them for recovery)`);
      }
      await this.settle(by === 'close' ? { why, step: failedAt } : undefined);
      this.endedAs = {
        backupId: this.backupId,
        by,
        why,
        failedAt,
        set: this.output.lastOutput(),
        published: this.ledger.published(),
        left: this.leftovers().map((l) =>
          this.adopting && this.guardian ? `${l} [guardian process ${this.guardian.child.pid} at work on it]` : l,
        ),
        ...(this.adopting && this.guardian?.child.pid ? { guardianPid: this.guardian.child.pid } : {}),
      };
      // a set that never began prepare did nothing to a VM: a report-only flow (enumerate and
      // classify) leaves its sets to expire by design, so that expiry is not reported as a failure
      if (this.ledger.touched) this.onEnding(this.endedAs);
    })();
    return this.ending;
  }

  /** The last stage finished and published: undo what is left (the views), end the set. Returns the undos that failed. */
  async complete(): Promise<string[]> {
    this.stopTimers();
    const errors = await this.undoAll();
    this.stage = 'ended';
    this.ledger.close('completed');
    if (errors.length > 0) this.abortedBecause = `undo failed: ${errors.join('; ')}`;
    await this.settle();
    return errors;
  }

  private stopTimers(): void {
    clearTimeout(this.sessionTimer);
    if (this.idleTimer) clearTimeout(this.idleTimer);
  }

  /**
   * The set is over: with nothing pending, its "end" line and its guardian goes; else the guardian
   * adopts what is left (it retries those undos from the journal, writes "end" when they are done
   * and exits; it also undoes them if Node-RED goes away), or, without a guardian, they are retried
   * here. The host keeps the set meanwhile, so that no new backup touches these VMs. Resolves once
   * the guardian took them (its "adopt" line is in the journal: a recovery started after this, by
   * the next host node of a redeploy, leaves the set to it instead of racing it).
   */
  private async settle(unreported?: { why: string; step: string }): Promise<void> {
    if (!this.hasSideEffects()) return this.endClean(unreported);
    if (this.adopting) return;
    if (this.guardian?.alive && !this.guardianRefused) {
      this.adopting = true;
      for (const t of this.watchdogs.values()) clearTimeout(t);
      this.watchdogs.clear();
      await this.guardian.adopt().catch((err: Error) => {
        this.log(
          'warn',
          `backup ${this.backupId}: the guardian did not take the undos left (${err.message}); they are retried here, and recovery at the next start does them`,
        );
        this.adoptionOver();
      });
      return;
    }
    this.retryLater();
  }

  /** A retried undo (a thaw by its watchdog, a retry) succeeded: an ended set with nothing left ends. */
  private settleIfEnded(): void {
    if (this.stage === 'ended' && !this.adopting && !this.hasSideEffects()) this.endClean();
  }

  private endClean(unreported?: { why: string; step: string }): void {
    if (!this.ledger.ended) this.ledger.end(unreported);
    for (const t of this.watchdogs.values()) clearTimeout(t);
    this.watchdogs.clear();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    stopGuardian(this.guardian);
    this.guardian = undefined;
    this.adopting = false;
    this.leaveHost();
  }

  /** Without a guardian, the undos left are tried again every second (a thaw) or few seconds until done. */
  private retryLater(): void {
    // a closing host leaves them to the journal: the next host node's recovery does them
    if (this.retryTimer || this.closing) return;
    const ms = this.ledger.pending().some((u) => u.kind === 'thaw') ? 1000 : RETRY_MS;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (this.adopting || this.ledger.ended) return;
      void this.undoAll().then((errors) => {
        if (errors.length === 0) {
          this.log('info', `backup ${this.backupId}: the undo that had failed succeeded on a retry; nothing of it is left`);
          this.settleIfEnded();
        } else void this.settle();
      });
    }, ms);
    this.retryTimer.unref();
  }

  /** The guardian gave up or went away: retried here; recovery at the next start does the rest. */
  private adoptionOver(): void {
    if (!this.adopting) return;
    this.adopting = false;
    this.guardianRefused = true;
    this.ledger.refresh();
    if (this.stage === 'ended') void this.settle();
  }

  /** The guardian finished every undo it adopted and wrote "end": nothing of the set is left. */
  private adoptedDone(): void {
    this.ledger.refresh();
    this.adopting = false;
    this.guardian = undefined;
    this.log('info', `backup ${this.backupId}: the undos left were retried and done by its guardian; the set ended`);
    for (const t of this.watchdogs.values()) clearTimeout(t);
    this.watchdogs.clear();
    this.leaveHost();
  }

  /** Tell the host this set is gone (once). */
  private leaveHost(): void {
    if (this.released) return;
    this.released = true;
    this.onEnd(this);
  }
}

const UNDO_WORDS = {
  thaw: 'thaw',
  resume: 'resume',
  release: 'release of the point-in-time view',
  untrack: 'change tracking',
  discard: 'discard',
} as const;

/** How often undos that failed are tried again when no guardian took them. */
export const RETRY_MS = 3000;

/** After the cap, how long the guardian has to report its thaw before Node-RED checks on it. */
const GUARDIAN_CHECK_MS = 250;
/** A guardian that does not answer a ping within this is stalled (SIGSTOPped, hung). */
const GUARDIAN_PING_MS = 400;
