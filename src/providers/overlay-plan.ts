// Overlay names are decided before the snapshot, so that the journal can name them even if
// the process dies between creating them and hearing back.
import type { ClassifiedVm, Overlay } from '../contract/types';

export function plannedOverlays(vm: ClassifiedVm, backupId: string): Overlay[] {
  return vm.disks.filter((d) => d.included).map((d) => ({
    disk: d.id,
    base: d.file,
    baseFormat: d.format,
    overlay: overlayPathFor(d.file, vm.snapshotLocation.path, backupId),
    overlayNode: overlayNodeName(d.id, backupId),
    baseNode: d.node,
  }));
}

export const OVERLAY_FILE = /\.vmbackup-[0-9]{8}T[0-9]{6}Z-[a-z0-9]{6}\.qcow2$/;

export function overlayPathFor(baseFile: string, snapshotDir: string, backupId: string): string {
  const name = baseFile.split('/').pop() || 'disk';
  return `${snapshotDir.replace(/\/+$/, '')}/${name}.vmbackup-${backupId}.qcow2`;
}

/** QMP node names: a letter first, then letters, digits, - _ . ; at most 31 characters. */
export function overlayNodeName(diskId: string, backupId: string): string {
  return `vmb-${backupId.slice(-6)}-${diskId.replace(/[^A-Za-z0-9_.-]/g, '_')}`.slice(0, 31);
}
