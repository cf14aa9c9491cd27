import { randomBytes } from 'node:crypto';

/** A backup id sorts by time and is safe as a path component: 20261122T101500Z-k3f9a2. */
export function newBackupId(now = new Date()): string {
  const stamp = now
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}Z$/, 'Z');
  const suffix = randomBytes(6)
    .toString('base64')
    .replace(/[^a-z0-9]/gi, '')
    .toLowerCase()
    .padEnd(6, '0')
    .slice(0, 6);
  return `${stamp}-${suffix}`;
}

export const SAFE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** A name that may become one path component: no separators, no "..", no leading dot. */
export function isSafeName(name: unknown): name is string {
  return typeof name === 'string' && SAFE_NAME.test(name) && !name.includes('..');
}

/** A published backup's folder name: its id (see newBackupId). */
export const BACKUP_ID = /^[0-9]{8}T[0-9]{6}Z-[a-z0-9]{6}$/;

/** The moment a backup id names (UTC, to the second), or undefined for a name that is not an id. */
export function backupIdTime(id: string): Date | undefined {
  const m = /^([0-9]{4})([0-9]{2})([0-9]{2})T([0-9]{2})([0-9]{2})([0-9]{2})Z-[a-z0-9]{6}$/.exec(id);
  if (!m) return undefined;
  const t = new Date(Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]));
  return Number.isNaN(t.getTime()) ? undefined : t;
}
