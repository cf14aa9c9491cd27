// The artifact repository: <root>/<host>/<vm>/<backup-id>/, written under a temporary name and
// published by rename only when complete and verified. Earlier backups are never touched.
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { fsyncDir } from './durable';
import { inside } from './paths';
import { OWNER_FILE, writeOwner } from './staging-owner';
import { endStagingWriters } from './writers';

export const STAGING_PREFIX = '.partial-';

/**
 * sha256 of a file, read in large pieces into two reused buffers: the next piece is read (in
 * libuv's thread pool) while this one is hashed, so that the hash, not the read, sets the pace.
 */
export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  const buffers = takeBuffers();
  try {
    const handle = await fs.open(file, 'r');
    try {
      let turn = 0;
      let pending = handle.read(buffers[turn], 0, PIECE, null);
      for (;;) {
        const { bytesRead, buffer } = await pending;
        if (bytesRead === 0) break;
        turn ^= 1;
        pending = handle.read(buffers[turn], 0, PIECE, null);
        try {
          hash.update(buffer.subarray(0, bytesRead));
        } catch (err) {
          await pending.catch(() => undefined); // no read may still fill a buffer given back
          throw err;
        }
      }
    } finally {
      await handle.close();
    }
  } finally {
    giveBack(buffers);
  }
  return hash.digest('hex');
}

const PIECE = 2 << 20;

/**
 * Buffer pairs kept between hashes. Fresh 2 MiB buffers for every file (hundreds in a large
 * backup set) made V8 run full garbage collections to account for the external memory: in a
 * Node-RED with other flows loaded these took ~1.9 s of a 100-VM backup (measured, bench).
 * Dropped after a minute without hashing.
 */
const spare: Buffer[][] = [];
let dropSpare: NodeJS.Timeout | undefined;

function takeBuffers(): Buffer[] {
  return spare.pop() ?? [Buffer.allocUnsafe(PIECE), Buffer.allocUnsafe(PIECE)];
}

function giveBack(buffers: Buffer[]): void {
  if (spare.length < 4) spare.push(buffers);
  if (dropSpare) clearTimeout(dropSpare);
  dropSpare = setTimeout(() => (spare.length = 0), 60_000);
  dropSpare.unref();
}

export class ArtifactRepository {
  constructor(readonly root: string) {}

  vmDir(host: string, vm: string): string {
    return inside(this.root, 'vm', host, vm);
  }

  finalDir(host: string, vm: string, backupId: string): string {
    return inside(this.root, 'backupId', host, vm, backupId);
  }

  stagingDir(host: string, vm: string, backupId: string): string {
    // the final name is checked; the prefix only adds a leading dot and a word
    return path.join(path.dirname(this.finalDir(host, vm, backupId)), `${STAGING_PREFIX}${backupId}`);
  }

  /**
   * Make (or re-use) the staging directory of one VM's backup, with its owner record: which
   * process on which machine writes it, so that a recovery elsewhere (a second Node-RED on this
   * repository) can tell live work from a leftover without a journal (see staging-owner.ts).
   * `beforeMaking` gets the path before the directory exists (the live set journals it there: a
   * crash right after mkdir still finds it), so that callers never compute the path themselves.
   */
  async openStaging(host: string, vm: string, backupId: string, beforeMaking?: (dir: string) => void): Promise<string> {
    const dir = this.stagingDir(host, vm, backupId);
    beforeMaking?.(dir);
    await fs.mkdir(path.dirname(dir), { recursive: true });
    // not recursive: a recursive mkdir reports a read-only file system as ENOENT
    await fs.mkdir(dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
    await writeOwner(dir, host);
    return dir;
  }

  /** Publish by rename: atomic on one file system; refuses to replace an existing backup. */
  async publish(host: string, vm: string, backupId: string): Promise<string> {
    const from = this.stagingDir(host, vm, backupId);
    const to = this.finalDir(host, vm, backupId);
    await fs.mkdir(to, { recursive: false }).then(
      () => fs.rmdir(to),
      (err: NodeJS.ErrnoException) => {
        throw err.code === 'EEXIST' ? new Error(`backup ${to} already exists; not replaced`) : err;
      },
    );
    // the owner record is not part of the backup (verify allows only the manifest's files)
    await fs.rm(path.join(from, OWNER_FILE), { force: true });
    await fs.rename(from, to);
    await fsyncDir(path.dirname(to));
    return to;
  }

  async discard(host: string, vm: string, backupId: string): Promise<void> {
    await removeStaging(this.stagingDir(host, vm, backupId));
  }

  /**
   * Every unpublished staging directory of one host (for recovery): only under <root>/<host>/,
   * never another host's folder of a shared repository.
   */
  async listStaging(host: string): Promise<string[]> {
    const found: string[] = [];
    const hostDir = inside(this.root, 'host', host);
    for (const vm of await readdirSafe(hostDir)) {
      for (const entry of await readdirSafe(path.join(hostDir, vm))) {
        if (entry.startsWith(STAGING_PREFIX)) found.push(path.join(hostDir, vm, entry));
      }
    }
    return found;
  }

  /**
   * True when `p` (a path built by this class) is really inside the root once symbolic links are
   * resolved: a host or VM folder replaced by a link to elsewhere must not make us remove what is
   * there. The root itself may be a link (it is the user's setting).
   */
  async resolvesInside(p: string): Promise<boolean> {
    try {
      const root = await fs.realpath(this.root);
      const parent = await fs.realpath(path.dirname(p));
      const real = path.join(parent, path.basename(p));
      if (!real.startsWith(root + path.sep)) return false;
      // the last component itself must be a directory, not a link to one
      const st = await fs.lstat(p).catch(() => undefined);
      return st === undefined || st.isDirectory();
    } catch {
      return false;
    }
  }
}

/**
 * Remove one unpublished staging directory and all in it (gone already is fine). The one remove of
 * staging: the live set's discard, the guardian's and recovery's undo all come here.
 */
export async function removeStaging(dir: string): Promise<void> {
  // a copy's qemu-nbd that nothing will connect to any more (Node-RED killed mid-copy) goes first
  await endStagingWriters(dir);
  try {
    await fs.rm(dir, { recursive: true, force: true });
  } catch (err) {
    // a folder above it is not a folder (replaced by a file): the staging directory cannot exist,
    // so there is nothing to remove (force covers only ENOENT). Asked of the path itself: rm also
    // says ENOTDIR for a file inside it that it could not unlink (an immutable directory)
    const gone = await fs.lstat(dir).then(
      () => false,
      (e: NodeJS.ErrnoException) => e.code === 'ENOTDIR' || e.code === 'ENOENT',
    );
    if (!gone) throw err;
  }
}

async function readdirSafe(dir: string): Promise<string[]> {
  try {
    return (await fs.readdir(dir, { withFileTypes: true })).filter((e) => e.isDirectory()).map((e) => e.name);
  } catch {
    return [];
  }
}
