// Proxmox VE's own record of its VMs: /etc/pve/qemu-server/<id>.conf. A VM whose QEMU is not
// running has no QMP socket, so this is where its disks are read from; its volumes are resolved
// by Proxmox itself (`pvesm path <volid>`), and while it is copied offline Proxmox's config lock
// (`qm set <id> --lock backup`, the lock vzdump takes) keeps `qm start` and config changes out.
//
// NOT run on a Proxmox host here (none on these machines): the parser is tested on fixture confs
// and the pvesm/qm calls on a fake runner (test/unit/providers/proxmox.test.ts).
import { promises as fs } from 'node:fs';
import { runProgram } from '../../util/run';

/** How programs are run (runProgram; a fake one in unit tests). Argument vectors only. */
export type Runner = (file: string, args: readonly string[], opts?: { timeoutMs?: number }) => Promise<{ stdout: string }>;
export const defaultRunner: Runner = (file, args, opts) => runProgram(file, args, opts ?? {});

export interface ProxmoxDisk {
  /** the conf key: scsi0, virtio1, efidisk0, tpmstate0 */
  id: string;
  /** the volume id (local-lvm:vm-100-disk-0) or an absolute path */
  volume: string;
  /** format=... when the conf says it */
  format?: string;
  /** backup=0: Proxmox's own mark that the disk is left out of backups */
  noBackup?: true;
}

export interface ProxmoxConf {
  name?: string;
  /** lock: the conf's current lock (backup, migrate, snapshot, ...) */
  lock?: string;
  disks: ProxmoxDisk[];
}

/** Disk keys as Proxmox names them; unused<N> (detached volumes) are not disks of the VM. */
const DISK_KEY = /^(?:(?:ide|sata|scsi|virtio)\d{1,2}|efidisk0|tpmstate0)$/;

/**
 * The current configuration of a VM: the lines before the first [section] (the sections after it
 * are snapshots' configurations and [PENDING] changes, which are not what the VM's disks are now).
 */
export function parseProxmoxConf(text: string): ProxmoxConf {
  const conf: ProxmoxConf = { disks: [] };
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('[')) break;
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-z][a-z0-9_-]*):\s*(.*)$/.exec(line);
    if (!m) continue;
    const [, key, value] = m;
    if (key === 'name') conf.name = value;
    else if (key === 'lock') conf.lock = value;
    else if (DISK_KEY.test(key)) {
      const parts = value.split(',');
      const opts = new Map<string, string>();
      let volume = '';
      for (const [i, p] of parts.entries()) {
        const eq = p.indexOf('=');
        // the volume is the first part, or given as file=...
        if (i === 0 && eq < 0) volume = p;
        else if (eq > 0) opts.set(p.slice(0, eq), p.slice(eq + 1));
      }
      if (!volume) volume = opts.get('file') ?? '';
      if (opts.get('media') === 'cdrom' || volume === '' || volume === 'none' || volume === 'cdrom') continue;
      conf.disks.push({
        id: key,
        volume,
        ...(opts.has('format') ? { format: opts.get('format')! } : {}),
        ...(opts.get('backup') === '0' ? { noBackup: true as const } : {}),
      });
    }
  }
  return conf;
}

/** The path of a volume on this host: as-is when absolute, else what `pvesm path` says. */
export async function resolveVolume(volume: string, o: { pvesm: string; run: Runner }): Promise<string> {
  if (volume.startsWith('/')) return volume;
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]*:[^\0\s]+$/.test(volume))
    throw new Error(`volume "${volume.slice(0, 200)}" is neither an absolute path nor a Proxmox volume id`);
  const { stdout } = await o.run(o.pvesm, ['path', volume], { timeoutMs: 30_000 });
  const out = stdout.trim().split('\n').pop() ?? '';
  if (!out) throw new Error(`pvesm path ${volume} printed no path`);
  return out;
}

/** The format of a resolved volume: the conf's format=, else by its name (Proxmox's own rule). */
export function volumeFormat(disk: ProxmoxDisk, file: string): string {
  if (disk.format) return disk.format;
  const ext = /\.(qcow2|raw|vmdk)$/.exec(file)?.[1];
  return ext ?? 'raw';
}

/** Where `qm` is, when this is a Proxmox host; undefined elsewhere (then no config lock is taken). */
export async function findQm(candidates: readonly string[] = ['/usr/sbin/qm']): Promise<string | undefined> {
  for (const c of candidates) {
    if (
      await fs.access(c).then(
        () => true,
        () => false,
      )
    )
      return c;
  }
  return undefined;
}

/** vzdump's lock: `qm start` and config changes refuse a VM that holds it. */
export async function lockForBackup(id: string, o: { qm: string; run: Runner }): Promise<void> {
  await o.run(o.qm, ['set', id, '--lock', 'backup'], { timeoutMs: 60_000 });
}

export async function unlock(id: string, o: { qm: string; run: Runner }): Promise<void> {
  await o.run(o.qm, ['unlock', id], { timeoutMs: 60_000 });
}
