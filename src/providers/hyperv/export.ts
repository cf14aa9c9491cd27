// One disk out of the backup snapshot, as a qcow2 link (disk-copy.ts), with the checks that make
// the copy trustworthy: the VHDX is read through the runner (local file or SFTP), and when the
// copy ends, (1) the VHDX's header is read again and must be unchanged (Hyper-V rewrites its
// sequence number and write GUIDs whenever it opens the file for writing: a merge into it would),
// and (2) check-snapshot.ps1 must find the snapshot still there, on this node, with the parent's
// size and time of last write as they were when it was made. Otherwise the copy is removed and
// the set fails: a copy whose source changed under it is never kept.
import { promises as fs } from 'node:fs';
import type { ExportedFile, ExportOptions, Progress } from '../provider';
import { runProgram } from '../../util/run';
import { copyRangesToQcow2 } from './disk-copy';
import { HyperVError } from './errors';
import { changedRanges } from './rct';
import type { PowerShellRunner } from './runner';
import { str, toArray } from './values';
import { normaliseRanges, VhdxReader, type VhdxIdentity } from './vhdx';

export interface FileStamp {
  path: string;
  length: number;
  lastWrite: string;
}

/** What snapshot.ps1 said of the snapshot this process made (kept until it is released). */
export interface SnapshotFacts {
  snapshotId: string;
  recovery: boolean;
  /** the RCT record (reference point) this backup starts, made from the snapshot at release */
  record?: string;
  host?: string;
  parents: FileStamp[];
  configFiles: FileStamp[];
}

export interface ExportRequest {
  vmId: string;
  disk: string;
  base: string;
  format: string;
  virtualSize?: number;
  dest: string;
  facts: SnapshotFacts;
  /** the parent backup's RCT id for this disk: an incremental */
  limitId?: string;
  options: ExportOptions;
  timeoutMs: number;
  onProgress?: (p: Progress) => void;
  qemuImg?: string;
}

const sameIdentity = (a: VhdxIdentity, b: VhdxIdentity) =>
  a.sequenceNumber === b.sequenceNumber && a.fileWriteGuid === b.fileWriteGuid && a.dataWriteGuid === b.dataWriteGuid;

export async function exportFromSnapshot(runner: PowerShellRunner, q: ExportRequest): Promise<ExportedFile> {
  const copy = q.options.copy;
  if (q.format !== 'vhdx') {
    if (copy?.mode === 'incremental')
      throw new HyperVError('unsupported', `disk ${q.disk}: ${q.base} is a VHD: RCT tracks VHDX files only`);
    return exportVhd(runner, q);
  }
  const reader = await VhdxReader.open(await runner.openFile(q.base), q.base);
  try {
    const size = reader.info.virtualSize;
    let ranges = reader.allocatedRanges();
    let bytesChanged: number | undefined;
    if (copy?.mode === 'incremental') {
      const what = `GetVirtualDiskChanges of ${q.base}`;
      const result = await runner.run(
        'rct-changes.ps1',
        { Path: q.base, LimitId: q.limitId ?? '', Size: size, JobSeconds: Math.max(1, Math.floor(q.timeoutMs / 1000) - 30) },
        { timeoutMs: q.timeoutMs },
      );
      ranges = normaliseRanges(changedRanges(result, what), size, what);
      bytesChanged = ranges.reduce((n, r) => n + r.length, 0);
    }
    const { bytesRead } = await copyRangesToQcow2(reader, ranges, q.dest, {
      ...(q.qemuImg ? { qemuImg: q.qemuImg } : {}),
      ...(copy?.mode === 'incremental' ? { backing: copy.backing } : {}),
      ...(q.options.compress ? { compress: true } : {}),
      ...(q.options.signal ? { signal: q.options.signal } : {}),
      ...(q.onProgress ? { onProgress: q.onProgress } : {}),
    });
    try {
      await endCheck(runner, q, reader);
    } catch (err) {
      await fs.rm(q.dest, { force: true });
      throw err;
    }
    const { size: bytes } = await fs.stat(q.dest);
    return { path: q.dest, bytes, format: 'qcow2', virtualSize: size, bytesRead, ...(bytesChanged !== undefined ? { bytesChanged } : {}) };
  } finally {
    await reader.close().catch(() => undefined);
  }
}

/** The end-of-copy re-check (see the header of this file). */
async function endCheck(runner: PowerShellRunner, q: ExportRequest, reader: VhdxReader): Promise<void> {
  const now = await reader.identityNow();
  if (!sameIdentity(now, reader.info.identity)) {
    throw new HyperVError(
      'inconsistent',
      `disk ${q.disk}: ${q.base} was written while it was copied (VHDX header sequence ${reader.info.identity.sequenceNumber} -> ${now.sequenceNumber}): was the backup snapshot removed and merged into it? The copy is discarded`,
    );
  }
  await checkSnapshot(runner, q.vmId, q.facts, [q.base], q.timeoutMs);
}

/** check-snapshot.ps1: the snapshot still exists here, and the listed parents are as they were. */
export async function checkSnapshot(
  runner: PowerShellRunner,
  vmId: string,
  facts: SnapshotFacts,
  paths: string[],
  timeoutMs: number,
): Promise<void> {
  const r = (await runner.run(
    'check-snapshot.ps1',
    { VmId: vmId, SnapshotId: facts.snapshotId, Paths: paths.join('|') },
    { timeoutMs },
  )) as {
    VmFound?: unknown;
    SnapshotFound?: unknown;
    Host?: unknown;
    Parents?: unknown;
  } | null;
  if (r?.VmFound !== true)
    throw new HyperVError('inconsistent', `VM ${vmId} is no longer on ${facts.host ?? 'this host'}; the copy of its snapshot is discarded`);
  if (facts.host && str(r.Host) && str(r.Host)!.toLowerCase() !== facts.host.toLowerCase())
    throw new HyperVError(
      'inconsistent',
      `VM ${vmId}: its snapshot was made on ${facts.host}, but ${str(r.Host)} answered now; the copy is discarded`,
    );
  if (r.SnapshotFound !== true)
    throw new HyperVError(
      'inconsistent',
      `VM ${vmId}: the backup snapshot ${facts.snapshotId} was removed during the copy (its merge wrote into the file being read); the copy is discarded`,
    );
  for (const p of toArray<{ Path?: unknown; Length?: unknown; LastWriteTimeUtc?: unknown; Error?: unknown }>(r.Parents)) {
    const path = str(p.Path) ?? '';
    const before = facts.parents.find((f) => f.path.toLowerCase() === path.toLowerCase());
    if (!before) continue;
    if (str(p.Error) || p.Length !== before.length || str(p.LastWriteTimeUtc) !== before.lastWrite) {
      throw new HyperVError(
        'inconsistent',
        `VM ${vmId}: ${path} changed during the copy (size ${before.length} -> ${String(p.Length)}, last write ${before.lastWrite} -> ${str(p.LastWriteTimeUtc) ?? str(p.Error)}); the copy is discarded`,
      );
    }
  }
}

/** A VHD (not VHDX) parent: fetched whole, converted here (full only; RCT is VHDX-only). */
async function exportVhd(runner: PowerShellRunner, q: ExportRequest): Promise<ExportedFile> {
  const tmp = `${q.dest}.vhd-part`;
  try {
    const { bytes: bytesRead } = await runner.fetchFile(q.base, tmp, q.onProgress);
    await checkSnapshot(runner, q.vmId, q.facts, [q.base], q.timeoutMs);
    await runProgram(
      q.qemuImg ?? 'qemu-img',
      ['convert', '-q', '-f', 'vpc', '-O', 'qcow2', ...(q.options.compress ? ['-c'] : []), tmp, q.dest],
      {
        ...(q.options.signal ? { signal: q.options.signal } : {}),
      },
    );
    const { size: bytes } = await fs.stat(q.dest);
    return { path: q.dest, bytes, format: 'qcow2', ...(q.virtualSize !== undefined ? { virtualSize: q.virtualSize } : {}), bytesRead };
  } catch (err) {
    await fs.rm(q.dest, { force: true }).catch(() => undefined);
    throw err;
  } finally {
    await fs.rm(tmp, { force: true }).catch(() => undefined);
  }
}
