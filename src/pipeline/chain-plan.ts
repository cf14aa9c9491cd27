// Which disks of a VM are copied incrementally: planned at prepare (before the view's moment, when
// this backup's change-tracking record is started) from the parent backup that src/chain finds and
// checks and from what the hypervisor says of the parent's record; finished at copy with the copy
// node's policy. The decision itself is src/chain's decideChain, used at both points.
//
// Each chain keeps its own change-tracking record on a disk, named for its target: the host node's
// repository and host name (the folder its backups go to), as `vmbackup-<target>-<backupId>`. A
// second repository or flow backing up the same VM (local + offsite) has its own chain and never
// removes the other's record; a stale record of a chain is removed by that chain's next publish.
// Records named the old way (`vmbackup-<backupId>`, before chains were named) are read as the
// chain's parent record when the parent's manifest names them, so the next backup of an existing
// chain stays incremental; other old-style records are left alone (whose chain they are is unknown).
import { createHash } from 'node:crypto';
import * as path from 'node:path';
import type { ChainPlan, ClassifiedVm, ManifestFile, PointInTimeView } from '../contract/types';
import { decideChain, findParent, type BitmapReport, type ChainDecision, type ChainPolicy, type ParentFound } from '../chain';
import type { TrackIntent } from '../journal/journal';
import type { ArtifactRepository } from '../repository/repository';

export type { ChainPolicy };
export const TRACKING_PREFIX = 'vmbackup-';

/** The chain a host node's backups form: its repository and host name, as 8 hex digits. */
export function chainTarget(repositoryRoot: string, hostName: string): string {
  return createHash('sha256')
    .update(`${path.resolve(repositoryRoot)}\0${hostName}`)
    .digest('hex')
    .slice(0, 8);
}

/** The change-tracking record a backup of chain `target` starts: the next backup of the chain reads by it. */
export const recordName = (target: string, backupId: string) => `${TRACKING_PREFIX}${target}-${backupId}`;

/** A record of this chain (named for `target`), as opposed to another chain's or an old-style one. */
export const ofChain = (name: string, target: string) => name.startsWith(`${TRACKING_PREFIX}${target}-`);
const GRANULARITY = 65536;
/** prepare does not know the copy node's policy yet: the chain is planned as far as it can go */
const AS_FAR_AS_POSSIBLE: ChainPolicy = { mode: 'incremental' };

/** What the hypervisor says of the parent's record on this disk. */
function bitmapReport(vm: ClassifiedVm, diskId: string, parent: ParentFound | undefined, tracks: boolean): BitmapReport {
  const disk = vm.disks.find((d) => d.id === diskId);
  if (!tracks || !disk?.tracking) return { state: 'not-supported', detail: 'this host has no change tracking for this disk' };
  if (!parent?.record)
    return { state: 'missing', detail: `the previous backup${parent ? ` ${parent.backupId}` : ''} started no change tracking` };
  const rec = disk.tracking.records.find((r) => r.name === parent.record!.name);
  if (!rec) {
    return parent.record.persistent
      ? {
          state: 'missing',
          detail: `the disk has no change-tracking record ${parent.record.name} (QEMU did not close the image since the record was made: killed? or it was removed, or the image replaced)`,
        }
      : {
          state: 'transient-lost',
          name: parent.record.name,
          detail: `the transient record ${parent.record.name} ended with the QEMU process that had it (a raw image)`,
        };
  }
  if (rec.inconsistent)
    return {
      state: 'inconsistent',
      name: rec.name,
      detail: `record ${rec.name} is inconsistent (QEMU was killed or crashed with it loaded)`,
    };
  if (!rec.recording) return { state: 'not-recording', name: rec.name };
  return { state: 'ok', name: rec.name, granularity: rec.granularity, persistent: rec.persistent, since: parent.backupId };
}

function toPlan(disk: string, record: string, persistent: boolean, d: ChainDecision): ChainPlan {
  const own = { disk, record, persistent, granularity: GRANULARITY };
  if (d.mode === 'full') return { ...own, mode: 'full', reason: d.reason, detail: d.detail.slice(0, 1024), depth: 0 };
  return {
    ...own,
    mode: 'incremental',
    reason: 'incremental',
    detail: d.detail.slice(0, 1024),
    depth: d.depth,
    parent: d.parent.backupId,
    backing: `../${d.parent.backupId}/${d.parent.fileName}`,
    since: d.bitmap.name,
    fullAt: d.parent.fullCreatedAt,
  };
}

/** Per disk of the view: incremental where the parent and the hypervisor's record allow, else full and why. */
export async function planChain(
  repo: ArtifactRepository,
  host: string,
  vm: ClassifiedVm,
  view: PointInTimeView,
  backupId: string,
  tracks: boolean,
  target = chainTarget(repo.root, host),
): Promise<{ plans: ChainPlan[]; track: TrackIntent }> {
  /** per disk: the record the parent's manifest names (an old-style name is this chain's only then) */
  const parentRecords = new Map<string, string>();
  const plans = await Promise.all(
    view.disks.map(async ({ disk: id }): Promise<ChainPlan> => {
      const disk = vm.disks.find((d) => d.id === id);
      const persistent = disk?.tracking?.persistent ?? false;
      if (vm.method === 'offline' && !disk?.tracking) {
        // no hypervisor process runs to keep a change-tracking record: a full, and none started
        return {
          disk: id,
          mode: 'full',
          reason: 'offline',
          detail: 'the VM is shut off: nothing records its writes, so its disks are copied whole and no change tracking is started',
          depth: 0,
        };
      }
      const parent = await findParent({ root: repo.root, host, vm: vm.id, disk: id, virtualSize: disk?.virtualSize ?? 0 });
      if (parent.ok && parent.record) parentRecords.set(id, parent.record.name);
      const decision = decideChain({
        parent,
        bitmap: bitmapReport(vm, id, parent.ok ? parent : undefined, tracks),
        policy: AS_FAR_AS_POSSIBLE,
      });
      const plan = toPlan(id, recordName(target, backupId), persistent, decision);
      // said once, where it matters: the chain of a raw image lasts only as long as its QEMU process
      if (tracks && disk?.tracking && !persistent)
        plan.detail = `${plan.detail} (raw image: its change tracking is transient, valid only while this QEMU process runs)`.slice(
          0,
          1024,
        );
      return plan;
    }),
  );
  return { plans, track: trackIntent(vm, plans, target, parentRecords) };
}

/** The copy node's policy, applied last: a planned incremental may still become a full. */
export function applyPolicy(plan: ChainPlan, policy: ChainPolicy | undefined, now = new Date()): ChainPlan {
  if (plan.mode !== 'incremental' || !policy || !plan.parent || !plan.since) return plan;
  const fileName = plan.backing?.split('/').pop() ?? '';
  const parent: ParentFound = {
    ok: true,
    backupId: plan.parent,
    dir: '',
    file: '',
    fileName,
    depth: plan.depth - 1,
    fullCreatedAt: plan.fullAt ?? '',
  };
  const bitmap: BitmapReport = {
    state: 'ok',
    name: plan.since,
    granularity: plan.granularity ?? GRANULARITY,
    persistent: plan.persistent ?? false,
    since: plan.parent,
  };
  const d = decideChain({ parent, bitmap, policy, now });
  return d.mode === 'full' ? toPlan(plan.disk, plan.record ?? '', plan.persistent ?? false, d) : plan;
}

/** The manifest's chain entry of a disk copied after `plan`. */
export function chainEntry(plan: ChainPlan, bytes: { bytesRead: number; bytesChanged?: number }): NonNullable<ManifestFile['chain']> {
  const bitmap = plan.record
    ? { bitmap: { name: plan.record, granularity: plan.granularity ?? GRANULARITY, persistent: plan.persistent ?? false } }
    : {};
  if (plan.mode === 'incremental' && plan.parent && plan.backing) {
    return {
      mode: 'incremental',
      reason: 'incremental',
      detail: plan.detail,
      depth: plan.depth,
      parent: plan.parent,
      backing: plan.backing,
      ...bitmap,
      ...(bytes.bytesChanged !== undefined ? { bytesChanged: bytes.bytesChanged } : {}),
      bytesRead: bytes.bytesRead,
    } as NonNullable<ManifestFile['chain']>;
  }
  return { mode: 'full', reason: plan.reason, detail: plan.detail, depth: 0, ...bitmap, bytesRead: bytes.bytesRead } as NonNullable<
    ManifestFile['chain']
  >;
}

/**
 * What to journal before tracking starts: the new records, and what goes once this backup is
 * published: the parent's record and any other record of this chain on the disk (left by a backup
 * that crashed, or inconsistent). Another chain's records are never listed.
 */
export function trackIntent(
  vm: ClassifiedVm,
  plans: readonly ChainPlan[],
  target: string,
  parentRecords: ReadonlyMap<string, string> = new Map(),
): TrackIntent {
  const records = plans.filter((p) => p.record !== undefined).map((p) => ({ disk: p.disk, name: p.record! }));
  const since = plans.flatMap((p) =>
    (vm.disks.find((d) => d.id === p.disk)?.tracking?.records ?? [])
      .filter((r) => r.name !== p.record && (ofChain(r.name, target) || r.name === parentRecords.get(p.disk)))
      .map((r) => ({ disk: p.disk, name: r.name })),
  );
  return { records, since };
}
