// An incremental pulled out of the point-in-time view, in-process: the VM's QEMU exports the view
// on the view's NBD server (pull.ts) with a disabled copy of the parent's bitmap as the export's
// `qemu:dirty-bitmap:` context; our NBD client asks which clusters it marks, reads them, and the
// stream writer lays them into a qcow2 on the parent (pull-stream.ts, shared with the full),
// written front to back and hashed as it is written. Against the push path (QEMU's backup job writing
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
import { MAX_READ, type Extent, type NbdClient } from '../../nbd/client';
import { markedExtents, pullStream, streamRefusal, type StreamPull, type StreamRefusal } from './pull-stream';
import type { QmpExchange } from './protocol';
import { exportFor, type PullRefusal, type ViewServer } from './pull';
import { copyBitmap } from './tracking';
import type { ViewDisk } from './view';
import type { WrittenAs } from '../../repository/qcow2-stream';

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
): Promise<IncrementalPulled | PullRefusal | StreamRefusal> {
  const view = exportFor(server, d, o.signal);
  if (typeof view === 'string') return view;
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
    return streamRefusal(err, d, `copying the changes of disk ${d.disk} out of its point-in-time view failed`);
  }
}

export interface IncrementalPull extends Omit<StreamPull, 'context' | 'copies' | 'readSize' | 'checkAs' | 'backing'> {
  /** the bitmap on the exported node whose marked clusters are copied */
  bitmap: string;
  /** the parent's file, as the new image's backing string (relative to its folder) */
  backing: string;
}

export interface IncrementalPulled {
  bytes: number;
  /** sha256 of the new file, from the bytes as written */
  sha256: string;
  /** bytes read from the view */
  bytesRead: number;
  /** bytes the bitmap marks */
  bytesChanged: number;
  /** the file as the writer closed it */
  writtenAs: WrittenAs;
}

/** A dirty bitmap's context: flag 1 marks a dirty run. */
const dirty = (e: Extent) => (e.flags & 1) !== 0;

/** Every extent the bitmap marks dirty, asked from the start to the end of the export. */
export const dirtyExtents = (client: Pick<NbdClient, 'blockStatus'>, size: number) => markedExtents(client, size, dirty);

export async function pullIncremental(o: IncrementalPull): Promise<IncrementalPulled> {
  const { bitmap, ...rest } = o;
  // reads of 4 MiB (measured in BENCHMARKS.md's chain trust: the 1 % incremental of an 8 GiB disk)
  const r = await pullStream({ ...rest, context: `qemu:dirty-bitmap:${bitmap}`, copies: dirty, readSize: MAX_READ });
  return { bytes: r.bytes, sha256: r.sha256, bytesRead: r.bytesRead, bytesChanged: r.bytesMarked, writtenAs: r.writtenAs };
}
