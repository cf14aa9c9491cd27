// Restore (b): a point written over the VM's own disks, the VM stopped. Refused while the
// hypervisor says the VM runs or any process holds one of its disks. Crash-safe in two phases,
// each recorded in the restore journal before it starts:
//   writing    every new image is written BESIDE its disk (a file: .<name>.restoring-*, flattened,
//              compared with the chain); a block device's old content is saved aside instead.
//              Nothing of the VM has changed: recovery rolls back (removes what was written).
//   switching  every new image is complete: each file is renamed over its disk (atomic), each
//              block device written from the verified backup and compared. Recovery finishes it.
// So a disk is its old content or its new one, never a mix.
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { flattenDisk } from '../chain/flatten';
import { fsyncDir } from '../repository/durable';
import { runProgram } from '../util/run';
import type { RestoreContext, RestoreResult } from './context';
import { holdersOf } from './holders';
import { verifyPoint } from './images';
import { RestoreJournal, journalDirOf, type InPlaceDisk, type RestoreEntry } from './journal';
import { driveFiles, getKey, parseKeyValues, splitOptions } from './qemu-argv';
import { pickDisks, pointFacts, type BackupPoint } from './point';
import { RestoreRefused } from './refused';

export interface InPlaceInput {
  point: BackupPoint;
  disks?: readonly string[];
  keepOld?: boolean;
}

/** Where each disk of the VM lives and its format, as the backup's definition says. */
export function originalDisks(def: Record<string, unknown>): Map<string, { file: string; format?: string }> {
  const out = new Map<string, { file: string; format?: string }>();
  if (Array.isArray(def.commandLine)) {
    const argv = def.commandLine as string[];
    for (const [id, file] of driveFiles(argv)) out.set(id, { file });
    for (const o of splitOptions(argv.slice(1))) {
      if (o.name !== '-drive' || !o.value) continue;
      const kv = parseKeyValues(o.value);
      const id = getKey(kv, 'id');
      const format = getKey(kv, 'format');
      if (id && format && out.has(id)) out.get(id)!.format = format;
    }
  }
  const inv = (def.inventory as { definition?: { disks?: { id: string; file: string; format: string }[] } } | undefined)?.definition;
  for (const d of inv?.disks ?? []) if (!out.has(d.id)) out.set(d.id, { file: d.file, format: d.format });
  if (typeof def.domainXml === 'string') {
    for (const block of def.domainXml.match(/<disk\b[^>]*>[\s\S]*?<\/disk>/g) ?? []) {
      const dev = /<target\b[^>]*\bdev=['"]([^'"]+)['"]/.exec(block)?.[1];
      const file = /<source\b[^>]*\b(?:file|dev)=['"]([^'"]+)['"]/.exec(block)?.[1];
      const format = /<driver\b[^>]*\btype=['"]([^'"]+)['"]/.exec(block)?.[1];
      if (dev && file && !out.has(dev))
        out.set(dev, {
          file: file
            .replace(/&apos;/g, "'")
            .replace(/&quot;/g, '"')
            .replace(/&amp;/g, '&'),
          ...(format ? { format } : {}),
        });
    }
  }
  return out;
}

async function checkStopped(ctx: RestoreContext, point: BackupPoint, files: string[]): Promise<void> {
  if (ctx.runState) {
    const state = await ctx.runState(point.manifest.vm).catch(() => 'unknown');
    if (state !== 'off' && state !== 'unknown')
      throw new RestoreRefused('vm', `VM ${point.manifest.vm} is ${state}: stop it before restoring over its disks`);
  }
  const holders = await holdersOf(files);
  if (holders.length)
    throw new RestoreRefused(
      'vm',
      `its disks are in use: ${holders.map((h) => `pid ${h.pid} (${h.how}: ${h.command.slice(0, 80)})`).join('; ')}; stop the VM before restoring over its disks`,
    );
}

/** Every check that needs no write: the disks, where they are, that nothing holds them. */
async function plan(ctx: RestoreContext, input: InPlaceInput, id: string): Promise<InPlaceDisk[]> {
  const point = input.point;
  const disks = pickDisks(point, input.disks);
  const originals = originalDisks(point.definition);
  const out: InPlaceDisk[] = [];
  for (const d of disks) {
    const o = originals.get(d.id);
    if (!o || !path.isAbsolute(o.file))
      throw new RestoreRefused(
        'disks',
        `the backup's definition does not say where disk ${d.id} lives (${o?.file ?? 'no file'}): restore it to a directory instead`,
      );
    const real = await fs.realpath(o.file).catch(() => undefined);
    if (!real) throw new RestoreRefused('disks', `disk ${d.id}: ${o.file} does not exist (restore as a new VM or to a directory)`);
    const st = await fs.stat(real);
    if (st.isBlockDevice()) {
      const size = Number((await runProgram('blockdev', ['--getsize64', real], { timeoutMs: 30_000 })).stdout.trim());
      if (d.virtualSize !== undefined && size < d.virtualSize)
        throw new RestoreRefused('disks', `disk ${d.id}: ${real} holds ${size} bytes, the backup's disk ${d.virtualSize}`);
      if (!ctx.roots.length)
        throw new RestoreRefused('roots', 'a block device is restored only with a restore root to keep its old content in');
      out.push({
        disk: d.id,
        target: real,
        kind: 'block',
        source: d.file,
        format: 'raw',
        temp: path.join(ctx.roots[0], `.${id}-${d.id}.old.qcow2`),
        ...(input.keepOld ? { keep: path.join(ctx.roots[0], `${id}-${d.id}.before-restore.qcow2`) } : {}),
      });
    } else if (st.isFile()) {
      const format = o.format === 'raw' ? 'raw' : o.format === 'qcow2' || o.format === undefined ? 'qcow2' : undefined;
      if (!format) throw new RestoreRefused('disks', `disk ${d.id}: format ${o.format} is not qcow2 or raw`);
      const dir = path.dirname(real);
      const base = path.basename(real);
      out.push({
        disk: d.id,
        target: real,
        kind: 'file',
        source: d.file,
        format,
        temp: path.join(dir, `.${base}.restoring-${randomBytes(4).toString('hex')}`),
        ...(input.keepOld ? { keep: `${real}.before-restore` } : {}),
      });
      if (
        input.keepOld &&
        (await fs.lstat(`${real}.before-restore`).then(
          () => true,
          () => false,
        ))
      )
        throw new RestoreRefused('keepOld', `${real}.before-restore exists; move it away first`);
    } else throw new RestoreRefused('disks', `disk ${d.id}: ${real} is neither a file nor a block device`);
  }
  await checkStopped(
    ctx,
    point,
    out.map((d) => d.target),
  );
  return out;
}

export async function restoreInPlace(ctx: RestoreContext, input: InPlaceInput, t0 = Date.now()): Promise<RestoreResult> {
  const journal = new RestoreJournal(journalDirOf(ctx.journalDir));
  const disks = await plan(ctx, input, journal.id);
  const point = input.point;
  const report = await verifyPoint(point, {
    ...(ctx.qemuImg ? { qemuImg: ctx.qemuImg } : {}),
    ...(ctx.onProgress ? { onProgress: ctx.onProgress } : {}),
  });
  const qemuImg = ctx.qemuImg ?? 'qemu-img';
  const entry: Extract<RestoreEntry, { op: 'in-place' }> = {
    op: 'in-place',
    id: journal.id,
    pid: process.pid,
    startedAt: new Date(t0).toISOString(),
    vm: point.manifest.vm,
    backupDir: point.dir,
    phase: 'writing',
    disks,
  };
  await journal.write(entry);
  let chain: string[] = [point.manifest.backupId];
  try {
    for (const d of disks) {
      ctx.onProgress?.({ step: d.disk, bytes: 0, total: d.kind === 'block' ? 2 : 1 });
      if (d.kind === 'file') {
        const r = await flattenDisk({
          backupDir: point.dir,
          disk: d.disk,
          out: d.temp,
          format: d.format,
          verify: () => Promise.resolve(report),
          qemuImg,
        });
        if (r.chain.length > chain.length) chain = r.chain;
      } else {
        await runProgram(qemuImg, ['convert', '-f', 'raw', '-O', 'qcow2', d.target, d.temp], { timeoutMs: 6 * 3_600_000 });
      }
    }
  } catch (err) {
    await rollBack(entry).catch(() => undefined);
    await journal.end();
    throw err;
  }
  // the VM may have been started meanwhile: check again before its disks change
  try {
    await checkStopped(
      ctx,
      point,
      disks.map((d) => d.target),
    );
  } catch (err) {
    await rollBack(entry).catch(() => undefined);
    await journal.end();
    throw err;
  }
  entry.phase = 'switching';
  await journal.write(entry);
  await finish(entry, journal, qemuImg);
  await journal.end();
  return {
    mode: 'in-place',
    ...pointFacts(point),
    chain,
    disks: await Promise.all(
      disks.map(async (d) => ({
        disk: d.disk,
        file: d.target,
        format: d.format,
        bytes: d.kind === 'file' ? (await fs.stat(d.target)).size : 0,
      })),
    ),
    warnings: point.manifest.excludedDisks.map((d) => `disk ${d.id} was not in the backup (${d.reason}): left as it is`),
    startedAt: new Date(t0).toISOString(),
    ms: Date.now() - t0,
  };
}

/** Phase writing interrupted: nothing of the VM changed; remove what was written beside. */
export async function rollBack(entry: Extract<RestoreEntry, { op: 'in-place' }>): Promise<string[]> {
  const done: string[] = [];
  for (const d of entry.disks) {
    await fs.rm(d.temp, { force: true });
    // flattenDisk's own partial beside the temp name
    const dir = path.dirname(d.temp);
    for (const n of await fs.readdir(dir).catch(() => [] as string[]))
      if (n.startsWith(`.${path.basename(d.temp)}.partial-`)) await fs.rm(path.join(dir, n), { force: true });
    done.push(`${d.disk}: ${d.target} left as it was`);
  }
  return done;
}

/** Phase switching (now or in recovery): every disk gets its new content; the journal says which are done. */
export async function finish(
  entry: Extract<RestoreEntry, { op: 'in-place' }>,
  journal: RestoreJournal | undefined,
  qemuImg = 'qemu-img',
): Promise<string[]> {
  const done: string[] = [];
  for (const d of entry.disks) {
    if (d.done) continue;
    if (d.kind === 'file') {
      const tempThere = await fs.lstat(d.temp).then(
        () => true,
        () => false,
      );
      if (tempThere) {
        if (
          d.keep &&
          !(await fs.lstat(d.keep).then(
            () => true,
            () => false,
          ))
        )
          await fs.link(d.target, d.keep);
        await fs.rename(d.temp, d.target);
        await fsyncDir(path.dirname(d.target));
      } // else: renamed before the crash
    } else {
      await runProgram(qemuImg, ['convert', '-n', '-f', 'qcow2', '-O', 'raw', d.source, d.target], { timeoutMs: 6 * 3_600_000 });
      await runProgram(qemuImg, ['compare', '-f', 'qcow2', '-F', 'raw', d.source, d.target], { timeoutMs: 6 * 3_600_000 });
      await runProgram('sync', [], { timeoutMs: 600_000 });
    }
    d.done = true;
    done.push(`${d.disk}: ${d.target} restored`);
    if (journal) await journal.write(entry);
  }
  // the old content of block devices is no longer needed (the new one is whole and compared)
  for (const d of entry.disks) {
    if (d.kind !== 'block') continue;
    if (d.keep) await fs.rename(d.temp, d.keep).catch(() => undefined);
    else await fs.rm(d.temp, { force: true });
  }
  return done;
}
