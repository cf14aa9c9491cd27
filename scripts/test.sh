#!/usr/bin/env bash
# Every test, on a fresh machine: set-up, then unit, lint, node (Node-RED 4 and 5), integration on
# lab VMs, fault injection, end-to-end as a user installs it, the editor in Chromium, and the
# Flow Library scorecard. Ends with one line "N passed, N failed".
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh || exit 1

export VMBACKUP_LAB_DIR="${VMBACKUP_LAB_DIR:-/tmp/vm-backup-lab-test}"
export VMBACKUP_FAULTS_NO_DOC="${VMBACKUP_FAULTS_NO_DOC:-1}"
passed=0
failed=0
suites_failed=()
# mocha's failure reports, printed again at the very end: CI keeps only the tail of the output
failures=""

# run a suite, echo its output, add up mocha's "N passing" / "N failing"
suite() {
  local name="$1"; shift
  echo "=== $name" >&2
  local out status
  out="$("$@" 2>&1)"; status=$?
  printf '%s\n' "$out"
  local p f
  p=$(printf '%s\n' "$out" | sed -n 's/^ *\([0-9][0-9]*\) passing.*/\1/p' | awk '{s+=$1} END {print s+0}')
  f=$(printf '%s\n' "$out" | sed -n 's/^ *\([0-9][0-9]*\) failing.*/\1/p' | awk '{s+=$1} END {print s+0}')
  passed=$((passed + p)); failed=$((failed + f))
  if [ $status -ne 0 ]; then
    suites_failed+=("$name")
    [ "$f" -eq 0 ] && failed=$((failed + 1))
    # from mocha's "N failing" to the end of that run: the numbered failures with their errors
    failures+="--- $name"$'\n'"$(printf '%s\n' "$out" | awk '/^ *[0-9]+ failing/ {on=1} on && n < 80 {print; n++}')"$'\n'
  fi
}

mocha=(node node_modules/mocha/bin/mocha.js)
suite unit "${mocha[@]}" 'dist/test/unit/**/*.test.js'
# formatting, lint and the import map (scripts/lint.sh): one passing/failing line per check
suite lint bash scripts/lint.sh
suite nodes "${mocha[@]}" --timeout 60000 'dist/test/nodes/**/*.test.js'
suite nodes-node-red-5 bash scripts/nr5-tests.sh
# the libvirt lab (libvirtd by hand + 3 domains) boots beside the QEMU lab; its test skips, saying
# why, only when libvirtd cannot run here
node dist/lab/cli.js libvirt-start --no-install --lab-dir "$VMBACKUP_LAB_DIR" >/dev/null 2>&1 &
libvirt_lab=$!
node dist/lab/cli.js start --lab-dir "$VMBACKUP_LAB_DIR" >/dev/null 2>&1 || echo "lab did not start; integration suites will fail" >&2
wait "$libvirt_lab" || echo "libvirt lab did not start (libvirt.test.js says why)" >&2
suite integration "${mocha[@]}" --timeout 600000 'dist/test/integration/**/*.test.js'
# only the integration suite uses the libvirt domains: their CPU goes back to the timed fault cases
node dist/lab/cli.js libvirt-stop --lab-dir "$VMBACKUP_LAB_DIR" >/dev/null 2>&1 || true
# fuzzing + fault cases on bare QEMU VMs and the repository, then the cases on lab guests (qemu-ga,
# freeze hooks) and on a real node-red process (SIGKILL, restart, redeploy); both gate. The lab part
# starts two guests of its own (VMBACKUP_FAULTS_LAB_DIR), separate from the integration lab.
if [ -f scripts/fault-tests.sh ]; then
  suite faults bash scripts/fault-tests.sh fast
  suite faults-lab bash scripts/fault-tests.sh lab
fi
# the end-to-end lab cases (report-only and nightly examples on the lab VMs, as the main job runs
# them) need the integration lab, which lab.test stops: started again (idempotent) so they run
node dist/lab/cli.js start --lab-dir "$VMBACKUP_LAB_DIR" >/dev/null 2>&1 || echo "lab did not start; the e2e lab cases skip, saying why" >&2
suite e2e bash scripts/e2e-tests.sh
suite browser bash scripts/browser-tests.sh
suite scorecard bash scripts/scorecard.sh
node dist/lab/cli.js stop --lab-dir "$VMBACKUP_LAB_DIR" >/dev/null 2>&1 || true
node dist/lab/cli.js libvirt-stop --lab-dir "$VMBACKUP_LAB_DIR" >/dev/null 2>&1 || true

if [ ${#suites_failed[@]} -gt 0 ]; then
  printf '=== failures again (the first 80 lines of each failed suite'"'"'s report)\n%s' "$failures" >&2
  echo "failed suites: ${suites_failed[*]}" >&2
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
