// A new, empty qcow2 image (the target a writer of ours fills: an incremental on its parent, or a
// pushed full), written in-process. `qemu-img create` is a program started per disk for four
// clusters of metadata: 15-30 ms of each incremental's critical path here, most of it the start of
// the program. Shapes beyond the plain one (a virtual size whose L1 table needs more than one
// cluster, i.e. above 4 TiB; an odd size; a long backing string) are left to qemu-img.
//
// The layout is the one qemu-img create writes (QEMU 7.2, compat 1.1, 64 KiB clusters, 16-bit
// refcounts): cluster 0 the header, its extensions and the backing string; cluster 1 the
// refcount table; cluster 2 the one refcount block (clusters 0-3 used once each); cluster 3
// the L1 table, all zero (nothing allocated: every read falls through to the backing file).
// test/unit/repository/qcow2-create.test.ts checks it with qemu-img check, info and qemu-io.
import { constants as fsConstants, promises as fs } from 'node:fs';
import { runProgram } from '../util/run';

export interface NewQcow2 {
  /** virtual size in bytes */
  size: number;
  /** backing file string as written into the header (relative to the image's folder), qcow2 format */
  backing?: string;
  /** qcow2 compressed clusters use zstd (the compress option), else zlib (QEMU's default) */
  zstd?: boolean;
}

const CLUSTER_BITS = 16;
const CLUSTER = 1 << CLUSTER_BITS;
/** guest bytes one L2 table maps: 8192 entries of a cluster each */
const PER_L2 = CLUSTER * (CLUSTER / 8);
const QCOW2_MAGIC = 0x514649fb;
const HEADER_LENGTH = 112;
const EXT_BACKING_FORMAT = 0xe2792aca;
/** incompatible feature bit 3: the compression type field is not zlib */
const INCOMPAT_COMPRESSION = 1n << 3n;

/** What the header says of an image's layout: offsets in bytes, the refcount table's length in clusters. */
export interface Qcow2Header {
  /** virtual size in bytes */
  size: number;
  /** the backing file string's bytes (1-1023, no NUL), its format qcow2 */
  backing?: Buffer;
  zstd?: boolean;
  /** entries of the L1 table */
  l1Size: number;
  l1Offset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
}

/**
 * Write the header (version 3, 64 KiB clusters, 16-bit refcounts, no features), the backing
 * format extension and the backing string into the first cluster of `img`, which is all zero:
 * the one header qcow2Bytes and the sequential writer of qcow2-stream.ts both write.
 */
export function writeQcow2Header(img: Buffer, h: Qcow2Header): void {
  // header, backing format extension (8 + "qcow2" padded to 8), end of extensions, backing string
  const backingOffset = HEADER_LENGTH + 16 + 8;
  img.writeUInt32BE(QCOW2_MAGIC, 0);
  img.writeUInt32BE(3, 4); // version
  if (h.backing) {
    img.writeBigUInt64BE(BigInt(backingOffset), 8);
    img.writeUInt32BE(h.backing.length, 16);
  }
  img.writeUInt32BE(CLUSTER_BITS, 20);
  img.writeBigUInt64BE(BigInt(h.size), 24);
  img.writeUInt32BE(0, 32); // no encryption
  img.writeUInt32BE(h.l1Size, 36);
  img.writeBigUInt64BE(BigInt(h.l1Offset), 40);
  img.writeBigUInt64BE(BigInt(h.refcountTableOffset), 48);
  img.writeUInt32BE(h.refcountTableClusters, 56);
  // no snapshots (60, 64); compatible and autoclear features none (80, 88): lazy refcounts off
  img.writeBigUInt64BE(h.zstd ? INCOMPAT_COMPRESSION : 0n, 72);
  img.writeUInt32BE(4, 96); // refcount order: 16-bit refcounts
  img.writeUInt32BE(HEADER_LENGTH, 100);
  img.writeUInt8(h.zstd ? 1 : 0, 104); // compression type
  if (h.backing) {
    img.writeUInt32BE(EXT_BACKING_FORMAT, HEADER_LENGTH);
    img.writeUInt32BE(5, HEADER_LENGTH + 4);
    img.write('qcow2', HEADER_LENGTH + 8, 'ascii');
    // the end-of-extensions marker is 8 zero bytes: already there
    h.backing.copy(img, backingOffset);
  }
}

/** The image's bytes, or undefined where the shape is one to leave to qemu-img. */
export function qcow2Bytes(o: NewQcow2): Buffer | undefined {
  if (!Number.isSafeInteger(o.size) || o.size <= 0 || o.size % 512 !== 0) return undefined;
  const l1Size = Math.ceil(o.size / PER_L2);
  if (l1Size * 8 > CLUSTER) return undefined;
  const backing = o.backing === undefined ? undefined : Buffer.from(o.backing, 'utf8');
  if (backing && (backing.length === 0 || backing.length > 1023 || backing.includes(0))) return undefined;

  const img = Buffer.alloc(3 * CLUSTER + l1Size * 8);
  writeQcow2Header(img, {
    size: o.size,
    backing,
    zstd: o.zstd,
    l1Size,
    l1Offset: 3 * CLUSTER,
    refcountTableOffset: CLUSTER,
    refcountTableClusters: 1,
  });
  img.writeBigUInt64BE(BigInt(2 * CLUSTER), CLUSTER); // refcount table -> the one block
  for (let c = 0; c < 4; c++) img.writeUInt16BE(1, 2 * CLUSTER + 2 * c); // clusters 0-3 in use
  return img;
}

/**
 * Create `file` (replacing one of ours of that name; never through a link) as an empty qcow2
 * image. Falls back to `qemu-img create` for a shape qcow2Bytes leaves to it.
 */
export async function createQcow2(file: string, o: NewQcow2, qemuImg: string): Promise<void> {
  const bytes = qcow2Bytes(o);
  if (!bytes) {
    await runProgram(qemuImg, [
      'create',
      '-q',
      '-f',
      'qcow2',
      ...(o.zstd ? ['-o', 'compression_type=zstd'] : []),
      ...(o.backing !== undefined ? ['-b', o.backing, '-F', 'qcow2'] : []),
      file,
      String(o.size),
    ]);
    return;
  }
  const { O_WRONLY, O_CREAT, O_TRUNC, O_NOFOLLOW } = fsConstants;
  const fh = await fs.open(file, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, 0o644).catch((err: NodeJS.ErrnoException) => {
    throw new Error(err.code === 'ELOOP' ? `refusing ${file}: a symbolic link is in its place` : `cannot create ${file}: ${err.message}`);
  });
  try {
    await fh.write(bytes, 0, bytes.length, 0);
  } finally {
    await fh.close();
  }
}
