// One merge, crash-safe: the kept backup's disk and every dropped link under it down to its base
// are committed (`qemu-img commit -d -b`) into the lowest dropped link, whose file then takes the
// kept disk's place: hard-linked under a temporary name in the kept backup's folder, hashed, and
// renamed over the disk file. What a reader of the kept point sees never changes at any moment:
// the commit writes into the receiving link exactly what the kept point shows at each cluster it
// touches (the kept file itself is not written, -d), and the rename swaps two files that read the
// same. The dropped links in between may read differently once the commit started: they are on
// their way out, and the journal finishes (never rolls back) a merge once it began.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { fsyncDir, fsyncFile } from '../repository/durable';
import { sha256File } from '../repository/repository';
import { runProgram } from '../util/run';
import { MERGE_TEMP, type JournalMerge } from './journal';

export interface MergeOptions {
  qemuImg?: string;
  /** per qemu-img run (default 6 h: a merge into a large full reads and writes what changed) */
  timeoutMs?: number;
}

export const mergeTemp = (vmDir: string, m: JournalMerge) => path.join(vmDir, m.backup, `${MERGE_TEMP}${m.file}`);

/** Commit and link: the merged file complete under its temporary name, hashed. Safe to run again. */
export async function prepareMerge(vmDir: string, m: JournalMerge, options: MergeOptions = {}): Promise<{ bytes: number; sha256: string }> {
  const top = path.join(vmDir, m.backup, m.file);
  const into = path.join(vmDir, m.through[m.through.length - 1], m.intoFile);
  const tmp = mergeTemp(vmDir, m);
  await fs.rm(tmp, { force: true });
  await runProgram(options.qemuImg ?? 'qemu-img', ['commit', '-q', '-f', 'qcow2', '-d', '-b', into, top], {
    timeoutMs: options.timeoutMs ?? 6 * 3600_000,
  });
  await fs.link(into, tmp);
  await fsyncFile(tmp);
  await fsyncDir(path.dirname(tmp));
  const st = await fs.stat(tmp);
  return { bytes: st.size, sha256: await sha256File(tmp) };
}

/** The merged file takes the disk's place (a rename). Done already (no temporary file left) is fine. */
export async function finishMerge(vmDir: string, m: JournalMerge): Promise<void> {
  const tmp = mergeTemp(vmDir, m);
  const top = path.join(vmDir, m.backup, m.file);
  try {
    await fs.rename(tmp, top);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    // renamed before a crash: the file in place must be the merged one
    const st = await fs.stat(top);
    if (st.size !== m.ready?.bytes) throw new Error(`${top}: the merge's file is gone and the disk is not the merged file`);
  }
  await fsyncDir(path.dirname(top));
}
