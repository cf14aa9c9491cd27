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
  const out = new Map<string, TrackedBitmap[]>();
  for (const n of await namedNodes(c)) {
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

/** Start tracking from now on (before the view's moment). Persistent where the image can hold it. */
export async function addBitmap(c: QmpClient, node: string, name: string, persistent: boolean): Promise<void> {
  const existing = (await bitmapsByNode(c)).get(node)?.find((b) => b.name === name);
  if (existing) return; // a retried prepare
  await c.execute('block-dirty-bitmap-add', { node, name, persistent, granularity: GRANULARITY });
}

/** Remove a bitmap of ours; nothing to do when it is not there. */
export async function removeBitmap(c: QmpClient, node: string, name: string): Promise<void> {
  if (!name.startsWith(BITMAP_PREFIX)) throw new Error(`refusing to remove bitmap ${name}: not one this product made`);
  const exists = (await bitmapsByNode(c)).get(node)?.some((b) => b.name === name);
  if (exists) await c.execute('block-dirty-bitmap-remove', { node, name });
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
  const b = (await namedNodes(c)).find((n) => n['node-name'] === opts.accessNode)?.['dirty-bitmaps']?.find((x) => x.name === opts.name);
  return b?.count ?? 0;
}
