// What a backup set still has in place, derived from its journal lines: every effect whose intent
// was written and whose undo has not been written as done. The one rule for it: the live set (its
// ledger), the guardian process and recovery at start all read pending work through this function,
// so "what is left" and "which tracking records a settle removes" can never differ between them.
import * as path from 'node:path';
import type { PointInTimeView } from '../contract/types';
import type { JournalEntry, JournalOp } from '../journal/journal';
import { STAGING_PREFIX } from '../repository/repository';

export type PendingUndo =
  | { kind: 'thaw'; backupId: string; vm: string }
  | { kind: 'resume'; backupId: string; vm: string; previousState: string }
  | { kind: 'release'; backupId: string; vm: string; view: PointInTimeView }
  /** published: the parent's records go (the new ones carry on); not published: this backup's new ones go */
  | { kind: 'untrack'; backupId: string; vm: string; view: PointInTimeView; remove: { disk: string; name: string }[]; published: boolean }
  | { kind: 'discard'; backupId: string; vm: string; dir: string };

export type UndoKind = PendingUndo['kind'];
export type EffectOp = 'freeze' | 'save' | 'view' | 'track' | 'staging';

/** Each kind of effect and the undo that ends it. */
export const UNDO_OF: Readonly<Record<EffectOp, UndoKind>> = {
  freeze: 'thaw',
  save: 'resume',
  view: 'release',
  track: 'untrack',
  staging: 'discard',
};

/** The order undos run in: a frozen guest hangs its writes, so it is thawed first. */
const ORDER: readonly UndoKind[] = ['thaw', 'resume', 'release', 'untrack', 'discard'];

/** What the journal lines say of each set: open effects, published VMs, whether it ended. */
export function pendingUndos(entries: readonly JournalEntry[]): PendingUndo[] {
  const open = new Map<string, JournalEntry>();
  /** the last staging intent per VM: a publish taken back makes it pending again */
  const staged = new Map<string, JournalEntry>();
  const ended = new Set<string>();
  const published = new Set<string>();
  const effectOf = new Map<JournalOp, EffectOp>(Object.entries(UNDO_OF).map(([effect, undo]) => [undo, effect as EffectOp]));
  for (const e of entries) {
    const vmKey = `${e.backupId}\u0000${e.vm ?? ''}`;
    const key = (op: JournalOp) => `${vmKey}\u0000${op}`;
    if (e.op === 'end' && e.phase === 'done') {
      ended.add(e.backupId);
      continue;
    }
    if (e.op in UNDO_OF && e.phase === 'intent') {
      open.set(key(e.op), e);
      if (e.op === 'staging') staged.set(vmKey, e);
    }
    // the effect is undone: drop the intent whose undo this is
    const effect = effectOf.get(e.op);
    if (effect && e.phase === 'done') open.delete(key(effect));
    if (e.op === 'publish' && e.phase === 'done') {
      // a published staging directory is gone by rename: nothing to discard
      open.delete(key('staging'));
      published.add(vmKey);
    }
    if (e.op === 'unpublish' && e.phase === 'done') {
      published.delete(vmKey);
      const s = staged.get(vmKey);
      if (s) open.set(key('staging'), s);
    }
  }
  const undos: PendingUndo[] = [];
  for (const e of open.values()) {
    if (ended.has(e.backupId) || !e.vm) continue;
    const u = undoOf(e, published.has(`${e.backupId}\u0000${e.vm}`));
    if (u) undos.push(u);
  }
  return undos.sort((a, b) => ORDER.indexOf(a.kind) - ORDER.indexOf(b.kind));
}

/** The undo of one open intent (undefined: the line lacks what its undo needs, or names what is not ours). */
function undoOf(e: JournalEntry, published: boolean): PendingUndo | undefined {
  const vm = e.vm!;
  const backupId = e.backupId;
  switch (e.op) {
    case 'freeze':
      return { kind: 'thaw', backupId, vm };
    case 'save':
      return { kind: 'resume', backupId, vm, previousState: e.data?.previousState ?? 'running' };
    case 'view':
      return e.data?.view ? { kind: 'release', backupId, vm, view: e.data.view } : undefined;
    case 'track': {
      if (!e.data?.track || !e.data.view) return undefined;
      // published: the parent's records (and stale ones of this chain) go; not: this backup's own go
      const remove = published ? e.data.track.since : e.data.track.records;
      return { kind: 'untrack', backupId, vm, view: e.data.view, remove, published };
    }
    case 'staging':
      // only a directory shaped like the set's own staging directory (<...>/<vm>/.partial-<backupId>);
      // recovery also checks it is the one the repository computes
      return e.data?.dir && isStagingShaped(e.data.dir, vm, backupId) ? { kind: 'discard', backupId, vm, dir: e.data.dir } : undefined;
    default:
      return undefined;
  }
}

/** `<anything>/<vm>/.partial-<backupId>`, absolute and normalised. */
export function isStagingShaped(dir: string, vm: string, backupId: string): boolean {
  return (
    path.isAbsolute(dir) &&
    path.resolve(dir) === dir &&
    path.basename(dir) === `${STAGING_PREFIX}${backupId}` &&
    path.basename(path.dirname(dir)) === vm
  );
}

/** The guardian process that adopted a set and still runs, if any (recovery leaves the set to it). */
export function adoptedBy(entries: readonly JournalEntry[], backupId: string, alive: (pid: number) => boolean): number | undefined {
  let pid: number | undefined;
  for (const e of entries) {
    if (e.backupId !== backupId) continue;
    if (e.op === 'adopt' && e.data?.pid) pid = e.data.pid;
    if (e.op === 'end') return undefined;
  }
  return pid !== undefined && alive(pid) ? pid : undefined;
}
