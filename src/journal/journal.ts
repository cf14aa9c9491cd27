// The durable journal: one JSON line per side effect, written and fsync'd BEFORE the effect
// ("intent") and after it ("done"). After a crash, replaying it tells exactly what to undo.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { STAGING_PREFIX } from '../repository/repository';
import { parseJournal, type JournalRead } from './check';
import type { PointInTimeView } from '../contract/types';
import type { JournalEntry, JournalOp } from './entry';

export { checkEntry, parseJournal, type JournalRead, type SkippedLine } from './check';
export type { JournalEntry, JournalOp, TrackIntent } from './entry';

const WHY: Record<string, string> = {
  ELOOP: ': the journal file is a symbolic link; refused, so that no line is written to where it points',
  EISDIR: ': a directory is where the journal file should be',
  ENOSPC: ': its file system is full',
  EROFS: ': its file system is read-only',
};

export class JournalError extends Error {
  readonly code: string | undefined;
  constructor(
    readonly file: string,
    cause: NodeJS.ErrnoException,
  ) {
    super(
      `journal ${file} cannot be written (${cause.code ?? cause.message}${WHY[cause.code ?? ''] ?? ''}): nothing was done that it could not record`,
    );
    this.name = 'JournalError';
    this.code = cause.code;
  }
}

/** Stamped on every line a Journal writes, so that recovery knows whose work a line is. */
export interface JournalStamp {
  host?: string;
  owner?: string;
}

export class Journal {
  private fd: number | undefined;
  constructor(
    readonly file: string,
    readonly stamp: JournalStamp = {},
  ) {}

  private open(): number {
    // The file may have been removed, renamed or replaced since it was opened (a journal directory
    // deleted between two backups): lines written to the old inode would never be read by recovery.
    if (this.fd !== undefined && !this.stillAtPath(this.fd)) this.close();
    if (this.fd === undefined) {
      fs.mkdirSync(path.dirname(this.file), { recursive: true, mode: 0o700 });
      const created = !fs.existsSync(this.file);
      // O_NOFOLLOW: a symlink planted at the journal's path would have us append (as root) to any
      // file; a directory there fails with EISDIR. Either way the intent, and so its effect, is refused.
      const c = fs.constants;
      this.fd = fs.openSync(this.file, c.O_WRONLY | c.O_APPEND | c.O_CREAT | c.O_NOFOLLOW, 0o600);
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

  /** The open file is still the one at the journal's path (not unlinked, not replaced). */
  private stillAtPath(fd: number): boolean {
    try {
      const open = fs.fstatSync(fd);
      const now = fs.lstatSync(this.file);
      return open.nlink > 0 && open.ino === now.ino && open.dev === now.dev;
    } catch {
      return false;
    }
  }

  /** Throw a JournalError unless the journal file can be opened for appending (created if missing). */
  ensureWritable(): void {
    try {
      this.open();
    } catch (err) {
      throw new JournalError(this.file, err as NodeJS.ErrnoException);
    }
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
      fs.writeSync(fd, JSON.stringify({ t: new Date().toISOString(), ...this.stamp, ...entry }) + '\n');
      if (durable) fs.fsyncSync(fd);
    } catch (err) {
      // an intent that cannot be made durable stops its effect from happening: say why
      throw new JournalError(this.file, err as NodeJS.ErrnoException);
    }
  }

  /** The valid entries; lines that are not journal entries are skipped (see readChecked). */
  read(): JournalEntry[] {
    return this.readChecked().entries;
  }

  /**
   * Every line checked field by field: a line that is not JSON, or parses to something that is not
   * a journal entry (null, wrong types, an unknown op, an id that is not a safe name), is skipped
   * and counted with its reason, never acted on.
   */
  readChecked(): JournalRead {
    let text: string;
    try {
      text = readJournalText(this.file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { entries: [], skipped: [] };
      throw new JournalError(this.file, err as NodeJS.ErrnoException);
    }
    return parseJournal(text);
  }

  /** Replace the journal with `keep` (atomically), e.g. after recovery finished the rest. */
  compact(keep: JournalEntry[]): void {
    this.replaceWith(keep.map((e) => JSON.stringify(e) + '\n').join(''));
  }

  /**
   * Drop the lines of the sets `done` says are finished, keeping every other line as it is now on
   * disk: read, filter and rename in one synchronous step, so that a line another live set (a
   * second host node on this journal) appended meanwhile is never lost. Lines that are not journal
   * entries were reported by the recovery that read them and are dropped with the rest.
   */
  dropSets(done: (e: JournalEntry) => boolean): void {
    let text = '';
    try {
      text = readJournalText(this.file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new JournalError(this.file, err as NodeJS.ErrnoException);
    }
    const keep = parseJournal(text).entries.filter((e) => !done(e));
    this.replaceWith(keep.map((e) => JSON.stringify(e) + '\n').join(''));
  }

  private replaceWith(text: string): void {
    this.close();
    const tmp = `${this.file}.tmp`;
    try {
      fs.mkdirSync(path.dirname(this.file), { recursive: true, mode: 0o700 });
      // exclusive create: a link planted at the temporary name is removed, never written through
      fs.rmSync(tmp, { force: true });
      fs.writeFileSync(tmp, text, { mode: 0o600, flag: 'wx' });
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

/** Read the journal's text; a symlink at its path is refused (ELOOP) as it is for writing. */
function readJournalText(file: string): string {
  const fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  try {
    return fs.readFileSync(fd, 'utf8');
  } finally {
    fs.closeSync(fd);
  }
}

export type PendingUndo =
  | { kind: 'thaw'; backupId: string; vm: string }
  | { kind: 'resume'; backupId: string; vm: string; previousState: string }
  | { kind: 'release'; backupId: string; vm: string; view: PointInTimeView }
  /** published: the parent's records go (the new ones carry on); not published: this backup's new ones go */
  | { kind: 'untrack'; backupId: string; vm: string; view: PointInTimeView; remove: { disk: string; name: string }[]; published: boolean }
  | { kind: 'discard'; backupId: string; vm: string; dir: string };

const UNDO_OF: Partial<Record<JournalOp, JournalOp>> = {
  freeze: 'thaw',
  save: 'resume',
  view: 'release',
  track: 'untrack',
  staging: 'discard',
};

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
    // only a directory shaped like the set's own staging directory (<...>/<vm>/.partial-<backupId>);
    // recovery also checks it is the one the repository computes (recovery.ts)
    if (e.op === 'staging' && e.data?.dir && isStagingShaped(e.data.dir, e.vm, e.backupId)) {
      undos.push({ kind: 'discard', backupId: e.backupId, vm: e.vm, dir: e.data.dir });
    }
  }
  return undos.sort((a, b) => order.indexOf(a.kind) - order.indexOf(b.kind));
}

/** `<anything>/<vm>/.partial-<backupId>`, absolute and normalised. */
export function isStagingShaped(dir: string, vm: string, backupId: string): boolean {
  return (
    path.isAbsolute(dir) &&
    path.resolve(dir) === dir &&
    path.basename(dir) === `${STAGING_PREFIX}${backupId}` &&
    path.basename(path.dirname(dir)) === vm
  );
}
