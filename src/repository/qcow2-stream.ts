// A qcow2 image written in-process strictly in file order, from offset 0 to its end, so that its
// sha256 is computed from the bytes as they are written, with no second read of the file. The pull
// of an incremental from QEMU's NBD export knows before the first byte which guest clusters it
// copies (the dirty bitmap's extents): the whole layout is computed from that list up front, then
// the data streams in behind the metadata. qemu-img convert or qemu-io writing into an image place
// clusters and refcounts as they go and rewrite metadata, which rules out hashing while writing.
//
// The format is the one qemu-img create writes (QEMU 7.2, version 3, 64 KiB clusters, 16-bit
// refcounts, no features; header from qcow2-create.ts), laid out as: the header cluster, the L1
// table, the refcount table, the refcount blocks, one L2 table per 512 MiB guest region that holds
// data (in region order), then the data clusters in guest order. Every cluster of the file is
// counted once and nothing else is: qemu-img check finds no leak. The unlisted clusters are holes
// (L2 entry 0) that read the backing file, or zeros.
// test/unit/repository/qcow2-stream.test.ts checks it with qemu-img check, compare, info and qemu-io.
import { createHash, type Hash } from 'node:crypto';
import { constants as fsConstants, promises as fs } from 'node:fs';
import { writeQcow2Header } from './qcow2-create';
import { borrowZeroed, giveBack } from '../util/buffer-pool';

export interface Qcow2StreamPlan {
  /** virtual size in bytes (a multiple of 512) */
  size: number;
  /** backing file string written into the header (relative to the image's folder), format qcow2 */
  backing?: string;
  /** guest cluster indexes (64 KiB clusters) that get data, ascending, no duplicates, each < ceil(size/65536) */
  clusters: readonly number[];
}

export const STREAM_CLUSTER = 65536;

/** A file's size, mtime (ns) and inode: what changes when anything writes to it or replaces it. */
export interface WrittenAs {
  size: bigint;
  mtimeNs: bigint;
  ino: bigint;
}

const C = STREAM_CLUSTER;
/** entries of an L2 table, of the refcount table: 8-byte entries in a cluster */
const ENTRIES_64 = C / 8;
/** guest bytes one L2 table maps */
const PER_L2 = C * ENTRIES_64;
/** clusters one refcount block counts: 16-bit refcounts */
const PER_REFBLOCK = C / 2;
/** L1 and L2 entries: refcount exactly 1, so written in place without copy on write */
const COPIED = 1n << 63n;
/** QEMU refuses to open an image whose L1 table (QCOW_MAX_L1_SIZE) or refcount table (QCOW_MAX_REFTABLE_SIZE) is larger */
const MAX_L1_BYTES = 32 << 20;
const MAX_REFTABLE_BYTES = 8 << 20;
/** bytes hashed at a time on the caller's thread before other work gets a turn */
const HASH_SLICE = 256 << 10;
/** how much is written between two flushes started behind the writes */
const FLUSH_AHEAD = 16 << 20;

function refused(problem: string): Error {
  return new Error(`qcow2 stream plan refused: ${problem}`);
}

/** The backing string's bytes, once the plan is checked; throws an Error naming what is wrong with it. */
function checkPlan(p: Qcow2StreamPlan): Buffer | undefined {
  if (!Number.isSafeInteger(p.size) || p.size <= 0 || p.size % 512 !== 0) {
    throw refused(`virtual size ${p.size} is not a positive multiple of 512`);
  }
  const l1Bytes = Math.ceil(p.size / PER_L2) * 8;
  if (l1Bytes > MAX_L1_BYTES) throw refused(`virtual size ${p.size} needs an L1 table of ${l1Bytes} bytes, above QEMU's 32 MiB`);
  const guestClusters = Math.ceil(p.size / C);
  let prev = -1;
  for (let i = 0; i < p.clusters.length; i++) {
    const c = p.clusters[i];
    if (!Number.isSafeInteger(c) || c < 0) throw refused(`cluster ${c} (at index ${i}) is not a non-negative integer`);
    if (c >= guestClusters) throw refused(`cluster ${c} (at index ${i}) is out of range: the disk has ${guestClusters} clusters`);
    if (c === prev) throw refused(`cluster ${c} is listed twice (at index ${i})`);
    if (c < prev) throw refused(`clusters are not ascending: ${c} after ${prev} (at index ${i})`);
    prev = c;
  }
  if (p.backing === undefined) return undefined;
  const backing = Buffer.from(p.backing, 'utf8');
  if (backing.length === 0) throw refused('the backing file string is empty');
  if (backing.length > 1023) throw refused(`the backing file string is ${backing.length} bytes, over 1023`);
  if (backing.includes(0)) throw refused('the backing file string holds a NUL byte');
  return backing;
}

/** The metadata (offset 0 up to the first data cluster) and where data starts; throws Error naming the problem for a bad plan. */
export function qcow2StreamLayout(
  p: Qcow2StreamPlan,
  zeroed: (size: number) => Buffer = (size) => Buffer.alloc(size),
): { metadata: Buffer; dataOffset: number; fileSize: number } {
  const backing = checkPlan(p);
  const l1Size = Math.ceil(p.size / PER_L2);
  const l1Clusters = Math.ceil((l1Size * 8) / C);
  // the 512 MiB regions that hold data, in order: one L2 table each
  const regions: number[] = [];
  for (const c of p.clusters) {
    const r = Math.floor(c / ENTRIES_64);
    if (regions[regions.length - 1] !== r) regions.push(r);
  }
  const data = p.clusters.length;
  // the refcount blocks count themselves and the table: the least fixed point, from below
  const counted = 1 + l1Clusters + regions.length + data;
  let blocks = 0;
  let table = 0;
  for (;;) {
    const b = Math.ceil((counted + table + blocks) / PER_REFBLOCK);
    const t = Math.ceil(b / ENTRIES_64);
    if (b === blocks && t === table) break;
    blocks = b;
    table = t;
  }
  if (table * C > MAX_REFTABLE_BYTES) throw refused(`the refcount table would take ${table} clusters, above QEMU's 8 MiB`);

  const l1At = 1;
  const tableAt = l1At + l1Clusters;
  const blocksAt = tableAt + table;
  const l2At = blocksAt + blocks;
  const dataAt = l2At + regions.length;
  const fileClusters = dataAt + data;
  if (fileClusters * C > Number.MAX_SAFE_INTEGER) throw refused(`the file would be ${fileClusters} clusters long`);

  const metadata = zeroed(dataAt * C);
  writeQcow2Header(metadata, {
    size: p.size,
    backing,
    l1Size,
    l1Offset: l1At * C,
    refcountTableOffset: tableAt * C,
    refcountTableClusters: table,
  });
  regions.forEach((r, k) => metadata.writeBigUInt64BE(BigInt((l2At + k) * C) | COPIED, l1At * C + r * 8));
  let k = -1;
  let region = -1;
  p.clusters.forEach((c, i) => {
    const r = Math.floor(c / ENTRIES_64);
    if (r !== region) {
      region = r;
      k++;
    }
    metadata.writeBigUInt64BE(BigInt((dataAt + i) * C) | COPIED, (l2At + k) * C + (c % ENTRIES_64) * 8);
  });
  for (let b = 0; b < blocks; b++) metadata.writeBigUInt64BE(BigInt((blocksAt + b) * C), tableAt * C + b * 8);
  // the blocks are contiguous: cluster n's refcount is the n-th big-endian 16-bit word from the first
  metadata.fill(Buffer.from([0, 1]), blocksAt * C, blocksAt * C + 2 * fileClusters);
  return { metadata, dataOffset: dataAt * C, fileSize: fileClusters * C };
}

/** An Error naming the file and the errno code, the code kept for the caller. */
function ioError(what: string, err: unknown): Error {
  const e = err as NodeJS.ErrnoException;
  const code = e?.code;
  const message = e instanceof Error ? e.message : String(err);
  return Object.assign(new Error(`${what}: ${code && !message.includes(code) ? `${code}: ${message}` : message}`), { code });
}

/**
 * Writes the image sequentially: create() opens `file` (never through a symbolic link) and writes
 * the metadata; write(buf) appends the next data clusters' bytes in plan order; finish() checks
 * every planned cluster was written, closes the file and returns its length and sha256 (of the
 * bytes as written, in file order); abort() closes the file. The file is not fsynced here: the
 * caller makes it durable with the rest of the backup.
 */
export class Qcow2StreamWriter {
  private readonly hash: Hash = createHash('sha256');
  /** where the next write lands */
  private pos = 0;
  /** data bytes accepted by write(), written or queued */
  private accepted = 0;
  private done = 0;
  /** writes one at a time, in the order write() was called */
  private queue: Promise<void> = Promise.resolve();
  private failure: Error | undefined;
  /** finish() or abort() called: no more writes */
  private ended = false;
  private closing: Promise<void> | undefined;
  /** a flush of what is written so far, started behind the writes (see put) */
  private flushing: Promise<void> | undefined;
  private flushedTo = 0;

  private constructor(
    private readonly file: string,
    private readonly fh: fs.FileHandle,
    private readonly dataBytes: number,
    private readonly fileSize: number,
  ) {}

  static async create(file: string, plan: Qcow2StreamPlan): Promise<Qcow2StreamWriter> {
    // the metadata's buffer from the pool (util/buffer-pool.ts): one per disk copied is garbage V8 is slow to collect
    const { metadata, dataOffset, fileSize } = qcow2StreamLayout(plan, borrowZeroed);
    const { O_WRONLY, O_CREAT, O_TRUNC, O_NOFOLLOW } = fsConstants;
    const fh = await fs.open(file, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, 0o644).catch((err: NodeJS.ErrnoException) => {
      throw err.code === 'ELOOP' ? new Error(`refusing ${file}: a symbolic link is in its place`) : ioError(`cannot create ${file}`, err);
    });
    const w = new Qcow2StreamWriter(file, fh, fileSize - dataOffset, fileSize);
    try {
      await w.put(metadata);
    } catch (err) {
      await w.abort();
      throw err;
    } finally {
      giveBack(metadata);
    }
    return w;
  }

  /** the length the file has once every planned cluster is written */
  get finalSize(): number {
    return this.fileSize;
  }

  /** data bytes written so far */
  get written(): number {
    return this.done;
  }

  /** Append the next data clusters' bytes; `buf` is not kept once the promise resolves. */
  write(buf: Buffer): Promise<void> {
    if (this.ended) return Promise.reject(new Error(`${this.file}: write after finish() or abort()`));
    if (buf.length % C !== 0) return Promise.reject(new Error(`${this.file}: a write of ${buf.length} bytes, not whole 64 KiB clusters`));
    if (this.accepted + buf.length > this.dataBytes) {
      return Promise.reject(
        new Error(
          `${this.file}: a write up to ${this.accepted + buf.length} data bytes, more than the plan's ${this.dataBytes / C} clusters`,
        ),
      );
    }
    this.accepted += buf.length;
    const p = this.queue.then(async () => {
      if (this.failure) throw this.failure;
      if (this.closing) throw new Error(`${this.file}: aborted`);
      await this.put(buf);
      this.done += buf.length;
    });
    this.queue = p.catch(() => {});
    return p;
  }

  /**
   * `writtenAs`: the file's size, mtime and inode as this writer leaves it (fstat before the close),
   * for the caller to find any later change to the file before it counts (copy.ts, hashFile).
   */
  async finish(): Promise<{ bytes: number; sha256: string; writtenAs: WrittenAs }> {
    if (this.ended) throw new Error(`${this.file}: finish() after finish() or abort()`);
    this.ended = true;
    await this.queue;
    await this.flushing;
    if (this.closing) throw new Error(`${this.file}: aborted`);
    // whatever is wrong, the file is closed: the caller has nothing to abort
    const unfinished = this.failure ?? (this.pos !== this.fileSize ? this.missing() : undefined);
    if (unfinished) {
      await this.abort();
      throw unfinished;
    }
    let writtenAs: WrittenAs;
    try {
      const st = await this.fh.stat({ bigint: true });
      writtenAs = { size: st.size, mtimeNs: st.mtimeNs, ino: st.ino };
    } catch (err) {
      await this.abort();
      throw ioError(`cannot stat ${this.file}`, err);
    }
    this.closing = this.fh.close();
    await this.closing.catch((err: unknown) => {
      throw ioError(`cannot close ${this.file}`, err);
    });
    return { bytes: this.pos, sha256: this.hash.digest('hex'), writtenAs };
  }

  /** Close the file, keeping what was written; idempotent, never throws. */
  async abort(): Promise<void> {
    this.ended = true;
    this.closing ??= this.queue.then(() => this.flushing).then(() => this.fh.close());
    await this.closing.catch(() => {});
  }

  private missing(): Error {
    const short = (this.dataBytes - this.done) / C;
    return new Error(`${this.file}: ${short} of the plan's ${this.dataBytes / C} data clusters not written`);
  }

  /**
   * Write all of `buf` at the next position, and hash it meanwhile: the write runs on libuv's
   * thread pool while this thread hashes the same bytes (both only read them), so the two costs
   * overlap instead of adding up (82 MiB: about 60 ms of sha256 each way).
   */
  private async put(buf: Buffer): Promise<void> {
    const first = this.fh.write(buf, 0, buf.length, this.pos);
    first.catch(() => undefined); // awaited below
    // in slices, letting the event loop in between: a socket's reads (the next clusters) go on
    // meanwhile instead of waiting for the whole buffer's hash (measured in BENCHMARKS.md's chain trust)
    for (let at = 0; at < buf.length; at += HASH_SLICE) {
      this.hash.update(buf.subarray(at, at + HASH_SLICE));
      if (at + HASH_SLICE < buf.length) await new Promise((r) => setImmediate(r));
    }
    let off = 0;
    for (let pending: typeof first | undefined = first; off < buf.length; pending = undefined) {
      const at = this.pos + off;
      let n: number;
      try {
        ({ bytesWritten: n } = await (pending ?? this.fh.write(buf, off, buf.length - off, at)));
      } catch (err) {
        throw (this.failure = ioError(`cannot write ${this.file} at byte ${at}`, err));
      }
      if (n <= 0) throw (this.failure = new Error(`cannot write ${this.file} at byte ${at}: nothing written`));
      off += n;
    }
    this.pos += buf.length;
    this.flushAhead();
  }

  /**
   * Every FLUSH_AHEAD bytes, the file's pages so far are sent to the disk (fdatasync) while the
   * next ones are read and written: the caller's fsync at the end then has only the tail left
   * (82 MiB: 30-45 ms of fsync after the copy otherwise). A failed flush fails the file: the error
   * is reported here, once, and a later fsync of another descriptor may not see it again.
   */
  private flushAhead(): void {
    if (this.flushing || this.pos - this.flushedTo < FLUSH_AHEAD) return;
    const upTo = this.pos;
    this.flushing = this.fh.datasync().then(
      () => {
        this.flushedTo = upTo;
        this.flushing = undefined;
      },
      (err: unknown) => {
        this.failure ??= ioError(`cannot flush ${this.file}`, err);
        this.flushing = undefined;
      },
    );
  }
}
