// Following a backup job of QEMU's to its end by looking at it, never by holding the monitor.
import type { QmpClient, QmpEvent, QmpExchange } from './protocol';
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

/** how long one look may keep the monitor, waiting for the job's end (Proxmox's pvestatd allows 1 s) */
const HOLD_MAX_MS = 100;

/**
 * Follow the backup job to its end by looking at it (query-jobs), each look one short QMP
 * exchange, never by holding the socket for the job's whole run: QEMU serves one QMP client at a
 * time, and the host's own tools (Proxmox's qm, pvestatd) connect per command and must get their
 * turn during a copy that takes hours. A look keeps the socket at most 100 ms, awake for the
 * job's end (its JOB_STATUS_CHANGE to concluded), so that a short job (an incremental of a few
 * MiB) is seen done the moment it is, in one exchange; between looks the socket is free for
 * `nextLookMs` (at most pollMaxMs). An abort cancels the job at once. Returns the bytes the job read.
 */
export async function followJob(qmp: QmpExchange, d: ViewDisk, o: FollowOptions): Promise<number> {
  const stopped = () => (o.signal?.reason instanceof Error ? o.signal.reason : new Error('copy stopped'));
  const started = performance.now();
  let hold = HOLD_MAX_MS;
  let wait = FIRST_LOOK_MS;
  let lastDone = 0;
  for (;;) {
    if (o.signal?.aborted) {
      await qmp((c) => c.execute('block-job-cancel', { device: d.jobId, force: true })).catch(() => undefined);
      throw stopped();
    }
    const job = await qmp((c) => look(c, d.jobId, hold, o.signal));
    if (!job) throw new Error(`copying disk ${d.disk}: the backup job ${d.jobId} is gone (QEMU restarted, or someone dismissed it)`);
    o.onProgress?.(job['current-progress'], job['total-progress']);
    if (job.status === 'concluded') {
      if (o.signal?.aborted) throw stopped();
      // a job cancelled by anyone concludes with an error too ("Operation canceled", measured on QEMU 7.2)
      if (job.error) throw new Error(`copying disk ${d.disk} out of its point-in-time view failed: ${job.error}${viewBroke(d, job.error)}`);
      return job['total-progress'];
    }
    const done = job['current-progress'];
    wait = nextLookMs(
      { elapsedMs: performance.now() - started, done, total: job['total-progress'], moved: done > lastDone, lastWaitMs: wait },
      o.pollMaxMs ?? 1000,
    );
    lastDone = done;
    await pause(wait, o.signal);
    hold = Math.min(HOLD_MAX_MS, wait);
  }
}

/** One look: the job as query-jobs shows it, after waiting up to `holdMs` on this connection for its end; dismissed once concluded. */
async function look(c: QmpClient, jobId: string, holdMs: number, signal?: AbortSignal): Promise<JobInfo | undefined> {
  const find = async () => (await c.execute<JobInfo[]>('query-jobs')).find((x) => x.id === jobId);
  let ended: () => void = () => undefined;
  const concluded = new Promise<void>((r) => (ended = r));
  // listening before the first question: an end between the answer and the wait is not missed
  const onChange = (ev: QmpEvent) => {
    const data = ev.data as { id?: string; status?: string } | undefined;
    if (data?.id === jobId && data.status === 'concluded') ended();
  };
  c.on('JOB_STATUS_CHANGE', onChange);
  try {
    let j = await find();
    if (j && j.status !== 'concluded' && holdMs > 0 && !signal?.aborted) {
      await Promise.race([concluded, pause(holdMs, signal)]);
      j = await find();
    }
    if (j?.status === 'concluded') await c.execute('job-dismiss', { id: jobId }).catch(() => undefined);
    return j;
  } finally {
    c.off('JOB_STATUS_CHANGE', onChange);
  }
}

/** A wait that an abort ends at once. */
function pause(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((r) => {
    if (signal?.aborted) return r();
    const done = () => {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      r();
    };
    const t = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}
