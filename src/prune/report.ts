// A prune's reports as people read them, and as a flow's msg.summary carries them.
import { formatBytes } from '../summary';
import type { VmPruneReport } from './prune';

export interface PruneSummary {
  ok: boolean;
  dryRun: boolean;
  rules: string;
  vms: { vm: string; ok: boolean; kept: number; removed: number; merged: number; bytesRemoved: number; error?: string }[];
  removed: number;
  merged: number;
  bytesRemoved: number;
  text: string;
}

export function formatPruneReport(reports: readonly VmPruneReport[]): string {
  const lines: string[] = [];
  for (const r of reports) {
    const verb = r.dryRun ? 'would remove' : 'removed';
    lines.push(
      `${r.ok ? 'OK  ' : 'FAIL'} ${r.vm}: kept ${r.kept.length}, ${verb} ${r.removed.length} (${formatBytes(r.bytesRemoved)}), ${r.dryRun ? 'would merge' : 'merged'} ${r.merged.length}${r.error ? `: ${r.error}` : ''}`,
    );
    if (r.recovered) lines.push(`  ${r.recovered}`);
    for (const b of r.backups) lines.push(`  ${b.keep ? 'keep  ' : 'remove'} ${b.id}  ${b.why}`);
    for (const m of r.merged)
      lines.push(`  merge  ${m.from.join(', ')} into ${m.backup} (${m.disk}${m.becameFull ? ', now a full' : `, now on ${m.onto}`})`);
    for (const l of r.leftAlone) lines.push(`  left   ${l.dir}: ${l.why}`);
  }
  lines.push(summarizePrune(reports).text);
  return lines.join('\n');
}

export function summarizePrune(reports: readonly VmPruneReport[]): PruneSummary {
  const dryRun = reports.some((r) => r.dryRun);
  const removed = reports.reduce((n, r) => n + r.removed.length, 0);
  const merged = reports.reduce((n, r) => n + r.merged.length, 0);
  const bytesRemoved = reports.reduce((n, r) => n + r.bytesRemoved, 0);
  const failed = reports.filter((r) => !r.ok);
  const text =
    `prune${dryRun ? ' (dry run)' : ''} of ${reports.length} VM${reports.length === 1 ? '' : 's'} (${reports[0]?.rules ?? 'no rule'}): ` +
    `${dryRun ? 'would remove' : 'removed'} ${removed} backup${removed === 1 ? '' : 's'} (${formatBytes(bytesRemoved)}), ${dryRun ? 'would merge' : 'merged'} ${merged}` +
    (failed.length ? `; FAILED for ${failed.map((r) => `${r.vm} (${r.error})`).join(', ')}` : '');
  return {
    ok: failed.length === 0,
    dryRun,
    rules: reports[0]?.rules ?? '',
    vms: reports.map((r) => ({
      vm: r.vm,
      ok: r.ok,
      kept: r.kept.length,
      removed: r.removed.length,
      merged: r.merged.length,
      bytesRemoved: r.bytesRemoved,
      ...(r.error ? { error: r.error } : {}),
    })),
    removed,
    merged,
    bytesRemoved,
    text,
  };
}
