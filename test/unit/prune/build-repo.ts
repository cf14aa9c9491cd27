// A VM folder of backups made with the real tools at chosen times (no guest needed: the prune's
// logic is about files): per disk, a full qcow2 or an incremental `qemu-img create -b ../<parent>/<file>`
// holding a few clusters written with qemu-io, each backup with a manifest through the schema.
// `refs` holds, per backup and disk, the sha256 of the point flattened to raw: what a restore of
// it must give, before and after any prune.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { assertManifest } from '../../../src/contract/validate';
import type { Manifest, ManifestFile } from '../../../src/contract/types';

export const HOST = 'lab';
export const VM = 'vm-prune';
export const SIZE = 4 << 20;

export function run(file: string, args: string[]): string {
  const r = spawnSync(file, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${file} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}
/** sha256 of a file of any size (large benchmark images do not fit one Buffer) */
export const shaOf = (file: string) =>
  fs.statSync(file).size < 256 << 20
    ? createHash('sha256').update(fs.readFileSync(file)).digest('hex')
    : run('sha256sum', [file]).split(' ')[0];

/** the backup id of point i at time t (ids sort by time; the suffix is made from i) */
export function idAt(t: Date, i: number): string {
  return `${t
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}Z$/, 'Z')}-p${String(i).padStart(5, '0')}`;
}

export interface DiskSpec {
  id: string;
  /** a full at these point indices (0 always) */
  fullAt: (i: number) => boolean;
  /** the disk's size (default SIZE) */
  size?: number;
  /** a raw image whose content the first full starts from (e.g. a partitioned disk with a file system) */
  seed?: string;
  /** the points' writes land from here on (default 0; keep them off a seeded file system's metadata) */
  writeBase?: number;
}

export interface RepoOptions {
  consistency?: 'application' | 'crash' | 'offline';
  /** the VM's id (default VM) */
  vm?: string;
  /** flatten and hash every point for `refs` (default true; a benchmark's large disks skip it) */
  refs?: boolean;
}

export interface BuiltRepo {
  root: string;
  vmDir: string;
  ids: string[];
  /** `${id}/${disk}` -> sha256 of the point flattened to raw */
  refs: Map<string, string>;
  disks: DiskSpec[];
}

const fileOf = (disk: string) => `disk-${disk}.qcow2`;

export function buildRepo(tmp: string, times: Date[], disks: DiskSpec[], opts: RepoOptions = {}): BuiltRepo {
  const root = path.join(tmp, 'repo');
  const vm = opts.vm ?? VM;
  const vmDir = path.join(root, HOST, vm);
  const ids = times.map((t, i) => idAt(t, i));
  const refs = new Map<string, string>();
  const depth = new Map<string, number>();
  for (const [i, id] of ids.entries()) {
    const dir = path.join(vmDir, id);
    fs.mkdirSync(dir, { recursive: true });
    const files: ManifestFile[] = [];
    const definition = path.join(dir, 'definition.json');
    fs.writeFileSync(definition, JSON.stringify({ format: 'vm-backup-qemu-definition@1', id: vm, point: i }) + '\n');
    files.push({ name: 'definition.json', kind: 'definition', bytes: fs.statSync(definition).size, sha256: shaOf(definition) });
    for (const [n, d] of disks.entries()) {
      const name = fileOf(d.id);
      const image = path.join(dir, name);
      const full = i === 0 || d.fullAt(i);
      const size = d.size ?? SIZE;
      if (full && i === 0 && d.seed) run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', d.seed, image]);
      else if (full) run('qemu-img', ['create', '-q', '-f', 'qcow2', image, String(size)]);
      else run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', `../${ids[i - 1]}/${name}`, '-F', 'qcow2', image]);
      // a full holds the whole disk as it is: copy the previous point's content into it first
      if (full && i > 0) run('qemu-img', ['convert', '-n', '-f', 'qcow2', '-O', 'qcow2', path.join(vmDir, ids[i - 1], name), image]);
      const args = ['-f', 'qcow2'];
      // two clusters per point, moving through the disk, one of them over an earlier point's
      const a = (d.writeBase ?? 0) + ((i * 3 + n) % 60) * 65536;
      const b = (d.writeBase ?? 0) + ((i * 7 + 5 + n) % 60) * 65536;
      args.push('-c', `write -q -P 0x${((i * 11 + n * 5 + 1) % 255).toString(16)} ${a} 65536`);
      args.push('-c', `write -q -P 0x${((i * 13 + n * 3 + 2) % 255).toString(16)} ${b} 4096`);
      run('qemu-io', [...args, image]);
      if (opts.refs !== false) {
        const raw = path.join(tmp, 'flat.raw');
        run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', image, raw]);
        refs.set(`${id}/${d.id}`, shaOf(raw));
        fs.rmSync(raw);
      }
      const dep = full ? 0 : depth.get(`${ids[i - 1]}/${d.id}`)! + 1;
      depth.set(`${id}/${d.id}`, dep);
      const chain = full
        ? {
            mode: 'full' as const,
            reason: i === 0 ? ('first-backup' as const) : ('policy-full-every' as const),
            detail: 'made by the test',
            depth: 0,
            bytesRead: size,
          }
        : {
            mode: 'incremental' as const,
            reason: 'incremental' as const,
            detail: `changes since ${ids[i - 1]}`,
            depth: dep,
            parent: ids[i - 1],
            backing: `../${ids[i - 1]}/${name}`,
            bitmap: { name: `vmbackup-${id}`, granularity: 65536, persistent: true },
            bytesChanged: 69632,
            bytesRead: 69632,
          };
      files.push({
        name,
        kind: 'disk',
        disk: d.id,
        format: 'qcow2',
        virtualSize: size,
        bytes: fs.statSync(image).size,
        sha256: shaOf(image),
        chain,
      });
    }
    const diskChains = files.filter((f) => f.chain).map((f) => f.chain!);
    const parent = diskChains.find((c) => c.parent)?.parent;
    const manifest = {
      format: 'vm-backup-manifest@1',
      backupId: id,
      host: HOST,
      provider: 'qemu',
      vm,
      vmName: vm,
      method: 'checkpoint',
      consistency: opts.consistency ?? 'crash',
      reasons: [],
      excludedDisks: [],
      warnings: [],
      files,
      chain: { depth: Math.max(...diskChains.map((c) => c.depth)), ...(parent ? { parent } : {}) },
      totalBytes: files.reduce((s, f) => s + f.bytes, 0),
      timings: { copyMs: 1 },
      createdAt: times[i].toISOString(),
      completedAt: new Date(times[i].getTime() + 5000).toISOString(),
    } as Manifest;
    assertManifest(manifest);
    fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
  }
  return { root, vmDir, ids, refs, disks };
}

/** sha256 of backup `id`'s disk flattened to raw now (its whole chain read by qemu-img) */
export function flatSha(tmp: string, vmDir: string, id: string, disk: string): string {
  const raw = path.join(tmp, `check-${process.pid}.raw`);
  try {
    run('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', path.join(vmDir, id, fileOf(disk)), raw]);
    return shaOf(raw);
  } finally {
    fs.rmSync(raw, { force: true });
  }
}

/** bytes the VM folder takes on disk (allocated blocks) */
export function usedBytes(dir: string): number {
  let n = 0;
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) n += usedBytes(p);
    else n += fs.lstatSync(p).blocks * 512;
  }
  return n;
}

export const nightly = (start: string, nights: number, everyHours = 24): Date[] =>
  Array.from({ length: nights }, (_, i) => new Date(Date.parse(start) + i * everyHours * 3600_000));

/**
 * Flip one byte of a file in place. `keepTimes`: put its times back to the nanosecond afterwards,
 * as rot on the medium would leave them (no metadata changes).
 */
export function flipByte(file: string, offset: number, keepTimes = false): void {
  if (keepTimes) run('touch', ['-r', file, `${file}.times`]);
  const fd = fs.openSync(file, 'r+');
  try {
    const b = Buffer.alloc(1);
    fs.readSync(fd, b, 0, 1, offset);
    b[0] ^= 0xff;
    fs.writeSync(fd, b, 0, 1, offset);
  } finally {
    fs.closeSync(fd);
  }
  if (keepTimes) {
    run('touch', ['-r', `${file}.times`, file]);
    fs.rmSync(`${file}.times`);
  }
}
