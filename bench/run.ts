// npm run bench [-- --quick] [--only=freeze,downtime,sparse,memory,scale,incremental] [--work=DIR] [--out=FILE] [--md=FILE] [--keep]
//
// Measures, in one run on this machine, what issue 5 asks: the guest freeze window, VM downtime,
// copy throughput against qemu-img, 100 VMs on one host, memory, and the cost of the ajv checks;
// and what issue 13 item 9 asks: incremental backups against fulls of the same disk.
// Everything runs through a real Node-RED process (node-red from devDependencies) with this
// package linked in, against real QEMU processes: lab guests (TCG, qemu-ga, a workload writing to
// an ext4 data disk) and QEMU processes without a guest OS. Writes bench/results.json and
// BENCHMARKS.md. Benchmarks report; they are not tests and nothing gates on their numbers.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { promises as fs, readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startBenchLab, type BenchLab, type BenchVmSpec } from './lab';
import { NodeRedProcess, REPO_ROOT } from './nodered';
import type { Ctx } from './context';
import { freezeSection } from './sec-freeze';
import { downtimeSection } from './sec-downtime';
import { memorySection, sparseSection } from './sec-copy';
import { scaleSection } from './sec-scale';
import { incrementalFreezeSection, incrementalSection } from './sec-incremental';
import { fleetSocketDir, startFleet } from './bare';
import { addScenarios, backup } from './context';
import { renderWithNotes, verdicts } from './report';
import { commOf, loadAvg, log, nowMs, procMem, round, run, stealMs } from './util';

const SECTIONS = ['freeze', 'downtime', 'sparse', 'memory', 'scale', 'incremental'] as const;
type Section = (typeof SECTIONS)[number];

interface Args {
  quick: boolean;
  only: Set<Section>;
  work: string;
  out: string;
  md: string | undefined;
  keep: boolean;
  label: string;
}

function parseArgs(argv: string[]): Args {
  const a: Args = {
    quick: false,
    only: new Set(SECTIONS),
    work: path.join(os.tmpdir(), 'vmb-bench'),
    out: path.join(REPO_ROOT, 'bench', 'results.json'),
    md: path.join(REPO_ROOT, 'BENCHMARKS.md'),
    keep: false,
    label: '',
  };
  for (const arg of argv) {
    const [k, v] = arg.split('=', 2);
    if (k === '--quick') a.quick = true;
    else if (k === '--keep') a.keep = true;
    else if (k === '--work' && v) a.work = path.resolve(v);
    else if (k === '--out' && v) a.out = path.resolve(v);
    else if (k === '--md') a.md = v && v !== 'none' ? path.resolve(v) : undefined;
    else if (k === '--label' && v) a.label = v;
    else if (k === '--only' && v) {
      const want = v.split(',').map((s) => s.trim()) as Section[];
      for (const s of want) if (!SECTIONS.includes(s)) throw new Error(`--only: unknown section "${s}" (known: ${SECTIONS.join(', ')})`);
      a.only = new Set(want);
    } else if (k === '--help' || k === '-h') {
      process.stdout.write(
        `usage: npm run bench [-- --quick] [--only=${SECTIONS.join(',')}] [--work=DIR] [--out=FILE] [--md=FILE|none] [--keep]\n`,
      );
      process.exit(0);
    } else throw new Error(`unknown argument ${arg} (try --help)`);
  }
  return a;
}

/** What the run does in each mode. */
export function plan(quick: boolean) {
  return quick
    ? {
        freezeRuns: 5,
        fill4g: 256,
        downtimeRuns: 3,
        sparseRuns: 2,
        memoryRuns: 1,
        memoryBigMiB: 2048,
        scale: [10, 50, 100],
        scaleDiskMiB: 32,
        scaleDataMiB: 4,
        incRounds: 1,
        incDiskMiB: 1024,
        incDataMiB: 256,
        incFreezePairs: 2,
        incFractions: [0.01, 0.1],
      }
    : {
        freezeRuns: 20,
        fill4g: 1024,
        downtimeRuns: 10,
        sparseRuns: 5,
        memoryRuns: 1,
        memoryBigMiB: 4096,
        scale: [10, 50, 100, 200],
        scaleDiskMiB: 32,
        scaleDataMiB: 8,
        incRounds: 3,
        incDiskMiB: 4096,
        incDataMiB: 1024,
        incFreezePairs: 4,
        incFractions: [0.01, 0.1],
      };
}

/** Which product code was measured: the commit, and a digest of uncommitted changes to src/ and nodes/. */
function codeIdentity(): Record<string, unknown> {
  const git = (args: string[]) => {
    try {
      return execFileSync('git', args, { cwd: REPO_ROOT, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
    } catch {
      return '';
    }
  };
  const diff = git(['diff', 'HEAD', '--', 'src', 'nodes']);
  const changed = git(['status', '--porcelain', '--', 'src', 'nodes'])
    .split('\n')
    .filter(Boolean)
    .map((l) => l.slice(3));
  return {
    commit: git(['rev-parse', '--short', 'HEAD']).trim() || undefined,
    uncommittedFiles: changed,
    uncommittedDigest: diff ? createHash('sha256').update(diff).digest('hex').slice(0, 12) : undefined,
  };
}

async function machine(): Promise<Record<string, unknown>> {
  const cpu = /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1];
  const flags = /flags\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1].split(' ') ?? [];
  const qemu = (await run('qemu-system-x86_64', ['--version'])).split('\n')[0];
  const qemuImg = (await run('qemu-img', ['--version'])).split('\n')[0];
  const nodeRed = JSON.parse(readFileSync(path.join(REPO_ROOT, 'node_modules', 'node-red', 'package.json'), 'utf8')).version;
  let osName = 'Linux';
  try {
    osName = /PRETTY_NAME="(.*)"/.exec(readFileSync('/etc/os-release', 'utf8'))?.[1] ?? osName;
  } catch {
    // keep the default
  }
  // QEMU processes on this host that the benchmark did not start: they share the CPU with it
  const others: string[] = [];
  for (const p of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    if (commOf(Number(p)).startsWith('qemu-system')) others.push(p);
  }
  const fsType =
    (await run('findmnt', ['-n', '-o', 'FSTYPE,OPTIONS', '-T', os.tmpdir()]).catch(() => '')).trim().replace(/\s+/, ' (') + ')';
  return {
    cpu,
    cores: os.cpus().length,
    shaNi: flags.includes('sha_ni'),
    memoryGiB: round(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    os: osName,
    node: process.version,
    qemu,
    qemuImg,
    accel: 'tcg',
    nodeRed,
    workFs: fsType,
    otherQemuProcessesAtStart: others.length,
    loadAtStart: loadAvg(),
  };
}

async function warmUp(ctx: Ctx): Promise<void> {
  const fleet = await startFleet(path.join(ctx.work, 'bare', 'warmup'), {
    count: 1,
    disksPerVm: 1,
    diskMiB: 16,
    dataMiB: 4,
    prefix: 'warm',
  });
  try {
    const socketDir = await fleetSocketDir(path.join(ctx.work, 'sockets'), fleet, 1);
    await addScenarios(ctx, [{ name: 'warmup', socketDir, fallback: 'checkpoint' }]);
    await backup(ctx, 'warmup');
  } finally {
    await fleet.stop();
  }
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const p = plan(args.quick);
  const t0 = nowMs();
  log(`benchmark (${args.quick ? 'quick' : 'full'}) in ${args.work}; sections: ${[...args.only].join(', ')}`);
  await fs.rm(args.work, { recursive: true, force: true });
  await fs.mkdir(args.work, { recursive: true });
  const results: Record<string, any> = {
    format: 'vm-backup-bench@1',
    label: args.label || undefined,
    generatedAt: new Date().toISOString(),
    command: `npm run bench${args.quick ? ' -- --quick' : ''}`,
    mode: args.quick ? 'quick' : 'full',
    plan: p,
    machine: await machine(),
    code: codeIdentity(),
    load: {} as Record<string, number[]>,
    /** % of the machine's CPU time the hypervisor under it gave to others, per section */
    steal: {} as Record<string, number>,
    sections: {} as Record<string, unknown>,
  };
  let lab: BenchLab | undefined;
  let nr: NodeRedProcess | undefined;
  let cleaning = false;
  const cleanup = async () => {
    if (cleaning) return;
    cleaning = true;
    await nr?.stop().catch(() => undefined);
    await lab?.stop().catch(() => undefined);
    if (!args.keep) await fs.rm(args.work, { recursive: true, force: true }).catch(() => undefined);
  };
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      log(`${sig}: stopping the VMs and Node-RED this run started`);
      void cleanup().finally(() => process.exit(130));
    });
  }
  try {
    const needLab = args.only.has('freeze') || args.only.has('downtime') || args.only.has('incremental');
    if (needLab) {
      const specs: BenchVmSpec[] = [
        { name: 'bench-f256', agent: true, dataSizeMiB: 256, fillMiB: 64 },
        { name: 'bench-f4g', agent: true, dataSizeMiB: 4096, fillMiB: p.fill4g },
        { name: 'bench-noagent', agent: false, dataSizeMiB: 256, fillMiB: 64 },
      ].filter(
        (s) => (s.name === 'bench-f4g' && args.only.has('incremental')) || (s.agent ? args.only.has('freeze') : args.only.has('downtime')),
      );
      const l0 = nowMs();
      lab = await startBenchLab(path.join(args.work, 'lab'), specs);
      results.sections.lab = {
        vms: specs,
        bootMs: Object.fromEntries([...lab.vms.values()].map((v) => [v.name, v.bootMs])),
        setupMs: Math.round(nowMs() - l0),
      };
    }
    nr = await NodeRedProcess.start(path.join(args.work, 'node-red'));
    const ctx: Ctx = { work: args.work, quick: args.quick, nr, lab, scenarios: new Map() };
    results.sections.nodeRed = { pid: nr.pid, rssAfterStartMiB: round((procMem(nr.pid)?.rssKiB ?? 0) / 1024) };
    if (!args.only.has('freeze')) {
      // The first backup in a Node-RED process compiles the ajv schemas (measured by the freeze
      // section as its cold start); any other first section gets a warm-up backup instead.
      log('warm-up backup (compiles the schemas) on a QEMU process without a guest');
      await warmUp(ctx);
    }
    const section = async (name: string, fn: () => Promise<unknown>) => {
      const s0 = nowMs();
      const loadBefore = loadAvg();
      const steal0 = stealMs();
      log(`--- ${name} ---`);
      results.sections[name] = await fn();
      results.load[name] = [...loadBefore, ...loadAvg()];
      const steal1 = stealMs();
      results.steal[name] = round((100 * (steal1.steal - steal0.steal)) / Math.max(1, steal1.total - steal0.total), 1);
      (results.sections[name] as Record<string, unknown>).sectionMs = Math.round(nowMs() - s0);
      await fs.mkdir(path.dirname(args.out), { recursive: true });
      await fs.writeFile(args.out, JSON.stringify(results, null, 2) + '\n'); // partial results survive a later failure
    };
    // One guest measured at a time: the other lab guests are paused (QMP stop on their observer
    // monitors) meanwhile, so that three TCG guests' workloads do not share the 2 cores.
    const alone = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
      const others = [...lab!.vms.values()].filter((vm) => vm.name !== name);
      for (const vm of others) await vm.observer!.execute('stop');
      try {
        return await fn();
      } finally {
        for (const vm of others) await vm.observer!.execute('cont').catch(() => undefined);
      }
    };
    if (args.only.has('freeze')) {
      await section('freeze256', () =>
        alone('bench-f256', () => freezeSection(ctx, lab!.vms.get('bench-f256')!, { runs: p.freezeRuns, baseline: false, cold: true })),
      );
      await section('freeze4g', () =>
        alone('bench-f4g', () => freezeSection(ctx, lab!.vms.get('bench-f4g')!, { runs: p.freezeRuns, baseline: true })),
      );
    }
    if (args.only.has('downtime')) {
      await section('downtime', () =>
        alone('bench-noagent', () => downtimeSection(ctx, lab!.vms.get('bench-noagent')!, { runs: p.downtimeRuns })),
      );
    }
    if (args.only.has('incremental')) {
      await section('incrementalFreeze', () =>
        alone('bench-f4g', () => incrementalFreezeSection(ctx, lab!.vms.get('bench-f4g')!, { pairs: p.incFreezePairs })),
      );
    }
    if (lab) {
      await lab.stop(); // the guests are not needed any more: give their CPU back
      lab = undefined;
      ctx.lab = undefined;
    }
    if (args.only.has('sparse')) await section('sparse', () => sparseSection(ctx, { runs: p.sparseRuns }));
    if (args.only.has('memory')) await section('memory', () => memorySection(ctx, { runs: p.memoryRuns, bigMiB: p.memoryBigMiB }));
    if (args.only.has('scale'))
      await section('scale', () => scaleSection(ctx, { counts: p.scale, diskMiB: p.scaleDiskMiB, dataMiB: p.scaleDataMiB }));
    if (args.only.has('incremental')) {
      await section('incremental', () =>
        incrementalSection(ctx, { rounds: p.incRounds, diskMiB: p.incDiskMiB, dataMiB: p.incDataMiB, fractions: p.incFractions }),
      );
    }
  } finally {
    await cleanup();
  }
  results.totalMs = Math.round(nowMs() - t0);
  results.machine.loadAtEnd = loadAvg();
  results.targets = verdicts(results);
  await fs.mkdir(path.dirname(args.out), { recursive: true });
  await fs.writeFile(args.out, JSON.stringify(results, null, 2) + '\n');
  log(`results: ${args.out}`);
  if (args.md) {
    const existing = await fs.readFile(args.md, 'utf8').catch(() => undefined);
    await fs.writeFile(args.md, renderWithNotes(results, existing));
    log(`table: ${args.md}`);
  }
  for (const t of results.targets)
    log(`${t.met === true ? 'MET   ' : t.met === false ? 'MISSED' : 'n/a   '} ${t.item}: ${t.measure}: ${t.result} (target ${t.target})`);
  log(`done in ${Math.round(results.totalMs / 1000)} s`);
}

if (require.main === module) {
  main().catch((err) => {
    process.stderr.write(`bench failed: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  });
}
