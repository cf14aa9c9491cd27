// A domain's disks from its XML, and where each one's data is. Every disk QEMU reads through its
// block layer is backed up, whatever holds it: libvirt's pull-mode backup job reads the disk as
// the guest sees it, so a file, a block device (LVM, zvol, loop), a pool volume or a network
// drive (NBD, iSCSI, RBD, ...) is exported alike. A disk is left out only where the host leaves
// nothing to copy (a removable drive with read-only media or none: the host's choice, src/contract/
// exclusion.ts); a SCSI LUN passed through (the guest's SCSI commands bypass QEMU's block layer,
// so no view of it can hold still) and a vhost-user disk (its data lives in another process) are
// reported as disks this product cannot copy, never ok until the user excludes them.
import { excluded } from '../../contract/exclusion';
import type { Disk } from '../../contract/types';
import { child, children, type XmlElement } from './xml';

/** What the Disk fields cannot carry: libvirt's kind of source, and how an offline copy reads it. */
export interface DiskSource {
  /** libvirt's <disk type>: file, block, network, volume, nvme, ... */
  type: string;
  /** a volume disk: its pool and volume (resolved at enumerate: resolveVolume) */
  pool?: string;
  volume?: string;
  /** a network disk that authenticates (iSCSI CHAP, Ceph cephx): only libvirt holds the secret */
  auth?: boolean;
  /**
   * Why qemu-img cannot open this disk by itself (a shut-off domain is copied by qemu-img, not
   * through libvirt): undefined when it can.
   */
  offlineUnreadable?: string;
}

export interface DomainDisk {
  disk: Disk;
  source: DiskSource;
}

interface NetworkHost {
  name: string;
  port?: string;
  transport?: string;
  socket?: string;
}

/**
 * A network disk as the URL qemu-img opens (the same syntax QEMU's block drivers take), so a
 * shut-off domain's network disk can be copied without libvirt; also what the summary shows.
 */
export function networkUrl(protocol: string, name: string, hosts: readonly NetworkHost[]): string {
  const h = hosts[0];
  const at = (defaultPort?: number) => (h ? `${h.name}${h.port ? `:${h.port}` : defaultPort ? `:${defaultPort}` : ''}` : '');
  const path = name.replace(/^\/+/, '');
  switch (protocol) {
    case 'nbd':
      if (h?.transport === 'unix') return `nbd+unix:///${path}?socket=${h.socket ?? ''}`;
      return `nbd://${at(10809)}/${path}`;
    case 'iscsi':
      return `iscsi://${at(3260)}/${path}`;
    case 'rbd': {
      const mons = hosts.map((m) => `${m.name}${m.port ? `\\:${m.port}` : ''}`).join('\\;');
      return `rbd:${path}${mons ? `:mon_host=${mons}` : ''}`;
    }
    case 'nfs':
      return `nfs://${at()}/${path}`;
    default:
      return `${protocol}://${at()}/${path}`;
  }
}

/** QEMU opens these network URLs by itself (qemu-img, with the drivers of qemu-block-extra). */
const OFFLINE_PROTOCOLS = new Set(['nbd', 'iscsi', 'rbd', 'gluster', 'http', 'https', 'ftp', 'ftps', 'nfs', 'ssh']);

export function diskFrom(el: XmlElement): DomainDisk {
  const type = el.attrs.type ?? 'file';
  const device = el.attrs.device ?? 'disk';
  const target = child(el, 'target')?.attrs.dev ?? 'disk';
  const src = child(el, 'source');
  const format = child(el, 'driver')?.attrs.type ?? 'raw';
  const readonly = child(el, 'readonly') !== undefined;
  const source: DiskSource = { type };
  let file = '';
  let driver = type;
  if (type === 'file') file = src?.attrs.file ?? '';
  else if (type === 'block') file = src?.attrs.dev ?? '';
  else if (type === 'network') {
    driver = src?.attrs.protocol ?? 'network';
    const hosts = children(src, 'host').map((h) => ({
      name: h.attrs.name ?? '',
      ...(h.attrs.port ? { port: h.attrs.port } : {}),
      ...(h.attrs.transport ? { transport: h.attrs.transport } : {}),
      ...(h.attrs.socket ? { socket: h.attrs.socket } : {}),
    }));
    // an NBD export may have no name: the server's default export
    if (src && (src.attrs.name || hosts.length)) file = networkUrl(driver, src.attrs.name ?? '', hosts);
    // <auth> sits in <source> (libvirt >= 3.9) or, older, in <disk>
    if (child(src, 'auth') || child(el, 'auth')) {
      source.auth = true;
      source.offlineUnreadable = `its ${driver} source authenticates with a secret only libvirt holds`;
    } else if (!OFFLINE_PROTOCOLS.has(driver)) source.offlineUnreadable = `qemu-img has no ${driver} driver`;
  } else if (type === 'volume') {
    source.pool = src?.attrs.pool ?? '';
    source.volume = src?.attrs.volume ?? '';
    // shown as pool/volume until enumerate resolves it (resolveVolume)
    if (source.pool && source.volume) file = `${source.pool}/${source.volume}`;
  } else if (type === 'nvme') {
    const addr = child(src, 'address')?.attrs;
    file = addr
      ? `nvme://${addr.domain ?? ''}:${addr.bus ?? ''}:${addr.slot ?? ''}.${addr.function ?? ''}/${src?.attrs.namespace ?? '1'}`
      : '';
    source.offlineUnreadable = 'an NVMe disk driven by QEMU itself cannot be opened beside libvirt';
  } else if (type === 'dir') file = src?.attrs.dir ?? '';
  else if (type === 'vhostuser') file = src?.attrs.path ?? '';
  let disk: Disk = {
    id: target.slice(0, 128),
    node: target.slice(0, 128),
    file: file.slice(0, 4096),
    format: format.slice(0, 32),
    driver: driver.slice(0, 32),
    included: true,
  };
  const removable = device === 'cdrom' || device === 'floppy';
  if (!src || !file) disk = { ...disk, ...excluded('no-medium', `a ${device} drive with no medium`) };
  else if (device === 'cdrom' || (removable && readonly))
    disk = { ...disk, ...excluded('removable-media', `a read-only ${device} (${file}): the guest cannot write it`) };
  else if (device === 'lun')
    disk = {
      ...disk,
      ...excluded(
        'not-supported',
        `a SCSI LUN passed through (device='lun'): the guest's SCSI commands bypass QEMU's block layer, so no point-in-time view of it holds still; back it up inside the guest, or exclude it with the host node's exclude setting`,
      ),
    };
  else if (type === 'dir' || type === 'vhostuser')
    disk = {
      ...disk,
      ...excluded(
        'not-supported',
        type === 'dir'
          ? `a host directory shown as a FAT disk (type='dir'): not an image of the guest's data`
          : `a vhost-user disk: its data lives in another process (${file}), QEMU's block layer never holds it`,
      ),
    };
  return { disk, source };
}

/** `virsh vol-dumpxml`: the volume's kind (file, block, network, ...), path and format. */
export function parseVolumeXml(xml: XmlElement): { type: string; path: string; format?: string } {
  if (xml.name !== 'volume') throw new Error(`vol-dumpxml: root element is <${xml.name}>, not <volume>`);
  const target = child(xml, 'target');
  const format = child(target, 'format')?.attrs.type;
  return { type: xml.attrs.type ?? 'file', path: child(target, 'path')?.text.trim() ?? '', ...(format ? { format } : {}) };
}

/**
 * A volume disk with its volume resolved: a file or block volume is read like a file or block
 * disk; a network volume (RBD, Gluster, iSCSI direct) only through libvirt (a running domain's
 * export), never offline.
 */
export function resolvedVolume(d: DomainDisk, vol: { type: string; path: string }): DomainDisk {
  if (!d.disk.included) return d;
  const local = (vol.type === 'file' || vol.type === 'block') && vol.path.startsWith('/');
  const source: DiskSource = {
    ...d.source,
    ...(local
      ? {}
      : { offlineUnreadable: `its volume ${d.source.pool}/${d.source.volume} is a ${vol.type} volume, read only through libvirt` }),
  };
  const disk: Disk = {
    ...d.disk,
    driver: local ? vol.type : `volume-${vol.type}`.slice(0, 32),
    ...(local ? { file: vol.path.slice(0, 4096) } : {}),
  };
  return { disk, source };
}
