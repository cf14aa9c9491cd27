// Which disks of a VM can be copied incrementally, decided at prepare (before the view's moment,
// when this backup's change-tracking record is started) and finished at copy (the copy node's
// policy). A full happens when, and only when, it must, each time with a named reason.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { assertManifest } from '../contract/validate';
import type { ChainPlan, ClassifiedVm, Manifest, PointInTimeView } from '../contract/types';
import type { TrackIntent } from '../journal/journal';
import type { ArtifactRepository } from '../repository/repository';

export const TRACKING_PREFIX = 'vmbackup-';
/** The change-tracking record a backup starts: the next backup reads by it. */
export const recordName = (backupId: string) => `${TRACKING_PREFIX}${backupId}`;
const GRANULARITY = 65536;
const BACKUP_ID = /^[0-9]{8}T[0-9]{6}Z-[a-z0-9]{6}$/;

/** The copy node's policy: incremental by default, a full every N backups or N days. */
export interface ChainPolicy {
  mode: 'incremental' | 'full';
  fullEvery?: { backups: number } | { days: number };
}

interface Parent {
  backupId: string;
  file: string;
  depth: number;
  base: string;
  record?: string;
  persistent: boolean;
}

type Found = { ok: true; parent: Parent } | { ok: false; reason: string; detail: string };

/** The newest published backup of the VM, if it holds this disk as it is now. */
export async function findParent(repo: ArtifactRepository, host: string, vmId: string, disk: string, virtualSize: number | undefined): Promise<Found> {
  const dir = repo.vmDir(host, vmId);
  const ids = (await fs.readdir(dir).catch(() => [] as string[])).filter((n) => BACKUP_ID.test(n)).sort().reverse();
  if (ids.length === 0) return { ok: false, reason: 'first-backup', detail: 'no earlier backup of this VM in the repository' };
  // ids sort by their second; two backups within one second are ordered by when they completed
  const read = async (id: string) => assertManifest(JSON.parse(await fs.readFile(path.join(dir, id, 'manifest.json'), 'utf8')));
  const sameSecond = ids.filter((x) => x.slice(0, 16) === ids[0].slice(0, 16));
  let id = ids[0];
  let manifest: Manifest;
  try {
    const candidates = await Promise.all(sameSecond.map(async (x) => ({ id: x, m: await read(x).catch(() => undefined) })));
    const newest = candidates.filter((c) => c.m).sort((a, b) => Date.parse(b.m!.completedAt) - Date.parse(a.m!.completedAt))[0];
    if (newest) id = newest.id;
    manifest = newest?.m ?? (await read(id));
  } catch (err) {
    return { ok: false, reason: 'parent-invalid', detail: `the previous backup ${id} has no valid manifest (${(err as Error).message.slice(0, 200)})` };
  }
  const f = manifest.files.find((x) => x.kind === 'disk' && x.disk === disk);
  if (!f) return { ok: false, reason: 'new-disk', detail: `the previous backup ${id} has no disk ${disk}` };
  if (virtualSize !== undefined && f.virtualSize !== undefined && f.virtualSize !== virtualSize) {
    return { ok: false, reason: 'resized', detail: `disk ${disk} is ${virtualSize} bytes, ${f.virtualSize} in the previous backup ${id}` };
  }
  const st = await fs.stat(path.join(dir, id, f.name)).catch(() => undefined);
  if (!st || st.size !== f.bytes) {
    return { ok: false, reason: 'parent-invalid', detail: `${id}/${f.name} is ${st ? `${st.size} bytes, not the ${f.bytes} its manifest lists` : 'missing'}` };
  }
  const c = f.chain;
  return {
    ok: true,
    parent: {
      backupId: id,
      file: f.name,
      depth: c?.depth ?? 0,
      base: c?.mode === 'incremental' ? (c.base ?? id) : id,
      ...(c?.bitmap ? { record: c.bitmap.name } : {}),
      persistent: c?.bitmap?.persistent ?? true,
    },
  };
}

/** Per disk of the view: incremental where the parent and the hypervisor's record allow, else full and why. */
export async function planChain(
  repo: ArtifactRepository, host: string, vm: ClassifiedVm, view: PointInTimeView, backupId: string, tracks: boolean,
): Promise<ChainPlan[]> {
  return Promise.all(view.disks.map(async ({ disk: id }): Promise<ChainPlan> => {
    const disk = vm.disks.find((d) => d.id === id);
    const persistent = disk?.tracking?.persistent ?? false;
    const own = { disk: id, record: recordName(backupId), persistent, granularity: GRANULARITY };
    const full = (reason: string, detail: string): ChainPlan => ({ ...own, mode: 'full', reason, detail, depth: 0 });
    if (!tracks || !disk?.tracking) return full('not-supported', 'this host has no change tracking for this disk');
    const found = await findParent(repo, host, vm.id, id, disk.virtualSize);
    const transient = persistent ? '' : ' (raw image: its change tracking is transient, valid only while this QEMU process runs)';
    if (!found.ok) return full(found.reason, found.detail + transient);
    const p = found.parent;
    if (!p.record) return full('bitmap-missing', `the previous backup ${p.backupId} started no change tracking`);
    const rec = disk.tracking.records.find((r) => r.name === p.record);
    if (!rec) {
      return p.persistent
        ? full('bitmap-missing', `the disk has no change-tracking record ${p.record} (QEMU did not close the image since the record was made: killed? or the record was removed, or the image replaced)`)
        : full('transient-bitmap-lost', `the transient record ${p.record} ended with the QEMU process that had it`);
    }
    if (rec.inconsistent) return full('bitmap-inconsistent', `record ${p.record} is inconsistent (QEMU did not close the image: killed or crashed)`);
    if (!rec.recording) return full('bitmap-not-recording', `record ${p.record} is not recording`);
    return {
      ...own, mode: 'incremental', reason: 'incremental', detail: `clusters changed since ${p.backupId}${transient}`,
      depth: p.depth + 1, parent: p.backupId, backing: `../${p.backupId}/${p.file}`, since: p.record, base: p.base,
    };
  }));
}

/** The copy node's policy, applied last: a planned incremental may still become a full. */
export function applyPolicy(plan: ChainPlan, policy: ChainPolicy | undefined, now = Date.now()): ChainPlan {
  if (plan.mode !== 'incremental' || !policy) return plan;
  const { parent: _p, backing: _b, since: _s, base: _base, ...rest } = plan;
  const full = (reason: string, detail: string): ChainPlan => ({ ...rest, mode: 'full', reason, detail, depth: 0 });
  if (policy.mode === 'full') return full('policy-full', 'the copy node is set to full backups');
  const every = policy.fullEvery;
  if (every && 'backups' in every && plan.depth >= every.backups) {
    return full('policy-full-every', `a full every ${every.backups} backups: this chain holds ${plan.depth} since its full`);
  }
  if (every && 'days' in every && plan.base) {
    const age = (now - idTime(plan.base)) / 86_400_000;
    if (age >= every.days) return full('policy-full-every', `a full every ${every.days} days: the chain's full ${plan.base} is ${age.toFixed(1)} days old`);
  }
  return plan;
}

/** What to journal before tracking starts: the new records, and what goes once this backup is published. */
export function trackIntent(vm: ClassifiedVm, plans: readonly ChainPlan[]): TrackIntent {
  const records = plans.map((p) => ({ disk: p.disk, name: p.record! }));
  // once published, the parent's record and any other record of ours on the disk (left by a
  // backup that crashed, or inconsistent) are not needed any more
  const since = plans.flatMap((p) => (vm.disks.find((d) => d.id === p.disk)?.tracking?.records ?? [])
    .filter((r) => r.name.startsWith(TRACKING_PREFIX) && r.name !== p.record)
    .map((r) => ({ disk: p.disk, name: r.name })));
  return { records, since };
}

function idTime(id: string): number {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z/.exec(id);
  return m ? Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]) : Date.now();
}
