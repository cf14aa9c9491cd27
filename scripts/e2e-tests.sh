#!/usr/bin/env bash
# End-to-end test of the package as a user installs it: npm pack -> npm install <tarball> into a
# fresh Node-RED user dir -> the node-red command -> admin API (test/e2e/install.test.ts).
#
#   npm run build && bash scripts/e2e-tests.sh            # without VMs (the lab test is skipped)
#   VMBACKUP_LAB_DIR=/tmp/vm-backup-lab bash scripts/e2e-tests.sh   # use a running lab as well
#   bash scripts/e2e-tests.sh --lab                       # start a lab of its own, stop it after
#
# --lab uses VMBACKUP_LAB_DIR if set, else /tmp/vmbackup-e2e-lab (never the shared /tmp/vm-backup-lab).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

own_lab=0
args=()
for a in "$@"; do
  if [ "$a" = "--lab" ]; then own_lab=1; else args+=("$a"); fi
done

[ -f dist/test/e2e/install.test.js ] || { echo "e2e-tests: run 'npm run build' first" >&2; exit 2; }

if [ "$own_lab" = 1 ]; then
  export VMBACKUP_LAB_DIR="${VMBACKUP_LAB_DIR:-/tmp/vmbackup-e2e-lab}"
  echo "e2e-tests: starting a lab in $VMBACKUP_LAB_DIR" >&2
  node dist/lab/cli.js start --lab-dir "$VMBACKUP_LAB_DIR" >/dev/null
  trap 'node dist/lab/cli.js stop --lab-dir "$VMBACKUP_LAB_DIR" >/dev/null 2>&1 || true' EXIT
fi

node node_modules/mocha/bin/mocha.js --timeout 600000 'dist/test/e2e/**/*.test.js' ${args[@]+"${args[@]}"}
