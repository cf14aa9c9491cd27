// Changed-block tracking with QEMU's dirty bitmaps, the analogue of Hyper-V's RCT.
//
// Each published backup B of a disk leaves one bitmap of ours on the disk's node per chain, named
// vmbackup-<chain>-<B> by the pipeline (src/pipeline/chain-plan.ts: the chain is the host node's
// repository and host name, so a second repository backing up the same VM keeps its own bitmap),
// recording every write since a moment no later than B's point in time. A backup N adds its own
// record before its own moment (before the freeze or the stop), copies the clusters
// that the parent's bitmap marks, and only once N is published removes the parent's bitmap. If N
// fails, or is never published, it removes its own bitmap instead: the parent's never stopped
// recording, so nothing written since the parent is ever lost to the next backup. Both bitmaps
// record across the moment, so each marks a superset of what changed: a few clusters written just
// before the moment are copied twice, none is missed, and no transaction is needed for it.
//
// Persistent bitmaps live in qcow2 images (written out when QEMU closes the image; after QEMU is
// killed they load as `inconsistent`); a raw image gets a transient bitmap, which ends with its
// QEMU process. Either way a bitmap that is not there, not recording or inconsistent means a full.
import type { QmpClient } from './protocol';
import { namedNodes, type DirtyBitmap } from './view';
import type { NamedNode } from './block-graph';

export const BITMAP_PREFIX = 'vmbackup-';
export const GRANULARITY = 65536;

export interface TrackedBitmap {
  name: string;
  recording: boolean;
  persistent: boolean;
  inconsistent: boolean;
  granularity: number;
  count: number;
}

/** Our bitmaps on each node, as QEMU reports them. */
export async function bitmapsByNode(c: QmpClient): Promise<Map<string, TrackedBitmap[]>> {
  return bitmapsOf(await namedNodes(c));
}

/** Our bitmaps on each node, from a listing already asked for (one block-graph query an exchange). */
export function bitmapsOf(nodes: readonly (NamedNode & { 'dirty-bitmaps'?: DirtyBitmap[] })[]): Map<string, TrackedBitmap[]> {
  const out = new Map<string, TrackedBitmap[]>();
  for (const n of nodes) {
    const ours = (n['dirty-bitmaps'] ?? []).filter(
      (b): b is DirtyBitmap & { name: string } => typeof b.name === 'string' && b.name.startsWith(BITMAP_PREFIX),
    );
    if (ours.length) out.set(n['node-name'], ours.map(tracked));
  }
  return out;
}

const tracked = (b: DirtyBitmap & { name: string }): TrackedBitmap => ({
  name: b.name,
  recording: b.recording,
  persistent: b.persistent,
  inconsistent: b.inconsistent === true,
  granularity: b.granularity,
  count: b.count,
});

/**
 * Start tracking from now on (before the view's moment), on every disk of a VM with one look at
 * its block graph: persistent where the image can hold it (qcow2); a bitmap already there (a
 * retried prepare) is left as it is.
 */
export async function addBitmaps(c: QmpClient, wanted: readonly { node: string; name: string }[]): Promise<void> {
  const nodes = await namedNodes(c);
  const have = bitmapsOf(nodes);
  for (const { node, name } of wanted) {
    if (have.get(node)?.some((b) => b.name === name)) continue;
    const persistent = nodes.find((n) => n['node-name'] === node)?.drv === 'qcow2';
    await c.execute('block-dirty-bitmap-add', { node, name, persistent, granularity: GRANULARITY });
  }
}

/** Remove bitmaps of ours (one look at the graph); nothing to do for one that is not there. */
export async function removeBitmaps(c: QmpClient, list: readonly { node: string; name: string }[]): Promise<void> {
  for (const { name } of list) {
    if (!name.startsWith(BITMAP_PREFIX)) throw new Error(`refusing to remove bitmap ${name}: not one this product made`);
  }
  const have = await bitmapsByNode(c);
  for (const { node, name } of list) {
    if (have.get(node)?.some((b) => b.name === name)) await c.execute('block-dirty-bitmap-remove', { node, name });
  }
}

/**
 * The copy reads through the view's snapshot-access node, and a backup job looks for its bitmap
 * on the node it reads: a disabled copy of the parent's bitmap is made there (it goes with the node).
 * Returns the bytes it marks.
 */
export async function bitmapForCopy(
  c: QmpClient,
  opts: { accessNode: string; diskNode: string; from: string; name: string },
): Promise<number> {
  await copyBitmap(c, opts);
  const b = (await namedNodes(c)).find((n) => n['node-name'] === opts.accessNode)?.['dirty-bitmaps']?.find((x) => x.name === opts.name);
  return b?.count ?? 0;
}

/** The disabled copy of the parent's bitmap on the access node (an NBD export of that node can carry it too). */
export async function copyBitmap(c: QmpClient, opts: { accessNode: string; diskNode: string; from: string; name: string }): Promise<void> {
  await c.execute('block-dirty-bitmap-add', {
    node: opts.accessNode,
    name: opts.name,
    persistent: false,
    disabled: true,
    granularity: GRANULARITY,
  });
  await c.execute('block-dirty-bitmap-merge', {
    node: opts.accessNode,
    target: opts.name,
    bitmaps: [{ node: opts.diskNode, name: opts.from }],
  });
}
