// A client that polls a VM's QMP socket the way Proxmox's pvestatd (and each `qm status`) does:
// connect, query-status, hang up; the poll fails when the answer takes longer than its limit.
// QEMU serves one QMP client at a time, so every poll answered in time means nothing of ours held
// the socket longer than that.
import { connectWhenFree } from '../../src/providers/qemu/protocol';

export interface PollReport {
  polls: number;
  answered: number;
  slowestMs: number;
  errors: string[];
}

/**
 * One `qm status`: ms to the answer, or a rejection after `limitMs`. Its connect waits while the
 * monitor's backlog is full, as the blocking connect of Proxmox's Perl client does.
 */
export async function qmStatus(socket: string, limitMs: number): Promise<number> {
  const t0 = performance.now();
  const c = await connectWhenFree(socket, { timeoutMs: limitMs });
  try {
    await c.execute('query-status', undefined, { timeoutMs: limitMs });
  } finally {
    await c.close();
  }
  return performance.now() - t0;
}

/** Poll every `everyMs` (limit `limitMs` each) until `until` settles. */
export async function pvestatd(socket: string, until: Promise<unknown>, everyMs: number, limitMs: number): Promise<PollReport> {
  let ended = false;
  void until.then(
    () => (ended = true),
    () => (ended = true),
  );
  const out: PollReport = { polls: 0, answered: 0, slowestMs: 0, errors: [] };
  while (!ended) {
    out.polls++;
    try {
      const ms = await qmStatus(socket, limitMs);
      out.answered++;
      out.slowestMs = Math.max(out.slowestMs, ms);
    } catch (err) {
      out.errors.push((err as Error).message);
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
  return out;
}
