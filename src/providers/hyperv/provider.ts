// The Hyper-V HostProvider: every side effect is one shipped PowerShell script run by a
// PowerShellRunner (local powershell.exe, or powershell.exe over SSH). On Windows Server 2016+
// the view is a WMI recovery snapshot (snapshot.ps1) and change tracking is RCT reference points
// (reference-point.ps1, rct-changes.ps1); on 2012 R2 a Standard checkpoint (checkpoint.ps1).
// Disks are read out of the snapshot's read-only parents by the VHDX reader and written here as
// qcow2 links (export.ts). See docs/hyperv.md.
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { ChainPlan, ClassifiedVm, EnumeratedVm, PointInTimeView } from '../../contract/types';
import type { ExportedFile, ExportOptions, HostProvider, Progress, ViewOptions } from '../provider';
import { HyperVError } from './errors';
import { exportFromSnapshot, type SnapshotFacts } from './export';
import { mapHost, MIN_VERSION_APP_AND_RCT, type HostFacts, type RctRecord } from './rct';
import { BACKUP_ID, GUID, mapEnumeration, mapState, overlaysFromCheckpoint, snapshotNamesIn, str, toArray, type Overlay } from './parse';
import { embedVmFiles } from './vm-files';
import { removeLeftoverCheckpoints, type RemoveLeftoversOptions, type RemoveLeftoversResult } from './recovery';
import type { PowerShellRunner, ScriptName, ScriptParams } from './runner';
import { RECORD_NAME } from './values';

export interface HyperVProviderSettings {
  /** per script run, default 10 minutes */
  timeoutMs: number;
}

/** States a VM passes through on its own; resume waits for them to settle. */
const TRANSITIONAL = new Set(['starting', 'stopping', 'saving', 'pausing', 'resuming', 'fast-saving', 'reset']);

export class HyperVProvider implements HostProvider {
  readonly kind = 'hyperv' as const;
  readonly writerName = 'Hyper-V (WMI recovery snapshots and RCT, PowerShell)';
  /** Application-consistent snapshots quiesce the guest (VSS / fsfreeze) themselves. */
  readonly quiesce = 'view' as const;

  /** what enumerate said of the host (absent before the first enumerate: Windows Server 2016+ assumed) */
  private host: HostFacts | undefined;
  /** per VM: our RCT records (reference points) as enumerate found them */
  private readonly rct = new Map<string, RctRecord[]>();
  /** per VM: the snapshot this process made and what it said (files, stamps, node) */
  private readonly snapshots = new Map<string, SnapshotFacts>();
  /** per VM: its configuration version as enumerate read it */
  private readonly versions = new Map<string, number>();

  /** bases handed out by snapshot(): exportDisk copies nothing else */
  private readonly bases = new Map<string, { format: string; virtualSize?: number }>();
  /** virtual sizes seen by enumerate, by lower-cased path */
  private readonly sizes = new Map<string, number>();
  /** checkpoint name asked for per VM, until merged: lets merge clean up after a failed snapshot */
  private readonly pendingNames = new Map<string, string>();

  constructor(
    readonly runner: PowerShellRunner,
    private readonly settings: HyperVProviderSettings,
  ) {}

  private run(script: ScriptName, params: ScriptParams): Promise<unknown> {
    return this.runner.run(script, params, { timeoutMs: this.settings.timeoutMs });
  }

  /** Seconds remove-checkpoint.ps1 may wait for the merge, leaving it time to answer before its timeout. */
  private get waitSeconds(): number {
    return Math.max(0, Math.floor((this.settings.timeoutMs - 30_000) / 1000));
  }

  /** checkpoint.ps1 waits for an earlier merge at most half its time: the checkpoint needs the rest. */
  private get checkpointWaitSeconds(): number {
    return Math.max(0, Math.floor(this.settings.timeoutMs / 2000));
  }

  async enumerate(): Promise<EnumeratedVm[]> {
    const result = await this.run('enumerate.ps1', {});
    const host = result && typeof result === 'object' && 'Host' in result ? mapHost(result) : undefined;
    if (host && 'RecoverySnapshots' in ((result as { Host?: object }).Host ?? {})) this.host = host;
    if (this.host?.oemCodePage !== undefined) this.runner.oemCodePage = this.host.oemCodePage;
    const vms = mapEnumeration(result, (id, e) => {
      this.rct.set(id.toLowerCase(), e.rct);
      if (e.configurationVersion !== undefined) this.versions.set(id.toLowerCase(), e.configurationVersion);
    });
    for (const vm of vms) for (const d of vm.disks) if (d.virtualSize !== undefined) this.sizes.set(d.file.toLowerCase(), d.virtualSize);
    return vms;
  }

  async freeze(_vm: ClassifiedVm, _timeoutMs: number): Promise<{ frozenFilesystems: number }> {
    return { frozenFilesystems: 0 };
  }

  async thaw(_vmId: string, _timeoutMs: number): Promise<number> {
    return 0;
  }

  async runState(vmId: string): Promise<string> {
    const r = (await this.run('get-state.ps1', { VmId: checkVmId(vmId) })) as { State?: unknown } | null;
    return mapState(r?.State);
  }

  /**
   * Save-VM, then the saved state itself copied into `file`: the VM's .vmrs (memory and device
   * state, configuration version 6.2+), read from the host like a disk. The VM stays saved until
   * resume. A configuration 5.0 VM (its saved state is .bin and .vsv files) is refused before
   * anything runs when enumerate said its version; any other saved state that is not one .vmrs
   * after the save (the set's undo then starts the VM again).
   */
  async saveState(vm: ClassifiedVm, file: string): Promise<{ bytes: number }> {
    const version = this.versions.get(vm.id.toLowerCase());
    if (version !== undefined && version < MIN_VERSION_APP_AND_RCT) {
      throw new HyperVError(
        'unsupported',
        `VM ${vm.name}: configuration version 5.0 keeps its saved state in .bin/.vsv files: the saved-state method cannot keep its memory (Update-VMVersion, or choose the checkpoint method)`,
      );
    }
    const r = (await this.run('save-vm.ps1', { VmId: checkVmId(vm.id) })) as {
      StateBefore?: unknown;
      Saved?: unknown;
      State?: { State?: unknown };
      Files?: unknown;
    } | null;
    // no pausedAt: Hyper-V does not say when the vCPUs stopped; the pipeline counts from before the call
    const files = toArray<{ Path?: unknown; Length?: unknown }>(r?.Files)
      .map((f) => str(f.Path) ?? '')
      .filter((f) => f);
    const vmrs = files.filter((f) => /\.vmrs$/i.test(f));
    if (vmrs.length !== 1) {
      throw new HyperVError(
        'unsupported',
        `VM ${vm.name}: its saved state is ${files.length ? files.join(', ') : 'not in a file this provider found'}, not one .vmrs (configuration version 5.0 keeps .bin/.vsv): the saved-state method cannot keep its memory; it stays saved until resumed`,
      );
    }
    await fs.mkdir(path.dirname(file), { recursive: true });
    const tmp = `${file}.part-${randomBytes(4).toString('hex')}`;
    try {
      const { bytes } = await this.runner.fetchFile(vmrs[0]!, tmp);
      await fs.rename(tmp, file);
      return { bytes };
    } catch (err) {
      await fs.rm(tmp, { force: true }).catch(() => undefined);
      throw err;
    }
  }

  /** Back to `previousState`: running -> Start-VM (or Resume-VM when paused); paused -> Suspend-VM. */
  async resume(vmId: string, previousState: string): Promise<void> {
    checkVmId(vmId);
    const target = previousState.toLowerCase();
    if (target !== 'running' && target !== 'paused') return;
    let state = await this.runState(vmId);
    for (let i = 0; i < 30 && TRANSITIONAL.has(state); i++) {
      await new Promise((r) => setTimeout(r, 1000));
      state = await this.runState(vmId);
    }
    if (state === target) return;
    if (state === 'paused' && target === 'running') {
      state = await this.stateAfter('resume-vm.ps1', vmId);
    } else if (state === 'off' || state === 'saved' || state === 'fast-saved') {
      state = await this.stateAfter('start-vm.ps1', vmId);
    }
    if (target === 'paused' && state === 'running') state = await this.stateAfter('suspend-vm.ps1', vmId);
    if (state !== target) throw new HyperVError('inconsistent', `VM ${vmId} is ${state}, could not return it to ${target}`);
  }

  private async stateAfter(script: ScriptName, vmId: string): Promise<string> {
    const r = (await this.run(script, { VmId: vmId })) as { State?: { State?: unknown } } | null;
    return mapState(r?.State?.State);
  }

  // ---- the point-in-time view: a recovery snapshot (2016+) or checkpoint (2012 R2) named vmbackup-<backupId> ----

  planView(vm: ClassifiedVm, backupId: string): PointInTimeView {
    if (!BACKUP_ID.test(backupId)) throw new HyperVError('invalid-argument', `backupId "${backupId}" is not a backup id`);
    const disks = vm.disks
      .filter((d) => d.included)
      .map((d) => ({ disk: d.id, artifact: `disk-${d.id.replace(/[^A-Za-z0-9._-]/g, '_')}.qcow2`, format: 'qcow2' }));
    return { disks, ref: { checkpointName: `vmbackup-${backupId}`, backupId, vmId: vm.id } };
  }

  async armView(): Promise<void> {
    // nothing can be made ahead of a snapshot
  }

  async makeView(vm: ClassifiedVm, view: PointInTimeView, opts?: ViewOptions): Promise<{ view: PointInTimeView }> {
    const overlays = await this.snapshot(vm, String(view.ref.backupId), opts?.chain);
    const facts = this.snapshots.get(vm.id.toLowerCase());
    return {
      view: {
        ...view,
        ref: {
          ...view.ref,
          checkpointId: overlays[0]?.overlayNode,
          overlays,
          ...(facts?.recovery ? { recovery: true } : {}),
          ...(facts?.record ? { record: facts.record } : {}),
          ...(facts?.host ? { host: facts.host } : {}),
        },
      },
    };
  }

  /**
   * Take the view away. A recovery snapshot whose backup starts change tracking becomes its
   * reference point (ConvertToReferencePoint: Hyper-V merges the .avhdx and deletes the snapshot);
   * any other is removed. Safe to repeat; throws while the VM is on another cluster node.
   */
  async releaseView(vmId: string, view: PointInTimeView): Promise<void> {
    const overlays = Array.isArray(view.ref.overlays) ? (view.ref.overlays as Overlay[]) : [];
    const name = String(view.ref.checkpointName ?? '');
    const record = typeof view.ref.record === 'string' ? view.ref.record : undefined;
    const snapshotId = typeof view.ref.checkpointId === 'string' && GUID.test(view.ref.checkpointId) ? view.ref.checkpointId : undefined;
    if (record && snapshotId && view.ref.recovery === true) {
      checkVmId(vmId);
      await this.run('reference-point.ps1', {
        Action: 'convert',
        VmId: vmId,
        SnapshotId: snapshotId,
        RecordName: record,
        JobSeconds: this.jobSeconds,
      });
      this.snapshots.delete(vmId.toLowerCase());
      for (const o of overlays) this.bases.delete(o.base.toLowerCase());
      return;
    }
    await this.merge(
      vmId,
      overlays.length ? overlays : [{ disk: '', base: '', baseFormat: '', overlay: name, overlayNode: name }],
      view.ref.recovery === true,
    );
  }

  /** RCT: our records are reference points, made from the snapshot at releaseView; remove destroys them by name. */
  readonly tracking = {
    start: async (): Promise<void> => {
      // nothing ahead: the reference point is the backup snapshot itself, converted once copied
    },
    remove: async (vmId: string, disks: readonly { disk: string; name: string }[]): Promise<void> => {
      const names = [...new Set(disks.map((d) => d.name))].filter((n) => RECORD_NAME.test(n));
      if (names.length === 0 || this.host?.recoverySnapshots === false) return;
      await this.run('reference-point.ps1', {
        Action: 'destroy',
        VmId: checkVmId(vmId),
        RecordNames: names.join('|'),
        JobSeconds: this.jobSeconds,
      });
      const kept = (this.rct.get(vmId.toLowerCase()) ?? []).filter((r) => !names.includes(r.name));
      this.rct.set(vmId.toLowerCase(), kept);
    },
  };

  /** At start: our vmbackup-* checkpoints a crash left (no journal may name them any more). */
  async removeLeftovers(): Promise<string[]> {
    const r = await this.removeLeftoverCheckpoints();
    return [
      ...r.removed.map((c) => `removed leftover checkpoint ${c.name} of VM ${c.vmName}`),
      ...r.errors.map((e) => `FAILED to remove leftover checkpoint ${e.checkpoint.name} of VM ${e.checkpoint.vmName}: ${e.message}`),
    ];
  }

  /** Seconds a WMI job (CreateSnapshot, ConvertToReferencePoint, ...) may run inside one script run. */
  private get jobSeconds(): number {
    return Math.max(1, Math.floor((this.settings.timeoutMs - 30_000) / 1000));
  }

  /**
   * The backup snapshot. Windows Server 2016+: a WMI recovery snapshot, ConsistencyLevel
   * application for child-vm-snapshot (the guest quiesces or it fails), crash for every other
   * method (no memory written, no VM setting changed). 2012 R2: a Standard checkpoint.
   */
  async snapshot(vm: ClassifiedVm, backupId: string, chain?: readonly ChainPlan[]): Promise<Overlay[]> {
    const vmId = checkVmId(vm.id);
    if (!BACKUP_ID.test(backupId)) throw new HyperVError('invalid-argument', `backupId "${backupId}" is not a backup id`);
    const included = vm.disks.filter((d) => d.included);
    if (included.length === 0) return [];
    for (const d of included) {
      if (/\.avhdx?$/i.test(d.file)) {
        throw new HyperVError(
          'unsupported',
          `VM ${vm.name}: disk ${d.id} is the differencing disk ${d.file} (the VM has checkpoints); its parent alone is not a whole disk. Merge them (Remove-VMCheckpoint) before backing it up`,
        );
      }
      if (d.format === 'vhds' || /\.vhds$/i.test(d.file)) {
        throw new HyperVError(
          'unsupported',
          `VM ${vm.name}: disk ${d.id} is a VHD Set (${d.file}); shared disks are not backed up by this provider`,
        );
      }
    }
    const name = `vmbackup-${backupId}`;
    const recovery = this.host?.recoverySnapshots !== false;
    if (!recovery && vm.method === 'child-vm-snapshot') {
      throw new HyperVError(
        'unsupported',
        `VM ${vm.name}: Windows Server 2012 R2 has no application-consistent backup snapshot; the classification must choose another method`,
      );
    }
    this.pendingNames.set(vmId, name);
    const result = recovery
      ? await this.run('snapshot.ps1', {
          VmId: vmId,
          SnapshotName: name,
          ConsistencyLevel: vm.method === 'child-vm-snapshot' ? 'Application' : 'Crash',
          WaitSeconds: this.checkpointWaitSeconds,
          JobSeconds: this.jobSeconds,
        })
      : await this.run('checkpoint.ps1', {
          VmId: vmId,
          SnapshotName: name,
          CheckpointType: 'Standard',
          WaitSeconds: this.checkpointWaitSeconds,
        });
    let mapped: { overlays: Overlay[]; checkpointId: string };
    try {
      mapped = overlaysFromCheckpoint(
        included.map((d) => d.id),
        result,
      );
      const r = result as {
        CheckpointTypeRestored?: unknown;
        RestoreError?: unknown;
        PreviousCheckpointType?: unknown;
        SnapshotType?: unknown;
      };
      if (r.CheckpointTypeRestored === false) {
        throw new HyperVError(
          'inconsistent',
          `VM ${vm.name}: could not restore its CheckpointType to ${str(r.PreviousCheckpointType) ?? '?'} after the backup checkpoint (${str(r.RestoreError) ?? 'unknown error'}). Set it back with Set-VM -CheckpointType`,
        );
      }
      if (recovery && str(r.SnapshotType) !== 'Microsoft:Hyper-V:Snapshot:Recovery')
        throw new HyperVError(
          'inconsistent',
          `VM ${vm.name}: the backup snapshot is of type ${str(r.SnapshotType) ?? '?'}, not a recovery snapshot`,
        );
    } catch (err) {
      // all or nothing: a snapshot we cannot use is removed at once, by its Id when it has one
      // (a recovery snapshot Hyper-V would not let us rename keeps its own name)
      const made = str((result as { Checkpoint?: { Id?: unknown } } | null)?.Checkpoint?.Id);
      const which: ScriptParams =
        made && GUID.test(made) ? { CheckpointId: made, ...(recovery ? { AllowRecoveryType: true } : {}) } : { SnapshotName: name };
      await this.run('remove-checkpoint.ps1', { VmId: vmId, ...which, WaitSeconds: 0 }).catch(() => undefined);
      this.pendingNames.delete(vmId);
      throw err;
    }
    const tracked = recovery && included.every((d) => d.tracking !== undefined);
    const record = tracked ? chain?.find((c) => c.record !== undefined)?.record : undefined;
    this.snapshots.set(vmId.toLowerCase(), snapshotFacts(result, mapped.checkpointId, recovery, record));
    for (const o of mapped.overlays) {
      const size = this.sizes.get(o.base.toLowerCase()) ?? vm.disks.find((d) => d.id === o.disk)?.virtualSize;
      this.bases.set(o.base.toLowerCase(), { format: o.baseFormat, ...(size !== undefined ? { virtualSize: size } : {}) });
    }
    return mapped.overlays;
  }

  /**
   * Remove the backup snapshot by Id: Hyper-V merges the .avhdx into its parent and deletes it.
   * Safe when already removed; throws when the VM moved to another cluster node (the snapshot
   * went with it, unmerged). Overlays that were only planned (the snapshot failed or the process
   * died) name it by its vmbackup-<backupId> name instead.
   */
  async merge(vmId: string, overlays: Overlay[], recovery = false): Promise<void> {
    checkVmId(vmId);
    const ids = [...new Set(overlays.map((o) => o.overlayNode).filter((n) => GUID.test(n)))];
    const names = new Set(snapshotNamesIn(overlays));
    const pending = this.pendingNames.get(vmId);
    if (pending) names.add(pending);
    for (const id of ids) {
      // our own recovery snapshot by its exact Id, even if Hyper-V kept its own name for it
      await this.run('remove-checkpoint.ps1', {
        VmId: vmId,
        CheckpointId: id,
        WaitSeconds: this.waitSeconds,
        ...(recovery ? { AllowRecoveryType: true } : {}),
      });
    }
    if (ids.length === 0) {
      for (const name of names) await this.run('remove-checkpoint.ps1', { VmId: vmId, SnapshotName: name, WaitSeconds: this.waitSeconds });
    }
    this.pendingNames.delete(vmId);
    this.snapshots.delete(vmId.toLowerCase());
    for (const o of overlays) this.bases.delete(o.base.toLowerCase());
  }

  /** The VM's settings, and (while this process holds its backup snapshot) the snapshot's own configuration and runtime-state files. */
  async describe(vmId: string): Promise<Record<string, unknown>> {
    const r = await this.run('describe.ps1', { VmId: checkVmId(vmId) });
    if (!r || typeof r !== 'object' || Array.isArray(r)) throw new HyperVError('protocol', 'describe.ps1: the result is not an object');
    const facts = this.snapshots.get(vmId.toLowerCase());
    const vmFiles = facts?.configFiles.length ? await embedVmFiles(this.runner, facts.configFiles) : undefined;
    return {
      format: 'vm-backup-hyperv-definition@1',
      provider: 'hyperv',
      vmId,
      ...(r as Record<string, unknown>),
      ...(facts ? { snapshot: { id: facts.snapshotId, type: facts.recovery ? 'recovery' : 'standard', host: facts.host } } : {}),
      ...(vmFiles ? { vmFiles } : {}),
    };
  }

  /**
   * One disk of the view as a qcow2 at `dest`: a full (the allocated blocks of the snapshot's
   * read-only parent) or an incremental (the ranges RCT names since the parent backup's reference
   * point, over its relative backing file). Re-checked at its end: see export.ts.
   */
  async exportDisk(
    view: PointInTimeView,
    disk: string,
    dest: string,
    onProgress?: (p: Progress) => void,
    options: ExportOptions = {},
  ): Promise<ExportedFile> {
    const overlay = (Array.isArray(view.ref.overlays) ? (view.ref.overlays as Overlay[]) : []).find((o) => o.disk === disk);
    if (!overlay) throw new HyperVError('invalid-argument', `disk ${disk}: not under the backup checkpoint of this view`);
    const known = this.bases.get(overlay.base.toLowerCase());
    if (!known) {
      throw new HyperVError(
        'invalid-argument',
        `overlay.base: ${overlay.base} is not the parent of a checkpoint this provider made in this session; refusing to copy it`,
      );
    }
    const vmId = String(view.ref.vmId ?? '');
    const facts = this.snapshots.get(vmId.toLowerCase());
    if (!facts) throw new HyperVError('invalid-argument', `disk ${disk}: the snapshot of this view is not one this process made`);
    let limitId: string | undefined;
    if (options.copy?.mode === 'incremental') {
      const since = options.copy.since;
      limitId = this.rct
        .get(vmId.toLowerCase())
        ?.find((r) => r.name === since)
        ?.disks.get(disk)?.rctId;
      if (!limitId)
        throw new HyperVError(
          'inconsistent',
          `disk ${disk}: no reference point ${since} of this VM is known to this process (enumerate first); an incremental needs its RCT id`,
        );
    }
    return exportFromSnapshot(this.runner, {
      vmId,
      disk,
      base: overlay.base,
      format: known.format,
      ...(known.virtualSize !== undefined ? { virtualSize: known.virtualSize } : {}),
      dest,
      facts,
      ...(limitId ? { limitId } : {}),
      options,
      timeoutMs: this.settings.timeoutMs,
      ...(onProgress ? { onProgress } : {}),
    });
  }

  /** Crash recovery for this host: see recovery.ts. Call before the first backup. */
  removeLeftoverCheckpoints(options: RemoveLeftoversOptions = {}): Promise<RemoveLeftoversResult> {
    return removeLeftoverCheckpoints(this.runner, { timeoutMs: this.settings.timeoutMs, ...options });
  }

  close(): Promise<void> {
    return this.runner.close();
  }
}

/** What snapshot.ps1 / checkpoint.ps1 said that the copy and describe need later. */
function snapshotFacts(result: unknown, snapshotId: string, recovery: boolean, record: string | undefined): SnapshotFacts {
  const r = (result ?? {}) as { Parents?: unknown; ConfigFiles?: unknown; Host?: unknown };
  const stamp = (f: { Path?: unknown; Length?: unknown; LastWriteTimeUtc?: unknown }) => ({
    path: str(f.Path) ?? '',
    length: typeof f.Length === 'number' ? f.Length : -1,
    lastWrite: str(f.LastWriteTimeUtc) ?? '',
  });
  return {
    snapshotId,
    recovery,
    ...(record ? { record } : {}),
    ...(str(r.Host) ? { host: str(r.Host)! } : {}),
    parents: toArray<Record<string, unknown>>(r.Parents).map(stamp),
    configFiles: toArray<Record<string, unknown>>(r.ConfigFiles)
      .map(stamp)
      .filter((f) => f.path),
  };
}

function checkVmId(vmId: string): string {
  if (typeof vmId !== 'string' || !GUID.test(vmId))
    throw new HyperVError('invalid-argument', `vm id "${String(vmId)}" is not a Hyper-V VM id (a GUID)`);
  return vmId;
}

/** VHDX files start with "vhdxfile"; VHD files end with a 512-byte footer starting "conectix". */
export async function checkSignature(file: string, format: string, source: string): Promise<void> {
  const handle = await fs.open(file, 'r');
  try {
    const { size } = await handle.stat();
    const buf = Buffer.alloc(8);
    const position = format === 'vhd' ? Math.max(0, size - 512) : 0;
    await handle.read(buf, 0, 8, position);
    const want = format === 'vhd' ? 'conectix' : 'vhdxfile';
    if (buf.toString('latin1') !== want) {
      throw new HyperVError('inconsistent', `the copy of ${source} is not a ${format.toUpperCase()} file (no "${want}" signature)`);
    }
  } finally {
    await handle.close();
  }
}
