// A full copy pulled out of the point-in-time view: the VM's QEMU exports the view read-only on its
// own NBD server (a private unix socket of ours), and one `qemu-img convert` of ours reads it and
// writes the qcow2 in the staging directory. That is one process per disk and nothing to set up
// before the data flows (measured per 32 MiB disk: 20 ms against 80 ms for a target created with
// qemu-img and served by a qemu-nbd the backup job writes to; `node dist/bench/fleet-paths.js`).
// It keeps the push path's promises: the VM's QEMU only ever reads its own disk (the repository is
// opened by qemu-img alone, so a slow or full repository stalls the reader, never the VM), guest
// writes go through the view's filter as before, and the export goes with the server, which the
// view's release stops too (a copy whose Node-RED died is ended by whoever releases the view: the
// reader then fails on its closed socket and exits).
//
// Where pull is not used (the push path of disk-copy.ts is): an incremental (the backup job reads
// only the clusters the bitmap marks; a reader of ours would have to walk the bitmap itself), a
// disk with a backing chain (QEMU 7.2's snapshot-access reports clusters of a backing file as
// holes, and qemu-img convert trusts that report: it would write zeros where the template has
// data), and a QEMU that already runs an NBD server that is not ours (QEMU runs one at a time).
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { QmpExchange } from './protocol';
import type { NamedNode } from './block-graph';
import type { ViewDisk } from './view';
import { parseProgress } from '../qemu-img';
import { runProgram, ProgramFailed } from '../../util/run';

export interface PullOptions {
  qemuImg: string;
  compress?: boolean;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
}

/** Why a disk is copied by push instead; undefined when it can be pulled. */
export type PullRefusal = 'backing-chain' | 'nbd-server-busy';

/**
 * The writer's argv. `-t unsafe`: qemu-img asks for no flush of its own; the copy step makes the
 * file durable with one fsync while it hashes the file from the page cache (measured: O_DIRECT,
 * `-t none`, made the whole copy + hash + sync slower, 10.0-10.9 s against 7.3-7.5 s for 2 GiB of
 * data, since the hash pass then reads the file back from the disk; see BENCHMARKS.md).
 */
export function pullArgs(source: string, dest: string, compress: boolean): string[] {
  return [
    'convert',
    '-p',
    '-t',
    'unsafe',
    '-f',
    'raw',
    '-O',
    'qcow2',
    ...(compress ? ['-c', '-o', 'compression_type=zstd'] : []),
    '-m',
    '8',
    '-W',
    source,
    dest,
  ];
}

/** The view's export, served by the VM's QEMU on a private socket for as long as `fn` runs. */
export async function withViewExport<R>(
  qmp: QmpExchange,
  d: ViewDisk,
  fn: (view: { uri: string; socket: string }, chained: boolean) => Promise<R>,
): Promise<R | PullRefusal> {
  const sock = path.join(os.tmpdir(), `vmbackup-view-${randomBytes(6).toString('hex')}.sock`);
  const exportId = `${d.jobId}-e`;
  const started = await qmp(async (c) => {
    // backing_file names the node's backing image (backing_file_depth counts 0 in a flat listing)
    const node = (await c.execute<(NamedNode & { backing_file?: string })[]>('query-named-block-nodes', { flat: true })).find(
      (n) => n['node-name'] === d.node,
    );
    const chained = typeof node?.backing_file === 'string' && node.backing_file !== '';
    try {
      await c.execute('nbd-server-start', { addr: { type: 'unix', data: { path: sock } } });
    } catch {
      return 'nbd-server-busy' as const;
    }
    try {
      await c.execute('block-export-add', { type: 'nbd', id: exportId, 'node-name': d.accessNode, name: 'view', writable: false });
    } catch (err) {
      await c.execute('nbd-server-stop').catch(() => undefined);
      throw err;
    }
    return { chained };
  });
  if (typeof started === 'string') return started;
  try {
    return await fn({ uri: `nbd+unix:///view?socket=${sock}`, socket: sock }, started.chained);
  } finally {
    // stopping the server removes its exports (and ends a reader still connected)
    await qmp((c) => c.execute('nbd-server-stop')).catch(() => undefined);
    await fs.rm(sock, { force: true });
  }
}

/**
 * Pull a full copy of one disk into `dest`. Returns the refusal instead when this disk is not
 * pulled (the caller pushes it), before anything was written.
 */
export async function pullDisk(qmp: QmpExchange, d: ViewDisk, dest: string, o: PullOptions): Promise<{ bytes: number } | PullRefusal> {
  if (o.signal?.aborted) throw o.signal.reason instanceof Error ? o.signal.reason : new Error('copy stopped');
  return withViewExport(qmp, d, async (view, chained) => {
    if (chained) return 'backing-chain' as const;
    try {
      await runProgram(o.qemuImg, pullArgs(view.uri, dest, o.compress === true), {
        ...(o.signal ? { signal: o.signal } : {}),
        onStdout: (chunk) => {
          const f = parseProgress(chunk);
          if (f !== undefined) o.onProgress?.(Math.round(f * d.virtualSize), d.virtualSize);
        },
      });
    } catch (err) {
      if (o.signal?.aborted) throw o.signal.reason instanceof Error ? o.signal.reason : err;
      const why = err instanceof ProgramFailed ? err.stderr.trim().split('\n').pop() || err.message : (err as Error).message;
      throw new Error(`copying disk ${d.disk} out of its point-in-time view failed: ${why}`);
    }
    o.onProgress?.(d.virtualSize, d.virtualSize);
    return { bytes: (await fs.stat(dest)).size };
  });
}
