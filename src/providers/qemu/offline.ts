// A VM of the inventory whose QEMU is not running, backed up offline: its images are the point
// in time. From prepare until the view is taken out each image's lock is held (offline-image.ts)
// and, on Proxmox where `qm` exists, the VM's config lock `backup`; the copy reads the images.
// The plan names every lock holder before it exists (journalled), so recovery ends them after a crash.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { excluded } from '../../contract/exclusion';
import type { EnumeratedVm, PointInTimeView } from '../../contract/types';
import { holdImage, isHeld, lockSocket, releaseImages } from '../offline-image';
import { info } from '../qemu-img';
import { proxmoxLock, type InventoryVm } from './inventory';
import { lockForBackup, unlock, type Runner } from './proxmox';

export interface OfflinePlanDisk {
  disk: string;
  index: number;
  file: string;
  format: string;
  virtualSize: number;
  /** the socket of the qemu-nbd process that holds the image's lock; none for a network volume (Proxmox's config lock holds it) */
  lock?: string;
}

export interface OfflinePlan {
  offline: true;
  backupId: string;
  vm: string;
  disks: OfflinePlanDisk[];
  /** Proxmox: the VM id and where its conf is (qm unlock only undoes a lock of kind backup) */
  proxmox?: { id: string; confDir: string };
}

export function isOfflinePlan(view: PointInTimeView): boolean {
  return (view.ref as { offline?: unknown }).offline === true;
}

export function offlinePlanOf(view: PointInTimeView): OfflinePlan {
  const ref = view.ref as unknown as OfflinePlan;
  if (ref.offline !== true || typeof ref.vm !== 'string' || !Array.isArray(ref.disks))
    throw new Error('view.ref: not an offline QEMU plan');
  return ref;
}

/** The enumerated VM: state off, its disks from the inventory, sizes from the images (read with -U: no lock taken at enumerate). */
export async function offlineVm(inv: InventoryVm, o: { qemuImg: string; fleeceDir?: string }): Promise<EnumeratedVm> {
  const disks: EnumeratedVm['disks'] = [];
  for (const d of inv.disks) {
    if (d.hostExcluded !== undefined) {
      disks.push({ id: d.id, node: d.id, file: d.file, format: d.format, driver: '', ...excluded('host-config', d.hostExcluded) });
      continue;
    }
    let driver: string;
    let volumeId: string | undefined;
    if (d.network) {
      // rbd:pool/img, iscsi://...: QEMU's protocol syntax; the volume is not a file here
      driver = /^([a-z+]+?)(\+[a-z]+)?:/.exec(d.file)?.[1] ?? 'network';
    } else {
      const st = await fs.stat(d.file).catch((err: NodeJS.ErrnoException) => {
        throw new Error(`${inv.source}: disk ${d.id}: ${d.file} cannot be read (${err.code ?? err.message})`);
      });
      if (!st.isFile() && !st.isBlockDevice())
        throw new Error(`${inv.source}: disk ${d.id}: ${d.file} is neither a file nor a block device`);
      driver = st.isFile() ? 'file' : 'host_device';
      volumeId = String(st.dev);
    }
    const facts = await info(o.qemuImg, d.file, true).catch((err: Error) => {
      throw new Error(`${inv.source}: disk ${d.id}: qemu-img info ${d.file} failed (${err.message.slice(0, 300)})`);
    });
    if (facts.format !== d.format)
      throw new Error(`${inv.source}: disk ${d.id}: ${d.file} is ${facts.format}, not ${d.format} as the inventory says`);
    disks.push({
      id: d.id,
      node: d.id,
      file: d.file,
      format: d.format,
      driver,
      included: true,
      virtualSize: facts['virtual-size'],
      ...(volumeId !== undefined ? { volumeId } : {}),
    });
  }
  // an offline copy reads the images as they are: no fleecing image is made
  const first = disks.find((x) => x.included && x.file.startsWith('/'))?.file;
  const snapshotDir = o.fleeceDir ?? (first ? path.dirname(first) : path.dirname(inv.source));
  const volume = await fs.stat(snapshotDir).then(
    (s) => String(s.dev),
    () => undefined,
  );
  return {
    id: inv.id,
    name: (inv.name ?? inv.id).slice(0, 256),
    state: 'off',
    agent: { present: false, responding: false, freezeEnabled: false },
    guest: { filesystems: [] },
    disks,
    snapshotLocation: volume ? { path: snapshotDir, volumeId: volume, dedicated: true } : { path: snapshotDir },
  };
}

export function planOffline(vm: EnumeratedVm, inv: InventoryVm, backupId: string, proxmoxConfDir: string): OfflinePlan {
  const disks = vm.disks
    .filter((d) => d.included)
    .map((d, index): OfflinePlanDisk => {
      const own = inv.disks.find((x) => x.id === d.id && x.file === d.file);
      if (!own) throw new Error(`disk ${d.id} (${d.file}) is not a disk the inventory (${inv.source}) names`);
      return {
        disk: d.id,
        index,
        file: own.file,
        format: own.format,
        virtualSize: d.virtualSize ?? 0,
        ...(own.network ? {} : { lock: lockSocket(backupId, vm.id, index) }),
      };
    });
  return {
    offline: true,
    backupId,
    vm: vm.id,
    disks,
    ...(inv.kind === 'proxmox' ? { proxmox: { id: inv.id, confDir: proxmoxConfDir } } : {}),
  };
}

export interface LockTools {
  qemuNbd: string;
  qm?: string;
  run: Runner;
}

/** What this process did to a Proxmox conf (per backup and VM): recovery without it unlocks only a `backup` lock. */
const pveLocks = new Map<string, boolean>();
const key = (p: OfflinePlan) => `${p.backupId}/${p.vm}`;

/** prepare: config lock (Proxmox), then every image's lock. Fails, with the reason, when the VM runs. */
export async function lockOffline(plan: OfflinePlan, t: LockTools): Promise<void> {
  if (plan.proxmox && t.qm) {
    pveLocks.set(key(plan), false);
    const now = await proxmoxLock(plan.proxmox.id, plan.proxmox.confDir);
    if (now) throw new Error(`Proxmox VM ${plan.proxmox.id} is locked (${now}); not backed up now`);
    await lockForBackup(plan.proxmox.id, { qm: t.qm, run: t.run });
    pveLocks.set(key(plan), true);
  }
  const network = plan.disks.filter((d) => d.lock === undefined);
  if (network.length && !(plan.proxmox && t.qm))
    throw new Error(
      `disk ${network.map((d) => d.disk).join(', ')}: a network volume has no image lock, and without Proxmox's qm no config lock keeps the VM from starting on it; not copied offline`,
    );
  for (const d of plan.disks) if (d.lock !== undefined) await holdImage(t.qemuNbd, d.file, d.format, d.lock);
}

const locked = (plan: OfflinePlan) =>
  plan.disks.flatMap((d) => (d.lock !== undefined ? [{ socket: d.lock, file: d.file, disk: d.disk }] : []));

/** snapshot: the locks must still be held (a holder that ended let a QEMU in). */
export async function checkLocked(plan: OfflinePlan): Promise<void> {
  for (const d of locked(plan)) {
    if (!(await isHeld(d.socket, d.file)))
      throw new Error(`disk ${d.disk}: the image lock of ${d.file} is no longer held; not copied offline`);
  }
}

/** Every lock given back, proven: no holder process left, the conf without our lock. Safe to repeat. */
export async function unlockOffline(plan: OfflinePlan, t: LockTools): Promise<void> {
  await releaseImages(locked(plan));
  if (!plan.proxmox || !t.qm) return;
  const now = await proxmoxLock(plan.proxmox.id, plan.proxmox.confDir).catch(() => undefined);
  const ours = pveLocks.has(key(plan)) ? pveLocks.get(key(plan)) : now === 'backup';
  if (ours && now === 'backup') {
    await unlock(plan.proxmox.id, { qm: t.qm, run: t.run });
    const after = await proxmoxLock(plan.proxmox.id, plan.proxmox.confDir);
    if (after === 'backup') throw new Error(`Proxmox VM ${plan.proxmox.id} is still locked (backup) after qm unlock; retried`);
  }
  pveLocks.delete(key(plan));
}
