// What enumerate.ps1 says of the host and of each VM's Resilient Change Tracking, mapped onto the
// provider-independent facts: which disks can be tracked, our records (reference points named by
// our map, since Hyper-V gives them only an InstanceID), and whether each is still valid. Pure.
import type { Disk } from '../../contract/types';
import { HyperVError } from './errors';
import { diskId, RECORD_NAME, str, toArray, type RawDrive } from './values';
import type { Range } from './vhdx';

/** Host facts that decide how a backup is taken. */
export interface HostFacts {
  computerName?: string;
  osVersion?: string;
  /** Windows Server 2016+: Msvm_VirtualSystemSnapshotSettingData exists (recovery snapshots, RCT) */
  recoverySnapshots: boolean;
  /** the OEM code page powershell.exe writes its own errors in (stderr before our script runs) */
  oemCodePage?: number;
}

export function mapHost(result: unknown): HostFacts {
  const h = ((result ?? {}) as { Host?: Record<string, unknown> }).Host ?? {};
  const cp = typeof h.OemCodePage === 'number' && Number.isInteger(h.OemCodePage) && h.OemCodePage > 0 ? h.OemCodePage : undefined;
  const facts: HostFacts = { recoverySnapshots: h.RecoverySnapshots === true };
  if (str(h.ComputerName)) facts.computerName = str(h.ComputerName)!;
  if (str(h.OsVersion)) facts.osVersion = str(h.OsVersion)!;
  if (cp !== undefined) facts.oemCodePage = cp;
  return facts;
}

/** "6.2", "9.0", "5.0" -> comparable number (6.2 -> 6.2); undefined when unreadable. */
export function configurationVersion(value: unknown): number | undefined {
  const m = /^(\d+)\.(\d+)$/.exec(str(value) ?? '');
  return m ? Number(m[1]) + Number(m[2]) / 100 : undefined;
}

/**
 * Production (application-consistent) snapshots and RCT both need configuration version 6.2
 * ("Upgrade virtual machine version in Hyper-V": Production Checkpoints 6.2; RCT 6.2 per the
 * backup vendors' documentation).
 */
export const MIN_VERSION_APP_AND_RCT = 6.02;

export interface RawReferencePoint {
  InstanceID?: unknown;
  ReferencePointType?: unknown;
  ConsistencyLevel?: unknown;
  VirtualDiskIdentifiers?: unknown;
  ResilientChangeTrackingIdentifiers?: unknown;
}
export interface RawMapEntry {
  Name?: unknown;
  InstanceID?: unknown;
  CreatedAt?: unknown;
  Host?: unknown;
}
export interface RawProbe {
  Name?: unknown;
  VirtualDiskIdentifier?: unknown;
  Valid?: unknown;
  Error?: unknown;
}

/** One of our records: its reference point and, per disk id, its RCT id and whether it still holds. */
export interface RctRecord {
  name: string;
  instanceId: string;
  disks: Map<string, { rctId: string; valid: boolean; error?: string }>;
}

/** Drive identity without its last segment: the drive (\D) and its virtual disk (\L) share the rest. */
const stem = (id: string) => id.replace(/\\[A-Z]$/, '').toLowerCase();

/**
 * Our records of one VM: map entries whose reference point still exists, each with the RCT id of
 * every disk it covers (VirtualDiskIdentifiers[i] <-> ResilientChangeTrackingIdentifiers[i]).
 */
export function rctRecords(drives: readonly RawDrive[], refPoints: unknown, map: unknown, probes: unknown): RctRecord[] {
  const points = toArray<RawReferencePoint>(refPoints);
  const probeList = toArray<RawProbe>(probes);
  const out: RctRecord[] = [];
  for (const e of toArray<RawMapEntry>(map)) {
    const name = str(e.Name);
    const instanceId = str(e.InstanceID);
    if (!name || !RECORD_NAME.test(name) || !instanceId) continue;
    const rp = points.find((p) => str(p.InstanceID) === instanceId);
    if (!rp) continue;
    const vds = toArray(rp.VirtualDiskIdentifiers).map((v) => str(v) ?? '');
    const rcts = toArray(rp.ResilientChangeTrackingIdentifiers).map((v) => str(v) ?? '');
    const disks = new Map<string, { rctId: string; valid: boolean; error?: string }>();
    vds.forEach((vd, i) => {
      const drive = drives.find((d) => str(d.Id) && stem(str(d.Id)!) === stem(vd));
      const rctId = rcts[i];
      if (!drive || !rctId) return;
      const probe = probeList.find((p) => str(p.Name) === name && stem(str(p.VirtualDiskIdentifier) ?? '') === stem(vd));
      const valid = probe?.Valid === true;
      disks.set(diskId(drive), { rctId, valid, ...(valid ? {} : { error: str(probe?.Error) ?? 'not checked' }) });
    });
    out.push({ name, instanceId, disks });
  }
  return out;
}

/** The disk's change tracking as the pipeline reads it (disk.tracking). */
export function trackingOf(disk: Disk, records: readonly RctRecord[]): NonNullable<Disk['tracking']> {
  return {
    persistent: true,
    records: records
      .filter((r) => r.disks.has(disk.id))
      .slice(0, 16)
      .map((r) => {
        const d = r.disks.get(disk.id)!;
        // granularity: GetVirtualDiskChanges does not say; 0 = unknown (ranges are exact byte ranges)
        return { name: r.name, recording: d.valid, persistent: true, inconsistent: !d.valid, granularity: 0 };
      }),
  };
}

/** GetVirtualDiskChanges' answer as ranges (rct-changes.ps1). */
export function changedRanges(result: unknown, what: string): Range[] {
  const r = (result ?? {}) as { ChangedByteOffsets?: unknown; ChangedByteLengths?: unknown };
  const offsets = toArray(r.ChangedByteOffsets);
  const lengths = toArray(r.ChangedByteLengths);
  if (offsets.length !== lengths.length)
    throw new HyperVError('protocol', `${what}: ${offsets.length} changed offsets but ${lengths.length} lengths`);
  return offsets.map((o, i) => {
    const offset = typeof o === 'number' ? o : NaN;
    const length = typeof lengths[i] === 'number' ? (lengths[i] as number) : NaN;
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length))
      throw new HyperVError('protocol', `${what}: changed range ${String(o)}+${String(lengths[i])} is not a pair of whole numbers`);
    return { offset, length };
  });
}
