// Copy artifacts: every VM's disks, definition and saved state into its staging directory, a
// schema-checked manifest with the sha256 of every file, then publish all VMs or none.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { assertManifest } from '../contract/validate';
import type { CopyResult, Manifest, ManifestFile, PostSnapshotSet, PostSnapshotVm } from '../contract/types';
import type { HostProvider } from '../providers/provider';
import { sha256File, writeFileDurable, type ArtifactRepository } from '../repository/repository';
import type { LiveBackup } from './live-backup';
import { limitedSettledOrThrow } from './stage-error';

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
    const dir = await repo.openStaging(set.host.name, vm.id, set.backupId);
    live.noteStaging(vm.id, dir);
    const files: ManifestFile[] = [];

    const definition = await provider.describe(vm.id);
    await writeFileDurable(path.join(dir, 'definition.json'), JSON.stringify(definition, null, 2) + '\n');
    files.push(await describeFile(dir, 'definition.json', 'definition'));

    for (const overlay of overlaysOf(vm)) {
      const disk = vm.disks.find((d) => d.id === overlay.disk);
      const extension = provider.kind === 'hyperv' ? (overlay.baseFormat === 'vhd' ? 'vhd' : 'vhdx') : 'qcow2';
      const name = `disk-${overlay.disk.replace(/[^A-Za-z0-9._-]/g, '_')}.${extension}`;
      const exported = await provider.exportDisk(overlay, path.join(dir, name), (p) => report(vm.id, name, p.done, p.total), { compress: options.compress });
      await fsyncFile(exported.path);
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
  for (const s of staged) {
    const final = await repo.publish(set.host.name, s.vm.id, set.backupId);
    live.notePublished(s.vm.id);
    const bytes = s.files.reduce((n, f) => n + f.bytes, 0);
    results.push({
      ...s.vm,
      copy: { path: path.relative(repo.root, final), bytes, files: s.files.length + 1, merged: false, ms: Date.now() - s.startedAt },
    });
  }
  return results;
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
