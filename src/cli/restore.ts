#!/usr/bin/env node
// vm-backup-restore: the command face of src/restore (flatten, directory, new-vm, in-place,
// recover); `vm-backup-restore --help` says how. Exit status: 0 done, 1 refused or failed, 2 usage.
import { main } from '../restore/cli';

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: Error) => {
    process.stderr.write(`vm-backup-restore: ${err.stack ?? err.message}\n`);
    process.exitCode = 1;
  },
);
