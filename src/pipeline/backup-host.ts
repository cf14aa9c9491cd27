// The all-or-nothing coordinator: one object per host, owning every live backup set on it.
// Each stage checks that the set is one it started, at the stage it expects, before acting.
import { classifyAll } from '../classify/classify';
import type { StageName } from '../contract/schemas';
import type {
  ClassifiedSet, ClassifiedVm, CopiedSet, EnumeratedSet, FallbackPolicy, PostSnapshotSet, PreparedSet,
  PreparedVm, SnapshottedSet, SnapshottedVm, PostSnapshotVm,
} from '../contract/types';
import type { Journal } from '../journal/journal';
import type { HostProvider } from '../providers/provider';
import { ArtifactRepository } from '../repository/repository';
import { newBackupId } from '../util/ids';
import { monoNow, stopwatch, type Stopwatch } from '../util/clock';
import { copyBackupSet, type CopyOptions } from './copy';
import { LiveBackup, type Logger, type Timeouts } from './live-backup';
import { allSettledOrThrow, StageError } from './stage-error';
import { plannedOverlays } from '../providers/overlay-plan';

export interface HostOptions {
  hostName: string;
  repositoryRoot: string;
  timeouts: Timeouts;
}

export const DEFAULT_TIMEOUTS: Timeouts = {
  freezeMs: 10_000,
  pauseMs: 120_000,
  sessionMs: 6 * 3600_000,
  idleMs: 300_000,
  commandMs: 30_000,
};

type AnySet = { stage: string; backupId: string; vms: { id: string }[] };

export class BackupHost {
  readonly live = new Map<string, LiveBackup>();
  readonly repository: ArtifactRepository;

  constructor(
    readonly provider: HostProvider,
    readonly journal: Journal,
    readonly options: HostOptions,
    readonly log: Logger = () => undefined,
  ) {
    this.repository = new ArtifactRepository(options.repositoryRoot);
  }

  // ---- checks shared by every stage (no side effect before they pass) ----

  private take(set: AnySet, expected: StageName, sameVms: boolean): LiveBackup {
    const live = this.live.get(set.backupId);
    if (!live) {
      throw new StageError(`/backupId: backup set ${set.backupId} is not live on host ${this.options.hostName} (not started by enumerate here, or already finished)`);
    }
    if (live.abortedBecause) throw new StageError(`/backupId: backup set ${set.backupId} was aborted: ${live.abortedBecause}`);
    if (live.stage !== expected) {
      throw new StageError(`/stage: backup set ${set.backupId} is at stage "${live.stage}" on the host, not "${expected}" (a stage ran twice or out of order)`);
    }
    const seen = new Set<string>();
    set.vms.forEach((vm, i) => {
      if (seen.has(vm.id)) throw new StageError(`/vms/${i}/id: duplicate VM id "${vm.id}"`);
      seen.add(vm.id);
      if (!live.vmIds.has(vm.id)) throw new StageError(`/vms/${i}/id: VM "${vm.id}" is not part of backup set ${set.backupId}`);
    });
    if (sameVms && seen.size !== live.vmIds.size) {
      const missing = [...live.vmIds].filter((id) => !seen.has(id));
      throw new StageError(`/vms: VM(s) ${missing.join(', ')} of backup set ${set.backupId} are missing from the message; VMs cannot be dropped after prepare`);
    }
    try {
      live.checkUnchanged(set.vms as unknown as Record<string, unknown>[]);
    } catch (err) {
      throw new StageError((err as Error).message);
    }
    return live;
  }

  private timing(t0: Stopwatch) {
    return { startedAt: t0.iso, ms: t0.ms() };
  }

  /** A set ended: its VMs' connections go back to the host unless another live set uses them. */
  private released(ended: LiveBackup): void {
    this.live.delete(ended.backupId);
    const stillUsed = new Set([...this.live.values()].flatMap((l) => [...l.vmIds]));
    const free = [...ended.vmIds].filter((id) => !stillUsed.has(id));
    if (free.length > 0) this.provider.release?.(free).catch(() => undefined);
  }

  // ---- enumerate ----

  async enumerate(): Promise<EnumeratedSet> {
    const t0 = stopwatch();
    const vms = await this.provider.enumerate();
    const backupId = newBackupId();
    const live = new LiveBackup(backupId, vms.map((vm) => vm.id), this.provider, this.journal, this.options.timeouts, this.log,
      (l) => this.released(l));
    this.live.set(backupId, live);
    live.record('enumerated', vms);
    return {
      stage: 'enumerated',
      backupId,
      host: { name: this.options.hostName, provider: this.provider.kind },
      writer: { name: this.provider.writerName, components: vms.length },
      createdAt: t0.iso,
      vms,
      timings: { enumerate: this.timing(t0) },
      warnings: vms.flatMap((vm) => (vm.warnings ?? []).map((w) => `${vm.id}: ${w}`)),
    };
  }

  // ---- classify (pure; only records the VMs kept) ----

  classify(set: EnumeratedSet, fallback: FallbackPolicy): ClassifiedSet {
    const live = this.take(set, 'enumerated', false);
    const t0 = stopwatch();
    let vms: ClassifiedVm[];
    try {
      vms = classifyAll(set.vms, fallback);
    } catch (err) {
      void live.abort((err as Error).message);
      throw err;
    }
    live.vmIds = new Set(vms.map((vm) => vm.id));
    live.record('classified', vms);
    live.stage = 'classified';
    live.touch();
    return {
      ...set,
      stage: 'classified',
      policy: { fallback },
      vms,
      timings: { ...set.timings, classify: this.timing(t0) },
      warnings: [...set.warnings, ...vms.flatMap((vm) => vm.warnings.filter((w) => !set.warnings.includes(`${vm.id}: ${w}`)).map((w) => `${vm.id}: ${w}`))],
    };
  }

  // ---- prepare: quiesce online guests, save offline-by-policy VMs ----

  async prepare(set: ClassifiedSet): Promise<PreparedSet> {
    const live = this.take(set, 'classified', true);
    for (const vm of set.vms) {
      for (const other of this.live.values()) {
        if (other === live || other.stage === 'enumerated' || other.stage === 'classified') continue;
        // an ended set stays until its retried thaws succeed: only its still-frozen guests are taken
        if (other.stage === 'ended' && other.frozen.has(vm.id)) {
          throw new StageError(`/vms: VM "${vm.id}" is still frozen by the ended backup set ${other.backupId} (its thaw is being retried until the guest agent answers)`);
        }
        if (other.stage === 'ended' && other.holds(vm.id)) {
          throw new StageError(`/vms: VM "${vm.id}" still has undos of the ended backup set ${other.backupId} in place (its guardian retries them)`);
        }
        if (other.stage !== 'ended' && other.vmIds.has(vm.id)) {
          throw new StageError(`/vms: VM "${vm.id}" is already in backup set ${other.backupId}`);
        }
      }
    }
    live.stage = 'busy';
    live.busy();
    const t0 = stopwatch();
    // Saves first, freezes last: a guest's frozen window must not include other VMs' saves.
    const freezes = (vm: ClassifiedVm) => vm.method === 'child-vm-snapshot' && !this.provider.snapshotQuiesces;
    const vms = await live.runStage(async () => {
      if (set.vms.some((vm) => freezes(vm) || vm.method === 'saved-state')) await live.guard();
      const first = await this.allOrNothing(live, set.vms.filter((vm) => !freezes(vm)), (vm) => this.prepareVm(live, set, vm));
      const second = await this.allOrNothing(live, set.vms.filter(freezes), (vm) => this.prepareVm(live, set, vm));
      const byId = new Map([...first, ...second].map((vm) => [vm.id, vm]));
      return set.vms.map((vm) => byId.get(vm.id)!);
    });
    await this.endStage(live, 'prepared', vms);
    live.stage = 'prepared';
    live.touch();
    return { ...set, stage: 'prepared', vms, timings: { ...set.timings, prepare: this.timing(t0) } };
  }

  private async prepareVm(live: LiveBackup, set: ClassifiedSet, vm: ClassifiedVm): Promise<PreparedVm> {
    const t0 = stopwatch();
    const previousState = vm.state;
    if (vm.method === 'child-vm-snapshot' && !this.provider.snapshotQuiesces) {
      // the overlay intent is made durable now, so that no fsync falls inside the frozen window
      live.planOverlays(vm.id, plannedOverlays(vm, set.backupId));
      const frozenFilesystems = await live.freeze(vm.id, async () =>
        (await this.provider.freeze(vm, this.options.timeouts.freezeMs)).frozenFilesystems);
      return { ...vm, prepare: { action: 'freeze', previousState, frozenFilesystems, frozenAt: t0.iso, ms: t0.ms() } };
    }
    if (vm.method === 'saved-state') {
      live.noteStaging(vm.id, this.repository.stagingDir(set.host.name, vm.id, set.backupId));
      const dir = await this.repository.openStaging(set.host.name, vm.id, set.backupId);
      const file = `${dir}/state.vmstate`;
      let bytes = 0;
      let pausedAt = Date.now();
      let pausedMono = monoNow();
      const state = await this.provider.runState(vm.id);
      await live.save(vm.id, state, async () => {
        const saved = await this.provider.saveState(vm, file);
        bytes = saved.bytes;
        if (saved.pausedAt !== undefined) pausedAt = saved.pausedAt;
        if (saved.pausedMono !== undefined) pausedMono = saved.pausedMono;
      });
      // downtime is counted on the monotonic clock from the provider's own moment of the stop
      live.pausedSince.set(vm.id, pausedMono);
      return {
        ...vm,
        prepare: { action: 'save', previousState: state, savedStateFile: file, savedStateBytes: bytes, pausedAt: new Date(pausedAt).toISOString(), ms: t0.ms() },
      };
    }
    return { ...vm, prepare: { action: 'none', previousState, ms: t0.ms() } };
  }

  // ---- snapshot: one atomic snapshot per VM, thaw at once ----

  async snapshot(set: PreparedSet): Promise<SnapshottedSet> {
    const live = this.take(set, 'prepared', true);
    live.stage = 'busy';
    live.busy();
    const t0 = stopwatch();
    const vms = await live.runStage(() => this.allOrNothing(live, set.vms, (vm) => this.snapshotVm(live, set, vm)));
    await this.endStage(live, 'snapshotted', vms);
    live.stage = 'snapshotted';
    live.touch();
    return { ...set, stage: 'snapshotted', vms, timings: { ...set.timings, snapshot: this.timing(t0) } };
  }

  private async snapshotVm(live: LiveBackup, set: PreparedSet, vm: PreparedVm): Promise<SnapshottedVm> {
    const t0 = stopwatch();
    const wasFrozen = live.frozen.has(vm.id);
    const overlays = await live.snapshot(vm.id, plannedOverlays(vm, set.backupId), () => this.provider.snapshot(vm, set.backupId));
    let consistency = vm.consistency;
    const warnings = [...vm.warnings];
    let frozenMs: number | undefined;
    if (vm.prepare.action === 'freeze') {
      // The freeze must have held from its acknowledgement until the snapshot: else crash-consistent.
      const held = wasFrozen && !live.thawedByWatchdog.has(vm.id) && (await live.stillFrozen(vm.id));
      frozenMs = await live.thaw(vm.id);
      // the cap may have thawed it between the status and the thaw: never claim more than we know
      if (!held || live.thawedByWatchdog.has(vm.id)) {
        consistency = 'crash';
        warnings.push('the guest was thawed before its snapshot (freezeTimeout or the guest ended the freeze): crash-consistent only');
      }
    }
    return {
      ...vm,
      consistency,
      warnings,
      snapshot: {
        at: t0.iso,
        overlays,
        ...(frozenMs !== undefined ? { thawedAt: new Date().toISOString(), frozenMs } : {}),
        ...(live.thawedByWatchdog.has(vm.id) ? { thawedByWatchdog: true } : {}),
        ms: t0.ms(),
      },
    };
  }

  // ---- post-snapshot: VMs back to their previous state ----

  async postSnapshot(set: SnapshottedSet): Promise<PostSnapshotSet> {
    const live = this.take(set, 'snapshotted', true);
    live.stage = 'busy';
    live.busy();
    const t0 = stopwatch();
    const vms = await live.runStage(() => this.allOrNothing(live, set.vms, async (vm): Promise<PostSnapshotVm> => {
      const v0 = stopwatch();
      await live.thaw(vm.id); // normally already thawed in snapshot; a no-op then
      const pausedSince = live.pausedSince.get(vm.id);
      const resumedTo = await live.resume(vm.id);
      const returnedTo = resumedTo ?? (await this.provider.runState(vm.id));
      return {
        ...vm,
        postSnapshot: {
          returnedTo,
          resumed: resumedTo !== undefined,
          // The base image holds the guest's consistency point; every later write is in the overlay.
          revertedToConsistencyPoint: vm.method === 'child-vm-snapshot' && vm.consistency === 'application',
          ...(resumedTo !== undefined && pausedSince !== undefined ? { downtimeMs: monoNow() - pausedSince } : {}),
          ms: v0.ms(),
        },
      };
    }));
    await this.endStage(live, 'post-snapshot', vms);
    live.stage = 'post-snapshot';
    live.touch();
    return { ...set, stage: 'post-snapshot', vms, timings: { ...set.timings, postSnapshot: this.timing(t0) } };
  }

  // ---- copy artifacts, publish all or none, merge whatever happened ----

  async copy(set: PostSnapshotSet, options: CopyOptions): Promise<CopiedSet> {
    const live = this.take(set, 'post-snapshot', true);
    live.stage = 'busy';
    live.busy();
    const t0 = stopwatch();
    let vms;
    try {
      vms = await live.runStage(() => copyBackupSet(this.provider, this.repository, live, set, options));
    } catch (err) {
      const why = live.abortedBecause ?? (err as Error).message;
      await live.abort(why, (dir) => this.removeStaging(dir), true);
      throw live.abortedBecause && live.abortedBecause !== (err as Error).message
        ? new StageError(`backup set ${set.backupId} was aborted: ${live.abortedBecause} (${(err as Error).message})`)
        : err;
    }
    const errors = await live.undoAll((dir) => this.removeStaging(dir));
    if (errors.length > 0) {
      live.abortedBecause = `undo failed: ${errors.join('; ')}`;
      live.finish(false);
      throw new StageError(`backup ${set.backupId} was published but cleaning up failed: ${errors.join('; ')}`);
    }
    live.finish(true);
    return {
      ...set,
      stage: 'copied',
      repository: this.options.repositoryRoot,
      vms: vms.map((vm) => ({ ...vm, copy: { ...vm.copy, merged: true } })),
      timings: { ...set.timings, copy: this.timing(t0) },
    };
  }

  /**
   * A stage finished its steps: if the set was aborted meanwhile (watchdog, redeploy), its abort
   * is waiting for this stage; report the abort instead of handing the set on.
   */
  private async endStage(live: LiveBackup, stage: StageName, vms: readonly { id: string }[]): Promise<void> {
    if (live.abortedBecause !== undefined) {
      await live.abort(live.abortedBecause, (dir) => this.removeStaging(dir), true);
      throw new StageError(`/backupId: backup set ${live.backupId} was aborted: ${live.abortedBecause}`);
    }
    live.record(stage, vms);
  }

  private async removeStaging(dir: string): Promise<void> {
    const { rm } = await import('node:fs/promises');
    await rm(dir, { recursive: true, force: true });
  }

  /**
   * Run one step for every VM. If any VM fails, undo what every VM's steps did so far and
   * fail with each VM's reason: partial backups are not supported.
   */
  private async allOrNothing<In extends { id: string }, Out>(live: LiveBackup, vms: readonly In[], step: (vm: In) => Promise<Out>): Promise<Out[]> {
    try {
      return await allSettledOrThrow(vms, step);
    } catch (err) {
      await live.abort((err as Error).message, (dir) => this.removeStaging(dir), true);
      throw err;
    }
  }

  /** Abort every live set (the host node is closing or being redeployed). */
  async closeAll(why: string): Promise<void> {
    await Promise.all([...this.live.values()].map((live) => live.abort(why, (dir) => this.removeStaging(dir))));
  }
}

export type { CopyOptions };
export { StageError };
export type AnyStageSet = EnumeratedSet | ClassifiedSet | PreparedSet | SnapshottedSet | PostSnapshotSet | CopiedSet;
