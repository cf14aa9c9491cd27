// The VMs a QEMU host has besides the running ones: where a VM whose QEMU is not running is
// defined. Chosen by the host setting `inventory`:
//   json     <socketDir>/<id>.vm.json, validated (src/contract/inventory.ts); the default, because
//            a plain QEMU host has no record of its VMs of its own, and without such a file
//            nothing changes (only sockets are read, as before)
//   proxmox  /etc/pve/qemu-server/<id>.conf, Proxmox's own record (proxmox.ts)
//   none     sockets only
// A file that cannot be read or is wrong is never a reason to drop the VM: it is listed with the
// reason (file and field), and becomes unreachable if its QEMU does not answer either.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { assertInventory } from '../../contract/validate';
import { isSafeName } from '../../util/ids';
import { parseProxmoxConf, resolveVolume, volumeFormat, type Runner } from './proxmox';

export type InventoryKind = 'none' | 'json' | 'proxmox';
export const INVENTORY_KINDS: readonly InventoryKind[] = ['none', 'json', 'proxmox'];

export interface OfflineDisk {
  id: string;
  /** the image file or block device; for network storage the URI QEMU opens (Proxmox: what `pvesm path` prints) */
  file: string;
  format: string;
  /** a volume that is not a file of this host (rbd, iscsi, ...): no image lock can hold it, Proxmox's config lock does */
  network?: true;
  /** the host's configuration leaves it out (Proxmox backup=0, json "backup": false): why */
  hostExcluded?: string;
}

/** The host's own exclusions of a VM's disks, by every id a running QEMU may show for them (`scsi1`, `drive-scsi1`). */
export function hostExclusions(vm: InventoryVm): Map<string, string> {
  const out = new Map<string, string>();
  for (const d of vm.disks) {
    if (d.hostExcluded === undefined) continue;
    out.set(d.id, d.hostExcluded);
    out.set(`drive-${d.id}`, d.hostExcluded);
  }
  return out;
}

export interface InventoryVm {
  id: string;
  name?: string;
  /** the file the VM is defined in */
  source: string;
  kind: 'json' | 'proxmox';
  disks: OfflineDisk[];
  /** the definition as the file holds it (the backup's definition.json of an offline VM) */
  definition: unknown;
}

export type InventoryResult = { ok: true; vm: InventoryVm } | { ok: false; id: string; source: string; reason: string };

export interface InventoryOptions {
  kind: InventoryKind;
  socketDir: string;
  /** Proxmox: where the VM configurations are (tests point it at fixtures) */
  proxmoxConfDir?: string;
  pvesm?: string;
  run: Runner;
}

export const PROXMOX_CONF_DIR = '/etc/pve/qemu-server';
const MAX_FILE = 256 * 1024;

/** Every VM the inventory defines, by id; the bad ones with why. */
export async function readInventory(o: InventoryOptions, skipped: string[] = []): Promise<Map<string, InventoryResult>> {
  const out = new Map<string, InventoryResult>();
  if (o.kind === 'none') return out;
  const dir = o.kind === 'json' ? o.socketDir : (o.proxmoxConfDir ?? PROXMOX_CONF_DIR);
  const suffix = o.kind === 'json' ? '.vm.json' : '.conf';
  const names = await fs.readdir(dir).catch((err: NodeJS.ErrnoException) => {
    if (o.kind === 'json') throw new Error(`socketDir: cannot read ${dir} (${err.code ?? err.message})`);
    throw new Error(`inventory: cannot read the Proxmox VM configurations in ${dir} (${err.code ?? err.message})`);
  });
  for (const name of names.sort()) {
    if (!name.endsWith(suffix)) continue;
    const id = name.slice(0, -suffix.length);
    if (!isSafeName(id)) {
      skipped.push(path.join(dir, name)); // no VM id can be made of it: a host warning, never silence
      continue;
    }
    const source = path.join(dir, name);
    try {
      const text = await readSmall(source);
      const vm = o.kind === 'json' ? fromJson(id, source, text) : await fromProxmox(id, source, text, o);
      out.set(id, { ok: true, vm });
    } catch (err) {
      out.set(id, { ok: false, id, source, reason: (err as Error).message.slice(0, 900) });
    }
  }
  return out;
}

async function readSmall(file: string): Promise<string> {
  const st = await fs.lstat(file);
  if (!st.isFile()) throw new Error(`${file}: not a regular file`);
  if (st.size > MAX_FILE) throw new Error(`${file}: larger than ${MAX_FILE} bytes`);
  return fs.readFile(file, 'utf8');
}

export function fromJson(id: string, source: string, text: string): InventoryVm {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new Error(`${source}: not JSON (${(err as Error).message.slice(0, 200)})`);
  }
  const entry = assertInventory(doc, source);
  return {
    id,
    source,
    kind: 'json',
    ...(entry.name ? { name: entry.name } : {}),
    disks: entry.disks.map(({ backup, ...d }) => ({ ...d, ...(backup === false ? { hostExcluded: `"backup": false in ${source}` } : {}) })),
    definition: entry,
  };
}

async function fromProxmox(id: string, source: string, text: string, o: InventoryOptions): Promise<InventoryVm> {
  const conf = parseProxmoxConf(text);
  const disks: OfflineDisk[] = [];
  for (const d of conf.disks) {
    if (d.noBackup) {
      // left out by Proxmox's own mark: not resolved, never read
      disks.push({ id: d.id, file: d.volume, format: d.format ?? 'raw', hostExcluded: `backup=0 on ${d.id} in ${source}` });
      continue;
    }
    let file: string;
    try {
      file = await resolveVolume(d.volume, { pvesm: o.pvesm ?? 'pvesm', run: o.run });
    } catch (err) {
      throw new Error(`${source}: ${d.id}: ${(err as Error).message.slice(0, 600)}`);
    }
    // pvesm prints e.g. rbd:pool/vm-100-disk-0:conf=... or iscsi://...: QEMU's own protocol syntax, read as is
    if (!file.startsWith('/')) disks.push({ id: d.id, file, format: d.format ?? 'raw', network: true });
    else if (/(^|\/)\.\.?(\/|$)|\0/.test(file))
      throw new Error(`${source}: ${d.id}: volume path "${file.slice(0, 200)}" has . or .. segments`);
    else disks.push({ id: d.id, file, format: volumeFormat(d, file) });
  }
  return {
    id,
    source,
    kind: 'proxmox',
    ...(conf.name ? { name: conf.name.slice(0, 256) } : {}),
    disks,
    definition: { proxmoxConf: text, lock: conf.lock ?? null },
  };
}

/** The conf's current lock (`lock: backup`), read again now: recovery unlocks only our kind of lock. */
export async function proxmoxLock(id: string, confDir: string): Promise<string | undefined> {
  const text = await readSmall(path.join(confDir, `${id}.conf`));
  return parseProxmoxConf(text).lock;
}
