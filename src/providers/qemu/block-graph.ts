// From QMP query-block / query-named-block-nodes to the backup set's disks, deciding what the
// host can copy: local image files yes; host block devices (pass-through) and network disks no.
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

/** Protocol drivers that reach storage over the network: the guest's data is not in a host file. */
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
/** Protocol drivers that pass a host block device through. */
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

export function disksFrom(entries: readonly QueryBlockEntry[], nodes: readonly NamedNode[]): Disk[] {
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
    if (entry.removable && ins.ro)
      Object.assign(disk, excluded('removable-media', `a read-only removable medium (${disk.file}): the guest cannot write it`));
    else if (NETWORK_DRIVERS.has(driver) || PASSTHROUGH_DRIVERS.has(driver))
      Object.assign(disk, excluded('not-supported', `a ${driver} disk is not copied yet`));
    disks.push(disk);
  }
  return disks;
}
