// The prune's own journal, one per VM folder: `<vm folder>/.vmbackup-prune.json`. Made with O_EXCL,
// so it is also the lock (one prune of a VM at a time, whichever process or machine); rewritten
// whole (beside, then renamed) at each step; removed when the prune is done. A journal whose writer
// is gone is recovered before the next prune of that VM (or by `vm-backup-prune --recover`):
// before the first merge, rolled back (nothing in the repository changed yet); after it, finished.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Manifest } from '../contract/types';
import { fsyncDir } from '../repository/durable';
import { writeAtomic } from '../repository/sidecars';
import { currentOwner, ownerGone, type StagingOwner } from '../repository/staging-owner';
import type { Merge } from './plan';

export const PRUNE_JOURNAL = '.vmbackup-prune.json';
/** a merged file waits under this name in its kept backup's folder until it takes the disk's place */
export const MERGE_TEMP = '.vmbackup-merge-';
/** a backup folder being removed is renamed first, so that it is never half there under its id */
export const REMOVING_PREFIX = '.vmbackup-pruned-';

export interface JournalMerge extends Merge {
  /** set once the merged file is complete, linked under its temporary name and hashed */
  ready?: { bytes: number; sha256: string };
}

export interface PruneJournal {
  format: 'vm-backup-prune-journal@1';
  owner: StagingOwner;
  host: string;
  vm: string;
  startedAt: string;
  /** planned: nothing changed yet (roll back); merging, manifests, removing: finish */
  phase: 'planned' | 'merging' | 'manifests' | 'removing';
  merges: JournalMerge[];
  /** the new manifests, by backup id, once every merge is ready */
  manifests?: Record<string, Manifest>;
  remove: string[];
}

export class PruneBusy extends Error {
  constructor(detail: string) {
    super(detail);
    this.name = 'PruneBusy';
  }
}

/** Take the VM's prune lock by creating its journal; an existing one is returned for recovery when its writer is gone. */
export async function openJournal(
  vmDir: string,
  journal: Omit<PruneJournal, 'owner' | 'format'>,
): Promise<{ journal: PruneJournal } | { stale: PruneJournal }> {
  const file = path.join(vmDir, PRUNE_JOURNAL);
  const full: PruneJournal = { format: 'vm-backup-prune-journal@1', owner: currentOwner(journal.host), ...journal };
  try {
    const handle = await fs.open(file, 'wx', 0o640);
    try {
      await handle.writeFile(JSON.stringify(full, null, 1) + '\n');
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fsyncDir(vmDir);
    return { journal: full };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  const existing = await readJournal(vmDir);
  if (!existing) throw new PruneBusy(`${file} exists but cannot be read: remove it only if no prune of this VM runs`);
  const gone = ownerGone(existing.owner);
  if (!gone.gone) throw new PruneBusy(`another prune of ${journal.vm} is running (${gone.why}); not started`);
  return { stale: existing };
}

export async function readJournal(vmDir: string): Promise<PruneJournal | undefined> {
  try {
    const j = JSON.parse(await fs.readFile(path.join(vmDir, PRUNE_JOURNAL), 'utf8')) as PruneJournal;
    return j?.format === 'vm-backup-prune-journal@1' && Array.isArray(j.merges) && Array.isArray(j.remove) ? j : undefined;
  } catch {
    return undefined;
  }
}

export async function saveJournal(vmDir: string, journal: PruneJournal): Promise<void> {
  await writeAtomic(vmDir, PRUNE_JOURNAL, JSON.stringify(journal, null, 1) + '\n');
}

export async function closeJournal(vmDir: string): Promise<void> {
  await fs.rm(path.join(vmDir, PRUNE_JOURNAL), { force: true });
  await fsyncDir(vmDir);
}
