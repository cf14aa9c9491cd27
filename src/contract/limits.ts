// Limits are per VM: what one VM reports past a limit of the schema (a guest listing 300 file
// systems) is clamped with a warning, or that VM alone is marked unreachable with the reason;
// it never makes the whole host's set fail its schema.
import { schemas } from './schemas';
import type { EnumeratedVm } from './types';
import { vmError } from './validate';

const vmSchema = schemas.enumerated.properties.vms.items.properties;
const MAX_FILESYSTEMS = vmSchema.guest.properties.filesystems.maxItems;
const MAX_FS_DISKS = vmSchema.guest.properties.filesystems.items.properties.disks.maxItems;
const MAX_WARNINGS = vmSchema.warnings.maxItems;
const MAX_REASON = vmSchema.unreachable.properties.reason.maxLength;

/** A VM that is defined but cannot be backed up: enumerated with the reason, nothing else known. */
export function unreachableVm(
  id: string,
  reason: string,
  known: Partial<Pick<EnumeratedVm, 'name' | 'agent' | 'snapshotLocation'>> = {},
): EnumeratedVm {
  return {
    id,
    name: (known.name ?? id).slice(0, 256),
    state: 'unreachable',
    agent: known.agent ?? { present: false, responding: false, freezeEnabled: false },
    guest: { filesystems: [] },
    disks: [],
    snapshotLocation: known.snapshotLocation ?? { path: '/' },
    unreachable: { reason: reason.slice(0, MAX_REASON) },
  };
}

/** The VM within the schema's per-VM limits, else the VM marked unreachable with why. */
export function fitVm(vm: EnumeratedVm): EnumeratedVm {
  const warnings = [...(vm.warnings ?? [])];
  let guest = vm.guest;
  if (Array.isArray(guest?.filesystems) && guest.filesystems.length > MAX_FILESYSTEMS) {
    warnings.push(
      `the guest lists ${guest.filesystems.length} file systems; only the first ${MAX_FILESYSTEMS} are kept, so not every file system can be checked as freezable: not application-consistent`,
    );
    guest = { ...guest, filesystems: guest.filesystems.slice(0, MAX_FILESYSTEMS), filesystemsListed: guest.filesystems.length };
  }
  if (Array.isArray(guest?.filesystems) && guest.filesystems.some((f) => Array.isArray(f.disks) && f.disks.length > MAX_FS_DISKS)) {
    warnings.push(`a guest file system spans more than ${MAX_FS_DISKS} disks; the list is cut there`);
    guest = {
      ...guest,
      filesystems: guest.filesystems.map((f) =>
        Array.isArray(f.disks) && f.disks.length > MAX_FS_DISKS ? { ...f, disks: f.disks.slice(0, MAX_FS_DISKS) } : f,
      ),
    };
  }
  if (warnings.length > MAX_WARNINGS) {
    const more = warnings.length - (MAX_WARNINGS - 1);
    warnings.splice(MAX_WARNINGS - 1, warnings.length, `${more} more warning(s) not listed`);
  }
  const fitted: EnumeratedVm = { ...vm, guest, ...(warnings.length ? { warnings } : {}) };
  const error = vmError('enumerated', fitted);
  if (error === null) return fitted;
  // Past a limit that cannot be cut without losing what the backup needs (a disk, the VM's own
  // record): this VM alone is refused, with the reason; the others go on.
  const id = typeof vm.id === 'string' ? vm.id : String(vm.id);
  return unreachableVm(
    id,
    `what the hypervisor reports for this VM does not fit the backup set: ${error}`,
    typeof vm.name === 'string' ? { name: vm.name } : {},
  );
}
