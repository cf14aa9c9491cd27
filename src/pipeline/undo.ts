// The one place that knows how to undo each kind of side effect a journal can list. Used by the
// guardian (Node-RED died, or it handed over what it could not undo) and by recovery at start,
// so that the two can never disagree on what "undone" means. Every undo is safe to repeat.
import type { PendingUndo } from '../journal/journal';
import type { HostProvider } from '../providers/provider';
import { removeStaging } from '../repository/repository';

export interface UndoContext {
  /** one guest-agent or QMP command */
  commandMs: number;
}

/**
 * Undo one pending side effect. Resolves "done" (a release is done only once the hypervisor
 * shows nothing of the view: the provider proves it), or "nothing-to-do" when the provider has no
 * change tracking to settle. Throws when the undo failed (the caller retries or reports).
 */
export async function undo(provider: HostProvider, pending: PendingUndo, ctx: UndoContext): Promise<'done' | 'nothing-to-do'> {
  switch (pending.kind) {
    case 'thaw':
      await provider.thaw(pending.vm, ctx.commandMs);
      return 'done';
    case 'resume':
      await provider.resume(pending.vm, pending.previousState);
      return 'done';
    case 'release':
      await provider.releaseView(pending.vm, pending.view);
      return 'done';
    case 'untrack':
      if (!provider.tracking) return 'nothing-to-do';
      await provider.tracking.remove(pending.vm, pending.remove, pending.view);
      return 'done';
    case 'discard':
      await removeStaging(pending.dir);
      return 'done';
  }
}
