// Pure functions from what the scripts print (cmdlet properties, as Windows PowerShell 5.1's
// ConvertTo-Json writes them) to the provider-independent backup-set fields. No I/O here.
import { createHash } from 'node:crypto';
import type { Disk, EnumeratedVm } from '../../contract/types';
import { excluded } from '../../contract/exclusion';

/** One disk under a backup checkpoint: base = the read-only parent copied, overlay = the .avhdx the VM writes since, overlayNode = the checkpoint's Id. */
export interface Overlay {
  disk: string;
  base: string;
  baseFormat: string;
  overlay: string;
  overlayNode: string;
}
import { HyperVError } from './errors';
import { BACKUP_ID, diskId, GUID, isoDate, num, str, toArray, type RawDrive } from './values';
export { BACKUP_ID, diskId, GUID, isoDate, num, str, toArray, type RawDrive };
import { configurationVersion, mapHost, MIN_VERSION_APP_AND_RCT, rctRecords, trackingOf, type HostFacts, type RctRecord } from './rct';

// ---------------------------------------------------------------------------------------------
// VM state

/** Microsoft.HyperV.PowerShell.VMState values whose numbers every source agrees on. */
const STATE_NUMBERS: Record<number, string> = {
  1: 'Other',
  2: 'Running',
  3: 'Off',
  4: 'Stopping',
  6: 'Saved',
  9: 'Paused',
  10: 'Starting',
  11: 'Reset',
  32773: 'Saving',
  32776: 'Pausing',
  32777: 'Resuming',
  32779: 'FastSaved',
  32780: 'FastSaving',
};

/** Get-VM State -> the pipeline's words: Running -> running, FastSaved -> fast-saved, PausedCritical -> paused-critical. */
export function mapState(value: unknown): string {
  let s = typeof value === 'number' ? (STATE_NUMBERS[value] ?? 'Other') : (str(value) ?? 'Other');
  if (!/^[A-Za-z]+$/.test(s)) s = 'Other';
  return s
    .replace(/([a-z])([A-Z])/g, '$1-$2')
    .toLowerCase()
    .slice(0, 32);
}

// ---------------------------------------------------------------------------------------------
// Raw shapes printed by the scripts (properties of the cmdlets' output objects)

export interface RawVmState {
  Id?: unknown;
  Name?: unknown;
  State?: unknown;
  Status?: unknown;
  OperationalStatus?: unknown;
  PrimaryOperationalStatus?: unknown;
  SecondaryOperationalStatus?: unknown;
}
export interface RawVm extends RawVmState {
  Generation?: unknown;
  Version?: unknown;
  CheckpointType?: unknown;
  SnapshotFileLocation?: unknown;
  CheckpointFileLocation?: unknown;
  ConfigurationLocation?: unknown;
  Path?: unknown;
  IntegrationServicesVersion?: unknown;
  IsClustered?: unknown;
  OwnerNode?: unknown;
  ReplicationState?: unknown;
}
export interface RawIntegrationService {
  Name?: unknown;
  Id?: unknown;
  Enabled?: unknown;
  PrimaryStatusDescription?: unknown;
  SecondaryStatusDescription?: unknown;
  OperationalStatus?: unknown;
}
export interface RawVhd {
  Path?: unknown;
  VhdFormat?: unknown;
  VhdType?: unknown;
  FileSize?: unknown;
  Size?: unknown;
  ParentPath?: unknown;
  DiskIdentifier?: unknown;
  Error?: unknown;
}
export interface RawCheckpoint {
  Id?: unknown;
  Name?: unknown;
  VMId?: unknown;
  VMName?: unknown;
  SnapshotType?: unknown;
  CreationTime?: unknown;
  ParentCheckpointId?: unknown;
  Path?: unknown;
  HardDrives?: unknown;
}
export interface RawVolume {
  Path?: unknown;
  Root?: unknown;
  UniqueId?: unknown;
  DriveLetter?: unknown;
  FileSystem?: unknown;
  Error?: unknown;
}
export interface RawVmFacts {
  VM?: RawVm;
  IntegrationServices?: unknown;
  HardDrives?: unknown;
  Vhds?: unknown;
  Checkpoints?: unknown;
  KvpIntrinsic?: unknown;
  KvpGuest?: unknown;
  ReferencePoints?: unknown;
  ReferencePointMap?: unknown;
  RctProbes?: unknown;
  Errors?: unknown;
}
export interface RawEnumeration {
  Host?: { ComputerName?: unknown; PSVersion?: unknown; RecoverySnapshots?: unknown; OemCodePage?: unknown; OsVersion?: unknown };
  Vms?: unknown;
  Volumes?: unknown;
}

// ---------------------------------------------------------------------------------------------
// Volumes: which host volume a path is on

const lower = (s: string) => s.toLowerCase();

/** A short, stable id (the schema allows 64 characters) for a volume key. */
function shortId(key: string): string {
  return key.length <= 64 ? key : `sha256:${createHash('sha256').update(key).digest('hex').slice(0, 57)}`;
}

/**
 * Volume of a path: the volume GUID path Get-Volume -FilePath reported (\\?\Volume{...}\), else a
 * key from the path itself: the Cluster Shared Volume folder, the SMB share, or the drive root.
 */
export function volumeIdOf(pathValue: string | undefined, volumes: Map<string, RawVolume>): string | undefined {
  if (!pathValue) return undefined;
  const v = volumes.get(lower(pathValue));
  const unique = str(v?.UniqueId);
  if (unique) return shortId(lower(unique));
  const csv = /^([A-Za-z]:\\ClusterStorage\\[^\\]+)/i.exec(pathValue);
  if (csv) return shortId(`csv:${lower(csv[1]!)}`);
  const unc = /^\\\\([^\\]+)\\([^\\]+)/.exec(pathValue);
  if (unc) return shortId(`smb:\\\\${lower(unc[1]!)}\\${lower(unc[2]!)}`);
  const root = str(v?.Root) ?? /^[A-Za-z]:\\/.exec(pathValue)?.[0];
  return root ? shortId(`root:${lower(root)}`) : undefined;
}

// ---------------------------------------------------------------------------------------------
// Integration services -> agent

/** Component ids (the part after the backslash in VMIntegrationComponent.Id), locale-independent. */
export const INTEGRATION_SERVICE_IDS = {
  vss: '5CED1297-4598-4915-A5FC-AD21BB4D02A4',
  kvp: '2A34B1C2-FD73-4043-8A5B-DD2159BC743F',
  heartbeat: '84EAAE65-2F2E-45F5-9BB5-0E857DC8EB47',
  shutdown: '9F8233AC-BE49-4C79-8EE3-E7E1985B2077',
  timeSync: '2497F4DE-E9FA-4204-80E4-4B75C46419C0',
  guestService: '6C09BB55-D683-4DA0-8931-C9BF705F6480',
} as const;

const VSS_NAMES = ['vss', 'backup (volume shadow copy)', 'backup (volume snapshot)', 'backup (volume checkpoint)'];

export function findVssService(services: RawIntegrationService[]): RawIntegrationService | undefined {
  return (
    services.find((s) => (str(s.Id) ?? '').toUpperCase().endsWith(INTEGRATION_SERVICE_IDS.vss)) ??
    services.find((s) => VSS_NAMES.includes(lower(str(s.Name) ?? '')))
  );
}

export function mapAgent(services: RawIntegrationService[], integrationServicesVersion: string | undefined): EnumeratedVm['agent'] {
  const vss = findVssService(services);
  if (!vss) {
    return {
      present: false,
      responding: false,
      freezeEnabled: false,
      error: 'the VM has no Backup (volume shadow copy) integration service',
    };
  }
  const enabled = vss.Enabled === true;
  const primary = str(vss.PrimaryStatusDescription);
  const secondary = str(vss.SecondaryStatusDescription);
  const opStatus = toArray(vss.OperationalStatus)
    .map((x) => str(x))
    .filter((x): x is string => !!x);
  const ok = opStatus.length > 0 ? lower(opStatus[0]!) === 'ok' : lower(primary ?? '') === 'ok';
  const responding = enabled && ok;
  const agent: EnumeratedVm['agent'] = { present: true, responding, freezeEnabled: enabled };
  if (integrationServicesVersion && integrationServicesVersion !== '0.0') agent.version = integrationServicesVersion.slice(0, 64);
  if (!enabled) {
    agent.error = 'the Backup (volume shadow copy) integration service is disabled for this VM (Enable-VMIntegrationService)';
  } else if (!responding) {
    agent.error =
      `Backup (volume shadow copy) integration service: ${primary ?? opStatus[0] ?? 'no status (guest not running?)'}${secondary ? `; ${secondary}` : ''}`.slice(
        0,
        1024,
      );
  } else if (secondary && lower(secondary) !== 'ok') {
    agent.error = `Backup (volume shadow copy) integration service: ${secondary}`.slice(0, 1024);
  }
  return agent;
}

// ---------------------------------------------------------------------------------------------
// KVP (Msvm_KvpExchangeComponent.GuestIntrinsicExchangeItems / GuestExchangeItems)

function unescapeXml(s: string): string {
  return s.replace(/&(#x[0-9a-fA-F]+|#\d+|lt|gt|quot|apos|amp);/g, (_, e: string) => {
    if (e === 'lt') return '<';
    if (e === 'gt') return '>';
    if (e === 'quot') return '"';
    if (e === 'apos') return "'";
    if (e === 'amp') return '&';
    const code = e.startsWith('#x') ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10);
    return Number.isFinite(code) && code >= 0 && code <= 0x10ffff ? String.fromCodePoint(code) : '';
  });
}

/** Each item is an embedded Msvm_KvpExchangeDataItem instance in CIM-XML; we want Name -> Data. */
export function parseKvpItems(items: unknown): Map<string, string> {
  const out = new Map<string, string>();
  for (const item of toArray(items)) {
    if (typeof item !== 'string') continue;
    const props = new Map<string, string>();
    for (const m of item.matchAll(/<PROPERTY\b([^>]*)>([\s\S]*?)<\/PROPERTY>/g)) {
      const name = /\bNAME="([^"]*)"/.exec(m[1]!)?.[1];
      const value = /<VALUE>([\s\S]*?)<\/VALUE>/.exec(m[2]!)?.[1];
      if (name !== undefined && value !== undefined) props.set(name, unescapeXml(value));
    }
    const key = props.get('Name');
    if (key !== undefined) out.set(key, props.get('Data') ?? '');
  }
  return out;
}

export function mapGuestOs(kvp: Map<string, string>): EnumeratedVm['guest']['os'] | undefined {
  const name = kvp.get('OSName');
  const version = kvp.get('OSVersion');
  if (!name && !version) return undefined;
  const os: NonNullable<EnumeratedVm['guest']['os']> = {};
  const platform = kvp.get('OSPlatformId');
  if (platform === '2' || /^windows/i.test(name ?? '')) os.id = 'windows';
  if (name) os.name = name.slice(0, 256);
  if (version) os.version = version.slice(0, 256);
  return os;
}

/** Key a guest publishes (guest-publish-volumes.ps1) with its mounted volumes. */
export const GUEST_VOLUMES_KEY = 'VmBackupVolumes';

/** "C:|NTFS|0;D:|ReFS|1" -> file systems; undefined when absent or malformed. */
export function parseGuestVolumes(value: string | undefined): EnumeratedVm['guest']['filesystems'] | undefined {
  if (value === undefined || value.trim() === '' || value === 'overflow') return undefined;
  const out: EnumeratedVm['guest']['filesystems'] = [];
  for (const entry of value.split(';')) {
    if (!entry) continue;
    const [mountpoint, type, dynamic, ...rest] = entry.split('|');
    if (!mountpoint || !type || rest.length > 0 || (dynamic !== '0' && dynamic !== '1')) return undefined;
    if (mountpoint.length > 4096 || type.length > 64) return undefined;
    out.push({ mountpoint, type, dynamic: dynamic === '1' });
    if (out.length > 256) return undefined;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Disks

export function isPassThrough(d: RawDrive): boolean {
  const p = str(d.Path) ?? '';
  return num(d.DiskNumber) !== undefined || /^\\\\\.\\PHYSICALDRIVE\d+/i.test(p) || /^Disk \d+ /.test(p);
}

/** vhdx | vhd | vhds from Get-VHD VhdFormat, else from the file name. */
export function vhdFormat(pathValue: string, vhd?: RawVhd): string {
  const f = lower(str(vhd?.VhdFormat) ?? '');
  if (f === 'vhdx' || f === 'vhd') return f;
  if (f === 'vhdset') return 'vhds';
  const ext = /\.([A-Za-z]+)$/.exec(pathValue)?.[1]?.toLowerCase();
  if (ext === 'avhdx') return 'vhdx';
  if (ext === 'avhd') return 'vhd';
  return ext === 'vhd' || ext === 'vhds' ? ext : 'vhdx';
}

export function isDifferencing(pathValue: string, vhd?: RawVhd): boolean {
  return lower(str(vhd?.VhdType) ?? '') === 'differencing' || /\.avhdx?$/i.test(pathValue);
}

/** node: at most 128 characters; a long path keeps its end (the file name). */
function nodeName(p: string): string {
  return p.length <= 128 ? p : `...${p.slice(-125)}`;
}

export function mapDisk(d: RawDrive, vhds: Map<string, RawVhd>, volumes: Map<string, RawVolume>): Disk {
  const id = diskId(d);
  const file = str(d.Path) ?? '';
  if (isPassThrough(d)) {
    const n = num(d.DiskNumber);
    return {
      id,
      node: n !== undefined ? `disk${n}` : nodeName(file || id),
      file: file.slice(0, 4096),
      format: 'raw',
      driver: 'host_device',
      ...excluded(
        'hyperv-pass-through',
        `a pass-through disk${n !== undefined ? ` (host disk ${n})` : ''}: Hyper-V's VSS writer cannot see it; back it up from inside the guest, or name it in the host's exclude setting to mark it as deliberate`,
      ),
    };
  }
  if (!file) {
    return { id, node: id, file: '', format: 'none', driver: 'none', ...excluded('no-medium', 'a removable drive with no medium') };
  }
  const vhd = vhds.get(lower(file));
  const format = vhdFormat(file, vhd);
  const disk: Disk = { id, node: nodeName(file), file: file.slice(0, 4096), format, driver: format, included: true };
  const size = num(vhd?.Size);
  if (size !== undefined && size >= 0) disk.virtualSize = Math.floor(size);
  const volumeId = volumeIdOf(file, volumes);
  if (volumeId) disk.volumeId = volumeId;
  return disk;
}

// ---------------------------------------------------------------------------------------------
// One VM

/** What mapVm gives besides the VM: our change-tracking records, for the provider's copy. */
export interface VmExtras {
  rct: RctRecord[];
  configurationVersion?: number;
  ownerNode?: string;
}

/** Host facts assumed when enumerate.ps1 gave none (an older script): Windows Server 2016+. */
const DEFAULT_HOST: HostFacts = { recoverySnapshots: true };

export function mapVm(
  facts: RawVmFacts,
  volumes: Map<string, RawVolume>,
  host: HostFacts = DEFAULT_HOST,
  extras?: (id: string, e: VmExtras) => void,
): EnumeratedVm {
  const raw = facts.VM ?? {};
  const id = str(raw.Id);
  if (!id || !GUID.test(id)) throw new HyperVError('protocol', `enumerate.ps1: a VM without a GUID Id (${JSON.stringify(raw.Id)})`);
  const name = (str(raw.Name) ?? id).slice(0, 256);
  const warnings: string[] = [];

  const vhds = new Map<string, RawVhd>();
  for (const v of toArray<RawVhd>(facts.Vhds)) {
    const p = str(v.Path);
    if (p) vhds.set(lower(p), v);
    if (p && str(v.Error)) warnings.push(`Get-VHD ${p}: ${str(v.Error)}`);
  }
  const drives = toArray<RawDrive>(facts.HardDrives);
  const disks = drives.map((d) => mapDisk(d, vhds, volumes));
  for (const [i, d] of drives.entries()) {
    // a shared VHDX (persistent reservations) is left out of the snapshot by Hyper-V, like a
    // pass-through disk (IgnoreNonSnapshottableDisks): reported, never silently copied half
    if (d.SupportPersistentReservations === true && disks[i]!.included) {
      Object.assign(disks[i]!, {
        driver: 'shared-vhdx',
        ...excluded('hyperv-shared-vhdx', 'a shared VHDX (persistent reservations): Hyper-V leaves it out of the backup snapshot'),
      });
      warnings.push(
        `disk ${disks[i]!.id} is a shared VHDX (persistent reservations): Hyper-V leaves it out of the backup snapshot like a pass-through disk; back it up from inside the guest cluster`,
      );
    }
  }

  // Hyper-V makes each .avhdx beside its parent disk; SnapshotFileLocation holds the snapshot's
  // configuration only. The view's location is therefore the first included disk's own folder.
  const firstDisk = disks.find((d) => d.included && d.file);
  const snapshotPath = firstDisk
    ? firstDisk.file.replace(/[\\][^\\]*$/, '')
    : (str(raw.SnapshotFileLocation) ?? str(raw.CheckpointFileLocation) ?? '');
  const snapshotLocation: EnumeratedVm['snapshotLocation'] = { path: snapshotPath.slice(0, 4096) };
  const snapVolume = firstDisk?.volumeId ?? volumeIdOf(snapshotPath, volumes);
  if (snapVolume) snapshotLocation.volumeId = snapVolume;

  const kvp = parseKvpItems(facts.KvpIntrinsic);
  const guestKvp = parseKvpItems(facts.KvpGuest);
  const os = mapGuestOs(kvp);
  const published = parseGuestVolumes(guestKvp.get(GUEST_VOLUMES_KEY));
  if (guestKvp.has(GUEST_VOLUMES_KEY) && !published)
    warnings.push(`the guest's ${GUEST_VOLUMES_KEY} KVP value is malformed or too long; ignored`);

  const agent = mapAgent(toArray<RawIntegrationService>(facts.IntegrationServices), str(raw.IntegrationServicesVersion));
  const version = configurationVersion(raw.Version);
  const modern = version === undefined || version >= MIN_VERSION_APP_AND_RCT;
  // Application-consistent snapshots need Windows Server 2016+ and configuration version 6.2+:
  // without either, the guest cannot take part, so the rules choose a crash-consistent method.
  const noAppConsistency = !host.recoverySnapshots
    ? 'this host has no WMI recovery snapshots (Windows Server 2012 R2): no application-consistent backup snapshot; a Standard checkpoint is taken instead'
    : !modern
      ? `configuration version ${str(raw.Version)}: application-consistent (production) snapshots and Resilient Change Tracking need 6.2 or later (Update-VMVersion, with the VM off)`
      : undefined;
  if (noAppConsistency && agent.present) {
    agent.responding = false;
    agent.error = noAppConsistency;
  }
  if (noAppConsistency) warnings.push(noAppConsistency);
  // RCT: VHDX disks of a 6.2+ VM on a 2016+ host
  const rct = host.recoverySnapshots && modern ? rctRecords(drives, facts.ReferencePoints, facts.ReferencePointMap, facts.RctProbes) : [];
  for (const d of disks) {
    if (!d.included || !host.recoverySnapshots || !modern || d.format !== 'vhdx') continue;
    d.tracking = trackingOf(d, rct);
    for (const r of rct) {
      const t = r.disks.get(d.id);
      if (t && !t.valid)
        warnings.push(`disk ${d.id}: change tracking since ${r.name} no longer holds (${t.error}): its next copy is a full`);
    }
  }
  extras?.(id, {
    rct,
    ...(version !== undefined ? { configurationVersion: version } : {}),
    ...(str(raw.OwnerNode) ? { ownerNode: str(raw.OwnerNode)! } : {}),
  });

  for (const d of disks) {
    const vhd = vhds.get(lower(d.file));
    if (d.included && isDifferencing(d.file, vhd)) {
      warnings.push(
        `disk ${d.id} (${d.file}) is a differencing disk: the VM has checkpoints; a backup of this VM is refused until they are merged (Remove-VMCheckpoint)`,
      );
    }
    if (d.format === 'vhds') warnings.push(`disk ${d.id} (${d.file}) is a VHD Set (shared disk): not supported by this provider`);
  }
  for (const cp of toArray<RawCheckpoint>(facts.Checkpoints)) {
    const cpName = str(cp.Name) ?? '';
    if (cpName.startsWith('vmbackup-'))
      warnings.push(`leftover backup checkpoint ${cpName} (${str(cp.Id) ?? '?'}): an earlier backup was interrupted; recovery removes it`);
    else if (lower(str(cp.SnapshotType) ?? '') === 'recovery')
      warnings.push(`Recovery checkpoint ${cpName || str(cp.Id)} (left by a VSS-based backup product?)`);
  }
  const secondary = lower(str(raw.SecondaryOperationalStatus) ?? '');
  if (secondary === 'mergingdisks' || toArray(raw.OperationalStatus).some((s) => lower(str(s) ?? '') === 'mergingdisks')) {
    warnings.push(`Hyper-V is merging this VM's disks (${str(raw.Status) ?? 'Merging disks'}); a checkpoint waits for the merge to end`);
  }
  for (const e of toArray(facts.Errors)) if (str(e)) warnings.push(str(e)!);
  if (agent.present && !published && mapState(raw.State) === 'running') {
    warnings.push(
      `the host cannot see this guest's volumes: run guest-publish-volumes.ps1 in the guest to publish them (KVP ${GUEST_VOLUMES_KEY}); the production checkpoint still fails if the guest cannot quiesce every volume`,
    );
  }

  const vm: EnumeratedVm = {
    id,
    name,
    state: mapState(raw.State),
    agent,
    guest: { filesystems: published ?? [], ...(published ? {} : { filesystemsVisible: false }), ...(os ? { os } : {}) },
    disks,
    snapshotLocation,
  };
  if (warnings.length > 0) vm.warnings = warnings.map((w) => w.slice(0, 1024)).slice(0, 256);
  return vm;
}

export function mapEnumeration(result: unknown, extras?: (id: string, e: VmExtras) => void): EnumeratedVm[] {
  if (!result || typeof result !== 'object') throw new HyperVError('protocol', 'enumerate.ps1: the result is not an object');
  const r = result as RawEnumeration;
  const volumes = new Map<string, RawVolume>();
  for (const v of toArray<RawVolume>(r.Volumes)) {
    const p = str(v.Path);
    if (p) volumes.set(lower(p), v);
  }
  const host = r.Host && 'RecoverySnapshots' in r.Host ? mapHost(result) : DEFAULT_HOST;
  return toArray<RawVmFacts>(r.Vms)
    .filter((f) => f && typeof f === 'object')
    .map((f) => mapVm(f, volumes, host, extras));
}

// ---------------------------------------------------------------------------------------------
// Checkpoint -> overlays

export interface RawCheckpointResult {
  Checkpoint?: RawCheckpoint;
  Before?: unknown;
  After?: unknown;
  AfterVhds?: unknown;
  CheckpointType?: unknown;
  PreviousCheckpointType?: unknown;
  CheckpointTypeRestored?: unknown;
  RestoreError?: unknown;
}

const samePath = (a: string | undefined, b: string | undefined) => !!a && !!b && lower(a) === lower(b);

/**
 * One overlay per included disk: base = the file the disk used before the checkpoint (now the
 * read-only parent, copied by exportDisk), overlay = the .avhdx the VM writes to since, overlayNode =
 * the checkpoint's Id (what merge removes).
 */
export function overlaysFromCheckpoint(includedDiskIds: string[], result: unknown): { overlays: Overlay[]; checkpointId: string } {
  const r = (result ?? {}) as RawCheckpointResult;
  const checkpointId = str(r.Checkpoint?.Id);
  if (!checkpointId || !GUID.test(checkpointId)) throw new HyperVError('protocol', 'checkpoint.ps1: the result has no checkpoint Id');
  const byId = (list: unknown) => new Map(toArray<RawDrive>(list).map((d) => [diskId(d), d] as const));
  const before = byId(r.Before);
  const after = byId(r.After);
  const inCheckpoint = byId(r.Checkpoint?.HardDrives);
  const afterVhds = new Map(toArray<RawVhd>(r.AfterVhds).map((v) => [lower(str(v.Path) ?? ''), v] as const));
  const overlays: Overlay[] = [];
  for (const id of includedDiskIds) {
    const b = str(before.get(id)?.Path);
    const a = str(after.get(id)?.Path);
    if (!b || !a)
      throw new HyperVError(
        'inconsistent',
        `checkpoint: disk ${id} is missing ${!b ? 'before' : 'after'} the checkpoint (was the VM reconfigured?)`,
      );
    if (samePath(a, b))
      throw new HyperVError('inconsistent', `checkpoint: disk ${id} still writes to ${b}: Hyper-V made no differencing disk for it`);
    const cp = str(inCheckpoint.get(id)?.Path);
    if (cp && !samePath(cp, b))
      throw new HyperVError('inconsistent', `checkpoint: disk ${id}: the checkpoint holds ${cp}, but the VM used ${b} before it`);
    const parent = str(afterVhds.get(lower(a))?.ParentPath);
    if (parent && !samePath(parent, b))
      throw new HyperVError('inconsistent', `checkpoint: disk ${id}: the new ${a} has parent ${parent}, not ${b}`);
    overlays.push({ disk: id, base: b, baseFormat: vhdFormat(b), overlay: a, overlayNode: checkpointId });
  }
  return { overlays, checkpointId };
}

/** Names of our checkpoints recorded in overlays that were only planned (the journal's intent). */
export function snapshotNamesIn(overlays: readonly Overlay[]): string[] {
  const names = new Set<string>();
  for (const o of overlays) {
    for (const text of [o.overlay, o.overlayNode]) {
      const m = /vmbackup-([0-9]{8}T[0-9]{6}Z-[a-z0-9]{6})/.exec(text ?? '');
      if (m) names.add(`vmbackup-${m[1]}`);
    }
  }
  return [...names];
}
