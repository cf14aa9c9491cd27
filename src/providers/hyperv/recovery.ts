// Crash recovery on the host: checkpoints an interrupted backup left behind. Run it when the host
// config node starts, before any backup: our own (vmbackup-<backupId>) are always removed; the
// Recovery-type ones only on request, since another backup product may be using one right now.
import { HyperVError } from './errors';
import { GUID, isoDate, str, toArray, type RawCheckpoint } from './parse';
import type { PowerShellRunner } from './runner';

export interface LeftoverCheckpoint {
  vmId: string;
  vmName: string;
  id: string;
  name: string;
  snapshotType: string;
  creationTime?: string;
  /** ours (named vmbackup-*) or a Hyper-V Recovery checkpoint (SnapshotType Recovery) */
  kind: 'vmbackup' | 'recovery';
}

export interface RecoveryOptions {
  /** only this VM */
  vmId?: string;
  timeoutMs?: number;
}

export function mapLeftovers(result: unknown): LeftoverCheckpoint[] {
  const r = (result ?? {}) as { Checkpoints?: unknown };
  const out: LeftoverCheckpoint[] = [];
  for (const cp of toArray<RawCheckpoint>(r.Checkpoints)) {
    const id = str(cp.Id);
    const vmId = str(cp.VMId);
    if (!id || !GUID.test(id) || !vmId || !GUID.test(vmId)) continue;
    const name = str(cp.Name) ?? '';
    const snapshotType = str(cp.SnapshotType) ?? '';
    const kind = name.startsWith('vmbackup-') ? 'vmbackup' : snapshotType.toLowerCase() === 'recovery' ? 'recovery' : undefined;
    if (!kind) continue;
    const creationTime = isoDate(cp.CreationTime);
    out.push({ vmId, vmName: str(cp.VMName) ?? vmId, id, name, snapshotType, kind, ...(creationTime ? { creationTime } : {}) });
  }
  return out;
}

/** Read-only: every vmbackup-* and Recovery checkpoint on the host (or on one VM). */
export async function findRecoveryCheckpoints(runner: PowerShellRunner, options: RecoveryOptions = {}): Promise<LeftoverCheckpoint[]> {
  if (options.vmId !== undefined && !GUID.test(options.vmId))
    throw new HyperVError('invalid-argument', `vm id "${options.vmId}" is not a GUID`);
  const result = await runner.run('find-recovery-checkpoints.ps1', options.vmId ? { VmId: options.vmId } : {}, {
    ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
  });
  return mapLeftovers(result);
}

export interface RemoveLeftoversOptions extends RecoveryOptions {
  /** also remove SnapshotType Recovery checkpoints (default false: they may belong to another product's running backup) */
  includeRecoveryType?: boolean;
  /** seconds each removal may wait for Hyper-V's merge, default 0 (the merge goes on by itself) */
  waitSeconds?: number;
  /** ids of checkpoints in use by a backup running now, never removed */
  exclude?: Iterable<string>;
}

export interface RemoveLeftoversResult {
  removed: LeftoverCheckpoint[];
  skipped: LeftoverCheckpoint[];
  errors: { checkpoint: LeftoverCheckpoint; message: string }[];
}

/** Find and Remove-VMCheckpoint every leftover; one failure does not stop the others. */
export async function removeLeftoverCheckpoints(
  runner: PowerShellRunner,
  options: RemoveLeftoversOptions = {},
): Promise<RemoveLeftoversResult> {
  const found = await findRecoveryCheckpoints(runner, options);
  const exclude = new Set([...(options.exclude ?? [])].map((s) => s.toLowerCase()));
  const result: RemoveLeftoversResult = { removed: [], skipped: [], errors: [] };
  for (const cp of found) {
    if (exclude.has(cp.id.toLowerCase()) || (cp.kind === 'recovery' && !options.includeRecoveryType)) {
      result.skipped.push(cp);
      continue;
    }
    try {
      await runner.run(
        'remove-checkpoint.ps1',
        {
          VmId: cp.vmId,
          CheckpointId: cp.id,
          WaitSeconds: options.waitSeconds ?? 0,
          ...(cp.kind === 'recovery' ? { AllowRecoveryType: true } : {}),
        },
        { ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}) },
      );
      result.removed.push(cp);
    } catch (err) {
      result.errors.push({ checkpoint: cp, message: (err as Error).message });
    }
  }
  return result;
}
