// Copy artifacts: every VM's disks (each a full, or an incremental on the previous backup),
// definition and saved state into its staging directory, a schema-checked manifest with the
// sha256 of every file, then publish all VMs or none.
import { msSince } from '../util/clock';
import { promises as fs, type BigIntStats } from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { assertManifest } from '../contract/validate';
import type { ChainPlan, CopyResult, Manifest, ManifestFile, PointInTimeView, PostSnapshotSet, PostSnapshotVm } from '../contract/types';
import type { ExportedFile, HostProvider } from '../providers/provider';
import { applyPolicy, chainEntry, type ChainPolicy } from './chain-plan';
import { vmChain } from '../chain';
import { recordIdentity } from '../chain/identity';
import { fsyncDir, fsyncFile, writeFileDurable } from '../repository/durable';
import { sha256File, type ArtifactRepository } from '../repository/repository';
import type { LiveBackup } from './live-backup';
import { limitedHandingOn, limitedSettledOrThrow, StageError } from './stage-error';

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
  /** compare every full disk copy with its view before publishing; default true */
  verify?: boolean;
  /** full or incremental, and how often a full (the copy node's policy); default incremental */
  chain?: ChainPolicy;
  /** the host's own name: paths are built from it, never from the message */
  hostName?: string;
  onProgress?: (p: CopyProgress) => void;
}

/** `identities`: file name -> size, mtime and inode when it was hashed (see verifyStaged) */
type Staged = {
  vm: PostSnapshotVm;
  dir: string;
  files: ManifestFile[];
  identities: Map<string, string>;
  startedAt: number;
  /** the chain plan each disk was copied by (prepare's draft with the copy node's policy applied) */
  plans: ChainPlan[];
};
type Reporter = (vm: string, file: string, done: number, total: number) => void;

export async function copyBackupSet(
  provider: HostProvider,
  repo: ArtifactRepository,
  live: LiveBackup,
  set: PostSnapshotSet,
  options: CopyOptions,
): Promise<(PostSnapshotVm & { copy: CopyResult })[]> {
  const host = options.hostName ?? set.host.name;
  const report = progressOver(set, options);
  // each VM's view is taken away as soon as nothing reads it any more (its disks copied and
  // compared: while their files are still being hashed), beside the next VMs' copies and the
  // manifests and publish; all of them are settled before this stage ends, whichever way (an
  // abort must never find a release of ours still running when it releases what is left)
  const releases: Promise<unknown>[] = [];
  try {
    return await stageAndPublish(provider, repo, live, set, options, host, report, releases);
  } finally {
    await Promise.all(releases);
  }
}

async function stageAndPublish(
  provider: HostProvider,
  repo: ArtifactRepository,
  live: LiveBackup,
  set: PostSnapshotSet,
  options: CopyOptions,
  host: string,
  report: Reporter,
  releases: Promise<unknown>[],
): Promise<(PostSnapshotVm & { copy: CopyResult })[]> {
  // `concurrency` VMs are read at once; a VM whose view is read gives its place to the next one
  // while its files are flushed and its definition written (fsyncs: nothing of the view in them)
  const staged = await limitedHandingOn(set.vms, options.concurrency, async (vm, free): Promise<Staged> => {
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      releases.push(live.release(vm.id).catch(() => undefined));
      free();
    };
    const s = await stageVm(provider, repo, live, host, set.backupId, vm, options, report, release);
    release();
    return s;
  });

  // Every VM is staged: seal each, then publish. A failure before the last rename leaves every
  // earlier backup as it was and publishes nothing of this set that is incomplete. The seals run
  // several at once, all settled before a failure is reported: each is a few fsyncs of its own
  // folder, and on one file system fsyncs made together share the journal's commits (100 VMs,
  // from the last view released to the first publish: 416-641 ms one VM after the other, 149-324
  // eight at once; bench/ab.ts, 4 runs each, the journal's times).
  await limitedSettledOrThrow(
    staged.map((s) => ({ id: s.vm.id, s })),
    SEALS_AT_ONCE,
    ({ s }) => seal(repo, set, host, s),
  );
  live.assertLive();
  const results = await publishAll(repo, live, host, set.backupId, staged);
  // published: each VM's change tracking moves on to this backup (the parent's record goes);
  // several at once, as the seals (an incremental's is an exchange with its VM's QEMU)
  await limitedSettledOrThrow(
    staged.map((s) => s.vm),
    SEALS_AT_ONCE,
    (vm) => live.settleTracking(vm.id).catch(() => undefined),
  );
  return results;
}

/** VMs sealed at once (their manifests, identity records and folders flushed), as tracking settled after the publish. */
const SEALS_AT_ONCE = 8;

/**
 * One staged VM made ready for its rename: its manifest written; what is published is what was
 * verified and hashed (a file written to or replaced since its hash was taken stops the publish;
 * so does an incremental whose parent is gone meanwhile); what each file is now recorded, so that
 * the next backup trusts this one without reading it again; its folder flushed.
 */
async function seal(repo: ArtifactRepository, set: PostSnapshotSet, host: string, s: Staged): Promise<void> {
  const manifest = buildManifest(set, host, s);
  assertManifest(manifest);
  await writeFileDurable(path.join(s.dir, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
  await verifyStaged(s);
  await recordIdentity(s.dir);
  await parentsStillThere(repo, host, s);
  await fsyncDir(s.dir);
}

/** One VM: its disks out of the view, its definition, its saved state, each hashed, in its staging directory. */
async function stageVm(
  provider: HostProvider,
  repo: ArtifactRepository,
  live: LiveBackup,
  host: string,
  backupId: string,
  vm: PostSnapshotVm,
  options: CopyOptions,
  report: Reporter,
  viewDone: () => void,
): Promise<Staged> {
  const startedAt = performance.now(); // monotonic: ms is a duration
  live.assertLive();
  // journalled before the directory exists: a crash right after mkdir still finds it
  const dir = await repo.openStaging(host, vm.id, backupId, (d) => live.noteStaging(vm.id, d));
  const files: ManifestFile[] = [];
  const identities = new Map<string, string>();
  const plans: ChainPlan[] = [];

  // asked while the first disk is copied: the hypervisor answers while the copy runs
  const describing = provider.describe(vm.id);
  describing.catch(() => undefined); // awaited below, after the disks

  // One disk at a time out of the view, each compared with it (Verify) before the next one is read
  // (measured: reading the view twice at once gained nothing on a busy host, QEMU serves both);
  // a file's hash and flush run on beside the next disk's copy. The view goes once every disk is
  // copied and compared, while the last files may still be hashed.
  const view = vm.snapshot.view;
  const checks: Promise<ManifestFile>[] = [];
  let checkFailed = false;
  let copyFailed: { err: unknown } | undefined;
  try {
    for (const d of view.disks) {
      live.assertLive();
      // a copy that failed its check stops the next one from starting (the set fails anyway)
      if (checkFailed) break;
      const plan = finalPlan(vm, d.disk, options);
      if (plan) plans.push(plan);
      const c = await copyOneDisk(provider, live, vm, d, plan, dir, identities, options, report);
      checks.push(c.file);
      c.file.catch(() => (checkFailed = true));
      await c.viewRead;
    }
    // (on a failure the view stays for the set's own ending to release, as before)
    viewDone();
  } catch (err) {
    copyFailed = { err };
  }
  // nothing of this VM's may still write or read in the staging directory when its copy ends
  const settled = await Promise.allSettled(checks);
  if (copyFailed) throw copyFailed.err;
  for (const x of settled) {
    if (x.status === 'rejected') throw x.reason;
    files.push(x.value);
  }
  const definition = await describing;
  live.assertLive();
  await writeFileDurable(path.join(dir, 'definition.json'), JSON.stringify(definition, null, 2) + '\n');
  files.unshift(await hashFile(dir, 'definition.json', 'definition', identities));
  if (vm.prepare.action === 'save' && vm.prepare.savedStateFile) {
    // written while the VM was stopped, made durable now that it runs again (see saved-state.ts)
    await fsyncFile(path.join(dir, path.basename(vm.prepare.savedStateFile)));
    files.push(await hashFile(dir, path.basename(vm.prepare.savedStateFile), 'saved-state', identities));
  }
  return { vm, dir, files, identities, startedAt, plans };
}

/** The plan a disk is copied by: prepare's draft, with the copy node's policy applied last. */
function finalPlan(vm: PostSnapshotVm, disk: string, options: CopyOptions): ChainPlan | undefined {
  const drafted = vm.prepare.chainDraft?.find((c) => c.disk === disk);
  return drafted ? applyPolicy(drafted, options.chain) : undefined;
}

async function copyOneDisk(
  provider: HostProvider,
  live: LiveBackup,
  vm: PostSnapshotVm,
  d: PointInTimeView['disks'][number],
  plan: ChainPlan | undefined,
  dir: string,
  identities: Map<string, string>,
  options: CopyOptions,
  report: Reporter,
): Promise<{ viewRead: Promise<unknown>; file: Promise<ManifestFile> }> {
  const disk = vm.disks.find((x) => x.id === d.disk);
  const incremental = plan?.mode === 'incremental' && plan.backing && plan.since ? { backing: plan.backing, since: plan.since } : undefined;
  // the signal stops the copy at once when the set is aborted (watchdog, redeploy)
  const exported = await provider.exportDisk(
    vm.snapshot.view,
    d.disk,
    path.join(dir, d.artifact),
    (p) => report(vm.id, d.artifact, p.done, p.total),
    {
      compress: options.compress,
      signal: live.signal,
      copy: incremental ? { mode: 'incremental', ...incremental } : { mode: 'full' },
      verify: options.verify !== false && !incremental,
    },
  );
  // Three things at once: the copy is flushed to disk, checked by the provider (a full: compared
  // with its view by qemu-img, or, pulled in-process, already checked as it was written), and
  // hashed for the manifest (read back from the page cache, or taken as it was written, the file
  // then still as its writer left it). All three must succeed before it counts.
  const compared = options.verify === false || incremental ? undefined : provider.verifyDisk?.(vm.snapshot.view, d.disk, exported.path);
  const viewRead = Promise.resolve(compared);
  viewRead.catch(() => undefined); // its failure is the file's (below)
  const written = exported.sha256 !== undefined ? { sha256: exported.sha256, as: exported.writtenAs } : undefined;
  const file = Promise.all([hashFile(dir, d.artifact, 'disk', identities, written), fsyncFile(exported.path), viewRead]).then(
    ([hashed]) => {
      live.assertLive();
      return manifestEntry(hashed, exported, d, disk, plan);
    },
  );
  file.catch(() => undefined); // awaited by stageVm
  return { viewRead, file };
}

function manifestEntry(
  hashed: ManifestFile,
  exported: ExportedFile,
  d: PointInTimeView['disks'][number],
  disk: PostSnapshotVm['disks'][number] | undefined,
  plan: ChainPlan | undefined,
): ManifestFile {
  return {
    ...hashed,
    disk: d.disk,
    format: exported.format ?? d.format,
    virtualSize: exported.virtualSize ?? disk?.virtualSize ?? 0,
    ...(plan
      ? {
          chain: chainEntry(plan, {
            bytesRead: exported.bytesRead ?? exported.bytes,
            ...(exported.bytesChanged !== undefined ? { bytesChanged: exported.bytesChanged } : {}),
          }),
        }
      : {}),
  };
}

/** An incremental is published only while the backup it stacks on is still there, whole. */
async function parentsStillThere(repo: ArtifactRepository, host: string, s: Staged): Promise<void> {
  for (const f of s.files) {
    if (f.chain?.mode !== 'incremental' || !f.chain.backing) continue;
    const parentFile = path.resolve(s.dir, f.chain.backing);
    const vmDir = repo.vmDir(host, s.vm.id);
    if (!parentFile.startsWith(vmDir + path.sep))
      throw new StageError(`${s.vm.id}/${f.name}: backing file ${f.chain.backing} leaves the VM's folder; not published`);
    const ok = await fs.access(parentFile).then(
      () => true,
      () => false,
    );
    if (!ok) throw new StageError(`${s.vm.id}/${f.name}: its parent ${f.chain.parent} is gone from the repository; not published`);
  }
}

/** Publish every VM (a rename each); if one fails, take back the ones already published: all or none. */
async function publishAll(
  repo: ArtifactRepository,
  live: LiveBackup,
  host: string,
  backupId: string,
  staged: Staged[],
): Promise<(PostSnapshotVm & { copy: CopyResult })[]> {
  const results: (PostSnapshotVm & { copy: CopyResult })[] = [];
  const published: Staged[] = [];
  try {
    for (const s of staged) {
      live.assertLive();
      live.notePublishing(s.vm.id, s.dir);
      const final = await repo.publish(host, s.vm.id, backupId);
      published.push(s);
      live.notePublished(s.vm.id);
      const bytes = s.files.reduce((n, f) => n + f.bytes, 0);
      const disks = s.files.filter((f) => f.chain);
      const bytesRead = disks.reduce((n, f) => n + (f.chain?.bytesRead ?? 0), 0);
      const changed = disks.filter((f) => f.chain?.bytesChanged !== undefined);
      results.push({
        ...s.vm,
        copy: {
          path: path.relative(repo.root, final),
          bytes,
          files: s.files.length + 1,
          released: false,
          ms: msSince(s.startedAt),
          bytesRead,
          ...(changed.length ? { bytesChanged: changed.reduce((n, f) => n + (f.chain?.bytesChanged ?? 0), 0) } : {}),
          ...(s.plans.length ? { chain: s.plans } : {}),
        },
      });
    }
  } catch (err) {
    // all or none: take back what this set already published, so that it is discarded with the rest
    for (const s of published) {
      await fs.rename(repo.finalDir(host, s.vm.id, backupId), s.dir).catch(() => undefined);
      live.unpublished(s.vm.id);
    }
    throw err;
  }
  return results;
}

/** Progress over the whole set, from each file's own. */
function progressOver(set: PostSnapshotSet, options: CopyOptions): Reporter {
  const setTotal = set.vms.reduce(
    (n, vm) => n + vm.snapshot.view.disks.reduce((m, d) => m + (vm.disks.find((x) => x.id === d.disk)?.virtualSize ?? 0), 0),
    0,
  );
  const doneByFile = new Map<string, number>();
  // a running sum: adding up every file at each report was quadratic in the disks of the set
  let setDone = 0;
  return (vm, file, done, total) => {
    const key = `${vm}/${file}`;
    setDone += done - (doneByFile.get(key) ?? 0);
    doneByFile.set(key, done);
    options.onProgress?.({ vm, file, done, total, setDone, setTotal });
  };
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
      throw new StageError(
        `${s.vm.id}/${f.name}: changed after it was hashed for the manifest (${then ?? 'never hashed'} -> ${now}); not published`,
      );
    }
  }
}

/** size, mtime (ns), inode: what changes when anything writes to or replaces a file */
const identity = (st: Pick<BigIntStats, 'size' | 'mtimeNs' | 'ino'>) => `${st.size}b@${st.mtimeNs}ns#${st.ino}`;

/**
 * One read of the file: its sha256 for the manifest, with its identity before and after the read.
 * A file the provider hashed as it wrote it (`written`) is not read again: it must still be as its
 * writer closed it (size, mtime, inode, when the provider says), and the publish checks it as any other.
 */
async function hashFile(
  dir: string,
  name: string,
  kind: ManifestFile['kind'],
  identities: Map<string, string>,
  written?: { sha256: string; as?: ExportedFile['writtenAs'] },
): Promise<ManifestFile> {
  const file = path.join(dir, name);
  const before = await fs.stat(file, { bigint: true });
  if (written !== undefined) {
    if (written.as && identity(written.as) !== identity(before))
      throw new StageError(`${name}: changed after it was written (${identity(written.as)} -> ${identity(before)}); not published`);
    identities.set(name, identity(before));
    return { name, kind, bytes: Number(before.size), sha256: written.sha256 };
  }
  const sha256 = await sha256File(file);
  const after = await fs.stat(file, { bigint: true });
  if (identity(before) !== identity(after)) throw new StageError(`${name}: changed while it was being hashed; not published`);
  identities.set(name, identity(after));
  return { name, kind, bytes: Number(after.size), sha256 };
}

function buildManifest(set: PostSnapshotSet, host: string, s: Staged): Manifest {
  const vm = s.vm;
  const timings: Record<string, number> = {};
  for (const [stage, t] of Object.entries(set.timings)) if (t) timings[`${stage}Ms`] = t.ms;
  timings.copyMs = msSince(s.startedAt);
  return {
    format: 'vm-backup-manifest@1',
    backupId: set.backupId,
    host,
    provider: set.host.provider,
    vm: vm.id,
    vmName: vm.name,
    method: vm.method,
    consistency: vm.consistency,
    reasons: vm.reasons,
    excludedDisks: vm.disks
      .filter((d) => !d.included)
      .map((d) => ({
        id: d.id,
        file: d.file,
        driver: d.driver,
        reason: d.excludedReason ?? 'excluded',
        ...(d.excludedBy ? { by: d.excludedBy } : {}),
        ...(d.excludedDetail ? { detail: d.excludedDetail } : {}),
      })),
    warnings: vm.warnings,
    files: s.files,
    ...(s.files.some((f) => f.chain) ? { chain: vmChain(s.files) } : {}),
    totalBytes: s.files.reduce((n, f) => n + f.bytes, 0),
    timings,
    ...(vm.snapshot.frozenMs !== undefined ? { frozenMs: vm.snapshot.frozenMs } : {}),
    ...(vm.postSnapshot.downtimeMs !== undefined ? { downtimeMs: vm.postSnapshot.downtimeMs } : {}),
    createdAt: set.createdAt,
    completedAt: new Date().toISOString(),
  };
}
