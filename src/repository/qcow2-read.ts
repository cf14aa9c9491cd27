// Reading a plain qcow2 image's guest bytes in-process: the header, the L1 table and the L2
// tables it points to, then the data clusters. For the read-back check of a full copy pulled
// in-process (src/providers/qemu/readback.ts): the file is decoded by this reader, written apart
// from the stream writer that made it (qcow2-stream.ts), so that a fault of either shows. Only a
// plain image is read (no backing file, uncompressed clusters); anything beyond that shape (a
// backing file, compressed or encrypted clusters, an external data file, extended L2 entries, a
// header that says the image may be inconsistent) is refused with Qcow2Unsupported.
// Layout: QEMU's docs/interop/qcow2.txt.
import { promises as fs } from 'node:fs';
import { borrow, giveBack } from '../util/buffer-pool';

const QCOW2_MAGIC = 0x514649fb;
/** bits 9-55 of an L1 or L2 entry: the host offset */
const OFFSET_MASK = 0x00fffffffffffe00n;
/** bit 62 of an L2 entry (bit 30 of its high half): a compressed cluster */
const L2_COMPRESSED_HI = 1 << 30;
/** bit 0: the cluster reads as zeros */
const L2_ZERO_LO = 1;

/** The image is of a shape this reader leaves to qemu-img. */
export class Qcow2Unsupported extends Error {}

/** What a run of guest bytes is in the image. */
export type Extent = { guest: number; length: number; zero: true } | { guest: number; length: number; zero: false; host: number };

export class Qcow2Reader {
  private readonly l2 = new Map<number, Promise<Buffer | undefined>>();
  /** the L2 tables read, given back to the pool on close() */
  private readonly tables: Buffer[] = [];

  private constructor(
    private readonly fh: fs.FileHandle,
    readonly virtualSize: number,
    private readonly clusterBits: number,
    private readonly l1: bigint[],
    private readonly fileSize: number,
  ) {}

  /**
   * `fileSize`: for a file still being written behind its metadata (the read-back check made as a
   * copy is written, src/providers/qemu/readback.ts), the length it will have; else the file's own.
   */
  static async open(file: string, o: { fileSize?: number } = {}): Promise<Qcow2Reader> {
    const fh = await fs.open(file, 'r');
    try {
      const st = await fh.stat();
      const h = Buffer.alloc(104);
      const { bytesRead } = await fh.read(h, 0, h.length, 0);
      if (bytesRead < 72 || h.readUInt32BE(0) !== QCOW2_MAGIC) throw new Qcow2Unsupported(`${file} is not a qcow2 image`);
      const version = h.readUInt32BE(4);
      if (version !== 2 && version !== 3) throw new Qcow2Unsupported(`qcow2 version ${version}`);
      if (h.readBigUInt64BE(8) !== 0n) throw new Qcow2Unsupported('the image has a backing file');
      const clusterBits = h.readUInt32BE(20);
      if (clusterBits < 9 || clusterBits > 21) throw new Qcow2Unsupported(`cluster bits ${clusterBits}`);
      const size = h.readBigUInt64BE(24);
      if (h.readUInt32BE(32) !== 0) throw new Qcow2Unsupported('the image is encrypted');
      const l1Size = h.readUInt32BE(36);
      const l1Offset = Number(h.readBigUInt64BE(40));
      if (version === 3) {
        if (bytesRead < 104) throw new Qcow2Unsupported('short qcow2 v3 header');
        // any incompatible feature (dirty, corrupt, external data file, compression type,
        // extended L2) is left to qemu-img
        if (h.readBigUInt64BE(72) !== 0n) throw new Qcow2Unsupported(`incompatible features 0x${h.readBigUInt64BE(72).toString(16)}`);
      }
      if (size > BigInt(Number.MAX_SAFE_INTEGER)) throw new Qcow2Unsupported('virtual size too large');
      const perL2 = 2 ** (clusterBits * 2 - 3);
      const virtualSize = Number(size);
      if (l1Size < Math.ceil(virtualSize / perL2) || l1Size > 1 << 22) throw new Qcow2Unsupported(`L1 table of ${l1Size} entries`);
      if (l1Offset % 512 !== 0 || l1Offset + l1Size * 8 > st.size) throw new Qcow2Unsupported('L1 table outside the file');
      const raw = Buffer.alloc(l1Size * 8);
      await fh.read(raw, 0, raw.length, l1Offset);
      const l1: bigint[] = [];
      for (let i = 0; i < l1Size; i++) l1.push(raw.readBigUInt64BE(i * 8) & OFFSET_MASK);
      return new Qcow2Reader(fh, virtualSize, clusterBits, l1, o.fileSize ?? st.size);
    } catch (err) {
      await fh.close();
      throw err;
    }
  }

  async close(): Promise<void> {
    await this.fh.close();
    for (const t of this.tables.splice(0)) giveBack(t);
  }

  private get cluster(): number {
    return 2 ** this.clusterBits;
  }

  /** One L2 table (undefined: not allocated, all its clusters read zeros). */
  private table(index: number): Promise<Buffer | undefined> {
    let t = this.l2.get(index);
    if (!t) {
      t = (async () => {
        const off = this.l1[index];
        if (!off) return undefined;
        if (off + BigInt(this.cluster) > BigInt(this.fileSize)) throw new Qcow2Unsupported(`L2 table ${index} outside the file`);
        // pooled (util/buffer-pool.ts), given back by close()
        const raw = borrow(this.cluster);
        this.tables.push(raw);
        const { bytesRead } = await this.fh.read(raw, 0, raw.length, Number(off));
        if (bytesRead !== raw.length) throw new Qcow2Unsupported(`L2 table ${index}: short read`);
        return raw;
      })();
      this.l2.set(index, t);
    }
    return t;
  }

  /** What [guest, guest + length) is in the image, as runs of zeros and of contiguous host data. */
  async extents(guest: number, length: number): Promise<Extent[]> {
    if (guest < 0 || length < 0 || guest + length > this.virtualSize) throw new RangeError(`range ${guest}+${length} outside the image`);
    const out: Extent[] = [];
    const cluster = this.cluster;
    const perL2 = cluster / 8;
    let at = guest;
    const end = guest + length;
    const zero = (n: number) => {
      const last = out[out.length - 1];
      if (last?.zero) last.length += n;
      else out.push({ guest: at, length: n, zero: true });
      at += n;
    };
    // one L2 table (512 MiB of guest with 64 KiB clusters) at a time: a region without a table is
    // one run of zeros, whatever its size (a 1 TiB disk holding 2 MiB: 2 ms, where a look per
    // cluster held the thread for 2 s)
    while (at < end) {
      const region = Math.floor(at / cluster / perL2);
      const regionEnd = Math.min(end, (region + 1) * perL2 * cluster);
      const t = await this.table(region);
      if (!t) {
        zero(regionEnd - at);
        continue;
      }
      while (at < regionEnd) {
        const c = Math.floor(at / cluster);
        const within = at - c * cluster;
        const n = Math.min(cluster - within, regionEnd - at);
        // the entry as two 32-bit halves, not a BigInt: a walk over 8 GiB of data (131,072
        // entries, twice for the read-back check's last look) took 25-50 ms with BigInt reads
        const hi = t.readUInt32BE((c % perL2) * 8);
        const lo = t.readUInt32BE((c % perL2) * 8 + 4);
        if (hi & L2_COMPRESSED_HI) throw new Qcow2Unsupported('the image has compressed clusters');
        // bits 9-55: the host offset
        const host = (hi & 0x00ffffff) * 2 ** 32 + ((lo & 0xfffffe00) >>> 0);
        if (!host || lo & L2_ZERO_LO) {
          zero(n);
          continue;
        }
        if (host + cluster > this.fileSize) throw new Qcow2Unsupported(`cluster ${c} outside the file`);
        const last = out[out.length - 1];
        if (last && !last.zero && last.host + last.length === host + within) last.length += n;
        else out.push({ guest: at, length: n, zero: false, host: host + within });
        at += n;
      }
    }
    return out;
  }

  /** The guest bytes [guest, guest + length), in `into` when given (reused by the caller). */
  async read(guest: number, length: number, into?: Buffer): Promise<Buffer> {
    if (into && into.length < length) throw new RangeError(`a buffer of ${into.length} bytes for a read of ${length}`);
    const buf = into ? into.subarray(0, length) : Buffer.allocUnsafe(length);
    for (const x of await this.extents(guest, length)) {
      if (x.zero) {
        buf.fill(0, x.guest - guest, x.guest - guest + x.length);
        continue;
      }
      const { bytesRead } = await this.fh.read(buf, x.guest - guest, x.length, x.host);
      if (bytesRead !== x.length) throw new Error(`short read of the image at ${x.host}`);
    }
    return buf;
  }
}
