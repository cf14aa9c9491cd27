/**
 * One QMP exchange at a time: connect, run a few commands, close. QEMU serves one QMP client per
 * socket at a time, and a host's own tools connect per command (Proxmox's `qm`, pvestatd polling
 * `query-status` every few seconds, each expecting an answer within a second or so): a connection
 * held across a long wait (a copy of hours, a migration) makes every one of them wait or time out.
 * So nothing of ours keeps a QMP connection between exchanges; long operations are followed by
 * polling (query-jobs, query-migrate), each poll its own exchange.
 *
 * Exchanges of one process on one socket run one after the other (never two connections of ours
 * queued in QEMU's listen backlog, where the greeting timeout would run). An exchange must not
 * start another on the same socket inside itself: that one waits for it, forever.
 */
import { QmpConnectError } from './errors';
import { DEFAULT_QMP_TIMEOUT_MS, QmpClient, type QmpConnectOptions } from './qmp-client';

/**
 * Connect, waiting while the socket is busy. QEMU's monitor listens with a tiny backlog: while a
 * client is served, two more connects wait in the kernel and the next ones fail at once with EAGAIN
 * (measured on QEMU 7.2: served, connected, connected, EAGAIN, EAGAIN). A blocking connect, as
 * Proxmox's tools make it, waits in the kernel instead; so do we, retrying until the timeout.
 */
export async function connectWhenFree(socketPath: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
  const deadline = performance.now() + (opts.timeoutMs ?? DEFAULT_QMP_TIMEOUT_MS);
  for (let wait = 2; ; wait = Math.min(wait * 2, 50)) {
    try {
      return await QmpClient.connect(socketPath, opts);
    } catch (err) {
      if (!(err instanceof QmpConnectError && err.code === 'EAGAIN') || performance.now() + wait > deadline) throw err;
      await new Promise((r) => setTimeout(r, wait));
    }
  }
}

export type QmpExchange = <T>(fn: (c: QmpClient) => Promise<T>) => Promise<T>;

const queues = new Map<string, Promise<unknown>>();

/** Run `fn` on a fresh connection to `socketPath`, after every earlier exchange of this process on it ended; closed afterwards. */
export function exchange<T>(socketPath: string, opts: QmpConnectOptions, fn: (c: QmpClient) => Promise<T>): Promise<T> {
  const before = queues.get(socketPath) ?? Promise.resolve();
  const run = before.then(async () => {
    const c = await connectWhenFree(socketPath, opts);
    try {
      return await fn(c);
    } finally {
      await c.close();
    }
  });
  const settled = run.then(
    () => undefined,
    () => undefined,
  );
  queues.set(socketPath, settled);
  void settled.then(() => {
    if (queues.get(socketPath) === settled) queues.delete(socketPath);
  });
  return run;
}

/** The exchange function of one socket. */
export function exchangesOf(socketPath: string, opts: QmpConnectOptions = {}): QmpExchange {
  return (fn) => exchange(socketPath, opts, fn);
}
