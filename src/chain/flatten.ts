// Restore from any point of a chain: one disk of one backup (full or incremental) written out as a
// standalone image, by `qemu-img convert` of the top with its backing chain. The backup and its
// whole chain are verified first (the caller's verifier: sizes, sha256, every link); the output
// is written under a temporary name beside it, compared with the chain (`qemu-img compare`) and
// only then given its name, which never replaces an existing file.
import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { fsyncFile } from '../repository/durable';
import { runProgram } from '../util/run';
import { diskEntryOf, lstatOrUndefined, programDetail, readManifestAt, type ImageToolOptions } from './links';

export type FlattenFormat = 'qcow2' | 'raw';
export const FLATTEN_FORMATS: readonly FlattenFormat[] = ['qcow2', 'raw'];

export interface FlattenInput extends ImageToolOptions {
  /** the backup folder, <repository>/<host>/<vm>/<backupId> */
  backupDir: string;
  /** the disk id as the manifest lists it (e.g. drive-virtio0) */
  disk: string;
  /** the image to write; must not exist */
  out: string;
  format?: FlattenFormat;
  /** checks the backup and its chain; flatten refuses unless it says ok */
  verify: (dir: string) => Promise<{ ok: boolean; problems: { file: string; problem: string }[] }>;
  /** qemu-img compare of the result with the chain (default true) */
  compare?: boolean;
}

export interface FlattenResult {
  out: string;
  format: FlattenFormat;
  backupId: string;
  disk: string;
  virtualSize?: number;
  /** the backups the image was made of, the top first, its full last */
  chain: string[];
  bytes: number;
  ms: number;
}

/** A refusal before anything is written: `field` names the argument at fault. */
export class FlattenRefused extends Error {
  constructor(
    readonly field: 'backup' | 'disk' | 'out' | 'format',
    detail: string,
  ) {
    super(`${field}: ${detail}`);
    this.name = 'FlattenRefused';
  }
}

export async function flattenDisk(input: FlattenInput): Promise<FlattenResult> {
  const t0 = Date.now();
  const format = input.format ?? 'qcow2';
  if (!FLATTEN_FORMATS.includes(format)) throw new FlattenRefused('format', `${JSON.stringify(format)} must be qcow2 or raw`);
  if (typeof input.disk !== 'string' || input.disk === '') throw new FlattenRefused('disk', 'is required');
  if (typeof input.out !== 'string' || input.out === '' || input.out.includes('\0')) throw new FlattenRefused('out', 'is required');
  const dir = path.resolve(input.backupDir);
  const out = path.resolve(input.out);
  const vmDir = path.dirname(dir);
  // an image written into the repository would become an unlisted file of some backup
  if (out === vmDir || out.startsWith(vmDir + path.sep))
    throw new FlattenRefused('out', `${out} is inside the VM's backup folder ${vmDir}; write it elsewhere`);
  if (await lstatOrUndefined(out)) throw new FlattenRefused('out', `${out} exists; not overwritten`);
  const outDir = await lstatOrUndefined(path.dirname(out));
  if (!outDir?.isDirectory()) throw new FlattenRefused('out', `${path.dirname(out)} is not a directory`);

  const read = await readManifestAt(dir);
  if (!('manifest' in read)) throw new FlattenRefused('backup', `${dir}: ${read.error}`);
  const manifest = read.manifest;
  const entry = diskEntryOf(manifest, input.disk);
  if (!entry) {
    const disks = manifest.files.filter((f) => f.kind === 'disk').map((f) => f.disk ?? f.name);
    throw new FlattenRefused('disk', `backup ${manifest.backupId} holds no disk "${input.disk}" (it holds: ${disks.join(', ') || 'none'})`);
  }
  const report = await input.verify(dir);
  if (!report.ok) {
    const shown = report.problems
      .slice(0, 5)
      .map((p) => `${p.file}: ${p.problem}`)
      .join('; ');
    throw new FlattenRefused(
      'backup',
      `${dir} does not verify, nothing written: ${shown}${report.problems.length > 5 ? ` (and ${report.problems.length - 5} more)` : ''}`,
    );
  }

  const chain: string[] = [manifest.backupId];
  for (let e = entry, m = manifest; e.chain?.mode === 'incremental' && chain.length <= 10000;) {
    const parent = await readManifestAt(path.join(vmDir, e.chain.parent!));
    if (!('manifest' in parent)) break; // verified a moment ago; a change since is caught by compare
    m = parent.manifest;
    const next = diskEntryOf(m, input.disk);
    if (!next) break;
    chain.push(m.backupId);
    e = next;
  }

  const top = path.join(dir, entry.name);
  const tmp = path.join(path.dirname(out), `.${path.basename(out)}.partial-${randomBytes(4).toString('hex')}`);
  const qemuImg = input.qemuImg ?? 'qemu-img';
  const timeoutMs = input.timeoutMs ?? 6 * 3_600_000;
  try {
    try {
      await runProgram(qemuImg, ['convert', '-f', 'qcow2', '-O', format, top, tmp], { timeoutMs });
    } catch (err) {
      throw new Error(`qemu-img convert of ${top} failed: ${programDetail(err)}`);
    }
    if (input.compare !== false) {
      try {
        await runProgram(qemuImg, ['compare', '-f', 'qcow2', '-F', format, top, tmp], { timeoutMs });
      } catch (err) {
        throw new Error(`the flattened image differs from the chain of ${top}: ${programDetail(err)}`);
      }
    }
    await fsyncFile(tmp);
    // a hard link fails if the name was taken meanwhile: nothing is ever replaced
    await fs.link(tmp, out).catch((err: NodeJS.ErrnoException) => {
      throw err.code === 'EEXIST' ? new FlattenRefused('out', `${out} appeared while flattening; not overwritten`) : err;
    });
  } finally {
    await fs.rm(tmp, { force: true });
  }
  const st = await fs.stat(out);
  return {
    out,
    format,
    backupId: manifest.backupId,
    disk: input.disk,
    chain,
    bytes: st.size,
    ms: Date.now() - t0,
    ...(entry.virtualSize !== undefined ? { virtualSize: entry.virtualSize } : {}),
  };
}
