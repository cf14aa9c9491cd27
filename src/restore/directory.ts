// Restore (a): a point of a chain written to a new directory: each disk a standalone image
// (qcow2 or raw), the definition, the saved memory of a saved-state backup, and restore.json
// saying what it is. Written into a hidden folder beside the target and renamed at the end, so a
// target is whole or absent; the journal names the hidden folder until then.
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { FlattenFormat } from '../chain/flatten';
import { fsyncDir, fsyncFile, writeFileDurable } from '../repository/durable';
import type { RestoreContext, RestoredDisk, RestoreResult } from './context';
import { diskFileName, verifyPoint, writeDisk } from './images';
import { RestoreJournal, journalDirOf } from './journal';
import { pickDisks, pointFacts, type BackupPoint } from './point';
import { RestoreRefused } from './refused';
import { newTarget } from './targets';

export interface DirectoryInput {
  point: BackupPoint;
  disks?: readonly string[];
  format?: FlattenFormat;
  target: string;
}

/** Checks that need no writing: run before anything else so that a refusal leaves nothing. */
export async function checkDirectory(
  ctx: RestoreContext,
  input: DirectoryInput,
): Promise<{ target: string; disks: ReturnType<typeof pickDisks> }> {
  const disks = pickDisks(input.point, input.disks);
  if (!disks.length) throw new RestoreRefused('disks', `backup ${input.point.manifest.backupId} holds no disk`);
  const target = await newTarget(input.target, ctx.roots, 'target');
  const vmDir = input.point.vmDir;
  if (target.startsWith(path.dirname(path.dirname(vmDir)) + path.sep) || target === path.dirname(path.dirname(vmDir)))
    throw new RestoreRefused('target', `${target} is inside the repository; write it elsewhere`);
  return { target, disks };
}

export async function restoreToDirectory(ctx: RestoreContext, input: DirectoryInput, t0 = Date.now()): Promise<RestoreResult> {
  const { target, disks } = await checkDirectory(ctx, input);
  const point = input.point;
  const format = input.format ?? 'qcow2';
  const report = await verifyPoint(point, {
    ...(ctx.qemuImg ? { qemuImg: ctx.qemuImg } : {}),
    ...(ctx.onProgress ? { onProgress: ctx.onProgress } : {}),
  });
  const tmp = path.join(path.dirname(target), `.${path.basename(target)}.partial-${randomBytes(4).toString('hex')}`);
  const journal = new RestoreJournal(journalDirOf(ctx.journalDir));
  await journal.write({ op: 'directory', id: journal.id, pid: process.pid, startedAt: new Date(t0).toISOString(), tmp, target });
  const restored: RestoredDisk[] = [];
  let chain: string[] = [point.manifest.backupId];
  try {
    await fs.mkdir(tmp, { mode: 0o750 });
    for (const d of disks) {
      const name = diskFileName(d.id, format);
      const r = await writeDisk(point, d, path.join(tmp, name), format, report, {
        ...(ctx.qemuImg ? { qemuImg: ctx.qemuImg } : {}),
        ...(ctx.onProgress ? { onProgress: ctx.onProgress } : {}),
      });
      if (r.chain.length > chain.length) chain = r.chain;
      restored.push({ disk: d.id, file: path.join(target, name), format, bytes: r.bytes });
    }
    const def = point.manifest.files.find((f) => f.kind === 'definition');
    if (def) await copyDurable(path.join(point.dir, def.name), path.join(tmp, 'definition.json'));
    if (point.savedState) {
      ctx.onProgress?.({ step: 'state', bytes: 0, total: 0 });
      await copyDurable(point.savedState, path.join(tmp, 'state.vmstate'));
    }
    const result: RestoreResult = {
      mode: 'directory',
      ...pointFacts(point),
      chain,
      target,
      disks: restored,
      warnings: point.manifest.excludedDisks.map((d) => `disk ${d.id} was not in the backup (${d.reason})`),
      startedAt: new Date(t0).toISOString(),
      ms: 0,
    };
    await writeFileDurable(path.join(tmp, 'restore.json'), JSON.stringify({ restoredFrom: point.dir, ...result }, null, 2) + '\n');
    await fsyncDir(tmp);
    // the target was checked free before anything was written; a name that appeared meanwhile is not replaced
    if (
      await fs.lstat(target).then(
        () => true,
        () => false,
      )
    )
      throw new RestoreRefused('target', `${target} appeared while restoring; not replaced`);
    await fs.rename(tmp, target);
    await fsyncDir(path.dirname(target));
    result.ms = Date.now() - t0;
    return result;
  } finally {
    await fs.rm(tmp, { recursive: true, force: true });
    await journal.end();
  }
}

async function copyDurable(from: string, to: string): Promise<void> {
  await fs.copyFile(from, to, fs.constants.COPYFILE_EXCL);
  await fsyncFile(to);
}
