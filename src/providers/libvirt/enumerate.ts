// Every defined domain, running or not, as the backup set's EnumeratedVm: the same shape the
// QEMU provider gives, so the classification rules apply unchanged.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { Disk, EnumeratedVm } from '../../contract/types';
import { isSafeName } from '../../util/ids';
import { unreachableVm } from '../../contract/limits';
import { parseVolumeXml, resolvedVolume } from './disks';
import {
  definitionFrom,
  guestFrom,
  mapState,
  parseDomState,
  parseDomStats,
  parseKeyValues,
  parseNames,
  parseTable,
  type DomainDefinition,
  type DomainStats,
} from './parse';
import { parseXml } from './xml';
import { VirshError, type Virsh } from './virsh';
import { checkpointRecords } from './checkpoints';

/** Where libvirt itself puts a pull-mode backup's scratch files when given none: its QEMU state directory. */
export const DEFAULT_SCRATCH_DIR = '/var/lib/libvirt/qemu';

export interface EnumerateOptions {
  timeoutMs: number;
  /** stat the images (st_dev) for the same-volume rule: only when libvirt runs on this machine */
  localFiles: boolean;
  /** where scratch files go; default: beside each VM's first disk that is a file */
  scratchDir?: string;
}

export interface DomainRef {
  /** what virsh is given: the name when it is a safe id, else the UUID */
  domain: string;
  definition: DomainDefinition;
  state: string;
  reason: string;
}

/** The VM id: the domain name when it is usable as a folder name, else its UUID (always safe). */
export function vmIdFor(name: string, uuid: string): string {
  return isSafeName(name) ? name : uuid;
}

/** Domains asked at once: their calls queue in one virsh session (or, with a one-shot runner, as many processes). */
const DOMAINS_AT_ONCE = 8;

export async function enumerateDomains(
  virsh: Virsh,
  o: EnumerateOptions,
): Promise<{ vms: EnumeratedVm[]; refs: Map<string, DomainRef>; warnings: string[] }> {
  const call = { timeoutMs: o.timeoutMs };
  // the host's lists first: every name; the transient ones (virsh create: such a domain exists
  // only while it runs, libvirt cannot managed-save it); every domain's state and disk sizes
  const [names, transientNames, stats] = await Promise.all([
    virsh.run(['list', '--all', '--name'], call).then(parseNames),
    virsh.run(['list', '--transient', '--name'], call).then(parseNames),
    // one call for the host; without it, domstate and domblkinfo per domain
    virsh.run(['domstats', '--state', '--block'], call).then(parseDomStats, () => undefined),
  ]);
  const transient = new Set(transientNames);
  // a few domains at a time: their queries queue in one virsh process (libvirtd serialises
  // calls on a domain anyway), and a one-shot runner must not start hundreds of processes at once
  const results = await mapLimit(names, DOMAINS_AT_ONCE, (name) =>
    enumerateOne(virsh, name, transient.has(name), stats?.get(name), o).then(
      (r) => ({ name, ...r }),
      (err: unknown) => ({ name, err: err as Error }),
    ),
  );
  const refs = new Map<string, DomainRef>();
  const warnings: string[] = [];
  const vms: EnumeratedVm[] = [];
  for (const r of results) {
    try {
      if ('err' in r) throw r.err;
      if (refs.has(r.vm.id)) throw new Error(`two domains map to the VM id "${r.vm.id}"`);
      refs.set(r.vm.id, r.ref);
      vms.push(r.vm);
    } catch (err) {
      // never dropped in silence: a domain named by a usable id is listed unreachable with why
      // (classify's unreachable policy fails the set or reports it; a summary is never ok about
      // it: a pool that is not started after a reboot leaves its domains' volumes unresolved);
      // one that is not is named in the set's warnings
      const why = `could not be enumerated: ${(err as Error).message.slice(0, 600)}`;
      if (isSafeName(r.name) && !refs.has(r.name) && !vms.some((v) => v.id === r.name)) vms.push(unreachableVm(r.name, why));
      else warnings.push(`domain "${r.name.slice(0, 200)}" ${why}; it is NOT backed up`);
    }
  }
  vms.sort((a, b) => a.id.localeCompare(b.id));
  return { vms, refs, warnings };
}

/** fn over items, at most `limit` at a time; results in the items' order */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < items.length; i = next++) out[i] = await fn(items[i]);
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

async function enumerateOne(
  virsh: Virsh,
  name: string,
  transient: boolean,
  stats: DomainStats | undefined,
  o: EnumerateOptions,
): Promise<{ vm: EnumeratedVm; ref: DomainRef }> {
  const call = { timeoutMs: o.timeoutMs };
  // the live definition when it runs (hot-plugged disks, current sources), else the stored one
  const { state, reason } = stats ?? parseDomState(await virsh.run(['domstate', '--domain', name, '--reason'], call));
  const definition = definitionFrom(await virsh.run(['dumpxml', '--domain', name], call));
  const id = vmIdFor(definition.name || name, definition.uuid);
  if (!isSafeName(id)) throw new Error(`neither its name nor its UUID "${definition.uuid}" is a usable VM id`);
  const domain = id;
  const mapped = mapState(state, reason);
  await resolveVolumes(virsh, definition, call);
  const disks = definition.disks;
  const capacity =
    stats?.capacity ??
    new Map(
      (await virsh.run(['domblkinfo', '--domain', domain, '--all'], call).then(parseTable, () => [])).map((r) => [
        r.Target,
        Number(r.Capacity),
      ]),
    );
  for (const d of disks) {
    const cap = capacity.get(d.id) ?? NaN;
    if (d.included && Number.isSafeInteger(cap) && cap > 0) d.virtualSize = cap;
    // the same-volume rule compares file systems: only a disk that is a file lives on one
    if (d.included && o.localFiles && d.driver === 'file' && d.file.startsWith('/')) {
      const st = await fs.stat(d.file).catch(() => undefined);
      if (st) d.volumeId = String(st.dev);
    }
  }
  if (mapped === 'off') {
    // shut off, each disk is read by qemu-img itself: one it cannot open makes the domain unreachable, with why
    const unreadable = disks.filter((d) => d.included && definition.sources.get(d.id)?.offlineUnreadable);
    if (unreadable.length) {
      const why = unreadable.map((d) => `disk ${d.id} (${d.file}): ${definition.sources.get(d.id)!.offlineUnreadable}`).join('; ');
      const vm = unreachableVm(
        id,
        `shut off, and ${why}: a shut-off domain is copied by qemu-img without libvirt; start it to back it up through libvirt`,
        {
          name: (definition.name || name).slice(0, 256),
        },
      );
      return { vm, ref: { domain, definition, state, reason } };
    }
  }
  if (mapped === 'running' || mapped === 'paused') {
    // change tracking (libvirt checkpoints) needs a running QEMU and a qcow2 image that can hold
    // a bitmap (qcow2 v3: libvirt's own volumes may be v2, "compat 0.10"); any other disk (raw)
    // has none and is copied whole each time. A shut-off domain: reason 'offline'.
    const records = await checkpointRecords(virsh, domain, o.timeoutMs).catch((err: unknown) => {
      if (err instanceof VirshError) return undefined;
      throw err;
    });
    for (const d of disks) {
      if (records && d.included && (await holdsBitmaps(d, o)))
        d.tracking = { persistent: true, records: (records.get(d.id) ?? []).slice(0, 16) };
    }
  }
  // scratch files beside the first disk that is a file (the VM's own storage); a domain with none
  // (block devices, network drives) gets libvirt's own choice for scratch files, its QEMU state
  // directory; the scratchDir setting overrides both. A scratch file is a store of old blocks
  // libvirt makes for the job, never an image the guest runs on: where a disk is not a file on the
  // scratch location's volume (a block device, a network drive; or the setting), the location is
  // one set aside for them (dedicated), and what the classify rule weighs is its free space.
  const firstFile = disks.find((d) => d.included && d.driver === 'file' && d.file.startsWith('/'))?.file;
  const snapshotDir = o.scratchDir ?? (firstFile ? path.dirname(firstFile) : DEFAULT_SCRATCH_DIR);
  const notFiles = disks.some((d) => d.included && d.driver !== 'file');
  const snapshotLocation: EnumeratedVm['snapshotLocation'] = {
    path: snapshotDir,
    ...(o.scratchDir !== undefined || notFiles ? { dedicated: true } : {}),
  };
  if (o.localFiles) {
    const [st, sfs] = await Promise.all([fs.stat(snapshotDir).catch(() => undefined), fs.statfs(snapshotDir).catch(() => undefined)]);
    if (st) snapshotLocation.volumeId = String(st.dev);
    if (sfs) snapshotLocation.freeBytes = sfs.bavail * sfs.bsize;
  }
  const vm: EnumeratedVm = {
    id,
    name: (definition.name || name).slice(0, 256),
    state: mapped,
    agent: { present: definition.agentChannel, responding: false, freezeEnabled: false },
    guest: { filesystems: [] },
    disks,
    snapshotLocation,
    ...(transient ? { savedStateRefused: 'a transient domain (made by virsh create) cannot be managed-saved by libvirt' } : {}),
  };
  if (definition.agentChannel && mapped === 'running') {
    try {
      const kv = parseKeyValues(await virsh.run(['guestinfo', '--domain', domain, '--os', '--filesystem'], call));
      vm.guest = guestFrom(kv);
      // libvirt lists no agent command set without a (tainting) qemu-agent-command call: an agent
      // that answers guestinfo counts as able to freeze, and a freeze it refuses fails prepare
      vm.agent = { present: true, responding: true, freezeEnabled: true };
    } catch (err) {
      if (!(err instanceof VirshError)) throw err;
      vm.agent = { present: true, responding: false, freezeEnabled: false, error: err.detail.slice(0, 1024) };
    }
  }
  return { vm, ref: { domain, definition, state, reason } };
}

/** Each volume disk's pool volume, asked of libvirt (`vol-dumpxml`): its kind, path and format. */
async function resolveVolumes(virsh: Virsh, def: DomainDefinition, call: { timeoutMs: number }): Promise<void> {
  for (const [i, d] of def.disks.entries()) {
    const src = def.sources.get(d.id);
    if (!d.included || src?.type !== 'volume') continue;
    if (!src.pool || !src.volume) throw new Error(`disk ${d.id}: a volume disk names no pool or volume`);
    const xml = await virsh.run(['vol-dumpxml', '--pool', src.pool, src.volume], call).catch((err: unknown) => {
      throw new Error(`disk ${d.id}: volume ${src.volume} of pool ${src.pool} cannot be resolved: ${(err as Error).message}`);
    });
    const r = resolvedVolume({ disk: d, source: src }, parseVolumeXml(parseXml(xml)));
    def.disks[i] = r.disk;
    def.sources.set(d.id, r.source);
  }
}

/**
 * A qcow2 image whose version can hold persistent bitmaps (v3, "compat 1.1"; libvirt's own
 * volumes may be v2, "compat 0.10"); a network one is taken at its word. The version is the
 * header's second field, read here (a qemu-img process per disk was most of a large host's
 * enumerate); a header that is not qcow2's is taken at its word too, as `qemu-img info` failing was.
 */
async function holdsBitmaps(d: Disk, o: EnumerateOptions): Promise<boolean> {
  if (d.format !== 'qcow2') return false;
  if (!d.file.startsWith('/') || !o.localFiles) return true;
  return (await qcow2Version(d.file)) !== 2;
}

/** The version field of a qcow2 header (magic "QFI\xfb", then a big-endian u32), or undefined. */
export async function qcow2Version(file: string): Promise<number | undefined> {
  const fh = await fs.open(file, 'r').catch(() => undefined);
  if (!fh) return undefined;
  try {
    const buf = Buffer.alloc(8);
    const { bytesRead } = await fh.read(buf, 0, 8, 0);
    return bytesRead === 8 && buf.readUInt32BE(0) === 0x514649fb ? buf.readUInt32BE(4) : undefined;
  } catch {
    return undefined;
  } finally {
    await fh.close();
  }
}
