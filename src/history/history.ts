// The repository at a glance, as data a flow can use: per VM, its backups newest first (time,
// method, consistency, size, full or incremental and chain depth, how long it took, its last verify
// and what it found, whether it is protected), the newest backup's age, and which VMs have had no
// backup published for longer than a limit ("no backup of VM X in 26 h" is an alert too).
// Read-only: manifests and the records beside them; nothing is opened through a symbolic link.
import * as path from 'node:path';
import { listVms } from '../prune/prune';
import { scanVm } from '../prune/scan';
import { inside } from '../repository/paths';
import { currentRecord } from '../verify/record';

export interface HistoryBackup {
  backupId: string;
  /** when the backup's point in time was taken (createdAt) and when it was published */
  time: string;
  completedAt: string;
  method: string;
  consistency: string;
  bytes: number;
  /** full, or incremental on `parent` at `depth` */
  mode: 'full' | 'incremental';
  depth: number;
  parent?: string;
  /** createdAt to completedAt */
  durationMs: number;
  /** the VM was frozen / stopped this long (application-consistent / saved-state backups) */
  frozenMs?: number;
  downtimeMs?: number;
  warnings: number;
  protected: boolean;
  /** the last verify of this manifest: when, and whether all of it checked out */
  verify?: { at: string; ok: boolean; intact: boolean; problem?: string };
}

export interface VmHistory {
  vm: string;
  name?: string;
  backups: HistoryBackup[];
  count: number;
  bytes: number;
  last?: HistoryBackup;
  /** hours since the newest backup was published (undefined: none) */
  hoursSinceLast?: number;
  /** no backup published within staleHours (or none at all) */
  stale: boolean;
  /** a backup whose last verify failed */
  damaged: string[];
  /** folders that are not readable backups (named, never counted) */
  unreadable: string[];
}

export interface History {
  host: string;
  generatedAt: string;
  staleHours: number;
  vms: VmHistory[];
}

export interface HistoryOptions {
  root: string;
  host: string;
  /** default 26: a nightly backup that did not happen is seen the next morning */
  staleHours?: number;
  /** only these VMs (default every VM folder of the host); a VM named here without any backup is stale */
  vms?: string[];
  /** backups listed per VM, newest first (default 100) */
  limit?: number;
  now?: () => Date;
}

export async function readHistory(options: HistoryOptions): Promise<History> {
  const now = (options.now ?? (() => new Date()))();
  const staleHours = options.staleHours ?? 26;
  const vms = options.vms?.length ? options.vms : await listVms(options.root, options.host);
  const out: History = { host: options.host, generatedAt: now.toISOString(), staleHours, vms: [] };
  for (const vm of vms) {
    const scan = await scanVm(inside(options.root, 'vm', options.host, vm), options.host, vm);
    const sorted = [...scan.backups].sort((a, b) => Date.parse(b.manifest.completedAt) - Date.parse(a.manifest.completedAt));
    const backups: HistoryBackup[] = [];
    for (const b of sorted.slice(0, options.limit ?? 100)) {
      const m = b.manifest;
      const record = await currentRecord(b.dir);
      const disks = m.files.filter((f) => f.kind === 'disk');
      const incremental = disks.some((f) => f.chain?.mode === 'incremental');
      backups.push({
        backupId: m.backupId,
        time: m.createdAt,
        completedAt: m.completedAt,
        method: m.method,
        consistency: m.consistency,
        bytes: m.totalBytes ?? m.files.reduce((n, f) => n + f.bytes, 0),
        mode: incremental ? 'incremental' : 'full',
        depth: m.chain?.depth ?? 0,
        ...(m.chain?.parent ? { parent: m.chain.parent } : {}),
        durationMs: Math.max(0, Date.parse(m.completedAt) - Date.parse(m.createdAt)),
        ...(m.frozenMs !== undefined ? { frozenMs: m.frozenMs } : {}),
        ...(m.downtimeMs !== undefined ? { downtimeMs: m.downtimeMs } : {}),
        warnings: m.warnings.length,
        protected: b.protected,
        ...(record
          ? {
              verify: {
                at: record.verifiedAt,
                ok: record.ok,
                intact: record.intact,
                ...(record.problems[0]
                  ? { problem: `${path.basename(record.problems[0].file)}: ${record.problems[0].problem}`.slice(0, 500) }
                  : {}),
              },
            }
          : {}),
      });
    }
    const last = backups[0];
    const hours = last ? (now.getTime() - Date.parse(last.completedAt)) / 3_600_000 : undefined;
    out.vms.push({
      vm,
      ...(sorted[0]?.manifest.vmName ? { name: sorted[0].manifest.vmName } : {}),
      backups,
      count: scan.backups.length,
      bytes: scan.backups.reduce((n, b) => n + (b.manifest.totalBytes ?? 0), 0),
      ...(last ? { last, hoursSinceLast: Math.round(hours! * 10) / 10 } : {}),
      stale: hours === undefined || hours > staleHours,
      damaged: backups.filter((b) => b.verify && !b.verify.ok).map((b) => b.backupId),
      unreadable: scan.unreadable.map((u) => `${u.id}: ${u.error}`),
    });
  }
  return out;
}

export interface HistorySummary {
  ok: boolean;
  host: string;
  vms: number;
  backups: number;
  bytes: number;
  stale: { vm: string; hoursSinceLast?: number }[];
  damaged: { vm: string; backupId: string }[];
  text: string;
}

export function summarizeHistory(h: History): HistorySummary {
  const stale = h.vms
    .filter((v) => v.stale)
    .map((v) => ({ vm: v.vm, ...(v.hoursSinceLast !== undefined ? { hoursSinceLast: v.hoursSinceLast } : {}) }));
  const damaged = h.vms.flatMap((v) => v.damaged.map((backupId) => ({ vm: v.vm, backupId })));
  const lines = [
    `${h.host}: ${h.vms.length} VM${h.vms.length === 1 ? '' : 's'}, ${h.vms.reduce((n, v) => n + v.count, 0)} backups`,
    ...stale.map(
      (s) =>
        `NO BACKUP of ${s.vm} published in ${h.staleHours} h${s.hoursSinceLast !== undefined ? ` (last ${s.hoursSinceLast} h ago)` : ' (none at all)'}`,
    ),
    ...damaged.map((d) => `DAMAGED: ${d.vm} ${d.backupId} failed its last verify`),
  ];
  return {
    ok: stale.length === 0 && damaged.length === 0,
    host: h.host,
    vms: h.vms.length,
    backups: h.vms.reduce((n, v) => n + v.count, 0),
    bytes: h.vms.reduce((n, v) => n + v.bytes, 0),
    stale,
    damaged,
    text: lines.join('\n'),
  };
}
