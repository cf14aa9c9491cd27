// 7 (issue 13 item 9). Incremental backups against fulls of the same disk, in the same run.
//  - A QEMU process without a guest OS holding a 4 GiB qcow2 data disk with 1 GiB of random data
//    (1 GiB / 256 MiB with --quick). Each round: a full (the VM's backups removed first, so the
//    product plans a full: first-backup), 1 % of the data rewritten through QEMU (HMP qemu-io on
//    the drive, from a second monitor the product does not use), an incremental, then 10 %
//    rewritten and an incremental on that one. Wall time of each backup through the flow, the
//    product's own byte counts, what QEMU really read (/proc/<pid>/io rchar) and what was written
//    (the file's size and allocation).
//  - The same incremental by a bare QMP script (qmp-raw.ts, none of the product's code):
//    blockdev-backup sync=incremental by a bitmap of its own into a qcow2 whose backing file is
//    the product's previous backup of the disk; run right before or after the product's.
//  - The full against `qemu-img convert` of the same image alone + one sha256 pass over its output.
//  - On a lab guest with qemu-ga (incrementalFreezeSection): the freeze window (freeze sent ->
//    thaw acknowledged, on the agent's wire) of fulls against incrementals, alternating.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { promises as fs, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import { sha256File } from '../src/repository/repository';
import { waitForSocket } from '../test/support/bare-vms';
import { addScenarios, backup, type BackupRun, type Ctx } from './context';
import { makeDataImage } from './images';
import { socketDirFor, type BenchVm } from './lab';
import { QgaProxy } from './qga-proxy';
import type { ProbeCall } from './probe';
import { RawQmp } from './qmp-raw';
import { flushedThenGone, log, MiB, phaseSummary, rmrf, round, sleep, stats, timed, type Stats } from './util';

const execFileP = promisify(execFile);
const VM = 'inc001';
const DRIVE = 'drive-virtio0';
const BARE_BITMAP = 'bench-bare';
/** rewrites are made in pieces of this size, spread evenly over the disk's data */
const PIECE = MiB;

export interface IoCounters {
  rchar: number;
  wchar: number;
  readBytes: number;
  writeBytes: number;
}

export interface IncBackupSample {
  kind: 'full' | 'incremental';
  /** the rewritten share of the data before this backup (incrementals) */
  fraction?: number;
  reason: string;
  depth: number;
  wallMs: number;
  /** copy.ms of the VM: staging directory to published */
  copyMs: number;
  stageMs: Record<string, number>;
  /** the product's counts (manifest chain): what the backup job read, what the bitmap marked */
  bytesRead: number;
  bytesChanged?: number;
  /** the disk file in the backup: size, and bytes allocated on the file system */
  fileBytes: number;
  fileAllocated: number;
  /** what the VM's QEMU process read through system calls meanwhile (the disk, the fleecing image) */
  qemuReadBytes: number;
  phases: Record<string, { n: number; ms: number }>;
  /** the disk copy's steps, in order, from the probe's timed calls (ms) */
  copySteps?: CopySteps;
}

export interface CopySteps {
  createMs: number;
  serverMs: number;
  addMs: number;
  jobMs: number;
  closeMs: number;
  copyDiskMs: number;
  hashMs: number;
}

/**
 * disk-copy.copyDisk's steps from the probe's records: the target created, qemu-nbd started until
 * the VM's QEMU is connected to it, the backup job (its start to its dismissal), and the end
 * (the NBD client removed until qemu-nbd has flushed and exited); then the hash of the file.
 */
function copySteps(calls: ProbeCall[]): CopySteps | undefined {
  const copy = calls.find((x) => x.fn === 'disk-copy.copyDisk');
  if (!copy || copy.at === undefined) return undefined;
  const end = copy.at + copy.ms;
  const inside = calls.filter((x) => x.at !== undefined && x.at >= copy.at! && x.at <= end).sort((a, b) => a.at! - b.at!);
  const first = (fn: string, after = copy.at!) => inside.find((x) => x.fn === fn && x.at! >= after);
  // the target is created in-process now (src/repository/qcow2-create.ts): until qemu-nbd starts
  const create = first('program qemu-img create');
  const nbd = first('program qemu-nbd');
  const add = nbd && first('qmp blockdev-add', nbd.at);
  const job = first('qmp blockdev-backup');
  const dismiss = job && first('qmp job-dismiss', job.at);
  const del = dismiss && first('qmp blockdev-del', dismiss.at);
  if (!nbd || !add || !job || !dismiss || !del) return undefined;
  const hashes = calls.filter((x) => x.fn === 'sha256File' && x.at !== undefined && x.at >= end).sort((a, b) => a.at! - b.at!);
  return {
    createMs: round(create ? create.ms : nbd.at! - copy.at!),
    serverMs: round(add.at! - nbd.at!),
    addMs: round(job.at! - add.at!),
    jobMs: round(dismiss.at! - job.at!),
    closeMs: round(nbd.at! + nbd.ms - del.at!),
    copyDiskMs: round(copy.ms),
    hashMs: round(hashes[0]?.ms ?? NaN),
  };
}

export interface BareIncSample {
  fraction: number;
  ms: number;
  parts: { createMs: number; addMs: number; jobMs: number; delMs: number };
  /** the same script writing the way the product does: through NBD to a qemu-nbd process of its own */
  viaNbd: { ms: number; createMs: number; serverMs: number; addMs: number; jobMs: number; closeMs: number };
  /** one sha256 pass over the target afterwards, by itself (not in ms) */
  sha256Ms: number;
  bytesRead: number;
  fileBytes: number;
  fileAllocated: number;
  qemuReadBytes: number;
  /** which ran first in this round */
  first: 'product' | 'bare';
}

export interface IncRound {
  full: IncBackupSample;
  fullAlone: { convertMs: number; sha256Ms: number; flushMs?: number; bytes: number };
  incrementals: IncBackupSample[];
  bare: BareIncSample[];
  writes: { fraction: number; bytes: number; pieces: number; ms: number }[];
}

export interface IncrementalResult {
  virtualMiB: number;
  dataBytes: number;
  fractions: number[];
  rounds: IncRound[];
}

export function procIo(pid: number): IoCounters {
  const text = readFileSync(`/proc/${pid}/io`, 'utf8');
  const get = (k: string) => Number(new RegExp(`^${k}: (\\d+)`, 'm').exec(text)?.[1] ?? NaN);
  return { rchar: get('rchar'), wchar: get('wchar'), readBytes: get('read_bytes'), writeBytes: get('write_bytes') };
}

interface IncVm {
  proc: ChildProcess;
  disk: string;
  socketDir: string;
  observer: string;
  stop(): Promise<void>;
}

/** One QEMU process (a PC with no OS, as bare.ts), its disk on a virtio device, and a second monitor for the benchmark. */
async function startIncVm(dir: string, o: { diskMiB: number; dataMiB: number }): Promise<IncVm> {
  await rmrf(dir);
  const run = path.join(dir, 'run');
  const socketDir = path.join(dir, 'sockets');
  await fs.mkdir(run, { recursive: true });
  await fs.mkdir(socketDir, { recursive: true });
  const disk = path.join(dir, 'images', `${VM}-disk0.qcow2`);
  await makeDataImage(disk, { virtualMiB: o.diskMiB, dataMiB: o.dataMiB, layout: 'spread' });
  const qmp = path.join(socketDir, `${VM}.qmp`);
  const observer = path.join(run, `${VM}.observer.qmp`);
  const proc = spawn(
    'qemu-system-x86_64',
    [
      '-accel',
      'tcg',
      '-machine',
      'pc',
      '-m',
      '32',
      '-nodefaults',
      '-display',
      'none',
      '-name',
      VM,
      '-pidfile',
      path.join(socketDir, `${VM}.pid`),
      '-qmp',
      `unix:${qmp},server=on,wait=off`,
      '-chardev',
      `socket,id=observer,path=${observer},server=on,wait=off`,
      '-mon',
      'chardev=observer,mode=control',
      '-drive',
      `file=${disk},format=qcow2,if=none,id=${DRIVE}`,
      '-device',
      `virtio-blk-pci,drive=${DRIVE},id=virtio0`,
    ],
    { stdio: 'ignore' },
  );
  await waitForSocket(qmp, 20_000);
  await waitForSocket(observer, 20_000);
  return {
    proc,
    disk,
    socketDir,
    observer,
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) {
        await new Promise<void>((resolve) => {
          proc.once('exit', () => resolve());
          proc.kill('SIGTERM');
        });
      }
      await rmrf(dir);
    },
  };
}

/** The data extents of an image (offset, length), before QEMU opens it. */
async function dataExtents(file: string): Promise<[number, number][]> {
  const { stdout } = await execFileP('qemu-img', ['map', '-U', '--output=json', file], { maxBuffer: 64 * MiB });
  return (JSON.parse(stdout) as { start: number; length: number; data: boolean; zero: boolean }[])
    .filter((e) => e.data && !e.zero)
    .map((e) => [e.start, e.length]);
}

/**
 * Rewrite `fraction` of the data in 1 MiB pieces spread evenly over it, through QEMU's own
 * block layer (HMP qemu-io on the drive: the same path a guest write takes, so every dirty
 * bitmap on the disk records it).
 */
async function rewrite(
  c: RawQmp,
  extents: [number, number][],
  fraction: number,
  pattern: number,
): Promise<{ fraction: number; bytes: number; pieces: number; ms: number }> {
  const total = extents.reduce((n, [, l]) => n + l, 0);
  const pieces = Math.max(1, Math.round((fraction * total) / PIECE));
  const t0 = performance.now();
  for (let j = 0; j < pieces; j++) {
    let at = Math.floor((j * total) / pieces / PIECE) * PIECE; // offset within the data
    let off = -1;
    for (const [start, len] of extents) {
      if (at + PIECE <= len) {
        off = start + at;
        break;
      }
      at -= len;
    }
    if (off < 0) throw new Error(`rewrite: piece ${j} falls outside the data`);
    const out = await c.execute<string>('human-monitor-command', {
      'command-line': `qemu-io ${DRIVE} "write -P 0x${pattern.toString(16)} ${off} ${PIECE}"`,
    });
    // HMP's qemu-io says nothing on success here (QEMU 7.2); an error is printed
    if (/fail|error|invalid|not found/i.test(out)) throw new Error(`qemu-io write at ${off} failed: ${out.trim()}`);
  }
  return { fraction: (pieces * PIECE) / total, bytes: pieces * PIECE, pieces, ms: Math.round(performance.now() - t0) };
}

async function diskOf(repository: string, r: BackupRun): Promise<{ chain: any; file: string; bytes: number }[]> {
  const dir = path.join(repository, r.set.vms[0].copy.path);
  const manifest = JSON.parse(await fs.readFile(path.join(dir, 'manifest.json'), 'utf8'));
  return manifest.files
    .filter((f: any) => f.kind === 'disk')
    .map((f: any) => ({ chain: f.chain, file: path.join(dir, f.name), bytes: f.bytes }));
}

/** One backup through the flow, kept in the repository (the next incremental stacks on it). */
async function productBackup(
  ctx: Ctx,
  scenario: string,
  qemuPid: number,
  expect: 'full' | 'incremental',
  fraction?: number,
): Promise<IncBackupSample & { file: string }> {
  const s = ctx.scenarios.get(scenario)!;
  if (expect === 'full') await rmrf(path.join(s.repository, 'bench')); // no parent: the product plans a full
  const io0 = procIo(qemuPid);
  const r = await backup(ctx, scenario, { keep: true });
  const io1 = procIo(qemuPid);
  const [d] = await diskOf(s.repository, r);
  if (d.chain?.mode !== expect)
    throw new Error(`${scenario}: expected a ${expect} backup, the product made ${d.chain?.mode} (${d.chain?.reason}: ${d.chain?.detail})`);
  const st = await fs.stat(d.file);
  const v = r.set.vms[0];
  if (process.env.BENCH_TIMELINE && r.calls.length) {
    const t0 = Math.min(...r.calls.map((c) => c.at ?? Infinity));
    for (const c of [...r.calls].sort((a, b) => (a.at ?? 0) - (b.at ?? 0)))
      console.log(`  ${((c.at ?? 0) - t0).toFixed(1).padStart(7)} +${c.ms.toFixed(1).padStart(6)} ${c.fn}`);
  }
  return {
    kind: expect,
    ...(fraction !== undefined ? { fraction } : {}),
    reason: d.chain.reason,
    depth: d.chain.depth,
    wallMs: Math.round(r.wallMs),
    copyMs: v.copy.ms,
    stageMs: Object.fromEntries(Object.entries(r.set.timings ?? {}).map(([k, t]: [string, any]) => [k, Math.round(t?.ms ?? 0)])),
    bytesRead: d.chain.bytesRead,
    ...(d.chain.bytesChanged !== undefined ? { bytesChanged: d.chain.bytesChanged } : {}),
    fileBytes: st.size,
    fileAllocated: st.blocks * 512,
    qemuReadBytes: io1.rchar - io0.rchar,
    phases: r.phases,
    copySteps: copySteps(r.calls),
    file: d.file,
  };
}

/**
 * The same incremental by a bare QMP script: the bitmap it keeps itself (cleared by QEMU when
 * the job succeeds: sync=incremental), a qcow2 target on the previous backup, one job, done.
 */
async function bareIncremental(
  c: RawQmp,
  qemuPid: number,
  backing: string,
  target: string,
  virtualSize: number,
): Promise<Omit<BareIncSample, 'fraction' | 'first'>> {
  // first through NBD, keeping the bitmap (sync=bitmap, bitmap-mode=never), then the direct one
  const viaNbd = await bareViaNbd(c, backing, `${target}.nbd.qcow2`, virtualSize);
  await fs.rm(`${target}.nbd.qcow2`, { force: true });
  await fs.rm(target, { force: true });
  const io0 = procIo(qemuPid);
  const t0 = performance.now();
  await execFileP('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', backing, '-F', 'qcow2', target, String(virtualSize)]);
  const t1 = performance.now();
  await c.execute('blockdev-add', { driver: 'qcow2', 'node-name': 'bench-bare-t', file: { driver: 'file', filename: target } });
  const t2 = performance.now();
  const mark = c.events.length;
  await c.execute('blockdev-backup', {
    'job-id': 'bench-bare-j',
    device: DRIVE,
    target: 'bench-bare-t',
    sync: 'incremental',
    bitmap: BARE_BITMAP,
  });
  const ev = await c.waitEvent(
    (e) => (e.event === 'BLOCK_JOB_COMPLETED' || e.event === 'BLOCK_JOB_CANCELLED') && e.data?.device === 'bench-bare-j',
    mark,
  );
  const t3 = performance.now();
  await c.execute('blockdev-del', { 'node-name': 'bench-bare-t' });
  const t4 = performance.now();
  const io1 = procIo(qemuPid);
  if (ev.event !== 'BLOCK_JOB_COMPLETED' || ev.data?.error) throw new Error(`bare incremental failed: ${ev.event} ${ev.data?.error ?? ''}`);
  const h0 = performance.now();
  await sha256File(target);
  const sha256Ms = performance.now() - h0;
  const st = await fs.stat(target);
  return {
    ms: round(t4 - t0),
    parts: { createMs: round(t1 - t0), addMs: round(t2 - t1), jobMs: round(t3 - t2), delMs: round(t4 - t3) },
    viaNbd,
    sha256Ms: round(sha256Ms),
    bytesRead: ev.data?.len ?? 0,
    fileBytes: st.size,
    fileAllocated: st.blocks * 512,
    qemuReadBytes: io1.rchar - io0.rchar,
  };
}

/**
 * The bare script's incremental written as the product writes it: qemu-nbd (the product's flags)
 * serving the target, the VM's QEMU an NBD client of it. Apart from the product, it tells the
 * cost of the NBD path itself from the cost of the product's orchestration.
 */
async function bareViaNbd(c: RawQmp, backing: string, target: string, virtualSize: number): Promise<BareIncSample['viaNbd']> {
  await fs.rm(target, { force: true });
  const sock = `${target}.sock`;
  const t0 = performance.now();
  await execFileP('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', backing, '-F', 'qcow2', target, String(virtualSize)]);
  const t1 = performance.now();
  const server = spawn(
    'qemu-nbd',
    ['--format=qcow2', `--socket=${sock}`, '--discard=unmap', '--detect-zeroes=unmap', '--cache=writeback', '--aio=threads', target],
    { stdio: 'ignore' },
  );
  const exited = new Promise<number | null>((resolve) => server.once('exit', (code) => resolve(code)));
  try {
    await waitForSocket(sock, 10_000);
    const t2 = performance.now();
    await c.execute('blockdev-add', { driver: 'nbd', 'node-name': 'bench-nbd-t', server: { type: 'unix', path: sock }, export: '' });
    const t3 = performance.now();
    const mark = c.events.length;
    await c.execute('blockdev-backup', {
      'job-id': 'bench-nbd-j',
      device: DRIVE,
      target: 'bench-nbd-t',
      sync: 'bitmap',
      bitmap: BARE_BITMAP,
      'bitmap-mode': 'never',
    });
    const ev = await c.waitEvent(
      (e) => (e.event === 'BLOCK_JOB_COMPLETED' || e.event === 'BLOCK_JOB_CANCELLED') && e.data?.device === 'bench-nbd-j',
      mark,
    );
    const t4 = performance.now();
    await c.execute('blockdev-del', { 'node-name': 'bench-nbd-t' });
    const code = await exited;
    const t5 = performance.now();
    if (ev.event !== 'BLOCK_JOB_COMPLETED' || ev.data?.error || code !== 0)
      throw new Error(`bare incremental through NBD failed: ${ev.event} ${ev.data?.error ?? ''} (qemu-nbd exit ${code})`);
    return {
      ms: round(t5 - t0),
      createMs: round(t1 - t0),
      serverMs: round(t2 - t1),
      addMs: round(t3 - t2),
      jobMs: round(t4 - t3),
      closeMs: round(t5 - t4),
    };
  } finally {
    if (server.exitCode === null && server.signalCode === null) server.kill('SIGTERM');
    await fs.rm(sock, { force: true });
  }
}

/**
 * The floor of a full hashed for its manifest: qemu-img convert of the same image alone, then one
 * sha256 pass over its output; then that output sent to the disk (fdatasync, util.ts flushedThenGone),
 * timed apart: with it the floor is a durable copy, as the product's full is before it counts.
 */
async function fullAlone(disk: string, scratch: string): Promise<{ convertMs: number; sha256Ms: number; flushMs: number; bytes: number }> {
  const out = path.join(scratch, 'full-alone.qcow2');
  await fs.rm(out, { force: true });
  const convertMs = await timed('qemu-img', ['convert', '-f', 'qcow2', '-O', 'qcow2', '-U', disk, out]);
  const t0 = performance.now();
  await sha256File(out);
  const sha256Ms = performance.now() - t0;
  const bytes = (await fs.stat(out)).size;
  const flushMs = await flushedThenGone(out);
  return { convertMs: round(convertMs), sha256Ms: round(sha256Ms), flushMs: round(flushMs), bytes };
}

export async function incrementalSection(
  ctx: Ctx,
  o: { rounds: number; diskMiB: number; dataMiB: number; fractions: number[] },
): Promise<IncrementalResult> {
  const vm = await startIncVm(path.join(ctx.work, 'bare', 'incremental'), { diskMiB: o.diskMiB, dataMiB: o.dataMiB });
  const scratch = path.join(ctx.work, 'scratch-inc');
  await fs.mkdir(scratch, { recursive: true });
  const c = await RawQmp.connect(vm.observer);
  try {
    const extents = await dataExtents(vm.disk);
    const dataBytes = extents.reduce((n, [, l]) => n + l, 0);
    const scenario = 'incremental';
    await addScenarios(ctx, [{ name: scenario, socketDir: vm.socketDir, fallback: 'checkpoint' }]);
    const pid = vm.proc.pid!;
    const virtualSize = o.diskMiB * MiB;
    await c.execute('block-dirty-bitmap-add', { node: DRIVE, name: BARE_BITMAP, persistent: false, granularity: 65536 });
    const rounds: IncRound[] = [];
    for (let i = 0; i < o.rounds; i++) {
      const full = await productBackup(ctx, scenario, pid, 'full');
      // the bare script's bitmap starts where the product's full did (nothing writes in between)
      await c.execute('block-dirty-bitmap-clear', { node: DRIVE, name: BARE_BITMAP });
      const alone = await fullAlone(vm.disk, scratch);
      log(
        `incremental ${i + 1}/${o.rounds}: full ${full.wallMs} ms (copy ${full.copyMs} ms; ${phaseSummary(full.phases, /exportDisk|verifyDisk|sha256File|copyDisk|program/)}); qemu-img convert alone ${Math.round(alone.convertMs)} ms + sha256 alone ${Math.round(alone.sha256Ms)} ms; copy steps ${JSON.stringify(full.copySteps)}`,
      );
      const round_: IncRound = { full: stripFile(full), fullAlone: alone, incrementals: [], bare: [], writes: [] };
      let parentFile = full.file;
      for (const [k, fraction] of o.fractions.entries()) {
        const w = await rewrite(c, extents, fraction, 0x21 + ((i * o.fractions.length + k) % 200));
        round_.writes.push(w);
        // alternate who goes first, so that neither always finds the writes fresher in the page cache
        const productFirst = (i + k) % 2 === 0;
        const target = path.join(scratch, `bare-${i}-${k}.qcow2`);
        let bare: Omit<BareIncSample, 'fraction' | 'first'> | undefined;
        if (!productFirst) bare = await bareIncremental(c, pid, parentFile, target, virtualSize);
        const inc = await productBackup(ctx, scenario, pid, 'incremental', w.fraction);
        if (productFirst) bare = await bareIncremental(c, pid, parentFile, target, virtualSize);
        await fs.rm(target, { force: true });
        round_.incrementals.push(stripFile(inc));
        round_.bare.push({ ...bare!, fraction: w.fraction, first: productFirst ? 'product' : 'bare' });
        log(
          `incremental ${i + 1}/${o.rounds}: ${round(w.fraction * 100, 2)} % rewritten (${w.pieces} x 1 MiB in ${w.ms} ms): product ${inc.wallMs} ms (copy ${inc.copyMs} ms, changed ${round((inc.bytesChanged ?? 0) / MiB)} MiB, file ${round(inc.fileBytes / MiB)} MiB; stages ${JSON.stringify(inc.stageMs)}); bare QMP ${bare!.ms} ms (job ${bare!.parts.jobMs} ms), through qemu-nbd ${bare!.viaNbd.ms} ms (job ${bare!.viaNbd.jobMs} ms, close ${bare!.viaNbd.closeMs} ms); product copy steps ${JSON.stringify(inc.copySteps)}`,
        );
        parentFile = inc.file;
      }
      rounds.push(round_);
    }
    return { virtualMiB: o.diskMiB, dataBytes, fractions: o.fractions, rounds };
  } finally {
    await c.close().catch(() => undefined);
    await vm.stop();
    await rmrf(scratch);
  }
}

const stripFile = ({ file: _f, ...rest }: IncBackupSample & { file: string }): IncBackupSample => rest;

export interface IncFreezeSample {
  kind: 'full' | 'incremental';
  wireMs: number;
  productFrozenMs: number;
  wallMs: number;
  copyMs: number;
  reason: string;
}

export interface IncFreezeResult {
  vm: string;
  dataDiskMiB: number;
  fillMiB: number;
  samples: IncFreezeSample[];
  full: Stats;
  incremental: Stats;
}

/**
 * The freeze window of fulls against incrementals of the same lab guest (its workload writing),
 * alternating full, incremental, full, ... after one full that is not counted (a new host node's
 * first backup opens its connections).
 */
export async function incrementalFreezeSection(ctx: Ctx, vm: BenchVm, o: { pairs: number }): Promise<IncFreezeResult> {
  await vm.resume();
  const proxy = new QgaProxy(path.join(ctx.work, 'proxy', `inc-${vm.name}.qga`), vm.paths.qgaSocket);
  await fs.mkdir(path.dirname(proxy.listenPath), { recursive: true });
  await proxy.start();
  const samples: IncFreezeSample[] = [];
  try {
    const socketDir = await socketDirFor(path.join(ctx.work, 'sockets-inc'), vm, proxy.listenPath);
    const name = `inc-${vm.name}`;
    const [s] = await addScenarios(ctx, [{ name, socketDir, fallback: 'checkpoint' }]);
    const one = async (kind: 'full' | 'incremental'): Promise<IncFreezeSample> => {
      if (kind === 'full') await rmrf(path.join(s.repository, 'bench'));
      await sleep(1000); // the guest's workload writes between backups
      const r = await backup(ctx, name, { keep: true });
      const wire = proxy.freezes[proxy.freezes.length - 1];
      if (!wire || wire.thawReplied === undefined || wire.freezeSent < r.startedAt)
        throw new Error(`${vm.name}: the proxy saw no complete freeze/thaw in this backup`);
      const disks = await diskOf(s.repository, r);
      const wrong = disks.find((d) => d.chain?.mode !== kind);
      if (wrong)
        throw new Error(
          `${name}: expected a ${kind} backup, a disk was ${wrong.chain?.mode} (${wrong.chain?.reason}: ${wrong.chain?.detail})`,
        );
      const v = r.set.vms[0];
      return {
        kind,
        wireMs: round(wire.thawReplied - wire.freezeSent, 2),
        productFrozenMs: v.snapshot.frozenMs,
        wallMs: Math.round(r.wallMs),
        copyMs: v.copy.ms,
        reason: disks.map((d) => d.chain.reason).join(','),
      };
    };
    await one('full');
    for (let i = 0; i < o.pairs; i++) {
      for (const kind of ['incremental', 'full'] as const) {
        const x = await one(kind);
        samples.push(x);
        log(
          `incremental freeze ${vm.name} ${i + 1}/${o.pairs}: ${kind} frozen ${x.wireMs} ms on the wire (product ${x.productFrozenMs} ms), backup ${x.wallMs} ms`,
        );
      }
    }
  } finally {
    await proxy.close();
  }
  const of = (k: string) => samples.filter((x) => x.kind === k).map((x) => x.wireMs);
  return {
    vm: vm.name,
    dataDiskMiB: vm.spec.dataSizeMiB,
    fillMiB: vm.spec.fillMiB,
    samples,
    full: stats(of('full')),
    incremental: stats(of('incremental')),
  };
}
