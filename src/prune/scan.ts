// What a VM's folder holds, as the prune sees it: its published backups (folders named by a backup
// id, with a schema-valid manifest describing exactly that folder), those it cannot read (left
// alone and reported), and any backup of the VM being written right now (a staging folder whose
// writer is alive, see repository/staging-owner.ts). Nothing is followed through a symbolic link.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { readManifestAt } from '../chain/links';
import type { Manifest } from '../contract/types';
import { STAGING_PREFIX } from '../repository/repository';
import { isProtected } from '../repository/sidecars';
import { ownerGone, readOwner } from '../repository/staging-owner';
import { BACKUP_ID, backupIdTime } from '../util/ids';

export interface ScannedBackup {
  id: string;
  dir: string;
  time: Date;
  manifest: Manifest;
  protected: boolean;
}

export interface VmScan {
  vmDir: string;
  backups: ScannedBackup[];
  /** backup folders that cannot be read: never removed or rewritten, named in the report */
  unreadable: { id: string; dir: string; error: string }[];
  /** staging folders whose writer is alive: a backup of this VM is running */
  running: { dir: string; why: string }[];
  /** staging folders left by a writer that is gone (recovery removes them) */
  leftovers: string[];
}

export async function scanVm(vmDir: string, host: string, vm: string): Promise<VmScan> {
  const scan: VmScan = { vmDir, backups: [], unreadable: [], running: [], leftovers: [] };
  let entries: import('node:fs').Dirent[];
  try {
    entries = await fs.readdir(vmDir, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return scan;
    throw err;
  }
  for (const e of entries.sort((a, b) => (a.name < b.name ? -1 : 1))) {
    const dir = path.join(vmDir, e.name);
    if (e.name.startsWith(STAGING_PREFIX) && e.isDirectory()) {
      const gone = ownerGone(await readOwner(dir));
      if (gone.gone) scan.leftovers.push(dir);
      else scan.running.push({ dir, why: gone.why });
      continue;
    }
    if (!BACKUP_ID.test(e.name)) continue; // not ours: never touched
    if (!e.isDirectory()) {
      scan.unreadable.push({ id: e.name, dir, error: e.isSymbolicLink() ? 'is a symbolic link (not followed)' : 'is not a directory' });
      continue;
    }
    const read = await readManifestAt(dir);
    if (!('manifest' in read)) {
      scan.unreadable.push({ id: e.name, dir, error: read.error });
      continue;
    }
    const m = read.manifest;
    if (m.backupId !== e.name || m.vm !== vm || m.host !== host) {
      scan.unreadable.push({ id: e.name, dir, error: `its manifest describes ${m.host}/${m.vm}/${m.backupId}` });
      continue;
    }
    scan.backups.push({ id: e.name, dir, time: backupIdTime(e.name)!, manifest: m, protected: await isProtected(dir) });
  }
  return scan;
}
