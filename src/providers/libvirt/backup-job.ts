// The point-in-time view of a running domain: libvirt's backup job in PULL mode. libvirt keeps
// the image as of backup-begin readable over an NBD export (a unix socket in a private
// directory) and, for every guest write that would overwrite a block not yet read, copies the
// old block to a scratch file on the VM's own storage first. The copy is done by us reading the
// export (qemu-img convert). So a slow, full or vanished backup repository only slows or fails
// our read: a guest write never waits on it and never fails because of it (push mode would write
// into the repository from inside QEMU's write path). Ended with domjobabort: nothing to merge.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { parseBackupXml, parseJobInfo } from './parse';
import type { Virsh } from './virsh';
import { VirshError } from './virsh';
import { encodeXml } from './xml';

export interface BackupDisk {
  /** target name (vda) */
  name: string;
  /** scratch file on the VM's storage; libvirt creates it and removes it when the job ends */
  scratch?: string;
  /** false: the disk is not part of the view (excluded disks) */
  backup: boolean;
  /** the parent's checkpoint: the export then also says what changed since it (incremental) */
  incremental?: string;
}

export function backupXml(socket: string, disks: readonly BackupDisk[]): string {
  const lines = disks.map((d) =>
    d.backup
      ? `    <disk name='${encodeXml(d.name)}' backup='yes' type='file'${d.incremental ? ` backupmode='incremental' incremental='${encodeXml(d.incremental)}'` : ''}><scratch file='${encodeXml(d.scratch ?? '')}'/></disk>`
      : `    <disk name='${encodeXml(d.name)}' backup='no'/>`,
  );
  return `<domainbackup mode='pull'>\n  <server transport='unix' socket='${encodeXml(socket)}'/>\n  <disks>\n${lines.join('\n')}\n  </disks>\n</domainbackup>\n`;
}

/** The NBD URI qemu-img reads one disk's point-in-time image from. */
export function nbdUri(socket: string, exportName: string): string {
  return `nbd+unix:///${encodeURIComponent(exportName)}?socket=${socket}`;
}

/** Inverse of nbdUri; undefined for anything else. */
export function parseNbdUri(uri: string): { exportName: string; socket: string } | undefined {
  const m = /^nbd\+unix:\/\/\/([^?]*)\?socket=(\/[^&]+)$/.exec(uri);
  return m ? { exportName: decodeURIComponent(m[1]), socket: m[2] } : undefined;
}

/**
 * Start the pull-mode job. `dir` is private to this job (0700); its XML files go there. With
 * `checkpoint` (its XML) libvirt makes that checkpoint in the same call: tracking from the view's moment.
 */
export async function beginBackup(
  virsh: Virsh,
  domain: string,
  dir: string,
  disks: readonly BackupDisk[],
  timeoutMs: number,
  checkpoint?: string,
): Promise<string> {
  const socket = path.join(dir, 'nbd.sock');
  // sun_path holds 108 bytes with its NUL
  if (Buffer.byteLength(socket) > 107)
    throw new Error(`runDir: the NBD socket path ${socket} is longer than a unix socket allows; choose a shorter runDir`);
  const file = path.join(dir, 'backup.xml');
  await fs.writeFile(file, backupXml(socket, disks), { mode: 0o600 });
  const cp = path.join(dir, 'checkpoint.xml');
  if (checkpoint) await fs.writeFile(cp, checkpoint, { mode: 0o600 });
  await virsh.run(['backup-begin', '--domain', domain, '--backupxml', file, ...(checkpoint ? ['--checkpointxml', cp] : [])], { timeoutMs });
  return socket;
}

export async function jobType(virsh: Virsh, domain: string, timeoutMs: number): Promise<{ type: string; operation?: string }> {
  try {
    return parseJobInfo(await virsh.run(['domjobinfo', '--domain', domain], { timeoutMs }));
  } catch (err) {
    // an inactive domain runs no job, nor one that is gone (a transient domain stopped, a domain undefined)
    if (err instanceof VirshError && (err.notRunning || err.noDomain)) return { type: 'None' };
    throw err;
  }
}

/**
 * End our backup job of the domain, if one runs, and prove it ended by asking libvirt. Only a
 * job whose scratch files are among `ours` is aborted: a backup job somebody else started is
 * never touched. As libvirt runs one job per domain, ours is then not running ('foreign': nothing
 * of ours is in place). Safe to call when no job runs.
 */
export async function endBackup(
  virsh: Virsh,
  domain: string,
  ours: readonly string[],
  timeoutMs: number,
): Promise<'ended' | 'none' | 'foreign'> {
  const job = await jobType(virsh, domain, timeoutMs);
  if (job.type === 'None' || job.operation !== 'Backup') return 'none';
  let mine = false;
  try {
    const desc = parseBackupXml(await virsh.run(['backup-dumpxml', '--domain', domain], { timeoutMs }));
    mine = desc.disks.some((d) => d.scratch !== undefined && ours.includes(d.scratch));
  } catch (err) {
    // the job ended between the two calls
    if ((await jobType(virsh, domain, timeoutMs)).type === 'None') return 'none';
    throw err;
  }
  if (!mine) return 'foreign';
  await virsh.run(['domjobabort', '--domain', domain], { timeoutMs }).catch(async (err: unknown) => {
    if ((await jobType(virsh, domain, timeoutMs)).type !== 'None') throw err;
  });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const now = await jobType(virsh, domain, timeoutMs);
    if (now.type === 'None' || now.operation !== 'Backup') return 'ended';
    if (Date.now() > deadline) throw new Error(`domain ${domain}: libvirt still reports the backup job after domjobabort`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
