// 3 (sparse). The product's copy of an 8 GiB virtual disk holding 256 MiB of data spread over it,
//    against a 256 MiB disk full of the same amount of data (QEMU processes without a guest).
// 5. Peak RSS of the Node-RED process (VmHWM reset before each backup) and of the qemu-img child
//    while one disk full of real data is copied: 1 GiB, and 4 GiB (2 GiB with --quick).
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { addScenarios, backup, type Ctx } from './context';
import { startFleet, fleetSocketDir, type BareFleet } from './bare';
import { allocatedBytes } from './images';
import { baselineCopy } from './sec-freeze';
import { log, phaseSummary, median, MiB, procMem, round, stats, type Stats } from './util';

export interface DiskCopySample {
  copyMs: number;
  copyStageMs: number;
  wallMs: number;
  bytes: number;
  peakRssMiB: number;
  qemuImgPeakRssMiB: number;
  mountsMax: number;
  children: Record<string, number>;
  phases: Record<string, { n: number; ms: number }>;
}

async function oneDiskVm(
  ctx: Ctx,
  name: string,
  diskMiB: number,
  dataMiB: number,
): Promise<{ fleet: BareFleet; scenario: string; disk: string }> {
  const fleet = await startFleet(path.join(ctx.work, 'bare', name), { count: 1, disksPerVm: 1, diskMiB, dataMiB, prefix: name });
  const socketDir = await fleetSocketDir(path.join(ctx.work, 'sockets'), fleet, 1);
  const scenario = `copy-${name}`;
  await addScenarios(ctx, [{ name: scenario, socketDir, fallback: 'checkpoint' }]);
  return { fleet, scenario, disk: fleet.disks.get(fleet.ids[0])![0] };
}

async function copyOnce(ctx: Ctx, scenario: string, trace = false): Promise<DiskCopySample & { trace?: [number, number][] }> {
  const r = await backup(ctx, scenario, { trace, sampleMs: 20 });
  const v = r.set.vms[0];
  return {
    copyMs: v.copy.ms,
    copyStageMs: r.set.timings.copy.ms,
    wallMs: Math.round(r.wallMs),
    bytes: v.copy.bytes,
    peakRssMiB: round(r.sampler.peakRssKiB / 1024),
    qemuImgPeakRssMiB: r.sampler.children()['qemu-img']?.peakRssMiB ?? 0,
    mountsMax: r.sampler.mountsMax,
    children: r.sampler.childTimes(),
    phases: r.phases,
    ...(trace ? { trace: r.sampler.rssTrace } : {}),
  };
}

export interface SparseResult {
  sparse: { virtualMiB: number; dataBytes: number; samples: DiskCopySample[]; copy: Stats; qemuImgAlone: Stats };
  dense: {
    virtualMiB: number;
    dataBytes: number;
    samples: DiskCopySample[];
    copy: Stats;
    qemuImgAlone: Stats;
    floor?: Stats;
    /** the same floor with its output sent to the disk (fdatasync), as the product's copy is before it counts */
    durableFloor?: Stats;
  };
  ratio: number;
  qemuImgAloneRatio: number;
}

export async function sparseSection(ctx: Ctx, o: { runs: number }): Promise<SparseResult> {
  const sparse = await oneDiskVm(ctx, 'sparse8g', 8192, 256);
  const dense = await oneDiskVm(ctx, 'dense256', 256, 256);
  try {
    const s: DiskCopySample[] = [];
    const d: DiskCopySample[] = [];
    const sa: number[] = [];
    const da: number[] = [];
    const df: number[] = [];
    const dd: number[] = [];
    const scratch = path.join(ctx.work, 'scratch');
    await fs.mkdir(scratch, { recursive: true }); // (also when this section runs alone)
    for (let i = 0; i < o.runs; i++) {
      // alternate the order, so that neither always runs on a warmer cache
      const pair =
        i % 2 === 0
          ? ([
              [sparse, s],
              [dense, d],
            ] as const)
          : ([
              [dense, d],
              [sparse, s],
            ] as const);
      for (const [vm, into] of pair) into.push(await copyOnce(ctx, vm.scenario));
      sa.push((await baselineCopy(sparse.disk, scratch, true)).plainMs);
      const db = await baselineCopy(dense.disk, scratch, true);
      da.push(db.plainMs);
      // the floor of a copy hashed for its manifest: convert (the product's argv) + one sha256 pass
      if (db.sha256Ms !== undefined) {
        const floor = Math.min(db.plainMs, db.productFlagsMs) + db.sha256Ms;
        df.push(floor);
        // the same made durable (bench/util.ts flushedThenGone)
        if (db.flushMs !== undefined) dd.push(floor + db.flushMs);
      }
      log(
        `sparse ${i + 1}/${o.runs}: 8 GiB/256 MiB copy ${s[i].copyMs} ms, 256 MiB/256 MiB copy ${d[i].copyMs} ms (busy ms: ${phaseSummary(s[i].phases, /qemu-img|sha256/)} / ${phaseSummary(d[i].phases, /qemu-img|sha256/)}); qemu-img alone ${Math.round(sa[i])} / ${Math.round(da[i])} ms`,
      );
    }
    const ratio = round(median(s.map((x) => x.copyMs)) / median(d.map((x) => x.copyMs)), 2);
    return {
      sparse: {
        virtualMiB: 8192,
        dataBytes: await allocatedBytes(sparse.disk),
        samples: s,
        copy: stats(s.map((x) => x.copyMs)),
        qemuImgAlone: stats(sa),
      },
      dense: {
        virtualMiB: 256,
        dataBytes: await allocatedBytes(dense.disk),
        samples: d,
        copy: stats(d.map((x) => x.copyMs)),
        qemuImgAlone: stats(da),
        ...(df.length ? { floor: stats(df) } : {}),
        ...(dd.length ? { durableFloor: stats(dd) } : {}),
      },
      ratio,
      qemuImgAloneRatio: round(median(sa) / median(da), 2),
    };
  } finally {
    await sparse.fleet.stop();
    await dense.fleet.stop();
  }
}

export interface MemoryResult {
  idleRssMiB: number;
  disks: {
    label: string;
    virtualMiB: number;
    dataBytes: number;
    samples: DiskCopySample[];
    peakRssMiB: number;
    qemuImgPeakRssMiB: number;
    trace?: [number, number][];
  }[];
  growthMiB: number;
}

export async function memorySection(ctx: Ctx, o: { runs: number; bigMiB: number }): Promise<MemoryResult> {
  const sizes = [
    { label: '1 GiB', mib: 1024 },
    { label: `${o.bigMiB / 1024} GiB`, mib: o.bigMiB },
  ];
  const out: MemoryResult['disks'] = [];
  const idle: number[] = [];
  for (const size of sizes) {
    const vm = await oneDiskVm(ctx, `mem${size.mib}`, size.mib, size.mib);
    try {
      const dataBytes = await allocatedBytes(vm.disk);
      const samples: (DiskCopySample & { trace?: [number, number][] })[] = [];
      for (let i = 0; i < o.runs; i++) {
        idle.push((procMem(ctx.nr.pid)?.rssKiB ?? 0) / 1024);
        samples.push(await copyOnce(ctx, vm.scenario, i === o.runs - 1));
        log(
          `memory ${size.label} (${Math.round(dataBytes / MiB)} MiB of data) ${i + 1}/${o.runs}: Node-RED peak RSS ${samples[i].peakRssMiB} MiB, qemu-img ${samples[i].qemuImgPeakRssMiB} MiB; copy ${samples[i].copyMs} ms (busy ms: ${phaseSummary(samples[i].phases, /qemu-img|sha256|fsync|Durable/)})`,
        );
      }
      out.push({
        label: size.label,
        virtualMiB: size.mib,
        dataBytes,
        samples: samples.map(({ trace: _t, ...rest }) => rest),
        peakRssMiB: Math.max(...samples.map((s) => s.peakRssMiB)),
        qemuImgPeakRssMiB: Math.max(...samples.map((s) => s.qemuImgPeakRssMiB)),
        trace: samples[samples.length - 1].trace?.filter((_, i, all) => i % Math.max(1, Math.floor(all.length / 200)) === 0),
      });
    } finally {
      await vm.fleet.stop();
    }
  }
  return { idleRssMiB: round(median(idle)), disks: out, growthMiB: round(out[1].peakRssMiB - out[0].peakRssMiB) };
}
