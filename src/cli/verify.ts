#!/usr/bin/env node
// vm-backup-verify: check published backups before trusting them for a restore.
//   vm-backup-verify [--json] [--no-image-check] [--qemu-img PATH] <backup dir | repository root>...
// Exit status: 0 every backup verified, 1 a problem found (each line names the file), 2 usage.
import { formatReport, verifyPath, type RepositoryReport, type VerifyOptions } from '../verify';

const USAGE = `usage: vm-backup-verify [--json] [--no-image-check] [--qemu-img PATH] <dir>...

<dir> is one backup (<repository>/<host>/<vm>/<backupId>/, it holds manifest.json) or a repository
root (or a host or VM folder of it): then every backup under it is checked.

Checks: manifest.json valid against the manifest schema; every listed file present, a plain file,
with the listed size and sha256; no unlisted file; every disk image passes qemu-img check, has no
backing file and the manifest's virtual size. Symbolic links are reported, never followed.

  --json            print the report as JSON
  --no-image-check  skip qemu-img check / info (sizes and sha256 only)
  --qemu-img PATH   the qemu-img program (default: qemu-img on the PATH)

Exit status: 0 all verified, 1 a problem was found, 2 usage error.`;

async function main(argv: string[]): Promise<number> {
  const dirs: string[] = [];
  const options: VerifyOptions = {};
  let json = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--json') json = true;
    else if (a === '--no-image-check') options.skipImageCheck = true;
    else if (a === '--qemu-img') {
      const v = argv[++i];
      if (!v) return usage('--qemu-img needs a value');
      options.qemuImg = v;
    } else if (a.startsWith('--qemu-img=')) options.qemuImg = a.slice('--qemu-img='.length);
    else if (a === '-h' || a === '--help') {
      process.stdout.write(USAGE + '\n');
      return 0;
    } else if (a === '--') {
      // everything after -- is a backup directory, even one starting with -
      dirs.push(...argv.slice(i + 1));
      break;
    } else if (a.startsWith('-')) return usage(`unknown option ${a}`);
    else dirs.push(a);
  }
  if (dirs.length === 0) return usage('no directory given');
  const reports: RepositoryReport[] = [];
  for (const dir of dirs) reports.push(await verifyPath(dir, options));
  if (json) process.stdout.write(JSON.stringify(reports.length === 1 ? reports[0] : reports, null, 2) + '\n');
  else process.stdout.write(reports.map(formatReport).join('\n') + '\n');
  return reports.every((r) => r.ok) ? 0 : 1;
}

function usage(message: string): number {
  process.stderr.write(`vm-backup-verify: ${message}\n${USAGE}\n`);
  return 2;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: Error) => {
    process.stderr.write(`vm-backup-verify: ${err.stack ?? err.message}\n`);
    process.exitCode = 1;
  },
);
