// The partitions of a disk image from its first sectors (MBR, or GPT behind a protective MBR), and
// which file system a partition's first bytes show. Pure parsing of bytes read from the image.

export interface Partition {
  /** 1-based, as the guest names it (sda1 ...); 0: the whole disk holds one file system */
  index: number;
  offset: number;
  size: number;
}

export type FsType = 'ext' | 'xfs' | 'ntfs' | 'unknown';

const SECTOR = 512;

/** `head` is the image's first bytes (1 MiB covers an MBR and a GPT's usual 128 entries). */
export function partitionsOf(head: Buffer, diskSize: number): Partition[] {
  if (head.length < SECTOR || head.readUInt16LE(510) !== 0xaa55) return [{ index: 0, offset: 0, size: diskSize }];
  const entries = [0, 1, 2, 3].map((i) => {
    const e = head.subarray(446 + i * 16, 446 + (i + 1) * 16);
    return { type: e[4], start: e.readUInt32LE(8), sectors: e.readUInt32LE(12) };
  });
  if (entries.some((e) => e.type === 0xee) && head.length >= 2 * SECTOR + 92 && head.toString('latin1', SECTOR, SECTOR + 8) === 'EFI PART')
    return gptPartitions(head, diskSize);
  const found = entries
    .map((e, i) => ({ index: i + 1, offset: e.start * SECTOR, size: e.sectors * SECTOR, type: e.type }))
    // empty slots and extended containers (05, 0f, 85) hold no file system of their own
    .filter((p) => p.type !== 0 && ![0x05, 0x0f, 0x85].includes(p.type) && p.size > 0 && p.offset + p.size <= diskSize);
  // a file system written on the whole disk can carry 0xaa55 too (an NTFS boot sector): no partitions then
  return found.length ? found.map(({ index, offset, size }) => ({ index, offset, size })) : [{ index: 0, offset: 0, size: diskSize }];
}

function gptPartitions(head: Buffer, diskSize: number): Partition[] {
  const hdr = head.subarray(SECTOR, 2 * SECTOR);
  const entriesLba = Number(hdr.readBigUInt64LE(72));
  const count = hdr.readUInt32LE(80);
  const entrySize = hdr.readUInt32LE(84);
  const out: Partition[] = [];
  for (let i = 0; i < Math.min(count, 256); i++) {
    const at = entriesLba * SECTOR + i * entrySize;
    if (at + entrySize > head.length) break;
    const e = head.subarray(at, at + entrySize);
    if (e.subarray(0, 16).every((b) => b === 0)) continue; // unused entry
    const first = Number(e.readBigUInt64LE(32));
    const last = Number(e.readBigUInt64LE(40));
    const offset = first * SECTOR;
    const size = (last - first + 1) * SECTOR;
    if (size > 0 && offset + size <= diskSize) out.push({ index: i + 1, offset, size });
  }
  return out;
}

/** `start`: the partition's first 64 KiB. */
export function fsTypeOf(start: Buffer): FsType {
  if (start.length >= 1024 + 58 && start.readUInt16LE(1024 + 56) === 0xef53) return 'ext';
  if (start.length >= 4 && start.toString('latin1', 0, 4) === 'XFSB') return 'xfs';
  if (start.length >= 11 && start.toString('latin1', 3, 11) === 'NTFS    ') return 'ntfs';
  return 'unknown';
}
