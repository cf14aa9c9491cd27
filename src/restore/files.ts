// Single-file restore: files and directories listed or taken out of one disk of any point,
// without restoring the disk and without the host's kernel ever mounting the guest's file system.
// libguestfs (Debian libguestfs-tools, the library Proxmox-style file restore is built on) does
// the reading in a throwaway appliance VM: the backup's image is opened read-only under a
// temporary overlay, and a hostile or damaged file system can only crash that VM. What comes out
// is a tar stream, unpacked here by node-tar into a new folder (no absolute paths, no "..", nothing
// through a symbolic link; device nodes, FIFOs and symbolic links are left out and listed), then
// left as it is (output directory) or packed again as one tar file.
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import * as tar from 'tar';
import { fsyncDir } from '../repository/durable';
import { runProgram } from '../util/run';
import { checkLinks, verifyPoint } from './images';
import type { BackupDisk, BackupPoint } from './point';
import { pickDisks } from './point';
import { RestoreRefused } from './refused';
import { newTarget } from './targets';

export interface FileRestoreOptions {
  point: BackupPoint;
  disk?: string;
  /** the file system to read, as libguestfs names it (/dev/sda, /dev/sda1, /dev/vg/lv); default: the first one */
  filesystem?: string;
  /** absolute paths in the guest's file system */
  paths: string[];
  /** list: one directory's entries (the first path); extract: the paths into `output` */
  action: 'list' | 'extract';
  output?: { kind: 'directory' | 'tar'; target: string };
  roots: string[];
  /** where the appliance's temporary files go (default the system's) */
  verify?: boolean;
  /** accelerator for the appliance: tcg (default; KVM hangs on some hosts) or kvm */
  accel?: 'tcg' | 'kvm';
  timeoutMs?: number;
  guestfish?: string;
  onProgress?: (step: string) => void;
}

export interface ListedEntry {
  name: string;
  type: 'file' | 'directory' | 'symlink' | 'other';
  size: number;
  mode: string;
  /** a symbolic link's target */
  target?: string;
}

export interface FileRestoreResult {
  host: string;
  vm: string;
  backupId: string;
  disk: string;
  filesystem: string;
  filesystems: { device: string; type: string }[];
  action: 'list' | 'extract';
  entries?: ListedEntry[];
  output?: { kind: 'directory' | 'tar'; target: string };
  /** per requested path: what came out */
  extracted?: { path: string; as: string; files: number; bytes: number }[];
  /** entries left out (device nodes, FIFOs, symbolic links, unsafe names), with why */
  skipped: string[];
  ms: number;
}

const MOUNTABLE = /^(ext[234]|xfs|vfat|msdos|ntfs|btrfs|exfat|hfsplus|ufs|iso9660|udf)$/;

/** A guest path we pass on: absolute, no . or .. segments, no control characters. */
export function checkGuestPath(p: unknown, field = 'paths'): string {
  if (typeof p !== 'string' || !p.startsWith('/'))
    throw new RestoreRefused(field, `${JSON.stringify(p)} must be an absolute path in the guest`);
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(p)) throw new RestoreRefused(field, `${JSON.stringify(p)} holds a control character`);
  if (p.split('/').some((s) => s === '..' || s === '.')) throw new RestoreRefused(field, `${JSON.stringify(p)} has . or .. segments`);
  if (p.length > 4096) throw new RestoreRefused(field, 'is longer than 4096 characters');
  return p.length > 1 ? p.replace(/\/+$/, '') : p;
}

/** guestfish's own quoting: a double-quoted string with backslash escapes. */
function q(s: string): string {
  return `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

async function guestfish(
  o: FileRestoreOptions,
  disk: BackupDisk,
  script: string[],
  dir: string,
): Promise<{ stdout: string; stderr: string }> {
  const file = path.join(dir, 'script.gf');
  await fs.writeFile(file, script.join('\n') + '\n', { mode: 0o600 });
  const env = ['LIBGUESTFS_BACKEND=direct', `TMPDIR=${dir}`, ...(o.accel === 'kvm' ? [] : ['LIBGUESTFS_BACKEND_SETTINGS=force_tcg'])];
  try {
    return await runProgram('env', [...env, o.guestfish ?? 'guestfish', '--ro', '--format=qcow2', '-a', disk.file, '-f', file], {
      timeoutMs: o.timeoutMs ?? 1_800_000,
    });
  } catch (err) {
    const text = (err as { stderr?: string }).stderr ?? (err as Error).message;
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || /guestfish: (not found|No such file)/.test(text))
      throw new Error('guestfish is not installed (Debian: apt-get install libguestfs-tools)');
    throw new Error(`the file restore appliance failed: ${lastLines(text)}`);
  }
}

function lastLines(text: string): string {
  return text
    .trim()
    .split('\n')
    .filter((l) => !/^(Do:| {2}export|and run|For further| {2}http|You can also|into a bug|To see full|This usually means)/.test(l))
    .slice(-3)
    .join(' | ')
    .slice(0, 600);
}

/** `ll` (ls -la) lines of one directory as entries; `.` and `..` left out. */
export function parseLl(text: string): ListedEntry[] {
  const out: ListedEntry[] = [];
  for (const line of text.split('\n')) {
    const m = /^([-dlcbps])([rwxsStT-]{9})\S*\s+\d+\s+\S+\s+\S+\s+(\d+)(?:,\s*\d+)?\s+\S+\s+\S+\s+\S+\s(.*)$/.exec(line);
    if (!m) continue;
    let name = m[4];
    let target: string | undefined;
    if (m[1] === 'l' && name.includes(' -> ')) [name, target] = [name.slice(0, name.indexOf(' -> ')), name.slice(name.indexOf(' -> ') + 4)];
    if (name === '.' || name === '..') continue;
    out.push({
      name,
      type: m[1] === '-' ? 'file' : m[1] === 'd' ? 'directory' : m[1] === 'l' ? 'symlink' : 'other',
      size: Number(m[3]),
      mode: m[1] + m[2],
      ...(target !== undefined ? { target } : {}),
    });
  }
  return out;
}

export async function restoreFiles(o: FileRestoreOptions): Promise<FileRestoreResult> {
  const t0 = Date.now();
  const m = o.point.manifest;
  const [disk] = pickDisks(o.point, o.disk ? [o.disk] : undefined, 'disk');
  if (!disk) throw new RestoreRefused('disk', `backup ${m.backupId} holds no disk`);
  if (!Array.isArray(o.paths) || o.paths.length === 0) throw new RestoreRefused('paths', 'give at least one path in the guest');
  const paths = o.paths.map((p) => checkGuestPath(p));
  if (o.filesystem !== undefined && !/^\/dev\/[A-Za-z0-9/_.-]{1,200}$/.test(o.filesystem))
    throw new RestoreRefused('filesystem', `${JSON.stringify(o.filesystem)} is not a device name as libguestfs gives it (/dev/sda1)`);
  let target: string | undefined;
  if (o.action === 'extract') {
    if (!o.output) throw new RestoreRefused('output', 'is required to extract');
    target = await newTarget(o.output.target, o.roots, 'target');
    const names = paths.map((p) => (p === '/' ? 'root' : path.posix.basename(p)));
    const twice = names.find((n, i) => names.indexOf(n) !== i);
    if (twice) throw new RestoreRefused('paths', `two paths end in the same name "${twice}"; extract them one at a time`);
  }
  o.onProgress?.('verify');
  if (o.verify !== false) await verifyPoint(o.point);
  else await checkLinks(o.point);
  // the appliance's scratch: beside the target (same file system), else the system's temporary folder
  const scratchBase = target ? path.dirname(target) : (o.roots[0] ?? '/tmp');
  const scratch = path.join(scratchBase, `.file-restore-${randomBytes(4).toString('hex')}`);
  await fs.mkdir(scratch, { mode: 0o700 });
  try {
    o.onProgress?.('appliance');
    let filesystem = o.filesystem;
    let filesystems: { device: string; type: string }[] = [];
    if (!filesystem) {
      const listed = await guestfish(o, disk, ['run', 'list-filesystems'], scratch);
      filesystems = listed.stdout
        .split('\n')
        .map((l) => /^(\/dev\/\S+): (\S+)$/.exec(l.trim()))
        .filter((x): x is RegExpExecArray => x !== null)
        .map((x) => ({ device: x[1], type: x[2] }));
      filesystem = filesystems.find((f) => MOUNTABLE.test(f.type))?.device;
      if (!filesystem)
        throw new RestoreRefused(
          'filesystem',
          `disk ${disk.id} holds no file system this can read (${filesystems.map((f) => `${f.device}: ${f.type}`).join(', ') || 'none found'})`,
        );
    }
    const result: FileRestoreResult = {
      host: m.host,
      vm: m.vm,
      backupId: m.backupId,
      disk: disk.id,
      filesystem,
      filesystems,
      action: o.action,
      skipped: [],
      ms: 0,
    };
    if (o.action === 'list') {
      const r = await guestfish(o, disk, ['run', `mount-ro ${q(filesystem)} /`, `ll ${q(paths[0])}`], scratch);
      result.entries = parseLl(r.stdout);
      if (!result.entries.length && /error/.test(r.stderr)) throw new RestoreRefused('paths', `${paths[0]}: ${lastLines(r.stderr)}`);
      result.ms = Date.now() - t0;
      return result;
    }
    const script = ['run', `mount-ro ${q(filesystem)} /`];
    paths.forEach((p, i) => {
      script.push(`-tar-out ${q(p)} ${q(path.join(scratch, `${i}.tar`))}`, `-download ${q(p)} ${q(path.join(scratch, `${i}.file`))}`);
    });
    o.onProgress?.('extract');
    const r = await guestfish(o, disk, script, scratch);
    const stage = path.join(scratch, 'out');
    await fs.mkdir(stage);
    result.extracted = [];
    for (const [i, p] of paths.entries()) {
      const as = p === '/' ? 'root' : path.posix.basename(p);
      const tarFile = path.join(scratch, `${i}.tar`);
      const plain = path.join(scratch, `${i}.file`);
      if (await exists(tarFile)) {
        await fs.mkdir(path.join(stage, as));
        const counted = await unpack(tarFile, path.join(stage, as), result.skipped, p);
        result.extracted.push({ path: p, as, ...counted });
      } else if (await exists(plain)) {
        await fs.rename(plain, path.join(stage, as));
        result.extracted.push({ path: p, as, files: 1, bytes: (await fs.stat(path.join(stage, as))).size });
      } else {
        const why = r.stderr.split('\n').find((l) => l.includes(p)) ?? 'not found';
        throw new RestoreRefused('paths', `${p}: ${why.replace(/^.*?error: /, '')}`);
      }
    }
    o.onProgress?.('write');
    if (o.output!.kind === 'directory') {
      await fs.rename(stage, target!);
    } else {
      const tmpTar = path.join(scratch, 'out.tar');
      await tar.c(
        { file: tmpTar, cwd: stage, portable: true },
        result.extracted.map((e) => e.as),
      );
      await fs.link(tmpTar, target!);
    }
    await fsyncDir(path.dirname(target!));
    result.output = { kind: o.output!.kind, target: target! };
    result.ms = Date.now() - t0;
    return result;
  } finally {
    await fs.rm(scratch, { recursive: true, force: true });
  }
}

async function exists(p: string): Promise<boolean> {
  return fs.lstat(p).then(
    () => true,
    () => false,
  );
}

/** Unpack what the appliance sent, keeping only plain files, directories and hard links inside. */
async function unpack(file: string, cwd: string, skipped: string[], from: string): Promise<{ files: number; bytes: number }> {
  let files = 0;
  let bytes = 0;
  await tar.x({
    file,
    cwd,
    preservePaths: false,
    preserveOwner: false,
    strict: false,
    unlink: false,
    keep: true,
    filter: (p, entry) => {
      const type = (entry as tar.ReadEntry).type;
      if (type === 'File' || type === 'OldFile' || type === 'ContiguousFile') {
        files++;
        bytes += (entry as tar.ReadEntry).size ?? 0;
        return true;
      }
      if (type === 'Directory' || type === 'Link') return true;
      skipped.push(
        `${path.posix.join(from, p)}: ${type === 'SymbolicLink' ? `a symbolic link (to ${(entry as tar.ReadEntry).linkpath})` : `a ${type}`}; left out`,
      );
      return false;
    },
    onwarn: (_code, message) => skipped.push(`${from}: ${message}`),
  });
  return { files, bytes };
}
