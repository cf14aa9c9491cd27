// What every section gets: the work directory, the real Node-RED process, the run mode, and a
// way to run one backup scenario and read back what the product recorded about it.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { JournalEntry } from '../src/journal/journal';
import type { BenchLab } from './lab';
import { NodeRedProcess, scenarioFlows, type Scenario } from './nodered';
import type { ProbeCall } from './probe';
import { nowMs, resetPeak, rmrf, Sampler } from './util';

export interface Ctx {
  work: string;
  quick: boolean;
  nr: NodeRedProcess;
  lab?: BenchLab;
  /** scenarios deployed so far (a deploy replaces the whole flow set) */
  scenarios: Map<string, Scenario>;
}

export async function addScenarios(ctx: Ctx, list: Omit<Scenario, 'repository' | 'journalDir'>[]): Promise<Scenario[]> {
  const added: Scenario[] = [];
  for (const s of list) {
    const full: Scenario = {
      ...s,
      repository: path.join(ctx.work, 'repository', s.name),
      journalDir: path.join(ctx.work, 'journal', s.name),
    };
    await fs.mkdir(full.repository, { recursive: true });
    await fs.mkdir(full.journalDir, { recursive: true });
    ctx.scenarios.set(s.name, full);
    added.push(full);
  }
  await ctx.nr.deploy(scenarioFlows([...ctx.scenarios.values()]));
  return added;
}

export interface BackupRun {
  set: any;
  wallMs: number;
  startedAt: number;
  endedAt: number;
  responseBytes: number;
  sampler: Sampler;
  journal: JournalEntry[];
  /** every call the probe timed in the Node-RED process during this backup */
  calls: ProbeCall[];
  /** the same, summed by function: busy ms (concurrent calls add up) and count */
  phases: Record<string, { n: number; ms: number }>;
}

export function phaseTotals(calls: ProbeCall[]): Record<string, { n: number; ms: number }> {
  const out: Record<string, { n: number; ms: number }> = {};
  for (const c of calls) {
    const k = c.fn;
    out[k] ??= { n: 0, ms: 0 };
    out[k].n++;
    out[k].ms += c.ms;
  }
  for (const v of Object.values(out)) v.ms = Math.round(v.ms * 10) / 10;
  return out;
}

/** One backup through the real flow, with the Node-RED process sampled (peak RSS reset first). */
export async function backup(
  ctx: Ctx,
  scenario: string,
  o: { keep?: boolean; sampleMs?: number; trace?: boolean } = {},
): Promise<BackupRun> {
  const s = ctx.scenarios.get(scenario);
  if (!s) throw new Error(`scenario ${scenario} not deployed`);
  await ctx.nr.probeCalls(); // reset the probe's records
  resetPeak(ctx.nr.pid);
  const sampler = new Sampler(ctx.nr.pid, o.sampleMs ?? 25, o.trace).start();
  const startedAt = nowMs();
  let res;
  try {
    res = await ctx.nr.backup(scenario);
  } finally {
    sampler.stop();
  }
  const endedAt = nowMs();
  const set = res.body;
  const calls = await ctx.nr.probeCalls();
  const journal = await readJournal(path.join(s.journalDir, 'journal-bench.jsonl'), set.backupId);
  // BENCH_DUMP=DIR: every timed call and journal line of each backup, for timelines
  if (process.env.BENCH_DUMP)
    await fs.writeFile(path.join(process.env.BENCH_DUMP, `${scenario}-${set.backupId}.json`), JSON.stringify({ set, calls, journal }));
  if (!o.keep) await rmrf(path.join(s.repository, 'bench'));
  return {
    set,
    wallMs: endedAt - startedAt,
    startedAt,
    endedAt,
    responseBytes: res.bytes,
    sampler,
    journal,
    calls,
    phases: phaseTotals(calls),
  };
}

export async function readJournal(file: string, backupId: string): Promise<JournalEntry[]> {
  const text = await fs.readFile(file, 'utf8').catch(() => '');
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as JournalEntry)
    .filter((e) => e.backupId === backupId);
}

/** ms between two journal entries (first match of each), or undefined. */
export function journalSpan(entries: JournalEntry[], vm: string, from: [string, string], to: [string, string]): number | undefined {
  const a = entries.find((e) => e.vm === vm && e.op === from[0] && e.phase === from[1]);
  const b = entries.find((e) => e.vm === vm && e.op === to[0] && e.phase === to[1]);
  return a && b ? Date.parse(b.t) - Date.parse(a.t) : undefined;
}
