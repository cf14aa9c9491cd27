// Files of ours beside a published backup's manifest that are not part of the backup itself (the
// manifest does not list them, and the verifier accepts them): what a user or a later job says
// about the backup. Each is written atomically (beside, then renamed) and never edits the manifest.
//   protected      the user's mark: a prune never removes or rewrites this backup (any content;
//                  `touch <backup>/protected`, remove the file to lift it)
//   verify.json    the last verify of this backup (src/verify/record.ts)
//   identity.json  what each file was when it was published (src/chain/identity.ts): the next
//                  backup trusts the chain by it without reading the chain again
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { fsyncDir, writeFileDurable } from './durable';

export const PROTECTED_MARK = 'protected';
export const VERIFY_RECORD = 'verify.json';
export const IDENTITY_RECORD = 'identity.json';
export const SIDECARS: readonly string[] = [PROTECTED_MARK, VERIFY_RECORD, IDENTITY_RECORD];

/** Temporary names of ours inside a backup folder start with this (never a manifest's file name). */
export const TEMP_PREFIX = '.vmbackup-';

/** Write `name` in `dir` durably under a temporary name, then rename it into place. */
export async function writeAtomic(dir: string, name: string, data: string | Buffer): Promise<void> {
  const tmp = path.join(dir, `${TEMP_PREFIX}${randomBytes(4).toString('hex')}-${name}`);
  try {
    await writeFileDurable(tmp, data);
    await fs.rename(tmp, path.join(dir, name));
  } catch (err) {
    await fs.rm(tmp, { force: true }).catch(() => undefined);
    throw err;
  }
  await fsyncDir(dir);
}

/** A sidecar's JSON, or undefined when it is absent or unreadable (never through a symbolic link). */
export async function readSidecar<T>(dir: string, name: string): Promise<T | undefined> {
  const file = path.join(dir, name);
  try {
    const st = await fs.lstat(file);
    if (!st.isFile() || st.size > 4 << 20) return undefined;
    return JSON.parse(await fs.readFile(file, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

export async function isProtected(dir: string): Promise<boolean> {
  const st = await fs.lstat(path.join(dir, PROTECTED_MARK)).catch(() => undefined);
  return st !== undefined && st.isFile();
}
