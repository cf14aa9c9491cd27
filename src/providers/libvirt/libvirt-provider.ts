// libvirt behind the provider interface, through virsh only (see virsh.ts). What each stage does:
//   prepare   domfsfreeze (online), managedsave (saved state)
//   snapshot  backup-begin in pull mode (backup-job.ts), then the pipeline thaws at once;
//             a saved domain is first restored paused; a shut-off domain needs no job
//   copy      qemu-img reads the NBD export (online) or the image itself (shut off: qemu-img
//             holds the image lock, so `virsh start` fails while it copies); an incremental
//             copies only the extents the export's dirty bitmap marks (incremental-copy.ts)
//   tracking  libvirt checkpoints, made by backup-begin itself (checkpoints.ts)
//   "merge"   domjobabort of our job, proven ended by domjobinfo; nothing to fold back
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ChainPlan, ClassifiedVm, EnumeratedVm, PointInTimeView } from '../../contract/types';
import { isSafeName } from '../../util/ids';
import type { ExportOptions, ExportedFile, GuardianProviderSpec, HostProvider, Progress, ViewOptions } from '../provider';

/** One disk under our backup job: base = what the copy reads (the NBD export, or the image of a shut-off domain), overlay = the scratch file. */
export interface Overlay {
  disk: string;
  base: string;
  baseFormat: string;
  overlay: string;
  overlayNode: string;
  /** the parent's checkpoint the export says the changes since (an incremental view) */
  since?: string;
}

/** Scratch files on the VM's own storage, named from the backup id and the disk's index (journalled before they exist). */
function plannedOverlays(vm: ClassifiedVm, backupId: string): Overlay[] {
  const dir = vm.snapshotLocation.path.replace(/\/+$/, '');
  return vm.disks
    .filter((d) => d.included)
    .map((d, i) => ({
      disk: d.id,
      base: d.file,
      baseFormat: d.format,
      overlay: `${dir}/.vmbackup-${backupId}-${vm.id}-${i}.scratch.qcow2`,
      overlayNode: '',
    }));
}

const overlaysOf = (view: PointInTimeView): Overlay[] => (Array.isArray(view.ref.overlays) ? (view.ref.overlays as Overlay[]) : []);
import * as qemuImg from '../qemu-img';
import { beginBackup, endBackup, jobType, nbdUri, parseNbdUri, type BackupDisk } from './backup-job';
import { checkpointXml, deleteCheckpoint, isCheckpointOf } from './checkpoints';
import { copyChanged } from './incremental-copy';
import { checkScratchSpace, refuseOtherJobs } from './preflight';
import { enumerateDomains, type DomainRef } from './enumerate';
import { definitionFrom, mapState, parseDomState } from './parse';
import { saveDomain } from './saved-state';
import { VirshError, VirshRunner, type Virsh } from './virsh';
import { VirshSession, VirshShell } from './virsh-session';

/** How long libvirt waits for a domain's job lock before "cannot acquire state change lock" (QEMU driver, fixed) */
const LIBVIRT_JOB_WAIT_MS = 30_000;

export interface LibvirtOptions {
  /** libvirt URI; default qemu:///system */
  uri?: string;
  /** private directories for the NBD sockets (default <tmpdir>/vm-backup-libvirt) */
  runDir?: string;
  /** where scratch files go; default beside each VM's first disk (the VM's own storage) */
  scratchDir?: string;
  commandMs?: number;
  qemuImg?: string;
  compress?: boolean;
  /** for tests: a recorded virsh */
  virsh?: Virsh;
}

export class LibvirtProvider implements HostProvider {
  readonly kind = 'libvirt' as const;
  readonly writerName = 'libvirt (virsh backup-begin pull mode)';
  readonly quiesce = 'agent' as const;
  readonly virsh: Virsh;
  readonly runDir: string;
  private readonly refs = new Map<string, DomainRef>();
  /** image files enumerate saw as included disks: the only files an offline copy reads */
  private readonly images = new Set<string>();
  /** per frozen VM: one virsh process from freeze to thaw (see virsh-session.ts) */
  private readonly sessions = new Map<string, VirshSession>();
  /** per VM: the checkpoint tracking.start journalled, made by backup-begin at the moment */
  private readonly checkpoints = new Map<string, { name: string; disks: Set<string> }>();

  constructor(readonly options: LibvirtOptions = {}) {
    this.virsh = options.virsh ?? new VirshRunner(options.uri ?? 'qemu:///system', 'virsh', this.commandMs);
    this.runDir = path.resolve(options.runDir ?? path.join(os.tmpdir(), 'vm-backup-libvirt'));
  }

  private get commandMs(): number {
    return this.options.commandMs ?? 30_000;
  }

  private get qemuImgPath(): string {
    return this.options.qemuImg ?? 'qemu-img';
  }

  /**
   * libvirt on this machine: its image paths and sockets are ours to open. A URI with no host
   * and a local transport (qemu:///system, qemu+unix:///system?socket=...) is; anything else
   * (qemu+ssh://host/system, qemu+tcp://...) names a libvirtd elsewhere.
   */
  private get local(): boolean {
    const m = /^[a-z][a-z0-9]*(?:\+([a-z]+))?:\/\/([^/?]*)\//.exec(this.virsh.uri);
    return !!m && m[2] === '' && (m[1] === undefined || m[1] === 'unix');
  }

  /** the name virsh is given (after a restart: the id itself, a domain name or UUID) */
  private domain(vmId: string): string {
    if (!isSafeName(vmId)) throw new Error(`"${vmId}" is not a valid VM id`);
    return this.refs.get(vmId)?.domain ?? vmId;
  }

  private call(timeoutMs = this.commandMs) {
    return { timeoutMs };
  }

  async enumerate(): Promise<EnumeratedVm[]> {
    // The copy reads libvirt's NBD export (a unix socket libvirtd makes on its own machine), a
    // shut-off domain's image and libvirt's save file by their paths: with a remote libvirtd none
    // of them is on this machine, and a same-named local file would be copied instead. Refused
    // here, at the first node, before any call reaches the host.
    if (!this.local) {
      throw new Error(
        `libvirtUri: "${this.virsh.uri}" names a libvirtd on another machine; the libvirt provider copies through libvirt's NBD socket and image files on the machine Node-RED runs on, so it needs a local URI (qemu:///system): run Node-RED on the libvirt host`,
      );
    }
    // one virsh process for all the queries (a host of 50 domains asked ~170 processes of its own)
    const shell = this.options.virsh ? undefined : new VirshShell(this.virsh);
    const { vms, refs, warnings } = await enumerateDomains(shell ?? this.virsh, {
      timeoutMs: this.commandMs,
      localFiles: this.local,
      ...(this.options.scratchDir ? { scratchDir: this.options.scratchDir } : {}),
    }).finally(() => shell?.close());
    for (const [id, ref] of refs) {
      this.refs.set(id, ref);
      for (const d of ref.definition.disks) if (d.included) this.images.add(d.file);
    }
    if (warnings.length && vms[0]) vms[0].warnings = [...(vms[0].warnings ?? []), ...warnings];
    return vms;
  }

  private async state(vmId: string): Promise<{ state: string; reason: string; mapped: string }> {
    const s = parseDomState(await this.virsh.run(['domstate', '--domain', this.domain(vmId), '--reason'], this.call()));
    return { ...s, mapped: mapState(s.state, s.reason) };
  }

  async runState(vmId: string): Promise<string> {
    return (await this.state(vmId)).mapped;
  }

  // ---- quiesce ----

  async freeze(vm: ClassifiedVm, timeoutMs: number): Promise<{ frozenFilesystems: number }> {
    const args = ['domfsfreeze', '--domain', this.domain(vm.id)];
    const session = this.openSession(vm.id);
    const out = session ? await session.run(args, /Froze \d+/, timeoutMs) : await this.virsh.run(args, this.call(timeoutMs));
    return { frozenFilesystems: Number(/Froze (\d+)/.exec(out)?.[1] ?? 0) };
  }

  /** A virsh session for the frozen window, when this provider drives the real virsh. */
  private openSession(vmId: string): VirshSession | undefined {
    if (this.options.virsh) return undefined;
    this.sessions.get(vmId)?.close();
    const session = new VirshSession(this.virsh.uri);
    this.sessions.set(vmId, session);
    return session;
  }

  /** The VM's open session if it can take a command now; else the one-shot runner is used. */
  private session(vmId: string): VirshSession | undefined {
    const s = this.sessions.get(vmId);
    return s && !s.isClosed && !s.busy ? s : undefined;
  }

  private closeSession(vmId: string): void {
    this.sessions.get(vmId)?.close();
    this.sessions.delete(vmId);
  }

  /**
   * "frozen" or "thawed", from libvirt without a tainting qemu-agent-command: a frozen qemu-ga
   * refuses guest-get-fsinfo ("the agent is in frozen state"), which `guestinfo --filesystem` calls.
   * The pipeline asks it before the thaw: a guest that thawed early is not labelled application-consistent.
   */
  async freezeStatus(vmId: string): Promise<string> {
    try {
      const args = ['guestinfo', '--domain', this.domain(vmId), '--filesystem'];
      const session = this.session(vmId);
      if (session) await session.run(args, /fs\.count/, 5000);
      else await this.virsh.run(args, this.call(5000));
      return 'thawed';
    } catch (err) {
      if (err instanceof VirshError && /frozen state/i.test(err.detail)) return 'frozen';
      throw err;
    }
  }

  async thaw(vmId: string, timeoutMs: number): Promise<number> {
    const args = ['domfsthaw', '--domain', this.domain(vmId)];
    try {
      const session = this.session(vmId);
      // a session that fails (or is busy with a hung freeze) never stands between a guest and its thaw
      const out = session
        ? await session.run(args, /Thawed \d+/, timeoutMs).catch(() => this.virsh.run(args, this.call(timeoutMs)))
        : await this.virsh.run(args, this.call(timeoutMs));
      this.closeSession(vmId);
      return Number(/Thawed (\d+)/.exec(out)?.[1] ?? 0);
    } catch (err) {
      // libvirt says no QEMU runs: no guest, nothing frozen (a later start boots thawed)
      if (err instanceof VirshError && (err.notRunning || err.noDomain)) {
        const now = await this.state(vmId).catch(() => undefined);
        if (!now || (now.mapped !== 'running' && now.mapped !== 'paused')) return 0;
      }
      throw err;
    }
  }

  // ---- saved state ----

  async saveState(vm: ClassifiedVm, file: string): Promise<{ bytes: number; pausedAt?: number }> {
    const name = this.refs.get(vm.id)?.definition.name ?? vm.name;
    // managedsave waits 30 s for a domain another job holds, then fails: refused before it
    await this.refuseOtherJobs(vm);
    return saveDomain(this.virsh, this.domain(vm.id), name, file, Math.max(this.commandMs, 600_000));
  }

  /**
   * Back to `previousState`, asked of libvirt afterwards. A managed-saved domain is started
   * (libvirt restores its saved memory); a paused one resumed. Safe to call twice.
   */
  async resume(vmId: string, previousState: string): Promise<void> {
    const domain = this.domain(vmId);
    if (previousState !== 'running' && previousState !== 'paused') return;
    let now = await this.state(vmId);
    if (now.mapped === 'saved') {
      await this.virsh.run(
        ['start', '--domain', domain, ...(previousState === 'paused' ? ['--paused'] : [])],
        this.call(Math.max(this.commandMs, 120_000)),
      );
      now = await this.state(vmId);
    }
    if (previousState === 'running' && now.mapped === 'paused') {
      await this.virsh.run(['resume', '--domain', domain], this.call());
      now = await this.state(vmId);
    }
    if (now.mapped !== previousState && now.mapped !== 'off') {
      throw new Error(`domain ${domain} is ${now.mapped} (${now.reason}), could not return it to ${previousState}`);
    }
  }

  // ---- point in time: libvirt's backup job in pull mode is the view ----

  planView(vm: ClassifiedVm, backupId: string): PointInTimeView {
    const overlays = plannedOverlays(vm, backupId);
    return {
      disks: overlays.map((o) => ({ disk: o.disk, artifact: `disk-${o.disk.replace(/[^A-Za-z0-9._-]/g, '_')}.qcow2`, format: 'qcow2' })),
      ref: { backupId, overlays },
    };
  }

  async armView(vm: ClassifiedVm): Promise<void> {
    // libvirt makes the scratch files and the job in one call, at the moment; before it (and
    // before the guest is frozen) a domain another job holds is refused with nothing made
    // (saved state: asked before the managed save, and the domain is not running now)
    if (vm.method !== 'offline' && vm.method !== 'saved-state') await this.refuseOtherJobs(vm);
    if (vm.method !== 'offline') await checkScratchSpace(vm);
  }

  private async refuseOtherJobs(vm: ClassifiedVm): Promise<void> {
    const disks = vm.disks.filter((d) => d.included).map((d) => d.id);
    await refuseOtherJobs(this.virsh, this.domain(vm.id), disks, this.commandMs);
  }

  async makeView(vm: ClassifiedVm, view: PointInTimeView, opts: ViewOptions): Promise<{ view: PointInTimeView }> {
    // the chain plan says which disks read changes since which checkpoint: backup-begin needs it now
    const overlays = await this.snapshot(vm, String(view.ref.backupId), opts.chain ?? []);
    return { view: { ...view, ref: { ...view.ref, overlays } } };
  }

  /** End our job and prove it ended (domjobinfo); safe when none runs. */
  async releaseView(vmId: string, view: PointInTimeView): Promise<void> {
    await this.merge(vmId, overlaysOf(view));
  }

  async snapshot(vm: ClassifiedVm, backupId: string, chain: readonly ChainPlan[] = []): Promise<Overlay[]> {
    // scratch files are named as the overlay plan names them: the plan journalled before the
    // freeze then names files that exist exactly while our job runs (recovery looks for them)
    const planned = plannedOverlays(vm, backupId);
    if (planned.length === 0) return [];
    const domain = this.domain(vm.id);
    // An online guest is frozen now: no domstate call here, every virsh call is frozen time.
    // (backup-begin itself refuses a domain that stopped meanwhile.)
    if (vm.method === 'offline') {
      const now = await this.state(vm.id);
      if (now.state !== 'shut off')
        throw new Error(`domain ${domain} was shut off at enumerate and is ${now.state} (${now.reason}) now; not copied as offline`);
      // no QEMU: the images are the point in time; the copy holds their lock while it reads
      return planned.map((o) => ({ ...o, overlayNode: 'offline' }));
    }
    if (vm.method === 'saved-state' && (await this.state(vm.id)).mapped === 'saved') {
      // restored paused: the view is taken before a single guest instruction runs again
      await this.virsh.run(['start', '--domain', domain, '--paused'], this.call(Math.max(this.commandMs, 120_000)));
    }
    await fs.mkdir(this.runDir, { recursive: true, mode: 0o700 });
    const dir = await fs.mkdtemp(path.join(this.runDir, `${backupId.slice(-6)}-`));
    // a bitmap only on the disks that can hold one: a raw disk (or a qcow2 v2 image) is listed
    // checkpoint='no' (libvirt refuses a bitmap on it: "unsupported for storage type raw") and is
    // copied whole every time; with no such disk at all, no checkpoint is made
    this.keepTrackable(vm);
    const included = new Map(planned.map((o) => [o.disk, o]));
    const since = new Map(chain.filter((p) => p.mode === 'incremental' && p.since).map((p) => [p.disk, p.since!]));
    const disks: BackupDisk[] = vm.disks.map((d) =>
      included.has(d.id)
        ? { name: d.id, backup: true, scratch: included.get(d.id)!.overlay, ...(since.has(d.id) ? { incremental: since.get(d.id)! } : {}) }
        : { name: d.id, backup: false },
    );
    // only the checkpoint tracking.start journalled is made (its undo knows its name)
    const cp = this.checkpoints.get(vm.id);
    const cpXml =
      cp && isCheckpointOf(cp.name, backupId)
        ? checkpointXml(
            cp.name,
            vm.disks.map((d) => ({ name: d.id, bitmap: cp.disks.has(d.id) })),
          )
        : undefined;
    let socket: string;
    try {
      const session = this.session(vm.id);
      const via: Virsh = session
        ? { uri: this.virsh.uri, run: (args, call) => session.run(args, /Backup started/, call?.timeoutMs ?? this.commandMs) }
        : this.virsh;
      // past libvirt's own 30 s wait for the domain's job lock: if another job slipped in since
      // armView's check, libvirt's message ("cannot acquire state change lock") is what is reported
      socket = await beginBackup(via, domain, dir, disks, Math.max(this.commandMs, LIBVIRT_JOB_WAIT_MS + 10_000), cpXml);
    } catch (err) {
      await fs.rm(dir, { recursive: true, force: true });
      throw err;
    }
    return planned.map((o) => ({
      ...o,
      base: nbdUri(socket, o.disk),
      baseFormat: 'raw',
      overlayNode: o.disk,
      ...(since.has(o.disk) ? { since: since.get(o.disk)! } : {}),
    }));
  }

  /** The checkpoint to make keeps the disks with change tracking (enumerate: qcow2 v3 of a running domain). */
  private keepTrackable(vm: ClassifiedVm): void {
    const cp = this.checkpoints.get(vm.id);
    if (!cp) return;
    const trackable = [...cp.disks].filter((id) => vm.disks.some((d) => d.id === id && d.included && d.tracking !== undefined));
    if (trackable.length === 0) this.checkpoints.delete(vm.id);
    else this.checkpoints.set(vm.id, { ...cp, disks: new Set(trackable) });
  }

  /** End our backup job (the pull-mode view) and its private directory; safe when none runs. */
  async merge(vmId: string, overlays: Overlay[]): Promise<void> {
    const domain = this.domain(vmId);
    await endBackup(
      this.virsh,
      domain,
      overlays.map((o) => o.overlay),
      this.commandMs,
    );
    for (const o of overlays) {
      const nbd = parseNbdUri(o.base);
      const dir = nbd && path.dirname(nbd.socket);
      if (dir && path.dirname(dir) === this.runDir) await fs.rm(dir, { recursive: true, force: true });
    }
  }

  // ---- copy ----

  async describe(vmId: string): Promise<Record<string, unknown>> {
    const domain = this.domain(vmId);
    const xml = await this.virsh.run(['dumpxml', '--domain', domain, '--inactive'], this.call());
    const def = definitionFrom(xml);
    return {
      format: 'vm-backup-libvirt-definition@1',
      provider: 'libvirt',
      uri: this.virsh.uri,
      id: vmId,
      name: def.name,
      uuid: def.uuid,
      state: await this.runState(vmId).catch(() => 'unknown'),
      // what `virsh define` takes back on restore (disk sources to be pointed at the restored files)
      domainXml: xml,
    };
  }

  async exportDisk(
    view: PointInTimeView,
    disk: string,
    dest: string,
    onProgress?: (p: Progress) => void,
    options: ExportOptions = {},
  ): Promise<ExportedFile> {
    const overlay = overlaysOf(view).find((o) => o.disk === disk);
    if (!overlay) throw new Error(`disk ${disk}: not part of this view`);
    // a shut-off domain's disk is read where it is (a network one may be an nbd+unix URL too)
    const nbd = overlay.overlayNode === 'offline' ? undefined : parseNbdUri(overlay.base);
    if (nbd) {
      if (path.dirname(path.dirname(nbd.socket)) !== this.runDir) {
        throw new Error(
          `overlay.base: ${overlay.base} is not an export of a backup job this provider started (socket outside ${this.runDir})`,
        );
      }
    } else if (!this.images.has(overlay.base)) {
      throw new Error(`overlay.base: ${overlay.base} is not a disk image of a domain enumerated here; refusing to copy it`);
    }
    // the view must have been begun incremental from the very checkpoint the chain reads by
    if (options.copy?.mode === 'incremental' && (!nbd || overlay.since !== options.copy.since)) {
      throw new Error(
        `copy.since: disk ${disk}: the view reads no changes since ${options.copy.since} (${nbd ? `begun ${overlay.since ? `since ${overlay.since}` : 'as a full'}` : 'a shut-off domain has no change tracking'}); copy it as a full`,
      );
    }
    const total = (await qemuImg.info(this.qemuImgPath, overlay.base, !nbd))['virtual-size'];
    if (options.copy?.mode === 'incremental' && nbd) {
      const { bytesChanged } = await copyChanged(dest, {
        qemuImg: this.qemuImgPath,
        socket: nbd.socket,
        exportName: nbd.exportName,
        virtualSize: total,
        backing: options.copy.backing,
        compress: options.compress ?? this.options.compress ?? false,
        ...(options.signal ? { signal: options.signal } : {}),
        onProgress: (done, all) => onProgress?.({ done, total: all }),
      });
      const bytes = (await fs.stat(dest)).size;
      return { path: dest, bytes, format: 'qcow2', virtualSize: total, bytesRead: bytesChanged, bytesChanged };
    }
    await qemuImg.convert(this.qemuImgPath, overlay.base, dest, {
      sourceFormat: overlay.baseFormat,
      compress: options.compress ?? this.options.compress ?? false,
      ...(options.signal ? { signal: options.signal } : {}),
      // never -U: an image of a shut-off domain stays locked against `virsh start` while it is
      // read, and an NBD export has no image lock to share
      forceShare: false,
      onProgress: (f) => onProgress?.({ done: Math.round(f * total), total }),
    });
    const bytes = (await fs.stat(dest)).size;
    return { path: dest, bytes, format: 'qcow2', virtualSize: total };
  }

  async verifyDisk(view: PointInTimeView, disk: string, file: string): Promise<void> {
    const overlay = overlaysOf(view).find((o) => o.disk === disk);
    if (!overlay) throw new Error(`disk ${disk}: not part of this view`);
    await qemuImg.compare(this.qemuImgPath, overlay.base, overlay.baseFormat, file, 'qcow2');
  }

  /**
   * What a guardian process needs to build its own provider (src/guardian/guardian.ts): if
   * Node-RED dies, it thaws (domfsthaw) and ends the job (domjobabort) at once, through virsh.
   */
  guardianSpec(): GuardianProviderSpec | undefined {
    // a provider given a stand-in virsh (tests) cannot be rebuilt in another process
    if (this.options.virsh) return undefined;
    return {
      kind: 'libvirt',
      options: {
        uri: this.virsh.uri,
        runDir: this.runDir,
        commandMs: this.commandMs,
        ...(this.options.scratchDir ? { scratchDir: this.options.scratchDir } : {}),
      },
    };
  }

  /**
   * Change tracking by libvirt checkpoints (checkpoints.ts). start only notes the name: the
   * checkpoint is made by backup-begin at the moment. remove deletes it (a shut-off domain's is
   * left for the next published backup to remove, libvirt cannot delete it then).
   */
  readonly tracking = {
    start: async (vmId: string, disks: readonly { disk: string; name: string }[]): Promise<void> => {
      const name = disks[0]?.name;
      if (!name) return;
      if (disks.some((d) => d.name !== name))
        throw new Error(`tracking: one checkpoint per domain, got ${[...new Set(disks.map((d) => d.name))].join(', ')}`);
      this.checkpoints.set(vmId, { name, disks: new Set(disks.map((d) => d.disk)) });
    },
    remove: async (vmId: string, disks: readonly { disk: string; name: string }[]): Promise<void> => {
      const domain = this.domain(vmId);
      for (const name of new Set(disks.map((d) => d.name))) {
        await deleteCheckpoint(this.virsh, domain, name, this.commandMs).catch((err: unknown) => {
          // a domain that is gone has no checkpoint left to remove
          if (err instanceof VirshError && err.noDomain) return 'absent' as const;
          throw err;
        });
        if (this.checkpoints.get(vmId)?.name === name) this.checkpoints.delete(vmId);
      }
    },
  };

  /** Is a backup job of ours still running on the domain? (libvirt's word, for tests and recovery) */
  async jobOf(vmId: string): Promise<{ type: string; operation?: string }> {
    return jobType(this.virsh, this.domain(vmId), this.commandMs);
  }

  async close(): Promise<void> {
    // one-shot virsh calls end by themselves; a frozen window's session is closed
    for (const id of [...this.sessions.keys()]) this.closeSession(id);
  }
}
