// QEMU/KVM behind the provider interface: QMP for the VM, the guest agent for the guest,
// qemu-img for the copy. A QMP or QGA socket serves one client at a time and the host's own tools
// need them too (Proxmox's qm and pvestatd connect per command): every QMP use is one short
// exchange (protocol/exchange.ts), a connection never outlives it; agent connections are closed
// when idle.
import { existsSync, promises as fs } from 'node:fs';
import { isSafeName } from '../../util/ids';
import * as net from 'node:net';
import { performance } from 'node:perf_hooks';
import * as path from 'node:path';
import type { ClassifiedVm, EnumeratedVm, PointInTimeView } from '../../contract/types';
import type {
  Enumeration,
  ExportOptions,
  ExportedFile,
  GuardianProviderSpec,
  HostProvider,
  Progress,
  TrackingRecord,
  ViewOptions,
} from '../provider';
import { unreachableVm } from '../../contract/limits';
import { disksFrom, type HostExclusions, type QueryBlockEntry } from './block-graph';
import { DEFAULT_FLEECE_DIR, fleeceLocation, prepareFleeceDir } from './fleece';
import { discoverVms, findQemuPid, readCmdline, type DiscoveredVm } from './discovery';
import { agentFrom, filesystemsFrom, osFrom, type GuestFsInfo, type GuestInfo, type GuestOsInfo } from './guest-facts';
import { exchange, GuestAgentClient, QemuProtocolError, QmpConnectError, QmpError, type QmpClient, type QmpExchange } from './protocol';
import { saveStateToFile } from './saved-state';
import {
  armView,
  leftoverNodes,
  namedNodes,
  planView,
  releaseView,
  removeFleeceFiles,
  switchView,
  type ViewDisk,
  type ViewPlan,
} from './view';
import { addBitmaps, bitmapsByNode, bitmapsOf, removeBitmaps, type TrackedBitmap } from './tracking';
import { compareWithView, copyDisk } from './disk-copy';
import { pullDisk, removeServerSocket, startViewServer, type ViewServer } from './pull';
import { pullIncrementalDisk } from './pull-incremental';
import { pullFullDisk } from './pull-full';
import { compare as compareImages } from '../qemu-img';
import { copyOfflineImage } from '../offline-image';
import { hostExclusions, PROXMOX_CONF_DIR, readInventory, type InventoryKind, type InventoryResult, type InventoryVm } from './inventory';
import { checkLocked, isOfflinePlan, lockOffline, offlinePlanOf, offlineVm, planOffline, unlockOffline, type LockTools } from './offline';
import { defaultRunner, findQm, type Runner } from './proxmox';

/** A bitmap of ours as a change-tracking record of the provider interface. */
const trackingRecord = ({ name, recording, persistent, inconsistent, granularity }: TrackedBitmap): TrackingRecord => ({
  name,
  recording,
  persistent,
  inconsistent,
  granularity,
});

/** The file a disk becomes in the backup (the disk id made safe as a file name). */
export const artifactName = (disk: string) => `disk-${disk.replace(/[^A-Za-z0-9._-]/g, '_')}.qcow2`;

/** The provider's own record inside a view (it made it in planView). */
export function planOf(view: PointInTimeView): ViewPlan {
  const ref = view.ref as unknown as ViewPlan;
  if (!ref || typeof ref.prefix !== 'string' || !Array.isArray(ref.disks)) throw new Error('view.ref: not a QEMU view plan');
  return ref;
}

function diskOf(plan: ViewPlan, disk: string): ViewDisk {
  const d = plan.disks.find((x) => x.disk === disk);
  if (!d) throw new Error(`disk ${disk}: not part of the view of ${plan.vm}`);
  return d;
}

/** Each tracking record of a disk, named by the block node it lives on in the view's plan. */
function bitmapsOnNodes(view: PointInTimeView, disks: readonly { disk: string; name: string }[]): { node: string; name: string }[] {
  const plan = planOf(view);
  return disks.map((t) => ({ node: diskOf(plan, t.disk).node, name: t.name }));
}

export interface QemuOptions {
  /** directory of <id>.qmp / <id>.qga sockets (Proxmox: /var/run/qemu-server) */
  socketDir: string;
  /** where fleecing images go (fleece.ts); default: beside the VM's first disk image file, else DEFAULT_FLEECE_DIR */
  fleeceDir?: string;
  /** how long the guest agent may take to answer guest-sync before it counts as absent */
  agentSyncMs?: number;
  commandMs?: number;
  qemuImg?: string;
  qemuNbd?: string;
  compress?: boolean;
  /** connections unused this long are closed */
  idleCloseMs?: number;
  /** where VMs whose QEMU is not running are defined (inventory.ts); default json: <socketDir>/<id>.vm.json */
  inventory?: InventoryKind;
  /** Proxmox VM configurations (default /etc/pve/qemu-server) */
  proxmoxConfDir?: string;
  pvesm?: string;
  /** qm; default /usr/sbin/qm when it exists (a Proxmox host), else no config lock is taken */
  qm?: string;
  /** for tests: a recorded runner for pvesm and qm (never given to a guardian) */
  runner?: Runner;
}

interface Conn<T> {
  client: T;
  timer?: NodeJS.Timeout;
  inUse: number;
}

export class QemuProvider implements HostProvider {
  readonly kind = 'qemu' as const;
  readonly writerName = 'QEMU QMP writer';
  readonly quiesce = 'agent' as const;
  private readonly vms = new Map<string, DiscoveredVm>();
  private readonly qgaConns = new Map<string, Promise<Conn<GuestAgentClient>>>();
  /** each view's NBD server (pull.ts), by VM and backup: this provider started it and releaseView stops it */
  private readonly viewServers = new Map<string, Promise<ViewServer>>();
  /** the files of each view pulled in-process and checked as written (readback.ts): verifyDisk has nothing left to read */
  private readonly checkedAsWritten = new Map<string, Set<string>>();
  private readonly qemuImgPath: string;
  /** VMs of the inventory whose QEMU was not running at the last enumerate: backed up offline */
  private readonly offline = new Map<string, InventoryVm>();

  constructor(readonly options: QemuOptions) {
    this.qemuImgPath = options.qemuImg ?? 'qemu-img';
  }

  private get commandMs(): number {
    return this.options.commandMs ?? 30_000;
  }

  // ---- connections ----

  /** Known from enumerate, or (recovery after a restart) found by the socket naming alone. */
  private vm(id: string): DiscoveredVm {
    let vm = this.vms.get(id);
    if (!vm) {
      if (!isSafeName(id)) throw new Error(`"${id}" is not a valid VM id`);
      const base = path.join(this.options.socketDir, id);
      vm = { id, qmp: `${base}.qmp`, qga: existsSync(`${base}.qga`) ? `${base}.qga` : undefined, pidFile: `${base}.pid` };
      this.vms.set(id, vm);
    }
    return vm;
  }

  private async pooled<T extends { close(): Promise<void>; isClosed: boolean }, R>(
    pool: Map<string, Promise<Conn<T>>>,
    id: string,
    open: () => Promise<T>,
    fn: (c: T) => Promise<R>,
  ): Promise<R> {
    let entry = pool.get(id);
    if (entry) {
      const conn = await entry.catch(() => undefined);
      if (!conn || conn.client.isClosed) {
        pool.delete(id);
        entry = undefined;
      }
    }
    if (!entry) {
      entry = open().then((client) => ({ client, inUse: 0 }));
      pool.set(id, entry);
      entry.catch(() => pool.delete(id));
    }
    const conn = await entry;
    if (conn.timer) clearTimeout(conn.timer);
    conn.inUse++;
    try {
      return await fn(conn.client);
    } finally {
      conn.inUse--;
      if (conn.timer) clearTimeout(conn.timer);
      conn.timer = undefined;
      // idle from now on: closed after idleCloseMs (never under a call that still runs on it)
      if (conn.inUse === 0) {
        conn.timer = setTimeout(() => {
          pool.delete(id);
          void conn.client.close();
        }, this.options.idleCloseMs ?? 3000);
        conn.timer.unref();
      }
    }
  }

  /** One exchange with the VM's QEMU: a connection of its own, closed at the end of `fn` (never nest one in another). */
  private qmp<R>(id: string, fn: (c: QmpClient) => Promise<R>): Promise<R> {
    return exchange(this.vm(id).qmp, { timeoutMs: this.commandMs }, fn);
  }

  private exchanges(id: string): QmpExchange {
    return (fn) => this.qmp(id, fn);
  }

  private qga<R>(id: string, fn: (c: GuestAgentClient) => Promise<R>): Promise<R> {
    const vm = this.vm(id);
    if (!vm.qga) throw new Error(`VM "${id}" has no guest agent socket (${id}.qga)`);
    return this.pooled(
      this.qgaConns,
      id,
      () => GuestAgentClient.connect(vm.qga!, { timeoutMs: this.commandMs, syncTimeoutMs: this.options.agentSyncMs ?? 3000 }),
      fn,
    );
  }

  // ---- enumerate ----

  async enumerate(): Promise<EnumeratedVm[]> {
    return (await this.enumerateHost()).vms;
  }

  async enumerateHost(): Promise<Enumeration> {
    const found = await discoverVms(this.options.socketDir);
    const badNames: string[] = [];
    const inventory = await readInventory(
      {
        kind: this.options.inventory ?? 'json',
        socketDir: this.options.socketDir,
        run: this.runner,
        ...(this.options.proxmoxConfDir ? { proxmoxConfDir: this.options.proxmoxConfDir } : {}),
        ...(this.options.pvesm ? { pvesm: this.options.pvesm } : {}),
      },
      badNames,
    );
    const out: EnumeratedVm[] = [];
    await Promise.all(
      found.vms.map(async (d) => {
        this.vms.set(d.id, d);
        const inv = inventory.get(d.id);
        inventory.delete(d.id);
        try {
          const vm = await this.enumerateOne(d, inv?.ok ? hostExclusions(inv.vm) : undefined);
          this.offline.delete(d.id);
          // a live QEMU is asked; its inventory entry only gives a name QEMU was not told
          if (inv?.ok && inv.vm.name && vm.name === d.id) vm.name = inv.vm.name.slice(0, 256);
          if (inv && !inv.ok) vm.warnings = [...(vm.warnings ?? []), `inventory: ${inv.reason}`.slice(0, 1024)];
          out.push(vm);
        } catch (err) {
          // A VM whose socket is there but does not answer (QEMU gone, or another client such as
          // libvirtd holding the monitor) is defined but unreachable: listed with the reason, so
          // that classify's policy fails the set or reports it; never dropped without a word.
          this.vms.delete(d.id);
          out.push(await this.notRunning(d.id, inv, `QMP socket ${d.qmp} does not answer (${(err as Error).message})`));
        }
      }),
    );
    // defined in the inventory, no socket at all: not running (or running where we cannot see it)
    await Promise.all(
      [...inventory.entries()].map(async ([id, inv]) =>
        out.push(await this.notRunning(id, inv, `no QMP socket ${id}.qmp in ${this.options.socketDir}`)),
      ),
    );
    out.sort((a, b) => a.id.localeCompare(b.id));
    // host-level notes go with the set, not on a VM: they must reach the user when no VM is listed
    const skipped = [
      ...found.skipped.map((name) => ({ name, reason: `socket ${name} skipped: its name is not a valid VM id` })),
      ...badNames.map((name) => ({
        name,
        reason: `inventory file ${name} skipped: its name is not a valid VM id; that VM is NOT backed up`,
      })),
    ];
    return { vms: out, warnings: skipped.map((s) => s.reason), skipped };
  }

  private get runner(): Runner {
    return this.options.runner ?? defaultRunner;
  }

  /**
   * A VM whose QMP does not answer: shut off (backed up offline from its inventory entry) only when
   * its socket is gone or refuses connections AND no QEMU process names it; else unreachable, why.
   */
  private async notRunning(id: string, inv: InventoryResult | undefined, qmpWhy: string): Promise<EnumeratedVm> {
    const unreachable = (why: string) =>
      unreachableVm(id, why, {
        ...(inv?.ok && inv.vm.name ? { name: inv.vm.name } : {}),
        agent: { present: existsSync(`${path.join(this.options.socketDir, id)}.qga`), responding: false, freezeEnabled: false },
        snapshotLocation: { path: this.options.fleeceDir ?? DEFAULT_FLEECE_DIR },
      });
    if (!inv) return unreachable(qmpWhy);
    if (!inv.ok) return unreachable(`${qmpWhy}; its inventory entry cannot be used: ${inv.reason}`);
    const gone = await this.qemuGone(id);
    const pid = gone ? await findQemuPid(this.vm(id)) : undefined;
    if (!gone || pid !== undefined) {
      return unreachable(
        `${qmpWhy}, but ${pid !== undefined ? `a QEMU process (pid ${pid}) still runs for it` : 'something still listens on its socket'}: not shut off, so not copied offline`,
      );
    }
    try {
      const vm = await offlineVm(inv.vm, {
        qemuImg: this.qemuImgPath,
        ...(this.options.fleeceDir ? { fleeceDir: this.options.fleeceDir } : {}),
      });
      this.offline.set(id, inv.vm);
      return vm;
    } catch (err) {
      return unreachable(`not running, and its disks cannot be read: ${(err as Error).message}`);
    }
  }

  private get lockTools(): Promise<LockTools> {
    const qm = this.options.qm !== undefined ? Promise.resolve(this.options.qm || undefined) : findQm();
    return qm.then((q) => ({ qemuNbd: this.options.qemuNbd ?? 'qemu-nbd', run: this.runner, ...(q ? { qm: q } : {}) }));
  }

  private async enumerateOne(d: DiscoveredVm, hostExcluded?: HostExclusions): Promise<EnumeratedVm> {
    const facts = await this.qmp(d.id, async (c) => {
      const status = await c.execute<{ status: string }>('query-status');
      const name = await c.execute<{ name?: string }>('query-name').catch(() => ({ name: undefined }));
      const block = await c.execute<QueryBlockEntry[]>('query-block');
      const nodes = await namedNodes(c);
      return { status, name, block, nodes, bitmaps: bitmapsOf(nodes) };
    });
    const disks = disksFrom(facts.block, facts.nodes, hostExcluded);
    for (const disk of disks) {
      if (!disk.included) continue;
      const drv = facts.nodes.find((n) => n['node-name'] === disk.node)?.drv;
      disk.tracking = {
        persistent: drv === 'qcow2',
        records: (facts.bitmaps.get(disk.node) ?? []).slice(0, 16).map(trackingRecord),
      };
    }
    const leftovers = leftoverNodes(facts.nodes);
    for (const disk of disks) {
      // the volume of an image file (a block device is a volume itself, a protocol driver's "file" is its URI)
      if (disk.included && disk.file.startsWith('/')) {
        const st = await fs.stat(disk.file).catch(() => undefined);
        if (st?.isFile()) disk.volumeId = String(st.dev);
      }
    }
    const vm: EnumeratedVm = {
      id: d.id,
      name: (facts.name.name ?? d.id).slice(0, 256),
      state: facts.status.status,
      agent: { present: d.qga !== undefined, responding: false, freezeEnabled: false },
      guest: { filesystems: [] },
      disks,
      snapshotLocation: await fleeceLocation(disks, this.options.fleeceDir),
    };
    if (leftovers.length) {
      vm.warnings = [
        `holds block nodes of an earlier backup (${leftovers.slice(0, 8).join(', ')}): the journal's recovery takes them out; not backed up until then`,
      ];
    }
    if (d.qga) {
      try {
        const g = await this.qga(d.id, async (c) => ({
          info: await c.execute<GuestInfo>('guest-info'),
          os: await c.execute<GuestOsInfo>('guest-get-osinfo').catch(() => undefined),
          fs: await c.execute<GuestFsInfo[]>('guest-get-fsinfo').catch(() => [] as GuestFsInfo[]),
        }));
        vm.agent = agentFrom(g.info);
        const os = osFrom(g.os);
        vm.guest = { filesystems: filesystemsFrom(g.fs), ...(os ? { os } : {}) };
      } catch (err) {
        vm.agent = { present: true, responding: false, freezeEnabled: false, error: (err as Error).message.slice(0, 1024) };
      }
    }
    return vm;
  }

  // ---- quiesce ----

  async freeze(vm: ClassifiedVm, timeoutMs: number): Promise<{ frozenFilesystems: number }> {
    const n = await this.qga(vm.id, (c) => c.execute<number>('guest-fsfreeze-freeze', undefined, { timeoutMs }));
    return { frozenFilesystems: n };
  }

  async freezeStatus(vmId: string): Promise<string> {
    return this.qga(vmId, (c) => c.execute<string>('guest-fsfreeze-status', undefined, { timeoutMs: 2000 }));
  }

  async thaw(vmId: string, timeoutMs: number): Promise<number> {
    try {
      return await this.qga(vmId, (c) => c.execute<number>('guest-fsfreeze-thaw', undefined, { timeoutMs }));
    } catch (err) {
      // No QEMU process behind the VM's QMP socket: no guest runs, so nothing is frozen. (A VM
      // started again later boots with its file systems thawed.) Else keep failing: retry.
      if (await this.qemuGone(vmId)) return 0;
      throw err;
    }
  }

  /** True when nothing listens on the VM's QMP socket (QEMU holds it for as long as it runs). */
  private qemuGone(vmId: string): Promise<boolean> {
    const file = this.vm(vmId).qmp;
    return new Promise((resolve) => {
      const c = net.connect(file);
      c.once('connect', () => {
        c.destroy();
        resolve(false);
      });
      c.once('error', (err: NodeJS.ErrnoException) => resolve(err.code === 'ENOENT' || err.code === 'ECONNREFUSED'));
    });
  }

  // ---- saved state ----

  async saveState(vm: ClassifiedVm, file: string): Promise<{ bytes: number; pausedAt?: number; pausedMono?: number }> {
    let pausedAt: number | undefined;
    let pausedMono: number | undefined;
    const { bytes } = await saveStateToFile(this.exchanges(vm.id), file, Math.max(this.commandMs, 600_000), () =>
      this.qmp(vm.id, async (c) => {
        pausedAt = Date.now();
        pausedMono = performance.now();
        const status = (await c.execute<{ status: string }>('query-status')).status;
        if (status === 'running') await c.execute('stop');
      }),
    );
    return { bytes, ...(pausedAt !== undefined ? { pausedAt } : {}), ...(pausedMono !== undefined ? { pausedMono } : {}) };
  }

  async resume(vmId: string, previousState: string): Promise<void> {
    try {
      await this.qmp(vmId, async (c) => {
        const now = await c.execute<{ status: string; running: boolean }>('query-status');
        if (previousState === 'running' && !now.running) await c.execute('cont');
      });
    } catch (err) {
      // QEMU is gone: the VM is not paused by us any more (started again, it boots afresh)
      if (await this.qemuGone(vmId)) return;
      throw err;
    }
  }

  async runState(vmId: string): Promise<string> {
    try {
      return await this.qmp(vmId, async (c) => (await c.execute<{ status: string }>('query-status')).status);
    } catch (err) {
      // a VM of the inventory without a QEMU (no socket that answers, no process): it is off
      if (this.offline.has(vmId) && (await this.qemuGone(vmId)) && (await findQemuPid(this.vm(vmId))) === undefined) return 'off';
      throw err;
    }
  }

  // ---- point-in-time view (see view.ts) ----

  planView(vm: ClassifiedVm, backupId: string): PointInTimeView {
    const inv = this.offline.get(vm.id);
    if (inv && vm.method === 'offline') {
      const off = planOffline(vm, inv, backupId, this.options.proxmoxConfDir ?? PROXMOX_CONF_DIR);
      return {
        disks: off.disks.map((d) => ({ disk: d.disk, artifact: artifactName(d.disk), format: 'qcow2' })),
        ref: off as unknown as Record<string, unknown>,
      };
    }
    const plan = planView(vm, backupId, vm.snapshotLocation.path);
    return {
      disks: plan.disks.map((d) => ({ disk: d.disk, artifact: artifactName(d.disk), format: 'qcow2' })),
      ref: plan as unknown as Record<string, unknown>,
    };
  }

  async armView(vm: ClassifiedVm, view: PointInTimeView): Promise<void> {
    if (isOfflinePlan(view)) {
      // still off now? (a VM started since enumerate is not copied as offline; its lock would also fail)
      if ((await this.runState(vm.id)) !== 'off') throw new Error(`VM ${vm.id} was shut off at enumerate and runs now; not copied offline`);
      await lockOffline(offlinePlanOf(view), await this.lockTools);
      return;
    }
    const plan = planOf(view);
    if (!plan.disks.length) return;
    await prepareFleeceDir(vm.snapshotLocation.path, plan.disks);
    await armView(this.exchanges(vm.id), plan);
  }

  async makeView(vm: ClassifiedVm, view: PointInTimeView, opts: ViewOptions): Promise<{ view: PointInTimeView; pausedMs?: number }> {
    if (isOfflinePlan(view)) {
      await checkLocked(offlinePlanOf(view)); // the images, locked since prepare, are the point in time
      return { view };
    }
    const plan = planOf(view);
    if (!plan.disks.length) return { view };
    const pausedMs = await this.qmp(vm.id, (c) => switchView(c, plan, { pause: !opts.frozen }));
    return { view, ...(pausedMs !== undefined ? { pausedMs } : {}) };
  }

  async releaseView(vmId: string, view: PointInTimeView): Promise<void> {
    if (isOfflinePlan(view)) return unlockOffline(offlinePlanOf(view), await this.lockTools);
    const plan = planOf(view);
    const release = () => releaseView(this.exchanges(vmId), plan);
    await release().catch(async (err: Error) => {
      // QEMU gone: no graph holds our nodes any more (a QEMU started again opens only its own images)
      if (await this.qemuGone(vmId)) return;
      // it answered: what it answered (or a node of ours it still shows) is the failure
      if (!(err instanceof QemuProtocolError) || err instanceof QmpError) throw err;
      // the QEMU it tried was gone, and one answers now (started again meanwhile): asked once more
      if (err instanceof QmpConnectError) return release();
      throw new Error(
        `cannot take the point-in-time view out of ${vmId} now: its QEMU runs but does not answer QMP (${err.message}); retried`,
      );
    });
    // releaseView stopped the view's NBD server with its exports (this process's, or one a
    // process that ended left)
    const server = this.viewServers.get(`${plan.vm}/${plan.backupId}`);
    this.viewServers.delete(`${plan.vm}/${plan.backupId}`);
    this.checkedAsWritten.delete(`${plan.vm}/${plan.backupId}`);
    await removeServerSocket(await server?.catch(() => undefined));
    await removeFleeceFiles(plan);
  }

  readonly tracking = {
    start: (vmId: string, disks: readonly { disk: string; name: string }[], view: PointInTimeView) =>
      isOfflinePlan(view) ? Promise.resolve() : this.qmp(vmId, (c) => addBitmaps(c, bitmapsOnNodes(view, disks))),
    list: (vmId: string, view: PointInTimeView) =>
      this.qmp(vmId, async (c) => {
        const byNode = await bitmapsByNode(c);
        return new Map(planOf(view).disks.map((d) => [d.disk, (byNode.get(d.node) ?? []).slice(0, 16).map(trackingRecord)]));
      }),
    remove: async (vmId: string, disks: readonly { disk: string; name: string }[], view: PointInTimeView) => {
      if (isOfflinePlan(view)) return; // an offline backup starts no record (chain reason 'offline')
      // nothing to remove (a full, once published, has no parent record to drop): QEMU is not asked at all
      if (disks.length === 0) return;
      if (await this.qemuGone(vmId)) return; // a transient record went with QEMU; a persistent one is found at the next enumerate
      await this.qmp(vmId, (c) => removeBitmaps(c, bitmapsOnNodes(view, disks)));
    },
  };

  // ---- copy ----

  async describe(vmId: string): Promise<Record<string, unknown>> {
    const inv = this.offline.get(vmId);
    if (inv && (await this.runState(vmId).catch(() => undefined)) === 'off') {
      // no QEMU to ask: the definition is the inventory's (the JSON entry, or the Proxmox conf)
      return {
        format: 'vm-backup-qemu-definition@1',
        id: vmId,
        status: { status: 'off', running: false },
        commandLine: null,
        inventory: { kind: inv.kind, source: inv.source, definition: inv.definition },
      };
    }
    const d = this.vm(vmId);
    const pid = await findQemuPid(d);
    const facts = await this.qmp(vmId, async (c) => ({
      qemu: c.greeting?.QMP?.version,
      name: await c.execute('query-name').catch(() => undefined),
      status: await c.execute('query-status'),
      cpus: await c.execute('query-cpus-fast').catch(() => undefined),
      memory: await c.execute('query-memory-size-summary').catch(() => undefined),
      block: await c.execute('query-block'),
    }));
    return {
      format: 'vm-backup-qemu-definition@1',
      id: vmId,
      sockets: { qmp: d.qmp, ...(d.qga ? { qga: d.qga } : {}) },
      ...(pid ? { pid, commandLine: await readCmdline(pid) } : { commandLine: null }),
      ...facts,
    };
  }

  async exportDisk(
    view: PointInTimeView,
    disk: string,
    dest: string,
    onProgress?: (p: Progress) => void,
    options: ExportOptions = {},
  ): Promise<ExportedFile> {
    if (isOfflinePlan(view)) return this.exportOffline(view, disk, dest, onProgress, options);
    const plan = planOf(view);
    const d = diskOf(plan, disk);
    const copy = options.copy ?? { mode: 'full' as const };
    const compress = options.compress ?? this.options.compress ?? false;
    let pushReason: string;
    if (copy.mode === 'full') {
      const server = await this.viewServer(plan);
      // in-process where it can be (pull-full.ts), else qemu-img convert reads the same export (pull.ts)
      const inProcess = compress
        ? 'compressed'
        : await pullFullDisk(server, d, {
            dest,
            check: options.verify === true,
            replyTimeoutMs: this.commandMs,
            ...(options.signal ? { signal: options.signal } : {}),
            onProgress: (done, total) => onProgress?.({ done, total }),
          });
      if (typeof inProcess !== 'string') {
        const key = `${plan.vm}/${plan.backupId}`;
        if (inProcess.checked) {
          if (!this.checkedAsWritten.has(key)) this.checkedAsWritten.set(key, new Set());
          this.checkedAsWritten.get(key)!.add(dest);
        }
        // a full reads the whole view (its zeros by QEMU's block status, without reading them)
        return {
          path: dest,
          bytes: inProcess.bytes,
          sha256: inProcess.sha256,
          writtenAs: inProcess.writtenAs,
          format: 'qcow2',
          virtualSize: d.virtualSize,
          bytesRead: d.virtualSize,
          via: 'pull',
        };
      }
      // a failed read of the view: QEMU's own job reads it again and names the error (push, below)
      if (inProcess.startsWith('view-read-failed')) pushReason = inProcess;
      else {
        const pulled = await pullDisk(server, d, dest, {
          qemuImg: this.qemuImgPath,
          compress,
          ...(options.signal ? { signal: options.signal } : {}),
          onProgress: (done, total) => onProgress?.({ done, total }),
        });
        if (typeof pulled !== 'string')
          return { path: dest, bytes: pulled.bytes, format: 'qcow2', virtualSize: d.virtualSize, bytesRead: d.virtualSize, via: 'pull' };
        pushReason = pulled;
      }
    } else if (compress) pushReason = 'compressed';
    else {
      const pulled = await pullIncrementalDisk(this.exchanges(plan.vm), await this.viewServer(plan), d, {
        dest,
        backing: copy.backing,
        since: copy.since,
        replyTimeoutMs: this.commandMs,
        ...(options.signal ? { signal: options.signal } : {}),
        onProgress: (done, total) => onProgress?.({ done, total }),
      });
      if (typeof pulled !== 'string')
        return {
          path: dest,
          bytes: pulled.bytes,
          sha256: pulled.sha256,
          writtenAs: pulled.writtenAs,
          format: 'qcow2',
          virtualSize: d.virtualSize,
          bytesRead: pulled.bytesRead,
          bytesChanged: pulled.bytesChanged,
          via: 'pull',
        };
      pushReason = pulled;
    }
    const r = await copyDisk(this.exchanges(plan.vm), d, dest, {
      qemuImg: this.qemuImgPath,
      qemuNbd: this.options.qemuNbd ?? 'qemu-nbd',
      ...(copy.mode === 'incremental' ? { incremental: { backing: copy.backing, bitmap: copy.since } } : {}),
      compress,
      ...(options.signal ? { signal: options.signal } : {}),
      onProgress: (done, total) => onProgress?.({ done, total }),
    });
    return {
      path: dest,
      bytes: r.bytes,
      format: 'qcow2',
      virtualSize: d.virtualSize,
      bytesRead: r.bytesRead,
      ...(r.bytesChanged !== undefined ? { bytesChanged: r.bytesChanged } : {}),
      via: 'push',
      pushReason,
    };
  }

  /** An offline disk: the image itself, read under its lock; only an image the inventory names. */
  private async exportOffline(
    view: PointInTimeView,
    disk: string,
    dest: string,
    onProgress?: (p: Progress) => void,
    options: ExportOptions = {},
  ): Promise<ExportedFile> {
    const d = this.offlineDisk(view, disk);
    const r = await copyOfflineImage(this.qemuImgPath, d.file, d.format, dest, {
      compress: options.compress ?? this.options.compress ?? false,
      ...(options.signal ? { signal: options.signal } : {}),
      onProgress: (done, total) => onProgress?.({ done, total }),
    });
    return { path: dest, bytes: r.bytes, format: 'qcow2', virtualSize: r.virtualSize, bytesRead: r.virtualSize };
  }

  private offlineDisk(view: PointInTimeView, disk: string) {
    const plan = offlinePlanOf(view);
    const d = plan.disks.find((x) => x.disk === disk);
    if (!d) throw new Error(`disk ${disk}: not part of the view of ${plan.vm}`);
    if (!this.offline.get(plan.vm)?.disks.some((x) => x.file === d.file))
      throw new Error(`disk ${disk}: ${d.file} is not an image the inventory of ${plan.vm} names; refusing to read it`);
    return d;
  }

  /** What a guardian process needs to build its own provider (see src/guardian/guardian.ts). */
  guardianSpec(): GuardianProviderSpec {
    const { runner: _runner, ...options } = this.options;
    return { kind: 'qemu', options: { ...options } };
  }

  /**
   * Read-back check of a full copy: the copy must hold exactly what the view holds. A full pulled
   * in-process under Verify was checked as it was written (readback.ts: each run read back through a
   * reader of its own and compared with the bytes read from the view; the layout once closed):
   * nothing is left to read. Any other (qemu-img convert, push) is compared by qemu-img compare
   * through the view's read-only NBD export. An incremental is checked by qemu-img check and its chain
   * (comparing it would read the whole disk again).
   */
  async verifyDisk(view: PointInTimeView, disk: string, file: string): Promise<void> {
    if (isOfflinePlan(view)) {
      const d = this.offlineDisk(view, disk);
      return compareImages(this.qemuImgPath, d.file, d.format, file, 'qcow2');
    }
    const plan = planOf(view);
    const d = diskOf(plan, disk);
    // a full pulled in-process and checked as it was written (readback.ts): the view is not read again
    if (this.checkedAsWritten.get(`${plan.vm}/${plan.backupId}`)?.delete(file)) return;
    await compareWithView(await this.viewServer(plan), d, file, this.qemuImgPath);
  }

  /**
   * The view's NBD server (pull.ts), started at its first use: one per view, every disk's export on
   * it, read by the copies and the read-back checks. Held until the view is released.
   */
  private viewServer(plan: ViewPlan): Promise<ViewServer> {
    const key = `${plan.vm}/${plan.backupId}`;
    let server = this.viewServers.get(key);
    if (!server) {
      server = startViewServer(this.exchanges(plan.vm), plan);
      this.viewServers.set(key, server);
      // a failed start is not kept: the next use asks again
      server.catch(() => this.viewServers.delete(key));
    }
    return server;
  }

  /**
   * A backup set of these VMs ended: give their agent sockets back now rather than when
   * idleCloseMs passes (each serves one client: the host's tools, another flow, wait for it).
   * (No QMP connection is ever kept: each exchange closes its own.)
   */
  async release(vmIds: readonly string[]): Promise<void> {
    const closing: Promise<void>[] = [];
    for (const pool of [this.qgaConns] as Map<string, Promise<Conn<{ close(): Promise<void> }>>>[]) {
      for (const id of vmIds) {
        const entry = pool.get(id);
        if (!entry) continue;
        closing.push(
          entry.then(
            (conn) => {
              if (conn.inUse > 0 || pool.get(id) !== entry) return; // in use again: its idle timer closes it
              pool.delete(id);
              if (conn.timer) clearTimeout(conn.timer);
              return conn.client.close();
            },
            () => undefined,
          ),
        );
      }
    }
    await Promise.all(closing);
  }

  async releaseAgent(vmId: string): Promise<void> {
    const entry = this.qgaConns.get(vmId);
    if (!entry) return;
    this.qgaConns.delete(vmId);
    const conn = await entry.catch(() => undefined);
    if (conn?.timer) clearTimeout(conn.timer);
    await conn?.client.close();
  }

  async close(): Promise<void> {
    const all = [...this.qgaConns.values()];
    this.qgaConns.clear();
    await Promise.all(
      all.map(async (p) => {
        const conn = await p.catch(() => undefined);
        if (conn?.timer) clearTimeout(conn.timer);
        await conn?.client.close();
      }),
    );
  }
}
