// Recovery of restores a crash interrupted, from the restore journal: a directory restore's
// hidden folder removed; an in-place restore rolled back (phase writing: its disks were not
// touched) or finished (phase switching: every new image was complete); a boot test's throwaway
// VM stopped and its overlay removed. Run by the restore and boot-test nodes at deploy and by
// `vm-backup-restore recover`. An entry whose process still runs is left alone.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { finish, rollBack } from './in-place';
import { activeRestores, RestoreJournal, journalDirOf, readEntries } from './journal';
import { pidAlive, readPid, stopQemu } from './qemu-process';

export interface RestoreRecovery {
  journal: string;
  op: string;
  ok: boolean;
  detail: string;
}

/** One recovery at a time per journal (the restore and boot-test nodes of a host both run it at deploy). */
const running = new Map<string, Promise<RestoreRecovery[]>>();

export function recoverRestores(journalBase: string, o: { qemuImg?: string } = {}): Promise<RestoreRecovery[]> {
  const dir = journalDirOf(journalBase);
  const next = (running.get(dir) ?? Promise.resolve([])).catch(() => []).then(() => recoverOnce(dir, o));
  running.set(dir, next);
  return next;
}

async function recoverOnce(dir: string, o: { qemuImg?: string }): Promise<RestoreRecovery[]> {
  const out: RestoreRecovery[] = [];
  for (const { file, entry, error } of await readEntries(dir)) {
    if (!entry) {
      out.push({ journal: file, op: 'unknown', ok: false, detail: `ATTENTION: ${error}; left for a person to look at` });
      continue;
    }
    if (entry.pid !== process.pid && pidAlive(entry.pid) && (await isNode(entry.pid))) continue; // still running
    if (entry.pid === process.pid && activeRestores.has(entry.id)) continue;
    const journal = new RestoreJournal(dir, entry.id);
    try {
      let detail: string;
      if (entry.op === 'directory') {
        await fs.rm(entry.tmp, { recursive: true, force: true });
        detail = `removed the unfinished restore ${entry.tmp} (target ${entry.target} was not made)`;
      } else if (entry.op === 'in-place') {
        const lines = entry.phase === 'writing' ? await rollBack(entry) : await finish(entry, journal, o.qemuImg);
        detail = `${entry.phase === 'writing' ? 'rolled back' : 'finished'} the in-place restore of ${entry.vm} from ${entry.backupDir}: ${lines.join('; ')}`;
      } else {
        const pid = await readPid(entry.pidFile);
        const cmd = pid ? await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '') : '';
        if (pid && cmd.includes(entry.pidFile)) await stopQemu(pid, entry.qmpSocket, 3000);
        await fs.rm(entry.dir, { recursive: true, force: true });
        detail = `stopped the boot test's throwaway VM${pid && cmd ? ` (pid ${pid})` : ''} and removed ${entry.dir}`;
      }
      await journal.end();
      out.push({ journal: file, op: entry.op, ok: true, detail });
    } catch (err) {
      out.push({ journal: file, op: entry.op, ok: false, detail: `FAILED: ${(err as Error).message}` });
    }
  }
  return out;
}

async function isNode(pid: number): Promise<boolean> {
  const cmd = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  return path.basename(cmd.split('\0')[0] ?? '').startsWith('node') || cmd.includes('node-red');
}
