// The verifier's part for an incremental disk: its whole chain down to the full. Each link's backing
// string must be exactly its manifest's (relative, inside the VM's folder), each parent present and
// itself verifying (sizes, sha256, its own chain), one virtual size at every level, and only then,
// with every backing file known to be ours, `qemu-img info --backing-chain` and `qemu-img check`
// of the top. The first broken link is named: the file, and what is wrong with it.
import * as path from 'node:path';
import type { Manifest, ManifestFile } from '../contract/types';
import { parentLink, walkChain, type ImageToolOptions } from './links';

/** What the verifier needs to know of a parent it verified (a BackupReport, narrowed). */
export interface ParentVerdict {
  ok: boolean;
  problems: { file: string; problem: string }[];
}

export interface ChainCheckContext extends ImageToolOptions {
  /** verify another backup folder (the parent); cached by the caller, so a chain is verified once */
  verifyParent: (dir: string) => Promise<ParentVerdict>;
  /** `qemu-img check` of the top, reporting as the verifier does for any disk */
  checkConsistency: (file: string) => Promise<'ok' | 'leaks' | 'failed'>;
  /** sizes and sha256 only: no qemu-img */
  skipImageCheck?: boolean;
  fail: (file: string, problem: string) => void;
}

/**
 * `file` is the disk of `entry` (an incremental) in the backup folder `dir` whose manifest is
 * `manifest`. Returns the disk's image check result.
 */
export async function verifyIncrementalDisk(
  file: string,
  entry: ManifestFile,
  manifest: Manifest,
  dir: string,
  ctx: ChainCheckContext,
): Promise<'ok' | 'leaks' | 'failed' | 'skipped'> {
  const vmDir = path.dirname(dir);
  const chain = entry.chain!;
  let result: 'ok' | 'leaks' | 'failed' | 'skipped' = ctx.skipImageCheck ? 'skipped' : 'ok';

  const top = { backupId: manifest.backupId, dir, manifest, entry, file };
  // without qemu-img, what the manifests say of the links is still checked
  const walked = ctx.skipImageCheck ? await parentLink(top, vmDir) : await walkChain(top, vmDir, ctx);
  if ('problem' in walked) {
    ctx.fail(walked.problem.file, `chain of ${manifest.backupId} disk ${entry.disk}: ${walked.problem.problem}`);
    return 'failed';
  }
  // a parent's own damage (a flipped byte, a missing file) is named through its own report
  const parentDir = path.join(vmDir, chain.parent!);
  const parent = await ctx.verifyParent(parentDir);
  if (!parent.ok) {
    const first = parent.problems[0];
    ctx.fail(
      file,
      `parent ${chain.parent} does not verify${first ? ` (${first.file}: ${first.problem})` : ''}; this backup cannot be restored`,
    );
    result = 'failed';
  }
  if (ctx.skipImageCheck || result === 'failed') return result;
  const checked = await ctx.checkConsistency(file);
  return checked;
}
