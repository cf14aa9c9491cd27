#!/usr/bin/env node
// vm-backup-verify: check published backups before trusting them for a restore (src/verify/command.ts).
// Exit status: 0 every backup verified, 1 a problem found (each line names the file), 2 usage.
import { verifyCommand } from '../verify/command';

verifyCommand(
  process.argv.slice(2),
  (s) => process.stdout.write(s),
  (s) => process.stderr.write(s),
).then(
  (code) => {
    process.exitCode = code;
  },
  (err: Error) => {
    process.stderr.write(`vm-backup-verify: ${err.stack ?? err.message}\n`);
    process.exitCode = 1;
  },
);
