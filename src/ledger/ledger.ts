// One ledger per backup set: every effect the set has on a VM or in the repository, written as an
// intent before it happens and as done after, in the set's journal lines (their durable form). What
// the set still holds is derived from those lines by the one rule (pending.ts), and undone by the one
// function per kind (undo.ts). The live set keeps no other record of its effects: it asks its ledger.
// The guardian process and recovery at start read the same lines from the journal file.
import { performance } from 'node:perf_hooks';
import type { Journal, JournalEntry } from '../journal/journal';
import type { HostProvider } from '../providers/provider';
import { pendingUndos, UNDO_OF, type EffectOp, type PendingUndo, type UndoKind } from './pending';
import { undo, type UndoContext } from './undo';

export type LedgerLog = (level: 'info' | 'warn' | 'error', text: string) => void;
type Data = JournalEntry['data'];

/** Undo lines of a thaw are not fsync'd: see Ledger.undo. */
const DURABLE_DONE: Readonly<Record<UndoKind, boolean>> = { thaw: false, resume: true, release: true, untrack: true, discard: true };

export class LedgerClosed extends Error {}

export class Ledger {
  /** the set's journal lines as this process wrote them (and, after refresh(), as the file holds them) */
  private lines: JournalEntry[] = [];
  /**
   * The same lines by VM, and the set's own (no VM: steps, its end): a question about one VM reads
   * its lines and the set's, not every line of a set of 200 VMs (that was quadratic in the VMs)
   */
  private byVm = new Map<string, JournalEntry[]>();
  private setLines: JournalEntry[] = [];
  /** monotonic time each open effect's intent was written (timings only; not part of the record) */
  private readonly started = new Map<string, number>();
  private closedWhy: string | undefined;

  constructor(
    readonly journal: Journal,
    readonly backupId: string,
    private readonly log: LedgerLog = () => undefined,
  ) {}

  /**
   * Write the intent of an effect before it happens; `durable` (the default) fsyncs it first. A
   * line that cannot be written throws (JournalError) and the effect must not happen. Refused once
   * the set ended or was handed over: nothing new starts on a set whose undo has begun.
   */
  intent(op: EffectOp, vm: string, data?: Data, durable = true): void {
    if (this.closedWhy !== undefined) throw new LedgerClosed(`backup set ${this.backupId} ended (${this.closedWhy}): no new ${op}`);
    this.append({ backupId: this.backupId, vm, op, phase: 'intent', ...(data ? { data } : {}) }, durable, true);
    if (!this.started.has(`${op}:${vm}`)) this.started.set(`${op}:${vm}`, performance.now());
  }

  /** A line that records an effect's outcome or an undo: best effort (see note()). */
  done(op: EffectOp | 'publish' | 'unpublish', vm: string, data?: Data, durable = true): void {
    this.note({ backupId: this.backupId, vm, op, phase: 'done', ...(data ? { data } : {}) }, durable);
  }

  /** A stage began on the set (not fsync'd: only the report of an interrupted set reads it). */
  step(step: string): void {
    this.note({ backupId: this.backupId, op: 'step', phase: 'intent', data: { step } }, false);
  }

  /** About to rename a VM's staging directory to its final name (journalled durably first). */
  publishing(vm: string, dir: string): void {
    this.append({ backupId: this.backupId, vm, op: 'publish', phase: 'intent', data: { dir } }, true, true);
  }

  /**
   * Write a line whose loss is harmless, because the undo it records is safe to repeat: a journal
   * that cannot be written (disk full) must never stop a guest from being thawed or a VM from
   * being resumed. The line counts here even when the file refused it; the effect's intent stays in
   * the file and recovery repeats the undo, harmlessly.
   */
  private note(entry: Omit<JournalEntry, 't'>, durable: boolean): void {
    this.append(entry, durable, false);
  }

  private append(entry: Omit<JournalEntry, 't'>, durable: boolean, mustWrite: boolean): void {
    const line = { t: new Date().toISOString(), ...this.journal.stamp, ...entry } as JournalEntry;
    try {
      this.journal.append(entry, durable);
    } catch (err) {
      if (mustWrite) throw err;
      this.log('error', `${entry.vm ?? this.backupId}: ${entry.op} ${entry.phase} not journalled: ${(err as Error).message}`);
    }
    this.lines.push(line);
    this.index(line);
  }

  private index(line: JournalEntry): void {
    if (line.vm === undefined) this.setLines.push(line);
    else {
      const own = this.byVm.get(line.vm);
      if (own) own.push(line);
      else this.byVm.set(line.vm, [line]);
    }
  }

  /** Every undo still pending for one VM (its lines and the set's: the set's end settles them all). */
  private pendingOf(vm: string): PendingUndo[] {
    return pendingUndos([...this.setLines, ...(this.byVm.get(vm) ?? [])]);
  }

  /** Every undo still pending, in the order they run (thaw first). */
  pending(): PendingUndo[] {
    return pendingUndos(this.lines);
  }

  /** The pending undo of one kind for one VM. */
  pendingFor<K extends UndoKind>(kind: K, vm: string): Extract<PendingUndo, { kind: K }> | undefined {
    return this.pendingOf(vm).find((u) => u.kind === kind) as Extract<PendingUndo, { kind: K }> | undefined;
  }

  has(kind: UndoKind, vm: string): boolean {
    return this.pendingFor(kind, vm) !== undefined;
  }

  /** True while the set still has an effect in place on the VM or its staging directory. */
  holds(vm: string): boolean {
    return this.pendingOf(vm).length > 0;
  }

  /** When the effect's intent was written (performance.now()), while it is open. */
  startedAt(op: EffectOp, vm: string): number | undefined {
    return this.started.get(`${op}:${vm}`);
  }

  /** The VMs whose backup of this set is published (and not taken back). */
  published(): string[] {
    const out = new Set<string>();
    for (const l of this.lines) {
      if (l.op === 'publish' && l.phase === 'done' && l.vm) out.add(l.vm);
      if (l.op === 'unpublish' && l.phase === 'done' && l.vm) out.delete(l.vm);
    }
    return [...out];
  }

  /**
   * Undo one pending effect with the one undo function of its kind, journalling it around the
   * call. Thaw lines are not fsync'd: a thaw is safe to repeat, and an fsync on a busy disk would
   * hold the guest frozen, and block every other guest's watchdog, for as long as it takes.
   */
  async undo(u: PendingUndo, provider: HostProvider, ctx: UndoContext): Promise<'done' | 'nothing-to-do'> {
    this.note({ backupId: this.backupId, vm: u.vm, op: u.kind, phase: 'intent' }, false);
    const result = await undo(provider, u, ctx);
    this.note(
      {
        backupId: this.backupId,
        vm: u.vm,
        op: u.kind,
        phase: 'done',
        ...(result === 'nothing-to-do' ? { data: { nothingToDo: true } } : {}),
      },
      DURABLE_DONE[u.kind],
    );
    const effect = (Object.keys(UNDO_OF) as EffectOp[]).find((e) => UNDO_OF[e] === u.kind)!;
    this.started.delete(`${effect}:${u.vm}`);
    return result;
  }

  /** No new effect from now on (the set is ending, or its undos were handed to the guardian). */
  close(why: string): void {
    this.closedWhy ??= why;
  }

  get closed(): boolean {
    return this.closedWhy !== undefined;
  }

  /**
   * The set is over with nothing pending: its "end" line (the guardian and recovery skip it from now
   * on). `unreported`: it was ended by its host node closing (why, in which step); the user may not
   * have heard of it (Node-RED stopping): recovery at the next start reports it once.
   */
  end(unreported?: { why: string; step: string }): void {
    this.close('ended');
    if (this.lines.length === 0) return; // nothing of it was ever journalled
    const data = unreported ? { data: { error: unreported.why, step: unreported.step, unreported: true } } : {};
    this.note({ backupId: this.backupId, op: 'end', phase: 'done', ...data }, true);
  }

  /** Anything of the set was journalled (a stage past classify began on it). */
  get touched(): boolean {
    return this.lines.length > 0;
  }

  get ended(): boolean {
    return this.setLines.some((l) => l.op === 'end');
  }

  /**
   * Read the set's lines back from the journal file: after the guardian process wrote the undos
   * it took over, the file is the record. Lines this process could not write (their undo is
   * repeated by whoever reads the file) are kept.
   */
  refresh(): void {
    const inFile = this.journal.read().filter((e) => e.backupId === this.backupId);
    const key = (e: JournalEntry) => `${e.t}|${e.vm ?? ''}|${e.op}|${e.phase}`;
    const seen = new Set(inFile.map(key));
    this.lines = [...inFile, ...this.lines.filter((l) => !seen.has(key(l)))].sort((a, b) => a.t.localeCompare(b.t));
    this.byVm = new Map();
    this.setLines = [];
    for (const l of this.lines) this.index(l);
  }

  /** What is still pending, in words (for the summary and the ending report). */
  describe(): string[] {
    return this.pending().map((u) => `${u.vm}: ${LEFT[u.kind]}${u.kind === 'discard' ? ` (${u.dir})` : ''}`);
  }
}

const LEFT: Readonly<Record<UndoKind, string>> = {
  thaw: 'guest still frozen (thaw retried every second)',
  resume: 'still stopped for its saved state',
  release: 'its point-in-time view is still in place (taken out on a retry; the guest runs unharmed on its own image)',
  untrack: 'change tracking not settled (retried; the next backup may copy more than changed, never less)',
  discard: 'unpublished partial backup not removed',
};
