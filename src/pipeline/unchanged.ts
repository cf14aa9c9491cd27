// The check that a message did not change, between stages, what this host produced: the fields
// that steer side effects (which files and block nodes are touched, how a VM is treated, what a
// backup is labelled, which folder it goes to). Each live set keeps an OutputRecord of what its
// host output; the functions below compare a message with it.

/** What the host output for one VM at a stage (a deep copy). */
export interface VmRecord {
  stage: string;
  vm: Record<string, unknown>;
}

/** What this host output for one set: its VMs at the last stage and its set-level fields (deep copies). */
export class OutputRecord {
  private readonly vms = new Map<string, VmRecord>();
  private readonly fields: Record<string, unknown> = {};
  /** the last stage the set finished (its message's stage) */
  stage = 'enumerated';

  constructor(readonly backupId: string) {}

  /** The VMs as this host output them at `stage`. */
  recordVms(stage: string, vms: readonly { id: string }[]): void {
    this.stage = stage;
    this.vms.clear();
    for (const vm of vms) this.vms.set(vm.id, { stage, vm: JSON.parse(JSON.stringify(vm)) as Record<string, unknown> });
  }

  /** Set-level fields as this host produced them; later stages check them. */
  recordSet(fields: Record<string, unknown>): void {
    for (const [k, v] of Object.entries(fields)) this.fields[k] = v === undefined ? undefined : JSON.parse(JSON.stringify(v));
  }

  /**
   * The fields that steer side effects (which files and block nodes are touched, how the VM is
   * treated, what a backup is labelled) must be exactly what this host produced: a message edited
   * between stages (function node, replay of an old message) is refused, naming the field.
   */
  checkVms(vms: readonly Record<string, unknown>[]): void {
    assertVmsUnchanged(this.vms, vms);
  }

  /**
   * Every set-level field that steers a side effect or a path (the host's name names the
   * repository folder, the policy decides what is refused) must be what this host produced; a
   * guarded field the host never produced (a repository at a stage before copy) is refused too.
   */
  checkSet(set: Record<string, unknown>): void {
    assertSetUnchanged(this.fields, set, this.backupId);
  }

  /** The set as this host last output it (for the summary of an ending). */
  lastOutput(): { backupId: string; stage: string; vms: Record<string, unknown>[] } & Record<string, unknown> {
    return { backupId: this.backupId, stage: this.stage, ...this.fields, vms: [...this.vms.values()].map((r) => r.vm) };
  }
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
