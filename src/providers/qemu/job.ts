// Following a backup job of QEMU's to its end by looking at it, never by holding the monitor.
import type { QmpExchange } from './protocol';
import { viewBroke, type ViewDisk } from './view';

export interface FollowOptions {
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
  /** longest wait between two looks at the job (each look is one short QMP exchange) */
  pollMaxMs?: number;
}

interface JobInfo {
  id: string;
  status: string;
  'current-progress': number;
  'total-progress': number;
  error?: string;
}

/** the first look, and the shortest wait the job's own pace may ask for */
const FIRST_LOOK_MS = 5;
const SHORTEST_MS = 2;

/**
 * The wait before the next look at a job, from what the last look saw. A wait that only doubled
 * (5, 10, 20 ... ms) found a 150 ms job done up to 160 ms late, longer than the job itself. So:
 * - never longer than half the time the job has run (a late look costs at most half again), nor
 *   than `maxMs`;
 * - where the job moved since the last look, until just after the end its own pace predicts
 *   (bytes left at the bytes per ms so far), so that the look that finds it done comes right after
 *   it is;
 * - where it did not move (not started, or stuck at the end while its target flushes), growing
 *   as before: a stalled job is not asked about every few ms.
 */
export function nextLookMs(
  look: { elapsedMs: number; done: number; total: number; moved: boolean; lastWaitMs: number },
  maxMs: number,
): number {
  const cap = Math.min(maxMs, Math.max(FIRST_LOOK_MS, look.elapsedMs / 2));
  if (look.moved && look.done > 0 && look.total > look.done) {
    const left = ((look.total - look.done) * look.elapsedMs) / look.done;
    return Math.min(cap, Math.max(SHORTEST_MS, Math.ceil(left) + 1));
  }
  return Math.min(cap, Math.max(FIRST_LOOK_MS, look.lastWaitMs * 2));
}

/**
 * Follow the backup job to its end by looking at it (query-jobs), each look one short QMP
 * exchange, never by holding the socket for its events: QEMU serves one QMP client at a time, and
 * the host's own tools (Proxmox's qm, pvestatd's polls) connect per command and must get their
 * turn during a copy that takes hours. The first look is 5 ms after the start (a small disk's
 * job is done by then); the next ones by `nextLookMs`, the slowest one every pollMaxMs.
 * An abort cancels the job at once. Returns the bytes the job read.
 */
export async function followJob(qmp: QmpExchange, d: ViewDisk, o: FollowOptions): Promise<number> {
  const stopped = () => (o.signal?.reason instanceof Error ? o.signal.reason : new Error('copy stopped'));
  let wake: (() => void) | undefined;
  const onAbort = () => wake?.();
  o.signal?.addEventListener('abort', onAbort, { once: true });
  const started = performance.now();
  let wait = FIRST_LOOK_MS;
  let lastDone = 0;
  try {
    for (let first = true; ; first = false) {
      if (o.signal?.aborted) {
        await qmp((c) => c.execute('block-job-cancel', { device: d.jobId, force: true })).catch(() => undefined);
        throw stopped();
      }
      const job = await qmp(async (c) => {
        const j = (await c.execute<JobInfo[]>('query-jobs')).find((x) => x.id === d.jobId);
        if (j?.status === 'concluded') await c.execute('job-dismiss', { id: d.jobId }).catch(() => undefined);
        return j;
      });
      if (!job) throw new Error(`copying disk ${d.disk}: the backup job ${d.jobId} is gone (QEMU restarted, or someone dismissed it)`);
      o.onProgress?.(job['current-progress'], job['total-progress']);
      if (job.status === 'concluded') {
        if (o.signal?.aborted) throw stopped();
        // a job cancelled by anyone concludes with an error too ("Operation canceled", measured on QEMU 7.2)
        if (job.error)
          throw new Error(`copying disk ${d.disk} out of its point-in-time view failed: ${job.error}${viewBroke(d, job.error)}`);
        return job['total-progress'];
      }
      const done = job['current-progress'];
      if (!first)
        wait = nextLookMs(
          { elapsedMs: performance.now() - started, done, total: job['total-progress'], moved: done > lastDone, lastWaitMs: wait },
          o.pollMaxMs ?? 1000,
        );
      lastDone = done;
      await new Promise<void>((r) => {
        const t = setTimeout(r, wait);
        wake = () => {
          clearTimeout(t);
          r();
        };
      });
    }
  } finally {
    o.signal?.removeEventListener('abort', onAbort);
  }
}
