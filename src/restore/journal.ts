// The restore's own journal: one small JSON file per restore under way, in <journalDir>/restore/,
// written beside and renamed (and the directory fsynced) at every step that changes what a crash
// must undo or finish. Removed when the restore ended. Recovery (recover.ts) reads what is left.
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { fsyncDir, writeFileDurable } from '../repository/durable';

/** An in-place disk: the image (or block device) it replaces and where its new content is written first. */
export interface InPlaceDisk {
  disk: string;
  /** the VM's image file, or a block device */
  target: string;
  kind: 'file' | 'block';
  /** the point's top image of this disk (a block device is written from it, also by recovery) */
  source: string;
  format: 'qcow2' | 'raw';
  /** file: the new image written beside the target; block: the old content saved aside */
  temp: string;
  /** file: the target's old image kept (keepOld) */
  keep?: string;
  /** the disk is switched (file: renamed into place; block: written and compared) */
  done?: boolean;
}

export type RestoreEntry =
  | { op: 'directory'; id: string; pid: number; startedAt: string; tmp: string; target: string }
  | {
      op: 'in-place';
      id: string;
      pid: number;
      startedAt: string;
      vm: string;
      backupDir: string;
      /** writing: nothing of the VM changed yet (roll back); switching: every new image is complete (finish) */
      phase: 'writing' | 'switching';
      disks: InPlaceDisk[];
    }
  | { op: 'boot-test'; id: string; pid: number; startedAt: string; dir: string; pidFile: string; qmpSocket: string };

export function journalDirOf(base: string): string {
  return path.join(base, 'restore');
}

/** Journal ids of restores under way in this process: never recovery's to touch. */
export const activeRestores = new Set<string>();

export class RestoreJournal {
  readonly file: string;
  constructor(
    readonly dir: string,
    readonly id: string = `${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`,
  ) {
    this.file = path.join(dir, `${this.id}.json`);
  }

  async write(entry: RestoreEntry): Promise<void> {
    activeRestores.add(this.id);
    await fs.mkdir(this.dir, { recursive: true, mode: 0o750 });
    const tmp = `${this.file}.tmp`;
    await writeFileDurable(tmp, JSON.stringify(entry, null, 2) + '\n');
    await fs.rename(tmp, this.file);
    await fsyncDir(this.dir);
  }

  async end(): Promise<void> {
    activeRestores.delete(this.id);
    await fs.rm(this.file, { force: true });
    await fsyncDir(this.dir).catch(() => undefined);
  }
}

/** Every entry left in a journal directory (a damaged file is reported, never guessed at). */
export async function readEntries(dir: string): Promise<{ file: string; entry?: RestoreEntry; error?: string }[]> {
  const names = await fs.readdir(dir).catch(() => [] as string[]);
  const out: { file: string; entry?: RestoreEntry; error?: string }[] = [];
  for (const n of names.filter((x) => x.endsWith('.json')).sort()) {
    const file = path.join(dir, n);
    try {
      const entry = JSON.parse(await fs.readFile(file, 'utf8')) as RestoreEntry;
      if (!entry || typeof entry !== 'object' || typeof entry.op !== 'string') throw new Error('not a restore journal entry');
      out.push({ file, entry });
    } catch (err) {
      out.push({ file, error: (err as Error).message });
    }
  }
  return out;
}
