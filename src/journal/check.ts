// Reading a journal defensively: every line is checked field by field before it is believed. A
// line that is not JSON, or parses to something that is not a journal entry, is skipped and
// counted with its reason, never acted on (recovery reports them).
import * as path from 'node:path';
import { isSafeName } from '../util/ids';
import type { JournalEntry, JournalOp } from './entry';

export interface SkippedLine {
  /** 1-based line number in the journal file */
  line: number;
  why: string;
  /** the line's first characters, for the report */
  text: string;
}

export interface JournalRead {
  entries: JournalEntry[];
  skipped: SkippedLine[];
}

/** Every op a journal line may name: a new op must be added here, or its lines are skipped. */
const OPS: Record<JournalOp, true> = {
  freeze: true,
  save: true,
  view: true,
  track: true,
  staging: true,
  thaw: true,
  resume: true,
  release: true,
  untrack: true,
  discard: true,
  publish: true,
  unpublish: true,
  adopt: true,
  step: true,
  end: true,
};
const PHASES = new Set(['intent', 'done', 'failed']);

export function parseJournal(text: string): JournalRead {
  const entries: JournalEntry[] = [];
  const skipped: SkippedLine[] = [];
  const lines = text.split('\n');
  lines.forEach((line, i) => {
    if (!line.trim()) return;
    const skip = (why: string) => skipped.push({ line: i + 1, why, text: line.slice(0, 120) });
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      // a torn last line from a crash mid-write: the effect it announced may not have started,
      // and every undo is safe to run when nothing is pending, so skipping it loses nothing.
      return skip(i >= lines.length - 2 && !text.endsWith('\n') ? 'torn last line (not JSON)' : 'not JSON');
    }
    const why = checkEntry(value);
    if (why) skip(why);
    else entries.push(value as JournalEntry);
  });
  return { entries, skipped };
}

/**
 * Why `v` is not a journal entry (undefined: it is one). Every field is checked for its type;
 * names that become path components (backupId, vm, host) must be safe names. Fields of `data`
 * not listed here are left alone (other undo kinds carry their own), but must not be functions
 * of a line: JSON has none.
 */
export function checkEntry(v: unknown): string | undefined {
  if (typeof v !== 'object' || v === null || Array.isArray(v))
    return `not an object (${v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v})`;
  const e = v as Record<string, unknown>;
  if (typeof e.t !== 'string' || Number.isNaN(Date.parse(e.t))) return 't: not a timestamp';
  if (!isSafeName(e.backupId)) return 'backupId: not a safe name';
  if (e.vm !== undefined && !isSafeName(e.vm)) return 'vm: not a safe name';
  if (e.host !== undefined && !isSafeName(e.host)) return 'host: not a safe name';
  if (e.owner !== undefined && !isSafeName(e.owner)) return 'owner: not a safe name';
  if (typeof e.op !== 'string' || !Object.prototype.hasOwnProperty.call(OPS, e.op))
    return `op: unknown (${JSON.stringify(e.op)?.slice(0, 40)})`;
  if (typeof e.phase !== 'string' || !PHASES.has(e.phase)) return `phase: not one of intent, done, failed`;
  if (e.data === undefined) return undefined;
  if (typeof e.data !== 'object' || e.data === null || Array.isArray(e.data)) return 'data: not an object';
  const d = e.data as Record<string, unknown>;
  for (const f of ['previousState', 'dir', 'error', 'step'] as const)
    if (d[f] !== undefined && typeof d[f] !== 'string') return `data.${f}: not a string`;
  if (d.dir !== undefined && (!path.isAbsolute(d.dir as string) || (d.dir as string).includes('\0')))
    return 'data.dir: not an absolute path';
  if (d.by !== undefined && d.by !== 'guardian') return 'data.by: not "guardian"';
  if (d.pid !== undefined && !(Number.isSafeInteger(d.pid) && (d.pid as number) > 0)) return 'data.pid: not a process id';
  if (d.nothingToDo !== undefined && typeof d.nothingToDo !== 'boolean') return 'data.nothingToDo: not a boolean';
  if (d.unreported !== undefined && typeof d.unreported !== 'boolean') return 'data.unreported: not a boolean';
  if (d.view !== undefined) {
    const view = d.view as Record<string, unknown>;
    if (typeof view !== 'object' || view === null || !Array.isArray(view.disks) || typeof view.ref !== 'object' || view.ref === null)
      return 'data.view: not a view (disks, ref)';
    for (const [i, x] of (view.disks as unknown[]).entries()) {
      const disk = x as Record<string, unknown>;
      if (typeof disk !== 'object' || disk === null || typeof disk.disk !== 'string' || typeof disk.artifact !== 'string')
        return `data.view.disks[${i}]: not a disk of a view`;
    }
  }
  if (d.track !== undefined) {
    const t = d.track as Record<string, unknown>;
    if (typeof t !== 'object' || t === null) return 'data.track: not an object';
    for (const f of ['records', 'since'] as const) {
      if (!Array.isArray(t[f])) return `data.track.${f}: not an array`;
      for (const [i, r] of (t[f] as unknown[]).entries()) {
        const rec = r as Record<string, unknown>;
        if (typeof rec !== 'object' || rec === null || typeof rec.disk !== 'string' || typeof rec.name !== 'string')
          return `data.track.${f}[${i}]: not a {disk, name}`;
      }
    }
  }
  return undefined;
}
