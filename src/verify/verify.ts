// Verify a published backup the way a restorer would before trusting it: the manifest is valid,
// every file it lists is there with its size and sha256, nothing else is there, and every disk
// image passes `qemu-img check` (a full: standalone, no backing file, the virtual size the manifest
// says; an incremental: its whole chain down to its full, see chain/verify-chain.ts).
// Read-only. Nothing outside the directory given is followed: symbolic links and anything that is
// not a plain file are reported, never opened.
import { promises as fs, type Stats } from 'node:fs';
import * as path from 'node:path';
import { vmChain } from '../chain/policy';
import { verifyIncrementalDisk } from '../chain/verify-chain';
import { assertManifest } from '../contract/validate';
import type { Manifest } from '../contract/types';
import { sha256File, STAGING_PREFIX } from '../repository/repository';
import { SIDECARS } from '../repository/sidecars';
import { ProgramFailed, runProgram } from '../util/run';

export interface VerifyOptions {
  /** qemu-img program (default "qemu-img" on the PATH) */
  qemuImg?: string;
  /** skip `qemu-img check` / `info` of the disk images (default false) */
  skipImageCheck?: boolean;
  /** per qemu-img run (default 10 min) */
  timeoutMs?: number;
}

/** One problem, always naming the file (absolute path) it is about. */
export interface VerifyProblem {
  file: string;
  problem: string;
}

export interface VerifiedFile {
  name: string;
  kind?: string;
  bytes?: number;
  sha256?: string;
  /** the file's size and sha256 match the manifest */
  contentOk: boolean;
  /** `qemu-img check` result of a disk image: ok, skipped (not a disk / not checkable) or failed */
  imageCheck?: 'ok' | 'leaks' | 'failed' | 'skipped';
}

export interface BackupReport {
  dir: string;
  ok: boolean;
  manifest?: Pick<Manifest, 'backupId' | 'host' | 'vm' | 'method' | 'consistency'> & {
    totalBytes?: number;
    chain?: { parent?: string; depth: number };
  };
  files: VerifiedFile[];
  problems: VerifyProblem[];
  /** not failures: e.g. leaked clusters, a backup moved away from <host>/<vm>/<backupId> */
  warnings: VerifyProblem[];
  ms: number;
}

export interface RepositoryReport {
  root: string;
  ok: boolean;
  backups: BackupReport[];
  /** problems of the repository itself (symbolic links, no backup found, ...) */
  problems: VerifyProblem[];
  warnings: VerifyProblem[];
  ms: number;
}

const MANIFEST = 'manifest.json';
/** a manifest is a few KiB; refuse to parse anything absurd */
const MANIFEST_MAX_BYTES = 16 << 20;

/** qemu-img's name for a disk format, or undefined if `qemu-img check` cannot check it. */
function checkableFormat(name: string, format: string | undefined): string | undefined {
  const f = (format ?? path.extname(name).slice(1)).toLowerCase();
  if (f === 'qcow2' || f === 'vhdx' || f === 'qed' || f === 'vdi' || f === 'parallels') return f;
  return undefined;
}

async function lstatOrUndefined(file: string): Promise<Stats | undefined> {
  try {
    return await fs.lstat(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

function describeType(st: Stats): string {
  if (st.isSymbolicLink()) return 'a symbolic link (not followed)';
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  if (st.isBlockDevice() || st.isCharacterDevice()) return 'a device';
  return 'not a regular file';
}

/** Check one published backup directory (`<repository>/<host>/<vm>/<backupId>/`), with its chain's parents. */
export function verifyBackup(dir: string, options: VerifyOptions = {}): Promise<BackupReport> {
  return verifyCached(dir, options, new Map());
}

/**
 * A verifier for one run over many backups: each backup folder is verified once, whether named or
 * reached as some chain's parent (a full under ten incrementals is hashed once, not eleven times).
 */
export function runVerifier(options: VerifyOptions = {}): (dir: string) => Promise<BackupReport> {
  const cache: ReportCache = new Map();
  return (dir) => verifyCached(dir, options, cache);
}

/** every backup folder verified once per run, whether named or reached as some chain's parent */
type ReportCache = Map<string, Promise<BackupReport>>;

function verifyCached(dir: string, options: VerifyOptions, cache: ReportCache): Promise<BackupReport> {
  const key = path.resolve(dir);
  let report = cache.get(key);
  if (!report) {
    report = verifyOne(key, options, cache);
    cache.set(key, report);
  }
  return report;
}

async function verifyOne(dir: string, options: VerifyOptions, cache: ReportCache): Promise<BackupReport> {
  const t0 = Date.now();
  const root = path.resolve(dir);
  const report: BackupReport = { dir: root, ok: false, files: [], problems: [], warnings: [], ms: 0 };
  const fail = (file: string, problem: string) => report.problems.push({ file, problem });
  const warn = (file: string, problem: string) => report.warnings.push({ file, problem });
  const finish = () => {
    report.ok = report.problems.length === 0;
    report.ms = Date.now() - t0;
    return report;
  };

  const top = await lstatOrUndefined(root);
  if (!top) {
    fail(root, 'does not exist');
    return finish();
  }
  if (!top.isDirectory()) {
    fail(root, `is ${top.isSymbolicLink() ? 'a symbolic link (not followed)' : 'not a directory'}`);
    return finish();
  }

  // manifest.json: a plain file, valid JSON, valid against the manifest schema
  const manifestPath = path.join(root, MANIFEST);
  let manifest: Manifest | undefined;
  const mst = await lstatOrUndefined(manifestPath);
  if (!mst) fail(manifestPath, 'missing');
  else if (!mst.isFile()) fail(manifestPath, `is ${describeType(mst)}`);
  else if (mst.size > MANIFEST_MAX_BYTES) fail(manifestPath, `is ${mst.size} bytes; not a manifest`);
  else {
    try {
      const doc: unknown = JSON.parse(await fs.readFile(manifestPath, 'utf8'));
      manifest = assertManifest(doc);
    } catch (err) {
      fail(manifestPath, err instanceof SyntaxError ? `not valid JSON (${err.message})` : `invalid: ${(err as Error).message}`);
    }
  }

  let entries: string[] = [];
  try {
    entries = await fs.readdir(root);
  } catch (err) {
    fail(root, `cannot be listed (${(err as Error).message})`);
  }

  if (!manifest) {
    // nothing can be trusted without a valid manifest; still say what is there
    for (const e of entries.filter((n) => n !== MANIFEST).sort()) warn(path.join(root, e), 'not checked (no valid manifest)');
    return finish();
  }
  report.manifest = {
    backupId: manifest.backupId,
    host: manifest.host,
    vm: manifest.vm,
    method: manifest.method,
    consistency: manifest.consistency,
    ...(manifest.totalBytes !== undefined ? { totalBytes: manifest.totalBytes } : {}),
    ...(manifest.chain ? { chain: manifest.chain } : {}),
  };

  // where it lies: <host>/<vm>/<backupId> (a copy elsewhere is still a backup: a warning only)
  const [idDir, vmDir, hostDir] = [path.basename(root), path.basename(path.dirname(root)), path.basename(path.dirname(path.dirname(root)))];
  if (idDir !== manifest.backupId || vmDir !== manifest.vm || hostDir !== manifest.host) {
    warn(manifestPath, `describes ${manifest.host}/${manifest.vm}/${manifest.backupId} but lies in ${hostDir}/${vmDir}/${idDir}`);
  }

  const listed = new Set<string>();
  for (const f of manifest.files) {
    if (listed.has(f.name)) fail(manifestPath, `lists ${f.name} twice`);
    listed.add(f.name);
  }
  const sum = manifest.files.reduce((n, f) => n + f.bytes, 0);
  if (manifest.totalBytes !== undefined && manifest.totalBytes !== sum) {
    fail(manifestPath, `totalBytes is ${manifest.totalBytes} but its files add up to ${sum}`);
  }
  if (manifest.chain) {
    // the VM's summary of its chain must be what its disks say (a restorer reads either)
    const own = vmChain(manifest.files);
    if (own.depth !== manifest.chain.depth || own.parent !== manifest.chain.parent) {
      fail(
        manifestPath,
        `chain says parent ${manifest.chain.parent ?? 'none'} depth ${manifest.chain.depth}, its disks say parent ${own.parent ?? 'none'} depth ${own.depth}`,
      );
    }
  }
  if (manifest.files.filter((f) => f.kind === 'disk').length === 0 && manifest.method !== 'offline') {
    warn(manifestPath, 'lists no disk image');
  }

  for (const f of manifest.files) {
    const checked: VerifiedFile = { name: f.name, kind: f.kind, contentOk: false };
    report.files.push(checked);
    // the schema already allows plain names only; this keeps it so whatever the schema becomes
    if (f.name === MANIFEST || f.name.startsWith('.') || path.basename(f.name) !== f.name || f.name.includes('\0')) {
      fail(manifestPath, `lists "${f.name}", which is not a plain file name in the backup directory`);
      continue;
    }
    const file = path.join(root, f.name);
    const st = await lstatOrUndefined(file);
    if (!st) {
      fail(file, `missing (manifest lists ${f.kind}, ${f.bytes} bytes)`);
      continue;
    }
    if (!st.isFile()) {
      fail(file, `is ${describeType(st)}`);
      continue;
    }
    checked.bytes = st.size;
    let contentOk = true;
    if (st.size !== f.bytes) {
      fail(file, `is ${st.size} bytes, manifest says ${f.bytes}`);
      contentOk = false;
    }
    try {
      checked.sha256 = await sha256File(file);
      if (checked.sha256 !== f.sha256) {
        fail(file, `sha256 ${checked.sha256} does not match the manifest's ${f.sha256}`);
        contentOk = false;
      }
    } catch (err) {
      fail(file, `cannot be read (${(err as Error).message})`);
      contentOk = false;
    }
    checked.contentOk = contentOk;

    if (f.kind === 'disk') {
      const format = checkableFormat(f.name, f.format);
      if (f.chain?.mode === 'incremental') {
        // a cycle of parents never recurses: the chain walk refuses a loop before any parent is verified
        checked.imageCheck = await verifyIncrementalDisk(file, f, manifest, root, {
          ...options,
          fail,
          verifyParent: (parentDir) => verifyCached(parentDir, options, cache),
          checkConsistency: (top) => consistencyCheck(top, 'qcow2', options, fail, warn),
        });
      } else if (options.skipImageCheck || !format) {
        checked.imageCheck = 'skipped';
        if (!options.skipImageCheck) warn(file, `format ${f.format ?? path.extname(f.name)} cannot be checked by qemu-img check`);
      } else {
        checked.imageCheck = await checkImage(file, format, f.virtualSize, options, fail, warn);
      }
    }
  }

  for (const name of entries.sort()) {
    // our records beside the manifest (the user's protected mark, verify and identity records)
    if (name === MANIFEST || listed.has(name) || SIDECARS.includes(name)) continue;
    fail(path.join(root, name), 'is not listed in manifest.json');
  }
  return finish();
}

/**
 * A full's image: `qemu-img info` first (it reads the header only) for no backing file and the
 * virtual size, then `qemu-img check` of its metadata, which would open a backing file: never one
 * an image names by itself.
 */
async function checkImage(
  file: string,
  format: string,
  virtualSize: number | undefined,
  options: VerifyOptions,
  fail: (file: string, p: string) => void,
  warn: (file: string, p: string) => void,
  expectedBacking?: string,
): Promise<'ok' | 'leaks' | 'failed'> {
  const qemuImg = options.qemuImg ?? 'qemu-img';
  const timeoutMs = options.timeoutMs ?? 600_000;
  let result: 'ok' | 'leaks' | 'failed' = 'ok';
  try {
    const { stdout } = await runProgram(qemuImg, ['info', '--output=json', '-f', format, file], { timeoutMs });
    const info = JSON.parse(stdout) as { 'virtual-size'?: number; 'backing-filename'?: string; 'full-backing-filename'?: string };
    const backing = info['full-backing-filename'] ?? info['backing-filename'];
    // the parent must be another backup of the same VM (<vm>/<parent>/<file>), never outside it
    const vmDir = path.dirname(path.dirname(file));
    const inVm = expectedBacking !== undefined && path.resolve(path.dirname(file), expectedBacking).startsWith(vmDir + path.sep);
    // (qemu-img check and info above opened the chain: a missing or broken parent fails there)
    if (backing && !(inVm && info['backing-filename'] === expectedBacking)) {
      fail(file, `has a backing file (${backing}); a backup disk must stand alone`);
      return 'failed';
    }
    if (virtualSize !== undefined && virtualSize > 0 && info['virtual-size'] !== virtualSize) {
      fail(file, `virtual size ${info['virtual-size']} bytes, manifest says ${virtualSize}`);
      result = 'failed';
    }
  } catch (err) {
    // an image qemu-img cannot read names no backing file it would follow: its check says why
    if ((await consistencyCheck(file, format, options, fail, warn)) !== 'failed')
      fail(file, `qemu-img info failed: ${(err as Error).message}`);
    return 'failed';
  }
  const checked = await consistencyCheck(file, format, options, fail, warn);
  return result === 'failed' ? result : checked;
}

/** `qemu-img check` (consistency of the image's metadata; with its backing chain, checked before). */
async function consistencyCheck(
  file: string,
  format: string,
  options: VerifyOptions,
  fail: (file: string, p: string) => void,
  warn: (file: string, p: string) => void,
): Promise<'ok' | 'leaks' | 'failed'> {
  try {
    await runProgram(options.qemuImg ?? 'qemu-img', ['check', '-q', '-f', format, file], { timeoutMs: options.timeoutMs ?? 600_000 });
    return 'ok';
  } catch (err) {
    // qemu-img check: 1 not checked (unreadable image), 2 corrupted, 3 leaked clusters only (harmless)
    const code = err instanceof ProgramFailed ? err.code : undefined;
    const detail =
      err instanceof ProgramFailed ? err.stderr.trim().split('\n').slice(-3).join(' | ').slice(0, 400) : (err as Error).message;
    if (code === 3) {
      warn(file, `qemu-img check: leaked clusters (wasted space, data intact)${detail ? `: ${detail}` : ''}`);
      return 'leaks';
    }
    fail(
      file,
      `qemu-img check failed (${code === 2 ? 'image corrupted' : code === 1 ? 'image could not be checked' : `exit ${code ?? 'signal'}`})${detail ? `: ${detail}` : ''}`,
    );
    return 'failed';
  }
}

/**
 * Check every published backup under a repository root (`<root>/<host>/<vm>/<backupId>/`), or
 * under a host or VM folder of it. Unpublished staging folders (`.partial-*`) are reported as
 * warnings and not checked; symbolic links are reported and not followed.
 */
export async function verifyRepository(rootDir: string, options: VerifyOptions = {}): Promise<RepositoryReport> {
  const t0 = Date.now();
  const root = path.resolve(rootDir);
  const report: RepositoryReport = { root, ok: false, backups: [], problems: [], warnings: [], ms: 0 };
  const top = await lstatOrUndefined(root);
  if (!top || !top.isDirectory()) {
    report.problems.push({ file: root, problem: !top ? 'does not exist' : `is ${describeType(top)}` });
  } else {
    const found: string[] = [];
    await walk(root, 0, found, report);
    found.sort();
    // one cache for the whole root: a full under ten incrementals is hashed once, not eleven times
    const cache: ReportCache = new Map();
    for (const dir of found) report.backups.push(await verifyCached(dir, options, cache));
    if (found.length === 0) report.problems.push({ file: root, problem: 'holds no backup (no <host>/<vm>/<backupId>/manifest.json)' });
  }
  report.ok = report.problems.length === 0 && report.backups.every((b) => b.ok);
  report.ms = Date.now() - t0;
  return report;
}

/**
 * The backup folders under `target` (one backup, or a repository root, host or VM folder), sorted;
 * what is not a backup is reported as the verifier reports it.
 */
export async function findBackups(target: string): Promise<{ found: string[]; problems: VerifyProblem[]; warnings: VerifyProblem[] }> {
  const dir = path.resolve(target);
  const report: RepositoryReport = { root: dir, ok: false, backups: [], problems: [], warnings: [], ms: 0 };
  const found: string[] = [];
  const top = await lstatOrUndefined(dir);
  if (!top || !top.isDirectory()) report.problems.push({ file: dir, problem: !top ? 'does not exist' : `is ${describeType(top)}` });
  else {
    await walk(dir, 0, found, report);
    if (found.length === 0) report.problems.push({ file: dir, problem: 'holds no backup (no <host>/<vm>/<backupId>/manifest.json)' });
  }
  return { found: found.sort(), problems: report.problems, warnings: report.warnings };
}

/** Depth-first, at most three levels (host, vm, backup id), never through a symbolic link. */
async function walk(dir: string, depth: number, found: string[], report: RepositoryReport): Promise<void> {
  const st = await lstatOrUndefined(path.join(dir, MANIFEST));
  if (st) {
    found.push(dir);
    return;
  }
  if (depth >= 3) {
    report.warnings.push({ file: dir, problem: 'holds no manifest.json; not a backup' });
    return;
  }
  let entries: import('node:fs').Dirent[];
  try {
    entries = await fs.readdir(dir, { withFileTypes: true });
  } catch (err) {
    report.problems.push({ file: dir, problem: `cannot be listed (${(err as Error).message})` });
    return;
  }
  for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) {
    const full = path.join(dir, e.name);
    if (e.isSymbolicLink()) {
      report.problems.push({ file: full, problem: 'is a symbolic link (not followed)' });
    } else if (e.isDirectory()) {
      if (e.name.startsWith(STAGING_PREFIX)) report.warnings.push({ file: full, problem: 'an unpublished (partial) backup; not checked' });
      else if (e.name.startsWith('.'))
        report.warnings.push({ file: full, problem: 'a hidden folder (a prune removing a backup?); not checked' });
      else await walk(full, depth + 1, found, report);
    }
    // plain files beside the backups (journals, notes) are none of the verifier's business
  }
}

/** A backup directory (it holds manifest.json) or a repository root / host / VM folder. */
export async function verifyPath(target: string, options: VerifyOptions = {}): Promise<RepositoryReport> {
  const dir = path.resolve(target);
  const st = await lstatOrUndefined(path.join(dir, MANIFEST));
  if (st) {
    const t0 = Date.now();
    const b = await verifyBackup(dir, options);
    return { root: dir, ok: b.ok, backups: [b], problems: [], warnings: [], ms: Date.now() - t0 };
  }
  return verifyRepository(dir, options);
}

/** The report as text, one line per backup and one per problem. */
export function formatReport(r: RepositoryReport): string {
  const lines: string[] = [];
  for (const p of r.problems) lines.push(`FAIL ${p.file}: ${p.problem}`);
  for (const w of r.warnings) lines.push(`WARN ${w.file}: ${w.problem}`);
  for (const b of r.backups) {
    const m = b.manifest;
    const chain = m?.chain?.parent ? `, incremental on ${m.chain.parent} (depth ${m.chain.depth})` : '';
    const what = m
      ? `${m.host}/${m.vm} ${m.backupId} ${m.method} ${m.consistency}${chain}, ${b.files.length} files, ${m.totalBytes ?? b.files.reduce((n, f) => n + (f.bytes ?? 0), 0)} bytes`
      : 'no valid manifest';
    lines.push(`${b.ok ? 'OK  ' : 'FAIL'} ${b.dir} (${what}; ${b.ms} ms)`);
    for (const p of b.problems) lines.push(`  FAIL ${p.file}: ${p.problem}`);
    for (const w of b.warnings) lines.push(`  WARN ${w.file}: ${w.problem}`);
  }
  const bad = r.backups.filter((b) => !b.ok).length;
  lines.push(
    r.ok
      ? `verified ${r.backups.length} backup${r.backups.length === 1 ? '' : 's'}: all OK`
      : `verified ${r.backups.length} backup${r.backups.length === 1 ? '' : 's'}: ${bad} failed${r.problems.length ? `, ${r.problems.length} problem${r.problems.length === 1 ? '' : 's'} in ${r.root}` : ''}`,
  );
  return lines.join('\n');
}
