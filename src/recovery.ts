// Recovery at start: replay the journal and finish every side effect a crash left in place,
// then remove unpublished partial backups. Reports what it did.
import type { Journal, JournalEntry, PendingUndo } from './journal/journal';
import { pendingUndos } from './journal/journal';
import { undo as undoEffect } from './pipeline/undo';
import type { HostProvider } from './providers/provider';
import type { ArtifactRepository } from './repository/repository';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';

export interface RecoveryAction {
  kind: PendingUndo['kind'] | 'discard-unjournalled' | 'unpublish';
  backupId?: string;
  vm?: string;
  ok: boolean;
  error?: string;
  /** "guardian": done by the guardian process right after Node-RED died, reported now */
  by?: 'guardian';
  at?: string;
}

export async function recover(journal: Journal, provider: HostProvider, repo: ArtifactRepository, commandMs: number): Promise<RecoveryAction[]> {
  const entries = journal.read();
  const actions: RecoveryAction[] = [];
  const failed: JournalEntry[] = [];
  // what the guardian undid after Node-RED died: already done, but the user must hear of it
  for (const e of entries) {
    if (e.data?.by === 'guardian' && !e.data?.nothingToDo && e.phase === 'done' && e.vm && (e.op === 'thaw' || e.op === 'resume' || e.op === 'merge' || e.op === 'discard')) {
      actions.push({ kind: e.op, backupId: e.backupId, vm: e.vm, ok: true, by: 'guardian', at: e.t });
    }
  }
  // A crash between two VMs' publish renames leaves a set partly published: take it back (all or
  // none). A set whose every VM was renamed is complete and verified: it stays.
  for (const action of await takeBackPartialPublish(entries)) actions.push(action);
  for (const undo of pendingUndos(entries)) {
    const action: RecoveryAction = { kind: undo.kind, backupId: undo.backupId, vm: undo.vm, ok: true };
    try {
      // overlays planned before a freeze but never made: nothing to merge, nothing to report
      if ((await undoEffect(provider, undo, { commandMs })) === 'nothing-to-do') continue;
    } catch (err) {
      action.ok = false;
      action.error = (err as Error).message;
      // keep the journal lines that still need undoing, for the next start
      failed.push(...entries.filter((e) => e.backupId === undo.backupId && e.vm === undo.vm));
    }
    actions.push(action);
  }
  // Staging directories the journal does not know (journal lost or moved): no backup is live
  // at start, so none of them can ever be completed.
  for (const dir of await repo.listStaging()) {
    // a repository that cannot be written now (read-only, gone) must not stop the thaws above
    const error = await fs.rm(dir, { recursive: true, force: true }).then(() => undefined, (err: Error) => err.message);
    actions.push({ kind: 'discard-unjournalled', ok: error === undefined, vm: dir, ...(error ? { error } : {}) });
  }
  journal.compact(failed);
  return actions;
}

export async function takeBackPartialPublish(entries: readonly JournalEntry[]): Promise<RecoveryAction[]> {
  const ended = new Set(entries.filter((e) => e.op === 'end').map((e) => e.backupId));
  const publishing = new Set(entries.filter((e) => e.op === 'publish' && !ended.has(e.backupId)).map((e) => e.backupId));
  const actions: RecoveryAction[] = [];
  for (const backupId of publishing) {
    const staged = new Map<string, string>();
    for (const e of entries) if (e.backupId === backupId && e.op === 'staging' && e.phase === 'intent' && e.vm && e.data?.dir) staged.set(e.vm, e.data.dir);
    const exists = (p: string) => fs.access(p).then(() => true, () => false);
    const state = await Promise.all([...staged].map(async ([vm, dir]) => {
      const final = path.join(path.dirname(dir), backupId);
      return { vm, final, published: (await exists(final)) && !(await exists(dir)) };
    }));
    if (state.every((s) => s.published)) continue;
    for (const s of state.filter((x) => x.published)) {
      const error = await fs.rm(s.final, { recursive: true, force: true }).then(() => undefined, (err: Error) => err.message);
      actions.push({ kind: 'unpublish', backupId, vm: s.vm, ok: error === undefined, ...(error ? { error } : {}) });
    }
  }
  return actions;
}

/** True when at least one of the files exists. */
export async function anyExists(files: readonly string[]): Promise<boolean> {
  for (const f of files) if (await fs.access(f).then(() => true, () => false)) return true;
  return false;
}
