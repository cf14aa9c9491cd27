// The Hyper-V HostProvider: every side effect is one shipped PowerShell script run by a
// PowerShellRunner (local powershell.exe, or powershell.exe over SSH).
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { ClassifiedVm, EnumeratedVm, PointInTimeView } from '../../contract/types';
import type { ExportedFile, HostProvider, Progress } from '../provider';
import { HyperVError } from './errors';
import { BACKUP_ID, GUID, mapEnumeration, mapState, overlaysFromCheckpoint, snapshotNamesIn, str, toArray, type Overlay } from './parse';
import { removeLeftoverCheckpoints, type RemoveLeftoversOptions, type RemoveLeftoversResult } from './recovery';
import type { PowerShellRunner, ScriptName, ScriptParams } from './runner';

export interface HyperVProviderSettings {
  /** per script run, default 10 minutes */
  timeoutMs: number;
}

/** States a VM passes through on its own; resume waits for them to settle. */
const TRANSITIONAL = new Set(['starting', 'stopping', 'saving', 'pausing', 'resuming', 'fast-saving', 'reset']);

export class HyperVProvider implements HostProvider {
  readonly kind = 'hyperv' as const;
  readonly writerName = 'Hyper-V (Checkpoint-VM production checkpoints, PowerShell)';
  /** Production checkpoints quiesce the guest (VSS / fsfreeze) themselves. */
  readonly quiesce = 'view' as const;

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
    const vms = mapEnumeration(await this.run('enumerate.ps1', {}));
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
   * Save-VM. Hyper-V keeps the memory state in its own .vmrs file, so `file` receives a small JSON
   * reference to it (the disks of a saved VM are crash-consistent; the .vmrs alone cannot restore a
   * VM without its configuration). Returns the size of the .vmrs.
   */
  async saveState(vm: ClassifiedVm, file: string): Promise<{ bytes: number }> {
    const r = (await this.run('save-vm.ps1', { VmId: checkVmId(vm.id) })) as {
      StateBefore?: unknown;
      Saved?: unknown;
      State?: { State?: unknown };
      Files?: unknown;
    } | null;
    const files = toArray<{ Path?: unknown; Length?: unknown }>(r?.Files)
      .map((f) => ({ path: str(f.Path) ?? '', bytes: typeof f.Length === 'number' ? f.Length : 0 }))
      .filter((f) => f.path);
    const bytes = files.reduce((n, f) => n + f.bytes, 0);
    const reference = {
      format: 'vm-backup-hyperv-saved-state@1',
      vmId: vm.id,
      vmName: vm.name,
      stateBefore: mapState(r?.StateBefore),
      state: mapState(r?.State?.State),
      savedByBackup: r?.Saved === true,
      savedAt: new Date().toISOString(),
      files,
      note: 'Hyper-V keeps the saved state in the files listed, on the host; they are not copied. The disks of this backup are crash-consistent.',
    };
    await fs.mkdir(path.dirname(file), { recursive: true });
    await fs.writeFile(file, JSON.stringify(reference, null, 2) + '\n');
    return { bytes };
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

  // ---- the point-in-time view: a backup checkpoint named vmbackup-<backupId> ----

  planView(vm: ClassifiedVm, backupId: string): PointInTimeView {
    if (!BACKUP_ID.test(backupId)) throw new HyperVError('invalid-argument', `backupId "${backupId}" is not a backup id`);
    const disks = vm.disks
      .filter((d) => d.included)
      .map((d) => {
        const format = d.format === 'vhd' || /\.vhd$/i.test(d.file) ? 'vhd' : 'vhdx';
        return { disk: d.id, artifact: `disk-${d.id.replace(/[^A-Za-z0-9._-]/g, '_')}.${format}`, format };
      });
    return { disks, ref: { checkpointName: `vmbackup-${backupId}`, backupId } };
  }

  async armView(): Promise<void> {
    // nothing can be made ahead of a checkpoint
  }

  async makeView(vm: ClassifiedVm, view: PointInTimeView): Promise<{ view: PointInTimeView }> {
    const overlays = await this.snapshot(vm, String(view.ref.backupId));
    return { view: { ...view, ref: { ...view.ref, checkpointId: overlays[0]?.overlayNode, overlays } } };
  }

  async releaseView(vmId: string, view: PointInTimeView): Promise<void> {
    const overlays = Array.isArray(view.ref.overlays) ? (view.ref.overlays as Overlay[]) : [];
    const name = String(view.ref.checkpointName ?? '');
    await this.merge(vmId, overlays.length ? overlays : [{ disk: '', base: '', baseFormat: '', overlay: name, overlayNode: name }]);
  }

  /** At start: our vmbackup-* checkpoints a crash left (no journal may name them any more). */
  async removeLeftovers(): Promise<string[]> {
    const r = await this.removeLeftoverCheckpoints();
    return [
      ...r.removed.map((c) => `removed leftover checkpoint ${c.name} of VM ${c.vmName}`),
      ...r.errors.map((e) => `FAILED to remove leftover checkpoint ${e.checkpoint.name} of VM ${e.checkpoint.vmName}: ${e.message}`),
    ];
  }

  /**
   * child-vm-snapshot: a ProductionOnly checkpoint (the guest quiesces or the checkpoint fails);
   * checkpoint, saved-state, offline: a Standard checkpoint, so that the parents stop changing.
   */
  async snapshot(vm: ClassifiedVm, backupId: string): Promise<Overlay[]> {
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
    const checkpointType = vm.method === 'child-vm-snapshot' ? 'ProductionOnly' : 'Standard';
    this.pendingNames.set(vmId, name);
    const result = await this.run('checkpoint.ps1', {
      VmId: vmId,
      SnapshotName: name,
      CheckpointType: checkpointType,
      WaitSeconds: this.checkpointWaitSeconds,
    });
    let mapped: { overlays: Overlay[]; checkpointId: string };
    try {
      mapped = overlaysFromCheckpoint(
        included.map((d) => d.id),
        result,
      );
      const r = result as { CheckpointTypeRestored?: unknown; RestoreError?: unknown; PreviousCheckpointType?: unknown };
      if (r.CheckpointTypeRestored === false) {
        throw new HyperVError(
          'inconsistent',
          `VM ${vm.name}: could not restore its CheckpointType to ${str(r.PreviousCheckpointType) ?? '?'} after the backup checkpoint (${str(r.RestoreError) ?? 'unknown error'}); it is still ${checkpointType}. Set it back with Set-VM -CheckpointType`,
        );
      }
    } catch (err) {
      // all or nothing: a checkpoint we cannot use is removed at once
      await this.run('remove-checkpoint.ps1', { VmId: vmId, SnapshotName: name, WaitSeconds: 0 }).catch(() => undefined);
      this.pendingNames.delete(vmId);
      throw err;
    }
    for (const o of mapped.overlays) {
      const size = this.sizes.get(o.base.toLowerCase()) ?? vm.disks.find((d) => d.id === o.disk)?.virtualSize;
      this.bases.set(o.base.toLowerCase(), { format: o.baseFormat, ...(size !== undefined ? { virtualSize: size } : {}) });
    }
    return mapped.overlays;
  }

  /**
   * Remove-VMCheckpoint of the backup checkpoint: Hyper-V merges the .avhdx into its parent and
   * deletes it. Safe when already removed. Overlays that were only planned (the snapshot failed or
   * the process died) name the checkpoint by its vmbackup-<backupId> name instead of its Id.
   */
  async merge(vmId: string, overlays: Overlay[]): Promise<void> {
    checkVmId(vmId);
    const ids = [...new Set(overlays.map((o) => o.overlayNode).filter((n) => GUID.test(n)))];
    const names = new Set(snapshotNamesIn(overlays));
    const pending = this.pendingNames.get(vmId);
    if (pending) names.add(pending);
    for (const id of ids) {
      await this.run('remove-checkpoint.ps1', { VmId: vmId, CheckpointId: id, WaitSeconds: this.waitSeconds });
    }
    if (ids.length === 0) {
      for (const name of names) await this.run('remove-checkpoint.ps1', { VmId: vmId, SnapshotName: name, WaitSeconds: this.waitSeconds });
    }
    this.pendingNames.delete(vmId);
    for (const o of overlays) this.bases.delete(o.base.toLowerCase());
  }

  async describe(vmId: string): Promise<Record<string, unknown>> {
    const r = await this.run('describe.ps1', { VmId: checkVmId(vmId) });
    if (!r || typeof r !== 'object' || Array.isArray(r)) throw new HyperVError('protocol', 'describe.ps1: the result is not an object');
    return { format: 'vm-backup-hyperv-definition@1', provider: 'hyperv', vmId, ...(r as Record<string, unknown>) };
  }

  /**
   * Copy the point-in-time image (overlay.base, the checkpoint's read-only parent) to `dest` on
   * this machine. The copy is written next to `dest` and renamed when complete and checked.
   */
  async exportDisk(view: PointInTimeView, disk: string, dest: string, onProgress?: (p: Progress) => void): Promise<ExportedFile> {
    const overlay = (Array.isArray(view.ref.overlays) ? (view.ref.overlays as Overlay[]) : []).find((o) => o.disk === disk);
    if (!overlay) throw new HyperVError('invalid-argument', `disk ${disk}: not under the backup checkpoint of this view`);
    return this.exportOverlay(overlay, dest, onProgress);
  }

  /** Copy one checkpoint parent (overlay.base) that snapshot() handed out. */
  async exportOverlay(overlay: Overlay, dest: string, onProgress?: (p: Progress) => void): Promise<ExportedFile> {
    const known = this.bases.get(overlay.base.toLowerCase());
    if (!known) {
      throw new HyperVError(
        'invalid-argument',
        `overlay.base: ${overlay.base} is not the parent of a checkpoint this provider made in this session; refusing to copy it`,
      );
    }
    const tmp = `${dest}.part-${randomBytes(4).toString('hex')}`;
    try {
      const { bytes } = await this.runner.fetchFile(overlay.base, tmp, onProgress);
      await checkSignature(tmp, known.format, overlay.base);
      await fs.rename(tmp, dest);
      return { path: dest, bytes, format: known.format, ...(known.virtualSize !== undefined ? { virtualSize: known.virtualSize } : {}) };
    } catch (err) {
      await fs.rm(tmp, { force: true }).catch(() => undefined);
      throw err;
    }
  }

  /** Crash recovery for this host: see recovery.ts. Call before the first backup. */
  removeLeftoverCheckpoints(options: RemoveLeftoversOptions = {}): Promise<RemoveLeftoversResult> {
    return removeLeftoverCheckpoints(this.runner, { timeoutMs: this.settings.timeoutMs, ...options });
  }

  close(): Promise<void> {
    return this.runner.close();
  }
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
