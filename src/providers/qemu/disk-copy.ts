// Copying one disk out of its point-in-time view by push: QEMU's own backup job reads the view
// (for an incremental only the clusters the parent's bitmap marks) and writes through
// an NBD connection to a qemu-nbd process of ours, which writes the qcow2 in the staging directory.
// The repository is only ever touched by that separate process: a slow, full or hung repository
// stalls or fails the copy, never the VM's QEMU (its main loop would otherwise wait on the file
// system) and never a guest write (those go through the view's filter to the VM's own storage).
// An incremental's qcow2 has the previous backup of the disk as its backing file (a relative path
// inside the VM's folder), so stock tools read any point: qemu-img info --backing-chain, convert.
// A full is pulled instead where it can be (pull.ts: one process, nothing to set up first); push
// is the path for incrementals, disks with a backing chain, and a QEMU whose NBD server is taken.
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { QmpClient, QmpExchange } from './protocol';
import { lastErrorLine, runProgram } from '../../util/run';
import { settledWithin } from '../../util/deadline';
import { createQcow2 } from '../../repository/qcow2-create';
import { bitmapForCopy } from './tracking';
import type { ViewDisk } from './view';
import { followJob } from './job';
import type { ViewServer } from './pull';

export interface DiskCopyOptions {
  qemuImg: string;
  qemuNbd: string;
  /** for an incremental: the qcow2 backing file string (relative) and the bitmap to read by */
  incremental?: { backing: string; bitmap: string };
  compress?: boolean;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
  /** longest wait between two looks at the job (each look is one short QMP exchange) */
  pollMaxMs?: number;
}

export interface DiskCopyResult {
  bytes: number;
  /** bytes the backup job read from the view */
  bytesRead: number;
  /** bytes the bitmap marked (incremental) */
  bytesChanged?: number;
}

/**
 * Compression: QEMU's backup job compresses only into a target that takes compressed writes, and
 * an NBD client node does not ("Compression is not supported for this drive"). So the writer
 * compresses: qemu-nbd opens the qcow2 through QEMU's `compress` filter, which makes every write a
 * compressed cluster (qcow2's own compressed clusters, zstd: read by qemu-img and QEMU >= 5.1,
 * as the offline copy's qemu-img convert -c writes them too). Fulls and
 * incrementals alike: a backup job writes each cluster once, whole.
 * qemu-nbd's view of the target: the qcow2 itself, or (compress) the qcow2 under the compress filter.
 */
export function targetArgs(dest: string, compress: boolean): string[] {
  if (!compress) return ['--format=qcow2', dest];
  // --image-opts: a comma inside a value is written twice
  return ['--image-opts', `driver=compress,file.driver=qcow2,file.file.driver=file,file.file.filename=${dest.replace(/,/g, ',,')}`];
}

export async function copyDisk(qmp: QmpExchange, d: ViewDisk, dest: string, o: DiskCopyOptions): Promise<DiskCopyResult> {
  await createQcow2(
    dest,
    { size: d.virtualSize, zstd: o.compress === true, ...(o.incremental ? { backing: o.incremental.backing } : {}) },
    o.qemuImg,
  );
  // unix socket paths are limited to 108 bytes, staging paths may be longer
  const sock = path.join(os.tmpdir(), `vmbackup-nbd-${randomBytes(6).toString('hex')}.sock`);
  const stopServer = new AbortController();
  if (o.signal?.aborted) throw o.signal.reason instanceof Error ? o.signal.reason : new Error('copy stopped');
  // Without --persistent qemu-nbd serves one client and exits when it disconnects, having
  // flushed the image: its exit is the end of the write. The set's own abort stops it at once
  // too, wherever this copy is: no qemu-nbd of an ended set waits for a client that never comes.
  const server = runProgram(
    o.qemuNbd,
    [
      `--socket=${sock}`,
      '--discard=unmap',
      '--detect-zeroes=unmap',
      // no flush of its own: the copy step makes the file durable with one fsync while it hashes
      // it from the page cache (measured faster than writeback or O_DIRECT: see pull.ts)
      '--cache=unsafe',
      '--aio=threads',
      ...targetArgs(dest, o.compress === true),
    ],
    { signal: o.signal ? AbortSignal.any([stopServer.signal, o.signal]) : stopServer.signal },
  ).then(
    () => undefined,
    (err: Error) => {
      const why = lastErrorLine(err);
      throw new Error(`writing ${path.basename(dest)} (qemu-nbd) failed: ${why}`);
    },
  );
  server.catch(() => undefined); // awaited below; it may fail first
  const tmpBitmap = `${d.jobId}-b`;
  let added = false;
  try {
    await waitForSocket(sock, server, 'qemu-nbd');
    const bytesChanged = await qmp(async (c) => {
      await connectTarget(c, d.targetNode, sock);
      added = true;
      const changed = o.incremental
        ? await bitmapForCopy(c, { accessNode: d.accessNode, diskNode: d.node, from: o.incremental.bitmap, name: tmpBitmap })
        : undefined;
      await startJob(c, d, o, tmpBitmap);
      return changed;
    });
    const bytesRead = await followJob(qmp, d, o);
    await qmp(async (c) => {
      await c.execute('blockdev-del', { 'node-name': d.targetNode });
      added = false;
      if (o.incremental) await c.execute('block-dirty-bitmap-remove', { node: d.accessNode, name: tmpBitmap }).catch(() => undefined);
    });
    await Promise.race([server, timeout(30_000, 'qemu-nbd did not finish writing within 30 s of the copy')]);
    const bytes = (await fs.stat(dest)).size;
    return { bytes, bytesRead, ...(bytesChanged !== undefined ? { bytesChanged } : {}) };
  } finally {
    if (added) await qmp((c) => c.execute('blockdev-del', { 'node-name': d.targetNode })).catch(() => undefined);
    stopServer.abort(new Error('copy ended'));
    // bounded: a qemu-nbd that does not end on SIGTERM must not hold the stage (and its undo) forever
    await settledWithin(server, 10_000);
    await fs.rm(sock, { force: true });
  }
}

async function startJob(c: QmpClient, d: ViewDisk, o: DiskCopyOptions, tmpBitmap: string): Promise<void> {
  await c.execute('blockdev-backup', {
    'job-id': d.jobId,
    device: d.accessNode,
    target: d.targetNode,
    sync: o.incremental ? 'bitmap' : 'full',
    ...(o.incremental ? { bitmap: tmpBitmap, 'bitmap-mode': 'never' } : {}),
    'auto-dismiss': false,
    // a read error of the view (the snapshot broke: fleecing image full) ends the job at once
    'on-source-error': 'report',
    'on-target-error': 'report',
  });
}

/**
 * Waiting for a server of ours (qemu-nbd, nbdkit) to create its socket: looked at every ms for
 * 200 ms, then doubling to 25 ms. (Not woken by inotify: the file appears at bind(), before listen(), and a
 * connect in between is refused; measured in a whole test run under load.) The connect that
 * follows still allows for that moment (connectTarget).
 */
async function waitForSocket(sock: string, server: Promise<void>, what: string): Promise<void> {
  let failed: Error | undefined;
  server.catch((err: Error) => (failed = err));
  const t0 = performance.now();
  for (let step = 1; performance.now() - t0 < 5000;) {
    if (failed) throw failed;
    if (
      await fs.access(sock).then(
        () => true,
        () => false,
      )
    )
      return;
    await new Promise((r) => setTimeout(r, step));
    // every ms while a server normally starts (6-10 ms here; looks doubling from 1 ms found one
    // that was up at 17 ms only at 31 ms), then further apart
    if (performance.now() - t0 >= 200) step = Math.min(step * 2, 25);
  }
  throw new Error(`${what} did not listen on ${sock} within 5 s`);
}

/**
 * The VM's QEMU connects to qemu-nbd's socket. A refused connect means the server has bound its
 * socket but not yet listened: asked again a few times, a few ms apart (within this exchange).
 * qemu-nbd serves one client and exits when it leaves, so nothing may probe the socket first.
 */
async function connectTarget(c: QmpClient, node: string, sock: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await c.execute('blockdev-add', { driver: 'nbd', 'node-name': node, server: { type: 'unix', path: sock }, export: '' });
      return;
    } catch (err) {
      if (attempt >= 20 || !/connection refused/i.test((err as Error).message)) throw err;
      await new Promise((r) => setTimeout(r, 5));
    }
  }
}

function timeout(ms: number, why: string): Promise<never> {
  return new Promise((_, reject) => {
    const t = setTimeout(() => reject(new Error(why)), ms);
    t.unref();
  });
}

/**
 * Compare a full copy with the view it came from: the disk's read-only export on the view's NBD
 * server (see pull.ts), read by qemu-img compare (exit 0 identical, 1 different). QEMU runs one NBD
 * server at a time: if another one runs (not ours), the check cannot be made and says so.
 *
 * A disk with a backing chain (a linked clone on its template, a VM on the user's own external
 * snapshot): what the view reports of its blocks is wrong there (QEMU 7.2's snapshot-access asks
 * only the top image, so a cluster that lives in a backing file is reported as a hole reading
 * zeros), and qemu-img compare trusts that report: it took the copy's data for a difference. The
 * data read is right (the copy is exact). So for such a disk the export is read through nbdkit's
 * noextents filter, which reports no holes: every byte of the view is read and compared.
 */
export async function compareWithView(server: ViewServer, d: ViewDisk, file: string, qemuImg: string): Promise<void> {
  if (server === 'nbd-server-busy') throw new Error('verification not possible: QEMU already runs an NBD server that is not ours');
  if ('refused' in server) throw new Error(`verification not possible: QEMU's NBD server could not be started (${server.refused})`);
  const view = server.exports.get(d.disk);
  if (!view) throw new Error(`verification not possible: the view's NBD server has no export for disk ${d.disk}`);
  let proxy: { uri: string; stop: () => Promise<void> } | undefined;
  try {
    if (view.chained) proxy = await allBlocksProxy(view.socket, view.name);
    await runProgram(qemuImg, ['compare', '-q', '-f', 'raw', '-F', 'qcow2', proxy?.uri ?? view.uri, file]);
  } catch (err) {
    const code = (err as { code?: number | null }).code;
    if (code === 1)
      throw new Error(
        `verification failed: ${file} does not hold what disk ${d.disk} held at the backup's moment (qemu-img compare: content differs)`,
      );
    throw new Error(`verification failed: ${file} could not be compared with disk ${d.disk}: ${(err as Error).message}`);
  } finally {
    await proxy?.stop();
  }
}

/** nbdkit in front of the view's export, reporting every block as data (the noextents filter). */
async function allBlocksProxy(viewSock: string, exportName: string): Promise<{ uri: string; stop: () => Promise<void> }> {
  const sock = path.join(os.tmpdir(), `vmbackup-all-${randomBytes(6).toString('hex')}.sock`);
  const stop = new AbortController();
  const ended = runProgram(
    'nbdkit',
    ['--foreground', '--exit-with-parent', '-U', sock, '--filter=noextents', 'nbd', `socket=${viewSock}`, `export=${exportName}`],
    { signal: stop.signal },
  ).then(
    () => undefined,
    (err: Error) => {
      if (stop.signal.aborted) return;
      const why = lastErrorLine(err);
      throw new Error(
        `verification not possible: nbdkit (Debian package nbdkit), which reads a disk with a backing chain for the check, failed: ${why}`,
      );
    },
  );
  ended.catch(() => undefined);
  await waitForSocket(sock, ended, 'nbdkit');
  return {
    uri: `nbd+unix:///?socket=${sock}`,
    stop: async () => {
      stop.abort();
      await settledWithin(ended, 5000);
      await fs.rm(sock, { force: true });
    },
  };
}
