// The one place that knows how to undo each kind of side effect a journal can list. Used by the
// guardian (Node-RED died, or it handed over what it could not undo) and by recovery at start,
// so that the two can never disagree on what "undone" means. Every undo is safe to repeat.
import { promises as fs } from 'node:fs';
import type { PendingUndo } from '../journal/journal';
import type { HostProvider } from '../providers/provider';

export interface UndoContext {
  /** one guest-agent or QMP command */
  commandMs: number;
}

/**
 * Undo one pending side effect. Resolves "done", or "nothing-to-do" when the journal planned
 * overlays that were never made (a freeze that failed before its snapshot): there is nothing to
 * merge and nothing to report. Throws when the undo failed (the caller retries or reports).
 */
export async function undo(provider: HostProvider, pending: PendingUndo, ctx: UndoContext): Promise<'done' | 'nothing-to-do'> {
  switch (pending.kind) {
    case 'thaw':
      await provider.thaw(pending.vm, ctx.commandMs);
      return 'done';
    case 'resume':
      await provider.resume(pending.vm, pending.previousState);
      return 'done';
    case 'merge':
      if (!(await anyExists(pending.overlays.map((o) => o.overlay)))) return 'nothing-to-do';
      await provider.merge(pending.vm, pending.overlays);
      return 'done';
    case 'discard':
      await fs.rm(pending.dir, { recursive: true, force: true });
      return 'done';
  }
}

/** True when at least one of the files exists. */
async function anyExists(files: readonly string[]): Promise<boolean> {
  for (const f of files) if (await fs.access(f).then(() => true, () => false)) return true;
  return false;
}
