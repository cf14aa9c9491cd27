// The consistency proof: what the guest's own file systems say of the moment the backup holds,
// read from the backup image without mounting it (no guest file system ever reaches the host
// kernel). A backup labelled application-consistent was taken with the guest's file systems
// frozen, so each must be clean: ext4 without `needs_recovery` (a freeze flushes the journal and
// clears it) and passing `e2fsck -fn`; XFS with a clean log (`xfs_logprint -t`) and passing
// `xfs_repair -n`; NTFS without its dirty bit (`ntfsinfo -m`). A file system the image shows in need
// of recovery contradicts the label: the backup is crash-consistent at best.
// Each partition is read through the whole chain by qemu-img into a sparse raw file in a scratch
// folder (the image's backing chain is checked before this runs), examined, and removed.
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ProgramFailed, runProgram } from '../util/run';
import { fsTypeOf, partitionsOf, type FsType } from './partitions';

export interface FsProof {
  /** partition number (1-based; 0 = the whole disk) */
  partition: number;
  type: FsType;
  /** clean: consistent on its own; needs-recovery: its journal/log must be replayed; damaged: the check found errors */
  state: 'clean' | 'needs-recovery' | 'damaged' | 'not-checked';
  detail: string;
}

export interface DiskProof {
  disk: string;
  file: string;
  filesystems: FsProof[];
  /** the label the image contradicts, with why */
  contradicts?: string;
  ms: number;
}

export interface ProofOptions {
  qemuImg?: string;
  /** where partitions are read out to (default the OS temporary folder) */
  scratchDir?: string;
  timeoutMs?: number;
}

const HEAD = 1 << 20;

/** Read `size` bytes at `offset` of the image (its whole chain) into a sparse raw file. */
async function readOut(file: string, offset: number, size: number, out: string, options: ProofOptions): Promise<void> {
  const opts = [
    'driver=raw',
    `offset=${offset}`,
    `size=${size}`,
    'file.driver=qcow2',
    'file.file.driver=file',
    `file.file.filename=${file}`,
  ];
  // a comma in a path would split the option list: qemu escapes it as ",,"
  const spec = opts.map((o) => o.replace(/,/g, ',,')).join(',');
  await runProgram(options.qemuImg ?? 'qemu-img', ['convert', '--image-opts', spec, '-O', 'raw', out], {
    timeoutMs: options.timeoutMs ?? 3600_000,
  });
}

async function tool(file: string, args: string[], timeoutMs = 3600_000): Promise<{ code: number; out: string }> {
  try {
    const r = await runProgram(file, args, { timeoutMs });
    return { code: 0, out: `${r.stdout}\n${r.stderr}` };
  } catch (err) {
    if (err instanceof ProgramFailed && typeof err.code === 'number') return { code: err.code, out: err.stderr };
    throw err;
  }
}

const lastLines = (text: string, n = 2) =>
  text
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .slice(-n)
    .join(' | ')
    .slice(0, 300);

async function proveExt(raw: string): Promise<Omit<FsProof, 'partition' | 'type'>> {
  const head = await tool('dumpe2fs', ['-h', raw]);
  if (head.code !== 0) return { state: 'damaged', detail: `dumpe2fs cannot read its superblock: ${lastLines(head.out)}` };
  const features = /Filesystem features:\s*(.*)/.exec(head.out)?.[1] ?? '';
  const state = /Filesystem state:\s*(.*)/.exec(head.out)?.[1]?.trim() ?? 'unknown';
  if (/\bneeds_recovery\b/.test(features))
    return { state: 'needs-recovery', detail: `ext4 has needs_recovery set (its journal holds writes not yet applied; state ${state})` };
  const fsck = await tool('e2fsck', ['-fn', raw]);
  // e2fsck: 0 clean, 4 errors left uncorrected (-n), 8 operational error
  if (fsck.code === 0) return { state: 'clean', detail: `ext4 clean (no needs_recovery; e2fsck -fn passes; state ${state})` };
  return { state: 'damaged', detail: `e2fsck -fn exit ${fsck.code}: ${lastLines(fsck.out)}` };
}

async function proveXfs(raw: string): Promise<Omit<FsProof, 'partition' | 'type'>> {
  const log = await tool('xfs_logprint', ['-t', raw]);
  const logState = /state:\s*<(\w+)>/.exec(log.out)?.[1];
  if (logState && logState !== 'CLEAN') return { state: 'needs-recovery', detail: `xfs log is ${logState} (writes to replay)` };
  const repair = await tool('xfs_repair', ['-n', '-f', raw]);
  if (repair.code === 0) return { state: 'clean', detail: `xfs log ${logState ?? 'unread'}; xfs_repair -n passes` };
  if (/log which needs to be replayed|dirty log/i.test(repair.out))
    return { state: 'needs-recovery', detail: `xfs_repair -n: ${lastLines(repair.out)}` };
  return { state: 'damaged', detail: `xfs_repair -n exit ${repair.code}: ${lastLines(repair.out)}` };
}

async function proveNtfs(raw: string): Promise<Omit<FsProof, 'partition' | 'type'>> {
  const info = await tool('ntfsinfo', ['-m', raw]);
  const flags = /Volume Flags:\s*0x([0-9a-f]+)/i.exec(info.out)?.[1];
  if (flags === undefined) return { state: 'not-checked', detail: `ntfsinfo did not show the volume flags: ${lastLines(info.out)}` };
  // VOLUME_IS_DIRTY: Windows did not close it cleanly (chkdsk runs at the next boot)
  if (parseInt(flags, 16) & 1) return { state: 'needs-recovery', detail: `NTFS volume dirty bit set (flags 0x${flags})` };
  return { state: 'clean', detail: `NTFS dirty bit clear (flags 0x${flags})` };
}

const PROVERS: Record<
  Exclude<FsType, 'unknown'>,
  { tool: string; prove: (raw: string) => Promise<Omit<FsProof, 'partition' | 'type'>> }
> = {
  ext: { tool: 'dumpe2fs', prove: proveExt },
  xfs: { tool: 'xfs_repair', prove: proveXfs },
  ntfs: { tool: 'ntfsinfo', prove: proveNtfs },
};

async function haveTool(name: string): Promise<boolean> {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':').concat(['/usr/sbin', '/sbin'])) {
    if (
      await fs.access(path.join(dir, name)).then(
        () => true,
        () => false,
      )
    )
      return true;
  }
  return false;
}

/** The file systems of one disk of a backup (`file`: its qcow2, the chain checked already). */
export async function proveDisk(
  disk: string,
  file: string,
  virtualSize: number,
  label: string,
  options: ProofOptions = {},
): Promise<DiskProof> {
  const t0 = Date.now();
  const scratch = await fs.mkdtemp(path.join(options.scratchDir ?? os.tmpdir(), `vmbackup-proof-${randomBytes(3).toString('hex')}-`));
  const proof: DiskProof = { disk, file, filesystems: [], ms: 0 };
  try {
    const headFile = path.join(scratch, 'head.raw');
    await readOut(file, 0, Math.min(HEAD, virtualSize), headFile, options);
    const head = await fs.readFile(headFile);
    for (const p of partitionsOf(head, virtualSize)) {
      const raw = path.join(scratch, `part-${p.index}.raw`);
      const startLen = Math.min(65536, p.size);
      const start =
        p.offset + startLen <= head.length
          ? head.subarray(p.offset, p.offset + startLen)
          : await (async () => {
              await readOut(file, p.offset, startLen, raw, options);
              return fs.readFile(raw);
            })();
      const type = fsTypeOf(start);
      if (type === 'unknown') {
        proof.filesystems.push({ partition: p.index, type, state: 'not-checked', detail: 'no ext, xfs or NTFS file system found' });
        continue;
      }
      if (!(await haveTool(PROVERS[type].tool))) {
        proof.filesystems.push({ partition: p.index, type, state: 'not-checked', detail: `${PROVERS[type].tool} is not installed` });
        continue;
      }
      await readOut(file, p.offset, p.size, raw, options);
      try {
        proof.filesystems.push({ partition: p.index, type, ...(await PROVERS[type].prove(raw)) });
      } finally {
        await fs.rm(raw, { force: true });
      }
    }
  } finally {
    await fs.rm(scratch, { recursive: true, force: true });
  }
  if (label === 'application') {
    const bad = proof.filesystems.filter((f) => f.state === 'needs-recovery' || f.state === 'damaged');
    if (bad.length)
      proof.contradicts = `labelled application-consistent, but ${bad.map((f) => `${f.type} on ${f.partition ? `partition ${f.partition}` : 'the whole disk'}: ${f.detail}`).join('; ')}`;
  }
  proof.ms = Date.now() - t0;
  return proof;
}
