// Where a restore may write: only under the roots the user configured (the restore node's
// "restore to" setting, the command's --root), never over an existing file, never through a
// symbolic link that leads out of the root.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { lstatOrUndefined } from '../chain/links';
import { RestoreRefused } from './refused';

/** The configured roots, absolute and normalised; refused naming `field` when one is not. */
export function checkRoots(roots: readonly unknown[], field = 'roots'): string[] {
  const out: string[] = [];
  for (const r of roots) {
    if (typeof r !== 'string' || r.trim() === '') continue;
    const t = r.trim();
    if (!path.isAbsolute(t)) throw new RestoreRefused(field, `"${t.slice(0, 200)}" must be an absolute path`);
    if (t.includes('\0')) throw new RestoreRefused(field, 'contains a NUL byte');
    out.push(path.resolve(t));
  }
  return out;
}

export function isUnder(file: string, root: string): boolean {
  return file === root || file.startsWith(root === '/' ? '/' : root + path.sep);
}

/**
 * A new directory (or file) to create under one of `roots`: absolute, inside a root, not there yet,
 * its parent an existing directory whose real path is still inside that root.
 */
export async function newTarget(target: unknown, roots: readonly string[], field: string): Promise<string> {
  if (typeof target !== 'string' || target === '') throw new RestoreRefused(field, 'is required');
  if (target.includes('\0')) throw new RestoreRefused(field, 'contains a NUL byte');
  if (!path.isAbsolute(target)) throw new RestoreRefused(field, `"${target.slice(0, 200)}" must be an absolute path`);
  const abs = path.resolve(target);
  if (!roots.length) throw new RestoreRefused(field, 'no restore root is configured (nothing may be written)');
  const root = roots.find((r) => isUnder(abs, r) && abs !== r);
  if (!root) throw new RestoreRefused(field, `${abs} is outside the configured restore roots (${roots.join(', ')})`);
  if (await lstatOrUndefined(abs)) throw new RestoreRefused(field, `${abs} exists; a restore never writes over what is there`);
  const parent = path.dirname(abs);
  const pst = await lstatOrUndefined(parent);
  if (!pst?.isDirectory()) throw new RestoreRefused(field, `${parent} is not a directory`);
  const real = await fs.realpath(parent);
  const realRoot = await fs.realpath(root).catch(() => root);
  if (!isUnder(real, realRoot)) throw new RestoreRefused(field, `${parent} leads to ${real}, outside the restore root ${root}`);
  return abs;
}
