// A/B of a proposed product change on a shared, noisy machine: two real Node-RED processes, one
// with this repository's package (A), one with a patched copy (B, built), take turns backing up
// the same QEMU processes (without a guest), so that both see the same load at the same time.
//
//   node dist/bench/ab.js --patched=/tmp/benchwork [--b-env=K=V] [--runs=3] [--scale=10,50,100]
//                         [--scale-runs=1] [--firmware=seabios|halt]
//                         [--lab=/tmp/vmb-ablab --vm=NAME --lab-runs=8] [--out=bench/ab-results.json]
//
// Measures: the ajv compile paid inside the first backup of each process (cold start), the copy of
// a 1 GiB disk full of data (copy.ms, the product's steps, peak RSS), and the scale runs (total,
// overhead beyond qemu-img convert alone). With --lab (a running bench lab VM with an agent, see
// lab.ts): the freeze window (first backup of each process first) and the saved-state downtime
// (QEMU's STOP/RESUME events on the observer monitor). Prints a Markdown table and writes JSON.
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startFleet, fleetSocketDir, type BareFleet } from './bare';
import { copyAlone } from './sec-scale';
import { addScenarios, backup, type BackupRun, type Ctx } from './context';
import { NodeRedProcess, REPO_ROOT } from './nodered';
import { loadAvg, log, median, round, sleep } from './util';

interface Side {
  name: 'A' | 'B';
  root: string;
  ctx: Ctx;
}

async function labSection(sides: Side[], labDir: string, vmName: string, runs: number, work: string): Promise<Record<string, any>> {
  const { vmPaths } = await import('../lab/lab-vms.js');
  const { QmpClient } = await import('../src/providers/qemu/protocol/index.js');
  const p = vmPaths(vmName, labDir);
  const observer = await QmpClient.connect(path.join(labDir, 'observe', `${vmName}.qmp`));
  const events: { event: string; at: number }[] = [];
  observer.on('event', (ev: any) => events.push({ event: ev.event, at: ev.timestamp.seconds * 1000 + ev.timestamp.microseconds / 1000 }));
  const mk = async (name: string, qga: boolean) => {
    const dir = path.join(work, 'sockets', name);
    await fs.rm(dir, { recursive: true, force: true });
    await fs.mkdir(dir, { recursive: true });
    await fs.symlink(p.qmpSocket, path.join(dir, `${vmName}.qmp`));
    await fs.symlink(p.pidFile, path.join(dir, `${vmName}.pid`));
    if (qga) await fs.symlink(p.qgaSocket, path.join(dir, `${vmName}.qga`));
    return dir;
  };
  const freezeDir = await mk('lab-freeze', true);
  const savedDir = await mk('lab-saved', false);
  for (const side of sides) {
    await addScenarios(side.ctx, [
      { name: 'lab-freeze', socketDir: freezeDir, fallback: 'checkpoint' },
      { name: 'lab-saved', socketDir: savedDir, fallback: 'saved-state' },
    ]);
  }
  const out: Record<string, any> = { freeze: { A: [], B: [] }, saved: { A: [], B: [] } };
  try {
    for (let i = 0; i < runs; i++) {
      for (const side of i % 2 === 0 ? sides : [...sides].reverse()) {
        const r = await backup(side.ctx, 'lab-freeze');
        const f = r.journal.find((e) => e.op === 'freeze' && e.phase === 'intent');
        const t = r.journal.find((e) => e.op === 'thaw' && e.phase === 'done');
        out.freeze[side.name].push({
          frozenMs: r.set.vms[0].snapshot.frozenMs,
          journalMs: f && t ? Date.parse(t.t) - Date.parse(f.t) : undefined,
          first: i === 0,
        });
        await sleep(3500);
      }
    }
    for (let i = 0; i < runs; i++) {
      for (const side of i % 2 === 0 ? sides : [...sides].reverse()) {
        const r = await backup(side.ctx, 'lab-saved');
        const ev = events.filter((e) => e.at >= r.startedAt - 50 && e.at <= r.endedAt + 50);
        const stop = ev.find((e) => e.event === 'STOP');
        const resume = ev.find((e) => e.event === 'RESUME');
        const si = r.journal.find((e) => e.op === 'save' && e.phase === 'intent');
        const sd = r.journal.find((e) => e.op === 'save' && e.phase === 'done');
        out.saved[side.name].push({
          downtimeMs: stop && resume ? round(resume.at - stop.at) : undefined,
          saveMs: si && sd ? Date.parse(sd.t) - Date.parse(si.t) : undefined,
        });
        await sleep(3500);
      }
    }
  } finally {
    await observer.close();
  }
  for (const side of sides) {
    log(
      `${side.name} lab: frozen ${out.freeze[side.name].map((x: any) => x.frozenMs).join(', ')} ms; saved-state downtime ${out.saved[side.name].map((x: any) => x.downtimeMs).join(', ')} ms`,
    );
  }
  return out;
}

function arg(name: string, fallback: string): string {
  const hit = process.argv.slice(2).find((a) => a.startsWith(`--${name}=`));
  return hit ? hit.slice(name.length + 3) : fallback;
}

async function main(): Promise<void> {
  const patched = path.resolve(arg('patched', REPO_ROOT));
  const bEnv = Object.fromEntries(
    process.argv
      .slice(2)
      .filter((a) => a.startsWith('--b-env='))
      .map((a) => a.slice(8).split('=', 2) as [string, string]),
  );
  const labDir = arg('lab', '');
  const labVm = arg('vm', '');
  const labRuns = Number(arg('lab-runs', '8'));
  const runs = Number(arg('runs', '3'));
  const counts = arg('scale', '10,50,100').split(',').filter(Boolean).map(Number);
  // each count this many times per side, the order of the sides alternating (a change of a few ms
  // per VM is inside one run's noise here); the fleet's idle VMs on SeaBIOS or halted (bare.ts)
  const scaleRuns = Number(arg('scale-runs', '1'));
  const firmware = arg('firmware', 'seabios');
  if (firmware !== 'seabios' && firmware !== 'halt') throw new Error(`--firmware: "${firmware}" is not seabios or halt`);
  const work = path.resolve(arg('work', path.join(os.tmpdir(), 'vmb-ab')));
  const out = path.resolve(arg('out', path.join(REPO_ROOT, 'bench', 'ab-results.json')));
  await fs.rm(work, { recursive: true, force: true });
  await fs.mkdir(path.join(work, 'scratch'), { recursive: true });
  const results: Record<string, any> = {
    format: 'vm-backup-bench-ab@1',
    generatedAt: new Date().toISOString(),
    a: REPO_ROOT,
    b: patched,
    bEnv,
    load: { start: loadAvg() },
  };

  const fleets: BareFleet[] = [];
  const sides: Side[] = [];
  try {
    const tiny = await startFleet(path.join(work, 'bare', 'tiny'), { count: 1, disksPerVm: 1, diskMiB: 16, dataMiB: 4, prefix: 'tiny' });
    fleets.push(tiny);
    const big = await startFleet(path.join(work, 'bare', 'one1g'), {
      count: 1,
      disksPerVm: 1,
      diskMiB: runs > 0 ? 1024 : 16,
      dataMiB: runs > 0 ? 1024 : 4,
      prefix: 'one',
    });
    fleets.push(big);
    const fleet = counts.length
      ? await startFleet(path.join(work, 'bare', 'fleet'), {
          count: Math.max(...counts),
          disksPerVm: 2,
          diskMiB: 32,
          dataMiB: 8,
          prefix: 'vm',
          firmware,
        })
      : undefined;
    if (fleet) fleets.push(fleet);
    const sockets = path.join(work, 'sockets');
    const tinyDir = await fleetSocketDir(sockets, tiny, 1);
    const bigDir = await fleetSocketDir(sockets, big, 1);
    const scaleDirs = new Map<number, string>();
    for (const n of counts) scaleDirs.set(n, await fleetSocketDir(sockets, fleet!, n));

    for (const [name, root] of [
      ['A', REPO_ROOT],
      ['B', patched],
    ] as const) {
      const nr = await NodeRedProcess.start(path.join(work, `node-red-${name}`), root, name === 'B' ? bEnv : {});
      const ctx: Ctx = { work: path.join(work, name), quick: false, nr, scenarios: new Map() };
      await addScenarios(ctx, [
        { name: 'tiny', socketDir: tinyDir, fallback: 'checkpoint' },
        { name: 'one1g', socketDir: bigDir, fallback: 'checkpoint' },
        ...counts.map((n) => ({ name: `scale-${n}`, socketDir: scaleDirs.get(n)!, fallback: 'checkpoint' as const, concurrency: 2 })),
      ]);
      sides.push({ name, root, ctx });
    }
    // QMP serves one client at a time and the product keeps an idle connection 3 s: let it go
    const turn = async (side: Side, scenario: string): Promise<BackupRun> => {
      const r = await backup(side.ctx, scenario, { sampleMs: 25 });
      await sleep(3500);
      return r;
    };

    // 0. lab guest first: its first backup is each process's cold start
    if (labDir && labVm) results.lab = await labSection(sides, labDir, labVm, labRuns, work);

    // 1. cold start: the first backup of each process (already warm if the lab ran)
    results.cold = {};
    for (const side of sides) {
      const r = await turn(side, 'tiny');
      const checks = r.calls.filter((c) => c.fn === 'assertStage' || c.fn === 'assertManifest');
      const prepared = checks.filter((c) => c.stage === 'prepared').reduce((n, c) => n + c.ms, 0);
      results.cold[side.name] = {
        ajvMs: round(checks.reduce((n, c) => n + c.ms, 0)),
        preparedChecksMs: round(prepared, 2),
        wallMs: Math.round(r.wallMs),
      };
      log(
        `${side.name} cold start: ajv ${results.cold[side.name].ajvMs} ms in the first backup; the "prepared" checks (made while guests are frozen) ${results.cold[side.name].preparedChecksMs} ms`,
      );
    }

    // 2. one disk, 1 GiB of data
    results.copy1g = { A: [], B: [] };
    for (let i = 0; i < runs; i++) {
      for (const side of i % 2 === 0 ? sides : [...sides].reverse()) {
        const r = await turn(side, 'one1g');
        const v = r.set.vms[0];
        const phases = Object.fromEntries(
          Object.entries(r.phases)
            .filter(([k]) => !k.startsWith('assert'))
            .map(([k, p]) => [k, { n: p.n, ms: Math.round(p.ms) }]),
        );
        results.copy1g[side.name].push({ copyMs: v.copy.ms, peakRssMiB: round(r.sampler.peakRssKiB / 1024), phases });
        log(
          `${side.name} 1 GiB copy ${i + 1}/${runs}: ${v.copy.ms} ms, peak RSS ${round(r.sampler.peakRssKiB / 1024)} MiB; ${JSON.stringify(phases)}`,
        );
      }
    }

    // 3. scale
    results.scale = [];
    for (const n of counts) {
      for (let i = 0; i < scaleRuns; i++) {
        const row: Record<string, any> = { vms: n, firmware, run: i + 1 };
        for (const side of i % 2 === 0 ? sides : [...sides].reverse()) {
          const r = await turn(side, `scale-${n}`);
          row[side.name] = {
            wallMs: Math.round(r.wallMs),
            stageMs: Object.fromEntries(Object.entries(r.set.timings as Record<string, { ms: number }>).map(([k, t]) => [k, t.ms])),
            vmsBackedUp: r.set.vms.length,
            peakRssMiB: round(r.sampler.peakRssKiB / 1024),
            // one disk's copy out of its view (its wall time, beside the other VMs' steps): a change
            // of a few ms per disk shows here when the set's wall is inside the host's noise
            exportDiskMedianMs: round(median(r.calls.filter((c) => c.fn === 'provider.exportDisk').map((c) => c.ms))),
            // Node-RED's event loop busy during the backup (probe.ts), against its wall
            eventLoopBusyMs: Math.round(r.calls.find((c) => c.fn === 'event loop busy')?.ms ?? NaN),
            // of which its main thread ran, and waited runnable for a CPU (probe.ts)
            mainOnCpuMs: Math.round(r.calls.find((c) => c.fn === 'main thread on a CPU')?.ms ?? NaN),
            mainWaitingMs: Math.round(r.calls.find((c) => c.fn === 'main thread waiting for a CPU')?.ms ?? NaN),
          };
        }
        row.aloneMs = Math.round(await copyAlone(fleet!, n, path.join(work, 'scratch'), 2));
        for (const side of sides) row[side.name].overheadMs = row[side.name].wallMs - row.aloneMs;
        results.scale.push(row);
        log(
          `scale ${n} (${firmware}) ${i + 1}/${scaleRuns}: A ${row.A.wallMs} ms (overhead ${row.A.overheadMs}, copy stage ${row.A.stageMs.copy}, a disk's copy ${row.A.exportDiskMedianMs}, event loop busy ${row.A.eventLoopBusyMs}, main thread on a CPU ${row.A.mainOnCpuMs} / waiting ${row.A.mainWaitingMs}), B ${row.B.wallMs} ms (overhead ${row.B.overheadMs}, copy stage ${row.B.stageMs.copy}, a disk's copy ${row.B.exportDiskMedianMs}, event loop busy ${row.B.eventLoopBusyMs}, main thread on a CPU ${row.B.mainOnCpuMs} / waiting ${row.B.mainWaitingMs}); qemu-img alone ${row.aloneMs} ms`,
        );
      }
    }
  } finally {
    for (const s of sides) await s.ctx.nr.stop().catch(() => undefined);
    for (const f of fleets) await f.stop().catch(() => undefined);
    await fs.rm(work, { recursive: true, force: true }).catch(() => undefined);
  }
  results.load.end = loadAvg();
  await fs.writeFile(out, JSON.stringify(results, null, 2) + '\n');
  const med = (side: 'A' | 'B', k: string) =>
    median(results.copy1g[side].map((x: any) => (k === 'copyMs' || k === 'peakRssMiB' ? x[k] : (x.phases[k]?.ms ?? 0))));
  const labLines: string[] = [];
  if (results.lab) {
    const m = (side: 'A' | 'B', k: string, sec: 'freeze' | 'saved', rest = false) =>
      median(
        results.lab[sec][side]
          .filter((x: any) => !rest || !x.first)
          .map((x: any) => x[k])
          .filter((x: any) => typeof x === 'number'),
      );
    const first = (side: 'A' | 'B') => results.lab.freeze[side].find((x: any) => x.first)?.frozenMs;
    labLines.push(
      `| lab guest: frozen, first backup after start (ms) | ${first('A')} | ${first('B')} |`,
      `| lab guest: frozen, median of the others (ms) | ${m('A', 'frozenMs', 'freeze', true)} | ${m('B', 'frozenMs', 'freeze', true)} |`,
      `| lab guest: saved-state downtime STOP -> RESUME, median (ms) | ${m('A', 'downtimeMs', 'saved')} | ${m('B', 'downtimeMs', 'saved')} |`,
      `| lab guest: saved-state, the product's save (journal), median (ms) | ${m('A', 'saveMs', 'saved')} | ${m('B', 'saveMs', 'saved')} |`,
    );
  }
  const lines = [
    '| measure | A: as is | B: with the proposed changes |',
    '| --- | --- | --- |',
    ...labLines,
    `| ajv compile inside the first bare-VM backup${results.lab ? ' (after the lab runs: warm)' : ' after start'} (ms) | ${results.cold.A.ajvMs} | ${results.cold.B.ajvMs} |`,
    `| ... of it in the "prepared" checks, made while guests are frozen (ms) | ${results.cold.A.preparedChecksMs} | ${results.cold.B.preparedChecksMs} |`,
    `| 1 GiB disk, copy artifacts (copy.ms, median of ${runs}) | ${med('A', 'copyMs')} | ${med('B', 'copyMs')} |`,
    ...['qemu-img info', 'qemu-img convert', 'qemu-img compare', 'sha256File'].map(
      (k) => `| ... in it: ${k} (ms) | ${med('A', k)} | ${med('B', k)} |`,
    ),
    `| 1 GiB disk, Node-RED peak RSS (MiB) | ${med('A', 'peakRssMiB')} | ${med('B', 'peakRssMiB')} |`,
    ...results.scale.map(
      (r: any) =>
        `| ${r.vms} VMs x 2 disks (${r.firmware}, run ${r.run}): total / overhead beyond qemu-img alone (${(r.aloneMs / 1000).toFixed(1)} s) (s) | ${(r.A.wallMs / 1000).toFixed(1)} / ${(r.A.overheadMs / 1000).toFixed(1)} | ${(r.B.wallMs / 1000).toFixed(1)} / ${(r.B.overheadMs / 1000).toFixed(1)} |`,
    ),
  ];
  process.stdout.write(lines.join('\n') + '\n');
  log(`A/B results: ${out} (load ${results.load.start.join(' ')} -> ${results.load.end.join(' ')})`);
}

main().catch((err) => {
  process.stderr.write(`ab failed: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
