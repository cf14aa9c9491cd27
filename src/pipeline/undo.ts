// One undo of one journalled effect, used by the live set's watchdogs' replay, by the guardian
// (Node-RED died) and by recovery at start: the same effect is undone the same way everywhere.
import { promises as fs } from 'node:fs';
import type { PendingUndo } from '../journal/journal';
import type { HostProvider } from '../providers/provider';

export async function undoEffect(provider: HostProvider, u: PendingUndo, commandMs: number): Promise<void> {
  switch (u.kind) {
    case 'thaw':
      await provider.thaw(u.vm, commandMs);
      return;
    case 'resume':
      await provider.resume(u.vm, u.previousState);
      return;
    case 'release':
      await provider.releaseView(u.vm, u.view);
      return;
    case 'untrack':
      await provider.tracking?.remove(u.vm, u.remove, u.view);
      return;
    case 'discard':
      await fs.rm(u.dir, { recursive: true, force: true });
      return;
  }
}
