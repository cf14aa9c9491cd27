// From QMP query-block / query-named-block-nodes to the backup set's disks. QEMU's backup job reads
// every node it has open, whatever the storage: image files, host block devices (LVM, LVM-thin,
// ZFS zvols, loop devices, whole disks) and protocol drivers (rbd, iscsi, nbd, gluster, ...), qcow2
// or raw, with or without a backing chain. So every disk is backed up, except a read-only
// removable medium (a CD/DVD image: not the VM's data), an empty drive, and a disk the host's own
// configuration marks (Proxmox backup=0, passed in as `hostExcluded`).
import { excluded } from '../../contract/exclusion';
import type { Disk } from '../../contract/types';

export interface QueryBlockEntry {
  device: string;
  qdev?: string;
  removable: boolean;
  tray_open?: boolean;
  inserted?: {
    file: string;
    'node-name': string;
    drv: string;
    ro: boolean;
    image?: { filename: string; format: string; 'virtual-size': number };
  };
}

export interface NamedNode {
  'node-name': string;
  drv: string;
  file: string;
}

/** Protocol drivers that reach storage over the network (named as the disk's driver; backed up like any other). */
export const NETWORK_DRIVERS = new Set([
  'nbd',
  'iscsi',
  'rbd',
  'gluster',
  'ssh',
  'http',
  'https',
  'ftp',
  'ftps',
  'nfs',
  'curl',
  'sheepdog',
  'vxhs',
]);
/** Protocol drivers of a host block device (named as the disk's driver; backed up like any other). */
export const PASSTHROUGH_DRIVERS = new Set(['host_device', 'host_cdrom', 'nvme', 'iscsi_generic']);

const NETWORK_URI = /^(nbd|iscsi|rbd|gluster|ssh|https?|ftps?|nfs|sheepdog)[:+]/i;

export function driverOf(entry: QueryBlockEntry, nodes: readonly NamedNode[]): string {
  const ins = entry.inserted!;
  // The protocol node is the one reading the same file name as the root that is not the root.
  const protocol = nodes.find((n) => n.file === ins.file && n['node-name'] !== ins['node-name'] && n.drv !== ins.drv);
  if (protocol) return protocol.drv;
  const json = /"driver":\s*"([a-z_-]+)"/.exec(ins.file);
  if (ins.file.startsWith('json:') && json) {
    const drivers = [...ins.file.matchAll(/"driver":\s*"([a-z_-]+)"/g)].map((m) => m[1]);
    return drivers.find((d) => NETWORK_DRIVERS.has(d) || PASSTHROUGH_DRIVERS.has(d)) ?? json[1];
  }
  const uri = NETWORK_URI.exec(ins.file);
  if (uri) return uri[1].toLowerCase();
  return ins.file.startsWith('/dev/') ? 'host_device' : 'file';
}

/** disk id -> why the host's configuration leaves it out (Proxmox `backup=0`) */
export type HostExclusions = ReadonlyMap<string, string>;

export function disksFrom(
  entries: readonly QueryBlockEntry[],
  nodes: readonly NamedNode[],
  hostExcluded: HostExclusions = new Map(),
): Disk[] {
  const disks: Disk[] = [];
  for (const entry of entries) {
    const id = entry.device || entry.qdev || 'disk';
    if (!entry.inserted) {
      if (!entry.removable) continue;
      disks.push({ id, node: id, file: '', format: '', driver: '', ...excluded('no-medium', 'a removable drive with no medium') });
      continue;
    }
    const ins = entry.inserted;
    const driver = driverOf(entry, nodes);
    const disk: Disk = {
      id,
      node: ins['node-name'],
      file: ins.image?.filename ?? ins.file,
      format: ins.image?.format ?? ins.drv,
      driver,
      included: true,
    };
    if (ins.image) disk.virtualSize = ins.image['virtual-size'];
    if (entry.qdev) disk.qdev = entry.qdev;
    const host = hostExcluded.get(id);
    if (entry.removable && ins.ro)
      Object.assign(disk, excluded('removable-media', `a read-only removable medium (${disk.file}): the guest cannot write it`));
    else if (host !== undefined) Object.assign(disk, excluded('host-config', host));
    disks.push(disk);
  }
  return disks;
}
