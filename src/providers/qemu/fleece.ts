// Where a running VM's fleecing images go (the copy-before-write filter's store of old data while
// the point-in-time view lives). They sit in the guest's write path (a guest write to a cluster
// the copy has not read yet first copies the old data there), so they must be on a local file
// system, never beside a /dev/... volume (LVM, ZFS zvol, loop, whole disk) or in Ceph/iSCSI/NBD:
//   - the host setting `fleeceDir` when set (Proxmox's vzdump has a fleecing storage for the same reason);
//   - else beside the VM's first disk when that disk is an image file (its own storage, as before);
//   - else DEFAULT_FLEECE_DIR, a directory of ours on the host's local disk.
// How much space they need is the rule in src/classify/rules.ts (fleeceReserve), checked at
// classify (the VM's snapshot-location rule) and again right before the images are made.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { fleeceReserve } from '../../classify/rules';
import type { Disk, EnumeratedVm } from '../../contract/types';
import { formatBytes } from '../../summary';

/** FHS: /var/tmp is on disk (not a tmpfs) and kept across reboots, so recovery still finds a leftover image there. */
export const DEFAULT_FLEECE_DIR = '/var/tmp/vm-backup-fleece';

type Location = EnumeratedVm['snapshotLocation'];

/** The first included disk's image file, when it is a regular file of this host. */
async function imageDir(disks: readonly Disk[]): Promise<string | undefined> {
  const first = disks.find((d) => d.included);
  if (!first || !first.file.startsWith('/') || first.file.startsWith('/dev/')) return undefined;
  const st = await fs.stat(first.file).catch(() => undefined);
  return st?.isFile() ? path.dirname(first.file) : undefined;
}

/** The nearest directory that exists at or above `dir` (the default directory is made only when needed). */
async function existing(dir: string): Promise<string | undefined> {
  for (let d = dir; ; d = path.dirname(d)) {
    if (
      await fs.stat(d).then(
        (s) => s.isDirectory(),
        () => false,
      )
    )
      return d;
    if (d === path.dirname(d)) return undefined;
  }
}

/** The VM's fleece location with its volume and free space, as the classify rule reads it. */
export async function fleeceLocation(disks: readonly Disk[], configured: string | undefined): Promise<Location> {
  const beside = configured ? undefined : await imageDir(disks);
  const dir = configured ?? beside ?? DEFAULT_FLEECE_DIR;
  const at = await existing(dir);
  if (!at) return { path: dir, dedicated: beside === undefined };
  const [st, fsStat] = await Promise.all([fs.stat(at), fs.statfs(at).catch(() => undefined)]);
  return {
    path: dir,
    volumeId: String(st.dev),
    dedicated: beside === undefined,
    ...(fsStat ? { freeBytes: fsStat.bavail * fsStat.bsize } : {}),
  };
}

/**
 * Right before the fleecing images are made: the directory exists (the default one is made, private
 * to us) and still has the space the rule asks for. Throws, with the figures, when it has not.
 */
export async function prepareFleeceDir(dir: string, disks: readonly { virtualSize: number }[]): Promise<void> {
  if (dir === DEFAULT_FLEECE_DIR) await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  const s = await fs.statfs(dir).catch((err: NodeJS.ErrnoException) => {
    throw new Error(`fleece location ${dir} cannot be used (${err.code ?? err.message}); set the host's fleece dir to a local directory`);
  });
  const free = s.bavail * s.bsize;
  const need = fleeceReserve(disks.map((d) => d.virtualSize));
  if (free < need)
    throw new Error(
      `fleece location ${dir} has ${formatBytes(free)} free; the fleecing images of this VM need at least ${formatBytes(need)} (10% of its disks' size, at least 1 GiB): free space there or set the host's fleece dir elsewhere`,
    );
}
