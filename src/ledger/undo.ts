// The one place that knows how to undo each kind of side effect a ledger can list: one function per
// kind. Used by the live set (its ledger), by the guardian (Node-RED died, or it handed over what it
// could not undo) and by recovery at start, so that none of them can disagree on what "undone"
// means. Every undo is safe to repeat.
import type { HostProvider } from '../providers/provider';
import { removeStaging } from '../repository/repository';
import type { PendingUndo } from './pending';

export interface UndoContext {
  /** one guest-agent or QMP command */
  commandMs: number;
  /**
   * Thaw a guest another way than through this process's own agent connection (the guardian
   * process holds the agent of the guests it froze). Resolves once thawed.
   */
  thaw?: (vm: string) => Promise<unknown>;
}

/**
 * Undo one pending side effect. Resolves "done" (a release is done only once the hypervisor
 * shows nothing of the view: the provider proves it), or "nothing-to-do" when the provider has no
 * change tracking to settle. Throws when the undo failed (the caller retries or reports).
 */
export async function undo(provider: HostProvider, pending: PendingUndo, ctx: UndoContext): Promise<'done' | 'nothing-to-do'> {
  switch (pending.kind) {
    case 'thaw':
      if (ctx.thaw) await ctx.thaw(pending.vm);
      else await provider.thaw(pending.vm, ctx.commandMs);
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
