// Small helpers the benchmark sections share: statistics, /proc readers, a sampler for the
// Node-RED process (RSS, its children, the host's mount table), program runs without a shell.
import type { ChildProcess } from 'node:child_process';
import { promises as fs, readFileSync, readdirSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { runProgram } from '../src/util/run';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Wall clock with sub-millisecond resolution (ms since the epoch). */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

export function log(text: string): void {
  const t = new Date().toISOString().slice(11, 19);
  process.stderr.write(`[bench ${t}] ${text}\n`);
}

// ---- statistics ----

export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  // nearest-rank: p95 of 20 samples is the 19th smallest
  const rank = Math.max(1, Math.ceil(q * s.length));
  return s[rank - 1];
}

export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export interface Stats {
  n: number;
  median: number;
  p95: number;
  min: number;
  max: number;
  mean: number;
}

export function stats(values: readonly number[]): Stats {
  return {
    n: values.length,
    median: round(median(values)),
    p95: round(quantile(values, 0.95)),
    min: round(Math.min(...values)),
    max: round(Math.max(...values)),
    mean: round(values.reduce((a, b) => a + b, 0) / Math.max(1, values.length)),
  };
}

export function round(n: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

export const MiB = 1024 * 1024;
export const GiB = 1024 * MiB;

// ---- /proc ----

export interface ProcMem {
  rssKiB: number;
  hwmKiB: number;
}

export function procMem(pid: number): ProcMem | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/status`, 'utf8');
    const rss = /VmRSS:\s+(\d+)/.exec(text);
    const hwm = /VmHWM:\s+(\d+)/.exec(text);
    if (!rss || !hwm) return undefined;
    return { rssKiB: Number(rss[1]), hwmKiB: Number(hwm[1]) };
  } catch {
    return undefined;
  }
}

/** Reset the kernel's peak-RSS mark (VmHWM) of a process we started: `5 > clear_refs`. */
export function resetPeak(pid: number): void {
  try {
    require('node:fs').writeFileSync(`/proc/${pid}/clear_refs`, '5');
  } catch {
    // not fatal: the peak then counts from the process start
  }
}

export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  let tasks: string[] = [];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const t of tasks) {
    try {
      for (const c of readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').trim().split(/\s+/)) if (c) out.push(Number(c));
    } catch {
      // thread gone
    }
  }
  return out;
}

/** Every process below `pid`, with its parent's pid. */
export function descendantsOf(pid: number): [number, number][] {
  const out: [number, number][] = [];
  const walk = (p: number, depth: number) => {
    for (const c of childrenOf(p)) {
      out.push([c, p]);
      if (depth < 3) walk(c, depth + 1);
    }
  };
  walk(pid, 0);
  return out;
}

export function commOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '?';
  }
}

/** Mount points the process sees (its mount namespace). */
export function mountCount(pid: number | 'self' = 'self'): number {
  return readFileSync(`/proc/${pid}/mountinfo`, 'utf8').split('\n').filter(Boolean).length;
}

/** CPU time of a process (ms): its own, and that of its children it has waited for. */
export function cpuOf(pid: number): { selfMs: number; childrenMs: number } {
  try {
    // fields after the ")" of comm: state is 3rd overall; utime 14, stime 15, cutime 16, cstime 17
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    const tick = 1000 / 100; // USER_HZ is 100 on Linux
    return { selfMs: (Number(f[11]) + Number(f[12])) * tick, childrenMs: (Number(f[13]) + Number(f[14])) * tick };
  } catch {
    return { selfMs: 0, childrenMs: 0 };
  }
}

/** CPU time the whole machine spent busy (not idle, not waiting for I/O), ms over all cores. */
export function machineBusyMs(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, , , irq, softirq, steal] = f;
  return (user + nice + system + irq + softirq + (steal ?? 0)) * 10;
}

/** CPU time stolen by the hypervisor this machine runs on (other tenants), ms over all cores, and the total. */
export function stealMs(): { steal: number; total: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  return { steal: (f[7] ?? 0) * 10, total: f.slice(0, 8).reduce((a, b) => a + b, 0) * 10 };
}

export function loadAvg(): number[] {
  return readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).map(Number);
}

/**
 * Samples a process every `everyMs`: its RSS (and the kernel's peak), every child it has and
 * each child's peak RSS, and the number of mounts. Children are tracked by pid and command.
 */
export class Sampler {
  private timer: NodeJS.Timeout | undefined;
  peakRssKiB = 0;
  readonly childPeakKiB = new Map<string, number>();
  readonly childPids = new Map<string, Set<number>>();
  mountsMin = Infinity;
  mountsMax = 0;
  samples = 0;
  readonly rssTrace: [number, number][] = [];
  /** every child process: what it ran and when it was first and last seen (ms from start) */
  readonly timeline = new Map<number, { comm: string; args: string; first: number; last: number }>();

  constructor(
    readonly pid: number,
    readonly everyMs = 25,
    readonly keepTrace = false,
  ) {}

  start(): this {
    const t0 = nowMs();
    const cmdlineOf = (pid: number) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      } catch {
        return '';
      }
    };
    // a process seen between fork and exec still carries its parent's name and command line
    const forkedNotExec = (pid: number, parent: number, name: string) => name === commOf(parent) && cmdlineOf(pid) === cmdlineOf(parent);
    const tick = () => {
      this.samples++;
      const m = procMem(this.pid);
      if (m) {
        this.peakRssKiB = Math.max(this.peakRssKiB, m.rssKiB, m.hwmKiB);
        if (this.keepTrace) this.rssTrace.push([Math.round(nowMs() - t0), m.rssKiB]);
      }
      // children and their children: the programs are started by the package's launcher process
      for (const [c, parent] of descendantsOf(this.pid)) {
        const name = commOf(c);
        const comm = forkedNotExec(c, parent, name)
          ? '(forked, not yet exec)'
          : name === '?'
            ? '(exited)'
            : /launcher-process\.js/.test(cmdlineOf(c))
              ? 'node (program launcher)'
              : name;
        const cm = procMem(c);
        const at = Math.round(nowMs() - t0);
        const seen = this.timeline.get(c);
        if (seen && seen.comm === comm) seen.last = at;
        else {
          let args = '';
          try {
            args = readFileSync(`/proc/${c}/cmdline`, 'utf8').split('\0').slice(1, 3).join(' ');
          } catch {
            // gone
          }
          this.timeline.set(c, { comm, args, first: at, last: at });
        }
        if (!this.childPids.has(comm)) this.childPids.set(comm, new Set());
        this.childPids.get(comm)!.add(c);
        if (cm) this.childPeakKiB.set(comm, Math.max(this.childPeakKiB.get(comm) ?? 0, cm.hwmKiB, cm.rssKiB));
      }
      try {
        const n = mountCount(this.pid);
        this.mountsMin = Math.min(this.mountsMin, n);
        this.mountsMax = Math.max(this.mountsMax, n);
      } catch {
        // process gone
      }
    };
    tick();
    this.timer = setInterval(tick, this.everyMs);
    return this;
  }

  stop(): this {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    return this;
  }

  /** Time spent in child programs by subcommand ("qemu-img convert": ms), from the sampled lifetimes. */
  childTimes(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const t of this.timeline.values()) {
      if (t.comm.startsWith('(')) continue;
      const key = `${t.comm} ${t.args.split(' ')[0] ?? ''}`.trim();
      out[key] = (out[key] ?? 0) + (t.last - t.first + this.everyMs);
    }
    return out;
  }

  children(): Record<string, { processes: number; peakRssMiB: number }> {
    const out: Record<string, { processes: number; peakRssMiB: number }> = {};
    for (const [comm, pids] of this.childPids)
      out[comm] = { processes: pids.size, peakRssMiB: round((this.childPeakKiB.get(comm) ?? 0) / 1024) };
    return out;
  }
}

// ---- programs ----

export async function run(file: string, args: readonly string[]): Promise<string> {
  return (await runProgram(file, args)).stdout;
}

/** Time a program run (ms). */
export async function timed(file: string, args: readonly string[]): Promise<number> {
  const t0 = nowMs();
  await runProgram(file, args);
  return nowMs() - t0;
}

/**
 * Time sending a file's written pages to the disk (fdatasync; ms). `qemu-img convert` returns with
 * its output still in the page cache (256 MiB: 140 ms of writeback left, `sync` after it, 12-08),
 * and a floor whose output is then deleted never pays that; the product's copy is on the disk
 * before it counts (its writer flushes behind its writes, the copy step fsyncs each file).
 * The file is removed afterwards.
 */
export async function flushedThenGone(file: string): Promise<number> {
  const fh = await fs.open(file, 'r');
  let ms: number;
  try {
    const t0 = nowMs();
    await fh.datasync();
    ms = nowMs() - t0;
  } finally {
    await fh.close();
  }
  // the file goes, untimed, and the file system's journal commits its freed blocks (mounted with
  // discard: discards them) now, not inside the next timed fsync (the product's, or the next
  // convert's own fdatasync of its new image). A precaution: a convert of 2.1-3.7 s in place of
  // 0.3-0.4 on the night of 12-08 came as well without any flush here (the code before it), and
  // went by itself; not explained
  await fs.rm(file, { force: true });
  await runProgram('sync', []);
  return ms;
}

/** SIGTERM to a process of the bench's (a QEMU), resolved once it has exited. */
export function endProcess(p: ChildProcess): Promise<void> {
  return new Promise<void>((resolve) => {
    if (p.exitCode !== null || p.signalCode !== null) return resolve();
    p.once('exit', () => resolve());
    p.kill('SIGTERM');
  });
}

export async function rmrf(p: string): Promise<void> {
  await fs.rm(p, { recursive: true, force: true });
}

export async function du(dir: string): Promise<number> {
  let total = 0;
  for (const e of (await fs.readdir(dir, { withFileTypes: true, recursive: true } as any)) as any[]) {
    if (e.isFile()) total += (await fs.stat(`${e.parentPath ?? e.path}/${e.name}`)).size;
  }
  return total;
}

export function childSummary(times: Record<string, number>): string {
  return (
    Object.entries(times)
      .map(([k, v]) => `${k} ~${v} ms`)
      .join(', ') || 'none seen'
  );
}

/** "qemu-img convert 1x 812, sha256File 3x 1630, ..." from the probe's totals (ajv checks left out). */
export function phaseSummary(phases: Record<string, { n: number; ms: number }>, only?: RegExp): string {
  return Object.entries(phases)
    .filter(([k]) => !k.startsWith('assert') && (!only || only.test(k)))
    .map(([k, v]) => `${k} ${v.n}x ${Math.round(v.ms)}`)
    .join(', ');
}
