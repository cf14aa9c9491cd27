// Copying one disk out of its point-in-time view. QEMU's own backup job reads the view (all of it
// for a full; for an incremental only the clusters the parent's bitmap marks) and writes through
// an NBD connection to a qemu-nbd process of ours, which writes the qcow2 in the staging directory.
// The repository is only ever touched by that separate process: a slow, full or hung repository
// stalls or fails the copy, never the VM's QEMU (its main loop would otherwise wait on the file
// system) and never a guest write (those go through the view's filter to the VM's own storage).
// An incremental's qcow2 has the previous backup of the disk as its backing file (a relative path
// inside the VM's folder), so stock tools read any point: qemu-img info --backing-chain, convert.
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { QmpClient } from './protocol';
import { runProgram, ProgramFailed } from '../../util/run';
import { bitmapForCopy } from './tracking';
import type { ViewDisk } from './view';

export interface DiskCopyOptions {
  qemuImg: string;
  qemuNbd: string;
  /** for an incremental: the qcow2 backing file string (relative) and the bitmap to read by */
  incremental?: { backing: string; bitmap: string };
  compress?: boolean;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
}

export interface DiskCopyResult {
  bytes: number;
  /** bytes the backup job read from the view */
  bytesRead: number;
  /** bytes the bitmap marked (incremental) */
  bytesChanged?: number;
}

export async function copyDisk(c: QmpClient, d: ViewDisk, dest: string, o: DiskCopyOptions): Promise<DiskCopyResult> {
  await runProgram(o.qemuImg, [
    'create',
    '-q',
    '-f',
    'qcow2',
    ...(o.incremental ? ['-b', o.incremental.backing, '-F', 'qcow2'] : []),
    dest,
    String(d.virtualSize),
  ]);
  // unix socket paths are limited to 108 bytes, staging paths may be longer
  const sock = path.join(os.tmpdir(), `vmbackup-nbd-${randomBytes(6).toString('hex')}.sock`);
  const stopServer = new AbortController();
  if (o.signal?.aborted) throw o.signal.reason instanceof Error ? o.signal.reason : new Error('copy stopped');
  // Without --persistent qemu-nbd serves one client and exits when it disconnects, having
  // flushed the image: its exit is the end of the write. The set's own abort stops it at once
  // too, wherever this copy is: no qemu-nbd of an ended set waits for a client that never comes.
  const server = runProgram(
    o.qemuNbd,
    ['--format=qcow2', `--socket=${sock}`, '--discard=unmap', '--detect-zeroes=unmap', '--cache=writeback', '--aio=threads', dest],
    { signal: o.signal ? AbortSignal.any([stopServer.signal, o.signal]) : stopServer.signal },
  ).then(
    () => undefined,
    (err: Error) => {
      const why = err instanceof ProgramFailed ? err.stderr.trim().split('\n').pop() || err.message : err.message;
      throw new Error(`writing ${path.basename(dest)} (qemu-nbd) failed: ${why}`);
    },
  );
  server.catch(() => undefined); // awaited below; it may fail first
  const tmpBitmap = `${d.jobId}-b`;
  let added = false;
  try {
    await waitForSocket(sock, server);
    await c.execute('blockdev-add', { driver: 'nbd', 'node-name': d.targetNode, server: { type: 'unix', path: sock }, export: '' });
    added = true;
    let bytesChanged: number | undefined;
    if (o.incremental) {
      bytesChanged = await bitmapForCopy(c, { accessNode: d.accessNode, diskNode: d.node, from: o.incremental.bitmap, name: tmpBitmap });
    }
    const bytesRead = await runJob(c, d, o, tmpBitmap);
    await c.execute('blockdev-del', { 'node-name': d.targetNode });
    added = false;
    if (o.incremental) await c.execute('block-dirty-bitmap-remove', { node: d.accessNode, name: tmpBitmap }).catch(() => undefined);
    await Promise.race([server, timeout(30_000, 'qemu-nbd did not finish writing within 30 s of the copy')]);
    const bytes = (await fs.stat(dest)).size;
    return { bytes, bytesRead, ...(bytesChanged !== undefined ? { bytesChanged } : {}) };
  } finally {
    if (added) await c.execute('blockdev-del', { 'node-name': d.targetNode }).catch(() => undefined);
    stopServer.abort(new Error('copy ended'));
    // bounded: a qemu-nbd that does not end on SIGTERM must not hold the stage (and its undo) forever
    await Promise.race([server.catch(() => undefined), new Promise((r) => setTimeout(r, 10_000).unref())]);
    await fs.rm(sock, { force: true });
  }
}

/** Start the backup job and follow it to its end; an abort cancels it at once. */
async function runJob(c: QmpClient, d: ViewDisk, o: DiskCopyOptions, tmpBitmap: string): Promise<number> {
  const mark = c.eventMark();
  await c.execute('blockdev-backup', {
    'job-id': d.jobId,
    device: d.accessNode,
    target: d.targetNode,
    sync: o.incremental ? 'bitmap' : 'full',
    ...(o.incremental ? { bitmap: tmpBitmap, 'bitmap-mode': 'never' } : {}),
    ...(o.compress ? { compress: true } : {}),
    'auto-dismiss': false,
    // a read error of the view (the snapshot broke: fleecing image full) ends the job at once
    'on-source-error': 'report',
    'on-target-error': 'report',
  });
  const cancel = () => void c.execute('block-job-cancel', { device: d.jobId, force: true }).catch(() => undefined);
  o.signal?.addEventListener('abort', cancel, { once: true });
  // aborted before the listener was added: its abort event is gone, so cancel now
  if (o.signal?.aborted) cancel();
  const progress = setInterval(() => {
    c.execute<{ id: string; 'current-progress': number; 'total-progress': number }[]>('query-jobs').then(
      (jobs) => {
        const j = jobs.find((x) => x.id === d.jobId);
        if (j) o.onProgress?.(j['current-progress'], j['total-progress']);
      },
      () => undefined,
    );
  }, 250);
  // a cancelled job ends with BLOCK_JOB_CANCELLED, never BLOCK_JOB_COMPLETED: both are waited for,
  // or an aborted copy would wait (and hold its set's ending) for a day
  const mine = (data: { device?: string } | undefined) => data?.device === d.jobId;
  const completed = c.waitEvent('BLOCK_JOB_COMPLETED', mine, 24 * 3600_000, { since: mark });
  const cancelled = c.waitEvent('BLOCK_JOB_CANCELLED', mine, 24 * 3600_000, { since: mark });
  completed.catch(() => undefined);
  cancelled.catch(() => undefined);
  try {
    const ended = await Promise.race([
      completed,
      cancelled.then(() => {
        throw new Error(`the copy of disk ${d.disk} was cancelled`);
      }),
    ]).catch(async (err: Error) => {
      if (o.signal?.aborted) throw o.signal.reason instanceof Error ? o.signal.reason : new Error('copy stopped');
      throw err;
    });
    const data = (ended.data ?? {}) as { error?: string; offset?: number; len?: number };
    if (o.signal?.aborted) throw o.signal.reason instanceof Error ? o.signal.reason : new Error('copy stopped');
    if (data.error) {
      // snapshot-access answers EACCES once the filter broke the snapshot (on-cbw-error=break-snapshot)
      const broke = /permission denied/i.test(data.error)
        ? ` (the view broke: its fleecing image ${d.fleece} could not take a copy of old data, e.g. its file system is full or failing; the guest's writes went on unharmed)`
        : '';
      throw new Error(`copying disk ${d.disk} out of its point-in-time view failed: ${data.error}${broke}`);
    }
    o.onProgress?.(data.len ?? 0, data.len ?? 0);
    return data.len ?? 0;
  } finally {
    clearInterval(progress);
    o.signal?.removeEventListener('abort', cancel);
    await c.execute('job-dismiss', { id: d.jobId }).catch(() => undefined);
  }
}

async function waitForSocket(sock: string, server: Promise<void>): Promise<void> {
  let failed: Error | undefined;
  server.catch((err: Error) => (failed = err));
  for (let i = 0; i < 200; i++) {
    if (failed) throw failed;
    if (
      await fs.access(sock).then(
        () => true,
        () => false,
      )
    )
      return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`qemu-nbd did not listen on ${sock} within 5 s`);
}

function timeout(ms: number, why: string): Promise<never> {
  return new Promise((_, reject) => {
    const t = setTimeout(() => reject(new Error(why)), ms);
    t.unref();
  });
}

/**
 * Compare a full copy with the view it came from: a read-only NBD export of the view on a private
 * socket, read by qemu-img compare (exit 0 identical, 1 different). QEMU runs one NBD server at a
 * time: if another one runs (not ours), the check cannot be made and says so.
 */
export async function compareWithView(c: QmpClient, d: ViewDisk, file: string, qemuImg: string): Promise<void> {
  const sock = path.join(os.tmpdir(), `vmbackup-view-${randomBytes(6).toString('hex')}.sock`);
  try {
    await c.execute('nbd-server-start', { addr: { type: 'unix', data: { path: sock } } });
  } catch (err) {
    throw new Error(`verification not possible: QEMU already runs an NBD server that is not ours (${(err as Error).message})`);
  }
  try {
    await c.execute('block-export-add', { type: 'nbd', id: `${d.jobId}-e`, 'node-name': d.accessNode, name: 'view', writable: false });
    try {
      await runProgram(qemuImg, ['compare', '-q', '-f', 'raw', '-F', 'qcow2', `nbd+unix:///view?socket=${sock}`, file]);
    } catch (err) {
      const code = (err as { code?: number | null }).code;
      if (code === 1)
        throw new Error(
          `verification failed: ${file} does not hold what disk ${d.disk} held at the backup's moment (qemu-img compare: content differs)`,
        );
      throw new Error(`verification failed: ${file} could not be compared with disk ${d.disk}: ${(err as Error).message}`);
    }
  } finally {
    // stopping the server removes its exports
    await c.execute('nbd-server-stop').catch(() => undefined);
    await fs.rm(sock, { force: true });
  }
}
