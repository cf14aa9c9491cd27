// The user's own exclusions: the host node's `exclude` setting names disks by VM and disk id
// patterns (VM/DISK, globs with * and ?), checked at deploy by src/host/settings.ts. A disk named
// there is left out with excludedBy 'user', whatever else would have held for it: so a disk the
// hypervisor cannot hand over (a Hyper-V pass-through disk) can be marked as a deliberate choice.
import { excluded } from '../contract/exclusion';
import type { EnumeratedVm } from '../contract/types';

/** The patterns of a checked setting (commas, spaces or new lines between them). */
export function splitPatterns(text: string): string[] {
  return text.split(/[\s,]+/).filter((p) => p !== '');
}

function globRegExp(glob: string): RegExp {
  const body = glob
    .replace(/[.+^${}()|[\]\\]/g, '\\$&')
    .replace(/\*/g, '.*')
    .replace(/\?/g, '.');
  return new RegExp(`^${body}$`);
}

export interface DiskPattern {
  text: string;
  vm: RegExp;
  disk: RegExp;
}

export function compilePatterns(patterns: readonly string[]): DiskPattern[] {
  return patterns.map((text) => {
    const slash = text.indexOf('/');
    if (slash <= 0) throw new Error(`exclude: pattern "${text.slice(0, 80)}" must be VM/DISK`);
    return { text, vm: globRegExp(text.slice(0, slash)), disk: globRegExp(text.slice(slash + 1)) };
  });
}

/**
 * The disk ids a pattern may name: the id as the set shows it and, for QEMU's `-drive` naming
 * (`drive-scsi1`, what Proxmox's running VMs show), the id without `drive-`, which is also the
 * disk's key in a Proxmox configuration (what its stopped VMs show).
 */
function names(diskId: string): string[] {
  return diskId.startsWith('drive-') ? [diskId, diskId.slice('drive-'.length)] : [diskId];
}

/** The VM with the disks the patterns name left out (excludedBy 'user'); the VM itself when none match. */
export function applyExclusions(vm: EnumeratedVm, patterns: readonly DiskPattern[]): EnumeratedVm {
  if (patterns.length === 0 || !Array.isArray(vm.disks)) return vm;
  let changed = false;
  const disks = vm.disks.map((d) => {
    const hit = patterns.find((p) => p.vm.test(vm.id) && names(d.id).some((n) => p.disk.test(n)));
    if (!hit) return d;
    changed = true;
    const before = d.included ? '' : ` (also: ${d.excludedDetail ?? d.excludedReason ?? 'excluded'})`;
    const { tracking: _tracking, ...rest } = d;
    return { ...rest, ...excluded('user-setting', `named by the host's exclude setting (${hit.text})${before}`) };
  });
  return changed ? { ...vm, disks } : vm;
}
