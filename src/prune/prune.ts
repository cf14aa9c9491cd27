// Prune one VM's backups (or every VM of a host) by retention rules, chain-aware and crash-safe:
// scan, plan (plan.ts), then with the VM's journal as lock: merge every kept point whose links go
// (merge.ts), write the kept points' new manifests, remove what goes. A dry run plans only.
// Only folders named by a backup id with a manifest describing exactly that folder, under
// <repository>/<host>/<vm>/, are ever touched; never through a symbolic link.
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { recordIdentity } from '../chain/identity';
import { assertManifest } from '../contract/validate';
import { fsyncDir } from '../repository/durable';
import { inside } from '../repository/paths';
import { IDENTITY_RECORD, writeAtomic } from '../repository/sidecars';
import { currentOwner } from '../repository/staging-owner';
import { closeJournal, openJournal, PruneBusy, readJournal, REMOVING_PREFIX, saveJournal, type PruneJournal } from './journal';
import { finishMerge, mergeTemp, prepareMerge, type MergeOptions } from './merge';
import { manifestsAfter, planPrune, type PlannedBackup } from './plan';
import { describeRetention, keepsSomething, type Retention } from './retention';
import { scanVm, type ScannedBackup, type VmScan } from './scan';

export interface PruneOptions extends MergeOptions {
  root: string;
  host: string;
  rules: Retention;
  dryRun?: boolean;
  /** a running backup of the VM: wait up to this long for it to end (default 0: refuse at once) */
  waitMs?: number;
  /** polled every this often while waiting (default 1 s) */
  pollMs?: number;
  /** told before each step (progress; the tests end the process here to prove each step crash-safe) */
  onStep?: (step: string, detail: { vm: string; index?: number; total?: number }) => void | Promise<void>;
  /** the time written into the merged manifests (default now) */
  now?: () => Date;
}

export interface VmPruneReport {
  vm: string;
  ok: boolean;
  dryRun: boolean;
  rules: string;
  backups: PlannedBackup[];
  kept: string[];
  removed: string[];
  merged: { backup: string; disk: string; from: string[]; onto?: string; becameFull: boolean }[];
  /** bytes of the removed backups' files, as their manifests list them */
  bytesRemoved: number;
  /** folders left alone: unreadable ones, staging of a running backup */
  leftAlone: { dir: string; why: string }[];
  /** an interrupted prune of this VM finished (or rolled back) first */
  recovered?: string;
  error?: string;
  ms: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function emptyReport(vm: string, options: PruneOptions): VmPruneReport {
  const none = { backups: [], kept: [], removed: [], merged: [], leftAlone: [] };
  return { vm, ok: false, dryRun: options.dryRun === true, rules: describeRetention(options.rules), ...none, bytesRemoved: 0, ms: 0 };
}

/** Prune one VM. Refusals before anything is touched throw; a failure after the lock is reported in the result. */
export async function pruneVm(vm: string, options: PruneOptions): Promise<VmPruneReport> {
  const t0 = Date.now();
  const vmDir = inside(options.root, 'vm', options.host, vm);
  const step = async (name: string, index?: number, total?: number) => options.onStep?.(name, { vm, index, total });
  const report = emptyReport(vm, options);
  const finish = () => ((report.ms = Date.now() - t0), report);

  // an interrupted prune of this VM is settled first (its lock is ours to take once its writer is gone)
  if (!options.dryRun) {
    const stale = await readJournal(vmDir);
    if (stale) report.recovered = await recoverVm(vmDir, options);
  }

  // the lock first (the journal, empty until planned), so that what is planned is what this prune does
  let journal: PruneJournal | undefined;
  if (!options.dryRun) {
    const opened = await openJournal(vmDir, {
      host: options.host,
      vm,
      startedAt: new Date().toISOString(),
      phase: 'planned',
      merges: [],
      remove: [],
    });
    if ('stale' in opened) throw new PruneBusy(`an interrupted prune of ${vm} was found while starting; run again`);
    journal = opened.journal;
  }
  try {
    return await pruneLocked(vm, vmDir, journal, options, report, finish, step);
  } catch (err) {
    // refused before anything changed: the lock goes
    if (journal?.phase === 'planned') await closeJournal(vmDir).catch(() => undefined);
    throw err;
  }
}

async function pruneLocked(
  vm: string,
  vmDir: string,
  journal: PruneJournal | undefined,
  options: PruneOptions,
  report: VmPruneReport,
  finish: () => VmPruneReport,
  step: (name: string, index?: number, total?: number) => Promise<void>,
): Promise<VmPruneReport> {
  // a backup of this VM being written: wait for it, or refuse
  let scan: VmScan = await scanVm(vmDir, options.host, vm);
  const deadline = Date.now() + (options.waitMs ?? 0);
  while (scan.running.length && journal && Date.now() < deadline) {
    await step('waiting-for-backup');
    await sleep(options.pollMs ?? 1000);
    scan = await scanVm(vmDir, options.host, vm);
  }
  report.leftAlone.push(...scan.unreadable.map((u) => ({ dir: u.dir, why: `cannot be read: ${u.error}` })));
  if (scan.running.length && journal) {
    report.leftAlone.push(...scan.running.map((r) => ({ dir: r.dir, why: `a backup being written (${r.why})` })));
    throw new PruneBusy(
      `a backup of ${vm} is being written (${scan.running.map((r) => path.basename(r.dir)).join(', ')}: ${scan.running[0].why}); prune not started${options.waitMs ? ` after waiting ${Math.round(options.waitMs / 1000)} s` : ''}`,
    );
  }

  const plan = planPrune(scan.backups, options.rules, new Set(scan.unreadable.map((u) => u.id)));
  report.backups = plan.backups;
  report.kept = plan.keep;
  const byId = new Map(scan.backups.map((b) => [b.id, b]));
  report.removed = plan.remove;
  report.merged = plan.merges.map((m) => ({
    backup: m.backup,
    disk: m.disk,
    from: m.through,
    ...(m.base ? { onto: m.base } : {}),
    becameFull: !m.base,
  }));
  report.bytesRemoved = bytesOf(plan.remove, byId);
  if (!journal || !keepsSomething(options.rules) || plan.remove.length === 0) {
    if (journal) await closeJournal(vmDir);
    report.ok = true;
    return finish();
  }
  journal.merges = plan.merges;
  journal.remove = plan.remove;
  await saveJournal(vmDir, journal);
  await step('planned');
  try {
    await carryOut(vmDir, journal, scan.backups, plan.keep, options, step);
  } catch (err) {
    report.error = `${(err as Error).message} (the prune's journal ${path.join(vmDir, '.vmbackup-prune.json')} stays; the next prune of ${vm} finishes it)`;
    report.removed = [];
    report.merged = [];
    report.bytesRemoved = 0;
    return finish();
  }
  report.ok = true;
  return finish();
}

function bytesOf(ids: readonly string[], byId: Map<string, ScannedBackup>): number {
  return ids.reduce((n, id) => n + (byId.get(id)?.manifest.totalBytes ?? 0), 0);
}

/** From the journal's phase to the end. Every step can be run again after a crash. */
async function carryOut(
  vmDir: string,
  journal: PruneJournal,
  backups: readonly ScannedBackup[],
  keep: readonly string[],
  options: PruneOptions,
  step: (name: string, index?: number, total?: number) => Promise<void>,
): Promise<void> {
  if (journal.phase === 'planned' || journal.phase === 'merging') {
    if (journal.phase === 'planned' && journal.merges.length) {
      journal.phase = 'merging';
      await saveJournal(vmDir, journal);
    }
    for (const [i, m] of journal.merges.entries()) {
      if (!m.ready) {
        await step('merge-commit', i, journal.merges.length);
        m.ready = await prepareMerge(vmDir, m, options);
        await step('merge-prepared', i, journal.merges.length);
        await saveJournal(vmDir, journal);
        await step('merge-journalled', i, journal.merges.length);
      }
      await finishMerge(vmDir, m);
      await step('merge-renamed', i, journal.merges.length);
    }
    const at = (options.now?.() ?? new Date()).toISOString();
    const merged = new Map(journal.merges.map((m) => [`${m.backup}/${m.disk}`, m.ready!]));
    const manifests = manifestsAfter(backups, { backups: [], keep: [...keep], remove: journal.remove, merges: journal.merges }, merged, at);
    journal.manifests = Object.fromEntries([...manifests].map(([id, m]) => [id, assertManifest(m)]));
    journal.phase = 'manifests';
    await saveJournal(vmDir, journal);
    await step('manifests-journalled');
  }
  if (journal.phase === 'manifests') {
    const entries = Object.entries(journal.manifests ?? {});
    for (const [i, [id, manifest]] of entries.entries()) {
      const dir = path.join(vmDir, id);
      await writeAtomic(dir, 'manifest.json', JSON.stringify(manifest, null, 2) + '\n');
      // the files as they are now (a merged disk is another file): the next backup trusts them by this
      await fs.rm(path.join(dir, IDENTITY_RECORD), { force: true });
      await recordIdentity(dir);
      await step('manifest-written', i, entries.length);
    }
    journal.phase = 'removing';
    await saveJournal(vmDir, journal);
    await step('removal-journalled');
  }
  for (const [i, id] of journal.remove.entries()) {
    await removeBackup(vmDir, id);
    await step('removed', i, journal.remove.length);
  }
  await closeJournal(vmDir);
  await step('done');
}

/** Rename the folder out of the way (one atomic step), then delete it. Gone already is fine. */
async function removeBackup(vmDir: string, id: string): Promise<void> {
  const dir = path.join(vmDir, id);
  const away = path.join(vmDir, `${REMOVING_PREFIX}${id}`);
  const st = await fs.lstat(dir).catch(() => undefined);
  if (st) {
    if (!st.isDirectory()) throw new Error(`${dir} is not a directory (a symbolic link?); not removed`);
    await fs.rename(dir, away);
    await fsyncDir(vmDir);
  }
  await fs.rm(away, { recursive: true, force: true });
  // the boot test's record of this backup lives beside it (never in the backup): it goes with it
  await fs.rm(path.join(vmDir, `${id}.boot-test.json`), { force: true });
}

/**
 * Settle an interrupted prune of the VM folder: before any merge began, roll back (remove our
 * temporary files, nothing else changed); after, finish it. Returns what was done.
 */
export async function recoverVm(
  vmDir: string,
  options: Pick<PruneOptions, 'qemuImg' | 'timeoutMs' | 'host' | 'root' | 'now'>,
): Promise<string> {
  const stale = await readJournal(vmDir);
  if (!stale) return 'nothing to recover';
  const opened = await openJournal(vmDir, stale);
  if (!('stale' in opened)) throw new Error('unreachable: the journal exists');
  const journal = opened.stale;
  // from now on this process is the one settling it
  journal.owner = currentOwner(journal.host);
  await saveJournal(vmDir, journal);
  if (journal.phase === 'planned') {
    for (const m of journal.merges) await fs.rm(mergeTemp(vmDir, m), { force: true });
    await closeJournal(vmDir);
    return `rolled back an interrupted prune of ${journal.vm} started ${journal.startedAt} (nothing had changed)`;
  }
  const scan = await scanVm(vmDir, journal.host, journal.vm);
  const keep = scan.backups.map((b) => b.id).filter((id) => !journal.remove.includes(id));
  await carryOut(vmDir, journal, scan.backups, keep, { ...options, rules: {} }, async () => undefined);
  return `finished an interrupted prune of ${journal.vm} started ${journal.startedAt} (phase ${journal.phase})`;
}

/** The VMs of one host in the repository (folders with plain names). */
export async function listVms(root: string, host: string): Promise<string[]> {
  const hostDir = inside(root, 'host', host);
  try {
    return (await fs.readdir(hostDir, { withFileTypes: true }))
      .filter((e) => e.isDirectory() && !e.name.startsWith('.'))
      .map((e) => e.name)
      .sort();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

/** Prune every VM given (default: every VM of the host), one after another. One VM's failure does not stop the others. */
export async function pruneHost(options: PruneOptions & { vms?: string[] }): Promise<VmPruneReport[]> {
  const vms = options.vms?.length ? options.vms : await listVms(options.root, options.host);
  const reports: VmPruneReport[] = [];
  for (const vm of vms) {
    try {
      reports.push(await pruneVm(vm, options));
    } catch (err) {
      reports.push({ ...emptyReport(vm, options), error: (err as Error).message });
    }
  }
  return reports;
}
