// A repository holding one disk's chain made with the real tools: a full qcow2, then incrementals
// made with `qemu-img create -b ../<parent>/<file> -F qcow2` holding the clusters written with
// qemu-io, each with a manifest written through the schema. Beside it, a raw reference image that
// received the same writes, copied after each point: what a full backup at that point would hold.
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { assertManifest } from '../../../src/contract/validate';
import type { Manifest } from '../../../src/contract/types';

export const HAVE_QEMU_IMG = spawnSync('qemu-img', ['--version']).status === 0 && spawnSync('qemu-io', ['--version']).status === 0;
export const HOST = 'lab';
export const VM = 'vm-chain';
export const DISK = 'drive-virtio0';
export const FILE = 'disk-drive-virtio0.qcow2';
export const SIZE = 4 << 20;
export const IDS = ['20261201T010000Z-full00', '20261201T020000Z-inc001', '20261201T030000Z-inc002', '20261201T040000Z-inc003'];

/** what is written at each point: [pattern byte, offset, length]; later points overwrite earlier ones in part */
export const WRITES: [number, number, number][][] = [
  [
    [0x11, 0, 256 << 10],
    [0x12, 1 << 20, 64 << 10],
    [0x13, SIZE - (64 << 10), 64 << 10],
  ],
  [
    [0x21, 64 << 10, 64 << 10],
    [0x22, 2 << 20, 128 << 10],
  ],
  [
    [0x31, 0, 64 << 10],
    [0x32, (2 << 20) + (64 << 10), 64 << 10],
    [0x33, 3 << 20, 4096],
  ],
  [
    [0x41, 1 << 20, 64 << 10],
    [0x42, 512 << 10, 192 << 10],
  ],
];

export function run(file: string, args: string[]): string {
  const r = spawnSync(file, args, { encoding: 'utf8' });
  assert.equal(r.status, 0, `${file} ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

export const sha = (file: string) => createHash('sha256').update(fs.readFileSync(file)).digest('hex');

export interface ChainRepo {
  root: string;
  vmDir: string;
  dirs: string[];
  /** ref[i]: raw image holding everything written up to point i */
  refs: string[];
}

function write(image: string, format: string, writes: [number, number, number][]): void {
  const args = ['-f', format];
  for (const [p, off, len] of writes) args.push('-c', `write -q -P 0x${p.toString(16)} ${off} ${len}`);
  run('qemu-io', [...args, image]);
}

/** <tmp>/repo/lab/vm-chain/<IDS[i]>/ for i < points, and <tmp>/ref-<i>.raw */
export function makeChainRepo(tmp: string, points = IDS.length): ChainRepo {
  const root = path.join(tmp, 'repo');
  const vmDir = path.join(root, HOST, VM);
  const ref = path.join(tmp, 'ref.raw');
  run('qemu-img', ['create', '-q', '-f', 'raw', ref, String(SIZE)]);
  const dirs: string[] = [];
  const refs: string[] = [];
  for (let i = 0; i < points; i++) {
    const dir = path.join(vmDir, IDS[i]);
    fs.mkdirSync(dir, { recursive: true });
    const image = path.join(dir, FILE);
    if (i === 0) run('qemu-img', ['create', '-q', '-f', 'qcow2', image, String(SIZE)]);
    else run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', `../${IDS[i - 1]}/${FILE}`, '-F', 'qcow2', image]);
    write(image, 'qcow2', WRITES[i]);
    write(ref, 'raw', WRITES[i]);
    const copy = path.join(tmp, `ref-${i}.raw`);
    fs.copyFileSync(ref, copy);
    refs.push(copy);
    writeManifest(dir, i);
    dirs.push(dir);
  }
  return { root, vmDir, dirs, refs };
}

/** (Re)write point i's manifest from what is in its folder now, through the schema. */
export function writeManifest(dir: string, i: number, edit?: (m: Manifest) => void): void {
  const image = path.join(dir, FILE);
  const changed = WRITES[i].reduce((n, [, , len]) => n + len, 0);
  const chain =
    i === 0
      ? { mode: 'full' as const, reason: 'first-backup' as const, detail: 'no earlier backup', depth: 0, bytesRead: SIZE }
      : {
          mode: 'incremental' as const,
          reason: 'incremental' as const,
          detail: `changes since ${IDS[i - 1]}`,
          depth: i,
          parent: IDS[i - 1],
          backing: `../${IDS[i - 1]}/${FILE}`,
          bitmap: { name: 'vmbackup', granularity: 65536, persistent: true },
          bytesChanged: changed,
          bytesRead: changed,
        };
  const virtualSize = JSON.parse(run('qemu-img', ['info', '--output=json', '-f', 'qcow2', image]))['virtual-size'] as number;
  const definition = path.join(dir, 'definition.json');
  if (!fs.existsSync(definition)) fs.writeFileSync(definition, JSON.stringify({ format: 'vm-backup-qemu-definition@1', id: VM }) + '\n');
  const files = [
    { name: 'definition.json', kind: 'definition' as const, bytes: fs.statSync(definition).size, sha256: sha(definition) },
    {
      name: FILE,
      kind: 'disk' as const,
      disk: DISK,
      format: 'qcow2',
      virtualSize,
      bytes: fs.statSync(image).size,
      sha256: sha(image),
      chain,
    },
  ];
  const hour = String(i + 1).padStart(2, '0');
  const manifest = {
    format: 'vm-backup-manifest@1',
    backupId: IDS[i],
    host: HOST,
    provider: 'qemu',
    vm: VM,
    vmName: VM,
    method: 'offline',
    consistency: 'offline',
    reasons: [],
    excludedDisks: [],
    warnings: [],
    files,
    totalBytes: files.reduce((n, f) => n + f.bytes, 0),
    timings: { copyMs: 1 },
    chain: i === 0 ? { depth: 0 } : { parent: IDS[i - 1], depth: i },
    createdAt: `2026-12-01T${hour}:00:00.000Z`,
    completedAt: `2026-12-01T${hour}:00:05.000Z`,
  } as Manifest;
  edit?.(manifest);
  assertManifest(manifest);
  fs.writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
}

/** The image's backing string changed in place (qemu-img rebase -u), the manifest's hashes made to match. */
export function setBacking(dir: string, i: number, backing: string): void {
  run('qemu-img', ['rebase', '-q', '-u', '-f', 'qcow2', '-b', backing, '-F', 'qcow2', path.join(dir, FILE)]);
  writeManifest(dir, i);
}

/** `qemu-img compare` exit status: 0 same content, 1 different */
export function compare(a: string, aFormat: string, b: string, bFormat: string): number | null {
  return spawnSync('qemu-img', ['compare', '-q', '-f', aFormat, '-F', bFormat, a, b]).status;
}
