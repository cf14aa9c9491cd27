// The seeds' conditions for the online ("child VM snapshot") method, one pure function each.
// Every rule returns a named reason so the user sees why a VM got the method it got.
import type { EnumeratedVm, Reason, ReasonRule } from '../contract/types';

export type Rule = (vm: EnumeratedVm) => Reason;

function reason(rule: ReasonRule, ok: boolean, detail: string): Reason {
  return { rule, ok, detail };
}

/** "Backup integration service installed and running": the guest agent answers and can freeze. */
export const integrationService: Rule = (vm) => {
  const a = vm.agent;
  if (!a.present) return reason('integration-service', false, 'no guest agent channel on this VM');
  if (!a.responding) return reason('integration-service', false, `guest agent does not answer${a.error ? `: ${a.error}` : ''}`);
  if (!a.freezeEnabled) return reason('integration-service', false, 'guest agent answers but guest-fsfreeze-freeze is disabled');
  return reason('integration-service', true, `guest agent ${a.version ?? ''} answers, freeze enabled`.replace('  ', ' '));
};

/** "The child VM must be in the running state." */
export const vmRunning: Rule = (vm) =>
  vm.state === 'running' ? reason('vm-running', true, 'VM is running') : reason('vm-running', false, `VM is ${vm.state}, not running`);

const GiB = 1024 ** 3;

/**
 * Free space the snapshot data of a VM needs where it goes (QEMU: its fleecing images). A fleecing
 * image holds one copy of each cluster the guest overwrites while the copy runs, so the worst case
 * is the disks' whole virtual size; a nightly copy window rewrites a fraction of a disk. The rule:
 * 10% of the disks' virtual size, at least 1 GiB, never more than the whole size. If the guest
 * overwrites more than what is free during the copy, the view breaks (that VM's backup fails, the
 * guest's writes go on: on-cbw-error=break-snapshot); it never harms the guest.
 */
export function fleeceReserve(virtualSizes: readonly number[]): number {
  const total = virtualSizes.reduce((n, s) => n + s, 0);
  return Math.min(total, Math.max(Math.ceil(total / 10), GiB));
}

const size = (n: number) => (n >= GiB ? `${(n / GiB).toFixed(1)} GiB` : `${Math.round(n / 1024 ** 2)} MiB`);

/**
 * "Snapshot file location on the same host volume as the virtual disks": the place the host keeps a
 * VM's snapshot data must be there and hold it. Beside the disks it is their volume (Hyper-V, a
 * QEMU image file); a directory set aside for it (QEMU's fleece dir, for disks that are block
 * devices or network volumes, or when the user sets one) is fine on any volume. Either way, where
 * the free space is known, it must hold what fleeceReserve asks.
 */
export const snapshotLocationSameVolume: Rule = (vm) => {
  const where = vm.snapshotLocation;
  const disks = vm.disks.filter((d) => d.included);
  if (where.volumeId === undefined) return reason('snapshot-location-same-volume', false, `volume of ${where.path} unknown`);
  const need = fleeceReserve(disks.map((d) => d.virtualSize ?? 0));
  const free = where.freeBytes;
  if (free !== undefined && free < need) {
    return reason(
      'snapshot-location-same-volume',
      false,
      `snapshot location ${where.path} has ${size(free)} free, less than the ${size(need)} the view of this VM needs (10% of its disks, at least 1 GiB)`,
    );
  }
  const room = free !== undefined ? `, ${size(free)} free` : '';
  if (where.dedicated)
    return reason('snapshot-location-same-volume', true, `snapshot data goes to ${where.path} (set aside for it${room})`);
  const other = disks.filter((d) => d.volumeId !== where.volumeId);
  if (other.length > 0) {
    return reason(
      'snapshot-location-same-volume',
      false,
      `snapshot location ${where.path} is not on the volume of ${other.map((d) => d.file || d.id).join(', ')}`,
    );
  }
  return reason('snapshot-location-same-volume', true, `snapshot location ${where.path} is on the disks' volume${room}`);
};

/** "All volumes are basic disks": Linux LVM, md RAID and device-mapper volumes are the dynamic-disk analogue. */
export const basicDisks: Rule = (vm) => {
  if (vm.guest.filesystemsVisible === false && vm.agent.responding) {
    return reason('basic-disks', true, 'guest volumes not visible to the host; the guest VSS refuses volumes it cannot snapshot');
  }
  const dynamic = vm.guest.filesystems.filter((fs) => fs.dynamic === true || isDynamicDevice(fs.device));
  return dynamic.length === 0
    ? reason('basic-disks', true, `${vm.guest.filesystems.length} guest volume(s), none on a dynamic disk`)
    : reason('basic-disks', false, `guest volume(s) on dynamic disks: ${dynamic.map((fs) => fs.mountpoint).join(', ')}`);
};

export function isDynamicDevice(device: string | undefined): boolean {
  return device !== undefined && /^(dm-\d+|md\d+|mapper\/)/.test(device.replace(/^\/dev\//, ''));
}

/** File systems whose freeze (FIFREEZE / VSS) leaves a clean, auto-recoverable image. */
export const FREEZABLE_FILESYSTEMS: ReadonlySet<string> = new Set([
  'ext3',
  'ext4',
  'xfs',
  'btrfs',
  'f2fs',
  'jfs',
  'reiserfs',
  'nilfs2',
  'gfs2',
  'ntfs',
  'refs',
]);

/** "All disks use a file system that supports snapshots." */
export const freezableFilesystems: Rule = (vm) => {
  const fss = vm.guest.filesystems;
  if (vm.guest.filesystemsListed !== undefined) {
    // the list was cut at the schema's limit: the ones not kept cannot be vouched for
    return reason(
      'freezable-filesystems',
      false,
      `the guest lists ${vm.guest.filesystemsListed} file systems, more than the ${fss.length} that can be checked`,
    );
  }
  if (vm.guest.filesystemsVisible === false && vm.agent.responding) {
    // Hyper-V: the host cannot list guest volumes, but a production checkpoint taken
    // ProductionOnly fails outright when any guest volume cannot be quiesced, so the
    // consistency claim still cannot be wrong.
    return reason(
      'freezable-filesystems',
      true,
      'guest volumes not visible to the host; the guest VSS must quiesce every volume or the snapshot fails',
    );
  }
  if (fss.length === 0) return reason('freezable-filesystems', false, 'guest reported no file systems on its disks');
  const bad = fss.filter((fs) => !FREEZABLE_FILESYSTEMS.has(fs.type.toLowerCase()));
  return bad.length === 0
    ? reason('freezable-filesystems', true, `all guest file systems freezable (${[...new Set(fss.map((f) => f.type))].join(', ')})`)
    : reason('freezable-filesystems', false, `not freezable: ${bad.map((fs) => `${fs.mountpoint} (${fs.type})`).join(', ')}`);
};

/** Guests the seeds name as unable to take part (Windows 2000, NT 4, XP). */
const UNSUPPORTED_OS = [/windows\s*2000/i, /windows\s*nt\s*4/i, /windows\s*xp/i];

/** "The guest OS is supported." */
export const supportedGuestOs: Rule = (vm) => {
  const os = vm.guest.os;
  if (!os) return reason('supported-guest-os', false, 'guest OS unknown (agent gave no OS information)');
  const label = [os.name, os.version].filter(Boolean).join(' ') || os.id || os.kernel || 'unknown';
  return UNSUPPORTED_OS.some((re) => re.test(`${os.name ?? ''} ${os.version ?? ''}`))
    ? reason('supported-guest-os', false, `${label} cannot quiesce for a host backup`)
    : reason('supported-guest-os', true, label);
};

/** Order matters only for reading: the cheapest and most telling first. */
export const ONLINE_RULES: readonly Rule[] = [
  integrationService,
  vmRunning,
  snapshotLocationSameVolume,
  basicDisks,
  freezableFilesystems,
  supportedGuestOs,
];
