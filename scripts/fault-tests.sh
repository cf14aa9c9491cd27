#!/usr/bin/env bash
# Fault-injection suite and input fuzzing (docs/faults.md). Builds nothing: run `npm run build` first.
#
#   bash scripts/fault-tests.sh           fuzz, then every fault case (about 15 min on 2 cores)
#   bash scripts/fault-tests.sh fuzz      only the fuzzing of every node's input (10,000 payloads per node)
#   bash scripts/fault-tests.sh faults    only the fault cases (bare VMs, repository, lab guests, Node-RED process)
#   bash scripts/fault-tests.sh fast      fuzz + the cases without lab guests (bare VMs, repository, recovery, tracking)
#   bash scripts/fault-tests.sh lab       the cases on lab guests and on a real node-red process (endings, deadlines too)
#
# Needs root (tmpfs mounts for the repository faults), QEMU (qemu-system-x86_64, qemu-img, qemu-io)
# and the lab packages (node dist/lab/cli.js install). The lab cases start two guests of their own
# in VMBACKUP_FAULTS_LAB_DIR (default /tmp/vmb-faults-lab-<hash of this checkout's path>, never the
# shared /tmp/vm-backup-lab) and stop them at the end unless VMBACKUP_KEEP_LAB=1. Do not run two
# suites from the same checkout at once: they would share that lab.
# Other settings: VMBACKUP_FUZZ_N (payloads per node), VMBACKUP_FUZZ_SEED (replay a run),
# VMBACKUP_FAULTS_NO_DOC=1 (do not rewrite the table in docs/faults.md).
# The table of cases (case, expected, observed) is printed and written into docs/faults.md.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

part="${1:-all}"
MOCHA=(node node_modules/mocha/bin/mocha.js --timeout 600000)

for f in dist/test/faults/bare.test.js dist/test/fuzz/nodes.fuzz.test.js dist/src/guardian/guardian.js; do
  [ -f "$f" ] || { echo "fault-tests: $f is missing: run 'npm run build' first" >&2; exit 2; }
done

status=0
run() {
  echo "fault-tests: $*" >&2
  "$@" || status=1
}

case "$part" in
  all)
    run "${MOCHA[@]}" dist/test/fuzz/nodes.fuzz.test.js
    VMBACKUP_FAULTS_PART=all run "${MOCHA[@]}" dist/test/faults/bare.test.js dist/test/faults/repository.test.js dist/test/faults/tracking.test.js dist/test/faults/recovery.test.js dist/test/faults/lab.test.js dist/test/faults/process.test.js dist/test/faults/endings.test.js dist/test/faults/deadlines.test.js
    ;;
  fuzz)
    run "${MOCHA[@]}" dist/test/fuzz/nodes.fuzz.test.js
    ;;
  faults)
    VMBACKUP_FAULTS_PART=all run "${MOCHA[@]}" dist/test/faults/bare.test.js dist/test/faults/repository.test.js dist/test/faults/tracking.test.js dist/test/faults/recovery.test.js dist/test/faults/lab.test.js dist/test/faults/process.test.js dist/test/faults/endings.test.js dist/test/faults/deadlines.test.js
    ;;
  fast)
    run "${MOCHA[@]}" dist/test/fuzz/nodes.fuzz.test.js
    VMBACKUP_FAULTS_PART=fast run "${MOCHA[@]}" dist/test/faults/bare.test.js dist/test/faults/repository.test.js dist/test/faults/tracking.test.js dist/test/faults/recovery.test.js
    ;;
  lab)
    VMBACKUP_FAULTS_PART=lab run "${MOCHA[@]}" dist/test/faults/lab.test.js dist/test/faults/process.test.js dist/test/faults/endings.test.js dist/test/faults/deadlines.test.js
    ;;
  *)
    echo "usage: bash scripts/fault-tests.sh [all|fuzz|faults|fast|lab]" >&2
    exit 2
    ;;
esac
exit "$status"
