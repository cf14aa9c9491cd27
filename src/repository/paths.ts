// Every path the product writes is built here, and none may leave the repository root.
import * as path from 'node:path';
import { isSafeName } from '../util/ids';

export class PathRefused extends Error {
  constructor(
    readonly field: string,
    detail: string,
  ) {
    super(`${field}: ${detail}`);
    this.name = 'PathRefused';
  }
}

/** Join safe components under root; refuse anything that is not one plain component. */
export function inside(root: string, field: string, ...parts: string[]): string {
  for (const part of parts) {
    if (!isSafeName(part))
      throw new PathRefused(field, `"${String(part).slice(0, 80)}" is not a plain name (letters, digits, . _ -; no separators or "..")`);
  }
  const base = path.resolve(root);
  const full = path.resolve(base, ...parts);
  if (full !== base && !full.startsWith(base + path.sep)) throw new PathRefused(field, `${full} leaves the repository root ${base}`);
  return full;
}

/** A configured directory must be absolute and normalised, so that what is checked is what is used. */
export function checkRoot(dir: unknown, field: string): string {
  if (typeof dir !== 'string' || dir.length === 0) throw new PathRefused(field, 'is required');
  if (!path.isAbsolute(dir)) throw new PathRefused(field, `"${dir}" must be an absolute path`);
  if (dir.includes('\0')) throw new PathRefused(field, 'contains a NUL byte');
  return path.resolve(dir);
}
