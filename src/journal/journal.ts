// The durable journal: one JSON line per side effect, written and fsync'd BEFORE the effect
// ("intent") and after it ("done"). It only stores and reads lines; what they mean (what is still
// pending, how each effect is undone) is the ledger's (src/ledger), the one reader of them.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseJournal, type JournalRead } from './check';
import type { JournalEntry } from './entry';

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
