// vm-backup-restore: the restore nodes' work from a shell (the same code). See USAGE.
import * as path from 'node:path';
import { flattenDisk, FlattenRefused, FLATTEN_FORMATS, type FlattenFormat } from '../chain/flatten';
import { verifyBackup } from '../verify';
import type { RestoreContext } from './context';
import { restore, summarizeRestore } from './index';
import { recoverRestores } from './recover';
import { RestoreRefused } from './refused';

export const USAGE = `usage: vm-backup-restore <command> <backup-dir> [options]

<backup-dir> is one backup, <repository>/<host>/<vm>/<backupId>/: a full, or any incremental of a
chain (its disks are read through their parents). Every command verifies the backup and its whole
chain first and writes nothing if a link is broken.

flatten <backup-dir> --disk ID --out FILE [--format qcow2|raw]
          one disk as a standalone image; an existing FILE is never overwritten
directory <backup-dir> --target DIR [--disk ID]... [--format qcow2|raw]
          every disk (or those named) as standalone images, plus definition.json (and
          state.vmstate of a saved-state backup) and restore.json, in a new directory DIR
new-vm <backup-dir> --target DIR [--name NAME] [--libvirt] [--start [--instant]] [--no-resume] [--network keep|none]
       [--socket-dir DIR] [--uri URI]
          a new VM beside the original: disks restored into DIR, then plain QEMU (the backup's
          command line with new disks, name, sockets, UUID, MACs; sockets in --socket-dir, else
          in DIR) or libvirt (virsh define of the backup's domain XML, renamed); --start starts it
          (a saved-state backup resumes from its saved memory unless --no-resume); with --start
          --instant it runs at once on the backup while its disks are streamed into DIR
in-place <backup-dir> --journal-dir DIR [--disk ID]... [--keep-old]
          over the VM's own disks (the files or block devices its definition names); refused
          while any process holds them. Written beside and renamed (a block device: its old
          content saved under --root first); journalled in DIR/restore/
recover --journal-dir DIR
          finish or roll back restores a crash interrupted

  --root DIR        where a restore may write (repeatable; default: the parent of --target)
  --json            print the result as JSON
  --qemu-img PATH   the qemu-img program

Exit status: 0 done, 1 refused or failed, 2 usage error.`;

type Opts = Record<string, string[]>;
const VALUED = new Set([
  '--disk',
  '--out',
  '--format',
  '--qemu-img',
  '--target',
  '--name',
  '--network',
  '--socket-dir',
  '--uri',
  '--journal-dir',
  '--root',
]);
const FLAGS = new Set(['--json', '--libvirt', '--start', '--no-resume', '--keep-old', '--instant']);

function parse(argv: string[]): { positional: string[]; opts: Opts } | string {
  const positional: string[] = [];
  const opts: Opts = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const eq = a.indexOf('=');
    const name = a.startsWith('--') && eq > 0 ? a.slice(0, eq) : a;
    if (VALUED.has(name)) {
      const v = eq > 0 && a.startsWith('--') ? a.slice(eq + 1) : argv[++i];
      if (v === undefined || v === '') return `${name} needs a value`;
      (opts[name] ??= []).push(v);
    } else if (FLAGS.has(a)) opts[a] = ['1'];
    else if (a === '--') {
      positional.push(...argv.slice(i + 1));
      break;
    } else if (a.startsWith('-')) return `unknown option ${a}`;
    else positional.push(a);
  }
  return { positional, opts };
}

const one = (o: Opts, k: string) => o[k]?.[o[k].length - 1];

export async function main(argv: string[], out = process.stdout, err = process.stderr): Promise<number> {
  const usage = (m: string) => {
    err.write(`vm-backup-restore: ${m}\n${USAGE}\n`);
    return 2;
  };
  if (argv[0] === '-h' || argv[0] === '--help') {
    out.write(USAGE + '\n');
    return 0;
  }
  const command = argv[0];
  if (!command) return usage('no command given');
  const parsed = parse(argv.slice(1));
  if (typeof parsed === 'string') return usage(parsed);
  const { positional, opts } = parsed;
  const qemuImg = one(opts, '--qemu-img');
  try {
    if (command === 'recover') {
      const dir = one(opts, '--journal-dir');
      if (!dir) return usage('--journal-dir is required');
      const done = await recoverRestores(path.resolve(dir), qemuImg ? { qemuImg } : {});
      if (one(opts, '--json')) out.write(JSON.stringify(done, null, 2) + '\n');
      else
        out.write(
          done.length ? done.map((d) => `${d.ok ? 'OK  ' : 'FAIL'} ${d.op}: ${d.detail}`).join('\n') + '\n' : 'nothing to recover\n',
        );
      return done.every((d) => d.ok) ? 0 : 1;
    }
    if (positional.length !== 1)
      return usage(positional.length ? `one backup directory expected, got ${positional.length}` : 'no backup directory given');
    const dir = path.resolve(positional[0]);
    if (command === 'flatten') return await flatten(dir, opts, out, qemuImg);
    if (command !== 'directory' && command !== 'new-vm' && command !== 'in-place') return usage(`unknown command ${command}`);
    const format = one(opts, '--format');
    if (format !== undefined && !FLATTEN_FORMATS.includes(format as FlattenFormat))
      return usage(`--format: "${format}" must be qcow2 or raw`);
    const target = one(opts, '--target');
    if (command !== 'in-place' && !target) return usage('--target is required');
    const journalDir = one(opts, '--journal-dir');
    if (command === 'in-place' && !journalDir) return usage('--journal-dir is required');
    const backupId = path.basename(dir);
    const vm = path.basename(path.dirname(dir));
    const host = path.basename(path.dirname(path.dirname(dir)));
    const roots = (opts['--root'] ?? (target ? [path.dirname(path.resolve(target))] : [])).map((r) => path.resolve(r));
    const libvirt = one(opts, '--libvirt') !== undefined;
    const socketDir = one(opts, '--socket-dir');
    const ctx: RestoreContext = {
      repositoryRoot: path.dirname(path.dirname(path.dirname(dir))),
      hostName: host,
      provider: libvirt ? 'libvirt' : 'qemu',
      ...(socketDir ? { socketDir: path.resolve(socketDir) } : {}),
      ...(one(opts, '--uri') ? { libvirtUri: one(opts, '--uri') } : {}),
      roots,
      journalDir: path.resolve(journalDir ?? path.join(roots[0] ?? '/tmp', '.vm-backup-restore')),
      ...(qemuImg ? { qemuImg } : {}),
    };
    const request = {
      mode: command,
      host,
      vm,
      backupId,
      ...(opts['--disk'] ? { disks: opts['--disk'] } : {}),
      ...(format ? { format } : {}),
      ...(target ? { target: path.resolve(target) } : {}),
      ...(one(opts, '--name') ? { name: one(opts, '--name') } : {}),
      ...(command === 'new-vm' ? { hypervisor: libvirt ? 'libvirt' : 'qemu' } : {}),
      ...(one(opts, '--start') ? { start: true } : {}),
      ...(one(opts, '--no-resume') ? { resume: false } : {}),
      ...(one(opts, '--network') ? { network: one(opts, '--network') } : {}),
      ...(one(opts, '--keep-old') ? { keepOld: true } : {}),
      ...(one(opts, '--instant') ? { instant: true } : {}),
    };
    const result = await restore(ctx, request);
    out.write(one(opts, '--json') ? JSON.stringify(result, null, 2) + '\n' : summarizeRestore(result).text + '\n');
    return 0;
  } catch (e) {
    const x = e as Error;
    const text = x instanceof RestoreRefused ? x.message : x instanceof FlattenRefused ? cliField(x) : x.message;
    err.write(`vm-backup-restore: ${text}\n`);
    return 1;
  }
}

function cliField(err: FlattenRefused): string {
  // a refusal names the argument (--disk, --out, --format, or the backup that does not verify)
  return `${err.field === 'backup' ? 'backup' : `--${err.field}`}${err.message.slice(err.field.length)}`;
}

async function flatten(dir: string, opts: Opts, out: NodeJS.WritableStream, qemuImg?: string): Promise<number> {
  const disk = one(opts, '--disk');
  const file = one(opts, '--out');
  const format = one(opts, '--format') ?? 'qcow2';
  if (!disk || !file || !FLATTEN_FORMATS.includes(format as FlattenFormat)) {
    process.stderr.write(
      `vm-backup-restore: ${!disk ? '--disk is required' : !file ? '--out is required' : `--format: "${format}" must be qcow2 or raw`}\n${USAGE}\n`,
    );
    return 2;
  }
  const r = await flattenDisk({
    backupDir: dir,
    disk,
    out: file,
    format: format as FlattenFormat,
    verify: (d) => verifyBackup(d, qemuImg ? { qemuImg } : {}),
    ...(qemuImg ? { qemuImg } : {}),
  });
  if (one(opts, '--json')) out.write(JSON.stringify(r, null, 2) + '\n');
  else {
    const made =
      r.chain.length === 1
        ? `full ${r.backupId}`
        : `${r.backupId} over ${r.chain.length - 1} parent${r.chain.length === 2 ? '' : 's'} down to full ${r.chain[r.chain.length - 1]}`;
    out.write(
      `flattened disk ${r.disk} of ${made} into ${r.out} (${r.format}, ${r.virtualSize ?? '?'} bytes virtual, ${r.bytes} on disk; ${r.ms} ms)\n`,
    );
  }
  return 0;
}
