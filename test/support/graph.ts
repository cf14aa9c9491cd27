// What every suite checks after a backup, failed or not, asked of QEMU itself (not the file
// system): the point-in-time view is gone from the VM's block graph, and of our change tracking
// only the newest published backup's bitmap of each chain stays on each disk.
import * as assert from 'node:assert/strict';
import { QmpClient } from '../../src/providers/qemu/protocol';

interface GraphNode {
  'node-name': string;
  file: string;
  'dirty-bitmaps'?: { name?: string }[];
}

interface BlockEntry {
  qdev?: string;
  device?: string;
  inserted?: { 'node-name'?: string; file: string; image?: { filename: string } };
}

/**
 * No node named vmb-* (query-named-block-nodes), every device on a node that is not ours and
 * reading no file of ours (query-block), at most one vmbackup-* bitmap per chain per node. Returns how many
 * bitmaps of ours the VM holds.
 */
export async function assertGraphClean(qmpSocket: string, vmId: string): Promise<number> {
  const c = await QmpClient.connect(qmpSocket, { timeoutMs: 10_000 });
  let nodes: GraphNode[];
  let block: BlockEntry[];
  try {
    nodes = await c.execute<GraphNode[]>('query-named-block-nodes', { flat: true });
    block = await c.execute<BlockEntry[]>('query-block');
  } finally {
    await c.close();
  }
  const ours = nodes.map((n) => n['node-name']).filter((n) => n.startsWith('vmb-'));
  assert.deepEqual(ours, [], `${vmId}: QEMU still shows nodes of ours`);
  for (const b of block) {
    if (!b.inserted) continue;
    const dev = b.qdev ?? b.device ?? '?';
    assert.doesNotMatch(
      b.inserted['node-name'] ?? '',
      /^vmb-/,
      `${vmId}: device ${dev} is on node ${b.inserted['node-name']}, not on its own image`,
    );
    assert.doesNotMatch(
      b.inserted.image?.filename ?? b.inserted.file,
      /\.vmbackup-/,
      `${vmId}: device ${dev} reads ${b.inserted.file}, not its own image`,
    );
  }
  let count = 0;
  for (const n of nodes) {
    const mine = (n['dirty-bitmaps'] ?? []).map((b) => b.name ?? '').filter((name) => name.startsWith('vmbackup-'));
    // per chain (vmbackup-<chain>-<backupId>; old-style vmbackup-<backupId> count as one chain)
    const byChain = new Map<string, string[]>();
    for (const name of mine) {
      const chain = /^vmbackup-([0-9a-f]{8})-/.exec(name)?.[1] ?? 'old-style';
      byChain.set(chain, [...(byChain.get(chain) ?? []), name]);
    }
    for (const [chain, names] of byChain)
      assert.ok(
        names.length <= 1,
        `${vmId}: node ${n['node-name']} holds ${names.length} bitmaps of chain ${chain} (${names.join(', ')}); only the newest published backup's may stay`,
      );
    count += mine.length;
  }
  return count;
}
