// Merging an overlay back: live with block-commit while QEMU runs the VM, offline with
// qemu-img commit when QEMU is gone. Never merge into a base the VM has since gone back to.
import { promises as fs } from 'node:fs';
import type { Overlay } from '../../contract/types';
import { OVERLAY_FILE } from '../overlay-plan';
import { runProgram } from '../../util/run';
import * as qemuImg from './qemu-img';
import type { QmpClient } from './protocol';
import type { NamedNode, QueryBlockEntry } from './block-graph';

export interface MergeContext {
  qemuImg: string;
  commandMs: number;
  /** present when the VM's QEMU answers */
  qmp?: <R>(fn: (c: QmpClient) => Promise<R>) => Promise<R>;
}

export async function mergeOverlays(overlays: readonly Overlay[], ctx: MergeContext): Promise<void> {
  for (const o of overlays) {
    if (!OVERLAY_FILE.test(o.overlay)) throw new Error(`refusing to merge ${o.overlay}: not an overlay this product made`);
    if (!(await exists(o.overlay))) continue; // merged and deleted already, or never created
    if (ctx.qmp) {
      const merged = await ctx.qmp((c) => commitLive(c, o, ctx.commandMs));
      if (!merged) await dropUnusedOverlay(ctx.qemuImg, o);
    } else {
      await qemuImg.commit(ctx.qemuImg, o.overlay);
    }
    await fs.rm(o.overlay, { force: true });
  }
}

/** block-commit the overlay into its base; false when the VM does not use the overlay. */
async function commitLive(c: QmpClient, o: Overlay, commandMs: number): Promise<boolean> {
  const nodes = await c.execute<NamedNode[]>('query-named-block-nodes', { flat: true });
  if (!nodes.some((n) => n['node-name'] === o.overlayNode)) return false;
  const roots = await c.execute<QueryBlockEntry[]>('query-block');
  const active = roots.some((r) => r.inserted?.['node-name'] === o.overlayNode);
  const jobId = `vmbackup-commit-${o.overlayNode}`;
  const long = Math.max(commandMs, 3600_000);
  const mark = c.eventMark();
  // A merge of ours started before Node-RED died runs on in QEMU (an active commit then waits,
  // READY, for block-job-complete): finish that job rather than start another under the same id.
  const running = (await c.execute<{ device: string; status?: string; ready?: boolean }[]>('query-block-jobs')).find((j) => j.device === jobId);
  if (running) {
    if (active) {
      if (!(running.ready === true || running.status === 'ready')) {
        await c.waitEvent('BLOCK_JOB_READY', (d: any) => d?.device === jobId, long, { since: mark });
      }
      await c.execute('block-job-complete', { device: jobId });
    }
    const finished = await c.waitEvent('BLOCK_JOB_COMPLETED', (d: any) => d?.device === jobId, long, { since: mark });
    const failed = (finished.data as { error?: string } | undefined)?.error;
    if (failed) throw new Error(`block-commit of ${o.overlay} failed: ${failed}`);
    return true;
  }
  const args: Record<string, unknown> = { 'job-id': jobId, device: o.overlayNode };
  if (o.baseNode) args['base-node'] = o.baseNode;
  if (!active) {
    // someone stacked another snapshot on ours: commit ours as an intermediate layer
    const root = roots.find((r) => r.inserted && r.inserted['node-name'] !== o.overlayNode);
    args.device = root?.inserted?.['node-name'];
    args['top-node'] = o.overlayNode;
  }
  await c.execute('block-commit', args);
  if (active) {
    await c.waitEvent('BLOCK_JOB_READY', (d: any) => d?.device === jobId, long, { since: mark });
    await c.execute('block-job-complete', { device: jobId });
  }
  const done = await c.waitEvent('BLOCK_JOB_COMPLETED', (d: any) => d?.device === jobId, long, { since: mark });
  const error = (done.data as { error?: string } | undefined)?.error;
  if (error) throw new Error(`block-commit of ${o.overlay} failed: ${error}`);
  return true;
}

/**
 * The overlay file exists but the VM runs without it (the transaction failed after creating it,
 * or QEMU was restarted on the base). Empty: delete. Holding data: never fold it into a base the
 * VM has written since; keep it aside and say so.
 */
async function dropUnusedOverlay(qemuImgPath: string, o: Overlay): Promise<void> {
  const { stdout } = await runProgram(qemuImgPath, ['map', '--output=json', '-U', o.overlay]);
  const own = (JSON.parse(stdout) as { depth: number; data: boolean }[]).some((e) => e.depth === 0 && e.data);
  if (own) {
    const aside = `${o.overlay}.orphaned`;
    await fs.rename(o.overlay, aside);
    throw new Error(`overlay ${o.overlay} holds writes but the VM no longer uses it; kept as ${aside} for inspection`);
  }
}

async function exists(file: string): Promise<boolean> {
  return fs.access(file).then(() => true, () => false);
}
