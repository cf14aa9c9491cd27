// The whole VM, not only its disks: the backup snapshot's own configuration (.vmcx), runtime state
// (.vmrs) and guest state (.vmgs: the vTPM and secure boot state, without which a BitLocker or
// vTPM guest cannot start) travel inside definition.json, each with its sha256, so a restore
// can lay them out again and import the VM (docs/hyperv.md, "Restore"). They are small (no memory
// is in a recovery snapshot); a set of them larger than MAX_BYTES fails the backup instead of
// being left out.
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { HyperVError } from './errors';
import type { FileStamp } from './export';
import type { PowerShellRunner } from './runner';

export const MAX_BYTES = 64 << 20;

export interface VmFile {
  /** the file name on the host (<snapshot id>.vmcx ...) */
  name: string;
  role: 'configuration' | 'runtime-state' | 'guest-state';
  hostPath: string;
  bytes: number;
  sha256: string;
  base64: string;
}

const ROLES: Record<string, VmFile['role']> = { '.vmcx': 'configuration', '.vmrs': 'runtime-state', '.vmgs': 'guest-state' };

export async function embedVmFiles(runner: PowerShellRunner, files: readonly FileStamp[]): Promise<VmFile[]> {
  const total = files.reduce((n, f) => n + Math.max(0, f.length), 0);
  if (total > MAX_BYTES)
    throw new HyperVError(
      'unsupported',
      `the snapshot's configuration and state files hold ${total} bytes, more than the ${MAX_BYTES} kept in definition.json`,
    );
  const out: VmFile[] = [];
  for (const f of files) {
    const role = ROLES[path.win32.extname(f.path).toLowerCase()];
    if (!role) continue;
    const file = await runner.openFile(f.path);
    try {
      const data = await file.read(0, file.size);
      if (data.length !== file.size) throw new HyperVError('inconsistent', `${f.path}: read ${data.length} of ${file.size} bytes`);
      out.push({
        name: path.win32.basename(f.path),
        role,
        hostPath: f.path,
        bytes: data.length,
        sha256: createHash('sha256').update(data).digest('hex'),
        base64: data.toString('base64'),
      });
    } finally {
      await file.close();
    }
  }
  return out;
}

/**
 * Restore step 1 (docs/hyperv.md): write the files a definition.json carries into `dir`, each
 * checked against its sha256. Returns the paths written. Names are plain file names only.
 */
export async function extractVmFiles(definition: unknown, dir: string): Promise<string[]> {
  const files = (definition as { vmFiles?: unknown } | null)?.vmFiles;
  if (!Array.isArray(files) || files.length === 0)
    throw new HyperVError(
      'invalid-argument',
      'definition.json holds no vmFiles (a backup made before they were kept, or not by the Hyper-V provider)',
    );
  // every file is checked before the first is written: a bad set writes nothing
  const checked = (files as Partial<VmFile>[]).map((f) => {
    const name = typeof f.name === 'string' ? f.name : '';
    if (!/^[A-Za-z0-9{}._-]{1,128}$/.test(name) || !/\.(vmcx|vmrs|vmgs)$/i.test(name))
      throw new HyperVError('invalid-argument', `vmFiles: "${name}" is not a configuration, runtime-state or guest-state file name`);
    const data = Buffer.from(typeof f.base64 === 'string' ? f.base64 : '', 'base64');
    const sum = createHash('sha256').update(data).digest('hex');
    if (data.length !== f.bytes || sum !== f.sha256)
      throw new HyperVError('inconsistent', `vmFiles: ${name} does not match its size or sha256`);
    return { name, data };
  });
  const written: string[] = [];
  for (const { name, data } of checked) {
    const target = path.join(dir, name);
    await fs.writeFile(target, data, { flag: 'wx' });
    written.push(target);
  }
  return written;
}
