// The read-back check of a full pulled in-process (pull-full.ts): the written file, read back from
// the repository and decoded by a reader of its own (src/repository/qcow2-read.ts, not the writer's
// code), must hold every cluster that was read from the view, each with the crc32 taken as it was
// read, and zeros everywhere else. This replaces `qemu-img compare` of the copy with the view for
// such a copy: no program per disk, and the view is not read a second time (the copy and its
// digests come from one read of it). A copy made another way (qemu-img convert, the push path) is
// still compared with the view by qemu-img (disk-copy.ts, compareWithView).
import { crc32 } from 'node:zlib';
import { Qcow2Reader } from '../../repository/qcow2-read';
import { STREAM_CLUSTER } from '../../repository/qcow2-stream';
import type { ClusterDigests } from './pull-stream';
import { borrow, giveBack } from '../../util/buffer-pool';

/** read back 512 KiB at a time (the pull's read size: the same pooled buffers) */
const PIECE = 512 << 10;

/** Resolves when `file` holds what was read; rejects naming the first difference (or why it cannot be read). */
export async function checkReadBack(file: string, disk: string, digests: ClusterDigests): Promise<void> {
  const differs = (why: string) =>
    new Error(`verification failed: ${file} does not hold what disk ${disk} held at the backup's moment (${why})`);
  let image: Qcow2Reader;
  try {
    image = await Qcow2Reader.open(file);
  } catch (err) {
    throw new Error(`verification failed: ${file} could not be read back: ${(err as Error).message}`);
  }
  const buf = borrow(PIECE);
  try {
    if (image.virtualSize !== digests.size) throw differs(`its size is ${image.virtualSize} bytes, the disk's ${digests.size}`);
    const { clusters, crcs } = digests;
    const C = STREAM_CLUSTER;
    const lastCluster = Math.ceil(digests.size / C) - 1;
    let guest = 0; // everything below is checked
    for (let i = 0; i < clusters.length;) {
      // a run of consecutive clusters, at most a piece
      let n = 1;
      while (n < PIECE / C && i + n < clusters.length && clusters[i + n] === clusters[i] + n) n++;
      const at = clusters[i] * C;
      await zerosOnly(image, guest, at - guest, differs);
      const length = Math.min(n * C, digests.size - at);
      const got = await image.read(at, length, buf);
      for (let k = 0; k < n; k++) {
        const c = clusters[i + k];
        // the disk's last cluster may be partial: its crc was taken over the zeros that fill it
        const piece = c === lastCluster && length < n * C ? padded(got.subarray(k * C), C) : got.subarray(k * C, (k + 1) * C);
        if (crc32(piece) !== crcs[i + k]) throw differs(`the 64 KiB at byte ${c * C} differ from what was read`);
      }
      guest = at + length;
      i += n;
    }
    await zerosOnly(image, guest, digests.size - guest, differs);
  } finally {
    await image.close();
    giveBack(buf);
  }
}

/** [at, at + length) must read as zeros: runs the image does not hold need no read. */
async function zerosOnly(image: Qcow2Reader, at: number, length: number, differs: (why: string) => Error): Promise<void> {
  if (length <= 0) return;
  for (const x of await image.extents(at, length)) {
    if (!x.zero) throw differs(`data at byte ${x.guest}, where the disk read zeros`);
  }
}

function padded(b: Buffer, size: number): Buffer {
  const out = Buffer.alloc(size);
  b.copy(out);
  return out;
}
