// A verify job over a repository (or a host, VM or backup folder of it): every backup, or only those
// never verified or verified more than N days ago; the whole check (verify.ts), the consistency
// proof of each disk that should have one (filesystem.ts), and the result written as each backup's
// verify record (record.ts) and returned for msg.payload / msg.summary.
import * as path from 'node:path';
import { readManifestAt } from '../chain/links';
import { proveDisk, type DiskProof, type ProofOptions } from './filesystem';
import { currentRecord, manifestSha, recordOf, writeRecord, type VerifyRecord } from './record';
import { findBackups, runVerifier, type BackupReport, type VerifyOptions, type VerifyProblem } from './verify';

export type VerifySelect = 'all' | 'unverified';
export type ProofScope = 'application' | 'all' | 'none';

export interface VerifyJobOptions extends VerifyOptions, ProofOptions {
  /** 'all' (default): every backup; 'unverified': those never verified, or last verified more than reverifyDays ago */
  select?: VerifySelect;
  /** with 'unverified': a backup verified longer ago than this is verified again (default: never again) */
  reverifyDays?: number;
  /** which disks get the consistency proof (default 'application': those labelled application-consistent) */
  proof?: ProofScope;
  /** write each backup's verify record (default true) */
  record?: boolean;
  now?: () => Date;
  onProgress?: (p: { done: number; total: number; backup: string }) => void;
}

export interface VerifiedBackup {
  dir: string;
  host: string;
  vm: string;
  backupId: string;
  /** false: skipped by the selection; `last` then says what its last verify found */
  verified: boolean;
  ok: boolean;
  intact: boolean;
  problems: VerifyProblem[];
  warnings: VerifyProblem[];
  proof?: DiskProof[];
  /** the record now in place (written by this job, or the earlier one a skipped backup has) */
  last?: Pick<VerifyRecord, 'verifiedAt' | 'ok' | 'intact'>;
  /** the verifier's whole report (files, images, chain) of a backup verified by this job */
  report?: BackupReport;
  ms: number;
}

export interface VerifyJobResult {
  target: string;
  ok: boolean;
  backups: VerifiedBackup[];
  /** problems of the target itself (nothing found, a symbolic link ...) */
  problems: VerifyProblem[];
  verified: number;
  skipped: number;
  failed: number;
  /** backups whose label the image contradicts */
  contradicted: number;
  bytes: number;
  ms: number;
}

const DAY = 86_400_000;

export async function runVerifyJob(target: string, options: VerifyJobOptions = {}): Promise<VerifyJobResult> {
  const t0 = Date.now();
  const now = options.now ?? (() => new Date());
  const found = await findBackups(target);
  const verify = runVerifier(options);
  const result: VerifyJobResult = {
    target: path.resolve(target),
    ok: false,
    backups: [],
    problems: found.problems,
    verified: 0,
    skipped: 0,
    failed: 0,
    contradicted: 0,
    bytes: 0,
    ms: 0,
  };
  for (const [i, dir] of found.found.entries()) {
    options.onProgress?.({ done: i, total: found.found.length, backup: dir });
    const names = {
      dir,
      host: path.basename(path.dirname(path.dirname(dir))),
      vm: path.basename(path.dirname(dir)),
      backupId: path.basename(dir),
    };
    const last = await currentRecord(dir);
    if (options.select === 'unverified' && last) {
      const age = now().getTime() - Date.parse(last.verifiedAt);
      if (options.reverifyDays === undefined || age < options.reverifyDays * DAY) {
        result.skipped++;
        if (!last.ok) result.failed++;
        result.backups.push({
          ...names,
          verified: false,
          ok: last.ok,
          intact: last.intact,
          problems: last.problems,
          warnings: last.warnings,
          last: { verifiedAt: last.verifiedAt, ok: last.ok, intact: last.intact },
          ms: 0,
        });
        continue;
      }
    }
    const sha = await manifestSha(dir);
    const report = await verify(dir);
    let proof: DiskProof[] | undefined;
    const scope = options.proof ?? 'application';
    if (report.ok && scope !== 'none' && !options.skipImageCheck) {
      const read = await readManifestAt(dir);
      if ('manifest' in read) {
        const m = read.manifest;
        if (scope === 'all' || m.consistency === 'application') {
          proof = [];
          for (const f of m.files.filter((x) => x.kind === 'disk' && (x.format ?? 'qcow2') === 'qcow2')) {
            try {
              proof.push(await proveDisk(f.disk ?? f.name, path.join(dir, f.name), f.virtualSize ?? 0, m.consistency, options));
            } catch (err) {
              report.warnings.push({ file: path.join(dir, f.name), problem: `consistency proof not made: ${(err as Error).message}` });
            }
          }
        }
      }
    }
    const record = recordOf(report, sha ?? '', proof, now());
    if (options.record !== false && sha && report.manifest) await writeRecord(dir, record);
    result.verified++;
    if (!record.ok) result.failed++;
    if (proof?.some((p) => p.contradicts)) result.contradicted++;
    result.bytes += report.files.reduce((n, f) => n + (f.bytes ?? 0), 0);
    result.backups.push({
      ...names,
      verified: true,
      ok: record.ok,
      intact: record.intact,
      problems: record.problems,
      warnings: record.warnings,
      ...(proof ? { proof } : {}),
      last: { verifiedAt: record.verifiedAt, ok: record.ok, intact: record.intact },
      report: { ...report, ok: record.ok, problems: record.problems },
      ms: record.ms,
    });
  }
  options.onProgress?.({ done: found.found.length, total: found.found.length, backup: '' });
  result.ok = result.problems.length === 0 && result.failed === 0;
  result.ms = Date.now() - t0;
  return result;
}

export interface VerifySummary {
  ok: boolean;
  target: string;
  verified: number;
  skipped: number;
  failed: number;
  contradicted: number;
  /** each backup found damaged or contradicted (by this job or, skipped, by its last verify) */
  failures: { vm: string; backupId: string; problem: string }[];
  bytes: number;
  durationMs: number;
  text: string;
}

export function summarizeVerifyJob(r: VerifyJobResult): VerifySummary {
  const failures = [
    ...r.problems.map((p) => ({ vm: '', backupId: '', problem: `${p.file}: ${p.problem}` })),
    ...r.backups
      .filter((b) => !b.ok)
      .map((b) => ({
        vm: b.vm,
        backupId: b.backupId,
        problem: b.problems[0] ? `${b.problems[0].file}: ${b.problems[0].problem}` : 'failed',
      })),
  ];
  const head = `verify of ${r.target}: ${r.verified} verified${r.skipped ? `, ${r.skipped} skipped (verified recently)` : ''}`;
  const text = r.ok
    ? `${head}: all OK`
    : `${head}: ${r.failed} FAILED${r.contradicted ? ` (${r.contradicted} with a consistency label the image contradicts)` : ''}\n${failures
        .slice(0, 20)
        .map((f) => (f.vm ? `${f.vm} ${f.backupId}: ${f.problem}` : f.problem))
        .join('\n')}`;
  return {
    ok: r.ok,
    target: r.target,
    verified: r.verified,
    skipped: r.skipped,
    failed: r.failed,
    contradicted: r.contradicted,
    failures,
    bytes: r.bytes,
    durationMs: r.ms,
    text,
  };
}
