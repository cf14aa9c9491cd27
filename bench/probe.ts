// Preloaded into the benchmark's Node-RED process (node -r dist/bench/probe.js red.js ...). It wraps
// a few of the package's own functions to time them where they run, in real backups, and changes
// nothing else (same functions, same arguments, same results):
//   - every ajv check the nodes make: assertStage / assertManifest (contract/validate)
//   - the copy stage's steps: qemu-img info / convert / compare, sha256File, writeFileDurable,
//     fsyncDir, and the provider's describe / exportDisk / verifyDisk / armView / makeView / ...
//   - under the point-in-time view (1334ed9): every QMP command by name, every program run
//     (`program qemu-img create`, `program qemu-nbd`), and the disk copy's and view's own steps
// On SIGWINCH (node-red itself exits on SIGUSR2) the records go to $BENCH_PROBE_OUT and are reset.
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';

export interface ProbeCall {
  fn: string;
  stage?: string;
  what?: string;
  vms?: number;
  ms: number;
  first?: boolean;
  /** start, ms since the process began (timelines) */ at?: number;
}

const out = process.env.BENCH_PROBE_OUT;
const dist = process.env.BENCH_DIST ?? path.resolve(__dirname, '..');

if (out) {
  const calls: ProbeCall[] = [];
  const seen = new Set<string>();
  const load = (rel: string): Record<string, any> | undefined => {
    try {
      return require(path.join(dist, rel)) as Record<string, any>;
    } catch {
      return undefined; // a module that moved: that part is simply not probed
    }
  };
  const timeAsync = (obj: Record<string, any> | undefined, name: string, label: string | ((args: unknown[]) => string)) => {
    const original = obj?.[name];
    if (!obj || typeof original !== 'function') return;
    obj[name] = function wrapped(this: unknown, ...args: unknown[]) {
      const t0 = performance.now();
      const done = () => calls.push({ fn: typeof label === 'string' ? label : label(args), ms: performance.now() - t0, at: t0 });
      const result = original.apply(this, args);
      if (result && typeof (result as Promise<unknown>).then === 'function') {
        (result as Promise<unknown>).then(done, done);
      } else done();
      return result;
    };
  };

  const validate = load('src/contract/validate.js');
  if (validate) {
    for (const name of ['assertStage', 'assertManifest'] as const) {
      const original = validate[name];
      validate[name] = function wrapped(this: unknown, ...args: unknown[]) {
        const t0 = performance.now();
        try {
          return original.apply(this, args);
        } finally {
          const ms = performance.now() - t0;
          const stage = name === 'assertStage' ? String(args[0]) : 'manifest';
          const doc = (name === 'assertStage' ? args[1] : args[0]) as { vms?: unknown[] } | undefined;
          calls.push({
            fn: name,
            stage,
            what: name === 'assertStage' ? String(args[2] ?? 'msg.payload') : 'manifest.json',
            vms: Array.isArray(doc?.vms) ? doc!.vms!.length : 1,
            ms,
            first: !seen.has(stage),
          });
          seen.add(stage);
        }
      };
    }
  }
  const qemuImg = load('src/providers/qemu-img.js');
  for (const name of ['info', 'convert', 'compare', 'commit']) timeAsync(qemuImg, name, `qemu-img ${name}`);
  const repo = load('src/repository/repository.js');
  timeAsync(repo, 'sha256File', 'sha256File');
  const durable = load('src/repository/durable.js');
  for (const name of ['writeFileDurable', 'fsyncDir']) timeAsync(durable, name, name);
  const provider = load('src/providers/qemu/qemu-provider.js')?.QemuProvider?.prototype;
  // experiment switch for A/B runs (bench/ab.ts --b-env=BENCH_NO_GUARDIAN=1): no guardian process
  if (provider && process.env.BENCH_NO_GUARDIAN === '1') provider.guardianSpec = () => undefined;
  for (const name of [
    'enumerate',
    'freeze',
    'thaw',
    'saveState',
    'resume',
    'snapshot',
    'merge',
    'describe',
    'exportDisk',
    'verifyDisk',
    'armView',
    'makeView',
    'releaseView',
  ])
    timeAsync(provider, name, `provider.${name}`);
  // where an incremental's time goes: each QMP command, each program, the copy's and the view's steps
  timeAsync(load('src/providers/qemu/protocol/qmp-client.js')?.QmpClient?.prototype, 'execute', (args) => `qmp ${String(args[0])}`);
  timeAsync(load('src/util/run.js'), 'runProgram', (args) => {
    const prog = path.basename(String(args[0]));
    const argv = (args[1] ?? []) as string[];
    return `program ${prog}${prog === 'qemu-img' && argv[0] ? ` ${argv[0]}` : ''}`;
  });
  const diskCopy = load('src/providers/qemu/disk-copy.js');
  for (const name of ['copyDisk', 'compareWithView']) timeAsync(diskCopy, name, `disk-copy.${name}`);
  const tracking = load('src/providers/qemu/tracking.js');
  for (const name of ['addBitmap', 'removeBitmap', 'bitmapForCopy']) timeAsync(tracking, name, `tracking.${name}`);
  const chain = load('src/pipeline/chain-plan.js');
  for (const name of ['planChain']) timeAsync(chain, name, `chain.${name}`);

  // the journal's intent lines are written and fsync'd synchronously, on the event loop
  timeAsync(load('src/journal/journal.js')?.Journal?.prototype, 'append', 'journal append (fsync)');
  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  // the event loop's busy time since the last report (between backups it is idle): against the
  // backup's wall, how near the one thread that hashes, compares and answers every socket is to full
  let elu = performance.eventLoopUtilization();
  // the main thread's time on a CPU and runnable but waiting for one (/proc schedstat, ns): busy
  // time the kernel gave to another task (a QEMU woken by our socket write runs in its place)
  const schedOf = (): [number, number] => {
    try {
      const [run, wait] = readFileSync(`/proc/self/task/${process.pid}/schedstat`, 'utf8').split(' ').map(Number);
      return [run / 1e6, wait / 1e6];
    } catch {
      return [NaN, NaN];
    }
  };
  let sched = schedOf();
  // how long a trivial file-system call waits for a libuv thread-pool thread (every 20 ms)
  let poolMax = 0,
    poolSum = 0,
    poolN = 0;
  const fsp = require('node:fs/promises') as typeof import('node:fs/promises');
  const allocs = new Map<string, number>();
  if (process.env.BENCH_ALLOC) {
    const B = Buffer as unknown as Record<string, (...a: unknown[]) => Buffer>;
    for (const k of ['alloc', 'allocUnsafe', 'allocUnsafeSlow', 'from', 'concat']) {
      const orig = B[k];
      B[k] = function (this: unknown, ...a: unknown[]) {
        const b = orig.apply(this, a);
        if (b.length >= 4096 && !(k === 'from' && a[0] instanceof ArrayBuffer)) {
          const site = (new Error().stack ?? '')
            .split('\n')
            .slice(2, 5)
            .map((l) =>
              l
                .trim()
                .replace(/^at /, '')
                .replace(/\(.*\/(dist|node_modules)\//, '('),
            )
            .join(' < ');
          const key = `${k} ${b.length >= 65536 ? Math.round(b.length / 1024) + 'K' : 'small'} ${site}`;
          allocs.set(key, (allocs.get(key) ?? 0) + b.length);
        }
        return b;
      };
    }
  }
  // the peak of what the process's memory is made of, sampled with it (RSS alone does not say whose)
  const peak = { heapTotal: 0, external: 0, arrayBuffers: 0 };
  setInterval(() => {
    const m = process.memoryUsage();
    peak.heapTotal = Math.max(peak.heapTotal, m.heapTotal);
    peak.external = Math.max(peak.external, m.external);
    peak.arrayBuffers = Math.max(peak.arrayBuffers, m.arrayBuffers);
    const t0 = performance.now();
    void fsp.access('/').then(() => {
      const ms = performance.now() - t0;
      poolMax = Math.max(poolMax, ms);
      poolSum += ms;
      poolN++;
    });
  }, 20).unref();

  // BENCH_PROFILE_DIR: SIGTTIN starts a CPU profile of this process, SIGTTOU writes it there
  const profileDir = process.env.BENCH_PROFILE_DIR;
  if (profileDir) {
    const inspector = require('node:inspector') as typeof import('node:inspector');
    const session = new inspector.Session();
    session.connect();
    let n = 0;
    process.on('SIGTTIN', () => {
      session.post('Profiler.enable', () => session.post('Profiler.start'));
    });
    process.on('SIGTTOU', () => {
      session.post('Profiler.stop', (err, res) => {
        if (!err) writeFileSync(path.join(profileDir, `probe-${process.pid}-${++n}.cpuprofile`), JSON.stringify(res.profile));
      });
    });
  }

  process.on('SIGWINCH', () => {
    calls.push({ fn: 'event loop delay, max', ms: loop.max / 1e6 }, { fn: 'event loop delay, mean', ms: loop.mean / 1e6 });
    calls.push({ fn: 'event loop busy', ms: performance.eventLoopUtilization(elu).active });
    elu = performance.eventLoopUtilization();
    const now = schedOf();
    calls.push({ fn: 'main thread on a CPU', ms: now[0] - sched[0] }, { fn: 'main thread waiting for a CPU', ms: now[1] - sched[1] });
    sched = now;
    calls.push({ fn: 'thread pool wait, max', ms: poolMax }, { fn: 'thread pool wait, mean', ms: poolN ? poolSum / poolN : 0 });
    poolMax = poolSum = poolN = 0;
    // what the process holds between backups: growth here is a leak (handles, timers, heap)
    const proc = process as unknown as { _getActiveHandles(): unknown[]; _getActiveRequests(): unknown[] };
    const handles = proc._getActiveHandles();
    const kinds: Record<string, number> = {};
    for (const h of handles) kinds[(h as object)?.constructor?.name ?? '?'] = (kinds[(h as object)?.constructor?.name ?? '?'] ?? 0) + 1;
    calls.push(
      { fn: 'active handles', ms: handles.length, what: JSON.stringify(kinds) },
      { fn: 'heap used MiB', ms: process.memoryUsage().heapUsed / 1048576 },
      { fn: 'peak heap total MiB', ms: peak.heapTotal / 1048576 },
      { fn: 'peak external MiB', ms: peak.external / 1048576 },
      { fn: 'peak array buffers MiB', ms: peak.arrayBuffers / 1048576 },
    );
    peak.heapTotal = peak.external = peak.arrayBuffers = 0;
    if (allocs.size) {
      writeFileSync(out + '.allocs', JSON.stringify([...allocs].sort((a, b) => b[1] - a[1]).slice(0, 25), null, 1));
      allocs.clear();
    }
    loop.reset();
    writeFileSync(out, JSON.stringify(calls));
    calls.length = 0;
  });
}
