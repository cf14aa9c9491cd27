// Instant restore (QEMU), as Proxmox's live-restore: the new VM starts at once on the backup's
// chain. Each disk is a new qcow2 image in the target whose backing file is the backup's image
// (read-only: QEMU never writes a backing file); the guest's writes go to the new image. Then
// QEMU's block-stream copies everything the new image does not hold yet out of the chain into it
// and drops the backing link, while the guest runs. When every job has concluded the VM runs on its
// own disks and nothing of the backup is open any more (asked of QEMU, and of the process table).
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { runProgram } from '../util/run';
import type { RestoreProgress } from './images';
import type { BackupPoint } from './point';
import { qmp } from './qemu-process';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The new images, each backed by the backup's disk (absolute path, format given). */
export async function createOverlays(point: BackupPoint, target: string, qemuImg = 'qemu-img'): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const d of point.disks) {
    const file = path.join(target, `disk-${d.id.replace(/[^A-Za-z0-9._-]/g, '_')}.qcow2`);
    await runProgram(qemuImg, ['create', '-q', '-f', 'qcow2', '-b', d.file, '-F', 'qcow2', file], { timeoutMs: 60_000 });
    out.set(d.id, file);
  }
  return out;
}

interface Job {
  id: string;
  type: string;
  status: string;
  'current-progress': number;
  'total-progress': number;
  error?: string;
}

/** block-stream every drive into its own image, the guest running; returns when all concluded. */
export async function streamAll(
  qmpSocket: string,
  pid: number,
  point: BackupPoint,
  drives: readonly string[],
  onProgress?: (p: RestoreProgress) => void,
  timeoutMs = 24 * 3_600_000,
): Promise<number> {
  const t0 = Date.now();
  for (const id of drives) await qmp(qmpSocket, 'block-stream', { 'job-id': `vmb-stream-${id}`, device: id, 'auto-dismiss': false });
  for (;;) {
    const jobs = (await qmp<Job[]>(qmpSocket, 'query-jobs')).filter((j) => j.id.startsWith('vmb-stream-'));
    const bytes = jobs.reduce((n, j) => n + j['current-progress'], 0);
    const total = jobs.reduce((n, j) => n + j['total-progress'], 0);
    onProgress?.({ step: 'stream', bytes, total });
    if (jobs.every((j) => j.status === 'concluded')) {
      for (const j of jobs) await qmp(qmpSocket, 'job-dismiss', { id: j.id });
      const failed = jobs.filter((j) => j.error);
      if (failed.length) throw new Error(`block-stream failed: ${failed.map((j) => `${j.id}: ${j.error}`).join('; ')}`);
      break;
    }
    if (Date.now() - t0 > timeoutMs) throw new Error('block-stream did not finish within the timeout');
    await sleep(500);
  }
  // QEMU's word: no drive has a backing image any more; the process table's: no backup file open
  const block = await qmp<{ device: string; inserted?: { image: { 'backing-filename'?: string; 'backing-image'?: unknown } } }[]>(
    qmpSocket,
    'query-block',
  );
  const still = block.filter(
    (b) => drives.includes(b.device) && (b.inserted?.image['backing-image'] || b.inserted?.image['backing-filename']),
  );
  if (still.length) throw new Error(`after block-stream ${still.map((b) => b.device).join(', ')} still read a backing image`);
  const open: string[] = [];
  for (const fd of await fs.readdir(`/proc/${pid}/fd`).catch(() => [] as string[])) {
    const link = await fs.readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    if (link.startsWith(point.vmDir + path.sep)) open.push(link);
  }
  if (open.length) throw new Error(`QEMU still has the backup open after block-stream: ${open.join(', ')}`);
  return Date.now() - t0;
}
