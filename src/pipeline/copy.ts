// Copy artifacts: every VM's disks, definition and saved state into its staging directory, a
// schema-checked manifest with the sha256 of every file, then publish all VMs or none.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { assertManifest } from '../contract/validate';
import type { CopyResult, Manifest, ManifestFile, PostSnapshotSet, PostSnapshotVm } from '../contract/types';
import type { HostProvider } from '../providers/provider';
import { fsyncDir, sha256File, writeFileDurable, type ArtifactRepository } from '../repository/repository';
import type { LiveBackup } from './live-backup';
import { limitedSettledOrThrow, StageError } from './stage-error';

export interface CopyProgress {
  vm: string;
  file: string;
  done: number;
  total: number;
  /** over the whole backup set */
  setDone: number;
  setTotal: number;
}

export interface CopyOptions {
  /** VMs copied at once */
  concurrency: number;
  /** qcow2 compression of the copied disks (smaller, slower) */
  compress: boolean;
  onProgress?: (p: CopyProgress) => void;
}

type Staged = { vm: PostSnapshotVm; dir: string; files: ManifestFile[]; startedAt: number };

export async function copyBackupSet(
  provider: HostProvider, repo: ArtifactRepository, live: LiveBackup, set: PostSnapshotSet, options: CopyOptions,
): Promise<(PostSnapshotVm & { copy: CopyResult })[]> {
  const overlaysOf = (vm: PostSnapshotVm) => vm.snapshot.overlays;
  const setTotal = set.vms.reduce((n, vm) => n + overlaysOf(vm).reduce((m, o) => m + (vm.disks.find((d) => d.id === o.disk)?.virtualSize ?? 0), 0), 0);
  const doneByFile = new Map<string, number>();
  const report = (vm: string, file: string, done: number, total: number) => {
    doneByFile.set(`${vm}/${file}`, done);
    let setDone = 0;
    for (const n of doneByFile.values()) setDone += n;
    options.onProgress?.({ vm, file, done, total, setDone, setTotal });
  };

  const staged = await limitedSettledOrThrow(set.vms, options.concurrency, async (vm): Promise<Staged> => {
    const startedAt = Date.now();
    live.assertLive();
    // journalled before the directory exists: a crash right after mkdir still finds it
    live.noteStaging(vm.id, repo.stagingDir(set.host.name, vm.id, set.backupId));
    const dir = await repo.openStaging(set.host.name, vm.id, set.backupId);
    const files: ManifestFile[] = [];

    const definition = await provider.describe(vm.id);
    live.assertLive();
    await writeFileDurable(path.join(dir, 'definition.json'), JSON.stringify(definition, null, 2) + '\n');
    files.push(await describeFile(dir, 'definition.json', 'definition'));

    for (const overlay of overlaysOf(vm)) {
      const disk = vm.disks.find((d) => d.id === overlay.disk);
      const extension = provider.kind === 'hyperv' ? (overlay.baseFormat === 'vhd' ? 'vhd' : 'vhdx') : 'qcow2';
      const name = `disk-${overlay.disk.replace(/[^A-Za-z0-9._-]/g, '_')}.${extension}`;
      live.assertLive();
      // the signal stops qemu-img at once when the set is aborted (watchdog, redeploy)
      const exportOptions: { compress?: boolean } = { compress: options.compress, signal: live.signal } as { compress?: boolean };
      const exported = await provider.exportDisk(overlay, path.join(dir, name), (p) => report(vm.id, name, p.done, p.total), exportOptions);
      await fsyncFile(exported.path);
      // read the copy back and compare it with its source before it is hashed for the manifest
      await verifyExport(provider, overlay, exported.path);
      live.assertLive();
      files.push({
        ...(await describeFile(dir, name, 'disk')),
        disk: overlay.disk,
        ...(exported.format ? { format: exported.format } : {}),
        virtualSize: exported.virtualSize ?? disk?.virtualSize ?? 0,
      });
    }
    if (vm.prepare.action === 'save' && vm.prepare.savedStateFile) {
      files.push(await describeFile(dir, path.basename(vm.prepare.savedStateFile), 'saved-state'));
    }
    return { vm, dir, files, startedAt };
  });

  // Every VM is staged: write the manifests, then publish. A failure before the last rename
  // leaves every earlier backup as it was and publishes nothing of this set that is incomplete.
  const results: (PostSnapshotVm & { copy: CopyResult })[] = [];
  for (const s of staged) {
    const manifest = buildManifest(set, s);
    assertManifest(manifest);
    await writeFileDurable(path.join(s.dir, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
  }
  // Read every staged file back once more and compare with its manifest: what is published is
  // what was verified (a write that went wrong, or anything that changed the file since, is caught).
  for (const s of staged) await verifyStaged(s);
  for (const s of staged) await fsyncDir(s.dir);
  live.assertLive();
  const published: Staged[] = [];
  try {
    for (const s of staged) {
      live.assertLive();
      live.notePublishing(s.vm.id, s.dir);
      const final = await repo.publish(set.host.name, s.vm.id, set.backupId);
      published.push(s);
      live.notePublished(s.vm.id);
      const bytes = s.files.reduce((n, f) => n + f.bytes, 0);
      results.push({
        ...s.vm,
        copy: { path: path.relative(repo.root, final), bytes, files: s.files.length + 1, merged: false, ms: Date.now() - s.startedAt },
      });
    }
  } catch (err) {
    // all or none: take back what this set already published, so that it is discarded with the rest
    for (const s of published) {
      await fs.rename(repo.finalDir(set.host.name, s.vm.id, set.backupId), s.dir).catch(() => undefined);
      live.noteStaging(s.vm.id, s.dir, true);
    }
    throw err;
  }
  return results;
}

/** The provider's own check that the written copy holds what the source holds (QEMU: qemu-img compare). */
async function verifyExport(provider: HostProvider, overlay: PostSnapshotVm['snapshot']['overlays'][number], file: string): Promise<void> {
  const verify = (provider as Partial<{ verifyDisk(o: typeof overlay, f: string): Promise<void> }>).verifyDisk;
  if (verify) await verify.call(provider, overlay, file);
}

async function verifyStaged(s: Staged): Promise<void> {
  for (const f of s.files) {
    const sha256 = await sha256File(path.join(s.dir, f.name)).catch((err: Error) => `unreadable (${err.message})`);
    if (sha256 !== f.sha256) {
      throw new StageError(`${s.vm.id}/${f.name}: read back before publishing, sha256 ${sha256} differs from the manifest's ${f.sha256}; not published`);
    }
  }
}

async function describeFile(dir: string, name: string, kind: ManifestFile['kind']): Promise<ManifestFile> {
  const file = path.join(dir, name);
  const [stat, sha256] = await Promise.all([fs.stat(file), sha256File(file)]);
  return { name, kind, bytes: stat.size, sha256 };
}

async function fsyncFile(file: string): Promise<void> {
  const handle = await fs.open(file, 'r+');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function buildManifest(set: PostSnapshotSet, s: Staged): Manifest {
  const vm = s.vm;
  const timings: Record<string, number> = {};
  for (const [stage, t] of Object.entries(set.timings)) if (t) timings[`${stage}Ms`] = t.ms;
  timings.copyMs = Date.now() - s.startedAt;
  return {
    format: 'vm-backup-manifest@1',
    backupId: set.backupId,
    host: set.host.name,
    provider: set.host.provider,
    vm: vm.id,
    vmName: vm.name,
    method: vm.method,
    consistency: vm.consistency,
    reasons: vm.reasons,
    excludedDisks: vm.disks.filter((d) => !d.included).map((d) => ({ id: d.id, file: d.file, driver: d.driver, reason: d.excludedReason ?? 'excluded' })),
    warnings: vm.warnings,
    files: s.files,
    totalBytes: s.files.reduce((n, f) => n + f.bytes, 0),
    timings,
    ...(vm.snapshot.frozenMs !== undefined ? { frozenMs: vm.snapshot.frozenMs } : {}),
    ...(vm.postSnapshot.downtimeMs !== undefined ? { downtimeMs: vm.postSnapshot.downtimeMs } : {}),
    createdAt: set.createdAt,
    completedAt: new Date().toISOString(),
  };
}
