// One point of a VM's backups, as a restore reads it: the backup folder <root>/<host>/<vm>/<id>,
// its manifest (schema-checked), its definition and, for a saved-state backup, its memory. Found
// by name (never by a path the caller builds), never through a symbolic link, never outside the
// repository root.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { diskEntryOf, lstatOrUndefined, readManifestAt } from '../chain/links';
import type { Manifest, ManifestFile } from '../contract/types';
import { inside, PathRefused } from '../repository/paths';
import { isSafeName } from '../util/ids';
import { RestoreRefused } from './refused';

const BACKUP_ID = /^[0-9]{8}T[0-9]{6}Z-[a-z0-9]{6}$/;
const DEFINITION_MAX_BYTES = 4 * 1024 * 1024;

/** Which backup: its host and VM folder names, and a backup id or 'latest'. */
export interface PointRef {
  host: string;
  vm: string;
  backupId?: string;
}

export interface BackupDisk {
  /** the disk id as the manifest lists it (QEMU drive id, libvirt target dev) */
  id: string;
  /** the top image of the point (an incremental reads its parents through its backing file) */
  file: string;
  virtualSize?: number;
  /** 0 for a full; an incremental's depth in its chain */
  depth: number;
}

export interface BackupPoint {
  dir: string;
  vmDir: string;
  manifest: Manifest;
  disks: BackupDisk[];
  /** definition.json as the copy wrote it (QEMU: commandLine + block; libvirt: domainXml) */
  definition: Record<string, unknown>;
  /** state.vmstate of a saved-state backup */
  savedState?: string;
}

/** The backup ids of a VM folder, oldest first (published backups only: staging folders are not ids). */
export async function backupIds(vmDir: string): Promise<string[]> {
  const names = await fs.readdir(vmDir).catch(() => [] as string[]);
  return names.filter((n) => BACKUP_ID.test(n)).sort();
}

/** Find and read one point; refused (naming the field) when it does not exist or is not a backup. */
export async function openPoint(repositoryRoot: string, ref: PointRef): Promise<BackupPoint> {
  if (!isSafeName(ref.host)) throw new RestoreRefused('host', `${JSON.stringify(ref.host)} is not a host name`);
  if (!isSafeName(ref.vm)) throw new RestoreRefused('vm', `${JSON.stringify(ref.vm)} is not a VM id`);
  let vmDir: string;
  try {
    vmDir = inside(repositoryRoot, 'vm', ref.host, ref.vm);
  } catch (err) {
    if (err instanceof PathRefused) throw new RestoreRefused(err.field, err.message.slice(err.field.length + 2));
    throw err;
  }
  const st = await lstatOrUndefined(vmDir);
  if (!st?.isDirectory()) throw new RestoreRefused('vm', `no backups of VM ${ref.vm} on host ${ref.host} in ${repositoryRoot}`);
  let id = ref.backupId ?? 'latest';
  if (id === 'latest') {
    const ids = await backupIds(vmDir);
    if (!ids.length) throw new RestoreRefused('backupId', `VM ${ref.vm} has no published backup in ${vmDir}`);
    id = ids[ids.length - 1];
  } else if (!BACKUP_ID.test(id)) throw new RestoreRefused('backupId', `${JSON.stringify(id)} is not a backup id (or "latest")`);
  return readPoint(path.join(vmDir, id), 'backupId');
}

/** Read a backup folder given as a path (the command line's form). */
export async function readPoint(dir: string, field = 'backup'): Promise<BackupPoint> {
  const abs = path.resolve(dir);
  const read = await readManifestAt(abs);
  if (!('manifest' in read)) throw new RestoreRefused(field, `${abs}: ${read.error}`);
  const manifest = read.manifest;
  const disks: BackupDisk[] = manifest.files
    .filter((f): f is ManifestFile & { disk: string } => f.kind === 'disk' && typeof f.disk === 'string')
    .map((f) => ({
      id: f.disk,
      file: path.join(abs, f.name),
      depth: f.chain?.depth ?? 0,
      ...(f.virtualSize !== undefined ? { virtualSize: f.virtualSize } : {}),
    }));
  const defEntry = manifest.files.find((f) => f.kind === 'definition');
  let definition: Record<string, unknown> = {};
  if (defEntry) {
    const file = path.join(abs, defEntry.name);
    const dst = await lstatOrUndefined(file);
    if (!dst?.isFile() || dst.size > DEFINITION_MAX_BYTES) throw new RestoreRefused(field, `${file}: not a readable definition`);
    try {
      const parsed = JSON.parse(await fs.readFile(file, 'utf8')) as unknown;
      if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) definition = parsed as Record<string, unknown>;
    } catch (err) {
      throw new RestoreRefused(field, `${file}: not JSON (${(err as Error).message.slice(0, 200)})`);
    }
  }
  const state = manifest.files.find((f) => f.kind === 'saved-state');
  return {
    dir: abs,
    vmDir: path.dirname(abs),
    manifest,
    disks,
    definition,
    ...(state ? { savedState: path.join(abs, state.name) } : {}),
  };
}

/** The point's disks named by `wanted` (all when empty); an unknown id is refused naming `field`. */
export function pickDisks(point: BackupPoint, wanted: readonly string[] | undefined, field = 'disks'): BackupDisk[] {
  if (!wanted || wanted.length === 0) return point.disks;
  const out: BackupDisk[] = [];
  for (const id of wanted) {
    const d = point.disks.find((x) => x.id === id);
    if (!d || !diskEntryOf(point.manifest, id))
      throw new RestoreRefused(
        field,
        `backup ${point.manifest.backupId} holds no disk ${JSON.stringify(id)} (it holds: ${point.disks.map((x) => x.id).join(', ') || 'none'})`,
      );
    out.push(d);
  }
  return out;
}

/** What every restore result says of the point it came from. */
export function pointFacts(point: BackupPoint): { host: string; vm: string; backupId: string; method: string; consistency: string } {
  const m = point.manifest;
  return { host: m.host, vm: m.vm, backupId: m.backupId, method: m.method, consistency: m.consistency };
}
