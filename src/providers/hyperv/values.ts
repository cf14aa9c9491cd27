// Values as Windows PowerShell 5.1's ConvertTo-Json writes them, and the one disk id every
// Hyper-V module agrees on. No I/O, no imports of the rest of the provider.

/** null -> [], one object -> [object], {"value":[...],"Count":n} -> [...] */
export function toArray<T = unknown>(value: unknown): T[] {
  if (value === null || value === undefined) return [];
  if (Array.isArray(value)) return value as T[];
  if (typeof value === 'object') {
    const o = value as Record<string, unknown>;
    if (Array.isArray(o.value) && 'Count' in o && Object.keys(o).length <= 2) return o.value as T[];
  }
  return [value as T];
}

/** "" and null are absent; enums may arrive as numbers when a script forgot .ToString(). */
export function str(value: unknown): string | undefined {
  if (value === null || value === undefined) return undefined;
  if (typeof value === 'string') return value.length > 0 ? value : undefined;
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  if (typeof value === 'object' && typeof (value as { Guid?: unknown }).Guid === 'string') return (value as { Guid: string }).Guid;
  return undefined;
}

export function num(value: unknown): number | undefined {
  if (typeof value === 'number' && Number.isFinite(value)) return value;
  if (typeof value === 'string' && /^-?\d+(\.\d+)?$/.test(value)) return Number(value);
  return undefined;
}

/** ISO 8601 stays; "\/Date(1700000000000)\/" (ConvertTo-Json's DateTime) becomes ISO 8601. */
export function isoDate(value: unknown): string | undefined {
  const s = str(value);
  if (!s) return undefined;
  const m = /^\\?\/Date\((-?\d+)(?:[+-]\d{4})?\)\\?\/$/.exec(s);
  if (m) return new Date(Number(m[1])).toISOString();
  const t = Date.parse(s);
  return Number.isNaN(t) ? undefined : new Date(t).toISOString();
}

export const GUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
export const BACKUP_ID = /^[0-9]{8}T[0-9]{6}Z-[a-z0-9]{6}$/;
/** Our change-tracking records (reference points): vmbackup-<chain>-<backupId>, or the old vmbackup-<backupId>. */
export const RECORD_NAME = /^vmbackup-(?:[0-9a-f]{8}-)?[0-9]{8}T[0-9]{6}Z-[a-z0-9]{6}$/;

export interface RawDrive {
  Name?: unknown;
  Id?: unknown;
  ControllerType?: unknown;
  ControllerNumber?: unknown;
  ControllerLocation?: unknown;
  Path?: unknown;
  DiskNumber?: unknown;
  SupportPersistentReservations?: unknown;
}

export function diskId(d: RawDrive): string {
  const type = str(d.ControllerType) ?? 'Disk';
  return `${type}${num(d.ControllerNumber) ?? 0}:${num(d.ControllerLocation) ?? 0}`.slice(0, 128);
}
