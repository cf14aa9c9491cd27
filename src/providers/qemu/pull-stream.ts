// A disk pulled out of the point-in-time view in-process, the part a full and an incremental
// share: our NBD client (src/nbd/client.ts) asks the export's metadata context which runs to copy
// (`base:allocation` for a full: everything but what reads as zeros; `qemu:dirty-bitmap:` for an
// incremental: what the bitmap marks), then reads those 64 KiB clusters, a few reads in flight,
// and the stream writer (src/repository/qcow2-stream.ts) lays them into a qcow2 written front to
// back and hashed as it is written. No program is started and the view is read once.
//
// With the read-back check (a full under Verify: readback.ts), each buffer, once written, is read
// back from the file through a reader of its own and compared with what was read from the view
// before the buffer takes the next read; the layout is compared once the file is closed.
import { NbdClient, NbdError, MAX_READ, type Extent, type ReadChunk } from '../../nbd/client';
import { viewBroke, type ViewDisk } from './view';
import { Qcow2StreamWriter, STREAM_CLUSTER, type WrittenAs } from '../../repository/qcow2-stream';
import { ReadBack, ReadBackMismatch } from './readback';
import { borrow, giveBack } from '../../util/buffer-pool';

export interface StreamPull {
  /** the view's NBD server socket and the export to read */
  socket: string;
  exportName: string;
  /** the metadata context that says what to copy, and which of its extents are copied */
  context: string;
  copies: (e: Extent) => boolean;
  /** the disk's virtual size */
  size: number;
  dest: string;
  /** for an incremental: the parent's file, as the new image's backing string (relative to its folder) */
  backing?: string;
  /** longest read (a multiple of 64 KiB, at most MAX_READ) */
  readSize: number;
  /** check the copy as it is written (readback.ts): the disk's name, for the error */
  checkAs?: string;
  /** more clusters than this: SpreadTooWide before anything is written (the layout is held in memory) */
  maxClusters?: number;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
  /** bound on each answer of the server (a QEMU stopped or hung fails the copy instead of holding it) */
  replyTimeoutMs?: number;
}

export interface StreamPulled {
  bytes: number;
  /** sha256 of the new file, from the bytes as written */
  sha256: string;
  /** bytes read from the view */
  bytesRead: number;
  /** bytes the context marked for copying */
  bytesMarked: number;
  /** the file as the writer closed it */
  writtenAs: WrittenAs;
  /** the read-back check passed (checkAs) */
  checked: boolean;
}

/** clusters one L2 table maps (8192 x 64 KiB = 512 MiB) */
const L2_CLUSTERS = STREAM_CLUSTER / 8;
/** at most 16 MiB of L2 tables in Node-RED's memory for one disk (data spread over 128 GiB) */
const MAX_L2_TABLES = 256;

/** The disk is copied another way: its layout would hold too much of Node-RED's memory. */
class SpreadTooWide extends Error {}

/** Why a disk that failed in-process is copied another way (the caller's next path reads it again). */
export type StreamRefusal = `view-read-failed: ${string}` | `spread: ${string}`;

/**
 * A failed in-process pull: the refusal the caller copies by another path, else an error naming
 * the disk. QEMU's NBD server sends every read error it has no NBD value for as EINVAL ("reading
 * from file failed"), the broken snapshot's EACCES among them: QEMU's own backup job is asked to
 * read the same clusters (the push path), and its error names what went wrong (view.ts, viewBroke).
 */
export function streamRefusal(err: unknown, d: ViewDisk, failed: string): StreamRefusal {
  const why = (err as Error).message;
  if (err instanceof NbdError && /NBD read .* failed \(EINVAL/.test(why)) return `view-read-failed: ${why}`;
  if (err instanceof SpreadTooWide) return `spread: ${why}`;
  if (err instanceof ReadBackMismatch) throw err; // the copy is wrong: no other path is tried
  throw new Error(`${failed}: ${why}${viewBroke(d, why)}`);
}

/** Reads in flight at once, each into a buffer of its own. */
const DEPTH = 4;

/** Every extent of the context that `copies` picks, asked from the start to the end of the export. */
export async function markedExtents(
  client: Pick<NbdClient, 'blockStatus'>,
  size: number,
  copies: (e: Extent) => boolean,
): Promise<Extent[]> {
  const marked: Extent[] = [];
  // one request may describe at most 4 GiB - 1; ask in 1 GiB steps (QEMU may answer less)
  for (let at = 0; at < size;) {
    const extents = await client.blockStatus(at, Math.min(size - at, 1 << 30));
    let next = at;
    for (const e of extents) {
      if (e.offset !== next) throw new Error(`the NBD server's block status skipped from ${next} to ${e.offset}`);
      const len = Math.min(e.length, size - next);
      if (copies(e)) {
        const last = marked[marked.length - 1];
        if (last && last.offset + last.length === next && last.flags === e.flags) last.length += len;
        else marked.push({ offset: next, length: len, flags: e.flags });
      }
      next += len;
      if (next >= size) break;
    }
    if (next <= at) throw new Error(`the NBD server's block status did not move past ${at}`);
    at = next;
  }
  return marked;
}

/** The image clusters (64 KiB) the extents touch, ascending, each once. */
export function clustersOf(extents: readonly Extent[]): number[] {
  const out: number[] = [];
  for (const e of extents) {
    const first = Math.floor(e.offset / STREAM_CLUSTER);
    const last = Math.floor((e.offset + e.length - 1) / STREAM_CLUSTER);
    for (let c = Math.max(first, out.length ? out[out.length - 1] + 1 : 0); c <= last; c++) out.push(c);
  }
  return out;
}

/** Runs of consecutive clusters, cut into reads of at most `max` bytes (the last one clipped at the disk's end). */
export function readsOf(clusters: readonly number[], size: number, max = MAX_READ): { offset: number; length: number; clusters: number }[] {
  const per = Math.max(1, Math.floor(max / STREAM_CLUSTER));
  const reads: { offset: number; length: number; clusters: number }[] = [];
  for (let i = 0; i < clusters.length;) {
    let n = 1;
    while (n < per && i + n < clusters.length && clusters[i + n] === clusters[i] + n) n++;
    const offset = clusters[i] * STREAM_CLUSTER;
    reads.push({ offset, length: Math.min(n * STREAM_CLUSTER, size - offset), clusters: n });
    i += n;
  }
  return reads;
}

/**
 * Reads are never asked whole (NBD_CMD_FLAG_DF): QEMU 7.2's server then reads the view's node for
 * every byte, and a cluster that read zeros at the moment and was written since came back as the
 * guest's new bytes (found by test/integration/storage-qemu.test.ts: a full of a block device held
 * the write made after its moment). Read as qemu-img reads, the server answers such a run as a hole
 * (from its block status) and the reply is the moment's.
 */
export async function pullStream(o: StreamPull): Promise<StreamPulled> {
  if (o.signal?.aborted) throw stopped(o.signal);
  const client = await NbdClient.connect({
    socket: o.socket,
    exportName: o.exportName,
    metaContext: o.context,
    ...(o.replyTimeoutMs !== undefined ? { replyTimeoutMs: o.replyTimeoutMs } : {}),
  });
  // the set's abort ends the connection at once: every read in flight fails
  const onAbort = () => void client.close();
  o.signal?.addEventListener('abort', onAbort, { once: true });
  if (o.signal?.aborted) onAbort(); // aborted while connecting
  let writer: Qcow2StreamWriter | undefined;
  let readBack: ReadBack | undefined;
  const buffers: Buffer[] = [];
  try {
    if (client.size !== o.size) throw new Error(`the view's export is ${client.size} bytes, the disk ${o.size}`);
    const marked = await markedExtents(client, o.size, o.copies);
    const bytesMarked = marked.reduce((n, e) => n + e.length, 0);
    const clusters = clustersOf(marked);
    if (o.maxClusters !== undefined && clusters.length > o.maxClusters)
      throw new SpreadTooWide(`${clusters.length} clusters to copy, more than ${o.maxClusters}`);
    // the layout is held in memory until written: an L2 table (64 KiB) per 512 MiB region that has data
    const regions = new Set(clusters.map((c) => Math.floor(c / L2_CLUSTERS))).size;
    if (regions > MAX_L2_TABLES) throw new SpreadTooWide(`data spread over ${regions} regions of 512 MiB`);
    writer = await Qcow2StreamWriter.create(o.dest, { size: o.size, ...(o.backing !== undefined ? { backing: o.backing } : {}), clusters });
    const reads = readsOf(clusters, o.size, o.readSize);
    // as large as the longest read, rounded up to a power of two (pooled: util/buffer-pool.ts)
    const longest = reads.reduce((m, r) => Math.max(m, r.clusters * STREAM_CLUSTER), 0);
    const bufSize = Math.min(o.readSize, 2 ** Math.ceil(Math.log2(Math.max(longest, STREAM_CLUSTER))));
    for (let k = 0; k < Math.min(DEPTH, reads.length); k++) buffers.push(borrow(bufSize));
    if (o.checkAs !== undefined) readBack = await ReadBack.open(o.dest, o.checkAs, o.size, writer.finalSize, bufSize);
    // Each buffer goes round: read into it, handed to the writer, (checked against the file,) read
    // into again. The writes (thread pool) and the hashing of what the writer was given (this
    // thread) run while the other buffers' reads are answered: nothing waits for a write but its
    // own buffer.
    const free: Promise<void>[] = buffers.map(() => Promise.resolve());
    const inFlight: { read: (typeof reads)[number]; slot: number; answer: Promise<ReadChunk[]> }[] = [];
    const ask = (k: number) => {
      const slot = k % buffers.length;
      const answer = free[slot].then(() => client.read(reads[k].offset, reads[k].length, buffers[slot]));
      answer.catch(() => undefined); // awaited in order below
      inFlight.push({ read: reads[k], slot, answer });
    };
    let next = 0;
    for (; next < buffers.length; next++) ask(next);
    let bytesRead = 0;
    while (inFlight.length) {
      const { read, slot, answer } = inFlight.shift()!;
      const buf = buffers[slot];
      for (const c of await answer) if ('hole' in c) buf.fill(0, c.offset - read.offset, c.offset - read.offset + c.hole);
      const whole = read.clusters * STREAM_CLUSTER;
      // the disk's last cluster, when the size is not a multiple of it: the rest of it reads as zeros
      if (read.length < whole) buf.fill(0, read.length, whole);
      // in the order read: the writer lays the clusters down in that order (and the checks follow it)
      const written = writer.write(buf.subarray(0, whole));
      const check = readBack;
      free[slot] = check ? written.then(() => check.check(read.offset, read.length, buf)) : written;
      free[slot].catch(() => undefined); // a failed write fails the next read of its buffer, and finish()
      bytesRead += read.length;
      o.onProgress?.(Math.min(bytesRead, bytesMarked), bytesMarked);
      if (next < reads.length) ask(next++);
    }
    await Promise.all(free);
    if (o.signal?.aborted) throw stopped(o.signal);
    const done = await writer.finish();
    writer = undefined;
    await readBack?.finish(clusters);
    o.onProgress?.(bytesMarked, bytesMarked);
    return { ...done, bytesRead, bytesMarked, checked: readBack !== undefined };
  } catch (err) {
    if (o.signal?.aborted) throw stopped(o.signal);
    throw err;
  } finally {
    o.signal?.removeEventListener('abort', onAbort);
    await writer?.abort();
    await readBack?.close();
    await client.close();
    // back to the pool only once nothing can still write into them (the connection is closed)
    for (const b of buffers) giveBack(b);
  }
}

const stopped = (signal: AbortSignal) => (signal.reason instanceof Error ? signal.reason : new Error('copy stopped'));
