#!/usr/bin/env bash
# The Flow Library scorecard (node-red-dev validate), offline: the catalogue host is unreachable
# here, so a preload answers catalogue look-ups with an empty catalogue. Passes only if every
# check passes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tools=.tools/node-red-dev
if [ ! -x "$tools/node_modules/.bin/node-red-dev" ]; then
  mkdir -p "$tools"
  [ -f "$tools/package.json" ] || echo '{"name":"tools","private":true}' > "$tools/package.json"
  npm install --prefix "$tools" --no-audit --no-fund --loglevel=error node-red-dev >/dev/null
fi
preload=../shared/tools/node-red-dev-offline.js
[ -f "$preload" ] || preload=scripts/node-red-dev-offline.js
out="$(node -r "$(realpath "$preload")" "$tools/node_modules/.bin/node-red-dev" validate 2>&1)"
printf '%s\n' "$out"
checks=$(printf '%s\n' "$out" | grep -c '✅' || true)
problems=$(printf '%s\n' "$out" | grep -cE '❌|⚠️' || true)
echo "  $checks passing"
echo "  $problems failing"
[ "$problems" -eq 0 ] && [ "$checks" -gt 0 ]
