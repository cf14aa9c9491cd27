#!/usr/bin/env node
// vm-backup-prune: remove the backups retention rules do not keep, chain-aware and crash-safe.
//   vm-backup-prune --repository DIR --host NAME [--vm ID]... [--keep-last N] ... [--dry-run] [--json]
// Exit status: 0 done (or nothing to do), 1 a VM could not be pruned, 2 usage.
import { parseRetention, pruneHost, RetentionError, RULES, RULE_LABEL, type RuleName, type VmPruneReport } from '../prune';
import { formatPruneReport } from '../prune/report';
import { checkRoot, PathRefused } from '../repository/paths';
import { isSafeName } from '../util/ids';

const USAGE = `usage: vm-backup-prune --repository DIR [--host NAME] [--vm ID]... [rules] [--dry-run] [--wait SECONDS] [--json]

Removes the backups of each VM that no retention rule keeps, with Proxmox's semantics: the rules
run in this order over the VM's backups, newest first; each keeps the newest backup of each of its
last N periods (local time; ISO weeks) that no earlier rule already covers. No rule: nothing goes.

  --keep-last N     the N newest backups
  --keep-hourly N   the newest of each of the last N hours that hold a backup
  --keep-daily N    ... days      --keep-weekly N   ... ISO weeks (Monday first)
  --keep-monthly N  ... months    --keep-yearly N   ... years

A backup folder holding a file named "protected" is never removed nor rewritten (nor is its chain).
A kept incremental whose older links go is merged with them (qemu-img commit into the lowest
dropped link, which then takes its place): every kept point stays restorable.

  --repository DIR  the repository root (<DIR>/<host>/<vm>/<backupId>/)
  --host NAME       the host folder (default localhost)
  --vm ID           only this VM (repeatable; default every VM of the host)
  --dry-run         say what would go and why; change nothing
  --wait SECONDS    a backup of the VM being written: wait this long for it (default 0: refuse)
  --qemu-img PATH   the qemu-img program
  --json            print the reports as JSON

Exit status: 0 done, 1 a VM could not be pruned, 2 usage error.`;

async function main(argv: string[]): Promise<number> {
  let root: string | undefined;
  let host = 'localhost';
  const vms: string[] = [];
  const rules: Partial<Record<RuleName, string>> = {};
  let dryRun = false;
  let json = false;
  let waitMs = 0;
  let qemuImg: string | undefined;
  const flag = new Map(RULES.map((r) => [`--${RULE_LABEL[r]}`, r]));
  for (let i = 0; i < argv.length; i++) {
    const [a, inline] =
      argv[i].startsWith('--') && argv[i].includes('=')
        ? [argv[i].slice(0, argv[i].indexOf('=')), argv[i].slice(argv[i].indexOf('=') + 1)]
        : [argv[i], undefined];
    const value = () => inline ?? argv[++i];
    if (a === '--dry-run') dryRun = true;
    else if (a === '--json') json = true;
    else if (a === '-h' || a === '--help') {
      process.stdout.write(USAGE + '\n');
      return 0;
    } else if (a === '--repository') root = value();
    else if (a === '--host') host = value() ?? '';
    else if (a === '--vm') vms.push(value() ?? '');
    else if (a === '--qemu-img') qemuImg = value();
    else if (a === '--wait') {
      const s = Number(value());
      if (!Number.isFinite(s) || s < 0 || s > 86400) return usage('--wait must be seconds from 0 to 86400');
      waitMs = s * 1000;
    } else if (flag.has(a)) rules[flag.get(a)!] = value() ?? '';
    else return usage(`unknown argument ${a}`);
  }
  let parsed;
  try {
    root = checkRoot(root, 'repository');
    parsed = parseRetention(rules);
  } catch (err) {
    if (err instanceof RetentionError) return usage(`--${RULE_LABEL[err.field]}: ${err.message.slice(err.field.length + 2)}`);
    if (err instanceof PathRefused) return usage(`--${err.message}`);
    throw err;
  }
  if (!isSafeName(host)) return usage(`--host: "${host}" is not a plain name`);
  for (const vm of vms) if (!isSafeName(vm)) return usage(`--vm: "${vm}" is not a plain name`);
  const reports: VmPruneReport[] = await pruneHost({ root, host, rules: parsed, dryRun, waitMs, vms, ...(qemuImg ? { qemuImg } : {}) });
  if (json) process.stdout.write(JSON.stringify(reports, null, 2) + '\n');
  else process.stdout.write(formatPruneReport(reports) + '\n');
  return reports.every((r) => r.ok) ? 0 : 1;
}

function usage(message: string): number {
  process.stderr.write(`vm-backup-prune: ${message}\n${USAGE}\n`);
  return 2;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: Error) => {
    process.stderr.write(`vm-backup-prune: ${err.stack ?? err.message}\n`);
    process.exitCode = 1;
  },
);
