// 4. Many VMs on one host through the whole flow (checkpoint method): QEMU processes without a
//    guest OS, two disks each with real data. Total time; the orchestration overhead beyond
//    copying (the wall time minus the time the same qemu-img convert commands take run by
//    themselves with the same concurrency); peak RSS of the Node-RED process; the host's mount
//    table sampled throughout (the old design mounted every disk); every child process seen.
// 6. Every ajv check the nodes made in the same runs, against the time of the stage itself.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { compare as qemuImgCompare, convertArgs } from '../src/providers/qemu-img';
import { sha256File } from '../src/repository/repository';
import { runProgram } from '../src/util/run';
import { startFleet, fleetSocketDir, type BareFleet } from './bare';
import { addScenarios, backup, type Ctx } from './context';
import { childrenOf, cpuOf, log, machineBusyMs, mountCount, nowMs, round } from './util';

const STAGES = [
  ['enumerate', 'enumerated', 'classified'],
  ['classify', 'classified', 'prepared'],
  ['prepare', 'prepared', 'snapshotted'],
  ['snapshot', 'snapshotted', 'post-snapshot'],
  ['postSnapshot', 'post-snapshot', 'copied'],
  ['copy', 'copied', undefined],
] as const;

export interface AjvStage {
  stage: string;
  stageMs: number;
  /** the node's check of its own output + the next node's check of its input (ms) */
  outputCheckMs: number;
  inputCheckMs: number;
  percentOfStage: number;
}

export interface ScaleRun {
  vms: number;
  /** VMs in the backup set the flow returned (all of them, or the run says which were skipped) */
  backedUp: number;
  warnings: string[];
  disks: number;
  dataBytes: number;
  wallMs: number;
  stageMs: Record<string, number>;
  copyAloneMs: number;
  /** CPU the machine used while the qemu-img commands ran by themselves */
  copyAloneCpuMs: number;
  /** the same copies flushed, hashed and compared with their sources, by themselves (copyAlone 'hashed+compared') */
  checkedAloneMs: number;
  /** wall time of the flow beyond that: the orchestration alone */
  overheadBeyondCheckedMs: number;
  overheadMs: number;
  overheadPerVmMs: number;
  peakRssMiB: number;
  children: Record<string, { processes: number; peakRssMiB: number }>;
  mounts: { before: number; min: number; max: number; after: number };
  responseBytes: number;
  /** busy time of the product's steps inside the Node-RED process (sums over concurrent calls) */
  phases: Record<string, { n: number; ms: number }>;
  /** where the 2 cores went during the run (ms of CPU): Node-RED itself, the programs it ran, the VMs' QEMU processes, the whole machine */
  cpu: CpuSplit;
  ajv: { stages: AjvStage[]; manifests: { count: number; totalMs: number; perManifestMs: number }; totalMs: number; perMessageMs: number };
}

export interface ScaleResult {
  qemuRssMiB: number;
  diskMiB: number;
  dataMiBPerDisk: number;
  runs: ScaleRun[];
  /**
   * The same counts again on fleets whose vCPUs halt and whose interval timer is off (bench/bare.ts,
   * firmware 'halt'): the idle VMs cost the host nothing measurable, as idle KVM guests, instead of
   * TCG running SeaBIOS's timer ticks (6-8 ms of CPU a second per VM)
   */
  halted?: ScaleRun[];
  /** the largest run again with the copy node's Verify off: how much of the overhead is the read-back compare */
  noVerify?: {
    vms: number;
    wallMs: number;
    copyAloneMs: number;
    overheadMs: number;
    checkedAloneMs?: number;
    overheadBeyondCheckedMs?: number;
    stageMs: Record<string, number>;
    cpu?: CpuSplit;
  };
}

export interface CpuSplit {
  nodeRedMs: number;
  childrenMs: number;
  qemuMs: number;
  machineMs: number;
}

/** CPU used while `fn` runs: by Node-RED, by the programs it ran, by the fleet's QEMU processes, by the machine. */
async function withCpu<T>(nrPid: number, fleet: BareFleet, fn: () => Promise<T>): Promise<[T, CpuSplit]> {
  const qemu = () => [...fleet.procs.values()].reduce((n, p) => n + cpuOf(p.pid!).selfMs, 0);
  // programs: the children Node-RED waited for, and its live children (the program launcher, the
  // guardian) with the programs they waited for
  const programs = () => cpuOf(nrPid).childrenMs + childrenOf(nrPid).reduce((n, c) => n + cpuOf(c).selfMs + cpuOf(c).childrenMs, 0);
  const nr0 = cpuOf(nrPid).selfMs,
    p0 = programs(),
    q0 = qemu(),
    m0 = machineBusyMs();
  const result = await fn();
  const nr1 = cpuOf(nrPid).selfMs,
    p1 = programs(),
    q1 = qemu(),
    m1 = machineBusyMs();
  return [result, { nodeRedMs: nr1 - nr0, childrenMs: p1 - p0, qemuMs: q1 - q0, machineMs: m1 - m0 }];
}

/**
 * The same qemu-img convert commands the product runs, by themselves, `lanes` VMs at a time.
 * With `checked`, each copy is also what the product makes of it, minus the orchestration: flushed
 * to disk, hashed (sha256) and compared with its source (qemu-img compare), the three at once.
 */
export async function copyAlone(
  fleet: BareFleet,
  n: number,
  scratch: string,
  lanes: number,
  checked: 'no' | 'hashed' | 'hashed+compared' = 'no',
): Promise<number> {
  const ids = fleet.ids.slice(0, n);
  let next = 0;
  const t0 = nowMs();
  await Promise.all(
    Array.from({ length: lanes }, async (_, lane) => {
      const out = path.join(scratch, `alone-${lane}.qcow2`);
      while (next < ids.length) {
        const id = ids[next++];
        for (const disk of fleet.disks.get(id)!) {
          await fs.rm(out, { force: true });
          await runProgram('qemu-img', convertArgs(disk, out, { sourceFormat: 'qcow2', compress: false, forceShare: true }));
          if (checked !== 'no') {
            await Promise.all([
              fs.open(out, 'r+').then(async (h) => {
                await h.sync();
                await h.close();
              }),
              sha256File(out),
              checked === 'hashed+compared' ? qemuImgCompare('qemu-img', disk, 'qcow2', out, 'qcow2') : undefined,
            ]);
          }
        }
      }
      await fs.rm(out, { force: true });
    }),
  );
  return nowMs() - t0;
}

export async function scaleSection(ctx: Ctx, o: { counts: number[]; diskMiB: number; dataMiB: number }): Promise<ScaleResult> {
  for (const vm of ctx.lab?.vms.values() ?? []) await vm.pause();
  const max = Math.max(...o.counts);
  // A fleet of exactly n VMs for the run of n: an idle QEMU with no guest OS still costs CPU under
  // TCG (about 6 ms a second each here, on SeaBIOS), so VMs beyond the run's would slow it with CPU that is not
  // the product's (a fleet of 200 behind the 100-VM run made it 2.5 x slower).
  const fleets = new Map<string, BareFleet>();
  const fleetOf = async (n: number, firmware: 'seabios' | 'halt' = 'seabios'): Promise<BareFleet> => {
    const key = `${n}-${firmware}`;
    for (const [k, f] of fleets) if (k !== key) await f.stop().then(() => fleets.delete(k));
    let f = fleets.get(key);
    if (!f) {
      f = await startFleet(path.join(ctx.work, 'bare', `fleet-${key}`), {
        count: n,
        disksPerVm: 2,
        diskMiB: o.diskMiB,
        dataMiB: o.dataMiB,
        prefix: 'vm',
        firmware,
      });
      fleets.set(key, f);
    }
    return f;
  };
  const scratch = path.join(ctx.work, 'scratch');
  await fs.mkdir(scratch, { recursive: true });
  const runs: ScaleRun[] = [];
  const halted: ScaleRun[] = [];
  let qemuRssMiB = 0;
  try {
    const one = async (n: number, firmware: 'seabios' | 'halt'): Promise<void> => {
      const fleet = await fleetOf(n, firmware);
      const name = firmware === 'halt' ? `scale-${n}-halted` : `scale-${n}`;
      await addScenarios(ctx, [
        {
          name,
          socketDir: await fleetSocketDir(path.join(ctx.work, 'sockets'), fleet, n, firmware === 'halt' ? `halted-${n}` : undefined),
          fallback: 'checkpoint' as const,
          concurrency: 2,
        },
      ]);
      if (firmware === 'seabios') qemuRssMiB = fleet.qemuRssMiB();
      const before = mountCount(ctx.nr.pid);
      // BENCH_PROFILE_DIR: a CPU profile of Node-RED during the largest run (see probe.ts)
      const profiling = process.env.BENCH_PROFILE_DIR && n === max && firmware === 'seabios';
      if (profiling) process.kill(ctx.nr.pid, 'SIGTTIN');
      const [r, cpu] = await withCpu(ctx.nr.pid, fleet, () => backup(ctx, name, { sampleMs: 50 }));
      if (profiling) process.kill(ctx.nr.pid, 'SIGTTOU');
      const calls = r.calls.filter((c) => c.fn === 'assertStage' || c.fn === 'assertManifest');
      const after = mountCount(ctx.nr.pid);
      const aloneCpu0 = machineBusyMs();
      const alone = await copyAlone(fleet, n, scratch, 2);
      const copyAloneCpuMs = machineBusyMs() - aloneCpu0;
      const checkedAlone = await copyAlone(fleet, n, scratch, 2, 'hashed+compared');
      const stageMs: Record<string, number> = {};
      for (const [k, t] of Object.entries(r.set.timings as Record<string, { ms: number }>)) stageMs[k] = t.ms;
      const ajvStages: AjvStage[] = STAGES.map(([timing, output, nextInput]) => {
        const out = calls
          .filter((c) => c.fn === 'assertStage' && c.stage === output && c.what !== 'msg.payload')
          .reduce((a, c) => a + c.ms, 0);
        const inp = nextInput
          ? calls.filter((c) => c.fn === 'assertStage' && c.stage === output && c.what === 'msg.payload').reduce((a, c) => a + c.ms, 0)
          : 0;
        const ms = stageMs[timing] ?? 0;
        return {
          stage: timing,
          stageMs: ms,
          outputCheckMs: round(out, 2),
          inputCheckMs: round(inp, 2),
          percentOfStage: ms > 0 ? round(((out + inp) / ms) * 100, 2) : NaN,
        };
      });
      const manifests = calls.filter((c) => c.fn === 'assertManifest');
      const stageCalls = calls.filter((c) => c.fn === 'assertStage');
      const totalMs = calls.reduce((a, c) => a + c.ms, 0);
      const dataBytes = n * 2 * o.dataMiB * 1024 * 1024;
      const run: ScaleRun = {
        vms: n,
        backedUp: r.set.vms.length,
        warnings: (r.set.warnings ?? []).slice(0, 10),
        disks: n * 2,
        dataBytes,
        wallMs: Math.round(r.wallMs),
        stageMs,
        copyAloneMs: Math.round(alone),
        copyAloneCpuMs,
        checkedAloneMs: Math.round(checkedAlone),
        overheadBeyondCheckedMs: Math.round(r.wallMs - checkedAlone),
        overheadMs: Math.round(r.wallMs - alone),
        overheadPerVmMs: round((r.wallMs - alone) / n),
        peakRssMiB: round(r.sampler.peakRssKiB / 1024),
        children: r.sampler.children(),
        mounts: { before, min: r.sampler.mountsMin, max: r.sampler.mountsMax, after },
        responseBytes: r.responseBytes,
        phases: r.phases,
        cpu,
        ajv: {
          stages: ajvStages,
          manifests: {
            count: manifests.length,
            totalMs: round(
              manifests.reduce((a, c) => a + c.ms, 0),
              2,
            ),
            perManifestMs: round(manifests.reduce((a, c) => a + c.ms, 0) / Math.max(1, manifests.length), 3),
          },
          totalMs: round(totalMs, 2),
          perMessageMs: round(stageCalls.reduce((a, c) => a + c.ms, 0) / Math.max(1, stageCalls.length), 3),
        },
      };
      (firmware === 'halt' ? halted : runs).push(run);
      log(
        `scale ${n} VMs x 2 disks${firmware === 'halt' ? ', vCPUs halted' : ''}: ${run.wallMs} ms in the flow (${Object.entries(stageMs)
          .map(([k, v]) => `${k} ${v}`)
          .join(
            ', ',
          )}); qemu-img alone ${run.copyAloneMs} ms (CPU ${copyAloneCpuMs} ms), with flush + sha256 + compare ${run.checkedAloneMs} ms (overhead beyond that ${run.overheadBeyondCheckedMs} ms); overhead ${run.overheadMs} ms (${run.overheadPerVmMs} ms/VM); peak RSS ${run.peakRssMiB} MiB; CPU ms ${JSON.stringify(cpu)}; mounts ${before}..${r.sampler.mountsMax}; ajv ${run.ajv.totalMs} ms in ${calls.length} checks; children ${JSON.stringify(run.children)}; busy ms by step ${JSON.stringify(
          Object.fromEntries(
            Object.entries(r.phases)
              .filter(([k]) => !k.startsWith('assert'))
              .map(([k, v]) => [k, `${v.n}x ${Math.round(v.ms)}`]),
          ),
        )}`,
      );
    };
    for (const n of o.counts) await one(n, 'seabios');
    // the largest run once more with Verify off (no qemu-img compare per disk)
    const fleet = await fleetOf(max);
    await addScenarios(ctx, [
      {
        name: `scale-${max}-noverify`,
        socketDir: await fleetSocketDir(path.join(ctx.work, 'sockets'), fleet, max, `noverify-${max}`),
        fallback: 'checkpoint' as const,
        concurrency: 2,
        verify: false,
      },
    ]);
    const [nv, nvCpu] = await withCpu(ctx.nr.pid, fleet, () => backup(ctx, `scale-${max}-noverify`, { sampleMs: 50 }));
    const nvAlone = await copyAlone(fleet, max, scratch, 2);
    const nvChecked = await copyAlone(fleet, max, scratch, 2, 'hashed');
    const nvStages: Record<string, number> = {};
    for (const [k, t] of Object.entries(nv.set.timings as Record<string, { ms: number }>)) nvStages[k] = t.ms;
    const noVerify = {
      vms: max,
      wallMs: Math.round(nv.wallMs),
      copyAloneMs: Math.round(nvAlone),
      overheadMs: Math.round(nv.wallMs - nvAlone),
      checkedAloneMs: Math.round(nvChecked),
      overheadBeyondCheckedMs: Math.round(nv.wallMs - nvChecked),
      stageMs: nvStages,
      cpu: nvCpu,
    };
    log(
      `scale ${max} VMs x 2 disks, Verify off: ${noVerify.wallMs} ms in the flow; qemu-img alone ${noVerify.copyAloneMs} ms; overhead ${noVerify.overheadMs} ms; with flush + sha256 ${noVerify.checkedAloneMs} ms (overhead beyond that ${noVerify.overheadBeyondCheckedMs} ms); CPU ms ${JSON.stringify(nvCpu)}`,
    );
    // every count again with the idle VMs' vCPUs halted (see bench/bare.ts)
    for (const n of o.counts) await one(n, 'halt');
    return { qemuRssMiB, diskMiB: o.diskMiB, dataMiBPerDisk: o.dataMiB, runs, halted, noVerify };
  } finally {
    for (const f of fleets.values()) await f.stop();
  }
}
