// Copy artifacts: every VM's disks, definition and saved state into its staging directory, a
// schema-checked manifest with the sha256 of every file, then publish all VMs or none.
import { promises as fs, type BigIntStats } from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
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
  /** compare every disk copy with its source (qemu-img compare) before publishing; default true */
  verify?: boolean;
  onProgress?: (p: CopyProgress) => void;
}

/** `identities`: file name -> size, mtime and inode when it was hashed (see verifyStaged) */
type Staged = { vm: PostSnapshotVm; dir: string; files: ManifestFile[]; identities: Map<string, string>; startedAt: number };

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

  // merges run beside the next VMs' copies; all of them are settled before this stage goes on
  // (an abort must never find a merge of ours still running when it merges what is left)
  const merges: Promise<unknown>[] = [];
  const staged = await limitedSettledOrThrow(set.vms, options.concurrency, async (vm): Promise<Staged> => {
    const startedAt = performance.now(); // monotonic: ms is a duration
    live.assertLive();
    // journalled before the directory exists: a crash right after mkdir still finds it
    live.noteStaging(vm.id, repo.stagingDir(set.host.name, vm.id, set.backupId));
    const dir = await repo.openStaging(set.host.name, vm.id, set.backupId);
    const files: ManifestFile[] = [];
    const identities = new Map<string, string>();

    // asked while the first disk is copied: QMP answers while qemu-img works
    const describing = provider.describe(vm.id);
    describing.catch(() => undefined); // awaited below, after the disks

    for (const overlay of overlaysOf(vm)) {
      const disk = vm.disks.find((d) => d.id === overlay.disk);
      const extension = provider.kind === 'hyperv' ? (overlay.baseFormat === 'vhd' ? 'vhd' : 'vhdx') : 'qcow2';
      const name = `disk-${overlay.disk.replace(/[^A-Za-z0-9._-]/g, '_')}.${extension}`;
      live.assertLive();
      // the signal stops qemu-img at once when the set is aborted (watchdog, redeploy)
      const exported = await provider.exportDisk(overlay, path.join(dir, name), (p) => report(vm.id, name, p.done, p.total), {
        compress: options.compress, signal: live.signal, ...(disk?.virtualSize ? { virtualSize: disk.virtualSize } : {}),
      });
      // Three things at once: the copy is flushed to disk, and read back twice from the page cache
      // (the provider compares what a guest would see in it with the source - qemu-img compare -
      // while its bytes are hashed for the manifest). All three must succeed before it counts.
      const [described] = await Promise.all([
        describeFile(dir, name, 'disk', identities),
        fsyncFile(exported.path),
        options.verify === false ? undefined : provider.verifyDisk?.(overlay, exported.path),
      ]);
      live.assertLive();
      files.push({
        ...described,
        disk: overlay.disk,
        ...(exported.format ? { format: exported.format } : {}),
        virtualSize: exported.virtualSize ?? disk?.virtualSize ?? 0,
      });
    }
    const definition = await describing;
    live.assertLive();
    await writeFileDurable(path.join(dir, 'definition.json'), JSON.stringify(definition, null, 2) + '\n');
    files.unshift(await describeFile(dir, 'definition.json', 'definition', identities));
    if (vm.prepare.action === 'save' && vm.prepare.savedStateFile) {
      // written while the VM was stopped, made durable now that it runs again (see saved-state.ts)
      await fsyncFile(path.join(dir, path.basename(vm.prepare.savedStateFile)));
      files.push(await describeFile(dir, path.basename(vm.prepare.savedStateFile), 'saved-state', identities));
    }
    // This VM's copies are made and checked: it leaves its overlays now rather than after every
    // other VM is copied (its overlays stop growing, and merges overlap the other copies). A merge
    // that fails here stays in the set and is tried again, and reported, when the set ends.
    merges.push(live.merge(vm.id).catch(() => undefined));
    return { vm, dir, files, identities, startedAt };
  }).finally(() => Promise.all(merges));

  // Every VM is staged: write the manifests, then publish. A failure before the last rename
  // leaves every earlier backup as it was and publishes nothing of this set that is incomplete.
  const results: (PostSnapshotVm & { copy: CopyResult })[] = [];
  for (const s of staged) {
    const manifest = buildManifest(set, s);
    assertManifest(manifest);
    await writeFileDurable(path.join(s.dir, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
  }
  // What is published is what was verified and hashed: a file written to or replaced since its
  // hash was taken stops the publish.
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
        copy: { path: path.relative(repo.root, final), bytes, files: s.files.length + 1, merged: false, ms: performance.now() - s.startedAt },
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

/**
 * Right before the rename: every staged file must still be the file that was hashed (same size,
 * same modification time to the nanosecond, same inode). Anything that wrote to it since is caught
 * without reading every byte a second time.
 */
async function verifyStaged(s: Staged): Promise<void> {
  for (const f of s.files) {
    const now = await fs.stat(path.join(s.dir, f.name), { bigint: true }).then(identity, (err: Error) => `unreadable (${err.message})`);
    const then = s.identities.get(f.name);
    if (now !== then) {
      throw new StageError(`${s.vm.id}/${f.name}: changed after it was hashed for the manifest (${then ?? 'never hashed'} -> ${now}); not published`);
    }
  }
}

/** size, mtime (ns), inode: what changes when anything writes to or replaces a file */
const identity = (st: BigIntStats) => `${st.size}b@${st.mtimeNs}ns#${st.ino}`;

/** One read of the file: its sha256 for the manifest, with its identity before and after the read. */
async function describeFile(dir: string, name: string, kind: ManifestFile['kind'], identities: Map<string, string>): Promise<ManifestFile> {
  const file = path.join(dir, name);
  const before = await fs.stat(file, { bigint: true });
  const sha256 = await sha256File(file);
  const after = await fs.stat(file, { bigint: true });
  if (identity(before) !== identity(after)) throw new StageError(`${name}: changed while it was being hashed; not published`);
  identities.set(name, identity(after));
  return { name, kind, bytes: Number(after.size), sha256 };
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
  timings.copyMs = performance.now() - s.startedAt;
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
