// A full copy pulled out of the point-in-time view in-process: the disk's read-only export on the
// view's NBD server (pull.ts started it, one per view) is read by our NBD client, its
// `base:allocation` context saying which runs read as zeros (not read, left as holes), and the
// rest streamed into a qcow2 written front to back and hashed as it is written (pull-stream.ts).
// Against `qemu-img convert` reading the same export (pull.ts), no program is started per disk and
// the file is not read again for its sha256; under Verify, the read-back check (readback.ts) is
// made as the file is written, against the very bytes read: no second read of the view either.
//
// Where it is not used: compression (the writer has none: qemu-img convert -c, pull.ts), a disk
// with a backing chain, a QEMU whose NBD server is someone else's (the push path, disk-copy.ts),
// data spread so wide or so much of it that the layout would hold too much of Node-RED's memory
// (qemu-img convert), and a read of the view that failed (QEMU's own backup job reads the same
// clusters and names the error, as for an incremental).
import type { Extent } from '../../nbd/client';
import { pullStream, streamRefusal, type StreamRefusal } from './pull-stream';
import type { WrittenAs } from '../../repository/qcow2-stream';
import { exportFor, type PullRefusal, type ViewServer } from './pull';
import type { ViewDisk } from './view';

export interface FullPull {
  dest: string;
  /** check the copy as it is written (the copy node's Verify) */
  check?: boolean;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
  /** bound on each answer of the server */
  replyTimeoutMs?: number;
}

export interface FullPulled {
  bytes: number;
  sha256: string;
  bytesRead: number;
  writtenAs: WrittenAs;
  /** the read-back check passed (check) */
  checked: boolean;
}

/** `base:allocation`: flag 2 (NBD_STATE_ZERO) marks a run that reads as zeros; everything else is read. */
const data = (e: Extent) => (e.flags & 2) === 0;

/**
 * Reads of 512 KiB, four in flight: 2 MiB of buffers per disk being copied (pooled between disks,
 * util/buffer-pool.ts), which count in Node-RED's peak RSS a few disks at once. Measured (100 VMs x
 * 2 disks, `bench/run.js --quick --only=scale`, one run each): 1 MiB reads 47.8 ms/VM, peak RSS
 * 193.6 MiB; 512 KiB 47.7 ms/VM, 181.3 MiB; 256 KiB 52.2 ms/VM, 182.8 MiB. A 256 MiB disk from
 * qemu-nbd: 430-450 ms at 1 MiB, 440-540 at 512 KiB, 500-560 at 256 KiB.
 */
const READ = 512 << 10;
/** at most 32 GiB of data (a cluster list of 512 Ki entries) in-process; beyond, qemu-img convert */
const MAX_CLUSTERS = 512 * 1024;

export async function pullFullDisk(server: ViewServer, d: ViewDisk, o: FullPull): Promise<FullPulled | PullRefusal | StreamRefusal> {
  const view = exportFor(server, d, o.signal);
  if (typeof view === 'string') return view;
  try {
    const r = await pullStream({
      socket: view.socket,
      exportName: view.name,
      context: 'base:allocation',
      copies: data,
      size: d.virtualSize,
      dest: o.dest,
      readSize: READ,
      ...(o.check ? { checkAs: d.disk } : {}),
      maxClusters: MAX_CLUSTERS,
      ...(o.signal ? { signal: o.signal } : {}),
      ...(o.onProgress ? { onProgress: o.onProgress } : {}),
      ...(o.replyTimeoutMs !== undefined ? { replyTimeoutMs: o.replyTimeoutMs } : {}),
    });
    return { bytes: r.bytes, sha256: r.sha256, bytesRead: r.bytesRead, writtenAs: r.writtenAs, checked: r.checked };
  } catch (err) {
    if (o.signal?.aborted) throw err;
    return streamRefusal(err, d, `copying disk ${d.disk} out of its point-in-time view failed`);
  }
}
