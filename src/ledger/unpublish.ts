// The undo of a publish cut short: a set is published all or none, so a crash between two VMs'
// publish renames leaves a set that must be taken back. Used by the guardian (Node-RED died) and by
// recovery at start; the live set takes back its own in copy.ts (it knows which it renamed).
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { JournalEntry } from '../journal/journal';
import { STAGING_PREFIX } from '../repository/repository';
import { isSafeName } from '../util/ids';

export interface UnpublishAction {
  /** unpublish: a published VM's backup removed; refuse: it leads out of the repository, not touched */
  kind: 'unpublish' | 'refuse';
  backupId: string;
  vm: string;
  ok: boolean;
  error?: string;
  path?: string;
}

/**
 * Take back a set cut between two VMs' publish renames. `stagingOf` computes a VM's staging
 * directory (recovery passes the repository's); without it, only a journalled directory shaped
 * like a staging directory of that set and VM is believed.
 */
export async function takeBackPartialPublish(
  entries: readonly JournalEntry[],
  stagingOf?: (vm: string) => string | undefined,
  mayTouch: (dir: string) => Promise<boolean> = async () => true,
): Promise<UnpublishAction[]> {
  const ended = new Set(entries.filter((e) => e.op === 'end').map((e) => e.backupId));
  const publishing = new Set(entries.filter((e) => e.op === 'publish' && !ended.has(e.backupId)).map((e) => e.backupId));
  const actions: UnpublishAction[] = [];
  for (const backupId of publishing) {
    const staged = new Map<string, string>();
    for (const e of entries) {
      if (e.backupId !== backupId || e.op !== 'staging' || e.phase !== 'intent' || !isSafeName(e.vm) || !e.data?.dir) continue;
      const dir = stagingOf ? stagingOf(e.vm) : e.data.dir;
      if (dir !== undefined && dir === path.resolve(e.data.dir) && path.basename(dir) === `${STAGING_PREFIX}${backupId}`)
        staged.set(e.vm, dir);
    }
    const exists = (p: string) =>
      fs.access(p).then(
        () => true,
        () => false,
      );
    const state = await Promise.all(
      [...staged].map(async ([vm, dir]) => {
        const final = path.join(path.dirname(dir), backupId);
        return { vm, final, published: (await exists(final)) && !(await exists(dir)) };
      }),
    );
    if (state.every((s) => s.published)) continue;
    for (const s of state.filter((x) => x.published)) {
      if (!(await mayTouch(s.final))) {
        actions.push({
          kind: 'refuse',
          backupId,
          vm: s.vm,
          ok: false,
          path: s.final,
          error: `${s.final} leads out of the repository (a symbolic link): not taken back`,
        });
        continue;
      }
      const error = await fs.rm(s.final, { recursive: true, force: true }).then(
        () => undefined,
        (err: Error) => err.message,
      );
      actions.push({ kind: 'unpublish', backupId, vm: s.vm, ok: error === undefined, ...(error ? { error } : {}) });
    }
  }
  return actions;
}
