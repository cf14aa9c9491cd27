#!/usr/bin/env node
// vm-backup-restore: get a disk out of any point of a backup chain as a standalone image.
//   vm-backup-restore flatten <backup-dir> --disk <id> --out <file> [--format qcow2|raw] [--json] [--qemu-img PATH]
// Exit status: 0 written, 1 refused or failed (nothing left behind), 2 usage.
import { flattenDisk, FlattenRefused, FLATTEN_FORMATS, type FlattenFormat } from '../chain/flatten';
import { verifyBackup } from '../verify';

const USAGE = `usage: vm-backup-restore flatten <backup-dir> --disk <id> --out <file> [--format qcow2|raw] [--json] [--qemu-img PATH]

flatten   write one disk of a backup as a standalone image (no backing file). <backup-dir> is one
          backup (<repository>/<host>/<vm>/<backupId>/): a full, or any incremental of a chain,
          whose disk is then read through its parents down to the full (qemu-img convert).
          The backup and its whole chain are verified first (as vm-backup-verify does); the result
          is compared with the chain (qemu-img compare) before it gets its name. An existing
          --out is never overwritten.

  --disk ID         the disk, as the manifest lists it (e.g. drive-virtio0)
  --out FILE        the image to write (must not exist, outside the repository's VM folder)
  --format F        qcow2 (default) or raw
  --json            print the result as JSON
  --qemu-img PATH   the qemu-img program (default: qemu-img on the PATH)

Exit status: 0 written, 1 refused or failed, 2 usage error.`;

async function main(argv: string[]): Promise<number> {
  if (argv[0] === '-h' || argv[0] === '--help') {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  if (argv[0] !== 'flatten') return usage(argv[0] ? `unknown command ${argv[0]}` : 'no command given');
  const positional: string[] = [];
  const opts: { disk?: string; out?: string; format?: string; qemuImg?: string; json?: boolean } = {};
  const valued: Record<string, 'disk' | 'out' | 'format' | 'qemuImg'> = {
    '--disk': 'disk',
    '--out': 'out',
    '--format': 'format',
    '--qemu-img': 'qemuImg',
  };
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i];
    const eq = a.indexOf('=');
    const name = a.startsWith('--') && eq > 0 ? a.slice(0, eq) : a;
    if (valued[name]) {
      const v = eq > 0 && a.startsWith('--') ? a.slice(eq + 1) : argv[++i];
      if (v === undefined || v === '') return usage(`${name} needs a value`);
      opts[valued[name]] = v;
    } else if (a === '--json') opts.json = true;
    else if (a === '--') {
      // everything after -- is a positional argument, even one starting with -
      positional.push(...argv.slice(i + 1));
      break;
    } else if (a.startsWith('-')) return usage(`unknown option ${a}`);
    else positional.push(a);
  }
  if (positional.length !== 1)
    return usage(positional.length ? `one backup directory expected, got ${positional.length}` : 'no backup directory given');
  if (!opts.disk) return usage('--disk is required');
  if (!opts.out) return usage('--out is required');
  if (opts.format !== undefined && !FLATTEN_FORMATS.includes(opts.format as FlattenFormat))
    return usage(`--format: "${opts.format}" must be qcow2 or raw`);
  try {
    const r = await flattenDisk({
      backupDir: positional[0],
      disk: opts.disk,
      out: opts.out,
      format: (opts.format ?? 'qcow2') as FlattenFormat,
      verify: (dir) => verifyBackup(dir, opts.qemuImg ? { qemuImg: opts.qemuImg } : {}),
      ...(opts.qemuImg ? { qemuImg: opts.qemuImg } : {}),
    });
    if (opts.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
    else {
      const made =
        r.chain.length === 1
          ? `full ${r.backupId}`
          : `${r.backupId} over ${r.chain.length - 1} parent${r.chain.length === 2 ? '' : 's'} down to full ${r.chain[r.chain.length - 1]}`;
      process.stdout.write(
        `flattened disk ${r.disk} of ${made} into ${r.out} (${r.format}, ${r.virtualSize ?? '?'} bytes virtual, ${r.bytes} on disk; ${r.ms} ms)\n`,
      );
    }
    return 0;
  } catch (err) {
    // a refusal names the argument (--disk, --out, --format, or the backup that does not verify)
    const text =
      err instanceof FlattenRefused
        ? `${err.field === 'backup' ? 'backup' : `--${err.field}`}${err.message.slice(err.field.length)}`
        : (err as Error).message;
    process.stderr.write(`vm-backup-restore: ${text}\n`);
    return 1;
  }
}

function usage(message: string): number {
  process.stderr.write(`vm-backup-restore: ${message}\n${USAGE}\n`);
  return 2;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: Error) => {
    process.stderr.write(`vm-backup-restore: ${err.stack ?? err.message}\n`);
    process.exitCode = 1;
  },
);
