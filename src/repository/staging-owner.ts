// The owner record of a staging directory: which process, on which machine, writes it. Two
// Node-RED instances may share one repository; a staging directory that no journal of ours names
// is removed at start only when this record proves its writer is gone (same machine and boot, and
// that process no longer exists or is another process under the same pid). Anything less than
// proof leaves the directory in place and reported.
import { promises as fs, readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export const OWNER_FILE = '.vmbackup-owner.json';

export interface StagingOwner {
  host: string;
  machine: string;
  /** /proc/sys/kernel/random/boot_id: a pid means nothing across a reboot */
  boot?: string;
  pid: number;
  /** the process's start time in clock ticks since boot (/proc/<pid>/stat field 22): a reused pid differs */
  started?: string;
}

function bootId(): string | undefined {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

/** Start time of a process (Linux); undefined when it does not exist or cannot be read. */
export function processStarted(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // the command name (field 2) may hold spaces and parentheses: count from the last ')'
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

export function currentOwner(host: string): StagingOwner {
  const boot = bootId();
  const started = processStarted(process.pid);
  return { host, machine: os.hostname(), ...(boot ? { boot } : {}), pid: process.pid, ...(started ? { started } : {}) };
}

export async function writeOwner(dir: string, host: string): Promise<void> {
  await fs.writeFile(path.join(dir, OWNER_FILE), JSON.stringify(currentOwner(host)) + '\n', { mode: 0o640 });
}

export async function readOwner(dir: string): Promise<StagingOwner | undefined> {
  try {
    const v = JSON.parse(await fs.readFile(path.join(dir, OWNER_FILE), 'utf8')) as Partial<StagingOwner>;
    if (typeof v !== 'object' || v === null || typeof v.machine !== 'string' || !Number.isSafeInteger(v.pid) || typeof v.host !== 'string')
      return undefined;
    return v as StagingOwner;
  } catch {
    return undefined;
  }
}

function exists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Whether the writer of a staging directory is provably gone: `{ gone: true }`, or why it cannot
 * be proven (no record, another machine, still running).
 */
export function ownerGone(owner: StagingOwner | undefined): { gone: true } | { gone: false; why: string } {
  if (!owner) return { gone: false, why: 'it has no owner record (written by an older version, or by someone else)' };
  const me = currentOwner(owner.host);
  if (owner.machine !== me.machine) return { gone: false, why: `it is written by machine ${owner.machine}, not this one (${me.machine})` };
  if (owner.boot && me.boot && owner.boot !== me.boot) return { gone: true }; // this machine rebooted since
  if (owner.pid === process.pid && (!owner.started || owner.started === me.started))
    return { gone: false, why: 'this very process writes it (another host node here)' };
  if (!exists(owner.pid)) return { gone: true };
  if (owner.started && processStarted(owner.pid) !== undefined && processStarted(owner.pid) !== owner.started) return { gone: true }; // pid reused
  return { gone: false, why: `its writer, process ${owner.pid} on this machine, is still running` };
}
