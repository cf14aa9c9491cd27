// One disk of a Hyper-V backup, written on this side as a qcow2 in the chain format every
// provider shares (docs/incremental.md): a full stands alone; an incremental holds only the ranges
// Resilient Change Tracking named, over a relative backing file (the same disk in the parent
// backup). The bytes come out of the checkpoint's read-only parent VHDX by VhdxReader, through the
// runner's random reads (local file or SFTP): only the data crosses the network.
//
// How the qcow2 is made from the ranges, on this machine:
// - the ranges are written at their offsets into a sparse raw file beside the destination;
// - full: qemu-img convert raw -> qcow2 (zeros stay unallocated; -c compresses);
// - incremental: the same nbdkit extentlist + nbdcopy path as the libvirt provider
//   (src/providers/libvirt/incremental-copy.ts): only the listed ranges are written into a
//   qcow2 backed by the parent, -S 0 so a range that became zeros is written as data (else it would
//   read through to the parent's old data); with compression, that file is then rewritten by
//   qemu-img convert -c -B (unallocated clusters stay unallocated, read through the backing file).
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Progress } from '../provider';
import { runProgram } from '../../util/run';
import { HyperVError } from './errors';
import type { Range, VhdxReader } from './vhdx';

export interface QcowCopyOptions {
  qemuImg?: string;
  /** the qcow2 backing file string (relative to dest): an incremental; absent: a full */
  backing?: string;
  compress?: boolean;
  signal?: AbortSignal;
  onProgress?: (p: Progress) => void;
  /** bytes per read from the host; default 8 MiB */
  chunk?: number;
}

export interface QcowCopyResult {
  bytesRead: number;
}

const REQUEST = 65536;

/** Ranges widened to multiples of `unit` (clipped to the disk), merged. */
export function alignRanges(ranges: readonly Range[], unit: number, size: number): Range[] {
  const out: Range[] = [];
  for (const r of [...ranges].sort((a, b) => a.offset - b.offset)) {
    const start = Math.floor(r.offset / unit) * unit;
    const end = Math.min(size, Math.ceil((r.offset + r.length) / unit) * unit);
    const last = out[out.length - 1];
    if (last && start <= last.offset + last.length) last.length = Math.max(last.length, end - last.offset);
    else out.push({ offset: start, length: end - start });
  }
  return out;
}

const tmpBeside = (dest: string, tag: string) =>
  path.join(path.dirname(dest), `.${path.basename(dest)}.${tag}-${randomBytes(4).toString('hex')}`);

/** Read `ranges` of the VHDX into a sparse raw file of the disk's size; returns the bytes read. */
export async function readRangesInto(reader: VhdxReader, ranges: readonly Range[], raw: string, o: QcowCopyOptions): Promise<number> {
  const chunk = o.chunk ?? 8 << 20;
  const total = ranges.reduce((n, r) => n + r.length, 0);
  const out = await fs.open(raw, 'wx', 0o600);
  let done = 0;
  try {
    await out.truncate(reader.info.virtualSize);
    o.onProgress?.({ done, total });
    for (const r of ranges) {
      for (let at = r.offset; at < r.offset + r.length; at += chunk) {
        if (o.signal?.aborted) throw new HyperVError('inconsistent', `copy of ${reader.source} stopped: the backup set was aborted`);
        const n = Math.min(chunk, r.offset + r.length - at);
        const data = await reader.read(at, n);
        await out.write(data, 0, n, at);
        done += n;
        o.onProgress?.({ done, total });
      }
    }
    await out.sync();
  } finally {
    await out.close();
  }
  return done;
}

/**
 * Write `ranges` of the VHDX as the qcow2 `dest`. The file appears only when complete (the
 * pipeline writes into its staging folder and renames it there; a failure removes every part).
 */
export async function copyRangesToQcow2(
  reader: VhdxReader,
  ranges: readonly Range[],
  dest: string,
  o: QcowCopyOptions,
): Promise<QcowCopyResult> {
  const qemuImg = o.qemuImg ?? 'qemu-img';
  const raw = tmpBeside(dest, 'raw');
  const temps = [raw];
  const run = (file: string, args: string[]) => runProgram(file, args, { ...(o.signal ? { signal: o.signal } : {}) });
  try {
    // an incremental is written in whole 64 KiB requests (nbdcopy --request-size): each range is
    // widened to them, the widening read from the same point-in-time image (never zeros)
    const wanted = o.backing ? alignRanges(ranges, REQUEST, reader.info.virtualSize) : [...ranges];
    const bytesRead = await readRangesInto(reader, wanted, raw, o);
    const size = String(reader.info.virtualSize);
    if (!o.backing) {
      await run(qemuImg, ['convert', '-q', '-f', 'raw', '-O', 'qcow2', ...(o.compress ? ['-c'] : []), raw, dest]);
      return { bytesRead };
    }
    // incremental: only the ranges become allocated clusters of a qcow2 over the parent's file
    const target = o.compress ? tmpBeside(dest, 'qcow2') : dest;
    if (o.compress) temps.push(target);
    await run(qemuImg, ['create', '-q', '-f', 'qcow2', '-b', o.backing, '-F', 'qcow2', target, size]);
    if (wanted.length > 0) {
      const list = tmpBeside(dest, 'extents');
      temps.push(list);
      await fs.writeFile(list, wanted.map((r) => `${r.offset} ${r.length}`).join('\n') + '\n', { mode: 0o600, flag: 'wx' });
      await run('nbdcopy', [
        '--destination-is-zero',
        '-S',
        '0',
        `--request-size=${REQUEST}`,
        '--',
        '[',
        'nbdkit',
        '--exit-with-parent',
        '--filter=extentlist',
        'file',
        `file=${raw}`,
        `extentlist=${list}`,
        ']',
        '[',
        'qemu-nbd',
        '-f',
        'qcow2',
        target,
        ']',
      ]);
    }
    if (o.compress) {
      // -B: the target's backing file; clusters the source leaves unallocated stay unallocated
      await run(qemuImg, ['convert', '-q', '-c', '-f', 'qcow2', '-O', 'qcow2', '-B', o.backing, '-F', 'qcow2', target, dest]);
    }
    return { bytesRead };
  } catch (err) {
    await fs.rm(dest, { force: true }).catch(() => undefined);
    throw err;
  } finally {
    for (const t of temps) await fs.rm(t, { force: true }).catch(() => undefined);
  }
}
