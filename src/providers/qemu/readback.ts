// The read-back check of a full pulled in-process (pull-full.ts over pull-stream.ts), made while
// the copy is written: each run of clusters, once the writer has written it, is read back from the
// file through a qcow2 reader of its own (src/repository/qcow2-read.ts, not the writer's code) and
// compared byte for byte with the buffer it was written from, before that buffer takes the next
// read of the view. When the file is closed, a second reader opened on it must find the layout the
// first one read through: the same clusters hold data, at the same places in the file, exactly the
// clusters that were read, and everything else reads zeros.
//
// Before (until the session of 2026-12-07 16:30), a crc32 of every cluster was taken as it was
// read and the whole file was decoded again after the copy: two checksum passes and a second pass
// over the data after the last write (a 256 MiB disk: 2 x 57 ms of crc32 on Node-RED's thread,
// then the read back). A comparison of the same bytes costs about as much as copying them, and the
// view is still read once. What the file holds after the writer closed it is the publish's to
// check: the writer's size, mtime and inode at close must still be the file's (copy.ts, hashFile).
import { Qcow2Reader, type Extent } from '../../repository/qcow2-read';
import { STREAM_CLUSTER } from '../../repository/qcow2-stream';
import { borrow, giveBack } from '../../util/buffer-pool';

/** The copy does not hold what was read: the verification failed (never copied another way). */
export class ReadBackMismatch extends Error {}

/** guest bytes one L2 table maps (64 KiB clusters): the final layout is compared a table at a time */
const REGION = STREAM_CLUSTER * (STREAM_CLUSTER / 8);

export class ReadBack {
  /** checks run one at a time, in the order the writes were made, into one scratch buffer */
  private chain: Promise<void> = Promise.resolve();
  private failed: Error | undefined;
  private closed = false;

  private constructor(
    private readonly file: string,
    private readonly disk: string,
    private readonly reader: Qcow2Reader,
    private readonly scratch: Buffer,
  ) {}

  /**
   * Opens the file the writer has just laid its metadata into (`fileSize`: the length it will
   * have); `longest`: the longest run a check is asked for.
   */
  static async open(file: string, disk: string, size: number, fileSize: number, longest: number): Promise<ReadBack> {
    let reader: Qcow2Reader;
    try {
      reader = await Qcow2Reader.open(file, { fileSize });
    } catch (err) {
      throw unreadable(file, err);
    }
    if (reader.virtualSize !== size) {
      await reader.close();
      throw new ReadBackMismatch(differs(file, disk, `its size is ${reader.virtualSize} bytes, the disk's ${size}`));
    }
    return new ReadBack(file, disk, reader, borrow(longest));
  }

  /**
   * Guest bytes [guest, guest + length) as the file holds them now must be `expected`'s first
   * `length` bytes. Resolves once compared; rejects (ReadBackMismatch) naming the first 64 KiB that
   * differ. After a failure every later check fails with it.
   */
  check(guest: number, length: number, expected: Buffer): Promise<void> {
    const p = this.chain.then(async () => {
      if (this.failed) throw this.failed;
      if (this.closed) throw new Error(`${this.file}: read-back check after close()`);
      const got = await this.reader.read(guest, length, this.scratch);
      if (got.equals(expected.subarray(0, length))) return;
      let at = 0;
      while (at < length && got.subarray(at, at + STREAM_CLUSTER).equals(expected.subarray(at, Math.min(length, at + STREAM_CLUSTER))))
        at += STREAM_CLUSTER;
      throw (this.failed = new ReadBackMismatch(
        differs(this.file, this.disk, `the 64 KiB at byte ${guest + at} differ from what was read from the view`),
      ));
    });
    this.chain = p.catch(() => undefined);
    return p;
  }

  /**
   * The file is written and closed: a reader opened on it now must see the layout the checks read
   * through, with data in exactly `clusters` (ascending guest cluster numbers) and zeros elsewhere.
   */
  async finish(clusters: ArrayLike<number>): Promise<void> {
    await this.chain;
    if (this.failed) throw this.failed;
    let fresh: Qcow2Reader;
    try {
      fresh = await Qcow2Reader.open(this.file);
    } catch (err) {
      throw unreadable(this.file, err);
    }
    // the disk's size: the first reader's, checked against it at open()
    const size = this.reader.virtualSize;
    try {
      if (fresh.virtualSize !== size) throw this.mismatch(`its size is ${fresh.virtualSize} bytes, the disk's ${size}`);
      let next = 0; // the next cluster that must hold data
      for (let at = 0; at < size; at += REGION) {
        const length = Math.min(REGION, size - at);
        const now = await fresh.extents(at, length);
        if (!sameLayout(now, await this.reader.extents(at, length)))
          throw this.mismatch(`its layout between bytes ${at} and ${at + length} changed after it was checked`);
        for (const x of now) {
          const first = Math.floor(x.guest / STREAM_CLUSTER);
          const last = Math.floor((x.guest + x.length - 1) / STREAM_CLUSTER);
          if (x.zero) {
            if (next < clusters.length && clusters[next] <= last)
              throw this.mismatch(`the 64 KiB at byte ${clusters[next] * STREAM_CLUSTER} read zeros, where the disk held data`);
            continue;
          }
          for (let c = first; c <= last; c++) {
            // a run may start or end inside a cluster already counted (only the disk's last one is partial)
            if (next > 0 && clusters[next - 1] === c) continue;
            if (clusters[next] !== c) throw this.mismatch(`data at byte ${c * STREAM_CLUSTER}, where the disk read zeros`);
            next++;
          }
        }
      }
      if (next !== clusters.length)
        throw this.mismatch(`the 64 KiB at byte ${clusters[next] * STREAM_CLUSTER} read zeros, where the disk held data`);
    } finally {
      await fresh.close();
    }
  }

  /** Idempotent; the scratch buffer goes back to the pool once no check can still use it. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.chain;
    await this.reader.close();
    giveBack(this.scratch);
  }

  private mismatch(why: string): ReadBackMismatch {
    return new ReadBackMismatch(differs(this.file, this.disk, why));
  }
}

function unreadable(file: string, err: unknown): ReadBackMismatch {
  return new ReadBackMismatch(`verification failed: ${file} could not be read back: ${(err as Error).message}`);
}

function differs(file: string, disk: string, why: string): string {
  return `verification failed: ${file} does not hold what disk ${disk} held at the backup's moment (${why})`;
}

function sameLayout(a: readonly Extent[], b: readonly Extent[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) {
    const x = a[i];
    const y = b[i];
    if (x.guest !== y.guest || x.length !== y.length || x.zero !== y.zero) return false;
    if (!x.zero && !y.zero && x.host !== y.host) return false;
  }
  return true;
}
