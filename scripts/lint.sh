#!/usr/bin/env bash
# The static checks (issue 12): formatting (prettier --check), lint (eslint) and the import map
# (dependency-cruiser, .dependency-cruiser.cjs). Runs all three even when one fails, prints what
# each found, and one mocha-style line per check ("  1 passing (eslint)" / "  1 failing (eslint)")
# so that scripts/test.sh's suite() counts them. Exits non-zero if any check failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bin=node_modules/.bin
for tool in prettier eslint depcruise; do
  [ -x "$bin/$tool" ] || { echo "lint: $bin/$tool is missing: run npm ci" >&2; echo "  1 failing (lint: tools missing)"; exit 1; }
done

passed=()
failed=()
check() {
  local name="$1"; shift
  local out status
  out="$("$@" 2>&1)"; status=$?
  if [ $status -eq 0 ]; then
    passed+=("$name")
  else
    failed+=("$name")
    echo "--- $name failed ($*):"
    printf '%s\n' "$out"
  fi
}

# prettier: the files not formatted (fix: npx prettier --write <file>)
check prettier "$bin/prettier" --check --log-level warn .
# eslint: every finding; a warning counts as a failure, so none pile up
check eslint "$bin/eslint" --max-warnings 0 .
# the import map: each broken rule with the import that breaks it
check depcruise "$bin/depcruise" src nodes --config .dependency-cruiser.cjs --output-type err

for name in "${passed[@]}"; do echo "  1 passing ($name)"; done
for name in "${failed[@]}"; do echo "  1 failing ($name)"; done
[ ${#failed[@]} -eq 0 ]
