// Verdicts and the BENCHMARKS.md section of issue 13 item 9 (sec-incremental.ts): incremental
// backups against fulls of the same disk, the bare QMP script, the full's floor, the freeze window.
import type { Verdict } from './report';
import type { IncFreezeResult, IncrementalResult } from './sec-incremental';

const fmt = (n: number | undefined, d = 0) => (n === undefined || Number.isNaN(n) ? 'n/a' : n.toFixed(d));
const mib = (bytes: number) => fmt(bytes / 2 ** 20, bytes < 100 * 2 ** 20 ? 1 : 0);
/** The row beside each copy floor: that floor with its output made durable, as the product's copy is before it counts. */
export const durableFloorMeasure = (copy: 'copy' | 'full', medians: string) =>
  `the same floor made durable: + its output sent to the disk (fdatasync) alone; qemu-img convert returns with its output in the page cache, the product's ${copy} is on the disk before it counts (${medians})`;

const pct = (f: number) => `${fmt(f * 100, f < 0.1 ? 2 : 1)} %`;

function median(values: readonly number[]): number {
  const s = values.filter((x) => typeof x === 'number' && !Number.isNaN(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function medianRecord(xs: Record<string, number>[]): Record<string, number> {
  const keys = [...new Set(xs.flatMap((x) => Object.keys(x)))];
  return Object.fromEntries(keys.map((k) => [k, Math.round(median(xs.map((x) => x[k] ?? NaN)))]));
}

function medianPhases(xs: Record<string, { n: number; ms: number }>[]): Record<string, { n: number; ms: number }> {
  const keys = [...new Set(xs.flatMap((x) => Object.keys(x)))];
  return Object.fromEntries(
    keys.map((k) => [k, { n: median(xs.map((x) => x[k]?.n ?? 0)), ms: Math.round(10 * median(xs.map((x) => x[k]?.ms ?? 0))) / 10 }]),
  );
}

/** Medians the verdicts and the tables use. */
export function incrementalSummary(r: IncrementalResult) {
  const fullWall = median(r.rounds.map((x) => x.full.wallMs));
  const fullCopy = median(r.rounds.map((x) => x.full.copyMs));
  const convert = median(r.rounds.map((x) => x.fullAlone.convertMs));
  const sha = median(r.rounds.map((x) => x.fullAlone.sha256Ms));
  const flush = median(r.rounds.map((x) => x.fullAlone.flushMs ?? NaN));
  const perFraction = r.fractions.map((_, k) => {
    const inc = r.rounds.map((x) => x.incrementals[k]).filter(Boolean);
    const bare = r.rounds.map((x) => x.bare[k]).filter(Boolean);
    const fraction = median(inc.map((x) => x.fraction ?? NaN));
    const wall = median(inc.map((x) => x.wallMs));
    const bareMs = median(bare.map((x) => x.ms));
    return {
      n: inc.length,
      fraction,
      wall,
      copy: median(inc.map((x) => x.copyMs)),
      target: 1000 + 1.5 * fraction * fullWall,
      bareMs,
      bareRatio: wall / bareMs,
      bareParts: medianRecord(bare.map((x) => x.parts)),
      bareSha256Ms: median(bare.map((x) => x.sha256Ms)),
      bytesChanged: median(inc.map((x) => x.bytesChanged ?? NaN)),
      bytesRead: median(inc.map((x) => x.bytesRead)),
      qemuRead: median(inc.map((x) => x.qemuReadBytes)),
      fileBytes: median(inc.map((x) => x.fileBytes)),
      fileAllocated: median(inc.map((x) => x.fileAllocated)),
      bareBytesRead: median(bare.map((x) => x.bytesRead)),
      bareQemuRead: median(bare.map((x) => x.qemuReadBytes)),
      bareFileBytes: median(bare.map((x) => x.fileBytes)),
      bareFileAllocated: median(bare.map((x) => x.fileAllocated)),
      stageMs: medianRecord(inc.map((x) => x.stageMs)),
      phases: medianPhases(inc.map((x) => x.phases)),
      copySteps: medianRecord(inc.map((x) => (x.copySteps ?? {}) as unknown as Record<string, number>)),
      viaNbd: medianRecord(bare.map((x) => (x.viaNbd ?? {}) as unknown as Record<string, number>)),
    };
  });
  return {
    n: r.rounds.length,
    fullWall,
    fullCopy,
    convert,
    sha,
    floorRatio: (convert + sha) / fullCopy,
    flush,
    /** the same floor with its output sent to the disk, as the product's full is before it counts */
    durableFloorRatio: (convert + sha + flush) / fullCopy,
    fullBytesRead: median(r.rounds.map((x) => x.full.bytesRead)),
    fullQemuRead: median(r.rounds.map((x) => x.full.qemuReadBytes)),
    fullFileBytes: median(r.rounds.map((x) => x.full.fileBytes)),
    fullFileAllocated: median(r.rounds.map((x) => x.full.fileAllocated)),
    fullStageMs: medianRecord(r.rounds.map((x) => x.full.stageMs)),
    fullPhases: medianPhases(r.rounds.map((x) => x.full.phases)),
    fullCopySteps: medianRecord(r.rounds.map((x) => (x.full.copySteps ?? {}) as unknown as Record<string, number>)),
    perFraction,
  };
}

export function incrementalVerdicts(r: any): Verdict[] {
  const v: Verdict[] = [];
  const inc = r.sections?.incremental as IncrementalResult | undefined;
  if (inc?.rounds?.length) {
    const s = incrementalSummary(inc);
    const disk = `${fmt(inc.virtualMiB / 1024, inc.virtualMiB < 1024 ? 2 : 0)} GiB disk holding ${mib(inc.dataBytes)} MiB`;
    for (const f of s.perFraction) {
      v.push({
        id: `13-inc-${fmt(f.fraction * 100, 1)}`,
        item: '13.9',
        measure: `incremental after ${pct(f.fraction)} of the data rewritten, ${disk}: wall time through the flow against a full of the same disk (medians of ${f.n})`,
        target: `<= 1 s + 1.5 x ${pct(f.fraction)} x the full (${fmt(s.fullWall)} ms) = ${fmt(f.target)} ms`,
        result: `${fmt(f.wall)} ms (copy artifacts ${fmt(f.copy)} ms)`,
        met: f.wall <= f.target,
      });
    }
    for (const f of s.perFraction) {
      v.push({
        id: `13-bytes-${fmt(f.fraction * 100, 1)}`,
        item: '13.9',
        measure: `bytes of the incremental after ${pct(f.fraction)} rewritten against the full: changed (bitmap) / read by the backup job / read by QEMU (rchar) / written (file, allocated)`,
        target: 'report',
        result: `${mib(f.bytesChanged)} / ${mib(f.bytesRead)} / ${mib(f.qemuRead)} / ${mib(f.fileBytes)} (${mib(f.fileAllocated)}) MiB; full: - / ${mib(s.fullBytesRead)} / ${mib(s.fullQemuRead)} / ${mib(s.fullFileBytes)} (${mib(s.fullFileAllocated)}) MiB`,
        met: null,
      });
    }
    for (const f of s.perFraction) {
      v.push({
        id: `13-bare-${fmt(f.fraction * 100, 1)}`,
        item: '13.9',
        measure: `incremental after ${pct(f.fraction)} rewritten: the product (wall, through the flow) / a bare QMP script doing the same incremental by itself (blockdev-backup sync=incremental into a qcow2 on the previous backup; medians)`,
        target: '<= 1.3',
        result: `${fmt(f.wall)} / ${fmt(f.bareMs)} ms = ${fmt(f.bareRatio, 2)}`,
        met: f.bareRatio <= 1.3,
      });
    }
    v.push({
      id: '13-full-floor',
      item: '13.9',
      measure: `full on the point-in-time view (${disk}): qemu-img convert of the same image alone + one sha256 pass over its output alone / copy artifacts (with its manifest hash; medians of ${s.n})`,
      target: '>= 0.9',
      result: `(${fmt(s.convert)} + ${fmt(s.sha)}) / ${fmt(s.fullCopy)} ms = ${fmt(s.floorRatio, 2)}`,
      met: s.floorRatio >= 0.9,
    });
    if (!Number.isNaN(s.flush)) {
      v.push({
        id: '13-full-floor-durable',
        item: '13.9',
        measure: durableFloorMeasure('full', `medians of ${s.n}`),
        target: 'report',
        result: `(${fmt(s.convert)} + ${fmt(s.sha)} + ${fmt(s.flush)}) / ${fmt(s.fullCopy)} ms = ${fmt(s.durableFloorRatio, 2)}`,
        met: null,
      });
    }
  }
  const fz = r.sections?.incrementalFreeze as IncFreezeResult | undefined;
  if (fz?.samples?.length) {
    v.push({
      id: '13-freeze',
      item: '13.9',
      measure: `freeze window (agent wire), incremental / full of the same lab guest (${fz.dataDiskMiB / 1024} GiB data disk, ${fz.fillMiB} MiB data), median / p95 of ${fz.incremental.n} each, alternating`,
      target: "no growth (within 15 % of the full's median)",
      result: `${fmt(fz.incremental.median)} / ${fmt(fz.incremental.p95)} ms vs ${fmt(fz.full.median)} / ${fmt(fz.full.p95)} ms (${fz.incremental.median >= fz.full.median ? '+' : ''}${fmt(((fz.incremental.median - fz.full.median) / fz.full.median) * 100)} %)`,
      met: fz.incremental.median <= 1.15 * fz.full.median,
    });
  }
  return v;
}

function table(head: string[], rows: (string | number | undefined)[][]): string {
  const line = (cells: (string | number | undefined)[]) => `| ${cells.map((c) => (c === undefined ? '' : String(c))).join(' | ')} |`;
  return [line(head), line(head.map(() => '---')), ...rows.map(line)].join('\n');
}

const STAGES = ['enumerate', 'classify', 'prepare', 'snapshot', 'postSnapshot', 'copy'];

export function renderIncremental(r: any): string[] {
  const out: string[] = [];
  const inc = r.sections?.incremental as IncrementalResult | undefined;
  const fz = r.sections?.incrementalFreeze as IncFreezeResult | undefined;
  if (!inc?.rounds?.length && !fz?.samples?.length) return out;
  out.push('## 7. Incremental backups (issue 13 item 9)');
  out.push('');
  out.push('Reproduce this section alone: `npm run bench -- --only=incremental --out=bench/results-incremental.json --md=none`, then');
  out.push(
    '`node dist/bench/report.js bench/results-incremental.json BENCHMARKS.md --splice-incremental`; the copy path by itself: `node dist/bench/copy-path.js`.',
  );
  out.push('');
  if (inc?.rounds?.length) {
    const s = incrementalSummary(inc);
    out.push(
      `A QEMU process without a guest OS (\`-machine pc\`, the disk on a virtio-blk device) holding a ${fmt(inc.virtualMiB / 1024, inc.virtualMiB < 1024 ? 2 : 0)} GiB qcow2 disk with`,
    );
    out.push(
      `${mib(inc.dataBytes)} MiB of random data in 4 MiB pieces spread over it. Each of ${s.n} rounds: a full through the flow (the VM's earlier backups`,
    );
    out.push(
      'removed, so the product plans a full: first-backup), then for each fraction that share of the data rewritten in 1 MiB pieces spread evenly',
    );
    out.push(
      'over it, through QEMU\'s block layer (HMP `qemu-io drive-virtio0 "write -P .."` on a second monitor), and an incremental on the previous',
    );
    out.push(
      "backup. Beside each incremental, before or after it in turn, a bare QMP script (bench/qmp-raw.ts, none of the product's code) does the same",
    );
    out.push(
      "incremental: `qemu-img create -b <the product's previous backup of the disk>`, `blockdev-add`, `blockdev-backup sync=incremental` by a",
    );
    out.push(
      'bitmap of its own, `blockdev-del`. "read by QEMU" is the rchar of the VM\'s QEMU process over the backup (the disk, the fleecing image;',
    );
    out.push(
      'a full also reads the view again for its verification); "written" the disk file\'s size (its allocation on the file system).',
    );
    out.push('');
    const stage = (x: Record<string, number>) => STAGES.map((k) => fmt(x[k])).join(' / ');
    const rows: (string | number)[][] = [
      [
        'full',
        s.n,
        fmt(s.fullWall),
        fmt(s.fullCopy),
        stage(s.fullStageMs),
        '',
        mib(s.fullBytesRead),
        mib(s.fullQemuRead),
        `${mib(s.fullFileBytes)} (${mib(s.fullFileAllocated)})`,
      ],
    ];
    for (const f of s.perFraction) {
      rows.push([
        `incremental, ${pct(f.fraction)} rewritten`,
        f.n,
        fmt(f.wall),
        fmt(f.copy),
        stage(f.stageMs),
        mib(f.bytesChanged),
        mib(f.bytesRead),
        mib(f.qemuRead),
        `${mib(f.fileBytes)} (${mib(f.fileAllocated)})`,
      ]);
    }
    for (const f of s.perFraction) {
      rows.push([
        `bare QMP script, ${pct(f.fraction)}`,
        f.n,
        fmt(f.bareMs),
        '',
        `create ${fmt(f.bareParts.createMs)} / add ${fmt(f.bareParts.addMs)} / job ${fmt(f.bareParts.jobMs)} / del ${fmt(f.bareParts.delMs)}`,
        '',
        mib(f.bareBytesRead),
        mib(f.bareQemuRead),
        `${mib(f.bareFileBytes)} (${mib(f.bareFileAllocated)})`,
      ]);
    }
    out.push(
      table(
        [
          'backup',
          'n',
          'wall median (ms)',
          'copy artifacts (ms)',
          `stages: ${STAGES.join(' / ')} (ms)`,
          'changed (MiB)',
          'read by the job (MiB)',
          'read by QEMU (MiB)',
          'written: file (allocated) (MiB)',
        ],
        rows,
      ),
    );
    out.push('');
    // the copy path: the product's disk copy step by step, against the same job written through qemu-nbd or into a local qcow2
    const step = (x: Record<string, number>, keys: string[]) => keys.map((k) => fmt(x[k]));
    const steps = ['createMs', 'serverMs', 'addMs', 'jobMs', 'closeMs'];
    out.push(
      "The disk copy step by step (medians, ms): qemu-img create of the target; qemu-nbd started until the VM's QEMU is connected to it (the",
    );
    out.push(
      "product polls for its socket every 25 ms); NBD node added until the job starts (the product copies the parent's bitmap onto the view",
    );
    out.push(
      'here); the backup job; the NBD client removed until qemu-nbd has flushed the image and exited. "bare, through qemu-nbd" is the bare',
    );
    out.push(
      'script writing the same way (the product\'s qemu-nbd flags, no product code); "bare, local qcow2" the job into a target the VM\'s QEMU opens itself.',
    );
    out.push('');
    const stepRows: (string | number)[][] = [
      ['product, full', ...step(s.fullCopySteps, steps), fmt(s.fullCopySteps.copyDiskMs), fmt(s.fullCopySteps.hashMs)],
    ];
    for (const f of s.perFraction)
      stepRows.push([
        `product, incremental ${pct(f.fraction)}`,
        ...step(f.copySteps, steps),
        fmt(f.copySteps.copyDiskMs),
        fmt(f.copySteps.hashMs),
      ]);
    for (const f of s.perFraction)
      stepRows.push([`bare, through qemu-nbd, ${pct(f.fraction)}`, ...step(f.viaNbd, steps), fmt(f.viaNbd.ms), '']);
    for (const f of s.perFraction)
      stepRows.push([
        `bare, local qcow2, ${pct(f.fraction)}`,
        fmt(f.bareParts.createMs),
        '',
        fmt(f.bareParts.addMs),
        fmt(f.bareParts.jobMs),
        fmt(f.bareParts.delMs),
        fmt(f.bareMs),
        `(${fmt(f.bareSha256Ms)} alone)`,
      ]);
    out.push(
      table(
        [
          'copy',
          'create target',
          'qemu-nbd until connected',
          'add -> job start',
          'job',
          'close until flushed',
          'whole copy',
          'sha256 of the file',
        ],
        stepRows,
      ),
    );
    out.push('');
    out.push(
      `The full against its floor: \`qemu-img convert -f qcow2 -O qcow2 -U\` of the same image alone ${fmt(s.convert)} ms + one sha256 pass over its`,
    );
    out.push(
      `output alone ${fmt(s.sha)} ms = ${fmt(s.convert + s.sha)} ms, against copy artifacts ${fmt(s.fullCopy)} ms (ratio ${fmt(s.floorRatio, 2)}).`,
    );
    if (!Number.isNaN(s.flush))
      out.push(
        `With that output then sent to the disk (fdatasync ${fmt(s.flush)} ms alone), as the product's full is before it counts: ${fmt(s.convert + s.sha + s.flush)} ms (ratio ${fmt(s.durableFloorRatio, 2)}).`,
      );
    out.push('');
    // where the time goes: the probe's busy ms per step, largest first (concurrent calls add up)
    const cols = [
      { label: 'full', p: s.fullPhases },
      ...s.perFraction.map((f) => ({ label: `incremental ${pct(f.fraction)}`, p: f.phases })),
    ];
    const keys = [...new Set(cols.flatMap((c) => Object.keys(c.p)))]
      .filter((k) => /^(provider\.|disk-copy\.|tracking\.|chain\.|program |qmp |sha256File|writeFileDurable|fsyncDir|journal)/.test(k))
      .sort((a, b) => (cols[1]?.p[b]?.ms ?? 0) - (cols[1]?.p[a]?.ms ?? 0));
    const top = keys.filter((k) => cols.some((c) => (c.p[k]?.ms ?? 0) >= 5)).slice(0, 30);
    if (top.length) {
      out.push(
        'Where the time goes, timed inside the Node-RED process (probe.ts; median busy ms per backup and calls, concurrent calls add up,',
      );
      out.push(
        'nested steps are inside their callers: `provider.exportDisk` holds `disk-copy.copyDisk`, which holds the `qmp` and `program` calls of the copy):',
      );
      out.push('');
      out.push(
        table(
          ['step', ...cols.map((c) => `${c.label} (ms, calls)`)],
          top.map((k) => [k, ...cols.map((c) => (c.p[k] ? `${fmt(c.p[k].ms, 1)} (${fmt(c.p[k].n)})` : ''))]),
        ),
      );
      out.push('');
    }
  }
  if (fz?.samples?.length) {
    const med = (xs: number[]) => fmt(median(xs));
    out.push(
      `Freeze window of the lab guest ${fz.vm} (qemu-ga, ${fz.dataDiskMiB / 1024} GiB ext4 data disk holding ${fz.fillMiB} MiB, its workload writing): fulls and`,
    );
    out.push(
      "incrementals alternating after one full not counted; freeze command passing -> thaw reply passing on the agent's wire (a byte proxy).",
    );
    out.push('');
    out.push(
      table(
        ['backup', 'n', 'wire median / p95 (ms)', 'product frozenMs median (ms)', 'backup wall median (ms)', 'copy artifacts median (ms)'],
        (['full', 'incremental'] as const).map((k) => {
          const xs = fz.samples.filter((x) => x.kind === k);
          const st = k === 'full' ? fz.full : fz.incremental;
          return [
            k,
            st.n,
            `${fmt(st.median)} / ${fmt(st.p95)}`,
            med(xs.map((x) => x.productFrozenMs)),
            med(xs.map((x) => x.wallMs)),
            med(xs.map((x) => x.copyMs)),
          ];
        }),
      ),
    );
    out.push('');
  }
  return out;
}

const mark = (met: boolean | null) => (met === true ? 'met' : met === false ? '**missed**' : 'report');

/**
 * Put this section's verdict rows and tables into an existing BENCHMARKS.md from a run of this
 * section alone (`--only=incremental`), leaving every other section's figures as they were:
 * earlier 13.9 rows and an earlier section 7 are replaced. `notesMarker` ends the rendered body.
 */
export function spliceIncremental(existing: string, r: any, notesMarker: string): string {
  const when = `run of ${r.generatedAt}, ${r.mode} mode${r.label ? `, ${r.label}` : ''}`;
  const rows = incrementalVerdicts(r).map((x) => `| ${x.item} | ${x.measure} (${when}) | ${x.target} | ${x.result} | ${mark(x.met)} |`);
  const lines = existing.split('\n').filter((l) => !l.startsWith('| 13.9 |'));
  const results = lines.indexOf('## Results');
  if (results < 0) throw new Error('BENCHMARKS.md has no "## Results" table to add the rows to');
  let end = results + 1;
  while (end < lines.length && (lines[end] === '' || lines[end].startsWith('|'))) end++;
  while (lines[end - 1] === '') end--;
  lines.splice(end, 0, ...rows);
  let text = lines.join('\n');
  const s7 = text.indexOf('\n## 7. Incremental backups');
  const notes = text.indexOf(notesMarker);
  if (notes < 0) throw new Error('BENCHMARKS.md has no analysis marker');
  const from = s7 >= 0 && s7 < notes ? s7 + 1 : notes;
  const m = r.machine ?? {};
  const head = [
    `(${when}, ${Math.round((r.totalMs ?? 0) / 1000)} s; load average at start / end ${(m.loadAtStart ?? []).join(' ')} / ${(m.loadAtEnd ?? []).join(' ')}${
      r.steal
        ? `; CPU stolen ${Object.entries(r.steal)
            .map(([k, v]) => `${k} ${v} %`)
            .join(', ')}`
        : ''
    })`,
    '',
  ];
  const body = renderIncremental(r);
  text = text.slice(0, from) + [body[0], '', ...head, ...body.slice(2)].join('\n') + '\n' + text.slice(notes);
  return text;
}
