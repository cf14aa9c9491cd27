// An incremental pulled out of the point-in-time view, in-process: the VM's QEMU exports the view
// on the view's NBD server (pull.ts) with a disabled copy of the parent's bitmap as the export's
// `qemu:dirty-bitmap:` context; our NBD client asks which clusters it marks, reads them, and the
// stream writer lays them into a qcow2 on the parent (src/repository/qcow2-stream.ts), written
// front to back and hashed as it is written. Against the push path (QEMU's backup job writing
// through a qemu-nbd of ours, then the new file read again for its sha256) no program is started
// and the changed bytes are read once: measured with a 1 % change, see BENCHMARKS.md's chain trust.
//
// It keeps the push path's promises: the VM's QEMU only reads its own disk (a slow or full
// repository slows our reads of the export, never a guest write, which goes through the view's
// filter to the VM's own storage); the export and the bitmap copy are on the view's access node and
// go with it when the view is released, by whoever releases it (view.ts stops a server that serves
// an export of ours). Where it is not used (disk-copy.ts pushes): compression (the writer has none),
// a disk with a backing chain (pull.ts: what the view reports of such a disk is not to be trusted),
// a QEMU whose NBD server is someone else's, changes spread so wide that the new image's tables
// would hold more than 16 MiB of Node-RED's memory, and a read of the view that failed (QEMU's job
// then reads the same clusters and names the error).
import { randomBytes } from 'node:crypto';
import { NbdClient, NbdError, MAX_READ, type Extent } from '../../nbd/client';
import { Qcow2StreamWriter, STREAM_CLUSTER } from '../../repository/qcow2-stream';
import type { QmpExchange } from './protocol';
import type { PullRefusal, ViewServer } from './pull';
import { copyBitmap } from './tracking';
import { viewBroke, type ViewDisk } from './view';

/**
 * Pull one disk's incremental: the parent's bitmap copied onto the view's access node and exported
 * with it (one QMP exchange), then read. Returns why not instead, and the caller pushes into the
 * same file: a refusal before anything was made, a read of the view that failed in a way only the
 * push path's job can name (below), or changes spread too wide (the header comment). The export
 * and the bitmap copy are left to the view's release (a server of ours is stopped with every export
 * on it; the bitmap goes with its node), so the copy costs no exchange after the data; their names
 * are new at each attempt.
 */
export async function pullIncrementalDisk(
  qmp: QmpExchange,
  server: ViewServer,
  d: ViewDisk,
  o: Omit<IncrementalPull, 'socket' | 'exportName' | 'bitmap' | 'size'> & { since: string },
): Promise<IncrementalPulled | PullRefusal | `view-read-failed: ${string}` | `spread: ${string}`> {
  if (o.signal?.aborted) throw stopped(o.signal);
  if (server === 'nbd-server-busy') return server;
  if ('refused' in server) return server.refused;
  const view = server.exports.get(d.disk);
  if (!view) throw new Error(`disk ${d.disk}: the view's NBD server has no export for it`);
  if (view.chained) return 'backing-chain';
  const attempt = randomBytes(3).toString('hex');
  const bitmap = `${d.jobId}-b${attempt}`;
  const exportName = `i${d.index}-${attempt}`;
  await qmp(async (c) => {
    await copyBitmap(c, { accessNode: d.accessNode, diskNode: d.node, from: o.since, name: bitmap });
    await c.execute('block-export-add', {
      type: 'nbd',
      id: `${d.jobId}-i${attempt}`,
      'node-name': d.accessNode,
      name: exportName,
      writable: false,
      bitmaps: [bitmap],
    });
  });
  const { since: _since, ...rest } = o;
  try {
    return await pullIncremental({ ...rest, socket: view.socket, exportName, bitmap, size: d.virtualSize });
  } catch (err) {
    if (o.signal?.aborted) throw err;
    const why = (err as Error).message;
    // QEMU's NBD server sends every read error it has no NBD value for as EINVAL ("reading from
    // file failed"), the broken snapshot's EACCES among them: QEMU's own backup job is asked to read
    // the same clusters (the push path), and its error names what went wrong (view.ts, viewBroke)
    if (err instanceof NbdError && /NBD read .* failed \(EINVAL/.test(why)) return `view-read-failed: ${why}`;
    if (err instanceof SpreadTooWide) return `spread: ${why}`;
    throw new Error(`copying the changes of disk ${d.disk} out of its point-in-time view failed: ${why}${viewBroke(d, why)}`);
  }
}

export interface IncrementalPull {
  /** the view's NBD server socket and the export carrying the bitmap */
  socket: string;
  exportName: string;
  /** the bitmap on the exported node whose marked clusters are copied */
  bitmap: string;
  /** the disk's virtual size */
  size: number;
  dest: string;
  /** the parent's file, as the new image's backing string (relative to its folder) */
  backing: string;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
  /** bound on each answer of the server (a QEMU stopped or hung fails the copy instead of holding it) */
  replyTimeoutMs?: number;
}

export interface IncrementalPulled {
  bytes: number;
  /** sha256 of the new file, from the bytes as written */
  sha256: string;
  /** bytes read from the view */
  bytesRead: number;
  /** bytes the bitmap marks */
  bytesChanged: number;
}

/** clusters one L2 table maps (8192 x 64 KiB = 512 MiB) */
const L2_CLUSTERS = STREAM_CLUSTER / 8;
/** at most 16 MiB of L2 tables in Node-RED's memory for one disk (changes spread over 128 GiB); beyond, the disk is pushed */
const MAX_L2_TABLES = 256;

class SpreadTooWide extends Error {
  constructor(readonly regions: number) {
    super(`changes spread over ${regions} regions of 512 MiB`);
  }
}

/** Reads in flight at once; each has a buffer of its own (at most MAX_READ), so at most 4 x 4 MiB per disk copy. */
const DEPTH = 4;

/** Every extent the bitmap marks dirty, asked from the start to the end of the export. */
export async function dirtyExtents(client: Pick<NbdClient, 'blockStatus'>, size: number): Promise<Extent[]> {
  const dirty: Extent[] = [];
  // one request may describe at most 4 GiB - 1; ask in 1 GiB steps (QEMU may answer less)
  for (let at = 0; at < size;) {
    const extents = await client.blockStatus(at, Math.min(size - at, 1 << 30));
    let next = at;
    for (const e of extents) {
      if (e.offset !== next) throw new Error(`the NBD server's block status skipped from ${next} to ${e.offset}`);
      const len = Math.min(e.length, size - next);
      if (e.flags & 1) dirty.push({ offset: next, length: len, flags: e.flags });
      next += len;
      if (next >= size) break;
    }
    if (next <= at) throw new Error(`the NBD server's block status did not move past ${at}`);
    at = next;
  }
  return dirty;
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

/** Runs of consecutive clusters, cut into reads of at most MAX_READ (the last one clipped at the disk's end). */
export function readsOf(clusters: readonly number[], size: number): { offset: number; length: number; clusters: number }[] {
  const per = MAX_READ / STREAM_CLUSTER;
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

export async function pullIncremental(o: IncrementalPull): Promise<IncrementalPulled> {
  if (o.signal?.aborted) throw stopped(o.signal);
  const client = await NbdClient.connect({
    socket: o.socket,
    exportName: o.exportName,
    metaContext: `qemu:dirty-bitmap:${o.bitmap}`,
    wholeReads: true,
    ...(o.replyTimeoutMs !== undefined ? { replyTimeoutMs: o.replyTimeoutMs } : {}),
  });
  // the set's abort ends the connection at once: every read in flight fails
  const onAbort = () => void client.close();
  o.signal?.addEventListener('abort', onAbort, { once: true });
  if (o.signal?.aborted) onAbort(); // aborted while connecting
  let writer: Qcow2StreamWriter | undefined;
  try {
    if (client.size !== o.size) throw new Error(`the view's export is ${client.size} bytes, the disk ${o.size}`);
    const dirty = await dirtyExtents(client, o.size);
    const bytesChanged = dirty.reduce((n, e) => n + e.length, 0);
    const clusters = clustersOf(dirty);
    // the layout is held in memory until written: an L2 table (64 KiB) per 512 MiB region that changed
    const regions = new Set(clusters.map((c) => Math.floor(c / L2_CLUSTERS))).size;
    if (regions > MAX_L2_TABLES) throw new SpreadTooWide(regions);
    writer = await Qcow2StreamWriter.create(o.dest, { size: o.size, backing: o.backing, clusters });
    const reads = readsOf(clusters, o.size);
    // as large as the longest read (a few scattered clusters need no 4 MiB buffers)
    const bufSize = reads.reduce((m, r) => Math.max(m, r.clusters * STREAM_CLUSTER), 0);
    const buffers = Array.from({ length: Math.min(DEPTH, reads.length) }, () => Buffer.allocUnsafe(bufSize));
    const inFlight: { read: (typeof reads)[number]; buf: Buffer; answer: ReturnType<NbdClient['read']> }[] = [];
    const ask = (k: number) => {
      const buf = buffers[k % buffers.length];
      const answer = client.read(reads[k].offset, reads[k].length, buf);
      answer.catch(() => undefined); // awaited in order below
      inFlight.push({ read: reads[k], buf, answer });
    };
    let next = 0;
    for (; next < buffers.length; next++) ask(next);
    let bytesRead = 0;
    while (inFlight.length) {
      const { read, buf, answer } = inFlight.shift()!;
      for (const c of await answer) if ('hole' in c) buf.fill(0, c.offset - read.offset, c.offset - read.offset + c.hole);
      const whole = read.clusters * STREAM_CLUSTER;
      // the disk's last cluster, when the size is not a multiple of it: the rest of it reads as zeros
      if (read.length < whole) buf.fill(0, read.length, whole);
      await writer.write(buf.subarray(0, whole));
      bytesRead += read.length;
      o.onProgress?.(Math.min(bytesRead, bytesChanged), bytesChanged);
      if (next < reads.length) ask(next++);
    }
    if (o.signal?.aborted) throw stopped(o.signal);
    const done = await writer.finish();
    writer = undefined;
    o.onProgress?.(bytesChanged, bytesChanged);
    return { ...done, bytesRead, bytesChanged };
  } catch (err) {
    if (o.signal?.aborted) throw stopped(o.signal);
    throw err;
  } finally {
    o.signal?.removeEventListener('abort', onAbort);
    await writer?.abort();
    await client.close();
  }
}

const stopped = (signal: AbortSignal) => (signal.reason instanceof Error ? signal.reason : new Error('copy stopped'));
