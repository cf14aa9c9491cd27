// The disks of one point written out as standalone images: the backup and its chain verified
// once (nothing is written if a link is broken), each disk flattened by src/chain/flatten.ts
// (qemu-img convert, compared with the chain, given its name only then), progress read from the
// size of the image being written.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { flattenDisk, FlattenRefused, type FlattenFormat } from '../chain/flatten';
import { diskEntryOf, walkChain, type ChainLink } from '../chain/links';
import { verifyBackup, type BackupReport } from '../verify';
import type { BackupDisk, BackupPoint } from './point';
import { RestoreRefused } from './refused';

export interface RestoreProgress {
  /** what is being done now: verify, a disk id, state, start */
  step: string;
  bytes: number;
  total: number;
}

export interface ImageOptions {
  qemuImg?: string;
  onProgress?: (p: RestoreProgress) => void;
  signal?: AbortSignal;
}

/** Verify the point and its whole chain; refused (field `backup`) naming the first problems. */
export async function verifyPoint(point: BackupPoint, o: ImageOptions = {}): Promise<BackupReport> {
  o.onProgress?.({ step: 'verify', bytes: 0, total: 0 });
  const report = await verifyBackup(point.dir, o.qemuImg ? { qemuImg: o.qemuImg } : {});
  if (!report.ok) {
    const shown = report.problems
      .slice(0, 3)
      .map((p) => `${p.file}: ${p.problem}`)
      .join('; ');
    throw new RestoreRefused('backup', `${point.dir} does not verify, nothing written: ${shown}`);
  }
  return report;
}

/** Bytes the chain of a disk holds (what reading it costs at most), for progress. */
async function chainBytes(point: BackupPoint, disk: BackupDisk): Promise<number> {
  let total = 0;
  for (const id of [point.manifest.backupId, ...(await parentIds(point, disk))]) {
    const st = await fs.stat(path.join(point.vmDir, id, path.basename(disk.file))).catch(() => undefined);
    total += st ? st.blocks * 512 : 0;
  }
  return total;
}

async function parentIds(point: BackupPoint, disk: BackupDisk): Promise<string[]> {
  const ids: string[] = [];
  let entry = point.manifest.files.find((f) => f.kind === 'disk' && f.disk === disk.id);
  while (entry?.chain?.mode === 'incremental' && entry.chain.parent && ids.length < 10000) {
    ids.push(entry.chain.parent);
    try {
      const m = JSON.parse(
        await fs.readFile(path.join(point.vmDir, entry.chain.parent, 'manifest.json'), 'utf8'),
      ) as BackupPoint['manifest'];
      entry = m.files.find((f) => f.kind === 'disk' && f.disk === disk.id);
    } catch {
      break;
    }
  }
  return ids;
}

/**
 * Flatten one disk of a verified point into `out` (must not exist; its directory must). Progress
 * is the allocated size of the partial image against the chain's, polled every half second.
 */
export async function writeDisk(
  point: BackupPoint,
  disk: BackupDisk,
  out: string,
  format: FlattenFormat,
  report: BackupReport,
  o: ImageOptions = {},
): Promise<{ out: string; bytes: number; chain: string[]; ms: number }> {
  const total = o.onProgress ? await chainBytes(point, disk) : 0;
  const prefix = `.${path.basename(out)}.partial-`;
  const timer = o.onProgress
    ? setInterval(() => {
        void (async () => {
          const names = await fs.readdir(path.dirname(out)).catch(() => [] as string[]);
          const partial = names.find((n) => n.startsWith(prefix));
          const st = partial ? await fs.stat(path.join(path.dirname(out), partial)).catch(() => undefined) : undefined;
          if (st) o.onProgress?.({ step: disk.id, bytes: Math.min(st.blocks * 512, total), total });
        })();
      }, 500)
    : undefined;
  try {
    o.onProgress?.({ step: disk.id, bytes: 0, total });
    const r = await flattenDisk({
      backupDir: point.dir,
      disk: disk.id,
      out,
      format,
      verify: () => Promise.resolve(report),
      ...(o.qemuImg ? { qemuImg: o.qemuImg } : {}),
    });
    o.onProgress?.({ step: disk.id, bytes: total, total });
    return { out: r.out, bytes: r.bytes, chain: r.chain, ms: r.ms };
  } catch (err) {
    if (err instanceof FlattenRefused)
      throw new RestoreRefused(err.field === 'out' ? 'target' : err.field, err.message.slice(err.field.length + 2));
    throw err;
  } finally {
    if (timer) clearInterval(timer);
  }
}

/** The file name a restored disk gets in a directory. */
export function diskFileName(disk: string, format: FlattenFormat): string {
  return `disk-${disk.replace(/[^A-Za-z0-9._-]/g, '_')}.${format}`;
}

/**
 * Without the full verify (no sha256 read), still never let QEMU follow a link we did not check:
 * each disk's chain is walked link by link (relative backing files inside the VM's folder only,
 * as the manifests say), so a planted backing file pointing at a host file is refused.
 */
export async function checkLinks(point: BackupPoint, o: ImageOptions = {}): Promise<void> {
  for (const d of point.disks) {
    const entry = diskEntryOf(point.manifest, d.id);
    if (!entry) continue;
    const top: ChainLink = { backupId: point.manifest.backupId, dir: point.dir, manifest: point.manifest, entry, file: d.file };
    const r = await walkChain(top, point.vmDir, o.qemuImg ? { qemuImg: o.qemuImg } : {});
    if ('problem' in r) throw new RestoreRefused('backup', `${point.dir}: disk ${d.id}: ${r.problem.file}: ${r.problem.problem}`);
  }
}
