// The check that a message did not change, between stages, what this host produced: the fields
// that steer side effects (which files and block nodes are touched, how a VM is treated, what a
// backup is labelled, which folder it goes to). LiveBackup keeps the records; these compare.

/** What the host output for one VM at a stage (a deep copy). */
export interface VmRecord {
  stage: string;
  vm: Record<string, unknown>;
}

/** The fields of a set that name paths or decide what is done (backupId is the key the set is found by). */
const GUARDED_SET_FIELDS = ['host', 'writer', 'createdAt', 'policy', 'skipped', 'hostSkipped', 'repository'] as const;

/** The fields of a VM that decide what is touched and how the backup is labelled. */
const GUARDED_FIELDS = ['disks', 'snapshotLocation', 'method', 'consistency', 'prepare', 'snapshot', 'postSnapshot'] as const;

/** Throws, naming the first changed field, when a VM of the message differs from its record. */
export function assertVmsUnchanged(records: ReadonlyMap<string, VmRecord>, vms: readonly Record<string, unknown>[]): void {
  vms.forEach((vm, i) => {
    const rec = records.get(String(vm.id));
    if (!rec) return;
    for (const field of GUARDED_FIELDS) {
      if (!(field in rec.vm)) continue;
      const where = firstDifference(rec.vm[field], vm[field], `/vms/${i}/${field}`);
      if (where !== undefined) {
        throw new Error(
          `${where}: differs from what host produced for VM "${String(vm.id)}" at stage "${rec.stage}"; fields that steer side effects cannot be changed between stages`,
        );
      }
    }
  });
}

/**
 * Throws, naming the field, when a set-level field differs from what the host recorded; a guarded
 * field the host never produced (a repository at a stage before copy) differs too.
 */
export function assertSetUnchanged(recorded: Readonly<Record<string, unknown>>, set: Record<string, unknown>, backupId: string): void {
  for (const field of GUARDED_SET_FIELDS) {
    const where = firstDifference(recorded[field], set[field], `/${field}`);
    if (where !== undefined) {
      throw new Error(
        `${where}: differs from what host produced for backup set ${backupId}; fields that steer side effects or paths cannot be changed between stages`,
      );
    }
  }
}

/** JSON pointer of the first place where b differs from a; undefined when equal. */
export function firstDifference(a: unknown, b: unknown, at: string): string | undefined {
  if (a === b) return undefined;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null || Array.isArray(a) !== Array.isArray(b)) return at;
  if (Array.isArray(a)) {
    const bb = b as unknown[];
    for (let i = 0; i < Math.max(a.length, bb.length); i++) {
      const d = firstDifference(a[i], bb[i], `${at}/${i}`);
      if (d !== undefined) return d;
    }
    return undefined;
  }
  const ao = a as Record<string, unknown>;
  const bo = b as Record<string, unknown>;
  for (const k of new Set([...Object.keys(ao), ...Object.keys(bo)])) {
    // timings inside a stage result are informative only
    if (k === 'ms') continue;
    const d = firstDifference(ao[k], bo[k], `${at}/${k.replace(/~/g, '~0').replace(/\//g, '~1')}`);
    if (d !== undefined) return d;
  }
  return undefined;
}
