// One disk's chain in the repository, link by link: <vm folder>/<backupId>/<disk file>, each
// incremental's qcow2 backing file its parent's file of the same disk, as `../<parent>/<file>`.
// Shared by the parent search (parent.ts), the verifier and the restore command. Read-only.
// Before qemu-img is ever let follow a backing file (--backing-chain, check, convert), every
// backing string of the chain is read with plain `qemu-img info` (which never opens the backing
// file) and checked to be exactly the manifest's, relative and inside the VM's folder: no path
// named inside an image makes us open anything outside the repository.
import { promises as fs, type Stats } from 'node:fs';
import * as path from 'node:path';
import { assertManifest } from '../contract/validate';
import type { Manifest, ManifestFile } from '../contract/types';
import { ProgramFailed, runProgram } from '../util/run';

export const MANIFEST = 'manifest.json';
/** a manifest is a few KiB; refuse to parse anything absurd */
const MANIFEST_MAX_BYTES = 16 << 20;
/** no real chain is this long; a longer walk is a loop or damage */
export const MAX_CHAIN_DEPTH = 10000;

export interface ImageToolOptions {
  /** qemu-img program (default "qemu-img" on the PATH) */
  qemuImg?: string;
  /** per qemu-img run (default 10 min) */
  timeoutMs?: number;
}

export type LinkReason = 'parent-missing' | 'parent-invalid' | 'resized';

/** A broken link: the file it is about, what is wrong, and which full reason it would give. */
export interface LinkProblem {
  file: string;
  problem: string;
  reason: LinkReason;
}

export interface ChainLink {
  backupId: string;
  dir: string;
  manifest: Manifest;
  entry: ManifestFile;
  /** absolute path of the disk file */
  file: string;
}

export async function lstatOrUndefined(file: string): Promise<Stats | undefined> {
  try {
    return await fs.lstat(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** A backup folder's manifest, schema-checked; never through a symbolic link. */
export async function readManifestAt(
  dir: string,
): Promise<{ manifest: Manifest } | { missing: true; error: string } | { missing: false; error: string }> {
  const dst = await lstatOrUndefined(dir);
  if (!dst) return { missing: true, error: 'does not exist' };
  if (!dst.isDirectory())
    return { missing: false, error: dst.isSymbolicLink() ? 'is a symbolic link (not followed)' : 'is not a directory' };
  const file = path.join(dir, MANIFEST);
  const st = await lstatOrUndefined(file);
  if (!st) return { missing: false, error: `${MANIFEST} is missing` };
  if (!st.isFile()) return { missing: false, error: `${MANIFEST} is not a regular file` };
  if (st.size > MANIFEST_MAX_BYTES) return { missing: false, error: `${MANIFEST} is ${st.size} bytes; not a manifest` };
  try {
    return { manifest: assertManifest(JSON.parse(await fs.readFile(file, 'utf8'))) };
  } catch (err) {
    return {
      missing: false,
      error:
        err instanceof SyntaxError ? `${MANIFEST} is not valid JSON (${err.message})` : `${MANIFEST} is invalid: ${(err as Error).message}`,
    };
  }
}

/** The manifest's file of one disk (kind "disk", that disk id). */
export function diskEntryOf(manifest: Manifest, diskId: string): ManifestFile | undefined {
  return manifest.files.find((f) => f.kind === 'disk' && f.disk === diskId);
}

export interface ImageInfo {
  virtualSize?: number;
  format?: string;
  backingFilename?: string;
  backingFormat?: string;
  filename?: string;
}

function toInfo(raw: Record<string, unknown>): ImageInfo {
  const num = (v: unknown) => (typeof v === 'number' ? v : undefined);
  const str = (v: unknown) => (typeof v === 'string' ? v : undefined);
  return {
    virtualSize: num(raw['virtual-size']),
    format: str(raw.format),
    filename: str(raw.filename),
    backingFilename: str(raw['backing-filename']),
    backingFormat: str(raw['backing-filename-format']),
  };
}

/** `qemu-img info` of one image: reads its header only, never opens its backing file. */
export async function imageInfo(file: string, options: ImageToolOptions = {}): Promise<ImageInfo> {
  const { stdout } = await runProgram(options.qemuImg ?? 'qemu-img', ['info', '--output=json', '-f', 'qcow2', file], {
    timeoutMs: options.timeoutMs ?? 600_000,
  });
  return toInfo(JSON.parse(stdout) as Record<string, unknown>);
}

/** `qemu-img info --backing-chain`: opens every level. Call only on a chain whose links are checked. */
export async function backingChainInfo(file: string, options: ImageToolOptions = {}): Promise<ImageInfo[]> {
  const { stdout } = await runProgram(options.qemuImg ?? 'qemu-img', ['info', '--output=json', '--backing-chain', '-f', 'qcow2', file], {
    timeoutMs: options.timeoutMs ?? 600_000,
  });
  const list = JSON.parse(stdout) as unknown;
  if (!Array.isArray(list)) throw new Error('qemu-img info --backing-chain did not print a list');
  return list.map((x) => toInfo(x as Record<string, unknown>));
}

export function programDetail(err: unknown): string {
  return err instanceof ProgramFailed ? err.stderr.trim().split('\n').slice(-2).join(' | ').slice(0, 400) : (err as Error).message;
}

/**
 * Where `backing` (a backing file string read from `file`'s image) points, if it is one we accept:
 * relative, `../<parent backupId>/<plain name>`, landing in a sibling backup folder of the same VM.
 * Returns an error text otherwise.
 */
export function resolveBacking(file: string, backing: string, vmDir: string): { path: string } | { error: string } {
  if (path.isAbsolute(backing))
    return { error: `its backing file is the absolute path ${backing}; a chain must be relative (../<backupId>/<file>)` };
  const target = path.resolve(path.dirname(file), backing);
  const base = path.resolve(vmDir);
  if (!target.startsWith(base + path.sep)) return { error: `its backing file ${backing} leaves the VM's folder ${base}` };
  const rel = path.relative(base, target).split(path.sep);
  if (rel.length !== 2 || backing !== `../${rel[0]}/${rel[1]}`)
    return { error: `its backing file ${backing} is not ../<backupId>/<file> in the VM's folder` };
  return { path: target };
}

/**
 * One link by itself: `file` is the disk of `entry`, in backup folder `dir` under `vmDir`. Its image
 * header must name exactly the manifest's backing (an incremental) or no backing file (a full), in
 * qcow2 format, with the manifest's virtual size. The backing file is not opened.
 */
export async function checkOwnLink(
  file: string,
  entry: ManifestFile,
  vmDir: string,
  options: ImageToolOptions = {},
): Promise<{ info: ImageInfo; problem?: LinkProblem }> {
  let info: ImageInfo;
  try {
    info = await imageInfo(file, options);
  } catch (err) {
    return { info: {}, problem: { file, problem: `qemu-img info failed: ${programDetail(err)}`, reason: 'parent-invalid' } };
  }
  const bad = (problem: string, reason: LinkReason = 'parent-invalid') => ({ info, problem: { file, problem, reason } });
  if (entry.virtualSize !== undefined && entry.virtualSize > 0 && info.virtualSize !== entry.virtualSize) {
    return bad(`virtual size ${info.virtualSize} bytes, manifest says ${entry.virtualSize}`, 'resized');
  }
  const chain = entry.chain;
  if (!chain || chain.mode === 'full') {
    if (info.backingFilename) return bad(`has a backing file (${info.backingFilename}); a full backup disk must stand alone`);
    return { info };
  }
  if (!info.backingFilename) return bad(`has no backing file, but the manifest says it is an incremental on ${chain.backing}`);
  if (info.backingFilename !== chain.backing)
    return bad(`its backing file is "${info.backingFilename}", the manifest says "${chain.backing}"`);
  const where = resolveBacking(file, info.backingFilename, vmDir);
  if ('error' in where) return bad(where.error);
  if (path.basename(path.dirname(where.path)) !== chain.parent)
    return bad(`its backing file ${info.backingFilename} is not in its parent backup ${chain.parent}`);
  // a backing file without its format is probed by qemu: a raw file could then pass for anything
  if (info.backingFormat !== 'qcow2')
    return bad(`its backing file's format is ${info.backingFormat ? `"${info.backingFormat}"` : 'not recorded'}; it must be qcow2`);
  return { info };
}

/** The parent link of `child` (an incremental entry): its folder, manifest and same disk, checked against the child. */
export async function parentLink(child: ChainLink, vmDir: string): Promise<{ link: ChainLink } | { problem: LinkProblem }> {
  const chain = child.entry.chain!;
  const parentId = chain.parent!;
  const dir = path.join(vmDir, parentId);
  const read = await readManifestAt(dir);
  if (!('manifest' in read)) {
    return {
      problem: {
        file: dir,
        problem: `parent ${parentId} of ${child.backupId} (disk ${child.entry.disk}): ${read.error}`,
        reason: read.missing ? 'parent-missing' : 'parent-invalid',
      },
    };
  }
  const m = read.manifest;
  if (m.backupId !== parentId || m.vm !== child.manifest.vm || m.host !== child.manifest.host) {
    return {
      problem: {
        file: path.join(dir, MANIFEST),
        problem: `parent ${parentId} of ${child.backupId}: its manifest describes ${m.host}/${m.vm}/${m.backupId}`,
        reason: 'parent-invalid',
      },
    };
  }
  const entry = diskEntryOf(m, child.entry.disk!);
  if (!entry) {
    return {
      problem: {
        file: path.join(dir, MANIFEST),
        problem: `parent ${parentId} of ${child.backupId} lists no disk ${child.entry.disk}`,
        reason: 'parent-invalid',
      },
    };
  }
  if (`../${parentId}/${entry.name}` !== chain.backing) {
    return {
      problem: {
        file: child.file,
        problem: `its manifest's backing ${chain.backing} is not the parent's file of disk ${child.entry.disk} (../${parentId}/${entry.name})`,
        reason: 'parent-invalid',
      },
    };
  }
  if (entry.virtualSize !== child.entry.virtualSize) {
    return {
      problem: {
        file: path.join(dir, entry.name),
        problem: `parent ${parentId} has disk ${child.entry.disk} at ${entry.virtualSize} bytes, ${child.backupId} at ${child.entry.virtualSize}: the chain's virtual size changed`,
        reason: 'resized',
      },
    };
  }
  const parentDepth = entry.chain?.depth ?? 0;
  // a prune that merged links under the parent after this child was planned shortened the chain
  // below it: the child keeps the depth it was made with (deeper), the chain itself is whole
  const mergedSince = (m.merges ?? []).some((x) => Date.parse(x.at) > Date.parse(child.manifest.createdAt));
  if (chain.depth !== parentDepth + 1 && !(mergedSince && chain.depth > parentDepth + 1)) {
    return {
      problem: {
        file: path.join(child.dir, MANIFEST),
        problem: `disk ${child.entry.disk} has depth ${chain.depth} but its parent ${parentId} has depth ${parentDepth}`,
        reason: 'parent-invalid',
      },
    };
  }
  const file = path.join(dir, entry.name);
  const st = await lstatOrUndefined(file);
  if (!st)
    return { problem: { file, problem: `parent ${parentId}'s file of disk ${child.entry.disk} is missing`, reason: 'parent-missing' } };
  if (!st.isFile())
    return {
      problem: {
        file,
        problem: `parent ${parentId}'s file of disk ${child.entry.disk} is not a regular file (symbolic links are not followed)`,
        reason: 'parent-invalid',
      },
    };
  return { link: { backupId: parentId, dir, manifest: m, entry, file } };
}

/**
 * Whether `parent` was made before `child`. Backup ids sort by time (to the second) and a parent is
 * always made before its child; two backups within one second compare by their manifests' times.
 * With a set of links seen, no chain walk can loop.
 */
export function isEarlier(parent: ChainLink, child: ChainLink): boolean {
  const [p, c] = [parent.backupId.slice(0, 16), child.backupId.slice(0, 16)];
  return (
    p < c ||
    (p === c && parent.backupId !== child.backupId && Date.parse(parent.manifest.completedAt) <= Date.parse(child.manifest.createdAt))
  );
}

/** The problem of a parent that is not an earlier backup than its child (a loop, or damage). */
export function notEarlier(child: ChainLink, parent: ChainLink): LinkProblem {
  return {
    file: child.file,
    problem: `its parent ${parent.backupId} is not an earlier backup than ${child.backupId}`,
    reason: 'parent-invalid',
  };
}

/**
 * From `top` down to its full: every link's manifest, backing string and size checked without
 * letting qemu-img follow anything, then `qemu-img info --backing-chain` of the top (now safe),
 * which must open exactly these files with one virtual size.
 */
export async function walkChain(
  top: ChainLink,
  vmDir: string,
  options: ImageToolOptions = {},
): Promise<{ links: ChainLink[] } | { problem: LinkProblem; links: ChainLink[] }> {
  const links: ChainLink[] = [top];
  const seen = new Set<string>([top.backupId]);
  for (let link = top; ;) {
    const own = await checkOwnLink(link.file, link.entry, vmDir, options);
    if (own.problem) return { problem: own.problem, links };
    if (!link.entry.chain || link.entry.chain.mode === 'full') break;
    const next = await parentLink(link, vmDir);
    if ('problem' in next) return { problem: next.problem, links };
    if (!isEarlier(next.link, link) || seen.has(next.link.backupId) || links.length > MAX_CHAIN_DEPTH) {
      return { problem: notEarlier(link, next.link), links };
    }
    seen.add(next.link.backupId);
    links.push(next.link);
    link = next.link;
  }
  const problem = await checkBackingChain(
    top.file,
    links.map((l) => l.file),
    top.entry.virtualSize,
    options,
  );
  return problem ? { problem, links } : { links };
}

/** `qemu-img info --backing-chain` of `file` opens exactly `expected` (top first), all of `virtualSize`. */
export async function checkBackingChain(
  file: string,
  expected: string[],
  virtualSize: number | undefined,
  options: ImageToolOptions = {},
): Promise<LinkProblem | undefined> {
  let levels: ImageInfo[];
  try {
    levels = await backingChainInfo(path.resolve(file), options);
  } catch (err) {
    const detail = programDetail(err);
    return {
      file,
      problem: `qemu-img info --backing-chain failed: ${detail}`,
      reason: /No such file/i.test(detail) ? 'parent-missing' : 'parent-invalid',
    };
  }
  if (levels.length !== expected.length) {
    return {
      file,
      problem: `qemu-img info --backing-chain shows ${levels.length} level${levels.length === 1 ? '' : 's'}, the manifests ${expected.length}`,
      reason: 'parent-invalid',
    };
  }
  for (let i = 0; i < levels.length; i++) {
    // qemu-img names level i+1 by joining level i's directory and its backing string: with an
    // absolute top, every level is named by its absolute path
    const opened = levels[i].filename ? path.resolve(levels[i].filename!) : undefined;
    if (i > 0 && opened !== path.resolve(expected[i])) {
      return {
        file: expected[i],
        problem: `qemu-img opened ${levels[i].filename} at level ${i} of ${file}'s chain, not this file`,
        reason: 'parent-invalid',
      };
    }
    if (virtualSize !== undefined && levels[i].virtualSize !== virtualSize) {
      return {
        file: expected[i],
        problem: `virtual size ${levels[i].virtualSize} bytes at level ${i} of the chain of ${file}, the top has ${virtualSize}`,
        reason: 'resized',
      };
    }
  }
  return undefined;
}
