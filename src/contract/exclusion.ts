// Why a disk is left out of a backup, and who decided it. Every disk the hypervisor can read is
// backed up; a disk is left out only where the host's own configuration or the user says so, or
// where the hypervisor really cannot give it to a host-side backup (Hyper-V: a pass-through disk
// is invisible to its VSS writer). Each reason has exactly one decider, fixed here, so the
// summary can tell a deliberate exclusion (named, and still ok) from a disk that should have been
// backed up and was not (never ok).

/** Who left a disk out. */
export const EXCLUDED_BY = [
  // the host's own configuration: Proxmox backup=0, a CD/DVD drive (read-only removable medium), an empty drive
  'host',
  // the host node's exclusion setting (`exclude`: VM and disk id patterns)
  'user',
  // the hypervisor cannot hand the disk to a host-side backup (Hyper-V pass-through disks)
  'hypervisor',
  // this product cannot read the disk (yet): a gap of ours, reported, never ok
  'product',
] as const;
export type ExcludedBy = (typeof EXCLUDED_BY)[number];

/** Each reason and its one decider. */
export const EXCLUSIONS = {
  /** Proxmox: `backup=0` on the disk in the VM's configuration */
  'host-config': 'host',
  /** the host node's `exclude` setting names the VM and disk */
  'user-setting': 'user',
  /** a read-only removable medium (CD/DVD image, floppy): the guest cannot write it, it is not the VM's data */
  'removable-media': 'host',
  /** a removable drive with nothing in it: nothing to copy */
  'no-medium': 'host',
  /** Hyper-V: a pass-through (physical) disk, invisible to Hyper-V's VSS writer */
  'hyperv-pass-through': 'hypervisor',
  /** Hyper-V: a shared VHDX (persistent reservations), left out of the snapshot like a pass-through disk */
  'hyperv-shared-vhdx': 'hypervisor',
  /** a disk this product cannot copy (its detail says which kind) */
  'not-supported': 'product',
} as const satisfies Record<string, ExcludedBy>;
export type ExcludedReason = keyof typeof EXCLUSIONS;
export const EXCLUDED_REASONS = Object.keys(EXCLUSIONS) as ExcludedReason[];

/** The fields that mark a disk as left out: the reason, its decider, and a text a user can act on. */
export function excluded(
  reason: ExcludedReason,
  detail: string,
): { included: false; excludedReason: ExcludedReason; excludedBy: ExcludedBy; excludedDetail: string } {
  return { included: false, excludedReason: reason, excludedBy: EXCLUSIONS[reason], excludedDetail: detail.slice(0, 1024) };
}

/** True when the exclusion was chosen (by the host's configuration or the user), so a summary naming it may still be ok. */
export function isDeliberate(by: ExcludedBy | undefined): boolean {
  return by === 'host' || by === 'user';
}
