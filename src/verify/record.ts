// The verify record beside a backup's manifest (`verify.json`): what the last verify found, for the
// next verify job ("skip verified", "re-verify after N days"), for the history and for the next
// backup's chain trust (a link whose last verify found it damaged is never stacked on). Written
// atomically (beside, then renamed); the manifest is never edited. A record names the sha256 of
// the manifest it verified: once a prune rewrote the manifest, the record no longer applies.
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { readSidecar, VERIFY_RECORD, writeAtomic } from '../repository/sidecars';
import type { DiskProof } from './filesystem';
import type { BackupReport, VerifyProblem } from './verify';

export interface VerifyRecord {
  format: 'vm-backup-verify@1';
  backupId: string;
  host: string;
  vm: string;
  verifiedAt: string;
  /** sha256 of the manifest.json this record is about */
  manifestSha256: string;
  /** every file, every image and the whole chain check out, and no label is contradicted */
  ok: boolean;
  /** the files, images and chain check out: whether anything may stack on this backup */
  intact: boolean;
  problems: VerifyProblem[];
  warnings: VerifyProblem[];
  proof?: DiskProof[];
  ms: number;
}

export async function manifestSha(dir: string): Promise<string | undefined> {
  try {
    return createHash('sha256')
      .update(await fs.readFile(path.join(dir, 'manifest.json')))
      .digest('hex');
  } catch {
    return undefined;
  }
}

export function recordOf(report: BackupReport, manifestSha256: string, proof: DiskProof[] | undefined, at: Date): VerifyRecord {
  const contradicted = (proof ?? []).filter((p) => p.contradicts);
  const problems = [...report.problems, ...contradicted.map((p) => ({ file: p.file, problem: `disk ${p.disk}: ${p.contradicts}` }))];
  return {
    format: 'vm-backup-verify@1',
    backupId: report.manifest?.backupId ?? path.basename(report.dir),
    host: report.manifest?.host ?? path.basename(path.dirname(path.dirname(report.dir))),
    vm: report.manifest?.vm ?? path.basename(path.dirname(report.dir)),
    verifiedAt: at.toISOString(),
    manifestSha256,
    ok: report.ok && contradicted.length === 0,
    intact: report.ok,
    problems,
    warnings: report.warnings,
    ...(proof ? { proof } : {}),
    ms: report.ms + (proof ?? []).reduce((n, p) => n + p.ms, 0),
  };
}

export async function writeRecord(dir: string, record: VerifyRecord): Promise<void> {
  await writeAtomic(dir, VERIFY_RECORD, JSON.stringify(record, null, 2) + '\n');
}

/** The backup's verify record if there is one and it is about the manifest there now. */
export async function currentRecord(dir: string, knownManifestSha?: string): Promise<VerifyRecord | undefined> {
  const record = await readSidecar<VerifyRecord>(dir, VERIFY_RECORD);
  if (record?.format !== 'vm-backup-verify@1' || typeof record.verifiedAt !== 'string') return undefined;
  const sha = knownManifestSha ?? (await manifestSha(dir));
  return sha && record.manifestSha256 === sha ? record : undefined;
}
