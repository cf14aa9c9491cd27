// A read-only VHDX reader ([MS-VHDX] v1.0, "Virtual Hard Disk v2 (VHDX) File Format"), working
// through random reads of the file on the Hyper-V host (local file, or SFTP over the SSH session).
// Why our own: the backup reads only what it needs out of the checkpoint's read-only parent (the
// allocated blocks for a full, the ranges Resilient Change Tracking names for an incremental), so
// the bytes that cross the network are the data, not the whole file. Checked against qemu-img's
// own VHDX driver in test/unit/hyperv/vhdx.test.ts (files made by qemu-img, read back both ways).
//
// Refused, with the reason: a differencing VHDX (HasParent), a VHDX whose log is not empty (its
// metadata must be replayed first, by Hyper-V), a bad checksum, a header or region version we do
// not know, a partially present block (only valid in a differencing file).
import { HyperVError } from './errors';

/** One file opened for random reads (see PowerShellRunner.openFile). */
export interface RandomAccessFile {
  readonly size: number;
  read(offset: number, length: number): Promise<Buffer>;
  close(): Promise<void>;
}

export interface Range {
  offset: number;
  length: number;
}

const KiB = 1024;
const MiB = 1024 * KiB;

// GUIDs of the regions and metadata items ([MS-VHDX] 2.2.3.2, 2.6.2)
const BAT_REGION = '2dc27766-f623-4200-9d64-115e9bfd4a08';
const METADATA_REGION = '8b7ca206-4790-4b9a-b8fe-575f050f886e';
const FILE_PARAMETERS = 'caa16737-fa36-4d43-b3b6-33f0aa44e76b';
const VIRTUAL_DISK_SIZE = '2fa54224-cd1b-4876-b211-5dbed83bf4b8';
const VIRTUAL_DISK_ID = 'beca12ab-b2e6-4523-93ef-c309e000c746';
const LOGICAL_SECTOR_SIZE = '8141bf1d-a96f-4709-ba47-f233a8faab5f';
const PHYSICAL_SECTOR_SIZE = 'cda348c7-445d-4471-9cc9-e9885251c556';
const PARENT_LOCATOR = 'a8d35f2d-b30b-454d-abf7-d3d84834ab0c';
const KNOWN_ITEMS = [FILE_PARAMETERS, VIRTUAL_DISK_SIZE, VIRTUAL_DISK_ID, LOGICAL_SECTOR_SIZE, PHYSICAL_SECTOR_SIZE];
const ZERO_GUID = '00000000-0000-0000-0000-000000000000';

/** Payload block states ([MS-VHDX] 2.5.1.1) */
export const BLOCK = { NOT_PRESENT: 0, UNDEFINED: 1, ZERO: 2, UNMAPPED: 3, FULLY_PRESENT: 6, PARTIALLY_PRESENT: 7 } as const;

// ---------------------------------------------------------------------------------------------
// CRC-32C (Castagnoli), the checksum of VHDX headers and region tables

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    t[i] = c >>> 0;
  }
  return t;
})();

export function crc32c(buf: Buffer): number {
  let c = 0xffffffff;
  for (let i = 0; i < buf.length; i++) c = CRC_TABLE[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** The checksum field (4 bytes at `at`) counted as zero, as the format says. */
function checksumOk(buf: Buffer, at: number): boolean {
  const want = buf.readUInt32LE(at);
  const copy = Buffer.from(buf);
  copy.writeUInt32LE(0, at);
  return crc32c(copy) === want;
}

/** Windows GUID layout: the first three fields little-endian. */
export function guidAt(buf: Buffer, at: number): string {
  const h = (i: number, n: number) => buf.subarray(at + i, at + i + n).toString('hex');
  const le = (i: number, n: number) =>
    Buffer.from(buf.subarray(at + i, at + i + n))
      .reverse()
      .toString('hex');
  return `${le(0, 4)}-${le(4, 2)}-${le(6, 2)}-${h(8, 2)}-${h(10, 6)}`;
}

/** The identity of a VHDX at one moment: any write by Hyper-V changes it ([MS-VHDX] 2.2.2). */
export interface VhdxIdentity {
  sequenceNumber: string;
  fileWriteGuid: string;
  dataWriteGuid: string;
  logGuid: string;
}

export interface VhdxInfo {
  virtualSize: number;
  blockSize: number;
  logicalSectorSize: number;
  virtualDiskId: string;
  identity: VhdxIdentity;
}

const bad = (source: string, why: string) => new HyperVError('inconsistent', `${source}: not a VHDX this backup can read: ${why}`);

/** The current header: the valid one of the two with the higher sequence number. */
export async function readHeader(file: RandomAccessFile, source: string): Promise<VhdxIdentity> {
  const sig = await file.read(0, 8);
  if (sig.toString('latin1') !== 'vhdxfile') throw bad(source, 'no "vhdxfile" signature');
  let best: { seq: bigint; id: VhdxIdentity } | undefined;
  for (const at of [64 * KiB, 128 * KiB]) {
    const h = await file.read(at, 4 * KiB);
    if (h.length < 4 * KiB || h.toString('latin1', 0, 4) !== 'head' || !checksumOk(h, 4)) continue;
    const version = h.readUInt16LE(66);
    if (version !== 1) throw bad(source, `header version ${version} (1 expected)`);
    const seq = h.readBigUInt64LE(8);
    const id = {
      sequenceNumber: seq.toString(),
      fileWriteGuid: guidAt(h, 16),
      dataWriteGuid: guidAt(h, 32),
      logGuid: guidAt(h, 48),
    };
    if (!best || seq > best.seq) best = { seq, id };
  }
  if (!best) throw bad(source, 'neither header is valid (signature or CRC-32C checksum)');
  return best.id;
}

async function readRegions(file: RandomAccessFile, source: string): Promise<Map<string, { offset: number; length: number }>> {
  for (const at of [192 * KiB, 256 * KiB]) {
    const t = await file.read(at, 64 * KiB);
    if (t.length < 64 * KiB || t.toString('latin1', 0, 4) !== 'regi' || !checksumOk(t, 4)) continue;
    const count = t.readUInt32LE(8);
    if (count > 2047) throw bad(source, `region table holds ${count} entries`);
    const out = new Map<string, { offset: number; length: number }>();
    for (let i = 0; i < count; i++) {
      const e = 16 + i * 32;
      const guid = guidAt(t, e);
      const required = (t.readUInt32LE(e + 28) & 1) === 1;
      if (required && guid !== BAT_REGION && guid !== METADATA_REGION)
        throw bad(source, `a required region ${guid} this reader does not know`);
      out.set(guid, { offset: Number(t.readBigUInt64LE(e + 16)), length: t.readUInt32LE(e + 24) });
    }
    return out;
  }
  throw bad(source, 'neither region table is valid');
}

export class VhdxReader {
  private constructor(
    private readonly file: RandomAccessFile,
    readonly source: string,
    readonly info: VhdxInfo,
    /** per payload block: state and file offset */
    private readonly bat: BigUint64Array,
    private readonly chunkRatio: number,
  ) {}

  /** Parse the file's headers, regions, metadata and BAT; the file is closed again if that fails. */
  static async open(file: RandomAccessFile, source: string): Promise<VhdxReader> {
    try {
      return await VhdxReader.parse(file, source);
    } catch (err) {
      await file.close().catch(() => undefined);
      throw err;
    }
  }

  private static async parse(file: RandomAccessFile, source: string): Promise<VhdxReader> {
    const identity = await readHeader(file, source);
    if (identity.logGuid !== ZERO_GUID)
      throw bad(source, `its log is not empty (LogGuid ${identity.logGuid}): Hyper-V has not yet written its metadata back`);
    const regions = await readRegions(file, source);
    const meta = regions.get(METADATA_REGION);
    const batRegion = regions.get(BAT_REGION);
    if (!meta || !batRegion) throw bad(source, 'no metadata or BAT region');
    const m = await file.read(meta.offset, meta.length);
    if (m.toString('latin1', 0, 8) !== 'metadata') throw bad(source, 'no metadata table signature');
    const items = new Map<string, Buffer>();
    const count = m.readUInt16LE(10);
    for (let i = 0; i < count && 32 + i * 32 + 32 <= m.length; i++) {
      const e = 32 + i * 32;
      const id = guidAt(m, e);
      const off = m.readUInt32LE(e + 16);
      const len = m.readUInt32LE(e + 20);
      const required = (m.readUInt32LE(e + 24) >>> 2) & 1;
      if (off + len > m.length) throw bad(source, `metadata item ${id} lies outside its region`);
      if (id === PARENT_LOCATOR) throw bad(source, 'it is a differencing disk (parent locator)');
      if (required && !KNOWN_ITEMS.includes(id)) throw bad(source, `a required metadata item ${id} this reader does not know`);
      items.set(id, m.subarray(off, off + len));
    }
    const params = items.get(FILE_PARAMETERS);
    const sizeItem = items.get(VIRTUAL_DISK_SIZE);
    const sectorItem = items.get(LOGICAL_SECTOR_SIZE);
    if (!params || !sizeItem || !sectorItem) throw bad(source, 'file parameters, virtual disk size or logical sector size missing');
    const blockSize = params.readUInt32LE(0);
    if ((params.readUInt32LE(4) & 2) !== 0) throw bad(source, 'it is a differencing disk (HasParent): its parent holds part of the data');
    const virtualSize = Number(sizeItem.readBigUInt64LE(0));
    const logicalSectorSize = sectorItem.readUInt32LE(0);
    if (blockSize < MiB || blockSize > 256 * MiB || (blockSize & (blockSize - 1)) !== 0) throw bad(source, `block size ${blockSize}`);
    if (logicalSectorSize !== 512 && logicalSectorSize !== 4096) throw bad(source, `logical sector size ${logicalSectorSize}`);
    const chunkRatio = (2 ** 23 * logicalSectorSize) / blockSize;
    const dataBlocks = Math.ceil(virtualSize / blockSize);
    const entries = dataBlocks + Math.floor((dataBlocks - 1) / chunkRatio);
    if (entries * 8 > batRegion.length) throw bad(source, `the BAT holds ${batRegion.length / 8} entries, ${entries} needed`);
    const raw = await file.read(batRegion.offset, entries * 8);
    const all = new BigUint64Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + entries * 8));
    const bat = new BigUint64Array(dataBlocks);
    for (let i = 0; i < dataBlocks; i++) bat[i] = all[i + Math.floor(i / chunkRatio)]!;
    const vdid = items.get(VIRTUAL_DISK_ID);
    const info = { virtualSize, blockSize, logicalSectorSize, virtualDiskId: vdid ? guidAt(vdid, 0) : '', identity };
    return new VhdxReader(file, source, info, bat, chunkRatio);
  }

  /** state and absolute file offset of the payload block holding virtual offset `at` */
  private block(i: number): { state: number; fileOffset: number } {
    const e = this.bat[i]!;
    return { state: Number(e & 7n), fileOffset: Number(e >> 20n) * MiB };
  }

  /** The ranges that hold data (FULLY_PRESENT blocks), merged: what a full copy reads. */
  allocatedRanges(): Range[] {
    const out: Range[] = [];
    const { blockSize, virtualSize } = this.info;
    for (let i = 0; i < this.bat.length; i++) {
      const { state } = this.block(i);
      if (state === BLOCK.PARTIALLY_PRESENT) throw bad(this.source, `block ${i} is partially present (only a differencing disk has those)`);
      if (state !== BLOCK.FULLY_PRESENT) continue;
      const offset = i * blockSize;
      const length = Math.min(blockSize, virtualSize - offset);
      const last = out[out.length - 1];
      if (last && last.offset + last.length === offset) last.length += length;
      else out.push({ offset, length });
    }
    return out;
  }

  /** `length` bytes of the virtual disk at `offset`; blocks without data read as zeros. */
  async read(offset: number, length: number): Promise<Buffer> {
    const { blockSize, virtualSize } = this.info;
    if (offset < 0 || length < 0 || offset + length > virtualSize)
      throw new HyperVError(
        'invalid-argument',
        `${this.source}: range ${offset}+${length} is outside the virtual disk (${virtualSize} bytes)`,
      );
    const out = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const at = offset + done;
      const i = Math.floor(at / blockSize);
      const within = at - i * blockSize;
      const n = Math.min(length - done, blockSize - within);
      const { state, fileOffset } = this.block(i);
      if (state === BLOCK.PARTIALLY_PRESENT) throw bad(this.source, `block ${i} is partially present (only a differencing disk has those)`);
      if (state === BLOCK.FULLY_PRESENT) {
        const data = await this.file.read(fileOffset + within, n);
        if (data.length !== n) throw bad(this.source, `block ${i} ends past the end of the file`);
        data.copy(out, done);
      }
      done += n;
    }
    return out;
  }

  /** The header again: unchanged means Hyper-V did not write to the file meanwhile. */
  async identityNow(): Promise<VhdxIdentity> {
    return readHeader(this.file, this.source);
  }

  close(): Promise<void> {
    return this.file.close();
  }
}

/** Ranges sorted, merged, clipped to the disk; refuses overlapping or malformed input. */
export function normaliseRanges(ranges: readonly Range[], virtualSize: number, what: string): Range[] {
  const sorted = ranges
    .filter((r) => r.length > 0)
    .map((r) => {
      if (!Number.isSafeInteger(r.offset) || !Number.isSafeInteger(r.length) || r.offset < 0 || r.offset + r.length > virtualSize)
        throw new HyperVError('inconsistent', `${what}: range ${r.offset}+${r.length} lies outside the ${virtualSize}-byte disk`);
      return { ...r };
    })
    .sort((a, b) => a.offset - b.offset);
  const out: Range[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last && r.offset < last.offset + last.length) throw new HyperVError('inconsistent', `${what}: ranges overlap at ${r.offset}`);
    if (last && last.offset + last.length === r.offset) last.length += r.length;
    else out.push(r);
  }
  return out;
}
