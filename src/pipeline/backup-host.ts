// The all-or-nothing coordinator: one object per host, owning every live backup set on it.
// Each stage checks that the set is one it started, at the stage it expects, before acting.
import { msSince } from '../util/clock';
import { classifyAll } from '../classify/classify';
import { applyExclusions, compilePatterns, type DiskPattern } from '../classify/exclude';
import type { StageName } from '../contract/schemas';
import type {
  ClassifiedSet,
  ClassifiedVm,
  CopiedSet,
  EnumeratedSet,
  FallbackPolicy,
  PostSnapshotSet,
  PreparedSet,
  PreparedVm,
  SnapshottedSet,
  SnapshottedVm,
  PostSnapshotVm,
  SkippedVm,
  UnreachablePolicy,
} from '../contract/types';
import { fitVm } from '../contract/limits';
import type { Journal } from '../journal/journal';
import type { HostProvider, TrackingRecord } from '../providers/provider';
import { ArtifactRepository } from '../repository/repository';
import { isSafeName, newBackupId } from '../util/ids';
import { copyBackupSet, type CopyOptions } from './copy';
import { CLOSE_UNDO_MS, LET_GO_MS, LiveBackup, type Logger, type SetEnding, type Timeouts } from './live-backup';
import { allSettledOrThrow, CleanupFailed, StageError } from './stage-error';
import { chainTarget, planChain } from './chain-plan';

export interface HostOptions {
  hostName: string;
  repositoryRoot: string;
  timeouts: Timeouts;
  /** the host's exclude setting: disks the user leaves out (VM/DISK patterns) */
  exclude?: readonly string[];
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
  /** what ended sets left in place (the last few), for the summary of the stage that failed */
  private readonly endedLeft = new Map<string, string[]>();
  /**
   * Told of every set that ends other than by a stage's own failure (which its node reports): a
   * watchdog (idle, session) or the host closing. The host node raises it to the flow's Catch nodes.
   */
  onSetEnded: (ending: SetEnding) => void = () => undefined;

  /** the chain this host's backups form (its repository and host name): its tracking records are named for it */
  readonly target: string;

  constructor(
    readonly provider: HostProvider,
    readonly journal: Journal,
    readonly options: HostOptions,
    readonly log: Logger = () => undefined,
  ) {
    this.repository = new ArtifactRepository(options.repositoryRoot);
    this.excluded = compilePatterns(options.exclude ?? []);
    this.target = chainTarget(options.repositoryRoot, options.hostName);
  }

  private readonly excluded: DiskPattern[];

  // ---- checks shared by every stage (no side effect before they pass) ----

  private take(set: AnySet & Record<string, unknown>, expected: StageName, sameVms: boolean): LiveBackup {
    const live = this.live.get(set.backupId);
    if (!live) {
      throw new StageError(
        `/backupId: backup set ${set.backupId} is not live on host ${this.options.hostName} (not started by enumerate here, or already finished)`,
      );
    }
    if (live.abortedBecause) throw new StageError(`/backupId: backup set ${set.backupId} was aborted: ${live.abortedBecause}`);
    if (live.stage !== expected) {
      throw new StageError(
        `/stage: backup set ${set.backupId} is at stage "${live.stage}" on the host, not "${expected}" (a stage ran twice or out of order)`,
      );
    }
    const seen = new Set<string>();
    set.vms.forEach((vm, i) => {
      if (seen.has(vm.id)) throw new StageError(`/vms/${i}/id: duplicate VM id "${vm.id}"`);
      seen.add(vm.id);
      if (!live.vmIds.has(vm.id)) throw new StageError(`/vms/${i}/id: VM "${vm.id}" is not part of backup set ${set.backupId}`);
    });
    if (sameVms && seen.size !== live.vmIds.size) {
      const missing = [...live.vmIds].filter((id) => !seen.has(id));
      throw new StageError(
        `/vms: VM(s) ${missing.join(', ')} of backup set ${set.backupId} are missing from the message; VMs cannot be dropped after prepare`,
      );
    }
    try {
      live.output.checkSet(set);
      live.output.checkVms(set.vms as unknown as Record<string, unknown>[]);
    } catch (err) {
      throw new StageError((err as Error).message);
    }
    return live;
  }

  /** A stage's timing: when it started (wall clock), how long it took (monotonic clock). */
  private timing(startedAt: number, monoStart: number) {
    return { startedAt: new Date(startedAt).toISOString(), ms: msSince(monoStart) };
  }

  /** A set ended: its VMs' connections go back to the host unless another live set uses them. */
  private released(ended: LiveBackup): void {
    this.live.delete(ended.backupId);
    this.endedLeft.set(ended.backupId, ended.leftovers());
    for (const id of [...this.endedLeft.keys()].slice(0, Math.max(0, this.endedLeft.size - 32))) this.endedLeft.delete(id);
    const stillUsed = new Set([...this.live.values()].flatMap((l) => [...l.vmIds]));
    const free = [...ended.vmIds].filter((id) => !stillUsed.has(id));
    if (free.length > 0) this.provider.release?.(free).catch(() => undefined);
  }

  /** What a set (live or ended here) still has in place; undefined for a set this host does not know. */
  leftovers(backupId: unknown): string[] | undefined {
    if (typeof backupId !== 'string') return undefined;
    return this.live.get(backupId)?.leftovers() ?? this.endedLeft.get(backupId);
  }

  // ---- enumerate ----

  async enumerate(): Promise<EnumeratedSet> {
    const t0 = Date.now();
    const m0 = performance.now();
    const found = this.provider.enumerateHost
      ? await this.provider.enumerateHost()
      : { vms: await this.provider.enumerate(), warnings: [] };
    const listed = found.vms;
    const hostWarnings = [...found.warnings];
    // never "ok" about what was not taken: what looks like a VM but cannot be one goes with the set
    const hostSkipped = [...(found.skipped ?? [])];
    // limits are per VM: one odd VM is clamped or marked unreachable, never fails the set
    const vms = listed
      .filter((vm) => {
        if (isSafeName(vm.id)) return true;
        const reason = `a VM named ${JSON.stringify(String(vm.id).slice(0, 80))} skipped: its id is not a valid name`;
        hostWarnings.push(reason);
        hostSkipped.push({ name: String(vm.id).slice(0, 256), reason });
        return false;
      })
      .map(fitVm)
      .map((vm) => applyExclusions(vm, this.excluded));
    const backupId = newBackupId();
    const live = new LiveBackup(
      backupId,
      vms.map((vm) => vm.id),
      this.provider,
      this.journal,
      this.options.timeouts,
      this.log,
      (l) => this.released(l),
      (ending) => {
        if (ending.by !== 'stage') this.onSetEnded(ending);
      },
    );
    this.live.set(backupId, live);
    live.end('enumerated', vms);
    const set: EnumeratedSet = {
      stage: 'enumerated',
      backupId,
      host: { name: this.options.hostName, provider: this.provider.kind },
      writer: { name: this.provider.writerName, components: vms.length },
      createdAt: new Date(t0).toISOString(),
      ...(hostSkipped.length ? { hostSkipped: hostSkipped.slice(0, 1000).map((h) => ({ ...h, reason: h.reason.slice(0, 1024) })) } : {}),
      vms,
      timings: { enumerate: this.timing(t0, m0) },
      warnings: [
        ...hostWarnings,
        ...vms.flatMap((vm) => [
          ...(vm.unreachable ? [`${vm.id}: defined but unreachable: ${vm.unreachable.reason}`] : []),
          ...(vm.warnings ?? []).map((w) => `${vm.id}: ${w}`),
        ]),
      ].slice(0, 1024),
    };
    live.output.recordSet({ host: set.host, writer: set.writer, createdAt: set.createdAt, hostSkipped: set.hostSkipped });
    return set;
  }

  // ---- classify (pure; only records the VMs kept) ----

  classify(set: EnumeratedSet, fallback: FallbackPolicy, unreachable: UnreachablePolicy = 'fail'): ClassifiedSet {
    const live = this.take(set, 'enumerated', false);
    const t0 = Date.now();
    const m0 = performance.now();
    let vms: ClassifiedVm[];
    const skipped: SkippedVm[] = set.vms.filter((vm) => vm.unreachable).map((vm) => ({ vm: vm.id, reason: vm.unreachable!.reason }));
    try {
      if (skipped.length > 0 && unreachable === 'fail') {
        throw new StageError(
          `/vms: ${skipped.length} VM(s) defined on host ${this.options.hostName} cannot be reached: ${skipped.map((s) => `${s.vm} (${s.reason})`).join('; ')}; policy unreachable is "fail" (choose "report" on the classify node to back up the others)`,
        );
      }
      const reachable = set.vms.filter((vm) => !vm.unreachable);
      if (reachable.length === 0 && skipped.length > 0) {
        // never "ok" about nothing: VMs are defined, none can be backed up
        throw new StageError(
          `/vms: none of the ${skipped.length} VM(s) defined on host ${this.options.hostName} can be reached: ${skipped.map((s) => `${s.vm} (${s.reason})`).join('; ')}`,
        );
      }
      vms = classifyAll(reachable, fallback);
    } catch (err) {
      void live.abort((err as Error).message, { by: 'stage' });
      throw err;
    }
    live.vmIds = new Set(vms.map((vm) => vm.id));
    live.end('classified', vms);
    live.output.recordSet({ policy: { fallback, unreachable }, ...(skipped.length ? { skipped } : {}) });
    return {
      ...set,
      stage: 'classified',
      policy: { fallback, unreachable },
      ...(skipped.length ? { skipped } : {}),
      vms,
      timings: { ...set.timings, classify: this.timing(t0, m0) },
      warnings: [
        ...set.warnings,
        ...vms.flatMap((vm) => vm.warnings.filter((w) => !set.warnings.includes(`${vm.id}: ${w}`)).map((w) => `${vm.id}: ${w}`)),
      ].slice(0, 1024),
    };
  }

  // ---- prepare: plan each VM's view, start its change tracking, save or quiesce ----

  async prepare(set: ClassifiedSet): Promise<PreparedSet> {
    const live = this.take(set, 'classified', true);
    for (const vm of set.vms) {
      for (const other of this.live.values()) {
        if (other === live || other.stage === 'enumerated' || other.stage === 'classified') continue;
        // an ended set stays until its retried undos succeed: only the VMs it still holds are taken
        if (other.stage === 'ended' && other.holds(vm.id)) {
          throw new StageError(
            `/vms: VM "${vm.id}" still has undos of the ended backup set ${other.backupId} in place (they are retried until they succeed)`,
          );
        }
        if (other.stage !== 'ended' && other.vmIds.has(vm.id)) {
          throw new StageError(`/vms: VM "${vm.id}" is already in backup set ${other.backupId}`);
        }
      }
    }
    live.begin('prepare');
    const t0 = Date.now();
    const m0 = performance.now();
    // Saves first, freezes last: a guest's frozen window must not include other VMs' saves.
    const freezes = (vm: ClassifiedVm) => vm.method === 'child-vm-snapshot' && this.provider.quiesce === 'agent';
    const vms = await live.runStage(async () => {
      if (set.vms.some((vm) => freezes(vm) || vm.method === 'saved-state')) await live.guard();
      const first = await this.allOrNothing(
        live,
        set.vms.filter((vm) => !freezes(vm)),
        (vm) => this.prepareVm(live, set, vm),
      );
      const second = await this.allOrNothing(live, set.vms.filter(freezes), (vm) => this.prepareVm(live, set, vm));
      const byId = new Map([...first, ...second].map((vm) => [vm.id, vm]));
      return set.vms.map((vm) => byId.get(vm.id)!);
    });
    await this.endStage(live, 'prepared', vms);
    return { ...set, stage: 'prepared', vms, timings: { ...set.timings, prepare: this.timing(t0, m0) } };
  }

  private async prepareVm(live: LiveBackup, set: ClassifiedSet, vm: ClassifiedVm): Promise<PreparedVm> {
    const t0 = Date.now();
    const m0 = performance.now();
    const previousState = vm.state;
    // The view is planned and journalled, and this backup's change tracking started, before the
    // moment (the freeze or the stop): no fsync and no file creation falls inside a frozen window,
    // and the new tracking record covers every write after the moment.
    const view = this.provider.planView(vm, live.backupId);
    // the chain is planned from the records on the disks now, not as enumerate listed them: another
    // set of this VM may have published (and moved its chain on) since
    const now = vm.method === 'offline' ? undefined : await this.provider.tracking?.list?.(vm.id, view);
    const planned = now ? withRecords(vm, now) : vm;
    const tracks = this.provider.tracking !== undefined;
    const { plans: chainDraft, track } = await planChain(
      this.repository,
      this.options.hostName,
      planned,
      view,
      live.backupId,
      tracks,
      this.target,
    );
    live.planView(vm.id, view);
    await live.startTracking(vm.id, track, view);
    const base = { view, chainDraft };
    if (vm.method === 'child-vm-snapshot' && this.provider.quiesce === 'agent') {
      await this.provider.armView(vm, view);
      const frozenFilesystems = await live.freeze(
        vm.id,
        async () => (await this.provider.freeze(vm, this.options.timeouts.freezeMs)).frozenFilesystems,
      );
      return {
        ...vm,
        prepare: { action: 'freeze', previousState, frozenFilesystems, frozenAt: new Date(t0).toISOString(), ...base, ms: msSince(m0) },
      };
    }
    if (vm.method === 'saved-state') {
      // the view is armed after the save: QEMU cannot migrate with its filters in the graph;
      // paths from the host's own settings, never from the message
      const dir = await this.repository.openStaging(this.options.hostName, vm.id, live.backupId, (d) => live.noteStaging(vm.id, d));
      const file = `${dir}/state.vmstate`;
      let bytes = 0;
      const state = await this.provider.runState(vm.id);
      let pausedAtWall = Date.now();
      // downtime is counted on the monotonic clock from the provider's own moment of the stop
      await live.save(vm.id, state, async () => {
        const saved = await this.provider.saveState(vm, file);
        bytes = saved.bytes;
        if (saved.pausedAt !== undefined) pausedAtWall = saved.pausedAt;
        return saved.pausedMono;
      });
      return {
        ...vm,
        prepare: {
          action: 'save',
          previousState: state,
          savedStateFile: file,
          savedStateBytes: bytes,
          pausedAt: new Date(pausedAtWall).toISOString(),
          ...base,
          ms: msSince(m0),
        },
      };
    }
    await this.provider.armView(vm, view);
    return { ...vm, prepare: { action: 'none', previousState, ...base, ms: msSince(m0) } };
  }

  // ---- snapshot: the view's moment for each VM, thaw at once ----

  async snapshot(set: PreparedSet): Promise<SnapshottedSet> {
    const live = this.take(set, 'prepared', true);
    live.begin('snapshot');
    const t0 = Date.now();
    const m0 = performance.now();
    const vms = await live.runStage(() => this.allOrNothing(live, set.vms, (vm) => this.snapshotVm(live, vm)));
    await this.endStage(live, 'snapshotted', vms);
    return { ...set, stage: 'snapshotted', vms, timings: { ...set.timings, snapshot: this.timing(t0, m0) } };
  }

  private async snapshotVm(live: LiveBackup, vm: PreparedVm): Promise<SnapshottedVm> {
    const t0 = Date.now();
    const m0 = performance.now();
    const wasFrozen = live.isFrozen(vm.id) && !live.thawedByWatchdog.has(vm.id);
    const planned = vm.prepare.view!;
    if (vm.prepare.action === 'save') await this.provider.armView(vm, planned);
    // a failure here aborts the set, and its undo thaws first: a frozen guest is the worst harm
    const made = await this.provider.makeView(vm, planned, { frozen: wasFrozen, chain: vm.prepare.chainDraft ?? [] });
    live.viewMade(vm.id, made.view);
    let consistency = vm.consistency;
    const warnings = [...vm.warnings];
    let frozenMs: number | undefined;
    if (vm.prepare.action === 'freeze') {
      // The freeze must have held from its acknowledgement until the moment: else crash-consistent.
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
        at: new Date(t0).toISOString(),
        view: made.view,
        ...(made.pausedMs !== undefined ? { pausedMs: made.pausedMs } : {}),
        ...(frozenMs !== undefined ? { thawedAt: new Date().toISOString(), frozenMs } : {}),
        ...(live.thawedByWatchdog.has(vm.id) ? { thawedByWatchdog: true } : {}),
        ms: msSince(m0),
      },
    };
  }

  // ---- post-snapshot: VMs back to their previous state ----

  async postSnapshot(set: SnapshottedSet): Promise<PostSnapshotSet> {
    const live = this.take(set, 'snapshotted', true);
    live.begin('post-snapshot');
    const t0 = Date.now();
    const m0 = performance.now();
    const vms = await live.runStage(() =>
      this.allOrNothing(live, set.vms, async (vm): Promise<PostSnapshotVm> => {
        const v0 = performance.now();
        await live.thaw(vm.id); // normally already thawed in snapshot; a no-op then
        const resumedTo = await live.resume(vm.id);
        const returnedTo = await this.provider.runState(vm.id);
        if (resumedTo !== undefined && resumedTo !== returnedTo) {
          throw new Error(`the VM was to return to "${resumedTo}" but the hypervisor reports "${returnedTo}"`);
        }
        return {
          ...vm,
          postSnapshot: {
            returnedTo,
            resumed: resumedTo !== undefined,
            // The view holds the guest's consistency point; every later write goes to the VM's own image.
            revertedToConsistencyPoint: vm.method === 'child-vm-snapshot' && vm.consistency === 'application',
            ...(resumedTo !== undefined && live.downtimeMs(vm.id) !== undefined ? { downtimeMs: live.downtimeMs(vm.id) } : {}),
            ms: msSince(v0),
          },
        };
      }),
    );
    await this.endStage(live, 'post-snapshot', vms);
    return { ...set, stage: 'post-snapshot', vms, timings: { ...set.timings, postSnapshot: this.timing(t0, m0) } };
  }

  // ---- copy artifacts, publish all or none, take the views away whatever happened ----

  async copy(set: PostSnapshotSet, options: CopyOptions): Promise<CopiedSet> {
    const live = this.take(set, 'post-snapshot', true);
    live.begin('copy');
    const t0 = Date.now();
    const m0 = performance.now();
    let vms;
    try {
      vms = await live.runStage(() =>
        copyBackupSet(this.provider, this.repository, live, set, { ...options, hostName: this.options.hostName }),
      );
    } catch (err) {
      const why = live.abortedBecause ?? (err as Error).message;
      await live.abort(why, { by: 'stage' });
      throw live.abortedBecause && live.abortedBecause !== (err as Error).message
        ? new StageError(`backup set ${set.backupId} was aborted: ${live.abortedBecause} (${(err as Error).message})`)
        : err;
    }
    const errors = await live.complete();
    if (errors.length > 0) {
      throw new CleanupFailed(
        `backup ${set.backupId} was published, but the VMs are not all back as they were: ${errors.join('; ')} (its guardian process, or this host without one, retries until it succeeds; the journal keeps it for recovery)`,
        vms.map((vm) => ({ vm: vm.id, path: `${this.options.repositoryRoot.replace(/\/+$/, '')}/${vm.copy.path}` })),
      );
    }
    return {
      ...set,
      stage: 'copied',
      repository: this.options.repositoryRoot,
      vms: vms.map((vm) => ({ ...vm, copy: { ...vm.copy, released: true } })),
      timings: { ...set.timings, copy: this.timing(t0, m0) },
    };
  }

  /**
   * A stage finished its steps: if the set was aborted meanwhile (watchdog, redeploy), its abort
   * is waiting for this stage; report the abort instead of handing the set on.
   */
  private async endStage(live: LiveBackup, stage: StageName, vms: readonly { id: string }[]): Promise<void> {
    if (live.abortedBecause !== undefined) {
      await live.abort(live.abortedBecause, { by: 'stage' });
      throw new StageError(`/backupId: backup set ${live.backupId} was aborted: ${live.abortedBecause}`);
    }
    live.end(stage, vms);
  }

  /**
   * Run one step for every VM. If any VM fails, undo what every VM's steps did so far and
   * fail with each VM's reason: partial backups are not supported.
   */
  private async allOrNothing<In extends { id: string }, Out>(
    live: LiveBackup,
    vms: readonly In[],
    step: (vm: In) => Promise<Out>,
  ): Promise<Out[]> {
    try {
      return await allSettledOrThrow(vms, step);
    } catch (err) {
      await live.abort((err as Error).message, { by: 'stage' });
      throw err;
    }
  }

  /**
   * End every live set (the host node is closing: redeploy, node removed, Node-RED stopping), within
   * a few seconds whatever runs: a stage that does not stop within LET_GO_MS, or undos that take
   * longer than CLOSE_UNDO_MS, leave the rest to the set's guardian process. Returns how each
   * ended (sets that had ended already and only wait for a retried undo are not listed).
   */
  async closeAll(why: string): Promise<SetEnding[]> {
    const live = [...this.live.values()];
    const ending = live.filter((l) => l.stage !== 'ended');
    await Promise.all(live.map((l) => l.abort(why, { by: 'close', letGoMs: LET_GO_MS, undoMs: CLOSE_UNDO_MS })));
    // as for every ending: a set that never began prepare (a report-only flow's) did nothing to a
    // VM, and its end by a redeploy is not a failure to report
    return ending
      .filter((l) => l.touched)
      .map((l) => l.endedAs)
      .filter((e): e is SetEnding => e !== undefined);
  }
}

/** The VM with each disk's change-tracking records as the provider lists them now. */
function withRecords(vm: ClassifiedVm, now: ReadonlyMap<string, TrackingRecord[]>): ClassifiedVm {
  return {
    ...vm,
    disks: vm.disks.map((d) => (d.tracking && now.has(d.id) ? { ...d, tracking: { ...d.tracking, records: now.get(d.id)! } } : d)),
  };
}

export type { CopyOptions };
export { StageError };
export type AnyStageSet = EnumeratedSet | ClassifiedSet | PreparedSet | SnapshottedSet | PostSnapshotSet | CopiedSet;
