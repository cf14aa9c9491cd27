// What each file of a backup was when it was published (`identity.json` beside the manifest): size,
// inode and modification time to the nanosecond, and for a qcow2 image the sha256 of its header
// cluster with the backing string and virtual size read from it. The next backup trusts a chain by
// these (a stat and one small read per link) instead of hashing the parent's whole file every
// night: anything that writes to, truncates or replaces a file changes its identity. Rot that
// changes no metadata (a bit flipped on the medium) is what verify jobs are for: their records
// (src/verify/record.ts) are read beside these. Written under a temporary name, then renamed.
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Manifest } from '../contract/types';
import { IDENTITY_RECORD, readSidecar, writeAtomic } from '../repository/sidecars';
import { borrow, giveBack } from '../util/buffer-pool';

export interface FileIdentity {
  name: string;
  size: number;
  /** as decimal strings: inode numbers and nanosecond times do not fit a JSON number */
  ino: string;
  mtimeNs: string;
  qcow2?: Qcow2Header & { headerSha256: string };
}

export interface IdentityRecord {
  format: 'vm-backup-identity@1';
  backupId: string;
  recordedAt: string;
  manifestSha256: string;
  files: FileIdentity[];
}

export interface Qcow2Header {
  virtualSize: number;
  clusterSize: number;
  backing?: string;
  backingFormat?: string;
}

const QCOW2_MAGIC = 0x514649fb;
const MAX_HEADER = 2 << 20;

/** The header cluster of a qcow2 file, parsed (backing string, its format, virtual size); undefined if it is not qcow2. */
export async function readQcow2Header(file: string): Promise<{ header: Qcow2Header; sha256: string } | undefined> {
  const handle = await fs.open(file, 'r');
  // the header cluster's buffer from the pool: a new 64 KiB per file published was most of the
  // garbage array buffers of a 100-VM copy stage (util/buffer-pool.ts)
  let cluster: Buffer | undefined;
  try {
    const first = Buffer.alloc(512);
    const { bytesRead } = await handle.read(first, 0, 512, 0);
    if (bytesRead < 104 || first.readUInt32BE(0) !== QCOW2_MAGIC) return undefined;
    const version = first.readUInt32BE(4);
    const clusterBits = first.readUInt32BE(20);
    if (clusterBits < 9 || clusterBits > 21) return undefined;
    const clusterSize = 2 ** clusterBits;
    cluster = borrow(Math.min(clusterSize, MAX_HEADER));
    const got = (await handle.read(cluster, 0, cluster.length, 0)).bytesRead;
    const head = cluster.subarray(0, got);
    const backingOffset = Number(head.readBigUInt64BE(8));
    const backingSize = head.readUInt32BE(16);
    const header: Qcow2Header = { virtualSize: Number(head.readBigUInt64BE(24)), clusterSize };
    if (backingOffset > 0 && backingSize > 0 && backingOffset + backingSize <= head.length)
      header.backing = head.toString('utf8', backingOffset, backingOffset + backingSize);
    // header extensions: the backing file's format (0xe2792aca)
    let at = version >= 3 ? head.readUInt32BE(100) : 72;
    while (at + 8 <= head.length) {
      const type = head.readUInt32BE(at);
      const len = head.readUInt32BE(at + 4);
      if (type === 0 || at + 8 + len > head.length) break;
      if (type === 0xe2792aca) header.backingFormat = head.toString('utf8', at + 8, at + 8 + len);
      at += 8 + Math.ceil(len / 8) * 8;
    }
    return { header, sha256: createHash('sha256').update(head).digest('hex') };
  } finally {
    await handle.close();
    if (cluster) giveBack(cluster);
  }
}

export async function identityOf(dir: string, name: string, format?: string): Promise<FileIdentity> {
  const file = path.join(dir, name);
  const st = await fs.lstat(file, { bigint: true });
  const id: FileIdentity = { name, size: Number(st.size), ino: String(st.ino), mtimeNs: String(st.mtimeNs) };
  if ((format ?? path.extname(name).slice(1)) === 'qcow2') {
    const q = await readQcow2Header(file);
    if (q) id.qcow2 = { ...q.header, headerSha256: q.sha256 };
  }
  return id;
}

/**
 * Record the identity of every file the manifest in `dir` lists. Called by the copy stage right
 * before the backup is published (its files are final: each was hashed for the manifest and
 * checked unchanged since), and by a prune for a backup it rewrote.
 */
export async function recordIdentity(dir: string): Promise<void> {
  const text = await fs.readFile(path.join(dir, 'manifest.json'));
  const manifest = JSON.parse(text.toString('utf8')) as Manifest;
  const files: FileIdentity[] = [];
  for (const f of manifest.files) files.push(await identityOf(dir, f.name, f.format));
  const record: IdentityRecord = {
    format: 'vm-backup-identity@1',
    backupId: manifest.backupId,
    recordedAt: new Date().toISOString(),
    manifestSha256: createHash('sha256').update(text).digest('hex'),
    files,
  };
  await writeAtomic(dir, IDENTITY_RECORD, JSON.stringify(record) + '\n');
}

export async function readIdentity(dir: string): Promise<IdentityRecord | undefined> {
  const r = await readSidecar<IdentityRecord>(dir, IDENTITY_RECORD);
  return r?.format === 'vm-backup-identity@1' && Array.isArray(r.files) ? r : undefined;
}

/** What differs between a file's identity at publish and now, or undefined when nothing does. */
export function identityChange(then: FileIdentity, now: FileIdentity): string | undefined {
  if (then.size !== now.size) return `its size is ${now.size} bytes, ${then.size} when it was published`;
  if (then.ino !== now.ino) return 'it was replaced since it was published (another inode)';
  if (then.mtimeNs !== now.mtimeNs) return 'it was written to since it was published (its modification time changed)';
  if (then.qcow2?.headerSha256 !== now.qcow2?.headerSha256) return 'its qcow2 header changed since it was published';
  return undefined;
}
