// Turns bench/results.json into the verdicts (met / missed per target) and BENCHMARKS.md.
// Run by itself to re-render: node dist/bench/report.js [results.json] [BENCHMARKS.md] [--compare=other.json]
// or, from a run of --only=incremental, to put only that section in: ... --splice-incremental
import { readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { durableFloorMeasure, incrementalVerdicts, renderIncremental, spliceIncremental } from './report-incremental';

export interface Verdict {
  id: string;
  item: string;
  measure: string;
  target: string;
  result: string;
  met: boolean | null;
  why?: string;
}

const MB = 1e6;
const fmt = (n: number | undefined, d = 0) => (n === undefined || Number.isNaN(n) ? 'n/a' : n.toFixed(d));
const mib = (bytes: number) => bytes / 2 ** 20;

/** Copy throughput: medians over the backups of the 4 GiB lab disk; the product's steps from the probe. */
export function throughput(r: any) {
  const f = r.sections?.freeze4g;
  if (!f?.baselines?.length) return undefined;
  const med = (xs: number[]) => {
    const s = xs.filter((x) => typeof x === 'number' && !Number.isNaN(x)).sort((a, b) => a - b);
    if (!s.length) return NaN;
    const m = s.length >> 1;
    return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
  };
  const phase = (name: string) => med(f.samples.map((x: any) => x.phases?.[name]?.ms ?? NaN));
  const count = (name: string) => med(f.samples.map((x: any) => x.phases?.[name]?.n ?? NaN));
  const dataBytes = med(f.baselines.map((b: any) => b.dataBytes));
  const copyMs = med(f.samples.map((s: any) => s.copyMs));
  const plainMs = med(f.baselines.map((b: any) => b.plainMs));
  const flagsMs = med(f.baselines.map((b: any) => b.productFlagsMs));
  const aloneMs = Math.min(plainMs, flagsMs);
  const hashAloneMs = med(f.baselines.map((b: any) => b.sha256Ms ?? NaN));
  const flushAloneMs = med(f.baselines.map((b: any) => b.flushMs ?? NaN));
  // since 1334ed9 the copy is QEMU's backup job through qemu-nbd (provider.exportDisk), not qemu-img convert
  const viaConvert = !Number.isNaN(phase('qemu-img convert'));
  const convertMs = viaConvert ? phase('qemu-img convert') : phase('provider.exportDisk');
  return {
    dataBytes,
    copyMs,
    plainMs,
    flagsMs,
    aloneMs,
    convertMs,
    viaConvert,
    infoMs: phase('qemu-img info'),
    compareMs: viaConvert ? phase('qemu-img compare') : phase('provider.verifyDisk'),
    sha256Ms: phase('sha256File'),
    sha256Count: count('sha256File'),
    describeMs: phase('provider.describe'),
    durableMs: phase('writeFileDurable'),
    productMBps: dataBytes / MB / (copyMs / 1000),
    aloneMBps: dataBytes / MB / (aloneMs / 1000),
    ratio: aloneMs / copyMs,
    hashAloneMs,
    /** against the least any copy that hashes its output must do: convert, then one sha256 pass */
    floorRatio: (aloneMs + hashAloneMs) / copyMs,
    flushAloneMs,
    /** the same floor with its output sent to the disk, as the product's copy is before it counts */
    durableFloorRatio: (aloneMs + hashAloneMs + flushAloneMs) / copyMs,
    convertRatio: aloneMs / convertMs,
  };
}

export function verdicts(r: any): Verdict[] {
  const v: Verdict[] = [];
  const s = r.sections ?? {};
  const f256 = s.freeze256;
  const f4g = s.freeze4g;
  for (const [f, label] of [
    [f256, '256 MiB'],
    [f4g, '4 GiB'],
  ] as const) {
    if (!f) continue;
    v.push({
      id: `1-freeze-${label}`,
      item: '1',
      measure: `freeze window, ${label} data disk (freeze sent -> thaw acknowledged, agent wire), median / p95 of ${f.wire.n}`,
      target: 'median <= 150 ms',
      result: `${fmt(f.wire.median)} / ${fmt(f.wire.p95)} ms`,
      met: f.wire.median <= 150,
    });
  }
  if (f256 && f4g) {
    const growth = f4g.wire.median - f256.wire.median;
    v.push({
      id: '1-growth',
      item: '1',
      measure: 'freeze window growth from 256 MiB to 4 GiB (medians)',
      target: 'no growth (within 15 % of the 256 MiB median)',
      result: `${growth >= 0 ? '+' : ''}${fmt(growth)} ms (${fmt((growth / f256.wire.median) * 100)} %)`,
      met: growth <= 0.15 * f256.wire.median,
    });
  }
  const d = s.downtime;
  if (d) {
    const stops = d.checkpoint.reduce((n: number, c: any) => n + c.stopEvents + c.resumeEvents, 0);
    v.push({
      id: '2-checkpoint',
      item: '2',
      measure: `downtime, checkpoint method (STOP/RESUME events over ${d.checkpoint.length} backups)`,
      target: '0 ms (vCPUs never stopped)',
      result: `${stops} events, 0 ms`,
      met: stops === 0,
    });
    v.push({
      id: '2-saved',
      item: '2',
      measure: `downtime, saved-state method, STOP -> RESUME / saving the memory alone (medians of ${d.saved.length})`,
      target: '<= 1.3',
      result: `${fmt(d.savedStats.median)} ms / ${fmt(d.aloneStats.median)} ms = ${fmt(d.ratio, 2)}`,
      met: d.ratio <= 1.3,
    });
  }
  const t = throughput(r);
  if (t) {
    v.push({
      id: '3-throughput',
      item: '3',
      measure: `copy throughput, copy artifacts / qemu-img convert alone (${fmt(mib(t.dataBytes))} MiB of data, medians)`,
      target: '>= 0.95',
      result: `${fmt(t.productMBps)} / ${fmt(t.aloneMBps)} MB/s = ${fmt(t.ratio, 2)}`,
      met: t.ratio >= 0.95,
    });
    if (!Number.isNaN(t.hashAloneMs)) {
      v.push({
        id: '3-floor',
        item: '3',
        measure: `copy of the 4 GiB lab disk (${fmt(mib(t.dataBytes))} MiB of data, a full each time): qemu-img convert alone + one sha256 pass over its output alone / copy artifacts (the least a copy hashed for its manifest can cost; medians; issue 22)`,
        target: '>= 0.9',
        result: `(${fmt(t.aloneMs)} + ${fmt(t.hashAloneMs)}) / ${fmt(t.copyMs)} ms = ${fmt(t.floorRatio, 2)}`,
        met: t.floorRatio >= 0.9,
      });
    }
    if (!Number.isNaN(t.flushAloneMs)) {
      v.push({
        id: '3-floor-durable',
        item: '3',
        measure: durableFloorMeasure('copy', 'medians'),
        target: 'report',
        result: `(${fmt(t.aloneMs)} + ${fmt(t.hashAloneMs)} + ${fmt(t.flushAloneMs)}) / ${fmt(t.copyMs)} ms = ${fmt(t.durableFloorRatio, 2)}`,
        met: null,
      });
    }
    v.push({
      id: '3-convert',
      item: '3',
      measure: `the copy itself: ${t.viaConvert ? 'qemu-img convert as the product runs it (its argv, inside the copy step)' : "the disk copy as the product runs it (provider.exportDisk: the view read from QEMU's NBD export by Node-RED's process, written and hashed as read)"} / qemu-img convert of the image alone (medians)`,
      target: '>= 0.95',
      result: `${fmt(t.convertMs)} ms vs ${fmt(t.aloneMs)} ms = ${fmt(t.convertRatio, 2)}`,
      met: t.convertRatio >= 0.95,
    });
  }
  const sp = s.sparse;
  if (sp?.dense?.floor) {
    const ratio = sp.dense.floor.median / sp.dense.copy.median;
    v.push({
      id: '3-floor-256',
      item: '3',
      measure: `copy of a 256 MiB disk holding 256 MiB (QEMU without a guest, a full each time): qemu-img convert alone + one sha256 pass over its output alone / copy artifacts (medians; issue 22)`,
      target: '>= 0.9',
      result: `${fmt(sp.dense.floor.median)} / ${fmt(sp.dense.copy.median)} ms = ${fmt(ratio, 2)}`,
      met: ratio >= 0.9,
    });
  }
  if (sp?.dense?.durableFloor) {
    const ratio = sp.dense.durableFloor.median / sp.dense.copy.median;
    v.push({
      id: '3-floor-256-durable',
      item: '3',
      measure: durableFloorMeasure('copy', 'medians'),
      target: 'report',
      result: `${fmt(sp.dense.durableFloor.median)} / ${fmt(sp.dense.copy.median)} ms = ${fmt(ratio, 2)}`,
      met: null,
    });
  }
  if (sp) {
    v.push({
      id: '3-sparse',
      item: '3',
      measure: 'sparse: copy of 8 GiB disk holding 256 MiB / 256 MiB disk holding 256 MiB (medians)',
      target: '<= 1.2',
      result: `${fmt(sp.sparse.copy.median)} / ${fmt(sp.dense.copy.median)} ms = ${fmt(sp.ratio, 2)}`,
      met: sp.ratio <= 1.2,
    });
  }
  const sc = s.scale;
  if (sc?.runs?.length) {
    const runs = sc.runs as any[];
    const by = (n: number) => runs.find((x) => x.vms === n);
    const biggest = runs[runs.length - 1];
    const hundred = by(100) ?? biggest;
    v.push({
      id: '4-overhead',
      item: '4',
      measure: `orchestration overhead beyond copying, ${hundred.vms} VMs x 2 disks (issue 22: <= 5 s, <= 50 ms per VM)`,
      target: '<= 5 s',
      result: `${fmt(hundred.overheadMs / 1000, 1)} s = ${fmt(hundred.overheadPerVmMs)} ms per VM (total ${fmt(hundred.wallMs / 1000, 1)} s, qemu-img alone ${fmt(hundred.copyAloneMs / 1000, 1)} s)`,
      met: hundred.overheadMs <= 5000,
    });
    const halted = (sc.halted ?? []) as any[];
    if (halted.length) {
      const h100 = halted.find((x) => x.vms === hundred.vms) ?? halted[halted.length - 1];
      v.push({
        id: '4-overhead-halted',
        item: '4',
        measure: `the same, the idle VMs' vCPUs halted (a firmware of \`cli; hlt\`, no interval timer: idle as a KVM guest in hlt, instead of TCG running SeaBIOS's timer ticks), ${h100.vms} VMs; per VM at ${halted.map((x) => x.vms).join(' / ')} VMs`,
        target: 'report',
        result: `${fmt(h100.overheadMs / 1000, 1)} s = ${fmt(h100.overheadPerVmMs)} ms per VM (total ${fmt(h100.wallMs / 1000, 1)} s, qemu-img alone ${fmt(h100.copyAloneMs / 1000, 1)} s); ${halted.map((x) => fmt(x.overheadPerVmMs)).join(' / ')} ms`,
        met: null,
      });
    }
    if (biggest.checkedAloneMs !== undefined) {
      v.push({
        id: '4-overhead-checked',
        item: '4',
        measure: `the orchestration alone: the flow beyond the same copies flushed, hashed (sha256) and compared with their sources by themselves, ${biggest.vms} VMs`,
        target: 'report',
        result: `${fmt(biggest.overheadBeyondCheckedMs / 1000, 1)} s (total ${fmt(biggest.wallMs / 1000, 1)} s, the copies with flush + sha256 + compare alone ${fmt(biggest.checkedAloneMs / 1000, 1)} s)`,
        met: null,
      });
    }
    if (sc.noVerify) {
      const nv = sc.noVerify;
      v.push({
        id: '4-overhead-noverify',
        item: '4',
        measure: `the same with the copy node's Verify off (no read-back check of each copy; sha256 still taken), ${nv.vms} VMs`,
        target: 'report',
        result: `${fmt(nv.overheadMs / 1000, 1)} s (total ${fmt(nv.wallMs / 1000, 1)} s, qemu-img alone ${fmt(nv.copyAloneMs / 1000, 1)} s)${nv.checkedAloneMs !== undefined ? `; beyond the copies flushed + hashed alone (${fmt(nv.checkedAloneMs / 1000, 1)} s): ${fmt(nv.overheadBeyondCheckedMs / 1000, 1)} s` : ''}`,
        met: null,
      });
    }
    const mountsChanged = runs.some((x) => x.mounts.max !== x.mounts.before || x.mounts.min !== x.mounts.before);
    v.push({
      id: '4-mounts',
      item: '4',
      measure: 'host mounts during the runs (mount table of the Node-RED process, sampled every 50 ms)',
      target: 'no per-disk host mount',
      result: runs.map((x) => `${x.vms} VMs: ${x.mounts.before} -> ${x.mounts.min}..${x.mounts.max}`).join('; '),
      met: !mountsChanged,
    });
    if (runs.length >= 2) {
      // linear or better: no run costs more per VM than 1.2 x the smallest run's per-VM overhead
      const first = runs[0];
      const linear = runs.every((x) => x.overheadPerVmMs <= 1.2 * first.overheadPerVmMs);
      v.push({
        id: '4-linear',
        item: '4',
        measure: `overhead growth with the VM count (${runs.map((x) => x.vms).join(' / ')} VMs)`,
        target: 'linear or better',
        result: `${runs.map((x) => fmt(x.overheadMs / 1000, 2)).join(' / ')} s (${runs.map((x) => fmt(x.overheadPerVmMs)).join(' / ')} ms per VM)`,
        met: linear,
      });
    }
    v.push({
      id: '4-rss',
      item: '4',
      measure: `peak RSS of the Node-RED process, ${biggest.vms} VMs`,
      target: '<= 200 MB',
      result: `${fmt((biggest.peakRssMiB * 2 ** 20) / MB)} MB (${fmt(biggest.peakRssMiB)} MiB; qemu-img child ${fmt(biggest.children['qemu-img']?.peakRssMiB)} MiB)`,
      met: biggest.peakRssMiB * 2 ** 20 <= 200 * MB,
    });
  }
  const m = s.memory;
  if (m) {
    const big = m.disks[m.disks.length - 1];
    v.push({
      id: '5-peak',
      item: '5',
      measure: `peak RSS of the Node-RED process copying a ${big.label} disk (${fmt(mib(big.dataBytes))} MiB of data)`,
      target: '<= 200 MB',
      result: `${fmt((big.peakRssMiB * 2 ** 20) / MB)} MB (${fmt(big.peakRssMiB)} MiB); qemu-img child ${fmt(big.qemuImgPeakRssMiB)} MiB`,
      met: big.peakRssMiB * 2 ** 20 <= 200 * MB,
    });
    v.push({
      id: '5-flat',
      item: '5',
      measure: `peak RSS, ${m.disks[0].label} vs ${big.label} disk`,
      target: 'flat (within 10 MiB)',
      result: `${fmt(m.disks[0].peakRssMiB)} -> ${fmt(big.peakRssMiB)} MiB (${m.growthMiB >= 0 ? '+' : ''}${fmt(m.growthMiB, 1)})`,
      met: Math.abs(m.growthMiB) <= 10,
    });
  }
  if (sc?.runs?.length) {
    const biggest = sc.runs[sc.runs.length - 1];
    const stageTotal = biggest.ajv.stages.reduce((n: number, x: any) => n + x.stageMs, 0);
    v.push({
      id: '6-ajv',
      item: '6',
      measure: `ajv checks per message, ${biggest.vms}-VM backup set (${fmt(biggest.responseBytes / 1024)} KiB of JSON)`,
      target: 'report, against the stage',
      result: `${fmt(biggest.ajv.perMessageMs, 2)} ms per check; ${fmt(biggest.ajv.totalMs)} ms in all = ${fmt((biggest.ajv.totalMs / stageTotal) * 100, 2)} % of the stages' ${fmt(stageTotal / 1000, 1)} s`,
      met: null,
    });
  }
  v.push(...incrementalVerdicts(r));
  return v;
}

// ---------------------------------------------------------------- markdown

function table(head: string[], rows: (string | number | undefined)[][]): string {
  const line = (cells: (string | number | undefined)[]) => `| ${cells.map((c) => (c === undefined ? '' : String(c))).join(' | ')} |`;
  return [line(head), line(head.map(() => '---')), ...rows.map(line)].join('\n');
}

const mark = (met: boolean | null) => (met === true ? 'met' : met === false ? '**missed**' : 'report');

export function renderMarkdown(r: any, compare?: any): string {
  const s = r.sections ?? {};
  const m = r.machine ?? {};
  const out: string[] = [];
  out.push('# Benchmarks');
  out.push('');
  out.push('Issue 5: guest freeze window, VM downtime, copy throughput against qemu-img, 100 VMs on one host, memory, ajv cost.');
  out.push(
    "Issue 13 item 9: incremental backups against fulls of the same disk and a bare QMP script, the full's floor, the freeze window.",
  );
  out.push(
    'Issue 22: the fixed cost per disk and VM (10 to 200 VMs), the copy of a 256 MiB and a 4 GiB disk against convert + sha256, the write path, a 50-domain libvirt enumerate.',
  );
  out.push('Benchmarks report; they are not tests, and CI does not gate on these times.');
  out.push('');
  out.push('## Reproduce');
  out.push('');
  out.push('```sh');
  out.push('npm run build');
  out.push('npm run bench              # full run, about 10 min; writes bench/results.json and BENCHMARKS.md');
  out.push('node dist/bench/fleet-paths.js --vms=4     # per-disk cost of push, push into qemu-storage-daemon, pull (no product code)');
  out.push('node dist/bench/write-path.js --rounds=2 --data-mib=256,1024   # writer cache modes on ext4 and tmpfs, with the hash + fsync');
  out.push('node dist/bench/copy-path.js               # qemu-nbd cache and aio choices under the backup job');
  out.push(
    'node dist/bench/pull-cpu.js --rounds=5     # the in-process full alone (reads, pull, read-back check) against convert + sha256, with CPU',
  );
  out.push('node dist/bench/libvirt-fleet.js --domains=50 --runs=5   # libvirt enumerate (needs libvirtd)');
  out.push('npm run bench -- --quick   # fewer repetitions, smaller disks, about 3-4 min');
  out.push('npm run bench -- --only=freeze,downtime,sparse,memory,scale,incremental   # a subset');
  out.push('# diagnostics: BENCH_DUMP=DIR (every timed call and journal line per backup), BENCH_PROFILE_DIR=DIR (CPU profile of');
  out.push('# Node-RED during the largest scale run), BENCH_NODE_ARGS="--cpu-prof --cpu-prof-dir=DIR" (node options for Node-RED)');
  out.push('node dist/bench/report.js bench/results.json BENCHMARKS.md   # re-render this file from the JSON');
  out.push('```');
  out.push('');
  out.push(
    'Everything runs through a real Node-RED process (`node-red` ' +
      (m.nodeRed ?? '') +
      ' from devDependencies, this package linked into its user',
  );
  out.push(
    'directory, the six nodes wired `http in` -> enumerate -> classify -> prepare -> snapshot -> post-snapshot -> copy -> `http response`),',
  );
  out.push('against real QEMU processes: lab guests (TCG, qemu-ga, a workload appending records to an ext4 data disk) and QEMU processes');
  out.push('without a guest OS (`-machine pc`, no boot disk). Root is needed (QEMU, `/proc/<pid>/clear_refs`).');
  out.push('');
  out.push(
    `## Machine (run of ${r.generatedAt}, ${r.mode} mode${r.label ? `, ${r.label}` : ''}, ${Math.round((r.totalMs ?? 0) / 1000)} s)`,
  );
  out.push('');
  out.push(
    table(
      ['', ''],
      [
        ['CPU', `${m.cpu} x ${m.cores} cores${m.shaNi ? ' (SHA-NI)' : ''}`],
        ['memory', `${m.memoryGiB} GiB`],
        ['OS / kernel', `${m.os} / ${m.kernel}`],
        ['Node.js / Node-RED', `${m.node} / ${m.nodeRed}`],
        ['QEMU', `${m.qemu}, ${m.qemuImg}; accelerator ${m.accel}`],
        ['work file system', `${m.workFs}`],
        ['load average at start / end', `${(m.loadAtStart ?? []).join(' ')} / ${(m.loadAtEnd ?? []).join(' ')}`],
        ...(r.load && Object.keys(r.load).length
          ? [
              [
                "load average (1 / 5 / 15 min) at the start -> the end of each section (the bench's own VMs and programs count)",
                Object.entries(r.load as Record<string, number[]>)
                  .map(([k, v]) => `${k} ${v.slice(0, 3).join(' ')} -> ${v.slice(3, 6).join(' ')}`)
                  .join('; '),
              ],
            ]
          : []),
        ...(r.steal && Object.keys(r.steal).length
          ? [
              [
                'CPU stolen by the hypervisor under this machine, per section',
                Object.entries(r.steal)
                  .map(([k, v]) => `${k} ${v} %`)
                  .join(', '),
              ],
            ]
          : []),
        [
          'other QEMU processes on the host at start',
          `${m.otherQemuProcessesAtStart} (not started by the benchmark; they share the 2 cores)`,
        ],
      ],
    ),
  );
  out.push('');
  out.push('## Results');
  out.push('');
  const vs = (r.targets ?? verdicts(r)) as Verdict[];
  const cv = compare ? ((compare.targets ?? verdicts(compare)) as Verdict[]) : undefined;
  out.push(
    table(
      ['#', 'measure', 'target', 'result', ...(cv ? [`with the proposed changes (${compare.label ?? 'compare'})`] : []), 'verdict'],
      vs.map((x) => [x.item, x.measure, x.target, x.result, ...(cv ? [cv.find((y) => y.id === x.id)?.result ?? ''] : []), mark(x.met)]),
    ),
  );
  out.push('');

  // ---- 1
  if (s.freeze256 || s.freeze4g) {
    out.push('## 1. Guest freeze window');
    out.push('');
    out.push(
      'One lab VM per backup (a socket directory holding that VM only), checkpoint policy, method child-vm-snapshot (qemu-ga freeze).',
    );
    out.push(
      "The window is measured four ways: on the wire of the agent channel by a byte proxy in front of the VM's qga socket (freeze command",
    );
    out.push("passing -> thaw reply passing; the figure the targets use), in the product's journal (freeze intent -> thaw done), as the");
    out.push(
      'product reports it (`snapshot.frozenMs`), and by the guest itself (its fsfreeze hook logs /proc/uptime before it freezes and after',
    );
    out.push(
      'it thaws; 10 ms steps). "Agent alone" is the same agent answering guest-fsfreeze-freeze then, at once, guest-fsfreeze-thaw with',
    );
    out.push('nothing in between: the floor any product pays on this guest. The other lab guests are paused (QMP `stop`) while one is');
    out.push("measured, so that three TCG guests' workloads do not share the 2 cores (the run of 04:00 and 06:34 did not do this).");
    out.push('');
    const rows: (string | number)[][] = [];
    for (const f of [s.freeze256, s.freeze4g].filter(Boolean)) {
      const part = (k: string) => {
        const xs = f.samples
          .map((x: any) => x[k])
          .filter((x: any) => typeof x === 'number')
          .sort((a: number, b: number) => a - b);
        return xs.length ? xs[xs.length >> 1] : NaN;
      };
      rows.push([
        `${f.dataDiskMiB >= 1024 ? `${f.dataDiskMiB / 1024} GiB` : `${f.dataDiskMiB} MiB`} (${f.fillMiB} MiB data)`,
        f.wire.n,
        `${fmt(f.wire.median)} / ${fmt(f.wire.p95)}`,
        `${fmt(f.journal.median)} / ${fmt(f.journal.p95)}`,
        `${fmt(f.product.median)} / ${fmt(f.product.p95)}`,
        `${fmt(f.guest?.median)} / ${fmt(f.guest?.p95)}`,
        `${fmt(f.agentFloor?.median)} / ${fmt(f.agentFloor?.p95)}`,
        `${fmt(part('agentFreezeMs'))} + ${fmt(part('hopMs'))} + ${fmt(part('transactionMs'))} + ${fmt(part('probeMs'))} + ${fmt(part('agentThawMs'))}`,
        f.cold ? `${fmt(f.cold.wireMs)}` : '',
      ]);
    }
    out.push(
      table(
        [
          'data disk',
          'backups',
          'wire median / p95 (ms)',
          'journal',
          'product frozenMs',
          "guest's own record",
          'agent alone',
          'median parts: agent freeze + Node-RED hop + QMP transaction + status probe + agent thaw (ms)',
          'first backup after Node-RED start (ms)',
        ],
        rows,
      ),
    );
    out.push('');
  }
  // ---- 2
  if (s.downtime) {
    const d = s.downtime;
    out.push('## 2. VM downtime');
    out.push('');
    out.push(
      `Lab VM without an agent (${d.memoryMiB} MiB RAM), STOP / RESUME events read from QEMU on a second QMP monitor the product does not use`,
    );
    out.push(
      '(QEMU\'s own event timestamps). "Saving the memory alone": stop, migrate (without QEMU\'s 128 MiB/s migration throttle, which the',
    );
    out.push(
      'product lifts too) to a unix socket written to a file, cont, run by the benchmark in the same loop; measured from the migrate',
    );
    out.push(
      'command to the whole stream being in the file. The fsync of that file is timed apart: the product flushes the state file after',
    );
    out.push(
      'the VM runs again (in the copy stage, before hashing it), so it is not part of the downtime of either. "product: save" is the journal\'s',
    );
    out.push('save intent -> done, which includes starting the saved-state receiver process before the VM is stopped.');
    out.push('');
    const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
    const fsyncs = d.alone.map((x: any) => x.fsyncMs).filter((x: any) => typeof x === 'number');
    out.push(
      table(
        [
          'method',
          'backups',
          'STOP / RESUME events',
          'downtime median / p95 (ms)',
          'memory saved alone median / p95 (ms)',
          'ratio',
          'product: save / stopped between save and resume (median ms)',
          'fsync of the state file alone (median ms)',
        ],
        [
          [
            'checkpoint',
            d.checkpoint.length,
            `${d.checkpoint.reduce((n: number, c: any) => n + c.stopEvents, 0)} / ${d.checkpoint.reduce((n: number, c: any) => n + c.resumeEvents, 0)}`,
            '0',
            '',
            '',
            '',
            '',
          ],
          [
            'saved-state',
            d.saved.length,
            `${d.saved.length} / ${d.saved.length}`,
            `${fmt(d.savedStats.median)} / ${fmt(d.savedStats.p95)}`,
            `${fmt(d.aloneStats.median)} / ${fmt(d.aloneStats.p95)}`,
            fmt(d.ratio, 2),
            `${fmt(med(d.saved.map((x: any) => x.saveMs)))} / ${fmt(med(d.saved.map((x: any) => x.stoppedBetweenMs)))}`,
            fsyncs.length ? fmt(med(fsyncs)) : 'n/a',
          ],
        ],
      ),
    );
    out.push('');
    // where a stopped VM's time goes, from QEMU's own events (MIGRATION needs the "events" capability)
    const splits = (xs: any[] | undefined) => (xs ?? []).map((x: any) => x.split).filter(Boolean);
    const rows = [
      ['the product, in Node-RED (STOP -> RESUME)', splits(d.saved)],
      ["the product's save function, called from the benchmark process", splits(d.productFn)],
      ['saving the memory alone (its fsync before cont included)', splits(d.alone)],
    ].filter(([, xs]) => (xs as any[]).length > 0) as [string, any[]][];
    if (rows.length) {
      out.push(
        "Where the stopped time goes, from QEMU's events on the observing monitor (STOP, MIGRATION setup, MIGRATION completed, RESUME; medians):",
      );
      out.push('');
      out.push(
        table(
          ['saving', 'samples', 'STOP -> migration starts (ms)', 'migration (ms)', 'migration done -> RESUME (ms)'],
          rows.map(([what, xs]) => [
            what,
            xs.length,
            fmt(med(xs.map((x) => x.stopToMigrationMs))),
            fmt(med(xs.map((x) => x.migrationMs))),
            fmt(med(xs.map((x) => x.migrationToResumeMs))),
          ]),
        ),
      );
      out.push('');
    }
  }
  // ---- 3
  const t = throughput(r);
  if (t || s.sparse) {
    out.push('## 3. Copy throughput');
    out.push('');
    if (t) {
      out.push(
        `The 4 GiB lab data disk (${fmt(mib(t.dataBytes))} MiB of data), after every backup of it: \`qemu-img convert -f qcow2 -O qcow2 -U\` of the same base`,
      );
      out.push(
        'image by itself (plain, and with the product\'s argv `-m 8 -W`), in the same loop. "copy artifacts" is `copy.ms` of the VM: staging',
      );
      out.push("directory to published. Its steps are timed inside the Node-RED process (probe.ts wraps the package's own functions).");
      out.push('');
      out.push(
        table(
          ['', 'median (ms)', 'MB/s of data'],
          [
            ['product: copy artifacts (copy.ms)', fmt(t.copyMs), fmt(t.productMBps)],
            ['qemu-img convert alone, plain', fmt(t.plainMs), fmt(t.dataBytes / MB / (t.plainMs / 1000))],
            ["qemu-img convert alone, the product's argv", fmt(t.flagsMs), fmt(t.dataBytes / MB / (t.flagsMs / 1000))],
            ['in the product: qemu-img info', fmt(t.infoMs), ''],
            [
              t.viaConvert ? 'in the product: qemu-img convert' : 'in the product: the disk copy (provider.exportDisk)',
              fmt(t.convertMs),
              fmt(t.dataBytes / MB / (t.convertMs / 1000)),
            ],
            [
              t.viaConvert
                ? 'in the product: qemu-img compare (read-back check)'
                : 'in the product: compare with the view (provider.verifyDisk)',
              fmt(t.compareMs),
              '',
            ],
            ['sha256 of that copy alone (sha256File, one pass)', fmt(t.hashAloneMs), fmt(t.dataBytes / MB / (t.hashAloneMs / 1000))],
            ['that copy sent to the disk alone (fdatasync, after the sha256)', fmt(t.flushAloneMs), ''],
            [`in the product: sha256File (${fmt(t.sha256Count)} files, one pass each, alongside the compare)`, fmt(t.sha256Ms), ''],
            ['in the product: describe (QMP) + durable writes', `${fmt(t.describeMs)} + ${fmt(t.durableMs)}`, ''],
          ],
        ),
      );
      out.push('');
    }
    if (s.sparse) {
      const sp = s.sparse;
      out.push(
        'Sparse (QEMU processes without a guest, one disk each, random data; the 8 GiB disk has its 256 MiB in 4 MiB pieces spread evenly):',
      );
      out.push('');
      out.push(
        table(
          ['disk', 'data', 'copy artifacts median / p95 (ms)', 'qemu-img alone median (ms)'],
          [
            [
              '8 GiB',
              `${fmt(mib(sp.sparse.dataBytes))} MiB`,
              `${fmt(sp.sparse.copy.median)} / ${fmt(sp.sparse.copy.p95)}`,
              fmt(sp.sparse.qemuImgAlone.median),
            ],
            [
              '256 MiB',
              `${fmt(mib(sp.dense.dataBytes))} MiB`,
              `${fmt(sp.dense.copy.median)} / ${fmt(sp.dense.copy.p95)}`,
              fmt(sp.dense.qemuImgAlone.median),
            ],
            ['ratio', '', fmt(sp.ratio, 2), fmt(sp.qemuImgAloneRatio, 2)],
          ],
        ),
      );
      out.push('');
    }
  }
  // ---- 4
  if (s.scale?.runs?.length) {
    const sc = s.scale;
    out.push('## 4. Scale: many VMs x 2 disks on one host');
    out.push('');
    out.push(
      `QEMU processes without a guest OS (${sc.qemuRssMiB} MiB RSS each), two ${sc.diskMiB} MiB qcow2 disks each holding ${sc.dataMiBPerDisk} MiB of random data;`,
    );
    out.push(
      'checkpoint method, copy concurrency 2 (the node\'s default). "qemu-img alone" runs `qemu-img convert` (the argv of a compressed or large full), for the',
    );
    out.push(
      'same disks, two VMs at a time, by itself; overhead = wall time of the flow - that. "checked alone" does the same and, for each copy, what the',
    );
    out.push(
      'product does with it minus the orchestration: flush to disk, sha256 and `qemu-img compare` with its source, the three at once. Mounts: lines of',
    );
    out.push(
      '`/proc/<node-red pid>/mountinfo`. CPU: ms of CPU time during the flow, from `/proc` (Node-RED itself; the programs it ran, through its',
    );
    out.push(
      "program launcher; the VMs' QEMU processes; the whole machine, of 2 x the wall time available). Node-RED's main thread (the one that",
    );
    out.push(
      "hashes, checks and answers every socket): its event loop's busy time, and of it the time the thread ran and the time it was runnable but another",
    );
    out.push('task had the CPU (`/proc/self/task/<pid>/schedstat`), each since the backup before (Node-RED is idle in between).');
    out.push('');
    const stages = ['enumerate', 'classify', 'prepare', 'snapshot', 'postSnapshot', 'copy'];
    const scaleTable = (runs: any[]) =>
      table(
        [
          'VMs',
          'disks',
          'total (s)',
          'qemu-img alone (s)',
          'overhead (s)',
          'per VM (ms)',
          'checked alone (s)',
          'overhead beyond that (s)',
          ...stages.map((x) => `${x} (ms)`),
          'CPU: Node-RED / programs / QEMU / machine (s)',
          "Node-RED's main thread: event loop busy / on a CPU / runnable, waiting for one (s)",
          'Node-RED peak RSS (MiB)',
          'qemu-img peak RSS (MiB)',
          'mounts before -> during',
          'processes seen under Node-RED',
        ],
        runs.map((x: any) => [
          x.vms,
          x.disks,
          fmt(x.wallMs / 1000, 2),
          fmt(x.copyAloneMs / 1000, 2),
          fmt(x.overheadMs / 1000, 2),
          fmt(x.overheadPerVmMs, 1),
          x.checkedAloneMs !== undefined ? fmt(x.checkedAloneMs / 1000, 2) : '',
          x.overheadBeyondCheckedMs !== undefined ? fmt(x.overheadBeyondCheckedMs / 1000, 2) : '',
          ...stages.map((k) => x.stageMs[k]),
          x.cpu
            ? [x.cpu.nodeRedMs, x.cpu.childrenMs, x.cpu.qemuMs, x.cpu.machineMs].map((ms: number) => fmt(ms / 1000, 1)).join(' / ')
            : '',
          x.phases?.['event loop busy']
            ? ['event loop busy', 'main thread on a CPU', 'main thread waiting for a CPU']
                .map((k) => fmt((x.phases[k]?.ms ?? NaN) / 1000, 2))
                .join(' / ')
            : '',
          fmt(x.peakRssMiB),
          fmt(x.children['qemu-img']?.peakRssMiB),
          `${x.mounts.before} -> ${x.mounts.min}..${x.mounts.max}`,
          Object.entries(x.children)
            .map(([k, c]: [string, any]) => `${k} x${c.processes}`)
            .join(', '),
        ]),
      );
    out.push(scaleTable(sc.runs));
    out.push('');
    if (sc.noVerify) {
      const nv = sc.noVerify;
      out.push(
        `The ${nv.vms} VMs again with the copy node's Verify off: ${fmt(nv.wallMs / 1000, 2)} s in the flow, qemu-img alone ${fmt(nv.copyAloneMs / 1000, 2)} s, overhead ${fmt(nv.overheadMs / 1000, 2)} s` +
          (nv.checkedAloneMs !== undefined
            ? `; the copies flushed and hashed alone ${fmt(nv.checkedAloneMs / 1000, 2)} s, overhead beyond that ${fmt(nv.overheadBeyondCheckedMs / 1000, 2)} s`
            : '') +
          (nv.cpu
            ? `; CPU Node-RED / programs / QEMU / machine ${[nv.cpu.nodeRedMs, nv.cpu.childrenMs, nv.cpu.qemuMs, nv.cpu.machineMs].map((ms: number) => fmt(ms / 1000, 1)).join(' / ')} s.`
            : '.'),
      );
      out.push('');
    }
    if (sc.halted?.length) {
      out.push(
        "The same runs with the idle VMs' vCPUs halted (`bench/bare.ts`, firmware `halt`: a 64 KiB firmware whose reset vector is `cli; hlt`, and the",
      );
      out.push(
        "PC's interval timer off), so that the fleet costs the host what idle KVM guests cost (nothing measurable here) rather than TCG running SeaBIOS's",
      );
      out.push(
        'timer ticks (6-8 ms a second per VM: 200 idle VMs take more than 1.3 of the 2 cores). The product sees the same devices, disks and QMP.',
      );
      out.push(
        'These runs follow the ones above in the same Node-RED process, whose flows stay deployed: their peak RSS is not comparable (the RSS target is read above).',
      );
      out.push('');
      out.push(scaleTable(sc.halted));
      out.push('');
    }
  }
  // ---- 5
  if (s.memory) {
    const mm = s.memory;
    out.push('## 5. Memory while copying');
    out.push('');
    out.push(
      `QEMU process without a guest holding one disk full of random data. Peak RSS = the kernel's VmHWM of the Node-RED process, reset`,
    );
    out.push(
      `(\`5 > /proc/<pid>/clear_refs\`) before each backup, and VmRSS sampled every 20 ms; qemu-img (a child process) is sampled apart.`,
    );
    out.push(`Node-RED RSS between backups: ${mm.idleRssMiB} MiB.`);
    out.push('');
    out.push(
      table(
        ['disk', 'data (MiB)', 'backups', 'Node-RED peak RSS (MiB)', 'qemu-img peak RSS (MiB)', 'copy artifacts (ms)'],
        mm.disks.map((x: any) => [
          x.label,
          fmt(mib(x.dataBytes)),
          x.samples.length,
          fmt(x.peakRssMiB),
          fmt(x.qemuImgPeakRssMiB),
          x.samples.map((y: any) => y.copyMs).join(', '),
        ]),
      ),
    );
    out.push('');
  }
  // ---- 6
  if (s.scale?.runs?.length) {
    const biggest = s.scale.runs[s.scale.runs.length - 1];
    out.push(`## 6. ajv validation cost, ${biggest.vms}-VM backup set`);
    out.push('');
    out.push("Every check the nodes made in the real run above, timed where it happens (a preload wraps the package's `assertStage` and");
    out.push("`assertManifest` in the Node-RED process). Each stage's output is checked by its node and again as input by the next node.");
    out.push(`Final message: ${fmt(biggest.responseBytes / 1024)} KiB of JSON.`);
    out.push('');
    out.push(
      table(
        ['stage', 'stage time (ms)', 'output check (ms)', "next node's input check (ms)", '% of the stage'],
        [
          ...biggest.ajv.stages.map((x: any) => [
            x.stage,
            x.stageMs,
            fmt(x.outputCheckMs, 2),
            fmt(x.inputCheckMs, 2),
            fmt(x.percentOfStage, 2),
          ]),
          [
            'manifest.json (one per VM)',
            '',
            `${fmt(biggest.ajv.manifests.totalMs, 2)} (${biggest.ajv.manifests.count} x ${fmt(biggest.ajv.manifests.perManifestMs, 3)})`,
            '',
            '',
          ],
        ],
      ),
    );
    out.push('');
  }
  out.push(...renderIncremental(r));
  out.push(NOTES_MARKER);
  out.push('');
  return out.join('\n');
}

export const NOTES_MARKER = '<!-- analysis: kept across re-renders -->';

/** Re-render, keeping whatever follows the notes marker in the existing file (the written analysis). */
export function renderWithNotes(r: any, existing: string | undefined, compare?: any): string {
  const body = renderMarkdown(r, compare);
  const i = existing?.indexOf(NOTES_MARKER) ?? -1;
  if (!existing || i < 0) return body;
  return body + existing.slice(i + NOTES_MARKER.length).replace(/^\n+/, '\n');
}

if (require.main === module) {
  const args = process.argv.slice(2);
  const compareArg = args.find((a) => a.startsWith('--compare='));
  const rest = args.filter((a) => !a.startsWith('--'));
  const root = path.resolve(__dirname, '..', '..');
  const input = rest[0] ?? path.join(root, 'bench', 'results.json');
  const output = rest[1] ?? path.join(root, 'BENCHMARKS.md');
  const r = JSON.parse(readFileSync(input, 'utf8'));
  const compare = compareArg ? JSON.parse(readFileSync(compareArg.slice('--compare='.length), 'utf8')) : undefined;
  let existing: string | undefined;
  try {
    existing = readFileSync(output, 'utf8');
  } catch {
    existing = undefined;
  }
  if (args.includes('--splice-incremental')) {
    if (!existing) throw new Error(`${output}: nothing to splice into`);
    writeFileSync(output, spliceIncremental(existing, r, NOTES_MARKER));
  } else writeFileSync(output, renderWithNotes(r, existing, compare));
  process.stdout.write(`${output} written from ${input}\n`);
}
