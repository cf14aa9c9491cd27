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
    if (!(await exists(o.overlay))) {
      // merged and deleted already (perhaps by a process that died before it dismissed the job), or never created
      if (ctx.qmp) await ctx.qmp((c) => dismissConcluded(c, jobIdOf(o))).catch(() => undefined);
      continue;
    }
    if (ctx.qmp) {
      const merged = await ctx.qmp((c) => commitLive(c, o, ctx.commandMs));
      if (!merged) await dropUnusedOverlay(ctx.qemuImg, o);
      await fs.rm(o.overlay, { force: true });
      // the job's record goes last: until the file is gone, it is what says the data is in the base
      await ctx.qmp((c) => dismissConcluded(c, jobIdOf(o))).catch(() => undefined);
    } else {
      await qemuImg.commit(ctx.qemuImg, o.overlay);
      await fs.rm(o.overlay, { force: true });
    }
  }
}

const jobIdOf = (o: Overlay) => `vmbackup-commit-${o.overlayNode}`;

interface JobInfo { id: string; type: string; status: string; error?: string }

/**
 * block-commit the overlay into its base; false when the VM does not use the overlay.
 *
 * The job is started with auto-dismiss off: when it has completed, QEMU keeps its record
 * ("concluded") until we dismiss it, after the overlay file is deleted. A process that dies between
 * the two (Node-RED killed, the guardian) leaves that record, and the next merge reads in it that
 * the overlay's data is in the base: the overlay file may go. Without it, an overlay that left
 * the VM's graph but still holds data could also be one the VM was restarted without; that one
 * is never deleted (dropUnusedOverlay).
 */
async function commitLive(c: QmpClient, o: Overlay, commandMs: number): Promise<boolean> {
  const jobId = jobIdOf(o);
  const long = Math.max(commandMs, 3600_000);
  const mark = c.eventMark();
  const job = (await c.execute<JobInfo[]>('query-jobs')).find((j) => j.id === jobId);
  if (job?.status === 'concluded') {
    if (job.error) throw new Error(`block-commit of ${o.overlay} failed: ${job.error}`);
    return true; // completed: the data is in the base
  }
  const nodes = await c.execute<NamedNode[]>('query-named-block-nodes', { flat: true });
  if (!nodes.some((n) => n['node-name'] === o.overlayNode)) return false;
  const roots = await c.execute<QueryBlockEntry[]>('query-block');
  const active = roots.some((r) => r.inserted?.['node-name'] === o.overlayNode);
  if (job) {
    // A merge of ours started before Node-RED died runs on in QEMU (an active commit then waits,
    // READY, for block-job-complete): finish that job rather than start another under the same id.
    // (past READY, block-job-complete was already sent: waiting, pending, aborting only finish)
    const completing = ['waiting', 'pending', 'aborting'].includes(job.status);
    if (active && !completing) {
      if (job.status !== 'ready') await c.waitEvent('BLOCK_JOB_READY', (d: any) => d?.device === jobId, long, { since: mark });
      await c.execute('block-job-complete', { device: jobId });
    }
    await waitCompleted(c, o, jobId, long, mark);
    return true;
  }
  const args: Record<string, unknown> = { 'job-id': jobId, device: o.overlayNode, 'auto-dismiss': false };
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
  await waitCompleted(c, o, jobId, long, mark);
  return true;
}

async function waitCompleted(c: QmpClient, o: Overlay, jobId: string, long: number, mark: number): Promise<void> {
  const done = await c.waitEvent('BLOCK_JOB_COMPLETED', (d: any) => d?.device === jobId, long, { since: mark });
  const error = (done.data as { error?: string } | undefined)?.error;
  if (error) {
    await dismissConcluded(c, jobId);
    throw new Error(`block-commit of ${o.overlay} failed: ${error}`);
  }
}

/** Drop QEMU's record of a finished job of ours. QEMU refuses for no such job or one not finished: nothing to do. */
async function dismissConcluded(c: QmpClient, jobId: string): Promise<void> {
  await c.execute('job-dismiss', { id: jobId }).catch(() => undefined);
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
