// vm-backup-verify: check published backups before trusting them for a restore (the command's
// logic; src/cli/verify.ts is its entry point).
import { formatReport, type RepositoryReport } from './verify';
import { runVerifyJob, type ProofScope, type VerifyJobOptions } from './job';

export const USAGE = `usage: vm-backup-verify [--json] [--no-image-check] [--qemu-img PATH] [--record]
                        [--unverified [--reverify-days N]] [--proof application|all|none] [--scratch DIR] <dir>...

<dir> is one backup (<repository>/<host>/<vm>/<backupId>/, it holds manifest.json) or a repository
root (or a host or VM folder of it): then every backup under it is checked.

Checks: manifest.json valid against the manifest schema; every listed file present, a plain file,
with the listed size and sha256; no unlisted file; every disk image passes qemu-img check, a full
has no backing file, an incremental's whole chain down to its full is sound; the manifest's virtual
size. Symbolic links are reported, never followed. Then the consistency proof: the guest file
systems of each disk labelled application-consistent, read from the image without mounting it
(ext4: no needs_recovery and e2fsck -fn; xfs: a clean log and xfs_repair -n; NTFS: no dirty bit);
one in need of recovery contradicts the label and fails the backup.

  --json              print the report as JSON
  --no-image-check    skip qemu-img check / info and the proof (sizes and sha256 only)
  --qemu-img PATH     the qemu-img program (default: qemu-img on the PATH)
  --record            write each backup's verify record (verify.json beside its manifest)
  --unverified        only backups with no verify record (or one older than --reverify-days)
  --reverify-days N   with --unverified: verify again what was verified more than N days ago
  --proof SCOPE       which disks get the consistency proof: application (default), all, none
  --scratch DIR       where partitions are read out for the proof (default: the temporary folder)

Exit status: 0 all verified, 1 a problem was found, 2 usage error.`;

export async function verifyCommand(argv: string[], out: (s: string) => void, err: (s: string) => void): Promise<number> {
  const dirs: string[] = [];
  const options: VerifyJobOptions = { record: false };
  let json = false;
  const usage = (message: string) => (err(`vm-backup-verify: ${message}\n${USAGE}\n`), 2);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = (name: string): string | undefined => (a.startsWith(`${name}=`) ? a.slice(name.length + 1) : argv[++i]);
    if (a === '--json') json = true;
    else if (a === '--no-image-check') options.skipImageCheck = true;
    else if (a === '--record') options.record = true;
    else if (a === '--unverified') options.select = 'unverified';
    else if (a === '--qemu-img' || a.startsWith('--qemu-img=')) {
      const v = value('--qemu-img');
      if (!v) return usage('--qemu-img needs a value');
      options.qemuImg = v;
    } else if (a === '--reverify-days' || a.startsWith('--reverify-days=')) {
      const n = Number(value('--reverify-days'));
      if (!Number.isInteger(n) || n < 1 || n > 3650) return usage('--reverify-days must be a whole number of days from 1 to 3650');
      options.reverifyDays = n;
    } else if (a === '--proof' || a.startsWith('--proof=')) {
      const v = value('--proof');
      if (v !== 'application' && v !== 'all' && v !== 'none') return usage('--proof must be application, all or none');
      options.proof = v as ProofScope;
    } else if (a === '--scratch' || a.startsWith('--scratch=')) {
      const v = value('--scratch');
      if (!v) return usage('--scratch needs a folder');
      options.scratchDir = v;
    } else if (a === '-h' || a === '--help') {
      out(USAGE + '\n');
      return 0;
    } else if (a === '--') {
      // everything after -- is a backup directory, even one starting with -
      dirs.push(...argv.slice(i + 1));
      break;
    } else if (a.startsWith('-')) return usage(`unknown option ${a}`);
    else dirs.push(a);
  }
  if (dirs.length === 0) return usage('no directory given');
  const reports: (RepositoryReport & { skipped: string[] })[] = [];
  for (const dir of dirs) {
    const job = await runVerifyJob(dir, options);
    reports.push({
      root: job.target,
      ok: job.ok,
      backups: job.backups.filter((b) => b.report).map((b) => ({ ...b.report!, ...(b.proof ? { proof: b.proof } : {}) })),
      problems: job.problems,
      warnings: [],
      skipped: job.backups
        .filter((b) => !b.verified)
        .map((b) => `${b.dir} (last verified ${b.last?.verifiedAt}: ${b.ok ? 'OK' : 'FAILED'})`),
      ms: job.ms,
    });
  }
  if (json) out(JSON.stringify(reports.length === 1 ? reports[0] : reports, null, 2) + '\n');
  else out(reports.map((r) => [...r.skipped.map((s) => `SKIP ${s}`), formatReport(r)].join('\n')).join('\n') + '\n');
  return reports.every((r) => r.ok) ? 0 : 1;
}
