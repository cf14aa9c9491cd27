// The previous backup of a disk that an incremental may stack on, checked before anything is
// stacked on it, or the named reason why the next copy of that disk must be a full.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { inside } from '../repository/paths';
import { sha256File } from '../repository/repository';
import { BACKUP_ID } from '../util/ids';
import { diskEntryOf, lstatOrUndefined, readManifestAt, walkChain, type ChainLink, type ImageToolOptions, type LinkProblem } from './links';
import { trustChain } from './trust';
import { decideChain, type BitmapReport, type ChainDecision, type ChainPolicy, type ParentResult } from './policy';

export interface FindParentInput extends ImageToolOptions {
  /** the repository root */
  root: string;
  host: string;
  vm: string;
  disk: string;
  /** the disk's virtual size now, in bytes */
  virtualSize: number;
}

/** Backups made within one second sort by their random suffix: order those by when they completed. */
async function newestFirst(vmDir: string, names: string[]): Promise<string[]> {
  const second = (n: string) => n.slice(0, 16);
  const completed = new Map<string, number>();
  for (const n of names) {
    if (names.filter((m) => second(m) === second(n)).length < 2) continue;
    const read = await readManifestAt(path.join(vmDir, n));
    completed.set(n, 'manifest' in read ? Date.parse(read.manifest.completedAt) : 0);
  }
  return [...names].sort((a, b) => (second(a) === second(b) ? (completed.get(b) ?? 0) - (completed.get(a) ?? 0) : a < b ? 1 : -1));
}

/**
 * Newest first among the VM's published backups (never a `.partial-` folder, never through a
 * symbolic link), the first whose manifest lists the disk is the candidate; it is returned only
 * if its whole chain is still what was published and no link of it was found damaged by its last
 * verify (trust.ts: per link a stat and the header, against the identity recorded at publish; a
 * chain with a link from before such records: the candidate's file hashed whole and the chain
 * walked by qemu-img). A newer backup whose manifest cannot be read stops the search (parent-invalid)
 * rather than being skipped: it may have held this disk, and the bitmap would then count changes
 * since it, so stacking on an older one could lose writes.
 */
export async function findParent(input: FindParentInput): Promise<ParentResult> {
  inside(input.root, 'host', input.host); // so that a bad host name is refused as the host's
  const vmDir = inside(input.root, 'vm', input.host, input.vm);
  let names: string[];
  try {
    names = (await fs.readdir(vmDir, { withFileTypes: true }))
      .filter((e) => e.isDirectory() && BACKUP_ID.test(e.name))
      .map((e) => e.name)
      .sort()
      .reverse(); // backup ids sort by time, to the second
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      return { ok: false, reason: 'parent-invalid', detail: `${vmDir} cannot be listed (${(err as Error).message})` };
    }
    names = [];
  }
  names = await newestFirst(vmDir, names);
  if (names.length === 0) return { ok: false, reason: 'first-backup', detail: `no published backup of ${input.vm} in ${vmDir}` };

  for (const backupId of names) {
    const dir = path.join(vmDir, backupId);
    const read = await readManifestAt(dir);
    if (!('manifest' in read)) return { ok: false, reason: 'parent-invalid', detail: `the newest backup ${backupId}: ${read.error}` };
    const manifest = read.manifest;
    if (manifest.backupId !== backupId || manifest.vm !== input.vm || manifest.host !== input.host) {
      return {
        ok: false,
        reason: 'parent-invalid',
        detail: `backup folder ${backupId}'s manifest describes ${manifest.host}/${manifest.vm}/${manifest.backupId}`,
      };
    }
    const entry = diskEntryOf(manifest, input.disk);
    if (!entry) continue; // the disk was not in that backup (excluded, or added since): look further back
    const was = `backup ${backupId}'s disk ${input.disk}`;
    if (entry.virtualSize !== input.virtualSize) {
      return {
        ok: false,
        reason: 'resized',
        detail: `${was} is ${entry.virtualSize ?? 'of unknown size'} bytes, the disk is now ${input.virtualSize}`,
      };
    }
    if ((entry.format ?? path.extname(entry.name).slice(1)) !== 'qcow2') {
      return { ok: false, reason: 'parent-invalid', detail: `${was} is ${entry.format ?? entry.name}, not qcow2: nothing can stack on it` };
    }
    const file = path.join(dir, entry.name);
    const st = await lstatOrUndefined(file);
    if (!st) return { ok: false, reason: 'parent-missing', detail: `${was} (${entry.name}) is missing` };
    if (!st.isFile()) return { ok: false, reason: 'parent-invalid', detail: `${was} (${entry.name}) is not a regular file` };
    if (st.size !== entry.bytes)
      return {
        ok: false,
        reason: 'parent-invalid',
        detail: `${was} (${entry.name}) is ${st.size} bytes, its manifest says ${entry.bytes}`,
      };
    const top = { backupId, dir, manifest, entry, file };
    // by the identities recorded at publish and the last verifies: a stat and a header per link
    let walked: { links: ChainLink[] } | { problem: LinkProblem; links: ChainLink[] } = await trustChain(top, vmDir);
    if ('unknown' in walked) {
      // a link from before identities were recorded: the parent hashed whole, the chain walked by qemu-img
      const sha = await sha256File(file).catch((err: Error) => `unreadable (${err.message})`);
      if (sha !== entry.sha256)
        return {
          ok: false,
          reason: 'parent-invalid',
          detail: `${was} (${entry.name}) has sha256 ${sha}, its manifest says ${entry.sha256}`,
        };
      walked = await walkChain(top, vmDir, input);
    }
    if ('problem' in walked)
      return {
        ok: false,
        reason: walked.problem.reason === 'resized' ? 'parent-invalid' : walked.problem.reason,
        detail: `${was}'s chain: ${walked.problem.file}: ${walked.problem.problem}`,
      };
    const full = walked.links[walked.links.length - 1];
    const record = entry.chain?.bitmap ? { record: { name: entry.chain.bitmap.name, persistent: entry.chain.bitmap.persistent } } : {};
    return {
      ok: true,
      backupId,
      dir,
      file,
      fileName: entry.name,
      depth: entry.chain?.depth ?? 0,
      fullCreatedAt: full.manifest.createdAt,
      ...record,
    };
  }
  return {
    ok: false,
    reason: 'new-disk',
    detail: `none of the ${names.length} published backup${names.length === 1 ? '' : 's'} of ${input.vm} holds disk ${input.disk}`,
  };
}

/**
 * The whole decision for one disk, as the copy step asks it: the parent searched (and its file
 * hashed) only when the policy allows an incremental at all.
 */
export async function planDiskChain(
  input: FindParentInput & { bitmap: BitmapReport; policy: ChainPolicy; now?: Date },
): Promise<ChainDecision> {
  if (input.policy.mode === 'full')
    return decideChain({
      parent: { ok: false, reason: 'first-backup', detail: 'not searched' },
      bitmap: input.bitmap,
      policy: input.policy,
    });
  const parent = await findParent(input);
  return decideChain({ parent, bitmap: input.bitmap, policy: input.policy, ...(input.now ? { now: input.now } : {}) });
}
