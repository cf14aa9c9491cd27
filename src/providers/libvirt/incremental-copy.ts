// An incremental copy out of libvirt's pull-mode export. backup-begin with `<incremental>` on a
// disk adds the NBD meta context qemu:dirty-bitmap:backup-<disk>: what changed since the parent's
// checkpoint. Only those extents are copied, into a qcow2 whose backing file is the parent's copy,
// so the file holds only the changed clusters (the chain format of docs/incremental.md).
//
// How, measured on Debian 12 (nbdkit 1.32, libnbd 1.14, qemu 7.2):
// - nbdinfo --map lists the dirty extents (qemu-img map with x-dirty-bitmap reports the bitmap
//   inverted, as data:false: not used);
// - nbdkit's extentlist filter over the export says "data" for exactly those extents and "hole,
//   zero" for the rest; nbdcopy --destination-is-zero then writes nothing over the clean areas
//   (they stay unallocated, read through the backing file) and -S 0 writes a dirty block that
//   became zero as data (else it would read through to the parent's old data);
// - qemu-nbd serves the new qcow2; both servers are nbdcopy's own children (socket activation);
// - compressed (the copy node's Compress): qemu-nbd serves the qcow2 through QEMU's compress
//   filter, so every cluster written is a compressed cluster (`qemu-img check`: "100.00%
//   compressed clusters"); the extents are grown to whole clusters, as the filter needs.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { createQcow2 } from '../../repository/qcow2-create';
import { runProgram } from '../../util/run';

export interface IncrementalCopyOptions {
  qemuImg: string;
  /** the NBD export: socket path and export name (the disk's target) */
  socket: string;
  exportName: string;
  virtualSize: number;
  /** the qcow2 backing file string of the new file (relative to it) */
  backing: string;
  signal?: AbortSignal;
  onProgress?: (done: number, total: number) => void;
  /** qcow2 compressed clusters (QEMU's compress filter under qemu-nbd) */
  compress?: boolean;
}

/** qcow2's default cluster: a compressed cluster is written whole, in one write */
const CLUSTER = 65536;

/**
 * The extents grown to whole clusters (merged where they meet), within the disk: QEMU's compress
 * filter takes only cluster-aligned writes. The clusters' unchanged parts are copied as they are
 * now, the same bytes the parent holds.
 */
export function clusterAligned(extents: readonly Extent[], size: number, cluster = CLUSTER): Extent[] {
  const out: Extent[] = [];
  for (const e of extents) {
    const start = Math.floor(e.offset / cluster) * cluster;
    const end = Math.min(size, Math.ceil((e.offset + e.length) / cluster) * cluster);
    const last = out[out.length - 1];
    if (last && start <= last.offset + last.length) last.length = Math.max(last.length, end - last.offset);
    else out.push({ offset: start, length: end - start });
  }
  return out;
}

export interface Extent {
  offset: number;
  length: number;
}

/** The dirty extents from `nbdinfo --map` output (offset, length, type, description per line; type bit 0 = dirty). */
export function parseDirtyMap(out: string): Extent[] {
  const extents: Extent[] = [];
  for (const line of out.split('\n')) {
    const m = /^\s*(\d+)\s+(\d+)\s+(\d+)/.exec(line);
    if (!m) continue;
    const [offset, length, type] = [Number(m[1]), Number(m[2]), Number(m[3])];
    if ((type & 1) === 0 || length === 0) continue;
    const last = extents[extents.length - 1];
    if (last && last.offset + last.length === offset) last.length += length;
    else extents.push({ offset, length });
  }
  return extents;
}

export const dirtyContext = (disk: string) => `qemu:dirty-bitmap:backup-${disk}`;

/** Copy the changed extents; returns the bytes they cover. */
export async function copyChanged(dest: string, o: IncrementalCopyOptions): Promise<{ bytesChanged: number }> {
  const uri = `nbd+unix:///${encodeURIComponent(o.exportName)}?socket=${o.socket}`;
  const map = await runProgram('nbdinfo', [`--map=${dirtyContext(o.exportName)}`, uri], {
    ...(o.signal ? { signal: o.signal } : {}),
    timeoutMs: 600_000,
  });
  const extents = parseDirtyMap(map.stdout);
  const bytesChanged = extents.reduce((n, e) => n + e.length, 0);
  // compressed clusters in zstd (QEMU >= 5.1), as the full's `qemu-img convert -c` writes them
  await createQcow2(dest, { size: o.virtualSize, backing: o.backing, zstd: o.compress === true }, o.qemuImg);
  if (extents.length === 0) {
    o.onProgress?.(0, 0);
    return { bytesChanged };
  }
  // beside the new file, never in a shared directory: it names what the copy reads
  const list = path.join(path.dirname(dest), `.${path.basename(dest)}.extents`);
  const copied = o.compress ? clusterAligned(extents, o.virtualSize) : extents;
  await fs.writeFile(list, copied.map((e) => `${e.offset} ${e.length}`).join('\n') + '\n', { mode: 0o600 });
  try {
    o.onProgress?.(0, bytesChanged);
    await runProgram(
      'nbdcopy',
      [
        '--destination-is-zero',
        '-S',
        '0',
        '--request-size=65536',
        '--',
        '[',
        'nbdkit',
        '--exit-with-parent',
        '--filter=extentlist',
        'nbd',
        `socket=${o.socket}`,
        `export=${o.exportName}`,
        `extentlist=${list}`,
        ']',
        '[',
        'qemu-nbd',
        // compressed: each cluster nbdcopy writes goes through QEMU's compress filter
        ...(o.compress
          ? ['--image-opts', `driver=compress,file.driver=qcow2,file.file.driver=file,file.file.filename=${optsValue(dest)}`]
          : ['-f', 'qcow2', dest]),
        ']',
      ],
      { ...(o.signal ? { signal: o.signal } : {}) },
    );
    o.onProgress?.(bytesChanged, bytesChanged);
  } finally {
    await fs.rm(list, { force: true });
  }
  return { bytesChanged };
}

/** A value inside QEMU's key=value,... options: a comma is written twice. */
export function optsValue(v: string): string {
  return v.replace(/,/g, ',,');
}
