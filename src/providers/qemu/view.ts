// The point-in-time view of a VM's disks, made the way QEMU's own fleecing does it (QEMU >= 7.1):
// per disk a copy-before-write filter is put between the guest's device and its image, with a
// fleecing image in the VM's fleece location (fleece.ts: a local file system, never a /dev volume
// or network storage); from the moment the device is switched onto the filter,
// every guest write first copies the old data of its clusters into the fleecing image, and a
// snapshot-access node reads the disk as it was at that moment. The VM never leaves its own
// image (nothing is ever merged back), and undo is taking our nodes out again.
//
// The filter runs with on-cbw-error=break-snapshot and a cbw-timeout: when the fleecing image
// cannot take a copy (file system full, storage stalled), QEMU gives up the snapshot, never the
// guest's write; the backup then fails reading the view. The copy to the repository is done by
// a separate process (see disk-copy.ts), so backup storage never sits in the guest's write path.
//
// Measured on QEMU 7.2 here: a migration fails while a copy-before-write filter is in the graph,
// so a saved-state VM is saved first and its view made while it is stopped (images inactive),
// before `cont`; the view's moment is then the stop.
import { constants as fsConstants, promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { QmpClient, QmpExchange } from './protocol';
import type { NamedNode, QueryBlockEntry } from './block-graph';

export interface ViewDisk {
  /** the backup set's disk id */
  disk: string;
  /** index among the VM's included disks: node names are built from it, never from user names */
  index: number;
  /** QOM path of the device's block backend (query-block `qdev`), switched with qom-set */
  qdev: string;
  /** the node the device is attached to before the view: restored on release */
  node: string;
  virtualSize: number;
  fleece: string;
  fleeceNode: string;
  cbwNode: string;
  accessNode: string;
  /** node of the NBD client the copy writes through */
  targetNode: string;
  jobId: string;
}

export interface ViewPlan {
  backupId: string;
  vm: string;
  /** every node name of this view starts with it: vmb-<6 characters of the backup id>- */
  prefix: string;
  disks: ViewDisk[];
}

/** A guest write waits at most this long for its copy into the fleecing image, then the snapshot breaks. */
export const CBW_TIMEOUT_S = 5;

export const NODE_PREFIX = 'vmb-';

export function viewPrefix(backupId: string): string {
  return `${NODE_PREFIX}${backupId.slice(-6)}-`;
}

/** Names are made from the backup id and the disk's index, so two disks can never collide. */
export function planView(
  vm: { id: string; disks: readonly { id: string; node: string; qdev?: string; included: boolean; virtualSize?: number }[] },
  backupId: string,
  fleeceDir: string,
): ViewPlan {
  const prefix = viewPrefix(backupId);
  const disks = vm.disks
    .filter((d) => d.included)
    .map((d, index): ViewDisk => {
      if (d.node.startsWith(NODE_PREFIX)) {
        throw new Error(
          `disk ${d.id} is still on the point-in-time view of an earlier backup (node ${d.node}): recovery takes it out first`,
        );
      }
      if (!d.qdev)
        throw new Error(`disk ${d.id}: QEMU names no device for it (query-block qdev); it cannot be switched onto a point-in-time view`);
      return {
        disk: d.id,
        index,
        qdev: d.qdev,
        node: d.node,
        virtualSize: d.virtualSize ?? 0,
        fleece: path.join(fleeceDir, `.vmbackup-${backupId}-${vm.id}-${index}.fleece.raw`),
        fleeceNode: `${prefix}${index}-f`,
        cbwNode: `${prefix}${index}-c`,
        accessNode: `${prefix}${index}-a`,
        targetNode: `${prefix}${index}-t`,
        jobId: `${prefix}${index}-j`,
      };
    });
  return { backupId, vm: vm.id, prefix, disks };
}

/** the name of a fleecing image of ours (qcow2: made by versions before the sparse raw file, still removed by recovery) */
export const FLEECE_FILE = /\/\.vmbackup-[0-9]{8}T[0-9]{6}Z-[a-z0-9]{6}-[A-Za-z0-9._-]+-[0-9]+\.fleece\.(raw|qcow2)$/;

/**
 * Before the moment: fleecing images and filters are added beside the disks, nothing in the
 * guest's path changes yet (a filter without parents lets the device write as before). Only
 * nodes QEMU does not have yet are made, in one exchange: an image QEMU has open is never made
 * again.
 *
 * A fleecing image is a sparse raw file the size of its disk, made here without a program: it
 * holds only the clusters the guest overwrites while the view lives (the filter keeps its own
 * map of which ones), at their own offsets, so it needs no format of its own. Opened without
 * following a link: a link planted under our name is refused, never truncated through.
 */
export async function armView(qmp: QmpExchange, plan: ViewPlan): Promise<void> {
  for (const d of plan.disks) {
    if (!FLEECE_FILE.test(d.fleece)) throw new Error(`refusing fleecing image ${d.fleece}: not a name this product makes`);
  }
  await qmp(async (c) => {
    const nodes = new Set((await namedNodes(c)).map((n) => n['node-name']));
    for (const d of plan.disks) {
      if (!nodes.has(d.fleeceNode)) {
        await makeFleeceFile(d.fleece, d.virtualSize);
        await c.execute('blockdev-add', { driver: 'file', 'node-name': d.fleeceNode, filename: d.fleece, discard: 'unmap' });
      }
      if (!nodes.has(d.cbwNode)) {
        await c.execute('blockdev-add', {
          driver: 'copy-before-write',
          'node-name': d.cbwNode,
          file: d.node,
          target: d.fleeceNode,
          'on-cbw-error': 'break-snapshot',
          'cbw-timeout': CBW_TIMEOUT_S,
        });
      }
    }
  });
}

/**
 * The moment: every device onto its filter. Several disks of a guest that is not frozen are
 * switched with its vCPUs stopped (`stop` drains every request in flight), so that no write of
 * the guest can land on one disk's side of the moment and a later one on the other's.
 * Returns how long the vCPUs were stopped, if they were.
 */
export async function switchView(c: QmpClient, plan: ViewPlan, opts: { pause: boolean }): Promise<number | undefined> {
  let paused: number | undefined;
  if (opts.pause && plan.disks.length > 1) {
    const status = (await c.execute<{ running: boolean }>('query-status')).running;
    if (status) {
      const t0 = performance.now();
      await c.execute('stop');
      try {
        for (const d of plan.disks) await c.execute('qom-set', { path: d.qdev, property: 'drive', value: d.cbwNode });
      } finally {
        await c.execute('cont');
        paused = Math.round((performance.now() - t0) * 10) / 10;
      }
    }
  }
  if (paused === undefined) {
    for (const d of plan.disks) await c.execute('qom-set', { path: d.qdev, property: 'drive', value: d.cbwNode });
  }
  const roots = await c.execute<QueryBlockEntry[]>('query-block');
  for (const d of plan.disks) {
    const root = roots.find((r) => r.qdev === d.qdev)?.inserted?.['node-name'];
    if (root !== d.cbwNode) throw new Error(`disk ${d.disk}: the device did not move onto the view (its node is ${root ?? 'none'})`);
  }
  for (const d of plan.disks) {
    await c.execute('blockdev-add', { driver: 'snapshot-access', 'node-name': d.accessNode, file: d.cbwNode });
  }
  return paused;
}

/**
 * Take every node of ours out of the VM's graph, in the order QEMU allows (the filter refuses to
 * give the device back while something reads through it), then ask QEMU whether it is true:
 * each device on the node it had, no node named with our prefix. Throws when it is not.
 * Safe to repeat, and safe on a QEMU that never had the view (restarted, or a plan never made).
 * A cancelled job is waited for by looking again (each look its own exchange).
 */
export async function releaseView(qmp: QmpExchange, plan: ViewPlan): Promise<void> {
  const quiet = (p: Promise<unknown>) => p.catch(() => undefined);
  // one exchange in the usual case (the copies' jobs are gone): a second only after a cancel
  const cancelled = await qmp(async (c) => {
    const jobs = await c.execute<{ id: string; status: string }[]>('query-jobs');
    // an export left by a verification that never ended (Node-RED stopped meanwhile): its server is ours
    const exports = await c.execute<{ id: string }[]>('query-block-exports').catch(() => []);
    if (exports.some((e) => e.id.startsWith(plan.prefix))) await quiet(c.execute('nbd-server-stop'));
    for (const d of plan.disks) {
      const job = jobs.find((j) => j.id === d.jobId);
      if (job && job.status !== 'concluded' && job.status !== 'null')
        await quiet(c.execute('block-job-cancel', { device: d.jobId, force: true }));
    }
    const left = plan.disks.filter((d) => jobs.some((j) => j.id === d.jobId)).map((d) => d.jobId);
    if (left.length === 0) await takeOut(c, plan);
    return left;
  });
  if (cancelled.length === 0) return;
  for (const jobId of cancelled) await waitJobGone(qmp, jobId);
  await qmp((c) => takeOut(c, plan));
}

async function takeOut(c: QmpClient, plan: ViewPlan): Promise<void> {
  const nodes = await namedNodes(c);
  const has = (name: string) => nodes.some((n) => n['node-name'] === name);
  for (const d of plan.disks) {
    if (has(d.targetNode)) await c.execute('blockdev-del', { 'node-name': d.targetNode });
    if (has(d.accessNode)) await c.execute('blockdev-del', { 'node-name': d.accessNode });
  }
  const roots = await c.execute<QueryBlockEntry[]>('query-block');
  for (const d of plan.disks) {
    const root = roots.find((r) => r.qdev === d.qdev)?.inserted?.['node-name'];
    if (root === d.cbwNode) await c.execute('qom-set', { path: d.qdev, property: 'drive', value: d.node });
  }
  // (the listing above still holds: a filter and its image go only by our blockdev-del; QEMU's
  // word on what is left is asked once, at the end)
  for (const d of plan.disks) {
    if (has(d.cbwNode)) await c.execute('blockdev-del', { 'node-name': d.cbwNode });
    if (has(d.fleeceNode)) await c.execute('blockdev-del', { 'node-name': d.fleeceNode });
  }
  await assertNothingOurs(c, plan);
}

/** QEMU's own word that the VM holds nothing of this view: the proof every undo ends with. */
export async function assertNothingOurs(c: QmpClient, plan: ViewPlan): Promise<void> {
  const [roots, nodes] = await Promise.all([c.execute<QueryBlockEntry[]>('query-block'), namedNodes(c)]);
  const left = nodes.map((n) => n['node-name']).filter((n) => n.startsWith(plan.prefix));
  const moved = plan.disks.filter((d) => {
    const root = roots.find((r) => r.qdev === d.qdev)?.inserted?.['node-name'];
    return root !== undefined && root.startsWith(plan.prefix);
  });
  if (left.length || moved.length) {
    throw new Error(
      `QEMU still shows nodes of backup ${plan.backupId} in VM ${plan.vm}: ${[...new Set([...left, ...moved.map((d) => d.cbwNode)])].join(', ')}`,
    );
  }
}

async function makeFleeceFile(file: string, size: number): Promise<void> {
  const { O_WRONLY, O_CREAT, O_TRUNC, O_NOFOLLOW } = fsConstants;
  const fh = await fs.open(file, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, 0o600).catch((err: NodeJS.ErrnoException) => {
    throw new Error(
      err.code === 'ELOOP'
        ? `refusing fleecing image ${file}: a symbolic link is in its place`
        : `cannot make fleecing image ${file}: ${err.code ?? err.message}`,
    );
  });
  try {
    await fh.truncate(size);
  } finally {
    await fh.close();
  }
}

/**
 * What a read error of the view means when it is EACCES: snapshot-access answers so once the filter
 * broke the snapshot (on-cbw-error=break-snapshot), whoever reads it (the backup job, or a reader of
 * the view's NBD export).
 */
export function viewBroke(d: ViewDisk, error: string): string {
  return /permission denied/i.test(error)
    ? ` (the view broke: its fleecing image ${d.fleece} could not take a copy of old data, e.g. its file system is full or failing; the guest's writes went on unharmed)`
    : '';
}

/** The fleecing images go once QEMU no longer has them open (or QEMU is gone). */
export async function removeFleeceFiles(plan: ViewPlan): Promise<void> {
  for (const d of plan.disks) {
    if (FLEECE_FILE.test(d.fleece)) await fs.rm(d.fleece, { force: true });
  }
}

async function waitJobGone(qmp: QmpExchange, jobId: string): Promise<void> {
  for (let i = 0; i < 600; i++) {
    const gone = await qmp(async (c) => {
      const job = (await c.execute<{ id: string; status: string }[]>('query-jobs')).find((j) => j.id === jobId);
      if (job?.status === 'concluded') await c.execute('job-dismiss', { id: jobId }).catch(() => undefined);
      return job === undefined;
    });
    if (gone) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`block job ${jobId} did not end within 60 s of being cancelled`);
}

export function namedNodes(c: QmpClient): Promise<(NamedNode & { 'dirty-bitmaps'?: DirtyBitmap[] })[]> {
  return c.execute('query-named-block-nodes', { flat: true });
}

export interface DirtyBitmap {
  name?: string;
  recording: boolean;
  persistent: boolean;
  busy: boolean;
  granularity: number;
  count: number;
  inconsistent?: boolean;
}

/** Nodes of ours in a graph (found at enumerate): a crash left a view behind; recovery takes it out. */
export function leftoverNodes(nodes: readonly NamedNode[]): string[] {
  return nodes.map((n) => n['node-name']).filter((n) => n.startsWith(NODE_PREFIX));
}
