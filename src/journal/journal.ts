// The durable journal: one JSON line per side effect, written and fsync'd BEFORE the effect
// ("intent") and after it ("done"). After a crash, replaying it tells exactly what to undo.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { PointInTimeView } from '../contract/types';

export type JournalOp =
  | 'freeze' // guest file systems frozen; undone by thaw
  | 'save' // vCPUs stopped and state saved; undone by resume (data.previousState)
  | 'view' // point-in-time view made (data.view); undone by release
  | 'track' // change tracking started (data.track); undone by untrack
  | 'staging' // staging directory created (data.dir); undone by discard
  | 'thaw'
  | 'resume'
  | 'release'
  | 'untrack'
  | 'discard'
  | 'publish'
  | 'end'; // the backup set is over: nothing of it is pending

export interface JournalEntry {
  t: string;
  backupId: string;
  vm?: string;
  op: JournalOp;
  phase: 'intent' | 'done' | 'failed';
  /** by: "guardian" when the guardian process (Node-RED had died) wrote it */
  data?: { previousState?: string; view?: PointInTimeView; track?: TrackIntent; dir?: string; error?: string; by?: 'guardian'; /** an undo found nothing to undo (overlays planned, never made) */ nothingToDo?: boolean };
}

/** Tracking started for a backup: `records` are this backup's new ones, `since` the parent's it reads by. */
export interface TrackIntent {
  records: { disk: string; name: string }[];
  since: { disk: string; name: string }[];
}

export class JournalError extends Error {
  readonly code: string | undefined;
  constructor(readonly file: string, cause: NodeJS.ErrnoException) {
    super(`journal ${file} cannot be written (${cause.code ?? cause.message}): nothing was done that it could not record`);
    this.name = 'JournalError';
    this.code = cause.code;
  }
}

export class Journal {
  private fd: number | undefined;
  constructor(readonly file: string) {}

  private open(): number {
    if (this.fd === undefined) {
      fs.mkdirSync(path.dirname(this.file), { recursive: true, mode: 0o700 });
      const created = !fs.existsSync(this.file);
      this.fd = fs.openSync(this.file, 'a', 0o600);
      if (created) {
        // the new file's directory entry must survive a power cut too
        const dir = fs.openSync(path.dirname(this.file), 'r');
        try {
          fs.fsyncSync(dir);
        } finally {
          fs.closeSync(dir);
        }
      }
    }
    return this.fd;
  }

  /**
   * Append one line. `durable` (the default) fsyncs it before returning: an intent must be on disk
   * before its effect. Without it the line is only written (the next durable line, or the kernel,
   * flushes it): for lines whose loss is harmless because their undo is safe to repeat, where an
   * fsync on a busy disk (it blocks the event loop) would delay the undo itself and every other
   * guest's watchdog.
   */
  append(entry: Omit<JournalEntry, 't'>, durable = true): void {
    try {
      const fd = this.open();
      fs.writeSync(fd, JSON.stringify({ t: new Date().toISOString(), ...entry }) + '\n');
      if (durable) fs.fsyncSync(fd);
    } catch (err) {
      // an intent that cannot be made durable stops its effect from happening: say why
      throw new JournalError(this.file, err as NodeJS.ErrnoException);
    }
  }

  read(): JournalEntry[] {
    let text: string;
    try {
      text = fs.readFileSync(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw new JournalError(this.file, err as NodeJS.ErrnoException);
    }
    const entries: JournalEntry[] = [];
    for (const line of text.split('\n')) {
      if (!line.trim()) continue;
      try {
        entries.push(JSON.parse(line) as JournalEntry);
      } catch {
        // a torn last line from a crash mid-write: the effect it announced may not have started,
        // and every undo is safe to run when nothing is pending, so skipping it loses nothing.
      }
    }
    return entries;
  }

  /** Replace the journal with `keep` (atomically), e.g. after recovery finished the rest. */
  compact(keep: JournalEntry[]): void {
    this.close();
    const tmp = `${this.file}.tmp`;
    try {
      fs.mkdirSync(path.dirname(this.file), { recursive: true, mode: 0o700 });
      fs.writeFileSync(tmp, keep.map((e) => JSON.stringify(e) + '\n').join(''), { mode: 0o600 });
      const fd = fs.openSync(tmp, 'r');
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      fs.renameSync(tmp, this.file);
    } catch (err) {
      throw new JournalError(this.file, err as NodeJS.ErrnoException);
    }
  }

  close(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }
}

export type PendingUndo =
  | { kind: 'thaw'; backupId: string; vm: string }
  | { kind: 'resume'; backupId: string; vm: string; previousState: string }
  | { kind: 'release'; backupId: string; vm: string; view: PointInTimeView }
  /** published: the parent's records go (the new ones carry on); not published: this backup's new ones go */
  | { kind: 'untrack'; backupId: string; vm: string; view: PointInTimeView; remove: { disk: string; name: string }[]; published: boolean }
  | { kind: 'discard'; backupId: string; vm: string; dir: string };

const UNDO_OF: Partial<Record<JournalOp, JournalOp>> = { freeze: 'thaw', save: 'resume', view: 'release', track: 'untrack', staging: 'discard' };

/**
 * What a crash left undone: every effect whose intent was written and whose undo has not been
 * written as done. Order of the answer: thaw first (a frozen guest hangs its writes), then
 * resume, release, untrack, discard.
 */
export function pendingUndos(entries: readonly JournalEntry[]): PendingUndo[] {
  const open = new Map<string, JournalEntry>();
  const ended = new Set<string>();
  const published = new Set<string>();
  for (const e of entries) {
    const key = (op: JournalOp) => `${e.backupId}\u0000${e.vm ?? ''}\u0000${op}`;
    if (e.op === 'end' && e.phase === 'done') {
      ended.add(e.backupId);
      continue;
    }
    if (UNDO_OF[e.op] && e.phase === 'intent') open.set(key(e.op), e);
    // the effect is undone: drop the intent whose undo this is
    for (const [effect, undo] of Object.entries(UNDO_OF)) {
      if (undo === e.op && e.phase === 'done') open.delete(key(effect as JournalOp));
    }
    // a published staging directory is gone by rename: nothing to discard
    if (e.op === 'publish' && e.phase === 'done') {
      open.delete(key('staging'));
      published.add(`${e.backupId}\u0000${e.vm ?? ''}`);
    }
  }
  const order = ['thaw', 'resume', 'release', 'untrack', 'discard'];
  const undos: PendingUndo[] = [];
  for (const e of open.values()) {
    if (ended.has(e.backupId) || !e.vm) continue;
    if (e.op === 'freeze') undos.push({ kind: 'thaw', backupId: e.backupId, vm: e.vm });
    if (e.op === 'save') undos.push({ kind: 'resume', backupId: e.backupId, vm: e.vm, previousState: e.data?.previousState ?? 'running' });
    if (e.op === 'view' && e.data?.view) undos.push({ kind: 'release', backupId: e.backupId, vm: e.vm, view: e.data.view });
    if (e.op === 'track' && e.data?.track && e.data.view) {
      const done = published.has(`${e.backupId}\u0000${e.vm}`);
      const remove = done ? e.data.track.since : e.data.track.records;
      undos.push({ kind: 'untrack', backupId: e.backupId, vm: e.vm, view: e.data.view, remove, published: done });
    }
    if (e.op === 'staging' && e.data?.dir) undos.push({ kind: 'discard', backupId: e.backupId, vm: e.vm, dir: e.data.dir });
  }
  return undos.sort((a, b) => order.indexOf(a.kind) - order.indexOf(b.kind));
}
