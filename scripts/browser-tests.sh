#!/usr/bin/env bash
# The editor in headless Chromium (test/browser/editor.test.ts): palette, edit dialogs, Import >
# Examples, Deploy, help; writes docs/editor.png. Uses the Debian chromium, never a downloaded one.
#
#   npm run build && bash scripts/browser-tests.sh
#
# Env: CHROMIUM (default /usr/bin/chromium), VMBACKUP_SCREENSHOT (path, or 0 for none),
#      PLAYWRIGHT_CORE_DIR (if playwright-core is not a devDependency yet).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

[ -f dist/test/browser/editor.test.js ] || { echo "browser-tests: run 'npm run build' first" >&2; exit 2; }

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  if [ "$CHROMIUM" = /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "browser-tests: installing the Debian chromium package" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >/dev/null
  else
    echo "browser-tests: no Chromium at $CHROMIUM (apt-get install -y chromium, or set CHROMIUM)" >&2
    exit 2
  fi
fi
export CHROMIUM

if ! node -e 'require.resolve("playwright-core")' 2>/dev/null && [ -z "${PLAYWRIGHT_CORE_DIR:-}" ]; then
  echo "browser-tests: playwright-core is not installed: npm install --save-dev playwright-core (or set PLAYWRIGHT_CORE_DIR)" >&2
  exit 2
fi
# playwright-core must never fetch a browser of its own
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

node node_modules/mocha/bin/mocha.js --timeout 300000 'dist/test/browser/**/*.test.js' "$@"
