// A full copy pulled out of the point-in-time view: the VM's QEMU exports the view read-only on its
// own NBD server (a private unix socket of ours; one server per VM's view, an export per disk).
// Node-RED's process reads it itself where it can (pull-full.ts); otherwise (Compress, data too
// large for the in-process layout) one `qemu-img convert` of ours per disk reads it and writes the
// qcow2 in the staging directory, as this file does.
// That is one process per disk and nothing to set up before the data flows (measured per 32 MiB
// disk: 20 ms against 80 ms for a target made by qemu-img and served by a qemu-nbd the backup job
// writes to; `node dist/bench/fleet-paths.js`). The read-back check of such a copy (disk-copy.ts,
// compareWithView) reads the same export: the server is started once per view, and stopped when
// the view is released (view.ts stops a server that serves an export of ours, whoever releases:
// the live set, the guardian, recovery; a reader still connected then fails and exits).
// It keeps the push path's promises: the VM's QEMU only ever reads its own disk (the repository is
// opened by the reader alone, so a slow or full repository stalls the reader, never the VM), and
// guest writes go through the view's filter as before.
//
// Where pull is not used (the push path of disk-copy.ts is): an incremental with Compress or after
// a failed read (pull-incremental.ts pulls the others), a disk with a backing chain (QEMU 7.2's snapshot-access reports clusters of a backing file as
// holes, and qemu-img convert trusts that report: it would write zeros where the template has
// data), and a QEMU that already runs an NBD server that is not ours (QEMU runs one at a time).
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { QmpExchange } from './protocol';
import type { NamedNode } from './block-graph';
import { viewBroke, type ViewDisk, type ViewPlan } from './view';
import { parseProgress } from '../qemu-img';
import { lastErrorLine, runProgram } from '../../util/run';

export interface PullOptions {
  qemuImg: string;
  compress?: boolean;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
}

/** Why a disk is copied by push instead. */
export type PullRefusal = 'backing-chain' | 'nbd-server-busy' | `nbd-server-failed: ${string}`;

/** One disk's export on the view's server. */
export interface ViewExport {
  uri: string;
  socket: string;
  /** the export's name on the server */
  name: string;
  /** the disk has a backing chain: its block status through the view is not to be trusted */
  chained: boolean;
}

/** The view's NBD server: every disk's export, or why there is none. */
export type ViewServer = { socket: string; exports: Map<string, ViewExport> } | 'nbd-server-busy' | { refused: PullRefusal };

/** The export name of a disk on the server: built from its index, never from a user's name. */
const exportName = (d: ViewDisk) => `d${d.index}`;

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

/**
 * Start the view's NBD server with an export per disk, in one QMP exchange. QEMU runs one NBD
 * server at a time: when one runs already (not ours: a view's server is started once, by this
 * function), nothing is changed and the answer says so.
 */
export async function startViewServer(qmp: QmpExchange, plan: ViewPlan): Promise<ViewServer> {
  const socket = path.join(os.tmpdir(), `vmbackup-view-${randomBytes(6).toString('hex')}.sock`);
  return qmp(async (c) => {
    // backing_file names the node's backing image (backing_file_depth counts 0 in a flat listing)
    const nodes = await c.execute<(NamedNode & { backing_file?: string })[]>('query-named-block-nodes', { flat: true });
    try {
      await c.execute('nbd-server-start', { addr: { type: 'unix', data: { path: socket } } });
    } catch (err) {
      // "NBD server already running"; anything else (a socket QEMU may not create) is pushed too, and said
      if (/already running/i.test((err as Error).message)) return 'nbd-server-busy' as const;
      return { refused: `nbd-server-failed: ${(err as Error).message}` };
    }
    const exports = new Map<string, ViewExport>();
    try {
      for (const d of plan.disks) {
        const name = exportName(d);
        await c.execute('block-export-add', { type: 'nbd', id: `${d.jobId}-e`, 'node-name': d.accessNode, name, writable: false });
        const backing = nodes.find((n) => n['node-name'] === d.node)?.backing_file;
        exports.set(d.disk, {
          uri: `nbd+unix:///${name}?socket=${socket}`,
          socket,
          name,
          chained: typeof backing === 'string' && backing !== '',
        });
      }
    } catch (err) {
      await c.execute('nbd-server-stop').catch(() => undefined);
      throw err;
    }
    return { socket, exports };
  });
}

/** The server's socket file goes once the server is stopped (releaseView stops it). */
export async function removeServerSocket(server: ViewServer | undefined): Promise<void> {
  if (server && typeof server !== 'string' && 'socket' in server) await fs.rm(server.socket, { force: true });
}

/**
 * The disk's export on the view's server, or why the disk is not pulled (the caller pushes it):
 * the one check every pull makes first (this file's, pull-full.ts, pull-incremental.ts).
 */
export function exportFor(server: ViewServer, d: ViewDisk, signal?: AbortSignal): ViewExport | PullRefusal {
  if (signal?.aborted) throw signal.reason instanceof Error ? signal.reason : new Error('copy stopped');
  if (server === 'nbd-server-busy') return server;
  if ('refused' in server) return server.refused;
  const view = server.exports.get(d.disk);
  if (!view) throw new Error(`disk ${d.disk}: the view's NBD server has no export for it`);
  return view.chained ? 'backing-chain' : view;
}

/**
 * Pull a full copy of one disk into `dest`. Returns the refusal instead when this disk is not
 * pulled (the caller pushes it), before anything was written.
 */
export async function pullDisk(server: ViewServer, d: ViewDisk, dest: string, o: PullOptions): Promise<{ bytes: number } | PullRefusal> {
  const view = exportFor(server, d, o.signal);
  if (typeof view === 'string') return view;
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
    const why = lastErrorLine(err);
    throw new Error(`copying disk ${d.disk} out of its point-in-time view failed: ${why}${viewBroke(d, why)}`);
  }
  o.onProgress?.(d.virtualSize, d.virtualSize);
  return { bytes: (await fs.stat(dest)).size };
}
